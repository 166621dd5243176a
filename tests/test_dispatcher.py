"""Delivery over real loopback HTTP to the project's webhook receiver, on a real SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from relay import __version__
from relay.config import WebhookConfig
from relay.dispatcher import Dispatcher
from relay.inbound import InboundMessage
from relay.retry import NoJitter
from relay.store import DEAD, DELIVERED, PENDING, AsyncStore, Store
from relay.testing.clock import FakeClock
from relay.testing.receiver import Rule, WebhookReceiver
from tests.support import KEY, SECRET, webhook_config

pytestmark = pytest.mark.anyio

NUMBER = "+61400000001"


@pytest.fixture
def store(sqlite_url: str, now_clock: FakeClock) -> Iterator[AsyncStore]:
    """A migrated SQLite store on a file."""
    s = AsyncStore(Store.open(sqlite_url, now_clock))
    yield s
    s.close()


def hook(url: str, **overrides: object) -> WebhookConfig:
    """A webhook config with quick timeouts. Concurrency 4 and an extra header."""
    return webhook_config(url, **{"concurrency": 4, "headers": (("X-Api-Key", "k1"),), **overrides})


def queue(store: AsyncStore, count: int, hooks: tuple[str, ...] = ("a",), text: str = "hi") -> None:
    """Record ``count`` messages queued to ``hooks``."""
    base = store.sync.clock.now()
    store.sync.record(
        NUMBER,
        [
            InboundMessage(
                str(i), "+61412345678", NUMBER, f"{text} {i}", base - timedelta(seconds=5)
            )
            for i in range(count)
        ],
        lambda _m: hooks,
    )


def states(store: AsyncStore) -> dict[str, int]:
    """Deliveries by state."""
    return store.sync.counts()


async def test_delivery_is_signed_and_shaped(
    store: AsyncStore, receiver: WebhookReceiver, now_clock: FakeClock
) -> None:
    """The POST carries the documented body and headers, and standardwebhooks verifies it."""
    text = "Hello 👋 こんにちは"
    store.sync.record(
        NUMBER,
        [
            InboundMessage(
                "42", "+61412345678", NUMBER, text, datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)
            )
        ],
        lambda _m: ("a",),
    )
    dispatcher = Dispatcher(store, [hook(receiver.url)], now_clock, NoJitter())
    await dispatcher.run_once()
    await dispatcher.aclose()
    (got,) = receiver.deliveries
    payload = StandardWebhook(SECRET).verify(got.body, got.headers)
    assert payload == {
        "type": "sms.received",
        "timestamp": payload["timestamp"],
        "data": {
            "id": "42",
            "number": NUMBER,
            "from": "+61412345678",
            "to": NUMBER,
            "text": text,
            "received_at": "2026-03-01T10:00:00Z",
        },
    }
    assert datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00")) == now_clock.now()
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == f"aatrox-relay/{__version__}"
    assert got.headers["x-api-key"] == "k1"
    assert text.encode() in got.body  # raw UTF-8, not \\u escapes
    assert states(store)[DELIVERED] == 1


async def test_retries_keep_the_id_and_refresh_the_timestamp(
    store: AsyncStore, receiver: WebhookReceiver, now_clock: FakeClock
) -> None:
    """A failed attempt is retried on schedule with the same webhook-id and a new timestamp."""
    queue(store, 1)
    receiver.respond(Rule(status=500, times=2))
    dispatcher = Dispatcher(store, [hook(receiver.url)], now_clock, NoJitter())
    await dispatcher.run_once()
    assert store.sync.next_due("a") == now_clock.now() + timedelta(seconds=5)
    now_clock.advance(4)
    await dispatcher.run_once()
    assert len(receiver.deliveries) == 1  # not yet due
    now_clock.advance(1)
    await dispatcher.run_once()
    assert store.sync.next_due("a") == now_clock.now() + timedelta(seconds=10)
    now_clock.advance(10)
    await dispatcher.run_once()
    await dispatcher.aclose()
    ids = {d.webhook_id for d in receiver.deliveries}
    stamps = [d.timestamp for d in receiver.deliveries]
    assert len(receiver.deliveries) == 3 and len(ids) == 1
    assert stamps[1] - stamps[0] == 5 and stamps[2] - stamps[1] == 10
    assert all(d.verified for d in receiver.deliveries)
    assert states(store)[DELIVERED] == 1


@pytest.mark.parametrize(
    ("rule", "state", "wait"),
    [
        (Rule(status=302, headers=(("Location", "/elsewhere"),)), PENDING, 5.0),
        (Rule(status=410), DEAD, None),
        (Rule(status=429, headers=(("Retry-After", "120"),)), PENDING, 120.0),
        (Rule(status=503, headers=(("Retry-After", "7"),)), PENDING, 7.0),
        (Rule(status=400), PENDING, 5.0),
        (Rule(delay=3.0), PENDING, 5.0),
        (Rule(reset=True), PENDING, 5.0),
    ],
    ids=[
        "3xx-not-followed",
        "410-dead",
        "429-retry-after",
        "503-retry-after",
        "400",
        "timeout",
        "reset",
    ],
)
async def test_failure_answers(
    store: AsyncStore,
    receiver: WebhookReceiver,
    now_clock: FakeClock,
    rule: Rule,
    state: str,
    wait: float | None,
) -> None:
    """Each kind of failure is retried at the right time, except 410 which dead-letters."""
    queue(store, 1)
    receiver.respond(rule)
    dispatcher = Dispatcher(store, [hook(receiver.url, timeout=0.5)], now_clock, NoJitter())
    await dispatcher.run_once()
    await dispatcher.aclose()
    assert states(store)[state] == 1
    expected = None if wait is None else now_clock.now() + timedelta(seconds=wait)
    assert store.sync.next_due("a") == expected
    assert len(receiver.deliveries) == 1  # one attempt; a redirect is not followed


async def test_gives_up_after_the_window(
    store: AsyncStore, receiver: WebhookReceiver, now_clock: FakeClock
) -> None:
    """A webhook failing past give_up_after leaves the delivery dead, with its last error."""
    queue(store, 1)
    receiver.respond(Rule(status=500))
    dispatcher = Dispatcher(store, [hook(receiver.url, give_up_after=30.0)], now_clock, NoJitter())
    attempts = 0
    while states(store)[PENDING]:
        await dispatcher.run_once()
        attempts += 1
        nxt = store.sync.next_due("a")
        if nxt is not None:
            now_clock.advance((nxt - now_clock.now()).total_seconds())
    await dispatcher.aclose()
    # 0, 5, 15, then capped at the 30 s deadline: four attempts.
    assert attempts == 4 and len(receiver.deliveries) == 4
    assert states(store)[DEAD] == 1


async def test_concurrency_is_bounded(
    store: AsyncStore, receiver: WebhookReceiver, now_clock: FakeClock
) -> None:
    """Never more than `concurrency` requests in flight to one webhook."""
    queue(store, 12)
    receiver.respond(Rule(delay=0.2))
    dispatcher = Dispatcher(store, [hook(receiver.url, concurrency=3)], now_clock)
    dispatcher.start()
    dispatcher.wake()
    await receiver.wait_for(12, timeout=10)
    await dispatcher.stop(2)
    await dispatcher.aclose()
    assert receiver.max_in_flight == 3


async def test_slow_webhook_does_not_hold_up_another(
    store: AsyncStore, now_clock: FakeClock
) -> None:
    """While one webhook hangs, the other gets all its deliveries."""
    async with WebhookReceiver(KEY) as slow, WebhookReceiver(KEY) as fast:
        slow.respond(Rule(delay=5.0))
        queue(store, 10, hooks=("slow", "fast"))
        dispatcher = Dispatcher(
            store,
            [
                hook(slow.url, name="slow", concurrency=2, timeout=10.0),
                hook(fast.url, name="fast", concurrency=2),
            ],
            now_clock,
        )
        dispatcher.start()
        dispatcher.wake()
        await fast.wait_for(10, timeout=4)
        assert len(slow.deliveries) <= 2
        await dispatcher.stop(0.1)
        await dispatcher.aclose()


async def test_body_is_compact_json(
    store: AsyncStore, receiver: WebhookReceiver, now_clock: FakeClock
) -> None:
    """The body parses as JSON with exactly the documented keys."""
    queue(store, 1)
    dispatcher = Dispatcher(store, [hook(receiver.url)], now_clock)
    await dispatcher.run_once()
    await dispatcher.aclose()
    doc = json.loads(receiver.deliveries[0].body)
    assert set(doc) == {"type", "timestamp", "data"}
    assert set(doc["data"]) == {"id", "number", "from", "to", "text", "received_at"}
