"""Backoff arithmetic, exact, with an injected jitter source."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from relay.retry import Backoff, NoJitter, exponential, parse_retry_after, poll_delay

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FixedJitter:
    """Always the same factor."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        """Record the bounds asked for and answer the fixed factor."""
        self.calls.append((a, b))
        return self.factor


def test_exponential_doubles_then_caps() -> None:
    """5s, 10s, 20s... doubling from retry_initial, never above retry_max."""
    assert [exponential(n, 5, 60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert exponential(10_000, 5, 3600) == 3600


def test_jitter_is_plus_minus_twenty_percent() -> None:
    """Each delay is scaled by a factor drawn from [0.8, 1.2]."""
    jitter = FixedJitter(1.2)
    assert Backoff(5, 3600, 86400).delay(3, jitter) == pytest.approx(24.0)
    assert jitter.calls == [(0.8, 1.2)]


def test_schedule_until_give_up() -> None:
    """Attempts follow the schedule, the last one at the deadline, then give up."""
    policy = Backoff(initial=5, maximum=40, give_up_after=120)
    now, attempt, times = T0, 0, []
    while True:
        attempt += 1
        nxt = policy.next_attempt(attempt=attempt, queued_at=T0, now=now, jitter=NoJitter())
        if nxt is None:
            break
        times.append((nxt - T0).total_seconds())
        now = nxt
    assert times == [5, 15, 35, 75, 115, 120]


def test_retry_after_replaces_the_delay() -> None:
    """A receiver's Retry-After decides the next attempt, within the give-up window."""
    policy = Backoff(5, 3600, 600)
    nxt = policy.next_attempt(attempt=1, queued_at=T0, now=T0, retry_after=90)
    assert nxt == T0 + timedelta(seconds=90)
    capped = policy.next_attempt(attempt=1, queued_at=T0, now=T0, retry_after=10_000)
    assert capped == T0 + timedelta(seconds=600)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("Thu, 01 Jan 2026 00:01:30 GMT", 90.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),
        ("soon", None),
        (None, None),
        ("", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Retry-After as delta-seconds or HTTP date; garbage is ignored."""
    assert parse_retry_after(header, T0) == expected


def test_poll_backoff_doubles_from_interval_to_five_minutes() -> None:
    """A failing number waits interval, 2x, 4x... at most 5 minutes."""
    assert [poll_delay(10, n) for n in range(0, 8)] == [10, 10, 20, 40, 80, 160, 300, 300]
    assert poll_delay(600, 3) == 600
