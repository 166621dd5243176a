"""What every part of the store shares: the engine, the clock, who this relay is, and
the claims on the two queue tables (``deliveries`` and ``outbound``)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from relay.clock import Clock
from relay.errors import StoreError
from relay.store.engine import create_engine, one_line, private_sqlite_files, sqlite_file
from relay.store.records import KeywordRules
from relay.store.schema import PENDING, UNKNOWN, circuits, deliveries, leases, outbound, relays

#: At most this many ids go into one ``IN (...)`` lookup.
LOOKUP_CHUNK = 500
#: Default for how long a claim on a delivery lasts unless renewed (store.lease).
DEFAULT_LEASE = 15.0

#: The queue tables whose rows relays claim.
CLAIMABLE = (deliveries, outbound)
#: A queue, by name: deliveries to webhooks, or outbound SMS.
Queue = Literal["deliveries", "outbound"]
_QUEUES: dict[Queue, sa.Table] = {"deliveries": deliveries, "outbound": outbound}

StoreT = TypeVar("StoreT", bound="StoreBase")


def new_relay_id() -> str:
    """A name for this relay process: host, pid and a random part."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


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


class StoreBase:
    """The engine, the clock and this relay's identity; the parts of the store build on it."""

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
        #: The ``[optout]`` keywords :meth:`Messages.record` applies (the daemon sets them).
        self.keywords: KeywordRules | None = None

    @classmethod
    def open(
        cls: type[StoreT],
        url: str,
        clock: Clock,
        *,
        migrate: bool = True,
        relay_id: str | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> StoreT:
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
            msg = f"cannot migrate the store: {one_line(exc)}"
            raise StoreError(msg) from None

    def close(self) -> None:
        """Release every connection."""
        self.engine.dispose()

    def ping(self) -> None:
        """A trivial query: raises when the store does not answer."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def alive(self, now: datetime) -> sa.ColumnElement[bool]:
        """Whether a ``relays`` row is a live relay: a heartbeat within ``lease`` of ``now``."""
        return relays.c.heartbeat_at >= now - timedelta(seconds=self.lease)

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

    def release(
        self, queue: Queue, ids: Sequence[int], pause: float, *, unknown: str | None = None
    ) -> int:
        """Hand back this relay's claims on rows ``ids`` of ``queue``: due again ``pause``
        seconds from now, or, with ``unknown`` (an error text), settled as ``unknown``.
        Rows another relay claimed meanwhile are left alone. How many were released."""
        table = _QUEUES[queue]
        now = self.clock.now()
        marked = {} if unknown is None else {"state": UNKNOWN, "last_error": unknown}
        with self.engine.begin() as conn:
            result = conn.execute(
                table.update()
                .where(table.c.id.in_(list(ids)), table.c.claimed_by == self.relay_id)
                .values(
                    claimed_by=None,
                    claim_expires_at=None,
                    next_attempt_at=now + timedelta(seconds=pause),
                    **marked,
                )
            )
            return int(result.rowcount or 0)

    def reset_ownership(self) -> None:
        """Forget every relay, lease and claim: only when no other relay can be running
        (SQLite, under the instance lock), so a restart does not wait for a killed
        process's leases and claims to lapse."""
        with self.engine.begin() as conn:
            _unclaim(conn, None)
            conn.execute(leases.update().values(owner=None, expires_at=None))
            conn.execute(relays.delete())
            conn.execute(circuits.delete())
        self.alone = True

    def release_claims(self) -> int:
        """Give up this relay's claims (at shutdown), so the work is due again at once."""
        with self.engine.begin() as conn:
            return _unclaim(conn, self.relay_id)
