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
from collections.abc import Awaitable, Callable, Collection, Sequence

from relay.errors import RelayError
from relay.logs import fields
from relay.store import AsyncStore, round_interval

log = logging.getLogger("relay.leases")


class LeaseKeeper:
    """Runs lease rounds in the background and answers which numbers this relay polls."""

    def __init__(
        self,
        store: AsyncStore,
        numbers: Sequence[str],
        on_gained: Callable[[Collection[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.numbers = list(numbers)
        #: Called with the numbers a round gained, before they are polled here.
        self.on_gained = on_gained
        self.held: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    def holds(self, number: str) -> bool:
        """Whether this relay polls ``number`` now."""
        return number in self.held

    async def round(self) -> None:
        """One lease round now."""
        held = await self.store.call(self.store.sync.balance, self.numbers)
        gained, lost = held - self.held, self.held - held
        if gained or lost:
            log.info(
                "relay.leases.changed",
                extra=fields(held=len(held), gained=len(gained), lost=len(lost)),
            )
        if gained and self.on_gained is not None:
            await self.on_gained(gained)
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
            await self.store.call(self.store.sync.release_leases)
        except RelayError as exc:
            log.error("relay.leases.release_failed", extra=fields(error=str(exc)))
        self.held = set()
