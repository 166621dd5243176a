"""The simulated API's wire: the messages it holds and the shapes its answers take.

A :class:`WireFormat` names one of the shapes the relay tolerates (envelope, keys, id,
time and number formats, what a listing item carries); :func:`listing_body` and
:func:`detail_body` write messages in it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

import phonenumbers

#: Numbers are read as Australian unless they carry a country code.
SIM_REGION = "AU"
#: Zone of iso_offset and iso_naive times by default: UTC, the relay's default timezone.
DEFAULT_TZ_OFFSET_MINUTES = 0

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
class SimMessage:
    """A message the simulator holds as received."""

    id: int
    sender: str  # E.164
    recipient: str  # E.164
    text: str
    received_at: datetime


def listing_body(messages: list[SimMessage], wire: WireFormat) -> bytes:
    """A receive answer listing ``messages``, shaped by ``wire``."""
    shape = "no_text" if wire.text_key is None and wire.listing == "full" else wire.listing
    items = [_render(m, wire, shape) for m in messages]
    payload: object = items if wire.envelope == "array" else {wire.envelope: items}
    return _dumps(payload)


def detail_body(message: SimMessage, wire: WireFormat) -> bytes:
    """A details answer for ``message``, shaped by ``wire`` (always full)."""
    item = _render(message, wire, "full")
    wrapper = _DETAIL_WRAPPERS[wire.envelope]
    return _dumps(item if wrapper is None else {wrapper: item})


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


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
