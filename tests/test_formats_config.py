"""Webhook formats in the config, and the parts that need no network: every mistake is one
line naming its key, secrets stay out of errors and logs, nothing signs with no key,
segments are counted as Twilio counts them, Slack lines are escaped."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator

from relay import redact, signing, slack, twilio
from relay.config import (
    DEFAULT_TWILIO_ACCOUNT_SID,
    FORMAT_SLACK,
    FORMAT_STANDARD,
    FORMAT_TWILIO,
    SMS_FAILED,
    SMS_SENT,
    WebhookConfig,
    load,
)
from relay.errors import ConfigError
from relay.store import DueDelivery
from relay.testing.clock import FakeClock
from relay.webhook import Answer, Webhook
from tests.support import KEY, SECRET, webhook_config

#: A token and a Slack URL key in no other test's text (registered process-wide).
TOKEN = "c0ffee11c0ffee22c0ffee33c0ffee44"
SLACK_KEY = "slackcfgtestkey0123456789"
SLACK_URL = f"https://hooks.slack.com/services/T0CFG/B0CFG/{SLACK_KEY}"
API = '[api]\ntoken = "t"\n[[numbers]]\nnumber = "+61400000001"\n'
URL = "https://app.example.com/formats-cfg-hook"
HOOK = f'[[webhooks]]\nname = "app"\nurl = "{URL}"\n'
TWILIO = HOOK + f'format = "twilio"\ntwilio_auth_token = "{TOKEN}"\n'
SID = "AC" + "0123456789abcdef" * 2
NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)


def loaded(tmp_path: Path, hook: str) -> WebhookConfig:
    """The one webhook of a config holding ``hook``."""
    path = tmp_path / "relay.toml"
    path.write_text(API + hook, encoding="utf-8")
    return load(path, environ={}).webhooks[0]


def test_formats_are_read_with_their_keys(tmp_path: Path) -> None:
    """No format is standard (its secret as before); twilio takes its token inline or
    from a file beside the config, and an account SID; slack takes neither."""
    standard = WebhookConfig("app", URL, KEY)
    assert loaded(tmp_path, HOOK + f'secret = "{SECRET}"\n') == standard
    assert loaded(tmp_path, HOOK + f'format = "Standard"\nsecret = "{SECRET}"\n') == standard
    hook = loaded(tmp_path, TWILIO)
    assert (hook.format, hook.twilio_auth_token, hook.secret, hook.secrets) == (
        FORMAT_TWILIO,
        TOKEN,
        b"",
        (),
    )
    assert hook.twilio_account_sid == DEFAULT_TWILIO_ACCOUNT_SID
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text(f"  {TOKEN}\n")
    from_file = HOOK + 'format = "twilio"\ntwilio_auth_token_file = "secrets/token"\n'
    hook = loaded(tmp_path, from_file + f'twilio_account_sid = "{SID}"\n')
    assert (hook.twilio_auth_token, hook.twilio_account_sid) == (TOKEN, SID)
    hook = loaded(tmp_path, f'[[webhooks]]\nname = "chat"\nurl = "{SLACK_URL}"\nformat = "slack"\n')
    assert (hook.format, hook.secrets, hook.twilio_auth_token) == (FORMAT_SLACK, (), "")
    assert FORMAT_STANDARD == "standard"


@pytest.mark.parametrize(
    ("hook", "error"),
    [
        (
            HOOK + 'format = "json"\n',
            'webhooks[0].format: "json" is not one of standard, twilio, slack',
        ),
        (HOOK + "format = 1\n", "webhooks[0].format: expected a string, got integer"),
        (HOOK, "webhooks[0].secret: set exactly one of"),
        (
            HOOK + 'format = "twilio"\n',
            'webhooks[0].twilio_auth_token: required with format = "twilio"',
        ),
        (
            TWILIO + f'secret = "{SECRET}"\n',
            'webhooks[0].secret: is not used with format = "twilio" (twilio_auth_token signs it)',
        ),
        (TWILIO + 'secret_files = ["a"]\n', "webhooks[0].secret_files: is not used with format"),
        (
            TWILIO + 'twilio_auth_token_file = "t"\n',
            "webhooks[0].twilio_auth_token: set exactly one of webhooks[0].twilio_auth_token, "
            "webhooks[0].twilio_auth_token_file",
        ),
        (
            HOOK + 'format = "twilio"\ntwilio_auth_token_file = "missing-token"\n',
            "webhooks[0].twilio_auth_token_file: cannot read",
        ),
        (
            HOOK + 'format = "twilio"\ntwilio_auth_token = " "\n',
            "webhooks[0].twilio_auth_token: is empty",
        ),
        (
            HOOK + 'format = "twilio"\ntwilio_auth_token = "short-tok"\n',
            "webhooks[0].twilio_auth_token: is not a Twilio auth token",
        ),
        (
            TWILIO + 'twilio_account_sid = "AC123"\n',
            'webhooks[0].twilio_account_sid: "AC123" is not AC followed by 32 hex digits',
        ),
        (
            TWILIO + 'events = ["sms.received", "sms.sent"]\n',
            'webhooks[0].events[1]: "sms.sent": format = "twilio" takes only "sms.received"',
        ),
        (
            HOOK + f'format = "slack"\nsecret = "{SECRET}"\n',
            'webhooks[0].secret: is not used with format = "slack" (it is unsigned)',
        ),
        (
            HOOK + f'format = "slack"\ntwilio_auth_token = "{TOKEN}"\n',
            'webhooks[0].twilio_auth_token: is only used with format = "twilio"',
        ),
        (
            HOOK + f'secret = "{SECRET}"\ntwilio_account_sid = "{SID}"\n',
            'webhooks[0].twilio_account_sid: is only used with format = "twilio"',
        ),
        (
            TWILIO + 'headers = { "X-Twilio-Signature" = "forged" }\n',
            "webhooks[0].headers.X-Twilio-Signature: is reserved",
        ),
    ],
)
def test_a_format_mistake_is_one_line_naming_its_key(tmp_path: Path, hook: str, error: str) -> None:
    """Each mistake is one line naming the key; the token is never shown."""
    with pytest.raises(ConfigError) as raised:
        loaded(tmp_path, hook)
    message = str(raised.value)
    assert message.startswith(error)
    assert "\n" not in message
    assert TOKEN not in message
    assert "short-tok" not in message


def due(text: str = "hi", event: str = "sms.received", data: str | None = None) -> DueDelivery:
    """A due delivery of ``text`` from SENDER to the number (or of an outbound event)."""
    return DueDelivery(
        1, "app", "msg_0123", 0, NOW, "+61400000001", "p-1", "+61412345678",
        "+61400000001", text, NOW, event=event, data=data,
    )  # fmt: skip


def test_nothing_signs_with_an_empty_key() -> None:
    """A webhook with no secret signs nothing: the signers refuse an empty key, and a
    twilio or slack webhook sends no Standard Webhooks headers."""
    with pytest.raises(ValueError, match="empty key"):
        signing.headers(b"", "msg_1", 1, b"{}")
    with pytest.raises(ValueError, match="empty Twilio auth token"):
        twilio.signature("", "https://x/", {"a": "b"})
    for fmt, fields in ((FORMAT_TWILIO, {"twilio_auth_token": TOKEN}), (FORMAT_SLACK, {})):
        hook = Webhook(
            webhook_config("https://x/in", secret=b"", format=fmt, **fields), FakeClock()
        )
        body, headers = hook.request(due())
        assert not any(name.lower().startswith("webhook-") for name in headers)
    body, headers = Webhook(webhook_config("https://x/in"), FakeClock()).request(due())
    signing.verify(
        KEY, {k.lower(): v for k, v in headers.items()}, body, FakeClock().now().timestamp()
    )


def test_the_twilio_signature_covers_the_url_as_the_app_sees_it() -> None:
    """The URL signed: an empty path is "/", credentials are left out, the query kept."""
    assert twilio.signed_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/"
    assert (
        twilio.signed_url("https://u:p@app.example.com/in?a=1") == "https://app.example.com/in?a=1"
    )
    # Twilio's documented example: https://www.twilio.com/docs/usage/security
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}  # fmt: skip
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio.signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert RequestValidator("12345").validate(url, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 1), ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3),
        ("é@£¥ÄÖÑÜ§¿äöñüà" * 10, 1), ("{}" * 40, 1), ("{}" * 40 + "a", 2),
        ("€" * 76 + "a", 1), ("a" * 152 + "€" + "a" * 10, 2), ("a" * 152 + "€" + "a" * 152, 3),
        ("a" * 69 + "ç", 1), ("ç" * 70, 1), ("ç" * 71, 2), ("ç" * 134, 2), ("ç" * 135, 3),
        ("😀" * 35, 1), ("😀" * 36, 2), ("a" * 66 + "😀" * 2, 1), ("a" * 66 + "😀" + "a" * 66, 3),
    ],
)  # fmt: skip
def test_segments_are_counted_as_twilio_counts_them(text: str, count: int) -> None:
    """GSM-7 160, then 153 a part, an extension character two septets never split; any
    other character makes it UCS-2: 70, then 67 a part, an emoji never split."""
    assert twilio.segments(text) == count


def test_slack_lines_are_escaped_for_every_event() -> None:
    """Inbound and outbound events read as one line, with only &, < and > escaped."""
    assert (
        slack.body(due('<@U1> & "quotes" é'))
        == (
            '{"text":"SMS from +61412345678 to +61400000001: &lt;@U1&gt; &amp; \\"quotes\\" é"}'
        ).encode()
    )
    sent = '{"from": "+61400000001", "to": ["+61412345678", "+61412345679"], "text": "a<b"}'
    assert slack.line(due("", SMS_SENT, sent)) == (
        "SMS sent from +61400000001 to +61412345678, +61412345679: a<b"
    )
    failed = '{"from": "+61400000001", "to": ["+61412345678"], "text": "x", "error": "HTTP 400"}'
    assert slack.line(due("", SMS_FAILED, failed)) == (
        "SMS from +61400000001 to +61412345678 failed: HTTP 400"
    )


def test_no_reply_is_read_from_a_slack_answer() -> None:
    """A slack webhook's 2xx body never asks for an SMS, whatever it holds."""
    hook = Webhook(webhook_config(SLACK_URL, secret=b"", format=FORMAT_SLACK), FakeClock())
    assert hook.reply_texts(Answer(True, 200, body=b'{"reply": "x"}'), "msg_1") == ()


def test_the_twilio_token_and_the_slack_url_never_reach_a_log(tmp_path: Path) -> None:
    """Registered for redaction: the Twilio auth token, and a Slack URL's path (its key)."""
    path = tmp_path / "relay.toml"
    path.write_text(
        API + TWILIO + f'[[webhooks]]\nname = "chat"\nurl = "{SLACK_URL}"\nformat = "slack"\n'
    )
    redact.register(load(path, environ={}))
    shown = redact.text(f"token {TOKEN} posting to {SLACK_URL} failed; key {SLACK_KEY}")
    assert TOKEN not in shown
    assert SLACK_KEY not in shown
    assert "webhook:chat" in shown


@pytest.mark.anyio
async def test_an_outbound_event_queued_for_a_twilio_webhook_is_dead_unsent() -> None:
    """An sms.sent queued while a webhook had another format is not sent as a twilio
    form of blanks: the attempt is final (dead, for a replay), and nothing is posted."""
    config = webhook_config("http://127.0.0.1:9/in", secret=b"", format=FORMAT_TWILIO)
    hook = Webhook(dataclasses.replace(config, twilio_auth_token=TOKEN), FakeClock())
    try:
        answer = await hook.send(due("", SMS_SENT, '{"from": "+61400000001"}'))
    finally:
        await hook.aclose()
    assert (answer.ok, answer.final, answer.status) == (False, True, None)
    assert answer.error == 'format = "twilio" takes only sms.received, not sms.sent'
