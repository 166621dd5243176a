"""Typed access to TOML tables: every value checked against its dotted key, every error
one line that names that key."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import NoReturn, TypeVar
from urllib.parse import urlsplit

from relay.errors import ConfigError, InvalidNumber
from relay.phone import valid_number

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_TOML_TYPES = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
               (list, "array"), (Mapping, "table"), (datetime, "datetime"), (date, "date"),
               (time, "time"))  # fmt: skip
_T = TypeVar("_T")


def fail(key: str, text: str) -> NoReturn:
    """Raise the ConfigError ``key: text``, squeezed onto one line whatever the values hold."""
    msg = " ".join(f"{key}: {text}".split())
    raise ConfigError(msg)


def _toml_type(value: object) -> str:
    return next((name for kind, name in _TOML_TYPES if isinstance(value, kind)), "value")


def show(value: object) -> str:
    """A non-secret value for a message: strings quoted, numbers as is, else the type."""
    if isinstance(value, str):
        return json.dumps(value)
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return repr(value) if is_number else _toml_type(value)


def parse_duration(value: object, key: str) -> float:
    """Seconds in "500ms", "1.5s", "5m", "2h", "3d", "0" or a number of seconds (not negative).

    Raises :class:`ConfigError` naming ``key`` for anything else.
    """
    seconds: float | None = None
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if match:
            seconds = float(match[1]) * _DURATION_UNITS[match[2]]
        elif value.strip() == "0":
            seconds = 0.0
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else None  # huge ints overflow a float
    else:
        fail(key, f"expected a duration, got {_toml_type(value)}")
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        fail(key, f"{show(value)} is not a duration")
    return seconds


class Table:
    """One TOML table that knows its dotted key: refuses unknown keys, reads typed values."""

    def __init__(self, data: object, key: str, allowed: Collection[str] = ()) -> None:
        if not isinstance(data, Mapping):
            fail(key, f"expected a table, got {_toml_type(data)}")
        self.data: Mapping[str, object] = data
        self.key = key
        unknown = [name for name in data if allowed and name not in allowed]
        if unknown and key:
            fail(key, f"unknown key {show(unknown[0])}")
        if unknown:
            fail(unknown[0], f"unknown top-level key (sections are {', '.join(allowed)})")

    def sub(self, name: str) -> str:
        """The dotted key of ``name`` in this table."""
        return f"{self.key}.{name}" if self.key else name

    def fail(self, name: str, text: str) -> NoReturn:
        fail(self.sub(name), text)

    def get(self, name: str, kind: type[_T], expected: str, default: _T) -> _T:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(name, f"expected {expected}, got {_toml_type(value)}")
        return value

    def text(self, name: str, default: str = "") -> str:
        """The string at ``name`` stripped, or ``default`` (missing is "" unless told)."""
        return self.get(name, str, "a string", default).strip()

    def strings(self, name: str) -> list[str] | None:
        """The array of strings at ``name``, each stripped; None when it is missing."""
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.fail(name, f"expected an array of strings, got {_toml_type(value)}")
        return [item.strip() for item in value]

    def integer(self, name: str, default: int, minimum: int, maximum: int = 2**63) -> int:
        value = self.get(name, int, "an integer", default)
        if not minimum <= value <= maximum:
            bound = f"at most {maximum}" if value > maximum else f"at least {minimum}"
            self.fail(name, f"must be {bound}, got {value}")
        return value

    def duration(self, name: str, default: float, at_least: float | None = None) -> float:
        """Seconds: greater than 0, or at least ``at_least`` when it is given."""
        value = self.data.get(name)
        seconds = default if value is None else parse_duration(value, self.sub(name))
        if at_least is None and seconds == 0:
            self.fail(name, "must be greater than 0")
        if at_least is not None and seconds < at_least:
            self.fail(name, f"must be at least {at_least:g}s")
        return seconds

    def fraction(self, name: str, default: float) -> float:
        """A number from 0 to 1; integers 0 and 1 are fine."""
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(name, f"expected a number, got {_toml_type(value)}")
        if not 0 <= value <= 1:  # NaN fails this too
            self.fail(name, f"must be from 0 to 1, got {show(value)}")
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name, default)
        if value.lower() not in choices:
            self.fail(name, f"{show(value)} is not one of {', '.join(choices)}")
        return value.lower()

    def path(self, name: str, base_dir: Path) -> Path | None:
        """The path at ``name``, relative ones read from ``base_dir``."""
        value = self.text(name)
        if name in self.data and not value:
            self.fail(name, "is empty")
        return base_dir / Path(value).expanduser() if value else None

    def url(self, name: str, value: str) -> str:
        """``value`` if it is an http(s) URL with a host; never echoed (it may hold a secret)."""
        if not value:
            self.fail(name, "is required")
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a malformed port or IPv6 address
            ok = False
        if not ok:
            self.fail(name, "is not an http:// or https:// URL with a host")
        return value

    def phone(self, name: str, region: str) -> str | None:
        """The valid phone number at ``name`` in E.164 (None when unset); never echoed."""
        value = self.text(name)
        try:
            return valid_number(value, region) if value else None
        except InvalidNumber as exc:
            self.fail(name, str(exc))

    def table(self, name: str, allowed: Collection[str] = ()) -> Table:
        """The table at ``name`` (empty when missing); any key is allowed without ``allowed``."""
        return Table(self.data.get(name, {}), self.sub(name), allowed)

    def tables(self, name: str, allowed: Collection[str]) -> list[Table]:
        value = self.data.get(name, [])
        if not (isinstance(value, list) and all(isinstance(item, Mapping) for item in value)):
            self.fail(name, f"expected an array of tables ([[{name}]]), got {_toml_type(value)}")
        return [Table(item, f"{self.sub(name)}[{i}]", allowed) for i, item in enumerate(value)]
