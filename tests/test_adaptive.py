"""Adaptive polling's interval arithmetic (an injected clock) and its config keys."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

import pytest

from relay.adaptive import Cadence, Pace, cadence
from relay.admin.overview import intervals, status_json, status_text
from relay.config import DEFAULT_POLL_ACTIVE_FOR, NumberConfig, PollConfig
from relay.config.parse import parse
from relay.errors import ConfigError
from relay.store import NumberStatus, Status
from relay.testing.clock import FakeClock

RULE = Cadence(floor=1.0, ceiling=30.0, active_for=120.0)


def _pace(clock: FakeClock, rule: Cadence | None = RULE) -> Pace:
    return Pace(30.0, rule, clock)


def test_a_quiet_number_stays_at_its_interval(clock: FakeClock) -> None:
    """A number that never receives anything is polled at its ceiling, poll after poll."""
    pace = _pace(clock)
    assert pace.current == 30.0
    for _ in range(5):
        clock.advance(30.0)
        assert pace.observe(found=False) == 30.0


def test_a_new_message_holds_min_interval_for_active_for(clock: FakeClock) -> None:
    """After a poll that found a message, the interval is the floor until active_for has
    passed since it, polls that find nothing included."""
    pace = _pace(clock)
    assert pace.observe(found=True) == 1.0
    for _ in range(119):
        clock.advance(1.0)
        assert pace.observe(found=False) == 1.0
    assert pace.active_until == clock.monotonic() + 1.0


def test_then_the_interval_doubles_each_poll_up_to_the_ceiling(clock: FakeClock) -> None:
    """Past active_for, each empty poll doubles the interval: 2, 4, 8, 16, then 30 (the
    ceiling), where it stays."""
    pace = _pace(clock)
    pace.observe(found=True)
    clock.advance(120.0)
    seen = []
    for _ in range(7):
        seen.append(pace.observe(found=False))
        clock.advance(seen[-1])
    assert seen == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert pace.active_until is None


def test_each_new_message_starts_the_window_again(clock: FakeClock) -> None:
    """A message while relaxing drops the interval back to the floor for a fresh
    active_for, counted from that message."""
    pace = _pace(clock)
    pace.observe(found=True)
    clock.advance(121.0)
    assert pace.observe(found=False) == 2.0
    clock.advance(2.0)
    assert pace.observe(found=True) == 1.0
    clock.advance(119.5)
    assert pace.observe(found=False) == 1.0
    clock.advance(0.5)
    assert pace.observe(found=False) == 2.0


def test_without_min_interval_the_interval_never_moves(clock: FakeClock) -> None:
    """No cadence: whatever polls find, the interval is the configured one."""
    pace = Pace(7.0, None, clock)
    assert pace.observe(found=True) == 7.0
    clock.advance(500.0)
    assert pace.observe(found=False) == 7.0


def test_a_numbers_own_interval_is_its_ceiling() -> None:
    """[[numbers]] interval caps that number; a floor above it is brought down to it."""
    poll = PollConfig(interval=30.0, min_interval=5.0, active_for=60.0)
    assert cadence(poll, NumberConfig("+61400000001", ("h",), 20.0)) == Cadence(5.0, 20.0, 60.0)
    assert cadence(poll, NumberConfig("+61400000002", ("h",), 2.0)) == Cadence(2.0, 2.0, 60.0)
    assert cadence(PollConfig(), NumberConfig("+61400000003", ("h",), 2.0)) is None


def test_a_reload_keeps_the_activity_within_new_bounds(clock: FakeClock) -> None:
    """Retuning keeps an active number active, clamps its interval, and without adaptive
    polling any more puts it back on its interval."""
    pace = _pace(clock)
    pace.observe(found=True)
    pace.retune(10.0, Cadence(2.0, 10.0, 120.0))
    assert pace.current == 2.0
    assert pace.active_until is not None
    pace.retune(10.0, None)
    assert (pace.current, pace.active_until) == (10.0, None)


def _config(poll: dict[str, Any]) -> dict[str, Any]:
    return {
        "api": {"token": "t0ken", "base_url": "http://127.0.0.1:9"},
        "store": {"url": "sqlite:////tmp/unused-adaptive.db"},
        "poll": poll,
    }


def test_poll_keys_parse() -> None:
    """min_interval, active_for and budget are read; without them polling is as before."""
    config = parse(_config({"interval": "30s", "min_interval": "1s", "budget": "600/m"}))
    assert config.poll.min_interval == 1.0
    assert config.poll.active_for == DEFAULT_POLL_ACTIVE_FOR
    assert config.poll.budget == 10.0
    plain = parse(_config({})).poll
    assert (plain.min_interval, plain.budget) == (None, None)


@pytest.mark.parametrize(
    ("poll", "error"),
    [
        (
            {"interval": "10s", "min_interval": "11s"},
            "poll.min_interval: must not be more than poll.interval",
        ),
        ({"min_interval": "10ms"}, "poll.min_interval: must be at least 0.1s"),
        ({"active_for": "2m"}, "poll.active_for: needs poll.min_interval (adaptive polling)"),
        ({"min_interval": "1s", "active_for": "0"}, "poll.active_for: must be greater than 0"),
        (
            {"budget": "fast"},
            'poll.budget: "fast" is not a rate such as "20/s", "600/m" or "1000/h"',
        ),
        ({"budget": 20}, 'poll.budget: expected a string such as "20/s", got integer'),
        ({"budget": "0/s"}, 'poll.budget: "0/s" is not a rate such as "20/s", "600/m" or "1000/h"'),
        ({"budgets": "1/s"}, 'poll: unknown key "budgets"'),
    ],
)
def test_poll_key_errors_name_the_key(poll: dict[str, Any], error: str) -> None:
    """Each mistake is one line naming its key."""
    with pytest.raises(ConfigError) as caught:
        parse(_config(poll))
    assert str(caught.value) == error


def test_status_shows_each_numbers_interval_range() -> None:
    """status shows a number's interval, or its range under adaptive polling (the current
    interval is the polling relay's, not the store's)."""
    fixed = parse(_config({"interval": "10s"}))
    numbers = (
        NumberConfig("+61400000001", ("h",), 30.0),
        NumberConfig("+61400000002", ("h",), 0.5),
    )
    fixed = dataclasses.replace(fixed, numbers=numbers)
    assert intervals(fixed) == {"+61400000001": "30s", "+61400000002": "500ms"}
    adaptive = dataclasses.replace(
        fixed, poll=dataclasses.replace(fixed.poll, min_interval=1.0, interval=120.0)
    )
    assert intervals(adaptive) == {"+61400000001": "1s-30s", "+61400000002": "500ms-500ms"}
    row = NumberStatus("+61400000001", None, None, 0, None, None, 0, 0, None, None)
    found = Status(now=datetime.now(timezone.utc), numbers=(row,), webhooks=(), outbound={})
    lines = status_text(found, intervals(adaptive)).splitlines()
    assert lines[1].split()[:2] == ["NUMBER", "INTERVAL"]
    assert lines[2].split()[1] == "1s-30s"
    assert "INTERVAL" not in status_text(found)
    assert status_json(found, intervals(adaptive))["numbers"][0]["interval"] == "1s-30s"
