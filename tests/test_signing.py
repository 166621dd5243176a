"""Our signatures are what the public standardwebhooks library accepts."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from relay import signing
from relay.errors import SignatureError

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789").decode()


def test_standardwebhooks_verifies_our_signature() -> None:
    """A body signed by the relay verifies with the reference implementation."""
    key = signing.decode_secret(SECRET)
    body = '{"type":"sms.received","data":{"text":"héllo 👋"}}'.encode()
    headers = signing.headers(key, "msg_abc", int(time.time()), body)
    payload = StandardWebhook(SECRET).verify(body, headers)
    assert payload["data"]["text"] == "héllo 👋"


def test_standardwebhooks_rejects_a_tampered_body() -> None:
    """Changing one byte of the body breaks the signature."""
    key = signing.decode_secret(SECRET)
    headers = signing.headers(key, "msg_abc", int(time.time()), b'{"a":1}')
    with pytest.raises(Exception, match=r"(?i)signature"):
        StandardWebhook(SECRET).verify(b'{"a":2}', headers)


def test_our_verify_matches() -> None:
    """relay.signing.verify accepts our signature and rejects another key's."""
    key = signing.decode_secret(SECRET)
    now = int(time.time())
    headers = signing.headers(key, "msg_1", now, b"{}")
    signing.verify(key, headers, b"{}", now)
    with pytest.raises(SignatureError):
        signing.verify(b"x" * 16, headers, b"{}", now)
    with pytest.raises(SignatureError):
        signing.verify(key, headers, b"{}", now + 3600)


@pytest.mark.parametrize("bad", ["whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()])
def test_bad_secrets_are_refused(bad: str) -> None:
    """Malformed or too-short secrets raise ValueError with a reason."""
    with pytest.raises(ValueError, match=r"base64|shorter"):
        signing.decode_secret(bad)
