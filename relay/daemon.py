"""The relay assembled: config -> scheduler -> poller -> store -> dispatcher -> webhook.

:class:`Relay` owns the pipeline's parts and their lifecycle: open (migrate the
store, take the single-instance lock on SQLite), run until told to stop,
reload a new config in place, and drain on the way out. What a service adds
around it (signals, systemd, health and metrics, Sentry) is in ``service.py``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from relay import __version__, logs, redact
from relay.api import AatroxClient
from relay.budget import Budget
from relay.clock import Clock, SystemClock
from relay.config import Config
from relay.dispatcher import Dispatcher
from relay.errors import ConfigError, RelayError, StoreError
from relay.events import Events
from relay.leases import LeaseKeeper
from relay.logs import fields
from relay.optout import Keywords
from relay.outbound_events import OutboundEvents
from relay.outbox import Outbox
from relay.poller import Poller
from relay.pollstate import PollResult
from relay.retry import Jitter
from relay.scheduler import Scheduler
from relay.store import AsyncStore, Store, private_file, sqlite_file

log = logging.getLogger("relay")

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


class InstanceLock:
    """An exclusive lock beside a SQLite store, so a second relay refuses to start on it."""

    def __init__(self, db: Path) -> None:
        self.path = db.with_name(db.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise StoreError naming the store. The lock file is created
        ``0600`` (tightened to it if it was left wider), like the store beside it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path, create=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            msg = (
                f"another aatrox-relay ({holder}) is already running on the store "
                f"{self.path.with_suffix('')}; several relays need PostgreSQL"
            )
            raise StoreError(msg) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Let go of the lock."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Relay:
    """One relay process. ``async with Relay(config) as relay: await relay.run(stop)``."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        jitter: Jitter | None = None,
        events: Events | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.jitter = jitter
        self.events = events or Events()
        self._lock: InstanceLock | None = None
        self._store: AsyncStore | None = None
        self._api: AatroxClient | None = None
        self._dispatcher: Dispatcher | None = None
        self._poller: Poller | None = None
        self._outbox: Outbox | None = None
        self._leases: LeaseKeeper | None = None
        self.scheduler: Scheduler | None = None

    # The parts, once open.
    @property
    def store(self) -> AsyncStore:
        """The store."""
        assert self._store is not None, "Relay.open() first"
        return self._store

    @property
    def api(self) -> AatroxClient:
        """The Aatrox API client."""
        assert self._api is not None, "Relay.open() first"
        return self._api

    @property
    def poller(self) -> Poller:
        """The poller."""
        assert self._poller is not None, "Relay.open() first"
        return self._poller

    @property
    def dispatcher(self) -> Dispatcher:
        """The webhook lanes."""
        assert self._dispatcher is not None, "Relay.open() first"
        return self._dispatcher

    @property
    def outbox(self) -> Outbox:
        """The outbound SMS worker."""
        assert self._outbox is not None, "Relay.open() first"
        return self._outbox

    @property
    def leases(self) -> LeaseKeeper:
        """Which numbers this relay polls."""
        assert self._leases is not None, "Relay.open() first"
        return self._leases

    async def __aenter__(self) -> Relay:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Take the store (lock, migrate), the API client, the webhooks."""
        config = self.config
        db = sqlite_file(config.store.url)
        if db is not None:
            self._lock = InstanceLock(db)
            self._lock.acquire()
        loop = asyncio.get_running_loop()
        sync = await loop.run_in_executor(
            None, lambda: Store.open(config.store.url, self.clock, lease=config.store.lease)
        )
        sync.keywords = Keywords.of(config, self.clock)
        self._store = AsyncStore(sync)
        if self._lock is not None:
            # Alone on this store: a killed predecessor's leases and claims need not lapse.
            await self._store.call(sync.reset_ownership)
        # The budget paces requests in real time (asyncio sleeps), whatever clock tests inject.
        budget = Budget(config.poll.budget, SystemClock(), share=self._budget_share)
        self._api = AatroxClient(
            config.api, max_connections=config.poll.concurrency + 4, budget=budget
        )
        self._outbox = Outbox(
            self._store,
            self._api,
            self.clock,
            self.jitter,
            events=self.events,
            retry_unknown=config.outbound.retry_unknown,
            told=OutboundEvents(config.webhooks, config.numbers),
        )
        self._dispatcher = Dispatcher(
            self._store,
            config.webhooks,
            self.clock,
            self.jitter,
            disclaimer=self._disclaimer,
            events=self.events,
            on_reply=self._outbox.wake,
        )
        self._outbox.on_told = self._dispatcher.wake
        self._poller = Poller(
            config,
            self._api,
            self._store,
            self.clock,
            on_queued=self._dispatcher.wake,
            events=self.events,
        )
        self._leases = LeaseKeeper(
            self._store, [n.number for n in config.numbers], on_gained=self._poller.adopt
        )
        await self._poller.load()

    def _budget_share(self) -> float:
        """This relay's part of ``poll.budget``: its part of the numbers. Relays on one store
        split the numbers evenly by lease, so they split the budget; one that holds none
        (yet) only sends, and may spend it all on that."""
        held = len(self._leases.held) if self._leases is not None else 0
        return held / len(self.config.numbers) if held and self.config.numbers else 1.0

    def poll_intervals(self) -> dict[str, float]:
        """Each configured number's current poll interval (adaptive polling moves them)."""
        return self.poller.intervals() if self._poller is not None else {}

    def _disclaimer(self, number: str) -> bool:
        return any(n.number == number and n.disclaimer for n in self.config.numbers)

    async def run(
        self,
        stop: asyncio.Event,
        *,
        reload: asyncio.Event | None = None,
        on_started: asyncio.Event | None = None,
        on_reloaded: Callable[[bool], None] | None = None,
    ) -> None:
        """Poll and deliver until ``stop`` is set; re-read the config whenever ``reload`` is.

        Then drain: no new polls, deliveries in flight get ``run.shutdown_timeout``,
        leases and claims are handed back so another relay can take over at once.
        """
        await self.leases.round()
        self.scheduler = Scheduler(
            self.poller,
            self.config.numbers,
            self.config.poll.jitter,
            self.clock,
            holds=self.leases.holds,
        )
        self.leases.start()
        self.dispatcher.start()
        outbox = asyncio.create_task(self.outbox.run(), name="outbox")
        self.scheduler.start()
        pruner = asyncio.create_task(self._prune_daily(), name="prune")
        log.info(
            "relay.started",
            extra=fields(
                version=__version__,
                numbers=len(self.config.numbers),
                webhooks=len(self.config.webhooks),
                relay_id=self.store.sync.relay_id,
            ),
        )
        if on_started is not None:
            on_started.set()
        reload = reload or asyncio.Event()
        while not stop.is_set():
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                ok = await self.reload()
                if on_reloaded is not None:
                    on_reloaded(ok)
        log.info("relay.stopping")
        timeout = self.config.run.shutdown_timeout
        pruner.cancel()
        await self.scheduler.stop(timeout)
        cut = await self.dispatcher.stop(timeout)
        cut += await self.outbox.drain(timeout)
        outbox.cancel()
        await asyncio.gather(outbox, pruner, return_exceptions=True)
        await self.leases.stop()
        log.info("relay.stopped", extra=fields(cut_off=cut))

    async def reload(self) -> bool:
        """Re-read the config file and apply it in place; a broken one is refused.

        Numbers and webhooks added, removed or changed take effect at once; queued
        deliveries are kept; the token is read again. ``store.url`` and ``[http]``
        need a restart.
        """
        from relay.config import load

        path = self.config.path
        if path is None:
            log.error("relay.reload.refused", extra=fields(error="the config has no file"))
            return False
        try:
            new = await asyncio.get_running_loop().run_in_executor(None, load, path)
        except ConfigError as exc:
            log.error("relay.reload.refused", extra=fields(error=str(exc)))
            return False
        for key, before, after in (
            ("store.url", self.config.store.url, new.store.url),
            ("http", self.config.http, new.http),
        ):
            if before != after:
                log.warning("relay.reload.needs_restart", extra=fields(key=key))
        old = self.config
        self.config = new
        redact.register(new)  # new URLs, header values and secrets: never shown either
        logs.setup(new.log.level, new.log.format, pii=new.log.pii)
        self.api.set_token(new.api.token)
        self.api.budget.limit = new.poll.budget
        self.outbox.retry_unknown = new.outbound.retry_unknown
        self.outbox.told = OutboundEvents(new.webhooks, new.numbers)
        self.store.sync.keywords = Keywords.of(new, self.clock)
        self.poller.update(new)
        await self.poller.load()
        self.leases.set_numbers([n.number for n in new.numbers])
        await self.leases.round()
        if self.scheduler is not None:
            self.scheduler.update(new.numbers, new.poll.jitter)
        await self.dispatcher.reconfigure(new.webhooks, self._disclaimer, new.run.shutdown_timeout)
        log.info(
            "relay.reloaded",
            extra=fields(
                numbers=len(new.numbers),
                webhooks=len(new.webhooks),
                numbers_added=len(
                    {n.number for n in new.numbers} - {n.number for n in old.numbers}
                ),
                numbers_removed=len(
                    {n.number for n in old.numbers} - {n.number for n in new.numbers}
                ),
            ),
        )
        return True

    async def _prune_daily(self) -> None:
        """Apply store.retention soon after start, then once a day."""
        await asyncio.sleep(PRUNE_FIRST)
        while True:
            try:
                pruned = await self.store.call(self.store.sync.prune, self.config.store.retention)
            except RelayError as exc:
                log.error("relay.prune.failed", extra=fields(error=str(exc)))
                self.events.store_failed(str(exc))
            else:
                log.info("relay.prune.done", extra=fields(messages=pruned))
            await asyncio.sleep(PRUNE_EVERY)

    async def poll_once(self) -> RoundSummary:
        """Poll every number no running relay holds, once; send what is due; hand back."""
        await self.leases.round()
        numbers = [n.number for n in self.config.numbers if self.leases.holds(n.number)]
        polls = await asyncio.gather(*(self.poller.poll(n) for n in numbers))
        await self.dispatcher.run_once()
        await self.outbox.run_once(self.config.api.timeout + 5.0)
        await self.leases.stop()
        counts = await self.store.call(self.store.sync.counts)
        return RoundSummary(tuple(polls), counts)

    async def close(self) -> None:
        """Release connections, the store and the lock."""
        if self._dispatcher is not None:
            await self._dispatcher.aclose()
        if self._api is not None:
            await self._api.budget.close()
            await self._api.aclose()
        if self._store is not None:
            self._store.close()
        if self._lock is not None:
            self._lock.release()
