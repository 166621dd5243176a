"""Several relays on one store, and outbound SMS.

- ``relays``: a heartbeat per running relay, so each knows how many share the work.
- ``leases``: which relay polls which number, until when.
- ``deliveries.claimed_by`` / ``claim_expires_at``: which relay is sending it.
- ``outbound``: replies and sends queued for the Aatrox API.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Add relays, leases, delivery claims and the outbound queue."""
    op.create_table(
        "relays",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("expires_at", TS, nullable=True),
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("claim_expires_at", TS, nullable=True))
    op.create_index("ix_deliveries_claimed_by", "deliveries", ["claimed_by"])
    op.create_table(
        "outbound",
        sa.Column("id", ID, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column(
            "delivery_id",
            ID,
            sa.ForeignKey("deliveries.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("sender", sa.String(32), nullable=False),
        sa.Column("recipients", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("disclaimer", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("queued_at", TS, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("last_attempt_at", TS, nullable=True),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("provider_ids", sa.Text(), nullable=True),
        sa.Column("provider_status", sa.String(64), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claim_expires_at", TS, nullable=True),
        sa.UniqueConstraint("delivery_id", name="uq_outbound_delivery"),
    )
    op.create_index("ix_outbound_due", "outbound", ["state", "next_attempt_at"])


def downgrade() -> None:
    """Remove them again."""
    op.drop_index("ix_outbound_due", table_name="outbound")
    op.drop_table("outbound")
    op.drop_index("ix_deliveries_claimed_by", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("claim_expires_at")
        batch.drop_column("claimed_by")
    op.drop_table("leases")
    op.drop_table("relays")
