"""Open circuits, and messages by sender.

- ``circuits``: which relay stopped sending to which webhook, and since when, so that
  ``status`` (another process) can show it. A row exists while a relay's circuit for
  the webhook is open; it goes when the circuit closes, or with its relay (``status``
  shows only relays with a live heartbeat).
- ``ix_messages_sender`` on ``messages (number, sender, received_at)``: what
  ``ordering = "sender"`` asks at every claim (is an earlier message of this sender
  still pending?). Claiming 32 of a 5,000-delivery backlog took 20 ms on SQLite and
  100 ms on PostgreSQL without it, 1.2 ms and 32 ms with it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table and the index."""
    op.create_table(
        "circuits",
        sa.Column("webhook", sa.String(64), nullable=False),
        sa.Column("relay_id", sa.String(64), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("webhook", "relay_id", name="pk_circuits"),
    )
    op.create_index("ix_messages_sender", "messages", ["number", "sender", "received_at"])


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_messages_sender", table_name="messages")
    op.drop_table("circuits")
