"""Several relays on one PostgreSQL store: work shared, a dead relay taken over, nothing lost."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from relay.config import DEFAULT_WEBHOOK_CONCURRENCY
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import SENDER, RelayProcess, write_config

pytestmark = pytest.mark.anyio

NUMBERS = tuple(f"+614000000{i:02d}" for i in range(1, 9))
INTERVAL = 0.2
LEASE = 3.0


async def poll_rates(sim: Simulator, seconds: float) -> dict[str, float]:
    """Receive requests per second for each number over the next ``seconds``."""
    before = Counter(sim.polls)
    await asyncio.sleep(seconds)
    return {n: (sim.polls[n] - before[n]) / seconds for n in NUMBERS}


async def test_two_relays_share_and_take_over(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path, postgres_url: str
) -> None:
    """Kill one of two relays during traffic: all delivered, none twice, one poller per number."""
    sim, receiver = peers
    config = write_config(
        tmp_path / "relay.toml",
        sim.url,
        receiver.url,
        postgres_url,
        numbers=NUMBERS,
        store_extra=f'lease = "{LEASE:g}s"',
    )
    one, two = RelayProcess(config), RelayProcess(config)
    await one.start()
    await two.start()
    await two.wait_for_line("relay.leases.changed held=4", timeout=3 * LEASE)
    await one.wait_for_line("held=4", timeout=3 * LEASE)

    shared = await poll_rates(sim, 2.0)
    injected = []
    for i in range(30):
        injected.append(sim.inject(SENDER, NUMBERS[i % len(NUMBERS)], f"m{i}"))
        if i == 15:
            await one.kill()
        await asyncio.sleep(0.05)
    await receiver.wait_for(len(injected), timeout=4 * LEASE + 10)
    alone = await poll_rates(sim, 2.0)
    assert await two.terminate() == 0

    expected = 1 / INTERVAL
    # Each number polled by one relay at a time: at its rate, never twice it.
    assert all(0.5 * expected <= r <= 1.3 * expected for r in shared.values()), shared
    assert all(0.5 * expected <= r <= 1.3 * expected for r in alone.values()), alone
    accepted: dict[tuple[str, str], list[str]] = {}
    for d in receiver.deliveries:
        if d.verified and d.status is not None and 200 <= d.status < 300:
            data = d.payload["data"]
            assert isinstance(data, dict)
            accepted.setdefault((str(data["number"]), str(data["id"])), []).append(d.webhook_id)
    assert set(accepted) == {(m.recipient, str(m.id)) for m in injected}
    # A repeat only when the killed relay had sent but not recorded: same webhook-id, and
    # at most what it had in flight to the webhook when it died.
    assert all(len(set(ids)) == 1 for ids in accepted.values())
    repeats = sum(len(ids) - 1 for ids in accepted.values())
    assert repeats <= DEFAULT_WEBHOOK_CONCURRENCY, repeats
