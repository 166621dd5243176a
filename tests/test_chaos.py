"""The randomized fault test: real relays through seeded schedules of faults (tests/chaos.py).

CI runs the schedules of :data:`CI_SEEDS` (SQLite with one relay, PostgreSQL with two or
three). ``RELAY_CHAOS_SEED=N pytest tests/test_chaos.py`` replays one seed;
``pytest --soak tests/test_chaos.py`` (or ``RELAY_SOAK=1``) runs ``RELAY_SOAK_SCHEDULES``
schedules (default 200) from seed ``RELAY_SOAK_FIRST_SEED`` (default 1000) on, and
prints a summary line.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import get_args

import pytest

from relay.testing.receiver import Delivery
from relay.testing.wire import SimMessage
from tests import chaos
from tests.chaos import (
    SEED_ENV,
    ApiCall,
    Life,
    Observation,
    Plan,
    check,
    fresh_schema,
    generate,
    run_schedule,
)

pytestmark = pytest.mark.anyio

#: Four SQLite schedules and three PostgreSQL ones (two with three relays): between them
#: every kind of step, fault and listing shape, ~50 s in all. Then the soak's finds:
#: 6019, 429s slowing the details of an id-only listing of 6 that moves past a message.
CI_SEEDS = (5, 10, 11, 20, 8, 21, 43, 6019)
SOAK_SCHEDULES = int(os.environ.get("RELAY_SOAK_SCHEDULES", "200"))
SOAK_FIRST_SEED = int(os.environ.get("RELAY_SOAK_FIRST_SEED", "1000"))


def _seeds() -> tuple[int, ...]:
    """The CI seeds, or the one seed to replay."""
    chosen = os.environ.get(SEED_ENV)
    return (int(chosen),) if chosen else CI_SEEDS


async def _run(seed: int, workdir: Path, request: pytest.FixtureRequest) -> chaos.Outcome:
    """Run the schedule of ``seed`` on the store its plan names."""
    plan = generate(seed)
    if plan.store == "sqlite":
        return await run_schedule(plan, workdir, f"sqlite:///{workdir / 'relay.db'}")
    with fresh_schema(str(request.getfixturevalue("postgres_url"))) as url:
        return await run_schedule(plan, workdir, url)


@pytest.mark.parametrize("seed", _seeds())
async def test_schedule(seed: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Through seed's schedule of kills, reloads, rotations and faults, every message
    the API showed reaches its webhooks under one id, none is invented, gaps are told."""
    outcome = await _run(seed, tmp_path, request)
    print(f"seed {seed}: {outcome.summary}")
    assert outcome.passed, outcome.report()


@pytest.mark.soak
@pytest.mark.timeout(120 + 45 * SOAK_SCHEDULES)
async def test_soak(
    soak: bool, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """Many schedules in a row (pytest --soak): every one passes its checks."""
    if not soak:
        pytest.skip("the soak runs with pytest --soak or RELAY_SOAK=1")
    seeds = range(SOAK_FIRST_SEED, SOAK_FIRST_SEED + SOAK_SCHEDULES)
    failed: list[chaos.Outcome] = []
    stores: Counter[str] = Counter()
    began = time.monotonic()
    for seed in seeds:
        outcome = await _run(seed, tmp_path / str(seed), request)
        stores[outcome.plan.store] += 1
        with capsys.disabled():
            verdict = "ok" if outcome.passed else "FAILED"
            print(f"\nchaos seed {seed} {verdict}: {outcome.summary}", flush=True)
        if not outcome.passed:
            failed.append(outcome)
    summary = (
        f"chaos soak: {len(seeds)} schedules ({stores['sqlite']} SQLite, "
        f"{stores['postgresql']} PostgreSQL) in {time.monotonic() - began:.0f}s, "
        f"{len(seeds) - len(failed)} passed, failed seeds: "
        f"{[o.plan.seed for o in failed] or 'none'}"
    )
    with capsys.disabled():
        print(f"\n{summary}", flush=True)
    assert not failed, summary + "\n\n" + "\n\n".join(o.report() for o in failed)


def test_a_seed_makes_one_plan() -> None:
    """The plan depends on the seed alone: a failure replays from its seed."""
    assert generate(42) == generate(42)
    assert generate(42) != generate(43)
    assert "seed 42" in generate(42).describe()


def test_plans_cover_the_fault_space() -> None:
    """Across the soak's seeds every step kind, both stores and every wire choice occur."""
    plans = [generate(seed) for seed in range(SOAK_FIRST_SEED, SOAK_FIRST_SEED + 200)]
    kinds = {step.kind for plan in plans for step in plan.steps}
    assert kinds == set(get_args(chaos.StepKind))
    assert {plan.store for plan in plans} == {"sqlite", "postgresql"}
    assert {plan.relays for plan in plans if plan.store == "postgresql"} == {2, 3}
    for name in ("envelope", "id_key", "from_key", "to_key", "time_format", "number_format"):
        assert len({getattr(plan.wire, name) for plan in plans}) >= 3, name
    assert {plan.wire.listing for plan in plans} == set(chaos.LISTING_SHAPES)
    limits = [plan.listing_limit for plan in plans]
    assert min(limits) < 10 and max(limits) > 500
    faults = {step.what for plan in plans for step in plan.steps if "fault" in step.kind}
    assert faults >= {"500", "503", "429", "slow", "reset", "timeout"}


# --- the checker, on observations made up to break one rule each ----------------

_AT = 1000.0


def _plan(**changes: object) -> Plan:
    """A small SQLite plan: one number, one webhook, a listing of 5."""
    plan = dataclasses.replace(
        generate(1),
        store="sqlite",
        relays=1,
        numbers=("+61400000101",),
        initial_numbers=1,
        national=(False,),
        receivers=1,
        routes=((0,),),
        listing_limit=5,
        backfill="all",
        steps=(),
    )
    return dataclasses.replace(plan, **changes)  # type: ignore[arg-type]


def _observation(count: int, delivered: list[tuple[int, str]]) -> Observation:
    """``count`` messages on one number, a relay up throughout, and the deliveries of
    (id, webhook-id) pairs, each verified and answered 204."""
    number = "+61400000101"
    held = {
        i: SimMessage(i, "+61412345678", number, f"m{i}", datetime(2026, 1, 1, tzinfo=timezone.utc))
        for i in range(1, count + 1)
    }
    deliveries = [
        Delivery(
            webhook_id=webhook_id,
            timestamp=0,
            headers={},
            body=b"",
            payload={
                "data": {
                    "id": str(i),
                    "number": number,
                    "from": held[i].sender if i in held else "+61412345678",
                    "to": number,
                    "text": held[i].text if i in held else "?",
                    "received_at": "2026-01-01T00:00:00Z",
                }
            },
            verified=True,
            error=None,
            received_at=_AT + 1,
        )
        for i, webhook_id in delivered
    ]
    return Observation(
        start=_AT,
        end=_AT + 10,
        calls=[ApiCall(_AT + 0.5, _AT + 0.51, "receive", number, 200, count)],
        inbox={number: list(held)},
        injected_at={i: _AT + 0.1 for i in held},
        held=held,
        lives=[[Life(_AT - 1, _AT - 0.5, None)]],
        lines=[[]],
        kills=[],
        hups=[],
        outruns=[],
        token_mismatch=[],
        configured={number: _AT - 0.5},
        deliveries=[deliveries],
        integrity="ok",
    )


def test_checker_passes_a_clean_run() -> None:
    """Everything listed delivered once under one id: no violation."""
    assert check(_plan(), _observation(3, [(1, "a"), (2, "b"), (3, "c")])) == []


def test_checker_flags_a_lost_message() -> None:
    """A message still listed at the end that never arrived is a loss."""
    violations = check(_plan(), _observation(3, [(1, "a"), (3, "c")]))
    assert len(violations) == 1 and "message 2" in violations[0], violations


def test_checker_flags_two_webhook_ids() -> None:
    """Two attempts of one message to one webhook under different ids are flagged."""
    violations = check(_plan(), _observation(2, [(1, "a"), (2, "b"), (2, "b2")]))
    assert any("2 webhook-ids" in v for v in violations), violations


def test_checker_flags_an_invented_message() -> None:
    """A delivery of an id the API never held is flagged."""
    violations = check(_plan(), _observation(1, [(1, "a"), (7, "x")]))
    assert any("never held" in v for v in violations), violations


def test_checker_does_not_demand_what_was_never_listed() -> None:
    """Messages pushed out of the listing before any poll saw them are not demanded."""
    observed = _observation(8, [(i, str(i)) for i in range(4, 9)])
    observed.calls = []  # never polled while 1-3 were listed
    observed.lives = [[Life(_AT - 1, _AT - 0.5, _AT + 0.2)], [Life(_AT + 9, _AT + 9.5, None)]]
    assert check(_plan(), observed) == []


def test_checker_demands_what_a_healthy_relay_should_have_polled() -> None:
    """A message listed for seconds while a relay was up and the API healthy is demanded
    even if no poll showed it (a relay that stopped polling loses it)."""
    observed = _observation(8, [(i, str(i)) for i in range(4, 9)])
    observed.calls = []
    observed.injected_at = {i: _AT + (0.1 if i <= 3 else 6.0) for i in observed.held}
    violations = check(_plan(), observed)
    assert len(violations) == 3 and all("rule c" in v for v in violations), violations


def test_checker_demands_a_gap_report() -> None:
    """An outrun between two finished polls with no relay.poll.gap logged is flagged."""
    number = "+61400000101"
    observed = _observation(12, [(i, str(i)) for i in range(1, 13)])
    observed.calls = [
        ApiCall(_AT + 0.2, _AT + 0.21, "receive", number, 200, 1),
        ApiCall(_AT + 1.0, _AT + 1.01, "receive", number, 200, 12),
        ApiCall(_AT + 1.5, _AT + 1.51, "receive", number, 200, 12),
    ]
    observed.outruns = [(_AT + 0.5, number)]
    assert any("relay.poll.gap" in v for v in check(_plan(), observed))
    observed.lines = [[(_AT + 1.1, "warning relay.poll.gap number=*********101 listed=5")]]
    assert check(_plan(), observed) == []
