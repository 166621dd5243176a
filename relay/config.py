"""The TOML configuration, parsed once into frozen dataclasses.

Every error names its key (``poll.interval: "fast" is not a duration``); unknown
keys are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone, tzinfo
from pathlib import Path
from typing import Literal, NoReturn, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from relay.errors import ConfigError, InvalidNumber
from relay.phone import is_region, mask, valid_number
from relay.signing import decode_secret

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Where the config is read from when neither --config nor $AATROX_RELAY_CONFIG says.
DEFAULT_CONFIG_PATH = Path("/etc/aatrox-relay/config.toml")
CONFIG_ENV = "AATROX_RELAY_CONFIG"
TOKEN_ENV = "AATROX_TOKEN"
#: systemd LoadCredential= name read from $CREDENTIALS_DIRECTORY.
TOKEN_CREDENTIAL = "aatrox-token"

DEFAULT_BASE_URL = "https://api.smsaatrox.com.au"
DEFAULT_API_TIMEOUT = 10.0
DEFAULT_REGION = "AU"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_RETENTION = 30 * 86400.0
DEFAULT_POLL_INTERVAL = 10.0
DEFAULT_POLL_JITTER = 1.0
DEFAULT_POLL_CONCURRENCY = 16
DEFAULT_WEBHOOK_TIMEOUT = 15.0
DEFAULT_RETRY_INITIAL = 5.0
DEFAULT_RETRY_MAX = 3600.0
DEFAULT_GIVE_UP_AFTER = 3 * 86400.0
DEFAULT_WEBHOOK_CONCURRENCY = 8
DEFAULT_LEASE = 15.0
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
#: An SMS whose send had an unknown outcome is not sent again unless told: a repeat
#: costs money and annoys its recipient.
DEFAULT_RETRY_UNKNOWN = False


@dataclass(frozen=True)
class TokenSource:
    """Where the API token comes from, so it can be read again after a 401."""

    kind: Literal["inline", "file", "env", "credential"]
    #: The token itself for "inline" and "env"; the file's path for "file" and "credential".
    value: str = field(repr=False)

    def read(self) -> str:
        """The token, read again from its file when it has one.

        Raises :class:`ConfigError` naming the file when it cannot be read or is empty.
        """
        if self.kind in ("inline", "env"):
            return self.value
        try:
            token = Path(self.value).read_text(encoding="utf-8").strip()
        except OSError as exc:
            msg = f"api.token_file: cannot read {self.value}: {exc.strerror or exc}"
            raise ConfigError(msg) from None
        if not token:
            msg = f"api.token_file: {self.value} is empty"
            raise ConfigError(msg)
        return token

    def describe(self) -> str:
        """Where the token came from, without the token: for logs and ``check``."""
        if self.kind == "inline":
            return "api.token in the config"
        if self.kind == "env":
            return f"${TOKEN_ENV}"
        return self.value


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: how to reach the Aatrox API."""

    token_source: TokenSource
    token: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    timeout: float = DEFAULT_API_TIMEOUT
    default_region: str = DEFAULT_REGION
    timezone: tzinfo | None = None  # None means UTC
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    ca_bundle: Path | None = None
    allow_insecure_http: bool = False


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: where seen messages and queued deliveries live."""

    url: str
    retention: float = DEFAULT_RETENTION
    #: How long a relay's hold on a number or a delivery lasts unless renewed:
    #: the time within which another relay takes over from a dead one.
    lease: float = DEFAULT_LEASE


@dataclass(frozen=True)
class Backfill:
    """``poll.backfill``: what the first poll of a number delivers."""

    mode: Literal["none", "all", "window"] = "none"
    #: With mode "window": deliver messages younger than this many seconds.
    window: float = 0.0


@dataclass(frozen=True)
class PollConfig:
    """``[poll]``: how often numbers are polled."""

    interval: float = DEFAULT_POLL_INTERVAL
    jitter: float = DEFAULT_POLL_JITTER
    backfill: Backfill = field(default_factory=Backfill)
    #: Polls in flight at once, across all numbers.
    concurrency: int = DEFAULT_POLL_CONCURRENCY


@dataclass(frozen=True)
class NumberConfig:
    """One ``[[numbers]]`` entry."""

    number: str  # E.164
    webhooks: tuple[str, ...]  # resolved names; every webhook when the entry named none
    interval: float
    sender: str | None = None  # ``from``, E.164
    #: Replies from this number go through /sms/send/disclaimer.
    disclaimer: bool = False


@dataclass(frozen=True)
class WebhookConfig:
    """One ``[[webhooks]]`` entry."""

    name: str
    url: str
    secret: bytes = field(repr=False)  # the decoded HMAC key
    timeout: float = DEFAULT_WEBHOOK_TIMEOUT
    retry_initial: float = DEFAULT_RETRY_INITIAL
    retry_max: float = DEFAULT_RETRY_MAX
    give_up_after: float = DEFAULT_GIVE_UP_AFTER
    concurrency: int = DEFAULT_WEBHOOK_CONCURRENCY
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: what goes to stderr."""

    level: str = "info"
    format: Literal["text", "json"] = "text"
    #: Log sender numbers in full instead of masked to their last three digits.
    pii: bool = False


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: the health, metrics and send endpoint, when ``listen`` is set."""

    host: str
    port: int
    #: Bearer token for ``POST /v1/send``; without one that endpoint does not exist.
    send_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SentryConfig:
    """``[sentry]``: error reporting, when ``dsn`` is set."""

    dsn: str = field(repr=False)
    environment: str | None = None
    release: str | None = None
    traces_sample_rate: float = 0.0
    #: Report each poll job as a Sentry cron check-in.
    monitor: bool = False


@dataclass(frozen=True)
class RunConfig:
    """``[run]``: the daemon's lifecycle."""

    #: On SIGTERM, how long deliveries in flight may take to finish.
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT


@dataclass(frozen=True)
class OutboundConfig:
    """``[outbound]``: sending SMS (replies and ``POST /v1/send``)."""

    #: Send again an SMS whose earlier attempt may or may not have reached the API
    #: (the request went out, no answer came), at the risk of sending it twice.
    retry_unknown: bool = DEFAULT_RETRY_UNKNOWN


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    api: ApiConfig
    store: StoreConfig
    poll: PollConfig
    numbers: tuple[NumberConfig, ...]
    webhooks: tuple[WebhookConfig, ...]
    log: LogConfig = field(default_factory=LogConfig)
    http: HttpConfig | None = None
    sentry: SentryConfig | None = None
    run: RunConfig = field(default_factory=RunConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    path: Path | None = None

    def webhook(self, name: str) -> WebhookConfig:
        """The webhook called ``name``; KeyError when there is none."""
        for hook in self.webhooks:
            if hook.name == name:
                return hook
        raise KeyError(name)


def default_store_url(environ: dict[str, str] | None = None) -> str:
    """``$STATE_DIRECTORY/relay.db`` under systemd, else ``aatrox-relay.db``, which
    :func:`load` reads from the config file's directory, like any relative SQLite path."""
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY")
    if state:
        # systemd may pass several colon-separated directories; the first is ours.
        return f"sqlite:///{Path(state.split(':')[0]) / 'relay.db'}"
    return "sqlite:///aatrox-relay.db"


# --- loading ---------------------------------------------------------------
# parse_duration, config_path, load and parse; the helpers below them are private.

#: No number is polled more often than this.
MIN_POLL_INTERVAL = 0.1
MIN_MAX_RESPONSE_BYTES = 1024
MAX_WEBHOOK_CONCURRENCY = 1000
#: A shorter lease would expire between renewals under ordinary load.
MIN_LEASE = 1.0
#: ``http.send_token`` guards sending SMS: too short a token can be guessed.
MIN_SEND_TOKEN_LENGTH = 16
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
#: Headers the relay sets on every delivery, so ``webhooks.headers`` may not.
RESERVED_HEADERS = frozenset(
    ("content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature")
)
#: A header name: an HTTP token (RFC 9110).
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: A header value: visible ASCII, spaces and tabs (httpx sends header values as ASCII).
_HEADER_VALUE_RE = re.compile(r"[\t -~]*")
SECTIONS = ("api", "store", "poll", "numbers", "webhooks", "log", "http", "sentry", "run",
            "outbound")  # fmt: skip
_API_KEYS = ("base_url", "token", "token_file", "timeout", "default_region", "timezone",
             "max_response_bytes", "ca_bundle", "allow_insecure_http")  # fmt: skip
_WEBHOOK_KEYS = ("name", "url", "secret", "secret_file", "timeout", "retry_initial",
                 "retry_max", "give_up_after", "concurrency", "headers",
                 "headers_file")  # fmt: skip
_NUMBER_KEYS = ("number", "webhooks", "from", "interval", "disclaimer")
_HTTP_KEYS = ("listen", "send_token", "send_token_file")
_SENTRY_KEYS = ("dsn", "environment", "release", "traces_sample_rate", "monitor")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WEBHOOK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
#: ``host:port`` with a host name or IPv4 address, or ``[IPv6]:port``.
_LISTEN_RE = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})")
#: Characters a bearer token may hold: visible ASCII, no spaces.
_TOKEN_RE = re.compile(r"[!-~]+")
_TOML_TYPES = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
               (list, "array"), (Mapping, "table"), (datetime, "datetime"), (date, "date"),
               (time, "time"))  # fmt: skip
_T = TypeVar("_T")


def _fail(key: str, text: str) -> NoReturn:
    """Raise the ConfigError ``key: text``, squeezed onto one line whatever the values hold."""
    msg = " ".join(f"{key}: {text}".split())
    raise ConfigError(msg)


def _toml_type(value: object) -> str:
    return next((name for kind, name in _TOML_TYPES if isinstance(value, kind)), "value")


def _show(value: object) -> str:
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
        _fail(key, f"expected a duration, got {_toml_type(value)}")
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        _fail(key, f"{_show(value)} is not a duration")
    return seconds


def config_path(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file: ``--config``, else ``$AATROX_RELAY_CONFIG``, else the default."""
    env = os.environ if environ is None else environ
    return Path(cli_value or env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the TOML file at ``path``; relative paths in it are read from its
    directory. Every error is a :class:`ConfigError` with a one-line message.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(str(path), f"cannot read: {exc.strerror or exc}")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        _fail(str(path), f"invalid TOML: {exc}")
    config = parse(data, environ=environ, base_dir=path.absolute().parent)
    return dataclasses.replace(config, path=path)


class _Table:
    """One TOML table that knows its dotted key: refuses unknown keys, reads typed values."""

    def __init__(self, data: object, key: str, allowed: Collection[str] = ()) -> None:
        if not isinstance(data, Mapping):
            _fail(key, f"expected a table, got {_toml_type(data)}")
        self.data: Mapping[str, object] = data
        self.key = key
        unknown = [name for name in data if allowed and name not in allowed]
        if unknown and key:
            _fail(key, f"unknown key {_show(unknown[0])}")
        if unknown:
            _fail(unknown[0], f"unknown top-level key (sections are {', '.join(allowed)})")

    def sub(self, name: str) -> str:
        """The dotted key of ``name`` in this table."""
        return f"{self.key}.{name}" if self.key else name

    def fail(self, name: str, text: str) -> NoReturn:
        _fail(self.sub(name), text)

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
            self.fail(name, f"must be from 0 to 1, got {_show(value)}")
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name, default)
        if value.lower() not in choices:
            self.fail(name, f"{_show(value)} is not one of {', '.join(choices)}")
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

    def table(self, name: str, allowed: Collection[str] = ()) -> _Table:
        """The table at ``name`` (empty when missing); any key is allowed without ``allowed``."""
        return _Table(self.data.get(name, {}), self.sub(name), allowed)

    def tables(self, name: str, allowed: Collection[str]) -> list[_Table]:
        value = self.data.get(name, [])
        if not (isinstance(value, list) and all(isinstance(item, Mapping) for item in value)):
            self.fail(name, f"expected an array of tables ([[{name}]]), got {_toml_type(value)}")
        return [_Table(item, f"{self.sub(name)}[{i}]", allowed) for i, item in enumerate(value)]


def parse(
    data: Mapping[str, object],
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Check parsed TOML and build a :class:`Config`; ``base_dir`` anchors relative paths."""
    env = os.environ if environ is None else environ
    base = Path.cwd() if base_dir is None else base_dir
    root = _Table(data, "", SECTIONS)
    api = _parse_api(root.table("api", _API_KEYS), env, base)
    store = root.table("store", ("url", "retention", "lease"))
    store_url = _store_url(store, env, base)
    poll = _parse_poll(root.table("poll", ("interval", "jitter", "backfill", "concurrency")))
    seen: dict[str, str] = {}
    webhooks = tuple(_parse_webhook(t, base, seen) for t in root.tables("webhooks", _WEBHOOK_KEYS))
    number_tables = root.tables("numbers", _NUMBER_KEYS)
    if number_tables and not webhooks:
        _fail("webhooks", "at least one webhook is required")
    log = root.table("log", ("level", "format", "pii"))
    http = _parse_http(root.table("http", _HTTP_KEYS), base) if "http" in data else None
    sentry = _parse_sentry(root.table("sentry", _SENTRY_KEYS)) if "sentry" in data else None
    run = root.table("run", ("shutdown_timeout",))
    outbound = root.table("outbound", ("retry_unknown",))
    return Config(
        api=api,
        store=StoreConfig(
            store_url,
            retention=store.duration("retention", DEFAULT_RETENTION),
            lease=store.duration("lease", DEFAULT_LEASE, MIN_LEASE),
        ),
        poll=poll,
        numbers=_parse_numbers(number_tables, api.default_region, poll.interval, tuple(seen)),
        webhooks=webhooks,
        log=LogConfig(
            level=log.choice("level", LOG_LEVELS, "info"),
            format="json" if log.choice("format", LOG_FORMATS, "text") == "json" else "text",
            pii=log.get("pii", bool, "a boolean", False),
        ),
        http=http,
        sentry=sentry,
        run=RunConfig(shutdown_timeout=run.duration("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)),
        outbound=OutboundConfig(
            retry_unknown=outbound.get("retry_unknown", bool, "a boolean", DEFAULT_RETRY_UNKNOWN),
        ),
    )


#: The databases the store runs on (``store.url``'s scheme, before any ``+driver``).
STORE_BACKENDS = ("sqlite", "postgresql")
#: What a ``store.url`` looks like, for the error that says it is not one.
STORE_URL_FORM = "sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host/db"


def _store_url(store: _Table, env: Mapping[str, str], base: Path) -> str:
    """``store.url`` (or the default) checked the way the store will read it, a relative
    SQLite path made absolute from ``base``, the config file's directory. Errors never
    echo the URL: it may hold a password."""
    # SQLAlchemy's own parser, so the store reads the URL exactly as checked here;
    # imported here, not above, so commands that load no config start faster.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    value = store.text("url") or default_store_url(dict(env))
    try:
        url = make_url(value)
    except ArgumentError:
        store.fail("url", f"is not a database URL; expected {STORE_URL_FORM}")
    except ValueError:  # int() of the port
        store.fail("url", "the port is not a number")
    port = url.port
    if url.get_backend_name() not in STORE_BACKENDS:
        store.fail("url", "must start with sqlite or postgresql")
    try:
        url.get_dialect()
    except NoSuchModuleError:
        store.fail("url", f"unknown database driver {_show(url.drivername)}")
    if port is not None and not 0 < port < 2**16:
        store.fail("url", f"port {port} is not from 1 to 65535")
    if url.get_backend_name() != "sqlite":
        return value
    if url.host:  # sqlite://relay.db: the name went into the host, the database is memory
        store.fail("url", f"a SQLite URL has no host; expected {STORE_URL_FORM}")
    if url.database in (None, "", ":memory:"):
        store.fail("url", "an in-memory SQLite store forgets everything at exit; give a file")
    path = Path(url.database).expanduser()
    if path.is_absolute() and str(path) == url.database:
        return value
    return url.set(database=str(base / path)).render_as_string(hide_password=False)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_api(api: _Table, env: Mapping[str, str], base: Path) -> ApiConfig:
    insecure = api.get("allow_insecure_http", bool, "a boolean", False)
    base_url = api.url("base_url", api.text("base_url", DEFAULT_BASE_URL).rstrip("/"))
    parts = urlsplit(base_url)
    if parts.scheme == "http" and not insecure and not _is_loopback(parts.hostname or ""):
        api.fail("base_url", "http:// is only allowed for loopback hosts"
                 " (set api.allow_insecure_http = true to override)")  # fmt: skip
    region = api.text("default_region", DEFAULT_REGION).upper()
    if not is_region(region):
        api.fail("default_region", f"{_show(region)} is not a region code")
    ca_bundle = api.path("ca_bundle", base)
    if ca_bundle is not None and not ca_bundle.exists():
        api.fail("ca_bundle", f"{ca_bundle} does not exist")
    source = _token_source(api, env, base)
    return ApiConfig(
        token_source=source,
        token=source.read(),
        base_url=base_url,
        timeout=api.duration("timeout", DEFAULT_API_TIMEOUT),
        default_region=region,
        timezone=_parse_timezone(api),
        max_response_bytes=api.integer(
            "max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES, MIN_MAX_RESPONSE_BYTES
        ),
        ca_bundle=ca_bundle,
        allow_insecure_http=insecure,
    )


def _token_source(api: _Table, env: Mapping[str, str], base: Path) -> TokenSource:
    """api.token, else api.token_file, else $AATROX_TOKEN, else the systemd credential."""
    token, token_file = api.text("token"), api.path("token_file", base)
    if "token" in api.data and "token_file" in api.data:
        api.fail("token_file", "cannot be set together with api.token")
    if "token" in api.data and not token:
        api.fail("token", "is empty")
    if token:
        return TokenSource("inline", token)
    if token_file is not None:
        return TokenSource("file", str(token_file))
    if env.get(TOKEN_ENV, "").strip():
        return TokenSource("env", env[TOKEN_ENV].strip())
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials and Path(credentials, TOKEN_CREDENTIAL).is_file():
        return TokenSource("credential", str(Path(credentials, TOKEN_CREDENTIAL)))
    api.fail("token", f"no token: set api.token, api.token_file, ${TOKEN_ENV},"
             f' or a systemd credential "{TOKEN_CREDENTIAL}"')  # fmt: skip


def _parse_timezone(api: _Table) -> tzinfo:
    name = api.text("timezone", DEFAULT_TIMEZONE)
    try:
        return timezone.utc if name == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        api.fail("timezone", f"{_show(name)} is not an IANA time zone name")


def _parse_poll(poll: _Table) -> PollConfig:
    value = poll.text("backfill", "none")
    backfill = {"none": Backfill("none"), "all": Backfill("all")}.get(value)
    if backfill is None:
        try:
            window = parse_duration(value, poll.sub("backfill"))
        except ConfigError:
            poll.fail("backfill", f'{_show(value)} is not "none", "all" or a duration')
        if window == 0:
            poll.fail("backfill", 'must be greater than 0 (or "none")')
        backfill = Backfill("window", window)
    return PollConfig(
        interval=poll.duration("interval", DEFAULT_POLL_INTERVAL, MIN_POLL_INTERVAL),
        jitter=poll.duration("jitter", DEFAULT_POLL_JITTER, at_least=0.0),
        backfill=backfill,
        concurrency=poll.integer("concurrency", DEFAULT_POLL_CONCURRENCY, 1),
    )


def _parse_webhook(hook: _Table, base: Path, seen: dict[str, str]) -> WebhookConfig:
    """One [[webhooks]] entry; ``seen`` maps the names used so far to their keys."""
    name = hook.text("name")
    if not name:
        hook.fail("name", "is required")
    if not _WEBHOOK_NAME_RE.fullmatch(name):
        hook.fail("name", f'{_show(name)} is not letters, digits, "_", "." and "-"')
    if name in seen:
        hook.fail("name", f"{_show(name)} is already used by {seen[name]}")
    seen[name] = hook.key
    retry_initial = hook.duration("retry_initial", DEFAULT_RETRY_INITIAL)
    retry_max = hook.duration("retry_max", DEFAULT_RETRY_MAX)
    if retry_max < retry_initial:
        hook.fail("retry_max", f"must not be less than {hook.sub('retry_initial')}")
    return WebhookConfig(
        name=name,
        url=hook.url("url", hook.text("url")),
        secret=_webhook_secret(hook, base),
        timeout=hook.duration("timeout", DEFAULT_WEBHOOK_TIMEOUT),
        retry_initial=retry_initial,
        retry_max=retry_max,
        give_up_after=hook.duration("give_up_after", DEFAULT_GIVE_UP_AFTER),
        concurrency=hook.integer(
            "concurrency", DEFAULT_WEBHOOK_CONCURRENCY, 1, MAX_WEBHOOK_CONCURRENCY
        ),
        headers=_webhook_headers(hook, base),
    )


def _webhook_headers(hook: _Table, base: Path) -> tuple[tuple[str, str], ...]:
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
            shown = _show(name) if _HEADER_NAME_RE.fullmatch(name) else "the header name"
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


def _webhook_secret(hook: _Table, base: Path) -> bytes:
    """The HMAC key from ``secret`` or ``secret_file``; messages never show the secret."""
    if ("secret" in hook.data) == ("secret_file" in hook.data):
        hook.fail("secret", f"set exactly one of {hook.sub('secret')} or {hook.sub('secret_file')}")
    secret, path = hook.text("secret"), hook.path("secret_file", base)
    try:
        secret = path.read_text(encoding="utf-8") if path else secret
    except (OSError, UnicodeDecodeError) as exc:
        hook.fail("secret_file", f"cannot read {path}: {getattr(exc, 'strerror', '') or exc}")
    try:
        return decode_secret(secret)
    except ValueError as exc:
        hook.fail("secret" if path is None else "secret_file", str(exc))


def _parse_numbers(
    entries: list[_Table], region: str, interval: float, webhooks: tuple[str, ...]
) -> tuple[NumberConfig, ...]:
    seen: dict[str, str] = {}
    numbers = []
    for entry in entries:
        number = entry.phone("number", region)
        if number is None:
            entry.fail("number", "is required")
        if number in seen:
            entry.fail("number", f"{mask(number)} is already configured at {seen[number]}")
        seen[number] = entry.key
        names = entry.get("webhooks", list, "an array of strings", list(webhooks))
        if not names:
            entry.fail("webhooks", "is empty (leave it out to use every webhook)")
        for name in names:
            if name not in webhooks:
                entry.fail("webhooks", f"unknown webhook {_show(name)}")
        numbers.append(
            NumberConfig(
                number=number,
                webhooks=tuple(dict.fromkeys(names)),
                interval=entry.duration("interval", interval, MIN_POLL_INTERVAL),
                sender=entry.phone("from", region),
                disclaimer=entry.get("disclaimer", bool, "a boolean", False),
            )
        )
    return tuple(numbers)


def _parse_http(http: _Table, base: Path) -> HttpConfig:
    """``[http]``: ``listen`` as host and port, and the optional send token."""
    if "listen" not in http.data:
        http.fail("listen", f"required when [{http.key}] is present")
    listen = http.text("listen")
    match = _LISTEN_RE.fullmatch(listen)
    host = (match[1] or match[2]) if match else ""
    if not match or int(match[3]) > 65535 or not _is_listen_host(host, bool(match[1])):
        http.fail("listen", f"{_show(listen)} is not host:port")
    return HttpConfig(host=host, port=int(match[3]), send_token=_send_token(http, base))


def _is_listen_host(host: str, bracketed: bool) -> bool:
    """An IPv6 address when ``bracketed``, else an IPv4 address or a host name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return not bracketed and not host.replace(".", "").isdigit() and all(host.split("."))
    return address.version == (6 if bracketed else 4)


def _send_token(http: _Table, base: Path) -> str | None:
    """``send_token`` or the stripped contents of ``send_token_file``; never shown."""
    if "send_token" in http.data and "send_token_file" in http.data:
        http.fail("send_token_file", f"cannot be set together with {http.sub('send_token')}")
    token, path = http.text("send_token"), http.path("send_token_file", base)
    name = "send_token" if path is None else "send_token_file"
    if path is not None:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            http.fail(name, f"cannot read {path}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            http.fail(name, f"{path} is not UTF-8 text")
        if not token:
            http.fail(name, f"{path} is empty")
    elif "send_token" not in http.data:
        return None
    if len(token) < MIN_SEND_TOKEN_LENGTH:
        http.fail(name, f"must be at least {MIN_SEND_TOKEN_LENGTH} characters")
    if not _TOKEN_RE.fullmatch(token):
        http.fail(name, "must be printable ASCII without spaces")
    return token


def _parse_sentry(sentry: _Table) -> SentryConfig:
    """``[sentry]``: the DSN is checked as the SDK would, and never echoed."""
    if "dsn" not in sentry.data:
        sentry.fail("dsn", f"required when [{sentry.key}] is present")
    dsn = sentry.text("dsn")
    try:
        parts = urlsplit(dsn)
        project = parts.path.rsplit("/", 1)[-1]
        ok = parts.scheme in ("http", "https") and bool(parts.hostname and parts.username)
        ok = ok and project.isascii() and project.isdigit() and parts.port != 0
    except ValueError:  # a malformed port or IPv6 address
        ok = False
    if not ok:
        sentry.fail("dsn", "is not a Sentry DSN")
    for name in ("environment", "release"):
        if name in sentry.data and not sentry.text(name):
            sentry.fail(name, "is empty")
    return SentryConfig(
        dsn=dsn,
        environment=sentry.text("environment") or None,
        release=sentry.text("release") or None,
        traces_sample_rate=sentry.fraction("traces_sample_rate", 0.0),
        monitor=sentry.get("monitor", bool, "a boolean", False),
    )
