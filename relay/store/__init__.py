"""The durable store: messages seen, per-number poll state, deliveries and outbound SMS
queued, leases. Every SQL statement the relay runs is here (the Alembic migrations in
``relay/migrations`` apart).

SQLAlchemy Core over SQLite (WAL) by default, PostgreSQL where several relays share
one database. The schema is owned by the migrations and applied by
:meth:`Store.migrate` at start; :mod:`relay.store.schema` mirrors it.

The rule that keeps messages from being lost: a message is recorded as seen *and*
its deliveries are queued in one transaction (:meth:`Store.record`), so after a crash
it is either fully recorded and queued or not seen at all.

:class:`Store` is synchronous, one part per table it owns (``messages``,
``deliveries``, ``outbound``, ``optouts``, ``leases``, ``retention``, and ``operator``
for the operator commands); the daemon
calls it through :class:`AsyncStore`, which runs each call on one store thread, with
a timeout, so the event loop never blocks on I/O (what a timed-out call does is told
there).
"""

from __future__ import annotations

from relay.store.asyncstore import STORE_TIMEOUT, AsyncStore
from relay.store.base import CLAIMABLE, DEFAULT_LEASE, LOOKUP_CHUNK, Queue, new_relay_id
from relay.store.deliveries import Deliveries
from relay.store.engine import (
    PRIVATE_FILE_MODE,
    create_engine,
    private_file,
    private_sqlite_files,
    shown_url,
    sqlite_file,
)
from relay.store.leases import ROUNDS_PER_LEASE, Leases, round_interval
from relay.store.messages import Messages, webhook_id
from relay.store.operator import (
    DEFAULT_LIST_LIMIT,
    DeliveryRow,
    NumberStatus,
    Operator,
    Replayed,
    ReplyRow,
    Status,
    WebhookStatus,
    open_existing,
    schema_revision,
)
from relay.store.optouts import Optouts
from relay.store.outbound import Outbound
from relay.store.records import (
    DueDelivery,
    KeywordAction,
    NumberRecord,
    OptoutRow,
    OutboundSms,
    Outcome,
    Pruned,
    QueuedEvent,
    Recorded,
    Reply,
    SavedPollState,
    SendOutcome,
)
from relay.store.retention import SETTLED_OUTBOUND, Retention
from relay.store.schema import DEAD, DELIVERED, FAILED, PENDING, REFUSED, SENT, UNKNOWN

__all__ = [
    "CLAIMABLE",
    "DEAD",
    "DEFAULT_LEASE",
    "DEFAULT_LIST_LIMIT",
    "DELIVERED",
    "FAILED",
    "LOOKUP_CHUNK",
    "PENDING",
    "PRIVATE_FILE_MODE",
    "REFUSED",
    "ROUNDS_PER_LEASE",
    "SENT",
    "SETTLED_OUTBOUND",
    "STORE_TIMEOUT",
    "UNKNOWN",
    "AsyncStore",
    "DeliveryRow",
    "DueDelivery",
    "KeywordAction",
    "NumberRecord",
    "NumberStatus",
    "OptoutRow",
    "OutboundSms",
    "Outcome",
    "Pruned",
    "Queue",
    "QueuedEvent",
    "Recorded",
    "Replayed",
    "Reply",
    "ReplyRow",
    "SavedPollState",
    "SendOutcome",
    "Status",
    "Store",
    "WebhookStatus",
    "create_engine",
    "new_relay_id",
    "open_existing",
    "private_file",
    "private_sqlite_files",
    "round_interval",
    "schema_revision",
    "shown_url",
    "sqlite_file",
    "webhook_id",
]


class Store(Operator, Messages, Deliveries, Outbound, Optouts, Leases, Retention):
    """Synchronous access to the store. One instance per process."""
