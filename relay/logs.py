"""Logging: stable event names with structured fields, as text or JSON lines on stderr.

Call sites log an event name and fields::

    log.info("relay.poll.failed", extra=fields(number=masked, error=str(exc)))

Never pass a token or message text as a field. As a second line of defence every
line goes through :func:`relay.redact.text` (configured URLs as their labels, registered
secrets as ``[Filtered]``), and lines from other libraries (httpx, httpcore, alembic,
APScheduler) have their phone numbers masked unless ``log.pii``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from relay import redact
from relay.phone import mask

_FIELDS = "relay_fields"
#: Loggers whose records the relay writes: their numbers are masked (or not) at the call.
OWN_LOGGERS = ("relay",)
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


def pii() -> bool:
    """Whether ``log.pii`` shows phone numbers in full (logs, status, metrics)."""
    return _show_pii


def clean(record: logging.LogRecord, text: str) -> str:
    """``text`` of ``record`` as it may be shown: URLs as their labels, no secrets, and
    no full phone numbers from other libraries' records unless log.pii."""
    text = redact.text(text)
    own = record.name.split(".", 1)[0] in OWN_LOGGERS
    return text if own or _show_pii else redact.numbers(text)


def _clean_value(record: logging.LogRecord, value: Any) -> Any:
    """A JSON field's value, cleaned as :func:`clean` cleans text, its type kept."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_clean_value(record, item) for item in value]
    if isinstance(value, dict):
        return {str(k): _clean_value(record, item) for k, item in value.items()}
    return clean(record, str(value))


def _message(record: logging.LogRecord) -> str:
    """The record's message, cleaned; a broken format shows its template."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = str(record.msg)
    return clean(record, message)


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
        parts = [self._stamp, record.levelname.lower(), _message(record)]
        for key, value in getattr(record, _FIELDS, {}).items():
            text = clean(record, str(value))
            if not text or any(c in text for c in ' ="'):
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info and record.levelno <= logging.DEBUG:
            line += "\n" + clean(record, self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``{"ts", "level", "event", ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        """One line per event."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "event": _message(record),
            "logger": record.name,
        }
        for key, value in getattr(record, _FIELDS, {}).items():
            doc[key] = _clean_value(record, value)
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
