"""The processes of a run: the peers, the forwarders, and what /proc says of them.

Every subprocess gets the same environment: the repository root on PYTHONPATH (and
``--relay-path`` before it, to bench another checkout of ``relay``). With
``BENCH_PROFILE=cprofile`` each forwarder runs under cProfile and leaves a ``.prof``;
with ``BENCH_PROFILE=py-spy`` py-spy samples it and leaves collapsed stacks
(``.txt``, one per run, threads apart; ``$BENCH_PYSPY_ARGS`` adds options, such as
``--gil`` to see only what holds the GIL). Both go to ``$BENCH_PROFILE_DIR``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: How long a forwarder gets to stop after SIGTERM before SIGKILL.
STOP_TIMEOUT = 15.0
#: How long the peers get to print their addresses.
PEERS_START_TIMEOUT = 20.0
#: While waiting for READY=1, how often to look at whether the forwarder is still alive.
CHECK_ALIVE_EVERY = 0.5
#: How often to ask the peers which numbers have been polled.
FIRST_POLLS_CHECK_EVERY = 0.05


class BenchError(Exception):
    """A run could not be carried out."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of stat(5) (utime, stime); fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_bytes(pid: int, key: str = "VmRSS") -> int:
    """A memory figure of ``pid`` from /proc/<pid>/status (VmRSS, VmHWM...), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    msg = f"{key} not in /proc/{pid}/status"
    raise BenchError(msg)


@dataclass(frozen=True)
class Env:
    """Where subprocesses find their code, and where they leave logs and profiles."""

    workdir: Path
    relay_path: Path | None = None
    profile: str | None = None
    profile_dir: Path | None = None

    @property
    def cwd(self) -> Path:
        """Where subprocesses run: ``python -m`` puts it first on sys.path, so it is
        ``--relay-path`` when one is given (else the repository's ``relay`` is imported)."""
        return self.relay_path or ROOT

    def environ(self) -> dict[str, str]:
        """The environment of every subprocess."""
        paths = [str(self.relay_path)] if self.relay_path else []
        paths.append(str(ROOT))
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


class Peers:
    """``python -m bench.peers``: the simulator and the webhook sink, driven over HTTP."""

    def __init__(
        self, env: Env, *, listing_limit: int = 1000, rate_limit: float | None = None
    ) -> None:
        self.env = env
        log = env.workdir / f"peers-{time.monotonic_ns()}.log"
        self._log = log.open("w")
        command = [sys.executable, "-m", "bench.peers", "--listing-limit", str(listing_limit)]
        if rate_limit is not None:
            command += ["--rate-limit", str(rate_limit)]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=env.cwd,
            env=env.environ(),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            msg = f"the peers did not start: {_tail(log)}"
            raise BenchError(msg)
        hello: dict[str, str] = json.loads(line)
        self.api_url = hello["api"]
        self.hook_url = hello["hook"]
        self.token = hello["token"]
        self.secret = hello["secret"]
        self.client = httpx.Client(base_url=hello["control"], timeout=PEERS_START_TIMEOUT)

    def inject(self, numbers: list[str], count: int) -> None:
        """Hold ``count`` messages, round-robin over ``numbers``."""
        self._call("POST", "/_bench/inject", json={"numbers": numbers, "count": count})

    def traffic(self, numbers: list[str], rate: float, seconds: float) -> None:
        """Inject ``rate`` messages a second for ``seconds``, in the background."""
        body = {"numbers": numbers, "rate": rate, "seconds": seconds}
        self._call("POST", "/_bench/traffic", json=body)

    def stats(self) -> dict[str, Any]:
        """The sink's and the simulator's counters (see bench.peers)."""
        stats: dict[str, Any] = self._call("GET", "/_bench/stats")
        return stats

    def wait(self, unique: int, timeout: float) -> dict[str, Any]:
        """The stats once ``unique`` distinct messages arrived, or after ``timeout``."""
        params = {"unique": str(unique), "timeout": str(timeout)}
        stats: dict[str, Any] = self._call(
            "GET", "/_bench/wait", params=params, timeout=timeout + 10
        )
        return stats

    def latencies(self) -> tuple[int, list[float]]:
        """How many traffic messages were injected, and each delivered one's latency."""
        doc = self._call("GET", "/_bench/latencies")
        return int(doc["injected"]), [float(x) for x in doc["latencies"]]

    def converse(self, numbers: list[str], seconds: float, gaps: tuple[float, float]) -> None:
        """One conversation on each of ``numbers`` for ``seconds``, in the background."""
        body = {"numbers": numbers, "seconds": seconds, "min_gap": gaps[0],
                "max_gap": gaps[1], "start_within": gaps[1]}  # fmt: skip
        self._call("POST", "/_bench/conversations", json=body)

    def conversations(self) -> dict[str, Any]:
        """The conversation messages' latencies (see bench.peers)."""
        doc: dict[str, Any] = self._call("GET", "/_bench/conversations")
        return doc

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        """Stop the peers."""
        if hasattr(self, "client"):
            self.client.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> Peers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Forwarder:
    """One measured process: the relay (``python -m relay run``) or the bare forwarder."""

    def __init__(
        self,
        env: Env,
        kind: str,
        config: Path,
        label: str,
        *,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.label = label
        self.log_path = env.workdir / f"{label}.log"
        module = ["relay", "run"] if kind == "relay" else ["bench.bare"]
        command = [sys.executable, "-m", *module, "--config", str(config)]
        self._profile_out: Path | None = None
        if env.profile == "cprofile" and env.profile_dir is not None:
            self._profile_out = env.profile_dir / f"{label}.prof"
            command[1:1] = ["-m", "cProfile", "-o", str(self._profile_out)]
        self._log = self.log_path.open("w")
        #: :func:`time.monotonic` just before the exec.
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=env.cwd,
            env={**env.environ(), **(extra_env or {})},
        )
        self.pid = self.proc.pid
        self._spy: subprocess.Popen[bytes] | None = None
        if env.profile == "py-spy" and env.profile_dir is not None:
            spy = shutil.which("py-spy")
            if spy is None:
                msg = "BENCH_PROFILE=py-spy but py-spy is not on PATH"
                raise BenchError(msg)
            self._profile_out = env.profile_dir / f"{label}.txt"
            self._spy = subprocess.Popen(
                [spy, "record", "--pid", str(self.pid), "--format", "raw", "--threads",
                 "--rate", "250", "--output", str(self._profile_out),
                 *shlex.split(os.environ.get("BENCH_PYSPY_ARGS", ""))],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip

    def check(self) -> None:
        """Raise BenchError, with the end of its log, if the process has exited."""
        if self.proc.poll() is not None:
            msg = f"{self.label} exited with {self.proc.returncode}: {_tail(self.log_path)}"
            raise BenchError(msg)

    def cpu(self) -> float:
        """CPU seconds used so far."""
        self.check()
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        self.check()
        return memory_bytes(self.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._spy is not None:
            try:
                self._spy.wait(30)
            except subprocess.TimeoutExpired:
                self._spy.kill()
                self._spy.wait()
        self._log.close()
        if self._profile_out is not None:
            print(f"bench: profile of {self.label}: {self._profile_out}", file=sys.stderr)

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Notify:
    """A systemd notify socket of the bench's own: when a forwarder said READY=1.

    Pass :meth:`environ` to the forwarder; :meth:`wait_ready` returns the
    :func:`time.monotonic` at which READY=1 arrived.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(str(path))

    def environ(self) -> dict[str, str]:
        """``$NOTIFY_SOCKET`` pointing here."""
        return {"NOTIFY_SOCKET": str(self.path)}

    def wait_ready(self, forwarder: Forwarder, timeout: float) -> float:
        """When READY=1 arrived; BenchError if the forwarder exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                msg = f"{forwarder.label} did not send READY=1 within {timeout:g}s"
                raise BenchError(msg)
            self.sock.settimeout(min(left, CHECK_ALIVE_EVERY))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                forwarder.check()
                continue
            if b"READY=1" in data.split(b"\n"):
                return time.monotonic()

    def close(self) -> None:
        """Close and remove the socket."""
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Notify:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def first_polls(
    peers: Peers, forwarder: Forwarder, polled: list[str], timeout: float
) -> dict[str, float]:
    """When each of ``polled`` was first polled (:func:`time.monotonic`), waiting for all."""
    deadline = time.monotonic() + timeout
    while True:
        seen: dict[str, float] = peers.stats()["first_polls"]
        if all(number in seen for number in polled):
            return {number: seen[number] for number in polled}
        forwarder.check()
        if time.monotonic() > deadline:
            msg = f"{forwarder.label} polled {len(seen)} of {len(polled)} numbers in {timeout:g}s"
            raise BenchError(msg)
        time.sleep(FIRST_POLLS_CHECK_EVERY)


def wait_for_polls(
    peers: Peers, forwarders: list[Forwarder], receives: int, timeout: float
) -> dict[str, Any]:
    """Wait until the simulator served ``receives`` receive requests; the stats then."""
    deadline = time.monotonic() + timeout
    while True:
        stats = peers.stats()
        if stats["receives"] >= receives:
            return stats
        for forwarder in forwarders:
            forwarder.check()
        if time.monotonic() > deadline:
            msg = f"only {stats['receives']} of {receives} polls within {timeout:g}s"
            raise BenchError(msg)
        time.sleep(0.05)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
