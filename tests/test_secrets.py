"""Secrets and configured URLs are never shown: not in debug logs, not in Sentry events,
not in /metrics, before and after a reload that changes them (issue 14, items 4 and 9)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay import logs, redact
from relay.config import HttpConfig, load
from relay.daemon import Relay
from relay.httpd import HttpServer
from relay.logs import JsonFormatter, TextFormatter, fields
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import (
    KEY,
    NUMBERS,
    SECRET,
    SENDER,
    TOKEN,
    FakeSentry,
    RelayProcess,
    kept_logging,
    relay_config,
    write_config,
)

pytestmark = pytest.mark.anyio

TEXT = "meet me behind the old mill"
#: A number the relay sends an SMS to.
RECIPIENT = "+61412999888"
#: Every spelling of a phone number that must not be shown in full.
FULL_NUMBERS = [
    spelling
    for number in (*NUMBERS, SENDER, RECIPIENT)
    for spelling in (number, number[1:], "0" + number[3:])
]


@dataclass(frozen=True)
class Phase:
    """One config's secrets: each value is unique to the phase and the test."""

    tag: str
    hook: str
    token: str
    key: bytes

    @property
    def path_secret(self) -> str:
        """A secret in the webhook URL's path."""
        return f"PATHSECRET987{self.tag}"

    @property
    def query_secret(self) -> str:
        """A secret in the webhook URL's query."""
        return f"QUERYSECRET654{self.tag}"

    @property
    def header(self) -> str:
        """The value of the webhook's header, from its headers_file."""
        return f"HEADERSECRET321{self.tag}"

    @property
    def send_token(self) -> str:
        """The send endpoint's token."""
        return f"send-token-0123456789{self.tag}"

    @property
    def whsec(self) -> str:
        """The webhook secret as configured."""
        return "whsec_" + base64.b64encode(self.key).decode()

    def url(self, receiver: WebhookReceiver) -> str:
        """The webhook's URL on ``receiver``."""
        return f"{receiver.url}/hooks/catch/{self.path_secret}/?sig={self.query_secret}"

    def registered(self) -> list[str]:
        """What the scrubber must filter wherever it stands: the URL's path and query,
        the header value, the send token, the token and the key in its forms."""
        return [
            f"/hooks/catch/{self.path_secret}/",
            f"sig={self.query_secret}",
            self.query_secret,
            self.header,
            self.send_token,
            self.token,
            self.whsec.removeprefix("whsec_"),
            self.key.decode(),
        ]

    def secrets(self) -> list[str]:
        """Everything of this phase that must never be shown."""
        return [
            self.path_secret,
            self.query_secret,
            self.header,
            self.send_token,
            self.token,
            self.whsec.removeprefix("whsec_"),
            self.key.decode(),
        ]


def write_phase(
    tmp_path: Path, phase: Phase, sim: Simulator, receiver: WebhookReceiver, dsn: str | None
) -> Path:
    """The config of ``phase`` (headers in a headers_file beside it), debug logs, /metrics
    and /v1/send served, Sentry at ``dsn``; its path."""
    headers = tmp_path / f"headers{phase.tag}.txt"
    headers.write_text(f"# crm's key\nX-Auth: {phase.header}\n", encoding="utf-8")
    headers.chmod(0o600)
    extra = (
        f'headers_file = "{headers.name}"\ngive_up_after = "1s"\n\n'
        '[log]\nlevel = "debug"\n\n'
        f'[http]\nlisten = "127.0.0.1:0"\nsend_token = "{phase.send_token}"\n'
    )
    if dsn is not None:
        extra += f'\n[sentry]\ndsn = "{dsn}"\n'
    path = write_config(
        tmp_path / "relay.toml",
        sim.url,
        phase.url(receiver),
        f"sqlite:///{tmp_path / 'relay.db'}",
        extra=extra,
        interval="500ms",
    )
    text = path.read_text(encoding="utf-8")
    text = text.replace(f'token = "{TOKEN}"', f'token = "{phase.token}"')
    text = text.replace(SECRET, phase.whsec).replace('name = "hook"', f'name = "{phase.hook}"')
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
async def fake_sentry() -> AsyncIterator[tuple[FakeSentry, str]]:
    """A FakeSentry served on loopback, and a DSN pointing at it."""
    ingest = FakeSentry()
    async with HttpServer(ingest) as server:
        yield ingest, f"http://public@127.0.0.1:{server.port}/1"


def _alert(event: dict[str, Any]) -> str | None:
    tags = event.get("tags") or {}
    pairs = tags.items() if isinstance(tags, dict) else tags
    return next((value for key, value in pairs if key == "alert"), None)


async def wait_for_alert(ingest: FakeSentry, alert: str, timeout: float = 20.0) -> dict[str, Any]:
    """The first Sentry event of ``alert``, waiting for it."""

    async def find() -> dict[str, Any]:
        while True:
            for event in ingest.events():
                if _alert(event) == alert:
                    return event
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(find(), timeout)


def http_crumbs(event: dict[str, Any]) -> list[str]:
    """The URLs of the httpx request breadcrumbs of ``event``."""
    crumbs = (event.get("breadcrumbs") or {}).get("values", [])
    return [c["data"]["url"] for c in crumbs if c.get("category") == "httplib"]


async def _listening(relay: RelayProcess) -> str:
    line = await relay.wait_for_line("relay.http.listening")
    match = re.search(r"url=(\S+)", line)
    assert match, line
    return match.group(1)


async def _exchange(
    url: str,
    phase: Phase,
    sim: Simulator,
    receiver: WebhookReceiver,
    ingest: FakeSentry,
    send_token: str,
) -> tuple[dict[str, Any], str]:
    """Under ``phase``: a delivery dead-letters (a Sentry event), the next is delivered, an
    SMS is sent through /v1/send with ``send_token``; the event and a /metrics scrape."""
    receiver.respond(Rule(status=500))
    sim.inject(SENDER, NUMBERS[0], TEXT)
    event = await wait_for_alert(ingest, f"webhook_dead:{phase.hook}")
    receiver.clear_rules()
    sim.inject(SENDER, NUMBERS[1], TEXT)
    await receiver.wait_for(1)
    sent = len(sim.sent)
    async with httpx.AsyncClient(base_url=url) as http:
        answer = await http.post(
            "/v1/send",
            json={"from": NUMBERS[0], "to": RECIPIENT, "text": TEXT},
            headers={"Authorization": f"Bearer {send_token}"},
        )
        assert answer.status_code == 202, answer.text
        while len(sim.sent) == sent:
            await asyncio.sleep(0.05)
        metrics = (await http.get("/metrics")).text
    return event, metrics


async def test_nothing_secret_is_shown_before_or_after_a_reload(
    sim: Simulator, tmp_path: Path, fake_sentry: tuple[FakeSentry, str]
) -> None:
    """A relay at log.level = "debug" shows no URL path or query, header value, secret,
    token, message text or full number in its logs, its Sentry events or /metrics, with
    its first config and after a SIGHUP that changes every one of them; httpx's lines and
    breadcrumbs name the webhook instead."""
    ingest, dsn = fake_sentry
    first = Phase("-e2e-a", "hook", TOKEN, KEY)
    second = Phase(
        "-e2e-b", "hook2", "test-token-rotated-9e1b", b"fedcba9876543210fedcba9876543210"
    )
    async with WebhookReceiver(first.key) as one, WebhookReceiver(second.key) as two:
        relay = RelayProcess(write_phase(tmp_path, first, sim, one, dsn))
        await relay.start()
        try:
            url = await _listening(relay)
            before, metrics_before = await _exchange(url, first, sim, one, ingest, first.send_token)
            write_phase(tmp_path, second, sim, two, dsn)
            sim.token = second.token
            relay.signal(signal.SIGHUP)
            await relay.wait_for_line("relay.reloaded")
            # [http] needs a restart: the first send token still opens /v1/send.
            after, metrics_after = await _exchange(url, second, sim, two, ingest, first.send_token)
        finally:
            assert await relay.terminate() == 0
    lines = "\n".join(relay.lines)
    sentry = b"".join(ingest.envelopes).decode()
    for secret in [*first.secrets(), *second.secrets(), *FULL_NUMBERS, TEXT]:
        assert secret not in lines, secret
        assert secret not in sentry, secret
        assert secret not in metrics_before + metrics_after, secret
    assert 'HTTP Request: POST webhook:hook "HTTP/1.1 500' in lines
    assert 'HTTP Request: POST webhook:hook2 "HTTP/1.1 204' in lines
    assert 'HTTP Request: GET api:/api/v2/sms/receive "HTTP/1.1 200' in lines
    assert "webhook:hook" in http_crumbs(before)
    assert "webhook:hook2" in http_crumbs(after)
    assert f"{logs.number(NUMBERS[0])}-" in metrics_after


async def test_a_reload_registers_the_new_secrets(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Relay.reload registers the new config's URL, header value, webhook secret, token
    and send token: none was filtered before it, each is after."""
    first = Phase("-reload-a", "hook", TOKEN, KEY)
    second = Phase("-reload-b", "hook2", "test-token-reload-b-4f2a", bytes(range(65, 97)))
    new_url = second.url(receiver)
    assert redact.url_label(new_url) != "webhook:hook2"
    for secret in second.registered():
        assert redact.text(secret) == secret
    config = load(write_phase(tmp_path, first, sim, receiver, None))
    with kept_logging():
        async with Relay(config) as relay:
            write_phase(tmp_path, second, sim, receiver, None)
            assert await relay.reload()
    assert redact.url_label(new_url) == "webhook:hook2"
    for secret in second.registered():
        assert redact.text(f"<{secret}>") == "<[Filtered]>", secret


def test_configured_urls_are_shown_as_labels() -> None:
    """The webhook's URL is its name, the API's URLs are "api:" and their path, any other
    URL is its origin; secrets in URLs are gone wherever they stand in text."""
    hook = "https://hooks.example.test/catch/LBLPATH-41/?sig=LBLQUERY-41#frag"
    api = "https://user:LBLPASS-41@api.example.test/base"
    redact.register(relay_config(api, hook, "sqlite:///unused.db"))

    assert redact.url_label(hook) == "webhook:hook"
    assert redact.url_label("https://HOOKS.example.test:443/catch/LBLPATH-41") == "webhook:hook"
    assert redact.url_label(f"{api}/api/v2/sms/receive?to=%2B61400000001") == (
        "api:/api/v2/sms/receive"
    )
    assert redact.url_label("https://api.example.test/other/x?q=1") == (
        "https://api.example.test/[Filtered]"
    )
    assert redact.url_label("http://127.0.0.1:9466") == "http://127.0.0.1:9466"
    assert redact.text(f"POST {hook}: failed (see {hook}).") == (
        "POST webhook:hook: failed (see webhook:hook)."
    )
    assert redact.text("path /catch/LBLPATH-41/ query sig=LBLQUERY-41, LBLPASS-41") == (
        "path [Filtered] query [Filtered], [Filtered]"
    )


def test_every_secret_of_a_config_is_registered() -> None:
    """register() covers the token, a webhook key in both forms, header values, the send
    token and the store's password."""
    config = relay_config("http://127.0.0.1:9", "http://127.0.0.1:9/h", "sqlite:///unused.db")
    key = b"registered-key-0123456789abcdef!"
    hook = replace(config.webhooks[0], secret=key, headers=(("X-Key", "REGHEADER-5a1c"),))
    config = replace(
        config,
        api=replace(config.api, token="REGTOKEN-5a1c"),
        webhooks=(hook,),
        http=HttpConfig("127.0.0.1", 0, send_token="REGSEND-5a1c-0123456789"),
        store=replace(config.store, url="postgresql://relay:REGDBPW-5a1c@db/relay"),
    )
    redact.register(config)
    for secret in ("REGTOKEN-5a1c", "REGHEADER-5a1c", "REGSEND-5a1c-0123456789", "REGDBPW-5a1c"):
        assert redact.text(f"<{secret}>") == "<[Filtered]>", secret
    assert redact.text(base64.b64encode(key).decode()) == "[Filtered]"
    assert redact.text(key.decode()) == "[Filtered]"


def _record(name: str, msg: str, *args: object, **values: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    if values:
        record.__dict__.update(fields(**values))
    return record


def test_log_lines_show_labels_and_hide_secrets() -> None:
    """httpx's request lines name the webhook, a field holding a registered secret shows
    [Filtered], other libraries' numbers are masked, in text and JSON alike."""
    hook = "http://127.0.0.1:9/catch/LOGPATH-77/?sig=LOGQUERY-77"
    redact.register(relay_config("http://127.0.0.1:8", hook, "sqlite:///unused.db"))
    redact.add_secret("LOGSECRET-77")
    request = _record(
        "httpx", 'HTTP Request: %s %s "%s %d %s"', "POST", httpx.URL(hook), "HTTP/1.1", 204, "OK"
    )
    own = _record("relay.dispatcher", "relay.delivery.failed", error="bad LOGSECRET-77")
    trace = _record("httpcore.http11", "return_value=(b'X-To', b'+61412345678')")
    text = TextFormatter()
    assert text.format(request).endswith('HTTP Request: POST webhook:hook "HTTP/1.1 204 OK"')
    assert text.format(own).endswith('relay.delivery.failed error="bad [Filtered]"')
    assert text.format(trace).endswith("return_value=(b'X-To', b'*********678')")
    doc = json.loads(JsonFormatter().format(own))
    assert doc["error"] == "bad [Filtered]"
    assert json.loads(JsonFormatter().format(request))["event"] == (
        'HTTP Request: POST webhook:hook "HTTP/1.1 204 OK"'
    )


def test_log_pii_shows_other_libraries_numbers() -> None:
    """With log.pii = true, numbers in other libraries' lines are shown, as the relay's are."""
    trace = _record("httpcore.http11", "return_value=(b'X-To', b'+61412345678')")
    with kept_logging():
        logs.setup("debug", pii=True)
        shown = TextFormatter().format(trace)
    assert shown.endswith("return_value=(b'X-To', b'+61412345678')")


async def test_debug_logging_of_a_real_request_shows_no_url(receiver: WebhookReceiver) -> None:
    """Through the handler logs.setup installs, a real httpx request at debug level
    leaves a line naming the webhook and none with its path or query."""
    hook = f"{receiver.url}/catch/REALPATH-31/?sig=REALQUERY-31"
    redact.register(relay_config("http://127.0.0.1:8", hook, "sqlite:///unused.db"))
    stream = io.StringIO()
    with kept_logging():
        logs.setup("debug")
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        async with httpx.AsyncClient() as client:
            await client.post(hook, content=b"{}")
    output = stream.getvalue()
    assert 'HTTP Request: POST webhook:hook "HTTP/1.1 204' in output
    assert "REALPATH-31" not in output and "REALQUERY-31" not in output
