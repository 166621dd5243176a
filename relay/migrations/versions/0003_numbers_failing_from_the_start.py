"""A number whose polls have failed from the start gets a row (for ``status``).

``numbers.first_polled_at`` becomes nullable: a row with no first poll is a
number that has never been polled successfully, so its backfill is still ahead.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Let first_polled_at be NULL."""
    with op.batch_alter_table("numbers") as batch:
        batch.alter_column(
            "first_polled_at", existing_type=sa.DateTime(timezone=True), nullable=True
        )


def downgrade() -> None:
    """Rows of numbers never polled successfully go; the column is NOT NULL again."""
    op.execute("DELETE FROM numbers WHERE first_polled_at IS NULL")
    with op.batch_alter_table("numbers") as batch:
        batch.alter_column(
            "first_polled_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )
