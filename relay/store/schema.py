"""The store's tables, as SQLAlchemy Core sees them.

The migrations in ``relay/migrations`` own the real schema; these mirror it, every
index and constraint included, as ``tests/test_schema.py`` checks with Alembic's own
comparison on SQLite and on PostgreSQL (so ``alembic revision --autogenerate`` finds
nothing to change).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Final, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

DeliveryState = Literal["pending", "delivered", "dead"]
PENDING: Final = "pending"
DELIVERED: Final = "delivered"
DEAD: Final = "dead"

OutboundState = Literal["pending", "sent", "failed", "unknown", "refused"]
SENT: Final = "sent"
FAILED: Final = "failed"
UNKNOWN: Final = "unknown"
#: Not sent: every recipient had opted out of SMS from its sender (STOP).
REFUSED: Final = "refused"


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware datetimes in, timezone-aware UTC datetimes out, on every engine."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store UTC; SQLite keeps no zone, so it gets the naive UTC time."""
        if value is None:
            return None
        if value.tzinfo is None:
            msg = "naive datetime given to the store"
            raise ValueError(msg)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read back as aware UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
metadata = sa.MetaData()

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("number", sa.String(32), nullable=False),
    sa.Column("provider_id", sa.String(128), nullable=False),
    sa.Column("sender", sa.String(32), nullable=False),
    sa.Column("recipient", sa.String(32), nullable=False),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("received_at", UtcDateTime(), nullable=False),
    sa.Column("seen_at", UtcDateTime(), nullable=False),
    #: "stop", "start" or "help" when the whole text was an ``[optout]`` keyword (0007).
    sa.Column("keyword", sa.String(16)),
    sa.UniqueConstraint("number", "provider_id", name="uq_messages_number_provider_id"),
    sa.Index("ix_messages_received_at", "received_at"),
    sa.Index("ix_messages_sender", "number", "sender", "received_at"),
)

numbers = sa.Table(
    "numbers",
    metadata,
    sa.Column("number", sa.String(32), primary_key=True),
    #: NULL until the number's first successful poll (its backfill is still ahead).
    sa.Column("first_polled_at", UtcDateTime()),
    sa.Column("last_poll_at", UtcDateTime()),
    sa.Column("last_success_at", UtcDateTime()),
    sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text()),
    #: When a relay first had the number in its config: its first poll delivers
    #: everything received since (migration 0004).
    sa.Column("configured_at", UtcDateTime()),
    #: The most items one listing of the number held.
    sa.Column("longest_listing", sa.Integer(), nullable=False, server_default="0"),
    #: When the gap episode under way began (a listing outran the relay); NULL: none.
    sa.Column("gap_since", UtcDateTime()),
    #: Listings that outran the relay, ever.
    sa.Column("gaps", sa.Integer(), nullable=False, server_default="0"),
    #: Listed messages whose details could not be had for longer than the relay waits.
    sa.Column("unresolved", sa.Integer(), nullable=False, server_default="0"),
    #: JSON: listed messages still waiting for their details, as listed (migration 0008).
    sa.Column("awaiting_details", sa.Text()),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    #: The message it carries; NULL for an outbound event (``outbound_id`` and ``data``).
    sa.Column("message_id", _ID, sa.ForeignKey("messages.id", ondelete="CASCADE")),
    sa.Column("webhook", sa.String(64), nullable=False),
    sa.Column("webhook_id", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("queued_at", UtcDateTime(), nullable=False),
    sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
    sa.Column("last_attempt_at", UtcDateTime()),
    sa.Column("delivered_at", UtcDateTime()),
    sa.Column("last_status", sa.Integer()),
    sa.Column("last_error", sa.Text()),
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("claim_expires_at", UtcDateTime()),
    #: The event type (``sms.received``, ``sms.sent``, ``sms.failed``; migration 0006).
    sa.Column("event", sa.String(32), nullable=False, server_default="sms.received"),
    #: An outbound event's SMS (no foreign key: the event outlives the SMS's row).
    sa.Column("outbound_id", _ID),
    #: An outbound event's ``data``, JSON, as it was when the outcome was recorded.
    sa.Column("data", sa.Text()),
    sa.UniqueConstraint("message_id", "webhook", name="uq_deliveries_message_webhook"),
    sa.UniqueConstraint("outbound_id", "event", "webhook", name="uq_deliveries_outbound_event"),
    sa.Index("ix_deliveries_due", "webhook", "state", "next_attempt_at"),
    sa.Index("ix_deliveries_claimed_by", "claimed_by"),
)

relays = sa.Table(
    "relays",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("heartbeat_at", UtcDateTime(), nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64)),
    sa.Column("expires_at", UtcDateTime()),
)

outbound = sa.Table(
    "outbound",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("delivery_id", _ID, sa.ForeignKey("deliveries.id", ondelete="SET NULL")),
    sa.Column("sender", sa.String(32), nullable=False),
    sa.Column("recipients", sa.Text(), nullable=False),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("disclaimer", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("queued_at", UtcDateTime(), nullable=False),
    sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
    sa.Column("last_attempt_at", UtcDateTime()),
    sa.Column("sent_at", UtcDateTime()),
    sa.Column("provider_ids", sa.Text()),
    sa.Column("provider_status", sa.String(64)),
    sa.Column("last_status", sa.Integer()),
    sa.Column("last_error", sa.Text()),
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("claim_expires_at", UtcDateTime()),
    #: Which of its delivery's replies this is (one per TwiML ``<Message>``); 0 otherwise.
    sa.Column("part", sa.Integer(), nullable=False, server_default="0"),
    sa.UniqueConstraint("delivery_id", "part", name="uq_outbound_delivery_part"),
    sa.Index("ix_outbound_due", "state", "next_attempt_at"),
)

circuits = sa.Table(
    "circuits",
    metadata,
    sa.Column("webhook", sa.String(64), nullable=False),
    sa.Column("relay_id", sa.String(64), nullable=False),
    sa.Column("opened_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("webhook", "relay_id", name="pk_circuits"),
)

optouts = sa.Table(
    "optouts",
    metadata,
    sa.Column("number", sa.String(32), nullable=False),
    sa.Column("sender", sa.String(32), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    #: How: "keyword" (an inbound STOP) or "cli" (``aatrox-relay optouts add``).
    sa.Column("source", sa.String(16), nullable=False),
    sa.PrimaryKeyConstraint("number", "sender", name="pk_optouts"),
)
