"""Completing new listed messages from their details (``GET /sms/{id}``).

New messages that will be delivered but lack a sender or a text (a listing of
"message IDs with timestamps") are completed from ``GET /sms/{id}`` before the poller
records them. A message whose details cannot be had now stays unrecorded and is tried
again on later polls (backing off per message), by its id, also once it has left the
listing (the listing moving past it loses nothing); one still incomplete
:data:`DETAILS_GIVE_UP` after the provider received it is reported once, and forgotten
once it is no longer listed either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from relay.api import AatroxClient
from relay.clock import Clock
from relay.errors import ApiError
from relay.events import Events
from relay.inbound import InboundMessage
from relay.logs import fields
from relay.logs import number as shown
from relay.pollstate import Incomplete, NumberState

#: The poller's logger: these are events of its polls (``relay.poll.*``).
log = logging.getLogger("relay.poller")

#: Details of incomplete messages fetched at once, per poll.
DETAILS_CONCURRENCY = 8
#: How long the details of one poll may take, in API timeouts (the listing took one).
DETAILS_TIMEOUTS = 2
#: A message whose details failed is tried again at every poll this many times (it may
#: leave the listing soon), then after its number's interval, doubling with each further
#: failure up to :data:`DETAILS_RETRY_MAX` seconds.
DETAILS_EAGER_RETRIES = 3
DETAILS_RETRY_MAX = 300.0
#: A message still incomplete this long after the provider received it is reported once
#: (log, metric, ``status``); it is still tried while it is listed.
DETAILS_GIVE_UP = 3600.0


class Details:
    """Fetches the details of a number's new, incomplete messages; retries and reports
    the ones that cannot be had. One per :class:`~relay.poller.Poller`."""

    def __init__(self, api: AatroxClient, clock: Clock, events: Events) -> None:
        self.api = api
        self.clock = clock
        self.events = events

    async def complete(
        self, state: NumberState, wanted: list[InboundMessage], deadline: float
    ) -> list[InboundMessage]:
        """Complete ``wanted`` (new messages lacking a sender or a text) from their details,
        until the monotonic ``deadline``; the ones completed.

        A message whose details cannot be had now, or are still incomplete, is left out,
        unrecorded, so later polls try it again (at once a few times, then backing off);
        one the deadline cut off is simply due again at the next poll. Oldest go first.
        """
        if not wanted:
            return []
        number = state.config.number
        now = self.clock.monotonic()
        due = [m for m in wanted if state.incomplete.get(m.id, _NEVER).retry_at <= now]
        # Oldest first: the oldest are the first to leave the listing.
        due.sort(key=lambda m: m.received_at)
        limit = asyncio.Semaphore(DETAILS_CONCURRENCY)

        async def fetch(message: InboundMessage) -> InboundMessage | None:
            """The message completed, or None when its details failed or are incomplete;
            cancelled at the deadline (deferred, not failed)."""
            async with limit:
                try:
                    detail = await self.api.details(message.id, number=number)
                except ApiError as exc:
                    log.warning(
                        "relay.poll.details_failed",
                        extra=fields(number=shown(number), id=message.id, error=str(exc)),
                    )
                    return None
            merged = InboundMessage(
                message.id,
                message.sender if message.sender is not None else detail.sender,
                message.recipient,
                message.text if message.text is not None else detail.text,
                message.received_at,
            )
            return merged if merged.complete else None

        tasks = [asyncio.ensure_future(fetch(m)) for m in due]
        completed: list[InboundMessage] = []
        done: set[asyncio.Future[InboundMessage | None]] = set()
        try:
            if tasks:
                done, _ = await asyncio.wait(
                    tasks, timeout=max(deadline - self.clock.monotonic(), 0.0)
                )
        finally:
            for task in tasks:
                task.cancel()
        deferred = 0
        for message, task in zip(due, tasks, strict=True):
            if task not in done or task.cancelled():
                _entry(state, message)
                deferred += 1  # the poll's time ran out first: due again next poll
                continue
            crash = task.exception()
            if crash is not None:  # a bug: report it; the message is tried again later
                log.error("relay.poll.details_crashed", extra=fields(error=_describe(crash)))
                self.events.unexpected(crash)
            result = task.result() if crash is None else None
            if result is not None:
                if state.incomplete.pop(message.id, None) is not None:
                    state.changed = True  # no longer awaited: the saved list shrinks
                completed.append(result)
            else:
                self._details_failed(state, message)
        done_ids = {m.id for m in completed}
        for message in wanted:  # not due yet: still waiting
            if message.id not in done_ids:
                _entry(state, message)
        self._report_unresolved(state)
        if deferred:
            log.warning(
                "relay.poll.details_deferred",
                extra=fields(number=shown(number), completed=len(completed), left=deferred),
            )
        return completed

    def _details_failed(self, state: NumberState, message: InboundMessage) -> None:
        entry = _entry(state, message)
        entry.failures += 1
        backoffs = entry.failures - DETAILS_EAGER_RETRIES
        if backoffs > 0:
            delay = min(state.config.interval * 2 ** (backoffs - 1), DETAILS_RETRY_MAX)
            entry.retry_at = self.clock.monotonic() + delay

    def _report_unresolved(self, state: NumberState) -> None:
        """Report, once each, the messages still incomplete :data:`DETAILS_GIVE_UP` after
        the provider received them."""
        cutoff = self.clock.now() - timedelta(seconds=DETAILS_GIVE_UP)
        late = [e for e in state.incomplete.values() if not e.reported and e.received_at < cutoff]
        self._reported(state, late, "details could not be had")

    def unlisted(self, state: NumberState, fresh: Sequence[InboundMessage]) -> list[InboundMessage]:
        """The incomplete messages that have left the listing (not in ``fresh``) and are
        still wanted: their details are fetched by id as for listed ones."""
        if not state.incomplete:
            return []
        listed = {m.id for m in fresh}
        return [
            entry.message
            for message_id, entry in state.incomplete.items()
            if message_id not in listed
            and message_id not in state.seen
            and entry.message is not None
            and not entry.reported
        ]

    def forget_unlisted(self, state: NumberState, fresh: Sequence[InboundMessage]) -> None:
        """Stop waiting for details of messages that are no longer new: recorded after all
        (by this relay or another), or unlisted and already reported unresolved. One that
        merely left the listing is kept: its details are still asked for by id."""
        if not state.incomplete:
            return
        listed = {m.id for m in fresh}
        for message_id in [i for i in state.incomplete if i not in listed]:
            entry = state.incomplete[message_id]
            if message_id in state.seen or entry.reported or entry.message is None:
                del state.incomplete[message_id]
                state.changed = True

    def _reported(self, state: NumberState, entries: Sequence[Incomplete], reason: str) -> None:
        if not entries:
            return
        for entry in entries:
            entry.reported = True
        state.unresolved += len(entries)
        state.changed = state.urgent = True
        log.error(
            "relay.poll.unresolved",
            extra=fields(number=shown(state.config.number), messages=len(entries), reason=reason),
        )
        self.events.messages_unresolved(state.config.number, len(entries))


def _entry(state: NumberState, message: InboundMessage) -> Incomplete:
    """The number's :class:`Incomplete` entry for ``message``, made if it has none: then
    the number's state is written right after the poll (``numbers.awaiting_details``),
    so a restart does not forget a message the listing may move past."""
    entry = state.incomplete.get(message.id)
    if entry is None:
        entry = state.incomplete[message.id] = Incomplete(message.received_at, message=message)
        state.changed = state.urgent = True
    return entry


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


#: Stands in for a message never tried: its details are due now.
_NEVER = Incomplete(datetime.min)
