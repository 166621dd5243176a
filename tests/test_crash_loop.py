"""A relay in a crash loop still makes progress on every number and loses nothing."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from relay.testing.wire import SimMessage
from tests.support import SENDER, RelayProcess, write_config

pytestmark = pytest.mark.anyio

NUMBERS = ("+61400000001", "+61400000002", "+61400000003")
#: Messages a second, per number.
RATE = 50
#: How long the relay is killed and restarted.
CRASH_LOOP_SECONDS = 30.0


async def _traffic(sim: Simulator, injected: list[SimMessage], stop: asyncio.Event) -> None:
    """RATE messages a second on each number until ``stop``."""
    started = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = int((time.monotonic() - started) * RATE)
        for i in range(sent, due):
            for number in NUMBERS:
                injected.append(sim.inject(SENDER, number, f"crash loop {i}"))
        sent = max(sent, due)
        await asyncio.sleep(0.02)


async def test_sigkill_every_one_to_two_seconds_loses_nothing(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """SIGKILL every 1 to 2 s for 30 s while 3 numbers at 500 ms get 50 messages a second
    each and the API lists the last 1,000: every message is delivered, each under one
    webhook-id."""
    sim.listing_limit = 1000
    config = write_config(
        tmp_path / "relay.toml",
        sim.url,
        receiver.url,
        f"sqlite:///{tmp_path / 'relay.db'}",
        interval="500ms",
        numbers=NUMBERS,
    )
    # The default jitter, as deployed: it is capped at a tenth of the interval.
    config.write_text(config.read_text().replace("jitter = 0", 'jitter = "1s"'))
    rng = random.Random(int(os.environ.get("RELAY_TEST_SEED", "11")))
    relay = RelayProcess(config)
    injected: list[SimMessage] = []
    stop = asyncio.Event()
    traffic = asyncio.create_task(_traffic(sim, injected, stop))
    deadline = time.monotonic() + CRASH_LOOP_SECONDS
    lives = 0
    #: Lives in which some number was never polled: no progress on it.
    idle_lives = 0
    try:
        while time.monotonic() < deadline:
            born = time.monotonic()
            before = {n: sim.polls[n] for n in NUMBERS}
            await relay.start()
            ready = time.monotonic()
            lives += 1
            # Killed 1 to 2 s after exec, but never within a second of READY: a start slowed
            # by a loaded machine still leaves the relay time for its first polls.
            death = max(born + rng.uniform(1.0, 2.0), ready + 1.0)
            await asyncio.sleep(max(death - time.monotonic(), 0.0))
            await relay.kill()
            idle_lives += any(sim.polls[n] == before[n] for n in NUMBERS)
    finally:
        stop.set()
        await traffic
    assert lives >= 10
    # Every life polls every number (first polls come within min(interval, 1 s) of
    # READY, and each life lasts a second past READY); one slow poll is forgiven.
    assert idle_lives <= 1, f"{idle_lives} of {lives} lives left a number unpolled"
    await relay.start()
    try:
        await _all_delivered(receiver, {(m.recipient, str(m.id)) for m in injected}, 90.0)
    finally:
        assert await relay.terminate() == 0
    ids: dict[tuple[str, str], set[str]] = {}
    for d in receiver.deliveries:
        assert d.verified
        ids.setdefault(_key(d.payload), set()).add(d.webhook_id)
    missing = {(m.recipient, str(m.id)) for m in injected} - set(ids)
    assert not missing, f"{len(missing)} of {len(injected)} messages never delivered"
    assert all(len(found) == 1 for found in ids.values())


async def _all_delivered(
    receiver: WebhookReceiver, expected: set[tuple[str, str]], timeout: float
) -> None:
    """Until every expected (number, id) has arrived, or ``timeout`` seconds."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if expected <= {_key(d.payload) for d in receiver.deliveries}:
            return
        await asyncio.sleep(0.5)


def _key(payload: dict[str, object]) -> tuple[str, str]:
    data = payload["data"]
    assert isinstance(data, dict)
    return str(data["number"]), str(data["id"])
