"""``aatrox-relay demo``: the simulator, a webhook receiver and the relay, end to end.

Everything runs in this process on loopback with a temporary store: the
simulator plays the Aatrox API, messages are injected into it on two numbers
now and then, the relay polls and delivers them, and the receiver verifies
each signature and prints what arrived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import secrets
import tempfile
import time
from pathlib import Path

from relay import logs
from relay.config import (
    ApiConfig,
    Backfill,
    Config,
    NumberConfig,
    PollConfig,
    RunConfig,
    StoreConfig,
    TokenSource,
    WebhookConfig,
)
from relay.daemon import Relay
from relay.testing.receiver import Delivery, WebhookReceiver
from relay.testing.simulator import Simulator

NUMBERS = ("+61400000001", "+61400000002")
SENDERS = ("+61412345678", "+61498765432", "+61423456789")
TEXTS = (
    "Is my order on its way?",
    "Running 10 min late, sorry! 🏃",
    "Bonjour, c'est confirmé pour demain ?",
    "こんにちは、予約を確認したいです",
    "STOP",
    "Can you call me back? 📞",
)
#: Seconds between injected messages (on average).
INJECT_EVERY = 0.8
#: After --seconds, how long to wait for the last deliveries.
GRACE = 5.0


def _config(api_url: str, token: str, hook_url: str, secret: bytes, store: Path) -> Config:
    return Config(
        api=ApiConfig(
            token_source=TokenSource("inline", token), token=token, base_url=api_url, timeout=5.0
        ),
        store=StoreConfig(url=f"sqlite:///{store}"),
        poll=PollConfig(interval=1.0, jitter=0.2, backfill=Backfill("all")),
        numbers=tuple(NumberConfig(n, ("demo",), 1.0) for n in NUMBERS),
        run=RunConfig(shutdown_timeout=2.0),
        webhooks=(
            WebhookConfig("demo", hook_url, secret, timeout=5.0, retry_initial=1.0, retry_max=10.0),
        ),
    )


async def demo(seconds: float | None) -> int:
    """Run the demo; with ``seconds``, stop after that long and say whether all arrived."""
    logs.setup(os.environ.get("AATROX_RELAY_DEMO_LOG", "warning"))
    token = secrets.token_urlsafe(16)
    secret = secrets.token_bytes(24)
    injected: dict[str, float] = {}
    delivered: set[str] = set()

    def on_delivery(d: Delivery) -> None:
        data = d.payload.get("data")
        message_id = str(data.get("id")) if isinstance(data, dict) else "?"
        if not d.verified:
            print(f"  REJECTED  #{message_id}  bad signature: {d.error}", flush=True)
            return
        latency = d.received_at - injected.get(message_id, d.received_at)
        first = message_id not in delivered
        delivered.add(message_id)
        print(
            f"  delivered #{message_id:<4} webhook-id {d.webhook_id[:16]}…  "
            f"signature ok  latency {latency:.2f}s{'' if first else '  (repeat)'}",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="aatrox-relay-demo-") as tmp:
        async with (
            Simulator(token=token) as sim,
            WebhookReceiver(secret, on_delivery=on_delivery) as receiver,
        ):
            config = _config(sim.url, token, receiver.url, secret, Path(tmp) / "relay.db")
            print(f"simulator  {sim.url}   webhook receiver  {receiver.url}")
            print(
                f"relay      polling {', '.join(NUMBERS)} every 1s; "
                f"secret whsec_{base64.b64encode(secret).decode()}"
            )
            print("Ctrl-C to stop." if seconds is None else f"running for {seconds:g}s.")
            stop = asyncio.Event()
            async with Relay(config) as relay:
                runner = asyncio.create_task(relay.run(stop))
                rng = random.Random()
                deadline = None if seconds is None else time.monotonic() + seconds
                try:
                    while deadline is None or time.monotonic() < deadline:
                        message = sim.inject(
                            rng.choice(SENDERS), rng.choice(NUMBERS), rng.choice(TEXTS)
                        )
                        injected[str(message.id)] = time.monotonic()
                        print(
                            f"  received  #{message.id:<4} {message.sender} -> "
                            f"{message.recipient}  {message.text!r}",
                            flush=True,
                        )
                        await asyncio.sleep(rng.uniform(0.3, 2 * INJECT_EVERY - 0.3))
                    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                        await receiver.wait_for(len(injected), timeout=GRACE)
                except asyncio.CancelledError:
                    pass
                finally:
                    stop.set()
                    await runner
    missing = sorted(set(injected) - delivered, key=int)
    print(
        f"{len(injected)} received, {len(delivered & set(injected))} delivered"
        + (f", missing: {', '.join(missing)}" if missing else "")
    )
    return 0 if not missing else 1
