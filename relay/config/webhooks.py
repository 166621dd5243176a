"""Parsing one ``[[webhooks]]`` entry: its name, URL, format, HMAC secrets (or Twilio auth
token) and extra headers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from relay.config.model import (
    DEFAULT_CIRCUIT_FAILURES,
    DEFAULT_CIRCUIT_PROBE,
    DEFAULT_GIVE_UP_AFTER,
    DEFAULT_REGION,
    DEFAULT_RETRY_INITIAL,
    DEFAULT_RETRY_MAX,
    DEFAULT_TWILIO_ACCOUNT_SID,
    DEFAULT_WEBHOOK_CONCURRENCY,
    DEFAULT_WEBHOOK_TIMEOUT,
    EVENT_TYPES,
    FORMAT_STANDARD,
    FORMAT_TWILIO,
    SMS_RECEIVED,
    WEBHOOK_FORMATS,
    MatchConfig,
    WebhookConfig,
)
from relay.config.tables import Table, show
from relay.errors import InvalidNumber
from relay.phone import prefix
from relay.ratelimit import parse_rate
from relay.signing import decode_secret

MAX_WEBHOOK_CONCURRENCY = 1000
#: Headers the relay sets on every delivery, so ``webhooks.headers`` may not.
RESERVED_HEADERS = frozenset(
    ("content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature",
     "x-twilio-signature", "i-twilio-idempotency-token")
)  # fmt: skip
#: A header name: an HTTP token (RFC 9110).
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: A header value: visible ASCII, spaces and tabs (httpx sends header values as ASCII).
_HEADER_VALUE_RE = re.compile(r"[\t -~]*")
_WEBHOOK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def parse_webhook(
    hook: Table, base: Path, seen: dict[str, str], region: str = DEFAULT_REGION
) -> WebhookConfig:
    """One [[webhooks]] entry; ``seen`` maps the names used so far to their keys, and
    ``region`` reads national number prefixes in ``match.from``."""
    name = hook.text("name")
    if not name:
        hook.fail("name", "is required")
    if not _WEBHOOK_NAME_RE.fullmatch(name):
        hook.fail("name", f'{show(name)} is not letters, digits, "_", "." and "-"')
    if name in seen:
        hook.fail("name", f"{show(name)} is already used by {seen[name]}")
    seen[name] = hook.key
    retry_initial = hook.duration("retry_initial", DEFAULT_RETRY_INITIAL)
    retry_max = hook.duration("retry_max", DEFAULT_RETRY_MAX)
    if retry_max < retry_initial:
        hook.fail("retry_max", f"must not be less than {hook.sub('retry_initial')}")
    fmt = hook.choice("format", WEBHOOK_FORMATS, FORMAT_STANDARD)
    secrets = _webhook_secrets(hook, base) if fmt == FORMAT_STANDARD else _no_secret(hook, fmt)
    return WebhookConfig(
        name=name,
        url=hook.url("url", hook.text("url")),
        secret=secrets[0] if secrets else b"",
        extra_secrets=secrets[1:],
        timeout=hook.duration("timeout", DEFAULT_WEBHOOK_TIMEOUT),
        retry_initial=retry_initial,
        retry_max=retry_max,
        give_up_after=hook.duration("give_up_after", DEFAULT_GIVE_UP_AFTER),
        concurrency=hook.integer(
            "concurrency", DEFAULT_WEBHOOK_CONCURRENCY, 1, MAX_WEBHOOK_CONCURRENCY
        ),
        headers=_webhook_headers(hook, base),
        match=_match(hook, region),
        rate_limit=_rate_limit(hook),
        ordering=hook.choice("ordering", ORDERINGS, "none"),
        circuit_failures=hook.integer("circuit_failures", DEFAULT_CIRCUIT_FAILURES, 0, 1_000_000),
        circuit_probe=hook.duration("circuit_probe", DEFAULT_CIRCUIT_PROBE),
        events=_events(hook, fmt),
        format=fmt,
        twilio_auth_token=_twilio_token(hook, base, fmt),
        twilio_account_sid=_twilio_account_sid(hook, fmt),
    )


def _events(hook: Table, fmt: str) -> frozenset[str]:
    """``events``: the event types the webhook is sent; ``["sms.received"]`` when unset.
    A ``twilio`` webhook takes no other: Twilio's webhook is for incoming messages."""
    if "events" not in hook.data:
        return frozenset((SMS_RECEIVED,))
    names = hook.strings("events") or []
    if not names:
        hook.fail("events", f"is empty (name at least one of {', '.join(EVENT_TYPES)})")
    for i, name in enumerate(names):
        if name not in EVENT_TYPES:
            known = ", ".join(EVENT_TYPES)
            hook.fail(f"events[{i}]", f"{show(name)} is not an event type (use {known})")
        if fmt == FORMAT_TWILIO and name != SMS_RECEIVED:
            hook.fail(f"events[{i}]", f'{show(name)}: format = "twilio" takes only "sms.received"')
    return frozenset(names)


#: The keys a ``twilio`` webhook's auth token may come from; exactly one is set.
TWILIO_TOKEN_KEYS = ("twilio_auth_token", "twilio_auth_token_file")
#: A Twilio auth token is 32 characters; anything much shorter is a mistake.
MIN_TWILIO_TOKEN = 16
#: ``twilio_account_sid``: "AC" and 32 hex digits.
_ACCOUNT_SID_RE = re.compile(r"AC[0-9a-fA-F]{32}")


def _no_secret(hook: Table, fmt: str) -> tuple[bytes, ...]:
    """No Standard Webhooks secret, for a ``fmt`` webhook: an error naming any given."""
    for key in SECRET_KEYS:
        if key in hook.data:
            why = "twilio_auth_token signs it" if fmt == FORMAT_TWILIO else "it is unsigned"
            hook.fail(key, f'is not used with format = "{fmt}" ({why})')
    return ()


def _twilio_token(hook: Table, base: Path, fmt: str) -> str:
    """The key of X-Twilio-Signature, from ``twilio_auth_token`` or (read like
    ``secret_file``) ``twilio_auth_token_file``; "" for other formats. Never shown."""
    given = [key for key in TWILIO_TOKEN_KEYS if key in hook.data]
    if fmt != FORMAT_TWILIO:
        if given:
            hook.fail(given[0], 'is only used with format = "twilio"')
        return ""
    if not given:
        other = hook.sub("twilio_auth_token_file")
        hook.fail("twilio_auth_token", f'required with format = "twilio" (or {other})')
    if len(given) > 1:
        names = ", ".join(hook.sub(key) for key in TWILIO_TOKEN_KEYS)
        hook.fail(given[0], f"set exactly one of {names}")
    (key,) = given
    if key == "twilio_auth_token":
        token = hook.text(key)
    else:
        token = _read_secret(hook, key, hook.path(key, base)).strip()
    if not token:
        hook.fail(key, "is empty")
    if len(token) < MIN_TWILIO_TOKEN or not token.isprintable() or " " in token:
        hook.fail(key, f"is not a Twilio auth token ({MIN_TWILIO_TOKEN}+ characters, no spaces)")
    return token


def _twilio_account_sid(hook: Table, fmt: str) -> str:
    """``twilio_account_sid``, sent as AccountSid; a made-up one when unset."""
    if "twilio_account_sid" not in hook.data:
        return DEFAULT_TWILIO_ACCOUNT_SID
    if fmt != FORMAT_TWILIO:
        hook.fail("twilio_account_sid", 'is only used with format = "twilio"')
    sid = hook.text("twilio_account_sid")
    if not _ACCOUNT_SID_RE.fullmatch(sid):
        hook.fail("twilio_account_sid", f"{show(sid)} is not AC followed by 32 hex digits")
    return sid


def _rate_limit(hook: Table) -> float | None:
    """``rate_limit`` in requests per second (``"20/s"``, ``"600/m"``); None when unset."""
    if "rate_limit" not in hook.data:
        return None
    value = hook.get("rate_limit", str, 'a string such as "20/s"', "")
    try:
        return parse_rate(value)
    except ValueError as exc:
        hook.fail("rate_limit", f"{show(value)} {exc}")


def _match(hook: Table, region: str) -> MatchConfig | None:
    """``[webhooks.match]``: sender prefixes (``from``) and a regular expression searched
    in the text (``text``); None when the table is missing or empty."""
    table = hook.table("match", ("from", "text"))
    if not table.data:
        return None
    senders: list[str] = []
    for i, value in enumerate(table.strings("from") or []):
        try:
            senders.append(prefix(value, region))
        except InvalidNumber as exc:
            table.fail(f"from[{i}]", str(exc))
    if "from" in table.data and not senders:
        table.fail("from", "is empty (leave it out to match every sender)")
    pattern = None
    if "text" in table.data:
        source = table.get("text", str, "a string", "")
        if not source:
            table.fail("text", "is empty (leave it out to match every text)")
        try:
            pattern = re.compile(source)
        except re.error as exc:
            table.fail("text", f"is not a regular expression: {exc}")
    return MatchConfig(tuple(dict.fromkeys(senders)), pattern)


def _webhook_headers(hook: Table, base: Path) -> tuple[tuple[str, str], ...]:
    """``headers``, then the ``Name: value`` lines of ``headers_file`` (blank lines and
    ``#`` comments skipped). Errors never show a value: every value is a secret."""
    table = hook.table("headers")
    found: dict[str, tuple[str, str, str]] = {}  # lower-case name -> (name, value, key)
    for name in table.data:
        value = table.get(name, str, "a string", "")
        problem = _header_problem(name, value, found)
        if problem:
            table.fail(name, problem)
        found[name.lower()] = (name, value, table.sub(name))
    path = hook.path("headers_file", base)
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path else []
    except OSError as exc:
        hook.fail("headers_file", f"cannot read {path}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        hook.fail("headers_file", f"{path} is not UTF-8 text")
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, value = (part.strip() for part in line.partition(":"))
        if not colon or not name:
            hook.fail("headers_file", f'line {number} is not "Name: value"')
        problem = _header_problem(name, value, found) or ("" if value else "has no value")
        if problem:
            shown = show(name) if _HEADER_NAME_RE.fullmatch(name) else "the header name"
            hook.fail("headers_file", f"line {number}: {shown} {problem}")
        found[name.lower()] = (name, value, f"{hook.sub('headers_file')} line {number}")
    return tuple((name, value) for name, value, _key in found.values())


def _header_problem(name: str, value: str, found: Mapping[str, tuple[str, str, str]]) -> str:
    """What is wrong with header ``name`` given those ``found`` so far; "" when nothing.
    Never shows the value."""
    if not _HEADER_NAME_RE.fullmatch(name):
        return "is not letters, digits and !#$%&'*+-.^_`|~"
    if name.lower() in RESERVED_HEADERS:
        return "is reserved: the relay sets it"
    if name.lower() in found:
        return f"is already set by {found[name.lower()][2]}"
    if not _HEADER_VALUE_RE.fullmatch(value):
        return "has a value that is not printable ASCII"
    return ""


#: ``ordering``: as deliveries fall due, or each sender's messages in provider order.
ORDERINGS = ("none", "sender")
#: The keys a webhook's secret may come from; exactly one is set.
SECRET_KEYS = ("secret", "secret_file", "secrets", "secret_files")
#: Secrets at once during a rotation: the new one, the old one, and a spare.
MAX_SECRETS = 3


def _webhook_secrets(hook: Table, base: Path) -> tuple[bytes, ...]:
    """The HMAC keys from ``secret``, ``secret_file``, ``secrets`` or ``secret_files``
    (exactly one of them), the first one first; messages never show a secret."""
    given = [key for key in SECRET_KEYS if key in hook.data]
    if len(given) != 1:
        names = ", ".join(hook.sub(key) for key in SECRET_KEYS)
        hook.fail(given[0] if given else "secret", f"set exactly one of {names}")
    (key,) = given
    if key == "secret":
        return (_decoded(hook, key, hook.text("secret")),)
    if key == "secret_file":
        path = hook.path("secret_file", base)
        return (_decoded(hook, key, _read_secret(hook, key, path)),)
    values = hook.strings(key) or []
    if not 1 <= len(values) <= MAX_SECRETS:
        hook.fail(key, f"must hold 1 to {MAX_SECRETS} secrets, got {len(values)}")
    keys: list[bytes] = []
    for i, value in enumerate(values):
        item = f"{key}[{i}]"
        if key == "secret_files":
            if not value:
                hook.fail(item, "is empty")
            value = _read_secret(hook, item, base / Path(value).expanduser())
        decoded = _decoded(hook, item, value)
        if decoded in keys:
            hook.fail(item, f"is the same secret as {key}[{keys.index(decoded)}]")
        keys.append(decoded)
    return tuple(keys)


def _read_secret(hook: Table, key: str, path: Path | None) -> str:
    """The text of the secret file at ``path``, for ``key``."""
    try:
        return path.read_text(encoding="utf-8") if path else ""
    except (OSError, UnicodeDecodeError) as exc:
        hook.fail(key, f"cannot read {path}: {getattr(exc, 'strerror', '') or exc}")


def _decoded(hook: Table, key: str, secret: str) -> bytes:
    """The HMAC key of ``secret``, given at ``key``."""
    try:
        return decode_secret(secret)
    except ValueError as exc:
        hook.fail(key, str(exc))
