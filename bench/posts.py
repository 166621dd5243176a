"""``python -m bench.posts``: the CPU of one webhook POST, the relay's against a bare one.

Isolates the request path from the rest of the relay: ``workers`` loops in one process
POST the same deliveries to the bench's sink (``bench.peers``, a process of its own),
first through a bare ``httpx.AsyncClient.post`` (what ``bench.bare`` does), then through
:meth:`relay.webhook.Webhook.send` (the relay's whole request: the body, the signature,
the streamed and size-capped read of the answer, the overall timeout). Each is measured
as the CPU time of the thread running the event loop, per request, at each asked
request rate (``0``: as fast as it goes). Used in ``docs/benchmarks.md`` to show what a
request costs the relay at the rate it runs, against the bare forwarder at its rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

import httpx

from bench.peers import KEY
from bench.procs import Env, Peers
from relay.clock import SystemClock
from relay.config import WebhookConfig
from relay.signing import headers as signed_headers
from relay.store import DueDelivery
from relay.webhook import Webhook, body

DEFAULT_REQUESTS = 4000
DEFAULT_WORKERS = 8
TIMEOUT = 5.0

Post = Callable[[DueDelivery], Awaitable[bool]]


def delivery(index: int) -> DueDelivery:
    """A delivery like the burst's: one short SMS."""
    now = datetime.now(timezone.utc)
    number, sender = "+61400000001", "+61412345678"
    return DueDelivery(
        index, "sink", f"msg_{index}", 0, now, number, str(index), sender, number, "hello", now
    )


async def measure(post: Post, requests: int, workers: int, rate: float) -> tuple[float, float]:
    """``requests`` POSTs by ``workers`` loops, each spaced to make ``rate`` a second in
    all (0: none): (CPU seconds of this thread per request, requests a second)."""
    left = list(range(requests))
    failed = 0

    async def loop() -> None:
        nonlocal failed
        while left:
            index = left.pop()
            if rate:
                await asyncio.sleep(workers / rate)
            failed += not await post(delivery(index))

    cpu, wall = time.thread_time(), time.monotonic()
    await asyncio.gather(*(loop() for _ in range(workers)))
    cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
    if failed:
        msg = f"{failed} of {requests} requests failed"
        raise RuntimeError(msg)
    return cpu / requests, requests / wall


async def bare(url: str, requests: int, workers: int, rate: float) -> tuple[float, float]:
    """Measured through a bare ``client.post``, as ``bench.bare`` sends."""
    async with httpx.AsyncClient(
        timeout=TIMEOUT,
        limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
    ) as client:

        async def post(item: DueDelivery) -> bool:
            now = datetime.now(timezone.utc)
            payload = body(item, now)
            headers = signed_headers(KEY, item.webhook_id, int(now.timestamp()), payload)
            headers["Content-Type"] = "application/json"
            response = await client.post(url, content=payload, headers=headers)
            return 200 <= response.status_code < 300

        return await measure(post, requests, workers, rate)


async def relay(url: str, requests: int, workers: int, rate: float) -> tuple[float, float]:
    """Measured through :meth:`relay.webhook.Webhook.send`."""
    config = WebhookConfig(name="sink", url=url, secret=KEY, timeout=TIMEOUT, concurrency=workers)
    webhook = Webhook(config, SystemClock())

    async def post(item: DueDelivery) -> bool:
        return (await webhook.send(item)).ok

    try:
        return await measure(post, requests, workers, rate)
    finally:
        await webhook.aclose()


async def run(requests: int, workers: int, rates: list[float]) -> list[str]:
    """The table's lines."""
    lines = [
        "| asked rate | bare: CPU per POST, rate | relay: CPU per POST, rate | ratio |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="aatrox-posts-") as workdir:
        peers = Peers(Env(Path(workdir)))
        try:
            for rate in rates:
                b_cpu, b_rate = await bare(peers.hook_url, requests, workers, rate)
                r_cpu, r_rate = await relay(peers.hook_url, requests, workers, rate)
                asked = f"{rate:,.0f}/s" if rate else "as fast as it goes"
                lines.append(
                    f"| {asked} | {b_cpu * 1000:.3f} ms, {b_rate:,.0f}/s "
                    f"| {r_cpu * 1000:.3f} ms, {r_rate:,.0f}/s | {r_cpu / b_cpu:.2f}x |"
                )
        finally:
            peers.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.posts``."""
    parser = argparse.ArgumentParser(prog="python -m bench.posts", description=__doc__)
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument(
        "--rate",
        type=float,
        action="append",
        help="requests a second in all (repeatable; 0: as fast as it goes); default 0, 2000, "
        "1000, 500",
    )
    args = parser.parse_args(argv)
    rates = args.rate if args.rate is not None else [0.0, 2000.0, 1000.0, 500.0]
    for line in asyncio.run(run(args.requests, args.workers, rates)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
