"""Two-way messaging: a webhook's ``{"reply": ...}`` becomes exactly one SMS to the sender."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from relay.daemon import Relay
from relay.testing.faults import Fault
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import (
    NUMBERS,
    SENDER,
    RelayProcess,
    relay_config,
    replies_survive_sigkill,
    run_for_replies,
    time_limit,
    write_config,
)

pytestmark = pytest.mark.anyio


def reply(body: object, times: int | None = None) -> Rule:
    """A 200 answer carrying ``body`` as JSON."""
    return Rule(status=200, body=json.dumps(body).encode(), times=times)


@pytest.mark.parametrize(
    "body", [{"reply": "Thanks, see you at 3"}, {"reply": {"text": "Thanks, see you at 3"}}]
)
async def test_reply_becomes_one_sms(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str, body: dict[str, object]
) -> None:
    """Both reply shapes send one SMS from the configured number to the original sender."""
    receiver.respond(reply(body))
    sim.inject(SENDER, NUMBERS[0], "Can I book for 3pm?")
    async with Relay(relay_config(sim.url, receiver.url, sqlite_url)) as relay:
        await run_for_replies(relay, sim, 1)
    assert [(s.endpoint, s.sender, list(s.recipients), s.text) for s in sim.sent] == [
        ("send", NUMBERS[0], [SENDER], "Thanks, see you at 3")
    ]


async def test_disclaimer_numbers_reply_through_disclaimer(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A number with disclaimer = true replies through /sms/send/disclaimer."""
    receiver.respond(reply({"reply": "Noted"}))
    config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    config = dataclasses.replace(
        config, numbers=(dataclasses.replace(config.numbers[0], disclaimer=True),)
    )
    sim.inject(SENDER, NUMBERS[0], "hi")
    async with Relay(config) as relay:
        await run_for_replies(relay, sim, 1)
    assert [s.endpoint for s in sim.sent] == ["send_disclaimer"]


async def test_reply_after_failed_attempts_is_sent_once(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A webhook that fails twice, then replies on every later attempt, causes one SMS."""
    receiver.respond(Rule(status=500, times=2))
    receiver.respond(reply({"reply": "Got it"}))
    sim.inject(SENDER, NUMBERS[0], "hello")
    config = relay_config(sim.url, receiver.url, sqlite_url, retry_initial=0.1, retry_max=0.2)
    async with Relay(config) as relay:
        await run_for_replies(relay, sim, 1)
    assert len(sim.sent) == 1
    assert len([d for d in receiver.deliveries if d.verified]) == 3


async def test_api_errors_are_retried_and_400_is_final(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """A 503 from /sms/send is retried until it goes through; a 400 gives up at once."""
    receiver.respond(reply({"reply": "first"}, times=1))
    receiver.respond(reply({"reply": "second"}, times=1))
    sim.add_fault(Fault(status=503, count=2, path="/api/v2/sms/send"))
    sim.inject(SENDER, NUMBERS[0], "one")
    config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    async with Relay(config) as relay:
        relay.outbox.backoff = dataclasses.replace(relay.outbox.backoff, initial=0.1, maximum=0.2)
        await run_for_replies(relay, sim, 1)
        sim.add_fault(Fault(status=400, count=1, path="/api/v2/sms/send"))
        sim.inject(SENDER, NUMBERS[0], "two")
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        async with time_limit(15):
            while sim.pending_faults or sim.requests["send"] < 4:
                await asyncio.sleep(0.05)
        stop.set()
        await task
        counts = await relay.store.call(relay.store.sync.outbound_counts)
    assert [s.text for s in sim.sent] == ["first"]
    assert counts == {"pending": 0, "sent": 1, "failed": 1, "unknown": 0, "refused": 0}


async def test_a_non_reply_answer_sends_nothing(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """Empty, non-JSON, or reply-less 2xx bodies, and an empty reply, send no SMS."""
    for body in (b"", b"ok", b'{"status": "received"}', b'{"reply": ""}', b'{"reply": 42}'):
        receiver.respond(Rule(status=200, body=body, times=1))
    for i in range(5):
        sim.inject(SENDER, NUMBERS[0], f"m{i}")
    config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    async with Relay(config) as relay:
        summary = await relay.poll_once()
    assert summary.counts["delivered"] == 5
    assert sim.sent == []


@pytest.mark.parametrize("sender", ["Telstra", "1234", "+61412345678999"])
async def test_no_reply_to_a_sender_that_is_not_a_phone_number(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str, sender: str
) -> None:
    """A reply to an alphanumeric sender id or a short code is ignored: the message is
    delivered, no SMS is sent (it could only be refused or reach someone else)."""
    receiver.respond(reply({"reply": "Thanks"}))
    sim.inject(sender, NUMBERS[0], "Your bill is ready")
    config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    async with Relay(config) as relay:
        summary = await relay.poll_once()
    assert summary.counts["delivered"] == 1
    assert sim.requests["send"] == 0


async def test_reply_survives_sigkill(
    sim: Simulator, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Killed after the webhook replied: after restart, exactly one SMS per message."""
    receiver.respond(reply({"reply": "auto-reply"}))
    config = write_config(
        tmp_path / "relay.toml", sim.url, receiver.url, f"sqlite:///{tmp_path / 'relay.db'}"
    )
    await replies_survive_sigkill(RelayProcess(config), sim, receiver)
    assert sorted((s.sender, tuple(s.recipients)) for s in sim.sent) == sorted(
        (NUMBERS[i % 2], (SENDER,)) for i in range(3)
    )
