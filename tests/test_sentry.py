"""Sentry: scrubbed events, alerts once per change of state, cron check-ins; never the internet."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
import sentry_sdk

from relay import redact, sentry
from relay.config import SentryConfig
from relay.httpd import HttpServer
from relay.sentry import Alerts, Heartbeats, scrub_event, scrub_secret, scrub_text
from relay.testing.clock import FakeClock
from relay.testing.receiver import WebhookReceiver
from tests.support import (
    UNUSED_DSN,
    FakeSentry,
    RecordingTransport,
    parse_envelope,
    recording_sentry,
    relay_config,
)

TOKEN = "tok-7d1e5a9c3b2f4e6a8c0d"
WEBHOOK_KEY = b"0123456789abcdef0123456789abcdef"
SENDER = "+61412345678"
NUMBER = "+61400000001"
SMS_TEXT = "Meet me at the usual place at 6"


@pytest.fixture
def transport() -> Iterator[RecordingTransport]:
    """Sentry set up with a recording transport, shut down and forgotten afterwards."""
    with recording_sentry() as recording:
        yield recording


def test_setup_without_config_does_nothing() -> None:
    """No [sentry] section: setup returns False and Sentry stays inactive."""
    assert sentry.setup(None, version="9.9.9") is False
    assert not sentry_sdk.get_client().is_active()


def test_setup_applies_the_privacy_options(transport: RecordingTransport) -> None:
    """The client runs without local variables or PII, with few breadcrumbs and our release."""
    options = sentry_sdk.get_client().options
    assert options["release"] == "aatrox-relay@9.9.9"
    assert options["environment"] == "test"
    assert options["include_local_variables"] is False
    assert options["send_default_pii"] is False
    assert options["max_breadcrumbs"] == sentry.MAX_BREADCRUMBS
    assert options["traces_sample_rate"] == 0.0
    assert options["trace_propagation_targets"] == []


def test_only_the_named_integrations_run(transport: RecordingTransport) -> None:
    """httpx, SQLAlchemy and logging are hooked; nothing is found by import, so aiohttp's
    integration (and its import at start) stays out."""
    enabled = set(sentry_sdk.get_client().integrations)
    assert {"httpx", "sqlalchemy", "logging"} <= enabled
    assert "aiohttp" not in enabled


def test_setup_honours_the_configured_release() -> None:
    """sentry.release, when set, replaces the default aatrox-relay@<version>."""
    config = SentryConfig(dsn=UNUSED_DSN, release="relay-blue", traces_sample_rate=0.25)
    try:
        sentry.setup(config, version="9.9.9", transport=RecordingTransport())
        options = sentry_sdk.get_client().options
        assert options["release"] == "relay-blue"
        assert options["traces_sample_rate"] == 0.25
    finally:
        sentry.close()


def test_a_problem_is_reported_once_until_resolved(transport: RecordingTransport) -> None:
    """Repeated problem() calls send one event; after resolved() the next one sends again."""
    alerts = Alerts()
    message = "The Aatrox API rejected the token (401)"
    assert alerts.problem("token_rejected", message) is True
    for _ in range(5):
        assert alerts.problem("token_rejected", message) is False
    assert len(transport.items("event")) == 1
    assert alerts.active == {"token_rejected"}
    assert alerts.resolved("token_rejected") is True
    assert alerts.resolved("token_rejected") is False
    assert alerts.problem("token_rejected", message) is True
    events = transport.items("event")
    assert len(events) == 2
    assert events[0]["level"] == "error"
    assert events[0]["tags"]["alert"] == "token_rejected"
    assert events[0]["fingerprint"] == ["aatrox-relay", "token_rejected"]
    assert events[1]["breadcrumbs"]["values"][-1]["message"] == "resolved: token_rejected"


def test_problems_are_tracked_per_key(transport: RecordingTransport) -> None:
    """A dead webhook alert does not hide another webhook's, and tags go along."""
    alerts = Alerts()
    assert alerts.problem("webhook_dead:crm", "deliveries to crm are dead", webhook="crm")
    assert alerts.problem("webhook_dead:erp", "deliveries to erp are dead", webhook="erp")
    assert not alerts.problem("webhook_dead:crm", "deliveries to crm are dead", webhook="crm")
    events = transport.items("event")
    assert [e["tags"]["webhook"] for e in events] == ["crm", "erp"]


def test_alerts_keep_state_without_sentry() -> None:
    """Without setup, Alerts still reports a problem once, and sends nothing."""
    alerts = Alerts()
    assert alerts.problem("store_error", "the store failed") is True
    assert alerts.problem("store_error", "the store failed") is False
    assert alerts.exception(RuntimeError("boom")) is None


def test_events_carry_no_token_no_text_and_no_full_number(transport: RecordingTransport) -> None:
    """An exception reported with secrets, SMS text and numbers all over it leaves them behind."""
    scrub_secret(TOKEN)
    scrub_secret(WEBHOOK_KEY)
    sentry_sdk.add_breadcrumb(
        category="httpx",
        message=f"GET /api/v2/sms/receive?to={NUMBER}",
        data={"body": SMS_TEXT, "authorization": f"Bearer {TOKEN}", "from": SENDER},
    )
    logging.getLogger("relay").info("relay.message.received from %s: %s", SENDER, SMS_TEXT)
    sentry_sdk.set_extra("inbound", {"from": SENDER, "text": SMS_TEXT})
    sentry_sdk.set_context("delivery", {"payload": json.dumps({"text": SMS_TEXT})})
    try:
        msg = f"POST failed for {SENDER} with Authorization: Bearer {TOKEN} key {TOKEN}"
        raise RuntimeError(msg)
    except RuntimeError as exc:
        assert Alerts().exception(exc) is not None
    (event,) = transport.items("event")
    sent = transport.everything().decode()
    assert TOKEN not in sent
    assert SMS_TEXT not in sent
    assert SENDER not in sent and SENDER[1:] not in sent
    assert NUMBER not in sent
    assert "*********678" in event["exception"]["values"][0]["value"]
    assert event["extra"]["inbound"] == {"from": "*********678", "text": "[Filtered]"}
    crumbs = event["breadcrumbs"]["values"]
    assert crumbs[0]["message"] == "GET /api/v2/sms/receive?to=*********001"


def test_alert_messages_and_tags_are_scrubbed(transport: RecordingTransport) -> None:
    """An alert whose message or tags mention a number or the token is scrubbed too."""
    scrub_secret(TOKEN)
    Alerts().problem("token_rejected", f"token {TOKEN} rejected polling {NUMBER}", number=NUMBER)
    (event,) = transport.items("event")
    sent = transport.everything().decode()
    assert TOKEN not in sent
    assert NUMBER not in sent
    assert event["tags"]["number"] == "*********001"


def test_error_logs_are_breadcrumbs_not_events(transport: RecordingTransport) -> None:
    """An error logged on every poll never becomes an event of its own."""
    for _ in range(3):
        logging.getLogger("relay").error("relay.poll.failed")
    assert transport.items("event") == []
    Alerts().problem("token_rejected", "The Aatrox API rejected the token (401)")
    (event,) = transport.items("event")
    messages = [c.get("message") for c in event["breadcrumbs"]["values"]]
    assert messages.count("relay.poll.failed") == 3


def test_breadcrumbs_are_capped(transport: RecordingTransport) -> None:
    """Only the last MAX_BREADCRUMBS breadcrumbs go with an event."""
    for i in range(sentry.MAX_BREADCRUMBS + 20):
        sentry_sdk.add_breadcrumb(message=f"poll {i}")
    Alerts().problem("store_error", "the store failed")
    (event,) = transport.items("event")
    assert len(event["breadcrumbs"]["values"]) == sentry.MAX_BREADCRUMBS


def test_scrub_text_masks_numbers_and_credentials() -> None:
    """Runs of 8+ digits are masked; bearer tokens, Authorization and key=value secrets go."""
    assert scrub_text(f"from {SENDER} to 61400000001") == "from *********678 to ********001"
    assert scrub_text("The Aatrox API rejected the token (401) at 2026") == (
        "The Aatrox API rejected the token (401) at 2026"
    )
    assert scrub_text("Authorization: Bearer abc.def-ghi") == "Authorization: [Filtered]"
    assert scrub_text("sent bearer abc.def") == "sent bearer [Filtered]"
    assert scrub_text("GET /x?api_key=s3cr3t&to=1") == "GET /x?api_key=[Filtered]&to=1"
    assert scrub_text('{"password": "hunter2"}') == '{"password": "[Filtered]"}'


def test_scrub_text_drops_quoted_message_text() -> None:
    """Message text quoted in a string (a JSON body, a dict repr) is filtered, keys kept."""
    body = json.dumps({"id": "1", "text": 'He said "hi"', "from": SENDER})
    scrubbed = scrub_text(f"bad item {body}")
    assert "hi" not in scrubbed
    assert '"text": "[Filtered]"' in scrubbed
    assert scrub_text("{'body': 'see you'}") == "{'body': '[Filtered]'}"


def test_registered_secrets_are_filtered() -> None:
    """scrub_secret covers a string, and a key given as bytes in its base64 form."""
    scrub_secret("swordfish-42")
    scrub_secret(WEBHOOK_KEY)
    encoded = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    assert scrub_text("secret swordfish-42 in use") == "secret [Filtered] in use"
    assert scrub_text(f"bad {encoded}") == "bad whsec_[Filtered]"
    assert scrub_text(f"raw {WEBHOOK_KEY.decode()}") == "raw [Filtered]"


def test_short_secrets_are_ignored() -> None:
    """A secret too short to be real is not registered, so ordinary words survive."""
    scrub_secret("the")
    assert scrub_text("the relay") == "the relay"


def test_scrub_event_filters_request_data_and_keeps_ids() -> None:
    """Request bodies, cookies and auth headers go; event and trace ids stay intact."""
    event: Any = {
        "event_id": "12345678901234567890123456789012",
        "contexts": {"trace": {"trace_id": "98765432109876543210987654321098"}},
        "request": {
            "url": "http://127.0.0.1/v1/send",
            "query_string": f"to={SENDER}",
            "headers": {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": "k-1234"},
            "cookies": "session=abc",
            "data": {"to": SENDER, "text": SMS_TEXT},
        },
    }
    scrubbed = scrub_event(event)
    assert scrubbed["event_id"] == "12345678901234567890123456789012"
    assert scrubbed["contexts"]["trace"]["trace_id"] == "98765432109876543210987654321098"
    request = scrubbed["request"]
    assert request["data"] == "[Filtered]"
    assert request["cookies"] == "[Filtered]"
    assert request["headers"] == {"Authorization": "[Filtered]", "X-Api-Key": "[Filtered]"}
    assert request["query_string"] == "to=*********678"


def test_checkin_sends_a_check_in(transport: RecordingTransport) -> None:
    """checkin() sends a check_in item with its slug, status, duration and schedule."""
    config = sentry.monitor_config(10.0)
    check_in_id = sentry.checkin("relay-poll", "ok", duration=0.25, monitor_config=config)
    assert check_in_id is not None
    (item,) = transport.items("check_in")
    assert item["monitor_slug"] == "relay-poll"
    assert item["status"] == "ok"
    assert item["check_in_id"] == check_in_id
    assert item["duration"] == 0.25
    assert item["release"] == "aatrox-relay@9.9.9"
    assert item["monitor_config"]["schedule"] == {"type": "interval", "value": 1, "unit": "minute"}


def test_checkin_refuses_unknown_statuses() -> None:
    """A status Sentry does not know is a ValueError, not a silently ignored check-in."""
    with pytest.raises(ValueError, match="'done'"):
        sentry.checkin("relay-poll", "done")


def test_checkin_without_sentry_is_none() -> None:
    """Without setup, checkin() sends nothing and returns None."""
    assert sentry.checkin("relay-poll", "ok") is None


def test_heartbeats_throttle_but_report_changes(transport: RecordingTransport) -> None:
    """At most one ok check-in per gap, but a change to error (and back) is sent at once."""
    clock = FakeClock()
    beats = Heartbeats(clock=clock.monotonic, min_gap=60.0)
    sent = [beats.beat("poll", ok=True) is not None]
    clock.advance(10)
    sent.append(beats.beat("poll", ok=True) is not None)
    sent.append(beats.beat("poll", ok=False) is not None)
    clock.advance(10)
    sent.append(beats.beat("poll", ok=False) is not None)
    sent.append(beats.beat("other", ok=True) is not None)
    clock.advance(60)
    sent.append(beats.beat("poll", ok=False) is not None)
    sent.append(beats.beat("poll", ok=True) is not None)
    assert sent == [True, False, True, False, True, True, True]
    statuses = [(i["monitor_slug"], i["status"]) for i in transport.items("check_in")]
    assert statuses == [
        ("poll", "ok"),
        ("poll", "error"),
        ("other", "ok"),
        ("poll", "error"),
        ("poll", "ok"),
    ]


def test_monitor_slug_hides_the_number() -> None:
    """A number's monitor slug is a valid Sentry slug without the full number in it."""
    slug = sentry.monitor_slug(NUMBER)
    assert re.fullmatch(r"[a-z0-9-]{1,50}", slug)
    assert slug.startswith("aatrox-relay-poll-001-")
    assert NUMBER[1:] not in slug
    assert slug != sentry.monitor_slug("+61400000002")


def test_monitor_config_rounds_up_to_whole_minutes() -> None:
    """The schedule is in whole minutes, never shorter than the check-in throttle."""
    assert sentry.monitor_config(10.0)["schedule"]["value"] == 1
    assert sentry.monitor_config(90.0)["schedule"]["value"] == 2


# --- over real HTTP --------------------------------------------------------------------


@pytest.fixture
async def fake_sentry() -> AsyncIterator[tuple[FakeSentry, str]]:
    """A FakeSentry served on loopback, and a DSN pointing at it."""
    ingest = FakeSentry()
    async with HttpServer(ingest) as server:
        yield ingest, f"http://public@127.0.0.1:{server.port}/1"


@pytest.mark.anyio
async def test_events_reach_a_dsn_over_http_scrubbed(fake_sentry: tuple[FakeSentry, str]) -> None:
    """With a loopback DSN, the SDK's own HTTP transport posts one scrubbed event per alert."""
    ingest, dsn = fake_sentry
    scrub_secret(TOKEN)
    sentry.setup(SentryConfig(dsn=dsn), version="9.9.9")
    try:
        alerts = Alerts()
        for _ in range(3):
            alerts.problem("token_rejected", f"token {TOKEN} rejected for {NUMBER}")
        await anyio.to_thread.run_sync(sentry_sdk.flush, 5.0)
        with anyio.fail_after(5):
            while not ingest.envelopes:
                await anyio.sleep(0.02)
    finally:
        await anyio.to_thread.run_sync(sentry.close)
    events = [
        json.loads(payload)
        for raw in ingest.envelopes
        for header, payload in parse_envelope(raw)
        if header.get("type") == "event"
    ]
    assert len(events) == 1
    assert ingest.paths[0] == "/api/1/envelope/"
    assert events[0]["message"] == "token [Filtered] rejected for *********001"
    everything = b"".join(ingest.envelopes)
    assert TOKEN.encode() not in everything
    assert NUMBER.encode() not in everything


#: Secrets in a webhook's URL, unique to these tests (the registry lives as long as the process).
PATH_SECRET = "PATHSECRET987-sentry"
QUERY_SECRET = "QUERYSECRET654-sentry"


def _hook_url(receiver: WebhookReceiver, tag: str) -> str:
    """A webhook URL on ``receiver`` with secrets in its path and query."""
    return f"{receiver.url}/hooks/catch/{PATH_SECRET}{tag}/?sig={QUERY_SECRET}{tag}"


@pytest.mark.anyio
async def test_http_breadcrumbs_name_the_webhook_not_its_url(
    receiver: WebhookReceiver, transport: RecordingTransport
) -> None:
    """httpx's request breadcrumbs show a configured webhook as its name and any other URL
    as its origin: no path or query of a configured URL reaches Sentry."""
    url = _hook_url(receiver, "-crumb")
    redact.register(relay_config("http://127.0.0.1:9", url, "sqlite:///unused.db"))
    async with httpx.AsyncClient() as client:
        assert (await client.post(url, content=b"{}")).status_code == 204
        other = f"{receiver.url}/elsewhere/{PATH_SECRET}-crumb?to={SENDER}"
        assert (await client.get(other)).status_code == 204
    Alerts().problem("webhook_dead:hook", "deliveries to hook are dead")
    (event,) = transport.items("event")
    http = [c for c in event["breadcrumbs"]["values"] if c.get("category") == "httplib"]
    assert [c["data"]["url"] for c in http] == ["webhook:hook", f"{receiver.url}/[Filtered]"]
    assert [c["data"]["http.query"] for c in http] == ["[Filtered]", "[Filtered]"]
    sent = transport.everything().decode()
    assert PATH_SECRET not in sent
    assert QUERY_SECRET not in sent
    assert SENDER not in sent and SENDER[1:] not in sent


@pytest.mark.anyio
async def test_http_spans_name_the_webhook_not_its_url(receiver: WebhookReceiver) -> None:
    """With tracing on, httpx's spans show a configured webhook as its name in their
    description and data, never its URL's path or query."""
    url = _hook_url(receiver, "-span")
    redact.register(relay_config("http://127.0.0.1:9", url, "sqlite:///unused.db"))
    recording = RecordingTransport()
    config = SentryConfig(dsn=UNUSED_DSN, traces_sample_rate=1.0)
    sentry.setup(config, version="9.9.9", transport=recording)
    try:
        with sentry_sdk.start_transaction(name="deliver"):
            async with httpx.AsyncClient() as client:
                await client.post(url, content=b"{}")
    finally:
        sentry.close()
        for scope in (sentry_sdk.get_isolation_scope(), sentry_sdk.get_current_scope()):
            scope.clear()
    (transaction,) = recording.items("transaction")
    (span,) = [s for s in transaction["spans"] if s["op"] == "http.client"]
    assert span["description"] == "POST webhook:hook"
    assert span["data"]["url"] == "webhook:hook"
    sent = recording.everything().decode()
    assert PATH_SECRET not in sent
    assert QUERY_SECRET not in sent
