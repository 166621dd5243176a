"""The operator commands' formatting toolkit: JSON, times, counts and aligned tables."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timezone

#: What a table cell shows for no value.
NONE = "-"


def dumps(doc: object) -> str:
    """JSON for scripts: indented, UTF-8 kept, times in ISO 8601 UTC."""
    return json.dumps(doc, indent=2, ensure_ascii=False, default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(type(value).__name__)


def iso(when: datetime | None) -> str | None:
    """``2026-11-24T13:40:00.250000Z``, or None."""
    if when is None:
        return None
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def plural(count: int, one: str, many: str) -> str:
    """``1 delivery``, ``2 deliveries``: the count and the word that goes with it."""
    return f"{count} {one if count == 1 else many}"


def span(seconds: float) -> str:
    """``45s``, ``3m``, ``2h``, ``4d``: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def duration(seconds: float) -> str:
    """``500ms``, ``1.5s``, ``30s``, ``2m``, ``1h``: a configured duration, as written."""
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


def ago(when: datetime | None, now: datetime, empty: str = "never") -> str:
    """``3m ago`` (or ``in 3m``), or ``empty`` for no time at all."""
    if when is None:
        return empty
    seconds = (now - when).total_seconds()
    return f"{span(seconds)} ago" if seconds >= 0 else f"in {span(-seconds)}"


def printable(text: str) -> str:
    """``text`` with control characters escaped, so it cannot drive the terminal."""
    return "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in text)


def cell(text: str | None) -> str:
    """A value for one table cell: one line, printable, ``-`` when there is none."""
    return NONE if not text else printable(" ".join(text.split()))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, indented by two."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        for cells in [headers, *rows]
    )
