"""Shared fixtures: real stores (a SQLite file, a PostgreSQL schema), clocks.

Async tests use anyio's pytest plugin (anyio ships with httpx) on asyncio.

PostgreSQL: tests reach it at $RELAY_TEST_POSTGRES (default
postgresql+psycopg://postgres@127.0.0.1:5432/test), each in a schema of its
own that is dropped afterwards. Where it cannot be reached they skip, unless
RELAY_REQUIRE_POSTGRES=1 (as in CI), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from relay.testing.clock import FakeClock
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import KEY, TOKEN, event_problems

PG_URL = os.environ.get("RELAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak``: also run the long randomized fault test (tests/test_chaos.py)."""
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the chaos soak: $RELAY_SOAK_SCHEDULES schedules (default 200); "
        "RELAY_SOAK=1 does the same",
    )


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    """Whether the chaos soak runs: ``pytest --soak`` or ``RELAY_SOAK=1``."""
    return bool(request.config.getoption("--soak")) or os.environ.get("RELAY_SOAK") == "1"


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio only: the relay is asyncio-based."""
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when a test says so."""
    return FakeClock()


@pytest.fixture
def now_clock() -> FakeClock:
    """A fake clock starting at the real time, so signature timestamps look fresh."""
    return FakeClock(datetime.now(timezone.utc).replace(microsecond=0))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A real SQLite file of this test's own."""
    return f"sqlite:///{tmp_path / 'relay.db'}"


def _postgres_unavailable(reason: str) -> None:
    if os.environ.get("RELAY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (RELAY_REQUIRE_POSTGRES=1) but {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL into a fresh PostgreSQL schema of this test's own, dropped afterwards."""
    try:
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except (sa.exc.OperationalError, ImportError) as exc:
        _postgres_unavailable(str(exc).splitlines()[0])
    schema = f"relay_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs on a SQLite file and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """The project's Aatrox API simulator on loopback, accepting TOKEN."""
    async with Simulator(token=TOKEN) as s:
        yield s


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver on loopback that verifies signatures made with KEY; every
    signed body it got must be an event docs/events.schema.json describes."""
    async with WebhookReceiver(KEY) as r:
        yield r
    problems = [
        f"{d.webhook_id}: {problem}"
        for d in r.deliveries
        if d.verified
        for problem in event_problems(d.payload)
    ]
    assert not problems, "payloads outside docs/events.schema.json:\n" + "\n".join(problems)


@pytest.fixture
async def peers(
    sim: Simulator, receiver: WebhookReceiver
) -> AsyncIterator[tuple[Simulator, WebhookReceiver]]:
    """The simulator and the receiver together."""
    yield sim, receiver
