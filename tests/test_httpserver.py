"""The tiny HTTP/1.1 server and the webhook receiver built on it, over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from relay import signing
from relay.httpserver import (
    Guard,
    HttpServer,
    Request,
    Response,
    bearer_matches,
    json_response,
)
from relay.testing.receiver import Delivery, Rule, WebhookReceiver

pytestmark = pytest.mark.anyio

CHUNK = 64 * 1024


async def echo(request: Request) -> Response:
    """Answer what was asked, as JSON; a few paths behave specially."""
    if request.path == "/boom":
        raise RuntimeError("handler failure")
    if request.path == "/close":
        return Response(status=200, body=b"bye", close_connection=True)
    if request.path == "/reset":
        return Response(abort=True)
    if request.path == "/empty":
        return Response(status=204)
    if request.path == "/bad-header":
        return Response(headers=[("X-Bad", "a\r\nInjected: yes")])
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": request.body.decode("latin-1"),
            "client": request.client,
        },
        headers=[("X-Echo", "1")],
    )


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    """A started server running the echo handler."""
    async with HttpServer(echo) as srv:
        yield srv


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length framed response from ``reader``."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def connect(srv: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP connection to ``srv``."""
    return await asyncio.open_connection("127.0.0.1", srv.port)


def get(path: str, extra: str = "") -> bytes:
    """A minimal GET request."""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def test_keep_alive_serves_several_requests_on_one_connection(server: HttpServer) -> None:
    """Requests on one connection are answered one after the other, connection kept."""
    reader, writer = await connect(server)
    for n in range(3):
        writer.write(get(f"/n/{n}"))
        status, headers, body = await read_response(reader)
        assert status == 200
        assert "connection" not in headers
        assert json.loads(body)["path"] == f"/n/{n}"
    writer.close()


async def test_pipelined_requests_are_answered_in_order(server: HttpServer) -> None:
    """Requests sent back to back in one write get their answers in order."""
    reader, writer = await connect(server)
    writer.write(b"".join(get(f"/p/{n}") for n in range(5)))
    paths = [json.loads((await read_response(reader))[2])["path"] for _ in range(5)]
    assert paths == [f"/p/{n}" for n in range(5)]
    writer.close()


async def test_httpx_keep_alive_reuses_one_connection(server: HttpServer) -> None:
    """An httpx client makes many requests over a single kept-alive connection."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        ports = set()
        for _ in range(20):
            response = await client.get("/x")
            assert response.status_code == 200
            ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert len(ports) == 1


async def test_request_fields_are_parsed(server: HttpServer) -> None:
    """Path is percent-decoded, query keeps first values, header names are lower case."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/a%20b?x=1&x=2&empty=&plus=%2B61", headers={"X-Thing": "v"})
    echoed = response.json()
    assert echoed["path"] == "/a b"
    assert echoed["query"] == {"x": "1", "empty": "", "plus": "+61"}
    assert echoed["headers"]["x-thing"] == "v"
    assert echoed["client"] == "127.0.0.1"
    assert response.headers["x-echo"] == "1"
    assert response.headers["content-type"] == "application/json"


async def test_content_length_body(server: HttpServer) -> None:
    """A Content-Length request body arriving in pieces is read whole."""
    reader, writer = await connect(server)
    writer.write(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
    await writer.drain()
    writer.write(b" world")
    _, _, body = await read_response(reader)
    assert json.loads(body)["body"] == "hello world"
    writer.close()


async def test_chunked_request_body(server: HttpServer) -> None:
    """A chunked request body, split at awkward places, with extensions and trailers."""
    reader, writer = await connect(server)
    pieces = [
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5;ext=1\r\nhel",
        b"lo\r\n6\r",
        b"\n world\r\n0\r\nX-Trailer: t\r\n",
        b"\r\n",
    ]
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
    _, _, body = await read_response(reader)
    assert json.loads(body)["body"] == "hello world"
    writer.write(get("/after"))  # the connection is still usable
    assert json.loads((await read_response(reader))[2])["path"] == "/after"
    writer.close()


async def test_httpx_streamed_upload_is_read(server: HttpServer) -> None:
    """httpx's chunked upload of an async generator arrives intact."""

    async def upload() -> AsyncIterator[bytes]:
        for n in range(10):
            yield str(n).encode() * 1000

    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/u", content=upload())
    assert response.json()["body"] == "".join(str(n) * 1000 for n in range(10))


async def test_expect_continue_is_answered(server: HttpServer) -> None:
    """A client sending Expect: 100-continue gets the interim answer, then the response."""
    reader, writer = await connect(server)
    writer.write(
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"abc")
    _, _, body = await read_response(reader)
    assert json.loads(body)["body"] == "abc"
    writer.close()


async def test_streaming_response_is_chunked() -> None:
    """An async-iterator body is sent chunked and arrives whole."""
    total = 200

    async def handler(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for n in range(total):
                yield bytes([n % 256]) * CHUNK

        return Response(body=body(), content_type="application/octet-stream")

    async with (
        HttpServer(handler) as srv,
        httpx.AsyncClient(base_url=srv.url) as client,
        client.stream("GET", "/big") as response,
    ):
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
    assert received == total * CHUNK


async def test_streaming_respects_backpressure() -> None:
    """A client that stops reading stalls the body's generator; leaving closes it."""
    produced = 0
    finished = asyncio.Event()
    total = 1024  # 64 MiB

    async def handler(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            nonlocal produced
            try:
                for _ in range(total):
                    produced += 1
                    yield b"x" * CHUNK
            finally:
                finished.set()

        return Response(body=body())

    async with HttpServer(handler) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(get("/"))
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.2)  # give the server time to fill the socket buffers
        assert produced < total // 2
        writer.transport.abort()
        await asyncio.wait_for(finished.wait(), 5)
    assert produced < total


@pytest.mark.parametrize(
    "raw",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET / HTTX/1.1\r\n\r\n",
        b"G@T / HTTP/1.1\r\n\r\n",
        b"GET nopath HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded: header\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
    ],
    ids=[
        "garbage",
        "four-part-request-line",
        "bad-version",
        "bad-method",
        "bad-target",
        "header-without-colon",
        "obsolete-folding",
        "space-in-header-name",
        "non-numeric-length",
        "conflicting-lengths",
        "length-and-chunked",
        "bad-chunk-size",
        "chunk-without-crlf",
    ],
)
async def test_malformed_request_gets_400_and_close(server: HttpServer, raw: bytes) -> None:
    """A malformed request is answered 400 and the connection closed."""
    reader, writer = await connect(server)
    writer.write(raw)
    status, headers, body = await read_response(reader)
    assert status == 400
    assert headers["connection"] == "close"
    assert "error" in json.loads(body)
    assert await reader.read() == b""  # closed by the server
    writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n", 413),
    ],
    ids=["http2", "unknown-coding", "head-too-large", "body-too-large", "chunked-too-large"],
)
async def test_unacceptable_request_gets_its_status(raw: bytes, status: int) -> None:
    """Oversized or unsupported requests get the specific 4xx/5xx and a close."""
    async with HttpServer(echo, max_body_bytes=1000) as srv:
        reader, writer = await connect(srv)
        writer.write(raw)
        got, headers, _ = await read_response(reader)
        assert got == status
        assert headers["connection"] == "close"
        writer.close()


async def test_server_survives_garbage_then_serves(server: HttpServer) -> None:
    """After a malformed request and a half-sent one, new connections are served."""
    reader, writer = await connect(server)
    writer.write(b"\x00\xff\x00garbage\r\n\r\n")
    assert (await read_response(reader))[0] == 400
    writer.close()
    _, writer = await connect(server)
    writer.write(b"GET / HTTP/1.1\r\nHost:")  # then leave
    writer.transport.abort()
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/ok")).status_code == 200


async def test_handler_error_is_500_and_server_keeps_going(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in the handler is logged and answered 500; the connection stays usable."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/boom")
        assert response.status_code == 500
        assert response.json() == {"error": "internal server error"}
        assert (await client.get("/fine")).status_code == 200
    assert any(r.message == "httpserver.handler_failed" for r in caplog.records)


async def test_invalid_response_header_is_500(server: HttpServer) -> None:
    """A handler answering a header with CR/LF gets a 500, not a header injection."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/bad-header")
    assert response.status_code == 500
    assert "injected" not in response.headers


async def test_close_connection_flag(server: HttpServer) -> None:
    """close_connection sends Connection: close and closes the socket after the body."""
    reader, writer = await connect(server)
    writer.write(get("/close"))
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], body) == (200, "close", b"bye")
    assert await reader.read() == b""
    writer.close()


async def test_client_connection_close_is_honoured(server: HttpServer) -> None:
    """A client's Connection: close (or an HTTP/1.0 request) ends the connection."""
    for raw in (get("/", "Connection: close\r\n"), b"GET / HTTP/1.0\r\n\r\n"):
        reader, writer = await connect(server)
        writer.write(raw)
        _, headers, _ = await read_response(reader)
        assert headers["connection"] == "close"
        assert await reader.read() == b""
        writer.close()


async def test_abort_resets_without_answer(server: HttpServer) -> None:
    """abort drops the connection without a byte of answer."""
    reader, writer = await connect(server)
    writer.write(get("/reset"))
    try:
        data = await reader.read()
    except ConnectionResetError:
        data = b""
    assert data == b""
    writer.close()


async def test_no_content_has_no_body(server: HttpServer) -> None:
    """A 204 carries neither body nor Content-Length and keeps the connection."""
    reader, writer = await connect(server)
    writer.write(get("/empty") + get("/next"))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"content-length" not in head.lower()
    assert json.loads((await read_response(reader))[2])["path"] == "/next"
    writer.close()


async def test_head_gets_headers_without_body(server: HttpServer) -> None:
    """HEAD is answered with the GET's headers (Content-Length too) but no body."""
    reader, writer = await connect(server)
    writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n" + get("/after-head"))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: " in head
    assert json.loads((await read_response(reader))[2])["path"] == "/after-head"
    writer.close()


async def test_idle_connection_is_closed() -> None:
    """A connection that sends nothing for idle_timeout is closed by the server."""
    async with HttpServer(echo, idle_timeout=0.1) as srv:
        reader, writer = await connect(srv)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_close_drops_open_connections() -> None:
    """close() ends idle and busy connections and cancels running handlers."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response()

    srv = HttpServer(slow)
    await srv.start()
    idle_reader, idle_writer = await connect(srv)
    busy_reader, busy_writer = await connect(srv)
    busy_writer.write(get("/slow"))
    await started.wait()
    await asyncio.wait_for(srv.close(), 5)
    assert cancelled.is_set()
    for reader in (idle_reader, busy_reader):
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
    idle_writer.close()
    busy_writer.close()
    with pytest.raises(OSError):
        await connect(srv)


# --- what a client can make the server hold ------------------------------------

GUARD_TOKEN = "guard-token-0123456789"
#: A guarded answer must come at once, not after a body that is never sent.
PROMPT = 2.0


@pytest.fixture
async def guarded() -> AsyncIterator[HttpServer]:
    """The echo server with /g guarded by a bearer token and a 1000-byte body limit."""
    guards = {"/g": Guard(max_body_bytes=1000, bearer_token=GUARD_TOKEN)}
    async with HttpServer(echo, guards=guards) as srv:
        yield srv


def post(path: str, extra: str = "", length: int | None = None) -> bytes:
    """The head of a POST announcing ``length`` bytes (chunked when None)."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{framing}\r\n{extra}\r\n".encode()


async def answer_of(srv: HttpServer, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a new connection and read the answer, which must come promptly
    and close the connection."""
    reader, writer = await connect(srv)
    writer.write(raw)
    answer = await asyncio.wait_for(read_response(reader), PROMPT)
    assert answer[1]["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), PROMPT) == b""
    writer.close()
    return answer


@pytest.mark.parametrize(
    "extra",
    ["", "Authorization: Bearer wrong\r\n", f"Authorization: Basic {GUARD_TOKEN}\r\n"],
    ids=["no-token", "wrong-token", "other-scheme"],
)
async def test_guard_refuses_a_wrong_token_from_the_head(guarded: HttpServer, extra: str) -> None:
    """Without the guard's token the head alone gets 401 (not 100 Continue), body unread."""
    status, headers, body = await answer_of(
        guarded, post("/g", extra + "Expect: 100-continue\r\n", 1000)
    )
    assert (status, headers["www-authenticate"]) == (401, "Bearer")
    assert json.loads(body) == {"error": "missing or wrong bearer token"}
    assert guarded.buffered_bytes == 0


async def test_guard_accepts_the_token_with_the_scheme_in_any_case(guarded: HttpServer) -> None:
    """``bearer``/``BEARER`` with the right token pass the guard; the body is read."""
    reader, writer = await connect(guarded)
    for scheme in ("bearer", "BEARER", "Bearer"):
        writer.write(post("/g", f"Authorization: {scheme} {GUARD_TOKEN}\r\n", 5) + b"hello")
        status, _, body = await read_response(reader)
        assert (status, json.loads(body)["body"]) == (200, "hello")
    writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        post("/g", f"Authorization: Bearer {GUARD_TOKEN}\r\n", 1001),
        post("/g", f"Authorization: Bearer {GUARD_TOKEN}\r\n") + b"3e9\r\n",
        post("/g", f"Authorization: Bearer {GUARD_TOKEN}\r\n") + b"1f4\r\n" + b"a" * 500
        + b"\r\n1f5\r\n",
    ],
    ids=["content-length", "chunk-size", "chunks-adding-up"],
)  # fmt: skip
async def test_guard_body_limit_is_judged_before_the_body(guarded: HttpServer, raw: bytes) -> None:
    """A body announced over the guard's limit gets 413 at once, though the server's
    own limit is far larger."""
    status, _, _ = await answer_of(guarded, raw)
    assert status == 413
    async with httpx.AsyncClient(base_url=guarded.url) as client:
        assert (await client.post("/other", content=b"x" * 1001)).status_code == 200


def test_bearer_matches() -> None:
    """The scheme in any case, the exact token, nothing else."""
    assert bearer_matches("Bearer abc", "abc")
    assert bearer_matches("bearer abc", "abc")
    assert bearer_matches("BeArEr   abc ", "abc")
    assert not bearer_matches("Bearer ABC", "abc")
    assert not bearer_matches("Bearer abcd", "abc")
    assert not bearer_matches("Basic abc", "abc")
    assert not bearer_matches("Bearerabc", "abc")
    assert not bearer_matches("abc", "abc")
    assert not bearer_matches(None, "abc")
    assert not bearer_matches("Bearer ", "")
    assert not bearer_matches("Bearer", "")


async def test_connections_beyond_the_limit_get_503() -> None:
    """A connection beyond max_connections is answered 503 and closed; one that leaves
    frees its place."""
    async with HttpServer(echo, max_connections=2) as srv:
        first = await connect(srv)
        second = await connect(srv)
        status, _, body = await answer_of(srv, get("/third"))
        assert (status, json.loads(body)) == (503, {"error": "too many connections"})
        first[1].close()
        await first[1].wait_closed()
        async with httpx.AsyncClient(base_url=srv.url) as client:
            statuses = []
            for _ in range(100):  # until the server has seen the first one leave
                statuses.append((await client.get("/after")).status_code)
                if statuses[-1] != 503:
                    break
                await asyncio.sleep(0.01)
        assert statuses[-1] == 200
        second[1].close()


BUDGET = 100_000


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 40_000,
        post("/b", length=60_000) + b"a" * 40_000,
        post("/c") + b"ea60\r\n" + b"a" * 40_000,
    ],
    ids=["partial-heads", "bodies", "chunked-bodies"],
)
async def test_input_held_over_all_connections_is_bounded(raw: bytes) -> None:
    """Input held across connections (heads, bodies, chunks as they arrive) beyond
    max_buffered_bytes gets 503 and a close, and is released."""
    async with HttpServer(echo, max_buffered_bytes=BUDGET) as srv:
        holders = []
        for _ in range(2):
            reader, writer = await connect(srv)
            writer.write(raw)
            await writer.drain()
            holders.append((reader, writer))
        for _ in range(100):
            if srv.buffered_bytes >= 80_000:
                break
            await asyncio.sleep(0.01)
        assert srv.buffered_bytes <= BUDGET
        status, _, body = await answer_of(srv, raw)
        assert (status, json.loads(body)) == (503, {"error": "server busy"})
        assert srv.buffered_bytes <= BUDGET
        for _, writer in holders:
            writer.transport.abort()
        for _ in range(100):
            if srv.buffered_bytes == 0:
                break
            await asyncio.sleep(0.01)
        assert srv.buffered_bytes == 0
        async with httpx.AsyncClient(base_url=srv.url) as client:
            assert (await client.post("/after", content=b"x" * 50_000)).status_code == 200
        assert srv.buffered_bytes == 0


async def test_input_pipelined_behind_a_busy_request_is_bounded() -> None:
    """Input pipelined behind a request being answered counts too: the connection that
    goes beyond the budget is dropped without a stray answer; the other is answered."""
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response(body=b"done")

    pipelined = get("/slow") + b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 60_000
    async with HttpServer(slow, max_buffered_bytes=BUDGET) as srv:
        first_reader, first = await connect(srv)
        first.write(pipelined)
        for _ in range(100):
            if srv.buffered_bytes >= 60_000:
                break
            await asyncio.sleep(0.01)
        second_reader, second = await connect(srv)
        second.write(pipelined)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(second_reader.read(), PROMPT) == b""
        release.set()
        status, _, body = await asyncio.wait_for(read_response(first_reader), PROMPT)
        assert (status, body) == (200, b"done")
        first.transport.abort()
        second.transport.abort()
        for _ in range(100):
            if srv.buffered_bytes == 0:
                break
            await asyncio.sleep(0.01)
        assert srv.buffered_bytes == 0


async def test_addresses_are_the_bound_ones() -> None:
    """addresses shows what the sockets are bound to; only loopback ones are loopback_only."""
    async with HttpServer(echo, "127.0.0.1") as local, HttpServer(echo, "0.0.0.0") as wide:
        assert local.addresses == [f"127.0.0.1:{local.port}"]
        assert local.loopback_only
        assert wide.addresses == [f"0.0.0.0:{wide.port}"]
        assert not wide.loopback_only
        assert wide.url == f"http://127.0.0.1:{wide.port}"


def test_is_loopback() -> None:
    """Only loopback peers (v4, v6 and v4-mapped) count as loopback."""

    def request(client: str) -> Request:
        return Request("GET", "/", {}, {}, b"", client)

    assert request("127.0.0.1").is_loopback()
    assert request("::1").is_loopback()
    assert request("::ffff:127.0.0.1").is_loopback()
    assert not request("10.0.0.1").is_loopback()
    assert not request("").is_loopback()


def test_json_response_is_utf8() -> None:
    """json_response writes UTF-8, not ASCII escapes, and keeps given headers."""
    response = json_response({"text": "héllo ✓"}, 201, [("X-A", "b")])
    assert response.status == 201
    assert response.body == '{"text":"héllo ✓"}'.encode()
    assert response.headers == [("X-A", "b")]


# --- the webhook receiver built on this server ---------------------------------

KEY = b"k" * 32


def signed(msg_id: str, body: bytes, key: bytes = KEY) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, signed now."""
    return {**signing.headers(key, msg_id, int(time.time()), body), "content-type": "x"}


async def test_receiver_records_and_verifies() -> None:
    """A signed JSON delivery is verified; a forged one is recorded unverified with a reason."""
    seen: list[Delivery] = []
    async with (
        WebhookReceiver(KEY, on_delivery=seen.append) as receiver,
        httpx.AsyncClient(base_url=receiver.url) as client,
    ):
        body = b'{"type": "sms.received", "data": {"id": "1"}}'
        assert (
            await client.post("/hook", content=body, headers=signed("msg_1", body))
        ).status_code == 204
        forged = signed("msg_2", body, key=b"x" * 32)
        await client.post("/hook", content=body, headers=forged)
        await client.post("/hook", content=b"not json", headers=signed("msg_3", b"not json"))
        await receiver.wait_for(1)
    good, bad, garbled = receiver.deliveries
    assert (good.webhook_id, good.verified, good.error, good.path) == ("msg_1", True, None, "/hook")
    assert good.payload == {"type": "sms.received", "data": {"id": "1"}}
    assert good.timestamp > 0 and good.status == 204
    assert (bad.verified, bad.error) == (False, "The webhook signature does not verify.")
    assert (garbled.verified, garbled.error) == (False, "body is not a JSON object")
    assert receiver.unique_ids() == {"msg_1"}
    assert seen == receiver.deliveries


async def test_receiver_wait_for_times_out_clearly() -> None:
    """wait_for raises TimeoutError saying how many verified deliveries came."""
    async with WebhookReceiver(KEY) as receiver, httpx.AsyncClient() as client:
        await client.post(receiver.url, content=b"{}", headers={"webhook-id": "x"})
        with pytest.raises(TimeoutError) as caught:
            await receiver.wait_for(2, timeout=0.05)
    assert str(caught.value) == (
        "webhook receiver: 0 of 2 distinct verified and accepted (2xx) deliveries after 0.05s "
        "(1 requests, 1 unverified)"
    )


async def test_receiver_rules_queue_and_expire() -> None:
    """Rules apply in order, each ``times`` times; then the default 204 returns."""
    async with WebhookReceiver(KEY) as receiver, httpx.AsyncClient() as client:
        receiver.respond(Rule(status=500, body=b"no", times=2))
        receiver.respond(Rule(status=200, headers=(("X-Rule", "2"),), times=1))
        body = b"{}"
        statuses = []
        for n in range(4):
            response = await client.post(receiver.url, content=body, headers=signed(f"m{n}", body))
            statuses.append(response.status_code)
        assert statuses == [500, 500, 200, 204]
        assert [d.status for d in receiver.deliveries] == statuses
        assert receiver.accepted_ids() == {"m2", "m3"}
        assert receiver.unique_ids() == {"m0", "m1", "m2", "m3"}
        await receiver.wait_for(2)
        await receiver.wait_for(4, any_answer=True)
        with pytest.raises(TimeoutError):
            await receiver.wait_for(3, timeout=0.01)
        receiver.respond(Rule(status=410))  # forever, until cleared
        for _ in range(3):
            assert (await client.post(receiver.url, content=body)).status_code == 410
        receiver.clear_rules()
        assert (await client.post(receiver.url, content=body)).status_code == 204


async def test_receiver_reset_rule_drops_the_connection() -> None:
    """A reset rule closes the connection without answering."""
    async with WebhookReceiver(KEY) as receiver, httpx.AsyncClient() as client:
        receiver.respond(Rule(reset=True, times=1))
        body = b"{}"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(receiver.url, content=body, headers=signed("r1", body))
        assert receiver.deliveries[0].status == 0
        assert receiver.unique_ids() == {"r1"}
        assert receiver.accepted_ids() == set()


async def test_receiver_counts_concurrent_requests() -> None:
    """in_flight and max_in_flight count requests answered at the same time."""
    async with WebhookReceiver(KEY) as receiver, httpx.AsyncClient() as client:
        receiver.respond(Rule(delay=0.1))
        body = b"{}"
        posts = [
            client.post(receiver.url, content=body, headers=signed(f"c{n}", body)) for n in range(5)
        ]
        waiting = asyncio.ensure_future(receiver.wait_for(5))
        responses = await asyncio.gather(*posts)
        await waiting
        assert {r.status_code for r in responses} == {204}
        assert receiver.max_in_flight == 5
        assert receiver.in_flight == 0


async def test_receiver_counts_acceptance_when_answered() -> None:
    """A stalled 2xx delivery counts once answered; one whose client left never does."""
    async with WebhookReceiver(KEY) as receiver, httpx.AsyncClient() as client:
        receiver.respond(Rule(delay=0.1, times=1))
        body = b"{}"
        gone = asyncio.ensure_future(
            client.post(receiver.url, content=body, headers=signed("left", body))
        )
        await receiver.wait_for(1, any_answer=True)
        gone.cancel()  # the sender gives up while the receiver stalls
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        await asyncio.sleep(0.2)  # past the moment the stalled answer would have gone out
        assert receiver.in_flight == 0
        assert receiver.accepted_ids() == set()
        await client.post(receiver.url, content=body, headers=signed("stays", body))
        await receiver.wait_for(1)
        assert receiver.accepted_ids() == {"stays"}
        assert receiver.unique_ids() == {"left", "stays"}
