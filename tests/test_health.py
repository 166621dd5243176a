"""/healthz, /readyz, /metrics and mounted routes over real HTTP on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.health import HealthApp, NumberHealth, number_reason
from relay.http import Request, Response, json_response
from relay.httpd import HttpServer
from relay.metrics import POLL_OK, Metrics, number_label
from relay.testing.clock import FakeClock

pytestmark = pytest.mark.anyio

NUMBER = "+61400000001"
OTHER = "+61400000002"
INTERVAL = 10.0
REJECTED = "The Aatrox API rejected the token (401)"


@dataclass
class FakeRelay:
    """A RelayView whose answers the test sets directly."""

    running: bool = True
    numbers: list[NumberHealth] = field(default_factory=list)
    store_reason: str | None = None
    store_delay: float = 0.0
    store_calls: int = 0

    def scheduler_running(self) -> bool:
        """Whether the fake scheduler runs."""
        return self.running

    def number_health(self) -> Sequence[NumberHealth]:
        """The numbers as the test set them."""
        return list(self.numbers)

    async def store_ok(self) -> str | None:
        """The store reason as set, after ``store_delay`` seconds."""
        self.store_calls += 1
        if self.store_delay:
            await asyncio.sleep(self.store_delay)
        return self.store_reason


@dataclass
class Served:
    """The app, its view, its clock and a client pointed at it."""

    app: HealthApp
    relay: FakeRelay
    clock: FakeClock
    metrics: Metrics
    client: httpx.AsyncClient


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A HealthApp over a healthy fake relay, served on loopback."""
    clock = FakeClock()
    now = clock.monotonic()
    relay = FakeRelay(
        numbers=[
            NumberHealth(NUMBER, INTERVAL, now, None),
            NumberHealth(OTHER, INTERVAL, now, None),
        ]
    )
    metrics = Metrics(clock=clock.monotonic, process=False)
    app = HealthApp(relay, metrics=metrics, clock=clock.monotonic, store_timeout=0.2)
    async with HttpServer(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield Served(app, relay, clock, metrics, client)


async def test_healthz_is_ok_while_the_scheduler_runs(served: Served) -> None:
    """GET /healthz answers 200 {"status":"ok"} while the scheduler runs, never cached."""
    response = await served.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"


async def test_healthz_fails_when_the_scheduler_stopped(served: Served) -> None:
    """GET /healthz answers 503 once the scheduler is no longer running."""
    served.relay.running = False
    response = await served.client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["scheduler is not running"]


async def test_readyz_is_ready_when_polls_are_recent_and_the_store_answers(served: Served) -> None:
    """GET /readyz answers 200 when every number polled well within three intervals."""
    served.clock.advance(3 * INTERVAL)
    response = await served.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}
    assert served.relay.store_calls == 1


async def test_readyz_names_a_rejected_token_with_a_masked_number(served: Served) -> None:
    """A number that never polled because the token is rejected is the specific reason."""
    served.relay.numbers[0] = NumberHealth(NUMBER, INTERVAL, None, REJECTED)
    response = await served.client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "reasons": [f"*********001: last poll failed: {REJECTED}"],
    }
    assert NUMBER not in response.text


async def test_readyz_tolerates_one_failure_within_three_intervals(served: Served) -> None:
    """A failed poll after a recent success does not make the relay unready at once."""
    now = served.clock.monotonic()
    served.relay.numbers[0] = NumberHealth(NUMBER, INTERVAL, now, "The Aatrox API failed (503)")
    served.clock.advance(2 * INTERVAL)
    assert (await served.client.get("/readyz")).status_code == 200
    served.clock.advance(INTERVAL + 1)
    response = await served.client.get("/readyz")
    assert response.status_code == 503
    reasons = response.json()["reasons"]
    assert reasons[0] == (
        "*********001: last poll failed: The Aatrox API failed (503); last success 31s ago"
    )
    assert reasons[1] == "*********002: no successful poll for 31s (interval 10s)"


async def test_readyz_waits_for_the_first_poll(served: Served) -> None:
    """A number not yet polled is not ready, and says so."""
    served.relay.numbers[1] = NumberHealth(OTHER, INTERVAL, None, None)
    response = await served.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["*********002: no successful poll yet"]


async def test_readyz_reports_the_store_and_the_scheduler(served: Served) -> None:
    """A store that does not answer and a stopped scheduler are both reasons."""
    served.relay.store_reason = "database is locked"
    served.relay.running = False
    response = await served.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["scheduler is not running", "store: database is locked"]


async def test_readyz_does_not_wait_for_a_hung_store(served: Served) -> None:
    """A store check that hangs is cut off after the timeout and reported."""
    served.relay.store_delay = 5.0
    with anyio.fail_after(2):
        response = await served.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["store: no answer within 0.2s"]


class BrokenStore(FakeRelay):
    """A view whose store check raises instead of answering a reason."""

    async def store_ok(self) -> str | None:
        """Fail the way a buggy view would."""
        msg = "connection to postgresql://relay:hunter2@db failed"
        raise RuntimeError(msg)


async def test_readyz_survives_a_store_check_that_raises() -> None:
    """An exception from store_ok is a reason naming its type, without its text."""
    app = HealthApp(BrokenStore(), clock=FakeClock().monotonic)
    async with HttpServer(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["store: check failed (RuntimeError)"]
    assert "hunter2" not in response.text


async def test_metrics_are_served_in_prometheus_text(served: Served) -> None:
    """GET /metrics renders the Metrics given to the app."""
    served.metrics.poll(NUMBER, POLL_OK)
    response = await served.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, s.labels.get("number")): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("aatrox_relay_polls_total", number_label(NUMBER))] == 1


async def test_a_scrape_says_whether_the_relay_is_ready(served: Served) -> None:
    """aatrox_relay_ready is 1 while /readyz would answer 200 and 0 once it would not,
    judged afresh at each scrape."""

    def ready(text: str) -> float:
        families = text_string_to_metric_families(text)
        return next(s.value for f in families for s in f.samples if s.name == "aatrox_relay_ready")

    assert ready((await served.client.get("/metrics")).text) == 1.0
    served.relay.store_reason = "down"
    assert ready((await served.client.get("/metrics")).text) == 0.0
    served.relay.store_reason = None
    assert ready((await served.client.get("/metrics")).text) == 1.0


async def test_metrics_is_absent_without_metrics() -> None:
    """Without a Metrics, /metrics is a 404 like any unknown path."""
    app = HealthApp(FakeRelay(), clock=FakeClock().monotonic)
    async with HttpServer(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/metrics")).status_code == 404


async def test_unknown_paths_are_404_json(served: Served) -> None:
    """An unknown path is answered 404 with a JSON error."""
    response = await served.client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}


async def test_wrong_methods_are_405_with_allow(served: Served) -> None:
    """POST to a GET route is 405 naming the allowed methods; HEAD works like GET."""
    response = await served.client.post("/healthz")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json() == {"error": "method not allowed"}
    head = await served.client.head("/healthz")
    assert head.status_code == 200
    assert head.content == b""


async def test_extra_routes_can_be_mounted(served: Served) -> None:
    """route() mounts a handler, e.g. a later POST /v1/send, beside the probes."""
    seen: list[bytes] = []

    async def send(request: Request) -> Response:
        seen.append(request.body)
        return json_response({"id": "1"}, 202)

    served.app.route("POST", "/v1/send", send)
    response = await served.client.post("/v1/send", content=b'{"to":"x"}')
    assert response.status_code == 202
    assert seen == [b'{"to":"x"}']
    wrong = await served.client.get("/v1/send")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"


def test_routes_cannot_be_mounted_twice() -> None:
    """Mounting an existing route, or a path without a leading slash, is refused."""
    app = HealthApp(FakeRelay())

    async def handler(request: Request) -> Response:
        return json_response({})

    with pytest.raises(ValueError, match="GET /healthz is already served"):
        app.route("get", "/healthz", handler)
    with pytest.raises(ValueError, match="must start with /"):
        app.route("POST", "v1/send", handler)


def test_number_reason_boundary() -> None:
    """Exactly three intervals old is still ready; a moment later is not."""
    health = NumberHealth(NUMBER, INTERVAL, 100.0, None)
    assert number_reason(health, 100.0 + 3 * INTERVAL) is None
    assert number_reason(health, 100.0 + 3 * INTERVAL + 0.5) is not None
