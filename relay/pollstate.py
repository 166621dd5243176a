"""What the poller keeps of each number between polls, and what one poll found."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from relay.adaptive import Pace
from relay.config import NumberConfig
from relay.inbound import InboundMessage
from relay.store import NumberRecord, SavedPollState


@dataclass
class Incomplete:
    """A listed message whose details could not be had yet."""

    received_at: datetime
    failures: int = 0
    #: Monotonic time before which its details are not asked for again.
    retry_at: float = 0.0
    #: Reported as unresolved (once).
    reported: bool = False
    #: The message as listed, to fetch its details by id once it has left the listing.
    message: InboundMessage | None = None


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
    #: When the number was first configured (from the store): the backfill cut.
    configured_at: datetime | None = None
    #: The most items one listing of this number held.
    longest: int = 0
    #: When the gap episode under way began; None when listings overlap.
    gap_since: datetime | None = None
    #: Gapped listings, ever.
    gaps: int = 0
    #: Messages reported as unresolved, ever.
    unresolved: int = 0
    #: Listed messages waiting for their details, by id.
    incomplete: dict[str, Incomplete] = field(default_factory=dict)
    #: Skip reasons already logged.
    skip_reasons: set[str] = field(default_factory=set)
    #: Changed since :meth:`Poller.take_changed_states` last looked.
    changed: bool = False
    #: Changed in a way worth writing at once (a gap, a longer listing, an unresolved
    #: message), not only at the service's next periodic save.
    urgent: bool = False
    seen: dict[str, None] = field(default_factory=dict)
    #: Its current interval, moved by its traffic (:mod:`relay.adaptive`); None: fixed.
    pace: Pace | None = None
    #: When the last poll began (0.0: never), on the API budget's monotonic clock.
    began: float = 0.0

    @property
    def interval(self) -> float:
        """The interval the number is polled at now."""
        return self.config.interval if self.pace is None else self.pace.current

    def load(self, record: NumberRecord) -> None:
        """Take what the store knows; a state already in use keeps its fresher memory."""
        self.baselined = self.baselined or record.first_polled_at is not None
        if self.configured_at is None:
            self.configured_at = record.configured_at
            self.last_success = self.last_success or record.last_success_at
            self.gap_since = record.gap_since
            self.gaps = record.gaps
        self.longest = max(self.longest, record.longest_listing)
        for message in record.awaiting:  # waiting for details when the relay last stopped
            if message.id not in self.incomplete and message.id not in self.seen:
                self.incomplete[message.id] = Incomplete(message.received_at, message=message)

    def row(self) -> SavedPollState:
        """This state as :meth:`Store.save_poll_states` wants it."""
        return SavedPollState(
            number=self.config.number,
            last_poll_at=self.last_poll,
            last_success_at=self.last_success,
            consecutive_failures=self.failures,
            last_error=self.last_error,
            longest_listing=self.longest,
            gap_since=self.gap_since,
            gaps=self.gaps,
            unresolved=self.unresolved,
            awaiting=tuple(
                entry.message
                for entry in self.incomplete.values()
                if entry.message is not None and not entry.reported
            ),
        )

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
    #: The listing held nothing seen before: messages may have been missed.
    gap: bool = False
    #: New messages left unrecorded for now (their details could not be had).
    incomplete: int = 0
    #: Not polled: the API budget had no grant for it within its interval.
    deferred: bool = False
