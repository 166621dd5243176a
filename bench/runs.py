"""The runs: one forwarder (or several) against fresh peers, measured.

Every run starts a fresh peers process, so the simulator's first receive request is
that run's forwarder's first poll. Rates run from that first poll to the first arrival
of the last message; CPU and memory are those of the forwarder's process only.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

from bench.procs import Env, Forwarder, Notify, Peers, first_polls, memory_bytes, wait_for_polls
from bench.stores import numbers, write_config

KINDS = ("relay", "bare")
LISTING_LIMIT = 1000
BURST_INTERVAL = 1.0
IDLE_NUMBERS = 1000
IDLE_INTERVAL = 5.0
#: Fewer idle polls than this many numbers give too few CPU clock ticks to compare.
IDLE_LEAST = 100
LATENCY_RATE = 50.0
LATENCY_NUMBERS = 50
LATENCY_INTERVAL = 1.0
STARTUP_NUMBERS = 3
STARTUP_INTERVAL = 0.5
#: The default poll.jitter: start-up is measured as a user runs the relay.
STARTUP_JITTER = 1.0
#: How long a forwarder may take from its start to its first poll.
STARTUP_TIMEOUT = 60.0
#: How often a long wait looks at whether the forwarders are still alive.
CHECK_EVERY = 2.0


@dataclass(frozen=True)
class Settings:
    """How big, how long, and where."""

    scale: float
    seconds: float
    env: Env
    postgres_url: str
    #: Burst-like runs (burst, big store, scale-out) are repeated, interleaved; best kept.
    repeat: int = 2

    def size(self, full: int, least: int) -> int:
        """``full`` scaled down, but at least ``least``."""
        return max(least, round(full * self.scale))


@dataclass(frozen=True)
class Burst:
    """One burst run: ``messages`` held by the simulator before the forwarder starts."""

    messages: int
    delivered: int
    elapsed: float
    cpu: float
    duplicates: int

    @property
    def rate(self) -> float:
        """Distinct messages delivered per second, first poll to last first arrival."""
        return self.delivered / self.elapsed if self.elapsed > 0 else 0.0

    def describe(self) -> str:
        """One line of details."""
        text = (
            f"{self.delivered:,} of {self.messages:,} delivered in {self.elapsed:.2f}s, "
            f"{self.cpu / max(self.delivered, 1) * 1000:.2f} ms CPU per message"
        )
        return text + (f", {self.duplicates:,} duplicate deliveries" if self.duplicates else "")


@dataclass(frozen=True)
class Idle:
    """One idle run."""

    numbers: int
    asked: float
    rate: float
    cpu_per_poll: float
    rss: int
    peak_rss: int


@dataclass(frozen=True)
class Startup:
    """One start: seconds from the exec to READY=1 and to each number's first poll."""

    #: None for the bare forwarder, which does not speak systemd's notify protocol.
    ready: float | None
    polls: tuple[float, ...]

    @property
    def all_polled(self) -> float:
        """Exec to the last number's first poll."""
        return max(self.polls)

    @property
    def after_ready(self) -> float:
        """READY=1 to the last number's first poll."""
        return self.all_polled - (self.ready or 0.0)


def percentile(latencies: list[float], expected: int, q: float) -> float:
    """The q-quantile of ``latencies`` of ``expected`` messages; those undelivered (the
    ones ``latencies`` lacks) count as infinite."""
    if not expected:
        return math.inf
    ordered = sorted(latencies) + [math.inf] * (expected - len(latencies))
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class Latency:
    """One steady-traffic run."""

    injected: int
    latencies: list[float]
    cpu: float

    def percentile(self, q: float) -> float:
        """The q-quantile of message-to-webhook times; undelivered messages count as infinite."""
        return percentile(self.latencies, self.injected, q)


def run_burst(
    settings: Settings,
    label: str,
    kind: str,
    polled: list[str],
    messages: int,
    store_url: str,
    *,
    processes: int = 1,
) -> Burst:
    """Hold ``messages`` on ``polled``, start the forwarder(s), time until all are delivered."""
    env = settings.env
    with Peers(env, listing_limit=LISTING_LIMIT) as peers:
        peers.inject(polled, messages)
        config = write_config(
            env.workdir / f"{label}.toml", peers, store_url, polled, interval=BURST_INTERVAL
        )
        names = [label] if processes == 1 else [f"{label}-{i + 1}" for i in range(processes)]
        forwarders = [Forwarder(env, kind, config, name) for name in names]
        try:
            wait_for_polls(peers, forwarders, 1, STARTUP_TIMEOUT)
            stats = _wait_delivered(peers, forwarders, messages, 30 + messages / 50)
            cpu = sum(f.cpu() for f in forwarders)
        finally:
            for forwarder in forwarders:
                forwarder.stop()
    end = stats["last_new"] if stats["unique"] >= messages else stats["now"]
    return Burst(
        messages,
        int(stats["unique"]),
        float(end - stats["first_receive"]),
        cpu,
        int(stats["duplicates"]),
    )


def _wait_delivered(
    peers: Peers, forwarders: list[Forwarder], unique: int, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        stats = peers.wait(unique, max(0.0, min(CHECK_EVERY, left)))
        if stats["unique"] >= unique or left <= 0:
            return stats
        for forwarder in forwarders:
            forwarder.check()


def run_idle(settings: Settings) -> dict[str, Idle]:
    """Poll many numbers holding nothing, relay and bare side by side; by kind.

    Each has peers of its own. Side by side, both see the same machine in the same
    window (other load on it included); at a fraction of a core each they do not
    contend. Measured for --seconds after one interval, when every number has had
    its first poll.
    """
    env = settings.env
    count = settings.size(IDLE_NUMBERS, IDLE_LEAST)
    with contextlib.ExitStack() as stack:
        runs: dict[str, tuple[Peers, Forwarder]] = {}
        for kind in KINDS:
            peers = stack.enter_context(Peers(env, listing_limit=LISTING_LIMIT))
            store = f"sqlite:///{env.workdir / f'idle-{kind}.db'}"
            config = write_config(
                env.workdir / f"idle-{kind}.toml",
                peers,
                store,
                numbers(count),
                interval=IDLE_INTERVAL,
            )
            runs[kind] = (peers, stack.enter_context(Forwarder(env, kind, config, f"idle-{kind}")))
        for peers, forwarder in runs.values():
            wait_for_polls(peers, [forwarder], 1, STARTUP_TIMEOUT)
        time.sleep(IDLE_INTERVAL + 0.5)
        before = {kind: (peers.stats(), fw.cpu()) for kind, (peers, fw) in runs.items()}
        time.sleep(settings.seconds)
        after = {kind: (peers.stats(), fw.cpu()) for kind, (peers, fw) in runs.items()}
        results: dict[str, Idle] = {}
        for kind, (_peers, forwarder) in runs.items():
            (stats0, cpu0), (stats1, cpu1) = before[kind], after[kind]
            polls = stats1["receives"] - stats0["receives"]
            results[kind] = Idle(
                count,
                count / IDLE_INTERVAL,
                polls / (stats1["now"] - stats0["now"]),
                (cpu1 - cpu0) / max(polls, 1),
                forwarder.rss(),
                memory_bytes(forwarder.pid, "VmHWM"),
            )
    return results


def run_latency(settings: Settings, kind: str) -> Latency:
    """Steady traffic for --seconds once every number has been polled once."""
    env = settings.env
    polled = numbers(LATENCY_NUMBERS)
    total = round(LATENCY_RATE * settings.seconds)
    with Peers(env, listing_limit=LISTING_LIMIT) as peers:
        store = f"sqlite:///{env.workdir / f'latency-{kind}.db'}"
        config = write_config(
            env.workdir / f"latency-{kind}.toml", peers, store, polled, interval=LATENCY_INTERVAL
        )
        with Forwarder(env, kind, config, f"latency-{kind}") as forwarder:
            wait_for_polls(peers, [forwarder], len(polled), STARTUP_TIMEOUT)
            cpu_before = forwarder.cpu()
            peers.traffic(polled, LATENCY_RATE, settings.seconds)
            _wait_delivered(peers, [forwarder], total, settings.seconds + 3 * LATENCY_INTERVAL + 5)
            cpu = forwarder.cpu() - cpu_before
        injected, latencies = peers.latencies()
    return Latency(injected, latencies, cpu)


def run_startup(settings: Settings, label: str, kind: str, store_url: str) -> Startup:
    """Start a forwarder polling STARTUP_NUMBERS numbers; time its READY=1 and first polls.

    The clock starts just before the exec; READY=1 is when the bench's own
    ``$NOTIFY_SOCKET`` received it; a first poll is when the simulator served it.
    """
    env = settings.env
    polled = numbers(STARTUP_NUMBERS)
    with (
        Peers(env, listing_limit=LISTING_LIMIT) as peers,
        Notify(env.workdir / f"{label}.sock") as notify,
    ):
        config = write_config(
            env.workdir / f"{label}.toml",
            peers,
            store_url,
            polled,
            interval=STARTUP_INTERVAL,
            jitter=STARTUP_JITTER,
        )
        with Forwarder(env, kind, config, label, extra_env=notify.environ()) as forwarder:
            ready = notify.wait_ready(forwarder, STARTUP_TIMEOUT) if kind == "relay" else None
            polls = first_polls(peers, forwarder, polled, STARTUP_TIMEOUT)
    started = forwarder.started_at
    return Startup(
        None if ready is None else ready - started,
        tuple(polls[number] - started for number in polled),
    )
