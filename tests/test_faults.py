"""Faults the relay must survive: it keeps running, loses nothing, and says what is wrong."""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from relay.daemon import Relay
from relay.dispatcher import Dispatcher
from relay.inbound import InboundMessage
from relay.retry import NoJitter
from relay.store import AsyncStore, Store
from relay.store.schema import DELIVERED
from relay.testing.clock import FakeClock
from relay.testing.faults import Fault
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, TOKEN, relay_config, time_limit

pytestmark = pytest.mark.anyio

HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


API_FAULTS = {
    "500s": Fault(status=500, count=3),
    "429-retry-after": Fault(status=429, headers=(("Retry-After", "1"),), count=2),
    "slower-than-timeout": Fault(status=0, delay=2.5, count=2),
    "malformed-json": Fault(status=200, body=b'[{"id": 1, "from": ', count=3),
    "html-200": Fault(status=200, body=HTML, content_type="text/html", count=3),
    "50mb-body": Fault(status=200, size=50_000_000, count=2),
    "reset": Fault(reset=True, count=3),
}
EXPECTED = {
    "500s": "500",
    "slower-than-timeout": "2s",
    "malformed-json": "JSON",
    "html-200": "text/html",
    "50mb-body": "max_response_bytes",
    "reset": "onnect",
}


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    """The ``error`` field of every ``event`` logged so far."""
    return [
        str(r.__dict__.get("relay_fields", {}).get("error", ""))
        for r in caplog.records
        if r.getMessage() == event
    ]


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait, bounded, until ``condition()`` holds."""
    async with time_limit(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def run_until_delivered(relay: Relay, receiver: WebhookReceiver, count: int) -> None:
    """Run the relay until ``count`` messages were accepted by the webhook."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await receiver.wait_for(count, timeout=30)
    finally:
        stop.set()
        await task


@pytest.mark.parametrize("name", list(API_FAULTS))
async def test_api_faults(
    name: str,
    sim: Simulator,
    receiver: WebhookReceiver,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each API fault fails polls with a one-line reason (a 429 is the account's limit:
    it pauses the whole relay for its Retry-After instead); the messages arrive afterwards."""
    caplog.set_level(logging.WARNING, logger="relay")
    for i in range(3):
        sim.inject(SENDER, NUMBERS[0], f"m{i}")
    sim.add_fault(API_FAULTS[name])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    async with Relay(config) as relay:
        await run_until_delivered(relay, receiver, 3)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert sim.pending_faults == 0
    if name == "429-retry-after":
        cuts = [r for r in caplog.records if r.getMessage() == "relay.api.rate_limited"]
        assert cuts, "the fault was not reported"
        assert cuts[0].__dict__["relay_fields"]["paused"] == "1s"
        assert not logged(caplog, "relay.poll.failed")  # not one number's failure
    else:
        errors = logged(caplog, "relay.poll.failed")
        assert errors, "the fault was not reported"
        assert EXPECTED[name] in errors[0] and "\n" not in errors[0]
    assert TOKEN not in caplog.text and "m0" not in caplog.text
    assert grown_mb < 40, f"memory grew by {grown_mb:.0f} MB"


async def test_rejected_token_then_restored(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """While the token is rejected polls fail and say so; when it works again all arrive."""
    caplog.set_level(logging.WARNING, logger="relay")
    sim.token = "changed"
    sim.inject(SENDER, NUMBERS[0], "during the outage")
    config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    async with Relay(config) as relay:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        await until(
            lambda: any("rejected the token" in e for e in logged(caplog, "relay.poll.failed"))
        )
        sim.token = TOKEN
        await receiver.wait_for(1, timeout=30)
        stop.set()
        await task


async def test_connection_refused_then_back(
    receiver: WebhookReceiver, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the API down the relay keeps trying; when it comes back, nothing is missing."""
    caplog.set_level(logging.WARNING, logger="relay")
    first = Simulator(token=TOKEN)
    await first.start()
    port = int(first.url.rsplit(":", 1)[1])
    await first.close()
    config = relay_config(f"http://127.0.0.1:{port}", receiver.url, sqlite_url, numbers=NUMBERS[:1])
    async with Relay(config) as relay:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        await until(lambda: bool(logged(caplog, "relay.poll.failed")))
        assert "connect" in logged(caplog, "relay.poll.failed")[0].lower()
        back = Simulator(token=TOKEN)
        await back.start(port=port)
        try:
            back.inject(SENDER, NUMBERS[0], "after the outage")
            await receiver.wait_for(1, timeout=30)
        finally:
            await back.close()
        stop.set()
        await task


async def test_webhook_failing_for_an_hour(receiver: WebhookReceiver, sqlite_url: str) -> None:
    """A webhook answering 503 for an hour gets the message on the documented schedule."""
    clock = FakeClock(datetime.now(timezone.utc).replace(microsecond=0))
    store = AsyncStore(Store.open(sqlite_url, clock))
    store.sync.record(
        NUMBERS[0],
        [InboundMessage("1", SENDER, NUMBERS[0], "hi", clock.now())],
        lambda _m: ("hook",),
    )
    config = relay_config("http://127.0.0.1:9", receiver.url, sqlite_url).webhooks[0]
    hook = type(config)(**{**config.__dict__, "retry_initial": 5.0, "retry_max": 3600.0})
    receiver.respond(Rule(status=503))
    dispatcher = Dispatcher(store, [hook], clock, NoJitter())
    start = clock.now()
    waits = []
    while (clock.now() - start).total_seconds() < 3600:
        await dispatcher.run_once()
        nxt = store.sync.next_due("hook")
        assert nxt is not None
        waits.append((nxt - clock.now()).total_seconds())
        clock.advance(waits[-1])
    receiver.clear_rules()
    await dispatcher.run_once()
    await dispatcher.aclose()
    store.close()
    assert waits[:6] == [5, 10, 20, 40, 80, 160]
    assert store.sync.counts()[DELIVERED] == 1
    assert len({d.webhook_id for d in receiver.deliveries}) == 1


async def test_store_briefly_unavailable(
    sim: Simulator, receiver: WebhookReceiver, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL dropping the relay's connections for a while loses nothing."""
    caplog.set_level(logging.WARNING, logger="relay")
    url = (
        sa.engine.make_url(postgres_url)
        .update_query_dict({"application_name": "relay-under-test"})
        .render_as_string(hide_password=False)
    )
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    kill = sa.text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'relay-under-test'"
    )
    config = relay_config(sim.url, receiver.url, url, numbers=NUMBERS[:1])
    try:
        async with Relay(config) as relay:
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop))
            cut = 0
            for i in range(20):  # two seconds of connections cut as soon as they are made
                sim.inject(SENDER, NUMBERS[0], f"m{i}")
                with admin.connect() as conn:
                    cut += conn.execute(kill).scalar_one()
                await asyncio.sleep(0.1)
            await receiver.wait_for(20, timeout=30)
            stop.set()
            await task
    finally:
        admin.dispose()
    # The fault was real: the relay's connections were cut under it. Whether a cut shows
    # as a failed poll (a query in flight) or is healed silently by the pool's pre-ping
    # (an idle connection) is the scheduler's timing, so the log is not asserted.
    assert cut > 0
    texts = {d.payload["data"]["text"] for d in receiver.deliveries}  # type: ignore[index]
    assert texts == {f"m{i}" for i in range(20)}
