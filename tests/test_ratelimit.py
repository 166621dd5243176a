"""``rate_limit``: a webhook's requests are spaced by a token bucket, and all arrive."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from relay.config import NumberConfig, load
from relay.daemon import Relay
from relay.errors import ConfigError
from relay.ratelimit import TokenBucket, parse_rate
from relay.testing.clock import FakeClock
from relay.testing.receiver import WebhookReceiver
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, SENDER, relay_config, running, webhook_config

API = '[api]\ntoken = "t"\n'
HOOK = (
    '[[webhooks]]\nname = "crm"\nurl = "https://hooks.example.com/sms"\n'
    'secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="\n'
)


def most_in_a_window(starts: Sequence[float], seconds: float) -> int:
    """The most of ``starts`` (sorted) that fall in any window of ``seconds``."""
    most, first = 0, 0
    for last, start in enumerate(starts):
        while start - starts[first] >= seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("20/s", 20.0), ("600/m", 10.0), ("1800/h", 0.5), ("2.5/s", 2.5), (" 20 / s ", 20.0)],
)
def test_rates_are_read_per_second_minute_or_hour(text: str, per_second: float) -> None:
    """A rate is a number of requests per s, m or h."""
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("text", ["20", "0/s", "20/d", "fast", "-1/s", "20/s/s"])
def test_a_bad_rate_is_a_one_line_error(tmp_path: Path, text: str) -> None:
    """A rate the relay cannot read names webhooks[N].rate_limit."""
    path = tmp_path / "relay.toml"
    path.write_text(API + HOOK + f'rate_limit = "{text}"\n')
    with pytest.raises(ConfigError, match=r"^webhooks\[0\]\.rate_limit: .* is not a rate"):
        load(path, environ={})


def test_a_3000_message_burst_at_20_per_second_keeps_the_limit() -> None:
    """3,000 requests asked for at once at 20/s start no more than 21 a second over any
    five-second window and never more than 40 in one second; the last one starts about
    150 s later, not sooner."""
    clock = FakeClock()
    bucket = TokenBucket(20.0, clock)
    starts = [bucket.take() for _ in range(3000)]
    assert most_in_a_window(starts, 5.0) <= 21 * 5
    assert most_in_a_window(starts, 1.0) <= 40
    assert starts[-1] == pytest.approx((3000 - bucket.capacity) / 20.0)


def test_an_idle_bucket_saves_only_a_quarter_second() -> None:
    """After a long quiet spell a lane may start a quarter second's worth at once, no more."""
    clock = FakeClock()
    bucket = TokenBucket(20.0, clock)
    for _ in range(10):
        bucket.take()
    clock.advance(3600)
    waits = [bucket.take() for _ in range(7)]
    assert waits[:5] == [0.0] * 5
    assert waits[5:] == [pytest.approx(0.05), pytest.approx(0.10)]


def test_a_slow_rate_still_lets_one_request_through() -> None:
    """Under 4 requests a second the bucket still holds one request."""
    bucket = TokenBucket(0.5, FakeClock())
    assert [bucket.take(), bucket.take()] == [0.0, 2.0]


@pytest.mark.anyio
async def test_a_limited_webhook_gets_the_whole_burst_at_its_rate(
    sim: Simulator, receiver: WebhookReceiver, sqlite_url: str
) -> None:
    """Through a running relay: 130 messages to a webhook limited to 20/s all arrive, no
    more than 21 a second over any five-second window and never 40 in one second, and
    the burst is spread over about 6.3 s."""
    base = relay_config(sim.url, receiver.url, sqlite_url, numbers=NUMBERS[:1])
    config = dataclasses.replace(
        base,
        webhooks=(webhook_config(receiver.url, name="hook", rate_limit=20.0, concurrency=16),),
        numbers=(NumberConfig(NUMBERS[0], ("hook",), 0.2),),
    )
    for i in range(130):
        sim.inject(SENDER, NUMBERS[0], f"burst {i}")
    async with Relay(config) as relay, running(relay):
        await receiver.wait_for(130, timeout=30)
    starts = sorted(d.received_at for d in receiver.deliveries)
    assert len({d.webhook_id for d in receiver.deliveries}) == 130
    assert most_in_a_window(starts, 5.0) <= 21 * 5
    assert most_in_a_window(starts, 1.0) < 40
    assert starts[-1] - starts[0] >= (130 - 5) / 20 * 0.95
