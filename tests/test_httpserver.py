"""The HTTP server (relay.httpd, aiohttp's low-level server underneath) and the peers
built on it, over real loopback sockets: what a client sees, not how it is parsed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import sentry_sdk

from relay import sentry, signing
from relay.config import SentryConfig
from relay.http import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_LINE_BYTES,
    Guard,
    Request,
    Response,
    bearer_matches,
    json_response,
)
from relay.httpd import SERVER_NAME, HttpServer
from relay.testing.receiver import Delivery, Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import UNUSED_DSN, RecordingTransport

pytestmark = pytest.mark.anyio

CHUNK = 64 * 1024
#: An answer that must come at once (not after a body that is never sent) comes within this.
PROMPT = 2.0


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
    if request.path == "/bad-status":
        return Response(status=1000)
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": request.body.decode("latin-1"),
            "client": request.client,
        },
        headers=[("X-Echo", "1"), ("Content-Length", "999"), ("Connection", "close")],
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


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (promptly) with nothing more said."""
    try:
        return await asyncio.wait_for(reader.read(), PROMPT) == b""
    except ConnectionResetError:
        return True


def get(path: str, extra: str = "") -> bytes:
    """A minimal GET request."""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


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
    assert await closed_by_server(reader)
    writer.close()
    return answer


# --- requests and answers ---------------------------------------------------------


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
    """Path is percent-decoded, query keeps first values, header names are lower case,
    repeated headers are joined; the handler's own framing headers are not sent."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(
            "/a%20b?x=1&x=2&empty=&plus=%2B61&space=a+b",
            headers=[("X-Thing", "v"), ("X-Twice", "1"), ("x-twice", "2")],
        )
    echoed = response.json()
    assert echoed["method"] == "GET"
    assert echoed["path"] == "/a b"
    assert echoed["query"] == {"x": "1", "empty": "", "plus": "+61", "space": "a b"}
    assert echoed["headers"]["x-thing"] == "v"
    assert echoed["headers"]["x-twice"] == "1, 2"
    assert echoed["client"] == "127.0.0.1"
    assert response.headers["x-echo"] == "1"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    assert "connection" not in response.headers
    assert "date" in response.headers
    assert response.headers["server"] == SERVER_NAME  # not the library and its version


async def test_absolute_form_target(server: HttpServer) -> None:
    """A request target in absolute form (as sent to a proxy) is read as its path."""
    reader, writer = await connect(server)
    writer.write(b"GET http://x/abs%2Fpath?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    echoed = json.loads((await read_response(reader))[2])
    assert (echoed["path"], echoed["query"]) == ("/abs/path", {"q": "1"})
    writer.close()


async def test_ipv6_loopback_client() -> None:
    """A server on ::1 sees its client as ::1, a loopback address."""
    async with HttpServer(echo, "::1") as srv, httpx.AsyncClient(base_url=srv.url) as client:
        assert srv.url == f"http://[::1]:{srv.port}"
        assert (await client.get("/")).json()["client"] == "::1"


async def test_content_length_body(server: HttpServer) -> None:
    """A Content-Length request body arriving in pieces is read whole."""
    reader, writer = await connect(server)
    writer.write(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
    await writer.drain()
    await asyncio.sleep(0.05)
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


async def test_gzip_body_arrives_as_sent(server: HttpServer) -> None:
    """A Content-Encoding: gzip body is handed over as sent, not inflated by the server."""
    import gzip

    packed = gzip.compress(b"a" * 10_000)
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/z", content=packed, headers={"Content-Encoding": "gzip"})
    assert response.json()["body"].encode("latin-1") == packed


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
        assert response.headers["content-type"] == "application/octet-stream"
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


@pytest.mark.parametrize("path", ["/bad-header", "/bad-status"])
async def test_invalid_response_is_500(server: HttpServer, path: str) -> None:
    """A handler answering a header with CR/LF (or a status out of range) gets a 500,
    not a header injection."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(path)
    assert response.status_code == 500
    assert "injected" not in response.headers


async def test_close_connection_flag(server: HttpServer) -> None:
    """close_connection sends Connection: close and closes the socket after the body."""
    reader, writer = await connect(server)
    writer.write(get("/close"))
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], body) == (200, "close", b"bye")
    assert await closed_by_server(reader)
    writer.close()


async def test_client_connection_close_is_honoured(server: HttpServer) -> None:
    """A client's Connection: close (or an HTTP/1.0 request) ends the connection."""
    for raw in (get("/", "Connection: close\r\n"), b"GET / HTTP/1.0\r\n\r\n"):
        reader, writer = await connect(server)
        writer.write(raw)
        status, headers, _ = await read_response(reader)
        assert status == 200
        if raw.startswith(b"GET / HTTP/1.1"):
            assert headers["connection"] == "close"
        assert await closed_by_server(reader)
        writer.close()


async def test_abort_resets_without_answer(server: HttpServer) -> None:
    """abort drops the connection without a byte of answer."""
    reader, writer = await connect(server)
    writer.write(get("/reset"))
    try:
        data = await asyncio.wait_for(reader.read(), PROMPT)
    except ConnectionResetError:
        data = b""
    assert data == b""
    writer.close()


async def test_no_content_has_no_body(server: HttpServer) -> None:
    """A 204 carries neither body nor Content-Length nor Content-Type and keeps the
    connection."""
    reader, writer = await connect(server)
    writer.write(get("/empty") + get("/next"))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"content-length" not in head.lower()
    assert b"content-type" not in head.lower()
    assert json.loads((await read_response(reader))[2])["path"] == "/next"
    writer.close()


async def test_head_gets_headers_without_body(server: HttpServer) -> None:
    """HEAD is answered with the GET's headers (Content-Length too) but no body."""
    reader, writer = await connect(server)
    writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n" + get("/after-head"))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: " in head.lower()
    assert json.loads((await read_response(reader))[2])["path"] == "/after-head"
    writer.close()


# --- malformed and unacceptable requests -------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET / HTTX/1.1\r\nHost: x\r\n\r\n",
        b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET nopath HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded: header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x00\xff\x00garbage\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
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
        "nul-in-header-value",
        "non-numeric-length",
        "conflicting-lengths",
        "length-and-chunked",
        "unknown-coding",
        "bad-chunk-size",
        "chunk-without-crlf",
        "http11-without-host",
        "binary",
        "tls",
    ],
)
async def test_malformed_request_gets_400_and_close(server: HttpServer, raw: bytes) -> None:
    """A malformed request is answered 400 and the connection closed; the server goes on."""
    reader, writer = await connect(server)
    writer.write(raw)
    status, headers, body = await asyncio.wait_for(read_response(reader), PROMPT)
    assert status == 400
    assert headers["connection"] == "close"
    assert json.loads(body) == {"error": "malformed request"}
    assert await closed_by_server(reader)
    writer.close()
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/still-here")).status_code == 200


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (get("/", "X-Big: " + "a" * (MAX_LINE_BYTES + 1) + "\r\n"), 431),
        (get("/" + "a" * (MAX_LINE_BYTES + 1)), 431),
        (get("/", "".join(f"X-{n}: {'a' * 4000}\r\n" for n in range(20))), 431),
        (get("/", "".join(f"X-{n}: a\r\n" for n in range(MAX_HEADERS + 1))), 431),
        (post("/", length=2000), 413),
        (post("/") + b"3e8\r\n" + b"a" * 1000 + b"\r\n1\r\na\r\n", 413),
    ],
    ids=[
        "http2",
        "header-line-too-long",
        "request-line-too-long",
        "head-too-large",
        "too-many-headers",
        "body-too-large",
        "chunked-too-large",
    ],
)
async def test_unacceptable_request_gets_its_status(raw: bytes, status: int) -> None:
    """Oversized or unsupported requests get the specific 4xx/5xx and a close."""
    assert MAX_HEAD_BYTES < 20 * 4000
    async with HttpServer(echo, max_body_bytes=1000) as srv:
        got, _, body = await answer_of(srv, raw)
        assert got == status
        assert "error" in json.loads(body)


async def test_a_head_within_the_limits_is_served(server: HttpServer) -> None:
    """Heads just within the limits are served, not refused."""
    extra = "".join(f"X-{n}: {'a' * 900}\r\n" for n in range(MAX_HEADERS - 2))
    reader, writer = await connect(server)
    writer.write(get("/" + "a" * 4000, extra))
    status, _, _ = await read_response(reader)
    assert status == 200
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
    _, writer = await connect(server)
    writer.write(post("/", length=100) + b"half")  # then leave
    writer.transport.abort()
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/ok")).status_code == 200


async def test_nothing_of_a_request_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """No access log: neither a request line nor a token nor a body reaches any log, even
    at debug, whether the request is served, refused or malformed."""
    secret = "tok-0123456789-secret"
    guards = {"/g": Guard(max_body_bytes=1000, bearer_token=secret)}
    caplog.set_level(logging.DEBUG)
    async with HttpServer(echo, guards=guards) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            await client.post(f"/g?text={secret}", content=secret.encode())
            await client.post("/g", content=secret, headers={"Authorization": f"Bearer {secret}"})
            await client.get(f"/boom?{secret}", headers={"Authorization": f"Bearer {secret}"})
        await answer_of(srv, get(f"/{secret}", f"X-Big: {secret}{'a' * MAX_LINE_BYTES}\r\n"))
        await answer_of(srv, f"GET /{secret} HTTP/1.1\r\nBad Name: {secret}\r\n\r\n".encode())
    served = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.__dict__} {r.exc_text}" for r in served)
    assert {"httpserver.handler_failed", "httpserver.bad_request"} <= {r.msg for r in served}
    assert secret not in logged


# --- what a client can make the server hold --------------------------------------------

GUARD_TOKEN = "guard-token-0123456789"


@pytest.fixture
async def guarded() -> AsyncIterator[HttpServer]:
    """The echo server with /g guarded by a bearer token and a 1000-byte body limit."""
    guards = {"/g": Guard(max_body_bytes=1000, bearer_token=GUARD_TOKEN)}
    async with HttpServer(echo, guards=guards) as srv:
        yield srv


@pytest.mark.parametrize(
    "extra",
    ["", "Authorization: Bearer wrong\r\n", f"Authorization: Basic {GUARD_TOKEN}\r\n"],
    ids=["no-token", "wrong-token", "other-scheme"],
)
async def test_guard_refuses_a_wrong_token_from_the_head(guarded: HttpServer, extra: str) -> None:
    """Without the guard's token the head alone gets 401 with WWW-Authenticate (not
    100 Continue), the body unread."""
    status, headers, body = await answer_of(
        guarded, post("/g", extra + "Expect: 100-continue\r\n", 1000)
    )
    assert (status, headers["www-authenticate"]) == (401, "Bearer")
    assert json.loads(body) == {"error": "missing or wrong bearer token"}


async def test_guard_answers_before_a_huge_body_is_read(guarded: HttpServer) -> None:
    """A client announcing 64 MiB without the token and sending as fast as it can gets
    401 and a close long before it could have sent the body: the body is never read. (The
    close may reset the connection before the client reads the 401, as unread input
    makes the kernel send a reset.)"""
    reader, writer = await connect(guarded)
    writer.write(post("/g", "", 64 * 1024 * 1024))
    sent = 0

    async def flood() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            while sent < 64 * 1024 * 1024:
                writer.write(b"x" * CHUNK)
                await writer.drain()
                sent += CHUNK

    flooding = asyncio.create_task(flood())
    status = None
    try:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            status = (await asyncio.wait_for(read_response(reader), PROMPT))[0]
        assert await closed_by_server(reader)
    finally:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flooding
        writer.transport.abort()
    assert status in (401, None)
    assert sent < 16 * 1024 * 1024


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
        post("/g", f"Authorization: Bearer {GUARD_TOKEN}\r\n") + b"3e9\r\n" + b"a" * 1001,
        post("/g", f"Authorization: Bearer {GUARD_TOKEN}\r\n") + b"1f4\r\n" + b"a" * 500
        + b"\r\n1f5\r\n" + b"a" * 501,
    ],
    ids=["content-length", "chunk", "chunks-adding-up"],
)  # fmt: skip
async def test_guard_body_limit(guarded: HttpServer, raw: bytes) -> None:
    """A body over the guard's limit gets 413: from the head when its length is
    announced, else as soon as the body read runs past the limit; though the server's
    own limit is far larger."""
    status, _, body = await answer_of(guarded, raw)
    assert (status, json.loads(body)) == (413, {"error": "request body too large"})
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


async def test_connections_beyond_the_limit_get_503(caplog: pytest.LogCaptureFixture) -> None:
    """A request on a connection beyond max_connections is answered 503 and closed (and
    logged); the connections within the limit are served; one that leaves frees its place."""
    async with HttpServer(echo, max_connections=2) as srv:
        first = await connect(srv)
        second = await connect(srv)
        status, _, body = await answer_of(srv, get("/third"))
        assert (status, json.loads(body)) == (503, {"error": "too many connections"})
        assert any(r.message == "httpserver.too_many_connections" for r in caplog.records)
        second[1].write(get("/second"))
        assert (await read_response(second[0]))[0] == 200
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


async def test_pipelined_requests_wait_in_the_kernel() -> None:
    """While a request is answered, requests pipelined behind it are read one socket read
    at a time at most, not as fast as the client sends: the rest waits in the kernel,
    and all are answered, in order, once the first is."""
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        if request.path == "/slow":
            await release.wait()
        return Response(body=request.path.encode())

    behind = [get(f"/{n}", f"X-Pad: {'a' * 8000}\r\nX-More: {'b' * 8000}\r\n") for n in range(100)]
    async with HttpServer(slow) as srv:
        reader, writer = await connect(srv)
        writer.write(get("/slow") + b"".join(behind))
        await asyncio.sleep(0.5)
        # A read takes at most 256 KiB: 16 of these 16 KiB requests; aiohttp alone would
        # queue 32.
        assert 0 < srv.pending_requests <= 16
        release.set()
        answers = [(await read_response(reader))[2] for _ in range(101)]
        assert answers == [b"/slow", *(f"/{n}".encode() for n in range(100))]
        assert srv.pending_requests == 0
        writer.close()


async def test_idle_connection_is_closed() -> None:
    """A connection that sends nothing, or half a request, for idle_timeout is closed."""
    async with HttpServer(echo, idle_timeout=0.1) as srv:
        for raw in (b"", b"GET / HTTP/1.1\r\nHost:"):
            reader, writer = await connect(srv)
            writer.write(raw)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()


async def test_a_body_that_never_comes_is_given_up() -> None:
    """A body that does not arrive within idle_timeout is answered 408 and closed."""
    async with HttpServer(echo, idle_timeout=0.2) as srv:
        status, _, _ = await answer_of(srv, post("/", length=10) + b"half")
        assert status == 408


# --- starting and stopping ---------------------------------------------------------------


async def test_addresses_are_the_bound_ones() -> None:
    """addresses shows what the sockets are bound to; only loopback ones are loopback_only."""
    async with HttpServer(echo, "127.0.0.1") as local, HttpServer(echo, "0.0.0.0") as wide:
        assert local.addresses == [f"127.0.0.1:{local.port}"]
        assert local.loopback_only
        assert wide.addresses == [f"0.0.0.0:{wide.port}"]
        assert not wide.loopback_only
        assert wide.url == f"http://127.0.0.1:{wide.port}"


async def test_a_port_in_use_is_an_error() -> None:
    """Starting on a port another server holds raises OSError (no exit, no retry)."""
    async with HttpServer(echo) as first:
        with pytest.raises(OSError):
            await HttpServer(echo, port=first.port).start()


async def test_close_drops_open_connections() -> None:
    """close() with no grace ends idle and busy connections and cancels running handlers."""
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
        assert await closed_by_server(reader)
    idle_writer.close()
    busy_writer.close()
    with pytest.raises(OSError):
        await connect(srv)


async def test_close_lets_requests_in_flight_finish_within_its_timeout() -> None:
    """close(timeout) stops listening at once, answers a request in flight that ends
    within the timeout, and cuts one that does not, when the timeout is up."""
    started: list[str] = []

    async def slow(request: Request) -> Response:
        started.append(request.path)
        await asyncio.sleep(0.3 if request.path == "/quick" else 60)
        return Response(body=request.path.encode())

    srv = HttpServer(slow)
    await srv.start()
    quick = await connect(srv)
    stuck = await connect(srv)
    quick[1].write(get("/quick"))
    stuck[1].write(get("/stuck"))
    while len(started) < 2:
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    began = loop.time()
    closing = asyncio.create_task(srv.close(timeout=1.0))
    await asyncio.sleep(0.05)
    with pytest.raises(OSError):
        await connect(srv)
    status, _, body = await read_response(quick[0])
    assert (status, body) == (200, b"/quick")
    await asyncio.wait_for(closing, 5)
    assert 0.9 < loop.time() - began < 3
    assert await closed_by_server(quick[0])
    assert await closed_by_server(stuck[0])
    for _, writer in (quick, stuck):
        writer.close()


def test_the_daemon_loads_the_server_library_only_to_serve() -> None:
    """Importing the daemon (and the handler interface) does not import aiohttp: the relay
    loads it only when ``[http] listen`` asks it to serve."""
    code = "import sys, relay.cli, relay.service, relay.http; print('aiohttp' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr


# --- what the handler interface is ----------------------------------------------------------


def test_is_loopback() -> None:
    """Only loopback peers (v4, v6 and v4-mapped) count as loopback."""

    def request(client: str) -> Request:
        return Request("GET", "/", {}, {}, b"", client)

    assert request("127.0.0.1").is_loopback()
    assert request("127.8.9.10").is_loopback()
    assert request("::1").is_loopback()
    assert request("::ffff:127.0.0.1").is_loopback()
    assert not request("10.0.0.1").is_loopback()
    assert not request("::ffff:10.0.0.1").is_loopback()
    assert not request("").is_loopback()


def test_json_response_is_utf8() -> None:
    """json_response writes UTF-8, not ASCII escapes, and keeps given headers."""
    response = json_response({"text": "héllo ✓"}, 201, [("X-A", "b")])
    assert response.status == 201
    assert response.body == '{"text":"héllo ✓"}'.encode()
    assert response.headers == [("X-A", "b")]


# --- Sentry ------------------------------------------------------------------------------


async def test_no_request_reaches_sentry() -> None:
    """With Sentry on and tracing at 100%, serving makes no transaction, and an event
    captured while a request is handled carries nothing of the request: not its
    Authorization header, its body, its query or its path."""
    secret = "sentry-secret-0123456789"
    recording = RecordingTransport()
    sentry.setup(
        SentryConfig(dsn=UNUSED_DSN, traces_sample_rate=1.0), version="9.9.9", transport=recording
    )

    async def handler(request: Request) -> Response:
        sentry_sdk.capture_message("inside a handler")
        raise RuntimeError("handler failure")

    try:
        async with HttpServer(handler) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            response = await client.post(
                f"/{secret}?q={secret}",
                content=json.dumps({"text": secret}),
                headers={"Authorization": f"Bearer {secret}", "Cookie": secret},
            )
            assert response.status_code == 500
        sentry_sdk.flush()
    finally:
        sentry.close()
        for scope in (sentry_sdk.get_isolation_scope(), sentry_sdk.get_current_scope()):
            scope.clear()
        sentry_sdk.get_global_scope().set_client(None)
    (event,) = recording.items("event")
    assert event["message"] == "inside a handler"
    assert "request" not in event
    assert recording.items("transaction") == []
    assert secret.encode() not in recording.everything()


# --- the simulator's control endpoints --------------------------------------------------


async def test_simulator_control_endpoints_answer_loopback_clients_only() -> None:
    """Over the server, a loopback client (v4 or v6) reaches /_sim/; a request from any
    other address is refused 403, the API itself is not."""
    for host in ("127.0.0.1", "::1"):
        sim = Simulator()
        await sim.start(host)
        try:
            async with httpx.AsyncClient(base_url=sim.url) as client:
                assert (await client.get("/_sim/stats")).status_code == 200
        finally:
            await sim.close()
    sim = Simulator()
    remote = Request("GET", "/_sim/stats", {}, {}, b"", "192.0.2.7")
    answer = await sim._handle(remote)
    assert (answer.status, answer.body) == (403, b'{"error":"control endpoints are loopback only"}')
    api = Request("GET", "/api/v2/sms/receive", {"to": "0412345678"}, {}, b"", "192.0.2.7")
    assert (await sim._handle(api)).status == 401


# --- the webhook receiver built on this server -----------------------------------

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
