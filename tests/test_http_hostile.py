"""Hostile clients against the HTTP endpoint of a real ``python -m relay run`` subprocess.

Memory is read from /proc/<pid>/status (VmRSS) of the relay while real loopback sockets
announce huge bodies; the listening log is checked for the addresses really bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, RelayProcess, write_config

pytestmark = pytest.mark.anyio

SEND_TOKEN = "send-token-0123456789abcdef"
MIB = 1024 * 1024
#: The body each unauthenticated attacker announces and tries to send.
ANNOUNCED = 60 * MIB
ATTACKERS = 10
#: How far the relay's RSS may grow under the attack (the issue's acceptance bound).
RSS_SLACK = 50 * 1000 * 1000
#: Each hostile request must be answered (or its connection closed) within this.
PROMPT = 5.0
#: Bytes an attacker writes per call.
CHUNK = 256 * 1024
#: More than the kernel's loopback socket buffers hold: an attacker that got this much
#: out was being read by the relay.
UNREAD_BOUND = 16 * MIB
#: How often RSS is sampled during the attack.
SAMPLE_EVERY = 0.01
#: A little more body than POST /v1/send accepts (16 KiB).
PAST_SEND_LIMIT = 20 * 1024


def rss(pid: int) -> int:
    """The resident set size of process ``pid`` in bytes, from /proc/<pid>/status."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) * 1024


@dataclass(frozen=True)
class Outcome:
    """What one hostile client saw."""

    #: The status answered, or None when the connection was closed without one.
    status: int | None
    #: Body bytes the client got out before the answer or the close.
    sent: int
    #: Seconds from the head being sent to the answer or the close.
    elapsed: float


async def _status(reader: asyncio.StreamReader) -> int | None:
    """The status of the answer on ``reader``, or None when the connection ends first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    return int(head.split(b" ", 2)[1])


async def hostile_post(port: int, head: bytes, body: int) -> Outcome:
    """Send ``head``, then up to ``body`` bytes as fast as the relay takes them, until
    it answers or closes; what happened."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    writer.write(head)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        chunk = b"x" * CHUNK
        with contextlib.suppress(ConnectionError):
            while sent < body:
                piece = chunk[: body - sent]
                writer.write(piece)
                await writer.drain()
                sent += len(piece)

    flooding = asyncio.create_task(flood())
    try:
        status = await asyncio.wait_for(_status(reader), PROMPT * 4)
        elapsed = loop.time() - started
    finally:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flooding
        writer.transport.abort()
    return Outcome(status, sent, elapsed)


def send_head(length: int, authorization: str | None = None, *, chunked: bool = False) -> bytes:
    """The head of a ``POST /v1/send`` announcing ``length`` body bytes (or chunked)."""
    lines = ["POST /v1/send HTTP/1.1", "Host: relay", "Content-Type: application/json"]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _config(tmp_path: Path, sim: Simulator, receiver: WebhookReceiver, listen: str) -> Path:
    return write_config(
        tmp_path / "relay.toml",
        sim.url,
        receiver.url,
        f"sqlite:///{tmp_path / 'relay.db'}",
        extra=f'[http]\nlisten = "{listen}"\nsend_token = "{SEND_TOKEN}"\n',
    )


async def _start(
    tmp_path: Path, peers: tuple[Simulator, WebhookReceiver], listen: str = "127.0.0.1:0"
) -> tuple[RelayProcess, str]:
    """A relay serving HTTP on ``listen``; it and its ``relay.http.listening`` line."""
    sim, receiver = peers
    relay = RelayProcess(_config(tmp_path, sim, receiver, listen))
    await relay.start()
    return relay, await relay.wait_for_line("relay.http.listening")


def _port(line: str) -> int:
    match = re.search(r"url=http://\S+:(\d+)", line)
    assert match, line
    return int(match.group(1))


async def test_unauthenticated_60mib_sends_do_not_grow_memory(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """Ten parallel unauthenticated 60 MiB POST /v1/send get 401 (or a close) promptly,
    unread, and leave the relay's RSS within 50 MB of where it started."""
    relay, line = await _start(tmp_path, peers)
    port = _port(line)
    assert relay.proc is not None
    pid = relay.proc.pid
    # Warm up what a first request loads, then take the baseline.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.post("/v1/send", json={})).status_code == 401
    await asyncio.sleep(1.0)
    baseline = rss(pid)
    peak = baseline
    attacking = True

    async def sample() -> None:
        nonlocal peak
        while attacking:
            peak = max(peak, rss(pid))
            await asyncio.sleep(SAMPLE_EVERY)

    sampler = asyncio.create_task(sample())
    try:
        outcomes = await asyncio.gather(
            *(hostile_post(port, send_head(ANNOUNCED), ANNOUNCED) for _ in range(ATTACKERS))
        )
        await asyncio.sleep(0.5)  # anything still held shows after the answers too
    finally:
        attacking = False
        await sampler
    peak = max(peak, rss(pid))
    assert await relay.terminate() == 0
    growth = peak - baseline
    print(
        f"RSS baseline {baseline / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB;",
        f"answers {sorted(str(o.status) for o in outcomes)},",
        f"most sent {max(o.sent for o in outcomes) / MIB:.1f} MiB,",
        f"slowest {max(o.elapsed for o in outcomes):.2f}s",
    )
    assert growth < RSS_SLACK, f"RSS grew {growth / MIB:.1f} MiB (from {baseline / MIB:.1f})"
    for outcome in outcomes:
        assert outcome.status in (401, None), outcome
        assert outcome.elapsed < PROMPT, outcome
        assert outcome.sent < UNREAD_BOUND, outcome


async def test_declared_length_over_the_send_limit_is_413_unread(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """With the right token, a body declared over the send limit (Content-Length) is
    answered 413 from the head alone, no body byte sent; a chunked one (a 1 MiB chunk,
    of which the client sends a little more than the limit and waits) as soon as what is
    read of it passes the limit."""
    relay, line = await _start(tmp_path, peers)
    port = _port(line)
    bearer = f"Bearer {SEND_TOKEN}"
    declared = await hostile_post(port, send_head(1 * MIB, bearer), 0)
    chunked_head = send_head(0, bearer, chunked=True) + b"100000\r\n"
    chunked = await hostile_post(port, chunked_head, PAST_SEND_LIMIT)
    unauthenticated = await hostile_post(port, send_head(1 * MIB), 0)
    assert await relay.terminate() == 0
    assert (declared.status, chunked.status, unauthenticated.status) == (413, 413, 401)
    for outcome in (declared, chunked, unauthenticated):
        assert outcome.elapsed < PROMPT, outcome


async def test_bearer_scheme_is_case_insensitive(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """``bearer`` and ``BEARER`` are the Bearer scheme (RFC 9110 11.1); the token is not."""
    relay, line = await _start(tmp_path, peers)
    body = {"from": NUMBERS[0], "to": "0412345678", "text": "Your table is ready"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{_port(line)}") as http:
        statuses = [
            (await http.post("/v1/send", json=body, headers={"Authorization": auth})).status_code
            for auth in (
                f"bearer {SEND_TOKEN}",
                f"BEARER  {SEND_TOKEN}",
                f"bearer {SEND_TOKEN.upper()}",
                f"Basic {SEND_TOKEN}",
                "bearer",
            )
        ]
    assert await relay.terminate() == 0
    assert statuses == [202, 202, 401, 401, 401]


async def test_listening_log_names_the_bound_address(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """A loopback listen logs its real address and no exposure warning."""
    relay, line = await _start(tmp_path, peers)
    port = _port(line)
    assert f"addresses=127.0.0.1:{port}" in line
    assert await relay.terminate() == 0
    assert not any("relay.http.exposed" in text for text in relay.lines)


async def test_wildcard_listen_logs_all_interfaces_and_warns(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """``listen = "0.0.0.0:..."`` logs 0.0.0.0 (not 127.0.0.1) and warns that the send
    endpoint is reachable from other hosts."""
    relay, line = await _start(tmp_path, peers, listen="0.0.0.0:0")
    port = _port(line)
    warning = await relay.wait_for_line("relay.http.exposed")
    assert await relay.terminate() == 0
    assert f"addresses=0.0.0.0:{port}" in line
    assert " warning relay.http.exposed " in warning
    assert f"addresses=0.0.0.0:{port}" in warning
    assert SEND_TOKEN not in "\n".join(relay.lines)
