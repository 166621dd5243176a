"""``[webhooks.match]``: only the messages a webhook's conditions match are queued for
it; the number's other webhooks get theirs as before."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from relay.config import MatchConfig, NumberConfig, load
from relay.daemon import Relay
from relay.errors import ConfigError
from relay.inbound import InboundMessage
from relay.routing import matches, router
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, relay_config, running, webhook_config

STOP = MatchConfig(text=re.compile(r"(?i)^(stop|help)\b"))
MOBILES = MatchConfig(senders=("+6141", "+61422"))
API = '[api]\ntoken = "t"\n'
HOOK = (
    '[[webhooks]]\nname = "crm"\nurl = "https://hooks.example.com/sms"\n'
    'secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="\n'
)


def sms(sender: str, text: str) -> InboundMessage:
    """A message to NUMBERS[0]."""
    return InboundMessage("1", sender, NUMBERS[0], text, datetime(2026, 1, 1, tzinfo=timezone.utc))


@pytest.mark.parametrize(
    ("match", "sender", "text", "passes"),
    [
        (STOP, "+61412345678", "STOP", True),
        (STOP, "+61412345678", "help me", True),
        (STOP, "+61412345678", "please stop", False),
        (STOP, "+61412345678", "stopwatch", False),
        (MOBILES, "+61412345678", "hi", True),
        (MOBILES, "+61422000000", "hi", True),
        (MOBILES, "+61432000000", "hi", False),
        (MOBILES, "Telstra", "hi", False),
        (MatchConfig(("+6141",), STOP.text), "+61412345678", "stop", True),
        (MatchConfig(("+6141",), STOP.text), "+61412345678", "hello", False),
        (MatchConfig(("+6141",), STOP.text), "+61499999999", "stop", False),
    ],
)
def test_every_condition_must_hold(
    match: MatchConfig, sender: str, text: str, passes: bool
) -> None:
    """A sender prefix and a regular expression searched in the text: all given must hold;
    a sender id that is not a number never matches a prefix."""
    assert matches(match, sms(sender, text)) is passes


def test_a_router_keeps_the_numbers_order_and_unfiltered_webhooks() -> None:
    """Webhooks without match get every message; the order of the number's list is kept."""
    hooks = {
        "all": webhook_config("http://x/all", name="all"),
        "stop": webhook_config("http://x/stop", name="stop", match=STOP),
    }
    route = router(("stop", "all"), hooks)
    assert route(sms("+61412345678", "STOP")) == ("stop", "all")
    assert route(sms("+61412345678", "hello")) == ("all",)


def load_match(tmp_path: Path, lines: str) -> MatchConfig | None:
    """The match of one webhook configured with ``lines`` under [webhooks.match]."""
    path = tmp_path / "relay.toml"
    path.write_text(API + HOOK + "[webhooks.match]\n" + lines)
    return load(path, environ={}).webhooks[0].match


def test_match_is_read_from_the_config(tmp_path: Path) -> None:
    """Prefixes in E.164 or national form (read with api.default_region), and a pattern."""
    match = load_match(tmp_path, 'from = ["+6141", "0422", "+61 43"]\ntext = "(?i)^stop"\n')
    assert match is not None
    assert match.senders == ("+6141", "+61422", "+6143")
    assert match.text is not None and match.text.search("Stop it")


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ('text = "(unclosed"\n', "webhooks[0].match.text: is not a regular expression: "),
        ('text = ""\n', "webhooks[0].match.text: is empty"),
        ('from = ["412"]\n', "webhooks[0].match.from[0]: is not a number prefix"),
        ('from = ["+61abc"]\n', "webhooks[0].match.from[0]: is not a number prefix"),
        ("from = []\n", "webhooks[0].match.from: is empty"),
        ('from = "+6141"\n', "webhooks[0].match.from: expected an array of strings"),
        ('sender = ["+6141"]\n', 'webhooks[0].match: unknown key "sender"'),
    ],
    ids=["bad-regex", "empty-regex", "no-plus", "letters", "empty", "not-a-list", "unknown"],
)
def test_a_bad_match_is_a_one_line_error(tmp_path: Path, lines: str, error: str) -> None:
    """Each mistake in [webhooks.match] is one line that names the key."""
    with pytest.raises(ConfigError) as caught:
        load_match(tmp_path, lines)
    assert str(caught.value).startswith(error)
    assert "\n" not in str(caught.value)


@pytest.mark.anyio
async def test_only_matching_messages_reach_a_filtered_webhook(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """Through a running relay: "stop" gets the STOP/HELP texts, "mobiles" the messages from
    its prefixes, "all" every message, and nothing else goes anywhere."""
    base = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    config = dataclasses.replace(
        base,
        webhooks=(
            webhook_config(f"{receiver.url}/stop", name="stop", match=STOP),
            webhook_config(f"{receiver.url}/mobiles", name="mobiles", match=MOBILES),
            webhook_config(f"{receiver.url}/all", name="all"),
        ),
        numbers=(NumberConfig(NUMBERS[0], ("stop", "mobiles", "all"), 0.2),),
    )
    sent = [
        ("+61412345678", "STOP"),
        ("+61432000000", "help"),
        ("+61412345678", "hello"),
        ("+61432000000", "hi there"),
        ("Telstra", "stopping by"),
        ("+61422000001", "Stop."),
    ]
    for sender, text in sent:
        sim.inject(sender, NUMBERS[0], text)
    expected = {
        "/stop": {"STOP", "help", "Stop."},
        "/mobiles": {"STOP", "hello", "Stop."},
        "/all": {text for _sender, text in sent},
    }
    async with Relay(config) as relay, running(relay):
        await receiver.wait_for(sum(len(texts) for texts in expected.values()), timeout=20)
        await asyncio.sleep(0.5)  # anything extra would arrive now
    got: dict[str, set[str]] = {}
    for d in receiver.deliveries:
        got.setdefault(d.path, set()).add(str(d.payload["data"]["text"]))  # type: ignore[index]
    assert got == expected
