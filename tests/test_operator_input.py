"""Careless operator input, through the real command: where the store is, what ``check``
catches, message texts kept out of ``ps``, files readable by the relay's user alone, and
the files a wheel ships to set up a service."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from relay import __version__
from relay.migrations import HEAD
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, RelayProcess, cli, write_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
#: Nothing listens here.
NOWHERE = "http://127.0.0.1:9"
DB_PASSWORD = "pgpassw0rd-do-not-leak"
#: The package's copies of the repository's files, by the repository file.
SHIPPED = {
    "config.example.toml": "relay/data/config.example.toml",
    "systemd/aatrox-relay.service": "relay/data/aatrox-relay.service",
    "docs/events.schema.json": "relay/data/events.schema.json",
}


async def cli_in(cwd: Path, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """``python -m relay ARGS`` run in the directory ``cwd``, with ``stdin`` as its standard
    input (none when None); the exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line_error(err: str, starts: str) -> bool:
    """``err`` is a single ``aatrox-relay: error:`` line beginning with ``starts``."""
    return err.count("\n") == 1 and err.startswith(f"aatrox-relay: error: {starts}")


# --- where the store is --------------------------------------------------------------


@pytest.mark.anyio
async def test_status_from_another_directory_reads_the_configs_store(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """A relative store.url names a file beside the config, whichever directory poll-once
    and status run in: status shows the polls, and no store appears anywhere else."""
    sim, receiver = peers
    etc, here, there = tmp_path / "etc", tmp_path / "here", tmp_path / "there"
    for directory in (etc, here, there):
        directory.mkdir()
    config = write_config(etc / "relay.toml", sim.url, receiver.url, "sqlite:///relay.db")
    code, _out, err = await cli_in(here, "poll-once", "--config", str(config))
    assert code == 0, err
    code, out, err = await cli_in(there, "status", "--config", str(config))
    assert code == 0, err
    assert "never" not in out.split("webhooks")[0]
    assert (etc / "relay.db").is_file()
    assert list(here.iterdir()) == [] and list(there.iterdir()) == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "command",
    [["status"], ["deliveries", "list"], ["deliveries", "replay", "--dead"], ["prune"]],
    ids=["status", "list", "replay", "prune"],
)
async def test_operator_commands_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    """Where no store exists, status, deliveries and prune say so in one line naming
    store.url and exit 2, leaving nothing behind."""
    db = tmp_path / "state" / "relay.db"
    (tmp_path / "state").mkdir()
    config = write_config(tmp_path / "relay.toml", NOWHERE, NOWHERE, f"sqlite:///{db}")
    code, out, err = await cli(*command, "--config", str(config))
    assert (code, out) == (2, "")
    assert err == (
        f"aatrox-relay: error: store.url: no store at {db} "
        '(run "aatrox-relay run" first, or check store.url)\n'
    )
    assert list((tmp_path / "state").iterdir()) == []


@pytest.fixture
def wide_umask() -> Iterator[None]:
    """The umask of a shell outside systemd (022), inherited by the relay started here."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.mark.anyio
@pytest.mark.usefixtures("wide_umask")
async def test_the_running_relays_files_are_private_across_a_restart(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """Started under umask 022, run keeps its store, -wal, -shm and lock file 0600, and
    so does the run after a restart."""
    sim, receiver = peers
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{state / 'relay.db'}"
    )
    for round_ in range(2):
        relay = RelayProcess(config)
        await relay.start()
        try:
            sim.inject(SENDER, NUMBERS[0], f"round {round_}")
            await receiver.wait_for(round_ + 1, timeout=20)
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        finally:
            assert await relay.terminate() == 0
        assert {"relay.db", "relay.db-wal", "relay.db-shm", "relay.db.lock"} <= set(modes)
        assert set(modes.values()) == {0o600}, {name: oct(m) for name, m in modes.items()}


# --- check ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_check_opens_the_store(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """check reports a store not made yet as new without making it, and an existing one
    with its schema revision."""
    sim, receiver = peers
    db = tmp_path / "relay.db"
    config = write_config(tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{db}")
    code, out, err = await cli("check", "--config", str(config))
    assert code == 0, out + err
    assert f"store sqlite:///{db}: new: no store yet, run creates it" in out
    assert not db.exists()
    assert (await cli("poll-once", "--config", str(config)))[0] == 0
    code, out, err = await cli("check", "--config", str(config))
    assert code == 0, out + err
    assert f"store sqlite:///{db}: schema at revision {HEAD}, current" in out


@pytest.mark.anyio
async def test_check_reports_postgresql(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path, postgres_url: str
) -> None:
    """check connects to PostgreSQL: an empty schema is new; one it cannot reach is a
    failure, exit 2, that never shows the URL's password."""
    sim, receiver = peers
    config = write_config(tmp_path / "relay.toml", sim.url, receiver.url, postgres_url)
    code, out, err = await cli("check", "--config", str(config))
    assert code == 0, out + err
    assert ": new: no relay tables yet, run creates them" in out

    unreachable = f"postgresql://relay:{DB_PASSWORD}@127.0.0.1:9/relay"
    config = write_config(tmp_path / "relay.toml", sim.url, receiver.url, unreachable)
    code, out, err = await cli("check", "--config", str(config))
    assert code == 2
    assert "FAILED store postgresql://relay:***@127.0.0.1:9/relay: cannot open it: " in out
    assert DB_PASSWORD not in out + err


@pytest.mark.anyio
async def test_a_bad_store_url_stops_check_offline_and_status(tmp_path: Path) -> None:
    """A store.url whose port is no number fails check --offline, status and run with
    one line naming store.url, never its password, and no traceback."""
    url = f"postgresql://relay:{DB_PASSWORD}@db:notaport/relay"
    config = write_config(tmp_path / "relay.toml", NOWHERE, NOWHERE, url)
    for command in (["check", "--offline"], ["status"], ["run"]):
        code, out, err = await cli(*command, "--config", str(config))
        assert (code, out) == (2, ""), command
        assert err == "aatrox-relay: error: store.url: the port is not a number\n"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (404, "FAILED webhook hook: HEAD answered 404 Not Found: nothing is there"),
        (401, "FAILED webhook hook: HEAD answered 401 Unauthorized: it refuses the relay"),
        (403, "FAILED webhook hook: HEAD answered 403 Forbidden: it refuses the relay"),
        (405, "webhook hook: reachable (HEAD answered 405 Method Not Allowed)"),
        (500, "webhook hook: reachable (HEAD answered 500 Internal Server Error)"),
    ],
)
async def test_check_judges_the_webhooks_answer(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path, status: int, verdict: str
) -> None:
    """A webhook answering 404, 401 or 403 fails check (exit 2); 405 (no HEAD) and other
    answers prove it reachable (exit 0)."""
    sim, receiver = peers
    receiver.respond(Rule(status=status))
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    code, out, err = await cli("check", "--config", str(config))
    assert code == (2 if verdict.startswith("FAILED") else 0), out + err
    assert verdict in out.splitlines()[-1]


@pytest.mark.anyio
async def test_check_sends_the_webhooks_headers_and_user_agent(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """check's HEAD carries the webhook's configured headers and the relay's User-Agent."""
    sim, receiver = peers
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}",
        extra='headers = { "X-Api-Key" = "k-123", "Authorization" = "Basic dTpw" }\n',
    )  # fmt: skip
    code, out, err = await cli("check", "--config", str(config))
    assert code == 0, out + err
    (probe,) = receiver.deliveries
    assert probe.headers["x-api-key"] == "k-123"
    assert probe.headers["authorization"] == "Basic dTpw"
    assert probe.headers["user-agent"] == f"aatrox-relay/{__version__}"


# --- send --text-file ------------------------------------------------------------------


@pytest.fixture
async def sim_config(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Path]]:
    """A simulator, and a config pointing at it."""
    async with Simulator(token="test-token-5f2c") as sim:
        url = f"sqlite:///{tmp_path / 'relay.db'}"
        yield sim, write_config(tmp_path / "relay.toml", sim.url, NOWHERE, url)


SEND = ["send", "--from", "0400000001", "--to", "0412345678"]
TEXT = "Your table is ready 🍽\nsecond line"


@pytest.mark.anyio
async def test_send_text_file_and_standard_input(
    sim_config: tuple[Simulator, Path], tmp_path: Path
) -> None:
    """send --text-file PATH and --text-file - (standard input) send the text, trailing
    line breaks dropped, without it ever being on the command line."""
    sim, config = sim_config
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT + "\n", encoding="utf-8")
    code, _out, err = await cli(*SEND, "--text-file", str(text_file), "--config", str(config))
    assert code == 0, err
    code, _out, err = await cli_in(
        tmp_path, *SEND, "--text-file", "-", "--config", str(config), stdin=(TEXT + "\r\n").encode()
    )
    assert code == 0, err
    assert [sms.text for sms in sim.sent] == [TEXT, TEXT]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("args", "content", "starts"),
    [
        (["--text-file", "{missing}"], None, "--text-file: cannot read {missing}: No such file"),
        (["--text-file", "{dir}"], None, "--text-file: cannot read {dir}: Is a directory"),
        (["--text-file", "{file}"], b"caf\xe9", "--text-file: {file} is not UTF-8 text"),
        (["--text-file", "{file}"], b"x" * 70_000, "--text-file: {file} is larger than 64 KiB"),
        (["--text-file", "-"], b" \n\n", "--text-file: standard input holds no text"),
    ],
    ids=["missing", "directory", "latin-1", "huge", "empty-stdin"],
)
async def test_send_text_file_errors(
    sim_config: tuple[Simulator, Path],
    tmp_path: Path,
    args: list[str],
    content: bytes | None,
    starts: str,
) -> None:
    """A text file that is missing, a directory, not UTF-8, far too large or empty is one
    line naming the option, exit 2, and nothing is sent."""
    sim, config = sim_config
    paths = {"missing": tmp_path / "nope.txt", "dir": tmp_path, "file": tmp_path / "t.txt"}
    if content is not None and args[1] != "-":
        paths["file"].write_bytes(content)
    args = [arg.format(**paths) for arg in args]
    stdin = content if args[1] == "-" else None
    code, out, err = await cli_in(tmp_path, *SEND, *args, "--config", str(config), stdin=stdin)
    assert (code, out) == (2, "")
    assert one_line_error(err, starts.format(**paths)), err
    assert sim.sent == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "args", [["--text", "hi", "--text-file", "-"], []], ids=["both", "neither"]
)
async def test_send_takes_exactly_one_text_option(
    sim_config: tuple[Simulator, Path], args: list[str]
) -> None:
    """--text and --text-file together, or neither, is a usage error (exit 2)."""
    _sim, config = sim_config
    code, out, err = await cli(*SEND, *args, "--config", str(config))
    assert (code, out) == (2, "")
    assert "--text" in err and "Traceback" not in err


# --- what the wheel ships --------------------------------------------------------------


@pytest.mark.parametrize(("original", "copy"), SHIPPED.items())
def test_shipped_copies_match_the_repository(original: str, copy: str) -> None:
    """relay/data holds byte-identical copies of the example config, the systemd unit and
    the events' JSON Schema: edit the repository's file, then copy it there."""
    assert (ROOT / copy).read_bytes() == (ROOT / original).read_bytes(), f"cp {original} {copy}"


def test_pyproject_ships_relay_data() -> None:
    """Every file in relay/data is listed in pyproject's package-data, so the wheel has it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = set(pyproject["tool"]["setuptools"]["package-data"]["relay"])
    files = {f"data/{p.name}" for p in (ROOT / "relay" / "data").iterdir()}
    assert files == {copy.removeprefix("relay/") for copy in SHIPPED.values()}
    assert files <= shipped


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("command", "original"),
    [("print-config", "config.example.toml"), ("print-unit", "systemd/aatrox-relay.service")],
)
async def test_print_commands_write_the_shipped_files(
    tmp_path: Path, command: str, original: str
) -> None:
    """print-config and print-unit write the example config and the unit byte for byte,
    needing no config, in any directory."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", command, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out == (ROOT / original).read_bytes()
