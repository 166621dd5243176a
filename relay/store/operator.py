"""What the operator commands (``status``, ``deliveries list`` and ``replay``) read
from and change in the store, and opening a store that must already exist.

The records here are what those commands render; their ``--json`` documents are
these dataclasses as dicts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from relay.clock import SystemClock
from relay.errors import ConfigError, StoreError
from relay.store.base import LOOKUP_CHUNK
from relay.store.engine import create_engine, one_line, sqlite_file
from relay.store.outbound import Outbound
from relay.store.schema import (
    DEAD,
    DELIVERED,
    PENDING,
    circuits,
    deliveries,
    leases,
    messages,
    numbers,
    outbound,
    relays,
)

if TYPE_CHECKING:
    from relay.store import Store

#: Rows ``deliveries list`` shows unless ``--limit`` says otherwise.
DEFAULT_LIST_LIMIT = 50


@dataclass(frozen=True)
class NumberStatus:
    """One configured number's poll state and lease."""

    number: str
    last_poll_at: datetime | None
    last_success_at: datetime | None
    consecutive_failures: int
    last_error: str | None
    #: When the gap episode under way began (a listing outran the relay); None: none.
    gap_since: datetime | None
    #: Listings that outran the relay, ever.
    gaps: int
    #: Listed messages reported as unresolved (details never had).
    unresolved: int
    lease_owner: str | None
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class WebhookStatus:
    """One webhook's deliveries."""

    name: str
    configured: bool
    pending: int
    delivered: int
    dead: int
    oldest_pending_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    #: Since when a live relay's circuit for it has been open (the earliest); None: closed.
    circuit_open_since: datetime | None = None


@dataclass(frozen=True)
class Status:
    """What ``status`` shows."""

    now: datetime
    numbers: tuple[NumberStatus, ...]
    webhooks: tuple[WebhookStatus, ...]
    outbound: dict[str, int]


@dataclass(frozen=True)
class ReplyRow:
    """The SMS a delivery's 2xx asked to send back (never its text)."""

    id: int
    state: str
    provider_ids: tuple[str, ...]


@dataclass(frozen=True)
class DeliveryRow:
    """One delivery, with the message it carries (never its text)."""

    id: int
    webhook: str
    state: str
    attempts: int
    webhook_id: str
    number: str
    provider_id: str
    queued_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    #: The SMS its 2xx asked to send back, in order (several for a TwiML answer).
    replies: tuple[ReplyRow, ...]
    #: The event it carries; an outbound event (``sms.sent``, ``sms.failed``) has no
    #: message (``number`` and ``provider_id`` are blank) but the SMS it tells of.
    event: str = "sms.received"
    outbound_id: int | None = None


@dataclass(frozen=True)
class Replayed:
    """What :meth:`Operator.replay` queued again."""

    queued: int
    #: Of them, how many had been delivered (a deliberate re-send).
    redelivered: int
    webhooks: frozenset[str]


class Operator(Outbound):
    """The operator commands' side of the store (they read the outbound counts too)."""

    def read_status(
        self, configured_numbers: Sequence[str], configured_webhooks: Sequence[str]
    ) -> Status:
        """Each configured number and webhook, in order (and any other webhook with deliveries)."""
        now = self.clock.now()
        d, n = deliveries.c, numbers.c
        columns = (
            n.last_poll_at,
            n.last_success_at,
            n.consecutive_failures,
            n.last_error,
            n.gap_since,
            n.gaps,
            n.unresolved,
        )
        with self.engine.connect() as conn:
            polled = {row[0]: row[1:] for row in conn.execute(sa.select(n.number, *columns))}
            lease = sa.select(leases.c.name, leases.c.owner, leases.c.expires_at)
            held = {row[0]: row[1:] for row in conn.execute(lease.where(leases.c.expires_at > now))}
            queues: dict[str, dict[str, int]] = {}
            oldest: dict[str, datetime] = {}
            query = sa.select(d.webhook, d.state, sa.func.count(), sa.func.min(d.queued_at))
            for hook, state, count, first in conn.execute(query.group_by(d.webhook, d.state)):
                queues.setdefault(hook, {})[state] = int(count)
                if state == PENDING:
                    oldest[hook] = first
            configured = list(configured_webhooks)
            hooks = configured + sorted(set(queues) - set(configured))
            failures = {
                hook: conn.execute(
                    sa.select(d.last_error, d.last_attempt_at)
                    .where(d.webhook == hook, d.last_error.is_not(None))
                    .order_by(d.last_attempt_at.desc(), d.id.desc())
                    .limit(1)
                ).first()
                for hook in hooks
            }
            alive = sa.select(relays.c.id).where(self.alive(now))
            opened = {
                hook: since
                for hook, since in conn.execute(
                    sa.select(circuits.c.webhook, sa.func.min(circuits.c.opened_at))
                    .where(circuits.c.relay_id.in_(alive.scalar_subquery()))
                    .group_by(circuits.c.webhook)
                )
            }
        never, free = (None, None, 0, None, None, 0, 0), (None, None)
        number_rows = [
            NumberStatus(number, *polled.get(number, never), *held.get(number, free))
            for number in configured_numbers
        ]
        hook_rows = []
        for hook in hooks:
            q = queues.get(hook, {})
            failed = failures[hook]
            hook_rows.append(
                WebhookStatus(
                    hook,
                    hook in configured,
                    q.get(PENDING, 0),
                    q.get(DELIVERED, 0),
                    q.get(DEAD, 0),
                    oldest.get(hook),
                    last_error=failed[0] if failed else None,
                    last_error_at=failed[1] if failed else None,
                    circuit_open_since=opened.get(hook),
                )
            )
        return Status(now, tuple(number_rows), tuple(hook_rows), self.outbound_counts())

    def list_deliveries(
        self,
        *,
        state: str | None = None,
        webhook: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> list[DeliveryRow]:
        """The latest ``limit`` deliveries (highest id first), filtered by state and webhook."""
        d = deliveries.c
        query = (
            sa.select(
                *(d[name] for name in ("id", "webhook", "state", "attempts", "webhook_id")),
                sa.func.coalesce(messages.c.number, "").label("number"),
                sa.func.coalesce(messages.c.provider_id, "").label("provider_id"),
                *(d[name] for name in ("queued_at", "next_attempt_at", "last_attempt_at")),
                *(d[name] for name in ("delivered_at", "last_status", "last_error")),
                d.event,
                d.outbound_id,
            )
            .outerjoin(messages, messages.c.id == d.message_id)
            .order_by(d.id.desc())
            .limit(limit)
        )
        if state is not None:
            query = query.where(d.state == state)
        if webhook is not None:
            query = query.where(d.webhook == webhook)
        o = outbound.c
        replies: dict[int, list[ReplyRow]] = {}
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
            ids = [row.id for row in rows]
            for start in range(0, len(ids), LOOKUP_CHUNK):
                asked = (
                    sa.select(o.delivery_id, o.id, o.state, o.provider_ids)
                    .where(o.delivery_id.in_(ids[start : start + LOOKUP_CHUNK]))
                    .order_by(o.delivery_id, o.part)
                )
                for r in conn.execute(asked):
                    provider_ids = tuple(json.loads(r.provider_ids or "[]"))
                    replies.setdefault(r.delivery_id, []).append(
                        ReplyRow(r.id, r.state, provider_ids)
                    )
        return [DeliveryRow(**row._mapping, replies=tuple(replies.get(row.id, ()))) for row in rows]

    def has_deliveries(self, webhook: str) -> bool:
        """Whether any delivery to ``webhook`` is in the self."""
        query = sa.select(deliveries.c.id).where(deliveries.c.webhook == webhook).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def replay(
        self,
        ids: Sequence[int] = (),
        *,
        dead: bool = False,
        webhook: str | None = None,
        since: float | None = None,
    ) -> Replayed:
        """Make deliveries pending again now: by ``ids``, or every dead one (of ``webhook``,
        whose last attempt was within ``since`` seconds).

        ``queued_at`` restarts the give-up window; attempts and ``webhook_id`` are kept.
        Claims are cleared, except on a pending delivery being attempted right now (its
        claim is live), which would otherwise be sent twice at once. Unknown ids raise
        :class:`ConfigError` naming them, and nothing changes.
        """
        now = self.clock.now()
        d = deliveries.c
        query = sa.select(d.id, d.state, d.webhook)
        if dead:
            query = query.where(d.state == DEAD)
            if webhook is not None:
                query = query.where(d.webhook == webhook)
            if since is not None:
                query = query.where(d.last_attempt_at >= now - timedelta(seconds=since))
        live = sa.and_(d.state == PENDING, d.claim_expires_at >= now)
        with self.engine.begin() as conn:
            if dead:
                found = list(conn.execute(query))
            else:
                found = []
                for start in range(0, len(ids), LOOKUP_CHUNK):
                    chunk = ids[start : start + LOOKUP_CHUNK]
                    found += conn.execute(query.where(d.id.in_(chunk)))
            missing = sorted(set(ids) - {row.id for row in found})
            if missing:
                msg = f"no delivery with id {', '.join(map(str, missing))}; nothing replayed"
                raise ConfigError(msg)
            chosen = [row.id for row in found]
            for start in range(0, len(chosen), LOOKUP_CHUNK):
                conn.execute(
                    deliveries.update()
                    .where(d.id.in_(chosen[start : start + LOOKUP_CHUNK]))
                    .values(
                        state=PENDING,
                        queued_at=now,
                        next_attempt_at=now,
                        delivered_at=None,
                        claimed_by=sa.case((live, d.claimed_by), else_=None),
                        claim_expires_at=sa.case((live, d.claim_expires_at), else_=None),
                    )
                )
        return Replayed(
            len(chosen),
            sum(row.state == DELIVERED for row in found),
            frozenset(row.webhook for row in found),
        )


@contextmanager
def open_existing(url: str, *, lease: float) -> Iterator[Store]:
    """The store at ``url``, closed afterwards; database errors become one-line StoreErrors.

    A SQLite store that does not exist is a ConfigError naming ``store.url``: an operator
    command never creates one (a wrong ``--config`` or working directory would otherwise
    show an empty store as the truth).
    """
    from relay.store import Store  # the whole store, which this module is a part of

    db = sqlite_file(url)
    if db is not None and not db.exists():
        msg = f'store.url: no store at {db} (run "aatrox-relay run" first, or check store.url)'
        raise ConfigError(msg)
    store = Store.open(url, SystemClock(), lease=lease)
    try:
        yield store
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"cannot read the store: {one_line(exc)}") from None
    finally:
        store.close()


def schema_revision(url: str, *, connect_timeout: int) -> str | None:
    """The schema revision of the store at ``url`` (None: no relay tables yet).

    Connects and reads, never creating anything. A store that cannot be opened is a
    one-line :class:`~relay.errors.StoreError`.
    """
    from relay import migrations

    engine = create_engine(url, connect_timeout=connect_timeout)
    try:
        with engine.connect() as conn:
            return migrations.revision(conn)
    except sa.exc.SQLAlchemyError as exc:
        msg = f"cannot open it: {one_line(exc)}"
        raise StoreError(msg) from None
    finally:
        engine.dispose()
