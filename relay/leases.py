"""Sharing the work between relays on one store.

Every relay keeps a heartbeat row. Each number has a lease row: the relay that
holds an unexpired lease is the one that polls the number. Every
``lease / ROUNDS_PER_LEASE`` seconds each relay, in one short transaction:

1. renews its heartbeat, and counts the relays alive (heartbeat within a lease);
2. renews the leases it holds, and the claims on the deliveries it is sending;
3. takes free or expired leases up to its fair share, ceil(numbers / relays),
   and hands back any it holds beyond that share.

A held lease is renewed to expire ``lease - round`` from now, so when a relay
dies, its leases and claims run out and are taken over by another relay within
``store.lease`` seconds (15 s by default).

Deduplication never depends on leases: two relays polling one number at once
(a moment during a handover) record each message once, because the store's
unique key decides. Leases only keep each number polled at one relay's rate.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa

from relay.errors import RelayError
from relay.logs import fields
from relay.schema import leases, relays
from relay.store import CLAIMABLE, AsyncStore, Store

log = logging.getLogger("relay.leases")

#: Lease rounds per lease period.
ROUNDS_PER_LEASE = 5


def round_interval(lease: float) -> float:
    """Seconds between two lease rounds."""
    return lease / ROUNDS_PER_LEASE


def balance(store: Store, names: Sequence[str]) -> set[str]:
    """One lease round for this relay over the configured numbers; the numbers it now holds."""
    now = store.clock.now()
    me = store.relay_id
    alive_since = now - timedelta(seconds=store.lease)
    expires = now + timedelta(seconds=store.lease - round_interval(store.lease))
    wanted = list(names)
    with store.engine.begin() as conn:
        conn.execute(
            store.insert(relays)
            .values(id=me, started_at=now, heartbeat_at=now)
            .on_conflict_do_update(index_elements=[relays.c.id], set_={"heartbeat_at": now})
        )
        conn.execute(relays.delete().where(relays.c.heartbeat_at < now - timedelta(days=1)))
        alive = conn.execute(
            sa.select(sa.func.count())
            .select_from(relays)
            .where(relays.c.heartbeat_at >= alive_since)
        ).scalar_one()
        for table in CLAIMABLE:
            conn.execute(
                table.update()
                .where(table.c.claimed_by == me, table.c.claim_expires_at >= now)
                .values(claim_expires_at=now + timedelta(seconds=store.lease))
            )
        if not wanted:
            return set()
        conn.execute(
            store.insert(leases).on_conflict_do_nothing(index_elements=[leases.c.name]),
            [{"name": name} for name in wanted],
        )
        held = set(
            conn.scalars(
                leases.update()
                .where(leases.c.owner == me, leases.c.expires_at >= now, leases.c.name.in_(wanted))
                .values(expires_at=expires)
                .returning(leases.c.name)
            )
        )
        share = math.ceil(len(wanted) / max(int(alive), 1))
        if len(held) < share:
            free = (
                sa.select(leases.c.name)
                .where(
                    leases.c.name.in_(wanted),
                    sa.or_(leases.c.owner.is_(None), leases.c.expires_at < now),
                )
                .order_by(leases.c.name)
                .limit(share - len(held))
                .with_for_update(skip_locked=True)
            )
            held.update(
                conn.scalars(
                    leases.update()
                    .where(leases.c.name.in_(free.scalar_subquery()))
                    .values(owner=me, expires_at=expires)
                    .returning(leases.c.name)
                )
            )
        elif len(held) > share:
            extra = sorted(held)[share:]
            conn.execute(
                leases.update()
                .where(leases.c.owner == me, leases.c.name.in_(extra))
                .values(owner=None, expires_at=None)
            )
            held.difference_update(extra)
    return held


def release(store: Store) -> None:
    """Hand back every lease and claim of this relay and drop its heartbeat (at shutdown)."""
    with store.engine.begin() as conn:
        conn.execute(
            leases.update()
            .where(leases.c.owner == store.relay_id)
            .values(owner=None, expires_at=None)
        )
        conn.execute(relays.delete().where(relays.c.id == store.relay_id))
    store.release_claims()


class LeaseKeeper:
    """Runs lease rounds in the background and answers which numbers this relay polls."""

    def __init__(self, store: AsyncStore, numbers: Sequence[str]) -> None:
        self.store = store
        self.numbers = list(numbers)
        self.held: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    def holds(self, number: str) -> bool:
        """Whether this relay polls ``number`` now."""
        return number in self.held

    async def round(self) -> None:
        """One lease round now."""
        held = await self.store.call(balance, self.store.sync, self.numbers)
        gained, lost = held - self.held, self.held - held
        if gained or lost:
            log.info(
                "relay.leases.changed",
                extra=fields(held=len(held), gained=len(gained), lost=len(lost)),
            )
        self.held = held

    def start(self) -> None:
        """Keep running rounds until :meth:`stop`."""
        self._task = asyncio.create_task(self._run(), name="leases")

    def set_numbers(self, numbers: Sequence[str]) -> None:
        """The configured numbers changed (a reload)."""
        self.numbers = list(numbers)
        self.held &= set(numbers)

    async def _run(self) -> None:
        interval = round_interval(self.store.sync.lease)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.round()
                self._failures = 0
            except RelayError as exc:
                self._failures += 1
                log.error("relay.leases.failed", extra=fields(error=str(exc)))
                # Without a renewal our leases lapse; stop polling before another relay starts.
                if self._failures * interval >= self.store.sync.lease - 2 * interval:
                    self.held = set()

    async def stop(self) -> None:
        """Stop the rounds and hand everything back, so other relays take over at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.store.call(release, self.store.sync)
        except RelayError as exc:
            log.error("relay.leases.release_failed", extra=fields(error=str(exc)))
        self.held = set()
