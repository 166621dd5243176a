"""Error reporting to Sentry, scrubbed, with alerts raised once per change of state.

:func:`setup` initialises sentry_sdk from ``[sentry]``. Every event and breadcrumb goes
through :func:`scrub_event` / :func:`scrub_breadcrumb` first: message text, phone
numbers, bearer tokens, ``Authorization`` headers, the secrets registered with
:func:`scrub_secret` or :func:`relay.redact.register` and the paths and queries of
configured URLs never leave the process: httpx's request breadcrumbs and spans name the
webhook (``webhook:crm``) or the API endpoint (``api:/api/v2/sms/receive``) instead.
:class:`Alerts` turns conditions the daemon sees on every poll (a rejected token) into
one event when they start.
Logs become breadcrumbs, never events: the relay's error logs repeat on every poll.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import sentry_sdk
from sentry_sdk.crons import capture_checkin
from sentry_sdk.integrations.httpx import HttpxIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.sqlalchemy import SqlalchemyIntegration
from sentry_sdk.transport import Transport

from relay import redact
from relay.config import SentryConfig

if TYPE_CHECKING:
    from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint, MonitorConfig

FILTERED = redact.FILTERED
#: Breadcrumbs kept per event: the last few polls and deliveries, no more.
MAX_BREADCRUMBS = 30
#: Secrets shorter than this are not registered: they would blank ordinary words.
MIN_SECRET_CHARS = redact.MIN_SECRET_CHARS
#: Check-in statuses Sentry knows.
CHECKIN_STATUSES = ("in_progress", "ok", "error")
#: Sentry accepts a few check-ins a minute per monitor: ``ok`` ones are sent at most this often.
MIN_CHECKIN_GAP = 60.0
#: Minutes a check-in may be late before Sentry calls it missed.
CHECKIN_MARGIN_MINUTES = 5
#: Failed check-ins in a row before Sentry opens an issue.
FAILURE_ISSUE_THRESHOLD = 3
MONITOR_SLUG_PREFIX = "aatrox-relay-poll"

_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*|\b(basic)\s+[A-Za-z0-9+/]{8,}=*")
# key: value and key=value credentials, an auth scheme included: "Authorization: Bearer x".
_ASSIGNED = re.compile(
    r"""(?ix)\b((?:proxy-)?authorization|x-api-key|api[_-]?key|access[_-]?token|token|secret
        |password|passwd|send_token|webhook-signature)(["']?\s*[:=]\s*["']?)
        (?:(?:bearer|basic)\s+)?[^\s"',;}&]+"""
)
# Message text quoted inside a string: {"text": "hi"}, {'body': 'hi'}.
_QUOTED_TEXT = re.compile(
    r"""(["'])(text|body|message|content)\1(\s*:\s*)(["'])(?:\\.|(?!\4).)*\4""", re.DOTALL
)
# Keys (lower case, "-" as "_") whose value is a credential wherever they appear.
_SECRET_KEY_PARTS = ("authorization", "cookie", "token", "secret", "password", "passwd",
                     "api_key", "apikey", "signature", "dsn")  # fmt: skip
# Keys whose value is message text, in data (extra, contexts, breadcrumb data, bodies).
_TEXT_KEYS = frozenset(("text", "body", "message", "content", "message_text", "sms", "sms_text"))
# Parts of a URL that breadcrumbs and spans carry apart from it (sentry_sdk's SPANDATA).
_URL_PART_KEYS = frozenset(("http.query", "http.fragment", "url.query", "url.fragment"))
# Identifiers that look like digits but are not phone numbers.
_ID_KEYS = frozenset(("event_id", "trace_id", "span_id", "parent_span_id", "check_in_id",
                      "segment_id", "profile_id", "replay_id", "sample_rand"))  # fmt: skip


def scrub_secret(value: str | bytes) -> None:
    """Never report ``value``: the API token, a webhook secret (the ``whsec_`` string or
    its decoded key), a send token. Bytes are also registered as their base64. The
    secrets of a whole config are registered with :func:`relay.redact.register`.
    """
    redact.add_secret(value)


def _quoted_text(match: re.Match[str]) -> str:
    quote, key, colon, value_quote = match.group(1, 2, 3, 4)
    return f"{quote}{key}{quote}{colon}{value_quote}{FILTERED}{value_quote}"


def scrub_text(text: str) -> str:
    """``text`` without registered secrets, configured URLs (shown as their labels),
    credentials, quoted message text or phone numbers."""
    text = redact.text(text)
    text = _ASSIGNED.sub(lambda m: f"{m[1]}{m[2]}{FILTERED}", text)
    text = _BEARER.sub(lambda m: f"{m[1] or m[2]} {FILTERED}", text)
    text = _QUOTED_TEXT.sub(_quoted_text, text)
    return redact.numbers(text)


def _is_secret_key(key: str) -> bool:
    norm = key.lower().replace("-", "_")
    return any(part in norm for part in _SECRET_KEY_PARTS)


def _scrub(value: Any, *, data: bool) -> Any:
    """``value`` scrubbed throughout; ``data`` (user data, not event structure) also drops
    values under message-text keys.
    """
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = str(key)
            if name in _ID_KEYS:
                out[key] = item
            elif (
                _is_secret_key(name)
                or name in _URL_PART_KEYS
                or (data and name.lower() in _TEXT_KEYS)
            ):
                out[key] = FILTERED if item not in (None, "") else item
            else:
                out[key] = _scrub(item, data=data)
        return out
    if isinstance(value, list | tuple):
        return [_scrub(item, data=data) for item in value]
    return value


def _scrub_request(request: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(_scrub(dict(request), data=False))
    for key in ("data", "cookies"):  # bodies may hold message text, cookies sessions
        if request.get(key):
            out[key] = FILTERED
    if isinstance(request.get("headers"), Mapping):
        out["headers"] = _scrub(request["headers"], data=True)
    return out


def _scrub_crumb(crumb: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(crumb)
    if isinstance(crumb.get("message"), str):
        out["message"] = scrub_text(crumb["message"])
    if "data" in crumb:
        out["data"] = _scrub(crumb["data"], data=True)
    return out


def _scrub_frames(holder: Any) -> Any:
    """Drop local variables of stack frames, should any be there."""
    if isinstance(holder, Mapping) and isinstance(holder.get("stacktrace"), Mapping):
        frames = holder["stacktrace"].get("frames") or []
        clean = [{k: v for k, v in f.items() if k != "vars"} for f in frames if isinstance(f, dict)]
        return {**holder, "stacktrace": {**holder["stacktrace"], "frames": clean}}
    return holder


def scrub_event(event: Event, hint: Hint | None = None) -> Event:
    """``before_send`` (and ``before_send_transaction``): the event, scrubbed in place."""
    ev = cast("dict[str, Any]", event)
    for key in ("message", "logentry", "tags", "transaction", "fingerprint"):
        if key in ev:
            ev[key] = _scrub(ev[key], data=False)
    for key in ("extra", "contexts", "user"):
        if key in ev:
            ev[key] = _scrub(ev[key], data=True)
    for section in ("exception", "threads"):
        block = ev.get(section)
        if isinstance(block, Mapping) and isinstance(block.get("values"), list):
            values = [_scrub_frames(v) for v in block["values"]]
            for value in values:
                if isinstance(value, dict) and isinstance(value.get("value"), str):
                    value["value"] = scrub_text(value["value"])
            ev[section] = {**block, "values": values}
    crumbs = ev.get("breadcrumbs")
    if isinstance(crumbs, Mapping) and isinstance(crumbs.get("values"), list):
        ev["breadcrumbs"] = {**crumbs, "values": [_scrub_crumb(c) for c in crumbs["values"]]}
    if isinstance(ev.get("request"), Mapping):
        ev["request"] = _scrub_request(ev["request"])
    if isinstance(ev.get("spans"), list):
        ev["spans"] = [_scrub_span(span) for span in ev["spans"]]
    return event


def _scrub_span(span: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(span)
    if isinstance(span.get("description"), str):
        out["description"] = scrub_text(span["description"])
    for key, data in (("data", True), ("tags", False)):
        if key in span:
            out[key] = _scrub(span[key], data=data)
    return out


def scrub_breadcrumb(crumb: Breadcrumb, hint: BreadcrumbHint | None = None) -> Breadcrumb:
    """``before_breadcrumb``: the breadcrumb, scrubbed.

    A log record becomes its template only (the relay's event name): its
    arguments and structured fields never leave the process.
    """
    record = (hint or {}).get("log_record")
    if isinstance(record, logging.LogRecord):
        crumb = {**crumb, "message": scrub_text(str(record.msg)), "data": {}}
    return _scrub_crumb(crumb)


def setup(config: SentryConfig | None, *, version: str, transport: Transport | None = None) -> bool:
    """Initialise sentry_sdk from ``config``; False (and nothing done) when it is None.

    ``transport`` replaces the HTTP one (tests record envelopes with it).
    """
    if config is None:
        return False
    with warnings.catch_warnings():
        # Recent SDKs prefer data_collection, but providing it turns their own scrubber
        # off; send_default_pii=False keeps it on, in every 2.x.
        warnings.filterwarnings("ignore", "The send_default_pii option", DeprecationWarning)
        _init(config, version=version, transport=transport)
    return True


def _init(config: SentryConfig, *, version: str, transport: Transport | None) -> None:
    sentry_sdk.init(
        dsn=config.dsn,
        release=config.release or f"aatrox-relay@{version}",
        environment=config.environment,
        traces_sample_rate=config.traces_sample_rate,
        include_local_variables=False,
        send_default_pii=False,
        max_breadcrumbs=MAX_BREADCRUMBS,
        max_request_body_size="never",
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
        # No sentry-trace/baggage headers on requests to the API or to customers' webhooks.
        trace_propagation_targets=[],
        # Logs are breadcrumbs only: alerts and exceptions are the events. The integrations
        # are named rather than found: finding them would import aiohttp's (the relay uses
        # no aiohttp application for it to hook) at about 85 ms a start.
        auto_enabling_integrations=False,
        integrations=[
            LoggingIntegration(level=logging.INFO, event_level=None),
            HttpxIntegration(),
            SqlalchemyIntegration(),
        ],
        transport=transport,
    )


def close(timeout: float = 2.0) -> None:
    """Send what is queued (waiting up to ``timeout`` seconds) and stop reporting."""
    sentry_sdk.get_client().close(timeout=timeout)


class Alerts:
    """Problems reported once when they start, not on every poll that sees them.

    Keys: ``"token_rejected"``, ``f"webhook_dead:{name}"``, ``f"circuit_open:{name}"``,
    ``"store_error"``... Without
    :func:`setup` the state is still kept and nothing is sent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, str] = {}

    @property
    def active(self) -> frozenset[str]:
        """The keys in a problem state now."""
        with self._lock:
            return frozenset(self._active)

    def problem(self, key: str, message: str, **tags: str) -> bool:
        """Report ``message`` (level error) unless ``key`` is already a problem.

        Returns whether this call started the problem (and sent an event).
        """
        with self._lock:
            if key in self._active:
                return False
            self._active[key] = message
        with sentry_sdk.new_scope() as scope:
            scope.fingerprint = ["aatrox-relay", key]
            scope.set_tag("alert", key)
            for name, value in tags.items():
                scope.set_tag(name, value)
            sentry_sdk.capture_message(message, level="error")
        return True

    def resolved(self, key: str) -> bool:
        """``key`` is fine again: the next :meth:`problem` reports anew. Returns whether it
        was a problem.
        """
        with self._lock:
            was = self._active.pop(key, None) is not None
        if was:
            sentry_sdk.add_breadcrumb(category="alert", message=f"resolved: {key}", level="info")
        return was

    def recovered(self, key: str, message: str, **tags: str) -> bool:
        """:meth:`resolved`, and when ``key`` was a problem Sentry hears ``message`` too
        (level info): for problems whose end matters as much as their start."""
        if not self.resolved(key):
            return False
        with sentry_sdk.new_scope() as scope:
            scope.fingerprint = ["aatrox-relay", key, "recovered"]
            scope.set_tag("alert", key)
            for name, value in tags.items():
                scope.set_tag(name, value)
            sentry_sdk.capture_message(message, level="info")
        return True

    def exception(self, exc: BaseException) -> str | None:
        """Report an unexpected exception; the event id, or None when not sent."""
        return sentry_sdk.capture_exception(exc)


def checkin(
    slug: str,
    status: str,
    *,
    check_in_id: str | None = None,
    duration: float | None = None,
    monitor_config: MonitorConfig | None = None,
) -> str | None:
    """A Sentry cron check-in (``in_progress``, ``ok`` or ``error``); its id, or None
    when Sentry is not set up.
    """
    if status not in CHECKIN_STATUSES:
        msg = f"check-in status {status!r} is not one of {', '.join(CHECKIN_STATUSES)}"
        raise ValueError(msg)
    return capture_checkin(
        monitor_slug=slug,
        check_in_id=check_in_id,
        status=status,
        duration=duration,
        monitor_config=monitor_config,
    )


def monitor_slug(number: str) -> str:
    """The cron monitor of polls of ``number``, without the number in it:
    ``aatrox-relay-poll-001-3f2a9c`` (its last three digits and a short hash).
    """
    digest = hashlib.sha256(number.encode()).hexdigest()[:6]
    return f"{MONITOR_SLUG_PREFIX}-{number[-3:]}-{digest}"


def monitor_config(interval: float) -> MonitorConfig:
    """The schedule of a job that checks in every ``interval`` seconds (whole minutes, at
    least one, since check-ins are throttled to one a minute).
    """
    minutes = max(1, math.ceil(max(interval, MIN_CHECKIN_GAP) / 60))
    return {
        "schedule": {"type": "interval", "value": minutes, "unit": "minute"},
        "checkin_margin": CHECKIN_MARGIN_MINUTES,
        "max_runtime": CHECKIN_MARGIN_MINUTES,
        "failure_issue_threshold": FAILURE_ISSUE_THRESHOLD,
        "recovery_threshold": 1,
    }


class Heartbeats:
    """Heartbeat check-ins for jobs that run more often than Sentry accepts check-ins.

    :meth:`beat` sends a check-in when a job's status changes, else at most every
    ``min_gap`` seconds per slug.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, min_gap: float = MIN_CHECKIN_GAP
    ) -> None:
        self._clock = clock
        self._min_gap = min_gap
        self._last: dict[str, tuple[str, float]] = {}

    def beat(
        self,
        slug: str,
        ok: bool,
        *,
        duration: float | None = None,
        monitor_config: MonitorConfig | None = None,
    ) -> str | None:
        """One run of ``slug`` ended; the check-in id when one was sent, else None."""
        status = "ok" if ok else "error"
        now = self._clock()
        last = self._last.get(slug)
        if last is not None and last[0] == status and now - last[1] < self._min_gap:
            return None
        self._last[slug] = (status, now)
        return checkin(slug, status, duration=duration, monitor_config=monitor_config)
