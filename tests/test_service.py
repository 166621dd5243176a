"""``aatrox-relay run`` as a service: systemd notify, HTTP endpoints, reload, token, Sentry."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.httpd import HttpServer
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import (
    NUMBERS,
    SEND_TOKEN,
    SENDER,
    TOKEN,
    FakeSentry,
    RelayProcess,
    cli,
    write_config,
)
from tests.test_numbers import SPELLINGS, WRONG_NUMBERS

pytestmark = pytest.mark.anyio


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        """The first datagram containing ``needle``, read as they come."""
        loop = asyncio.get_running_loop()

        async def find() -> str:
            for message in self.messages:
                if needle in message:
                    return message
            while True:
                data = await loop.sock_recv(self.sock, 4096)
                self.messages.append(data.decode())
                if needle in self.messages[-1]:
                    return self.messages[-1]

        return await asyncio.wait_for(find(), timeout)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """A notify socket in the test's directory."""
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.sock.close()


async def _listening(relay: RelayProcess) -> str:
    line = await relay.wait_for_line("relay.http.listening")
    match = re.search(r"url=(\S+)", line)
    assert match, line
    return match.group(1)


def _config(tmp_path: Path, sim: Simulator, receiver: WebhookReceiver, extra: str = "") -> Path:
    return write_config(
        tmp_path / "relay.toml",
        sim.url,
        receiver.url,
        f"sqlite:///{tmp_path / 'relay.db'}",
        extra=f'[http]\nlisten = "127.0.0.1:0"\nsend_token = "{SEND_TOKEN}"\n{extra}',
    )


async def _ready(http: httpx.AsyncClient, timeout: float = 5.0) -> httpx.Response:
    """GET /readyz until it answers 200 (every number has had a successful poll), or
    the last answer after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await http.get("/readyz")
        if answer.status_code == 200 or asyncio.get_running_loop().time() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def test_systemd_protocol_health_reload_and_stop(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path, notify: NotifySocket
) -> None:
    """READY, watchdog pings, health endpoints, SIGHUP reload, STOPPING and exit 0."""
    sim, receiver = peers
    config = _config(tmp_path, sim, receiver)
    relay = RelayProcess(config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    await relay.start()
    ready = await notify.wait_for("READY=1")
    assert "STATUS=polling 2 numbers" in ready
    await notify.wait_for("WATCHDOG=1")
    url = await _listening(relay)
    sim.inject(SENDER, NUMBERS[0], "hello")
    await receiver.wait_for(1, timeout=20)
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready_answer = await _ready(http)
        assert ready_answer.status_code == 200, ready_answer.text
        metrics = (await http.get("/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        delivered = [
            s
            for s in families["aatrox_relay_deliveries"].samples
            if s.labels.get("outcome") == "delivered" and s.name.endswith("_total")
        ]
        assert sum(s.value for s in delivered) == 1
        polls = families["aatrox_relay_polls"].samples
        assert any(s.labels["outcome"] == "ok" and s.value >= 1 for s in polls)
        # SIGHUP with a third number: RELOADING, then READY again, and the number is polled.
        before = sim.requests["receive"]
        config.write_text(
            config.read_text().replace(
                "[[webhooks]]", '[[numbers]]\nnumber = "+61400000003"\n\n[[webhooks]]'
            )
        )
        relay.signal(signal.SIGHUP)
        await notify.wait_for("RELOADING=1")
        await relay.wait_for_line("relay.reloaded")
        sim.inject(SENDER, "+61400000003", "after reload")
        await receiver.wait_for(2, timeout=20)
        assert sim.requests["receive"] > before
        # A broken config on SIGHUP is refused; the relay keeps running.
        config.write_text(config.read_text().replace('interval = "200ms"', 'interval = "fast"'))
        relay.signal(signal.SIGHUP)
        refused = await relay.wait_for_line("relay.reload.refused")
        assert "poll.interval" in refused
        sim.inject(SENDER, NUMBERS[1], "still running")
        await receiver.wait_for(3, timeout=20)
        assert (await http.get("/healthz")).status_code == 200
    assert await relay.terminate() == 0
    await notify.wait_for("STOPPING=1")
    text = "\n".join(relay.lines)
    assert "hello" not in text and TOKEN not in text and SEND_TOKEN not in text


async def test_rejected_token_turns_readyz_503_and_reaches_sentry_once(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """A 401 makes /readyz say why, and Sentry gets one scrubbed event, not one per poll."""
    sim, receiver = peers
    ingest = FakeSentry()
    async with HttpServer(ingest) as sentry_server:
        dsn = f"http://public@127.0.0.1:{sentry_server.port}/1"
        config = _config(tmp_path, sim, receiver, extra=f'[sentry]\ndsn = "{dsn}"\n')
        relay = RelayProcess(config)
        sim.token = "rotated-elsewhere"
        await relay.start()
        url = await _listening(relay)
        async with httpx.AsyncClient(base_url=url) as http:
            answer = None
            for _ in range(100):
                answer = await http.get("/readyz")
                if "401" in answer.text or "token" in answer.text:
                    break
                await asyncio.sleep(0.1)
            assert answer is not None and answer.status_code == 503
            assert "rejected the token" in answer.text
            assert NUMBERS[0] not in answer.text
        polls = sim.requests["receive"]
        while sim.requests["receive"] < polls + 4:
            await asyncio.sleep(0.1)
        assert await relay.terminate() == 0
    events = ingest.events()
    assert len(events) == 1, events
    everything = b"".join(ingest.envelopes)
    assert b"rejected the token" in everything
    for secret in (TOKEN, "rotated-elsewhere", NUMBERS[0], NUMBERS[1]):
        assert secret.encode() not in everything


async def test_token_file_is_reread_after_a_401(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """Rotating the token is writing the new one to the token file: the relay recovers."""
    sim, receiver = peers
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = _config(tmp_path, sim, receiver)
    config.write_text(
        config.read_text().replace(f'token = "{TOKEN}"', f'token_file = "{token_file}"')
    )
    relay = RelayProcess(config)
    await relay.start()
    sim.token = "new-token-after-rotation"
    await relay.wait_for_line("relay.poll.failed")
    token_file.write_text("new-token-after-rotation\n")
    await relay.wait_for_line("relay.token.reloaded")
    sim.inject(SENDER, NUMBERS[0], "after rotation")
    await receiver.wait_for(1, timeout=30)
    assert await relay.terminate() == 0


async def test_second_relay_on_one_sqlite_store_refuses(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """Two `run`s on the same SQLite store: the second exits at once with a clear message."""
    sim, receiver = peers
    config = _config(tmp_path, sim, receiver)
    first = RelayProcess(config)
    await first.start()
    code, _out, message = await cli("run", "--config", str(config), timeout=30)
    assert code == 1
    assert message.count("\n") == 1 and "already running on the store" in message
    assert await first.terminate() == 0


async def test_send_endpoint(peers: tuple[Simulator, WebhookReceiver], tmp_path: Path) -> None:
    """POST /v1/send queues and sends; a wrong token gets 401 and sends nothing."""
    sim, receiver = peers
    relay = RelayProcess(_config(tmp_path, sim, receiver))
    await relay.start()
    url = await _listening(relay)
    body = {"from": NUMBERS[0], "to": "0412345678", "text": "Your table is ready"}
    async with httpx.AsyncClient(base_url=url) as http:
        wrong = await http.post("/v1/send", json=body, headers={"Authorization": "Bearer nope"})
        missing = await http.post("/v1/send", json=body)
        assert (wrong.status_code, missing.status_code) == (401, 401)
        bad = await http.post(
            "/v1/send", json={**body, "text": ""}, headers={"Authorization": f"Bearer {SEND_TOKEN}"}
        )
        assert bad.status_code == 400 and "empty" in bad.json()["error"]
        ok = await http.post(
            "/v1/send", json=body, headers={"Authorization": f"Bearer {SEND_TOKEN}"}
        )
        assert ok.status_code == 202 and ok.json()["status"] == "queued"
    for _ in range(200):
        if sim.sent:
            break
        await asyncio.sleep(0.05)
    assert await relay.terminate() == 0
    assert [(s.endpoint, s.sender, list(s.recipients), s.text) for s in sim.sent] == [
        ("send", NUMBERS[0], ["+61412345678"], "Your table is ready")
    ]


async def test_send_endpoint_refuses_wrong_numbers(
    peers: tuple[Simulator, WebhookReceiver], tmp_path: Path
) -> None:
    """POST /v1/send with a wrong number at "from", "to" or in a "to" list: 400 naming
    the field and nothing sent; the usual spellings of a valid number are sent as E.164."""
    sim, receiver = peers
    relay = RelayProcess(_config(tmp_path, sim, receiver))
    await relay.start()
    url = await _listening(relay)
    body = {"from": NUMBERS[0], "to": "0412345678", "text": "Your table is ready"}
    auth = {"Authorization": f"Bearer {SEND_TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=auth) as http:
        for wrong, reason in WRONG_NUMBERS.items():
            for field, change in [
                ('"from"', {"from": wrong}),
                ('"to"', {"to": wrong}),
                ('"to"[1]', {"to": ["0412345679", wrong]}),
            ]:
                answer = await http.post("/v1/send", json={**body, **change})
                assert answer.status_code == 400, (field, wrong)
                error = answer.json()["error"]
                assert error.startswith(f"{field}: ") and reason in error and wrong not in error
        for spelling in SPELLINGS:
            answer = await http.post("/v1/send", json={**body, "to": spelling})
            assert answer.status_code == 202, answer.text
    for _ in range(200):
        if len(sim.sent) >= len(SPELLINGS):
            break
        await asyncio.sleep(0.05)
    assert await relay.terminate() == 0
    assert [(s.sender, list(s.recipients)) for s in sim.sent] == [
        (NUMBERS[0], ["+61412345678"])
    ] * len(SPELLINGS)
