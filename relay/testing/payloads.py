"""What clients send the simulator, read strictly: a bad value raises :class:`BadInput` (400)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

from relay.errors import InvalidNumber
from relay.phone import normalise
from relay.testing.faults import Fault
from relay.testing.wire import SIM_REGION, WireFormat

_T = TypeVar("_T")

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


class BadInput(Exception):
    """A request's parameters are invalid: answer 400 with this message."""


def json_object(raw: bytes) -> dict[str, object]:
    """``raw`` as a JSON object."""
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        raise BadInput("body is not JSON") from None
    if not isinstance(body, dict):
        raise BadInput("body must be a JSON object")
    return body


def json_field(body: dict[str, object], name: str, kind: type[_T]) -> _T:
    """``body[name]``, which must be a ``kind``."""
    value = body.get(name)
    if not isinstance(value, kind):
        raise BadInput(f"{name}: missing or not a {kind.__name__}")
    return value


def sender_id(value: str) -> str:
    """A sender as the simulator keeps it: E.164 when it is a phone number, else as given."""
    try:
        return normalise(value, SIM_REGION)
    except InvalidNumber:
        return value.strip()


def phone_number(value: str, name: str) -> str:
    """The parameter ``name``'s ``value`` in E.164."""
    try:
        return normalise(value, SIM_REGION)
    except InvalidNumber:
        raise BadInput(f"{name}: not a phone number") from None


def fault_from_json(body: dict[str, object]) -> Fault:
    """The :class:`Fault` a ``POST /_sim/faults`` body describes."""
    _check_fields(body, _FAULT_TYPES)
    fields: dict[str, Any] = dict(body)
    if isinstance(fields.get("body"), str):
        fields["body"] = fields["body"].encode()
    headers = body.get("headers")
    if isinstance(headers, dict):
        fields["headers"] = tuple((str(k), str(v)) for k, v in headers.items())
    elif isinstance(headers, list):
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in headers):
            raise BadInput("headers: must be an object or a list of [name, value] pairs")
        fields["headers"] = tuple((str(pair[0]), str(pair[1])) for pair in headers)
    if "delay" in fields:
        fields["delay"] = float(fields["delay"])
    try:
        return Fault(**fields)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def wire_from_json(body: dict[str, object], current: WireFormat) -> WireFormat:
    """``current`` with the fields a ``PUT /_sim/wire`` body gives."""
    _check_fields(body, _WIRE_TYPES)
    fields: dict[str, Any] = dict(body)
    try:
        return dataclasses.replace(current, **fields)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _check_fields(body: dict[str, object], types: dict[str, type | tuple[type, ...]]) -> None:
    for name, value in body.items():
        expected = types.get(name)
        if expected is None:
            raise BadInput(f"{name}: unknown field (known: {', '.join(types)})")
        if isinstance(value, bool) and expected is not bool:
            raise BadInput(f"{name}: wrong type")
        if not isinstance(value, expected):
            raise BadInput(f"{name}: wrong type")
