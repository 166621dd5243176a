"""The values the store hands out and takes in: frozen records, no SQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from relay.store.schema import DeliveryState, OutboundState

if TYPE_CHECKING:
    from relay.inbound import InboundMessage


@dataclass(frozen=True)
class NumberRecord:
    """What the store knows of one number's polls, read at start and on reload."""

    configured_at: datetime
    first_polled_at: datetime | None
    last_success_at: datetime | None
    longest_listing: int
    gap_since: datetime | None
    gaps: int
    #: Listed messages still waiting for their details, as listed.
    awaiting: tuple[InboundMessage, ...] = ()


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
    #: Listed messages still waiting for their details, as listed (written as given).
    awaiting: tuple[InboundMessage, ...] = ()


@dataclass(frozen=True)
class KeywordAction:
    """What an inbound keyword message asks of the store, in the transaction that
    records it (see :mod:`relay.optout`)."""

    #: "stop", "start" or "help": kept with the message, sent as ``data.keyword``.
    keyword: str
    #: Record an opt-out of the sender from the number.
    opt_out: bool = False
    #: Remove the sender's opt-out from the number.
    opt_in: bool = False
    #: A confirmation to queue for the sender; None: none.
    confirm: str | None = None
    #: The confirmation's outbound kind (a STOP's may go to an opted-out sender).
    confirm_kind: str = "keyword"
    disclaimer: bool = False


#: What an inbound message on a number asks of the store as it is recorded (see
#: :class:`relay.optout.Keywords`): None for an ordinary message.
KeywordRules = Callable[[str, "InboundMessage"], KeywordAction | None]


@dataclass(frozen=True)
class OptoutRow:
    """One opt-out, for ``optouts list``."""

    number: str
    sender: str
    created_at: datetime
    source: str


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
    #: Outbound events' deliveries (``sms.sent``, ``sms.failed``).
    events: int = 0


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
    #: The event type; for any but ``sms.received`` the message fields are blank
    #: (``received_at`` is when the event was queued) and ``data`` holds the event.
    event: str = "sms.received"
    #: An outbound event's ``data``, JSON.
    data: str | None = None
    #: "stop", "start" or "help" when the message's text was an ``[optout]`` keyword.
    keyword: str | None = None

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
    #: The SMS a 2xx answer asked to send back, in order (one per TwiML ``<Message>``).
    replies: tuple[Reply, ...] = ()


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
    #: For a reply: the ``webhook-id`` of the delivery whose answer asked for it.
    reply_to: str | None = None


@dataclass(frozen=True)
class QueuedEvent:
    """An outbound event for one webhook, queued with the outcome it tells of."""

    webhook: str
    webhook_id: str
    event: str
    #: The event's ``data``, JSON.
    data: str


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
