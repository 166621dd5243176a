"""The relay end to end, in process: simulator -> poller -> store -> dispatcher -> receiver."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from itertools import cycle, islice

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook as StandardWebhook

from relay.config import Backfill
from relay.daemon import Relay
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from relay.testing.wire import WireFormat
from tests.support import NUMBERS, SECRET, SENDER, relay_config

pytestmark = pytest.mark.anyio


def _variants() -> list[WireFormat]:
    """Wire formats that between them use every tolerated envelope, key and time format."""
    axes = {
        "envelope": ["array", "messages", "data", "results", "items"],
        "id_key": ["id", "message_id", "messageId", "sms_id"],
        "id_type": ["int", "str"],
        "from_key": ["from", "sender", "source"],
        "to_key": ["to", "recipient", "destination"],
        "text_key": ["text", "message", "body", "content", None],
        "time_key": ["timestamp", "received_at", "receivedAt", "created_at", "date"],
        "time_format": ["iso_z", "iso_offset", "iso_naive", "unix", "unix_ms"],
        "number_format": ["e164", "international", "national"],
        "listing": ["full", "id_only", "no_sender", "no_text"],
    }
    longest = max(len(v) for v in axes.values())
    columns = {k: list(islice(cycle(v), longest + 1)) for k, v in axes.items()}
    return [WireFormat(**{k: columns[k][i] for k in axes}) for i in range(longest + 1)]


async def _running(relay: Relay) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(relay.run(stop))


#: Senders of every kind: a mobile number, an alphanumeric sender id, a short code.
SENDERS = (SENDER, "Telstra", "1234")


@pytest.mark.parametrize(
    "wire", _variants(), ids=lambda w: f"{w.envelope}-{w.time_format}-{w.listing}"
)
async def test_every_shape_arrives_once_with_its_fields(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str, wire: WireFormat
) -> None:
    """Messages injected over time, in this wire shape, each reach the webhook once, verified."""
    sim.wire = wire
    config = relay_config(sim.url, receiver.url, sqlite_url)
    injected = []
    async with Relay(config) as relay:
        stop, task = await _running(relay)
        for wave in range(3):
            for n, number in enumerate(NUMBERS):
                sender = SENDERS[(wave + n) % len(SENDERS)]
                injected.append(sim.inject(sender, number, f"wave {wave} #{n} ✓ émoji 🎉"))
            await receiver.wait_for(len(injected), timeout=10)
        # A few more polls of the same listing must not deliver anything twice.
        polls = sim.requests["receive"]
        while sim.requests["receive"] < polls + 2 * len(NUMBERS):
            await asyncio.sleep(0.05)
        stop.set()
        await task
    held = {(m.recipient, str(m.id)): m for m in injected}
    assert len(receiver.deliveries) == len(injected)
    for delivery in receiver.deliveries:
        data = StandardWebhook(SECRET).verify(delivery.body, delivery.headers)["data"]
        m = held[(data["number"], data["id"])]
        assert (data["from"], data["to"], data["text"]) == (m.sender, m.recipient, m.text)
        received = datetime.fromisoformat(data["received_at"].replace("Z", "+00:00"))
        assert abs((received - m.received_at).total_seconds()) < 0.001


@pytest.mark.parametrize(
    ("backfill", "delivered"),
    [
        (Backfill("none"), set()),
        (Backfill("all"), {"old", "recent"}),
        (Backfill("window", 3600), {"recent"}),
    ],
    ids=["none", "all", "window-1h"],
)
async def test_backfill_modes(
    sim: Simulator,
    receiver: WebhookReceiver,
    sqlite_url: str,
    backfill: Backfill,
    delivered: set[str],
) -> None:
    """The first poll delivers nothing, everything, or only what is younger than the window."""
    now = datetime.now(timezone.utc)
    sim.inject(SENDER, NUMBERS[0], "old", now - timedelta(hours=3))
    sim.inject(SENDER, NUMBERS[0], "recent", now - timedelta(minutes=10))
    config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1], backfill=backfill)
    async with Relay(config) as relay:
        await relay.poll_once()
        sim.inject(SENDER, NUMBERS[0], "after")
        await relay.poll_once()
    texts = [d.payload["data"]["text"] for d in receiver.deliveries]  # type: ignore[index]
    assert sorted(texts) == sorted([*delivered, "after"])


async def test_dedup_across_restart(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A restarted relay on the same store delivers nothing it already had."""
    for i in range(3):
        sim.inject(SENDER, NUMBERS[0], f"m{i}")
    config = relay_config(sim.url, receiver.url, sqlite_url)
    async with Relay(config) as relay:
        await relay.poll_once()
    async with Relay(config) as relay:
        summary = await relay.poll_once()
    assert [p.new for p in summary.polls] == [0, 0]
    assert len(receiver.deliveries) == 3


async def test_messages_older_than_retention_count_as_seen(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A listed message older than the pruning horizon is never delivered, even with "all"."""
    sim.inject(SENDER, NUMBERS[0], "ancient", datetime.now(timezone.utc) - timedelta(hours=2))
    sim.inject(SENDER, NUMBERS[0], "fresh")
    config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1], retention=3600)
    async with Relay(config) as relay:
        await relay.poll_once()
    assert [d.payload["data"]["text"] for d in receiver.deliveries] == ["fresh"]  # type: ignore[index]


async def test_failing_webhook_gets_everything_later(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A webhook that fails for a while receives every message once it recovers, same ids."""
    receiver.respond(Rule(status=503, times=6))
    for i in range(4):
        sim.inject(SENDER, NUMBERS[i % 2], f"m{i}")
    config = relay_config(sim.url, receiver.url, sqlite_url, retry_initial=0.1, retry_max=0.4)
    async with Relay(config) as relay:
        stop, task = await _running(relay)
        await receiver.wait_for(4, timeout=15)
        stop.set()
        await task
    by_id: dict[str, set[str]] = {}
    for d in receiver.deliveries:
        by_id.setdefault(
            str(d.payload["data"]["id"]) + d.payload["data"]["number"],  # type: ignore[index]
            set(),
        ).add(d.webhook_id)
    assert len(by_id) == 4 and all(len(ids) == 1 for ids in by_id.values())
    assert sum(1 for d in receiver.deliveries if d.verified) >= 4 + 6 - 1


async def test_a_full_window_of_known_messages_is_cheap(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """Re-polling 1,000 known messages costs at most a few queries, none once they are cached."""
    base = datetime.now(timezone.utc) - timedelta(minutes=30)
    for i in range(1000):
        sim.inject(SENDER, NUMBERS[0], f"m{i}", base + timedelta(seconds=i))
    config = relay_config(
        sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1], backfill=Backfill("none")
    )
    async with Relay(config) as relay:
        first = await relay.poll_once()
    assert first.polls[0].new == 1000 and receiver.deliveries == []
    async with Relay(config) as relay:
        engine = relay.store.sync.engine
        statements: list[str] = []
        sa.event.listen(
            engine, "before_cursor_execute", lambda *a: statements.append(str(a[2]).split()[0])
        )
        cold = await relay.poller.poll(NUMBERS[0])
        cold_count = len(statements)
        warm = await relay.poller.poll(NUMBERS[0])
    assert cold.listed == warm.listed == 1000
    assert cold.new == warm.new == 0
    # The cold poll: two batched SELECTs of 500 ids; the warm one: nothing at all.
    assert cold_count == 2
    assert len(statements) == cold_count
