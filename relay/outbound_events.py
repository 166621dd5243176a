"""Outbound events: telling webhooks what became of the SMS the relay sends.

A webhook with ``sms.sent`` in its ``events`` is told when the API accepted an SMS
(a reply, ``POST /v1/send``, ``aatrox-relay send``); one with ``sms.failed`` when an
SMS failed for good (a 400, or retries given up). An SMS whose outcome is unknown (the
request went out and no answer came) is neither: it may have been sent, and the
relay does not guess; should a later attempt settle it (``[outbound] retry_unknown``),
that outcome is told.

Which webhooks: every one subscribed to the event, except that an SMS sent from a
configured number goes only to the webhooks that number lists (as its inbound
messages do). An SMS refused because its recipients opted out (STOP) is
``sms.failed``. ``[webhooks.match]`` filters inbound messages only.

The events are built here, as the outcome is known, and written in the transaction
that records it (:meth:`relay.store.Store.record_send`): a snapshot, so a replay sends
what was true then, and it outlives the SMS's own row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone

from relay.config import SMS_FAILED, SMS_SENT, NumberConfig, WebhookConfig
from relay.store import FAILED, REFUSED, SENT, OutboundSms, QueuedEvent, SendOutcome

#: ``data.cause`` by the outbound row's kind: what asked for the SMS.
CAUSES = {"reply": "reply", "send": "api", "cli": "cli", "optout": "keyword", "keyword": "keyword"}


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def event_webhook_id(sms: OutboundSms, event: str, webhook: str) -> str:
    """The ``webhook-id`` of ``event`` about ``sms`` to ``webhook``: the same on every
    attempt and replay, and never one an earlier SMS with a reused row id had."""
    key = f"{event}\x00{sms.id}\x00{_iso(sms.queued_at)}\x00{webhook}"
    return f"msg_{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def event_data(sms: OutboundSms, outcome: SendOutcome, at: datetime) -> dict[str, object]:
    """The ``data`` of the ``sms.sent`` or ``sms.failed`` event for ``outcome``, known ``at``."""
    data: dict[str, object] = {
        "outbound_id": sms.id,
        "from": sms.sender,
        "to": list(sms.recipients),
        "text": sms.text,
        "cause": CAUSES.get(sms.kind, sms.kind),
    }
    if sms.reply_to is not None:
        data["in_reply_to"] = sms.reply_to
    if outcome.state == SENT:
        data["provider_ids"] = list(outcome.provider_ids or ())
        data["sent_at"] = _iso(outcome.sent_at or at)
    else:
        data["error"] = outcome.last_error or "failed"
        data["failed_at"] = _iso(at)
    return data


class OutboundEvents:
    """Who is told of the outcome of an outbound SMS, and what."""

    def __init__(self, webhooks: Sequence[WebhookConfig], numbers: Sequence[NumberConfig]) -> None:
        self._subscribers = {
            event: tuple(hook.name for hook in webhooks if event in hook.events)
            for event in (SMS_SENT, SMS_FAILED)
        }
        self._listed = {n.number: frozenset(n.webhooks) for n in numbers}

    def webhooks(self, event: str, sender: str) -> tuple[str, ...]:
        """The webhooks told of ``event`` about an SMS sent from ``sender``."""
        subscribed = self._subscribers.get(event, ())
        listed = self._listed.get(sender)
        return subscribed if listed is None else tuple(h for h in subscribed if h in listed)

    def queued(self, sms: OutboundSms, outcome: SendOutcome, at: datetime) -> list[QueuedEvent]:
        """The events ``outcome`` of ``sms`` (known ``at``) causes: none while it is pending
        or of unknown outcome, else one per webhook told."""
        event = {SENT: SMS_SENT, FAILED: SMS_FAILED, REFUSED: SMS_FAILED}.get(outcome.state)
        if event is None:
            return []
        hooks = self.webhooks(event, sms.sender)
        if not hooks:
            return []
        data = json.dumps(event_data(sms, outcome, at), ensure_ascii=False, separators=(",", ":"))
        return [QueuedEvent(h, event_webhook_id(sms, event, h), event, data) for h in hooks]
