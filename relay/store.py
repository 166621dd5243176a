"""The durable store: messages seen, per-number poll state, deliveries queued.

SQLAlchemy Core over SQLite (WAL) by default, PostgreSQL where several relays
share one database. The schema is owned by the Alembic migrations in
``relay/migrations`` and applied by :meth:`Store.migrate` at start.

The rule that keeps messages from being lost: a message is recorded as seen
*and* its deliveries are queued in one transaction (:meth:`Store.record`), so
after a crash it is either fully recorded and queued or not seen at all.

Methods are synchronous; the daemon calls them through :class:`AsyncStore`,
which runs them on one worker thread so the event loop never blocks on I/O.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from relay.clock import Clock
from relay.errors import StoreError
from relay.inbound import InboundMessage
from relay.logs import fields
from relay.schema import (
    DEAD,
    DELIVERED,
    FAILED,
    PENDING,
    SENT,
    UNKNOWN,
    DeliveryState,
    UtcDateTime,
    deliveries,
    leases,
    messages,
    numbers,
    outbound,
    relays,
)

#: At most this many ids go into one ``IN (...)`` lookup.
LOOKUP_CHUNK = 500
#: How long a store call may take before the caller gives up on it.
STORE_TIMEOUT = 30.0

#: Default for how long a claim on a delivery lasts unless renewed (store.lease).
DEFAULT_LEASE = 15.0

#: The mode of a SQLite store's files (the database, its ``-wal`` and ``-shm``, the
#: instance lock): message texts and phone numbers are for the relay's user alone.
PRIVATE_FILE_MODE = 0o600
#: Files SQLite keeps beside a database (WAL, shared memory, rollback journal); it
#: creates them with the database file's own mode, but older relays left them ``0644``.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
#: Outbound SMS in these states are settled: :meth:`Store.prune` deletes them once old.
SETTLED_OUTBOUND = (SENT, FAILED, UNKNOWN)

T = TypeVar("T")
log = logging.getLogger("relay.store")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other engines and in-memory databases."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.query.get("uri") == "true":  # a sqlite3 URI ("file:...?mode=ro"): not a path
        return None
    return Path(parsed.database)


def private_file(path: Path, *, create: bool) -> None:
    """Make ``path`` readable by its owner alone: create it ``0600`` (when ``create``
    and it is missing), or tighten an existing one with a wider mode, with the warning
    ``relay.store.permissions_tightened`` (``relay.store.permissions_open`` when it cannot
    be changed: the file belongs to another user).

    OSError when it cannot be created.
    """
    if create:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
        except FileExistsError:
            pass
        else:
            return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if not mode & ~PRIVATE_FILE_MODE:
        return
    try:
        os.chmod(path, mode & PRIVATE_FILE_MODE)
    except OSError as exc:
        log.warning(
            "relay.store.permissions_open",
            extra=fields(path=str(path), mode=f"{mode:04o}", error=exc.strerror or str(exc)),
        )
    else:
        log.warning(
            "relay.store.permissions_tightened",
            extra=fields(path=str(path), was=f"{mode:04o}", now=f"{mode & PRIVATE_FILE_MODE:04o}"),
        )


def private_sqlite_files(db: Path) -> None:
    """Create the SQLite database ``db`` ``0600`` before SQLite does (its ``-wal`` and
    ``-shm`` then follow its mode), and tighten it and any of those left wider.

    StoreError naming ``store.url`` when the file cannot be created.
    """
    try:
        private_file(db, create=True)
    except OSError as exc:
        msg = f"store.url: cannot create {db}: {exc.strerror or exc}"
        raise StoreError(msg) from None
    for suffix in SQLITE_SIDE_FILES:
        private_file(db.with_name(db.name + suffix), create=False)


def new_relay_id() -> str:
    """A name for this relay process: host, pid and a random part."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


def _due_columns() -> sa.Select[Any]:
    return sa.select(
        deliveries.c.id,
        deliveries.c.webhook,
        deliveries.c.webhook_id,
        deliveries.c.attempts,
        deliveries.c.queued_at,
        messages.c.number,
        messages.c.provider_id,
        messages.c.sender,
        messages.c.recipient,
        messages.c.text,
        messages.c.received_at,
        deliveries.c.last_attempt_at,
    ).join(messages, messages.c.id == deliveries.c.message_id)


#: The queue tables whose rows relays claim.
CLAIMABLE = (deliveries, outbound)


def _unclaim(conn: Connection, owner: str | None) -> int:
    """Clear the claims of ``owner`` (everyone's with None) on every queue table."""
    cleared = 0
    for table in CLAIMABLE:
        whose = table.c.claimed_by.is_not(None) if owner is None else table.c.claimed_by == owner
        result = conn.execute(
            table.update().where(whose).values(claimed_by=None, claim_expires_at=None)
        )
        cleared += result.rowcount or 0
    return cleared


def webhook_id(number: str, provider_id: str, webhook: str) -> str:
    """The Standard Webhooks ``webhook-id`` of one message to one webhook.

    Derived from what identifies the delivery, so it is the same on every
    attempt, after a replay, and even if the store were rebuilt.
    """
    digest = hashlib.sha256(f"{number}\x00{provider_id}\x00{webhook}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


@dataclass(frozen=True)
class NumberRecord:
    """What the store knows of one number's polls, read at start and on reload."""

    configured_at: datetime
    first_polled_at: datetime | None
    last_success_at: datetime | None
    longest_listing: int
    gap_since: datetime | None
    gaps: int


@dataclass(frozen=True)
class Recorded:
    """What one :meth:`Store.record` call wrote."""

    messages: int
    deliveries: int


@dataclass(frozen=True)
class Pruned:
    """What one :meth:`Store.apply_retention` deleted."""

    messages: int
    outbound: int


@dataclass(frozen=True)
class DueDelivery:
    """A delivery that is due, with the message it carries."""

    id: int
    webhook: str
    webhook_id: str
    attempts: int
    queued_at: datetime
    number: str
    provider_id: str
    sender: str
    recipient: str
    text: str
    received_at: datetime
    last_attempt_at: datetime | None = None

    @property
    def replayed(self) -> bool:
        """Queued again by ``deliveries replay`` after an earlier attempt."""
        return self.last_attempt_at is not None and self.queued_at > self.last_attempt_at


@dataclass(frozen=True)
class Reply:
    """An SMS a webhook asked to send back, queued with its delivery's outcome."""

    sender: str
    recipient: str
    text: str
    disclaimer: bool = False


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt, to be written back."""

    delivery_id: int
    attempted_at: datetime
    state: DeliveryState
    next_attempt_at: datetime | None = None
    status: int | None = None
    error: str | None = None
    reply: Reply | None = None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_engine(url: str, *, connect_timeout: int | None = None) -> Engine:
    """An engine for ``url``, tuned for the relay (WAL and foreign keys on SQLite).

    ``postgresql://`` and ``postgres://`` mean psycopg 3, the driver the relay ships with.
    ``connect_timeout`` (whole seconds) bounds how long connecting to PostgreSQL may take.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    sqlite = url.startswith("sqlite")
    connect_args: dict[str, Any] = {}
    if connect_timeout is not None and not sqlite:
        connect_args["connect_timeout"] = connect_timeout
    try:
        engine = sa.create_engine(url, pool_pre_ping=not sqlite, connect_args=connect_args)
    except (sa.exc.ArgumentError, ImportError) as exc:
        msg = f"store.url: cannot use {sa.engine.make_url(url).render_as_string()}: {exc}"
        raise StoreError(msg) from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Store:
    """Synchronous access to the store. One instance per process."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        *,
        relay_id: str | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.engine = engine
        self.clock = clock
        #: Who this relay is in claims and leases.
        self.relay_id = relay_id or new_relay_id()
        #: How long a claim lasts unless renewed.
        self.lease = lease
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            msg = f"store.url: unsupported database {dialect!r} (use sqlite or postgresql)"
            raise StoreError(msg)
        #: ``insert()`` of this dialect, with ``on_conflict_do_*``.
        self.insert: Callable[[sa.Table], Any] = (
            sqlite_insert if dialect == "sqlite" else postgresql_insert
        )
        #: No other relay can be running on this store (SQLite, under the instance lock).
        self.alone = False
        ts = UtcDateTime()
        self._save_outcome = (
            deliveries.update()
            .where(deliveries.c.id == sa.bindparam("b_id"))
            .values(
                state=sa.bindparam("b_state"),
                attempts=deliveries.c.attempts + 1,
                last_attempt_at=sa.bindparam("b_at", type_=ts),
                last_status=sa.bindparam("b_status", type_=sa.Integer()),
                last_error=sa.bindparam("b_error", type_=sa.Text()),
                delivered_at=sa.bindparam("b_delivered_at", type_=ts),
                next_attempt_at=sa.func.coalesce(
                    sa.bindparam("b_next", type_=ts), deliveries.c.next_attempt_at
                ),
                claimed_by=None,
                claim_expires_at=None,
            )
        )
        self._queue_reply = self.insert(outbound).on_conflict_do_nothing(
            index_elements=[outbound.c.delivery_id]
        )

    @classmethod
    def open(
        cls,
        url: str,
        clock: Clock,
        *,
        migrate: bool = True,
        relay_id: str | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> Store:
        """Connect to ``url`` and bring its schema up to date.

        A SQLite database is created ``0600`` if it does not exist yet, and tightened to
        that if it (or its ``-wal`` or ``-shm``) is readable by others.
        """
        db = sqlite_file(url)
        if db is not None:
            private_sqlite_files(db)
        store = cls(create_engine(url), clock, relay_id=relay_id, lease=lease)
        if migrate:
            store.migrate()
        return store

    def migrate(self) -> bool:
        """Bring the schema to :data:`relay.migrations.HEAD`; whether anything was applied.

        A store already there costs one query and no Alembic. On PostgreSQL, relays
        migrating at once take turns (an advisory lock), so all of them start.
        """
        from relay import migrations

        try:
            with self.engine.begin() as conn:
                return migrations.upgrade(conn)
        except sa.exc.SQLAlchemyError as exc:
            msg = f"cannot migrate the store: {_one_line(exc)}"
            raise StoreError(msg) from None

    def close(self) -> None:
        """Release every connection."""
        self.engine.dispose()

    # --- polling ------------------------------------------------------------

    def load_numbers(self, names: Sequence[str]) -> dict[str, NumberRecord]:
        """What the store knows of each configured number, marking any it has never seen
        (or knew only from failed polls) as configured now: one transaction."""
        now = self.clock.now()
        wanted = list(dict.fromkeys(names))
        found: dict[str, NumberRecord] = {}
        with self.engine.begin() as conn:
            if wanted:
                conn.execute(
                    self.insert(numbers).on_conflict_do_nothing(index_elements=[numbers.c.number]),
                    [{"number": name, "configured_at": now} for name in wanted],
                )
                conn.execute(
                    numbers.update()
                    .where(numbers.c.number.in_(wanted), numbers.c.configured_at.is_(None))
                    .values(configured_at=now)
                )
            n = numbers.c
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                chunk = wanted[start : start + LOOKUP_CHUNK]
                query = sa.select(
                    n.number,
                    n.configured_at,
                    n.first_polled_at,
                    n.last_success_at,
                    n.longest_listing,
                    n.gap_since,
                    n.gaps,
                ).where(n.number.in_(chunk))
                for row in conn.execute(query):
                    found[row.number] = NumberRecord(*row[1:])
        return found

    def known_numbers(self) -> set[str]:
        """Numbers that have had their first poll (their backfill is done)."""
        with self.engine.connect() as conn:
            return set(
                conn.scalars(
                    sa.select(numbers.c.number).where(numbers.c.first_polled_at.is_not(None))
                )
            )

    def known_ids(self, number: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are already recorded for ``number``: one query per 500 ids."""
        found: set[str] = set()
        if not ids:
            return found
        with self.engine.connect() as conn:
            for start in range(0, len(ids), LOOKUP_CHUNK):
                chunk = ids[start : start + LOOKUP_CHUNK]
                query = sa.select(messages.c.provider_id).where(
                    messages.c.number == number, messages.c.provider_id.in_(chunk)
                )
                found.update(conn.scalars(query))
        return found

    def record(
        self,
        number: str,
        new: Sequence[InboundMessage],
        targets: Callable[[InboundMessage], Sequence[str]],
    ) -> Recorded:
        """Record ``new`` messages of ``number`` as seen and queue their deliveries.

        One transaction: the number's first-poll mark, the messages, and one
        pending delivery per webhook that ``targets(message)`` names. A message
        already recorded (by an earlier poll or another relay) is left alone,
        and gets no second set of deliveries.
        """
        now = self.clock.now()
        with self.engine.begin() as conn:
            conn.execute(
                self.insert(numbers)
                .values(number=number, first_polled_at=now, last_poll_at=now, last_success_at=now)
                .on_conflict_do_update(
                    index_elements=[numbers.c.number],
                    set_={
                        "first_polled_at": sa.func.coalesce(numbers.c.first_polled_at, now),
                        "last_poll_at": now,
                        "last_success_at": now,
                        "consecutive_failures": 0,
                        "last_error": None,
                    },
                )
            )
            if not new:
                return Recorded(0, 0)
            rows = [
                {
                    "number": number,
                    "provider_id": m.id,
                    "sender": m.sender or "",
                    "recipient": m.recipient,
                    "text": m.text or "",
                    "received_at": m.received_at,
                    "seen_at": now,
                }
                for m in new
            ]
            stmt = (
                self.insert(messages)
                .on_conflict_do_nothing(index_elements=[messages.c.number, messages.c.provider_id])
                .returning(messages.c.id, messages.c.provider_id)
            )
            inserted = {pid: mid for mid, pid in conn.execute(stmt, rows)}
            queued = [
                {
                    "message_id": inserted[m.id],
                    "webhook": hook,
                    "webhook_id": webhook_id(number, m.id, hook),
                    "state": PENDING,
                    "attempts": 0,
                    "queued_at": now,
                    "next_attempt_at": now,
                }
                for m in new
                if m.id in inserted
                for hook in targets(m)
            ]
            if queued:
                conn.execute(deliveries.insert(), queued)
        return Recorded(len(inserted), len(queued))

    def record_failure(self, number: str, error: str) -> None:
        """Note a failed poll of ``number`` (for ``status``). A number never polled
        successfully gets a row without a first poll: its backfill is still ahead."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            conn.execute(
                self.insert(numbers)
                .values(number=number, last_poll_at=now, consecutive_failures=1, last_error=error)
                .on_conflict_do_update(
                    index_elements=[numbers.c.number],
                    set_={
                        "last_poll_at": now,
                        "consecutive_failures": numbers.c.consecutive_failures + 1,
                        "last_error": error,
                    },
                )
            )

    # --- delivering ---------------------------------------------------------

    def claim_ids(
        self, conn: Connection, table: sa.Table, limit: int, *where: sa.ColumnElement[bool]
    ) -> list[int]:
        """Claim for this relay up to ``limit`` pending rows of a queue table (``deliveries``
        or ``outbound``) that are due and unclaimed, or whose claim lapsed; oldest first.

        A claim lasts ``lease`` seconds unless renewed; while it lasts no other relay
        takes the row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL). Returns the ids.
        """
        now = self.clock.now()
        free = (
            sa.select(table.c.id)
            .where(
                *where,
                table.c.state == PENDING,
                table.c.next_attempt_at <= now,
                sa.or_(table.c.claim_expires_at.is_(None), table.c.claim_expires_at < now),
            )
            .order_by(table.c.next_attempt_at, table.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(
            conn.scalars(
                table.update()
                .where(table.c.id.in_(free.scalar_subquery()))
                .values(
                    claimed_by=self.relay_id, claim_expires_at=now + timedelta(seconds=self.lease)
                )
                .returning(table.c.id)
            )
        )

    def claim(self, webhook: str, limit: int) -> list[DueDelivery]:
        """Claim up to ``limit`` due deliveries to ``webhook`` for this relay, oldest first."""
        with self.engine.begin() as conn:
            ids = self.claim_ids(conn, deliveries, limit, deliveries.c.webhook == webhook)
            if not ids:
                return []
            rows = conn.execute(
                _due_columns()
                .where(deliveries.c.id.in_(ids))
                .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            )
            return [DueDelivery(*row) for row in rows]

    def next_due(self, webhook: str) -> datetime | None:
        """When the next pending delivery to ``webhook`` that this relay is not already
        sending can be claimed: its retry time, or when another relay's claim runs out."""
        unclaimed = sa.select(sa.func.min(deliveries.c.next_attempt_at)).where(
            deliveries.c.webhook == webhook,
            deliveries.c.state == PENDING,
            deliveries.c.claimed_by.is_(None),
        )
        with self.engine.connect() as conn:
            found = [conn.execute(unclaimed).scalar_one_or_none()]
            if not self.alone:
                others = sa.select(sa.func.min(deliveries.c.claim_expires_at)).where(
                    deliveries.c.claimed_by.is_not(None),
                    deliveries.c.claimed_by != self.relay_id,
                    deliveries.c.webhook == webhook,
                    deliveries.c.state == PENDING,
                )
                found.append(conn.execute(others).scalar_one_or_none())
        times = [t for t in found if t is not None]
        return min(times) if times else None

    def save_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Write back a batch of attempt results in one transaction, releasing their claims.

        A reply that came with a 2xx is queued in the same transaction, at most
        once per delivery: a repeated delivery's reply is ignored.
        """
        if not outcomes:
            return
        rows = [
            {
                "b_id": o.delivery_id,
                "b_state": o.state,
                "b_at": o.attempted_at,
                "b_status": o.status,
                "b_error": o.error,
                "b_delivered_at": o.attempted_at if o.state == DELIVERED else None,
                "b_next": o.next_attempt_at,
            }
            for o in outcomes
        ]
        replies = [
            {
                "kind": "reply",
                "delivery_id": o.delivery_id,
                "sender": o.reply.sender,
                "recipients": json.dumps([o.reply.recipient]),
                "text": o.reply.text,
                "disclaimer": o.reply.disclaimer,
                "state": PENDING,
                "queued_at": o.attempted_at,
                "next_attempt_at": o.attempted_at,
            }
            for o in outcomes
            if o.reply is not None
        ]
        with self.engine.begin() as conn:
            conn.execute(self._save_outcome, rows)
            if replies:
                conn.execute(self._queue_reply, replies)

    def reset_ownership(self) -> None:
        """Forget every relay, lease and claim: only when no other relay can be running
        (SQLite, under the instance lock), so a restart does not wait for a killed
        process's leases and claims to lapse."""
        with self.engine.begin() as conn:
            _unclaim(conn, None)
            conn.execute(leases.update().values(owner=None, expires_at=None))
            conn.execute(relays.delete())
        self.alone = True

    def release_claims(self) -> int:
        """Give up this relay's claims (at shutdown), so the work is due again at once."""
        with self.engine.begin() as conn:
            return _unclaim(conn, self.relay_id)

    def queue_stats(self) -> dict[str, tuple[int, int, datetime | None]]:
        """Per webhook: pending deliveries, dead ones, and when the oldest pending was queued."""
        query = (
            sa.select(
                deliveries.c.webhook,
                deliveries.c.state,
                sa.func.count(),
                sa.func.min(deliveries.c.queued_at),
            )
            .where(deliveries.c.state.in_([PENDING, DEAD]))
            .group_by(deliveries.c.webhook, deliveries.c.state)
        )
        stats: dict[str, tuple[int, int, datetime | None]] = {}
        with self.engine.connect() as conn:
            for hook, state, count, oldest in conn.execute(query):
                pending, dead, first = stats.get(hook, (0, 0, None))
                if state == PENDING:
                    pending, first = int(count), oldest
                else:
                    dead = int(count)
                stats[hook] = (pending, dead, first)
        return stats

    def ping(self) -> None:
        """A trivial query: raises when the store does not answer."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def save_poll_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Persist numbers' poll state (for ``status`` and the next start): dicts with
        number, last_poll_at, last_success_at, consecutive_failures, last_error,
        longest_listing, gap_since, gaps and unresolved. Unknown numbers are skipped."""
        if not states:
            return
        stmt = (
            numbers.update()
            .where(numbers.c.number == sa.bindparam("key"))
            .values(
                last_poll_at=sa.func.coalesce(
                    sa.bindparam("last_poll_at", type_=UtcDateTime()), numbers.c.last_poll_at
                ),
                last_success_at=sa.func.coalesce(
                    sa.bindparam("last_success_at", type_=UtcDateTime()), numbers.c.last_success_at
                ),
                consecutive_failures=sa.bindparam("consecutive_failures"),
                last_error=sa.bindparam("last_error"),
                longest_listing=sa.bindparam("longest_listing"),
                gap_since=sa.bindparam("gap_since", type_=UtcDateTime()),
                gaps=sa.bindparam("gaps"),
                unresolved=sa.bindparam("unresolved"),
            )
        )
        with self.engine.begin() as conn:
            conn.execute(
                stmt,
                [
                    {"key": s["number"], **{k: v for k, v in s.items() if k != "number"}}
                    for s in states
                ],
            )

    def counts(self) -> dict[str, int]:
        """Deliveries by state, for status lines and tests."""
        query = sa.select(deliveries.c.state, sa.func.count()).group_by(deliveries.c.state)
        with self.engine.connect() as conn:
            found = {state: int(n) for state, n in conn.execute(query)}
        return {state: found.get(state, 0) for state in (PENDING, DELIVERED, DEAD)}

    # --- retention ----------------------------------------------------------

    def prune(self, retention: float) -> int:
        """Apply ``retention`` (see :meth:`apply_retention`); how many messages were deleted."""
        return self.apply_retention(retention).messages

    def apply_retention(self, retention: float) -> Pruned:
        """Delete what is settled and older than ``retention`` seconds, in one transaction.

        Messages whose deliveries are all settled: a message with a pending delivery is
        kept, whatever its age; so is one with a dead delivery that failed within the
        retention window (it may be replayed). Outbound SMS that are sent, failed or of
        unknown outcome, whose last attempt (or queueing) is older than the horizon: a
        pending one is kept, whatever its age. Outbound SMS go first, so the deliveries
        deleted after them (their ``delivery_id`` is set to NULL, ``ON DELETE SET NULL``)
        touch only the replies still kept.
        """
        horizon = self.clock.now() - timedelta(seconds=retention)
        blocking = sa.select(deliveries.c.id).where(
            deliveries.c.message_id == messages.c.id,
            sa.or_(
                deliveries.c.state == PENDING,
                sa.and_(deliveries.c.state == DEAD, deliveries.c.last_attempt_at >= horizon),
            ),
        )
        old = sa.select(messages.c.id).where(messages.c.received_at < horizon, ~blocking.exists())
        settled = sa.select(outbound.c.id).where(
            outbound.c.state.in_(SETTLED_OUTBOUND),
            sa.func.coalesce(outbound.c.last_attempt_at, outbound.c.queued_at) < horizon,
        )
        with self.engine.begin() as conn:
            sms = list(conn.scalars(settled))
            for start in range(0, len(sms), LOOKUP_CHUNK):
                conn.execute(
                    outbound.delete().where(outbound.c.id.in_(sms[start : start + LOOKUP_CHUNK]))
                )
            ids = list(conn.scalars(old))
            for start in range(0, len(ids), LOOKUP_CHUNK):
                chunk = ids[start : start + LOOKUP_CHUNK]
                conn.execute(deliveries.delete().where(deliveries.c.message_id.in_(chunk)))
                conn.execute(messages.delete().where(messages.c.id.in_(chunk)))
        return Pruned(messages=len(ids), outbound=len(sms))


class AsyncStore:
    """The store for the event loop: every call runs on one worker thread, with a timeout."""

    def __init__(self, store: Store, *, timeout: float = STORE_TIMEOUT) -> None:
        self.sync = store
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-store")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the store thread; StoreError when it fails or is slow."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            msg = f"store call {fn.__name__} took longer than {self.timeout:g}s"
            raise StoreError(msg) from None
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"store call {fn.__name__} failed: {_one_line(exc)}") from exc

    def close(self) -> None:
        """Wait for the store thread's current call, then release the store."""
        self._executor.shutdown(wait=True)
        self.sync.close()


def _one_line(exc: BaseException) -> str:
    """A database error's first line, without SQL or parameters (they may hold message text)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}"[:300]
