"""A seeded, randomized fault test of real ``aatrox-relay run`` processes: the harness.

In the spirit of Jepsen and of Hypothesis's stateful testing. :func:`generate` turns a
seed (through ``random.Random(seed)``) into a :class:`Plan`: a store (SQLite with one
relay, or PostgreSQL with two or three), a wire format, a listing length, numbers,
webhooks, and timed :class:`Step` s: bursts of messages and quiet spells, listings
outrun on purpose, SIGKILLs and restarts, SIGHUP reloads, token rotations, API faults
(5xx, 429, slow answers, resets) and webhook faults (5xx, 429, timeouts, resets).
:func:`run_plan` plays it against the in-process simulator and receivers, clears the
faults, lets the relays catch up (bounded), stops them, and :func:`check` judges what
happened:

1. every message the API showed while a relay was polling reached each of its
   webhooks (the demand rules below say when a message counts as shown);
2. every attempt of one message to one webhook carried one ``webhook-id``;
3. nothing was delivered that the API never held, with other fields than it held;
4. a ``relay.poll.gap`` was logged wherever the schedule outran the listing (once
   the relay has the feature);
5. SQLite passes ``PRAGMA integrity_check``;

and that no relay exited by itself or crashed a job, and each stopped with code 0.

Demand rules: never demand what the API never showed. A message is demanded when

- (a) *listed*: a listing holding it was answered (200, well within the API timeout)
  and that poll provably finished: the same number was polled again afterwards, with
  no relay killed, no API fault answered and no poll failure logged in between;
- (b) *still listed*: it is among its number's last ``listing_limit`` at the end,
  when faults are cleared and a relay runs;
- (c) *fair*: it was listed for a stretch of :data:`FAIR_STRETCH` seconds during
  which a relay had been up long enough to poll, the API answered every request,
  the token worked, and (PostgreSQL) no lease was changing hands;

except, with ``backfill = "none"``, messages received before their number was
configured. Replay one schedule: ``RELAY_CHAOS_SEED=1234 pytest tests/test_chaos.py``.

Every check applies to every schedule: sender ids such as ``Telstra``, every listing
shape, gaps (check 4), ``backfill = "none"`` and relays starting together included.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import math
import random
import re
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import sqlalchemy as sa

from relay.errors import InvalidNumber
from relay.http import Request, Response
from relay.inbound import ID_KEYS, RECIPIENT_KEYS, SENDER_KEYS, TEXT_KEYS, TIME_KEYS
from relay.phone import mask, normalise
from relay.retry import poll_delay
from relay.testing.faults import Fault
from relay.testing.receiver import Delivery, Rule, WebhookReceiver
from relay.testing.simulator import API_PREFIX, Simulator
from relay.testing.wire import (
    ENVELOPES,
    ID_TYPES,
    NUMBER_FORMATS,
    SIM_REGION,
    TIME_FORMATS,
    SimMessage,
    WireFormat,
)
from tests.support import KEY, RelayProcess

StoreKind = Literal["sqlite", "postgresql"]
StepKind = Literal[
    "inject",
    "outrun",
    "kill",
    "start",
    "reload",
    "rotate",
    "rotate_api",
    "rotate_file",
    "api_fault",
    "hook_fault",
]

#: The environment variable that replays one seed.
SEED_ENV = "RELAY_CHAOS_SEED"
#: Numbers a plan draws from: their masked forms (last three digits) differ.
NUMBER_POOL = ("+61400000101", "+61400000102", "+61400000103", "+61400000104")
PHONE_SENDERS = ("+61412345678", "+61498765432", "0412 555 019")
#: Alphanumeric sender ids and a short code, used once the simulator accepts them.
SENDER_IDS = ("Telstra", "CommBank", "1234", "MyGov")
#: Webhook secrets, one per receiver.
KEYS = (KEY, b"fedcba9876543210fedcba9876543210")
INTERVALS = (0.2, 0.3, 0.4, 0.5)
JITTERS = ("0", "50ms", "1s")
#: tz_offset_minutes -> the relay's api.timezone that reads those naive times.
TIMEZONES = {0: "UTC", 600: "Etc/GMT-10", -300: "Etc/GMT+5", 330: "Asia/Kolkata"}
LISTING_SHAPES = ("full", "no_text", "no_sender", "id_only")
LISTING_RANGE = (5, 1000)
#: Outruns only where the listing is short enough to outrun cheaply.
MAX_OUTRUN_LIMIT = 200
POSTGRES_SHARE = 0.35
API_TIMEOUT = 1.0
WEBHOOK_TIMEOUT = 1.0
LEASE = 2.0
LEASE_ROUND = LEASE / 5
#: Answers slower than this may have timed out at the relay: a fault.
SLOW_ANSWER = 0.8 * API_TIMEOUT
START_TIMEOUT = 30.0
#: The catch-up lasts at least CATCH_UP_MIN; it gives up after CATCH_UP_BASE, or 5 s
#: after the end of the longest poll backoff a relay logged, but never after CATCH_UP_MAX.
CATCH_UP_MIN = 1.5
#: Webhooks' circuit_probe: a schedule's webhook faults often open a circuit (10 failures
#: in a row), and the default 30 s probe would outlast the catch-up below, so a message
#: merely waiting for the circuit would count as lost. At 1 s the breaker is exercised
#: and an open circuit shows as a delay.
CIRCUIT_PROBE = 1.0
CATCH_UP_BASE = {"sqlite": 20.0, "postgresql": 30.0}
CATCH_UP_MAX = 60.0
# Allowances of the fair rule (c), in seconds.
FIRST_POLL_ALLOWANCE = 1.5
COMMIT_ALLOWANCE = 1.0
FAULT_MARGIN = 1.0
FAIR_STRETCH = 2.5
PARTIAL_STRETCH = 1.0
#: Log events that mean a bug whatever the schedule did.
CRASH_EVENTS = ("relay.poll.crashed", "relay.delivery.crashed", "Traceback")

_RETRY_IN = re.compile(r"retry_in=([0-9.]+)s")


# --- plans -----------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One timed action of a schedule, ``at`` seconds after the relays first started."""

    at: float
    kind: StepKind
    #: The number, relay or receiver index the step acts on.
    target: int = 0
    #: Messages injected, requests faulted, deliveries faulted, numbers configured.
    count: int = 0
    #: A delay (slow answers), or the poll interval a reload sets.
    value: float = 0.0
    #: The sender of injected messages, or the kind of fault.
    what: str = ""

    def __str__(self) -> str:
        """One line: when, what, on which, how much."""
        parts = [f"{self.at:6.2f}s {self.kind} #{self.target}"]
        if self.count:
            parts.append(f"count={self.count}")
        if self.value:
            parts.append(f"value={self.value:g}")
        if self.what:
            parts.append(f"what={self.what!r}")
        return " ".join(parts)


@dataclass(frozen=True)
class Plan:
    """Everything one schedule does, derived from its seed alone."""

    seed: int
    store: StoreKind
    relays: int
    numbers: tuple[str, ...]
    #: Numbers configured at first; a reload adds the rest.
    initial_numbers: int
    #: Per number: written in national form in the config.
    national: tuple[bool, ...]
    receivers: int
    #: Per number: the receivers (webhooks) its messages go to.
    routes: tuple[tuple[int, ...], ...]
    wire: WireFormat
    timezone: str
    listing_limit: int
    interval: float
    jitter: str
    backfill: Literal["all", "none"]
    #: PostgreSQL: leave one relay dead through the catch-up (another takes over).
    leave_dead: bool
    #: PostgreSQL: start the relays at once on the fresh store, not one by one.
    start_together: bool
    steps: tuple[Step, ...]

    @property
    def partial(self) -> bool:
        """Whether listings lack a sender or a text (details are fetched per message)."""
        return getattr(self.wire, "listing", "full") != "full" or self.wire.text_key is None

    def describe(self) -> str:
        """The plan, a header and one line per step: what a failure prints."""
        wire = ", ".join(
            f"{f.name}={getattr(self.wire, f.name)!r}" for f in dataclasses.fields(self.wire)
        )
        routes = " ".join(
            f"{n}->{','.join(f'hook{r}' for r in rs)}"
            for n, rs in zip(self.numbers, self.routes, strict=True)
        )
        head = [
            f"seed {self.seed}: {self.store} with {self.relays} relay(s), "
            f"listing_limit={self.listing_limit}, interval={self.interval:g}s, "
            f"jitter={self.jitter}, backfill={self.backfill}, timezone={self.timezone}, "
            f"initial numbers={self.initial_numbers}, leave_dead={self.leave_dead}, "
            f"start_together={self.start_together}",
            f"  routes: {routes}",
            f"  wire: {wire}",
        ]
        return "\n".join(head + [f"  {step}" for step in self.steps])


def generate(seed: int) -> Plan:
    """The plan of ``seed``: the same seed gives the same plan, on the same code."""
    rng = random.Random(seed)
    store: StoreKind = "postgresql" if rng.random() < POSTGRES_SHARE else "sqlite"
    relays = 1 if store == "sqlite" else rng.choice((2, 3))
    numbers = tuple(rng.sample(NUMBER_POOL, rng.randint(2, 4)))
    initial = len(numbers) if rng.random() < 0.7 else rng.randint(1, len(numbers) - 1)
    national = tuple(rng.random() < 0.25 for _ in numbers)
    receivers = rng.choice((1, 2))
    routes = tuple(
        (0,) if receivers == 1 else rng.choice(((0,), (1,), (0, 1), (0, 1))) for _ in numbers
    )
    wire, timezone = _wire(rng)
    low, high = LISTING_RANGE
    limit = round(math.exp(rng.uniform(math.log(low), math.log(high))))
    interval = rng.choice(INTERVALS)
    jitter = rng.choice(JITTERS)
    none = rng.random() < 0.3
    backfill: Literal["all", "none"] = "none" if none else "all"
    senders = PHONE_SENDERS + SENDER_IDS
    duration = rng.uniform(2.5, 5.0)
    steps: list[Step] = []
    steps += _traffic(rng, duration, len(numbers), limit, senders)
    steps += _lives(rng, duration, store, relays)
    steps += _reloads(rng, duration, len(numbers), initial)
    steps += _rotations(rng, duration)
    steps += _faults(rng, duration, receivers)
    leave_dead = store == "postgresql" and rng.random() < 0.3
    together = rng.random() < 0.5 and store == "postgresql"
    return Plan(
        seed=seed,
        store=store,
        relays=relays,
        numbers=numbers,
        initial_numbers=initial,
        national=national,
        receivers=receivers,
        routes=routes,
        wire=wire,
        timezone=timezone,
        listing_limit=limit,
        interval=interval,
        jitter=jitter,
        backfill=backfill,
        leave_dead=leave_dead,
        start_together=together,
        steps=tuple(sorted(steps, key=lambda s: s.at)),
    )


def _wire(rng: random.Random) -> tuple[WireFormat, str]:
    """A random wire format, and the relay timezone that reads its naive times."""
    offset = rng.choice(sorted(TIMEZONES))
    text_key = rng.choice((*TEXT_KEYS, None)) if rng.random() < 0.8 else "text"
    shape = rng.choice(LISTING_SHAPES)
    values: dict[str, object] = {
        "envelope": rng.choice(ENVELOPES),
        "id_key": rng.choice(ID_KEYS),
        "id_type": rng.choice(ID_TYPES),
        "from_key": rng.choice(SENDER_KEYS),
        "to_key": rng.choice(RECIPIENT_KEYS),
        "text_key": text_key,
        "time_key": rng.choice(TIME_KEYS),
        "time_format": rng.choice(TIME_FORMATS),
        "number_format": rng.choice(NUMBER_FORMATS),
        "tz_offset_minutes": offset,
        "listing": shape,
    }
    return WireFormat(**values), TIMEZONES[offset]  # type: ignore[arg-type]


def _traffic(
    rng: random.Random, duration: float, numbers: int, limit: int, senders: Sequence[str]
) -> list[Step]:
    """Bursts and quiet spells of messages; now and then a listing outrun on purpose."""
    steps = []
    small = max(1, min(limit // 2, 40))
    t = rng.uniform(0.0, 0.3)
    while t < duration:
        spell = rng.uniform(0.3, 1.2)
        if rng.random() < 0.35:  # a quiet spell
            t += spell
            continue
        end = min(t + spell, duration)
        while t < end:
            roll = rng.random()
            count = rng.randint(1, 3) if roll < 0.7 else rng.randint(1, small)
            steps.append(Step(t, "inject", rng.randrange(numbers), count, what=rng.choice(senders)))
            t += rng.uniform(0.01, 0.15)
    outruns = rng.choice((0, 0, 1, 1, 2))
    if limit <= MAX_OUTRUN_LIMIT:
        for _ in range(outruns):
            at = rng.uniform(1.5, duration - 0.3)
            extra = rng.randint(1, max(1, limit // 2))
            number = rng.randrange(numbers)
            steps.append(Step(at, "outrun", number, limit + extra, what=rng.choice(senders)))
            # A message well before, so that the relay knows a non-empty listing.
            primer = max(at - rng.uniform(1.2, 2.0), 0.0)
            steps.append(Step(primer, "inject", number, 1, what=rng.choice(senders)))
    return steps


def _lives(rng: random.Random, duration: float, store: StoreKind, relays: int) -> list[Step]:
    """SIGKILLs at random moments (some during start-up) and restarts, per relay."""
    steps = []
    for index in range(relays):
        t = rng.uniform(0.2, 1.5)
        for _ in range(rng.randint(0, 4 if store == "sqlite" else 3)):
            if t >= duration:
                break
            steps.append(Step(t, "kill", index))
            t += rng.uniform(0.0, 0.3) if rng.random() < 0.5 else rng.uniform(0.3, 1.2)
            steps.append(Step(t, "start", index))
            t += rng.uniform(0.1, 0.6) if rng.random() < 0.3 else rng.uniform(0.8, 2.0)
        if t < duration and rng.random() < 0.2:
            steps.append(Step(t, "kill", index))  # dead at the end: the catch-up restarts it
    if store == "postgresql" and not any(s.kind == "kill" for s in steps):
        at = rng.uniform(0.5, max(duration - 0.5, 0.6))
        steps.append(Step(at, "kill", rng.randrange(relays)))
        steps.append(Step(at + rng.uniform(0.2, 1.5), "start", steps[-1].target))
    return steps


def _reloads(rng: random.Random, duration: float, numbers: int, initial: int) -> list[Step]:
    """SIGHUP reloads changing the interval; the first adds numbers not configured yet."""
    count = rng.choice((0, 1, 1, 2))
    if initial < numbers:
        count = max(count, 1)
    times = sorted(rng.uniform(0.3, duration) for _ in range(count))
    return [Step(at, "reload", count=numbers, value=rng.choice(INTERVALS)) for at in times]


def _rotations(rng: random.Random, duration: float) -> list[Step]:
    """Token rotations: file and API at once, or one of them first for a while."""
    steps = []
    for _ in range(rng.choice((0, 0, 1, 2))):
        at = rng.uniform(0.3, duration)
        order = rng.choice(("together", "api_first", "file_first"))
        lag = rng.uniform(0.1, 0.8)
        if order == "together":
            steps.append(Step(at, "rotate"))
        elif order == "api_first":
            steps += [Step(at, "rotate_api"), Step(at + lag, "rotate_file")]
        else:
            steps += [Step(at, "rotate_file"), Step(at + lag, "rotate_api")]
    return steps


def _faults(rng: random.Random, duration: float, receivers: int) -> list[Step]:
    """API faults (5xx, 429, slow, reset) and webhook faults (5xx, 429, timeout, reset)."""
    steps = []
    for _ in range(rng.randint(0, 2)):
        what = rng.choice(("500", "429", "slow", "reset"))
        delay = rng.uniform(0.3, 1.5) if what == "slow" else 0.0
        target = rng.randrange(2)  # 0: every API path, 1: listings only
        steps.append(
            Step(rng.uniform(0.2, duration), "api_fault", target, rng.randint(1, 3), delay, what)
        )
    for _ in range(rng.randint(0, 3)):
        what = rng.choice(("500", "503", "429", "timeout", "reset"))
        steps.append(
            Step(
                rng.uniform(0.2, duration),
                "hook_fault",
                rng.randrange(receivers),
                rng.randint(1, 8),
                what=what,
            )
        )
    return steps


# --- what a run observes -----------------------------------------------------


@dataclass(frozen=True)
class ApiCall:
    """One API request the simulator answered."""

    start: float
    end: float
    #: "receive" or "other" (details).
    endpoint: str
    #: The polled number (E.164) of a receive; None otherwise.
    number: str | None
    #: The status answered; 0 for a reset.
    status: int
    #: How many messages the number held when it was answered.
    size: int

    @property
    def faulty(self) -> bool:
        """Not a prompt 200: the relay may have got nothing out of it."""
        return self.status != 200 or self.end - self.start >= SLOW_ANSWER


@dataclass
class Life:
    """One run of a relay process."""

    launched: float
    ready: float | None = None
    died: float | None = None


class StampedLines(list[str]):
    """A relay's stderr lines that also remember when each arrived (monotonic)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, line: str) -> None:
        """Keep ``line`` and the time it came."""
        self.times.append(time.monotonic())
        super().append(line)

    def stamped(self) -> list[tuple[float, str]]:
        """(time, line) pairs."""
        return list(zip(self.times, self, strict=False))


class RecordingSimulator(Simulator):
    """The simulator, keeping every API answer and each number's messages in order."""

    def __init__(self, *, token: str, listing_limit: int, wire: WireFormat) -> None:
        super().__init__(token=token, listing_limit=listing_limit, wire=wire)
        self.calls: list[ApiCall] = []
        #: Per number, ids in the order the simulator lists them.
        self.inbox: dict[str, list[int]] = {}
        self.injected_at: dict[int, float] = {}
        self.held: dict[int, SimMessage] = {}

    def inject(
        self, sender: str, recipient: str, text: str, received_at: datetime | None = None
    ) -> SimMessage:
        """Receive a message, remembering when and where it is listed."""
        message = super().inject(sender, recipient, text, received_at)
        inbox = self.inbox.setdefault(message.recipient, [])
        inbox.append(message.id)
        self.injected_at[message.id] = time.monotonic()
        self.held[message.id] = message
        return message

    async def _handle(self, request: Request) -> Response:
        start = time.monotonic()
        response = await super()._handle(request)
        if request.path.startswith(API_PREFIX + "/"):
            number = None
            receive = request.path == f"{API_PREFIX}/sms/receive"
            if receive:
                with contextlib.suppress(InvalidNumber):
                    number = normalise(request.query.get("to", ""), SIM_REGION)
            self.calls.append(
                ApiCall(
                    start,
                    time.monotonic(),
                    "receive" if receive else "other",
                    number,
                    0 if response.abort else response.status,
                    len(self.inbox.get(number, ())) if number else 0,
                )
            )
        return response


@dataclass
class Observation:
    """What one run saw: the input of :func:`check`. Times are :func:`time.monotonic`."""

    start: float
    end: float
    calls: list[ApiCall]
    inbox: dict[str, list[int]]
    injected_at: dict[int, float]
    held: dict[int, SimMessage]
    #: Per relay slot.
    lives: list[list[Life]]
    lines: list[list[tuple[float, str]]]
    kills: list[float]
    #: (relay slot, time) of each SIGHUP.
    hups: list[tuple[int, float]]
    #: (time, number) of each outrun.
    outruns: list[tuple[float, str]]
    #: When the API and the token file disagreed about the token.
    token_mismatch: list[tuple[float, float]]
    #: When each number was first in a running relay's config.
    configured: dict[str, float]
    deliveries: list[list[Delivery]]
    problems: list[str] = field(default_factory=list)
    integrity: str | None = None


# --- running a plan ----------------------------------------------------------


class _Slot:
    """One relay of the plan: its process (restarted in place) and its lives."""

    def __init__(self, index: int, config: Path) -> None:
        self.index = index
        self.process = RelayProcess(config)
        self.lines = StampedLines()
        self.process.lines = self.lines
        self.state: Literal["down", "starting", "up"] = "down"
        self.lives: list[Life] = []
        self.task: asyncio.Task[None] | None = None
        #: The config version it last read (at start or on SIGHUP).
        self.version = 0


class _Run:
    """Plays one plan against the peers."""

    def __init__(
        self,
        plan: Plan,
        workdir: Path,
        store_url: str,
        sim: RecordingSimulator,
        receivers: Sequence[WebhookReceiver],
    ) -> None:
        self.plan = plan
        self.workdir = workdir
        self.store_url = store_url
        self.sim = sim
        self.receivers = receivers
        self.config = workdir / "relay.toml"
        self.token_file = workdir / "token"
        self.file_token = sim.token
        self.rotations = 0
        self.version = 0
        self.configured_count = plan.initial_numbers
        self.interval = plan.interval
        self.slots = [_Slot(i, self.config) for i in range(plan.relays)]
        self.kills: list[float] = []
        self.hups: list[tuple[int, float]] = []
        #: (time, version, numbers configured) of each reload.
        self.reloads: list[tuple[float, int, int]] = []
        self.outruns: list[tuple[float, str]] = []
        self.mismatch: list[tuple[float, float]] = []
        self._mismatch_since: float | None = None
        self.problems: list[str] = []
        self.start = 0.0

    # -- the schedule --

    async def execute(self) -> None:
        """Start the relays one by one, play the steps, catch up, stop the relays."""
        self._write_token(self.file_token)
        self._write_config()
        for slot in self.slots:  # one by one, unless relays may migrate a store at once
            self._launch(slot)
            if not self.plan.start_together:
                await self._ready(slot)
        for slot in self.slots:
            await self._ready(slot)
        self.start = time.monotonic()
        for index, step in enumerate(self.plan.steps):
            delay = self.start + step.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._check_alive()
            await self._do(index, step)
        await self._catch_up()
        await self._stop()

    async def _do(self, index: int, step: Step) -> None:
        """Carry out one step."""
        kind = step.kind
        if kind in ("inject", "outrun"):
            number = self.plan.numbers[step.target]
            for j in range(step.count):
                self.sim.inject(step.what, number, f"s{self.plan.seed} #{index}.{j} ✓")
            if kind == "outrun":
                self.outruns.append((time.monotonic(), normalise(number, SIM_REGION)))
        elif kind == "kill":
            await self._kill(self.slots[step.target])
        elif kind == "start":
            if self.slots[step.target].state == "down":
                self._launch(self.slots[step.target])
        elif kind == "reload":
            self._reload(step)
        elif kind in ("rotate", "rotate_api", "rotate_file"):
            self._rotate(kind)
        elif kind == "api_fault":
            self.sim.add_fault(_api_fault(step))
        elif kind == "hook_fault":
            self.receivers[step.target].respond(_hook_rule(step))

    def _launch(self, slot: _Slot) -> None:
        """Start a relay without waiting for it: steps go on while it starts."""
        slot.process.proc = None
        life = Life(time.monotonic())
        slot.lives.append(life)
        slot.state = "starting"
        slot.version = self.version
        slot.task = asyncio.create_task(self._started(slot, life))

    async def _started(self, slot: _Slot, life: Life) -> None:
        """Wait for ``relay.started`` (or the process to exit); SIGHUP the relay if the
        config changed meanwhile."""
        starting = asyncio.create_task(slot.process.start(timeout=START_TIMEOUT))
        try:
            while not starting.done():
                await asyncio.wait({starting}, timeout=0.1)
                proc = slot.process.proc
                if proc is not None and proc.returncode is not None:
                    self._check_alive()
                    return
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await starting
        if starting.cancelled() or starting.exception() is not None:
            self.problems.append(f"relay {slot.index} did not start in {START_TIMEOUT:g}s")
            return
        life.ready = time.monotonic()
        slot.state = "up"
        if slot.version != self.version:
            self._hup(slot)

    async def _ready(self, slot: _Slot) -> None:
        """Wait until ``slot`` has started (or failed to)."""
        if slot.task is not None and not slot.task.done():
            await slot.task

    async def _kill(self, slot: _Slot) -> None:
        """SIGKILL a relay, starting or up."""
        if slot.state == "down":
            return
        deadline = time.monotonic() + 10
        while slot.process.proc is None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if slot.task is not None and not slot.task.done():
            slot.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slot.task
        now = time.monotonic()
        self.kills.append(now)
        slot.lives[-1].died = now
        slot.state = "down"
        if slot.process.proc is not None and slot.process.proc.returncode is None:
            await slot.process.kill()

    def _hup(self, slot: _Slot) -> None:
        """SIGHUP a running relay: it reads the config again."""
        slot.version = self.version
        self.hups.append((slot.index, time.monotonic()))
        slot.process.signal(signal.SIGHUP)

    def _reload(self, step: Step) -> None:
        """Rewrite the config (interval, numbers) and SIGHUP every running relay."""
        self.version += 1
        self.interval = step.value or self.interval
        self.configured_count = max(self.configured_count, step.count)
        self._write_config()
        self.reloads.append((time.monotonic(), self.version, self.configured_count))
        for slot in self.slots:
            if slot.state == "up":
                self._hup(slot)

    def _rotate(self, kind: str) -> None:
        """A new token into the token file, the API, or both; a side left behind by an
        earlier step catches up with the other instead."""
        behind = self.file_token != self.sim.token
        if not behind or kind == "rotate":
            self.rotations += 1
            token = f"chaos-{self.plan.seed}-{self.rotations}"
        else:
            token = self.file_token if kind == "rotate_api" else self.sim.token
        if kind in ("rotate", "rotate_file"):
            self._write_token(token)
        if kind in ("rotate", "rotate_api"):
            self.sim.token = token
        self._note_tokens()

    def _note_tokens(self) -> None:
        """Keep the spans during which the file and the API disagree."""
        now = time.monotonic()
        if self.file_token != self.sim.token and self._mismatch_since is None:
            self._mismatch_since = now
        elif self.file_token == self.sim.token and self._mismatch_since is not None:
            self.mismatch.append((self._mismatch_since, now))
            self._mismatch_since = None

    def _check_alive(self) -> None:
        """A relay that exited without being killed is a problem."""
        for slot in self.slots:
            proc = slot.process.proc
            if slot.state != "down" and proc is not None and proc.returncode is not None:
                self.problems.append(
                    f"relay {slot.index} exited by itself with code {proc.returncode}"
                )
                slot.lives[-1].died = time.monotonic()
                slot.state = "down"
                task = slot.task
                if task is not None and not task.done() and task is not asyncio.current_task():
                    task.cancel()

    # -- the end --

    async def _catch_up(self) -> None:
        """Clear every fault, run the relays, and wait (bounded) until all demanded
        messages reached their webhooks."""
        self.sim.clear_faults()
        for receiver in self.receivers:
            receiver.clear_rules()
        if self.file_token != self.sim.token:
            self._write_token(self.sim.token)
            self._note_tokens()
        dead = [s for s in self.slots if s.state == "down"]
        keep_dead = (
            dead[0] if self.plan.leave_dead and dead and len(dead) < len(self.slots) else None
        )
        for slot in dead:
            if slot is not keep_dead:
                self._launch(slot)
        for slot in self.slots:
            await self._ready(slot)
        began = time.monotonic()
        while True:
            self._check_alive()
            now = time.monotonic()
            observed = self.observation(now)
            backoff = max((t + r for t, r in _poll_failures(observed, None)), default=0.0)
            deadline = min(
                max(began + CATCH_UP_BASE[self.plan.store], backoff + 5.0),
                began + CATCH_UP_MAX,
            )
            missing = _missing(self.plan, observed, demanded(self.plan, observed))
            if (not missing and now - began >= CATCH_UP_MIN) or now >= deadline:
                return
            await asyncio.sleep(0.25)

    async def _stop(self) -> None:
        """SIGTERM every running relay: each must exit 0."""
        self._check_alive()
        for slot in self.slots:
            if slot.state == "down":
                continue
            slot.lives[-1].died = time.monotonic()
            slot.state = "down"
            code = await slot.process.terminate()
            if code != 0:
                self.problems.append(f"relay {slot.index} exited {code} on SIGTERM")

    async def abandon(self) -> None:
        """Kill whatever still runs (after an error in the harness)."""
        for slot in self.slots:
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
            proc = slot.process.proc
            if proc is not None and proc.returncode is None:
                proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 10)

    # -- files --

    def _write_token(self, token: str) -> None:
        """Replace the token file atomically."""
        fresh = self.token_file.with_suffix(".new")
        fresh.write_text(token + "\n", encoding="utf-8")
        fresh.replace(self.token_file)
        self.file_token = token

    def _write_config(self) -> None:
        """The relay config of the current version, replaced atomically."""
        plan = self.plan
        numbers = ""
        for i in range(self.configured_count):
            spelled = plan.numbers[i]
            if plan.national[i]:
                spelled = "0" + spelled[3:6] + " " + spelled[6:9] + " " + spelled[9:]
            hooks = ", ".join(f'"hook{r}"' for r in plan.routes[i])
            numbers += f'\n[[numbers]]\nnumber = "{spelled}"\nwebhooks = [{hooks}]\n'
        webhooks = "".join(
            f"""
[[webhooks]]
name = "hook{r}"
url = "{receiver.url}"
secret = "whsec_{_b64(KEYS[r])}"
timeout = "{WEBHOOK_TIMEOUT:g}s"
retry_initial = "200ms"
retry_max = "1s"
circuit_probe = "{CIRCUIT_PROBE:g}s"
"""
            for r, receiver in enumerate(self.receivers)
        )
        text = f"""
[api]
base_url = "{self.sim.url}"
token_file = "{self.token_file}"
timeout = "{API_TIMEOUT:g}s"
timezone = "{plan.timezone}"

[store]
url = "{self.store_url}"
lease = "{LEASE:g}s"

[poll]
interval = "{self.interval * 1000:g}ms"
jitter = "{plan.jitter}"
backfill = "{plan.backfill}"
{numbers}{webhooks}
[run]
shutdown_timeout = "2s"
"""
        fresh = self.config.with_suffix(".new")
        fresh.write_text(text, encoding="utf-8")
        fresh.replace(self.config)

    # -- what was seen --

    def observation(self, end: float) -> Observation:
        """Everything seen so far, up to ``end``."""
        mismatch = list(self.mismatch)
        if self._mismatch_since is not None:
            mismatch.append((self._mismatch_since, end))
        lines = [slot.lines.stamped() for slot in self.slots]
        return Observation(
            start=self.start,
            end=end,
            calls=list(self.sim.calls),
            inbox=self.sim.inbox,
            injected_at=self.sim.injected_at,
            held=self.sim.held,
            lives=[slot.lives for slot in self.slots],
            lines=lines,
            kills=list(self.kills),
            hups=list(self.hups),
            outruns=list(self.outruns),
            token_mismatch=mismatch,
            configured=self._configured(lines),
            deliveries=[list(r.deliveries) for r in self.receivers],
            problems=list(self.problems),
        )

    def _configured(self, lines: list[list[tuple[float, str]]]) -> dict[str, float]:
        """When each number was first in the config of a running relay."""
        first = min((life.ready for life in self.slots[0].lives if life.ready), default=0.0)
        out = {
            normalise(n, SIM_REGION): first for n in self.plan.numbers[: self.plan.initial_numbers]
        }
        previous = self.plan.initial_numbers
        for at, _version, count in self.reloads:
            moments = [
                life.ready
                for slot in self.slots
                for life in slot.lives
                if life.ready is not None and life.launched >= at
            ]
            for index, hup_at in self.hups:
                if hup_at >= at:
                    moments += [
                        t for t, line in lines[index] if t >= hup_at and "relay.reloaded" in line
                    ][:1]
            when = min(moments, default=math.inf)
            for n in self.plan.numbers[previous:count]:
                out.setdefault(normalise(n, SIM_REGION), when)
            previous = max(previous, count)
        return out


def _b64(key: bytes) -> str:
    """Base64 of a webhook key."""
    return base64.b64encode(key).decode()


def _api_fault(step: Step) -> Fault:
    """The simulator fault of an ``api_fault`` step."""
    path = "/api/v2/" if step.target == 0 else f"{API_PREFIX}/sms/receive"
    if step.what == "429":
        return Fault(status=429, headers=(("Retry-After", "1"),), count=step.count, path=path)
    if step.what == "slow":
        return Fault(status=0, delay=step.value, count=step.count, path=path)
    if step.what == "reset":
        return Fault(reset=True, count=step.count, path=path)
    return Fault(status=500, count=step.count, path=path)


def _hook_rule(step: Step) -> Rule:
    """The receiver rule of a ``hook_fault`` step."""
    if step.what == "timeout":
        return Rule(delay=WEBHOOK_TIMEOUT + 0.5, times=step.count)
    if step.what == "reset":
        return Rule(reset=True, times=step.count)
    if step.what in ("429", "503"):
        return Rule(status=int(step.what), headers=(("Retry-After", "1"),), times=step.count)
    return Rule(status=500, times=step.count)


async def run_plan(plan: Plan, workdir: Path, store_url: str) -> Observation:
    """Play ``plan`` with real relays against fresh peers; what was observed."""
    token = f"chaos-{plan.seed}-0"
    sim = RecordingSimulator(token=token, listing_limit=plan.listing_limit, wire=plan.wire)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(sim)
        receivers = [
            await stack.enter_async_context(WebhookReceiver(KEYS[r])) for r in range(plan.receivers)
        ]
        run = _Run(plan, workdir, store_url, sim, receivers)
        try:
            await run.execute()
        finally:
            await run.abandon()
        observed = run.observation(time.monotonic())
    if plan.store == "sqlite":
        observed.integrity = integrity(store_url)
    return observed


def integrity(sqlite_url: str) -> str:
    """``PRAGMA integrity_check`` of a SQLite store: "ok" when sound."""
    path = sqlite_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    return "; ".join(str(row[0]) for row in rows)


@contextlib.contextmanager
def fresh_schema(postgres_url: str) -> Iterator[str]:
    """A URL into a new PostgreSQL schema (next to ``postgres_url``'s), dropped after."""
    url = sa.engine.make_url(postgres_url)
    query = {k: v for k, v in url.query.items() if k != "options"}
    admin = sa.create_engine(url.set(query=query), isolation_level="AUTOCOMMIT")
    schema = f"relay_chaos_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# --- judging -----------------------------------------------------------------


def _finished_polls(plan: Plan, obs: Observation) -> dict[str, list[ApiCall]]:
    """Prompt 200 listings whose polls provably finished, by number, oldest first.

    Proof: the number was polled again later (a relay polls a number one poll at a
    time), and between the two no relay was killed or reloaded, no API request
    touching the number failed, and no poll of it was logged as failed. With several
    relays the next poll may come from another one, so no relay may have been
    killed within :data:`COMMIT_ALLOWANCE` of the answer either.
    """
    allowance = COMMIT_ALLOWANCE if plan.relays > 1 else 0.0
    out: dict[str, list[ApiCall]] = {}
    faulty = [c for c in obs.calls if c.faulty]
    receives: dict[str, list[ApiCall]] = {}
    for call in sorted(obs.calls, key=lambda c: c.start):
        if call.endpoint == "receive" and call.number is not None:
            receives.setdefault(call.number, []).append(call)
    for number, calls in receives.items():
        failed = [t for t, _ in _poll_failures(obs, number)]
        for i, call in enumerate(calls):
            after = next((c for c in calls[i + 1 :] if c.start > call.end), None)
            if call.faulty or after is None:
                continue
            until = max(after.start, call.end + allowance)
            if any(call.start <= k <= until for k in obs.kills):
                continue
            if any(call.start <= t <= after.start for _, t in obs.hups):
                continue
            if any(
                f.number in (number, None) and f.start <= after.start and f.end >= call.start
                for f in faulty
            ):
                continue
            if any(call.start <= t <= after.start + 0.5 for t in failed):
                continue
            out.setdefault(number, []).append(call)
    return out


def _poll_failures(obs: Observation, number: str | None) -> list[tuple[float, float]]:
    """(time, retry_in) of each ``relay.poll.failed`` logged (for ``number``, or any)."""
    out = []
    needle = None if number is None else f"number={mask(number)}"
    for lines in obs.lines:
        for t, line in lines:
            if "relay.poll.failed" in line and (needle is None or needle in line):
                found = _RETRY_IN.search(line)
                out.append((t, float(found.group(1)) if found else 0.0))
    return out


def _listed(plan: Plan, obs: Observation) -> dict[str, list[tuple[int, int]]]:
    """Rule (a): per number, index ranges of its inbox shown by polls that finished."""
    limit = plan.listing_limit
    return {
        number: [(max(0, c.size - limit), c.size) for c in calls]
        for number, calls in _finished_polls(plan, obs).items()
    }


def _fair(plan: Plan, obs: Observation, number: str) -> list[tuple[float, float]]:
    """Rule (c): when ``number`` was surely being polled, as sorted disjoint intervals."""
    since = obs.configured.get(number, math.inf) + FIRST_POLL_ALLOWANCE
    covered = []
    for lives in obs.lives:
        for life in lives:
            if life.ready is None:
                continue
            begin = max(life.ready + FIRST_POLL_ALLOWANCE, since)
            end = (life.died if life.died is not None else obs.end) - COMMIT_ALLOWANCE
            if begin < end:
                covered.append((begin, end))
    holes = []
    longest = max(INTERVALS)
    streak = 0
    for call in sorted(obs.calls, key=lambda c: c.start):
        if call.number not in (number, None):
            continue
        if call.endpoint == "receive":
            streak = streak + 1 if call.faulty else 0
        if call.faulty:
            backoff = poll_delay(longest, max(streak, 1)) + 1.0  # + a Retry-After of 1s
            holes.append((call.start, call.end + backoff + FAULT_MARGIN))
    holes += [(t - 3 * API_TIMEOUT, t + r + FAULT_MARGIN) for t, r in _poll_failures(obs, number)]
    holes += [(a, b + FAULT_MARGIN) for a, b in obs.token_mismatch]
    holes += [(t, t + FAULT_MARGIN) for _, t in obs.hups]
    if plan.store == "postgresql":
        holes += [(k, k + LEASE + 2 * LEASE_ROUND + FAULT_MARGIN) for k in obs.kills]
        holes += [
            (life.launched, life.ready + 2 * LEASE_ROUND + FAULT_MARGIN)
            for lives in obs.lives
            for life in lives
            if life.ready is not None
        ]
    return _subtract(_union(covered), _union(holes))


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, merged intervals."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _subtract(
    spans: list[tuple[float, float]], holes: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """``spans`` minus ``holes`` (both sorted and merged)."""
    out = []
    for a, b in spans:
        cursor = a
        for h0, h1 in holes:
            if h1 <= cursor or h0 >= b:
                continue
            if h0 > cursor:
                out.append((cursor, h0))
            cursor = max(cursor, h1)
        if cursor < b:
            out.append((cursor, b))
    return out


def demanded(plan: Plan, obs: Observation) -> dict[int, str]:
    """The ids that must reach their webhooks, each with the rule that demands it."""
    out: dict[int, str] = {}
    limit = plan.listing_limit
    stretch = FAIR_STRETCH + (PARTIAL_STRETCH if plan.partial else 0.0)
    for number, ranges in _listed(plan, obs).items():
        ids = obs.inbox.get(number, [])
        for lo, hi in _union([(float(a), float(b)) for a, b in ranges]):
            for message_id in ids[int(lo) : int(hi)]:
                out.setdefault(message_id, "a: listed by a poll that finished")
    for number, ids in obs.inbox.items():
        for message_id in ids[-limit:]:
            out.setdefault(message_id, "b: still listed at the end")
        fair = _fair(plan, obs, number)
        for index, message_id in enumerate(ids):
            if message_id in out:
                continue
            begin = obs.injected_at[message_id]
            later = index + limit
            end = obs.injected_at[ids[later]] if later < len(ids) else obs.end
            if any(min(b, end) - max(a, begin) >= stretch for a, b in fair):
                out[message_id] = "c: listed while a relay surely polled"
    if plan.backfill == "none":
        for message_id in list(out):
            message = obs.held[message_id]
            if obs.injected_at[message_id] < obs.configured.get(message.recipient, math.inf):
                del out[message_id]
    return out


def _routes(plan: Plan) -> dict[str, tuple[int, ...]]:
    """Each number's receivers, by E.164."""
    return {normalise(n, SIM_REGION): rs for n, rs in zip(plan.numbers, plan.routes, strict=True)}


def _reached(obs: Observation) -> list[set[tuple[str, str]]]:
    """Per receiver, the (number, id) it accepted (verified, answered 2xx)."""
    out = []
    for deliveries in obs.deliveries:
        got = set()
        for d in deliveries:
            data = d.payload.get("data")
            if d.verified and 200 <= d.status < 300 and isinstance(data, dict):
                got.add((str(data.get("number")), str(data.get("id"))))
        out.append(got)
    return out


def _missing(plan: Plan, obs: Observation, wanted: dict[int, str]) -> list[str]:
    """Check 1: demanded messages that did not reach one of their webhooks."""
    routes = _routes(plan)
    reached = _reached(obs)
    out = []
    for message_id, why in sorted(wanted.items()):
        message = obs.held[message_id]
        for r in routes.get(message.recipient, ()):
            if (message.recipient, str(message_id)) not in reached[r]:
                at = obs.injected_at[message_id] - obs.start
                out.append(
                    f"lost: message {message_id} on {message.recipient} (injected at "
                    f"{at:.2f}s) never reached hook{r}; demanded by rule {why}"
                )
    return out


def _repeats(obs: Observation) -> list[str]:
    """Check 2: one webhook-id per message and webhook; every request verified."""
    out = []
    for r, deliveries in enumerate(obs.deliveries):
        ids: dict[tuple[str, str], set[str]] = {}
        for d in deliveries:
            data = d.payload.get("data")
            if not d.verified or not isinstance(data, dict):
                out.append(f"hook{r} got an unverified request: {d.error}")
                continue
            key = (str(data.get("number")), str(data.get("id")))
            ids.setdefault(key, set()).add(d.webhook_id)
        out += [
            f"hook{r} got message {key} under {len(v)} webhook-ids: {sorted(v)}"
            for key, v in ids.items()
            if len(v) > 1
        ]
    return out


def _invented(plan: Plan, obs: Observation) -> list[str]:
    """Check 3: every delivery is of a message the API held, field for field, and routed."""
    out = []
    routes = _routes(plan)
    for r, deliveries in enumerate(obs.deliveries):
        for d in deliveries:
            data = d.payload.get("data")
            if not d.verified or not isinstance(data, dict):
                continue
            raw_id = str(data.get("id"))
            message = obs.held.get(int(raw_id)) if raw_id.isdigit() else None
            if message is None or message.recipient != data.get("number"):
                out.append(f"hook{r} got a message the API never held: id={raw_id!r}")
                continue
            got = (data.get("from"), data.get("to"), data.get("text"))
            held = (message.sender, message.recipient, message.text)
            if got != held:
                out.append(f"hook{r} got message {raw_id} as {got!r}, the API held {held!r}")
            received = _parse_time(data.get("received_at"))
            if received is None or abs((received - message.received_at).total_seconds()) > 0.001:
                out.append(
                    f"hook{r} got message {raw_id} received at {data.get('received_at')!r}, "
                    f"the API held {message.received_at.isoformat()}"
                )
            if r not in routes.get(message.recipient, ()):
                out.append(f"hook{r} got message {raw_id}, whose number does not route there")
    return out


def _parse_time(value: object) -> datetime | None:
    """An ISO 8601 time from a delivery, or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def gap_demands(plan: Plan, obs: Observation) -> list[tuple[float, str, ApiCall, ApiCall]]:
    """The outruns that must be reported: (time, number, poll before, poll after).

    An outrun counts when the number had a finished, non-empty listing before it (so
    the store knows the number as baselined, and a longest listing) and the first
    listing answered after it finished too. With several relays, the one polling
    after may not have read what the other learnt: then no relay may have started,
    been killed or reloaded from a little before the one until the other.
    """
    out = []
    finished = _finished_polls(plan, obs)
    changes: list[float] = []
    if plan.relays > 1:
        changes += obs.kills + [t for _, t in obs.hups]
        changes += [life.launched for lives in obs.lives for life in lives]
    for at, number in obs.outruns:
        answered = sorted(
            (c for c in obs.calls if c.number == number and c.status == 200 and c.end > at),
            key=lambda c: c.end,
        )
        before = [c for c in finished.get(number, []) if c.end < at]
        after = answered[0] if answered else None
        if not before or before[-1].size == 0 or after is None or after.start < at:
            continue
        first = before[-1]
        if after not in finished[number] or any(
            first.start - 2 * LEASE <= t <= after.end for t in changes
        ):
            continue
        out.append((at, number, first, after))
    return out


def _gaps(plan: Plan, obs: Observation) -> list[str]:
    """Check 4: each outrun the relay provably saw was logged as ``relay.poll.gap``."""
    out = []
    for at, number, first, after in gap_demands(plan, obs):
        needle = mask(number)
        if not any(
            t >= at and "relay.poll.gap" in line and needle in line
            for lines in obs.lines
            for t, line in lines
        ):
            out.append(
                f"no relay.poll.gap logged for {number} after the listing was outrun at "
                f"{at - obs.start:.2f}s (polls finished at {first.end - obs.start:.2f}s "
                f"and {after.end - obs.start:.2f}s)"
            )
    return out


def check(plan: Plan, obs: Observation) -> list[str]:
    """Every violation of the checks in the module docstring; empty when all hold."""
    out = list(obs.problems)
    out += _missing(plan, obs, demanded(plan, obs))
    out += _repeats(obs)
    out += _invented(plan, obs)
    out += _gaps(plan, obs)
    for index, lines in enumerate(obs.lines):
        out += [
            f"relay {index} logged: {line[:300]}"
            for _, line in lines
            if any(event in line for event in CRASH_EVENTS)
        ]
    if obs.integrity is not None and obs.integrity != "ok":
        out.append(f"SQLite integrity_check: {obs.integrity}")
    return out


# --- one schedule, start to verdict ------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The verdict on one schedule."""

    plan: Plan
    violations: tuple[str, ...]
    seconds: float
    summary: str
    logs: tuple[tuple[str, ...], ...] = ()

    @property
    def passed(self) -> bool:
        """No check failed."""
        return not self.violations

    def report(self) -> str:
        """What a failure prints: the seed and how to replay it, the violations, the
        plan, and the end of each relay's log."""
        shown = list(self.violations[:25])
        if len(self.violations) > 25:
            shown.append(f"... and {len(self.violations) - 25} more")
        parts = [
            f"chaos schedule seed {self.plan.seed} FAILED ({self.summary})",
            f"replay: {SEED_ENV}={self.plan.seed} pytest tests/test_chaos.py",
            *(f"  ! {v}" for v in shown),
            self.plan.describe(),
        ]
        for index, lines in enumerate(self.logs):
            parts.append(f"--- relay {index}: last {len(lines)} lines")
            parts += list(lines)
        return "\n".join(parts)


async def run_schedule(plan: Plan, workdir: Path, store_url: str) -> Outcome:
    """Run ``plan`` in ``workdir`` on ``store_url`` and judge it."""
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    observed = await run_plan(plan, workdir, store_url)
    violations = check(plan, observed)
    wanted = demanded(plan, observed)
    rules = {r: sum(1 for w in wanted.values() if w.startswith(r)) for r in "abc"}
    delivered = sum(len(d) for d in observed.deliveries)
    gaps = sum(1 for lines in observed.lines for _, line in lines if "relay.poll.gap" in line)
    summary = (
        f"{plan.store}, {len(observed.held)} messages, demanded a/b/c "
        f"{rules['a']}/{rules['b']}/{rules['c']}, {delivered} webhook requests, "
        f"{len(observed.kills)} kills, {len(observed.outruns)} outruns "
        f"({len(gap_demands(plan, observed))} checked for a gap), {gaps} gap lines, "
        f"{time.monotonic() - began:.1f}s"
    )
    logs = tuple(tuple(line for _, line in lines[-30:]) for lines in observed.lines)
    return Outcome(plan, tuple(violations), time.monotonic() - began, summary, logs)
