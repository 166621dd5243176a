"""The store on a real SQLite file and a real PostgreSQL: dedup, atomicity, outcomes, pruning."""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from relay.daemon import InstanceLock
from relay.inbound import InboundMessage
from relay.migrations import HEAD
from relay.store import (
    Outcome,
    Pruned,
    Reply,
    SavedPollState,
    SendOutcome,
    Store,
    webhook_id,
)
from relay.store.schema import (
    DEAD,
    DELIVERED,
    FAILED,
    PENDING,
    SENT,
    UNKNOWN,
    deliveries,
    messages,
    outbound,
)
from relay.testing.clock import FakeClock

NUMBER = "+61400000001"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def msg(i: int, *, at: datetime | None = None, text: str = "hello") -> InboundMessage:
    """A message with provider id ``str(i)``."""
    return InboundMessage(
        id=str(i),
        sender="+61412345678",
        recipient=NUMBER,
        text=text,
        received_at=at or T0 + timedelta(seconds=i),
    )


@pytest.fixture
def store(store_url: str, clock: FakeClock) -> Iterator[Store]:
    """A migrated store."""
    s = Store.open(store_url, clock)
    yield s
    s.close()


def both(_m: InboundMessage) -> tuple[str, ...]:
    """Queue every message to two webhooks."""
    return ("a", "b")


class QueryCounter:
    """Counts statements sent to the database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        self.engine = engine
        sa.event.listen(engine, "before_cursor_execute", self._on)

    def _on(self, *_args: Any) -> None:
        self.count += 1

    def close(self) -> None:
        """Stop counting."""
        sa.event.remove(self.engine, "before_cursor_execute", self._on)


def test_migrate_is_idempotent(store: Store) -> None:
    """Migrating an up-to-date store again changes nothing and does not fail."""
    store.migrate()
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD


def test_record_queues_one_delivery_per_webhook(store: Store) -> None:
    """A new message is recorded once with a pending delivery for each target webhook."""
    result = store.record(NUMBER, [msg(1), msg(2)], both)
    assert (result.messages, result.deliveries) == (2, 4)
    due = store.claim("a", 10)
    assert [d.provider_id for d in due] == ["1", "2"]
    assert due[0].webhook_id == webhook_id(NUMBER, "1", "a")
    assert due[0].received_at == T0 + timedelta(seconds=1)
    assert due[0].received_at.tzinfo is not None


def test_dedup_survives_reopening(store_url: str, clock: FakeClock) -> None:
    """Ids recorded before a restart are known after it, and recording them again queues nothing."""
    first = Store.open(store_url, clock)
    first.record(NUMBER, [msg(1), msg(2)], both)
    first.close()
    again = Store.open(store_url, clock)
    try:
        assert again.known_ids(NUMBER, ["1", "2", "3"]) == {"1", "2"}
        result = again.record(NUMBER, [msg(2), msg(3)], both)
        assert (result.messages, result.deliveries) == (1, 2)
        assert again.counts()[PENDING] == 6
        assert again.known_numbers() == {NUMBER}
    finally:
        again.close()


def test_ids_are_per_number(store: Store) -> None:
    """The same provider id on another number is another message."""
    store.record(NUMBER, [msg(1)], both)
    assert store.known_ids("+61400000002", ["1"]) == set()


def test_record_is_one_transaction(store: Store) -> None:
    """If queueing fails midway, the message is not recorded as seen either."""

    def explode(_m: InboundMessage) -> tuple[str, ...]:
        raise RuntimeError("crash while queueing")

    with pytest.raises(RuntimeError):
        store.record(NUMBER, [msg(1)], explode)
    assert store.known_ids(NUMBER, ["1"]) == set()
    assert store.known_numbers() == set()


def test_known_ids_batches_lookups(store: Store) -> None:
    """Looking up a 1,000-message window costs two queries, not a thousand."""
    store.record(NUMBER, [msg(i) for i in range(1000)], both)
    counter = QueryCounter(store.engine)
    try:
        known = store.known_ids(NUMBER, [str(i) for i in range(1000)])
    finally:
        counter.close()
    assert len(known) == 1000
    assert counter.count <= 2


def test_record_of_a_batch_costs_bounded_queries(store: Store) -> None:
    """Recording 1,000 new messages is a handful of statements, not thousands."""
    counter = QueryCounter(store.engine)
    try:
        store.record(NUMBER, [msg(i) for i in range(1000)], both)
    finally:
        counter.close()
    assert counter.count <= 20


def test_outcomes_move_deliveries(store: Store, clock: FakeClock) -> None:
    """Delivered and dead leave the queue; a retry is due again only at its time."""
    store.record(NUMBER, [msg(1), msg(2), msg(3)], lambda _m: ("a",))
    d1, d2, d3 = store.claim("a", 10)
    later = clock.now() + timedelta(seconds=30)
    store.save_outcomes(
        [
            Outcome(d1.id, clock.now(), DELIVERED, status=204),
            Outcome(d2.id, clock.now(), PENDING, later, 503, "HTTP 503"),
            Outcome(d3.id, clock.now(), DEAD, status=410, error="HTTP 410"),
        ]
    )
    assert store.claim("a", 10) == []
    assert store.next_due("a") == later
    clock.advance(30)
    (retry,) = store.claim("a", 10)
    assert (retry.id, retry.attempts, retry.webhook_id) == (d2.id, 1, d2.webhook_id)
    assert store.counts() == {PENDING: 1, DELIVERED: 1, DEAD: 1}


def test_claims_are_exclusive_until_they_expire(store_url: str, clock: FakeClock) -> None:
    """A delivery claimed by one relay is not handed to another until the claim runs out."""
    one = Store.open(store_url, clock, relay_id="one", lease=15)
    two = Store.open(store_url, clock, relay_id="two", lease=15, migrate=False)
    try:
        one.record(NUMBER, [msg(1), msg(2)], lambda _m: ("a",))
        first = one.claim("a", 1)
        assert [d.provider_id for d in two.claim("a", 10)] == ["2"]
        assert one.claim("a", 10) == []
        assert one.next_due("a") == clock.now() + timedelta(seconds=15)  # two's claim
        clock.advance(16)  # relay one died: its claim lapses
        assert [d.provider_id for d in two.claim("a", 10)] == [first[0].provider_id, "2"]
    finally:
        one.close()
        two.close()


def test_outcome_releases_the_claim_and_queues_its_replies_once(
    store: Store, clock: FakeClock
) -> None:
    """A delivered outcome's replies are queued once each, in order, even if the outcome is
    saved twice (a second answer with more replies adds only the parts not yet queued)."""
    store.record(NUMBER, [msg(1), msg(2)], lambda _m: ("a",))
    d, other = store.claim("a", 10)
    replies = (Reply(NUMBER, "+61412345678", "Thanks!"), Reply(NUMBER, "+61412345678", "Bye"))
    store.save_outcomes([Outcome(d.id, clock.now(), DELIVERED, status=200, replies=replies)])
    store.save_outcomes([Outcome(d.id, clock.now(), DELIVERED, status=200, replies=replies)])
    store.save_outcomes([Outcome(other.id, clock.now(), DELIVERED, replies=replies[:1])])
    query = "SELECT delivery_id, part, kind, text, recipients FROM outbound ORDER BY id"
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text(query)).all()
        claimed = conn.execute(sa.text("SELECT claimed_by FROM deliveries")).scalars().all()
    assert [tuple(r) for r in rows] == [
        (d.id, 0, "reply", "Thanks!", '["+61412345678"]'),
        (d.id, 1, "reply", "Bye", '["+61412345678"]'),
        (other.id, 0, "reply", "Thanks!", '["+61412345678"]'),
    ]
    assert claimed == [None, None]


def test_a_deliverys_replies_are_claimed_in_order(store: Store, clock: FakeClock) -> None:
    """A delivery's second reply is neither claimed nor counted as due while its first is
    pending (claimed or waiting for a retry); once the first is settled, sent or failed
    alike, it is. Other SMS are never held back."""
    store.record(NUMBER, [msg(1)], lambda _m: ("a",))
    (d,) = store.claim("a", 10)
    replies = tuple(Reply(NUMBER, "+61412345678", text) for text in ("one", "two", "three"))
    store.save_outcomes([Outcome(d.id, clock.now(), DELIVERED, replies=replies)])
    send = store.queue_send(NUMBER, ["+61412345679"], "unrelated")
    first, unrelated = store.claim_outbound(10)
    assert (first.text, unrelated.id) == ("one", send)
    store.record_send(send, clock.now(), SendOutcome(SENT, 200, None, sent_at=clock.now()))
    assert store.claim_outbound(10) == [] and store.next_outbound_due() is None
    later = clock.now() + timedelta(seconds=30)
    retry = SendOutcome(PENDING, 503, "HTTP 503", next_attempt_at=later)
    store.record_send(first.id, clock.now(), retry)
    assert store.claim_outbound(10) == [] and store.next_outbound_due() == later
    clock.advance(30)
    (again,) = store.claim_outbound(10)
    store.record_send(again.id, clock.now(), SendOutcome(FAILED, 400, "HTTP 400"))
    (second,) = store.claim_outbound(10)
    assert second.text == "two" and store.claim_outbound(10) == []
    store.record_send(second.id, clock.now(), SendOutcome(SENT, 200, None, sent_at=clock.now()))
    assert [s.text for s in store.claim_outbound(10)] == ["three"]


def test_prune_keeps_what_is_unsettled(store: Store, clock: FakeClock) -> None:
    """Old delivered messages go; old pending ones and recent dead letters stay."""
    store.record(NUMBER, [msg(1), msg(2), msg(3), msg(4)], lambda _m: ("a",))
    d1, _d2, d3, d4 = store.claim("a", 10)
    store.save_outcomes(
        [
            Outcome(d1.id, clock.now(), DELIVERED, status=200),
            Outcome(d3.id, clock.now(), DEAD, error="HTTP 410"),
        ]
    )
    clock.advance(86400 * 2)
    store.save_outcomes([Outcome(d4.id, clock.now(), DEAD, error="HTTP 410")])
    pruned = store.prune(retention=86400)
    assert pruned == 2  # message 1 (delivered) and 3 (dead before the horizon)
    assert store.known_ids(NUMBER, ["1", "2", "3", "4"]) == {"2", "4"}
    with store.engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar()
        assert left == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar() == 2


def test_failures_are_noted_without_baselining(store: Store) -> None:
    """A number failing from the start shows its failures; its backfill is still ahead."""
    failing = "+61400000009"
    store.record_failure(failing, "HTTP 500")
    store.record_failure(failing, "HTTP 401")
    assert store.known_numbers() == set()
    query = sa.text("SELECT consecutive_failures, last_error FROM numbers WHERE number = :n")
    with store.engine.connect() as conn:
        assert tuple(conn.execute(query, {"n": failing}).one()) == (2, "HTTP 401")
    store.record(failing, [], both)
    assert store.known_numbers() == {failing}
    with store.engine.connect() as conn:
        assert tuple(conn.execute(query, {"n": failing}).one()) == (0, None)


def test_text_round_trips(store: Store) -> None:
    """Emoji and non-Latin text come back exactly as stored."""
    text = "こんにちは 👋 — ünïcödé"
    store.record(NUMBER, [msg(1, text=text)], lambda _m: ("a",))
    assert store.claim("a", 1)[0].text == text


def test_numbers_remember_when_they_were_first_configured(store: Store, clock: FakeClock) -> None:
    """load_numbers marks a number configured once, keeps that moment across loads, and
    gives one known only from failed polls its moment too."""
    failing = "+61400000009"
    store.record_failure(failing, "HTTP 401")
    first = store.load_numbers([NUMBER, failing])
    assert first[NUMBER].configured_at == T0
    assert first[failing].configured_at == T0
    assert first[NUMBER].first_polled_at is None
    clock.advance(3600)
    store.record(NUMBER, [msg(1)], both)
    again = store.load_numbers([NUMBER, failing, "+61400000003"])
    assert again[NUMBER].configured_at == T0
    assert again[NUMBER].first_polled_at == T0 + timedelta(hours=1)
    assert again["+61400000003"].configured_at == T0 + timedelta(hours=1)


def test_poll_state_round_trips(store: Store) -> None:
    """Gap state and the longest listing saved by save_poll_states come back on load."""
    store.load_numbers([NUMBER])
    row = SavedPollState(
        number=NUMBER,
        last_poll_at=T0,
        last_success_at=T0,
        consecutive_failures=0,
        last_error=None,
        longest_listing=1000,
        gap_since=T0,
        gaps=3,
        unresolved=2,
    )
    store.save_poll_states([row])
    loaded = store.load_numbers([NUMBER])[NUMBER]
    assert (loaded.longest_listing, loaded.gap_since, loaded.gaps) == (1000, T0, 3)
    store.save_poll_states([dataclasses.replace(row, gap_since=None)])
    assert store.load_numbers([NUMBER])[NUMBER].gap_since is None


def test_prune_deletes_settled_outbound_sms(store: Store, clock: FakeClock) -> None:
    """Retention deletes outbound SMS sent, failed or unknown before the horizon, keeps
    pending and recent ones, and a kept reply whose delivery goes loses only the link."""
    store.record(NUMBER, [msg(1), msg(2)], lambda _m: ("a",))
    d1, d2 = store.claim("a", 10)
    reply = Reply(NUMBER, "+61412345678", "Thanks!")
    store.save_outcomes(
        [
            Outcome(d1.id, clock.now(), DELIVERED, status=200, replies=(reply,)),
            Outcome(d2.id, clock.now(), DELIVERED, status=200, replies=(reply,)),
        ]
    )
    with store.engine.connect() as conn:
        sent_reply, pending_reply = conn.scalars(sa.select(outbound.c.id).order_by(outbound.c.id))
    store.record_send(sent_reply, clock.now(), SendOutcome(SENT, None, None, sent_at=clock.now()))
    old = {}
    for state in (SENT, FAILED, UNKNOWN, PENDING):
        old[state] = store.queue_send(NUMBER, ["+61412345678"], f"old {state}")
        store.record_send(old[state], clock.now(), SendOutcome(state, None, None))
    clock.advance(2 * 86400)
    recent = store.queue_send(NUMBER, ["+61412345678"], "recent")
    store.record_send(recent, clock.now(), SendOutcome(SENT, None, None, sent_at=clock.now()))

    pruned = store.apply_retention(86400)

    assert pruned == Pruned(messages=2, outbound=4)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(outbound.c.id, outbound.c.delivery_id))
        left = {row.id: row.delivery_id for row in rows}
    assert left == {pending_reply: None, old[PENDING]: None, recent: None}


@pytest.fixture
def wide_umask() -> Iterator[None]:
    """The umask of a shell outside systemd (022): files are created world-readable."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def _modes(directory: Path) -> dict[str, int]:
    """The permission bits of every file in ``directory``, by name."""
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


@pytest.mark.usefixtures("wide_umask")
def test_a_new_sqlite_store_is_private(tmp_path: Path, clock: FakeClock) -> None:
    """Under umask 022 the database, its -wal and -shm are created 0600, and stay so
    when the store is opened again."""
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    for _ in range(2):
        store = Store.open(url, clock)
        store.record(NUMBER, [msg(1)], both)
        modes = _modes(tmp_path)
        assert set(modes) == {"relay.db", "relay.db-wal", "relay.db-shm"}
        assert set(modes.values()) == {0o600}, {name: oct(m) for name, m in modes.items()}
        store.close()


@pytest.mark.usefixtures("wide_umask")
def test_a_readable_sqlite_store_is_tightened_with_a_warning(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A store left 0644 by an older relay, its -wal and -shm too, is made 0600 on open,
    with one relay.store.permissions_tightened warning per file."""
    db = tmp_path / "relay.db"
    older = sqlite3.connect(db)  # kept open, so its -wal and -shm stay on disk
    older.execute("PRAGMA journal_mode=WAL")
    older.execute("CREATE TABLE t (x)")
    older.commit()
    assert set(_modes(tmp_path).values()) == {0o644}
    try:
        with caplog.at_level(logging.WARNING, logger="relay.store"):
            Store.open(f"sqlite:///{db}", clock).close()
    finally:
        older.close()
    tightened = [
        Path(r.__dict__["relay_fields"]["path"]).name
        for r in caplog.records
        if r.getMessage() == "relay.store.permissions_tightened"
    ]
    assert sorted(tightened) == ["relay.db", "relay.db-shm", "relay.db-wal"]
    assert set(_modes(tmp_path).values()) <= {0o600}


@pytest.mark.usefixtures("wide_umask")
def test_the_instance_lock_is_private(tmp_path: Path) -> None:
    """The lock file beside a SQLite store is created 0600, and tightened if it was not."""
    lock = InstanceLock(tmp_path / "relay.db")
    lock.acquire()
    lock.release()
    assert _modes(tmp_path) == {"relay.db.lock": 0o600}
    os.chmod(tmp_path / "relay.db.lock", 0o644)
    lock.acquire()
    lock.release()
    assert _modes(tmp_path) == {"relay.db.lock": 0o600}
