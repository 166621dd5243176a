"""The bare forwarder: the practical limit of this stack, to measure the relay against.

``python -m bench.bare --config PATH`` reads the relay's own config and does the
relay's job with nothing durable: each number is polled on the same schedule as the
relay's (first polls at once, spread over min(interval, 1 s); then each number in its
slot of the interval, slots spread evenly, jitter at most a tenth of the interval; a
late poll skipping the ticks it missed), through httpx with a keep-alive connection per
request in flight, as the relay (:mod:`relay.connections`). The ids
seen are kept in a set per number, checked on the raw JSON before anything is parsed;
only new items go through :func:`relay.inbound.parse_message`. Each new message is
signed with :mod:`relay.signing` and POSTed by a fixed pool of ``concurrency``
workers per webhook (a queue, so requests never pile up inside httpx's pool). A failed
delivery forgets the id, so the next poll sends it again. Nothing is stored.

SIGTERM or SIGINT stops it: no new polls, queued deliveries dropped, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import httpx

from relay.config import Config, NumberConfig, WebhookConfig, load
from relay.connections import Connections
from relay.errors import ApiInvalidResponse
from relay.inbound import ENVELOPE_KEYS, ID_KEYS, InboundMessage, parse_detail, parse_message
from relay.signing import headers as signed_headers

API_PREFIX = "/api/v2"
USER_AGENT = "aatrox-bare-forwarder"
#: As relay.scheduler (not imported: it would bring the relay's store into the baseline).
FIRST_POLLS_WITHIN = 1.0
JITTER_SHARE = 0.1


def webhook_id(number: str, provider_id: str, webhook: str) -> str:
    """The relay's webhook-id of one message to one webhook (as relay.store derives it)."""
    digest = hashlib.sha256(f"{number}\x00{provider_id}\x00{webhook}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def _iso(when: datetime, timespec: str = "auto") -> str:
    return when.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def body(number: str, message: InboundMessage, now: datetime) -> bytes:
    """The same ``sms.received`` body the relay sends."""
    doc = {
        "type": "sms.received",
        "timestamp": _iso(now, "milliseconds"),
        "data": {
            "id": message.id,
            "number": number,
            "from": message.sender,
            "to": message.recipient,
            "text": message.text or "",
            "received_at": _iso(message.received_at),
        },
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _items(payload: object) -> list[object]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for holder in (payload, payload.get("data")):
            if isinstance(holder, dict):
                for key in ENVELOPE_KEYS:
                    value = holder.get(key)
                    if isinstance(value, list):
                        return value
    return []


def _raw_id(item: object) -> str | None:
    if isinstance(item, dict):
        for key in ID_KEYS:
            value = item.get(key)
            if value is not None:
                return str(value).strip()
    return None


class BareForwarder:
    """Poll, deduplicate in memory, sign, post."""

    def __init__(self, config: Config) -> None:
        self.config = config
        api = config.api
        posts = sum(hook.concurrency for hook in config.webhooks)
        tls = httpx.create_ssl_context()

        def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                timeout=api.timeout,
                follow_redirects=False,
                verify=tls,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                headers={"User-Agent": USER_AGENT},
            )

        # As the relay: a client of one connection per request in flight.
        self.connections = Connections(config.poll.concurrency + posts, make, api.timeout)
        self.api_base = api.base_url.rstrip("/") + API_PREFIX
        self.api_headers = {"Authorization": f"Bearer {api.token}", "Accept": "application/json"}
        self.tz = api.timezone or timezone.utc
        self.seen: dict[str, set[str]] = {n.number: set() for n in config.numbers}
        self.baselined: set[str] = set()
        self.poll_slots = asyncio.Semaphore(config.poll.concurrency)
        self.queues: dict[str, asyncio.Queue[tuple[str, InboundMessage]]] = {
            hook.name: asyncio.Queue() for hook in config.webhooks
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and post until ``stop`` is set."""
        workers = [
            asyncio.create_task(self._worker(hook))
            for hook in self.config.webhooks
            for _ in range(hook.concurrency)
        ]
        start = time.monotonic()
        count = len(self.config.numbers) or 1
        pollers = [
            asyncio.create_task(
                self._schedule(
                    n,
                    start + min(n.interval, FIRST_POLLS_WITHIN) * i / count,
                    start + n.interval * i / count,
                )
            )
            for i, n in enumerate(self.config.numbers)
        ]
        await stop.wait()
        for task in pollers + workers:
            task.cancel()
        await asyncio.gather(*pollers, *workers, return_exceptions=True)
        await self.connections.aclose()

    async def _schedule(self, number: NumberConfig, first: float, slot: float) -> None:
        """Poll at ``first`` (no jitter), then at ``slot`` (if later) and every interval."""
        jitter = min(self.config.poll.jitter, number.interval * JITTER_SHARE)
        tick, shift = first, 0.0
        while True:
            delay = tick + shift - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self.poll_slots:
                with contextlib.suppress(httpx.HTTPError, ValueError, ApiInvalidResponse):
                    await self._poll(number)
            now = time.monotonic()
            tick = slot if slot > tick else tick + number.interval
            if tick < now:  # coalesce the ticks missed
                tick += (now - tick) // number.interval * number.interval + number.interval
            shift = random.uniform(0, jitter) if jitter else 0.0

    async def _poll(self, number: NumberConfig) -> None:
        params = {"to": number.number}
        if number.sender:
            params["from"] = number.sender
        async with self.connections.client() as client:
            response = await client.get(
                self.api_base + "/sms/receive", params=params, headers=self.api_headers
            )
        response.raise_for_status()
        seen = self.seen[number.number]
        new: list[InboundMessage] = []
        for item in _items(json.loads(response.content)):
            raw = _raw_id(item)
            if raw is None or raw in seen:
                continue
            try:
                message = parse_message(
                    item, number=number.number, region=self.config.api.default_region, tz=self.tz
                )
            except ApiInvalidResponse:
                continue
            if message.text is None:
                message = await self._details(number.number, message)
            seen.add(message.id)
            new.append(message)
        deliver = self._backfill(number.number)
        for message in new:
            if deliver(message):
                for hook in number.webhooks:
                    self.queues[hook].put_nowait((number.number, message))

    async def _details(self, number: str, message: InboundMessage) -> InboundMessage:
        async with self.connections.client() as client:
            response = await client.get(
                f"{self.api_base}/sms/{quote(message.id, safe='')}", headers=self.api_headers
            )
        response.raise_for_status()
        return parse_detail(
            json.loads(response.content),
            number=number,
            region=self.config.api.default_region,
            tz=self.tz,
            message_id=message.id,
        )

    def _backfill(self, number: str) -> Callable[[InboundMessage], bool]:
        """Whether a new message is delivered: poll.backfill applies to the first poll only."""
        if number in self.baselined:
            return _all
        self.baselined.add(number)
        backfill = self.config.poll.backfill
        if backfill.mode == "all":
            return _all
        if backfill.mode == "none":
            return _none
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=backfill.window)
        return lambda m: m.received_at >= cutoff

    async def _worker(self, hook: WebhookConfig) -> None:
        queue = self.queues[hook.name]
        while True:
            number, message = await queue.get()
            now = datetime.now(timezone.utc)
            payload = body(number, message, now)
            headers = signed_headers(
                hook.secret,
                webhook_id(number, message.id, hook.name),
                int(now.timestamp()),
                payload,
            )
            headers["Content-Type"] = "application/json"
            headers.update(hook.headers)
            try:
                async with self.connections.client() as client:
                    response = await client.post(
                        hook.url, content=payload, headers=headers, timeout=hook.timeout
                    )
                ok = 200 <= response.status_code < 300
            except httpx.HTTPError:
                ok = False
            if not ok:  # not stored: the next poll lists it again and it is sent again
                self.seen[number].discard(message.id)


def _all(_message: InboundMessage) -> bool:
    return True


def _none(_message: InboundMessage) -> bool:
    return False


async def _main(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await BareForwarder(config).run(stop)


def main() -> int:
    """``python -m bench.bare --config PATH``."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args()
    asyncio.run(_main(load(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
