"""Backoff arithmetic, pure: given attempts, a clock reading and a jitter source.

Deliveries back off exponentially from ``retry_initial``, doubling, capped at
``retry_max``, each delay scaled by a random factor in [0.8, 1.2], until
``give_up_after`` has passed since the message was queued. Failing polls of a
number back off the same way from its interval, up to :data:`POLL_BACKOFF_MAX`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Protocol

#: Delays are scaled by a factor drawn from [1 - JITTER, 1 + JITTER].
JITTER = 0.2
#: A failing number is polled at most this far apart.
POLL_BACKOFF_MAX = 300.0


class Jitter(Protocol):
    """A source of jitter factors (a :class:`random.Random` will do)."""

    def uniform(self, a: float, b: float) -> float:
        """A number between a and b."""
        ...


class NoJitter:
    """Jitter that always answers the middle: for exact tests."""

    def uniform(self, a: float, b: float) -> float:
        """The midpoint of a and b."""
        return (a + b) / 2


def exponential(attempt: int, initial: float, maximum: float) -> float:
    """The un-jittered delay after failed attempt number ``attempt`` (1-based)."""
    if attempt < 1:
        return 0.0
    # Cap the exponent so large attempt counts cannot overflow.
    return float(min(initial * 2 ** min(attempt - 1, 62), maximum))


@dataclass(frozen=True)
class Backoff:
    """One webhook's retry policy."""

    initial: float
    maximum: float
    give_up_after: float

    def delay(self, attempt: int, jitter: Jitter | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based), jittered."""
        base = exponential(attempt, self.initial, self.maximum)
        source = jitter or _RANDOM
        return base * source.uniform(1 - JITTER, 1 + JITTER)

    def next_attempt(
        self,
        *,
        attempt: int,
        queued_at: datetime,
        now: datetime,
        retry_after: float | None = None,
        jitter: Jitter | None = None,
    ) -> datetime | None:
        """When to try again after failed attempt ``attempt``; None means give up.

        A ``retry_after`` the receiver asked for replaces the computed delay.
        The last attempt is made at the give-up deadline, not skipped.
        """
        deadline = queued_at.timestamp() + self.give_up_after
        if now.timestamp() >= deadline:
            return None
        wait = retry_after if retry_after is not None else self.delay(attempt, jitter)
        at = min(now.timestamp() + max(wait, 0.0), deadline)
        return datetime.fromtimestamp(at, timezone.utc)


def poll_delay(interval: float, failures: int) -> float:
    """How long a number waits after ``failures`` failed polls in a row.

    Doubling from its interval: interval, 2x, 4x... up to :data:`POLL_BACKOFF_MAX`
    (or the interval itself, if that is longer).
    """
    if failures <= 0:
        return interval
    return float(min(interval * 2.0 ** min(failures - 1, 30), max(POLL_BACKOFF_MAX, interval)))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - now).total_seconds(), 0.0)


_RANDOM = random.Random()
