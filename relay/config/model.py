"""The configuration as frozen dataclasses, with the defaults of every setting."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Literal

from relay.config.tokens import read_token_file

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
#: With adaptive polling, a number that received a message is polled at
#: ``poll.min_interval`` for this long, then relaxes back to its interval.
DEFAULT_POLL_ACTIVE_FOR = 120.0
DEFAULT_WEBHOOK_TIMEOUT = 15.0
DEFAULT_RETRY_INITIAL = 5.0
DEFAULT_RETRY_MAX = 3600.0
DEFAULT_GIVE_UP_AFTER = 3 * 86400.0
DEFAULT_WEBHOOK_CONCURRENCY = 8
DEFAULT_CIRCUIT_FAILURES = 10
DEFAULT_CIRCUIT_PROBE = 30.0
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
        return read_token_file(self.value)

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
    #: Adaptive polling (:mod:`relay.adaptive`): a number that received a message is
    #: polled this often for ``active_for``; None: every number at its interval, always.
    min_interval: float | None = None
    active_for: float = DEFAULT_POLL_ACTIVE_FOR
    #: API requests a second at most, all of them (:mod:`relay.budget`); None: no limit
    #: but what the provider's 429s teach.
    budget: float | None = None


@dataclass(frozen=True)
class NumberConfig:
    """One ``[[numbers]]`` entry."""

    number: str  # E.164
    webhooks: tuple[str, ...]  # resolved names; every webhook when the entry named none
    interval: float
    sender: str | None = None  # ``from``, E.164
    #: Replies from this number go through /sms/send/disclaimer.
    disclaimer: bool = False


#: An inbound SMS (``[webhooks.match]`` filters these).
SMS_RECEIVED = "sms.received"
#: The API accepted an outbound SMS (a reply, ``POST /v1/send``, ``aatrox-relay send``).
SMS_SENT = "sms.sent"
#: An outbound SMS failed for good.
SMS_FAILED = "sms.failed"
#: Every event type a webhook can be sent, for ``events = [...]``.
EVENT_TYPES = (SMS_RECEIVED, SMS_SENT, SMS_FAILED)


@dataclass(frozen=True)
class MatchConfig:
    """``[webhooks.match]``: the inbound messages a webhook gets (every condition given
    must hold; see :mod:`relay.routing`)."""

    #: Sender prefixes in E.164; a message from any of them passes.
    senders: tuple[str, ...] = ()
    #: Searched in the text (``re.search``).
    text: re.Pattern[str] | None = None


#: ``format = "standard"``: Standard Webhooks JSON, signed with the webhook's secrets.
FORMAT_STANDARD = "standard"
#: ``format = "twilio"``: the form fields of Twilio's incoming-SMS webhook, signed with
#: X-Twilio-Signature; a TwiML answer is a reply (:mod:`relay.twilio`, :mod:`relay.twiml`).
FORMAT_TWILIO = "twilio"
#: ``format = "slack"``: a Slack incoming-webhook message, unsigned (:mod:`relay.slack`).
FORMAT_SLACK = "slack"
#: Every request shape a webhook can be sent, for ``format``.
WEBHOOK_FORMATS = (FORMAT_STANDARD, FORMAT_TWILIO, FORMAT_SLACK)
#: The AccountSid a ``twilio`` webhook is sent without ``twilio_account_sid``: made up
#: (``"AC"`` + the first 32 hex digits of SHA-256 of ``aatrox-relay twilio account``), the
#: same on every relay.
DEFAULT_TWILIO_ACCOUNT_SID = "ACd5feff7ee3cb87a336ce38ea894ec987"


@dataclass(frozen=True)
class WebhookConfig:
    """One ``[[webhooks]]`` entry."""

    name: str
    url: str
    #: The decoded HMAC key; b"" for a format that is not "standard" (nothing signs with it).
    secret: bytes = field(default=b"", repr=False)
    timeout: float = DEFAULT_WEBHOOK_TIMEOUT
    retry_initial: float = DEFAULT_RETRY_INITIAL
    retry_max: float = DEFAULT_RETRY_MAX
    give_up_after: float = DEFAULT_GIVE_UP_AFTER
    concurrency: int = DEFAULT_WEBHOOK_CONCURRENCY
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: During a secret rotation (``secrets``/``secret_files``), the other decoded keys:
    #: every attempt is signed with ``secret`` and with each of these.
    extra_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    #: Only messages it matches are queued for this webhook; None: every message.
    match: MatchConfig | None = None
    #: ``rate_limit``: requests started per second at most (a token bucket); None: no limit.
    rate_limit: float | None = None
    #: ``ordering``: "sender" delivers each sender's messages to a number in provider
    #: order (one at a time per sender); "none" (default): as they fall due.
    ordering: str = "none"
    #: Failed attempts in a row that open the circuit (:mod:`relay.circuit`); 0: never.
    circuit_failures: int = DEFAULT_CIRCUIT_FAILURES
    #: While the circuit is open, one probe attempt per this many seconds.
    circuit_probe: float = DEFAULT_CIRCUIT_PROBE
    #: ``events``: the event types it is sent (:data:`EVENT_TYPES`); default ``sms.received``.
    events: frozenset[str] = frozenset((SMS_RECEIVED,))
    #: ``format``: the shape of its requests (:data:`WEBHOOK_FORMATS`).
    format: str = FORMAT_STANDARD
    #: ``twilio_auth_token``: the key of X-Twilio-Signature (format "twilio" only).
    twilio_auth_token: str = field(default="", repr=False)
    #: ``twilio_account_sid``: sent as AccountSid (format "twilio" only).
    twilio_account_sid: str = DEFAULT_TWILIO_ACCOUNT_SID

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """Every key an attempt is signed with, the first one first; none when the
        webhook has no Standard Webhooks secret (a ``twilio`` or ``slack`` one)."""
        return (self.secret, *self.extra_secrets) if self.secret else ()


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


#: ``[optout]`` keywords by default: Twilio's, which its users' recipients already know.
DEFAULT_STOP_KEYWORDS = (
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
)
DEFAULT_START_KEYWORDS = ("START", "YES", "UNSTOP")
DEFAULT_HELP_KEYWORDS = ("HELP", "INFO")


@dataclass(frozen=True)
class OptoutConfig:
    """``[optout]``: STOP and START keywords, and what is answered to them (see
    :mod:`relay.optout`)."""

    enabled: bool = True
    stop: tuple[str, ...] = DEFAULT_STOP_KEYWORDS
    start: tuple[str, ...] = DEFAULT_START_KEYWORDS
    help: tuple[str, ...] = DEFAULT_HELP_KEYWORDS
    #: Confirmations sent once for each keyword message; "" sends none.
    stop_reply: str = ""
    start_reply: str = ""
    help_reply: str = ""


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
    optout: OptoutConfig = field(default_factory=OptoutConfig)
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
