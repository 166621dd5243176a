"""The Aatrox SMS API v2 client.

Over 400 lines: one endpoint's call each, and the one request path they share (the
budget, the connection, the capped read, and what each failure means for a send).

Keep-alive connections per :class:`AatroxClient`, one per request in flight
(:mod:`relay.connections`).
Every answer is read as a stream and abandoned once it grows past
``api.max_response_bytes``, counted once decoded (:mod:`relay.decoding`). Every failure
becomes an :class:`~relay.errors.ApiError` whose message is one line such as
``GET /sms/receive: 503 Service Unavailable``: never the token, never message text,
never a full phone number.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Callable, Container, Mapping, Sequence
from contextlib import aclosing
from datetime import timezone
from http import HTTPStatus
from types import TracebackType
from urllib.parse import quote

import httpx

from relay import __version__, decoding, redact
from relay.budget import Budget
from relay.clock import Clock, SystemClock
from relay.config import ApiConfig
from relay.connections import Connections
from relay.errors import (
    ApiBadRequest,
    ApiConnectionError,
    ApiError,
    ApiInvalidResponse,
    ApiNotFound,
    ApiOutcomeUnknown,
    ApiRateLimited,
    ApiResponseTooLarge,
    ApiServerError,
    ApiTimeout,
    ApiUnauthorized,
    ConfigError,
)
from relay.inbound import InboundMessage, Listing, parse_detail, parse_listing
from relay.phone import mask
from relay.retry import parse_retry_after

API_PREFIX = "/api/v2"
DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_USER_AGENT = f"aatrox-relay/{__version__}"
#: How much of an error answer is read, for the provider's explanation.
#: A 2xx body of declared length up to this is read in one go.
SMALL_BODY = 64 * 1024
ERROR_BODY_LIMIT = 64 * 1024
#: Longest provider explanation quoted in an error message.
DETAIL_LIMIT = 200
#: Keys of an error answer that may hold the provider's explanation.
DETAIL_KEYS = ("error", "message", "detail", "error_description")

#: Transport failures after which a request may have reached the API: it was (or may
#: have been) written and no answer came. A server closing a kept-alive connection
#: before reading our request also ends in RemoteProtocolError: ambiguous, so unknown.
#: Every other failure (ConnectError, ConnectTimeout, PoolTimeout...) is before sending.
MAYBE_SENT: tuple[type[httpx.HTTPError], ...] = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.CloseError,
    httpx.RemoteProtocolError,
)

#: Told when a send is about to go out (see :meth:`AatroxClient.send`).
OnWire = Callable[[], None] | None
#: How an error message says that a send's outcome is unknown.
MAY_BE_SENT = "; the API may have accepted it"

# Digit runs that may be phone numbers, to mask in quoted provider messages.
_PHONE_LIKE = re.compile(r"\+?\d(?:[ -]?\d){6,}")


class AatroxClient:
    """Talks to the Aatrox API over keep-alive connections, at most ``max_connections``
    requests at once, each on a client of its own (:mod:`relay.connections`), every
    request paced by :attr:`budget` (:mod:`relay.budget`; the poller takes a poll's
    grant itself)."""

    def __init__(
        self,
        config: ApiConfig,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        user_agent: str = DEFAULT_USER_AGENT,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        budget: Budget | None = None,
    ) -> None:
        self._config = config
        self._region = config.default_region
        self._tz = config.timezone or timezone.utc
        self._limit = config.max_response_bytes
        self._timeout = config.timeout
        self._clock: Clock = clock or SystemClock()
        #: Paces every request (none given: no limit but 429s'); on_request counts them.
        self.budget = budget or Budget(None, self._clock)
        self.on_request: Callable[[str, str], None] = lambda _endpoint, _outcome: None
        _check_token(config.token)
        self._token = config.token
        self._headers = {
            "Authorization": f"Bearer {config.token}",
            "User-Agent": user_agent,
            "Accept": "application/json",
            "Accept-Encoding": decoding.ACCEPT_ENCODING,
        }
        base_url = config.base_url.rstrip("/") + API_PREFIX
        verify = _verify(config)
        if verify is True:  # loaded once, not once per connection
            verify = httpx.create_ssl_context()

        def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=base_url,
                headers=self._headers,
                timeout=httpx.Timeout(config.timeout),
                verify=verify,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                transport=transport,
            )

        self._connections = Connections(max_connections, make, config.timeout)

    def set_token(self, token: str) -> bool:
        """Use ``token`` from the next request on (token rotation); whether it changed."""
        _check_token(token)
        if token == self._token:
            return False
        redact.add_secret(token)  # a token read again after a 401 is filtered like the first
        self._token = token
        self._headers["Authorization"] = f"Bearer {token}"
        for client in self._connections.clients:
            client.headers["Authorization"] = f"Bearer {token}"
        return True

    async def receive(
        self, number: str, sender: str | None = None, *, known: Container[str] = ()
    ) -> Listing:
        """``GET /sms/receive``: the messages the API lists for ``number``.

        Items whose text the listing left out come back with ``text=None``; fetch
        those with :meth:`details`. Items with an id in ``known`` are only counted.
        """
        label = "GET /sms/receive"
        params = {"to": number} if sender is None else {"to": number, "from": sender}
        payload = await self._call(
            "GET", "/sms/receive", label, "receive", params=params, need_body=True
        )
        try:
            return parse_listing(
                payload, number=number, region=self._region, tz=self._tz, known=known
            )
        except ApiInvalidResponse as exc:
            msg = f"{label}: {exc}"
            raise ApiInvalidResponse(msg) from None

    async def details(self, message_id: str, *, number: str | None = None) -> InboundMessage:
        """``GET /sms/{id}``: one message, with its text when the API has it."""
        label = f"GET /sms/{_short(message_id)}"
        path = f"/sms/{quote(message_id, safe='')}"
        payload = await self._call("GET", path, label, "details", need_body=True)
        try:
            message = parse_detail(
                payload, number=number, region=self._region, tz=self._tz, message_id=message_id
            )
        except ApiInvalidResponse as exc:
            msg = f"{label}: {exc}"
            raise ApiInvalidResponse(msg) from None
        if message.id != message_id:
            msg = f"{label}: the answer is about message {_short(message.id)}"
            raise ApiInvalidResponse(msg)
        return message

    async def send(
        self, sender: str, recipient: str, text: str, on_wire: OnWire = None
    ) -> dict[str, object]:
        """``POST /sms/send``; returns the API's answer (e.g. the new message's id).

        ``on_wire``, for each send: called once the request is about to go out (past the
        API budget's wait); until then, nothing of it has left the relay."""
        body = {"from": sender, "to": recipient, "text": text}
        return await self._post("/sms/send", body, text, "send", on_wire)

    async def send_disclaimer(
        self, sender: str, recipient: str, text: str, on_wire: OnWire = None
    ) -> dict[str, object]:
        """``POST /sms/send/disclaimer``: the API appends the sender's disclaimer."""
        body = {"from": sender, "to": recipient, "text": text}
        return await self._post("/sms/send/disclaimer", body, text, "send_disclaimer", on_wire)

    async def send_bulk(
        self, sender: str, recipients: Sequence[str], text: str, on_wire: OnWire = None
    ) -> dict[str, object]:
        """``POST /sms/send/bulk``: one text to several recipients."""
        body = {"from": sender, "to": list(recipients), "text": text}
        return await self._post("/sms/send/bulk", body, text, "send_bulk", on_wire)

    async def aclose(self) -> None:
        """Close the kept-alive connections."""
        await self._connections.aclose()

    async def __aenter__(self) -> AatroxClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- internals -------------------------------------------------------

    async def _post(
        self, path: str, body: Mapping[str, object], text: str, endpoint: str, on_wire: OnWire
    ) -> dict[str, object]:
        """A send: its outcome is :class:`ApiOutcomeUnknown` whenever it may have been
        accepted without the relay being told so, never a retryable error."""
        label = f"POST {path}"
        payload = await self._call(
            "POST", path, label, endpoint, json_body=body, secret=text, once=True, on_wire=on_wire
        )
        if payload is None:
            return {}
        if not isinstance(payload, dict):
            msg = f"{label}: expected a JSON object, got {type(payload).__name__}{MAY_BE_SENT}"
            raise ApiOutcomeUnknown(msg)
        return payload

    async def _call(
        self,
        method: str,
        path: str,
        label: str,
        endpoint: str,
        *,
        params: dict[str, str] | None = None,
        json_body: object = None,
        need_body: bool = False,
        secret: str | None = None,
        once: bool = False,
        on_wire: OnWire = None,
    ) -> object:
        """Make one request; the decoded JSON answer (None for an empty 2xx body).

        ``once`` marks a request that must not be repeated blindly (a send): a failure
        after it may have reached the API (see :data:`MAYBE_SENT`), or a 2xx answer that
        cannot be read, raises :class:`ApiOutcomeUnknown`. A failure before anything was
        sent, and an error status, raise as for any other request.

        ``endpoint`` names it for the metrics; all but ``receive`` wait for an urgent grant
        (not past a 429's pause longer than ``api.timeout``: that raises, nothing sent).
        """
        if endpoint != "receive" and (paused := await self.budget.urgent(self._timeout)):
            msg = f"{label}: not sent: a 429 holds every request for another {paused:.0f}s"
            raise ApiRateLimited(msg, retry_after=paused)
        accepted = False  # a 2xx status line arrived
        try:
            async with self._connections.client() as client:
                request = client.build_request(method, path, params=params, json=json_body)
                if on_wire is not None:
                    on_wire()
                response = await client.send(request, stream=True)
                try:
                    status = response.status_code
                    ok = accepted = 200 <= status < 300
                    data = await self._read(response, label, ok)
                finally:
                    await response.aclose()
        except (httpx.HTTPError, ApiError) as exc:
            self.on_request(endpoint, "failed")
            if once and (accepted or isinstance(exc, MAYBE_SENT)):
                raise self._unknown(label, exc) from None
            if isinstance(exc, ApiError):
                raise
            raise self._transport_error(label, exc) from None
        if status != 429:
            self.budget.answered()
        if not ok:
            error = self._status_error(response, data, label, secret)
            if isinstance(error, ApiRateLimited):
                self.budget.throttled(error.retry_after)
                self.on_request(endpoint, "rate_limited")
            else:
                self.on_request(endpoint, "server_error" if status >= 500 else "client_error")
            raise error
        self.on_request(endpoint, "ok")
        if not data:
            if need_body:
                msg = f"{label}: {_status_text(response)} with an empty body"
                raise ApiInvalidResponse(msg)
            return None
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            content_type = _one_line(response.headers.get("content-type", "")) or "none"
            msg = (
                f"{label}: {_status_text(response)} answer is not JSON "
                f"(content-type {content_type[:60]})"
            )
            if once:
                raise ApiOutcomeUnknown(msg + MAY_BE_SENT) from None
            raise ApiInvalidResponse(msg) from None

    def _transport_error(self, label: str, exc: httpx.HTTPError) -> Exception:
        """The ApiError for a failed exchange (``exc`` itself when it is no transport error)."""
        if isinstance(exc, httpx.TimeoutException):
            msg = f"{label}: no answer within {self._timeout:g}s ({type(exc).__name__})"
            return ApiTimeout(msg)
        if isinstance(exc, httpx.DecodingError):
            msg = f"{label}: the answer's content-encoding does not decode"
            return ApiInvalidResponse(msg)
        if isinstance(exc, httpx.TransportError):
            msg = f"{label}: connection failed ({type(exc).__name__}: {_one_line(str(exc))})"
            return ApiConnectionError(msg)
        return exc

    def _unknown(self, label: str, exc: Exception) -> ApiOutcomeUnknown:
        """The request went out (or a 2xx began) and ``exc`` cut the exchange short."""
        if isinstance(exc, ApiError):
            what = str(exc).removeprefix(f"{label}: ")
        elif isinstance(exc, httpx.TimeoutException):
            what = f"sent, but no answer within {self._timeout:g}s ({type(exc).__name__})"
        else:
            what = f"sent, but the exchange failed ({type(exc).__name__}: {_one_line(str(exc))})"
        return ApiOutcomeUnknown(f"{label}: {what.rstrip()}{MAY_BE_SENT}")

    async def _read(self, response: httpx.Response, label: str, ok: bool) -> bytes:
        """The body as a stream, decoded, within ``api.max_response_bytes`` (counted once
        decoded: see :mod:`relay.decoding`) and ``api.timeout``.

        A 2xx body past either limit, or whose content-encoding does not decode, raises.
        Another body is only read for the provider's explanation: its first
        :data:`ERROR_BODY_LIMIT` decoded bytes, best effort.
        """
        limit = self._limit if ok else ERROR_BODY_LIMIT
        declared = response.headers.get("content-length", "")
        encoded = decoding.is_encoded(response)
        if ok and declared.isdigit():
            if int(declared) > limit:
                msg = (
                    f"{label}: the answer's {declared} bytes exceed "
                    f"api.max_response_bytes ({limit})"
                )
                raise ApiResponseTooLarge(msg)
            if int(declared) <= SMALL_BODY and not encoded:
                # The common case (an idle poll): a small plain body of known size, one
                # read. httpx stops at the declared length and decodes nothing: the cap holds.
                return await response.aread()
        deadline = time.monotonic() + self._timeout
        parts: list[bytes] = []
        size = 0
        try:
            async with aclosing(decoding.aiter_decoded(response)) as chunks:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        if ok:
                            decoded = " once decoded" if encoded else ""
                            msg = (
                                f"{label}: the answer exceeds api.max_response_bytes "
                                f"({limit}){decoded}; stopped reading"
                            )
                            raise ApiResponseTooLarge(msg)
                        parts.append(chunk[: len(chunk) - (size - limit)])
                        break
                    parts.append(chunk)
                    if time.monotonic() > deadline:
                        if ok:
                            msg = f"{label}: the answer did not arrive within {self._timeout:g}s"
                            raise ApiTimeout(msg)
                        break
        except httpx.HTTPError:
            if ok:
                raise
        except decoding.UndecodableBody as exc:
            if ok:
                msg = f"{label}: the answer's {exc}"
                raise ApiInvalidResponse(msg) from None
        return b"".join(parts)

    def _status_error(
        self, response: httpx.Response, data: bytes, label: str, secret: str | None
    ) -> ApiError:
        status = response.status_code
        text = f"{label}: {_status_text(response)}"
        if 300 <= status < 400:
            return ApiError(f"{text} (redirects are not followed)", status=status)
        detail = self._detail(data, secret)
        if detail:
            text = f"{text} ({detail})"
        if status == 400:
            return ApiBadRequest(text)
        if status == 401:
            return ApiUnauthorized(f"{text}: the Aatrox API rejected the token")
        if status == 404:
            return ApiNotFound(text)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock.now())
            return ApiRateLimited(text, retry_after=retry_after)
        if status >= 500:
            return ApiServerError(text, status=status)
        return ApiError(text, status=status)

    def _detail(self, data: bytes, secret: str | None) -> str:
        """The provider's short explanation from a JSON error body, made safe to log."""
        try:
            payload = json.loads(data) if data else None
        except (ValueError, RecursionError):
            return ""
        detail = ""
        for _ in range(2):
            if not isinstance(payload, dict):
                break
            value = next((payload[key] for key in DETAIL_KEYS if key in payload), None)
            if isinstance(value, str):
                detail = value
                break
            payload = value
        detail = _one_line(detail)
        for hidden in (self._token, secret):
            if hidden and hidden in detail:
                detail = detail.replace(hidden, "***")
        detail = _PHONE_LIKE.sub(lambda match: mask(match.group()), detail)
        if len(detail) > DETAIL_LIMIT:
            detail = detail[: DETAIL_LIMIT - 3] + "..."
        return detail


def _check_token(token: str) -> None:
    if not token.strip() or any(char in token for char in "\r\n\x00"):
        msg = "api.token: empty or not a single line"
        raise ConfigError(msg)


def _verify(config: ApiConfig) -> ssl.SSLContext | bool:
    """TLS verification: the system's CAs, or ``api.ca_bundle`` when set."""
    if config.ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(config.ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        msg = f"api.ca_bundle: cannot load {config.ca_bundle}: {exc}"
        raise ConfigError(msg) from None


def _status_text(response: httpx.Response) -> str:
    status = response.status_code
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = _one_line(response.reason_phrase)[:60]
    return f"{status} {phrase}".rstrip()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _short(message_id: str) -> str:
    """A message id fit for an error message."""
    text = _one_line(message_id)
    return text if len(text) <= 40 else text[:37] + "..."
