"""``ordering = "sender"``: each sender's messages to a number reach a webhook in the
order the provider received them, whatever fails and is retried on the way."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from relay.config import NumberConfig
from relay.daemon import Relay
from relay.inbound import InboundMessage
from relay.store import DEAD, DELIVERED, PENDING, Outcome, Store
from relay.testing.clock import FakeClock
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, relay_config, running, webhook_config

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
ALICE, BOB = "+61412345678", "+61498765432"


def sms(i: int, sender: str, at: int) -> InboundMessage:
    """Message ``i`` from ``sender``, received ``at`` seconds after T0."""
    return InboundMessage(str(i), sender, NUMBERS[0], f"m{i}", T0 + timedelta(seconds=at))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated store on a clock well after the messages."""
    s = Store.open(store_url, FakeClock(T0 + timedelta(hours=1)))
    yield s
    s.close()


def claimed(store: Store) -> list[str]:
    """Provider ids of what an ordered claim takes now (claims released again)."""
    found = store.claim("hook", 50, in_order=True)
    store.release("deliveries", [d.id for d in found], 0.0)
    return sorted(d.provider_id for d in found)


def settle(store: Store, provider_id: str, state: str) -> None:
    """Write an outcome for the delivery of ``provider_id``."""
    found = store.claim("hook", 50)
    (due,) = [d for d in found if d.provider_id == provider_id]
    store.release("deliveries", [d.id for d in found if d is not due], 0.0)
    now = store.clock.now()
    nxt = now if state == PENDING else None
    store.save_outcomes([Outcome(due.id, now, state, nxt, 503 if state != DELIVERED else 200)])


def test_a_sender_waits_for_its_earlier_message(store: Store) -> None:
    """Only each sender's oldest pending message is claimable; a retried one still
    blocks, a delivered or dead one no longer does; a tie in time goes by record order."""
    store.record(
        NUMBERS[0],
        [sms(1, ALICE, 1), sms(2, ALICE, 2), sms(3, BOB, 2), sms(4, ALICE, 3), sms(5, BOB, 2)],
        lambda _m: ("hook",),
    )
    assert claimed(store) == ["1", "3"]
    everything = store.claim("hook", 50)  # without ordering
    assert len(everything) == 5
    store.release("deliveries", [d.id for d in everything], 0.0)
    settle(store, "1", PENDING)  # failed, retried later: still blocks
    assert claimed(store) == ["1", "3"]
    settle(store, "1", DELIVERED)
    settle(store, "3", DEAD)
    assert claimed(store) == ["2", "5"]


def test_next_due_skips_what_waits_for_its_sender(store: Store) -> None:
    """A blocked delivery is not "due": the lane sleeps instead of claiming nothing."""
    store.record(NUMBERS[0], [sms(1, ALICE, 1), sms(2, ALICE, 2)], lambda _m: ("hook",))
    first = store.claim("hook", 1, in_order=True)
    assert [d.provider_id for d in first] == ["1"]
    assert store.next_due("hook", in_order=True) is None
    assert store.next_due("hook") is not None


@pytest.mark.anyio
async def test_each_senders_messages_arrive_in_order_through_failures(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """Three senders, 12 messages each, interleaved; the webhook fails 30% of attempts
    (a seeded schedule) at a concurrency of 8: each sender's messages are first accepted
    in the order the provider received them, and every message arrives."""
    rng = random.Random(7)
    for _ in range(400):
        receiver.respond(Rule(status=503 if rng.random() < 0.3 else 204, times=1))
    senders = [ALICE, BOB, "+61433333333"]
    start = datetime.now(timezone.utc) - timedelta(minutes=5)
    for i in range(36):
        sim.inject(senders[i % 3], NUMBERS[0], f"{i:02d}", start + timedelta(seconds=i))
    base = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    hook = webhook_config(
        receiver.url, name="hook", ordering="sender", retry_initial=0.05, retry_max=0.2
    )
    config = dataclasses.replace(
        base, webhooks=(hook,), numbers=(NumberConfig(NUMBERS[0], ("hook",), 0.2),)
    )
    async with Relay(config) as relay, running(relay):
        await receiver.wait_for(36, timeout=30)
    firsts: dict[str, list[str]] = {}
    seen: set[str] = set()
    for d in receiver.deliveries:
        if d.status < 300 and d.webhook_id not in seen:
            seen.add(d.webhook_id)
            data = d.payload["data"]
            assert isinstance(data, dict)
            firsts.setdefault(str(data["from"]), []).append(str(data["text"]))
    assert sum(len(texts) for texts in firsts.values()) == 36
    for texts in firsts.values():
        assert texts == sorted(texts)
    assert sum(d.status >= 500 for d in receiver.deliveries) > 5  # the failures happened
