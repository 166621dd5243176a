"""Migrations: HEAD kept in step with Alembic, no Alembic at all for a store at head, and
relays started together on a fresh PostgreSQL database taking turns to migrate."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from relay.clock import SystemClock
from relay.migrations import HEAD, SCRIPT_LOCATION, revision
from relay.store import Store
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import RelayProcess, write_config

ROOT = Path(__file__).resolve().parent.parent
#: Relays started at once on one fresh database.
TOGETHER = 3
#: Three interpreters importing the relay at once on a loaded two-core machine.
START_TIMEOUT = 60.0


def alembic_head() -> str | None:
    """The head revision Alembic finds in relay/migrations/versions."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    return ScriptDirectory.from_config(config).get_current_head()


def test_head_is_alembics_head() -> None:
    """relay.migrations.HEAD names the newest migration: a new one without a bump fails here."""
    assert alembic_head() == HEAD


def test_a_store_at_head_opens_without_alembic(sqlite_url: str) -> None:
    """The first open migrates; opening a store at head neither migrates nor imports Alembic."""
    store = Store.open(sqlite_url, SystemClock(), migrate=False)
    try:
        assert store.migrate() is True
        assert store.migrate() is False
        with store.engine.connect() as conn:
            assert revision(conn) == HEAD
    finally:
        store.close()
    code = (
        "import sys; import relay.service; from relay.clock import SystemClock; "
        "from relay.store import Store; Store.open(sys.argv[1], SystemClock()).close(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, sqlite_url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def _started(relay: RelayProcess) -> None:
    """Wait for ``relay.started``; fail at once, with its last lines, if it exits first."""
    starting = asyncio.create_task(relay.start(START_TIMEOUT))
    while relay.proc is None and not starting.done():
        await asyncio.sleep(0.01)
    assert relay.proc is not None
    exited = asyncio.create_task(relay.proc.wait())
    await asyncio.wait({starting, exited}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        exited.cancel()
        starting.result()
        return
    starting.cancel()
    await asyncio.sleep(0.2)  # the rest of its stderr
    tail = "\n".join(relay.lines[-5:])
    pytest.fail(f"a relay exited with {relay.proc.returncode} before starting:\n{tail}")


@pytest.mark.anyio
async def test_three_relays_started_at_once_on_a_fresh_postgres_database_all_start(
    tmp_path: Path, sim: Simulator, receiver: WebhookReceiver, postgres_url: str
) -> None:
    """Three `aatrox-relay run` on one empty database at once: all reach relay.started,
    exactly one of them migrates, and the schema is at head."""
    config = write_config(tmp_path / "relay.toml", sim.url, receiver.url, postgres_url)
    relays = [RelayProcess(config) for _ in range(TOGETHER)]
    try:
        await asyncio.gather(*(_started(relay) for relay in relays))
    finally:
        codes = [
            await relay.terminate()
            for relay in relays
            if relay.proc is not None and relay.proc.returncode is None
        ]
    assert codes == [0] * TOGETHER
    migrated = [line for relay in relays for line in relay.lines if "relay.store.migrated" in line]
    assert len(migrated) == 1, migrated
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert revision(conn) == alembic_head()
    finally:
        engine.dispose()


def _upgrade_to(conn: sa.Connection, target: str) -> None:
    from alembic import command

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = conn
    command.upgrade(config, target)


def _reply_of_a_delivery(conn: sa.Connection) -> None:
    """Message 7, its delivery 11 to "crm", and reply 5 (sent) that delivery caused."""
    conn.execute(
        sa.text(
            "INSERT INTO messages (id, number, provider_id, sender, recipient, text,"
            " received_at, seen_at) VALUES (7, '+61400000001', 'm7', '+61412345678',"
            " '+61400000001', 'hi', '2026-12-01 00:00:00', '2026-12-01 00:00:01')"
        )
    )
    conn.execute(
        sa.text(
            "INSERT INTO deliveries (id, message_id, webhook, webhook_id, state, attempts,"
            " queued_at, next_attempt_at) VALUES (11, 7, 'crm', 'msg_x', 'delivered', 1,"
            " '2026-12-01 00:00:01', '2026-12-01 00:00:01')"
        )
    )
    conn.execute(
        sa.text(
            "INSERT INTO outbound (id, kind, delivery_id, sender, recipients, text, state,"
            " attempts, queued_at, next_attempt_at) VALUES (5, 'reply', 11,"
            " '+61400000001', '[\"+61412345678\"]', 'ok', 'sent', 1,"
            " '2026-12-01 00:00:02', '2026-12-01 00:00:02')"
        )
    )


@contextmanager
def _migrated_from(store_url: str, revision: str) -> Iterator[Store]:
    """A store at ``revision`` holding :func:`_reply_of_a_delivery`, migrated to HEAD."""
    store = Store.open(store_url, SystemClock(), migrate=False)
    try:
        with store.engine.begin() as conn:
            _upgrade_to(conn, revision)
            _reply_of_a_delivery(conn)
        assert store.migrate() is True
        yield store
    finally:
        store.close()


def test_0006_keeps_every_delivery_and_every_replys_link_to_its_delivery(store_url: str) -> None:
    """Rebuilding ``deliveries`` for outbound events (0006) keeps its rows and the replies'
    ``delivery_id`` (on SQLite, dropping the old table would null them: ON DELETE SET NULL)."""
    with _migrated_from(store_url, "0005") as store:
        with store.engine.connect() as conn:
            assert revision(conn) == HEAD
            row = conn.execute(
                sa.text("SELECT message_id, webhook_id, event, data FROM deliveries WHERE id = 11")
            ).one()
            link = conn.execute(sa.text("SELECT delivery_id FROM outbound WHERE id = 5")).scalar()
        assert tuple(row) == (7, "msg_x", "sms.received", None)
        assert link == 11


def test_0009_makes_a_reply_part_0_and_lets_a_delivery_have_more(store_url: str) -> None:
    """After 0009 (``outbound`` rebuilt on SQLite) an existing reply is part 0 of its
    delivery, still linked to it; a second part may join it, a repeated part may not; and
    deleting the delivery still only unlinks its replies (ON DELETE SET NULL kept)."""
    more = sa.text(
        "INSERT INTO outbound (kind, delivery_id, part, sender, recipients, text, state,"
        " queued_at, next_attempt_at) VALUES ('reply', 11, :part, '+61400000001', '[]', 'more',"
        " 'pending', '2026-12-01 00:00:02', '2026-12-01 00:00:02')"
    )
    with _migrated_from(store_url, "0008") as store:
        with store.engine.begin() as conn:
            assert conn.execute(sa.text("SELECT delivery_id, part FROM outbound")).all() == [
                (11, 0)
            ]
            conn.execute(more, {"part": 1})
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            conn.execute(more, {"part": 1})
        with store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM deliveries WHERE id = 11"))
            links = conn.execute(sa.text("SELECT delivery_id FROM outbound ORDER BY id")).all()
        assert links == [(None,), (None,)]
