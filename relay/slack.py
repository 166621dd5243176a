"""The ``slack`` webhook format: each event as one line of a Slack incoming webhook.

``{"text": "SMS from +61412345678 to +61400000001: <text>"}``, with ``&``, ``<`` and
``>`` escaped as Slack asks (so a text cannot mention ``<!channel>`` or make a link).
Outbound events read ``SMS sent from X to Y: text`` and ``SMS from X to Y failed:
error``. No signature: a Slack webhook URL is its own secret (and redacted as one).
"""

from __future__ import annotations

import json

from relay.config import SMS_FAILED, SMS_RECEIVED, SMS_SENT
from relay.store import DueDelivery

CONTENT_TYPE = "application/json"
#: Slack's escaping of message text: these three characters, and nothing else.
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def escape(text: str) -> str:
    """``text`` with ``&``, ``<`` and ``>`` as Slack's control sequences want them."""
    return text.translate(_ESCAPES)


def line(delivery: DueDelivery) -> str:
    """The line ``delivery`` is shown as, unescaped."""
    if delivery.data is None or delivery.event == SMS_RECEIVED:
        return f"SMS from {delivery.sender} to {delivery.recipient}: {delivery.text}"
    data = json.loads(delivery.data)
    recipients = data.get("to")
    to = ", ".join(map(str, recipients)) if isinstance(recipients, list) else str(recipients)
    if delivery.event == SMS_SENT:
        return f"SMS sent from {data.get('from')} to {to}: {data.get('text')}"
    if delivery.event == SMS_FAILED:
        return f"SMS from {data.get('from')} to {to} failed: {data.get('error')}"
    return f"{delivery.event}: {delivery.data}"  # an event type added later


def body(delivery: DueDelivery) -> bytes:
    """The JSON body of ``delivery``, UTF-8, non-ASCII kept as is."""
    doc = {"text": escape(line(delivery))}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
