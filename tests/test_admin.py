"""The operator's commands: status, deliveries list and replay, prune, send, messages show."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from relay.admin import ago, printable
from relay.admin.render import table
from relay.cli import main
from relay.clock import SystemClock
from relay.inbound import InboundMessage
from relay.store import Outcome, Reply, SendOutcome, Store
from relay.store.schema import deliveries, messages, outbound
from relay.testing.clock import FakeClock
from relay.testing.faults import Fault
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, TOKEN, cli, write_config
from tests.test_numbers import SPELLINGS, WRONG_NUMBERS

#: Nothing listens here: store-only commands never reach it.
NOWHERE = "http://127.0.0.1:9"
SHOWN = "*********001"  # NUMBERS[0] as logs show it
TWO_RECIPIENTS = ["--to", "0412345678", "--to", "0412345679"]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``aatrox-relay`` in this process: exit code, stdout, stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str) -> Path:
    """A config over this test's SQLite file, its API and webhook unreachable."""
    return write_config(tmp_path / "relay.toml", NOWHERE, NOWHERE + "/hook", sqlite_url)


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    """The same store, on the real clock."""
    opened = Store.open(sqlite_url, SystemClock())
    yield opened
    opened.close()


def _seed(
    store: Store, outcomes: list[str], *, hooks: tuple[str, ...] = ("hook",), ago_s: float = 0
) -> list[int]:
    """Record one message per outcome and settle its deliveries so; their delivery ids."""
    now = datetime.now(timezone.utc) - timedelta(seconds=ago_s)
    store.clock = FakeClock(now)
    start = len(store.known_ids(NUMBERS[0], [str(i) for i in range(100)]))
    new = [
        InboundMessage(str(start + i), SENDER, NUMBERS[0], f"secret text {i}", now)
        for i in range(len(outcomes))
    ]
    store.record(NUMBERS[0], new, lambda _m: hooks)
    ids: list[int] = []
    for hook in hooks:
        due = [d for d in store.claim(hook, 100) if d.provider_id in {m.id for m in new}]
        ids += [d.id for d in due]
        results = []
        for d, state in zip(due, outcomes, strict=True):
            if state == "pending":
                results.append(
                    Outcome(d.id, now, "pending", now + timedelta(hours=1), 503, "HTTP 503")
                )
            elif state == "dead":
                results.append(Outcome(d.id, now, "dead", status=410, error="HTTP 410"))
            else:
                replies = (Reply(NUMBERS[0], SENDER, "reply text"),) if state == "replied" else ()
                results.append(Outcome(d.id, now, "delivered", status=204, replies=replies))
        store.save_outcomes(results)
    store.release_claims()
    store.clock = SystemClock()
    return ids


def _row(store: Store, delivery_id: int) -> sa.Row[tuple[object, ...]]:
    with store.engine.connect() as conn:
        return conn.execute(deliveries.select().where(deliveries.c.id == delivery_id)).one()


# --- status ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_status_after_poll_once(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """After a poll-once that delivered two and killed one, status shows it, as text and JSON."""
    sim, receiver = peers
    path = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    receiver.respond(Rule(status=410, times=1))
    for text in ("one", "two", "three"):
        sim.inject(SENDER, NUMBERS[0], text)
    code, _out, err = await cli("poll-once", "--config", str(path))
    assert code == 0, err

    code, out, err = await cli("status", "--config", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "numbers" and "outbound sms: 0 pending, 0 sent, 0 failed" in out
    number_line = next(line for line in lines if SHOWN in line)
    assert "ago" in number_line and "never" not in number_line
    hook_line = next(line for line in lines if line.strip().startswith("hook"))
    assert hook_line.split()[:4] == ["hook", "0", "1", "2"]
    assert "HTTP 410" in hook_line
    assert NUMBERS[0] not in out and "two" not in out

    code, out, err = await cli("status", "--json", "--config", str(path))
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"now", "numbers", "webhooks", "outbound"}
    first, second = doc["numbers"]
    assert first["number"] == SHOWN and first["consecutive_failures"] == 0
    assert first["last_success_at"].endswith("Z") and second["last_poll_at"] is not None
    assert first["lease_owner"] is None  # poll-once hands its leases back
    hook = doc["webhooks"][0]
    assert (hook["name"], hook["pending"], hook["dead"], hook["delivered"]) == ("hook", 0, 1, 2)
    assert hook["last_error"] == "HTTP 410" and hook["oldest_pending_at"] is None
    assert doc["outbound"] == {"pending": 0, "sent": 0, "failed": 0, "unknown": 0, "refused": 0}


@pytest.mark.anyio
async def test_status_shows_a_token_rejected_from_the_start(sim: Simulator, tmp_path: Path) -> None:
    """Numbers whose every poll failed (a bad token at install) show their failures."""
    path = write_config(
        tmp_path / "relay.toml", sim.url, NOWHERE, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    sim.token = "not-the-configured-one"
    code, _out, _err = await cli("poll-once", "--config", str(path))
    assert code == 1
    code, out, err = await cli("status", "--json", "--config", str(path))
    assert code == 0, err
    numbers = json.loads(out)["numbers"]
    assert [n["consecutive_failures"] for n in numbers] == [1, 1]
    assert all("rejected the token" in n["last_error"] for n in numbers)
    assert all(n["last_success_at"] is None for n in numbers)


def test_status_never_polled_and_leases(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A number never polled shows "never"; a held lease names its relay; log.pii unmasks."""
    path = write_config(
        tmp_path / "relay.toml", NOWHERE, NOWHERE, sqlite_url, extra="[log]\npii = true\n"
    )
    relay = Store.open(sqlite_url, SystemClock(), relay_id="relay-a")
    relay.balance([NUMBERS[0]])
    _seed(relay, ["pending"])
    relay.close()
    code, out, _err = _run(capsys, "status", "--config", str(path))
    assert code == 0
    line = next(line for line in out.splitlines() if NUMBERS[1] in line)
    assert line.split()[2:4] == ["never", "never"]  # after NUMBER and INTERVAL
    assert "relay-a" in next(line for line in out.splitlines() if NUMBERS[0] in line)
    hook_line = next(line for line in out.splitlines() if line.startswith("  hook "))
    assert hook_line.split()[1:3] == ["1", "0"]
    code, out, _err = _run(capsys, "status", "--json", "--config", str(path))
    doc = json.loads(out)
    assert [n["lease_owner"] for n in doc["numbers"]] == ["relay-a", None]
    assert doc["numbers"][1]["last_poll_at"] is None and doc["numbers"][0]["number"] == NUMBERS[0]
    assert doc["webhooks"][0]["oldest_pending_at"] is not None


def test_status_on_an_unreadable_store_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that cannot be opened (a file that is no database) is one line and exit 1."""
    db = tmp_path / "relay.db"
    db.write_bytes(b"not a database, just some bytes of something else" * 100)
    db.chmod(0o600)
    path = write_config(tmp_path / "relay.toml", NOWHERE, NOWHERE, f"sqlite:///{db}")
    code, out, err = _run(capsys, "status", "--config", str(path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("aatrox-relay: error: ")


# --- deliveries list -------------------------------------------------------------------


def test_deliveries_list_filters(
    config: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """list filters by state and webhook, honours --limit, shows replies, never texts."""
    delivered, dead, pending = _seed(store, ["replied", "dead", "pending"])
    other = _seed(store, ["dead"], hooks=("other",))[0]

    code, out, _err = _run(capsys, "deliveries", "list", "--config", str(config))
    assert code == 0
    ids = [line.split()[0] for line in out.splitlines()[1:]]
    assert ids == [str(other), str(pending), str(dead), str(delivered)]
    replied = next(line for line in out.splitlines() if line.split()[0] == str(delivered))
    assert "pending" in replied and SHOWN in replied
    assert "secret text" not in out and "reply text" not in out and NUMBERS[0] not in out

    code, out, _err = _run(
        capsys, "deliveries", "list", "--state", "dead", "--json", "--config", str(config)
    )
    rows = json.loads(out)["deliveries"]
    assert [(r["id"], r["webhook"], r["state"]) for r in rows] == [
        (other, "other", "dead"),
        (dead, "hook", "dead"),
    ]
    assert rows[1]["last_status"] == 410 and rows[1]["replies"] == []
    assert rows[1]["webhook_id"].startswith("msg_") and rows[1]["number"] == SHOWN

    code, out, _err = _run(
        capsys, "deliveries", "list", "--webhook", "hook", "--state", "delivered", "--json",
        "--config", str(config),
    )  # fmt: skip
    (row,) = json.loads(out)["deliveries"]
    assert row["id"] == delivered and row["delivered_at"] is not None
    ((reply),) = row["replies"]
    assert reply["state"] == "pending" and reply["provider_ids"] == []

    code, out, _err = _run(capsys, "deliveries", "list", "--limit", "1", "--config", str(config))
    assert len(out.splitlines()) == 2

    code, _out, err = _run(
        capsys, "deliveries", "list", "--webhook", "hoook", "--config", str(config)
    )
    assert code == 2 and "hoook" in err


# --- deliveries replay -----------------------------------------------------------------


def test_replay_by_id_keeps_webhook_id(
    config: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """replay ID makes a dead delivery pending now, keeping its webhook-id and attempts."""
    (dead,) = _seed(store, ["dead"], ago_s=3 * 86400)
    before = _row(store, dead)
    code, out, _err = _run(capsys, "deliveries", "replay", str(dead), "--config", str(config))
    assert code == 0 and out.splitlines()[0] == "queued 1 delivery again"
    assert "a running relay picks it up" in out
    after = _row(store, dead)
    now = datetime.now(timezone.utc)
    assert after.state == "pending" and after.webhook_id == before.webhook_id
    assert after.attempts == before.attempts == 1
    assert abs((after.next_attempt_at - now).total_seconds()) < 30
    assert abs((after.queued_at - now).total_seconds()) < 30  # the give-up window restarts
    assert after.claimed_by is None and after.claim_expires_at is None


def test_replay_a_delivered_one_says_so(
    config: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replaying a delivered delivery is allowed, and the output says it will be sent again."""
    (delivered,) = _seed(store, ["delivered"])
    code, out, _err = _run(capsys, "deliveries", "replay", str(delivered), "--config", str(config))
    assert code == 0
    assert "it had been delivered: it will be sent again, with the same webhook-id" in out
    assert _row(store, delivered).state == "pending"


def test_replay_counts_in_words(
    config: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several replayed deliveries read in the plural, one delivered among them singular."""
    ids = _seed(store, ["delivered", "dead", "dead"])
    code, out, _err = _run(capsys, "deliveries", "replay", *map(str, ids), "--config", str(config))
    assert code == 0
    assert out.splitlines() == [
        "queued 3 deliveries again",
        "1 of them had been delivered: it will be sent again, with the same webhook-id",
        "a running relay picks them up within 5s",
    ]


def test_replay_dead_by_webhook_and_since(
    config: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """replay --dead --webhook takes only that webhook's dead; --since only the recent ones."""
    old = _seed(store, ["dead"], ago_s=3 * 3600)[0]
    recent, delivered = _seed(store, ["dead", "delivered"], ago_s=3600)
    other = _seed(store, ["dead"], hooks=("other",))[0]

    code, out, _err = _run(
        capsys, "deliveries", "replay", "--dead", "--webhook", "other", "--config", str(config)
    )
    assert code == 0 and "queued 1 delivery again" in out and "not in the config" in out
    assert [_row(store, i).state for i in (old, recent, delivered, other)] == [
        "dead", "dead", "delivered", "pending",
    ]  # fmt: skip

    code, out, _err = _run(
        capsys, "deliveries", "replay", "--dead", "--since", "2h", "--config", str(config)
    )
    assert code == 0 and "queued 1 delivery again" in out
    assert [_row(store, i).state for i in (old, recent)] == ["dead", "pending"]


def test_replay_clears_stale_claims_not_live_ones(
    config: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lapsed claim is cleared; one in flight now is kept, so it is not sent twice at once."""
    in_flight, stale = _seed(store, ["pending", "pending"])
    now = datetime.now(timezone.utc)
    with store.engine.begin() as conn:
        for delivery_id, owner, expires in ((in_flight, "relay-a", 60), (stale, "relay-b", -60)):
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id)
                .values(claimed_by=owner, claim_expires_at=now + timedelta(seconds=expires))
            )
    code, _out, _err = _run(
        capsys, "deliveries", "replay", str(in_flight), str(stale), "--config", str(config)
    )
    assert code == 0
    assert _row(store, in_flight).claimed_by == "relay-a"
    assert _row(store, stale).claimed_by is None and _row(store, stale).claim_expires_at is None
    assert all(
        _row(store, i).next_attempt_at <= datetime.now(timezone.utc) for i in (in_flight, stale)
    )


def test_replay_unknown_id_changes_nothing(
    config: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id that does not exist is named, exit 2, and the known ids stay as they were."""
    (dead,) = _seed(store, ["dead"])
    code, out, err = _run(
        capsys, "deliveries", "replay", str(dead), "9999", "--config", str(config)
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "9999" in err
    assert _row(store, dead).state == "dead"


@pytest.mark.parametrize(
    "args",
    [[], ["1", "--dead"], ["1", "--webhook", "hook"], ["--dead", "--since", "soon"]],
)
def test_replay_needs_ids_or_dead(
    config: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """replay takes ids or --dead (with its filters), never both or neither: exit 2."""
    code, _out, err = _run(capsys, "deliveries", "replay", *args, "--config", str(config))
    assert code == 2 and err.startswith("aatrox-relay: error: ")


# --- prune -----------------------------------------------------------------------------


def test_prune(config: Path, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """prune deletes settled messages past store.retention and says how many."""
    _seed(store, ["delivered", "delivered"], ago_s=40 * 86400)
    _seed(store, ["pending"], ago_s=40 * 86400)
    _seed(store, ["delivered"])
    code, out, _err = _run(capsys, "prune", "--config", str(config))
    assert code == 0 and out.startswith("pruned 2 messages")
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one() == 2


def test_prune_deletes_old_outbound_sms(
    config: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """prune applies store.retention to outbound SMS too, and says how many went."""
    sent = store.queue_send(NUMBERS[0], [SENDER], "an old text")
    long_ago = datetime.now(timezone.utc) - timedelta(days=40)
    store.record_send(sent, long_ago, SendOutcome("sent", None, None, sent_at=long_ago))
    _seed(store, ["replied"], ago_s=40 * 86400)
    code, out, _err = _run(capsys, "prune", "--config", str(config))
    assert code == 0
    assert out == "pruned 1 message and 1 outbound SMS (store.retention: 30d)\n"
    with store.engine.connect() as conn:
        (left,) = conn.execute(sa.select(outbound.c.state, outbound.c.delivery_id))
    assert tuple(left) == ("pending", None)  # the old message's reply, still to send


# --- send ------------------------------------------------------------------------------


@pytest.fixture
async def sim_config(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Path]]:
    """A simulator and a config pointing at it."""
    async with Simulator(token=TOKEN) as sim:
        url = f"sqlite:///{tmp_path / 'relay.db'}"
        yield sim, write_config(tmp_path / "relay.toml", sim.url, NOWHERE, url)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("extra", "endpoint", "recipients"),
    [
        ([], "send", ("+61412345678",)),
        (["--disclaimer"], "send_disclaimer", ("+61412345678",)),
        (["--to", "+61412345679"], "send_bulk", ("+61412345678", "+61412345679")),
    ],
)
async def test_send(
    sim_config: tuple[Simulator, Path], extra: list[str], endpoint: str, recipients: tuple[str, ...]
) -> None:
    """send goes straight to the right endpoint, one request, and prints the provider's ids."""
    sim, path = sim_config
    code, out, err = await cli(
        "send", "--from", "0400000001", "--to", "0412345678", "--text", "Hi 🏃", *extra,
        "--config", str(path),
    )  # fmt: skip
    assert code == 0, err
    (sent,) = sim.sent
    assert (sent.endpoint, sent.sender, sent.recipients) == (endpoint, NUMBERS[0], recipients)
    assert sent.text.startswith("Hi 🏃")
    assert out.splitlines() == list(sent.ids)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--from", "hello", "--to", "0412345678", "--text", "hi"], "--from"),
        (["--from", "0400000001", "--to", "12", "--text", "hi"], "--to"),
        (["--from", "0400000001", "--to", "0412345678", "--text", "  "], "--text"),
        (["--from", "0400000001", "--to", "0412345678", "--text", "x" * 1601], "--text"),
        (["--from", "0400000001", *TWO_RECIPIENTS, "--text", "hi", "--disclaimer"], "--disclaimer"),
    ],
)
def test_send_bad_input(
    config: Path, args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad number, an unsendable text or --disclaimer to several: one line, exit 2."""
    code, out, err = _run(capsys, "send", *args, "--config", str(config))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and named in err


@pytest.mark.anyio
@pytest.mark.parametrize("option", ["--to", "--from"])
@pytest.mark.parametrize(("wrong", "reason"), WRONG_NUMBERS.items())
async def test_send_refuses_wrong_numbers(
    sim_config: tuple[Simulator, Path], option: str, wrong: str, reason: str
) -> None:
    """A letter, a digit too many, an extension or a short code at --to or --from: exit 2,
    one line naming the option and its value, and no request reaches the API."""
    sim, path = sim_config
    numbers = {"--from": "0400000001", "--to": "0412345678", option: wrong}
    code, out, err = await cli(
        "send", "--from", numbers["--from"], "--to", numbers["--to"], "--text", "hi",
        "--config", str(path),
    )  # fmt: skip
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert f"{option} {wrong!r}: " in err and reason in err
    assert sim.requests == Counter() and sim.sent == []


@pytest.mark.anyio
async def test_send_reads_valid_spellings(sim_config: tuple[Simulator, Path]) -> None:
    """Every usual spelling of a valid number is one recipient in E.164; so is --from."""
    sim, path = sim_config
    recipients = [arg for spelling in SPELLINGS for arg in ("--to", spelling)]
    code, _out, err = await cli(
        "send", "--from", "(04) 0000 0001", *recipients, "--text", "hi", "--config", str(path)
    )
    assert code == 0, err
    (sent,) = sim.sent
    assert (sent.endpoint, sent.sender, sent.recipients) == ("send", NUMBERS[0], ("+61412345678",))


@pytest.mark.anyio
async def test_send_api_error(sim_config: tuple[Simulator, Path]) -> None:
    """An API 400 is exit 1 with the API's one-line message."""
    sim, path = sim_config
    sim.add_fault(Fault(status=400, path="/api/v2/sms/send", body=b'{"error": "no credit"}'))
    code, out, err = await cli(
        "send", "--from", "0400000001", "--to", "0412345678", "--text", "hi", "--config", str(path)
    )
    assert code == 1 and out == "" and sim.sent == []
    assert err == "aatrox-relay: error: POST /sms/send: 400 Bad Request (no credit)\n"


# --- messages show ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_messages_show(sim_config: tuple[Simulator, Path]) -> None:
    """messages show prints the message in full, as text and as JSON; unknown ids exit 1."""
    sim, path = sim_config
    message = sim.inject(SENDER, NUMBERS[0], "Running late 🏃\nsee you\x1b[2J")
    code, out, err = await cli("messages", "show", str(message.id), "--config", str(path))
    assert code == 0, err
    assert f"id           {message.id}\n" in out and f"from         {SENDER}" in out
    assert "text         Running late 🏃\n             see you\\x1b[2J" in out
    assert "\x1b" not in out

    code, out, err = await cli(
        "messages", "show", str(message.id), "--number", "0400000001", "--json",
        "--config", str(path),
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["id"] == str(message.id) and doc["from"] == SENDER and doc["to"] == NUMBERS[0]
    assert doc["text"] == message.text and doc["received_at"].endswith("Z")

    code, out, err = await cli("messages", "show", "404", "--config", str(path))
    assert code == 1 and "404" in err and err.count("\n") == 1


# --- formatting ------------------------------------------------------------------------


def test_ages_and_escapes() -> None:
    """Ages read "3m ago" and "in 2h"; control characters cannot reach the terminal."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert ago(now - timedelta(seconds=200), now) == "3m ago"
    assert ago(now + timedelta(hours=2, minutes=5), now) == "in 2h"
    assert ago(now - timedelta(days=3), now) == "3d ago" and ago(None, now) == "never"
    assert printable("a\x1b[31mb\x07") == "a\\x1b[31mb\\x07"


@pytest.mark.parametrize(
    "command", [["status"], ["deliveries", "list"], ["deliveries", "replay"], ["prune"], ["send"],
                ["messages", "show"]]
)  # fmt: skip
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every new command answers --help with its usage and exit 0."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert f"aatrox-relay {' '.join(command)}" in capsys.readouterr().out


def test_a_table_without_rows_is_its_header() -> None:
    """status with no numbers configured (webhooks only) renders an empty table, not a
    TypeError."""
    assert table(["NUMBER", "LAST POLL"], []).splitlines()[0].split() == ["NUMBER", "LAST", "POLL"]
