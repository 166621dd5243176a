"""Polling one number: ask the API what it holds, keep what is new, record it.

The deduplication rule, in order, for each message the API lists:

1. Older than the pruning horizon (now - ``store.retention``): counted as seen.
   The store forgets delivered messages past that age, so the timestamp is
   what stops them from being delivered again.
2. In this relay's in-memory set of ids recently seen on the number: seen.
   (Being seen never stops being true, so the set is safe to trust.)
3. Otherwise looked up in the store, all such ids of one poll in one batch.

What is left is new. New messages that will be delivered but lack a sender or a
text are completed from their details first (:mod:`relay.details`); backfill (what a
number held before it was configured) is recorded as it is, without fetching
anything. Then the new messages are recorded and their deliveries queued in one
transaction. Only after that commit does anything else learn of them.

Gaps: the API documents no paging, so a number that receives more messages
between two polls than a listing holds loses the oldest before the relay sees
them. A listing on an already-baselined number in which every item is new, and
which is at least as long as the longest listing the number has returned, no
longer overlaps what was seen: that is reported (``relay.poll.gap``) and the
number is polled again at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta

from relay.adaptive import Pace, cadence
from relay.api import AatroxClient
from relay.clock import Clock, within
from relay.config import Config, NumberConfig
from relay.details import DETAILS_TIMEOUTS, Details
from relay.errors import (
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
from relay.pollstate import NumberState, PollResult
from relay.retry import poll_delay
from relay.routing import router
from relay.store import AsyncStore, SavedPollState

log = logging.getLogger("relay.poller")

#: Ids remembered per number in memory, beyond what one listing returns.
SEEN_CACHE_MIN = 2048
#: Messages the provider received up to this long before a number was configured are
#: delivered too: the provider's clock and ours may disagree a little.
BACKFILL_GRACE = 60.0
#: Polls run back to back after a listing that outran the relay, at most, per job run.
GAP_REPOLLS = 3
#: After a 401, where a token that was read again but did not change comes from, and
#: what an operator does to rotate it there.
STALE_TOKEN_SOURCES = {
    "credential": "systemd copies credentials when the service starts: write the new token "
    "to the credential's source file, then systemctl restart (a reload does not refresh it)",
    "inline": "the token is in the config: change api.token and reload (SIGHUP)",
    "env": "the token is in $AATROX_TOKEN: change it and restart",
}
#: Distinct skip reasons remembered per number, so each is logged once.
SKIP_REASONS_MAX = 1000
#: A poll waits for the API budget's grant at most this share of its number's interval;
#: then it lets the tick pass (the next one comes, later for it, so it goes first).
BUDGET_WAIT_SHARE = 0.9


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
        self.states = {n.number: self._new_state(n) for n in config.numbers}
        self.details = Details(api, clock, self.events)
        self._slots = asyncio.Semaphore(config.poll.concurrency)
        #: relay.token.unchanged was logged since the token last changed.
        self._stale_token_hinted = False

    def update(self, config: Config) -> None:
        """Apply a reloaded config: numbers come and go; a kept number keeps its memory."""
        states = {}
        self.config = config
        for number in config.numbers:
            state = self.states.get(number.number) or self._new_state(number)
            state.config = number
            if state.pace is not None:
                state.pace.retune(number.interval, cadence(config.poll, number))
            states[number.number] = state
        self.states = states

    def _new_state(self, number: NumberConfig) -> NumberState:
        """A number's state, paced by its traffic under adaptive polling."""
        rule = cadence(self.config.poll, number)
        return NumberState(number, pace=Pace(number.interval, rule, self.clock))

    def intervals(self) -> dict[str, float]:
        """Each number's current interval (``aatrox_relay_poll_interval_seconds``)."""
        return {number: state.interval for number, state in self.states.items()}

    async def load(self) -> None:
        """Learn what the store knows of each number (first poll, when configured, last
        success, longest listing, gap), marking numbers new to it as configured now."""
        records = await self.store.call(self.store.sync.load_numbers, list(self.states))
        for number, state in self.states.items():
            record = records.get(number)
            if record is not None:
                state.load(record)

    async def adopt(self, numbers: Collection[str]) -> None:
        """Numbers this relay now holds the leases of: learn what the store knows of them
        since, chiefly the messages another relay left waiting for their details. A store
        error is logged; the polls go on with what this relay knew."""
        wanted = [number for number in numbers if number in self.states]
        if not wanted:
            return
        try:
            records = await self.store.call(self.store.sync.load_numbers, wanted)
        except RelayError as exc:
            log.error("relay.poll.store_error", extra=fields(error=str(exc)))
            return
        for number in wanted:
            record = records.get(number)
            if record is not None:
                self.states[number].load(record)

    def take_changed_states(self) -> list[SavedPollState]:
        """Poll states changed since the last call, as :meth:`Store.save_poll_states` wants."""
        rows = []
        for state in self.states.values():
            if state.changed:
                state.changed = False
                rows.append(state.row())
        return rows

    def due(self, number: str) -> bool:
        """Whether ``number`` is not backing off after failures."""
        state = self.states.get(number)
        return state is not None and self.clock.monotonic() >= state.resume_at

    async def poll(self, number: str) -> PollResult:
        """Poll ``number``, bounded in time and in polls in flight; again at once (up to
        :data:`GAP_REPOLLS` times) while listings outrun the relay. Never raises."""
        result = await self._poll_bounded(number)
        repolls = 0
        while result.gap and repolls < GAP_REPOLLS and number in self.states:
            repolls += 1
            result = await self._poll_bounded(number)
        return result

    async def _poll_bounded(self, number: str) -> PollResult:
        """One poll of ``number``, bounded in time and in polls in flight."""
        state = self.states[number]
        interval = state.interval
        granted = await self.api.budget.poll(state.began, interval, interval * BUDGET_WAIT_SHARE)
        if not granted or number not in self.states:
            log.debug("relay.poll.deferred", extra=fields(number=shown(number)))
            return PollResult(number, deferred=True)
        budget = self._budget()
        try:
            if self._slots.locked():
                await asyncio.wait_for(self._slots.acquire(), state.config.interval)
            else:
                await self._slots.acquire()  # the common case: no task, no timer
        except asyncio.TimeoutError:
            log.warning("relay.poll.starved", extra=fields(number=shown(number)))
            return PollResult(number, error="no free poll slot within the interval")
        if self.api.budget.paused_for():  # a 429 since the grant voids it
            self._slots.release()
            return PollResult(number, deferred=True)
        # On the budget's clock, which reads how late the next poll is.
        previous, state.began = state.began, self.api.budget.clock.monotonic()
        try:
            deadline = self.clock.monotonic() + self.config.api.timeout * (1 + DETAILS_TIMEOUTS)
            result = await within(budget, self._poll(state, deadline))
        except asyncio.TimeoutError:
            result = await self._failed(state, f"poll took longer than {budget:g}s")
        except ApiUnauthorized as exc:
            self._reread_token()
            result = await self._failed(state, str(exc), unauthorized=True)
        except ApiRateLimited as exc:
            state.began = previous  # not served: it keeps its place in the budget's queue
            result = self._rate_limited(state, str(exc))
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
            self._stale_token_hinted = False
            log.info("relay.token.reloaded", extra=fields(source=source.describe()))
        elif source.kind in STALE_TOKEN_SOURCES and not self._stale_token_hinted:
            # A rotated token is not there yet: say once what brings it.
            self._stale_token_hinted = True
            log.warning(
                "relay.token.unchanged",
                extra=fields(source=source.describe(), hint=STALE_TOKEN_SOURCES[source.kind]),
            )

    def _rate_limited(self, state: NumberState, error: str) -> PollResult:
        """A 429 is the account's limit, not this number's failure: the API budget paused
        and slowed every request (:mod:`relay.budget`); the number keeps its place."""
        state.last_error = error
        state.changed = True
        log.debug("relay.poll.rate_limited", extra=fields(number=shown(state.config.number)))
        self.events.poll_failed(state.config.number, error)
        return PollResult(state.config.number, error=error)

    def _budget(self) -> float:
        """The most one poll may take: a listing, details, and the store."""
        return self.config.api.timeout * 3 + self.store.timeout

    async def _poll(self, state: NumberState, deadline: float) -> PollResult:
        """One poll; details are fetched until the monotonic ``deadline``, and whatever
        was completed by then is recorded."""
        cfg = state.config
        state.last_poll = self.clock.now()
        listing = await self.api.receive(cfg.number, cfg.sender, known=state.seen)
        self._log_skipped(state, listing.skipped)
        fresh = await self._unseen(state, listing.messages)
        gap = self._check_gap(state, listing.listed, fresh)
        targets = self._targets(state)
        ready: list[InboundMessage] = []
        wanted: list[InboundMessage] = []
        for message in fresh:
            # Backfill is recorded as it is: nothing is fetched for what is not delivered.
            (wanted if targets(message) and not message.complete else ready).append(message)
        # Those whose details were wanted before the listing moved past them: by id.
        wanted += self.details.unlisted(state, fresh)
        completed = await self.details.complete(state, wanted, deadline)
        self.details.forget_unlisted(state, fresh)
        new = ready + completed
        left = len(wanted) - len(completed)
        if not new and state.baselined:
            # The common case: nothing new. No write, so idle polls stay cheap.
            self._succeeded(state, 0, found=left > 0)
            await self._save_if_urgent(state)
            return PollResult(
                cfg.number, listing.listed, skipped=len(listing.skipped), gap=gap, incomplete=left
            )
        recorded = await self.store.call(self.store.sync.record, cfg.number, new, targets)
        found = state.baselined and (recorded.messages > 0 or left > 0)  # not backfill
        state.baselined = True
        state.remember([m.id for m in new], self._cache_limit(listing.listed))
        if recorded.deliveries:
            self.on_queued()
        self._succeeded(state, recorded.messages, found=found)
        await self._save_if_urgent(state)
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
            gap=gap,
            incomplete=left,
        )

    def _log_skipped(self, state: NumberState, reasons: Sequence[str]) -> None:
        """Warn of each unreadable item once per number, not on every poll that lists it."""
        for reason in reasons:
            key = reason.partition(": ")[2] or reason  # without "item N: ", which moves
            if key in state.skip_reasons:
                continue
            if len(state.skip_reasons) < SKIP_REASONS_MAX:
                state.skip_reasons.add(key)
            log.warning(
                "relay.poll.item_skipped",
                extra=fields(number=shown(state.config.number), reason=reason),
            )

    def _check_gap(self, state: NumberState, listed: int, fresh: Sequence[InboundMessage]) -> bool:
        """Whether this listing outran the relay; keeps the longest listing and the gap
        episode up to date, and reports a gap."""
        number = state.config.number
        new = sum(1 for m in fresh if m.id not in state.incomplete)
        gap = state.baselined and 0 < state.longest <= listed == new
        if listed > state.longest:
            state.longest = listed
            state.changed = state.urgent = True
        if gap:
            state.gaps += 1
            state.changed = state.urgent = True
            first = state.gap_since is None
            if first:
                state.gap_since = self.clock.now()
            log.warning(
                "relay.poll.gap",
                extra=fields(
                    number=shown(number),
                    listed=listed,
                    hint="messages older than the listing may have been missed; "
                    "poll more often (poll.interval)",
                ),
            )
            self.events.poll_gap(number, listed)
        elif state.gap_since is not None and listed > new:
            state.gap_since = None
            state.changed = state.urgent = True
            log.info("relay.poll.gap_closed", extra=fields(number=shown(number)))
            self.events.poll_gap_closed(number)
        return gap

    async def _save_if_urgent(self, state: NumberState) -> None:
        """Write the number's state now when a gap, a longer listing or an unresolved
        message made it worth it (rare); otherwise the service's periodic save does."""
        if not state.urgent:
            return
        state.urgent = False
        try:
            await self.store.call(self.store.sync.save_poll_states, [state.row()])
        except RelayError as exc:
            log.error("relay.poll.store_error", extra=fields(error=str(exc)))

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

    def _targets(self, state: NumberState) -> Callable[[InboundMessage], Sequence[str]]:
        """Which webhooks a new message is queued for: the number's webhooks whose
        ``match`` it passes (:mod:`relay.routing`), or none for backfill.

        Backfill is what the provider received before the number was configured (less
        :data:`BACKFILL_GRACE`), on the number's first successful poll: ``poll.backfill``
        says whether it is delivered (all, none, or what is younger than a window).
        Everything received after the number was configured is delivered.
        """
        route = router(state.config.webhooks, {h.name: h for h in self.config.webhooks})
        backfill = self.config.poll.backfill
        if state.baselined or backfill.mode == "all":
            return route
        now = self.clock.now()
        cut = (state.configured_at or now) - timedelta(seconds=BACKFILL_GRACE)
        if backfill.mode == "window":
            cut = min(cut, now - timedelta(seconds=backfill.window))
        return lambda m: route(m) if m.received_at >= cut else ()

    def _cache_limit(self, listed: int) -> int:
        return max(SEEN_CACHE_MIN, 2 * listed)

    def _succeeded(self, state: NumberState, new: int, *, found: bool) -> None:
        """A poll went through; ``found``: it found new traffic (the pace quickens)."""
        if state.pace is not None:
            state.pace.observe(found)
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
        unauthorized: bool = False,
    ) -> PollResult:
        """Back off: the number is skipped until its delay has passed."""
        state.failures += 1
        state.last_error = error
        state.changed = True
        delay = poll_delay(state.config.interval, state.failures)
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
