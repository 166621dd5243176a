"""The command line: exit codes, one-line errors, and each verb against loopback peers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay import __version__
from relay.cli import main
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SECRET, SENDER, TOKEN, RelayProcess, cli, write_config

COMMANDS = ["run", "check", "poll-once", "simulate", "demo"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real ``aatrox-relay`` entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_version() -> None:
    """--version prints the package version."""
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"aatrox-relay {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command answers --help with its usage and exit 0."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"aatrox-relay {command}" in capsys.readouterr().out


BASE = f"""
[api]
token = "t"
[[webhooks]]
name = "h"
url = "http://127.0.0.1:9/"
secret = "{SECRET}"
"""


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[poll]\ninterval = "fast"\n', "poll.interval"),
        ("[store]\nretention = true\n", "store.retention"),
        ('[[numbers]]\nnumber = "hello"\n', "numbers[0].number"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, toml: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad config stops every command with exit 2 and one line naming the key, no traceback."""
    path = tmp_path / "bad.toml"
    path.write_text(BASE + toml, encoding="utf-8")
    for command in ("check", "run", "poll-once"):
        assert main([command, "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("aatrox-relay: error: ")
        assert key in err and "Traceback" not in err


def test_bad_config_in_a_real_process(tmp_path: Path) -> None:
    """The installed entry point prints one line and exits 2, without a traceback."""
    path = tmp_path / "bad.toml"
    path.write_text('[api]\ntoken = "t"\n[poll]\ninterval = "fast"\n', encoding="utf-8")
    result = run_cli("check", "--offline", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == 'aatrox-relay: error: poll.interval: "fast" is not a duration\n'


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config path that does not exist is named in a one-line error."""
    assert main(["check", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


@pytest.mark.anyio
async def test_check_online(peers: tuple[Simulator, WebhookReceiver], tmp_path: Path) -> None:
    """check tries the token and reaches the webhook; a wrong token fails with exit 2."""
    sim, receiver = peers
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    code, out, _err = await cli("check", "--config", str(config))
    assert code == 0, out
    assert "token accepted" in out and "webhook hook: reachable" in out
    sim.token = "rotated"
    code, out, _err = await cli("check", "--config", str(config))
    assert code == 2
    assert "FAILED api" in out and "401" in out and TOKEN not in out


@pytest.mark.anyio
async def test_poll_once(peers: tuple[Simulator, WebhookReceiver], tmp_path: Path) -> None:
    """poll-once polls every number, delivers what is due and exits 0."""
    sim, receiver = peers
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    sim.inject(SENDER, NUMBERS[0], "one")
    sim.inject(SENDER, NUMBERS[1], "two")
    code, out, err = await cli("poll-once", "--config", str(config))
    assert code == 0, err
    assert "1 listed, 1 new, 1 queued" in out
    assert "0 pending, 2 delivered, 0 dead" in out
    assert len(receiver.unique_ids()) == 2


@pytest.mark.anyio
async def test_run_stops_cleanly_on_sigterm(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """run delivers while it runs and exits 0 on SIGTERM."""
    sim, receiver = peers
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    relay = RelayProcess(config)
    await relay.start()
    sim.inject(SENDER, NUMBERS[0], "hello")
    await receiver.wait_for(1, timeout=20)
    assert await relay.terminate() == 0
    text = "\n".join(relay.lines)
    assert "relay.stopped" in text and "hello" not in text and TOKEN not in text


def test_demo_delivers_everything() -> None:
    """The newcomer's demo runs for a few seconds and exits 0 with every message delivered."""
    result = run_cli("demo", "--seconds", "4", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "delivered" in result.stdout and "latency" in result.stdout
    assert "missing" not in result.stdout
