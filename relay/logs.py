"""Logging: stable event names with structured fields, as text or JSON lines on stderr.

Call sites log an event name and fields::

    log.info("relay.poll.failed", extra=fields(number=masked, error=str(exc)))

Never pass a token or message text as a field.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from relay.phone import mask

_FIELDS = "relay_fields"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_show_pii = False


def fields(**values: Any) -> dict[str, Any]:
    """The ``extra=`` argument carrying an event's fields."""
    return {_FIELDS: values}


def number(value: str) -> str:
    """A phone number as logs show it: masked to its last three digits unless log.pii."""
    return value if _show_pii else mask(value)


class TextFormatter(logging.Formatter):
    """``2026-11-24T13:40:00Z info relay.poll.failed number=*********001 error="..."``."""

    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        """One line per event."""
        second = int(record.created)
        if second != self._second:  # one strftime a second, not one a line
            self._second = second
            self._stamp = datetime.fromtimestamp(second, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
        parts = [self._stamp, record.levelname.lower(), record.getMessage()]
        for key, value in getattr(record, _FIELDS, {}).items():
            text = str(value)
            if not text or any(c in text for c in ' ="'):
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info and record.levelno <= logging.DEBUG:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``{"ts", "level", "event", ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        """One line per event."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        doc.update(getattr(record, _FIELDS, {}))
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup(level: str = "info", fmt: str = "text", *, pii: bool = False) -> None:
    """Send the relay's logs to stderr in ``fmt`` at ``level``."""
    global _show_pii
    _show_pii = pii
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    # APScheduler warns on every skipped run; our own events say what matters.
    quiet = logging.DEBUG if level == "debug" else logging.ERROR
    for name in ("apscheduler", "httpx", "httpcore", "alembic"):
        logging.getLogger(name).setLevel(max(quiet, LEVELS.get(level, logging.INFO)))
