"""AatroxClient against a running Simulator over real loopback HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from relay.api import AatroxClient
from relay.config import ApiConfig, TokenSource
from relay.errors import (
    ApiBadRequest,
    ApiConnectionError,
    ApiError,
    ApiInvalidResponse,
    ApiNotFound,
    ApiRateLimited,
    ApiResponseTooLarge,
    ApiServerError,
    ApiTimeout,
    ApiUnauthorized,
)
from relay.inbound import ID_KEYS, RECIPIENT_KEYS, SENDER_KEYS, TEXT_KEYS, TIME_KEYS
from relay.testing.clock import FakeClock
from relay.testing.faults import Fault
from relay.testing.simulator import DISCLAIMER, SentRecord, Simulator
from relay.testing.wire import ENVELOPES, ID_TYPES, NUMBER_FORMATS, TIME_FORMATS, WireFormat

pytestmark = pytest.mark.anyio

TOKEN = "tok-SECRET-9f8e7d"
OURS = "+61400000002"
ALICE = "+61412345678"
BOB = "+61487654321"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
AEST = timezone(timedelta(hours=10))


def api_config(base_url: str, **overrides: Any) -> ApiConfig:
    """An ApiConfig for ``base_url`` with the test token, reading naive times in +10:00."""
    settings: dict[str, Any] = {
        "token_source": TokenSource("inline", TOKEN),
        "token": TOKEN,
        "base_url": base_url,
        "timezone": AEST,
        "allow_insecure_http": True,
        **overrides,
    }
    return ApiConfig(**settings)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A started simulator accepting TOKEN."""
    async with Simulator(token=TOKEN, clock=FakeClock(START)) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[AatroxClient]:
    """A client for the simulator, with a fake clock for Retry-After dates."""
    async with AatroxClient(api_config(sim.url), clock=FakeClock(START)) as aatrox:
        yield aatrox


def assert_safe(exc: BaseException, *hidden: str) -> None:
    """The error message is one line and carries no token and none of ``hidden``."""
    text = str(exc)
    assert text
    assert "\n" not in text
    assert TOKEN not in text
    for value in hidden:
        assert value not in text, (value, text)


async def raises(kind: type[ApiError], call: Awaitable[object], *hidden: str) -> ApiError:
    """Await ``call``, expect ``kind``, check its message is safe, return it."""
    with pytest.raises(kind) as caught:
        await call
    assert_safe(caught.value, *hidden)
    return caught.value


def variants() -> list[WireFormat]:
    """Every WireFormat setting, one change at a time."""
    out = [WireFormat(envelope=e) for e in ENVELOPES]
    out += [WireFormat(id_key=k, id_type=t) for k in ID_KEYS for t in ID_TYPES]
    out += [WireFormat(from_key=k) for k in SENDER_KEYS]
    out += [WireFormat(to_key=k) for k in RECIPIENT_KEYS]
    out += [WireFormat(text_key=k) for k in (*TEXT_KEYS, None)]
    out += [WireFormat(time_key=k) for k in TIME_KEYS]
    out += [WireFormat(time_format=f) for f in TIME_FORMATS]
    out += [WireFormat(number_format=f) for f in NUMBER_FORMATS]
    out += [
        WireFormat(time_format="iso_naive", tz_offset_minutes=600),
        WireFormat(time_format="iso_naive", tz_offset_minutes=-300),
        WireFormat(time_format="iso_offset", tz_offset_minutes=600),
        WireFormat(time_format="iso_offset", tz_offset_minutes=-210),
    ]
    out.append(
        WireFormat(
            envelope="data",
            id_key="messageId",
            id_type="int",
            from_key="sender",
            to_key="recipient",
            text_key=None,
            time_key="receivedAt",
            time_format="iso_naive",
            number_format="national",
            tz_offset_minutes=600,
        )
    )
    return out


def describe(wire: WireFormat) -> str:
    """A short test id: the fields that differ from the default."""
    default = WireFormat()
    changed = [f"{k}={v}" for k, v in vars(wire).items() if getattr(default, k) != v]
    return ",".join(changed) or "default"


@pytest.mark.parametrize("wire", variants(), ids=describe)
async def test_every_wire_format_round_trips(sim: Simulator, wire: WireFormat) -> None:
    """Ids, E.164 numbers, text and received_at come back as the simulator holds them."""
    sim.wire = wire
    # The relay's configured timezone is the one the API writes naive times in.
    zone = timezone(timedelta(minutes=wire.tz_offset_minutes))
    sim.inject(ALICE, OURS, "first ✓", START + timedelta(milliseconds=250))
    sim.inject(BOB, OURS, "second", START + timedelta(hours=1))
    sim.inject(ALICE, "+61400000003", "not ours")
    async with AatroxClient(api_config(sim.url, timezone=zone)) as client:
        listing = await client.receive(OURS)
        assert listing.skipped == ()
        held = sim.messages(OURS)
        assert [m.id for m in listing.messages] == [str(h.id) for h in held]
        for got, want in zip(listing.messages, held, strict=True):
            assert (got.sender, got.recipient) == (want.sender, want.recipient)
            assert got.received_at == want.received_at
            if wire.text_key is None:
                assert got.text is None
                got = await client.details(got.id, number=OURS)
            assert got.text == want.text
            assert got.received_at == want.received_at


async def test_receive_with_sender_filter(sim: Simulator, client: AatroxClient) -> None:
    """receive(number, sender) lists only that sender's messages."""
    sim.inject(ALICE, OURS, "a")
    sim.inject(BOB, OURS, "b")
    listing = await client.receive(OURS, sender=BOB)
    assert [m.text for m in listing.messages] == ["b"]


async def test_details_for_text_less_listing(sim: Simulator, client: AatroxClient) -> None:
    """A listing without text is completed with details()."""
    sim.wire = WireFormat(text_key=None, envelope="messages")
    sim.inject(ALICE, OURS, "fetched later")
    (item,) = (await client.receive(OURS)).messages
    assert item.text is None
    detail = await client.details(item.id)
    assert detail.text == "fetched later"
    assert detail.recipient == OURS
    assert sim.requests["details"] == 1


async def test_sends_reach_the_simulator(sim: Simulator, client: AatroxClient) -> None:
    """send, send_disclaimer and send_bulk arrive as sent records."""
    assert await client.send(OURS, ALICE, "one") == {"id": "out-1", "status": "queued"}
    assert (await client.send_disclaimer(OURS, BOB, "two"))["id"] == "out-2"
    bulk = await client.send_bulk(OURS, (ALICE, BOB), "three")
    assert bulk == {"ids": ["out-3", "out-4"], "status": "queued"}
    assert sim.sent == [
        SentRecord("send", OURS, (ALICE,), "one", ("out-1",)),
        SentRecord("send_disclaimer", OURS, (BOB,), "two" + DISCLAIMER, ("out-2",)),
        SentRecord("send_bulk", OURS, (ALICE, BOB), "three", ("out-3", "out-4")),
    ]


async def test_token_rotation(sim: Simulator, client: AatroxClient) -> None:
    """After the API's token changes, set_token makes requests work again."""
    sim.token = "tok-ROTATED-1234"
    error = await raises(ApiUnauthorized, client.receive(OURS), "tok-ROTATED-1234")
    assert str(error) == (
        "GET /sms/receive: 401 Unauthorized (unauthorized): the Aatrox API rejected the token"
    )
    client.set_token("tok-ROTATED-1234")
    assert (await client.receive(OURS)).messages == ()


async def test_400_bad_request(client: AatroxClient) -> None:
    """A 400 is ApiBadRequest with the provider's short message, no text, no number."""
    error = await raises(ApiBadRequest, client.send(OURS, "12", "private words"), "private")
    assert str(error) == "POST /sms/send: 400 Bad Request (to: not a phone number)"
    assert not error.retryable


async def test_401_unauthorized(sim: Simulator) -> None:
    """A wrong token is ApiUnauthorized and the message does not carry the token."""
    config = api_config(sim.url, token="tok-WRONG-5555")
    async with AatroxClient(config) as wrong:
        await raises(ApiUnauthorized, wrong.receive(OURS), "tok-WRONG-5555")


async def test_404_not_found(client: AatroxClient) -> None:
    """An unknown message id is ApiNotFound naming the id."""
    error = await raises(ApiNotFound, client.details("999"))
    assert str(error) == "GET /sms/999: 404 Not Found (message not found)"


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("Thu, 01 Jan 2026 00:00:30 GMT", 30.0), (None, None)],
    ids=["seconds", "http-date", "absent"],
)
async def test_429_with_retry_after(
    sim: Simulator, client: AatroxClient, header: str | None, expected: float | None
) -> None:
    """A 429 is ApiRateLimited with Retry-After read as seconds or an HTTP date."""
    headers = (("Retry-After", header),) if header else ()
    sim.add_fault(Fault(status=429, body=b'{"message": "slow down"}', headers=headers))
    error = await raises(ApiRateLimited, client.receive(OURS))
    assert isinstance(error, ApiRateLimited)
    assert error.retry_after == expected
    assert error.status == 429
    assert str(error) == "GET /sms/receive: 429 Too Many Requests (slow down)"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_server_errors(sim: Simulator, client: AatroxClient, status: int) -> None:
    """5xx answers, JSON or HTML, are ApiServerError with their status."""
    body = b"<html><body>" + b"x" * 5000 + b"</body></html>"
    sim.add_fault(Fault(status=status, body=body, content_type="text/html"))
    error = await raises(ApiServerError, client.receive(OURS))
    assert error.status == status
    assert error.retryable
    assert str(error).startswith(f"GET /sms/receive: {status} ")
    assert "html" not in str(error)


async def test_other_statuses(sim: Simulator, client: AatroxClient) -> None:
    """Redirects and other 4xx are plain ApiError with their status."""
    sim.add_fault(Fault(status=302, headers=(("Location", "https://elsewhere.example/"),)))
    error = await raises(ApiError, client.receive(OURS), "elsewhere")
    assert error.status == 302
    assert "not followed" in str(error)
    sim.add_fault(Fault(status=418, body=b'{"error": {"message": "teapot"}}'))
    error = await raises(ApiError, client.receive(OURS))
    assert (error.status, str(error)) == (418, "GET /sms/receive: 418 I'm a Teapot (teapot)")


async def test_provider_message_is_scrubbed(sim: Simulator, client: AatroxClient) -> None:
    """An error quoting the token, the text or a number is cleaned and cut to 200 chars."""
    echoed = f"bad token {TOKEN} sending 'very private' to 0412 345 678 {'z' * 400}"
    sim.add_fault(Fault(status=400, body=json.dumps({"error": echoed}).encode()))
    error = await raises(
        ApiBadRequest, client.send(OURS, ALICE, "very private"), "very private", "0412 345 678"
    )
    detail = str(error).split("(", 1)[1]
    assert "***" in detail
    assert "678" in detail
    assert len(detail) <= 201


async def test_timeout(sim: Simulator) -> None:
    """An answer slower than api.timeout is ApiTimeout."""
    sim.add_fault(Fault(status=0, delay=5.0))
    async with AatroxClient(api_config(sim.url, timeout=0.2)) as client:
        error = await raises(ApiTimeout, client.receive(OURS))
        assert "0.2s" in str(error)
        assert (await client.receive(OURS)).messages == ()  # the client recovers


async def test_html_page_with_200_is_invalid(sim: Simulator, client: AatroxClient) -> None:
    """A 200 HTML page (a captive portal, a proxy) is ApiInvalidResponse naming the type."""
    sim.add_fault(
        Fault(status=200, body=b"<html>Please log in</html>", content_type="text/html; charset=x")
    )
    error = await raises(ApiInvalidResponse, client.receive(OURS))
    assert (
        str(error)
        == "GET /sms/receive: 200 OK answer is not JSON (content-type text/html; charset=x)"
    )


@pytest.mark.parametrize(
    "body",
    [b"", b'{"error": "no listing here"}', b'"just a string"'],
    ids=["empty", "object-without-envelope", "string"],
)
async def test_200_json_of_the_wrong_shape_is_invalid(
    sim: Simulator, client: AatroxClient, body: bytes
) -> None:
    """A 200 answer that is no listing is ApiInvalidResponse."""
    sim.add_fault(Fault(status=200, body=body))
    error = await raises(ApiInvalidResponse, client.receive(OURS))
    assert str(error).startswith("GET /sms/receive: ")


class CountingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that counts the response bytes the client pulls in."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.received = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send through the real transport; wrap the body stream to count it."""
        response = await self.inner.handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        outer = self

        class Counted(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in stream:
                    outer.received += len(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await stream.aclose()

        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=Counted(),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close the real transport."""
        await self.inner.aclose()


async def test_streamed_body_too_large_stops_early(sim: Simulator) -> None:
    """A 5 MB chunked answer stops being read just past max_response_bytes."""
    limit = 1_048_576
    sim.add_fault(Fault(status=200, size=5_000_000))
    transport = CountingTransport()
    config = api_config(sim.url, max_response_bytes=limit)
    async with AatroxClient(config, transport=transport) as client:
        error = await raises(ApiResponseTooLarge, client.receive(OURS))
        assert "stopped reading" in str(error)
        assert limit < transport.received < limit + 256 * 1024
        assert (await client.receive(OURS)).messages == ()  # a fresh connection works


async def test_declared_length_too_large_is_refused_up_front(sim: Simulator) -> None:
    """An answer whose Content-Length exceeds the limit is refused before reading."""
    sim.add_fault(Fault(status=200, body=b"[" + b" " * 2_000_000 + b"]"))
    transport = CountingTransport()
    config = api_config(sim.url, max_response_bytes=1_048_576)
    async with AatroxClient(config, transport=transport) as client:
        error = await raises(ApiResponseTooLarge, client.receive(OURS))
    assert "2000002 bytes exceed" in str(error)
    assert transport.received < 256 * 1024


async def test_large_error_body_is_still_a_server_error(sim: Simulator) -> None:
    """A huge 500 page is an ApiServerError, read only in part."""
    sim.add_fault(Fault(status=500, size=5_000_000))
    transport = CountingTransport()
    async with AatroxClient(api_config(sim.url), transport=transport) as client:
        await raises(ApiServerError, client.receive(OURS))
    assert transport.received < 512 * 1024


async def test_connection_reset(sim: Simulator, client: AatroxClient) -> None:
    """A connection dropped without an answer is ApiConnectionError."""
    sim.add_fault(Fault(reset=True))
    await raises(ApiConnectionError, client.receive(OURS))
    assert (await client.receive(OURS)).messages == ()


async def test_connection_refused() -> None:
    """Nothing listening on the port is ApiConnectionError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with AatroxClient(api_config(f"http://127.0.0.1:{port}")) as client:
        error = await raises(ApiConnectionError, client.receive(OURS))
    assert str(error).startswith("GET /sms/receive: connection failed (ConnectError")


async def test_errors_never_show_text_or_full_numbers(sim: Simulator, client: AatroxClient) -> None:
    """Across failing calls, messages name no text and no full phone number."""
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: client.receive(OURS, sender=ALICE),
        lambda: client.send(OURS, ALICE, "hush hush"),
        lambda: client.send_bulk(OURS, [ALICE, BOB], "hush hush"),
        lambda: client.send_disclaimer(OURS, ALICE, "hush hush"),
    ]
    for fault in (Fault(500), Fault(401), Fault(reset=True), Fault(200, b"<html>")):
        for call in calls:
            sim.add_fault(fault)
            with pytest.raises(ApiError) as caught:
                await call()
            assert_safe(caught.value, "hush", OURS, ALICE, BOB, ALICE[1:], OURS[1:])


def test_bad_token_is_refused() -> None:
    """A token that is empty or spans lines is refused without echoing it."""
    from relay.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        AatroxClient(api_config("http://127.0.0.1:1", token="tok\nINJECTED"))
    assert "INJECTED" not in str(caught.value)
