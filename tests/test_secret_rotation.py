"""Rolling a webhook's secret: while ``secrets`` holds two, every attempt carries one
signature per secret, and a consumer holding either one verifies it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from relay import redact
from relay.config import load
from relay.daemon import Relay
from relay.errors import ConfigError
from relay.signing import decode_secret
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SECRET, SENDER, running, write_config

NEW = "whsec_" + base64.b64encode(b"the-new-secret-of-the-webhook!!").decode()
#: The receiver holds the old secret (tests.support.SECRET), so it verifies as before.
OLD = SECRET
OTHER = "whsec_" + base64.b64encode(b"a-secret-nobody-configured-1234").decode()
API = '[api]\ntoken = "t"\n'
#: The URL's path is registered as a secret too (it may hold a token), process-wide: a
#: path no other test's text contains.
HOOK = '[[webhooks]]\nname = "crm"\nurl = "https://hooks.example.com/rotation-hook"\n'


def rotating(path: Path, hook_url: str, api_url: str, store_url: str, secrets: str) -> Path:
    """A relay config whose one webhook takes its secrets from the TOML line ``secrets``."""
    config = write_config(path, api_url, hook_url, store_url, numbers=NUMBERS[:1])
    config.write_text(config.read_text().replace(f'secret = "{SECRET}"', secrets))
    return config


@pytest.mark.anyio
async def test_either_secret_verifies_every_delivery(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str, tmp_path: Path
) -> None:
    """Three messages through a webhook with two secrets: standardwebhooks holding only the
    new one, or only the old one, verifies each request; a third secret verifies none."""
    path = rotating(
        tmp_path / "relay.toml", receiver.url, sim.url, sqlite_url, f'secrets = ["{NEW}", "{OLD}"]'
    )
    config = load(path)
    assert config.webhooks[0].secrets == (decode_secret(NEW), decode_secret(OLD))
    for i in range(3):
        sim.inject(SENDER, NUMBERS[0], f"rotation {i}")
    async with Relay(config) as relay, running(relay):
        await receiver.wait_for(3, timeout=20)
    answered = [d for d in receiver.deliveries if d.verified and d.status < 300]
    assert len({d.webhook_id for d in answered}) == 3
    for d in answered:
        assert len(d.headers["webhook-signature"].split()) == 2
        for secret in (NEW, OLD):
            payload = StandardWebhook(secret).verify(d.body, d.headers)
            assert str(payload["data"]["text"]).startswith("rotation ")  # type: ignore[index]
        with pytest.raises(WebhookVerificationError):
            StandardWebhook(OTHER).verify(d.body, d.headers)


def test_secret_files_are_read_beside_the_config(tmp_path: Path) -> None:
    """secret_files paths are relative to the config's directory, in the order given."""
    (tmp_path / "new.secret").write_text(NEW + "\n")
    (tmp_path / "old.secret").write_text(OLD)
    path = tmp_path / "relay.toml"
    path.write_text(API + HOOK + 'secret_files = ["new.secret", "old.secret"]\n')
    hook = load(path, environ={}).webhooks[0]
    assert hook.secret == decode_secret(NEW)
    assert hook.secrets == (decode_secret(NEW), decode_secret(OLD))


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (f'secret = "{NEW}"\nsecrets = ["{OLD}"]\n', "webhooks[0].secret: set exactly one of"),
        ("secrets = []\n", "webhooks[0].secrets: must hold 1 to 3 secrets, got 0"),
        (f'secrets = ["{NEW}", "{OLD}", "{OTHER}", "{NEW}"]\n', "must hold 1 to 3 secrets, got 4"),
        (f'secrets = ["{NEW}", "{NEW}"]\n', "webhooks[0].secrets[1]: is the same secret as"),
        (f'secrets = ["{NEW}", "whsec_%%%"]\n', "webhooks[0].secrets[1]: is not whsec_"),
        (f'secrets = "{NEW}"\n', "webhooks[0].secrets: expected an array of strings"),
        ('secret_files = ["missing"]\n', "webhooks[0].secret_files[0]: cannot read"),
        ('secret_files = [""]\n', "webhooks[0].secret_files[0]: is empty"),
    ],
    ids=["both", "none", "four", "twice", "malformed", "not-a-list", "missing-file", "empty"],
)
def test_bad_secrets_name_their_key(tmp_path: Path, lines: str, error: str) -> None:
    """Each mistake in secrets or secret_files is one line naming the key, never a secret."""
    path = tmp_path / "relay.toml"
    path.write_text(API + HOOK + lines)
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    message = str(caught.value)
    assert error in message
    for secret in (NEW, OLD, OTHER):
        assert secret not in message


def test_every_secret_is_redacted(tmp_path: Path) -> None:
    """Both secrets of a rotation are registered: neither reaches a log line or Sentry."""
    path = tmp_path / "relay.toml"
    path.write_text(API + HOOK + f'secrets = ["{NEW}", "{OTHER}"]\n')
    redact.register(load(path, environ={}))
    shown = redact.text(f"oops {NEW} and {OTHER}")
    assert NEW not in shown
    assert OTHER not in shown
