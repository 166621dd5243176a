"""The ``twilio`` webhook format: an inbound SMS as Twilio's incoming-message webhook.

An application written against Twilio receives what Twilio would send it: a
form-encoded POST of Twilio's fields (:func:`form`), signed with
``X-Twilio-Signature`` exactly as Twilio signs (:func:`signature`: base64 of the
HMAC-SHA1, keyed with the auth token, of the full URL followed by each POST parameter's
name and value, sorted by name), and carrying ``I-Twilio-Idempotency-Token``, the same on
every retry. Its TwiML answer is read by :mod:`relay.twiml`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from urllib.parse import urlencode, urlsplit, urlunsplit

from relay.store import DueDelivery

CONTENT_TYPE = "application/x-www-form-urlencoded"
SIGNATURE_HEADER = "X-Twilio-Signature"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
API_VERSION = "2010-04-01"
#: ``twilio_account_sid``: "AC" and 32 hex digits, as Twilio writes it.
ACCOUNT_SID_RE = re.compile(r"AC[0-9a-f]{32}")

#: The GSM 03.38 default alphabet: one septet each.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: Its extension table: an escape septet and one more each.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
#: Units in one SMS alone, and in each part of a concatenated one (whose header takes
#: the rest): septets for GSM-7, UTF-16 code units for UCS-2.
GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


def message_sid(webhook_id: str) -> str:
    """``MessageSid``: "SM" and 32 hex digits from the delivery's webhook-id, so the same
    for a message on every attempt and replay to one webhook, different for another."""
    return "SM" + hashlib.sha256(f"twilio-sms\x00{webhook_id}".encode()).hexdigest()[:32]


def segments(text: str) -> int:
    """How many SMS ``text`` takes: in GSM-7 when every character is in its alphabet (an
    extension character counting two septets, never split across parts), else in UCS-2
    (a character outside the Basic Multilingual Plane counting two units, never split)."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        costs = [2 if c in GSM7_EXTENSION else 1 for c in text]
        single, part = GSM7_SINGLE, GSM7_PART
    else:
        costs = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, part = UCS2_SINGLE, UCS2_PART
    if sum(costs) <= single:
        return 1
    count, used = 1, 0
    for cost in costs:
        if used + cost > part:
            count, used = count + 1, 0
        used += cost
    return count


def form(delivery: DueDelivery, account_sid: str) -> dict[str, str]:
    """The POST parameters of Twilio's incoming-SMS webhook for ``delivery``."""
    sid = message_sid(delivery.webhook_id)
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": account_sid,
        "From": delivery.sender,
        "To": delivery.recipient,
        "Body": delivery.text,
        "NumMedia": "0",
        "NumSegments": str(segments(delivery.text)),
        "SmsStatus": "received",
        "ApiVersion": API_VERSION,
    }


def encode(params: dict[str, str]) -> bytes:
    """``params`` as an ``application/x-www-form-urlencoded`` body, UTF-8."""
    return urlencode(params).encode("ascii")


def signed_url(url: str) -> str:
    """The URL the signature covers: the one requested, as the application sees it
    (``/`` for an empty path; credentials, which never reach it in the URL, left out)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc, path=parts.path or "/"))


def signature(token: str, url: str, params: dict[str, str]) -> str:
    """``X-Twilio-Signature``: base64(HMAC-SHA1(token, url + name1 + value1 + ...)), the
    parameters sorted by name. Refuses an empty ``token``: nothing signs with no key."""
    if not token:
        msg = "refusing to sign with an empty Twilio auth token"
        raise ValueError(msg)
    signed = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(token.encode("utf-8"), signed.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def headers(token: str, url: str, params: dict[str, str], webhook_id: str) -> dict[str, str]:
    """The headers of one attempt: its content type, signature and idempotency token."""
    return {
        "Content-Type": CONTENT_TYPE,
        SIGNATURE_HEADER: signature(token, signed_url(url), params),
        IDEMPOTENCY_HEADER: webhook_id,
    }
