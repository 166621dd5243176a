"""Parsing one ``[[webhooks]]`` entry: its name, URL, HMAC secrets and extra headers."""

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
    DEFAULT_WEBHOOK_CONCURRENCY,
    DEFAULT_WEBHOOK_TIMEOUT,
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
    ("content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature")
)
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
    secrets = _webhook_secrets(hook, base)
    return WebhookConfig(
        name=name,
        url=hook.url("url", hook.text("url")),
        secret=secrets[0],
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
    )


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
