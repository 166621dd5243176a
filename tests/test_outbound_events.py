"""Outbound events: a webhook with ``sms.sent`` or ``sms.failed`` in ``events`` is told
what became of every SMS the relay sends (replies, ``POST /v1/send``, ``aatrox-relay
send``), once each, queued in the transaction that records the outcome."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import SMS_FAILED, SMS_RECEIVED, SMS_SENT, NumberConfig, WebhookConfig, load
from relay.daemon import Relay
from relay.errors import ConfigError
from relay.outbound_events import OutboundEvents, event_webhook_id
from relay.retry import Backoff
from relay.store import (
    DELIVERED,
    FAILED,
    PENDING,
    SENT,
    UNKNOWN,
    OutboundSms,
    Outcome,
    SendOutcome,
    Store,
)
from relay.testing.clock import FakeClock
from relay.testing.faults import Fault
from relay.testing.receiver import Delivery, Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import (
    API,
    NUMBERS,
    SECRET,
    SEND_TOKEN,
    SENDER,
    T0,
    RelayProcess,
    cli,
    relay_config,
    running,
    time_limit,
    webhook_config,
    write_config,
)

HOOK = (
    '[[webhooks]]\nname = "crm"\nurl = "https://hooks.example.com/sms"\n'
    'secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="\n'
)
AUDIT_EVENTS = frozenset((SMS_SENT, SMS_FAILED))


def load_events(tmp_path: Path, line: str) -> frozenset[str]:
    """The ``events`` of one webhook configured with ``line``."""
    path = tmp_path / "relay.toml"
    path.write_text(API + HOOK + line)
    return load(path, environ={}).webhooks[0].events


def test_events_default_to_received_and_are_read_from_the_config(tmp_path: Path) -> None:
    """No ``events``: sms.received only; a list names exactly the types sent."""
    assert load_events(tmp_path, "") == {SMS_RECEIVED}
    assert load_events(tmp_path, 'events = ["sms.sent", "sms.failed"]\n') == AUDIT_EVENTS


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('events = ["sms.recieved"]\n', 'webhooks[0].events[0]: "sms.recieved" is not an event'),
        ('events = ["sms.sent", "sent"]\n', 'webhooks[0].events[1]: "sent" is not an event'),
        ("events = []\n", "webhooks[0].events: is empty"),
        ('events = "sms.sent"\n', "webhooks[0].events: expected an array of strings"),
    ],
    ids=["typo", "second", "empty", "not-a-list"],
)
def test_a_bad_events_list_is_a_one_line_error(tmp_path: Path, line: str, error: str) -> None:
    """Each mistake in ``events`` is one line naming the key."""
    with pytest.raises(ConfigError) as caught:
        load_events(tmp_path, line)
    assert str(caught.value).startswith(error)
    assert "\n" not in str(caught.value)


def sms(kind: str = "send", sender: str = NUMBERS[0], reply_to: str | None = None) -> OutboundSms:
    """An outbound SMS as the outbox claims it."""
    return OutboundSms(7, kind, sender, (SENDER,), "Your table is ready", False, 0, T0, reply_to)


def test_who_is_told_follows_events_and_the_numbers_webhooks_list() -> None:
    """Subscribed webhooks are told; an SMS from a configured number only those it lists;
    one from any other sender every subscriber; pending or unknown outcomes nobody."""
    hooks = [
        webhook_config("http://x/a", name="a", events=AUDIT_EVENTS),
        webhook_config("http://x/b", name="b", events=frozenset((SMS_SENT,))),
        webhook_config("http://x/c", name="c"),
    ]
    told = OutboundEvents(hooks, [NumberConfig(NUMBERS[0], ("b", "c"), 1.0)])
    assert told.webhooks(SMS_SENT, NUMBERS[0]) == ("b",)
    assert told.webhooks(SMS_SENT, NUMBERS[1]) == ("a", "b")
    assert told.webhooks(SMS_FAILED, NUMBERS[1]) == ("a",)
    sent = SendOutcome(SENT, 200, None, sent_at=T0, provider_ids=("p1",))
    assert [e.webhook for e in told.queued(sms(sender=NUMBERS[1]), sent, T0)] == ["a", "b"]
    for state in (PENDING, UNKNOWN):
        assert told.queued(sms(), SendOutcome(state, 503, "HTTP 503"), T0) == []


def test_event_data_names_the_cause_and_the_inbound_delivery_of_a_reply() -> None:
    """A reply's sms.sent carries cause "reply" and the inbound webhook-id; a failed send
    its error; ids are stable and differ by event and webhook."""
    hooks = [webhook_config("http://x/a", name="a", events=AUDIT_EVENTS)]
    told = OutboundEvents(hooks, [])
    reply = sms("reply", reply_to="msg_inbound")
    sent = SendOutcome(SENT, 200, None, sent_at=T0, provider_ids=("p1", "p2"))
    (event,) = told.queued(reply, sent, T0)
    assert json.loads(event.data) == {
        "outbound_id": 7,
        "from": NUMBERS[0],
        "to": [SENDER],
        "text": "Your table is ready",
        "cause": "reply",
        "in_reply_to": "msg_inbound",
        "provider_ids": ["p1", "p2"],
        "sent_at": "2026-12-01T00:00:00Z",
    }
    (failed,) = told.queued(sms("cli"), SendOutcome(FAILED, 400, "HTTP 400: bad number"), T0)
    data = json.loads(failed.data)
    assert (failed.event, data["cause"], data["error"]) == (
        SMS_FAILED,
        "cli",
        "HTTP 400: bad number",
    )
    assert event.webhook_id == event_webhook_id(reply, SMS_SENT, "a")
    assert len({event.webhook_id, failed.webhook_id, event_webhook_id(reply, SMS_SENT, "b")}) == 3


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated store on a fake clock."""
    s = Store.open(store_url, FakeClock(T0))
    yield s
    s.close()


def test_an_outcome_and_its_events_are_written_once(store: Store) -> None:
    """record_send queues the events with the outcome; a second write of a settled SMS
    changes nothing and queues nothing; the event is claimed with its data."""
    sms_id = store.queue_send(NUMBERS[0], [SENDER], "hello")
    (claimed,) = store.claim_outbound(5)
    told = OutboundEvents([webhook_config("http://x/a", name="a", events=AUDIT_EVENTS)], [])
    sent = SendOutcome(SENT, 200, None, sent_at=T0, provider_ids=("p1",))
    events = told.queued(claimed, sent, T0)
    assert store.record_send(sms_id, T0, sent, events) is True
    failed = SendOutcome(FAILED, 400, "late")
    assert store.record_send(sms_id, T0, failed, told.queued(claimed, failed, T0)) is False
    assert store.outbound_counts()[SENT] == 1
    (due,) = store.claim("a", 10)
    assert (due.event, due.webhook_id, due.number) == (SMS_SENT, events[0].webhook_id, "")
    assert due.data is not None and json.loads(due.data)["provider_ids"] == ["p1"]
    (row,) = store.list_deliveries()
    assert (row.event, row.outbound_id, row.number) == (SMS_SENT, sms_id, "")


def test_an_unknown_outcome_learnt_later_is_told(store: Store) -> None:
    """An SMS left unknown (a lost claim, a CLI killed mid-send) still takes the outcome
    written later, and that outcome's events."""
    direct = store.begin_direct_send("cli", NUMBERS[0], [SENDER], "hi", False)
    assert store.outbound_counts()[UNKNOWN] == 1
    told = OutboundEvents([webhook_config("http://x/a", name="a", events=AUDIT_EVENTS)], [])
    sent = SendOutcome(SENT, 200, None, sent_at=T0, provider_ids=("p9",))
    assert store.record_send(direct.id, T0, sent, told.queued(direct, sent, T0)) is True
    assert [d.event for d in store.claim("a", 10)] == [SMS_SENT]


def test_retention_prunes_delivered_events_and_keeps_pending_ones(store: Store) -> None:
    """Delivered outbound events older than the retention go; a pending one stays."""
    assert isinstance(store.clock, FakeClock)
    told = OutboundEvents([webhook_config("http://x/a", name="a", events=AUDIT_EVENTS)], [])
    for text in ("one", "two"):
        sms_id = store.queue_send(NUMBERS[0], [SENDER], text)
        (claimed,) = store.claim_outbound(5)
        sent = SendOutcome(SENT, 200, None, sent_at=T0, provider_ids=(text,))
        store.record_send(sms_id, T0, sent, told.queued(claimed, sent, T0))
    first, _second = store.claim("a", 10)
    store.save_outcomes([Outcome(first.id, T0, DELIVERED, status=204)])
    store.release("deliveries", [_second.id], 0.0)
    store.clock.advance(31 * 86400.0)
    pruned = store.apply_retention(30 * 86400.0)
    assert (pruned.events, pruned.outbound) == (1, 2)
    assert [(r.event, r.state) for r in store.list_deliveries()] == [(SMS_SENT, PENDING)]


def audit(url: str) -> WebhookConfig:
    """The webhook that hears of sends: ``events = ["sms.sent", "sms.failed"]``."""
    return webhook_config(
        f"{url}/audit", name="audit", events=AUDIT_EVENTS, retry_initial=0.05, retry_max=0.2
    )


def of(receiver: WebhookReceiver, path: str) -> list[Delivery]:
    """What the receiver got at ``path``, one per webhook-id (retries folded)."""
    seen: dict[str, Delivery] = {}
    for d in receiver.deliveries:
        if d.path == path and d.verified:
            seen.setdefault(d.webhook_id, d)
    return list(seen.values())


async def until(check: object, timeout: float = 20.0) -> None:
    """Wait until ``check()`` is true."""
    async with time_limit(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_a_reply_and_a_send_are_told_and_a_reply_to_an_event_is_ignored(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """Through a running relay: the inbound webhook's reply is sent, and the audit webhook
    hears sms.sent with cause "reply", the inbound delivery's webhook-id and the provider's
    id; a queued send that the API refuses (400) is sms.failed; the audit webhook's own
    {"reply": ...} answers send nothing."""
    receiver.respond(Rule(status=200, body=b'{"reply": "Thanks, see you at 3"}'))
    base = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    config = dataclasses.replace(
        base,
        webhooks=(
            webhook_config(f"{receiver.url}/crm", name="crm", retry_initial=0.05),
            audit(receiver.url),
        ),
        numbers=(NumberConfig(NUMBERS[0], ("crm", "audit"), 0.2),),
    )
    sim.inject(SENDER, NUMBERS[0], "Can I book for 3pm?")
    async with Relay(config) as relay, running(relay):
        await until(lambda: len(of(receiver, "/audit")) == 1 and len(sim.sent) == 1)
        sim.add_fault(Fault(status=400, body=b'{"error": "bad number"}', path="/api/v2/sms/send"))
        await relay.store.call(relay.store.sync.queue_send, NUMBERS[0], ["+61499999999"], "x")
        relay.outbox.wake()
        await until(lambda: len(of(receiver, "/audit")) == 2)
        await asyncio.sleep(0.5)  # a wrong extra SMS or event would show now
    inbound = of(receiver, "/crm")
    sent_event, failed_event = of(receiver, "/audit")
    assert [(s.sender, s.recipients, s.text) for s in sim.sent] == [
        (NUMBERS[0], (SENDER,), "Thanks, see you at 3")
    ]
    assert [d.payload["type"] for d in inbound] == [SMS_RECEIVED]
    assert sent_event.payload["type"] == SMS_SENT
    assert sent_event.payload["data"] == {
        "outbound_id": 1,
        "from": NUMBERS[0],
        "to": [SENDER],
        "text": "Thanks, see you at 3",
        "cause": "reply",
        "in_reply_to": inbound[0].webhook_id,
        "provider_ids": list(sim.sent[0].ids),
        "sent_at": sent_event.payload["data"]["sent_at"],  # type: ignore[index]
    }
    assert failed_event.payload["type"] == SMS_FAILED
    data = failed_event.payload["data"]
    assert isinstance(data, dict)
    assert (data["cause"], data["to"]) == ("api", ["+61499999999"])
    assert "400" in data["error"] and "bad number" in data["error"]


@pytest.mark.anyio
async def test_the_send_endpoint_and_the_send_command_are_told(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """The real daemon and command: POST /v1/send is sms.sent with cause "api" and
    ``aatrox-relay send`` (run while the daemon runs) with cause "cli", each once."""
    import httpx

    config = write_config(
        tmp_path / "relay.toml",
        sim.url,
        receiver.url,
        f"sqlite:///{tmp_path / 'relay.db'}",
        numbers=NUMBERS[:1],
        extra=(
            f'[http]\nlisten = "127.0.0.1:0"\nsend_token = "{SEND_TOKEN}"\n'
            f'[[webhooks]]\nname = "audit"\nurl = "{receiver.url}/audit"\n'
            f'secret = "{SECRET}"\nevents = ["sms.sent", "sms.failed"]\n'
            'retry_initial = "50ms"\n'
        ),
    )
    relay = RelayProcess(config)
    await relay.start()
    try:
        line = await relay.wait_for_line("relay.http.listening")
        url = line.split("url=")[1].split()[0]
        async with httpx.AsyncClient(base_url=url) as http:
            answer = await http.post(
                "/v1/send",
                json={"from": NUMBERS[0], "to": SENDER, "text": "via the API"},
                headers={"Authorization": f"Bearer {SEND_TOKEN}"},
            )
        assert answer.status_code == 202
        code, out, err = await cli(
            "send", "--config", str(config), "--from", NUMBERS[0], "--to", SENDER,
            "--text", "via the command",
        )  # fmt: skip
        assert code == 0, err
        await until(lambda: len(of(receiver, "/audit")) == 2)
        await asyncio.sleep(0.5)
    finally:
        assert await relay.terminate() == 0
    causes = {
        str(d.payload["data"]["text"]): d.payload["data"]["cause"]  # type: ignore[index]
        for d in of(receiver, "/audit")
    }
    assert causes == {"via the API": "api", "via the command": "cli"}
    assert out.strip() == sim.sent[-1].ids[0]


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_every_settled_sms_is_told_once_whatever_the_api_does(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str, seed: int
) -> None:
    """Adversarial, seeded (replay with the seed): sends meet a random schedule of 400s,
    503s, 429s, resets and slow answers, and the audit webhook a random schedule of
    failures; in the end every SMS the store holds as sent has exactly one sms.sent
    event, every failed one exactly one sms.failed, an unknown one none, and the
    provider ids told are the ones the simulator answered."""
    rng = random.Random(seed)
    count = 12
    for _ in range(count):
        fault = rng.choice(
            [
                None,
                Fault(status=400),
                Fault(status=503, count=rng.randint(1, 2)),
                Fault(status=429, headers=(("Retry-After", "0"),)),
                Fault(reset=True),
                Fault(status=0, delay=0.3),
            ]
        )
        if fault is not None:
            sim.add_fault(dataclasses.replace(fault, path="/api/v2/sms/send"))
    for _ in range(rng.randint(2, 6)):
        receiver.respond(Rule(status=rng.choice([500, 503, 429]), times=1))
    base = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    config = dataclasses.replace(
        base, webhooks=(audit(receiver.url),), numbers=(NumberConfig(NUMBERS[0], ("audit",), 60.0),)
    )
    async with Relay(config) as relay, running(relay):
        relay.outbox.backoff = Backoff(0.05, 0.2, 600.0)  # retries in a test's time
        store = relay.store
        for i in range(count):
            await store.call(store.sync.queue_send, NUMBERS[0], [SENDER], f"sms {i}")
            relay.outbox.wake()

        async def settled() -> bool:
            counts = await store.call(store.sync.outbound_counts)
            pending = (await store.call(store.sync.counts))[PENDING]
            return counts[PENDING] == 0 and pending == 0

        async with time_limit(60):
            while not await settled():
                await asyncio.sleep(0.1)
        rows = await store.call(store.sync.list_deliveries, limit=1000)
        counts = await store.call(store.sync.outbound_counts)
    states = {r.outbound_id: r.event for r in rows}
    assert states, "no SMS was settled: the schedule proves nothing"
    told = of(receiver, "/audit")
    by_id: dict[int, list[str]] = {}
    for d in told:
        by_id.setdefault(d.payload["data"]["outbound_id"], []).append(str(d.payload["type"]))  # type: ignore[index]
    assert all(len(events) == 1 for events in by_id.values()), by_id
    assert {k: v[0] for k, v in by_id.items()} == states
    assert all(r.state == DELIVERED for r in rows)
    sent_ids = {
        tuple(d.payload["data"]["provider_ids"])  # type: ignore[index]
        for d in told
        if d.payload["type"] == SMS_SENT
    }
    assert sent_ids <= {s.ids for s in sim.sent}
    assert (counts[SENT], counts[FAILED]) == (
        sum(1 for v in states.values() if v == SMS_SENT),
        sum(1 for v in states.values() if v == SMS_FAILED),
    )
    assert counts[SENT] + counts[FAILED] + counts[UNKNOWN] == count


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [21, 22])
async def test_replies_and_their_events_survive_kills(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path, seed: int
) -> None:
    """Adversarial, seeded: messages arrive while the real daemon is SIGKILLed and
    restarted at random moments and sends meet random faults. In the end each message
    caused one reply row; every reply the store holds as sent was told once as sms.sent
    with ids the API gave, every failed one once as sms.failed, an unknown one never;
    and no event was told of an SMS the store does not hold as settled that way."""
    rng = random.Random(seed)
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    receiver.respond(Rule(status=200, body=b'{"reply": "got it"}'))
    config = write_config(
        tmp_path / "relay.toml",
        sim.url,
        f"{receiver.url}/hook",
        url,
        numbers=NUMBERS[:1],
        extra=(
            f'[[webhooks]]\nname = "audit"\nurl = "{receiver.url}/audit"\n'
            f'secret = "{SECRET}"\nevents = ["sms.sent", "sms.failed"]\n'
            'retry_initial = "50ms"\nretry_max = "200ms"\n'
        ),
    )
    senders = [f"+6141234{i:04d}" for i in range(12)]
    for _ in range(4):
        fault = rng.choice([Fault(status=503), Fault(status=400), Fault(reset=True)])
        sim.add_fault(dataclasses.replace(fault, path="/api/v2/sms/send"))
    kill_after = {rng.randrange(len(senders))}
    kill_after |= {i for i in range(len(senders)) if rng.random() < 0.25}
    relay = RelayProcess(config)
    await relay.start()
    for i, sender in enumerate(senders):
        sim.inject(sender, NUMBERS[0], f"hello from {sender}")
        await asyncio.sleep(rng.uniform(0.0, 0.4))
        if i in kill_after:
            await relay.kill()
            await relay.start()
    sim.clear_faults()

    def settled() -> bool:
        store = Store.open(url, FakeClock(T0), migrate=False)
        try:
            out = store.outbound_counts()
            return (
                out[PENDING] == 0
                and store.counts()[PENDING] == 0
                and sum(out.values()) == len(senders)
            )
        finally:
            store.close()

    try:
        async with time_limit(90):
            while not await asyncio.to_thread(settled):
                await asyncio.sleep(0.2)
    finally:
        assert await relay.terminate() == 0
    store = Store.open(url, FakeClock(T0), migrate=False)
    try:
        rows = store.list_deliveries(limit=1000)
        counts = store.outbound_counts()
    finally:
        store.close()
    told: dict[int, set[tuple[str, str]]] = {}
    for d in of(receiver, "/audit"):
        data = d.payload["data"]
        assert isinstance(data, dict)
        told.setdefault(data["outbound_id"], set()).add((str(d.payload["type"]), d.webhook_id))
        if d.payload["type"] == SMS_SENT:
            assert tuple(data["provider_ids"]) in {s.ids for s in sim.sent}
    queued = {r.outbound_id: r.event for r in rows if r.outbound_id is not None}
    assert all(len(events) == 1 for events in told.values()), told
    assert {k: next(iter(v))[0] for k, v in told.items()} == queued
    assert len(queued) == counts[SENT] + counts[FAILED]
    assert counts[SENT] + counts[FAILED] + counts[UNKNOWN] == len(senders)
    assert {r.recipients[0] for r in sim.sent} <= set(senders)
