"""Tolerant parsing of the inbound messages the Aatrox API lists.

The API's wire format is undocumented, so every plausible spelling is accepted: a bare
array or an envelope object, ids as strings or integers, several names for each field,
ISO 8601 or Unix times, and phone numbers in E.164, international or national form. An
item that cannot be read is skipped with a one-line reason (never its text); the rest of
the listing goes through.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from email.utils import parsedate_to_datetime
from functools import lru_cache

from relay.errors import ApiInvalidResponse, InvalidNumber
from relay.phone import normalise

#: Where a listing may hold its messages when it is an object.
ENVELOPE_KEYS = ("messages", "data", "results", "items")
#: Where a detail answer may wrap its message.
DETAIL_WRAPPER_KEYS = ("data", "message", "sms")
ID_KEYS = ("id", "message_id", "messageId", "sms_id")
SENDER_KEYS = ("from", "sender", "source")
RECIPIENT_KEYS = ("to", "recipient", "destination")
TEXT_KEYS = ("text", "message", "body", "content")
TIME_KEYS = ("timestamp", "received_at", "receivedAt", "created_at", "date")
#: Unix times above this are milliseconds (1e11 seconds is in the year 5138).
MILLISECONDS_THRESHOLD = 1e11
#: Longest id accepted.
MAX_ID_LENGTH = 200
#: Longest sender kept (the store's column; alphanumeric sender ids are at most 11).
MAX_SENDER_LENGTH = 32

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NUMERIC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(?:([Zz]|UTC|GMT)|([+-])(\d{2}):?(\d{2})?)?"
)


@dataclass(frozen=True)
class InboundMessage:
    """One message received on one of our numbers."""

    #: The provider's id, always a string ("42" for the integer 42).
    id: str
    #: E.164 for a phone number; otherwise as the provider gave it (an alphanumeric
    #: sender id such as ``Telstra``, a short code such as ``1234``). None when the
    #: listing left it out: fetch the details.
    sender: str | None
    #: E.164.
    recipient: str
    #: None when the listing left it out (e.g. only id and timestamp): fetch the details.
    text: str | None
    #: Timezone-aware, in UTC.
    received_at: datetime

    @property
    def complete(self) -> bool:
        """Whether it has everything a delivery needs (sender and text)."""
        return self.sender is not None and self.text is not None


@dataclass(frozen=True)
class Listing:
    """What one ``GET /sms/receive`` returned."""

    messages: tuple[InboundMessage, ...]
    #: One-line reasons for the items skipped; never a message's text.
    skipped: tuple[str, ...] = ()
    #: Items passed over unparsed because their id was in ``known``.
    known: int = 0

    @property
    def listed(self) -> int:
        """How many messages the API listed (parsed or known)."""
        return len(self.messages) + self.known


def parse_listing(
    payload: object,
    *,
    number: str,
    region: str,
    tz: tzinfo,
    known: Container[str] = (),
) -> Listing:
    """Read a ``GET /sms/receive`` answer; ``number`` is the polled number.

    Items whose id is in ``known`` (already seen) are counted, not parsed: a listing
    of a thousand known messages then costs a thousand dictionary look-ups.
    Raises :class:`ApiInvalidResponse` when ``payload`` has none of the known shapes.
    """
    items = _listing_items(payload)
    messages: list[InboundMessage] = []
    skipped: list[str] = []
    seen: set[str] = set()
    passed = 0
    for index, item in enumerate(items):
        if known and isinstance(item, dict):
            key = _first_key(item, ID_KEYS)
            raw = item.get(key) if key is not None else None
            if isinstance(raw, (str, int)) and not isinstance(raw, bool) and str(raw) in known:
                passed += 1
                continue
        try:
            message = parse_message(item, number=number, region=region, tz=tz)
        except ApiInvalidResponse as exc:
            skipped.append(f"item {index}: {exc}")
            continue
        if message.id in seen:
            skipped.append(f"item {index}: message {message.id}: duplicate id")
            continue
        seen.add(message.id)
        messages.append(message)
    return Listing(tuple(messages), tuple(skipped), passed)


def parse_detail(
    payload: object,
    *,
    number: str | None,
    region: str,
    tz: tzinfo,
    message_id: str | None = None,
) -> InboundMessage:
    """Read a ``GET /sms/{id}`` answer: the message, bare or under data/message/sms.

    ``message_id`` stands in for an id the answer leaves out.
    """
    item = payload
    for _ in range(2):
        if not isinstance(item, dict) or _first_key(item, ID_KEYS) is not None:
            break
        inner = next(
            (item[key] for key in DETAIL_WRAPPER_KEYS if isinstance(item.get(key), dict)), None
        )
        if inner is None:
            break
        item = inner
    if message_id is not None and isinstance(item, dict) and _first_key(item, ID_KEYS) is None:
        item = {**item, "id": message_id}
    return parse_message(item, number=number, region=region, tz=tz)


def parse_message(item: object, *, number: str | None, region: str, tz: tzinfo) -> InboundMessage:
    """Read one message object; ``number`` is the recipient when the item names none
    (or names one that is not a phone number: we polled ``number``).

    Only an id and a time are required: a missing or unusable sender or text comes
    back as None (see :attr:`InboundMessage.complete`). Raises
    :class:`ApiInvalidResponse` with a one-line reason naming the field (never the
    text, never a full phone number).
    """
    if not isinstance(item, dict):
        msg = f"message is {_kind(item)}, not an object"
        raise ApiInvalidResponse(msg)
    message_id = _parse_id(item)
    where = f"message {message_id}"
    sender_key = _first_key(item, SENDER_KEYS)
    sender = _parse_sender(item[sender_key], region) if sender_key is not None else None
    recipient_key = _first_key(item, RECIPIENT_KEYS)
    recipient: str | None = None
    if recipient_key is not None:
        try:
            recipient = _parse_number(item[recipient_key], region, f"{where}: {recipient_key}")
        except ApiInvalidResponse:
            if number is None:
                raise
    if recipient is None:
        if number is None:
            msg = f"{where}: no recipient ({'/'.join(RECIPIENT_KEYS)})"
            raise ApiInvalidResponse(msg)
        recipient = _parse_number(number, region, f"{where}: polled number")
    text = next((v for key in TEXT_KEYS if isinstance(v := item.get(key), str)), None)
    time_key = _first_key(item, TIME_KEYS)
    if time_key is None:
        msg = f"{where}: no timestamp ({'/'.join(TIME_KEYS)})"
        raise ApiInvalidResponse(msg)
    try:
        received_at = parse_timestamp(item[time_key], tz)
    except ApiInvalidResponse as exc:
        msg = f"{where}: {time_key}: {exc}"
        raise ApiInvalidResponse(msg) from None
    return InboundMessage(message_id, sender, recipient, text, received_at)


def parse_timestamp(value: object, tz: tzinfo) -> datetime:
    """A timezone-aware UTC datetime from ISO 8601 text or Unix seconds / milliseconds.

    Naive ISO times are read in ``tz``. Numbers (or numeric strings) above
    :data:`MILLISECONDS_THRESHOLD` are milliseconds. Raises :class:`ApiInvalidResponse`.
    """
    if isinstance(value, bool):
        msg = "a boolean is not a timestamp"
        raise ApiInvalidResponse(msg)
    if isinstance(value, int):
        return _from_unix(Decimal(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = "not a finite number"
            raise ApiInvalidResponse(msg)
        return _from_unix(Decimal(repr(value)))
    if isinstance(value, str):
        return _parse_text_time(value.strip(), tz)
    msg = f"{_kind(value)} is not a timestamp"
    raise ApiInvalidResponse(msg)


# --- helpers -------------------------------------------------------------


def _listing_items(payload: object) -> list[object]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        items = _envelope(payload)
        if items is None and isinstance(payload.get("data"), dict):
            items = _envelope(payload["data"])
        if items is not None:
            return items
        keys = ", ".join(sorted(str(key)[:30] for key in payload)[:8]) or "none"
        msg = (
            "listing: expected a JSON array or an object holding one under "
            f"{'/'.join(ENVELOPE_KEYS)}; got an object with keys: {keys}"
        )
        raise ApiInvalidResponse(msg)
    msg = f"listing: expected a JSON array or object, got {_kind(payload)}"
    raise ApiInvalidResponse(msg)


def _envelope(obj: dict[str, object]) -> list[object] | None:
    for key in ENVELOPE_KEYS:
        if key in obj:
            value = obj[key]
            if isinstance(value, list):
                return value
            if value is None:
                return []
    return None


def _first_key(item: dict[str, object], keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` present in ``item`` with a non-null value."""
    for key in keys:
        if item.get(key) is not None:
            return key
    return None


def _parse_id(item: dict[str, object]) -> str:
    key = _first_key(item, ID_KEYS)
    if key is None:
        msg = f"no id ({'/'.join(ID_KEYS)})"
        raise ApiInvalidResponse(msg)
    value = item[key]
    if isinstance(value, str):
        text = value.strip()
        if text and len(text) <= MAX_ID_LENGTH and text.isprintable():
            return text
        msg = f"{key}: not a usable id (empty, too long or unprintable)"
        raise ApiInvalidResponse(msg)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    msg = f"{key}: {_kind(value)} is not an id"
    raise ApiInvalidResponse(msg)


def _parse_sender(value: object, region: str) -> str | None:
    """A sender: E.164 when it reads as a phone number, else the provider's own string
    (an alphanumeric sender id or a short code); None when it is no usable sender."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > MAX_SENDER_LENGTH or not text.isprintable():
        return None
    if any(char.isalpha() for char in text):
        return text  # "Telstra", "CommBank": never read letters as keypad digits
    try:
        return normalise(text, region)
    except InvalidNumber:
        return text  # a short code such as "1234"


def _parse_number(value: object, region: str, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        msg = f"{where}: {_kind(value)} is not a phone number"
        raise ApiInvalidResponse(msg)
    try:
        return normalise(value, region)
    except InvalidNumber:
        msg = f"{where}: not a phone number"
        raise ApiInvalidResponse(msg) from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _from_unix(value: Decimal) -> datetime:
    try:
        if abs(value) > MILLISECONDS_THRESHOLD:
            value /= 1000
        if abs(value) > MILLISECONDS_THRESHOLD * 10:  # past the year 9999 either way
            raise OverflowError
        seconds = int(value)  # truncates toward zero; the remainder keeps its sign
        micros = int(((value - seconds) * 1_000_000).to_integral_value())
        return _EPOCH + timedelta(seconds=seconds, microseconds=micros)
    except ArithmeticError:
        msg = "Unix time out of range"
        raise ApiInvalidResponse(msg) from None


@lru_cache(maxsize=16384)
def _parse_text_time(text: str, tz: tzinfo) -> datetime:
    if _NUMERIC.fullmatch(text):
        return _from_unix(Decimal(text))
    match = _ISO.fullmatch(text)
    if match is None:
        return _parse_http_date(text)
    year, month, day, hour, minute, second, fraction, utc, sign, off_h, off_m = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    zone: tzinfo | None = None
    if utc:
        zone = timezone.utc
    elif sign:
        offset = timedelta(hours=int(off_h), minutes=int(off_m or 0))
        if offset >= timedelta(days=1):
            msg = f"offset out of range in {_sample(text)}"
            raise ApiInvalidResponse(msg)
        zone = timezone(-offset if sign == "-" else offset)
    try:
        when = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            micros,
            tzinfo=zone or tz,
        ).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        msg = f"not a valid date/time: {_sample(text)}"
        raise ApiInvalidResponse(msg) from None
    return when


def _parse_http_date(text: str) -> datetime:
    """RFC 2822 / HTTP dates (``Thu, 01 Jan 2026 00:00:00 GMT``), as a last resort."""
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        msg = f"not ISO 8601 or Unix time: {_sample(text)}"
        raise ApiInvalidResponse(msg) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    try:
        return when.astimezone(timezone.utc)
    except OverflowError:
        msg = f"not a valid date/time: {_sample(text)}"
        raise ApiInvalidResponse(msg) from None


def _sample(text: str) -> str:
    return repr(text[:40] + ("..." if len(text) > 40 else ""))
