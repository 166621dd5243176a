"""Opt-outs (STOP), and the keyword an inbound message was.

- ``optouts``: one row per sender that opted out of messages from one number, with
  when and how (``keyword``: an inbound STOP; ``cli``: ``aatrox-relay optouts add``).
  Shared by every relay on the store; no SMS goes from the number to the sender while
  the row exists.
- ``messages.keyword``: ``stop``, ``start`` or ``help`` when the message's whole text
  was one of ``[optout]``'s keywords, recorded in the transaction that records the
  message (and the opt-out it causes); the webhooks get it as ``data.keyword``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table, add the column."""
    op.create_table(
        "optouts",
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("sender", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("number", "sender", name="pk_optouts"),
    )
    op.add_column("messages", sa.Column("keyword", sa.String(16)))


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("keyword")
    op.drop_table("optouts")
