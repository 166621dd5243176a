"""Adaptive polling end to end: the daemon against the simulator over loopback, a
number with traffic polled at ``poll.min_interval``, a quiet one at ``poll.interval``,
every request within ``poll.budget``, and each request counted."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

import pytest

from relay.daemon import Relay
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, relay_config, running

pytestmark = pytest.mark.anyio

#: Measured for this long once the busy number's first message was delivered.
WINDOW = 3.0
BUDGET = 20.0


async def test_a_busy_number_is_polled_at_min_interval_a_quiet_one_at_interval(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """After a message, its number is polled every 0.1 s (min_interval) while the quiet
    ones stay at 1 s (interval); the relay's requests stay within the 20/s budget; the
    current intervals are what the metrics export."""
    numbers = (*NUMBERS, "+61400000003")
    base = relay_config(sim.url, receiver.url, sqlite_url, numbers=numbers, interval=1.0)
    poll = dataclasses.replace(base.poll, min_interval=0.1, active_for=30.0, budget=BUDGET)
    config = dataclasses.replace(base, poll=poll)
    busy, quiet = numbers[0], numbers[1:]
    counted: Counter[tuple[str, str]] = Counter()
    async with Relay(config) as relay, running(relay):
        relay.api.on_request = lambda endpoint, outcome: counted.update([(endpoint, outcome)])
        await asyncio.sleep(1.5)  # every number's first poll (the baseline)
        sim.inject(SENDER, busy, "hello")
        await receiver.wait_for(1, timeout=5)
        await asyncio.sleep(0.3)  # the busy number's job is on its new interval
        before = Counter(sim.polls)
        requests = sum(sim.requests.values())
        await asyncio.sleep(WINDOW)
        polls = Counter(sim.polls)
        polls.subtract(before)
        made = sum(sim.requests.values()) - requests
        intervals = relay.poll_intervals()
    assert polls[busy] >= 0.6 * WINDOW / 0.1, polls
    for number in quiet:
        assert 1 <= polls[number] <= WINDOW / 1.0 + 1, polls
    assert made <= BUDGET * WINDOW + BUDGET * 0.25 + 1
    assert intervals == {busy: 0.1, quiet[0]: 1.0, quiet[1]: 1.0}
    assert counted[("receive", "ok")] >= made


async def test_a_budget_below_demand_slows_every_number_alike(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """Ten numbers asking 20 polls a second of a 5/s budget: the relay makes about five
    requests a second, and every number is still polled, about alike."""
    numbers = tuple(f"+614000001{i:02d}" for i in range(10))
    base = relay_config(sim.url, receiver.url, sqlite_url, numbers=numbers, interval=0.5)
    config = dataclasses.replace(base, poll=dataclasses.replace(base.poll, budget=5.0))
    async with Relay(config) as relay, running(relay):
        await asyncio.sleep(3.0)  # the first polls: never-polled numbers first
        before = Counter(sim.polls)
        await asyncio.sleep(4.0)
        polls = Counter(sim.polls)
        polls.subtract(before)
    total = sum(polls.values())
    assert 4.0 * 4.0 <= total <= 5.0 * 4.0 + 2, polls
    assert min(polls[n] for n in numbers) >= 1, polls
    assert max(polls.values()) - min(polls[n] for n in numbers) <= 2, polls
