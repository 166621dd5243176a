"""Serve a :mod:`relay.http` handler over HTTP/1.1 with aiohttp's low-level server, in the
caller's event loop: ``start`` binds; ``close`` stops listening, gives requests in flight
up to its timeout, then cuts what is left. aiohttp parses (llhttp), keeps connections
alive and pipelined, and writes answers; this module adapts its requests and answers.

What a client can make the process hold is bounded before anyone is authenticated. From
the head alone, its body unread, come: a path's :class:`~relay.http.Guard` (401 without
its bearer token, 413 for an announced body over its limit), 431 for a head over the
limits in :mod:`relay.http`, 503 on a connection beyond ``max_connections``, 505 for an
HTTP version but 1.x; each closes the connection. A body is read a piece at a time, 413
once it runs past the limit; requests pipelined behind one being answered are read one
socket read at a time. A malformed request gets 400 and a close, a handler's exception
500; neither stops the server. No access log: request lines carry what logs must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from relay.http import (
    DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_LINE_BYTES,
    Guard,
    Handler,
    Request,
    Response,
    base_url,
    bearer_matches,
    error_response,
    head_size,
    is_loopback,
    joined_headers,
    response_headers,
    shown_address,
    split_target,
    unauthorized,
)

log = logging.getLogger(__name__)

#: An overload (too many connections) is logged at most this often.
OVERLOAD_LOG_EVERY = 60.0
#: Bytes of request input aiohttp reads at a time; it stops reading the socket while
#: twice this much body waits unread.
READ_BUFFER_BYTES = 64 * 1024
#: The Server header of every answer (aiohttp's own would name its version).
SERVER_NAME = "aatrox-relay"


def _closing(response: Response) -> web.Response:
    """A bytes ``response`` as aiohttp's, with Connection: close."""
    answer = _plain(response)
    answer.force_close()
    answer.headers["Connection"] = "close"  # said even to an HTTP/1.0 client
    return answer


def _plain(response: Response) -> web.Response:
    """A bytes ``response`` as aiohttp's; ValueError for one HTTP cannot carry."""
    body = response.body if isinstance(response.body, bytes) else b""
    return web.Response(
        status=response.status, body=body, headers=response_headers(response, SERVER_NAME)
    )


class _Connection(web.RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse as the relay does,
    and reading no further while a request it has read waits for its turn."""

    busy = False  # a request of this connection is in the handler or being answered
    _held = False  # reading is paused until the requests already read are taken up

    def data_received(self, data: bytes) -> None:
        """Parse ``data``; while a request read from it waits behind another (pipelining),
        read nothing more: the rest waits in the kernel."""
        super().data_received(data)
        if self.waiting() > (0 if self.busy else 1) and not self._held and self.transport:
            self._held = True
            self.transport.pause_reading()

    def waiting(self) -> int:
        """How many requests are read and wait their turn (aiohttp's own queue; were it
        renamed, this is 0 and tests/test_httpserver.py says so)."""
        return len(getattr(self, "_messages", ()))

    def take_up(self) -> None:
        """A request is taken up: read on once none waits (its body, the next ones)."""
        self.busy = True
        if self._held and not self.waiting() and self.transport is not None:
            self._held = False
            self.transport.resume_reading()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Write the answer; the connection is no longer busy."""
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self.busy = False

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """``{"error": reason}`` and a close: 431 for a head too large, else ``status``."""
        if request.writer.output_size > 0:  # an answer is on its way: nothing more to say
            msg = "response already started"
            raise ConnectionError(msg)
        reason = "malformed request" if status == 400 else "internal server error"
        if isinstance(exc, LineTooLong) or "Too many headers" in str(exc):
            status, reason = 431, "request head too large"
        if status == 500:
            log.error("httpserver.server_error", exc_info=exc)
        else:
            log.debug("httpserver.bad_request", extra={"status": status, "reason": reason})
        return _closing(error_response(status, reason))


class _Server(web.Server):
    """aiohttp's low-level server, with :class:`_Connection` and a connection count."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        max_connections: int,
        **options: Any,
    ) -> None:
        super().__init__(handler, handler_cancellation=True)
        self._options = options
        self.max_connections = max_connections
        #: Connections within ``max_connections``, and every open one's transport.
        self.admitted: set[web.RequestHandler] = set()
        self.transports: dict[web.RequestHandler, asyncio.Transport] = {}

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=asyncio.get_running_loop(), **self._options)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.transports[handler] = transport
        if len(self.admitted) < self.max_connections:
            self.admitted.add(handler)

    def connection_lost(
        self, handler: web.RequestHandler, exc: BaseException | None = None
    ) -> None:
        self.admitted.discard(handler)
        self.transports.pop(handler, None)
        super().connection_lost(handler, exc)


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
        self._server: asyncio.Server | None = None
        self._web: _Server | None = None
        self._overload_logged = 0.0

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, with a wildcard host shown as loopback."""
        return base_url(self.host, self.port)

    @property
    def addresses(self) -> list[str]:
        """The addresses the listening sockets are bound to, as ``HOST:PORT`` (IPv6 in
        brackets); empty until started."""
        sockets = [] if self._server is None else self._server.sockets
        return list(dict.fromkeys(shown_address(sock.getsockname()) for sock in sockets))

    @property
    def pending_requests(self) -> int:
        """Requests read and waiting behind the one being answered, over all connections
        (pipelining): at most what one read of each connection holds."""
        if self._web is None:
            return 0
        return sum(c.waiting() for c in self._web.connections if isinstance(c, _Connection))

    @property
    def loopback_only(self) -> bool:
        """Whether every listening socket is bound to a loopback address, so that no
        other host can connect."""
        if self._server is None:
            return True
        return all(is_loopback(sock.getsockname()[0]) for sock in self._server.sockets)

    async def start(self) -> None:
        """Start listening."""
        if self._server is not None:
            return
        self._web = _Server(
            self._serve,
            self.max_connections,
            keepalive_timeout=self.idle_timeout,
            access_log=None,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            max_headers=MAX_HEADERS,
            lingering_time=0,  # a refused body is not read on, not even to close politely
            read_bufsize=READ_BUFFER_BYTES,
            auto_decompress=False,  # bodies arrive as sent: no decompression bombs
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._web, self.host, self.port, backlog=1024)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self, timeout: float = 0.0) -> None:
        """Stop listening; give requests in flight ``timeout`` seconds, then drop every
        connection."""
        server, self._server = self._server, None
        web_server, self._web = self._web, None
        if server is None or web_server is None:
            return
        server.close()
        # aiohttp reads a timeout of 0 as none at all: a millisecond is "now".
        await web_server.shutdown(max(timeout, 0.001))
        for transport in list(web_server.transports.values()):
            transport.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        await server.wait_closed()

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

    # --- one request ----------------------------------------------------------

    async def _serve(self, raw: web.BaseRequest) -> web.StreamResponse:
        """Judge ``raw`` from its head, read its body, run the handler, answer."""
        if isinstance(raw.protocol, _Connection):
            raw.protocol.take_up()
        refused = self._refusal(raw)
        if refused is not None:
            return _closing(refused)
        path, query = split_target(raw.raw_path, raw.method)
        headers = joined_headers(raw.raw_headers)
        guard = self.guards.get(path)
        limit = self.max_body_bytes if guard is None else guard.max_body_bytes
        token = None if guard is None else guard.bearer_token
        if token is not None and not bearer_matches(headers.get("authorization"), token):
            return _closing(unauthorized())
        length = raw.content_length
        if length is not None and length > limit:
            return _closing(error_response(413, "request body too large"))
        body = b""
        if raw.body_exists:
            if headers.get("expect", "").lower() == "100-continue":
                await raw.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                read = await asyncio.wait_for(_read_body(raw, limit), self.idle_timeout)
            except asyncio.TimeoutError:
                return _closing(error_response(408, "request body not received in time"))
            except web.RequestPayloadError:
                return _closing(error_response(400, "malformed request body"))
            if read is None:
                return _closing(error_response(413, "request body too large"))
            body = read
        request = Request(raw.method, path, query, headers, body, raw.remote or "")
        try:
            response = await self._handler(request)
        except Exception:
            log.exception(
                "httpserver.handler_failed", extra={"method": request.method, "path": path}
            )
            response = error_response(500, "internal server error")
        return await self._answer(raw, response)

    def _refusal(self, raw: web.BaseRequest) -> Response | None:
        """What to answer ``raw`` from its head alone, before any guard, or None."""
        if self._web is None or raw.protocol not in self._web.admitted:
            now = time.monotonic()
            if now - self._overload_logged >= OVERLOAD_LOG_EVERY or not self._overload_logged:
                self._overload_logged = now
                log.warning("httpserver.too_many_connections")
            return error_response(503, "too many connections")
        if raw.version.major != 1:
            return error_response(505, "HTTP version not supported")
        if head_size(raw.method, raw.raw_path, raw.raw_headers) > MAX_HEAD_BYTES:
            return error_response(431, "request head too large")
        return None

    async def _answer(self, raw: web.BaseRequest, response: Response) -> web.StreamResponse:
        """``response`` as aiohttp's; an abort resets the connection unanswered."""
        if response.abort:
            if raw.transport is not None:
                raw.transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        body = response.body
        try:
            headers = response_headers(response, SERVER_NAME)
        except ValueError:
            log.exception("httpserver.bad_response", extra={"path": raw.path})
            return _plain(error_response(500, "internal server error"))
        if isinstance(body, bytes):
            answer = web.Response(status=response.status, body=body, headers=headers)
            if response.close_connection:
                answer.force_close()
            return answer
        stream = web.StreamResponse(status=response.status, headers=headers)
        if response.close_connection:
            stream.force_close()
        return await _stream(raw, stream, body)


async def _stream(
    raw: web.BaseRequest, answer: web.StreamResponse, body: AsyncIterator[bytes]
) -> web.StreamResponse:
    """Send ``body`` as it comes (chunked in HTTP/1.1), at the pace the client reads."""
    try:
        await answer.prepare(raw)
        if raw.method != "HEAD":
            async for chunk in body:
                if chunk:
                    await answer.write(chunk)
        await answer.write_eof()
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
    return answer


async def _read_body(raw: web.BaseRequest, limit: int) -> bytes | None:
    """The request body, or None once it runs past ``limit`` bytes."""
    parts = []
    size = 0
    while chunk := await raw.content.readany():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)
