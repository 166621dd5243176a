"""Helpers shared by the end-to-end tests: configs for a relay pointed at loopback peers."""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from relay import logs, sentry
from relay.config import (
    ApiConfig,
    Backfill,
    Config,
    NumberConfig,
    PollConfig,
    RunConfig,
    SentryConfig,
    StoreConfig,
    TokenSource,
    WebhookConfig,
)
from relay.http import Request, Response
from relay.testing.faults import Fault

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

    from relay.daemon import Relay
    from relay.testing.receiver import WebhookReceiver
    from relay.testing.simulator import Simulator

TOKEN = "test-token-5f2c"
KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NUMBERS = ("+61400000001", "+61400000002")
SENDER = "+61412345678"
#: The ``send_token`` of the tests' ``[http]`` tables (``POST /v1/send``).
SEND_TOKEN = "send-token-0123456789abcdef"
#: The least ``[api]`` table a config file loads with.
API = '[api]\ntoken = "t"\n'
#: The time a test's fake clock starts at.
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def relay_config(
    api_url: str,
    hook_url: str,
    store_url: str,
    *,
    numbers: tuple[str, ...] = NUMBERS,
    interval: float = 0.2,
    backfill: Backfill | None = None,
    retention: float = 30 * 86400.0,
    retry_initial: float = 0.2,
    retry_max: float = 1.0,
) -> Config:
    """A config for a fast-polling relay against the simulator and one receiver."""
    return Config(
        api=ApiConfig(
            token_source=TokenSource("inline", TOKEN), token=TOKEN, base_url=api_url, timeout=2.0
        ),
        store=StoreConfig(url=store_url, retention=retention),
        poll=PollConfig(interval=interval, jitter=0.0, backfill=backfill or Backfill("all")),
        numbers=tuple(NumberConfig(n, ("hook",), interval) for n in numbers),
        run=RunConfig(shutdown_timeout=2.0),
        webhooks=(
            WebhookConfig(
                "hook", hook_url, KEY, timeout=2.0, retry_initial=retry_initial, retry_max=retry_max
            ),
        ),
    )


def write_config(
    path: Path,
    api_url: str,
    hook_url: str,
    store_url: str,
    *,
    extra: str = "",
    interval: str = "200ms",
    numbers: tuple[str, ...] = NUMBERS,
    store_extra: str = "",
) -> Path:
    """The same kind of config as TOML, for subprocess tests of the real command."""
    entries = "".join(f'\n[[numbers]]\nnumber = "{n}"\n' for n in numbers)
    path.write_text(
        f"""
[api]
base_url = "{api_url}"
token = "{TOKEN}"
timeout = "2s"

[store]
url = "{store_url}"
{store_extra}

[poll]
interval = "{interval}"
jitter = 0
backfill = "all"
{entries}
[[webhooks]]
name = "hook"
url = "{hook_url}"
secret = "{SECRET}"
timeout = "2s"
retry_initial = "200ms"
retry_max = "1s"
{extra}
""",
        encoding="utf-8",
    )
    return path


class RelayProcess:
    """``python -m relay run`` in a subprocess, its stderr drained in the background."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = env
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._started = asyncio.Event()
        self._line = asyncio.Event()
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
            env={**os.environ, **(self.env or {})},
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        await asyncio.wait_for(self._started.wait(), timeout)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            self._line.set()
            if "relay.started" in line:
                self._started.set()

    async def wait_for_line(self, needle: str, timeout: float = 20.0) -> str:
        """The first stderr line containing ``needle``, waiting for it if need be."""

        async def find() -> str:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                self._line.clear()
                await self._line.wait()

        return await asyncio.wait_for(find(), timeout)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the relay."""
        assert self.proc is not None
        self.proc.send_signal(sig)

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


async def cli(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """``python -m relay ARGS`` in a subprocess, so the test's event loop keeps serving
    its loopback peers; the exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


Item = tuple[dict[str, Any], bytes]


def parse_envelope(raw: bytes) -> list[Item]:
    """The items of a serialised Sentry envelope: (item header, payload)."""
    _, _, rest = raw.partition(b"\n")
    items = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] :]
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items


class FakeSentry:
    """A loopback Sentry ingest endpoint that keeps the envelopes posted to it."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        self.paths: list[str] = []

    async def __call__(self, request: Request) -> Response:
        """Store the (decompressed) envelope and answer 200."""
        body = request.body
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.paths.append(request.path)
        self.envelopes.append(body)
        return Response(status=200, body=b"{}")

    def events(self) -> list[dict[str, Any]]:
        """The event items of every envelope received."""
        return [
            json.loads(payload)
            for raw in self.envelopes
            for header, payload in parse_envelope(raw)
            if header.get("type") == "event"
        ]


#: A DSN whose host never answers: the recording transport replaces the HTTP one.
UNUSED_DSN = "http://public@127.0.0.1:9/1"


class RecordingTransport(Transport):
    """Keeps every envelope, serialised exactly as it would be sent."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        """Record the envelope's bytes."""
        self.raw.append(envelope.serialize())

    def items(self, kind: str) -> list[dict[str, Any]]:
        """The JSON payloads of every item of type ``kind`` recorded so far."""
        return [
            json.loads(payload)
            for raw in self.raw
            for header, payload in parse_envelope(raw)
            if header.get("type") == kind
        ]

    def everything(self) -> bytes:
        """All bytes that would have left the process."""
        return b"".join(self.raw)


@contextmanager
def recording_sentry() -> Iterator[RecordingTransport]:
    """Sentry set up with a recording transport, shut down and forgotten afterwards."""
    recording = RecordingTransport()
    config = SentryConfig(dsn=UNUSED_DSN, environment="test")
    assert sentry.setup(config, version="9.9.9", transport=recording) is True
    try:
        yield recording
    finally:
        sentry.close()
        for scope in (sentry_sdk.get_isolation_scope(), sentry_sdk.get_current_scope()):
            scope.clear()
        sentry_sdk.get_global_scope().set_client(None)  # inactive again for later tests


def webhook_config(url: str, **overrides: object) -> WebhookConfig:
    """Webhook ``a`` at ``url`` signed with KEY: 2 s timeout, retries from 5 s to 60 s,
    given up after 600 s; ``overrides`` replace any field."""
    values: dict[str, object] = {
        "name": "a",
        "url": url,
        "secret": KEY,
        "timeout": 2.0,
        "retry_initial": 5.0,
        "retry_max": 60.0,
        "give_up_after": 600.0,
    }
    values.update(overrides)
    return WebhookConfig(**values)  # type: ignore[arg-type]


@contextmanager
def kept_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back after code that calls logs.setup."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        logs.setup("info", pii=False)
        root.handlers[:] = handlers
        root.setLevel(level)


if sys.version_info >= (3, 11):
    time_limit = asyncio.timeout
else:  # pragma: no cover - Python 3.10, which has no asyncio.timeout

    @asynccontextmanager
    async def time_limit(seconds: float) -> AsyncIterator[None]:
        """``asyncio.timeout`` for 3.10: cancel the block after ``seconds``, as TimeoutError."""
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            yield
        except asyncio.CancelledError:
            if expired:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()


#: The events' JSON Schema, as published in docs/.
EVENTS_SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "docs" / "events.schema.json").read_text("utf-8")
)


def strict(schema: object) -> object:
    """``schema`` with ``additionalProperties: false`` on every object that lists its
    properties: the published schema lets fields a consumer does not know through (they
    are only ever added), the tests refuse fields it does not describe."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def _strict_validator() -> Draft202012Validator:
    """The validator of the strict events schema: built once, it checks every body."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(
        strict(EVENTS_SCHEMA), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def event_problems(payload: object) -> list[str]:
    """Why ``payload`` is not an event the strict events schema describes, naming each
    field (the errors inside ``oneOf`` branches included); [] if it is one."""
    from jsonschema import ValidationError

    def leaves(error: ValidationError) -> list[ValidationError]:
        return [leaf for e in error.context for leaf in leaves(e)] if error.context else [error]

    found = [leaf for e in _strict_validator().iter_errors(payload) for leaf in leaves(e)]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


@asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[None]:
    """``relay.run`` in the background for the block; then stopped, and awaited."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def until_sent(
    sim: Simulator, count: int, *, more_polls: int = 0, timeout: float = 15.0
) -> None:
    """Wait until the simulator has been asked to send ``count`` SMS, then for
    ``more_polls`` more polls: time for one SMS too many to show."""
    async with time_limit(timeout):
        while len(sim.sent) < count:
            await asyncio.sleep(0.05)
        polls = sim.requests["receive"]
        while sim.requests["receive"] < polls + more_polls:
            await asyncio.sleep(0.05)


async def run_for_replies(relay: Relay, sim: Simulator, count: int) -> None:
    """Run the relay until ``count`` sends reached the simulator, then four more polls."""
    async with running(relay):
        await until_sent(sim, count, more_polls=4)


async def replies_survive_sigkill(
    relay: RelayProcess, sim: Simulator, receiver: WebhookReceiver, per_message: int = 1
) -> None:
    """Start ``relay`` with the API's send hanging, inject three messages from SENDER (to
    NUMBERS in turn), and SIGKILL it once each was delivered and the first reply is on its
    way; restart it with the API answering, wait for ``per_message`` SMS a message and six
    more polls (time for one too many to show), and stop it cleanly. The caller checks
    what was sent."""
    sim.add_fault(Fault(status=0, delay=30.0, count=1000, path="/api/v2/sms/send"))  # hangs
    await relay.start()
    for i in range(3):
        sim.inject(SENDER, NUMBERS[i % 2], f"m{i}")
    await receiver.wait_for(3, timeout=20)
    while sim.requests["send"] < 1:  # the first reply is on its way to a hung API
        await asyncio.sleep(0.05)
    await relay.kill()
    sim.clear_faults()
    await relay.start()
    await until_sent(sim, 3 * per_message, more_polls=6, timeout=30)
    assert await relay.terminate() == 0
