"""The values the store hands out and takes in: frozen records, no SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from relay.store.schema import DeliveryState, OutboundState


@dataclass(frozen=True)
class NumberRecord:
    """What the store knows of one number's polls, read at start and on reload."""

    configured_at: datetime
    first_polled_at: datetime | None
    last_success_at: datetime | None
    longest_listing: int
    gap_since: datetime | None
    gaps: int


@dataclass(frozen=True)
class SavedPollState:
    """One number's poll state as :meth:`Store.save_poll_states` writes it (for ``status``
    and the next start). A time left None keeps the stored one."""

    number: str
    last_poll_at: datetime | None
    last_success_at: datetime | None
    consecutive_failures: int
    last_error: str | None
    longest_listing: int
    gap_since: datetime | None
    gaps: int
    unresolved: int


@dataclass(frozen=True)
class Recorded:
    """What one :meth:`Store.record` call wrote."""

    messages: int
    deliveries: int


@dataclass(frozen=True)
class Pruned:
    """What one :meth:`Store.apply_retention` deleted."""

    messages: int
    outbound: int


@dataclass(frozen=True)
class DueDelivery:
    """A delivery that is due, with the message it carries."""

    id: int
    webhook: str
    webhook_id: str
    attempts: int
    queued_at: datetime
    number: str
    provider_id: str
    sender: str
    recipient: str
    text: str
    received_at: datetime
    last_attempt_at: datetime | None = None

    @property
    def replayed(self) -> bool:
        """Queued again by ``deliveries replay`` after an earlier attempt."""
        return self.last_attempt_at is not None and self.queued_at > self.last_attempt_at


@dataclass(frozen=True)
class Reply:
    """An SMS a webhook asked to send back, queued with its delivery's outcome."""

    sender: str
    recipient: str
    text: str
    disclaimer: bool = False


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt, to be written back."""

    delivery_id: int
    attempted_at: datetime
    state: DeliveryState
    next_attempt_at: datetime | None = None
    status: int | None = None
    error: str | None = None
    reply: Reply | None = None


@dataclass(frozen=True)
class OutboundSms:
    """One queued outbound SMS."""

    id: int
    kind: str
    sender: str
    recipients: tuple[str, ...]
    text: str
    disclaimer: bool
    attempts: int
    queued_at: datetime


@dataclass(frozen=True)
class SendOutcome:
    """What one attempt at an outbound SMS came to, as written back to its row.

    ``state`` PENDING means it is due again at ``next_attempt_at``; the others settle it
    (``unknown`` with a ``next_attempt_at`` is tried again, see ``[outbound] retry_unknown``).
    """

    state: OutboundState
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    provider_ids: tuple[str, ...] | None = None
    provider_status: str | None = None
