"""SIGKILL of a real ``aatrox-relay run`` process loses nothing and keeps webhook-ids stable."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.receiver import Rule, WebhookReceiver
from relay.simulator import Simulator
from tests.support import KEY, NUMBERS, SENDER, TOKEN, write_config

pytestmark = pytest.mark.anyio


class RelayProcess:
    """``python -m relay run`` in a subprocess, its stderr drained in the background."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._started = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 20.0) -> None:
        """Start the relay and wait for its ``relay.started`` event."""
        self._started.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "run",
            "--config",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        await asyncio.wait_for(self._started.wait(), timeout)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if "relay.started" in line:
                self._started.set()

    async def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        if self._reader:
            await self._reader

    async def terminate(self) -> int:
        """SIGTERM, and the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 15)
        if self._reader:
            await self._reader
        return code


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """The simulator, in this process, on loopback."""
    async with Simulator(token=TOKEN) as s:
        yield s


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """The webhook receiver, in this process, on loopback."""
    async with WebhookReceiver(KEY) as r:
        yield r


def _ids_by_message(receiver: WebhookReceiver) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for d in receiver.deliveries:
        if d.verified:
            data = d.payload["data"]
            assert isinstance(data, dict)
            found.setdefault((str(data["number"]), str(data["id"])), set()).add(d.webhook_id)
    return found


async def test_kill_between_poll_and_delivery_loses_nothing(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Messages recorded but not yet delivered when the relay is killed are delivered after."""
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    receiver.respond(Rule(delay=30.0))  # the webhook hangs: nothing gets acknowledged
    relay = RelayProcess(config)
    await relay.start()
    injected = [sim.inject(SENDER, NUMBERS[i % 2], f"m{i}") for i in range(10)]
    while len(receiver.deliveries) < 4:  # attempts under way: the messages are recorded
        await asyncio.sleep(0.05)
    await relay.kill()
    before = _ids_by_message(receiver)
    receiver.clear_rules()  # the webhook answers 204 from now on
    await relay.start()
    await receiver.wait_for(10, timeout=20)
    assert await relay.terminate() == 0
    after = _ids_by_message(receiver)
    assert set(after) == {(m.recipient, str(m.id)) for m in injected}
    for key, ids in after.items():
        assert len(ids) == 1, key
        assert before.get(key, ids) == ids


async def test_repeated_kills_during_traffic_lose_nothing(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Kill the relay at random moments while messages flow: all arrive, repeats share an id."""
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    rng = random.Random(int(os.environ.get("RELAY_TEST_SEED", "7")))
    relay = RelayProcess(config)
    injected = []
    for _round in range(4):
        await relay.start()
        for _ in range(rng.randint(3, 8)):
            injected.append(sim.inject(SENDER, rng.choice(NUMBERS), "traffic"))
            await asyncio.sleep(rng.uniform(0.0, 0.15))
        await asyncio.sleep(rng.uniform(0.0, 0.4))
        await relay.kill()
    await relay.start()
    await receiver.wait_for(len(injected), timeout=30)
    assert await relay.terminate() == 0
    got = _ids_by_message(receiver)
    assert set(got) == {(m.recipient, str(m.id)) for m in injected}
    assert all(len(ids) == 1 for ids in got.values())
