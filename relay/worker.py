"""The loop shared by everything that works through a queue in the store.

A :class:`Worker` claims due items up to its concurrency, processes each in
its own task, and sleeps until it is woken (new work queued, a task finished)
or its next item falls due. Webhook lanes and the outbox are workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from relay.clock import Clock
from relay.errors import StoreError
from relay.logs import fields

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


class Worker(ABC, Generic[ItemT]):
    """Claims and processes queued items, at most ``concurrency`` at once."""

    #: The event name prefix for this worker's logs.
    name = "worker"

    def __init__(self, clock: Clock, concurrency: int) -> None:
        self.clock = clock
        self.concurrency = concurrency
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
        except Exception as exc:  # a bug: the claim lapses and the item is tried again
            log.error(
                f"relay.{self.name}.crashed",
                exc_info=True,
                extra=fields(id=item.id, error=f"{type(exc).__name__}: {exc}"[:300]),
            )
        finally:
            self._inflight.pop(item.id, None)
            self._wake.set()

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
        """Process everything due now, then return (for ``poll-once`` and tests)."""
        while await self.fill() or self._inflight:
            await self.settle(timeout)

    async def _idle(self) -> float:
        nxt = await self.next_due()
        if nxt is None:
            return IDLE_RECHECK
        return min((nxt - self.clock.now()).total_seconds(), IDLE_RECHECK)

    async def settle(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the items in flight; cancel the rest. How many were cut."""
        tasks = list(self._inflight.values())
        if not tasks:
            return 0
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    async def drain(self, timeout: float) -> int:
        """Start nothing more, then :meth:`settle`."""
        self._stopping = True
        self._wake.set()
        return await self.settle(timeout)
