"""What an HTTP handler sees and answers: :class:`Request`, :class:`Response`, a path's
:class:`Guard`, and their helpers.

A handler is ``async def handle(request: Request) -> Response``. The server that runs
one is :class:`relay.httpd.HttpServer` (aiohttp underneath); this module imports no
server library, so the relay loads one only when ``[http] listen`` asks it to serve.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_HOST = "127.0.0.1"
#: Largest request body accepted (413 beyond).
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: A connection that sends no complete request for this long is closed.
DEFAULT_IDLE_TIMEOUT = 60.0
#: Largest request line plus headers accepted (431 beyond).
MAX_HEAD_BYTES = 64 * 1024
#: Longest request line, and longest header line (name and value), accepted (431 beyond).
MAX_LINE_BYTES = 8190
#: Most header lines a request may carry (431 beyond).
MAX_HEADERS = 64
#: Most connections open at once; a request on a connection beyond is answered 503.
DEFAULT_MAX_CONNECTIONS = 4096
#: The authentication scheme a :class:`Guard` with a token requires (any case, RFC 9110).
BEARER = "bearer"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


def is_loopback(host: str) -> bool:
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
        return is_loopback(self.client)


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

    Without the bearer token it is answered 401, with a larger announced body (or a body
    running past the limit as it is read) 413; either way the connection is closed.
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


def error_response(status: int, reason: str) -> Response:
    """``{"error": reason}`` with ``status``."""
    return json_response({"error": reason}, status)


def response_headers(response: Response, server: str) -> list[tuple[str, str]]:
    """The headers to send for ``response``, with ``Server: server``: its own less the
    framing ones, and its content type unless it has no body. ValueError for a status
    out of range or a header name or value that HTTP cannot carry."""
    status = response.status
    if not 100 <= status <= 999:
        msg = f"HTTP status {status} is out of range"
        raise ValueError(msg)
    headers: list[tuple[str, str]] = []
    has_type = False
    for name, value in response.headers:
        lower = name.lower()
        if lower in _FRAMING_HEADERS:
            continue
        if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value or "\0" in value:
            msg = f"invalid response header {name!r}"
            raise ValueError(msg)
        has_type = has_type or lower == "content-type"
        headers.append((name, value))
    if not has_type and response.content_type and status >= 200 and status not in (204, 304):
        headers.append(("Content-Type", response.content_type))
    headers.append(("Server", server))
    return headers


def split_target(target: str, method: str) -> tuple[str, dict[str, str]]:
    """The percent-decoded path of a request target (origin or absolute form) and the
    first value of each of its query parameters."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        path = path.partition("#")[0]
    elif target.startswith(("http://", "https://")):
        split = urlsplit(target)
        path, query = split.path or "/", split.query
    elif target == "*" and method == "OPTIONS":
        path, query = "*", ""
    else:
        path, query = target, ""
    if "%" in path:
        path = unquote(path)
    params: dict[str, str] = {}
    if query:
        for key, value in parse_qsl(query, keep_blank_values=True):
            params.setdefault(key, value)
    return path, params


def joined_headers(pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Raw header lines as :attr:`Request.headers`: names in lower case, repeated ones
    joined with ", ", both read as Latin-1."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    return headers


def head_size(method: str, target: str, pairs: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of a request head in bytes (its request line and header lines), as sent
    but for the spaces around header values."""
    return len(method) + len(target) + 12 + sum(len(n) + len(v) + 4 for n, v in pairs)


def base_url(host: str, port: int) -> str:
    """``http://HOST:PORT``, with a wildcard host shown as loopback (127.0.0.1, ::1)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def shown_address(sockname: Any) -> str:
    """A bound socket's name as ``HOST:PORT``, an IPv6 host in brackets."""
    host, port = sockname[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
