"""One webhook: the body it is sent, the signed POST, and what its answer means.

The webhook's ``format`` shapes the request: Standard Webhooks JSON (:func:`body`,
signed by :mod:`relay.signing`), Twilio's form fields (:mod:`relay.twilio`) or a Slack
message (:mod:`relay.slack`); and says how a 2xx body asks for a reply
(:meth:`Webhook.reply_texts`). Everything else (retries, the circuit...) is the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx

from relay import __version__, decoding, signing, slack, twilio, twiml
from relay.clock import Clock, within
from relay.config import FORMAT_SLACK, FORMAT_TWILIO, SMS_RECEIVED, WebhookConfig
from relay.connections import Connections
from relay.logs import fields
from relay.outbox import check_text, reply_text
from relay.retry import parse_retry_after
from relay.store import DueDelivery

log = logging.getLogger("relay.webhook")

EVENT_TYPE = SMS_RECEIVED
USER_AGENT = f"aatrox-relay/{__version__}"
#: How much of a webhook's answer is read; the rest is ignored.
MAX_ANSWER_BYTES = 64 * 1024


def iso(when: datetime, timespec: str = "auto") -> str:
    """ISO 8601 in UTC with a ``Z``."""
    return when.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def body(delivery: DueDelivery, relayed_at: datetime) -> bytes:
    """The JSON body of a delivery, UTF-8, non-ASCII kept as is: an ``sms.received``
    built from its message, an outbound event from the ``data`` recorded with it."""
    timestamp = iso(relayed_at, "milliseconds")
    if delivery.data is not None:
        event = {"type": delivery.event, "timestamp": timestamp, "data": json.loads(delivery.data)}
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    data = {
        "id": delivery.provider_id,
        "number": delivery.number,
        "from": delivery.sender,
        "to": delivery.recipient,
        "text": delivery.text,
        "received_at": iso(delivery.received_at),
    }
    if delivery.keyword is not None:
        data["keyword"] = delivery.keyword
    doc = {"type": EVENT_TYPE, "timestamp": timestamp, "data": data}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Answer:
    """What one attempt came to."""

    ok: bool
    status: int | None = None
    #: One line for the store and logs: "HTTP 503", "timed out after 15s"...
    error: str | None = None
    #: Seconds the webhook asked us to wait (429 and 503 only).
    retry_after: float | None = None
    #: Do not retry (410 Gone).
    final: bool = False
    #: The answer's body, decoded, cut at :data:`MAX_ANSWER_BYTES`.
    body: bytes = b""
    #: Why the body could not be read, when it could not (its status still counts).
    body_error: str | None = None
    #: The answer's Content-Type ("" when it has none).
    content_type: str = ""


class Webhook:
    """Sends deliveries to one configured webhook."""

    def __init__(self, config: WebhookConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        tls = httpx.create_ssl_context()  # loaded once, not once per connection
        headers = {
            "User-Agent": USER_AGENT,
            "Accept-Encoding": decoding.ACCEPT_ENCODING,
            **dict(config.headers),
        }

        def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                timeout=config.timeout,
                follow_redirects=False,
                verify=tls,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                headers=headers,
            )

        #: A client of one keep-alive connection per request in flight
        #: (:mod:`relay.connections`), at most ``concurrency``.
        self._connections = Connections(config.concurrency, make, config.timeout)
        #: The URL X-Twilio-Signature covers: the one requested, as httpx sends it.
        self._signed_url = _sent_url(config.url) if config.format == FORMAT_TWILIO else ""

    def request(self, delivery: DueDelivery) -> tuple[bytes, dict[str, str]]:
        """The body and headers of an attempt to send ``delivery``, by the format."""
        if self.config.format == FORMAT_TWILIO:
            params = twilio.form(delivery, self.config.twilio_account_sid)
            token = self.config.twilio_auth_token
            headers = twilio.headers(token, self._signed_url, params, delivery.webhook_id)
            return twilio.encode(params), headers
        if self.config.format == FORMAT_SLACK:
            return slack.body(delivery), {"Content-Type": slack.CONTENT_TYPE}
        now = self.clock.now()
        payload = body(delivery, now)
        headers = signing.headers(
            self.config.secret,
            delivery.webhook_id,
            int(now.timestamp()),
            payload,
            also=self.config.extra_secrets,
        )
        headers["Content-Type"] = "application/json"
        return payload, headers

    async def send(self, delivery: DueDelivery) -> Answer:
        """POST ``delivery`` as its format says, and classify the answer. Never raises for
        the network."""
        if self.config.format == FORMAT_TWILIO and delivery.event != SMS_RECEIVED:
            # Queued while the webhook had another format: dead, for a replay once it can go.
            error = f'format = "twilio" takes only {SMS_RECEIVED}, not {delivery.event}'
            return Answer(False, error=error, final=True)
        payload, headers = self.request(delivery)
        try:
            return await within(self.config.timeout + 1.0, self._post(payload, headers))
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return Answer(False, error=f"timed out after {self.config.timeout:g}s")
        except httpx.TransportError as exc:
            return Answer(False, error=f"{type(exc).__name__}: {exc}"[:200] or "transport error")

    async def _post(self, payload: bytes, headers: dict[str, str]) -> Answer:
        async with self._connections.client() as client:
            request = client.build_request(
                "POST", self.config.url, content=payload, headers=headers
            )
            response = await client.send(request, stream=True)
            try:
                answer, body_error = await _read(response)
            finally:
                await response.aclose()
        status = response.status_code
        if 200 <= status < 300:
            kind = response.headers.get("content-type", "")
            return Answer(True, status, body=answer, body_error=body_error, content_type=kind)
        error = f"HTTP {status}"
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock.now())
        return Answer(False, status, error=error, retry_after=retry_after, final=status == 410)

    def reply_texts(self, answer: Answer, webhook_id: str) -> tuple[str, ...]:
        """The SMS a 2xx ``answer`` asks to send back, in order: ``{"reply": ...}`` from a
        standard webhook, one per ``<Message>`` of TwiML from a twilio one, never any from
        a slack one. Empty when it asks for none; ValueError when it asks for one that
        cannot be sent or cannot be read (then none is sent)."""
        if self.config.format == FORMAT_SLACK:
            return ()
        if self.config.format != FORMAT_TWILIO:
            text = reply_text(answer.body)
            return () if text is None else (text,)
        if not twiml.is_twiml(answer.content_type):
            return ()
        asked = twiml.read(answer.body)
        if asked.ignored:
            log.info(
                "relay.reply.twiml_ignored",
                extra=fields(
                    webhook=self.config.name, webhook_id=webhook_id, ignored=",".join(asked.ignored)
                ),
            )
        return tuple(check_text(text) for text in asked.messages)

    async def aclose(self) -> None:
        """Close the kept-alive connections."""
        await self._connections.aclose()


def _sent_url(url: str) -> str:
    """``url`` as httpx sends it and the app reads it back (the one Twilio would sign);
    as configured when httpx cannot read it (each attempt then fails as a request would)."""
    try:
        return twilio.signed_url(str(httpx.URL(url)))
    except (httpx.InvalidURL, ValueError):
        return url


async def _read(response: httpx.Response) -> tuple[bytes, str | None]:
    """The body, decoded (``Content-Encoding``, a bounded step at a time: see
    :mod:`relay.decoding`), cut at :data:`MAX_ANSWER_BYTES`, and why it cannot be used:
    it does not decode, or it is larger than that once decoded (reading stops there)."""
    parts: list[bytes] = []
    size = 0
    try:
        async with aclosing(decoding.aiter_decoded(response)) as chunks:
            async for chunk in chunks:
                parts.append(chunk[: MAX_ANSWER_BYTES - size])
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    decoded = " once decoded" if decoding.is_encoded(response) else ""
                    error = f"the answer exceeds {MAX_ANSWER_BYTES} bytes{decoded}; stopped reading"
                    return b"".join(parts), error
    except decoding.UndecodableBody as exc:
        return b"", f"the answer's {exc}"
    return b"".join(parts), None
