"""The loop shared by everything that works through a queue in the store.

A :class:`Worker` claims due items up to its concurrency, processes each in
its own task, and sleeps until it is woken (new work queued, a task finished)
or its next item falls due. Webhook lanes and the outbox are workers.

Every claimed item ends in a recorded outcome or a handed-back claim, never in a
claim that outlives the work (the lease keeper renews every claim of this relay):
when :meth:`Worker.process` raises, :meth:`Worker.failed` records an outcome; when
even that fails, the claim is released (:meth:`Store.release`) to fall due again after
``store.lease``, as if this relay had died, so a failure that repeats costs one
attempt per lease rather than a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from relay.clock import Clock
from relay.errors import StoreError
from relay.events import Events
from relay.logs import fields
from relay.store import AsyncStore, Queue

log = logging.getLogger("relay.worker")

#: A worker with nothing due looks at the store again after this long anyway
#: (another relay on the same store may have queued work).
IDLE_RECHECK = 5.0
#: After a store error a worker waits this long before trying again.
STORE_ERROR_PAUSE = 1.0
#: Items claimed at once, as a multiple of the concurrency: fewer, larger claims.
CLAIM_BATCH_FACTOR = 4
#: ...but never more than this many (claims last ``store.lease``; they are renewed).
CLAIM_BATCH_MAX = 256


class Item(Protocol):
    """Anything with a store id."""

    @property
    def id(self) -> int:
        """The row's id."""
        ...


ItemT = TypeVar("ItemT", bound=Item)


def internal_error(exc: BaseException) -> str:
    """The one-line error stored for an item whose processing raised ``exc`` (a bug):
    its type only, as its message may hold anything; the log has the traceback."""
    return f"internal error ({type(exc).__name__}); see the relay's log"


class Worker(ABC, Generic[ItemT]):
    """Claims and processes queued items, at most ``concurrency`` at once."""

    #: The event name prefix for this worker's logs.
    name = "worker"

    def __init__(
        self,
        clock: Clock,
        concurrency: int,
        store: AsyncStore,
        queue: Queue,
        events: Events | None = None,
    ) -> None:
        self.clock = clock
        self.concurrency = concurrency
        self.store = store
        #: The queue whose rows this worker claims.
        self.queue: Queue = queue
        self.events = events or Events()
        #: Claimed items whose outcome could not be recorded: their claims are handed
        #: back before the next claim.
        self._orphans: set[int] = set()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        #: Claimed, not yet started.
        self._queue: deque[ItemT] = deque()
        #: The last claim found less than it asked for: nothing more is due now.
        self._drained = False
        self._wake = asyncio.Event()
        self._stopping = False
        self.batch = min(max(concurrency * CLAIM_BATCH_FACTOR, 1), CLAIM_BATCH_MAX)

    @abstractmethod
    async def claim(self, limit: int) -> list[ItemT]:
        """Claim up to ``limit`` due items in the store."""

    @abstractmethod
    async def next_due(self) -> datetime | None:
        """When the next item not in flight here falls due; None if there is none."""

    @abstractmethod
    async def process(self, item: ItemT) -> None:
        """Handle one item, recording its outcome. Must not raise for expected failures."""

    @abstractmethod
    async def failed(self, item: ItemT, exc: Exception) -> None:
        """Record an outcome for ``item``, whose :meth:`process` raised ``exc``: a retry
        with backoff from now, or a final state. Raises when it cannot be recorded."""

    def released(self) -> str | None:
        """The error an item handed back without an outcome is settled ``unknown`` with;
        None (here): it is simply due again."""
        return None

    def untouched(self, item_ids: Collection[int]) -> set[int]:
        """Of items cut off in flight (:meth:`settle`), those that certainly had no effect
        outside the relay yet: handed back simply due, whatever :meth:`released` says.
        None here."""
        return set()

    def abandon(self, item_id: int) -> None:
        """The outcome of ``item_id`` could not be recorded: hand its claim back soon."""
        self._orphans.add(item_id)
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Items being processed now."""
        return len(self._inflight)

    def wake(self) -> None:
        """Look for due items now."""
        self._wake.set()

    async def fill(self) -> int:
        """Start items up to the free slots, claiming a batch when the local queue runs
        low; how many started."""
        if self._orphans:
            await self._release_orphans()
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            return 0
        if len(self._queue) < free:
            want = max(self.batch, free) - len(self._queue)
            claimed = await self.claim(want)
            self._queue.extend(claimed)
            self._drained = len(claimed) < want
        started = 0
        while self._queue and len(self._inflight) < self.concurrency:
            item = self._queue.popleft()
            self._inflight[item.id] = asyncio.create_task(self._guarded(item))
            started += 1
        return started

    async def _guarded(self, item: ItemT) -> None:
        try:
            await self.process(item)
        except Exception as exc:
            self._report(exc, item.id)
            try:
                await self.failed(item, exc)
            except Exception as again:  # not even that: hand the claim back
                self._report(again, item.id)
                self.abandon(item.id)
        finally:
            self._inflight.pop(item.id, None)
            self._wake.set()

    def _report(self, exc: Exception, item_id: int) -> None:
        """Log and report an exception out of processing or recording an item."""
        if isinstance(exc, StoreError):
            log.error(f"relay.{self.name}.unrecorded", extra=fields(id=item_id, error=str(exc)))
            self.events.store_failed(str(exc))
            return
        log.error(
            f"relay.{self.name}.crashed",
            exc_info=True,
            extra=fields(id=item_id, error=f"{type(exc).__name__}: {exc}"[:300]),
        )
        self.events.unexpected(exc)

    async def _release_orphans(self) -> None:
        """Hand back the claims of items left without an outcome, due after ``store.lease``."""
        ids = sorted(self._orphans)
        pause = self.store.sync.lease
        await self._release(ids, pause)
        self._orphans.difference_update(ids)
        log.warning(
            f"relay.{self.name}.released",
            extra=fields(count=len(ids), ids=",".join(map(str, ids[:20])), after=f"{pause:g}s"),
        )

    async def _release(self, ids: Sequence[int], pause: float, *, untouched: bool = False) -> int:
        unknown = None if untouched else self.released()
        return await self.store.call(
            self.store.sync.release, self.queue, ids, pause, unknown=unknown
        )

    async def run(self) -> None:
        """Process until :meth:`drain`."""
        self._stopping = False
        while not self._stopping:
            self._wake.clear()
            wait: float | None
            try:
                await self.fill()
                if len(self._inflight) >= self.concurrency:
                    wait = None  # all slots busy: a finishing task wakes us
                elif self._drained:
                    wait = await self._idle()  # nothing due: sleep until something is
                else:
                    continue
            except StoreError as exc:
                log.error(f"relay.{self.name}.store_error", extra=fields(error=str(exc)))
                wait = STORE_ERROR_PAUSE
            if wait is not None and wait <= 0:
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def run_once(self, timeout: float) -> None:
        """Process everything due now, then return (for ``poll-once`` and tests).

        Items cut off after ``timeout`` fall due again after ``store.lease``, not at once.
        """
        while await self.fill() or self._inflight:
            await self.settle(timeout, pause=self.store.sync.lease)

    async def _idle(self) -> float:
        nxt = await self.next_due()
        if nxt is None:
            return IDLE_RECHECK
        return min((nxt - self.clock.now()).total_seconds(), IDLE_RECHECK)

    async def settle(self, timeout: float, pause: float = 0.0) -> int:
        """Wait up to ``timeout`` for the items in flight; cancel the rest and hand back
        their claims, due again after ``pause`` seconds. How many were cut."""
        tasks = list(self._inflight.values())
        if not tasks:
            return 0
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        cut = [item_id for item_id, task in self._inflight.items() if task in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if cut:
            quiet = self.untouched(cut)
            rest = [item_id for item_id in cut if item_id not in quiet]
            try:
                if quiet:
                    await self._release(sorted(quiet), pause, untouched=True)
                if rest:
                    await self._release(rest, pause)
            except StoreError as exc:  # they lapse once nothing renews them (shutdown)
                log.error(f"relay.{self.name}.store_error", extra=fields(error=str(exc)))
        return len(pending)

    async def drain(self, timeout: float) -> int:
        """Start nothing more, then :meth:`settle`."""
        self._stopping = True
        self._wake.set()
        return await self.settle(timeout)
