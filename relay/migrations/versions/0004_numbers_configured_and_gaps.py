"""What a number's polls need to keep every message: when it was configured, its
longest listing, and whether a listing outran the relay.

- ``numbers.configured_at``: when a relay first had the number in its config; a
  number's first successful poll delivers everything received since, whatever
  ``poll.backfill`` says (only older messages are backfill).
- ``numbers.longest_listing``: the most items one listing of the number held; a
  listing at least that long in which every item is new is a gap.
- ``numbers.gap_since`` / ``numbers.gaps``: the gap episode under way, and how many
  gapped listings the number has had.
- ``numbers.unresolved``: listed messages whose details could not be had for longer
  than the relay waits (reported, still retried).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the columns."""
    with op.batch_alter_table("numbers") as batch:
        batch.add_column(sa.Column("configured_at", TS, nullable=True))
        batch.add_column(
            sa.Column("longest_listing", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("gap_since", TS, nullable=True))
        batch.add_column(sa.Column("gaps", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("unresolved", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("numbers") as batch:
        for column in ("unresolved", "gaps", "gap_since", "longest_listing", "configured_at"):
            batch.drop_column(column)
