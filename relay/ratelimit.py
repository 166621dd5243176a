"""A webhook's ``rate_limit``: a token bucket that spaces the requests a lane starts.

The bucket holds up to a quarter second's worth of requests (at least one), so a lane
that was idle may start that many at once; after that, one per ``1 / rate`` seconds.
Taking a token never fails: a request past the limit takes one on credit and waits
for it, so waiters start in the order they asked. The limit is per relay: relays
sharing one PostgreSQL store each keep it (see the README).
"""

from __future__ import annotations

import asyncio
import math
import re

from relay.clock import Clock

#: Seconds of requests the bucket holds: what an idle lane may start at once.
BURST_SECONDS = 0.25
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(s|m|h)")


def parse_rate(text: str) -> float:
    """Requests per second of ``"20/s"``, ``"600/m"`` or ``"1000/h"``; ValueError otherwise."""
    match = _RATE_RE.fullmatch(text.strip())
    if match is None or float(match[1]) <= 0:
        msg = 'is not a rate such as "20/s", "600/m" or "1000/h"'
        raise ValueError(msg)
    return float(match[1]) / _UNITS[match[2]]


class TokenBucket:
    """At most ``rate`` requests a second on average, bursts of :data:`BURST_SECONDS`."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self.rate = rate
        self.capacity = max(1.0, math.floor(rate * BURST_SECONDS))
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock.monotonic()

    def take(self) -> float:
        """Take a token: how many seconds to wait before starting the request (0: now)."""
        now = self._clock.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> None:
        """Wait for a token."""
        wait = self.take()
        if wait > 0:
            await asyncio.sleep(wait)
