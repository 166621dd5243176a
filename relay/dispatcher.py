"""Delivery: take due deliveries from the store and send them, one lane per webhook.

Each webhook has its own lane: its own connections, at most ``concurrency``
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
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from relay.circuit import Circuit, is_failure
from relay.clock import Clock
from relay.config import SMS_RECEIVED, WebhookConfig
from relay.errors import StoreError
from relay.events import Events
from relay.logs import fields
from relay.phone import repliable
from relay.ratelimit import TokenBucket
from relay.retry import Backoff, Jitter
from relay.store import DEAD, DELIVERED, PENDING, AsyncStore, DueDelivery, Outcome, Reply
from relay.webhook import Answer, Webhook
from relay.worker import Worker, internal_error

log = logging.getLogger("relay.dispatcher")


class _OutcomeWriter:
    """Group commit: outcomes that arrive while a batch is being written go in the next one."""

    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._queue: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def submit(self, outcome: Outcome) -> asyncio.Future[None]:
        """Queue ``outcome``; the future is done once it is committed (or failed to be)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((outcome, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return future

    async def idle(self) -> None:
        """Until every submitted outcome is written (or has failed to be)."""
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await self._store.call(self._store.sync.save_outcomes, [o for o, _ in batch])
            except Exception as exc:  # a store error, or a value the store refused: each
                # outcome's lane hands its claim back
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)


class Lane(Worker[DueDelivery]):
    """Deliveries to one webhook."""

    name = "delivery"

    def __init__(
        self,
        webhook: Webhook,
        store: AsyncStore,
        writer: _OutcomeWriter,
        clock: Clock,
        jitter: Jitter | None,
        disclaimer: Callable[[str], bool] = lambda _number: False,
        events: Events | None = None,
        on_reply: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(clock, webhook.config.concurrency, store, "deliveries", events)
        self.on_reply = on_reply
        self.webhook = webhook
        self.config: WebhookConfig = webhook.config
        self.backoff = Backoff(
            self.config.retry_initial, self.config.retry_max, self.config.give_up_after
        )
        #: Whether replies from a number go through /send/disclaimer.
        self.disclaimer = disclaimer
        self._store = store
        self._writer = writer
        self._jitter = jitter
        #: ``ordering = "sender"``: claim a sender's next message only once the one before
        #: it is settled.
        self.in_order = self.config.ordering == "sender"
        #: Stops sending, but for probes, while the webhook keeps failing.
        self.circuit = Circuit(
            self.config.name,
            self.config.circuit_failures,
            self.config.circuit_probe,
            clock,
            lambda is_open: self.events.circuit_changed(self.config.name, is_open),
        )
        #: ``rate_limit``: spaces the requests this lane starts.
        self.limiter = (
            TokenBucket(self.config.rate_limit, clock) if self.config.rate_limit else None
        )

    async def claim(self, limit: int) -> list[DueDelivery]:
        """Claim due deliveries to this webhook."""
        return await self._store.call(
            self._store.sync.claim, self.config.name, limit, in_order=self.in_order
        )

    async def next_due(self) -> datetime | None:
        """When this webhook's next delivery falls due."""
        return await self._store.call(
            self._store.sync.next_due, self.config.name, in_order=self.in_order
        )

    async def process(self, item: DueDelivery) -> None:
        """Send one delivery, then hand the outcome to the group commit and free the slot.

        Until the outcome is committed the delivery stays claimed by this relay, so
        nothing claims it again; the slot's connection goes straight to the next one.
        """
        probe = await self.circuit.admit()
        try:
            if self.limiter is not None:
                await self.limiter.acquire()
            answer = await self.webhook.send(item)
        except BaseException:
            self.circuit.abandon(probe)
            raise
        changed = self.circuit.record(is_failure(answer.status, answer.ok))
        if changed is not None:
            await self.save_circuit(changed)
        outcome = self._outcome(item, answer)
        self._writer.submit(outcome).add_done_callback(
            lambda saved: self._recorded(item, outcome, saved)
        )

    async def save_circuit(self, is_open: bool) -> None:
        """Note the circuit's new state in the store, for ``status``; a store error is
        logged and otherwise ignored (the circuit works all the same)."""
        opened_at = self.clock.now() if is_open else None
        try:
            await self._store.call(self._store.sync.save_circuit, self.config.name, opened_at)
        except StoreError as exc:
            log.error(
                "relay.circuit.unsaved", extra=fields(webhook=self.config.name, error=str(exc))
            )

    async def failed(self, item: DueDelivery, exc: Exception) -> None:
        """Record a retry with backoff from now (dead past ``give_up_after``) for a
        delivery whose attempt raised; the error stored names only the exception's type."""
        outcome = self._outcome(item, Answer(False, error=internal_error(exc)))
        await self._writer.submit(outcome)
        self._log(item, outcome)

    def _recorded(
        self, delivery: DueDelivery, outcome: Outcome, saved: asyncio.Future[None]
    ) -> None:
        error = saved.exception()
        if error is not None:
            # The claim is handed back: sent again after store.lease (same webhook-id).
            what = str(error) if isinstance(error, StoreError) else internal_error(error)
            log.error(
                "relay.delivery.unrecorded",
                exc_info=None if isinstance(error, StoreError) else error,
                extra=fields(webhook=self.config.name, webhook_id=delivery.webhook_id, error=what),
            )
            if isinstance(error, StoreError):
                self.events.store_failed(str(error))
            else:
                self.events.unexpected(error)
            self.abandon(delivery.id)
            return
        self._log(delivery, outcome)
        if self.in_order:
            self.wake()  # the sender's next message may be claimed now
        if outcome.replies:
            self.on_reply()

    def _outcome(self, delivery: DueDelivery, answer: Answer) -> Outcome:
        now = self.clock.now()
        if answer.ok:
            return Outcome(
                delivery.id,
                now,
                DELIVERED,
                status=answer.status,
                replies=self._replies(delivery, answer),
            )
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

    def _replies(self, delivery: DueDelivery, answer: Answer) -> tuple[Reply, ...]:
        """The replies a 2xx answer asks for, if any; a malformed or unreadable answer is
        logged and ignored (none of its replies is sent): the webhook accepted the message
        all the same."""
        if delivery.event != SMS_RECEIVED:
            return ()  # only an inbound message can be answered
        try:
            if answer.body_error is not None:
                raise ValueError(answer.body_error)
            texts = self.webhook.reply_texts(answer, delivery.webhook_id)
            if texts and not repliable(delivery.sender):
                msg = "the sender is not a valid phone number (a sender id or short code?)"
                raise ValueError(msg)
        except ValueError as exc:
            log.warning(
                "relay.reply.ignored",
                extra=fields(
                    webhook=self.config.name, webhook_id=delivery.webhook_id, reason=str(exc)
                ),
            )
            return ()
        disclaimer = self.disclaimer(delivery.number)
        return tuple(Reply(delivery.number, delivery.sender, text, disclaimer) for text in texts)

    def _log(self, delivery: DueDelivery, outcome: Outcome) -> None:
        base = {
            "webhook": self.config.name,
            "webhook_id": delivery.webhook_id,
            "attempt": delivery.attempts + 1,
        }
        outbound_event = delivery.event != SMS_RECEIVED
        if outbound_event:
            base["event"] = delivery.event
        if outcome.state == DELIVERED:
            latency = (outcome.attempted_at - delivery.received_at).total_seconds()
            log.info(
                "relay.delivery.delivered",
                extra=fields(**base, status=outcome.status, latency=f"{latency:.3f}s"),
            )
            # A replay's wait since the provider received it says nothing of delivery speed;
            # an outbound event's is not a message's.
            timed = not (delivery.replayed or outbound_event)
            self.events.delivered(self.config.name, latency if timed else None)
            return
        self.events.delivery_failed(
            self.config.name, outcome.error or "", dead=outcome.state == DEAD
        )
        if outcome.state == DEAD:
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
        disclaimer: Callable[[str], bool] = lambda _number: False,
        events: Events | None = None,
        on_reply: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._writer = _OutcomeWriter(store)
        self._clock = clock
        self._jitter = jitter
        self._disclaimer = disclaimer
        self._events = events or Events()
        self._on_reply = on_reply
        self.lanes = {hook.name: self._lane(hook) for hook in webhooks}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def _lane(self, hook: WebhookConfig) -> Lane:
        return Lane(
            Webhook(hook, self._clock),
            self._store,
            self._writer,
            self._clock,
            self._jitter,
            self._disclaimer,
            self._events,
            self._on_reply,
        )

    def wake(self) -> None:
        """New deliveries were queued: every lane looks now."""
        for lane in self.lanes.values():
            lane.wake()

    def start(self) -> None:
        """Run every lane in the background."""
        self._running = True
        for name, lane in self.lanes.items():
            self._tasks[name] = asyncio.create_task(lane.run(), name=f"lane-{name}")

    async def reconfigure(
        self, webhooks: Sequence[WebhookConfig], disclaimer: Callable[[str], bool], timeout: float
    ) -> None:
        """Apply a reloaded config: new lanes start, removed or changed ones finish and go.

        Deliveries queued for a removed webhook stay in the store, pending.
        """
        self._disclaimer = disclaimer
        wanted = {hook.name: hook for hook in webhooks}
        for name in list(self.lanes):
            if wanted.get(name) != self.lanes[name].config:
                await self._retire(name, timeout)
        for name, hook in wanted.items():
            if name not in self.lanes:
                self.lanes[name] = self._lane(hook)
                if self._running:
                    self._tasks[name] = asyncio.create_task(
                        self.lanes[name].run(), name=f"lane-{name}"
                    )
        for lane in self.lanes.values():
            lane.disclaimer = disclaimer
        self.wake()

    async def _retire(self, name: str, timeout: float) -> int:
        lane = self.lanes.pop(name)
        cut = await lane.drain(timeout)
        if lane.circuit.open:  # its successor starts closed: status must not say open
            await lane.save_circuit(False)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await lane.webhook.aclose()
        return cut

    async def run_once(self) -> None:
        """Send everything due now, once, and wait for the answers (for ``poll-once``)."""
        await asyncio.gather(
            *(lane.run_once(timeout=lane.config.timeout + 5.0) for lane in self.lanes.values())
        )
        await self._writer.idle()

    async def stop(self, timeout: float) -> int:
        """Stop the lanes, letting requests in flight finish for up to ``timeout`` seconds."""
        self._running = False
        results = await asyncio.gather(*(lane.drain(timeout) for lane in self.lanes.values()))
        await self._writer.idle()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks = {}
        return sum(results)

    async def aclose(self) -> None:
        """Close every webhook's connection pool."""
        for lane in self.lanes.values():
            await lane.webhook.aclose()
