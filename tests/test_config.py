"""The TOML loader: every value lands where it should, every mistake names its key."""

from __future__ import annotations

import base64
from datetime import timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from relay.config import (
    DEFAULT_CONFIG_PATH,
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
    WebhookConfig,
    config_path,
    load,
    parse_duration,
)
from relay.errors import ConfigError
from tests.test_numbers import SPELLINGS, WRONG_NUMBERS

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-3f9a-do-not-leak"
KEY = b"0123456789abcdef0123456789"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
HEADER_SECRET = "hdr-value-do-not-leak"
DB_PASSWORD = "dbpassw0rd-do-not-leak"
BAD_SECRET = "whsec_not-base64-do-not-leak!"
SHORT_SECRET = "whsec_" + base64.b64encode(b"short-dnl").decode()
SEND_TOKEN = "send-token-do-not-leak"
SHORT_SEND_TOKEN = "short-dnl"
DSN_KEY = "dsnkey-do-not-leak"
DSN = f"https://{DSN_KEY}@o1.ingest.sentry.io/42"
#: Values that must never appear in an error message.
SECRETS = [TOKEN, SECRET, HEADER_SECRET, DB_PASSWORD, BAD_SECRET, SHORT_SECRET]
SECRETS += [SEND_TOKEN, SHORT_SEND_TOKEN, DSN_KEY]
SECRETS += [secret.removeprefix("whsec_") for secret in (SECRET, SHORT_SECRET)]

API = f'[api]\ntoken = "{TOKEN}"\n'
HOOK = f'[[webhooks]]\nname = "crm"\nurl = "https://hooks.example.com/sms"\nsecret = "{SECRET}"\n'
NUMBER = '[[numbers]]\nnumber = "+61400000001"\n'
MINIMAL = API + HOOK + NUMBER  # ends in [[numbers]]: a case may add keys to it
NO_ENV: dict[str, str] = {}


def write(directory: Path, text: str, name: str = "config.toml") -> Path:
    """Write ``text`` as a config file in ``directory`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    """Load ``text`` as a config file with an empty environment unless told."""
    return load(write(tmp_path, text), environ=NO_ENV if environ is None else environ)


FULL = f"""
[api]
base_url = "https://api.example.test/"
token = "{TOKEN}"
timeout = "20s"
default_region = "nz"
timezone = "Australia/Sydney"
max_response_bytes = 2048
ca_bundle = "ca.pem"
allow_insecure_http = true

[store]
url = "postgresql://relay@db/relay"
retention = "7d"
lease = "30s"

[poll]
interval = "30s"
jitter = "500ms"
backfill = "24h"
concurrency = 4

[[numbers]]
number = "021 123 4567"
webhooks = ["crm"]
from = "+61411111111"
interval = "5s"
disclaimer = true

[[numbers]]
number = "+61400000002"

[[webhooks]]
name = "crm"
url = "https://hooks.example.com/sms"
secret = "{SECRET}"
timeout = "3s"
retry_initial = "1s"
retry_max = "10m"
give_up_after = "1d"
concurrency = 2
headers = {{ "X-Api-Key" = "{HEADER_SECRET}", "X-Env" = "prod" }}

[[webhooks]]
name = "audit.log-2"
url = "http://10.0.0.5:8080/in"
secret_file = "hook.secret"

[log]
level = "DEBUG"
format = "json"
pii = true

[http]
listen = "[::1]:0"
send_token = "{SEND_TOKEN}"

[sentry]
dsn = "{DSN}"
environment = "staging"
release = "relay@9.9.9"
traces_sample_rate = 0.25
monitor = true

[run]
shutdown_timeout = "1m"
"""


def test_full_config_round_trips(tmp_path: Path) -> None:
    """Every key of a complete config lands in its dataclass field, normalised."""
    (tmp_path / "ca.pem").write_text("pem")
    (tmp_path / "hook.secret").write_text(f"{SECRET}\n")
    path = write(tmp_path, FULL)

    config = load(path, environ={"AATROX_TOKEN": "ignored"})

    assert config.path == path
    assert config.api == ApiConfig(
        token_source=TokenSource("inline", TOKEN),
        token=TOKEN,
        base_url="https://api.example.test",
        timeout=20.0,
        default_region="NZ",
        timezone=ZoneInfo("Australia/Sydney"),
        max_response_bytes=2048,
        ca_bundle=tmp_path / "ca.pem",
        allow_insecure_http=True,
    )
    assert config.store == StoreConfig(
        "postgresql://relay@db/relay", retention=7 * 86400.0, lease=30.0
    )
    assert config.poll == PollConfig(
        interval=30.0, jitter=0.5, backfill=Backfill("window", 86400.0), concurrency=4
    )
    assert config.numbers == (
        NumberConfig(
            "+64211234567", ("crm",), interval=5.0, sender="+61411111111", disclaimer=True
        ),
        NumberConfig("+61400000002", ("crm", "audit.log-2"), interval=30.0),
    )
    assert config.webhooks == (
        WebhookConfig(
            name="crm",
            url="https://hooks.example.com/sms",
            secret=KEY,
            timeout=3.0,
            retry_initial=1.0,
            retry_max=600.0,
            give_up_after=86400.0,
            concurrency=2,
            headers=(("X-Api-Key", HEADER_SECRET), ("X-Env", "prod")),
        ),
        WebhookConfig(name="audit.log-2", url="http://10.0.0.5:8080/in", secret=KEY),
    )
    assert config.webhook("audit.log-2") is config.webhooks[1]
    assert config.log == LogConfig(level="debug", format="json", pii=True)
    assert config.http == HttpConfig("::1", 0, send_token=SEND_TOKEN)
    assert config.sentry == SentryConfig(
        DSN, environment="staging", release="relay@9.9.9", traces_sample_rate=0.25, monitor=True
    )
    assert config.run == RunConfig(shutdown_timeout=60.0)


def test_defaults(tmp_path: Path) -> None:
    """A config with only a token gets every documented default."""
    config = load_text(tmp_path, API)

    assert config.api == ApiConfig(
        token_source=TokenSource("inline", TOKEN), token=TOKEN, timezone=timezone.utc
    )
    assert config.store == StoreConfig(f"sqlite:///{tmp_path / 'aatrox-relay.db'}")
    assert config.poll == PollConfig()
    assert config.numbers == ()
    assert config.webhooks == ()
    assert config.log == LogConfig()
    assert config.store.lease == 15.0
    assert config.http is None
    assert config.sentry is None
    assert config.run == RunConfig(shutdown_timeout=10.0)


def test_number_and_table_defaults(tmp_path: Path) -> None:
    """disclaimer defaults to false; [http] and [sentry] need only listen and dsn."""
    text = f'{MINIMAL}[http]\nlisten = "127.0.0.1:9464"\n[sentry]\ndsn = "{DSN}"\n'

    config = load_text(tmp_path, text)

    assert config.numbers[0].disclaimer is False
    assert config.http == HttpConfig("127.0.0.1", 9464, send_token=None)
    assert config.sentry == SentryConfig(
        DSN, environment=None, release=None, traces_sample_rate=0.0, monitor=False
    )


def test_outbound_retry_unknown(tmp_path: Path) -> None:
    """[outbound] retry_unknown is off unless the config turns it on."""
    assert load_text(tmp_path, API).outbound == OutboundConfig(retry_unknown=False)
    config = load_text(tmp_path, API + "[outbound]\nretry_unknown = true\n")
    assert config.outbound == OutboundConfig(retry_unknown=True)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("0.0.0.0:65535", "0.0.0.0", 65535),
        ("localhost:0", "localhost", 0),
        ("metrics.internal:1", "metrics.internal", 1),
        ("[::1]:9464", "::1", 9464),
        ("[::]:80", "::", 80),
    ],
)
def test_http_listen(tmp_path: Path, listen: str, host: str, port: int) -> None:
    """http.listen splits into host and port; IPv6 loses its brackets; port 0 is allowed."""
    config = load_text(tmp_path, f'{API}[http]\nlisten = "{listen}"\n')

    assert config.http == HttpConfig(host, port)


def test_send_token_file_is_read_relative_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """http.send_token_file is read from the config's directory and stripped."""
    etc = tmp_path / "etc"
    write(etc, f"  {SEND_TOKEN}\n", name="send.token")
    monkeypatch.chdir(tmp_path)
    text = f'{API}[http]\nlisten = "127.0.0.1:0"\nsend_token_file = "send.token"\n'

    config = load(write(etc, text), environ=NO_ENV)

    assert config.http == HttpConfig("127.0.0.1", 0, send_token=SEND_TOKEN)


@pytest.mark.parametrize(
    ("content", "start"),
    [
        (None, "http.send_token_file: cannot read"),
        (" \n", "http.send_token_file: "),
        (SHORT_SEND_TOKEN, "http.send_token_file: must be at least 16 characters"),
        (f"{SEND_TOKEN} {SEND_TOKEN}", "http.send_token_file: must be printable ASCII"),
    ],
    ids=["missing", "empty", "short", "space"],
)
def test_unusable_send_token_file_names_its_key(
    tmp_path: Path, content: str | None, start: str
) -> None:
    """A missing, empty or unfit send token file is an error naming it, not showing the token."""
    if content is not None:
        write(tmp_path, content, name="send.token")
    text = f'{API}[http]\nlisten = "127.0.0.1:0"\nsend_token_file = "send.token"\n'

    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)

    message = str(caught.value)
    assert message.startswith(start)
    for secret in SECRETS:
        assert secret not in message


def test_a_token_file_that_is_not_text_is_a_one_line_error(tmp_path: Path) -> None:
    """An api.token_file holding bytes that are not UTF-8 is a ConfigError naming the key
    and the file, at load and when read again after a 401, not a traceback."""
    (tmp_path / "token").write_bytes(b"\xff\xfe tok\x80en")
    text = '[api]\ntoken_file = "token"\n'

    with pytest.raises(ConfigError, match=r"^api\.token_file: .*token is not UTF-8 text$"):
        load_text(tmp_path, text)
    (tmp_path / "token").write_text(TOKEN)
    source = load_text(tmp_path, text).api.token_source
    (tmp_path / "token").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        source.read()


HEADERS_FILE_SECRET = "hdr-file-value-do-not-leak"
#: ``[[webhooks]]`` reading its extra headers from ``headers.txt`` beside the config.
HOOK_WITH_FILE = HOOK + 'headers_file = "headers.txt"\n'
HEADERS_FILE_CASES = ("missing", "no-colon", "no-name", "bad-name", "reserved", "dup-table",
                      "dup-file", "empty", "non-ascii")  # fmt: skip


def test_headers_file_adds_headers_after_the_table(tmp_path: Path) -> None:
    """headers_file is read from the config's directory: "Name: value" lines, values
    stripped (colons kept), blank lines and # comments skipped, after the headers table."""
    etc = tmp_path / "etc"
    write(
        etc,
        f"# secrets for crm\n\nX-Api-Key:  {HEADERS_FILE_SECRET}  \nX-Route: a:b\n",
        name="headers.txt",
    )
    text = API + HOOK_WITH_FILE + 'headers = { "X-Env" = "prod" }\n' + NUMBER

    config = load(write(etc, text), environ=NO_ENV)

    assert config.webhooks[0].headers == (
        ("X-Env", "prod"),
        ("X-Api-Key", HEADERS_FILE_SECRET),
        ("X-Route", "a:b"),
    )
    assert HEADERS_FILE_SECRET not in repr(config)


@pytest.mark.parametrize(
    ("content", "start"),
    [
        (None, "webhooks[0].headers_file: cannot read"),
        (HEADERS_FILE_SECRET, 'webhooks[0].headers_file: line 1 is not "Name: value"'),
        (f": {HEADERS_FILE_SECRET}", 'webhooks[0].headers_file: line 1 is not "Name: value"'),
        (
            f"# ok\nX Key: {HEADERS_FILE_SECRET}",
            "webhooks[0].headers_file: line 2: the header name is not letters, digits",
        ),
        (
            f"webhook-signature: {HEADERS_FILE_SECRET}",
            'webhooks[0].headers_file: line 1: "webhook-signature" is reserved',
        ),
        (
            f"x-env: {HEADERS_FILE_SECRET}",
            'webhooks[0].headers_file: line 1: "x-env" is already set by webhooks[0].headers.X-Env',
        ),
        (
            f"X-A: 1\nX-a: {HEADERS_FILE_SECRET}",
            'webhooks[0].headers_file: line 2: "X-a" is already set by '
            "webhooks[0].headers_file line 1",
        ),
        ("X-Api-Key:   ", 'webhooks[0].headers_file: line 1: "X-Api-Key" has no value'),
        (
            f"X-Api-Key: {HEADERS_FILE_SECRET}\u00e9",
            'webhooks[0].headers_file: line 1: "X-Api-Key" has a value that is not printable',
        ),
    ],
    ids=HEADERS_FILE_CASES,
)
def test_unusable_headers_file_names_its_key(
    tmp_path: Path, content: str | None, start: str
) -> None:
    """A headers_file that is missing or has a bad line is a one-line error naming
    webhooks[N].headers_file and the line, never showing a value."""
    if content is not None:
        write(tmp_path, content, name="headers.txt")
    text = API + HOOK_WITH_FILE + 'headers = { "X-Env" = "prod" }\n' + NUMBER

    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)

    message = str(caught.value)
    assert message.startswith(start)
    assert "\n" not in message
    for secret in [*SECRETS, HEADERS_FILE_SECRET]:
        assert secret not in message


def test_headers_file_that_is_not_utf8_names_its_key(tmp_path: Path) -> None:
    """A headers_file that is not UTF-8 text is an error naming the key and the file."""
    (tmp_path / "headers.txt").write_bytes(b"X-Api-Key: \xff\xfe\n")

    with pytest.raises(ConfigError, match=r"^webhooks\[0\]\.headers_file: .* is not UTF-8 text"):
        load_text(tmp_path, API + HOOK_WITH_FILE + NUMBER)


@pytest.mark.parametrize(
    ("url", "where"),
    [
        (None, "etc/aatrox-relay.db"),
        ("sqlite:///relay.db", "etc/relay.db"),
        ("sqlite:///state/relay.db?timeout=5", "etc/state/relay.db?timeout=5"),
        ("sqlite:///../var/relay.db", "etc/../var/relay.db"),
    ],
)
def test_a_relative_sqlite_store_is_read_from_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str | None, where: str
) -> None:
    """A relative SQLite path, the default one included, is anchored at the config file's
    directory, whatever directory the command runs in."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = API if url is None else f'{API}[store]\nurl = "{url}"\n'

    config = load(write(tmp_path / "etc", text), environ=NO_ENV)

    assert config.store.url == f"sqlite:///{tmp_path}/{where}"


def test_absolute_and_postgresql_store_urls_are_kept(tmp_path: Path) -> None:
    """An absolute SQLite path and a PostgreSQL URL are used as written; ~ is the home."""
    for url in ("sqlite:////var/lib/relay/relay.db", "postgresql://relay@db:5432/relay"):
        assert load_text(tmp_path, f'{API}[store]\nurl = "{url}"\n').store.url == url
    home = load_text(tmp_path, f'{API}[store]\nurl = "sqlite:///~/relay.db"\n').store.url
    assert home == f"sqlite:///{Path.home() / 'relay.db'}"


def test_default_store_follows_state_directory(tmp_path: Path) -> None:
    """Without store.url the database goes in systemd's $STATE_DIRECTORY."""
    config = load_text(tmp_path, API, environ={"STATE_DIRECTORY": "/var/lib/relay:/other"})

    assert config.store.url == "sqlite:////var/lib/relay/relay.db"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("3d", 259200.0),
        ("1.5s", 1.5),
        ("0.25m", 15.0),
        ("0", 0.0),
        ("0s", 0.0),
        (" 10s ", 10.0),
        (0, 0.0),
        (7, 7.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    """Every unit, fractions, zero and plain numbers of seconds parse to seconds."""
    assert parse_duration(value, "poll.interval") == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", 'poll.interval: "fast" is not a duration'),
        ("-1s", 'poll.interval: "-1s" is not a duration'),
        ("10", 'poll.interval: "10" is not a duration'),
        ("1.s", 'poll.interval: "1.s" is not a duration'),
        ("5 m", 'poll.interval: "5 m" is not a duration'),
        ("1w", 'poll.interval: "1w" is not a duration'),
        ("", 'poll.interval: "" is not a duration'),
        (-3, "poll.interval: -3 is not a duration"),
        (float("inf"), "poll.interval: inf is not a duration"),
        (10**400, "poll.interval: " + repr(10**400) + " is not a duration"),
        (True, "poll.interval: expected a duration, got boolean"),
        (["1s"], "poll.interval: expected a duration, got array"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    """Anything but a non-negative duration is an error naming the key and the value."""
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "poll.interval")

    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("+61412345678", "61412345678"),
        ("+61412345678", "0412 345 678"),
        ("61412345678", "0412345678"),
    ],
)
def test_spellings_of_one_number_are_one_number(tmp_path: Path, first: str, second: str) -> None:
    """E.164, international digits and national form of a number collide as duplicates."""
    text = f'{API}{HOOK}[[numbers]]\nnumber = "{first}"\n[[numbers]]\nnumber = "{second}"\n'

    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)

    assert (
        str(caught.value) == "numbers[1].number: *********678 is already configured at numbers[0]"
    )


def _number_config(key: str, value: str) -> str:
    """A config whose one [[numbers]] entry has ``value`` at ``key`` (number or from)."""
    if key == "number":
        return f'{API}{HOOK}[[numbers]]\nnumber = "{value}"\n'
    return f'{MINIMAL}from = "{value}"\n'


@pytest.mark.parametrize("key", ["number", "from"])
@pytest.mark.parametrize(("wrong", "reason"), WRONG_NUMBERS.items())
def test_wrong_numbers_are_refused(tmp_path: Path, key: str, wrong: str, reason: str) -> None:
    """Letters, a digit too many, an extension or a short code at number or from: one
    line naming the key, with the reason and without the number."""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, _number_config(key, wrong))

    message = str(caught.value)
    assert message.startswith(f"numbers[0].{key}: ") and reason in message
    assert "\n" not in message and wrong not in message


@pytest.mark.parametrize("key", ["number", "from"])
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_valid_spellings_are_read(tmp_path: Path, key: str, spelling: str) -> None:
    """Every usual spelling of a valid number at number or from is read as E.164."""
    config = load_text(tmp_path, _number_config(key, spelling))

    entry = config.numbers[0]
    assert (entry.number if key == "number" else entry.sender) == "+61412345678"


@pytest.fixture
def token_env(tmp_path: Path) -> dict[str, str]:
    """An environment offering both $AATROX_TOKEN and a systemd credential."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "aatrox-token").write_text("credential-token\n")
    return {"AATROX_TOKEN": "env-token", "CREDENTIALS_DIRECTORY": str(credentials)}


def test_inline_token_comes_first(tmp_path: Path, token_env: dict[str, str]) -> None:
    """api.token wins over $AATROX_TOKEN and the credential."""
    config = load_text(tmp_path, API, environ=token_env)

    assert config.api.token_source == TokenSource("inline", TOKEN)
    assert config.api.token == TOKEN


def test_token_file_is_read_relative_to_the_config(
    tmp_path: Path, token_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """api.token_file is read from the config's directory, not the working one, before env."""
    etc = tmp_path / "etc"
    write(etc, "file-token\n", name="token")
    monkeypatch.chdir(tmp_path)

    config = load(write(etc, '[api]\ntoken_file = "token"\n'), environ=token_env)

    assert config.api.token_source == TokenSource("file", str(etc / "token"))
    assert config.api.token == "file-token"


def test_env_token_comes_before_the_credential(tmp_path: Path, token_env: dict[str, str]) -> None:
    """$AATROX_TOKEN is used when the config names no token, even with a credential."""
    config = load_text(tmp_path, "", environ=token_env)

    assert config.api.token_source == TokenSource("env", "env-token")
    assert config.api.token == "env-token"


def test_credential_token_comes_last(tmp_path: Path, token_env: dict[str, str]) -> None:
    """The systemd credential is used when nothing else gives a token."""
    del token_env["AATROX_TOKEN"]

    config = load_text(tmp_path, "", environ=token_env)

    credential = str(tmp_path / "credentials" / "aatrox-token")
    assert config.api.token_source == TokenSource("credential", credential)
    assert config.api.token == "credential-token"


def test_no_token_is_an_error(tmp_path: Path) -> None:
    """Without any token source the error lists all four."""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "", environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})

    assert str(caught.value) == (
        "api.token: no token: set api.token, api.token_file, $AATROX_TOKEN,"
        ' or a systemd credential "aatrox-token"'
    )


@pytest.mark.parametrize("content", [None, "  \n"], ids=["missing", "empty"])
def test_unusable_token_file_names_api_token_file(tmp_path: Path, content: str | None) -> None:
    """A missing or empty token file is an error naming api.token_file, at load time."""
    if content is not None:
        write(tmp_path, content, name="token")

    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, '[api]\ntoken_file = "token"\n', environ={"AATROX_TOKEN": "x"})

    message = str(caught.value)
    assert message.startswith("api.token_file: ")
    assert str(tmp_path / "token") in message


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080",
        "http://127.0.0.1/",
        "http://127.9.9.9:1",
        "http://[::1]:8000",
        "https://api.example.test",
    ],
)
def test_http_base_url_is_allowed_for_loopback(tmp_path: Path, url: str) -> None:
    """http:// is fine for loopback hosts (and https:// anywhere); a trailing / is dropped."""
    config = load_text(tmp_path, f'{API}base_url = "{url}"\n')

    assert config.api.base_url == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://api.example.test", "HTTP://10.0.0.1", "http://[::2]"])
def test_http_base_url_is_refused_for_other_hosts(tmp_path: Path, url: str) -> None:
    """http:// to a remote host needs api.allow_insecure_http, and the error says so."""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, f'{API}base_url = "{url}"\n')

    assert str(caught.value) == (
        "api.base_url: http:// is only allowed for loopback hosts"
        " (set api.allow_insecure_http = true to override)"
    )


def test_allow_insecure_http_permits_any_http_host(tmp_path: Path) -> None:
    """With allow_insecure_http = true a remote http:// base_url is accepted."""
    text = f'{API}base_url = "http://10.1.2.3:8080"\nallow_insecure_http = true\n'

    assert load_text(tmp_path, text).api.base_url == "http://10.1.2.3:8080"


def test_utc_timezone_is_the_stdlib_utc(tmp_path: Path) -> None:
    """timezone = "UTC" is datetime.timezone.utc, not a ZoneInfo."""
    assert load_text(tmp_path, f'{API}timezone = "UTC"\n').api.timezone is timezone.utc


def test_zero_jitter_is_allowed(tmp_path: Path) -> None:
    """poll.jitter may be 0, unlike the other durations."""
    assert load_text(tmp_path, f'{API}[poll]\njitter = "0"\n').poll.jitter == 0.0


def test_backfill_modes(tmp_path: Path) -> None:
    """poll.backfill takes "none", "all" or a duration window."""
    for value, expected in [
        ("none", Backfill("none")),
        ("all", Backfill("all")),
        ("90m", Backfill("window", 5400.0)),
    ]:
        config = load_text(tmp_path, f'{API}[poll]\nbackfill = "{value}"\n')
        assert config.poll.backfill == expected


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """A config file that does not exist is an error naming its path."""
    path = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load(path, environ=NO_ENV)


def test_toml_syntax_error_names_the_path(tmp_path: Path) -> None:
    """Broken TOML is a one-line error with the path and tomllib's position."""
    path = write(tmp_path, f'{API}timeout = \n"10s"\n')

    with pytest.raises(ConfigError) as caught:
        load(path, environ=NO_ENV)

    message = str(caught.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message
    assert "\n" not in message
    assert TOKEN not in message


def test_config_path_order() -> None:
    """--config beats $AATROX_RELAY_CONFIG, which beats the default path."""
    env = {"AATROX_RELAY_CONFIG": "/env/config.toml"}

    assert config_path("/cli/config.toml", env) == Path("/cli/config.toml")
    assert config_path(None, env) == Path("/env/config.toml")
    assert config_path(None, {}) == DEFAULT_CONFIG_PATH


def test_example_config_loads() -> None:
    """config.example.toml is itself a valid config once a token is in the environment."""
    config = load(ROOT / "config.example.toml", environ={"AATROX_TOKEN": "x"})

    assert config.api.token_source == TokenSource("env", "x")
    assert [number.number for number in config.numbers] == ["+61400000001", "+61400000002"]
    assert [hook.name for hook in config.webhooks] == ["crm"]


BAD_CONFIGS = [
    ("top-level", "colour = 1\n" + MINIMAL, "colour: unknown top-level key"),
    ("api-unknown", API + 'tokn = "x"\n', 'api: unknown key "tokn"'),
    ("api-table", 'api = "x"\n', "api: expected a table, got string"),
    ("api-timeout-type", API + "timeout = true\n", "api.timeout: expected a duration, got boolean"),
    ("api-timeout-zero", API + 'timeout = "0s"\n', "api.timeout: must be greater than 0"),
    ("base-url", API + 'base_url = "ftp://x"\n', "api.base_url: is not an http:// or https://"),
    ("token-empty", '[api]\ntoken = " "\n', "api.token: is empty"),
    ("token-both", API + 'token_file = "t"\n', "api.token_file: cannot be set together"),
    ("region", API + 'default_region = "XX"\n', 'api.default_region: "XX" is not a region'),
    ("timezone", API + 'timezone = "Mars/Olympus"\n', 'api.timezone: "Mars/Olympus" is not an'),
    ("max-response", API + "max_response_bytes = 100\n", "api.max_response_bytes: must be at"),
    ("ca-bundle", API + 'ca_bundle = "nope.pem"\n', "api.ca_bundle: "),
    ("store-url", API + f'[store]\nurl = "mysql://u:{DB_PASSWORD}@h/db"\n', "store.url: must"),
    (
        "store-port",
        API + f'[store]\nurl = "postgresql://relay:{DB_PASSWORD}@host:notaport/db"\n',
        "store.url: the port is not a number",
    ),
    (
        "store-port-range",
        API + f'[store]\nurl = "postgresql://relay:{DB_PASSWORD}@host:65536/db"\n',
        "store.url: port 65536 is not from 1 to 65535",
    ),
    (
        "store-driver",
        API + f'[store]\nurl = "postgresql+nodriver://relay:{DB_PASSWORD}@host/db"\n',
        'store.url: unknown database driver "postgresql+nodriver"',
    ),
    ("store-garbage", API + f'[store]\nurl = "{DB_PASSWORD}"\n', "store.url: is not a database"),
    ("sqlite-host", API + '[store]\nurl = "sqlite://relay.db"\n', "store.url: a SQLite URL has"),
    ("sqlite-memory", API + '[store]\nurl = "sqlite://"\n', "store.url: an in-memory SQLite"),
    ("retention", API + '[store]\nretention = "0"\n', "store.retention: must be greater than 0"),
    ("interval", API + '[poll]\ninterval = "fast"\n', 'poll.interval: "fast" is not a duration'),
    ("interval-min", API + '[poll]\ninterval = "50ms"\n', "poll.interval: must be at least 0.1s"),
    ("backfill", API + '[poll]\nbackfill = "x"\n', 'poll.backfill: "x" is not "none", "all" or'),
    ("backfill-0", API + '[poll]\nbackfill = "0s"\n', "poll.backfill: must be greater than 0"),
    ("poll-conc", API + "[poll]\nconcurrency = 0\n", "poll.concurrency: must be at least 1"),
    ("numbers-table", API + HOOK + '[numbers]\nnumber = "+61400000001"\n', "numbers: expected"),
    ("no-webhook", API + NUMBER, "webhooks: at least one webhook is required"),
    ("number-missing", API + HOOK + "[[numbers]]\n", "numbers[0].number: is required"),
    ("number-bad", API + HOOK + '[[numbers]]\nnumber = "12"\n', "numbers[0].number: too short"),
    ("number-key", MINIMAL + "[[numbers]]\nnumbr = 1\n", 'numbers[1]: unknown key "numbr"'),
    (
        "number-hook",
        MINIMAL + NUMBER.replace("01", "02") + NUMBER.replace("01", "03") + 'webhooks = ["crm2"]\n',
        'numbers[2].webhooks: unknown webhook "crm2"',
    ),
    ("number-hooks-empty", MINIMAL + "webhooks = []\n", "numbers[0].webhooks: is empty"),
    ("from", MINIMAL + 'from = "abc"\n', "numbers[0].from: a phone number has no letters"),
    ("number-interval", MINIMAL + 'interval = "1ms"\n', "numbers[0].interval: must be at least"),
    ("hook-name", API + HOOK.replace('"crm"', '"c r m"'), 'webhooks[0].name: "c r m" is not'),
    ("hook-dup", API + HOOK + HOOK, 'webhooks[1].name: "crm" is already used by webhooks[0]'),
    ("hook-url", API + HOOK.replace("https://", "mailto:"), "webhooks[0].url: is not an http"),
    ("hook-secret", API + HOOK.replace(SECRET, BAD_SECRET), "webhooks[0].secret: is not whsec_"),
    ("secret-short", API + HOOK.replace(SECRET, SHORT_SECRET), "webhooks[0].secret: is short"),
    (
        "secret-none",
        API + HOOK.replace("secret =", "# secret ="),
        "webhooks[0].secret: set exactly",
    ),
    ("secret-both", API + HOOK + 'secret_file = "s"\n', "webhooks[0].secret: set exactly one"),
    (
        "secret-file-missing",
        API + HOOK.replace(f'secret = "{SECRET}"', 'secret_file = "missing.secret"'),
        "webhooks[0].secret_file: cannot read",
    ),
    (
        "hook-conc",
        API + HOOK + 'concurrency = "8"\n',
        "webhooks[0].concurrency: expected an integer",
    ),
    (
        "hook-conc-max",
        API + HOOK + "concurrency = 1001\n",
        "webhooks[0].concurrency: must be at most",
    ),
    (
        "retry-max",
        API + HOOK + 'retry_max = "1s"\n',
        "webhooks[0].retry_max: must not be less than",
    ),
    ("give-up", API + HOOK + "give_up_after = 0\n", "webhooks[0].give_up_after: must be greater"),
    (
        "reserved-header",
        API + HOOK + f'headers = {{ "content-TYPE" = "{HEADER_SECRET}" }}\n',
        "webhooks[0].headers.content-TYPE: is reserved",
    ),
    (
        "header-type",
        API + HOOK + 'headers = { "X-N" = 5 }\n',
        "webhooks[0].headers.X-N: expected a",
    ),
    (
        "header-name",
        API + HOOK + f'headers = {{ "X Key" = "{HEADER_SECRET}" }}\n',
        "webhooks[0].headers.X Key: is not letters, digits",
    ),
    (
        "header-dup",
        API + HOOK + f'headers = {{ "X-Key" = "1", "x-key" = "{HEADER_SECRET}" }}\n',
        "webhooks[0].headers.x-key: is already set by webhooks[0].headers.X-Key",
    ),
    (
        "header-value",
        API + HOOK + f'headers = {{ "X-Key" = "{HEADER_SECRET}\\n" }}\n',
        "webhooks[0].headers.X-Key: has a value that is not printable ASCII",
    ),
    ("hook-key", API + HOOK + 'sekret = "x"\n', 'webhooks[0]: unknown key "sekret"'),
    ("log-level", API + '[log]\nlevel = "loud"\n', 'log.level: "loud" is not one of debug, info'),
    ("log-format", API + '[log]\nformat = "xml"\n', 'log.format: "xml" is not one of text, json'),
    ("log-pii", API + '[log]\npii = "yes"\n', "log.pii: expected a boolean, got string"),
    ("lease", API + '[store]\nlease = "500ms"\n', "store.lease: must be at least 1s"),
    ("lease-type", API + "[store]\nlease = true\n", "store.lease: expected a duration"),
    ("disclaimer", MINIMAL + 'disclaimer = "yes"\n', "numbers[0].disclaimer: expected a boolean"),
    ("http-table", 'http = "127.0.0.1:9464"\n' + API, "http: expected a table, got string"),
    ("http-key", API + '[http]\nlisten = "h:1"\nport = 1\n', 'http: unknown key "port"'),
    ("listen-none", API + "[http]\n", "http.listen: required when [http] is present"),
    ("listen-type", API + "[http]\nlisten = 9464\n", "http.listen: expected a string"),
    ("listen-bad", API + '[http]\nlisten = "x"\n', 'http.listen: "x" is not host:port'),
    ("listen-empty", API + '[http]\nlisten = ""\n', 'http.listen: "" is not host:port'),
    ("listen-host", API + '[http]\nlisten = ":80"\n', 'http.listen: ":80" is not host:port'),
    ("listen-port", API + '[http]\nlisten = "h:65536"\n', 'http.listen: "h:65536" is not'),
    ("listen-v6", API + '[http]\nlisten = "::1:80"\n', 'http.listen: "::1:80" is not'),
    ("listen-v4-br", API + '[http]\nlisten = "[127.0.0.1]:80"\n', "http.listen: "),
    ("listen-v4", API + '[http]\nlisten = "1.2.3.999:80"\n', 'http.listen: "1.2.3.999:80"'),
    (
        "send-token-short",
        API + f'[http]\nlisten = "h:1"\nsend_token = "{SHORT_SEND_TOKEN}"\n',
        "http.send_token: must be at least 16 characters",
    ),
    (
        "send-token-both",
        API + f'[http]\nlisten = "h:1"\nsend_token = "{SEND_TOKEN}"\nsend_token_file = "t"\n',
        "http.send_token_file: cannot be set together with http.send_token",
    ),
    (
        "send-token-file-blank",
        API + '[http]\nlisten = "h:1"\nsend_token_file = ""\n',
        "http.send_token_file: is empty",
    ),
    ("sentry-table", "sentry = 1\n" + API, "sentry: expected a table, got integer"),
    ("dsn-none", API + "[sentry]\n", "sentry.dsn: required when [sentry] is present"),
    ("dsn-type", API + "[sentry]\ndsn = 1\n", "sentry.dsn: expected a string, got integer"),
    ("dsn-key", API + f'[sentry]\ndsn = "{DSN}"\ndns = 1\n', 'sentry: unknown key "dns"'),
    (
        "dsn-scheme",
        API + f'[sentry]\ndsn = "{DSN.replace("https", "ftp")}"\n',
        "sentry.dsn: is not a Sentry DSN",
    ),
    (
        "dsn-public-key",
        API + f'[sentry]\ndsn = "{DSN.replace(DSN_KEY + "@", "")}"\n',
        "sentry.dsn: is not a Sentry DSN",
    ),
    (
        "dsn-project",
        API + f'[sentry]\ndsn = "{DSN.removesuffix("42")}"\n',
        "sentry.dsn: is not a Sentry DSN",
    ),
    ("dsn-text", API + f'[sentry]\ndsn = "{DSN_KEY}"\n', "sentry.dsn: is not a Sentry DSN"),
    (
        "sentry-environment",
        API + f'[sentry]\ndsn = "{DSN}"\nenvironment = " "\n',
        "sentry.environment: is empty",
    ),
    (
        "sentry-release",
        API + f'[sentry]\ndsn = "{DSN}"\nrelease = 1.0\n',
        "sentry.release: expected a string, got float",
    ),
    (
        "traces-type",
        API + f'[sentry]\ndsn = "{DSN}"\ntraces_sample_rate = "0.5"\n',
        "sentry.traces_sample_rate: expected a number, got string",
    ),
    (
        "traces-range",
        API + f'[sentry]\ndsn = "{DSN}"\ntraces_sample_rate = 1.5\n',
        "sentry.traces_sample_rate: must be from 0 to 1, got 1.5",
    ),
    (
        "traces-nan",
        API + f'[sentry]\ndsn = "{DSN}"\ntraces_sample_rate = nan\n',
        "sentry.traces_sample_rate: must be from 0 to 1",
    ),
    (
        "sentry-monitor",
        API + f'[sentry]\ndsn = "{DSN}"\nmonitor = 1\n',
        "sentry.monitor: expected a boolean, got integer",
    ),
    ("run-key", API + "[run]\ntimeout = 1\n", 'run: unknown key "timeout"'),
    (
        "retry-unknown",
        API + '[outbound]\nretry_unknown = "yes"\n',
        "outbound.retry_unknown: expected a boolean, got string",
    ),
    ("outbound-key", API + "[outbound]\nretry = true\n", 'outbound: unknown key "retry"'),
    ("outbound-table", 'outbound = "retry"\n' + API, "outbound: expected a table, got string"),
    (
        "shutdown-zero",
        API + '[run]\nshutdown_timeout = "0s"\n',
        "run.shutdown_timeout: must be greater than 0",
    ),
    (
        "shutdown-bad",
        API + '[run]\nshutdown_timeout = "soon"\n',
        'run.shutdown_timeout: "soon" is not a duration',
    ),
]


@pytest.mark.parametrize(
    ("text", "start"), [case[1:] for case in BAD_CONFIGS], ids=[case[0] for case in BAD_CONFIGS]
)
def test_bad_config_names_its_key(tmp_path: Path, text: str, start: str) -> None:
    """Each mistake is a one-line error that starts with its key and leaks no secret."""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)

    message = str(caught.value)
    assert message.startswith(start)
    assert "\n" not in message
    for secret in SECRETS:
        assert secret not in message
