"""The scenarios: what each runs, its targets, and the rows of the table."""

from __future__ import annotations

import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.budgeted import (
    CONVERSATION_BUDGET,
    CONVERSATION_MIN_INTERVAL,
    Conversations,
    run_conversations,
    run_provider_limit,
)
from bench.procs import BenchError
from bench.runs import (
    BURST_INTERVAL,
    IDLE_INTERVAL,
    LATENCY_INTERVAL,
    LATENCY_NUMBERS,
    LATENCY_RATE,
    LISTING_LIMIT,
    STARTUP_INTERVAL,
    STARTUP_JITTER,
    STARTUP_NUMBERS,
    Burst,
    Settings,
    Startup,
    run_burst,
    run_idle,
    run_latency,
    run_startup,
)
from bench.stores import fill_sqlite, migrate, numbers, postgres_database, postgres_reachable

SCENARIOS = ("burst", "idle", "latency", "big-store", "memory", "scale-out", "start-up",
             "conversations", "provider-limit")  # fmt: skip
#: Scenarios whose row is computed from another scenario's runs.
NEEDS = {"memory": "idle", "big-store": "burst"}

BURST_MESSAGES = 10_000
BURST_NUMBERS = 20
BURST_TARGET = 0.8
IDLE_RATE_TARGET = 0.95
IDLE_CPU_TARGET = 1.2
LATENCY_SLACK = 0.25
BIG_STORE_MESSAGES = 1_000_000
BIG_STORE_TARGET = 0.9
MEMORY_TARGET = 100 * 1024 * 1024
SCALE_OUT_NUMBERS = 40
SCALE_OUT_RELAYS = 2
SCALE_OUT_TARGET = 1.6
#: Exec to READY=1, at most.
READY_TARGET = 0.7
#: Every number polled once within this long after READY=1, at most (and within its interval).
ALL_POLLED_AFTER_READY = 1.0
#: p99 message-to-webhook of the conversation messages after each conversation's first.
CONVERSATION_P99_TARGET = 2.5
#: Under the provider's limit: the settled rate at most the limit, 429s under this share.
LIMITED_SHARE_TARGET = 0.05


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    #: The scenario's name in SCENARIOS.
    name: str
    #: What the row shows.
    scenario: str
    relay: str
    bare: str
    check: str
    passed: bool
    #: The numbers behind the texts, for --json.
    values: dict[str, float]


@dataclass
class Report:
    """The rows, and details worth a line each."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _best(runs: list[Burst]) -> Burst:
    """The fastest run: the one the machine's other load disturbed least."""
    return max(runs, key=lambda run: run.rate)


def _rates(runs: list[Burst], unit: str = "msg/s") -> str:
    return ", ".join(f"{run.rate:,.0f}" for run in runs) + f" {unit}"


def run_scenarios(settings: Settings, chosen: list[str]) -> Report:
    """Run ``chosen`` (and what they need), in the order of SCENARIOS."""
    wanted = set(chosen) | {NEEDS[name] for name in chosen if name in NEEDS}
    report = Report()
    state: dict[str, Any] = {}
    steps: dict[str, Callable[[Settings, Report, dict[str, Any]], None]] = {
        "burst": _burst,
        "idle": _idle,
        "latency": _latency,
        "big-store": _big_store,
        "memory": _memory,
        "scale-out": _scale_out,
        "start-up": _start_up,
        "conversations": _conversations,
        "provider-limit": _provider_limit,
    }
    for name in SCENARIOS:
        if name in wanted:
            started = time.monotonic()
            steps[name](settings, report, state)
            print(f"bench: {name} done in {time.monotonic() - started:.0f}s", flush=True)
    report.rows = [row for row in report.rows if row.name in chosen]
    return report


def _rate(value: float) -> str:
    return f"{value:,.0f} msg/s"


def _burst(settings: Settings, report: Report, state: dict[str, Any]) -> None:
    messages = settings.size(BURST_MESSAGES, 40)
    polled = numbers(BURST_NUMBERS)
    workdir = settings.env.workdir
    bare_runs, relay_runs = [], []
    for i in range(1, settings.repeat + 1):
        bare_runs.append(
            run_burst(settings, f"burst-bare-{i}", "bare", polled, messages, "sqlite:///unused.db")
        )
        store = f"sqlite:///{workdir / f'burst-{i}.db'}"
        relay_runs.append(run_burst(settings, f"burst-relay-{i}", "relay", polled, messages, store))
    relay, bare = _best(relay_runs), _best(bare_runs)
    state["burst"] = relay
    ratio = relay.rate / bare.rate if bare.rate else 0.0
    report.rows.append(
        Row(
            "burst",
            "burst",
            _rate(relay.rate),
            _rate(bare.rate),
            f"{ratio:.2f}x / >= {BURST_TARGET}x",
            relay.delivered == messages and ratio >= BURST_TARGET,
            {"relay": relay.rate, "bare": bare.rate, "ratio": ratio},
        )
    )
    report.notes.append(
        f"burst: {messages:,} messages over {BURST_NUMBERS} numbers, listing {LISTING_LIMIT}, "
        f"interval {BURST_INTERVAL:g}s; best of {settings.repeat} (relay {_rates(relay_runs)}, "
        f"bare {_rates(bare_runs)}). relay: {relay.describe()}; bare: {bare.describe()}"
    )


def _idle(settings: Settings, report: Report, state: dict[str, Any]) -> None:
    runs = run_idle(settings)
    relay, bare = runs["relay"], runs["bare"]
    state["idle"] = (relay, bare)
    share = relay.rate / relay.asked
    report.rows.append(
        Row(
            "idle",
            "idle: poll rate",
            f"{relay.rate:,.1f} polls/s",
            f"{bare.rate:,.1f} polls/s",
            f"{share:.1%} of {relay.asked:,.0f}/s / >= {IDLE_RATE_TARGET:.0%}",
            share >= IDLE_RATE_TARGET,
            {"relay": relay.rate, "bare": bare.rate, "ratio": share},
        )
    )
    ratio = relay.cpu_per_poll / bare.cpu_per_poll if bare.cpu_per_poll else math.inf
    report.rows.append(
        Row(
            "idle",
            "idle: CPU per poll",
            f"{relay.cpu_per_poll * 1000:.2f} ms",
            f"{bare.cpu_per_poll * 1000:.2f} ms",
            f"{ratio:.2f}x / <= {IDLE_CPU_TARGET}x",
            ratio <= IDLE_CPU_TARGET,
            {"relay": relay.cpu_per_poll, "bare": bare.cpu_per_poll, "ratio": ratio},
        )
    )
    report.notes.append(
        f"idle: {relay.numbers:,} numbers every {IDLE_INTERVAL:g}s, no traffic, relay and bare "
        f"side by side, measured for {settings.seconds:g}s after one interval. CPU use: relay "
        f"{relay.cpu_per_poll * relay.rate:.1%} of a core, bare {bare.cpu_per_poll * bare.rate:.1%}"
    )


def _memory(settings: Settings, report: Report, state: dict[str, Any]) -> None:
    relay, bare = state["idle"]
    mib = 1024 * 1024
    report.rows.append(
        Row(
            "memory",
            "memory",
            f"{relay.rss / mib:.1f} MB",
            f"{bare.rss / mib:.1f} MB",
            f"{relay.rss / MEMORY_TARGET:.0%} of {MEMORY_TARGET // mib} MB / <= 100%",
            relay.rss <= MEMORY_TARGET,
            {"relay": relay.rss, "bare": bare.rss, "ratio": relay.rss / MEMORY_TARGET},
        )
    )
    report.notes.append(
        f"memory: RSS after the idle run ({relay.numbers:,} numbers); peak RSS relay "
        f"{relay.peak_rss / mib:.1f} MB, bare {bare.peak_rss / mib:.1f} MB"
    )


def _latency(settings: Settings, report: Report, state: dict[str, Any]) -> None:
    bare = run_latency(settings, "bare")
    relay = run_latency(settings, "relay")
    limit = LATENCY_INTERVAL + LATENCY_SLACK
    p99 = relay.percentile(0.99)
    report.rows.append(
        Row(
            "latency",
            "latency p99",
            _ms(p99),
            _ms(bare.percentile(0.99)),
            f"{_ms(p99)} / <= {_ms(limit)}",
            p99 <= limit,
            {"relay": p99, "bare": bare.percentile(0.99), "ratio": p99 / limit},
        )
    )
    parts = []
    for name, run in (("relay", relay), ("bare", bare)):
        parts.append(
            f"{name}: {len(run.latencies):,} of {run.injected:,} delivered, "
            f"p50 {_ms(run.percentile(0.5))}, max {_ms(run.percentile(1.0))}, "
            f"{run.cpu / max(run.injected, 1) * 1000:.2f} ms CPU per message"
        )
    report.notes.append(
        f"latency: {LATENCY_RATE:g} messages/s for {settings.seconds:g}s over "
        f"{LATENCY_NUMBERS} numbers, interval {LATENCY_INTERVAL:g}s, no jitter. " + "; ".join(parts)
    )


def _ms(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds * 1000:,.0f} ms"


def _big_store(settings: Settings, report: Report, state: dict[str, Any]) -> None:
    history = settings.size(BIG_STORE_MESSAGES, 1000)
    workdir = settings.env.workdir
    template = workdir / "big-store-template.db"
    migrate(settings.env, f"sqlite:///{template}")
    fill = fill_sqlite(template, history)
    size = template.stat().st_size
    polled = numbers(BURST_NUMBERS)
    messages = settings.size(BURST_MESSAGES, 40)
    runs = []
    for i in range(1, settings.repeat + 1):
        path = workdir / f"big-store-{i}.db"
        shutil.copyfile(template, path)
        url = f"sqlite:///{path}"
        runs.append(run_burst(settings, f"big-store-relay-{i}", "relay", polled, messages, url))
        path.unlink()
    relay = _best(runs)
    empty: Burst = state["burst"]
    ratio = relay.rate / empty.rate if empty.rate else 0.0
    report.rows.append(
        Row(
            "big-store",
            "big store",
            _rate(relay.rate),
            f"empty store: {_rate(empty.rate)}",
            f"{ratio:.2f}x / >= {BIG_STORE_TARGET}x",
            relay.delivered == messages and ratio >= BIG_STORE_TARGET,
            {"relay": relay.rate, "bare": empty.rate, "ratio": ratio},
        )
    )
    report.notes.append(
        f"big store: the burst on a SQLite store already holding {history:,} delivered "
        f"messages ({size / 1024 / 1024:,.0f} MB, filled in {fill:.1f}s); best of "
        f"{settings.repeat} ({_rates(runs)}). relay: {relay.describe()}"
    )


def _scale_out(settings: Settings, report: Report, state: dict[str, Any]) -> None:
    problem = postgres_reachable(settings.postgres_url)
    if problem is not None:
        msg = f"scale-out needs PostgreSQL at {settings.postgres_url}: {problem}"
        raise BenchError(msg)
    messages = settings.size(BURST_MESSAGES, 80)
    polled = numbers(SCALE_OUT_NUMBERS)
    runs: dict[int, list[Burst]] = {1: [], SCALE_OUT_RELAYS: []}
    for i in range(1, settings.repeat + 1):
        for processes, done in runs.items():
            with postgres_database(settings.postgres_url) as url:
                migrate(settings.env, url)
                label = f"scale-out-{processes}x-{i}"
                done.append(
                    run_burst(settings, label, "relay", polled, messages, url, processes=processes)
                )
    one, many = _best(runs[1]), _best(runs[SCALE_OUT_RELAYS])
    ratio = many.rate / one.rate if one.rate else 0.0
    report.rows.append(
        Row(
            "scale-out",
            "scale-out",
            f"{SCALE_OUT_RELAYS} relays: {many.rate:,.0f} deliveries/s",
            f"1 relay: {one.rate:,.0f} deliveries/s",
            f"{ratio:.2f}x / >= {SCALE_OUT_TARGET}x",
            many.delivered == messages and ratio >= SCALE_OUT_TARGET,
            {"relay": many.rate, "bare": one.rate, "ratio": ratio},
        )
    )
    report.notes.append(
        f"scale-out: {messages:,} messages over {SCALE_OUT_NUMBERS} numbers on PostgreSQL "
        f"(a fresh database per run); best of {settings.repeat} (1 relay "
        f"{_rates(runs[1])}, {SCALE_OUT_RELAYS} relays {_rates(runs[SCALE_OUT_RELAYS])}). "
        f"1 relay: {one.describe()}; "
        f"{SCALE_OUT_RELAYS} relays: {many.describe()}"
    )


def _seconds(value: float) -> str:
    return f"{value:.2f} s"


def _start_up(settings: Settings, report: Report, state: dict[str, Any]) -> None:
    workdir = settings.env.workdir
    store = f"sqlite:///{workdir / 'start-up.db'}"
    fresh = run_startup(settings, "start-up-fresh", "relay", store)
    starts = 2 * settings.repeat + 1
    relay_runs: list[Startup] = []
    bare_runs: list[Startup] = []
    for i in range(1, starts + 1):
        relay_runs.append(run_startup(settings, f"start-up-relay-{i}", "relay", store))
        bare_runs.append(run_startup(settings, f"start-up-bare-{i}", "bare", "sqlite:///unused.db"))
    ready = statistics.median(run.ready or 0.0 for run in relay_runs)
    polled = statistics.median(run.all_polled for run in relay_runs)
    after = statistics.median(run.after_ready for run in relay_runs)
    bare_first = statistics.median(min(run.polls) for run in bare_runs)
    bare_polled = statistics.median(run.all_polled for run in bare_runs)
    limit = min(STARTUP_INTERVAL, ALL_POLLED_AFTER_READY)
    report.rows.append(
        Row(
            "start-up",
            "start-up: exec to READY",
            _seconds(ready),
            f"first poll: {_seconds(bare_first)}",
            f"{_seconds(ready)} / <= {_seconds(READY_TARGET)}",
            ready <= READY_TARGET,
            {"relay": ready, "bare": bare_first, "ratio": ready / READY_TARGET},
        )
    )
    report.rows.append(
        Row(
            "start-up",
            "start-up: all polled",
            _seconds(polled),
            _seconds(bare_polled),
            f"READY + {_seconds(after)} / <= READY + {_seconds(limit)}",
            after <= limit,
            {"relay": polled, "bare": bare_polled, "ratio": after / limit},
        )
    )

    def each(runs: list[Startup], value: Callable[[Startup], float]) -> str:
        return ", ".join(f"{value(run):.2f}" for run in runs) + " s"

    report.notes.append(
        f"start-up: exec to READY=1 (on a notify socket of the bench's own) and to the "
        f"first poll of every number, {STARTUP_NUMBERS} numbers at {STARTUP_INTERVAL:g}s, "
        f"poll.jitter {STARTUP_JITTER:g}s (the default), a SQLite store already migrated; "
        f"median of {starts} starts (relay READY {each(relay_runs, lambda r: r.ready or 0.0)}; "
        f"all polled {each(relay_runs, lambda r: r.all_polled)}; bare all polled "
        f"{each(bare_runs, lambda r: r.all_polled)}). The first start, on an empty store "
        f"(migrations applied): READY {_seconds(fresh.ready or 0.0)}, all polled "
        f"{_seconds(fresh.all_polled)}"
    )


def _conversations(settings: Settings, report: Report, state: dict[str, Any]) -> None:
    fixed = run_conversations(settings, adaptive=False)
    adaptive = run_conversations(settings, adaptive=True)
    p99, base = adaptive.percentile(0.99), fixed.percentile(0.99)
    report.rows.append(
        Row(
            "conversations",
            "conversations: p99 after the first",
            f"{p99:.2f} s",
            f"fixed {fixed.interval:.1f}s: {base:.2f} s",
            f"{p99:.2f} s / <= {CONVERSATION_P99_TARGET} s",
            p99 <= CONVERSATION_P99_TARGET,
            {"relay": p99, "bare": base, "ratio": p99 / CONVERSATION_P99_TARGET},
        )
    )

    def describe(run: Conversations) -> str:
        firsts = sorted(run.firsts)
        worst_first = f"{firsts[-1]:.1f}" if firsts else "-"
        return (
            f"{len(run.latencies)} of {run.said} later messages delivered, p50 "
            f"{run.percentile(0.5):.2f} s, max {run.percentile(1.0):.2f} s; "
            f"{len(firsts)} firsts, slowest {worst_first} s; "
            f"{run.request_rate:.1f} API requests/s"
        )

    report.notes.append(
        f"conversations: budget {CONVERSATION_BUDGET:g}/s; adaptive (interval "
        f"{adaptive.interval:g}s, min_interval {CONVERSATION_MIN_INTERVAL:g}s): "
        f"{describe(adaptive)}. Fixed at {fixed.interval:.1f}s: {describe(fixed)}"
    )


def _provider_limit(settings: Settings, report: Report, state: dict[str, Any]) -> None:
    run = run_provider_limit(settings)
    ok = run.rate <= run.limit and run.limited_share < LIMITED_SHARE_TARGET
    report.rows.append(
        Row(
            "provider-limit",
            "provider limit: settled rate, 429s",
            f"{run.rate:.1f}/s, {run.limited_share:.1%} 429",
            f"limit {run.limit:g}/s",
            f"<= {run.limit:g}/s, < {LIMITED_SHARE_TARGET:.0%}; {run.polled}/{run.numbers} polled",
            ok and run.polled == run.numbers,
            {"relay": run.rate, "bare": run.limit, "ratio": run.rate / run.limit},
        )
    )
    report.notes.append(
        f"provider limit: the simulator answers 429 past {run.limit:g} requests/s per token; "
        f"{run.numbers} numbers at 5s (asking {run.numbers / 5:g}/s), no poll.budget; "
        f"measured at the simulator over {run.window:.0f}s once settled: {run.rate:.1f} "
        f"requests/s, {run.limited_share:.1%} answered 429 ({run.limited_share_all:.1%} "
        f"over the whole run, start included), {run.polled} of {run.numbers} numbers polled"
    )
