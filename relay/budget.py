"""The API budget: how many requests a second this relay makes, every endpoint together.

The provider limits requests per account, not per number, so one budget paces every
request of the relay (:class:`~relay.api.AatroxClient` takes it):

- **Ceiling**: ``poll.budget`` (None: none) times this relay's :attr:`Budget.share`, its
  part of the configured numbers. Relays on one PostgreSQL store split the numbers by
  lease, evenly among the live ones, and so split the budget with them; a relay alone
  holds every number and spends all of it.
- **The account's limit**: a 429 pauses every request until its ``Retry-After`` (else
  :data:`DEFAULT_PAUSE`) and cuts the rate to half of what the API admitted (answered
  with anything but 429) over the last :data:`WINDOW` outside a pause, or of what was
  granted when it admitted nothing, or of the rate in force when a 429 comes right after
  a pause (multiplicative decrease; once per :data:`COOLDOWN`, since the answers of
  requests already in flight say nothing new). The rate then grows each second by a
  twentieth of the cut rate, and by at least :data:`MIN_INCREASE` (additive increase),
  back to the ceiling; without a ceiling,
  back to no limit once it has grown :data:`FORGET_GROWTH` times past the cut.
- **Priority**: sends and details fetches (:meth:`Budget.urgent`) go before polls: a
  reply does not wait behind them. Waiting polls go by how late they are for their
  number's interval, ``(now - last poll) / interval``, latest first, so when demand
  exceeds the budget every number is still polled, each less often, and none starves.

Grants come from a token bucket of :data:`BURST_SECONDS` at the current rate. With no
limit and no pause, taking a grant awaits nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import TypeVar

from relay.clock import Clock, within
from relay.logs import fields

log = logging.getLogger("relay.budget")

#: Seconds of requests the bucket holds: what may start at once after a quiet spell.
BURST_SECONDS = 0.25
#: The rate a 429 cuts to is this share of the rate granted just before it.
DECREASE = 0.5
#: Each second after a cut (and its pause), the rate grows by this share of the cut rate...
INCREASE_SHARE = 0.05
#: ...but by at least this many requests a second: a few 429s that cut a quiet relay
#: to the floor must not leave it there for a minute (at 0.1, three of them kept one at
#: 1.4 requests a second for 40 s while 70 messages waited for their details).
MIN_INCREASE = 1.0
#: The rate is never cut below this many requests a second.
MIN_RATE = 0.5
#: How long a rate is measured over, seconds back from a 429.
WINDOW = 1.0
#: A 429 with less than this much of the window outside a pause halves the rate in force
#: instead of a measured one.
MIN_MEASURED = 0.25
#: A 429 within this long of the last cut extends the pause but cuts no further.
COOLDOWN = 1.0
#: The pause after a 429 without ``Retry-After``.
DEFAULT_PAUSE = 1.0
#: The longest pause a ``Retry-After`` can impose: a broken header must not stop the relay.
MAX_PAUSE = 300.0
#: Without ``poll.budget``, a cut is forgotten (no limit again) once the rate has grown
#: this many times past it without another 429.
FORGET_GROWTH = 4.0
#: Waiting for a grant, the clock is read again at least this often (seconds).
TICK = 0.25

_K = TypeVar("_K")


def lateness(now: float, since: float, interval: float) -> float:
    """How late a poll is: intervals since the number's last poll began."""
    return (now - since) / interval


def latest(waiting: Mapping[_K, tuple[float, float, int]], now: float) -> _K:
    """Of polls waiting as (last poll began, interval, arrival order), the one to go
    first: the latest for its interval, the earliest to arrive among equals."""
    return max(
        waiting.items(), key=lambda item: (lateness(now, item[1][0], item[1][1]), -item[1][2])
    )[0]


class Budget:
    """Grants API requests within the current rate; learns the account's limit from 429s."""

    def __init__(
        self,
        limit: float | None,
        clock: Clock,
        *,
        share: Callable[[], float] = lambda: 1.0,
    ) -> None:
        #: ``poll.budget`` in requests a second; None: no configured limit.
        self.limit = limit
        self.clock = clock
        #: This relay's part of the numbers, from 0 to 1: its part of ``limit``.
        self.share = share
        self._tokens = 1.0
        self._stamp = clock.monotonic()
        self._granted: deque[float] = deque()
        self._admitted: deque[float] = deque()
        self._paused_until = 0.0
        #: The last cut: when, and the rate it cut to; None: no cut in force.
        self._cut_at: float | None = None
        self._cut_rate = 0.0
        self._urgent: deque[asyncio.Future[None]] = deque()
        #: Waiting polls: (last poll began, interval, arrival order).
        self._polls: dict[asyncio.Future[None], tuple[float, float, int]] = {}
        self._order = itertools.count()
        self._pump: asyncio.Task[None] | None = None
        #: 429s seen, and the cuts they made.
        self.throttles = 0
        self.cuts = 0

    # --- the rate ----------------------------------------------------------

    def ceiling(self) -> float | None:
        """``poll.budget`` times this relay's share (never below :data:`MIN_RATE`)."""
        if self.limit is None:
            return None
        return max(MIN_RATE, self.limit * min(max(self.share(), 0.0), 1.0))

    def rate(self, now: float | None = None) -> float | None:
        """Requests a second granted now at most; None: no limit."""
        now = self.clock.monotonic() if now is None else now
        ceiling = self.ceiling()
        if self._cut_at is None:
            return ceiling
        since = now - max(self._cut_at, self._paused_until)
        step = max(MIN_INCREASE, self._cut_rate * INCREASE_SHARE)
        grown = self._cut_rate + step * max(since, 0.0)
        if ceiling is not None and grown >= ceiling:
            self._cut_at = None
            return ceiling
        if ceiling is None and grown >= self._cut_rate * FORGET_GROWTH:
            self._cut_at = None
            return None
        return grown

    def paused_for(self, now: float | None = None) -> float:
        """Seconds left of the pause a 429 imposed (0: none)."""
        now = self.clock.monotonic() if now is None else now
        return max(self._paused_until - now, 0.0)

    def observed(self, now: float) -> float:
        """Requests a second granted over the last :data:`WINDOW`."""
        _trim(self._granted, now)
        return len(self._granted) / WINDOW

    def admitted(self, now: float | None = None) -> float:
        """Requests a second the API admitted over the last :data:`WINDOW`."""
        now = self.clock.monotonic() if now is None else now
        _trim(self._admitted, now)
        return len(self._admitted) / WINDOW

    def _measured(self, now: float, resumed: float) -> float | None:
        """Requests a second the API admitted (else those granted) over the last
        :data:`WINDOW`, counting only the time since the last pause ended at ``resumed``:
        a pause's silence says nothing of the account's limit. None when less than
        :data:`MIN_MEASURED` of the window was outside a pause."""
        start = max(now - WINDOW, resumed)
        span = now - start
        if span < MIN_MEASURED:
            return None
        _trim(self._admitted, now)
        _trim(self._granted, now)
        admitted = sum(1 for t in self._admitted if t >= start)
        return (admitted or sum(1 for t in self._granted if t >= start)) / span

    def answered(self) -> None:
        """The API answered a request with anything but 429: its limit admitted it."""
        now = self.clock.monotonic()
        self._admitted.append(now)
        if len(self._admitted) > 64:
            _trim(self._admitted, now)

    def throttled(self, retry_after: float | None) -> None:
        """The API answered 429: pause every request, cut the rate (once per cooldown)."""
        now = self.clock.monotonic()
        self.throttles += 1
        current = self.rate(now)  # grown since the last cut: read before the new pause
        resumed = self._paused_until  # when the last pause ended (or ends)
        pause = DEFAULT_PAUSE if retry_after is None else min(retry_after, MAX_PAUSE)
        self._paused_until = max(self._paused_until, now + pause)
        if self._cut_at is not None and now - self._cut_at < COOLDOWN:
            return
        measured = self._measured(now, resumed)
        if measured is None:  # just out of a pause: nothing to measure, halve the rate
            before = current if current is not None else self.observed(now)
        else:
            before = measured if current is None else min(current, measured)
        self._cut_rate = max(MIN_RATE, before * DECREASE)
        self._cut_at = now
        self.cuts += 1
        log.warning(
            "relay.api.rate_limited",
            extra=fields(rate=f"{self._cut_rate:.1f}/s", paused=f"{pause:g}s"),
        )

    def take(self, now: float) -> float:
        """Take a grant now if there is one (0.0); else seconds until there may be."""
        if now < self._paused_until:
            return self._paused_until - now
        rate = self.rate(now)
        if rate is not None:
            capacity = max(1.0, math.floor(rate * BURST_SECONDS))
            self._tokens = min(capacity, self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if self._tokens < 1.0:
                return (1.0 - self._tokens) / rate
            self._tokens -= 1.0
        else:
            self._stamp = now
        self._granted.append(now)
        if len(self._granted) > 64:
            _trim(self._granted, now)
        return 0.0

    # --- waiting for a grant -------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests waiting for a grant."""
        return len(self._urgent) + len(self._polls)

    async def urgent(self, longest: float = math.inf) -> float | None:
        """Wait for a grant ahead of every poll (a send, a details fetch): None once
        granted; without waiting, the pause left when a 429's is longer than ``longest``."""
        now = self.clock.monotonic()
        if self.paused_for(now) > longest:
            return self.paused_for(now)
        if not self.waiting and self.take(now) == 0.0:
            return None
        future = asyncio.get_running_loop().create_future()
        self._urgent.append(future)
        self._start()
        try:
            await future
        finally:
            if not future.done():
                self._urgent.remove(future)
        return None

    async def poll(self, since: float, interval: float, timeout: float) -> bool:
        """Wait for a grant for a poll of a number whose last poll began at monotonic
        ``since``, polled every ``interval``; False when none came within ``timeout``."""
        if not self.waiting and self.take(self.clock.monotonic()) == 0.0:
            return True
        future = asyncio.get_running_loop().create_future()
        self._polls[future] = (since, interval, next(self._order))
        self._start()
        try:
            await within(timeout, _wait(future))
        except asyncio.TimeoutError:
            return future.done() and not future.cancelled()
        finally:
            self._polls.pop(future, None)
        return True

    def next_waiter(self, now: float) -> asyncio.Future[None] | None:
        """Who gets the next grant: the first urgent request, else the latest poll
        (the earliest to arrive among equals)."""
        while self._urgent:
            future = self._urgent.popleft()
            if not future.done():
                return future
        if not self._polls:
            return None
        chosen = latest(self._polls, now)
        del self._polls[chosen]
        return chosen

    def _start(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run(), name="budget")

    async def _run(self) -> None:
        """Hand out grants to the waiters, one at a time, as the rate allows."""
        while self.waiting:
            now = self.clock.monotonic()
            wait = self.take(now)
            if wait > 0.0:
                await asyncio.sleep(min(wait, TICK))
                continue
            future = self.next_waiter(now)
            if future is None:  # every waiter gave up meanwhile: the grant goes back
                self._tokens += 1.0
                if self._granted:
                    self._granted.pop()
                break
            future.set_result(None)
            await asyncio.sleep(0)  # let the grantee start before the next grant

    async def close(self) -> None:
        """Stop granting (on shutdown); waiters are left to their timeouts."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None


def _trim(times: deque[float], now: float) -> None:
    """Forget the times older than :data:`WINDOW`."""
    while times and times[0] <= now - WINDOW:
        times.popleft()


async def _wait(future: asyncio.Future[None]) -> None:
    await asyncio.shield(future)
