"""Start-up: every number polled at once after READY, longest-waiting first; jitter capped."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from relay.config import NumberConfig
from relay.scheduler import FIRST_POLLS_WITHIN, SlotTrigger, capped_jitter, plan
from relay.store.schema import numbers as numbers_table
from relay.testing.clock import FakeClock
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import RelayProcess, write_config

pytestmark = pytest.mark.anyio

THREE = ("+61400000001", "+61400000002", "+61400000003")
INTERVAL = 0.5
#: Far above the interval: before the cap, first polls waited up to this long.
BIG_JITTER = "10s"
#: Every number is polled within min(interval, 1 s) of READY; this leaves a loaded
#: two-core machine a second of slack (before the fix, first polls came 0.5 to 10 s late).
ALL_POLLED_WITHIN = 1.5


def number(name: str, interval: float = 60.0) -> NumberConfig:
    """A configured number."""
    return NumberConfig(name, ("hook",), interval)


def test_first_polls_go_longest_waiting_first() -> None:
    """Never-polled numbers come first (in config order), then the oldest last success."""
    now = FakeClock().now()
    configured = [number(n) for n in ("+614001", "+614002", "+614003", "+614004", "+614005")]
    last_success = {
        "+614001": now - timedelta(seconds=5),
        "+614002": None,
        "+614003": now - timedelta(hours=2),
        "+614005": now - timedelta(minutes=3),
    }
    slots = plan(configured, last_success, now, jitter=0.0)
    assert [s.number.number for s in slots] == [
        "+614002",
        "+614004",
        "+614003",
        "+614005",
        "+614001",
    ]
    assert slots[0].first == now
    assert [s.first for s in slots] == sorted(s.first for s in slots)


def test_first_polls_come_within_min_of_interval_and_a_second() -> None:
    """First polls are spread over min(interval, 1 s); later slots over the whole interval."""
    now = FakeClock().now()
    slow = [number(f"+6140010{i:02d}", interval=60.0) for i in range(50)]
    fast = [number(f"+6140020{i:02d}", interval=0.5) for i in range(3)]
    for configured, within in ((slow, FIRST_POLLS_WITHIN), (fast, 0.5)):
        slots = plan(configured, {}, now, jitter=0.0)
        assert max(s.first - now for s in slots) < timedelta(seconds=within)
        interval = configured[0].interval
        assert [s.phase - now for s in slots] == [
            timedelta(seconds=interval * k / len(configured)) for k in range(len(configured))
        ]


def test_jitter_never_exceeds_a_tenth_of_the_interval() -> None:
    """poll.jitter is capped per number at a tenth of its interval, never raised."""
    now = FakeClock().now()
    slots = plan([number("+614001", 0.5), number("+614002", 60.0)], {}, now, jitter=10.0)
    assert {s.number.number: s.jitter for s in slots} == {"+614001": 0.05, "+614002": 6.0}
    assert capped_jitter(60.0, 1.0) == 1.0
    assert capped_jitter(5.0, 0.0) == 0.0


def test_after_its_first_poll_a_number_moves_to_its_slot() -> None:
    """The run after an early first poll is the slot's start, then one interval apart."""
    now = FakeClock().now()
    slot = now + timedelta(seconds=20)
    trigger = SlotTrigger(seconds=60, start_date=slot, timezone=now.tzinfo)
    first = now + timedelta(seconds=0.3)
    assert trigger.get_next_fire_time(first, first) == slot
    assert trigger.get_next_fire_time(slot, slot) == slot + timedelta(seconds=60)


async def _first_polls(sim: Simulator, numbers: tuple[str, ...]) -> dict[str, float]:
    """When (``time.monotonic``) the simulator first served a listing of each number."""
    seen: dict[str, float] = {}
    while len(seen) < len(numbers):
        for name in numbers:
            if name not in seen and sim.polls[name]:
                seen[name] = time.monotonic()
        await asyncio.sleep(0.005)
    return seen


async def _start_and_time(config: Path, sim: Simulator) -> tuple[float, dict[str, float]]:
    """Start a relay; when it said relay.started and when each number was first polled."""
    sim.polls.clear()
    watcher = asyncio.create_task(_first_polls(sim, THREE))
    relay = RelayProcess(config)
    try:
        await relay.start()
        started = time.monotonic()
        polls = await asyncio.wait_for(watcher, 20)
    finally:
        watcher.cancel()
        if relay.proc is not None and relay.proc.returncode is None:
            assert await relay.terminate() == 0
    return started, polls


async def test_every_number_is_polled_at_once_after_start_longest_waiting_first(
    tmp_path: Path, sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """3 numbers at 500 ms, poll.jitter 10 s: all polled within 1.5 s of relay.started,
    and on a restart in the order of their last success in the store, oldest first."""
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, sqlite_url, interval="500ms", numbers=THREE
    )
    config.write_text(config.read_text().replace("jitter = 0\n", f'jitter = "{BIG_JITTER}"\n'))
    started, polls = await _start_and_time(config, sim)
    late = {
        n: round(at - started, 3) for n, at in polls.items() if at - started > ALL_POLLED_WITHIN
    }
    assert not late, f"first polls later than {ALL_POLLED_WITHIN}s after relay.started: {late}"

    # The config's first number polled last, its second long ago, its third never.
    now = datetime.now().astimezone()
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        for name, when in zip(THREE, (now, now - timedelta(hours=1), None), strict=True):
            conn.execute(
                numbers_table.update()
                .where(numbers_table.c.number == name)
                .values(last_success_at=when)
            )
    engine.dispose()
    started, polls = await _start_and_time(config, sim)
    assert sorted(polls, key=polls.__getitem__) == [THREE[2], THREE[1], THREE[0]]
    assert max(polls.values()) - started <= ALL_POLLED_WITHIN
