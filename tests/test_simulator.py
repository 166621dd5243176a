"""The Aatrox API simulator, spoken to over real loopback HTTP with plain httpx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from relay.testing.clock import FakeClock
from relay.testing.faults import Fault
from relay.testing.simulator import DISCLAIMER, SentRecord, Simulator, serve
from relay.testing.wire import Envelope, WireFormat

pytestmark = pytest.mark.anyio

TOKEN = "sim-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OURS = "+61400000002"
ALICE = "+61412345678"
BOB = "+61487654321"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A started simulator with a fake clock."""
    async with Simulator(token=TOKEN, clock=FakeClock(START)) as simulator:
        yield simulator


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for the simulator, authenticated."""
    async with httpx.AsyncClient(base_url=sim.url, headers=AUTH) as client:
        yield client


async def receive(http: httpx.AsyncClient, to: str, **params: str) -> list[dict[str, object]]:
    """The simulator's listing for ``to`` (array envelope)."""
    response = await http.get("/api/v2/sms/receive", params={"to": to, **params})
    assert response.status_code == 200, response.text
    items = response.json()
    assert isinstance(items, list)
    return items


async def test_inject_numbers_ids_and_normalises(sim: Simulator) -> None:
    """Injected messages get ids 1, 2, 3 and E.164 numbers; times come from the clock."""
    first = sim.inject("0412345678", "61400000002", "one")
    second = sim.inject(ALICE, OURS, "two")
    third = sim.inject("+61 487 654 321", OURS, "three", START + timedelta(seconds=5))
    assert [first.id, second.id, third.id] == [1, 2, 3]
    assert (first.sender, first.recipient) == (ALICE, OURS)
    assert third.sender == BOB
    assert first.received_at == START
    assert third.received_at == START + timedelta(seconds=5)
    assert [m.id for m in sim.messages(OURS)] == [1, 2, 3]


async def test_receive_lists_messages_for_the_number(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    """A listing holds the messages received on ``to`` only, oldest first."""
    sim.inject(ALICE, OURS, "hello", START + timedelta(seconds=2))
    sim.inject(BOB, "+61400000099", "elsewhere")
    sim.inject(BOB, OURS, "earlier", START + timedelta(seconds=1))
    items = await receive(http, OURS)
    assert items == [
        {
            "id": "3",
            "from": BOB,
            "to": OURS,
            "text": "earlier",
            "timestamp": "2026-01-01T00:00:01Z",
        },
        {
            "id": "1",
            "from": ALICE,
            "to": OURS,
            "text": "hello",
            "timestamp": "2026-01-01T00:00:02Z",
        },
    ]
    assert await receive(http, "0400000002") == items  # national spelling of the same number
    assert await receive(http, "+61400000003") == []


async def test_receive_filters_by_sender(sim: Simulator, http: httpx.AsyncClient) -> None:
    """``from`` keeps only that sender's messages."""
    sim.inject(ALICE, OURS, "a1")
    sim.inject(BOB, OURS, "b1")
    sim.inject(ALICE, OURS, "a2")
    items = await receive(http, OURS, **{"from": "0412345678"})
    assert [item["text"] for item in items] == ["a1", "a2"]


async def test_listing_limit_keeps_the_latest(sim: Simulator, http: httpx.AsyncClient) -> None:
    """Only the last ``listing_limit`` messages are listed, oldest first."""
    sim.listing_limit = 3
    for n in range(10):
        sim.inject(ALICE, OURS, f"m{n}")
    assert [item["text"] for item in await receive(http, OURS)] == ["m7", "m8", "m9"]
    sim.listing_limit = 0
    assert await receive(http, OURS) == []


async def test_listing_cache_follows_changes(sim: Simulator, http: httpx.AsyncClient) -> None:
    """A cached listing is rebuilt after an injection or a wire change."""
    sim.inject(ALICE, OURS, "one")
    assert len(await receive(http, OURS)) == 1
    assert len(await receive(http, OURS)) == 1
    sim.inject(ALICE, OURS, "two")
    assert len(await receive(http, OURS)) == 2
    sim.wire = WireFormat(envelope="results", id_type="int")
    response = await http.get("/api/v2/sms/receive", params={"to": OURS})
    assert [item["id"] for item in response.json()["results"]] == [1, 2]


async def test_receive_parameter_errors(http: httpx.AsyncClient) -> None:
    """A missing or unreadable ``to``/``from`` is a 400 with a JSON error."""
    for params in ({}, {"to": ""}, {"to": "nonsense"}, {"to": OURS, "from": "12"}):
        response = await http.get("/api/v2/sms/receive", params=params)
        assert response.status_code == 400
        assert "error" in response.json()


async def test_auth_is_required(sim: Simulator, http: httpx.AsyncClient) -> None:
    """Missing or wrong tokens get 401; a rotated token takes effect at once."""
    async with httpx.AsyncClient(base_url=sim.url) as anonymous:
        response = await anonymous.get("/api/v2/sms/receive", params={"to": OURS})
        assert response.status_code == 401
        assert response.json() == {"error": "unauthorized"}
        wrong = {"Authorization": "Bearer nope"}
        response = await anonymous.get("/api/v2/sms/1", headers=wrong)
        assert response.status_code == 401
    sim.token = "rotated"
    assert (await http.get("/api/v2/sms/receive", params={"to": OURS})).status_code == 401
    rotated = {"Authorization": "Bearer rotated"}
    response = await http.get("/api/v2/sms/receive", params={"to": OURS}, headers=rotated)
    assert response.status_code == 200


async def test_details(sim: Simulator, http: httpx.AsyncClient) -> None:
    """GET /sms/{id} answers the message with its text, or 404."""
    sim.wire = WireFormat(text_key=None)
    sim.inject(ALICE, OURS, "full text")
    assert "text" not in (await receive(http, OURS))[0]
    response = await http.get("/api/v2/sms/1")
    assert response.json()["text"] == "full text"
    for missing in ("2", "abc", "0"):
        response = await http.get(f"/api/v2/sms/{missing}")
        assert response.status_code == 404


@pytest.mark.parametrize(
    ("envelope", "wrapper"),
    [("array", None), ("messages", "message"), ("data", "data"), ("results", "sms")],
)
async def test_detail_wrapping(
    sim: Simulator, http: httpx.AsyncClient, envelope: Envelope, wrapper: str | None
) -> None:
    """Details are bare or wrapped under message/data/sms, following the envelope."""
    sim.wire = WireFormat(envelope=envelope)
    sim.inject(ALICE, OURS, "x")
    body = (await http.get("/api/v2/sms/1")).json()
    message = body if wrapper is None else body[wrapper]
    assert message["id"] == "1"


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            WireFormat(),
            {
                "id": "1",
                "from": ALICE,
                "to": OURS,
                "text": "t",
                "timestamp": "2026-01-01T00:00:00.250Z",
            },
        ),
        (
            WireFormat(
                id_key="sms_id",
                id_type="int",
                from_key="source",
                to_key="destination",
                text_key="content",
                time_key="created_at",
                time_format="unix",
            ),
            {
                "sms_id": 1,
                "source": ALICE,
                "destination": OURS,
                "content": "t",
                "created_at": 1767225600.25,
            },
        ),
        (
            WireFormat(number_format="international", time_format="unix_ms"),
            {"id": "1", "from": ALICE[1:], "to": OURS[1:], "text": "t", "timestamp": 1767225600250},
        ),
        (
            WireFormat(number_format="national", time_format="iso_offset", tz_offset_minutes=600),
            {
                "id": "1",
                "from": "0412345678",
                "to": "0400000002",
                "text": "t",
                "timestamp": "2026-01-01T10:00:00.250+10:00",
            },
        ),
        (
            WireFormat(time_format="iso_naive", tz_offset_minutes=-300, text_key=None),
            {"id": "1", "from": ALICE, "to": OURS, "timestamp": "2025-12-31 19:00:00.250"},
        ),
        (
            WireFormat(listing="id_only"),
            {"id": "1", "timestamp": "2026-01-01T00:00:00.250Z"},
        ),
        (
            WireFormat(listing="no_sender"),
            {"id": "1", "to": OURS, "text": "t", "timestamp": "2026-01-01T00:00:00.250Z"},
        ),
        (
            WireFormat(listing="no_text"),
            {"id": "1", "from": ALICE, "to": OURS, "timestamp": "2026-01-01T00:00:00.250Z"},
        ),
    ],
    ids=[
        "default",
        "renamed-unix",
        "international-ms",
        "national-offset",
        "naive-no-text",
        "id-only",
        "no-sender",
        "no-text",
    ],
)
async def test_wire_formats(
    sim: Simulator, http: httpx.AsyncClient, wire: WireFormat, expected: dict[str, object]
) -> None:
    """Each WireFormat setting shapes listing items as documented."""
    sim.wire = wire
    sim.inject(ALICE, OURS, "t", START + timedelta(milliseconds=250))
    assert await receive(http, OURS) == [expected]


async def test_alphanumeric_sender_is_kept_as_given(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    """A sender id such as Telstra, or a short code, is listed exactly as injected."""
    sim.wire = WireFormat(number_format="international")
    sim.inject("Telstra", OURS, "your bill")
    async with httpx.AsyncClient(base_url=sim.url) as control:
        response = await control.post(
            "/_sim/messages", json={"from": "1234", "to": OURS, "text": "code 1"}
        )
    assert response.status_code == 201
    assert [m["from"] for m in await receive(http, OURS)] == ["Telstra", "1234"]


def test_wire_format_validation() -> None:
    """Unknown choices and clashing keys are refused."""
    with pytest.raises(ValueError, match="envelope"):
        WireFormat(envelope="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="listing"):
        WireFormat(listing="ids")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distinct"):
        WireFormat(from_key="to")
    with pytest.raises(ValueError, match="count"):
        Fault(count=0)


async def test_send_endpoints_are_recorded(sim: Simulator, http: httpx.AsyncClient) -> None:
    """send, send/disclaimer and send/bulk answer ids and land in ``sent``."""
    one = await http.post("/api/v2/sms/send", json={"from": OURS, "to": "0412345678", "text": "a"})
    assert one.json() == {"id": "out-1", "status": "queued"}
    disclaimer = await http.post(
        "/api/v2/sms/send/disclaimer", json={"from": OURS, "to": ALICE, "text": "b"}
    )
    assert disclaimer.json()["id"] == "out-2"
    bulk = await http.post(
        "/api/v2/sms/send/bulk", json={"from": OURS, "to": [ALICE, BOB], "text": "c"}
    )
    assert bulk.json() == {"ids": ["out-3", "out-4"], "status": "queued"}
    assert sim.sent == [
        SentRecord("send", OURS, (ALICE,), "a", ("out-1",)),
        SentRecord("send_disclaimer", OURS, (ALICE,), "b" + DISCLAIMER, ("out-2",)),
        SentRecord("send_bulk", OURS, (ALICE, BOB), "c", ("out-3", "out-4")),
    ]
    assert sim.requests["send"] == 1
    assert sim.requests["send_bulk"] == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("send", b"not json"),
        ("send", b"[1]"),
        ("send", b'{"to": "+61412345678", "text": "x"}'),
        ("send", b'{"from": "+61400000002", "to": "abc", "text": "x"}'),
        ("send", b'{"from": "+61400000002", "to": "+61412345678", "text": ""}'),
        ("send", b'{"from": "+61400000002", "to": "+61412345678", "text": 5}'),
        ("send/disclaimer", b'{"from": "+61400000002", "to": ["+61412345678"], "text": "x"}'),
        ("send/bulk", b'{"from": "+61400000002", "to": [], "text": "x"}'),
        ("send/bulk", b'{"from": "+61400000002", "to": ["+61412345678", 5], "text": "x"}'),
        ("send/bulk", b'{"from": "+61400000002", "to": "+61412345678", "text": "x"}'),
    ],
)
async def test_send_validation(
    sim: Simulator, http: httpx.AsyncClient, path: str, body: bytes
) -> None:
    """Invalid send bodies get a 400 with a JSON error and are not recorded."""
    response = await http.post(f"/api/v2/sms/{path}", content=body)
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)
    assert sim.sent == []


async def test_unknown_paths_are_404(sim: Simulator, http: httpx.AsyncClient) -> None:
    """Unknown API and non-API paths answer 404 and count as "unknown"."""
    assert (await http.get("/api/v2/sms/1/extra")).status_code == 404
    assert (await http.delete("/api/v2/sms/send")).status_code == 404
    assert (await http.get("/elsewhere")).status_code == 404
    assert sim.requests["unknown"] == 2


async def test_fault_status_body_headers_and_count(sim: Simulator, http: httpx.AsyncClient) -> None:
    """A fault answers its status, body and headers for ``count`` requests, then stops."""
    sim.add_fault(
        Fault(
            status=503,
            body=b"<html>down</html>",
            content_type="text/html",
            headers=(("Retry-After", "3"),),
            count=2,
        )
    )
    for _ in range(2):
        response = await http.get("/api/v2/sms/receive", params={"to": OURS})
        assert response.status_code == 503
        assert response.text == "<html>down</html>"
        assert response.headers["content-type"] == "text/html"
        assert response.headers["retry-after"] == "3"
    assert (await http.get("/api/v2/sms/receive", params={"to": OURS})).status_code == 200
    assert sim.pending_faults == 0
    assert sim.requests["receive"] == 3


async def test_fault_applies_before_auth(sim: Simulator) -> None:
    """A fault (like a proxy's error page) is answered even without a token."""
    sim.add_fault(Fault(status=502))
    async with httpx.AsyncClient(base_url=sim.url) as anonymous:
        assert (await anonymous.get("/api/v2/sms/1")).status_code == 502
        assert (await anonymous.get("/api/v2/sms/1")).status_code == 401


async def test_fault_path_prefix(sim: Simulator, http: httpx.AsyncClient) -> None:
    """A fault only hits requests whose path starts with its ``path``."""
    sim.add_fault(Fault(status=500, path="/api/v2/sms/send"))
    assert (await http.get("/api/v2/sms/receive", params={"to": OURS})).status_code == 200
    response = await http.post("/api/v2/sms/send", json={"from": OURS, "to": ALICE, "text": "x"})
    assert response.status_code == 500
    assert sim.sent == []


async def test_fault_delay_with_status_zero_answers_normally(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    """Status 0 delays the request, then answers it normally."""
    sim.add_fault(Fault(status=0, delay=0.05))
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await http.get("/api/v2/sms/receive", params={"to": OURS})
    assert response.status_code == 200
    assert loop.time() - started >= 0.05


async def test_fault_reset_drops_the_connection(sim: Simulator, http: httpx.AsyncClient) -> None:
    """A reset fault closes the connection without an answer."""
    sim.add_fault(Fault(reset=True))
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get("/api/v2/sms/receive", params={"to": OURS})
    assert (await http.get("/api/v2/sms/receive", params={"to": OURS})).status_code == 200


async def test_fault_size_streams_a_large_body(sim: Simulator, http: httpx.AsyncClient) -> None:
    """A sized fault streams exactly ``size`` bytes of valid JSON, chunked."""
    sim.add_fault(Fault(status=200, size=1_000_000))
    async with http.stream("GET", "/api/v2/sms/receive", params={"to": OURS}) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        body = await response.aread()
    assert len(body) == 1_000_000
    assert json.loads(body) == []


async def test_control_endpoints(sim: Simulator) -> None:
    """The /_sim/ endpoints inject, list sends, add faults, set wire and token, count."""
    async with httpx.AsyncClient(base_url=sim.url) as control:
        response = await control.post(
            "/_sim/messages",
            json={
                "from": "0412345678",
                "to": OURS,
                "text": "hi",
                "received_at": "2026-02-01T00:00:00Z",
            },
        )
        assert response.status_code == 201
        assert response.json() == {"id": "1"}
        assert sim.messages(OURS)[0].received_at == datetime(2026, 2, 1, tzinfo=timezone.utc)

        response = await control.post(
            "/_sim/faults",
            json={"status": 429, "body": "slow down", "headers": {"Retry-After": "9"}, "count": 2},
        )
        assert response.status_code == 201
        assert response.json() == {"pending": 2}
        assert sim.pending_faults == 2
        sim.clear_faults()

        response = await control.put("/_sim/wire", json={"envelope": "items", "text_key": None})
        assert response.json()["envelope"] == "items"
        assert sim.wire == WireFormat(envelope="items", text_key=None)

        assert (await control.put("/_sim/token", json={"token": "new"})).status_code == 204
        assert sim.token == "new"
        new = {"Authorization": "Bearer new"}
        response = await control.get("/api/v2/sms/receive", params={"to": OURS}, headers=new)
        assert response.json() == {
            "items": [{"id": "1", "from": ALICE, "to": OURS, "timestamp": "2026-02-01T00:00:00Z"}]
        }
        await control.post(
            "/api/v2/sms/send", json={"from": OURS, "to": ALICE, "text": "yo"}, headers=new
        )

        sent = (await control.get("/_sim/sent")).json()
        assert sent == [
            {"endpoint": "send", "from": OURS, "to": [ALICE], "text": "yo", "ids": ["out-1"]}
        ]
        stats = (await control.get("/_sim/stats")).json()
        assert stats == {
            "requests": {"receive": 1, "send": 1},
            "polls": {OURS: 1},
            "messages": 1,
            "sent": 1,
            "faults": 0,
            "limited": 0,
        }


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/_sim/messages", {"from": " ", "to": OURS, "text": "hi"}),
        ("POST", "/_sim/messages", {"from": ALICE, "to": "x", "text": "hi"}),
        ("POST", "/_sim/messages", {"from": ALICE, "to": OURS}),
        ("POST", "/_sim/messages", {"from": ALICE, "to": OURS, "text": "t", "received_at": "soon"}),
        ("POST", "/_sim/faults", {"stauts": 500}),
        ("POST", "/_sim/faults", {"status": "500"}),
        ("POST", "/_sim/faults", {"count": 0}),
        ("POST", "/_sim/faults", {"headers": [["only-name"]]}),
        ("PUT", "/_sim/wire", {"envelope": "xml"}),
        ("PUT", "/_sim/wire", {"colour": "blue"}),
        ("PUT", "/_sim/token", {"token": " "}),
        ("PUT", "/_sim/token", {}),
    ],
)
async def test_control_validation(
    sim: Simulator, method: str, path: str, body: dict[str, object]
) -> None:
    """Bad control requests get a 400 naming the problem, and change nothing."""
    async with httpx.AsyncClient(base_url=sim.url) as control:
        response = await control.request(method, path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]
    assert sim.messages() == []
    assert sim.pending_faults == 0
    assert sim.wire == WireFormat()
    assert sim.token == TOKEN


async def test_unknown_control_endpoint_is_404(sim: Simulator) -> None:
    """An unknown /_sim/ path is a 404."""
    async with httpx.AsyncClient(base_url=sim.url) as control:
        assert (await control.get("/_sim/nothing")).status_code == 404


async def test_serve_prints_its_url_and_runs_until_cancelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """serve() prints one line with the URL and how to inject, then serves until cancelled."""
    task = asyncio.create_task(serve(0, "cli-token"))
    output = ""
    for _ in range(200):
        output += capsys.readouterr().out
        if output:
            break
        await asyncio.sleep(0.01)
    assert output.count("\n") == 1
    assert "/_sim/messages" in output
    assert "cli-token" not in output
    url = output.split(" on ")[1].split(" ")[0]
    async with httpx.AsyncClient(base_url=url) as client:
        headers = {"Authorization": "Bearer cli-token"}
        response = await client.get("/api/v2/sms/receive", params={"to": OURS}, headers=headers)
        assert response.status_code == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
