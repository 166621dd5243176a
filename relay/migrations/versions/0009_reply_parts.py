"""Several reply SMS for one delivery: one per ``<Message>`` of a TwiML answer.

- ``outbound.part``: which of a delivery's replies the row is (0, 1, ...; 0 for every
  other SMS and for every existing row).
- ``uq_outbound_delivery_part`` on ``(delivery_id, part)`` replaces
  ``uq_outbound_delivery``: a delivery still queues each of its replies at most once,
  however often it is delivered again.

SQLite cannot drop a constraint in place, so ``outbound`` is rebuilt (Alembic's batch
mode). No other table has a foreign key to it, so nothing else moves.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the column; the unique constraint takes it in."""
    with op.batch_alter_table("outbound") as batch:
        batch.add_column(sa.Column("part", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_constraint("uq_outbound_delivery", type_="unique")
        batch.create_unique_constraint("uq_outbound_delivery_part", ["delivery_id", "part"])


def downgrade() -> None:
    """One reply a delivery again: the later parts go."""
    op.execute("DELETE FROM outbound WHERE part > 0")
    with op.batch_alter_table("outbound") as batch:
        batch.drop_constraint("uq_outbound_delivery_part", type_="unique")
        batch.create_unique_constraint("uq_outbound_delivery", ["delivery_id"])
        batch.drop_column("part")
