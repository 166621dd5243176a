"""The relay assembled: config -> scheduler -> poller -> store -> dispatcher -> webhook."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from relay import __version__
from relay.api import AatroxClient
from relay.clock import Clock, SystemClock
from relay.config import Config
from relay.dispatcher import Dispatcher
from relay.errors import RelayError
from relay.logs import fields
from relay.poller import Poller, PollResult
from relay.retry import Jitter
from relay.scheduler import Scheduler
from relay.store import AsyncStore, Store

log = logging.getLogger("relay")

#: How long SIGTERM waits for requests in flight before cutting them off.
SHUTDOWN_TIMEOUT = 10.0
#: Retention runs this long after start, then this often.
PRUNE_FIRST = 60.0
PRUNE_EVERY = 86400.0


@dataclass(frozen=True)
class RoundSummary:
    """What ``poll-once`` did."""

    polls: tuple[PollResult, ...]
    counts: dict[str, int]

    @property
    def failed(self) -> int:
        """Polls that failed."""
        return sum(1 for p in self.polls if p.error)


class Relay:
    """One relay process. Use as ``async with Relay(config) as relay: await relay.run(stop)``."""

    def __init__(
        self, config: Config, *, clock: Clock | None = None, jitter: Jitter | None = None
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.jitter = jitter
        self.store: AsyncStore | None = None
        self.api: AatroxClient | None = None
        self.dispatcher: Dispatcher | None = None
        self.poller: Poller | None = None

    async def __aenter__(self) -> Relay:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the store (migrating it), the API client and the webhooks."""
        loop = asyncio.get_running_loop()
        sync = await loop.run_in_executor(None, Store.open, self.config.store.url, self.clock)
        self.store = AsyncStore(sync)
        self.api = AatroxClient(self.config.api, max_connections=self.config.poll.concurrency + 4)
        self.dispatcher = Dispatcher(self.store, self.config.webhooks, self.clock, self.jitter)
        self.poller = Poller(
            self.config, self.api, self.store, self.clock, on_queued=self.dispatcher.wake
        )
        await self.poller.load()

    async def run(self, stop: asyncio.Event, *, shutdown_timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Poll and deliver until ``stop`` is set, then drain for up to ``shutdown_timeout``."""
        assert self.poller is not None and self.dispatcher is not None
        scheduler = Scheduler(self.poller, self.config.numbers, self.config.poll.jitter, self.clock)
        self.dispatcher.start()
        scheduler.start()
        pruner = asyncio.create_task(self._prune_daily())
        log.info(
            "relay.started",
            extra=fields(
                version=__version__,
                numbers=len(self.config.numbers),
                webhooks=len(self.config.webhooks),
            ),
        )
        await stop.wait()
        log.info("relay.stopping")
        pruner.cancel()
        await scheduler.stop(shutdown_timeout)
        cut = await self.dispatcher.stop(shutdown_timeout)
        log.info("relay.stopped", extra=fields(cut_off=cut))

    async def _prune_daily(self) -> None:
        """Apply store.retention soon after start, then once a day."""
        assert self.store is not None
        await asyncio.sleep(PRUNE_FIRST)
        while True:
            try:
                pruned = await self.store.call(self.store.sync.prune, self.config.store.retention)
            except RelayError as exc:
                log.error("relay.prune.failed", extra=fields(error=str(exc)))
            else:
                log.info("relay.prune.done", extra=fields(messages=pruned))
            await asyncio.sleep(PRUNE_EVERY)

    async def poll_once(self) -> RoundSummary:
        """Poll every number once, then send every delivery due (for cron and scripts)."""
        assert self.poller is not None and self.dispatcher is not None and self.store
        polls = await asyncio.gather(*(self.poller.poll(n.number) for n in self.config.numbers))
        await self.dispatcher.run_once()
        counts = await self.store.call(self.store.sync.counts)
        return RoundSummary(tuple(polls), counts)

    async def close(self) -> None:
        """Release connections and the store."""
        if self.dispatcher is not None:
            await self.dispatcher.aclose()
        if self.api is not None:
            await self.api.aclose()
        if self.store is not None:
            self.store.close()
