"""Deliveries of outbound events (``sms.sent``, ``sms.failed``), not only of messages.

``deliveries`` gains:

- ``event``: the event type it carries; ``sms.received`` for every existing row;
- ``outbound_id``: for an outbound event, the ``outbound`` row it tells of (no foreign
  key: the event is a snapshot, kept and replayable after retention prunes the SMS);
- ``data``: for an outbound event, the event's ``data`` as JSON, written when the
  outcome was recorded;

and ``message_id`` may be NULL (an outbound event carries no inbound message). An
outbound SMS tells each webhook of each event at most once:
``uq_deliveries_outbound_event`` on ``(outbound_id, event, webhook)``.

SQLite cannot drop NOT NULL in place, so the table is rebuilt (Alembic's batch mode).
Dropping the old table runs ``outbound.delivery_id``'s ``ON DELETE SET NULL`` (foreign
keys are on in the relay's connections, and the pragma cannot change inside the
migration's transaction), so the links of replies to their deliveries are read first
and written back after.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_LINKS = sa.text("SELECT id, delivery_id FROM outbound WHERE delivery_id IS NOT NULL")
_RELINK = sa.text("UPDATE outbound SET delivery_id = :delivery_id WHERE id = :id")


def upgrade() -> None:
    """Add the columns and the constraint; let ``message_id`` be NULL."""
    conn = op.get_bind()
    links = [dict(row._mapping) for row in conn.execute(_LINKS)]
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column("event", sa.String(32), nullable=False, server_default="sms.received")
        )
        batch.add_column(sa.Column("outbound_id", _ID))
        batch.add_column(sa.Column("data", sa.Text()))
        batch.alter_column("message_id", existing_type=_ID, nullable=True)
        batch.create_unique_constraint(
            "uq_deliveries_outbound_event", ["outbound_id", "event", "webhook"]
        )
    if links and conn.dialect.name == "sqlite":
        conn.execute(_RELINK, links)


def downgrade() -> None:
    """Drop outbound events and the columns; ``message_id`` is required again."""
    conn = op.get_bind()
    op.execute("DELETE FROM deliveries WHERE message_id IS NULL")
    links = [dict(row._mapping) for row in conn.execute(_LINKS)]
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("uq_deliveries_outbound_event", type_="unique")
        batch.alter_column("message_id", existing_type=_ID, nullable=False)
        batch.drop_column("data")
        batch.drop_column("outbound_id")
        batch.drop_column("event")
    if links and conn.dialect.name == "sqlite":
        conn.execute(_RELINK, links)
