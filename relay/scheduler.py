"""One APScheduler interval job per number.

Each job fires every ``interval`` (plus up to ``jitter``), never overlaps
itself (``max_instances=1``) and coalesces missed runs into one. First polls
are spread evenly across the interval so that a thousand numbers do not fire
in the same second. A number that is backing off after failures lets its
ticks pass until its delay is over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta, timezone

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from relay.clock import Clock
from relay.config import NumberConfig
from relay.logs import fields
from relay.poller import Poller

log = logging.getLogger("relay.scheduler")


class Scheduler:
    """Runs the poll jobs."""

    def __init__(
        self,
        poller: Poller,
        numbers: Sequence[NumberConfig],
        jitter: float,
        clock: Clock,
        holds: Callable[[str], bool] = lambda _number: True,
    ) -> None:
        self.poller = poller
        self.numbers = tuple(numbers)
        self.jitter = jitter
        self.clock = clock
        #: Whether this relay holds the lease on a number (polls it) now.
        self.holds = holds
        self._aps: AsyncIOScheduler | None = None
        self._running: set[asyncio.Task[object]] = set()

    @property
    def running(self) -> bool:
        """Whether jobs are firing."""
        return self._aps is not None and self._aps.running

    def start(self) -> None:
        """Add a job per number and start firing them (inside the running event loop)."""
        self._aps = AsyncIOScheduler(timezone=timezone.utc)
        self._add(self.numbers)
        self._aps.start()
        log.info("relay.scheduler.started", extra=fields(numbers=len(self.numbers)))

    def _add(self, numbers: Sequence[NumberConfig]) -> None:
        """One job per number, first runs spread evenly across each interval."""
        assert self._aps is not None
        now = self.clock.now()
        count = len(numbers) or 1
        for index, number in enumerate(numbers):
            trigger = IntervalTrigger(
                seconds=number.interval,
                jitter=self.jitter or None,
                start_date=now + timedelta(seconds=number.interval * index / count),
                timezone=timezone.utc,
            )
            self._aps.add_job(
                self._job,
                trigger,
                args=[number.number],
                id=number.number,
                name=f"poll {number.number[-3:]}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(number.interval)),
                replace_existing=True,
            )

    def update(self, numbers: Sequence[NumberConfig], jitter: float) -> None:
        """Apply a reloaded config: jobs for new numbers, none for removed ones, and
        changed intervals rescheduled."""
        old = {n.number: n for n in self.numbers}
        self.numbers = tuple(numbers)
        self.jitter = jitter
        if self._aps is None:
            return
        new = {n.number: n for n in numbers}
        for number in old.keys() - new.keys():
            self._aps.remove_job(number)
        self._add([n for n in numbers if old.get(n.number) != n])

    async def _job(self, number: str) -> None:
        if not self.holds(number) or not self.poller.due(number):
            return
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self.poller.poll(number)
        except Exception as exc:  # a bug: report it, keep the job scheduled
            log.error(
                "relay.poll.crashed",
                exc_info=True,
                extra=fields(error=f"{type(exc).__name__}: {exc}"[:300]),
            )
            self.poller.events.unexpected(exc)
        finally:
            if task is not None:
                self._running.discard(task)

    async def stop(self, timeout: float) -> None:
        """Start no more polls; give those running up to ``timeout`` seconds to finish."""
        if self._aps is None:
            return
        self._aps.pause()
        running = list(self._running)
        if running:
            _done, pending = await asyncio.wait(running, timeout=timeout)
            for task in pending:
                task.cancel()
        self._aps.shutdown(wait=False)
        self._aps = None
