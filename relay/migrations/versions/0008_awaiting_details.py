"""Listed messages still waiting for their details, kept across restarts.

- ``numbers.awaiting_details``: JSON, the messages of the number's id-only (or
  half-complete) listings whose details the relay has not had yet, as listed (id,
  sender, recipient, text, received_at; whatever the listing gave). Written with the
  number's poll state right after a poll that found a new one, emptied as they are
  recorded; read at start, so a restart (or a crash) does not forget a message the
  listing has already moved past. NULL: none.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the column."""
    op.add_column("numbers", sa.Column("awaiting_details", sa.Text()))


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("numbers") as batch:
        batch.drop_column("awaiting_details")
