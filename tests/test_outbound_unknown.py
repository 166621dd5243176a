"""One SMS, sent once: a send whose outcome is unknown is not repeated unless told.

A send that certainly did not leave (refused connection, 429, 5xx) is retried with
backoff from when the failure was seen; one that went out without an answer (read
timeout, reset, a 2xx that cannot be read) is ``unknown``: shown in ``status``, logged,
counted, and sent again only with ``[outbound] retry_unknown = true``. Before, both
were retried, the next attempt computed from when the attempt began: an API that
answered after the client's timeout got the same SMS three times, the first repeat
at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from relay.admin import status_report
from relay.api import AatroxClient
from relay.budget import Budget
from relay.clock import Clock
from relay.config import ApiConfig, OutboundConfig, TokenSource
from relay.daemon import Relay
from relay.errors import (
    ApiBadRequest,
    ApiConnectionError,
    ApiError,
    ApiOutcomeUnknown,
    ApiRateLimited,
    ApiServerError,
)
from relay.events import Events
from relay.outbox import LOST_TRACK, Outbox
from relay.store import AsyncStore, Store
from relay.store.schema import PENDING, SENT, UNKNOWN, outbound
from relay.testing.clock import FakeClock
from relay.testing.faults import Fault
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, TOKEN, relay_config, time_limit

pytestmark = pytest.mark.anyio

SEND = "/api/v2/sms/send"
#: The client's timeout in these tests, and a fault that answers well after it.
TIMEOUT = 0.5
TOO_LATE = Fault(status=0, delay=3.0, path=SEND)
#: Fake seconds each exchange takes (a connect timeout, a slow 503): time is injected.
ELAPSED = 10.0
#: The outbox's first retry waits RETRY_INITIAL (5 s) times this jitter factor.
FACTOR = 1.1


class Fixed:
    """Jitter that always draws the same factor: 1.1 in [0.8, 1.2]."""

    def uniform(self, a: float, b: float) -> float:
        """``a + (b - a) * 3/4``."""
        return a + (b - a) * 0.75


class Elapsing(httpx.AsyncHTTPTransport):
    """The real HTTP transport, on which each exchange takes ``ELAPSED`` fake seconds."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Move the fake clock on, then make the real exchange."""
        self.clock.advance(ELAPSED)
        return await super().handle_async_request(request)


class Counted(Events):
    """Events that count outbound outcomes."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def outbound(self, outcome: str) -> None:
        """Count ``outcome``."""
        self.outcomes.append(outcome)


def api_config(url: str) -> ApiConfig:
    """The simulator's token, a short timeout."""
    return ApiConfig(TokenSource("inline", TOKEN), TOKEN, base_url=url, timeout=TIMEOUT)


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def store(store_url: str, clock: FakeClock) -> Iterator[AsyncStore]:
    """A migrated store on SQLite and on PostgreSQL, on the fake clock."""
    s = AsyncStore(Store.open(store_url, clock))
    yield s
    s.close()


def row(store: AsyncStore) -> sa.Row[tuple[object, ...]]:
    """The one outbound SMS."""
    with store.sync.engine.connect() as conn:
        return conn.execute(outbound.select()).one()


async def attempt(
    store: AsyncStore, url: str, clock: Clock, *, elapse: bool = False, retry_unknown: bool = False
) -> Counted:
    """One round of the outbox against ``url``; the outcomes it counted."""
    transport = Elapsing(clock) if elapse and isinstance(clock, FakeClock) else None
    events = Counted()
    async with AatroxClient(api_config(url), transport=transport, clock=clock) as api:
        outbox = Outbox(store, api, clock, Fixed(), events=events, retry_unknown=retry_unknown)
        await outbox.run_once(timeout=10)
    return events


# --- the API client: which failures may have sent the SMS ---------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (TOO_LATE, ApiOutcomeUnknown),
        (Fault(reset=True, path=SEND), ApiOutcomeUnknown),
        (Fault(status=200, body=b"<html>hi</html>", content_type="text/html"), ApiOutcomeUnknown),
        (Fault(status=200, body=b"[1, 2]"), ApiOutcomeUnknown),
        (Fault(status=503), ApiServerError),
        (Fault(status=429, headers=(("Retry-After", "7"),)), ApiRateLimited),
        (Fault(status=400), ApiBadRequest),
    ],
    ids=["answer-too-late", "reset", "2xx-not-json", "2xx-not-an-object", "503", "429", "400"],
)
async def test_a_send_failure_says_whether_it_may_have_left(
    sim: Simulator, fault: Fault, error: type[ApiError]
) -> None:
    """A send that went out without a usable answer is ApiOutcomeUnknown, never a
    retryable error; an error status is what it always was."""
    sim.add_fault(fault)
    async with AatroxClient(api_config(sim.url)) as api:
        with pytest.raises(ApiError) as caught:
            await api.send(NUMBERS[0], SENDER, "private words")
    assert type(caught.value) is error
    assert "private words" not in str(caught.value) and "\n" not in str(caught.value)
    if error is ApiOutcomeUnknown:
        assert not caught.value.retryable
        assert str(caught.value).startswith("POST /sms/send: ")


async def test_a_refused_send_did_not_leave() -> None:
    """A refused connection is ApiConnectionError: the SMS certainly did not leave."""
    async with AatroxClient(api_config(closed_port_url())) as api:
        with pytest.raises(ApiConnectionError):
            await api.send(NUMBERS[0], SENDER, "hi")


# --- the outbox: unknown is kept, not sent again --------------------------------------


@pytest.mark.parametrize("fault", [TOO_LATE, Fault(reset=True, path=SEND)], ids=["late", "reset"])
async def test_an_unknown_send_is_not_sent_again(
    sim: Simulator,
    store: AsyncStore,
    clock: FakeClock,
    fault: Fault,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A send answered too late, or reset after the request, reaches the API once and
    ends unknown (logged, counted); a day later it still has not been sent again."""
    sim.add_fault(fault)
    store.sync.queue_send(NUMBERS[0], [SENDER], "hello")
    caplog.set_level(logging.INFO, logger="relay")
    events = await attempt(store, sim.url, clock)
    clock.advance(86400)
    events.outcomes += (await attempt(store, sim.url, clock)).outcomes
    sms = row(store)
    assert (sms.state, sms.attempts, sms.claimed_by) == (UNKNOWN, 1, None)
    assert sim.requests["send"] == 1
    assert events.outcomes == [UNKNOWN]
    assert "relay.outbox.unknown" in [r.getMessage() for r in caplog.records]
    assert "hello" not in caplog.text


async def test_a_send_cut_off_at_shutdown_is_unknown_only_if_its_request_went_out(
    sim: Simulator, store: AsyncStore, clock: FakeClock
) -> None:
    """Stopping the outbox while one SMS hangs at the API and another waits for the API
    budget: the first may have been sent (unknown, never sent again), the second
    certainly was not (pending, due again, no unknown alert)."""
    sim.add_fault(Fault(status=0, delay=3.0, path=SEND))
    store.sync.queue_send(NUMBERS[0], [SENDER], "one")
    store.sync.queue_send(NUMBERS[0], [NUMBERS[1]], "two")
    budget = Budget(1.0, clock)  # one grant at once; the fake clock never grants another
    async with AatroxClient(api_config(sim.url), clock=clock, budget=budget) as api:
        outbox = Outbox(store, api, clock, Fixed(), events=Counted())
        running = asyncio.create_task(outbox.run())
        async with time_limit(5.0):
            while sim.requests["send"] < 1 or budget.waiting < 1:
                await asyncio.sleep(0.01)
        assert await outbox.drain(0.05) == 2
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    with store.sync.engine.connect() as conn:
        rows = conn.execute(outbound.select().order_by(outbound.c.state)).all()
    # Which of the two got the budget's one grant is up to the scheduling of the tasks.
    assert [(r.state, r.last_error, r.claimed_by) for r in rows] == [
        (PENDING, None, None),
        (UNKNOWN, LOST_TRACK, None),
    ]
    assert sim.requests["send"] == 1


async def test_retry_unknown_sends_again_after_a_backoff(
    sim: Simulator, store: AsyncStore, clock: FakeClock
) -> None:
    """With retry_unknown, an unknown send is tried again after a backoff counted from
    when the failure was seen, not at once."""
    sim.add_fault(TOO_LATE)
    store.sync.queue_send(NUMBERS[0], [SENDER], "hello")
    started = clock.now()
    events = await attempt(store, sim.url, clock, elapse=True, retry_unknown=True)
    sms = row(store)
    retry_at = started + timedelta(seconds=ELAPSED + 5.0 * FACTOR)
    assert (sms.state, sms.attempts, sms.next_attempt_at) == (PENDING, 1, retry_at)
    assert events.outcomes == [UNKNOWN]
    clock.advance((retry_at - clock.now()).total_seconds() - 0.1)
    await attempt(store, sim.url, clock, retry_unknown=True)
    assert sim.requests["send"] == 1  # not yet due
    clock.advance(0.1)
    await attempt(store, sim.url, clock, retry_unknown=True)
    assert sim.requests["send"] == 2 and row(store).state == SENT


@pytest.mark.parametrize("fault", [None, Fault(status=503, path=SEND)], ids=["refused", "503"])
async def test_a_send_that_did_not_leave_backs_off_from_when_it_failed(
    sim: Simulator, store: AsyncStore, clock: FakeClock, fault: Fault | None
) -> None:
    """A refused connection or a 503 is retried RETRY_INITIAL (jittered) after the failure
    was seen, not after the attempt began: never at once after a slow failure."""
    url = closed_port_url() if fault is None else sim.url
    if fault is not None:
        sim.add_fault(fault)
    store.sync.queue_send(NUMBERS[0], [SENDER], "hello")
    started = clock.now()
    events = await attempt(store, url, clock, elapse=True)
    sms = row(store)
    assert (sms.state, sms.attempts, sms.claimed_by) == (PENDING, 1, None)
    assert sms.last_attempt_at == started
    assert sms.next_attempt_at == started + timedelta(seconds=ELAPSED + 5.0 * FACTOR)
    assert events.outcomes == []


# --- end to end: a real relay, real time -----------------------------------------------


async def test_one_queued_send_reaches_a_late_api_once_and_shows_in_status(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A relay whose API answers /sms/send after the client's timeout sends the SMS once,
    records it unknown, and `status` shows it (text and --json)."""
    sim.add_fault(dataclasses.replace(TOO_LATE, count=5))
    config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    async with Relay(config) as relay:
        # Quick retries, so a wrong retry would show within the test.
        relay.outbox.backoff = dataclasses.replace(relay.outbox.backoff, initial=0.1, maximum=0.2)
        await relay.store.call(relay.store.sync.queue_send, NUMBERS[0], [SENDER], "hello")
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            async with time_limit(15):
                while (await relay.store.call(relay.store.sync.outbound_counts))[UNKNOWN] < 1:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # time for a wrong repeat to arrive
        finally:
            stop.set()
            await task
    assert sim.requests["send"] == 1
    text = status_report(config, as_json=False)
    assert "outbound sms: 0 pending, 0 sent, 0 failed, 1 unknown" in text
    assert json.loads(status_report(config, as_json=True))["outbound"] == {
        "pending": 0,
        "sent": 0,
        "failed": 0,
        "unknown": 1,
        "refused": 0,
    }


async def test_retry_unknown_reaches_the_outbox(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """[outbound] retry_unknown in the config is what the relay's outbox applies."""
    config = relay_config(sim.url, receiver.url, sqlite_url)
    for wanted in (False, True):
        config = dataclasses.replace(config, outbound=OutboundConfig(retry_unknown=wanted))
        async with Relay(config) as relay:
            assert relay.outbox.retry_unknown is wanted
