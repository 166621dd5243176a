"""A webhook's circuit breaker: after a run of failures, one probe per interval until
the webhook answers again; then the backlog drains."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
import sentry_sdk
from prometheus_client.parser import text_string_to_metric_families

from relay.admin import status_text
from relay.circuit import Circuit, is_failure
from relay.clock import SystemClock
from relay.config import NumberConfig
from relay.daemon import Relay
from relay.dispatcher import Dispatcher
from relay.metrics import Metrics
from relay.retry import NoJitter
from relay.sentry import Alerts
from relay.service import Telemetry
from relay.store import AsyncStore, Store
from relay.testing.clock import FakeClock
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, recording_sentry, relay_config, running, webhook_config


@pytest.mark.parametrize(
    ("status", "ok", "fails"),
    [
        (None, False, True),
        (500, False, True),
        (503, False, True),
        (408, False, True),
        (429, False, True),
        (200, True, False),
        (400, False, False),
        (410, False, False),
        (301, False, False),
    ],
)
def test_what_counts_as_the_webhook_failing(status: int | None, ok: bool, fails: bool) -> None:
    """No answer, 5xx, 408 and 429 count; a 2xx or another 4xx proves the webhook is up."""
    assert is_failure(status, ok) is fails


def test_it_opens_after_the_threshold_in_a_row_and_once() -> None:
    """Nine failures leave it closed, a success starts the count again, the tenth in a row
    opens it, and it says so once."""
    changes: list[bool] = []
    circuit = Circuit("hook", 10, 30.0, FakeClock(), changes.append)
    for _ in range(9):
        circuit.record(failed=True)
    circuit.record(failed=False)
    for _ in range(9):
        circuit.record(failed=True)
    assert not circuit.open
    circuit.record(failed=True)
    circuit.record(failed=True)
    assert circuit.open
    assert changes == [True]


def test_zero_turns_it_off() -> None:
    """circuit_failures = 0: no number of failures opens it."""
    circuit = Circuit("hook", 0, 30.0, FakeClock())
    for _ in range(1000):
        circuit.record(failed=True)
    assert not circuit.open


@pytest.mark.anyio
async def test_one_probe_at_a_time_then_all_at_once() -> None:
    """While open, the waiting attempts start one probe per interval; a failed probe waits
    the interval again, a cancelled one lets the next start, and the first probe that
    succeeds closes the circuit and lets every waiting attempt start."""
    changes: list[bool] = []
    circuit = Circuit("hook", 2, 0.2, SystemClock(), changes.append)
    circuit.record(failed=True)
    circuit.record(failed=True)
    assert circuit.open
    waiting = [asyncio.create_task(circuit.admit()) for _ in range(5)]
    await asyncio.sleep(0.1)
    assert not any(t.done() for t in waiting)  # before the first probe time
    await asyncio.sleep(0.2)
    probes = [t for t in waiting if t.done()]
    assert [t.result() for t in probes] == [True]  # exactly one probe
    circuit.record(failed=True)  # the probe failed: the next one waits an interval
    waiting.remove(probes[0])
    await asyncio.sleep(0.1)
    assert not any(t.done() for t in waiting)
    await asyncio.sleep(0.2)
    probes = [t for t in waiting if t.done()]
    assert len(probes) == 1
    circuit.abandon(probe=True)  # cancelled mid-way: another probe may start at once
    waiting.remove(probes[0])
    await asyncio.sleep(0.05)
    probes = [t for t in waiting if t.done()]
    assert len(probes) == 1
    circuit.record(failed=False)  # the webhook is back
    waiting.remove(probes[0])
    assert await asyncio.gather(*waiting) == [False, False]
    assert not circuit.open
    assert changes == [True, False]


@pytest.mark.anyio
async def test_a_webhook_down_for_a_while_gets_few_attempts_then_everything(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A webhook answering 503 for 6 s while 200 messages arrive gets the failures that open
    its circuit (10, plus the attempts already in flight) and a probe a second, not a
    retry storm; once it answers again, every message arrives within seconds."""
    base = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    hook = webhook_config(
        receiver.url,
        name="hook",
        retry_initial=0.1,
        retry_max=0.2,
        circuit_failures=10,
        circuit_probe=1.0,
    )
    config = dataclasses.replace(
        base, webhooks=(hook,), numbers=(NumberConfig(NUMBERS[0], ("hook",), 0.2),)
    )
    receiver.respond(Rule(status=503))
    async with Relay(config) as relay, running(relay):
        down_since = time.monotonic()
        for i in range(200):  # over 4 s
            sim.inject(SENDER, NUMBERS[0], f"m{i}")
            await asyncio.sleep(0.02)
        await asyncio.sleep(max(down_since + 6.0 - time.monotonic(), 0.0))
        during = len(receiver.deliveries)
        shown = relay.store.sync.read_status([], ["hook"]).webhooks[0]
        assert shown.circuit_open_since is not None
        assert "open " in status_text(relay.store.sync.read_status([], ["hook"]))
        receiver.clear_rules()
        back = time.monotonic()
        await receiver.wait_for(200, timeout=20)
        drained = time.monotonic() - back
    assert during <= 10 + hook.concurrency + 6, f"{during} attempts while the webhook was down"
    assert drained < 5.0
    assert len(receiver.accepted_ids()) == 200
    closed = relay.store.sync.read_status([], ["hook"]).webhooks[0]
    assert closed.circuit_open_since is None


def test_the_gauge_and_sentry_hear_it_open_and_close_once() -> None:
    """aatrox_relay_webhook_circuit_open is 0, 1 while open, 0 again; Sentry gets one
    error event when it opens (not again while it stays open) and one info event when
    it closes."""
    metrics = Metrics()
    telemetry = Telemetry(metrics, Alerts())

    def gauge() -> float | None:
        body, _type = metrics.render()
        families = text_string_to_metric_families(body.decode())
        return next(
            (
                s.value
                for f in families
                if f.name == "aatrox_relay_webhook_circuit_open"
                for s in f.samples
                if s.labels.get("webhook") == "hook"
            ),
            None,
        )

    with recording_sentry() as transport:
        metrics.delivery("hook", "retry")
        assert gauge() == 0.0
        telemetry.circuit_changed("hook", True)
        telemetry.circuit_changed("hook", True)
        assert gauge() == 1.0
        telemetry.circuit_changed("hook", False)
        assert gauge() == 0.0
        sentry_sdk.flush()
        events = transport.items("event")
    assert [(e["level"], e["tags"]["alert"]) for e in events] == [
        ("error", "circuit_open:hook"),
        ("info", "circuit_open:hook"),
    ]


@pytest.mark.anyio
async def test_a_reloaded_webhook_no_longer_shows_an_open_circuit(sqlite_url: str) -> None:
    """A webhook whose lane is replaced by a reload starts with a closed circuit, and
    status stops saying its circuit is open."""
    store = AsyncStore(Store.open(sqlite_url, SystemClock()))
    store.sync.balance([])  # a live heartbeat: status shows this relay's circuits
    hook = webhook_config("http://127.0.0.1:9", name="hook", circuit_failures=1)
    dispatcher = Dispatcher(store, [hook], SystemClock(), NoJitter())
    try:
        lane = dispatcher.lanes["hook"]
        assert lane.circuit.record(failed=True) is True
        await lane.save_circuit(True)
        assert store.sync.read_status([], ["hook"]).webhooks[0].circuit_open_since is not None
        changed = dataclasses.replace(hook, timeout=3.0)
        await dispatcher.reconfigure([changed], lambda _number: False, 1.0)
        assert not dispatcher.lanes["hook"].circuit.open
        assert store.sync.read_status([], ["hook"]).webhooks[0].circuit_open_since is None
    finally:
        await dispatcher.aclose()
        store.close()
