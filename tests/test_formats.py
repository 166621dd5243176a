"""Webhook formats over real HTTP: a ``twilio`` webhook gets what Twilio would send an app
(checked by the Twilio helper library's own RequestValidator), a ``slack`` one a line
of text with Slack's escaping; retries apply to both as to any webhook."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from twilio.request_validator import RequestValidator

from relay.config import DEFAULT_TWILIO_ACCOUNT_SID, SMS_FAILED, SMS_SENT, Config, NumberConfig
from relay.daemon import Relay
from relay.http import Request
from relay.testing.faults import Fault
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, relay_config, running, webhook_config

pytestmark = pytest.mark.anyio

#: A Twilio auth token is 32 hex digits; this one is in no other test's text (the relay
#: registers it as a secret, process-wide).
AUTH_TOKEN = "7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e"
#: Below the receiver's URL: a path and a query, both covered by the signature.
TWILIO_PATH = "/twilio-format-hook?relay-test=twilio-format"
SLACK_PATH = "/services/T0FORMAT/B0FORMAT/slackformattestkey"
FORM = "application/x-www-form-urlencoded"
#: Texts and the segments Twilio counts for each: GSM-7 160/153 (an extension character
#: is two septets, never split), UCS-2 70/67 (an emoji is two units).
TEXTS = {
    "Hi, table for 2 at 7pm?": 1,
    "x" * 160: 1,
    "y" * 200: 2,
    "See you soon 😀": 1,
    "😀" * 40: 2,
    "Price: €5 [ok] {a|b} ~^\\": 1,
    "€" * 80: 1,
    "€" * 81: 2,
    "[" * 76 + "a" + "]": 1,
    "z" * 159 + "€": 2,
}


def form(body: bytes) -> dict[str, str]:
    """A form body's fields; a name given twice fails the test."""
    pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    fields = dict(pairs)
    assert len(fields) == len(pairs), f"repeated fields in {pairs}"
    return fields


def twilio_receiver(token: str = AUTH_TOKEN) -> WebhookReceiver:
    """A receiver that checks each request as an app on Twilio does: a form body whose
    X-Twilio-Signature the twilio package's RequestValidator accepts for the full URL;
    a delivery's id is its I-Twilio-Idempotency-Token."""
    validator = RequestValidator(token)

    def check(request: Request) -> tuple[str, str | None]:
        query = f"?{urlencode(request.query)}" if request.query else ""
        url = receiver.url + quote(request.path) + query
        token_id = request.headers.get("i-twilio-idempotency-token", "")
        if request.method != "POST" or request.headers.get("content-type") != FORM:
            return token_id, "not a form POST"
        signature = request.headers.get("x-twilio-signature", "")
        if not validator.validate(url, form(request.body), signature):
            return token_id, "X-Twilio-Signature does not verify"
        return token_id, None

    receiver = WebhookReceiver(b"", check=check)
    return receiver


def slack_receiver() -> WebhookReceiver:
    """A receiver of Slack messages: an unsigned JSON POST; its id is the body's hash."""

    def check(request: Request) -> tuple[str, str | None]:
        body_id = hashlib.sha256(request.body).hexdigest()
        if request.headers.get("content-type") != "application/json":
            return body_id, "not JSON"
        if any(name.startswith("webhook-") for name in request.headers):
            return body_id, "a Standard Webhooks header"
        return body_id, None

    return WebhookReceiver(b"", check=check)


def formatted(config: Config, url: str, fmt: str, **fields: object) -> Config:
    """``config`` with its one webhook, "hook", sent in format ``fmt`` to ``url``."""
    if fmt == "twilio":
        fields.setdefault("twilio_auth_token", AUTH_TOKEN)
    hook = webhook_config(url, name="hook", secret=b"", format=fmt, retry_initial=0.2, **fields)
    return dataclasses.replace(config, webhooks=(dataclasses.replace(hook, retry_max=1.0),))


async def test_twilio_fields_equal_what_the_api_held(sim: Simulator, sqlite_url: str) -> None:
    """Each message reaches a twilio webhook once, as a form that RequestValidator accepts
    with the configured token, its fields those of Twilio's incoming SMS webhook."""
    async with twilio_receiver() as receiver:
        held = {text: i % 2 for i, text in enumerate(TEXTS)}
        for text, number in held.items():
            sim.inject(SENDER, NUMBERS[number], text)
        config = relay_config(sim.url, "http://unused", sqlite_url)
        config = formatted(config, receiver.url + TWILIO_PATH, "twilio")
        async with Relay(config) as relay:
            summary = await relay.poll_once()
    assert summary.counts["delivered"] == len(TEXTS)
    assert all(d.verified for d in receiver.deliveries), [d.error for d in receiver.deliveries]
    assert len(receiver.deliveries) == len(receiver.unique_ids()) == len(TEXTS)
    sids = set()
    for delivery in receiver.deliveries:
        fields = form(delivery.body)
        text = fields["Body"]
        sid = fields["MessageSid"]
        assert re.fullmatch(r"SM[0-9a-f]{32}", sid)
        sids.add(sid)
        assert fields == {
            "MessageSid": sid,
            "SmsSid": sid,
            "SmsMessageSid": sid,
            "AccountSid": DEFAULT_TWILIO_ACCOUNT_SID,
            "From": SENDER,
            "To": NUMBERS[held[text]],
            "Body": text,
            "NumMedia": "0",
            "NumSegments": str(TEXTS[text]),
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
        }
        assert re.fullmatch(r"msg_[0-9a-f]+", delivery.webhook_id)
        assert delivery.path == TWILIO_PATH.partition("?")[0]
    assert sorted(form(d.body)["Body"] for d in receiver.deliveries) == sorted(TEXTS)
    assert len(sids) == len(TEXTS)


async def test_twilio_retries_resend_the_same_signed_request(
    sim: Simulator, sqlite_url: str
) -> None:
    """A twilio webhook that fails twice gets the message three times, each with the same
    MessageSid and idempotency token and a valid signature; an account SID is sent as given;
    a token the relay does not hold verifies none of them."""
    sid = "AC" + "0123456789abcdef" * 2
    async with twilio_receiver() as receiver:
        receiver.respond(Rule(status=503, times=1))
        receiver.respond(Rule(status=0, reset=True, times=1))
        sim.inject(SENDER, NUMBERS[0], "retry me")
        config = relay_config(sim.url, "http://unused", sqlite_url, numbers=NUMBERS[:1])
        config = formatted(config, receiver.url + TWILIO_PATH, "twilio", twilio_account_sid=sid)
        async with Relay(config) as relay, running(relay):
            await receiver.wait_for(1, timeout=20)
        url = receiver.url + TWILIO_PATH
    assert [d.status for d in receiver.deliveries] == [503, 0, 204]
    assert all(d.verified for d in receiver.deliveries)
    assert len({d.body for d in receiver.deliveries}) == 1
    assert len({d.headers["x-twilio-signature"] for d in receiver.deliveries}) == 1
    assert len(receiver.unique_ids()) == 1
    assert form(receiver.deliveries[0].body)["AccountSid"] == sid
    stranger = RequestValidator("0" * 32)
    last = receiver.deliveries[-1]
    assert not stranger.validate(url, form(last.body), last.headers["x-twilio-signature"])


async def test_slack_gets_one_escaped_line_per_message(sim: Simulator, sqlite_url: str) -> None:
    """A slack webhook gets {"text": "SMS from X to Y: text"} with &, < and > escaped, no
    signature; a 500 is retried; Slack's "ok" is success; a reply-shaped answer sends no SMS."""
    text = "Is 5 < 6 & 7 > 3? <!channel> <https://evil.example|click> café"
    async with slack_receiver() as receiver:
        receiver.respond(Rule(status=500, body=b"internal_error", times=1))
        receiver.respond(Rule(status=200, body=b'{"reply": "no"}', times=1))
        sim.inject(SENDER, NUMBERS[0], text)
        config = relay_config(sim.url, "http://unused", sqlite_url, numbers=NUMBERS[:1])
        config = formatted(config, receiver.url + SLACK_PATH, "slack")
        async with Relay(config) as relay, running(relay):
            await receiver.wait_for(1, timeout=20)
        sim.inject(SENDER, NUMBERS[0], "second")
        receiver.respond(Rule(status=200, body=b"ok", headers=(("Content-Type", "text/html"),)))
        async with Relay(config) as relay:
            summary = await relay.poll_once()
    assert summary.counts["delivered"] == 2
    assert all(d.verified for d in receiver.deliveries)
    assert [d.status for d in receiver.deliveries] == [500, 200, 200]
    assert [d.path for d in receiver.deliveries] == [SLACK_PATH] * 3
    escaped = "Is 5 &lt; 6 &amp; 7 &gt; 3? &lt;!channel&gt; &lt;https://evil.example|click&gt; café"
    assert [json.loads(d.body) for d in receiver.deliveries[1:]] == [
        {"text": f"SMS from {SENDER} to {NUMBERS[0]}: {escaped}"},
        {"text": f"SMS from {SENDER} to {NUMBERS[0]}: second"},
    ]
    assert receiver.deliveries[0].body == receiver.deliveries[1].body
    assert sim.sent == []


async def test_slack_shows_outbound_events_as_lines(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A slack webhook subscribed to sms.sent and sms.failed gets "SMS sent from X to Y:
    text" when a reply goes out and "SMS from X to Y failed: error" when one fails."""
    receiver.respond(Rule(status=200, body=json.dumps({"reply": "Thanks & bye"}).encode()))
    async with slack_receiver() as chat:
        config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
        slack = webhook_config(
            chat.url + SLACK_PATH,
            name="chat",
            secret=b"",
            format="slack",
            events=frozenset((SMS_SENT, SMS_FAILED)),
        )
        number = NumberConfig(NUMBERS[0], ("hook", "chat"), config.numbers[0].interval)
        config = dataclasses.replace(config, webhooks=(*config.webhooks, slack), numbers=(number,))
        sim.inject(SENDER, NUMBERS[0], "first")
        async with Relay(config) as relay, running(relay):
            await chat.wait_for(1, timeout=20)
            sim.add_fault(Fault(status=400, count=1, path="/api/v2/sms/send"))
            sim.inject(SENDER, NUMBERS[0], "second")
            await chat.wait_for(2, timeout=20)
    lines = [json.loads(d.body)["text"] for d in chat.deliveries]
    assert lines[0] == f"SMS sent from {NUMBERS[0]} to {SENDER}: Thanks &amp; bye"
    assert lines[1].startswith(f"SMS from {NUMBERS[0]} to {SENDER} failed: ")
    assert len(lines) == 2
    assert [s.text for s in sim.sent] == ["Thanks & bye"]
