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
    PUT  /_sim/rate_limit {"per_second": N or null}: answer 429 (with Retry-After) to a
                          token's requests past N a second (:class:`RateLimit`)
    GET  /_sim/stats      {"requests": {endpoint: count}, "messages", "sent", "faults",
                          "limited"}

Inject a message from a shell::

    curl -X POST http://127.0.0.1:PORT/_sim/messages \\
         -d '{"from": "+61400000001", "to": "+61400000002", "text": "hello"}'

Each (to, from) listing is serialised once and served from cache until it changes, so
the simulator answers thousands of requests a second. The shapes of its answers are in
:mod:`relay.testing.wire`, its faults in :mod:`relay.testing.faults`, and the reading of
what it is sent in :mod:`relay.testing.payloads`.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import hmac
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

from relay.clock import Clock, SystemClock
from relay.errors import ApiInvalidResponse
from relay.http import DEFAULT_HOST, Request, Response, json_response
from relay.inbound import parse_timestamp
from relay.phone import normalise
from relay.testing.faults import Fault, PendingFault, RateLimit, fault_response, retry_after
from relay.testing.payloads import (
    BadInput,
    fault_from_json,
    json_field,
    json_object,
    phone_number,
    sender_id,
    wire_from_json,
)
from relay.testing.served import Served
from relay.testing.wire import SIM_REGION, SimMessage, WireFormat, detail_body, listing_body

API_PREFIX = "/api/v2"
CONTROL_PREFIX = "/_sim/"
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
#: Numbers whose listings are cached at most; the cache starts over beyond.
MAX_CACHED_LISTINGS = 10_000


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
        self._faults: list[PendingFault] = []
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
        #: The per-token rate limit, when there is one; its 429s are counted in ``limited``.
        self.rate_limit: RateLimit | None = None
        self.limited = 0

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
        self._faults.append(PendingFault(fault))

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many faulty answers are still queued."""
        return sum(pending.remaining for pending in self._faults)

    # --- HTTP ------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            if not request.is_loopback():
                return json_response({"error": "control endpoints are loopback only"}, 403)
            try:
                return self._control(request)
            except BadInput as exc:
                return json_response({"error": str(exc)}, 400)
        if not path.startswith(API_PREFIX + "/"):
            return json_response({"error": "not found"}, 404)
        endpoint = _endpoint(request.method, path[len(API_PREFIX) :])
        self.requests[endpoint] += 1
        if self._faults:
            fault = self._take_fault(path)
            if fault is not None:
                answer = await fault_response(fault)
                if answer is not None:
                    return answer
        auth = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(auth, self._auth):
            return json_response(
                {"error": "unauthorized"}, 401, [("WWW-Authenticate", 'Bearer realm="aatrox"')]
            )
        if self.rate_limit is not None:
            wait = self.rate_limit.admit(auth, self._clock.monotonic())
            if wait:
                self.limited += 1
                headers = [("Retry-After", retry_after(wait))]
                return json_response({"error": "rate limit exceeded"}, 429, headers)
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
        except BadInput as exc:
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

    def _receive(self, request: Request) -> Response:
        to = request.query.get("to")
        if not to:
            raise BadInput("missing parameter: to")
        recipient = phone_number(to, "to")
        sender_param = request.query.get("from")
        sender = phone_number(sender_param, "from") if sender_param else None
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
        return listing_body(inbox, self._wire)

    def _details(self, raw_id: str) -> Response:
        is_number = raw_id.isascii() and raw_id.isdigit() and len(raw_id) < 19
        message = self._messages.get(int(raw_id)) if is_number else None
        if message is None:
            return json_response({"error": "message not found"}, 404)
        return Response(body=detail_body(message, self._wire))

    def _send(self, endpoint: str, raw: bytes) -> Response:
        body = json_object(raw)
        sender = phone_number(json_field(body, "from", str), "from")
        text = json_field(body, "text", str)
        if not text or len(text) > MAX_TEXT_LENGTH:
            raise BadInput(f"text: must be 1 to {MAX_TEXT_LENGTH} characters")
        if endpoint == "send_bulk":
            raw_to = json_field(body, "to", list)
            if not raw_to or len(raw_to) > MAX_BULK_RECIPIENTS:
                raise BadInput(f"to: must list 1 to {MAX_BULK_RECIPIENTS} numbers")
            if not all(isinstance(number, str) for number in raw_to):
                raise BadInput("to: must list strings")
            recipients = tuple(phone_number(number, "to") for number in raw_to)
        else:
            recipients = (phone_number(json_field(body, "to", str), "to"),)
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
            body = json_object(request.body)
            received_at = None
            if body.get("received_at") is not None:
                try:
                    received_at = parse_timestamp(body["received_at"], timezone.utc)
                except ApiInvalidResponse as exc:
                    raise BadInput(f"received_at: {exc}") from None
            sender = json_field(body, "from", str)
            if not sender.strip() or len(sender) > MAX_SENDER_ID or not sender.isprintable():
                raise BadInput("from: not a phone number or sender id")
            recipient = phone_number(json_field(body, "to", str), "to")
            message = self.inject(sender, recipient, json_field(body, "text", str), received_at)
            return json_response({"id": str(message.id)}, 201)
        if route == ("GET", "sent"):
            return json_response([_sent_json(record) for record in self.sent])
        if route == ("POST", "faults"):
            self.add_fault(fault_from_json(json_object(request.body)))
            return json_response({"pending": self.pending_faults}, 201)
        if route == ("PUT", "wire"):
            self.wire = wire_from_json(json_object(request.body), self._wire)
            return json_response(dataclasses.asdict(self._wire))
        if route == ("PUT", "token"):
            token = json_field(json_object(request.body), "token", str)
            if not token.strip():
                raise BadInput("token: must not be empty")
            self.token = token
            return Response(status=204)
        if route == ("PUT", "rate_limit"):
            per_second = json_object(request.body).get("per_second")
            if per_second is not None and not isinstance(per_second, int | float):
                raise BadInput("per_second: must be a number or null")
            try:
                self.rate_limit = None if per_second is None else RateLimit(float(per_second))
            except ValueError as exc:
                raise BadInput(str(exc)) from None
            return Response(status=204)
        if route == ("GET", "stats"):
            return json_response(
                {
                    "requests": dict(self.requests),
                    "polls": dict(self.polls),
                    "messages": len(self._messages),
                    "sent": len(self.sent),
                    "faults": self.pending_faults,
                    "limited": self.limited,
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


# --- routing ---------------------------------------------------------------


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


def _sent_json(record: SentRecord) -> dict[str, object]:
    return {
        "endpoint": record.endpoint,
        "from": record.sender,
        "to": list(record.recipients),
        "text": record.text,
        "ids": list(record.ids),
    }
