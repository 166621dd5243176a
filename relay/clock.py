"""Time, injected: the daemon uses :class:`SystemClock`, tests a ``relay.testing`` FakeClock."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """Where the relay reads the time."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for measuring intervals."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        """:func:`time.monotonic`."""
        return time.monotonic()


async def within(seconds: float, work: Coroutine[Any, Any, T]) -> T:
    """``await work``, raising TimeoutError after ``seconds``; without an extra task on 3.11+."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await work
    return await asyncio.wait_for(work, seconds)  # pragma: no cover - Python 3.10
