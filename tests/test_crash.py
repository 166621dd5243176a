"""SIGKILL of a real ``aatrox-relay run`` process loses nothing and keeps webhook-ids stable."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, RelayProcess, write_config

pytestmark = pytest.mark.anyio


def _ids_by_message(receiver: WebhookReceiver) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for d in receiver.deliveries:
        if d.verified:
            data = d.payload["data"]
            assert isinstance(data, dict)
            found.setdefault((str(data["number"]), str(data["id"])), set()).add(d.webhook_id)
    return found


async def test_kill_between_poll_and_delivery_loses_nothing(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Messages recorded but not yet delivered when the relay is killed are delivered after."""
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    receiver.respond(Rule(delay=30.0))  # the webhook hangs: nothing gets acknowledged
    relay = RelayProcess(config)
    await relay.start()
    injected = [sim.inject(SENDER, NUMBERS[i % 2], f"m{i}") for i in range(10)]
    while len(receiver.deliveries) < 4:  # attempts under way: the messages are recorded
        await asyncio.sleep(0.05)
    await relay.kill()
    before = _ids_by_message(receiver)
    receiver.clear_rules()  # the webhook answers 204 from now on
    await relay.start()
    await receiver.wait_for(10, timeout=20)
    assert await relay.terminate() == 0
    after = _ids_by_message(receiver)
    assert set(after) == {(m.recipient, str(m.id)) for m in injected}
    for key, ids in after.items():
        assert len(ids) == 1, key
        assert before.get(key, ids) == ids


async def test_repeated_kills_during_traffic_lose_nothing(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Kill the relay at random moments while messages flow: all arrive, repeats share an id."""
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    rng = random.Random(int(os.environ.get("RELAY_TEST_SEED", "7")))
    relay = RelayProcess(config)
    injected = []
    for _round in range(10):  # at least ten kills during traffic
        await relay.start()
        for _ in range(rng.randint(3, 8)):
            injected.append(sim.inject(SENDER, rng.choice(NUMBERS), "traffic"))
            await asyncio.sleep(rng.uniform(0.0, 0.15))
        await asyncio.sleep(rng.uniform(0.0, 0.4))
        await relay.kill()
    await relay.start()
    await receiver.wait_for(len(injected), timeout=30)
    assert await relay.terminate() == 0
    got = _ids_by_message(receiver)
    assert set(got) == {(m.recipient, str(m.id)) for m in injected}
    assert all(len(ids) == 1 for ids in got.values())
