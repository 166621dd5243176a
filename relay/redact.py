"""What never leaves the process: secrets and configured URLs, in logs and in Sentry events.

:func:`register` takes a config (at start and after every reload): the API token,
webhook secrets and Twilio auth tokens, webhook header values, the send token, a password
in ``store.url``, and the path, query and credentials of the API's and every webhook's URL
(a Slack webhook's URL is its key) become secrets, and each of those URLs gets a label.
:func:`text` then shows a request's URL as its label (``webhook:crm``,
``api:/api/v2/sms/receive``), any other URL as its origin alone
(``https://host/[Filtered]``), and every secret as ``[Filtered]``.
:func:`numbers` masks phone numbers in text the relay did not write (httpx's logs).
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, unquote_plus, urlsplit

import httpx

from relay.config import FORMAT_SLACK
from relay.phone import mask

if TYPE_CHECKING:
    from relay.config import Config

FILTERED = "[Filtered]"
#: Secrets shorter than this are not registered: they would blank ordinary words.
MIN_SECRET_CHARS = 4
#: The label of requests to the Aatrox API; the path below ``api.base_url`` follows it.
API_LABEL = "api"
#: The label of requests to a webhook is this and the webhook's name.
WEBHOOK_LABEL = "webhook:"
#: What a URL that is no configured one shows in place of its path and query.
HIDDEN_PATH = f"/{FILTERED}"
#: Query parameters of ``store.url`` whose values are secrets (libpq reads a password there).
STORE_SECRET_PARAMS = frozenset(("password", "sslpassword"))
_DEFAULT_PORTS = {"http": 80, "https": 443}

_URL = re.compile(r"(?i)\bhttps?://[^\s\"'<>`\\]+")
# Punctuation that ends a sentence or a bracket rather than the URL before it.
_URL_TAIL = ".,;:!?)]}"
_BRACKETS = {")": "(", "]": "[", "}": "{"}
# Phone numbers: any run of 8 or more digits, with an optional leading +.
_PHONE = re.compile(r"\+?\d{8,}")


@dataclass(frozen=True)
class _Target:
    """A configured URL: requests at or below its path are shown as its label."""

    origin: tuple[str, str, int]
    path: str
    label: str
    #: Show the path below this one after the label (the API's endpoints).
    below: bool


@dataclass(frozen=True)
class _State:
    secrets: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None
    targets: tuple[_Target, ...] = ()


class _Registry:
    """The secrets and targets registered so far; read without a lock (one snapshot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = _State()

    def add(self, secrets: Iterable[str], targets: Iterable[_Target] = ()) -> None:
        """Add ``secrets`` (short ones are ignored) and ``targets`` (a new label for a URL
        replaces its old one)."""
        with self._lock:
            state = self.state
            values = state.secrets | {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
            pattern = state.pattern
            if values != state.secrets:
                ordered = sorted(values, key=len, reverse=True)
                pattern = re.compile("|".join(re.escape(v) for v in ordered))
            new = tuple(targets)
            keys = {(t.origin, t.path) for t in new}
            kept = tuple(t for t in state.targets if (t.origin, t.path) not in keys)
            self.state = _State(frozenset(values), pattern, kept + new)


_registry = _Registry()


def add_secret(value: str | bytes) -> None:
    """Never show ``value``: a token, a webhook's key... Bytes are also registered as
    their base64 (the ``whsec_`` form of a webhook secret)."""
    _registry.add(_secret_forms(value))


def register(config: Config) -> None:
    """Register every secret and URL of ``config``; what was registered before stays."""
    secrets: list[str] = []
    targets: list[_Target] = []
    if config.api.token:
        secrets.append(config.api.token)
    _add_url(config.api.base_url, API_LABEL, below=True, secrets=secrets, targets=targets)
    for hook in config.webhooks:
        for key in hook.secrets:
            secrets.extend(_secret_forms(key))
        if hook.twilio_auth_token:
            secrets.append(hook.twilio_auth_token)
        if hook.format == FORMAT_SLACK:  # .../services/T.../B.../<key>: the key alone too
            secrets.append(urlsplit(hook.url).path.rstrip("/").rpartition("/")[2])
        secrets.extend(value.strip() for _name, value in hook.headers)
        label = f"{WEBHOOK_LABEL}{hook.name}"
        _add_url(hook.url, label, below=False, secrets=secrets, targets=targets)
    if config.http is not None and config.http.send_token:
        secrets.append(config.http.send_token)
    secrets.extend(_store_secrets(config.store.url))
    _registry.add(secrets, targets)


def _secret_forms(value: str | bytes) -> Iterator[str]:
    if isinstance(value, bytes):
        yield base64.b64encode(value).decode()
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return
    yield value.strip()


def _add_url(
    url: str, label: str, *, below: bool, secrets: list[str], targets: list[_Target]
) -> None:
    """The secrets in ``url`` (its path, query, fragment and credentials, as written and
    as httpx sends them) into ``secrets``, its target into ``targets``."""
    try:
        parts = urlsplit(url)
        sent = httpx.URL(url)
        origin = _origin(parts.scheme, parts.hostname, parts.port)
    except (ValueError, httpx.InvalidURL):
        secrets.append(url)  # not a URL the relay can send to: hide it whole
        return
    raw_path, _, raw_query = sent.raw_path.decode("ascii").partition("?")
    for path in (parts.path, unquote(parts.path), raw_path, sent.path):
        if path.strip("/"):
            secrets.append(path)
    for query in (parts.query, unquote_plus(parts.query), raw_query):
        if query:
            secrets.append(query)
    secrets.extend(value for _key, value in parse_qsl(parts.query, keep_blank_values=True))
    secrets.extend(value for value in (parts.fragment, parts.password) if value)
    if parts.username and parts.password is None:  # https://TOKEN@host: the name is the key
        secrets.append(parts.username)
    if origin is not None:
        targets.append(_Target(origin, _trim(sent.path), label, below))


def _store_secrets(url: str) -> list[str]:
    """The password of ``store.url`` (in its credentials or its query), read as the store
    reads the URL (SQLAlchemy's parser), and as written."""
    from sqlalchemy.engine import make_url  # imported here: logs need no SQLAlchemy
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # not a URL; a port that is no number
        return []
    found = [str(parsed.password)] if parsed.password is not None else []
    found.extend(quote(password, safe="") for password in list(found))
    for key, value in parsed.query.items():
        if key.lower() in STORE_SECRET_PARAMS:
            found.extend([value] if isinstance(value, str) else value)
    return found


def _origin(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int] | None:
    scheme = scheme.lower()
    if not host or scheme not in _DEFAULT_PORTS:
        return None
    return scheme, host.lower(), port or _DEFAULT_PORTS[scheme]


def _trim(path: str) -> str:
    """``path`` without its trailing slash: ``/a/`` and ``/a`` name the same target."""
    return path.rstrip("/")


def url_label(url: str) -> str:
    """How ``url`` is shown: the label of the configured URL it is at or below
    (``webhook:crm``; ``api:`` and the path below ``api.base_url``), else its origin
    and :data:`HIDDEN_PATH` (``https://host`` alone when it has no path or query)."""
    try:
        parts = urlsplit(url)
        origin = _origin(parts.scheme, parts.hostname, parts.port)
    except ValueError:
        return FILTERED
    if origin is None:
        return FILTERED
    path = _trim(unquote(parts.path))
    best: _Target | None = None
    for target in _registry.state.targets:
        if target.origin != origin or not _is_below(path, target.path):
            continue
        if best is None or len(target.path) > len(best.path):
            best = target
    if best is not None:
        rest = path[len(best.path) :]
        return f"{best.label}:{rest}" if best.below and rest else best.label
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        shown = f"{shown}:{parts.port}"
    hidden = HIDDEN_PATH if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme.lower()}://{shown}{hidden}"


def _is_below(path: str, target: str) -> bool:
    return not target or path == target or path.startswith(target + "/")


def _relabel(match: re.Match[str]) -> str:
    url, tail = match[0], ""
    while url and url[-1] in _URL_TAIL:
        opening = _BRACKETS.get(url[-1])
        if opening is not None and url.count(opening) >= url.count(url[-1]):
            break  # "(x)" or "[::1]" or "[Filtered]": the bracket belongs to the URL
        url, tail = url[:-1], url[-1] + tail
    return url_label(url) + tail


def secrets(text: str) -> str:
    """``text`` with every registered secret as :data:`FILTERED`."""
    pattern = _registry.state.pattern
    return text if pattern is None else pattern.sub(FILTERED, text)


def text(value: str) -> str:
    """``value`` with URLs shown as :func:`url_label` shows them and without secrets."""
    if "://" in value:
        value = _URL.sub(_relabel, value)
    return secrets(value)


def numbers(text: str) -> str:
    """``text`` with every run of 8 or more digits (a phone number) masked."""
    return _PHONE.sub(lambda match: mask(match[0]), text)
