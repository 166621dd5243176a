"""Never lost, whatever the API does: half-complete listings, gaps, late numbers, backfill."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from relay import admin
from relay.config import Backfill, Config
from relay.daemon import Relay
from relay.details import DETAILS_EAGER_RETRIES, DETAILS_GIVE_UP
from relay.metrics import Metrics, number_label
from relay.sentry import Alerts
from relay.service import Telemetry
from relay.store.schema import messages
from relay.testing.clock import FakeClock
from relay.testing.faults import Fault
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from relay.testing.wire import WireFormat
from tests.support import NUMBERS, SENDER, TOKEN, recording_sentry, relay_config

pytestmark = pytest.mark.anyio

NUMBER = NUMBERS[0]


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock that starts now, so the simulator's messages look recent."""
    return FakeClock(datetime.now(timezone.utc))


@pytest.fixture
async def fake_sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    """The simulator on the same fake clock as the relay."""
    async with Simulator(token=TOKEN, clock=clock) as s:
        yield s


def _one_number(sim: Simulator, receiver: WebhookReceiver, url: str, **kw: object) -> Config:
    return relay_config(sim.url, receiver.url, url, numbers=(NUMBER,), **kw)  # type: ignore[arg-type]


def _delivered(receiver: WebhookReceiver) -> list[dict[str, object]]:
    out = []
    for d in receiver.deliveries:
        assert d.verified
        data = d.payload["data"]
        assert isinstance(data, dict)
        out.append(data)
    return out


@pytest.mark.parametrize("shape", ["id_only", "no_sender", "no_text"])
async def test_half_complete_listings_deliver_every_message_once(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str, shape: str
) -> None:
    """Listings without a sender, a text or both deliver each message once, with the fields
    the details endpoint holds; nothing is skipped."""
    sim.wire = dataclasses.replace(sim.wire, listing=shape)  # type: ignore[arg-type]
    config = _one_number(sim, receiver, sqlite_url)
    async with Relay(config) as relay:
        await relay.poll_once()
        held = [
            sim.inject(SENDER, NUMBER, "Hello ✓"),
            sim.inject("Telstra", NUMBER, "Your bill is ready"),
            sim.inject("1234", NUMBER, "Code 5521"),
        ]
        for _ in range(3):  # more polls of the same listing deliver nothing again
            await relay.poll_once()
    got = {str(d["id"]): d for d in _delivered(receiver)}
    assert len(receiver.deliveries) == len(held)
    for m in held:
        data = got[str(m.id)]
        assert (data["from"], data["to"], data["text"]) == (m.sender, m.recipient, m.text)
    assert sim.requests["details"] == (0 if shape == "full" else len(held))


async def test_details_that_fail_leave_the_message_for_a_later_poll(
    fake_sim: Simulator, clock: FakeClock, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A message whose details answer 500 stays unrecorded and is tried again at every
    poll a few times (it may leave the listing soon), then backing off; once the details
    answer it is delivered, once."""
    sim = fake_sim
    sim.wire = WireFormat(listing="id_only")
    config = _one_number(sim, receiver, sqlite_url, interval=1.0)
    async with Relay(config, clock=clock) as relay:
        await relay.poll_once()
        message = sim.inject(SENDER, NUMBER, "later")
        failures = DETAILS_EAGER_RETRIES + 2
        sim.add_fault(Fault(status=500, path=f"/api/v2/sms/{message.id}", count=failures))
        for attempt in range(1, DETAILS_EAGER_RETRIES + 2):  # the first try and the eager ones
            result = await relay.poll_once()
            assert result.polls[0].incomplete == 1
            assert sim.requests["details"] == attempt
        assert not receiver.deliveries
        await relay.poll_once()  # backing off now: not asked again yet
        assert sim.requests["details"] == DETAILS_EAGER_RETRIES + 1
        clock.advance(1.0)
        await relay.poll_once()  # the last failure; next try after 2 s
        assert sim.requests["details"] == failures
        clock.advance(1.0)
        await relay.poll_once()
        assert sim.requests["details"] == failures
        clock.advance(1.0)
        last = await relay.poll_once()
        assert last.polls[0].new == 1
        for _ in range(2):
            await relay.poll_once()
    assert [d["text"] for d in _delivered(receiver)] == ["later"]


def _short_id_only_listing(sim: Simulator) -> None:
    """Listings of ids only, three long: three new messages move past any before them."""
    sim.wire = WireFormat(listing="id_only")
    sim.listing_limit = 3


#: What :func:`_move_past` injects.
MOVED_PAST = ["after 0", "after 1", "after 2"]


def _move_past(sim: Simulator) -> None:
    """Three new messages: the short listing no longer holds what came before them."""
    for text in MOVED_PAST:
        sim.inject(SENDER, NUMBER, text)


async def test_a_message_that_leaves_the_listing_before_its_details_is_still_delivered(
    fake_sim: Simulator, clock: FakeClock, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """Details failing while the listing moves past a message lose nothing: they are
    asked for by id on later polls, and the message is delivered once they answer."""
    sim = fake_sim
    _short_id_only_listing(sim)
    config = _one_number(sim, receiver, sqlite_url, interval=1.0)
    async with Relay(config, clock=clock) as relay:
        await relay.poll_once()
        message = sim.inject(SENDER, NUMBER, "scrolled")
        failures = DETAILS_EAGER_RETRIES + 2
        sim.add_fault(Fault(status=500, path=f"/api/v2/sms/{message.id}", count=failures))
        await relay.poll_once()  # listed, its details fail
        _move_past(sim)
        for _ in range(DETAILS_EAGER_RETRIES + 6):
            clock.advance(2.0)
            await relay.poll_once()
        assert sim.requests["details"] >= failures + 1 + 3
    texts = [d["text"] for d in _delivered(receiver)]
    assert sorted(texts) == [*MOVED_PAST, "scrolled"]


async def test_a_message_awaiting_its_details_survives_a_restart(
    fake_sim: Simulator, clock: FakeClock, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A message whose details have not come is in the store right after the poll that
    listed it (not only at shutdown); a relay started after the listing moved past it
    still completes it by id and delivers it once."""
    sim = fake_sim
    _short_id_only_listing(sim)
    config = _one_number(sim, receiver, sqlite_url, interval=1.0)
    async with Relay(config, clock=clock) as relay:
        await relay.poll_once()
        message = sim.inject(SENDER, NUMBER, "kept")
        sim.add_fault(Fault(status=500, path=f"/api/v2/sms/{message.id}", count=2))
        await relay.poll_once()
        stored = await relay.store.call(relay.store.sync.load_numbers, [NUMBER])
        assert [m.id for m in stored[NUMBER].awaiting] == [str(message.id)]
        assert stored[NUMBER].awaiting[0].text is None  # as listed: id-only
    _move_past(sim)  # while no relay runs
    clock.advance(5.0)
    async with Relay(config, clock=clock) as relay:
        for _ in range(4):
            clock.advance(2.0)
            await relay.poll_once()
        stored = await relay.store.call(relay.store.sync.load_numbers, [NUMBER])
    texts = sorted(str(d["text"]) for d in _delivered(receiver))
    assert texts == [*MOVED_PAST, "kept"]
    assert stored[NUMBER].awaiting == ()


async def test_a_relay_that_takes_a_number_over_completes_what_another_left_awaiting(
    sim: Simulator, receiver: WebhookReceiver, postgres_url: str
) -> None:
    """Two relays on PostgreSQL: the one that listed a message whose details failed stops;
    the other, started before the message existed, takes the number's lease, reads what
    was left awaiting details and delivers it once, though the listing moved past it."""
    _short_id_only_listing(sim)
    config = _one_number(sim, receiver, postgres_url)
    async with Relay(config) as second:
        async with Relay(config) as first:
            await first.poll_once()  # takes the number's lease; the baseline
            message = sim.inject(SENDER, NUMBER, "handed over")
            sim.add_fault(Fault(status=500, path=f"/api/v2/sms/{message.id}", count=1))
            result = await first.poll_once()
            assert result.polls[0].incomplete == 1
        _move_past(sim)  # the first relay is gone (its leases handed back)
        for _ in range(3):
            await second.poll_once()
    texts = sorted(str(d["text"]) for d in _delivered(receiver))
    assert texts == [*MOVED_PAST, "handed over"]


async def test_unresolvable_message_is_reported_once(
    fake_sim: Simulator,
    clock: FakeClock,
    receiver: WebhookReceiver,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Details that never come: the message is retried, reported once after
    DETAILS_GIVE_UP (log, metric, status), and never warned of on every poll."""
    sim = fake_sim
    sim.wire = WireFormat(listing="id_only")
    metrics = Metrics(process=False)
    config = _one_number(sim, receiver, sqlite_url, interval=1.0)
    async with Relay(config, clock=clock, events=Telemetry(metrics, Alerts())) as relay:
        await relay.poll_once()
        message = sim.inject(SENDER, NUMBER, "never")
        sim.add_fault(Fault(status=404, path=f"/api/v2/sms/{message.id}", count=10_000))
        with caplog.at_level(logging.WARNING, logger="relay"):
            for _ in range(40):
                clock.advance(DETAILS_GIVE_UP / 20)
                await relay.poll_once()
                await relay.store.call(
                    relay.store.sync.save_poll_states, relay.poller.take_changed_states()
                )
        found = admin.status(relay.store.sync, config)
    reports = [r for r in caplog.records if r.getMessage() == "relay.poll.unresolved"]
    assert len(reports) == 1
    assert found.numbers[0].unresolved == 1
    assert "1 unresolved" in admin.status_text(found)
    unresolved = _sample(
        metrics, "aatrox_relay_messages_unresolved_total", number=number_label(NUMBER)
    )
    assert unresolved == 1.0
    assert not receiver.deliveries
    assert "never" not in caplog.text


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    body, _ = metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def test_a_listing_that_outran_the_relay_is_a_gap(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """More messages between two polls than the listing holds: a gap is reported (log,
    metric, one Sentry event, status) and the number is polled again at once; the next
    overlapping listing closes it."""
    sim.listing_limit = 5
    metrics = Metrics(process=False)
    config = _one_number(sim, receiver, sqlite_url)
    with recording_sentry() as sentry_events:
        alerts = Alerts()
        async with Relay(config, events=Telemetry(metrics, alerts)) as relay:
            for i in range(3):
                sim.inject(SENDER, NUMBER, f"before {i}")
            await relay.poll_once()
            for i in range(2):
                sim.inject(SENDER, NUMBER, f"in step {i}")
            quiet = await relay.poll_once()
            assert not quiet.polls[0].gap
            for i in range(12):
                sim.inject(SENDER, NUMBER, f"burst {i}")
            polls = sim.requests["receive"]
            with caplog.at_level(logging.INFO, logger="relay"):
                summary = await relay.poll_once()
                assert sim.requests["receive"] == polls + 2  # polled again at once
                assert not summary.polls[0].gap  # the re-poll overlapped
                for i in range(12):
                    sim.inject(SENDER, NUMBER, f"second burst {i}")
                await relay.poll_once()
                gapped = admin.status(relay.store.sync, config)
                sim.inject(SENDER, NUMBER, "calm")
                await relay.poll_once()
            closed = admin.status(relay.store.sync, config)
    events = [r.getMessage() for r in caplog.records]
    assert events.count("relay.poll.gap") == 2
    assert "relay.poll.gap_closed" in events
    assert _sample(metrics, "aatrox_relay_poll_gaps_total", number=number_label(NUMBER)) == 2.0
    gap_events = [
        e for e in sentry_events.items("event") if "poll_gap" in json.dumps(e.get("tags", {}))
    ]
    assert len(gap_events) == 2  # one per episode: burst, then second burst
    assert NUMBER not in sentry_events.everything().decode()
    assert gapped.numbers[0].gaps == 2
    assert "began " not in admin.status_text(closed)
    open_gap = dataclasses.replace(closed.numbers[0], gap_since=closed.now - timedelta(seconds=3))
    shown = admin.status_text(dataclasses.replace(closed, numbers=(open_gap,)))
    assert "began 3s ago, 2 ever" in shown
    assert closed.numbers[0].gap_since is None
    assert "2 ever" in admin.status_text(closed)
    texts = {d["text"] for d in _delivered(receiver)}
    assert {f"burst {i}" for i in range(7, 12)} <= texts  # what the listing still held


async def test_backfill_none_delivers_what_came_after_the_number_was_configured(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A number added while the token is rejected: messages received before it was
    configured are backfill, the one received while polls failed is delivered."""
    now = datetime.now(timezone.utc)
    sim.inject(SENDER, NUMBER, "history", now - timedelta(hours=2))
    config = _one_number(sim, receiver, sqlite_url, backfill=Backfill("none"))
    sim.token = "rotated-away"
    async with Relay(config) as relay:
        failed = await relay.poll_once()
        assert failed.failed == 1
        sim.inject(SENDER, NUMBER, "while the token was rejected")
        sim.token = config.api.token
        ok = await relay.poll_once()
    assert (ok.polls[0].new, ok.polls[0].queued) == (2, 1)
    assert [d["text"] for d in _delivered(receiver)] == ["while the token was rejected"]


async def test_first_poll_of_a_long_id_only_listing_fetches_only_what_it_delivers(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """3,000 id-only items of history with slow details: backfill "none" fetches none of
    them, the first poll completes and baselines the number, and what came later is
    delivered."""
    sim.wire = WireFormat(listing="id_only")
    sim.listing_limit = 5000
    old = datetime.now(timezone.utc) - timedelta(days=1)
    for i in range(3000):
        sim.inject(SENDER, NUMBER, f"old {i}", old + timedelta(seconds=i))
    sim.details_delay = 0.2
    config = _one_number(sim, receiver, sqlite_url, backfill=Backfill("none"))
    async with Relay(config) as relay:
        first = await relay.poll_once()
        assert first.polls[0].error is None
        assert first.polls[0].new == 3000
        assert sim.requests["details"] == 0
        sim.inject(SENDER, NUMBER, "new")
        await relay.poll_once()
    assert sim.requests["details"] == 1
    assert [d["text"] for d in _delivered(receiver)] == ["new"]


async def test_slow_details_keep_what_each_poll_completed(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """More id-only messages than one poll's details budget can fetch: each poll records
    what it completed, and every message arrives once in the end."""
    sim.wire = WireFormat(listing="id_only")
    config = _one_number(sim, receiver, sqlite_url)
    config = dataclasses.replace(config, api=dataclasses.replace(config.api, timeout=0.3))
    async with Relay(config) as relay:
        await relay.poll_once()
        held = [sim.inject(SENDER, NUMBER, f"m{i}") for i in range(150)]
        sim.details_delay = 0.1  # 8 at a time: about 70 in the 0.9 s a poll has
        first = await relay.poll_once()
        assert 0 < first.polls[0].new < len(held)
        sim.details_delay = 0.0
        for _ in range(3):
            await relay.poll_once()
        with relay.store.sync.engine.connect() as conn:
            stored = conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one()
    assert stored == len(held)
    assert sorted(str(d["id"]) for d in _delivered(receiver)) == sorted(str(m.id) for m in held)


async def test_a_replayed_delivery_does_not_inflate_the_latency_histogram(
    fake_sim: Simulator, clock: FakeClock, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A dead letter replayed a day later is delivered and counted, but its day-long wait
    is not observed as delivery latency; a first delivery is."""
    sim = fake_sim
    metrics = Metrics(process=False)
    receiver.respond(Rule(status=410, times=1))
    config = _one_number(sim, receiver, sqlite_url)
    async with Relay(config, clock=clock, events=Telemetry(metrics, Alerts())) as relay:
        await relay.poll_once()
        sim.inject(SENDER, NUMBER, "dead, then replayed")
        await relay.poll_once()  # 410: dead at once
        clock.advance(86400)
        assert relay.store.sync.replay(dead=True).queued == 1
        sim.inject(SENDER, NUMBER, "fresh")
        await relay.poll_once()
    name = "aatrox_relay_delivery_latency_seconds_count"
    # The fake clock is a day ahead of the receiver's: signatures look stale to it.
    texts = [d.payload["data"]["text"] for d in receiver.deliveries if d.status == 204]  # type: ignore[index]
    assert texts == ["dead, then replayed", "fresh"]
    assert _sample(metrics, name, webhook="hook") == 1.0
    assert _sample(metrics, "aatrox_relay_delivery_latency_seconds_sum", webhook="hook") < 60
