"""Reading the TOML file and checking it, section by section, into a :class:`Config`.

Every error names its key (``poll.interval: "fast" is not a duration``); unknown keys are
errors, never silently ignored. ``config_path``, ``load`` and ``parse`` are the public
functions; the helpers below them are private.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from datetime import timezone, tzinfo
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from relay.config.model import (
    CONFIG_ENV,
    DEFAULT_API_TIMEOUT,
    DEFAULT_BASE_URL,
    DEFAULT_CONFIG_PATH,
    DEFAULT_LEASE,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_POLL_ACTIVE_FOR,
    DEFAULT_POLL_CONCURRENCY,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_POLL_JITTER,
    DEFAULT_REGION,
    DEFAULT_RETENTION,
    DEFAULT_RETRY_UNKNOWN,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TIMEZONE,
    TOKEN_CREDENTIAL,
    TOKEN_ENV,
    ApiConfig,
    Backfill,
    Config,
    HttpConfig,
    LogConfig,
    NumberConfig,
    OutboundConfig,
    PollConfig,
    RunConfig,
    SentryConfig,
    StoreConfig,
    TokenSource,
    default_store_url,
)
from relay.config.optout import OPTOUT_KEYS, parse_optout
from relay.config.tables import Table, fail, parse_duration, show
from relay.config.webhooks import parse_webhook
from relay.errors import ConfigError
from relay.phone import is_region, mask
from relay.ratelimit import parse_rate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: No number is polled more often than this.
MIN_POLL_INTERVAL = 0.1
MIN_MAX_RESPONSE_BYTES = 1024
#: A shorter lease would expire between renewals under ordinary load.
MIN_LEASE = 1.0
#: ``http.send_token`` guards sending SMS: too short a token can be guessed.
MIN_SEND_TOKEN_LENGTH = 16
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
SECTIONS = ("api", "store", "poll", "numbers", "webhooks", "log", "http", "sentry", "run",
            "outbound", "optout")  # fmt: skip
_API_KEYS = ("base_url", "token", "token_file", "timeout", "default_region", "timezone",
             "max_response_bytes", "ca_bundle", "allow_insecure_http")  # fmt: skip
_WEBHOOK_KEYS = ("name", "url", "secret", "secret_file", "secrets", "secret_files", "match",
                 "rate_limit", "circuit_failures", "circuit_probe", "ordering",
                 "events", "timeout", "retry_initial",
                 "retry_max", "give_up_after", "concurrency", "headers",
                 "headers_file", "format", "twilio_auth_token", "twilio_auth_token_file",
                 "twilio_account_sid")  # fmt: skip
_POLL_KEYS = ("interval", "jitter", "backfill", "concurrency", "min_interval", "active_for",
              "budget")  # fmt: skip
_NUMBER_KEYS = ("number", "webhooks", "from", "interval", "disclaimer")
_HTTP_KEYS = ("listen", "send_token", "send_token_file")
_SENTRY_KEYS = ("dsn", "environment", "release", "traces_sample_rate", "monitor")
#: ``host:port`` with a host name or IPv4 address, or ``[IPv6]:port``.
_LISTEN_RE = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})")
#: Characters a bearer token may hold: visible ASCII, no spaces.
_TOKEN_RE = re.compile(r"[!-~]+")


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
        fail(str(path), f"cannot read: {exc.strerror or exc}")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        fail(str(path), f"invalid TOML: {exc}")
    config = parse(data, environ=environ, base_dir=path.absolute().parent)
    return dataclasses.replace(config, path=path)


def parse(
    data: Mapping[str, object],
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Check parsed TOML and build a :class:`Config`; ``base_dir`` anchors relative paths."""
    env = os.environ if environ is None else environ
    base = Path.cwd() if base_dir is None else base_dir
    root = Table(data, "", SECTIONS)
    api = _parse_api(root.table("api", _API_KEYS), env, base)
    store = root.table("store", ("url", "retention", "lease"))
    store_url = _store_url(store, env, base)
    poll = _parse_poll(root.table("poll", _POLL_KEYS))
    seen: dict[str, str] = {}
    webhooks = tuple(
        parse_webhook(t, base, seen, api.default_region)
        for t in root.tables("webhooks", _WEBHOOK_KEYS)
    )
    number_tables = root.tables("numbers", _NUMBER_KEYS)
    if number_tables and not webhooks:
        fail("webhooks", "at least one webhook is required")
    log = root.table("log", ("level", "format", "pii"))
    http = _parse_http(root.table("http", _HTTP_KEYS), base) if "http" in data else None
    sentry = _parse_sentry(root.table("sentry", _SENTRY_KEYS)) if "sentry" in data else None
    run = root.table("run", ("shutdown_timeout",))
    outbound = root.table("outbound", ("retry_unknown",))
    optout = parse_optout(root.table("optout", OPTOUT_KEYS))
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
        optout=optout,
    )


#: The databases the store runs on (``store.url``'s scheme, before any ``+driver``).
STORE_BACKENDS = ("sqlite", "postgresql")
#: What a ``store.url`` looks like, for the error that says it is not one.
STORE_URL_FORM = "sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host/db"


def _store_url(store: Table, env: Mapping[str, str], base: Path) -> str:
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
        store.fail("url", f"unknown database driver {show(url.drivername)}")
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


def _parse_api(api: Table, env: Mapping[str, str], base: Path) -> ApiConfig:
    insecure = api.get("allow_insecure_http", bool, "a boolean", False)
    base_url = api.url("base_url", api.text("base_url", DEFAULT_BASE_URL).rstrip("/"))
    parts = urlsplit(base_url)
    if parts.scheme == "http" and not insecure and not _is_loopback(parts.hostname or ""):
        api.fail("base_url", "http:// is only allowed for loopback hosts"
                 " (set api.allow_insecure_http = true to override)")  # fmt: skip
    region = api.text("default_region", DEFAULT_REGION).upper()
    if not is_region(region):
        api.fail("default_region", f"{show(region)} is not a region code")
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


def _token_source(api: Table, env: Mapping[str, str], base: Path) -> TokenSource:
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


def _parse_timezone(api: Table) -> tzinfo:
    name = api.text("timezone", DEFAULT_TIMEZONE)
    try:
        return timezone.utc if name == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        api.fail("timezone", f"{show(name)} is not an IANA time zone name")


def _parse_poll(poll: Table) -> PollConfig:
    value = poll.text("backfill", "none")
    backfill = {"none": Backfill("none"), "all": Backfill("all")}.get(value)
    if backfill is None:
        try:
            window = parse_duration(value, poll.sub("backfill"))
        except ConfigError:
            poll.fail("backfill", f'{show(value)} is not "none", "all" or a duration')
        if window == 0:
            poll.fail("backfill", 'must be greater than 0 (or "none")')
        backfill = Backfill("window", window)
    interval = poll.duration("interval", DEFAULT_POLL_INTERVAL, MIN_POLL_INTERVAL)
    min_interval = None
    if "min_interval" in poll.data:
        min_interval = poll.duration("min_interval", interval, MIN_POLL_INTERVAL)
        if min_interval > interval:
            poll.fail("min_interval", f"must not be more than {poll.sub('interval')}")
    elif "active_for" in poll.data:
        poll.fail("active_for", f"needs {poll.sub('min_interval')} (adaptive polling)")
    budget = None
    if "budget" in poll.data:
        value = poll.get("budget", str, 'a string such as "20/s"', "")
        try:
            budget = parse_rate(value)
        except ValueError as exc:
            poll.fail("budget", f"{show(value)} {exc}")
    return PollConfig(
        interval=interval,
        jitter=poll.duration("jitter", DEFAULT_POLL_JITTER, at_least=0.0),
        backfill=backfill,
        concurrency=poll.integer("concurrency", DEFAULT_POLL_CONCURRENCY, 1),
        min_interval=min_interval,
        active_for=poll.duration("active_for", DEFAULT_POLL_ACTIVE_FOR),
        budget=budget,
    )


def _parse_numbers(
    entries: list[Table], region: str, interval: float, webhooks: tuple[str, ...]
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
                entry.fail("webhooks", f"unknown webhook {show(name)}")
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


def _parse_http(http: Table, base: Path) -> HttpConfig:
    """``[http]``: ``listen`` as host and port, and the optional send token."""
    if "listen" not in http.data:
        http.fail("listen", f"required when [{http.key}] is present")
    listen = http.text("listen")
    match = _LISTEN_RE.fullmatch(listen)
    host = (match[1] or match[2]) if match else ""
    if not match or int(match[3]) > 65535 or not _is_listen_host(host, bool(match[1])):
        http.fail("listen", f"{show(listen)} is not host:port")
    return HttpConfig(host=host, port=int(match[3]), send_token=_send_token(http, base))


def _is_listen_host(host: str, bracketed: bool) -> bool:
    """An IPv6 address when ``bracketed``, else an IPv4 address or a host name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return not bracketed and not host.replace(".", "").isdigit() and all(host.split("."))
    return address.version == (6 if bracketed else 4)


def _send_token(http: Table, base: Path) -> str | None:
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


def _parse_sentry(sentry: Table) -> SentryConfig:
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
