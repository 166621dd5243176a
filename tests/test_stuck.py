"""No claim outlives its work: whatever raises while a delivery or an SMS is processed,
the item ends in a recorded outcome or a handed-back claim, never claimed for ever.

Before, an exception out of ``Worker.process`` was logged as ``crashed`` and left the
claim to the lease keeper, which renews every claim of its relay: the item was never
tried again until a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from relay.api import AatroxClient
from relay.config import WebhookConfig
from relay.daemon import Relay
from relay.dispatcher import Dispatcher, Lane
from relay.events import Events
from relay.inbound import InboundMessage
from relay.outbox import Outbox
from relay.retry import NoJitter
from relay.store import AsyncStore, DueDelivery, OutboundSms, Store
from relay.store.schema import DELIVERED, PENDING, UNKNOWN, deliveries, outbound
from relay.testing.clock import FakeClock
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, relay_config, time_limit, webhook_config

pytestmark = pytest.mark.anyio

KEY = b"0123456789abcdef0123456789abcdef"
#: A URL httpx refuses while building the request (InvalidURL is no transport error).
BAD_URL = "http://[::1/hook"
#: JSON nested deeper than Python's json module recurses: a RecursionError to parse.
DEEP = 30_000


class Recorded(Events):
    """Events that remember the unexpected exceptions and store failures reported."""

    def __init__(self) -> None:
        self.unexpected_errors: list[BaseException] = []
        self.store_errors: list[str] = []

    def unexpected(self, exc: BaseException) -> None:
        """Remember ``exc``."""
        self.unexpected_errors.append(exc)

    def store_failed(self, error: str) -> None:
        """Remember ``error``."""
        self.store_errors.append(error)


@pytest.fixture
def store(store_url: str, now_clock: FakeClock) -> Iterator[AsyncStore]:
    """A migrated store on SQLite and on PostgreSQL, on the fake clock."""
    s = AsyncStore(Store.open(store_url, now_clock))
    yield s
    s.close()


def hook(url: str, **overrides: object) -> WebhookConfig:
    """A webhook with a 5 s first retry and a 600 s give-up window."""
    return webhook_config(url, **overrides)


def queue_one(store: AsyncStore) -> None:
    """One message, queued to webhook "a"."""
    now = store.sync.clock.now()
    message = InboundMessage("1", SENDER, NUMBERS[0], "hi", now - timedelta(seconds=1))
    store.sync.record(NUMBERS[0], [message], lambda _m: ("a",))


def rows(store: Store, table: sa.Table) -> list[sa.Row[tuple[object, ...]]]:
    """Every row of a queue table."""
    with store.engine.connect() as conn:
        return list(conn.execute(table.select().order_by(table.c.id)))


# --- a real relay against webhooks whose 2xx cannot be read ---------------------------


def nested(depth: int) -> bytes:
    """``{"reply": [[[...]]]}`` nested ``depth`` levels deep."""
    return b'{"reply": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    "rule",
    [
        Rule(status=200, body=nested(DEEP)),
        Rule(status=200, body=b'{"reply": "hi"}', headers=(("Content-Encoding", "gzip"),)),
        Rule(status=200, body=b'{"reply": "nul \\u0000 inside"}'),
        Rule(status=200, body=b'{"reply": "half a pair \\ud800"}'),
    ],
    ids=["nested-too-deep", "gzip-that-is-not", "nul-in-reply", "lone-surrogate"],
)
async def test_a_2xx_whose_reply_cannot_be_used_is_delivered(
    sim: Simulator,
    receiver: WebhookReceiver,
    store_url: str,
    rule: Rule,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A webhook's 2xx with a body that cannot be decoded, parsed or stored is a delivered
    message whose reply is ignored with relay.reply.ignored: no crash, no claim left."""
    receiver.respond(rule)
    sim.inject(SENDER, NUMBERS[0], "hello")
    config = relay_config(sim.url, receiver.url, store_url, numbers=NUMBERS[:1])
    caplog.set_level(logging.WARNING, logger="relay")
    async with Relay(config) as relay:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            async with time_limit(15):
                while (await relay.store.call(relay.store.sync.counts))[DELIVERED] < 1:
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
        (row,) = rows(relay.store.sync, deliveries)
    assert (row.state, row.claimed_by) == (DELIVERED, None)
    assert len(receiver.deliveries) == 1  # accepted once, never sent again
    assert sim.sent == []
    events = [r.getMessage() for r in caplog.records]
    assert "relay.reply.ignored" in events
    assert "relay.delivery.crashed" not in events


# --- any exception inside process: a recorded outcome -----------------------------------


async def test_an_exception_in_a_delivery_is_recorded_as_a_retry(
    store: AsyncStore, now_clock: FakeClock
) -> None:
    """A delivery whose attempt raises something unexpected (httpx's InvalidURL) is
    recorded as a retry with backoff from now, its claim released and the bug reported."""
    queue_one(store)
    events = Recorded()
    dispatcher = Dispatcher(store, [hook(BAD_URL)], now_clock, NoJitter(), events=events)
    now_clock.advance(3)  # the failure is seen 3 s after the message was queued
    await dispatcher.run_once()
    await dispatcher.aclose()
    (row,) = rows(store.sync, deliveries)
    assert (row.state, row.attempts, row.claimed_by) == (PENDING, 1, None)
    assert row.next_attempt_at == now_clock.now() + timedelta(seconds=5)
    assert row.last_error == "internal error (InvalidURL); see the relay's log"
    assert [type(e).__name__ for e in events.unexpected_errors] == ["InvalidURL"]


async def test_an_exception_past_the_give_up_time_is_dead(
    store: AsyncStore, now_clock: FakeClock
) -> None:
    """Past give_up_after, a delivery whose attempt raises is dead with the error."""
    queue_one(store)
    dispatcher = Dispatcher(store, [hook(BAD_URL, give_up_after=1.0)], now_clock, NoJitter())
    now_clock.advance(2)
    await dispatcher.run_once()
    await dispatcher.aclose()
    (row,) = rows(store.sync, deliveries)
    assert (row.state, row.claimed_by) == ("dead", None)
    assert row.last_error.startswith("internal error (InvalidURL)")


class Unrecordable(Lane):
    """A lane whose every attempt and every attempt to record a failure raise."""

    async def process(self, item: DueDelivery) -> None:
        """Raise, as a bug would."""
        msg = "a bug in process"
        raise RuntimeError(msg)

    async def failed(self, item: DueDelivery, exc: Exception) -> None:
        """Raise again, as a bug in recording would."""
        msg = "a bug in failed"
        raise LookupError(msg)


async def test_when_even_recording_fails_the_claim_is_handed_back(
    store: AsyncStore, now_clock: FakeClock
) -> None:
    """If recording the failure raises too, the claim is released, due again after
    store.lease (not at once: no tight loop), and both bugs are reported."""
    queue_one(store)
    events = Recorded()
    dispatcher = Dispatcher(store, [hook(BAD_URL)], now_clock, NoJitter(), events=events)
    lane = dispatcher.lanes["a"]
    broken = Unrecordable(
        lane.webhook, store, dispatcher._writer, now_clock, NoJitter(), events=events
    )
    await broken.run_once(timeout=5)
    await dispatcher.aclose()
    (row,) = rows(store.sync, deliveries)
    assert (row.state, row.attempts, row.claimed_by, row.claim_expires_at) == (
        PENDING,
        0,
        None,
        None,
    )
    assert row.next_attempt_at == now_clock.now() + timedelta(seconds=store.sync.lease)
    assert [type(e) for e in events.unexpected_errors] == [RuntimeError, LookupError]
    now_clock.advance(store.sync.lease)
    assert [d.id for d in store.sync.claim("a", 10)] == [row.id]  # claimable again


#: Makes the store refuse to mark a delivery delivered: a real failure of the outcome's write.
REFUSE_DELIVERED = {
    "sqlite": [
        "CREATE TRIGGER refuse_delivered BEFORE UPDATE ON deliveries"
        " WHEN NEW.state = 'delivered' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_delivered() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
        "CREATE TRIGGER refuse_delivered BEFORE UPDATE ON deliveries FOR EACH ROW"
        " WHEN (NEW.state = 'delivered') EXECUTE FUNCTION refuse_delivered()",
    ],
}


async def test_an_outcome_the_store_refuses_hands_the_claim_back(
    store: AsyncStore, receiver: WebhookReceiver, now_clock: FakeClock
) -> None:
    """When the group commit of an outcome fails, the delivery's claim is handed back (due
    after store.lease, sent again with its webhook-id) and the store failure reported."""
    queue_one(store)
    with store.sync.engine.begin() as conn:
        for statement in REFUSE_DELIVERED[store.sync.engine.dialect.name]:
            conn.execute(sa.text(statement))
    events = Recorded()
    dispatcher = Dispatcher(store, [hook(receiver.url)], now_clock, NoJitter(), events=events)
    await dispatcher.run_once()  # delivered, but the write fails
    await dispatcher.run_once()  # the lane hands the claim back before claiming more
    await dispatcher.aclose()
    (row,) = rows(store.sync, deliveries)
    assert (row.state, row.claimed_by) == (PENDING, None)
    assert row.next_attempt_at == now_clock.now() + timedelta(seconds=store.sync.lease)
    assert len(receiver.deliveries) == 1 and len(events.store_errors) == 1
    assert "refused by the test" in events.store_errors[0]


class Crashing(Outbox):
    """An outbox whose attempts raise something unexpected."""

    async def process(self, item: OutboundSms) -> None:
        """Raise, as a bug would, before or after the request went out: nobody knows."""
        msg = "a bug in process"
        raise RuntimeError(msg)


async def test_an_exception_in_a_send_is_recorded_as_unknown(
    store: AsyncStore, now_clock: FakeClock
) -> None:
    """An outbound SMS whose attempt raises is recorded as unknown (it may have left), its
    claim released, never sent again by default."""
    sms_id = store.sync.queue_send(NUMBERS[0], [SENDER], "hello")
    api = AatroxClient(relay_config("http://127.0.0.1:9", BAD_URL, "sqlite://").api)
    events = Recorded()
    outbox = Crashing(store, api, now_clock, NoJitter(), events=events)
    await outbox.run_once(timeout=5)
    await api.aclose()
    (row,) = rows(store.sync, outbound)
    assert (row.id, row.state, row.attempts, row.claimed_by) == (sms_id, UNKNOWN, 1, None)
    assert row.last_error == "internal error (RuntimeError); see the relay's log"
    assert [type(e) for e in events.unexpected_errors] == [RuntimeError]
