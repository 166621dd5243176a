"""Outbound SMS: replies asked for by webhooks, and sends queued through ``POST /v1/send``.

Each is a row in the ``outbound`` table, written in the same transaction as
the thing that caused it (a reply with its delivery's 2xx). The outbox worker
claims due rows and sends them through the Aatrox API with their own retries.
One recipient goes through ``/sms/send`` (or ``/sms/send/disclaimer``), several
through one ``/sms/send/bulk``. What an attempt comes to:

- the API accepted it (2xx): ``sent``;
- it certainly did not leave (connection refused, connect or pool timeout) or the
  API refused it for now (429, 5xx): retried with backoff from when the failure was
  seen, from :data:`RETRY_INITIAL` to :data:`RETRY_MAX` (429's Retry-After honoured),
  for :data:`GIVE_UP_AFTER`, then ``failed``;
- a 400: ``failed`` at once;
- the request went out and no usable answer came (read timeout, reset, a 2xx that
  cannot be read): ``unknown``, never sent again unless ``[outbound] retry_unknown``,
  because the provider documents no idempotency key and a repeat costs money.

A relay killed after the API accepted an SMS but before recording it sends it
again on restart: the one window where an SMS can repeat by default.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from relay.api import AatroxClient, OnWire
from relay.clock import Clock
from relay.config import DEFAULT_RETRY_UNKNOWN
from relay.errors import ApiBadRequest, ApiError, ApiOutcomeUnknown, ApiRateLimited
from relay.events import Events
from relay.logs import fields
from relay.logs import number as shown
from relay.optout import CONFIRMATION_KIND
from relay.outbound_events import OutboundEvents
from relay.retry import Backoff, Jitter
from relay.store import (
    FAILED,
    PENDING,
    REFUSED,
    SENT,
    UNKNOWN,
    AsyncStore,
    OutboundSms,
    SendOutcome,
)
from relay.worker import Worker, internal_error

log = logging.getLogger("relay.outbox")

#: The longest text accepted: ten concatenated SMS segments.
MAX_TEXT = 1600
RETRY_INITIAL = 5.0
RETRY_MAX = 300.0
GIVE_UP_AFTER = 86400.0
#: Outbound API requests in flight at once.
OUTBOX_CONCURRENCY = 4
#: The outcome of an attempt that is rescheduled (not a state: the row stays pending).
RETRY = "retry"
#: Stored for an SMS none of whose recipients may be sent it.
OPTED_OUT = "refused: the recipient opted out (STOP) of SMS from this number"
#: Stored for an SMS whose claim was handed back without a recorded outcome.
LOST_TRACK = "the relay lost track of this send (see its log); the API may have accepted it"


def check_text(text: str) -> str:
    """``text`` if it can be sent; ValueError saying why not."""
    if not text.strip():
        msg = "text is empty"
        raise ValueError(msg)
    if len(text) > MAX_TEXT:
        msg = f"text is {len(text)} characters, more than {MAX_TEXT} (ten SMS segments)"
        raise ValueError(msg)
    if "\x00" in text:  # PostgreSQL cannot store it
        msg = "text holds a NUL character"
        raise ValueError(msg)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        msg = "text is not valid Unicode (it holds a lone surrogate)"
        raise ValueError(msg) from None
    return text


def reply_text(body: bytes) -> str | None:
    """The reply a webhook's 2xx body asks for: ``{"reply": "text"}`` or
    ``{"reply": {"text": "..."}}``. None when it asks for none (any other body);
    ValueError when it asks for one that cannot be sent."""
    if b'"reply"' not in body:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    except RecursionError:
        msg = "the answer nests too deeply to be read"
        raise ValueError(msg) from None
    if not isinstance(doc, dict) or doc.get("reply") is None:
        return None
    reply = doc["reply"]
    if isinstance(reply, dict):
        reply = reply.get("text")
    if not isinstance(reply, str):
        msg = 'reply must be a string or {"text": string}'
        raise ValueError(msg)
    return check_text(reply)


@dataclass(frozen=True)
class Sent:
    """What the provider answered to an accepted send."""

    ids: tuple[str, ...]
    status: str | None


def provider_answer(answer: dict[str, object]) -> Sent:
    """The ids and status in a send answer, whatever its exact shape."""
    doc: dict[str, object] = answer
    inner = answer.get("data")
    if isinstance(inner, dict):
        doc = {**answer, **inner}
    ids: list[str] = []
    for key in ("id", "message_id", "messageId", "sms_id", "ids", "message_ids", "messages"):
        value = doc.get(key)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, dict):
                v = v.get("id") or v.get("message_id")
            if isinstance(v, (str, int)) and not isinstance(v, bool):
                ids.append(str(v))
    status = doc.get("status")
    return Sent(tuple(dict.fromkeys(ids)), str(status)[:64] if status is not None else None)


# --- sending ---------------------------------------------------------------------


async def send_now(api: AatroxClient, sms: OutboundSms, on_wire: OnWire = None) -> Sent:
    """One request to the right endpoint for ``sms`` (``on_wire``: as
    :meth:`AatroxClient.send`)."""
    if len(sms.recipients) > 1:
        answer = await api.send_bulk(sms.sender, list(sms.recipients), sms.text, on_wire)
    elif sms.disclaimer:
        answer = await api.send_disclaimer(sms.sender, sms.recipients[0], sms.text, on_wire)
    else:
        answer = await api.send(sms.sender, sms.recipients[0], sms.text, on_wire)
    return provider_answer(answer)


@dataclass(frozen=True)
class Attempt:
    """What one send came to, as written back to its row."""

    #: SENT, FAILED, UNKNOWN or RETRY (for the log and the metrics).
    outcome: str
    #: What is written back to the SMS's row.
    written: SendOutcome


class Outbox(Worker[OutboundSms]):
    """Sends queued outbound SMS through the API."""

    name = "outbox"

    def __init__(
        self,
        store: AsyncStore,
        api: AatroxClient,
        clock: Clock,
        jitter: Jitter | None = None,
        concurrency: int = OUTBOX_CONCURRENCY,
        events: Events | None = None,
        retry_unknown: bool = DEFAULT_RETRY_UNKNOWN,
        told: OutboundEvents | None = None,
    ) -> None:
        super().__init__(clock, concurrency, store, "outbound", events)
        #: Who is told of each outcome (``sms.sent``, ``sms.failed``); replaced on reload.
        self.told = told or OutboundEvents((), ())
        #: Called when an outcome queued events (the dispatcher's wake).
        self.on_told: Callable[[], None] = lambda: None
        self.api = api
        self.backoff = Backoff(RETRY_INITIAL, RETRY_MAX, GIVE_UP_AFTER)
        #: ``[outbound] retry_unknown``: send again when an attempt's outcome is unknown.
        self.retry_unknown = retry_unknown
        self._jitter = jitter
        #: Attempts made but not yet written back (when the attempt began, what it came to).
        self._decided: dict[int, tuple[datetime, Attempt]] = {}
        #: SMS whose request went out (or was about to) and whose outcome is not yet
        #: written back: cut off now, they may have been sent.
        self._on_wire: set[int] = set()

    async def claim(self, limit: int) -> list[OutboundSms]:
        """Claim due outbound SMS."""
        return await self.store.call(self.store.sync.claim_outbound, limit)

    async def next_due(self) -> datetime | None:
        """When the next outbound SMS falls due."""
        return await self.store.call(self.store.sync.next_outbound_due)

    async def process(self, item: OutboundSms) -> None:
        """Send one SMS and record the result; not to recipients who opted out of SMS
        from its sender (refused when that is all of them), bar a STOP's confirmation."""
        started = self.clock.now()
        if item.kind != CONFIRMATION_KIND:
            refused = await self.store.call(self.store.sync.opted_out, item.sender, item.recipients)
            if refused:
                kept = tuple(r for r in item.recipients if r not in refused)
                if not kept:
                    attempt = Attempt(REFUSED, SendOutcome(REFUSED, None, OPTED_OUT))
                    self._decided[item.id] = (started, attempt)
                    await self._record(item, started, attempt)
                    return
                item = dataclasses.replace(item, recipients=kept)
        try:
            sent = await send_now(self.api, item, lambda: self._on_wire.add(item.id))
        except ApiError as exc:
            attempt = self._failure(item, exc)
        else:
            attempt = Attempt(
                SENT,
                SendOutcome(
                    SENT,
                    last_status=200,
                    last_error=None,
                    sent_at=self.clock.now(),
                    provider_ids=sent.ids,
                    provider_status=sent.status,
                ),
            )
        self._decided[item.id] = (started, attempt)
        await self._record(item, started, attempt)

    async def failed(self, item: OutboundSms, exc: Exception) -> None:
        """Write back what the attempt came to, if it got that far (recording it failed);
        else the attempt itself crashed and whether the SMS left is unknown."""
        started, attempt = self._decided.pop(item.id, None) or (self.clock.now(), None)
        if attempt is None:
            attempt = self._unknown(item, internal_error(exc), None)
        await self._record(item, started, attempt)

    def released(self) -> str | None:
        """An SMS handed back without an outcome may have been sent: unknown, unless
        ``retry_unknown``, where it is sent again once due."""
        return None if self.retry_unknown else LOST_TRACK

    def untouched(self, item_ids: Collection[int]) -> set[int]:
        """Of SMS cut off in flight, those whose request had not gone out (waiting for
        the API budget, or for the opt-out check): certainly not sent."""
        quiet = {item_id for item_id in item_ids if item_id not in self._on_wire}
        self._on_wire.difference_update(item_ids)
        return quiet

    def _failure(self, item: OutboundSms, exc: ApiError) -> Attempt:
        """What an API error means for ``item``, its backoff counted from now (when the
        failure was seen, not when the attempt began)."""
        if isinstance(exc, ApiOutcomeUnknown):
            return self._unknown(item, str(exc), exc.status)
        if isinstance(exc, ApiBadRequest):
            return Attempt(FAILED, SendOutcome(FAILED, last_status=400, last_error=str(exc)))
        retry_after = exc.retry_after if isinstance(exc, ApiRateLimited) else None
        nxt = self._next_attempt(item, retry_after) if exc.retryable else None
        if nxt is None:
            return Attempt(FAILED, SendOutcome(FAILED, exc.status, str(exc)))
        return Attempt(RETRY, SendOutcome(PENDING, exc.status, str(exc), next_attempt_at=nxt))

    def _unknown(self, item: OutboundSms, error: str, status: int | None) -> Attempt:
        """An attempt that may or may not have sent ``item``: kept as ``unknown``, or with
        ``retry_unknown`` tried again after a backoff (``failed`` past the give-up time)."""
        if not self.retry_unknown:
            return Attempt(UNKNOWN, SendOutcome(UNKNOWN, status, error))
        nxt = self._next_attempt(item, None)
        if nxt is None:
            return Attempt(FAILED, SendOutcome(FAILED, status, error))
        return Attempt(UNKNOWN, SendOutcome(PENDING, status, error, next_attempt_at=nxt))

    def _next_attempt(self, item: OutboundSms, retry_after: float | None) -> datetime | None:
        return self.backoff.next_attempt(
            attempt=item.attempts + 1,
            queued_at=item.queued_at,
            now=self.clock.now(),
            retry_after=retry_after,
            jitter=self._jitter,
        )

    async def _record(self, item: OutboundSms, started: datetime, attempt: Attempt) -> None:
        """Write ``attempt`` back (releasing the claim) with the events it causes, then log
        and count it."""
        told = self.told.queued(item, attempt.written, self.clock.now())
        await self.store.call(self.store.sync.record_send, item.id, started, attempt.written, told)
        if told:
            self.on_told()
        event = {
            "id": item.id,
            "kind": item.kind,
            "sender": shown(item.sender),
            "recipients": len(item.recipients),
            "attempt": item.attempts + 1,
        }
        written = attempt.written
        nxt = written.next_attempt_at
        retry = {"next_attempt_at": nxt.isoformat()} if nxt is not None else {}
        if attempt.outcome == SENT:
            ids = written.provider_ids or ()
            log.info("relay.outbox.sent", extra=fields(**event, provider_ids=",".join(ids)))
            self.events.outbound(SENT)
        elif attempt.outcome == UNKNOWN:
            level = logging.WARNING if retry else logging.ERROR
            log.log(
                level,
                "relay.outbox.unknown",
                extra=fields(**event, error=written.last_error, **retry),
            )
            self.events.outbound(UNKNOWN)
        elif attempt.outcome == FAILED:
            log.error("relay.outbox.failed", extra=fields(**event, error=written.last_error))
            self.events.outbound(FAILED)
        elif attempt.outcome == REFUSED:
            log.warning("relay.outbox.refused", extra=fields(**event))
            self.events.outbound(REFUSED)
        else:
            log.warning(
                "relay.outbox.retry_scheduled",
                extra=fields(**event, error=written.last_error, **retry),
            )
        self._decided.pop(item.id, None)
        self._on_wire.discard(item.id)
