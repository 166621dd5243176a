"""Opt-out compliance: an inbound STOP opts its sender out of SMS from that number in the
transaction that records it, START opts them in again, and while they are out no reply,
``POST /v1/send`` or ``aatrox-relay send`` reaches them (bar the one STOP confirmation)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from relay.config import OptoutConfig, load
from relay.daemon import Relay
from relay.errors import ConfigError
from relay.inbound import InboundMessage
from relay.optout import CONFIRM_WITHIN, Keywords, keyword
from relay.store import PENDING, REFUSED, SENT, Store
from relay.testing.clock import FakeClock
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import (
    API,
    NUMBERS,
    SEND_TOKEN,
    SENDER,
    T0,
    RelayProcess,
    cli,
    relay_config,
    running,
    time_limit,
    write_config,
)

OTHER = "+61498765432"
DEFAULTS = OptoutConfig()
CONFIRMING = OptoutConfig(stop_reply="You are unsubscribed. Reply START to resubscribe.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("STOP", "stop"),
        ("  stop \n", "stop"),
        ("Stop.", "stop"),
        ("stop!!", "stop"),
        ("Unsubscribe?", "stop"),
        ("stopall", "stop"),
        ("Start", "start"),
        ("yes!", "start"),
        ("HELP", "help"),
        ("info.", "help"),
        ("please stop", None),
        ("stop it", None),
        ("STOPP", None),
        ("¿stop", None),
        ("", None),
        (None, None),
    ],
)
def test_a_keyword_is_the_whole_text_trimmed_in_any_case(text: str | None, expected: str) -> None:
    """Whole text, trimmed, any case, trailing punctuation dropped; nothing else counts."""
    assert keyword(text, DEFAULTS) == expected


def test_keywords_follow_the_config_and_can_be_turned_off() -> None:
    """Custom lists replace the defaults (in any case); enabled = false knows none."""
    custom = OptoutConfig(stop=("ARRÊT",), start=("GO",), help=())
    assert keyword("arrêt", custom) == "stop"
    assert keyword("STOP", custom) is None
    assert keyword("stop", dataclasses.replace(DEFAULTS, enabled=False)) is None


def load_optout(tmp_path: Path, lines: str) -> OptoutConfig:
    """``[optout]`` configured with ``lines``."""
    path = tmp_path / "relay.toml"
    path.write_text(API + "[optout]\n" + lines, encoding="utf-8")
    return load(path, environ={}).optout


def test_optout_is_read_from_the_config(tmp_path: Path) -> None:
    """Lists are upper-cased and single-spaced; replies trimmed; defaults without the table."""
    found = load_optout(tmp_path, 'stop = ["stop", "opt  out"]\nstop_reply = " Bye. "\n')
    assert found.stop == ("STOP", "OPT OUT")
    assert found.start == DEFAULTS.start
    assert found.stop_reply == "Bye."
    path = tmp_path / "bare.toml"
    path.write_text(API, encoding="utf-8")
    assert load(path, environ={}).optout == DEFAULTS


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ('start = ["STOP"]\n', 'optout.start[0]: "STOP" is already in optout.stop[0]'),
        ('stop = ["end", ""]\n', "optout.stop[1]: is empty"),
        ("stop = []\nhelp = 1\n", "optout.help: expected an array of strings"),
        ('stop_reply = "' + "x" * 1601 + '"\n', "optout.stop_reply: is 1601 characters"),
        ('enabled = "yes"\n', "optout.enabled: expected a boolean"),
        ('stop_text = "x"\n', 'optout: unknown key "stop_text"'),
    ],
    ids=["twice", "empty", "not-a-list", "long-reply", "not-bool", "unknown"],
)
def test_a_bad_optout_table_is_a_one_line_error(tmp_path: Path, lines: str, error: str) -> None:
    """Each mistake in [optout] is one line that names the key."""
    with pytest.raises(ConfigError) as caught:
        load_optout(tmp_path, lines)
    assert str(caught.value).startswith(error), str(caught.value)
    assert "\n" not in str(caught.value)


def sms(i: int, text: str, sender: str = SENDER, at: float = 0.0) -> InboundMessage:
    """Message ``i`` to NUMBERS[0], received ``at`` seconds after T0."""
    return InboundMessage(str(i), sender, NUMBERS[0], text, T0 + timedelta(seconds=at))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated store a minute after T0."""
    s = Store.open(store_url, FakeClock(T0 + timedelta(minutes=1)))
    yield s
    s.close()


def rules(store: Store, config: OptoutConfig = DEFAULTS) -> Keywords:
    """The keywords of ``config`` on the store's clock."""
    return Keywords(config, {}, store.clock)


def test_stop_and_start_are_recorded_with_the_message_in_provider_order(store: Store) -> None:
    """One batch: a STOP then a later START leaves the sender in; START then STOP out,
    whatever order the listing had; the message keeps its keyword for the webhooks."""
    batch = [sms(2, "start", SENDER, at=2), sms(1, "STOP", SENDER, at=1)]
    batch += [sms(3, "stop", OTHER, at=4), sms(4, "Start", OTHER, at=3)]
    store.record(NUMBERS[0], batch, lambda _m: ("hook",), rules(store))
    assert store.opted_out(NUMBERS[0], [SENDER, OTHER]) == {OTHER}
    assert store.opted_out(NUMBERS[1], [OTHER]) == set()
    keywords = {d.provider_id: d.keyword for d in store.claim("hook", 10)}
    assert keywords == {"1": "stop", "2": "start", "3": "stop", "4": "start"}


def test_a_confirmation_is_queued_once_and_only_for_a_recent_stop(store: Store) -> None:
    """stop_reply is queued with a recent STOP from a phone number, once however often
    the message is listed again; an old STOP or a sender id's is honoured, unanswered."""
    keywords = rules(store, CONFIRMING)
    old = -CONFIRM_WITHIN.total_seconds() - 60
    batch = [sms(1, "STOP"), sms(2, "STOP", OTHER, at=old), sms(3, "stop", "Telstra")]
    for _ in range(2):
        store.record(NUMBERS[0], batch, lambda _m: (), keywords)
    assert store.opted_out(NUMBERS[0], [SENDER, OTHER, "Telstra"]) == {SENDER, OTHER, "Telstra"}
    queued = store.claim_outbound(10)
    assert [(q.kind, q.recipients, q.text) for q in queued] == [
        ("optout", (SENDER,), CONFIRMING.stop_reply)
    ]


def test_operators_add_and_remove_optouts(store: Store) -> None:
    """add and remove say whether anything changed; the list shows how each came."""
    assert store.add_optout(NUMBERS[0], SENDER) is True
    assert store.add_optout(NUMBERS[0], SENDER) is False
    assert isinstance(store.clock, FakeClock)
    store.clock.advance(1.0)
    store.record(NUMBERS[0], [sms(1, "stop", OTHER)], lambda _m: (), rules(store))
    assert [(r.sender, r.source) for r in store.list_optouts(NUMBERS[0])] == [
        (OTHER, "keyword"),
        (SENDER, "cli"),
    ]
    assert store.optout_counts() == {NUMBERS[0]: 2}
    assert store.remove_optout(NUMBERS[0], SENDER) is True
    assert store.remove_optout(NUMBERS[0], SENDER) is False
    assert store.list_optouts(NUMBERS[1]) == []


def outbound_rows(store: Store) -> list[tuple[str, str, str]]:
    """(kind, first recipient, state) of every outbound SMS, oldest first."""
    import sqlalchemy as sa

    from relay.store.schema import outbound

    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(outbound.c.kind, outbound.c.recipients, outbound.c.state).order_by(
                outbound.c.id
            )
        )
        return [(kind, json.loads(to)[0], state) for kind, to, state in rows]


async def settle(relay: Relay, count: int) -> None:
    """Wait until ``count`` outbound SMS exist and none is pending."""
    store = relay.store
    async with time_limit(20):
        while True:
            counts = await store.call(store.sync.outbound_counts)
            if sum(counts.values()) >= count and counts[PENDING] == 0:
                return
            await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_replies_to_an_opted_out_sender_are_refused_until_start(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """Through a running relay: after STOP the webhook's replies to the sender are
    refused (visible as the delivery's reply state) and only the STOP confirmation is
    sent; a bulk send skips the sender; after START replies go through again."""
    receiver.respond(Rule(status=200, body=b'{"reply": "noted"}'))
    config = dataclasses.replace(
        relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1]), optout=CONFIRMING
    )
    sim.inject(SENDER, NUMBERS[0], "STOP")
    async with Relay(config) as relay, running(relay):
        await settle(relay, 2)  # the confirmation, and the refused reply to the STOP
        sim.inject(SENDER, NUMBERS[0], "are you there?")
        await settle(relay, 3)
        store = relay.store
        await store.call(store.sync.queue_send, NUMBERS[0], [SENDER, OTHER], "sale today")
        relay.outbox.wake()
        await settle(relay, 4)
        sim.inject(SENDER, NUMBERS[0], "start")
        await settle(relay, 5)
        rows = await store.call(outbound_rows, store.sync)
        replies = await store.call(store.sync.list_deliveries)
    assert sorted(rows[:2]) == sorted([("optout", SENDER, SENT), ("reply", SENDER, REFUSED)])
    assert rows[2:] == [("reply", SENDER, REFUSED), ("send", SENDER, SENT), ("reply", SENDER, SENT)]
    assert [(s.recipients, s.text) for s in sim.sent] == [
        ((SENDER,), CONFIRMING.stop_reply),
        ((OTHER,), "sale today"),
        ((SENDER,), "noted"),
    ]
    assert sorted(reply.state for r in replies for reply in r.replies) == [
        REFUSED,
        REFUSED,
        SENT,
    ]


@pytest.mark.anyio
async def test_the_endpoint_and_the_command_refuse_an_opted_out_recipient(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """The real daemon and command: after an inbound STOP, POST /v1/send answers 409
    naming the recipient and ``send`` exits 1 naming them, and nothing reaches the API;
    the opt-out survives a restart and ``optouts list`` shows it; after START both send."""
    db = f"sqlite:///{tmp_path / 'relay.db'}"
    config = write_config(
        tmp_path / "relay.toml",
        sim.url,
        receiver.url,
        db,
        numbers=NUMBERS[:1],
        extra=f'[http]\nlisten = "127.0.0.1:0"\nsend_token = "{SEND_TOKEN}"\n[log]\npii = true\n',
    )
    body = {"from": NUMBERS[0], "to": SENDER, "text": "Your table is ready"}
    auth = {"Authorization": f"Bearer {SEND_TOKEN}"}
    command = ["send", "--config", str(config), "--from", NUMBERS[0], "--to", SENDER]

    async def refused_everywhere(relay: RelayProcess) -> None:
        await relay.wait_for_line("relay.http.listening")
        line = [x for x in relay.lines if "relay.http.listening" in x][-1]  # this life's
        async with httpx.AsyncClient(base_url=line.split("url=")[1].split()[0]) as http:
            answer = await http.post("/v1/send", json=body, headers=auth)
        assert answer.status_code == 409 and answer.json()["refused"] == [SENDER]
        assert SENDER in answer.json()["error"]
        code, _out, err = await cli(*command, "--text", "hello")
        assert code == 1 and f"not sent to {SENDER}" in err and err.count("\n") == 1

    sim.inject(SENDER, NUMBERS[0], "Stop")
    relay = RelayProcess(config)
    await relay.start()
    try:
        await until_optouts(config, 1)
        await refused_everywhere(relay)
        assert await relay.terminate() == 0
        await relay.start()
        await refused_everywhere(relay)
        code, out, _err = await cli("optouts", "list", "--config", str(config), "--json")
        assert code == 0
        assert [(o["number"], o["sender"], o["source"]) for o in json.loads(out)["optouts"]] == [
            (NUMBERS[0], SENDER, "keyword")
        ]
        assert sim.sent == []
        sim.inject(SENDER, NUMBERS[0], "START")
        await until_optouts(config, 0)
        code, _out, err = await cli(*command, "--text", "welcome back")
        assert code == 0, err
    finally:
        assert await relay.terminate() == 0
    assert [s.text for s in sim.sent] == ["welcome back"]


async def until_optouts(config: Path, count: int) -> None:
    """Wait until ``optouts list`` shows ``count`` opt-outs."""
    async with time_limit(30):
        while True:
            code, out, _err = await cli("optouts", "list", "--config", str(config), "--json")
            if code == 0 and len(json.loads(out)["optouts"]) == count:
                return
            await asyncio.sleep(0.2)


@pytest.mark.anyio
async def test_optouts_add_and_remove_from_the_command_line(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """add, list (masked unless log.pii) and remove; a wrong number is one line, exit 2."""
    db = tmp_path / "relay.db"
    config = write_config(tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{db}")
    Store.open(f"sqlite:///{db}", FakeClock(T0)).close()
    base = ("--config", str(config), "--number", NUMBERS[0])
    code, out, _ = await cli("optouts", "add", *base, "--sender", "0412 345 678")
    assert (code, out.strip()) == (0, "opted out *********678 from *********001")
    code, out, _ = await cli("optouts", "add", *base, "--sender", SENDER)
    assert (code, out.strip()) == (0, "*********678 from *********001: already opted out")
    code, out, _ = await cli("optouts", "list", "--config", str(config))
    assert code == 0 and "***678" in out and SENDER not in out and "cli" in out
    code, _, err = await cli("optouts", "remove", *base, "--sender", "04123abc78")
    assert code == 2 and err.count("\n") == 1 and "--sender" in err
    code, out, _ = await cli("optouts", "remove", *base, "--sender", SENDER)
    assert (code, out.strip()) == (0, "opted in *********678 from *********001 again")


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [31, 32, 33])
async def test_no_sms_reaches_a_sender_whose_last_keyword_was_stop(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str, seed: int
) -> None:
    """Adversarial, seeded: three senders each send a random mix of STOP, START, HELP
    and other texts in a random provider order (listed before the relay starts, so the
    whole history is recorded in one transaction); every message is answered with a
    reply. In the end each sender is opted out exactly when their last keyword by
    provider time was STOP, and got replies (every one of them) only if opted in; the
    confirmations are the only SMS an opted-out sender gets."""
    rng = random.Random(seed)
    receiver.respond(Rule(status=200, body=b'{"reply": "ok"}'))
    config = dataclasses.replace(
        relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1]), optout=CONFIRMING
    )
    senders = [SENDER, OTHER, "+61411111111"]
    base = datetime.now(timezone.utc) - timedelta(minutes=5)
    history: dict[str, list[tuple[datetime, str]]] = {s: [] for s in senders}
    for i in range(rng.randint(8, 16)):
        sender = rng.choice(senders)
        text = rng.choice(["STOP", "stop.", "Start", "HELP", "hi", "what time?", "UNSUBSCRIBE"])
        at = base + timedelta(seconds=rng.uniform(0, 200), microseconds=i)
        sim.inject(sender, NUMBERS[0], text, received_at=at)
        history[sender].append((at, text))
    total = sum(len(h) for h in history.values())
    stops = sum(keyword(t, DEFAULTS) == "stop" for h in history.values() for _at, t in h)
    async with Relay(config) as relay, running(relay):
        await settle(relay, total + stops)
        out = await relay.store.call(relay.store.sync.opted_out, NUMBERS[0], senders)
    for sender, messages in history.items():
        marks = [keyword(t, DEFAULTS) for _at, t in sorted(messages)]
        last = next((k for k in reversed(marks) if k in ("stop", "start")), None)
        assert (sender in out) == (last == "stop"), (seed, sender, sorted(messages))
        got = [s.text for s in sim.sent if s.recipients == (sender,)]
        confirmations = marks.count("stop")
        replies = 0 if sender in out else len(messages)
        assert sorted(got) == sorted(["ok"] * replies + [CONFIRMING.stop_reply] * confirmations)
