"""The sd_notify protocol over real AF_UNIX datagram sockets, and the unit file itself."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from relay.systemd import Notifier, notify, watchdog_period

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "aatrox-relay.service"
EXEC_START = "/opt/aatrox-relay/bin/aatrox-relay"
#: The exposure ``systemd-analyze security`` may rate the unit at, at most.
MAX_EXPOSURE = 2.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")


class Listener:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.environ = {"NOTIFY_SOCKET": env_value}

    def receive(self) -> str:
        """The next datagram, decoded; fails the test after a second without one."""
        return self.sock.recv(65536).decode()

    def drain(self) -> list[str]:
        """Every datagram already waiting, without blocking."""
        received = []
        self.sock.setblocking(False)
        try:
            while True:
                received.append(self.sock.recv(65536).decode())
        except BlockingIOError:
            return received
        finally:
            self.sock.settimeout(1.0)

    def nothing_more(self) -> bool:
        """Whether no further datagram is waiting."""
        return self.drain() == []


def _bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(1.0)
    return sock


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    """A notify socket bound at a path in tmp_path."""
    path = tmp_path / "notify.sock"
    with _bound(str(path)) as sock:
        yield Listener(sock, str(path))


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    """A notify socket in the abstract namespace (``$NOTIFY_SOCKET`` starts with ``@``)."""
    name = f"aatrox-relay-test-{uuid.uuid4().hex}"
    with _bound("\0" + name) as sock:
        yield Listener(sock, "@" + name)


def test_notify_sends_one_datagram_to_a_path_socket(listener: Listener) -> None:
    """notify() delivers its message, as one datagram, to the socket at $NOTIFY_SOCKET."""
    assert notify("READY=1\nSTATUS=polling 2 numbers", environ=listener.environ) is True
    assert listener.receive() == "READY=1\nSTATUS=polling 2 numbers"
    assert listener.nothing_more()


def test_notify_reaches_the_abstract_namespace(abstract_listener: Listener) -> None:
    """A $NOTIFY_SOCKET starting with @ names a socket in the abstract namespace."""
    assert notify("WATCHDOG=1", environ=abstract_listener.environ) is True
    assert abstract_listener.receive() == "WATCHDOG=1"


def test_notify_without_socket_is_a_no_op() -> None:
    """Outside systemd (no $NOTIFY_SOCKET) notify() sends nothing and returns False."""
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_notify_to_a_missing_socket_raises(tmp_path: Path) -> None:
    """A $NOTIFY_SOCKET nobody listens on is an OSError, not a silent success."""
    with pytest.raises(OSError):
        notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})


def test_notify_refuses_non_unix_addresses() -> None:
    """A $NOTIFY_SOCKET that is neither a path nor @name is refused with an OSError."""
    with pytest.raises(OSError, match="not an AF_UNIX socket path"):
        notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"})


def test_watchdog_period_is_half_of_watchdog_usec() -> None:
    """WATCHDOG_USEC=30000000 means a ping every 15 seconds."""
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0


def test_watchdog_period_is_none_without_a_watchdog_for_us() -> None:
    """No, zero or malformed WATCHDOG_USEC, or a WATCHDOG_PID of another process: None."""
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "soon"}) is None
    other = str(os.getpid() + 1)
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}) is None


def test_notifier_sends_the_lifecycle(listener: Listener) -> None:
    """ready, status, reloading, watchdog and stopping each send exactly their datagram."""
    env = {**listener.environ, "WATCHDOG_USEC": "2000000"}
    notifier = Notifier(env, monotonic_usec=lambda: 123456789)
    assert notifier.enabled
    assert notifier.watchdog_period == 1.0
    assert notifier.ready("polling 12 numbers, 0 pending")
    assert notifier.status("polling 12 numbers,\n3 pending")
    assert notifier.reloading()
    assert notifier.watchdog()
    assert notifier.stopping()
    assert [listener.receive() for _ in range(5)] == [
        "READY=1\nSTATUS=polling 12 numbers, 0 pending",
        "STATUS=polling 12 numbers, 3 pending",
        "RELOADING=1\nMONOTONIC_USEC=123456789",
        "WATCHDOG=1",
        "STOPPING=1",
    ]
    assert listener.nothing_more()


def test_reloading_carries_clock_monotonic_microseconds(listener: Listener) -> None:
    """By default MONOTONIC_USEC is CLOCK_MONOTONIC now, in microseconds."""
    before = time.monotonic_ns() // 1000
    Notifier(listener.environ).reloading()
    after = time.monotonic_ns() // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", listener.receive())
    assert match is not None
    assert before <= int(match[1]) <= after


def test_notifier_without_watchdog_sends_no_pings(listener: Listener) -> None:
    """Without WATCHDOG_USEC, watchdog() sends nothing."""
    notifier = Notifier(listener.environ)
    assert notifier.watchdog_period is None
    assert notifier.watchdog() is False
    assert listener.nothing_more()


def test_notifier_outside_systemd_is_a_no_op() -> None:
    """Without $NOTIFY_SOCKET every Notifier call returns False and nothing fails."""
    notifier = Notifier({"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    assert notifier.watchdog_period is None
    calls = [notifier.ready("x"), notifier.status("x"), notifier.reloading()]
    calls += [notifier.watchdog(), notifier.stopping()]
    assert calls == [False] * 5


def test_notifier_survives_an_unreachable_socket(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A notify socket that went away is logged once and reported as False, never raised."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False
    assert notifier.status("still here") is False
    failures = [r for r in caplog.records if r.getMessage() == "relay.systemd.notify_failed"]
    assert len(failures) == 1


@pytest.mark.anyio
async def test_run_watchdog_pings_only_while_healthy(listener: Listener) -> None:
    """run_watchdog pings every period while healthy() holds, and stops pinging when not."""
    notifier = Notifier({**listener.environ, "WATCHDOG_USEC": "100000"})  # a ping every 50 ms
    healthy = True
    with anyio.move_on_after(0.22):
        await notifier.run_watchdog(lambda: healthy)
    pings = listener.drain()
    assert len(pings) >= 2
    assert set(pings) == {"WATCHDOG=1"}
    healthy = False
    with anyio.move_on_after(0.15):
        await notifier.run_watchdog(lambda: healthy)
    assert listener.nothing_more()


@pytest.mark.anyio
async def test_run_watchdog_returns_without_a_watchdog() -> None:
    """Without WATCHDOG_USEC, run_watchdog returns at once instead of looping."""
    with anyio.fail_after(1):
        await Notifier({"NOTIFY_SOCKET": "/nonexistent"}).run_watchdog(lambda: True)


# --- the unit file ------------------------------------------------------------------------


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_declares_what_the_relay_relies_on() -> None:
    """The unit is Type=notify with a watchdog, reloads with SIGHUP and has its directories."""
    s = _unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == [f"{EXEC_START} run --config /etc/aatrox-relay/config.toml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert "WatchdogSec" in s
    assert s["DynamicUser"] == ["yes"]
    assert s["StateDirectory"] == ["aatrox-relay"]
    assert s["ConfigurationDirectory"] == ["aatrox-relay"]
    assert s["LoadCredential"] == ["aatrox-token:/etc/aatrox-relay/token"]
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]


@needs_analyze
def test_unit_verifies_with_a_real_executable(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing wrong once ExecStart names an existing program."""
    text = UNIT.read_text()
    assert EXEC_START in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(EXEC_START, sys.executable))
    result = _analyze("verify", str(copy))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_analyze
def test_unit_verify_complains_only_of_the_uninstalled_executable() -> None:
    """Verifying the unit as shipped reports nothing but a missing ExecStart program."""
    result = _analyze("verify", str(UNIT))
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    if Path(EXEC_START).exists():
        assert result.returncode == 0, result.stderr
        assert complaints == []
        return
    assert complaints, "verify should notice the missing executable"
    for line in complaints:
        assert f"Command {EXEC_START} is not executable" in line, result.stderr


@needs_analyze
def test_unit_security_exposure_is_low() -> None:
    """systemd-analyze security --offline rates the unit's exposure 2.0 or lower."""
    result = _analyze("security", "--offline=true", "--no-pager", str(UNIT))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout
