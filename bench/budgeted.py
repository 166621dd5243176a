"""The runs of polling within an API budget: conversations and the provider's limit.

**conversations**: many numbers under ``poll.budget``, a few of them holding
conversations: a customer writes, the app answers at once (assumed), the customer
writes again 2 to 10 s after the message reached the webhook, for a minute. Measured:
message-to-webhook of every message after its conversation's first, with adaptive
polling (``poll.min_interval``) and with fixed polling at the fastest interval the same
budget allows (numbers / budget), each against fresh peers.

**provider limit**: the simulator answers 429 past a rate per token; the relay, with no
``poll.budget``, polls more numbers than that rate allows. Measured at the simulator,
once the rate has settled: requests a second, the share answered 429, and how many
numbers were served a poll.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.procs import BenchError, Forwarder, Peers
from bench.runs import LISTING_LIMIT, STARTUP_TIMEOUT, Settings, percentile
from bench.stores import numbers, write_config

CONVERSATION_NUMBERS = 1000
CONVERSATIONS = 20
CONVERSATION_BUDGET = 60.0
CONVERSATION_INTERVAL = 30.0
CONVERSATION_MIN_INTERVAL = 1.0
CONVERSATION_SECONDS = 60.0
#: A customer writes again this many seconds (uniform) after the app got the last message.
CONVERSATION_GAPS = (2.0, 10.0)
PROVIDER_LIMIT = 30.0
PROVIDER_NUMBERS = 500
PROVIDER_INTERVAL = 5.0
#: How often a wait looks at the peers.
LOOK_EVERY = 0.5


@dataclass(frozen=True)
class Conversations:
    """One conversations run."""

    interval: float
    adaptive: bool
    #: Messages after their conversation's first: how many were sent, their latencies.
    said: int
    latencies: list[float]
    firsts: list[float]
    #: API requests a second while the conversations ran.
    request_rate: float

    def percentile(self, q: float) -> float:
        """The q-quantile of the later messages' latencies; undelivered count as infinite."""
        return percentile(self.latencies, self.said, q)


@dataclass(frozen=True)
class ProviderLimit:
    """One provider-limit run, measured over its settled window."""

    numbers: int
    limit: float
    rate: float
    #: 429s over requests, in the window and over the whole run.
    limited_share: float
    limited_share_all: float
    #: Numbers served at least one poll in the window.
    polled: int
    window: float


def _wait_first_polls(peers: Peers, forwarder: Forwarder, count: int, timeout: float) -> None:
    """Until ``count`` numbers have been served a poll."""
    deadline = time.monotonic() + timeout
    while len(peers.stats()["first_polls"]) < count:
        forwarder.check()
        if time.monotonic() > deadline:
            msg = f"{forwarder.label}: not every number was polled within {timeout:g}s"
            raise BenchError(msg)
        time.sleep(LOOK_EVERY)


def run_conversations(settings: Settings, *, adaptive: bool) -> Conversations:
    """One conversations run, adaptive or at the fixed interval the budget allows."""
    env = settings.env
    count = settings.size(CONVERSATION_NUMBERS, 10)
    talking = max(2, round(CONVERSATIONS * count / CONVERSATION_NUMBERS))
    budget = CONVERSATION_BUDGET
    seconds = CONVERSATION_SECONDS if settings.scale >= 1 else max(6.0, 60 * settings.scale)
    quiet = min(CONVERSATION_INTERVAL, max(2.0, CONVERSATION_INTERVAL * settings.scale))
    fixed = count / budget
    interval = quiet if adaptive else fixed
    poll = f'budget = "{budget:g}/s"\n'
    if adaptive:
        poll += f'min_interval = "{CONVERSATION_MIN_INTERVAL:g}s"\nactive_for = "2m"\n'
    label = f"conversations-{'adaptive' if adaptive else 'fixed'}"
    polled = numbers(count)
    with Peers(env, listing_limit=LISTING_LIMIT) as peers:
        store = f"sqlite:///{env.workdir / f'{label}.db'}"
        config = write_config(
            env.workdir / f"{label}.toml", peers, store, polled, interval=interval, poll=poll
        )
        with Forwarder(env, "relay", config, label) as forwarder:
            _wait_first_polls(peers, forwarder, count, STARTUP_TIMEOUT + count / budget)
            before = peers.stats()
            peers.converse(polled[:talking], seconds, CONVERSATION_GAPS)
            deadline = time.monotonic() + seconds + CONVERSATION_GAPS[1] + interval + 10
            while True:
                forwarder.check()
                doc = peers.conversations()
                delivered = len(doc["firsts"]) + len(doc["others"])
                said = doc["said_firsts"] + doc["said_others"]
                if (doc["done"] and delivered >= said) or time.monotonic() > deadline:
                    break
                time.sleep(LOOK_EVERY)
            after = peers.stats()
    rate = (after["api_requests"] - before["api_requests"]) / (after["now"] - before["now"])
    return Conversations(
        interval,
        adaptive,
        int(doc["said_others"]),
        [float(x) for x in doc["others"]],
        [float(x) for x in doc["firsts"]],
        rate,
    )


def run_provider_limit(settings: Settings) -> ProviderLimit:
    """The relay without ``poll.budget`` against a simulator limiting its token."""
    env = settings.env
    count = settings.size(PROVIDER_NUMBERS, 10)
    limit = max(1.0, PROVIDER_LIMIT * count / PROVIDER_NUMBERS)
    settle = max(5.0, min(20.0, 2 * count / limit))
    window = max(settings.seconds, 1.5 * count / limit)
    polled = numbers(count)
    with Peers(env, listing_limit=LISTING_LIMIT, rate_limit=limit) as peers:
        store = f"sqlite:///{env.workdir / 'provider-limit.db'}"
        config = write_config(
            env.workdir / "provider-limit.toml",
            peers,
            store,
            polled,
            interval=PROVIDER_INTERVAL,
        )
        with Forwarder(env, "relay", config, "provider-limit") as forwarder:
            _wait_first_polls(peers, forwarder, count, STARTUP_TIMEOUT + 2 * count / limit)
            time.sleep(settle)
            forwarder.check()
            before = peers.stats()
            time.sleep(window)
            forwarder.check()
            after = peers.stats()
    requests = after["api_requests"] - before["api_requests"]
    limited = after["limited"] - before["limited"]
    served = sum(
        1 for number in polled if after["polls"].get(number, 0) > before["polls"].get(number, 0)
    )
    return ProviderLimit(
        count,
        limit,
        requests / (after["now"] - before["now"]),
        limited / max(requests, 1),
        after["limited"] / max(after["api_requests"], 1),
        served,
        window,
    )
