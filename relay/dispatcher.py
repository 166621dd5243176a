"""Delivery: take due deliveries from the store and send them, one lane per webhook.

Each webhook has its own lane: its own connection pool, at most ``concurrency``
requests in flight, its own wake-ups. A slow or dead webhook therefore never
holds up another, nor the polls. A lane wakes when the poller queues new
deliveries (:meth:`Dispatcher.wake`), when one of its requests finishes, and
when its next retry falls due.

Attempt results are written back in batches (one transaction for all the
results that finished while the previous batch was being written), so a burst
costs a handful of commits, not one per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from relay.clock import Clock
from relay.config import WebhookConfig
from relay.errors import StoreError
from relay.logs import fields
from relay.retry import Backoff, Jitter
from relay.store import DEAD, DELIVERED, PENDING, AsyncStore, DueDelivery, Outcome
from relay.webhook import Answer, Webhook

log = logging.getLogger("relay.dispatcher")

#: A lane with nothing due looks at the store again after this long anyway.
IDLE_RECHECK = 30.0
#: After a store error a lane waits this long before trying again.
STORE_ERROR_PAUSE = 1.0


class _OutcomeWriter:
    """Group commit: outcomes that arrive while a batch is being written go in the next one."""

    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._queue: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def save(self, outcome: Outcome) -> None:
        """Return once ``outcome`` is committed; raise StoreError if it could not be."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((outcome, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await self._store.call(self._store.sync.save_outcomes, [o for o, _ in batch])
            except StoreError as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)


class Lane:
    """Deliveries to one webhook."""

    def __init__(
        self,
        webhook: Webhook,
        store: AsyncStore,
        writer: _OutcomeWriter,
        clock: Clock,
        jitter: Jitter | None,
    ) -> None:
        self.webhook = webhook
        self.config: WebhookConfig = webhook.config
        self.backoff = Backoff(
            self.config.retry_initial, self.config.retry_max, self.config.give_up_after
        )
        self._store = store
        self._writer = writer
        self._clock = clock
        self._jitter = jitter
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def in_flight(self) -> int:
        """Requests to this webhook under way now."""
        return len(self._inflight)

    def wake(self) -> None:
        """Look for due deliveries now."""
        self._wake.set()

    async def fill(self) -> int:
        """Start as many due deliveries as there are free slots; how many started."""
        free = self.config.concurrency - len(self._inflight)
        if free <= 0:
            return 0
        due = await self._store.call(
            self._store.sync.due, self.config.name, free, list(self._inflight)
        )
        for delivery in due:
            task = asyncio.create_task(self._deliver(delivery))
            self._inflight[delivery.id] = task
        return len(due)

    async def run(self) -> None:
        """Deliver until :meth:`drain`."""
        while not self._stopping:
            self._wake.clear()
            wait: float | None
            try:
                await self.fill()
                # All slots busy: a finishing request wakes us. Otherwise nothing more is
                # due now, so sleep until the next retry falls due or the poller wakes us.
                full = len(self._inflight) >= self.config.concurrency
                wait = None if full else await self._until_next_due()
            except StoreError as exc:
                log.error(
                    "relay.delivery.store_error",
                    extra=fields(webhook=self.config.name, error=str(exc)),
                )
                wait = STORE_ERROR_PAUSE
            if wait is not None and wait <= 0:
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _until_next_due(self) -> float:
        """Seconds until the next pending delivery not in flight falls due, at most IDLE_RECHECK."""
        nxt = await self._store.call(
            self._store.sync.next_due, self.config.name, list(self._inflight)
        )
        if nxt is None:
            return IDLE_RECHECK
        return min((nxt - self._clock.now()).total_seconds(), IDLE_RECHECK)

    async def settle(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the requests in flight; cancel the rest. How many were cut."""
        tasks = list(self._inflight.values())
        if not tasks:
            return 0
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    async def drain(self, timeout: float) -> int:
        """Start no more deliveries, then :meth:`settle`."""
        self._stopping = True
        self._wake.set()
        return await self.settle(timeout)

    async def _deliver(self, delivery: DueDelivery) -> None:
        try:
            answer = await self.webhook.send(delivery)
            outcome = self._outcome(delivery, answer)
            try:
                await self._writer.save(outcome)
            except StoreError as exc:
                # The delivery stays pending in the store and is sent again (same webhook-id).
                log.error(
                    "relay.delivery.unrecorded",
                    extra=fields(
                        webhook=self.config.name, webhook_id=delivery.webhook_id, error=str(exc)
                    ),
                )
                return
            self._log(delivery, outcome)
        finally:
            self._inflight.pop(delivery.id, None)
            self._wake.set()

    def _outcome(self, delivery: DueDelivery, answer: Answer) -> Outcome:
        now = self._clock.now()
        if answer.ok:
            return Outcome(delivery.id, now, DELIVERED, status=answer.status)
        attempt = delivery.attempts + 1
        nxt = None
        if not answer.final:
            nxt = self.backoff.next_attempt(
                attempt=attempt,
                queued_at=delivery.queued_at,
                now=now,
                retry_after=answer.retry_after,
                jitter=self._jitter,
            )
        if nxt is None:
            return Outcome(delivery.id, now, DEAD, None, answer.status, answer.error)
        return Outcome(delivery.id, now, PENDING, nxt, answer.status, answer.error)

    def _log(self, delivery: DueDelivery, outcome: Outcome) -> None:
        base = {
            "webhook": self.config.name,
            "webhook_id": delivery.webhook_id,
            "attempt": delivery.attempts + 1,
        }
        if outcome.state == DELIVERED:
            latency = (outcome.attempted_at - delivery.received_at).total_seconds()
            log.info(
                "relay.delivery.delivered",
                extra=fields(**base, status=outcome.status, latency=f"{latency:.3f}s"),
            )
        elif outcome.state == DEAD:
            log.error("relay.delivery.dead", extra=fields(**base, error=outcome.error))
        else:
            assert outcome.next_attempt_at is not None
            log.warning(
                "relay.delivery.retry_scheduled",
                extra=fields(
                    **base, error=outcome.error, next_attempt_at=outcome.next_attempt_at.isoformat()
                ),
            )


class Dispatcher:
    """All lanes."""

    def __init__(
        self,
        store: AsyncStore,
        webhooks: Sequence[WebhookConfig],
        clock: Clock,
        jitter: Jitter | None = None,
    ) -> None:
        self._store = store
        self._writer = _OutcomeWriter(store)
        self.lanes = {
            hook.name: Lane(Webhook(hook, clock), store, self._writer, clock, jitter)
            for hook in webhooks
        }
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        """New deliveries were queued: every lane looks now."""
        for lane in self.lanes.values():
            lane.wake()

    def start(self) -> None:
        """Run every lane in the background."""
        self._tasks = [
            asyncio.create_task(lane.run(), name=f"lane-{name}")
            for name, lane in self.lanes.items()
        ]

    async def run_once(self) -> None:
        """Send everything due now, once, and wait for the answers (for ``poll-once``)."""
        for lane in self.lanes.values():
            await lane.fill()
        for lane in self.lanes.values():
            await lane.settle(timeout=lane.config.timeout + 5.0)

    async def stop(self, timeout: float) -> int:
        """Stop the lanes, letting requests in flight finish for up to ``timeout`` seconds."""
        results = await asyncio.gather(*(lane.drain(timeout) for lane in self.lanes.values()))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        return sum(results)

    async def aclose(self) -> None:
        """Close every webhook's connection pool."""
        for lane in self.lanes.values():
            await lane.webhook.aclose()
