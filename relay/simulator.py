"""An in-memory simulator of the Aatrox SMS API v2, for tests, the demo and the benchmark.

API endpoints, behind ``Authorization: Bearer <token>`` (401 otherwise)::

    GET  /api/v2/sms/receive?to=<number>[&from=<number>]
         the last ``listing_limit`` messages received on ``to`` (optionally only those
         from ``from``), oldest first, shaped by the current :class:`WireFormat`.
    GET  /api/v2/sms/{id}                 one message, with its text (404 when unknown)
    POST /api/v2/sms/send                 {"from", "to", "text"} -> {"id", "status": "queued"}
    POST /api/v2/sms/send/disclaimer      the same; appends DISCLAIMER to the text
    POST /api/v2/sms/send/bulk            {"from", "to": [...], "text"} -> {"ids": [...], ...}

Control endpoints, without auth, answered only to loopback clients (403 otherwise)::

    POST /_sim/messages   {"from", "to", "text"[, "received_at"]} -> 201 {"id"}
    GET  /_sim/sent       every send request received, oldest first
    POST /_sim/faults     a Fault's fields (``body`` as text, ``headers`` as pairs or an
                          object) -> 201 {"pending": n}
    PUT  /_sim/wire       some of WireFormat's fields, merged into the current format
    PUT  /_sim/token      {"token"}: the token the API accepts from now on (rotation)
    GET  /_sim/stats      {"requests": {endpoint: count}, "messages", "sent", "faults"}

Inject a message from a shell::

    curl -X POST http://127.0.0.1:PORT/_sim/messages \\
         -d '{"from": "+61400000001", "to": "+61400000002", "text": "hello"}'

Each (to, from) listing is serialised once and served from cache until it changes, so
the simulator answers thousands of requests a second.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeVar

import phonenumbers

from relay.clock import Clock, SystemClock
from relay.errors import ApiInvalidResponse, InvalidNumber
from relay.httpserver import DEFAULT_HOST, Request, Response, Served, json_response
from relay.inbound import parse_timestamp
from relay.phone import normalise

API_PREFIX = "/api/v2"
CONTROL_PREFIX = "/_sim/"
#: Numbers are read as Australian unless they carry a country code.
SIM_REGION = "AU"
DEFAULT_TOKEN = "sim-token"
DEFAULT_LISTING_LIMIT = 1000
#: What /sms/send/disclaimer appends.
DISCLAIMER = " -- Sent via Aatrox"
#: Longest sender a message may be injected with (alphanumeric sender ids are 11).
MAX_SENDER_ID = 32
#: Longest text a send accepts (ten concatenated SMS).
MAX_TEXT_LENGTH = 1600
#: Most recipients one bulk send accepts.
MAX_BULK_RECIPIENTS = 1000
#: Zone of iso_offset and iso_naive times by default: UTC, the relay's default timezone.
DEFAULT_TZ_OFFSET_MINUTES = 0
#: Size of each piece of a streamed fault body.
STREAM_CHUNK_BYTES = 64 * 1024
#: Numbers whose listings are cached at most; the cache starts over beyond.
MAX_CACHED_LISTINGS = 10_000

Envelope = Literal["array", "messages", "data", "results", "items"]
TimeFormat = Literal["iso_z", "iso_offset", "iso_naive", "unix", "unix_ms"]
NumberFormat = Literal["e164", "international", "national"]
IdType = Literal["str", "int"]
ListingShape = Literal["full", "no_text", "no_sender", "id_only"]
ENVELOPES: tuple[Envelope, ...] = ("array", "messages", "data", "results", "items")
ID_TYPES: tuple[IdType, ...] = ("str", "int")
TIME_FORMATS: tuple[TimeFormat, ...] = ("iso_z", "iso_offset", "iso_naive", "unix", "unix_ms")
NUMBER_FORMATS: tuple[NumberFormat, ...] = ("e164", "international", "national")
LISTING_SHAPES: tuple[ListingShape, ...] = ("full", "no_text", "no_sender", "id_only")
#: The key a detail answer wraps its message under, per envelope (None: bare).
_DETAIL_WRAPPERS: dict[str, str | None] = {
    "array": None,
    "messages": "message",
    "data": "data",
    "results": "sms",
    "items": None,
}


@dataclass(frozen=True)
class WireFormat:
    """How the simulator shapes its answers, to exercise every shape the relay tolerates.

    Detail answers (``GET /sms/{id}``) always carry the text (under ``text_key``, or
    "text" when that is None) and are wrapped under "message", "data" or "sms" for the
    messages, data and results envelopes. ``national`` numbers are written in national
    form only when Australian. iso_offset and iso_naive times are written in the zone
    ``tz_offset_minutes`` east of UTC (600 for Australian Eastern Standard Time: a relay
    reading iso_naive times then needs ``timezone`` set to match); iso_naive uses a
    space separator.

    ``listing`` says which fields a listing item carries: ``full`` (all), ``no_text``
    (id, sender, recipient, time), ``no_sender`` (id, recipient, text, time) or
    ``id_only`` (only id and time: "message IDs with timestamps"). Detail answers are
    always full. A ``text_key`` of None is the same as ``no_text``.
    """

    envelope: Envelope = "array"
    id_key: str = "id"
    id_type: IdType = "str"
    from_key: str = "from"
    to_key: str = "to"
    #: None: the listing carries only ids and timestamps; the text only via GET /sms/{id}.
    text_key: str | None = "text"
    time_key: str = "timestamp"
    time_format: TimeFormat = "iso_z"
    number_format: NumberFormat = "e164"
    tz_offset_minutes: int = DEFAULT_TZ_OFFSET_MINUTES
    listing: ListingShape = "full"

    def __post_init__(self) -> None:
        choices = {
            "listing": (self.listing, LISTING_SHAPES),
            "envelope": (self.envelope, ENVELOPES),
            "id_type": (self.id_type, ID_TYPES),
            "time_format": (self.time_format, TIME_FORMATS),
            "number_format": (self.number_format, NUMBER_FORMATS),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                msg = f"{name}: {value!r} is not one of {', '.join(allowed)}"
                raise ValueError(msg)
        keys = [self.id_key, self.from_key, self.to_key, self.time_key]
        if self.text_key is not None:
            keys.append(self.text_key)
        if not all(keys) or len(set(keys)) != len(keys):
            msg = "the id, from, to, text and time keys must be distinct and non-empty"
            raise ValueError(msg)
        if abs(self.tz_offset_minutes) >= 24 * 60:
            msg = f"tz_offset_minutes: {self.tz_offset_minutes} is not within a day"
            raise ValueError(msg)


@dataclass(frozen=True)
class Fault:
    """A failure applied to the next ``count`` API requests whose path starts with ``path``.

    After ``delay`` seconds: ``reset`` drops the connection without an answer; ``size``
    above 0 streams a body of that many bytes (a JSON array padded with spaces) with
    ``status``; otherwise ``status`` is answered with ``body``. A ``status`` of 0 answers
    normally after the delay (a slow but correct API).
    """

    status: int = 500
    body: bytes = b'{"error": "simulated"}'
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    count: int = 1
    path: str = "/api/v2/"
    size: int = 0
    reset: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            msg = f"count: {self.count} is not a positive number of requests"
            raise ValueError(msg)
        if self.status != 0 and not 100 <= self.status <= 999:
            msg = f"status: {self.status} is not an HTTP status"
            raise ValueError(msg)
        if self.delay < 0 or self.size < 0:
            msg = "delay and size cannot be negative"
            raise ValueError(msg)


@dataclass(frozen=True)
class SimMessage:
    """A message the simulator holds as received."""

    id: int
    sender: str  # E.164
    recipient: str  # E.164
    text: str
    received_at: datetime


@dataclass(frozen=True)
class SentRecord:
    """One send request the simulator accepted."""

    #: "send", "send_disclaimer" or "send_bulk".
    endpoint: str
    sender: str  # E.164
    recipients: tuple[str, ...]  # E.164
    #: The text as it would be delivered (with the disclaimer, for send_disclaimer).
    text: str
    #: The provider ids answered, one per recipient.
    ids: tuple[str, ...]


class _BadInput(Exception):
    """A request's parameters are invalid: answer 400 with this message."""


class _PendingFault:
    """A queued fault and how many more requests it applies to."""

    __slots__ = ("fault", "remaining")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.count


class Simulator(Served):
    """The Aatrox API v2, in memory, over real loopback HTTP."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        listing_limit: int = DEFAULT_LISTING_LIMIT,
        wire: WireFormat | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._token = token
        self._auth = f"Bearer {token}".encode()
        self._listing_limit = listing_limit
        self._wire = wire or WireFormat()
        self._messages: dict[int, SimMessage] = {}
        self._by_recipient: dict[str, list[SimMessage]] = {}
        self._next_id = 1
        self._next_sent_id = 1
        self._faults: list[_PendingFault] = []
        # Serialised listings by recipient, then by sender filter (None: no filter).
        self._cache: dict[str, dict[str | None, bytes]] = {}
        #: Every send, send-disclaimer and send-bulk request accepted, oldest first.
        self.sent: list[SentRecord] = []
        #: API requests by endpoint: receive, details, send, send_disclaimer, send_bulk,
        #: unknown.
        self.requests: Counter[str] = Counter()
        #: Receive requests per ``to`` as the client spelled it, for per-number poll rates.
        self.polls: Counter[str] = Counter()
        #: Seconds every ``GET /sms/{id}`` takes before it answers (a slow details API).
        self.details_delay = 0.0

    # --- settings ----------------------------------------------------------

    @property
    def token(self) -> str:
        """The one token the API accepts; set it to simulate a rotation."""
        return self._token

    @token.setter
    def token(self, token: str) -> None:
        self._token = token
        self._auth = f"Bearer {token}".encode()

    @property
    def wire(self) -> WireFormat:
        """How answers are shaped; settable."""
        return self._wire

    @wire.setter
    def wire(self, wire: WireFormat) -> None:
        self._wire = wire
        self._invalidate()

    @property
    def listing_limit(self) -> int:
        """How many of a number's latest messages a listing holds; settable."""
        return self._listing_limit

    @listing_limit.setter
    def listing_limit(self, limit: int) -> None:
        self._listing_limit = limit
        self._invalidate()

    # --- test interface --------------------------------------------------

    def inject(
        self, sender: str, recipient: str, text: str, received_at: datetime | None = None
    ) -> SimMessage:
        """Receive a message; ids count up from 1. Numbers may be in any AU spelling;
        a sender that is not a phone number (``Telstra``, the short code ``1234``) is
        kept as given, as carriers deliver it.

        ``received_at`` defaults to the clock's now, to the millisecond.
        """
        if received_at is None:
            now = self._clock.now()
            received_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
        elif received_at.tzinfo is None:
            msg = "received_at must be timezone-aware"
            raise ValueError(msg)
        message = SimMessage(
            id=self._next_id,
            sender=sender_id(sender),
            recipient=normalise(recipient, SIM_REGION),
            text=text,
            received_at=received_at.astimezone(timezone.utc),
        )
        self._next_id += 1
        self._messages[message.id] = message
        inbox = self._by_recipient.setdefault(message.recipient, [])
        if not inbox or inbox[-1].received_at <= message.received_at:
            inbox.append(message)
        else:
            bisect.insort(inbox, message, key=lambda m: (m.received_at, m.id))
        self._cache.pop(message.recipient, None)
        return message

    def messages(self, recipient: str | None = None) -> list[SimMessage]:
        """Every message held (received on ``recipient``), oldest first."""
        if recipient is None:
            return sorted(self._messages.values(), key=lambda m: (m.received_at, m.id))
        return list(self._by_recipient.get(normalise(recipient, SIM_REGION), []))

    def add_fault(self, fault: Fault) -> None:
        """Queue ``fault``; faults apply in the order added."""
        self._faults.append(_PendingFault(fault))

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many faulty answers are still queued."""
        return sum(pending.remaining for pending in self._faults)

    # --- lifecycle -------------------------------------------------------

    # --- HTTP ------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            if not request.is_loopback():
                return json_response({"error": "control endpoints are loopback only"}, 403)
            try:
                return self._control(request)
            except _BadInput as exc:
                return json_response({"error": str(exc)}, 400)
        if not path.startswith(API_PREFIX + "/"):
            return json_response({"error": "not found"}, 404)
        endpoint = _endpoint(request.method, path[len(API_PREFIX) :])
        self.requests[endpoint] += 1
        if self._faults:
            fault = self._take_fault(path)
            if fault is not None:
                answer = await self._fault_response(fault)
                if answer is not None:
                    return answer
        auth = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(auth, self._auth):
            return json_response(
                {"error": "unauthorized"}, 401, [("WWW-Authenticate", 'Bearer realm="aatrox"')]
            )
        try:
            if endpoint == "receive":
                self.polls[request.query.get("to", "")] += 1
                return self._receive(request)
            if endpoint == "details":
                if self.details_delay:
                    await asyncio.sleep(self.details_delay)
                return self._details(path[len(API_PREFIX) + len("/sms/") :])
            if endpoint in ("send", "send_disclaimer", "send_bulk"):
                return self._send(endpoint, request.body)
        except _BadInput as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response({"error": "not found"}, 404)

    def _take_fault(self, path: str) -> Fault | None:
        for pending in self._faults:
            if path.startswith(pending.fault.path):
                pending.remaining -= 1
                if pending.remaining <= 0:
                    self._faults.remove(pending)
                return pending.fault
        return None

    async def _fault_response(self, fault: Fault) -> Response | None:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.reset:
            return Response(abort=True)
        if fault.status == 0:
            return None
        headers = list(fault.headers)
        if fault.size > 0:
            body: bytes | AsyncIterator[bytes] = _padded_array(fault.size)
            return Response(fault.status, body, headers, fault.content_type)
        return Response(fault.status, fault.body, headers, fault.content_type)

    def _receive(self, request: Request) -> Response:
        to = request.query.get("to")
        if not to:
            raise _BadInput("missing parameter: to")
        recipient = _number(to, "to")
        sender_param = request.query.get("from")
        sender = _number(sender_param, "from") if sender_param else None
        by_sender = self._cache.get(recipient)
        body = by_sender.get(sender) if by_sender is not None else None
        if body is None:
            body = self._render_listing(recipient, sender)
            if len(self._cache) >= MAX_CACHED_LISTINGS:
                self._cache.clear()
            self._cache.setdefault(recipient, {})[sender] = body
        return Response(body=body)

    def _render_listing(self, recipient: str, sender: str | None) -> bytes:
        inbox = self._by_recipient.get(recipient, [])
        if sender is not None:
            inbox = [m for m in inbox if m.sender == sender]
        if self._listing_limit >= 0:
            inbox = inbox[-self._listing_limit :] if self._listing_limit else []
        wire = self._wire
        shape = "no_text" if wire.text_key is None and wire.listing == "full" else wire.listing
        items = [_render(m, wire, shape) for m in inbox]
        payload: object = items if wire.envelope == "array" else {wire.envelope: items}
        return _dumps(payload)

    def _details(self, raw_id: str) -> Response:
        is_number = raw_id.isascii() and raw_id.isdigit() and len(raw_id) < 19
        message = self._messages.get(int(raw_id)) if is_number else None
        if message is None:
            return json_response({"error": "message not found"}, 404)
        wire = self._wire
        item = _render(message, wire, "full")
        wrapper = _DETAIL_WRAPPERS[wire.envelope]
        return Response(body=_dumps(item if wrapper is None else {wrapper: item}))

    def _send(self, endpoint: str, raw: bytes) -> Response:
        body = _json_object(raw)
        sender = _number(_field(body, "from", str), "from")
        text = _field(body, "text", str)
        if not text or len(text) > MAX_TEXT_LENGTH:
            raise _BadInput(f"text: must be 1 to {MAX_TEXT_LENGTH} characters")
        if endpoint == "send_bulk":
            raw_to = _field(body, "to", list)
            if not raw_to or len(raw_to) > MAX_BULK_RECIPIENTS:
                raise _BadInput(f"to: must list 1 to {MAX_BULK_RECIPIENTS} numbers")
            if not all(isinstance(number, str) for number in raw_to):
                raise _BadInput("to: must list strings")
            recipients = tuple(_number(number, "to") for number in raw_to)
        else:
            recipients = (_number(_field(body, "to", str), "to"),)
        if endpoint == "send_disclaimer":
            text += DISCLAIMER
        ids = tuple(self._sent_id() for _ in recipients)
        self.sent.append(SentRecord(endpoint, sender, recipients, text, ids))
        if endpoint == "send_bulk":
            return json_response({"ids": list(ids), "status": "queued"})
        return json_response({"id": ids[0], "status": "queued"})

    def _sent_id(self) -> str:
        sent_id = f"out-{self._next_sent_id}"
        self._next_sent_id += 1
        return sent_id

    def _invalidate(self) -> None:
        self._cache.clear()

    # --- control endpoints -------------------------------------------------

    def _control(self, request: Request) -> Response:
        route = (request.method, request.path[len(CONTROL_PREFIX) :].rstrip("/"))
        if route == ("POST", "messages"):
            body = _json_object(request.body)
            received_at = None
            if body.get("received_at") is not None:
                try:
                    received_at = parse_timestamp(body["received_at"], timezone.utc)
                except ApiInvalidResponse as exc:
                    raise _BadInput(f"received_at: {exc}") from None
            sender = _field(body, "from", str)
            if not sender.strip() or len(sender) > MAX_SENDER_ID or not sender.isprintable():
                raise _BadInput("from: not a phone number or sender id")
            recipient = _number(_field(body, "to", str), "to")
            message = self.inject(sender, recipient, _field(body, "text", str), received_at)
            return json_response({"id": str(message.id)}, 201)
        if route == ("GET", "sent"):
            return json_response([_sent_json(record) for record in self.sent])
        if route == ("POST", "faults"):
            self.add_fault(_fault_from_json(_json_object(request.body)))
            return json_response({"pending": self.pending_faults}, 201)
        if route == ("PUT", "wire"):
            self.wire = _wire_from_json(_json_object(request.body), self._wire)
            return json_response(dataclasses.asdict(self._wire))
        if route == ("PUT", "token"):
            token = _field(_json_object(request.body), "token", str)
            if not token.strip():
                raise _BadInput("token: must not be empty")
            self.token = token
            return Response(status=204)
        if route == ("GET", "stats"):
            return json_response(
                {
                    "requests": dict(self.requests),
                    "polls": dict(self.polls),
                    "messages": len(self._messages),
                    "sent": len(self.sent),
                    "faults": self.pending_faults,
                }
            )
        return json_response({"error": "no such control endpoint"}, 404)


async def serve(port: int, token: str, *, host: str = DEFAULT_HOST) -> None:
    """Run a simulator on ``host``:``port`` until cancelled (``aatrox-relay simulate``)."""
    simulator = Simulator(token=token)
    await simulator.start(host, port)
    try:
        url = simulator.url
        example = '{"from": "+61400000001", "to": "+61400000002", "text": "hello"}'
        print(
            f"Aatrox API simulator on {url} (API under {API_PREFIX}/, token as given); "
            f"inject a message: curl -X POST {url}/_sim/messages -d '{example}'",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await simulator.close()


# --- rendering -----------------------------------------------------------


def _endpoint(method: str, rest: str) -> str:
    """The endpoint name of an API path (without /api/v2)."""
    if method == "GET":
        if rest == "/sms/receive":
            return "receive"
        if rest.startswith("/sms/") and "/" not in rest[5:] and len(rest) > 5:
            return "details"
    elif method == "POST":
        if rest == "/sms/send":
            return "send"
        if rest == "/sms/send/disclaimer":
            return "send_disclaimer"
        if rest == "/sms/send/bulk":
            return "send_bulk"
    return "unknown"


def _render(message: SimMessage, wire: WireFormat, shape: ListingShape) -> dict[str, object]:
    item: dict[str, object] = {
        wire.id_key: message.id if wire.id_type == "int" else str(message.id)
    }
    if shape in ("full", "no_text"):
        item[wire.from_key] = _format_number(message.sender, wire.number_format)
    if shape != "id_only":
        item[wire.to_key] = _format_number(message.recipient, wire.number_format)
    if shape in ("full", "no_sender"):
        item[wire.text_key or "text"] = message.text
    item[wire.time_key] = _format_time(message.received_at, wire)
    return item


def _format_number(number: str, number_format: str) -> str:
    if number_format == "e164" or not number.startswith("+"):  # e.g. an alphanumeric sender
        return number
    if number_format == "international":
        return number[1:]
    if number.startswith("+61"):
        parsed = phonenumbers.parse(number)
        national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
        return "".join(char for char in national if char.isdigit())
    return number


def _format_time(when: datetime, wire: WireFormat) -> object:
    fmt = wire.time_format
    if fmt in ("unix", "unix_ms"):
        delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
        micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        if fmt == "unix":
            return micros // 1_000_000 if micros % 1_000_000 == 0 else micros / 1_000_000
        return micros // 1000 if micros % 1000 == 0 else micros / 1000
    spec = "seconds"
    if when.microsecond:
        spec = "milliseconds" if when.microsecond % 1000 == 0 else "microseconds"
    if fmt == "iso_z":
        return when.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec=spec) + "Z"
    local = when.astimezone(timezone(timedelta(minutes=wire.tz_offset_minutes)))
    if fmt == "iso_offset":
        return local.isoformat(timespec=spec)
    return local.replace(tzinfo=None).isoformat(sep=" ", timespec=spec)


async def _padded_array(size: int) -> AsyncIterator[bytes]:
    """``[`` + spaces + ``]``: a valid JSON empty array exactly ``size`` bytes long."""
    if size < 2:
        yield b" " * size
        return
    remaining = size - 2
    yield b"["
    block = b" " * STREAM_CHUNK_BYTES
    while remaining > 0:
        piece = block if remaining >= len(block) else block[:remaining]
        remaining -= len(piece)
        yield piece
    yield b"]"


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _sent_json(record: SentRecord) -> dict[str, object]:
    return {
        "endpoint": record.endpoint,
        "from": record.sender,
        "to": list(record.recipients),
        "text": record.text,
        "ids": list(record.ids),
    }


# --- request validation ----------------------------------------------------


def _json_object(raw: bytes) -> dict[str, object]:
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        raise _BadInput("body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadInput("body must be a JSON object")
    return body


_T = TypeVar("_T")


def _field(body: dict[str, object], name: str, kind: type[_T]) -> _T:
    value = body.get(name)
    if not isinstance(value, kind):
        raise _BadInput(f"{name}: missing or not a {kind.__name__}")
    return value


def sender_id(value: str) -> str:
    """A sender as the simulator keeps it: E.164 when it is a phone number, else as given."""
    try:
        return normalise(value, SIM_REGION)
    except InvalidNumber:
        return value.strip()


def _number(value: str, name: str) -> str:
    try:
        return normalise(value, SIM_REGION)
    except InvalidNumber:
        raise _BadInput(f"{name}: not a phone number") from None


_FAULT_TYPES: dict[str, type | tuple[type, ...]] = {
    "status": int,
    "body": str,
    "content_type": str,
    "headers": (list, dict),
    "delay": (int, float),
    "count": int,
    "path": str,
    "size": int,
    "reset": bool,
}
_WIRE_TYPES: dict[str, type | tuple[type, ...]] = {
    "envelope": str,
    "id_key": str,
    "id_type": str,
    "from_key": str,
    "to_key": str,
    "text_key": (str, type(None)),
    "time_key": str,
    "time_format": str,
    "number_format": str,
    "tz_offset_minutes": int,
    "listing": str,
}


def _check_fields(body: dict[str, object], types: dict[str, type | tuple[type, ...]]) -> None:
    for name, value in body.items():
        expected = types.get(name)
        if expected is None:
            raise _BadInput(f"{name}: unknown field (known: {', '.join(types)})")
        if isinstance(value, bool) and expected is not bool:
            raise _BadInput(f"{name}: wrong type")
        if not isinstance(value, expected):
            raise _BadInput(f"{name}: wrong type")


def _fault_from_json(body: dict[str, object]) -> Fault:
    _check_fields(body, _FAULT_TYPES)
    fields: dict[str, Any] = dict(body)
    if isinstance(fields.get("body"), str):
        fields["body"] = fields["body"].encode()
    headers = body.get("headers")
    if isinstance(headers, dict):
        fields["headers"] = tuple((str(k), str(v)) for k, v in headers.items())
    elif isinstance(headers, list):
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in headers):
            raise _BadInput("headers: must be an object or a list of [name, value] pairs")
        fields["headers"] = tuple((str(pair[0]), str(pair[1])) for pair in headers)
    if "delay" in fields:
        fields["delay"] = float(fields["delay"])
    try:
        return Fault(**fields)
    except ValueError as exc:
        raise _BadInput(str(exc)) from None


def _wire_from_json(body: dict[str, object], current: WireFormat) -> WireFormat:
    _check_fields(body, _WIRE_TYPES)
    fields: dict[str, Any] = dict(body)
    try:
        return dataclasses.replace(current, **fields)
    except ValueError as exc:
        raise _BadInput(str(exc)) from None
