"""docs/events.schema.json is the webhook contract: every body the relay sends fits it
(the ``receiver`` fixture checks each one, in every test), and it catches a renamed,
retyped or unannounced field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from relay.daemon import Relay
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import EVENTS_SCHEMA, NUMBERS, event_problems, relay_config, running

GOOD: dict[str, Any] = {
    "type": "sms.received",
    "timestamp": "2026-11-24T13:40:01.250Z",
    "data": {
        "id": "1234",
        "number": "+61400000001",
        "from": "+61412345678",
        "to": "+61400000001",
        "text": "Running late 🏃",
        "received_at": "2026-11-24T13:40:00Z",
    },
}


def test_the_schema_is_valid_json_schema() -> None:
    """The file is a valid 2020-12 schema, and the README's example event fits it."""
    Draft202012Validator.check_schema(EVENTS_SCHEMA)
    assert event_problems(GOOD) == []


def changed(path: tuple[str, ...], value: object = None, *, delete: bool = False) -> object:
    """GOOD with the field at ``path`` set to ``value`` (or deleted)."""
    doc = copy.deepcopy(GOOD)
    target: dict[str, Any] = doc
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (changed(("data", "sender"), "+61412345678"), "Additional properties"),
        (changed(("data", "from"), delete=True), "'from' is a required property"),
        (changed(("data", "id"), 1234), "is not of type 'string'"),
        (changed(("data", "to"), "0400000001"), "does not match"),
        (changed(("data", "received_at"), "2026-11-24 13:40:00"), "does not match"),
        (changed(("type",), "sms.recieved"), "was expected"),
        (changed(("timestamp",), "yesterday"), "does not match"),
    ],
    ids=["unannounced", "removed", "retyped", "national-to", "bad-time", "bad-type", "no-time"],
)
def test_a_drifting_payload_is_caught(doc: object, problem: str) -> None:
    """Each kind of drift a code change could bring is reported, naming the field."""
    problems = event_problems(doc)
    assert any(problem in p for p in problems), problems


def test_consumers_validating_with_the_schema_accept_added_fields() -> None:
    """The published schema itself lets an added field through (only the tests are strict),
    so a consumer that validates with it survives an additive change."""
    added = changed(("data", "language"), "en")
    assert list(Draft202012Validator(EVENTS_SCHEMA).iter_errors(added)) == []
    assert event_problems(added) != []


@pytest.mark.anyio
async def test_real_deliveries_fit_the_schema(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """What a running relay sends for a phone number, a sender id, a short code and
    emoji fits the strict schema."""
    for sender, text in [("+61412345678", "hi 👋"), ("Telstra", "bill"), ("1234", "")]:
        sim.inject(sender, NUMBERS[0], text)
    config = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    async with Relay(config) as relay, running(relay):
        await receiver.wait_for(3, timeout=20)
    bodies = [json.loads(d.body) for d in receiver.deliveries if d.verified]
    assert len(bodies) >= 3
    assert all(event_problems(body) == [] for body in bodies)
