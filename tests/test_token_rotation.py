"""Rotating the API token the way the README tells operators to, with and without systemd."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import pytest

from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, TOKEN, RelayProcess, time_limit, write_config

pytestmark = pytest.mark.anyio

ROTATED = "rotated-token-8c41"


def _config(tmp_path: Path, sim: Simulator, receiver: WebhookReceiver, api: str) -> Path:
    """A config whose [api] names no inline token, but ``api`` instead."""
    path = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    path.write_text(path.read_text().replace(f'token = "{TOKEN}"', api))
    return path


async def _delivered(receiver: WebhookReceiver, text: str, timeout: float = 10.0) -> None:
    async with time_limit(timeout):
        while not any(d.payload["data"]["text"] == text for d in receiver.deliveries):  # type: ignore[index]
            await asyncio.sleep(0.05)


async def test_systemd_credential_rotation_takes_a_restart(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Under systemd the token is a credential copied at start: after writing the new one
    to its source, a reload does not bring it (the relay says so once, naming the fix),
    and a restart does; nothing received meanwhile is lost."""
    source = tmp_path / "etc-token"
    source.write_text(TOKEN + "\n")
    credentials = tmp_path / "credentials"

    def load_credential() -> None:  # what LoadCredential= does at each service start
        credentials.mkdir(exist_ok=True)
        shutil.copyfile(source, credentials / "aatrox-token")

    config = _config(tmp_path, sim, receiver, "")
    env = {"CREDENTIALS_DIRECTORY": str(credentials), "AATROX_TOKEN": ""}
    load_credential()
    relay = RelayProcess(config, env=env)
    await relay.start()
    sim.inject(SENDER, NUMBERS[0], "before")
    await _delivered(receiver, "before")
    source.write_text(ROTATED + "\n")  # the operator rotates the token...
    sim.token = ROTATED
    relay.signal(signal.SIGHUP)  # ...and reloads, which is not enough
    sim.inject(SENDER, NUMBERS[0], "during")
    line = await relay.wait_for_line("relay.token.unchanged")
    assert "systemctl restart" in line
    assert ROTATED not in "\n".join(relay.lines) and TOKEN not in "\n".join(relay.lines)
    assert await relay.terminate() == 0
    load_credential()  # systemctl restart
    await relay.start()
    await _delivered(receiver, "during")
    assert await relay.terminate() == 0
    assert sum(1 for line in relay.lines if "relay.token.unchanged" in line) == 1


async def test_token_file_rotation_needs_nothing_more(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """With api.token_file, writing the new token there is the whole rotation: the relay
    reads it again after the first 401 and goes on."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = _config(tmp_path, sim, receiver, f'token_file = "{token_file}"')
    relay = RelayProcess(config)
    await relay.start()
    token_file.write_text(ROTATED + "\n")
    sim.token = ROTATED
    sim.inject(SENDER, NUMBERS[0], "after rotation")
    await _delivered(receiver, "after rotation")
    await relay.wait_for_line("relay.token.reloaded")
    assert await relay.terminate() == 0
    assert not any("relay.token.unchanged" in line for line in relay.lines)
