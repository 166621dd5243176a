"""Initial schema: messages seen, per-number poll state, deliveries queued.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the three tables."""
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("provider_id", sa.String(128), nullable=False),
        sa.Column("sender", sa.String(32), nullable=False),
        sa.Column("recipient", sa.String(32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("seen_at", TS, nullable=False),
        sa.UniqueConstraint("number", "provider_id", name="uq_messages_number_provider_id"),
    )
    op.create_index("ix_messages_received_at", "messages", ["received_at"])
    op.create_table(
        "numbers",
        sa.Column("number", sa.String(32), primary_key=True),
        sa.Column("first_polled_at", TS, nullable=False),
        sa.Column("last_poll_at", TS, nullable=True),
        sa.Column("last_success_at", TS, nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column(
            "message_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("webhook", sa.String(64), nullable=False),
        sa.Column("webhook_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("queued_at", TS, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("last_attempt_at", TS, nullable=True),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.UniqueConstraint("message_id", "webhook", name="uq_deliveries_message_webhook"),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["webhook", "state", "next_attempt_at"])


def downgrade() -> None:
    """Drop everything."""
    op.drop_table("deliveries")
    op.drop_table("numbers")
    op.drop_index("ix_messages_received_at", table_name="messages")
    op.drop_table("messages")
