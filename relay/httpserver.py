"""A tiny asyncio HTTP/1.1 server for the simulator, the test receiver and health endpoints.

Over 400 lines: a hand-written HTTP/1.1 server, kept whole until issue 12 replaces it by a library.

Stdlib only: an :class:`asyncio.Protocol` with hand-written parsing, so that one core
serves thousands of keep-alive requests a second. It speaks keep-alive and pipelining,
reads Content-Length and chunked request bodies, and streams an async-iterator response
body with Transfer-Encoding: chunked under backpressure. A malformed request is answered
400 and its connection closed; an exception in the handler is logged and answered 500;
neither stops the server.

What a client can make the process hold is bounded before anyone is authenticated: a
path's :class:`Guard` (a bearer token, a body limit) is judged from the request head
alone, so a wrong token gets 401 and an announced body over the limit 413 without a
byte of the body read; heads are capped at :data:`MAX_HEAD_BYTES`; and the server holds
at most ``max_connections`` connections and ``max_buffered_bytes`` of request input over
all of them (503 and a close beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from types import TracebackType
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
#: Largest request body accepted (413 beyond).
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: A connection that sends no complete request for this long is closed.
DEFAULT_IDLE_TIMEOUT = 60.0
#: Largest request line plus headers accepted (431 beyond).
MAX_HEAD_BYTES = 64 * 1024
#: Longest chunk-size line (with extensions) of a chunked request body.
MAX_CHUNK_LINE_BYTES = 1024
#: Largest trailer section of a chunked request body.
MAX_TRAILER_BYTES = 16 * 1024
#: Stop reading a pipelining client once this much unprocessed input is buffered.
READ_BUFFER_LIMIT = 1024 * 1024
#: Bodies up to this size are written in one piece with their head.
SMALL_BODY_BYTES = 64 * 1024
#: Most connections open at once; a connection beyond is answered 503 and closed.
DEFAULT_MAX_CONNECTIONS = 4096
#: Most request input held over all connections (heads, bodies being read, pipelined
#: requests); the connection whose input goes beyond is answered 503 and closed.
DEFAULT_MAX_BUFFERED_BYTES = 4 * DEFAULT_MAX_BODY_BYTES
#: An overload (too many connections, too much input held) is logged at most this often.
OVERLOAD_LOG_EVERY = 60.0
#: The authentication scheme a :class:`Guard` with a token requires (any case, RFC 9110).
BEARER = "bearer"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}

# Parser states.
_HEAD = 0
_BODY = 1
_CHUNK_SIZE_LINE = 2
_CHUNK_DATA = 3
_CHUNK_END = 4
_TRAILERS = 5
_BUSY = 6
_CLOSED = 7


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback IP address (v4, v6 or v4-mapped)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request."""

    method: str
    #: Percent-decoded path, without the query string.
    path: str
    #: The first value of each query parameter.
    query: dict[str, str]
    #: Header names in lower case; repeated headers joined with ", ".
    headers: dict[str, str]
    body: bytes
    #: The peer's IP address ("" when unknown).
    client: str = ""

    def is_loopback(self) -> bool:
        """Whether the request came from this machine."""
        return _is_loopback(self.client)


@dataclass
class Response:
    """What a handler answers.

    An async-iterator ``body`` is sent with Transfer-Encoding: chunked, so a large body
    never has to be held. ``headers`` must not carry framing headers (Content-Length,
    Transfer-Encoding, Connection): the server writes those itself.
    """

    status: int = 200
    body: bytes | AsyncIterator[bytes] = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    #: Close the connection once the response is sent.
    close_connection: bool = False
    #: Reset the connection without answering (a simulated connection reset).
    abort: bool = False


Handler = Callable[[Request], Awaitable[Response]]


def json_response(
    obj: object, status: int = 200, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    """A JSON response (UTF-8, not ASCII-escaped)."""
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(status=status, body=body, headers=list(headers))


@dataclass(frozen=True)
class Guard:
    """What a request to one path must meet, judged from its head before its body is read.

    Without the bearer token it is answered 401, with a larger announced body (or a chunk
    running past the limit) 413; either way the connection is closed, the body unread.
    """

    #: Largest request body accepted.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: When set, ``Authorization: Bearer <token>`` is required (the scheme in any case).
    bearer_token: str | None = field(default=None, repr=False)


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` with the Bearer scheme.

    The scheme is matched in any case (RFC 9110 11.1); the token is compared in constant
    time, and an empty token never matches.
    """
    scheme, _, credentials = (authorization or "").strip(" \t").partition(" ")
    given = credentials.strip(" \t")
    # Always compare, so a wrong scheme takes as long as a wrong token.
    same = hmac.compare_digest(given.encode(), token.encode())
    return same and scheme.lower() == BEARER and bool(token)


def unauthorized() -> Response:
    """401 with ``WWW-Authenticate: Bearer``: the bearer token is missing or wrong."""
    return json_response(
        {"error": "missing or wrong bearer token"}, 401, [("WWW-Authenticate", "Bearer")]
    )


class _BadRequest(Exception):
    """The request cannot be parsed or is refused: answer ``status`` and close."""

    def __init__(self, status: int, reason: str, response: Response | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        #: The answer, when not the default ``{"error": reason}``.
        self.response = response


_date_cache: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    """``Date: ...\\r\\n``, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode())
    return _date_cache[1]


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            msg = f"HTTP status {status} is out of range"
            raise ValueError(msg)
        line = f"HTTP/1.1 {status} Unknown\r\n".encode()
    return line


def _encode_head(
    response: Response, *, length: int | None, keep_alive: bool, chunked: bool = False
) -> bytes:
    """The status line and headers; a ``length`` of None sends no Content-Length."""
    status = response.status
    parts = [_status_line(status), _date_header()]
    has_type = False
    for name, value in response.headers:
        lower = name.lower()
        if lower in _FRAMING_HEADERS:
            continue
        if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value:
            msg = f"invalid response header {name!r}"
            raise ValueError(msg)
        has_type = has_type or lower == "content-type"
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    bodyless = status < 200 or status in (204, 304)
    if not bodyless:
        if not has_type and response.content_type:
            parts.append(f"Content-Type: {response.content_type}\r\n".encode("latin-1"))
        if chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif length is not None:
            parts.append(b"Content-Length: %d\r\n" % length)
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _error_response(status: int, reason: str) -> Response:
    return json_response({"error": reason}, status)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler, writes responses."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._buffer = bytearray()
        self._state = _HEAD
        self._idle_since = self._loop.time()
        # The request being read.
        self._method = ""
        self._path = ""
        self._query: dict[str, str] = {}
        self._headers: dict[str, str] = {}
        self._http10 = False
        self._keep_alive = True
        self._remaining = 0
        self._body_size = 0
        self._body_parts: list[bytes] = []
        self._trailer_bytes = 0
        #: The body limit of the request being read (its path's guard, or the server's).
        self._max_body = server.max_body_bytes
        #: Bytes of body_parts, and what this connection counts in the server's total.
        self._body_held = 0
        self._counted = 0
        # Writing.
        self._task: asyncio.Task[None] | None = None
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._client = str(peer[0])
        if len(self._server._connections) >= self._server.max_connections:
            self._server._overloaded("httpserver.too_many_connections")
            self._reject(503, "too many connections")
            return
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._server._connections.discard(self)
        self._body_parts = []
        self._body_held = 0
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._buffer.clear()
        self._account()

    def data_received(self, data: bytes) -> None:
        if self._state == _CLOSED:
            return
        self._buffer += data
        if self._state == _BUSY:
            if len(self._buffer) > READ_BUFFER_LIMIT:
                self._pause_reading()
            self._account()
        else:
            self._process()
        server = self._server
        if server._buffered > server.max_buffered_bytes and self._counted:
            server._overloaded("httpserver.buffer_full")
            if self._state == _BUSY:  # an answer may be being written: no room for another
                self._abort()
            else:
                self._reject(503, "server busy")

    def _account(self) -> None:
        """Bring the server's count of buffered request input up to date for this connection."""
        held = len(self._buffer) + self._body_held
        self._server._buffered += held - self._counted
        self._counted = held

    def eof_received(self) -> bool | None:
        # A client that stops sending has gone: close, cancelling any handler running.
        self._eof = True
        return None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- parsing ----------------------------------------------------------

    def _process(self) -> None:
        try:
            while self._state != _BUSY and self._state != _CLOSED:
                if not self._step():
                    break
        except _BadRequest as exc:
            self._reject(exc.status, exc.reason, exc.response)
        self._account()

    def _step(self) -> bool:
        """Advance the parser; False when more input is needed."""
        state = self._state
        if state == _HEAD:
            return self._parse_head()
        buf = self._buffer
        if state == _BODY:
            take = min(len(buf), self._remaining)
            if take == 0:
                return False
            self._take_body(take)
            if self._remaining == 0:
                self._dispatch()
            return True
        if state == _CHUNK_SIZE_LINE:
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > MAX_CHUNK_LINE_BYTES:
                    raise _BadRequest(400, "chunk size line too long")
                return False
            size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
            del buf[: end + 2]
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise _BadRequest(400, "malformed chunk size")
            size = int(size_text, 16)
            self._body_size += size
            if self._body_size > self._max_body:
                raise _BadRequest(413, "request body too large")
            if size == 0:
                self._state = _TRAILERS
            else:
                self._remaining = size
                self._state = _CHUNK_DATA
            return True
        if state == _CHUNK_DATA:
            take = min(len(buf), self._remaining)
            if take == 0:
                return False
            self._take_body(take)
            if self._remaining == 0:
                self._state = _CHUNK_END
            return True
        if state == _CHUNK_END:
            if len(buf) < 2:
                return False
            if buf[:2] != b"\r\n":
                raise _BadRequest(400, "chunk not followed by CRLF")
            del buf[:2]
            self._state = _CHUNK_SIZE_LINE
            return True
        return self._read_trailers()

    def _take_body(self, size: int) -> None:
        """Move ``size`` bytes of body from the read buffer to the body being assembled."""
        buf = self._buffer
        self._body_parts.append(bytes(buf[:size]))
        del buf[:size]
        self._body_held += size
        self._remaining -= size

    def _read_trailers(self) -> bool:
        """Read and ignore trailer fields up to the empty line; False when more is needed."""
        buf = self._buffer
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > MAX_TRAILER_BYTES:
                raise _BadRequest(400, "trailers too large")
            return False
        del buf[: end + 2]
        if end == 0:
            self._dispatch()
            return True
        self._trailer_bytes += end
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise _BadRequest(400, "trailers too large")
        return True

    def _parse_head(self) -> bool:
        buf = self._buffer
        while buf.startswith(b"\r\n"):  # RFC 9112 2.2: ignore empty lines before a request
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise _BadRequest(431, "request head too large")
            return False
        if end > MAX_HEAD_BYTES:
            raise _BadRequest(431, "request head too large")
        head = buf[:end].decode("latin-1")
        del buf[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        if not _TOKEN.fullmatch(method):
            raise _BadRequest(400, "malformed method")
        if version == "HTTP/1.1":
            self._http10 = False
        elif version == "HTTP/1.0":
            self._http10 = True
        elif version.startswith("HTTP/") and version[5:6].isdigit():
            raise _BadRequest(505, "HTTP version not supported")
        else:
            raise _BadRequest(400, "malformed HTTP version")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise _BadRequest(400, "malformed header line")
            value = value.strip(" \t")
            if "\n" in value or "\r" in value or "\x00" in value:
                raise _BadRequest(400, "malformed header value")
            name = name.lower()
            previous = headers.get(name)
            if previous is None:
                headers[name] = value
            elif name == "content-length":
                if previous != value:
                    raise _BadRequest(400, "conflicting Content-Length headers")
            else:
                headers[name] = f"{previous}, {value}"
        self._method = method
        self._parse_target(target)
        self._headers = headers
        connection = headers.get("connection", "").lower()
        if self._http10:
            self._keep_alive = "keep-alive" in connection
        else:
            self._keep_alive = "close" not in connection
        self._body_parts = []
        self._body_held = 0
        self._body_size = 0
        self._trailer_bytes = 0
        self._admit(headers)
        self._start_body(headers)
        return True

    def _admit(self, headers: dict[str, str]) -> None:
        """Apply the path's guard, from the head alone: 401 without its bearer token."""
        guard = self._server.guards.get(self._path)
        if guard is None:
            self._max_body = self._server.max_body_bytes
            return
        self._max_body = guard.max_body_bytes
        token = guard.bearer_token
        if token is not None and not bearer_matches(headers.get("authorization"), token):
            raise _BadRequest(401, "missing or wrong bearer token", unauthorized())

    def _parse_target(self, target: str) -> None:
        if target.startswith("/"):
            path, _, query = target.partition("?")
            path = path.partition("#")[0]
        elif target.startswith(("http://", "https://")):
            split = urlsplit(target)
            path, query = split.path or "/", split.query
        elif target == "*" and self._method == "OPTIONS":
            path, query = "*", ""
        else:
            raise _BadRequest(400, "malformed request target")
        self._path = unquote(path) if "%" in path else path
        params: dict[str, str] = {}
        if query:
            for key, value in parse_qsl(query, keep_blank_values=True):
                params.setdefault(key, value)
        self._query = params

    def _start_body(self, headers: dict[str, str]) -> None:
        coding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if coding is not None:
            if length is not None:
                raise _BadRequest(400, "both Content-Length and Transfer-Encoding")
            if coding.strip().lower() != "chunked" or self._http10:
                raise _BadRequest(501, "only the chunked transfer coding is supported")
            self._state = _CHUNK_SIZE_LINE
            self._continue_if_expected(headers)
            return
        if length is None:
            self._dispatch()
            return
        if not (length.isascii() and length.isdigit()) or len(length) > 18:
            raise _BadRequest(400, "malformed Content-Length")
        size = int(length)
        if size > self._max_body:
            raise _BadRequest(413, "request body too large")
        if size == 0:
            self._dispatch()
            return
        self._remaining = size
        self._state = _BODY
        self._continue_if_expected(headers)

    def _continue_if_expected(self, headers: dict[str, str]) -> None:
        expect = headers.get("expect")
        if expect is not None and expect.lower() == "100-continue" and not self._buffer:
            assert self._transport is not None
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # --- handling ---------------------------------------------------------

    def _dispatch(self) -> None:
        parts = self._body_parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._body_parts = []
        self._body_held = 0
        request = Request(
            method=self._method,
            path=self._path,
            query=self._query,
            headers=self._headers,
            body=body,
            client=self._client,
        )
        self._state = _BUSY
        self._task = self._loop.create_task(self._run(request, self._keep_alive))

    async def _run(self, request: Request, keep_alive: bool) -> None:
        try:
            response = await self._server._handler(request)
        except Exception:
            log.exception(
                "httpserver.handler_failed",
                extra={"method": request.method, "path": request.path},
            )
            response = _error_response(500, "internal server error")
        if self._state == _CLOSED:  # the client left while the handler ran
            return
        if response.abort:
            self._abort()
            return
        keep = keep_alive and not response.close_connection and not self._eof
        try:
            keep = await self._send(response, keep, head_only=request.method == "HEAD")
        except ConnectionError:
            self._abort()
            return
        except Exception:
            log.exception("httpserver.response_failed", extra={"path": request.path})
            self._abort()
            return
        transport = self._transport
        if transport is None or self._state == _CLOSED:
            return
        if not keep or self._eof:
            self._state = _CLOSED
            transport.close()
            return
        self._task = None
        self._state = _HEAD
        self._idle_since = self._loop.time()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if self._buffer:
            self._process()

    async def _send(self, response: Response, keep_alive: bool, *, head_only: bool) -> bool:
        """Write ``response`` (only its head for HEAD); return whether to keep the connection."""
        transport = self._transport
        assert transport is not None
        body = response.body
        if isinstance(body, bytes):
            try:
                head = _encode_head(response, length=len(body), keep_alive=keep_alive)
            except ValueError:
                log.exception("httpserver.bad_response")
                response = _error_response(500, "internal server error")
                assert isinstance(response.body, bytes)
                body = response.body
                head = _encode_head(response, length=len(body), keep_alive=keep_alive)
            if head_only or response.status < 200 or response.status in (204, 304):
                body = b""
            if len(body) <= SMALL_BODY_BYTES:
                transport.write(head + body)
            else:
                transport.write(head)
                transport.write(body)
            if self._writing_paused:
                await self._drain()
            return keep_alive
        return await self._send_stream(response, body, keep_alive, head_only=head_only)

    async def _send_stream(
        self, response: Response, body: AsyncIterator[bytes], keep_alive: bool, *, head_only: bool
    ) -> bool:
        transport = self._transport
        assert transport is not None
        chunked = not self._http10
        keep_alive = keep_alive and chunked  # HTTP/1.0: the body ends when the socket closes
        try:
            head = _encode_head(response, length=None, keep_alive=keep_alive, chunked=chunked)
            transport.write(head)
            if head_only:
                return keep_alive
            async for chunk in body:
                if not chunk:
                    continue
                if self._state == _CLOSED:
                    raise ConnectionResetError("connection lost")
                if chunked:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    transport.write(chunk)
                if self._writing_paused:
                    await self._drain()
            if chunked:
                transport.write(b"0\r\n\r\n")
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        return keep_alive

    async def _drain(self) -> None:
        if self._state == _CLOSED:
            raise ConnectionResetError("connection lost")
        if not self._writing_paused:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiter = waiter
        try:
            await waiter
        finally:
            self._drain_waiter = None

    # --- closing ----------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _reject(self, status: int, reason: str, response: Response | None = None) -> None:
        """Answer ``response`` (else ``{"error": reason}``) and close, unread input dropped."""
        log.debug("httpserver.bad_request", extra={"status": status, "reason": reason})
        transport = self._transport
        self._state = _CLOSED
        self._buffer.clear()
        self._body_parts = []
        self._body_held = 0
        self._account()
        if transport is None:
            return
        if response is None:
            response = _error_response(status, reason)
        assert isinstance(response.body, bytes)
        head = _encode_head(response, length=len(response.body), keep_alive=False)
        transport.write(head + response.body)
        transport.close()

    def _abort(self) -> None:
        self._state = _CLOSED
        if self._transport is not None:
            self._transport.abort()

    def close_if_idle(self, now: float, timeout: float) -> None:
        """Close the connection when it has waited over ``timeout`` for a request."""
        if self._state != _BUSY and self._state != _CLOSED and now - self._idle_since > timeout:
            self._state = _CLOSED
            if self._transport is not None:
                self._transport.close()

    def shutdown(self) -> asyncio.Task[None] | None:
        """Drop the connection now; return the handler task still running, if any."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        else:
            task = None
        self._abort()
        return task


class HttpServer:
    """Serve ``handler`` over HTTP/1.1 on ``host``:``port`` (0 picks a free port)."""

    def __init__(
        self,
        handler: Handler,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        guards: Mapping[str, Guard] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    ) -> None:
        self._handler = handler
        self.host = host
        #: The bound port once started; the requested one before.
        self.port = port
        #: The body limit of a path without a guard.
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        #: What requests to a path (exact, percent-decoded) must meet before their body is read.
        self.guards: Mapping[str, Guard] = dict(guards or {})
        self.max_connections = max_connections
        self.max_buffered_bytes = max_buffered_bytes
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        #: Request input held over all connections, in bytes.
        self._buffered = 0
        self._overload_logged: dict[str, float] = {}

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, with a wildcard host shown as 127.0.0.1."""
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def buffered_bytes(self) -> int:
        """Request input held now over all connections (what ``max_buffered_bytes`` bounds)."""
        return self._buffered

    @property
    def addresses(self) -> list[str]:
        """The addresses the listening sockets are bound to, as ``HOST:PORT`` (IPv6 in
        brackets); empty until started."""
        if self._server is None:
            return []
        shown = []
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            shown.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return list(dict.fromkeys(shown))

    @property
    def loopback_only(self) -> bool:
        """Whether every listening socket is bound to a loopback address, so that no
        other host can connect."""
        if self._server is None:
            return True
        return all(_is_loopback(sock.getsockname()[0]) for sock in self._server.sockets)

    def _overloaded(self, event: str) -> None:
        """Log ``event`` (a warning), at most once every :data:`OVERLOAD_LOG_EVERY`."""
        now = time.monotonic()
        last = self._overload_logged.get(event)
        if last is None or now - last >= OVERLOAD_LOG_EVERY:
            self._overload_logged[event] = now
            log.warning(event)

    async def start(self) -> None:
        """Start listening."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, backlog=1024
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = loop.create_task(self._sweep())

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        tasks = [task for conn in list(self._connections) if (task := conn.shutdown())]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let connection_lost callbacks run
        await server.wait_closed()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(self.idle_timeout / 4, 0.05)
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in list(self._connections):
                conn.close_if_idle(now, self.idle_timeout)

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
