"""The API budget: its rate arithmetic (an injected clock), the order it grants in, and
the global back-off a 429 causes, against the simulator over loopback."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from relay.api import AatroxClient
from relay.budget import (
    COOLDOWN,
    DEFAULT_PAUSE,
    FORGET_GROWTH,
    INCREASE_SHARE,
    MIN_INCREASE,
    MIN_RATE,
    Budget,
    latest,
)
from relay.clock import SystemClock
from relay.config import ApiConfig, NumberConfig, TokenSource
from relay.errors import ApiRateLimited
from relay.poller import Poller
from relay.store import AsyncStore, Store
from relay.testing.clock import FakeClock
from relay.testing.faults import Fault, RateLimit, retry_after
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, TOKEN, relay_config

pytestmark = pytest.mark.anyio


def _granted(budget: Budget, clock: FakeClock, seconds: float, step: float) -> int:
    """Grants taken by asking every ``step`` for ``seconds`` (steps of 1/2**k add up
    exactly in floating point)."""
    count = 0
    for _ in range(round(seconds / step)):
        clock.advance(step)
        count += budget.take(clock.monotonic()) == 0.0
    return count


def test_without_a_limit_every_request_goes_at_once(clock: FakeClock) -> None:
    """No poll.budget and no 429: take() always grants."""
    budget = Budget(None, clock)
    assert all(budget.take(clock.monotonic()) == 0.0 for _ in range(1000))
    assert budget.rate() is None


def test_a_budget_grants_its_rate(clock: FakeClock) -> None:
    """poll.budget = 20/s grants 20 a second (plus the one the bucket starts with), and
    says how long until the next grant."""
    budget = Budget(20.0, clock)
    assert _granted(budget, clock, 10.0, step=1 / 64) == 201
    assert 0.0 < budget.take(clock.monotonic()) <= 0.05


def test_the_budget_is_split_by_the_relays_share(clock: FakeClock) -> None:
    """A relay holding a quarter of the numbers spends a quarter of the budget, never
    less than the minimum rate."""
    share = [0.25]
    budget = Budget(40.0, clock, share=lambda: share[0])
    assert budget.ceiling() == 10.0
    share[0] = 0.0
    assert budget.ceiling() == MIN_RATE


def test_a_429_pauses_for_retry_after_and_halves_the_rate(clock: FakeClock) -> None:
    """A 429 pauses every request until Retry-After and cuts the rate to half of what was
    granted in the last second; the rate then grows additively back to the budget."""
    budget = Budget(100.0, clock)
    _granted(budget, clock, 2.0, step=1 / 32)  # 32/s, under the budget
    budget.throttled(3.0)
    assert budget.paused_for() == 3.0
    assert budget.take(clock.monotonic()) == 3.0
    assert budget.rate() == 16.0
    clock.advance(3.0)
    assert budget.rate() == 16.0  # growth starts when the pause ends
    clock.advance(10.0)
    step = max(MIN_INCREASE, 16.0 * INCREASE_SHARE)  # a twentieth of 16, at least 1, a second
    assert budget.rate() == 16.0 + 10.0 * step
    clock.advance((100.0 - 16.0) / step - 10.0 - 0.1)
    assert budget.rate() < 100.0
    clock.advance(0.2)
    assert budget.rate() == 100.0  # back at the budget: the cut is forgotten
    assert budget.cuts == 1


def test_429s_in_a_row_cut_once_per_cooldown(clock: FakeClock) -> None:
    """The answers of requests already in flight extend the pause but do not cut again;
    one after the cooldown does."""
    budget = Budget(None, clock)
    _granted(budget, clock, 1.0, step=1 / 128)  # 128/s
    budget.throttled(None)
    budget.throttled(None)
    assert budget.rate() == 64.0
    assert (budget.cuts, budget.throttles) == (1, 2)
    assert budget.paused_for() == DEFAULT_PAUSE
    clock.advance(COOLDOWN)
    _granted(budget, clock, 1.0, step=1 / 32)  # 32/s
    budget.throttled(None)
    assert budget.cuts == 2
    assert budget.rate() == 16.0


def test_a_429_right_after_a_pause_halves_the_rate_in_force(clock: FakeClock) -> None:
    """The first request after a 429's pause is answered 429 again: the rate in force is
    halved (32 -> 16 -> 8), not what the silent pause measured (which would be nothing,
    the floor). Later, with time outside the pause, what was admitted counts again."""
    budget = Budget(None, clock)
    _granted(budget, clock, 1.0, step=1 / 32)  # 32/s
    budget.throttled(1.0)
    assert budget.rate() == 16.0
    clock.advance(1.0)  # the pause is over; its first request meets another 429
    budget.throttled(1.0)
    assert (budget.rate(), budget.cuts) == (8.0, 2)
    clock.advance(1.0 + COOLDOWN)
    granted = _granted(budget, clock, 1.0, step=1 / 32)  # 10 at the regrowing rate
    in_force = budget.rate()
    assert in_force is not None and 8.0 < in_force < granted
    budget.throttled(None)
    assert budget.rate() == in_force / 2 and budget.cuts == 3


def test_a_cut_halves_what_the_api_admitted_when_it_admitted_any(clock: FakeClock) -> None:
    """Starting unlimited, a relay that asked 128/s of an API admitting 16 of them is cut
    to 8/s (half of what was admitted), not to 64/s."""
    budget = Budget(None, clock)
    for step in range(128):
        clock.advance(1 / 128)
        budget.take(clock.monotonic())
        if step % 8 == 0:
            budget.answered()
    assert budget.admitted() == 16.0
    budget.throttled(1.0)
    assert budget.rate() == 8.0


def test_without_a_budget_the_limit_learnt_is_forgotten(clock: FakeClock) -> None:
    """No poll.budget: after a cut the rate grows back, and once it has grown well past
    the cut without another 429, there is no limit again."""
    budget = Budget(None, clock)
    _granted(budget, clock, 1.0, step=1 / 16)  # 16/s
    budget.throttled(1.0)
    assert budget.rate() == 8.0
    step = max(MIN_INCREASE, 8.0 * INCREASE_SHARE)
    clock.advance(1.0 + (FORGET_GROWTH - 1) * 8.0 / step - 0.1)
    assert budget.rate() is not None
    clock.advance(0.2)
    assert budget.rate() is None


def test_a_quiet_relay_cut_three_times_recovers_within_seconds(clock: FakeClock) -> None:
    """Three 429s a second apart cut a relay making 11 requests a second to 1.4/s (chaos
    seed 21); without a budget it is unlimited again within 5 s of the last pause, not
    the 40 s a growth of 0.1/s a second took while details fetches waited."""
    budget = Budget(None, clock)
    _granted(budget, clock, 1.0, step=1 / 11)
    for _ in range(3):
        budget.throttled(None)
        clock.advance(DEFAULT_PAUSE)
    cut = budget.rate()
    assert cut is not None and cut < 1.5
    clock.advance(5.0)
    assert budget.rate() is None


def test_a_broken_retry_after_cannot_stop_the_relay(clock: FakeClock) -> None:
    """A Retry-After of a year pauses for MAX_PAUSE at most."""
    budget = Budget(None, clock)
    budget.throttled(365 * 86400.0)
    assert budget.paused_for() == 300.0


def test_the_latest_poll_for_its_interval_goes_first() -> None:
    """Waiting polls go by (now - last poll) / interval, the earlier arrival among equals."""
    waiting = {
        "fast-late": (90.0, 1.0, 3),  # 10 intervals late
        "slow": (0.0, 30.0, 1),  # 3.3 intervals
        "fast-soon": (99.5, 1.0, 0),  # half an interval
    }
    assert latest(waiting, 100.0) == "fast-late"
    assert latest({"a": (50.0, 10.0, 2), "b": (50.0, 10.0, 1)}, 100.0) == "b"


def test_when_demand_exceeds_the_budget_no_number_starves(clock: FakeClock) -> None:
    """30 numbers, two of them at 1 s and the rest at 10 s, asking 4.8 polls a second of a
    budget of 2/s: once the never-polled have had their first poll, every number is polled
    at the same lateness, about 2.4 intervals (fast ones every 2.5 s, slow ones every
    25.5 s), within the budget."""
    budget = Budget(2.0, clock)
    intervals = {f"n{i}": 1.0 if i < 2 else 10.0 for i in range(30)}
    began = dict.fromkeys(intervals, 0.0)
    due = {number: clock.monotonic() for number in intervals}
    polls: Counter[str] = Counter()
    longest = dict.fromkeys(intervals, 0.0)
    order = 0
    waiting: dict[str, tuple[float, float, int]] = {}
    start = clock.monotonic()
    for _ in range(30_000):  # 300 s in steps of 10 ms
        clock.advance(0.01)
        now = clock.monotonic()
        for number, at in due.items():
            if at <= now and number not in waiting:
                order += 1
                waiting[number] = (began[number], intervals[number], order)
        if waiting and budget.take(now) == 0.0:
            chosen = latest(waiting, now)
            del waiting[chosen]
            if began[chosen] and now > start + 30.0:
                longest[chosen] = max(longest[chosen], now - began[chosen])
            began[chosen] = now
            due[chosen] = now + intervals[chosen]
            polls[chosen] += 1
    assert set(polls) == set(intervals)
    for number, gap in longest.items():
        assert gap <= 3.0 * intervals[number], number
    assert min(polls["n0"], polls["n1"]) > 8 * max(polls[f"n{i}"] for i in range(2, 30))
    assert sum(polls.values()) <= 2.0 * 300 + 1


def test_the_simulators_rate_limit_counts_per_token() -> None:
    """The simulator's limit admits N a second per token, a second's worth at once; past
    it, it says how long until the next (Retry-After in whole seconds, at least 1)."""
    limit = RateLimit(2.0)
    assert [limit.admit(b"a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limit.admit(b"b", 0.0) == 0.0
    assert limit.admit(b"a", 0.5) == 0.0
    assert retry_after(0.2) == "1"
    assert retry_after(2.5) == "3"


def _client(sim: Simulator, budget: Budget) -> AatroxClient:
    config = ApiConfig(TokenSource("inline", TOKEN), TOKEN, base_url=sim.url, timeout=2.0)
    return AatroxClient(config, budget=budget)


async def test_a_429_on_one_number_holds_back_every_poll_and_send(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    """A 429 answering one number's poll pauses the other numbers' polls and the sends of
    the same relay until its Retry-After has passed: then they go through. A send never
    waits on a pause longer than a request may take: it fails at once, not sent."""
    sim.add_fault(Fault(status=429, headers=(("Retry-After", "1"),), path="/api/v2/sms/receive"))
    budget = Budget(None, clock)
    config = relay_config(sim.url, "http://127.0.0.1:9/hook", f"sqlite:///{tmp_path / 'r.db'}")
    config = dataclasses.replace(
        config, numbers=tuple(NumberConfig(n, ("hook",), 0.3) for n in NUMBERS[:2])
    )
    store = AsyncStore(Store.open(config.store.url, SystemClock()))
    async with _client(sim, budget) as api:
        poller = Poller(config, api, store, SystemClock())
        await poller.load()
        first = await poller.poll(NUMBERS[0])
        assert first.error is not None and "429" in first.error
        assert poller.states[NUMBERS[0]].failures == 0  # the account's limit, not its own
        assert budget.paused_for() == 1.0
        other = await poller.poll(NUMBERS[1])
        assert other.deferred
        send = asyncio.create_task(api.send(NUMBERS[1], NUMBERS[0], "hi"))
        await asyncio.sleep(0.3)
        assert not send.done()
        assert NUMBERS[1] not in sim.polls
        assert sim.sent == []
        clock.advance(1.0)
        await asyncio.wait_for(send, 2.0)
        assert len(sim.sent) == 1
        clock.advance(10.0)  # the cut rate (0.5/s after one request) has grown
        again = await poller.poll(NUMBERS[1])
        assert again.error is None and not again.deferred
        budget.throttled(30.0)
        with pytest.raises(ApiRateLimited) as caught:
            await api.send(NUMBERS[1], NUMBERS[0], "later")
        assert str(caught.value) == (
            "POST /sms/send: not sent: a 429 holds every request for another 30s"
        )
        assert caught.value.retry_after == 30.0
        assert len(sim.sent) == 1
    store.close()


async def test_the_simulators_limit_is_learnt_by_the_budget(sim: Simulator) -> None:
    """Against a simulator limiting the token to 20 requests a second, a client asking as
    fast as it can is answered 429, and its budget cuts its rate and pauses."""
    sim.rate_limit = RateLimit(20.0)
    budget = Budget(None, SystemClock())
    limited = 0
    async with _client(sim, budget) as api:
        for _ in range(60):
            await budget.poll(0.0, 1.0, 5.0)
            try:
                await api.receive(NUMBERS[0])
            except ApiRateLimited as exc:
                assert exc.retry_after == 1.0
                limited += 1
    assert limited >= 1
    assert sim.limited == limited
    assert budget.cuts >= 1
    rate = budget.rate()
    assert rate is not None and rate < 40.0
