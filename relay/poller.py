"""Polling one number: ask the API what it holds, keep what is new, record it.

The deduplication rule, in order, for each message the API lists:

1. Older than the pruning horizon (now - ``store.retention``): counted as seen.
   The store forgets delivered messages past that age, so the timestamp is
   what stops them from being delivered again.
2. In this relay's in-memory set of ids recently seen on the number: seen.
   (Being seen never stops being true, so the set is safe to trust.)
3. Otherwise looked up in the store, all such ids of one poll in one batch.

What is left is new. Text-less items get their details fetched, and the new
messages are recorded and their deliveries queued in one transaction. Only
after that commit does anything else learn of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from relay.api import AatroxClient
from relay.clock import Clock, within
from relay.config import Config, NumberConfig
from relay.errors import (
    ApiError,
    ApiRateLimited,
    ApiUnauthorized,
    ConfigError,
    RelayError,
    StoreError,
)
from relay.events import Events
from relay.inbound import InboundMessage
from relay.logs import fields
from relay.logs import number as shown
from relay.retry import poll_delay
from relay.store import AsyncStore

log = logging.getLogger("relay.poller")

#: Ids remembered per number in memory, beyond what one listing returns.
SEEN_CACHE_MIN = 2048
#: Details of text-less messages fetched at once, per poll.
DETAILS_CONCURRENCY = 8


@dataclass
class NumberState:
    """What this process knows of one number's polls."""

    config: NumberConfig
    failures: int = 0
    #: Monotonic time before which polls are skipped (backing off after failures).
    resume_at: float = 0.0
    last_poll: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    last_success_monotonic: float | None = None
    baselined: bool = False
    #: Changed since :meth:`Poller.take_changed_states` last looked.
    changed: bool = False
    seen: dict[str, None] = field(default_factory=dict)

    def remember(self, ids: Sequence[str], limit: int) -> None:
        """Add ``ids`` to the seen set, forgetting the oldest beyond ``limit``."""
        seen = self.seen
        for message_id in ids:
            seen.pop(message_id, None)
            seen[message_id] = None
        excess = len(seen) - limit
        if excess > 0:
            for message_id in list(seen)[:excess]:
                del seen[message_id]


@dataclass(frozen=True)
class PollResult:
    """One poll's outcome, for logs, ``poll-once`` and tests."""

    number: str
    listed: int = 0
    new: int = 0
    queued: int = 0
    skipped: int = 0
    error: str | None = None


class Poller:
    """Polls numbers and records what is new. Shared by every number's job."""

    def __init__(
        self,
        config: Config,
        api: AatroxClient,
        store: AsyncStore,
        clock: Clock,
        on_queued: Callable[[], None] = lambda: None,
        events: Events | None = None,
    ) -> None:
        self.config = config
        self.api = api
        self.store = store
        self.clock = clock
        self.on_queued = on_queued
        self.events = events or Events()
        self.states = {n.number: NumberState(n) for n in config.numbers}
        self._slots = asyncio.Semaphore(config.poll.concurrency)

    def update(self, config: Config) -> None:
        """Apply a reloaded config: numbers come and go; a kept number keeps its memory."""
        states = {}
        for number in config.numbers:
            state = self.states.get(number.number) or NumberState(number)
            state.config = number
            states[number.number] = state
        self.states = states
        self.config = config

    async def load(self) -> None:
        """Learn which numbers already had their first poll (backfill applies once)."""
        known = await self.store.call(self.store.sync.known_numbers)
        for number, state in self.states.items():
            state.baselined = number in known

    def take_changed_states(self) -> list[dict[str, Any]]:
        """Poll states changed since the last call, as :meth:`Store.save_poll_states` wants."""
        rows = []
        for number, state in self.states.items():
            if state.changed:
                state.changed = False
                rows.append(
                    {
                        "number": number,
                        "last_poll_at": state.last_poll,
                        "last_success_at": state.last_success,
                        "consecutive_failures": state.failures,
                        "last_error": state.last_error,
                    }
                )
        return rows

    def due(self, number: str) -> bool:
        """Whether ``number`` is not backing off after failures."""
        state = self.states.get(number)
        return state is not None and self.clock.monotonic() >= state.resume_at

    async def poll(self, number: str) -> PollResult:
        """Poll ``number`` once, bounded in time and in polls in flight. Never raises."""
        state = self.states[number]
        budget = self._budget()
        try:
            if self._slots.locked():
                await asyncio.wait_for(self._slots.acquire(), state.config.interval)
            else:
                await self._slots.acquire()  # the common case: no task, no timer
        except asyncio.TimeoutError:
            log.warning("relay.poll.starved", extra=fields(number=shown(number)))
            return PollResult(number, error="no free poll slot within the interval")
        try:
            result = await within(budget, self._poll(state))
        except asyncio.TimeoutError:
            result = await self._failed(state, f"poll took longer than {budget:g}s")
        except ApiUnauthorized as exc:
            self._reread_token()
            result = await self._failed(state, str(exc), unauthorized=True)
        except ApiRateLimited as exc:
            result = await self._failed(state, str(exc), retry_after=exc.retry_after)
        except StoreError as exc:
            self.events.store_failed(str(exc))
            result = await self._failed(state, str(exc))
        except RelayError as exc:
            result = await self._failed(state, str(exc))
        finally:
            self._slots.release()
        return result

    def _reread_token(self) -> None:
        """After a 401, read the token again from its file or credential: rotating it is
        writing the new one there. The next poll uses it."""
        source = self.config.api.token_source
        try:
            token = source.read()
        except ConfigError as exc:
            log.error("relay.token.unreadable", extra=fields(error=str(exc)))
            return
        if self.api.set_token(token):
            log.info("relay.token.reloaded", extra=fields(source=source.describe()))

    def _budget(self) -> float:
        """The most one poll may take: a listing, details, and the store."""
        return self.config.api.timeout * 3 + self.store.timeout

    async def _poll(self, state: NumberState) -> PollResult:
        cfg = state.config
        state.last_poll = self.clock.now()
        listing = await self.api.receive(cfg.number, cfg.sender, known=state.seen)
        for reason in listing.skipped:
            log.warning(
                "relay.poll.item_skipped", extra=fields(number=shown(cfg.number), reason=reason)
            )
        fresh = await self._unseen(state, listing.messages)
        complete = await self._complete(cfg.number, fresh)
        if not complete and state.baselined:
            # The common case: nothing new. No write, so idle polls stay cheap.
            self._succeeded(state, 0)
            return PollResult(cfg.number, listing.listed, skipped=len(listing.skipped))
        targets = self._targets(state)
        recorded = await self.store.call(self.store.sync.record, cfg.number, complete, targets)
        state.baselined = True
        state.remember([m.id for m in complete], self._cache_limit(listing.listed))
        if recorded.deliveries:
            self.on_queued()
        self._succeeded(state, recorded.messages)
        if recorded.messages:
            log.info(
                "relay.poll.recorded",
                extra=fields(
                    number=shown(cfg.number), new=recorded.messages, queued=recorded.deliveries
                ),
            )
        return PollResult(
            cfg.number,
            listing.listed,
            recorded.messages,
            recorded.deliveries,
            len(listing.skipped),
        )

    async def _unseen(
        self, state: NumberState, listed: Sequence[InboundMessage]
    ) -> list[InboundMessage]:
        """The listed messages that are new, per the rule in the module docstring."""
        horizon = self.clock.now() - timedelta(seconds=self.config.store.retention)
        candidates: dict[str, InboundMessage] = {}
        for message in listed:
            if message.received_at >= horizon and message.id not in state.seen:
                candidates.setdefault(message.id, message)
        if not candidates:
            return []
        known = await self.store.call(
            self.store.sync.known_ids, state.config.number, list(candidates)
        )
        if known:
            state.remember(list(known), self._cache_limit(len(listed)))
        return [m for message_id, m in candidates.items() if message_id not in known]

    async def _complete(self, number: str, fresh: list[InboundMessage]) -> list[InboundMessage]:
        """Fetch the text of messages the listing gave only ids and times for.

        A message whose details cannot be fetched now is left out of this poll,
        unrecorded, so the next poll tries it again.
        """
        missing = [m for m in fresh if m.text is None]
        if not missing:
            return fresh
        limit = asyncio.Semaphore(DETAILS_CONCURRENCY)

        async def fetch(message: InboundMessage) -> InboundMessage | None:
            async with limit:
                try:
                    detail = await self.api.details(message.id, number=number)
                except ApiError as exc:
                    log.warning(
                        "relay.poll.details_failed",
                        extra=fields(number=shown(number), id=message.id, error=str(exc)),
                    )
                    return None
            return replace(message, text=detail.text or "")

        fetched = await asyncio.gather(*(fetch(m) for m in missing))
        filled = {m.id: m for m in fetched if m is not None}
        return [filled.get(m.id) or m for m in fresh if m.text is not None or m.id in filled]

    def _targets(self, state: NumberState) -> Callable[[InboundMessage], Sequence[str]]:
        """Which webhooks a new message is queued for: all, or none before the backfill cut."""
        hooks = state.config.webhooks
        if state.baselined:
            return lambda _m: hooks
        backfill = self.config.poll.backfill
        if backfill.mode == "all":
            return lambda _m: hooks
        if backfill.mode == "none":
            return lambda _m: ()
        cutoff = self.clock.now() - timedelta(seconds=backfill.window)
        return lambda m: hooks if m.received_at >= cutoff else ()

    def _cache_limit(self, listed: int) -> int:
        return max(SEEN_CACHE_MIN, 2 * listed)

    def _succeeded(self, state: NumberState, new: int) -> None:
        if state.failures:
            log.info(
                "relay.poll.recovered",
                extra=fields(number=shown(state.config.number), after_failures=state.failures),
            )
        state.failures = 0
        state.resume_at = 0.0
        state.last_success = self.clock.now()
        state.last_success_monotonic = self.clock.monotonic()
        state.last_error = None
        state.changed = True
        self.events.poll_succeeded(state.config.number, new)

    async def _failed(
        self,
        state: NumberState,
        error: str,
        *,
        retry_after: float | None = None,
        unauthorized: bool = False,
    ) -> PollResult:
        """Back off: the number is skipped until its delay has passed."""
        state.failures += 1
        state.last_error = error
        state.changed = True
        delay = poll_delay(state.config.interval, state.failures)
        if retry_after is not None:
            delay = max(delay, retry_after)
        # Polls run on the number's interval ticks; resuming half an interval early lets
        # the tick that falls due at ``delay`` (give or take jitter) run rather than skip.
        state.resume_at = self.clock.monotonic() + delay - state.config.interval / 2
        log.warning(
            "relay.poll.failed",
            extra=fields(
                number=shown(state.config.number),
                error=error,
                failures=state.failures,
                retry_in=f"{delay:g}s",
            ),
        )
        self.events.poll_failed(state.config.number, error, unauthorized=unauthorized)
        try:
            await self.store.call(self.store.sync.record_failure, state.config.number, error)
        except RelayError as exc:
            log.error("relay.poll.store_error", extra=fields(error=str(exc)))
        return PollResult(state.config.number, error=error)
