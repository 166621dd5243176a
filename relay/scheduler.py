"""One APScheduler interval job per number.

Each job fires every ``interval`` (plus up to ``jitter``, never more than a tenth
of the interval), never overlaps itself (``max_instances=1``) and coalesces
missed runs into one. A number that is backing off after failures lets its
ticks pass until its delay is over.

First polls come at once: on start (and for numbers a reload adds or changes)
they are spread over ``min(interval, 1 s)``, the number that has waited longest
first (never polled successfully, then the oldest last success), so a relay
that keeps being restarted still polls every number. After its first poll each
number settles into its own slot of the interval, the slots spread evenly
across it, so that a thousand numbers do not fire in the same second.

Under adaptive polling (``poll.min_interval``, :mod:`relay.adaptive`) a number's
interval moves with its traffic: when a poll changes it, the job is rescheduled on the
new interval from that poll on. Every poll first waits for the API budget's grant
(:mod:`relay.budget`, in the poller).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from relay.clock import Clock
from relay.config import NumberConfig
from relay.logs import fields
from relay.poller import Poller

log = logging.getLogger("relay.scheduler")

#: First polls are spread over at most this long (and never over more than the interval).
FIRST_POLLS_WITHIN = 1.0
#: A number's jitter is at most this share of its interval, whatever ``poll.jitter`` says.
JITTER_SHARE = 0.1


def capped_jitter(interval: float, jitter: float) -> float:
    """The jitter a number polled every ``interval`` gets: ``jitter``, at most a tenth of it."""
    return min(jitter, interval * JITTER_SHARE)


@dataclass(frozen=True)
class Slot:
    """When one number is polled first, and where its later polls fall."""

    number: NumberConfig
    #: Its first poll.
    first: datetime
    #: The start of its interval slot: later polls come at ``phase + k * interval``.
    phase: datetime
    jitter: float


def plan(
    numbers: Sequence[NumberConfig],
    last_success: Mapping[str, datetime | None],
    now: datetime,
    jitter: float,
) -> list[Slot]:
    """First polls and slots for ``numbers``, longest-waiting first.

    Numbers never polled successfully come first (in config order), then the others
    from the oldest last success. The k-th of n is polled first at ``now + k/n *
    min(interval, 1 s)`` and has the slot starting ``now + k/n * interval``.
    """
    never = datetime.min.replace(tzinfo=timezone.utc)
    ordered = sorted(numbers, key=lambda n: last_success.get(n.number) or never)
    count = len(ordered) or 1
    return [
        Slot(
            number,
            now + timedelta(seconds=min(number.interval, FIRST_POLLS_WITHIN) * index / count),
            now + timedelta(seconds=number.interval * index / count),
            capped_jitter(number.interval, jitter),
        )
        for index, number in enumerate(ordered)
    ]


class SlotTrigger(IntervalTrigger):  # type: ignore[misc]  # APScheduler 3 has no type hints
    """An interval trigger for a job whose first run was set ahead of its slot.

    The run after that first one is the slot's start (``start_date``), not one
    interval after the first run; from then on it is a plain interval trigger.
    """

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The next run: the slot's start while the runs so far came before it."""
        if previous_fire_time is not None and previous_fire_time < self.start_date:
            previous_fire_time = None
        fire_time: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        return fire_time


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
        #: The interval each number's job fires on now.
        self._intervals: dict[str, float] = {}

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
        """One job per number: first runs at once, longest-waiting first (see :func:`plan`)."""
        assert self._aps is not None
        states = self.poller.states
        last_success = {
            n.number: state.last_success if (state := states.get(n.number)) else None
            for n in numbers
        }
        # APScheduler fires on the wall clock: plan on it, not on self.clock.
        now = datetime.now(timezone.utc)
        current = {n.number: state.interval if (state := states.get(n.number)) else n.interval
                   for n in numbers}  # fmt: skip
        for slot in plan(numbers, last_success, now, self.jitter):
            number = slot.number
            self._intervals[number.number] = current[number.number]
            trigger = SlotTrigger(
                seconds=current[number.number],
                jitter=capped_jitter(current[number.number], self.jitter) or None,
                start_date=slot.phase,
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
                next_run_time=slot.first,
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
            self._intervals.pop(number, None)
        self._add([n for n in numbers if old.get(n.number) != n])
        for number in new.keys() & old.keys():
            self._repace(number)  # a reload may move a kept number's pace

    async def _job(self, number: str) -> None:
        if not self.holds(number) or not self.poller.due(number):
            return
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self.poller.poll(number)
            self._repace(number)
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

    def _repace(self, number: str) -> None:
        """Reschedule ``number``'s job when its interval moved: the next poll comes one
        new interval from now."""
        state = self.poller.states.get(number)
        if state is None or self._aps is None:
            return
        interval = state.interval
        if self._intervals.get(number) == interval:
            return
        self._intervals[number] = interval
        start = datetime.now(timezone.utc) + timedelta(seconds=interval)
        trigger = SlotTrigger(
            seconds=interval,
            jitter=capped_jitter(interval, self.jitter) or None,
            start_date=start,
            timezone=timezone.utc,
        )
        try:
            self._aps.reschedule_job(number, trigger=trigger)
        except JobLookupError:  # removed by a reload meanwhile
            self._intervals.pop(number, None)

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
