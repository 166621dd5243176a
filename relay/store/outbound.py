"""Outbound SMS: replies and sends queued for the provider, claimed and written back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from relay.store.base import StoreBase
from relay.store.records import OutboundSms, QueuedEvent, SendOutcome
from relay.store.schema import (
    FAILED,
    PENDING,
    REFUSED,
    SENT,
    UNKNOWN,
    OutboundState,
    deliveries,
    outbound,
)

#: An outbound SMS in these states can still have an outcome written back: pending, or
#: unknown (an outcome learnt late replaces it). A sent or failed one is settled for good.
_OPEN = (PENDING, UNKNOWN)
#: The fields of a :class:`QueuedEvent` that are columns of its ``deliveries`` row.
_EVENT_COLUMNS = ("webhook", "webhook_id", "event", "data")


def outbound_row(
    kind: str,
    sender: str,
    recipients: Sequence[str],
    text: str,
    disclaimer: bool,
    now: datetime,
    *,
    state: OutboundState = PENDING,
    last_error: str | None = None,
    delivery_id: int | None = None,
    part: int = 0,
) -> dict[str, object]:
    """The values of a new ``outbound`` row, queued and due ``now``: every way an SMS is
    queued (a send, a reply, a keyword's confirmation, a direct send) builds it here.
    ``last_error`` and ``delivery_id`` are columns of the row only when given; ``part``
    (which of the delivery's replies it is) with ``delivery_id``."""
    row: dict[str, object] = {
        "kind": kind,
        "sender": sender,
        "recipients": json.dumps(list(recipients)),
        "text": text,
        "disclaimer": disclaimer,
        "state": state,
        "queued_at": now,
        "next_attempt_at": now,
    }
    if last_error is not None:
        row["last_error"] = last_error
    if delivery_id is not None:
        row["delivery_id"] = delivery_id
        row["part"] = part
    return row


def _no_earlier_part_pending() -> sa.ColumnElement[bool]:
    """No earlier reply of the same delivery is still pending (true for any other SMS)."""
    earlier = outbound.alias("earlier")
    return ~sa.exists().where(
        earlier.c.delivery_id == outbound.c.delivery_id,
        earlier.c.part < outbound.c.part,
        earlier.c.state == PENDING,
    )


class Outbound(StoreBase):
    """The outbox's side of the store: the ``outbound`` queue."""

    def queue_send(
        self, sender: str, recipients: Sequence[str], text: str, disclaimer: bool = False
    ) -> int:
        """Queue an outbound SMS (``kind="send"``); its id."""
        row = outbound_row("send", sender, recipients, text, disclaimer, self.clock.now())
        with self.engine.begin() as conn:
            return int(
                conn.execute(outbound.insert().values(row).returning(outbound.c.id)).scalar_one()
            )

    def begin_direct_send(
        self, kind: str, sender: str, recipients: Sequence[str], text: str, disclaimer: bool
    ) -> OutboundSms:
        """Record an SMS about to be sent by the caller itself (``aatrox-relay send``), not
        by the outbox: ``unknown`` until :meth:`record_send` writes its outcome, so one whose
        sender was killed mid-way is never sent again by a relay, and says what it is."""
        now = self.clock.now()
        row = outbound_row(
            kind,
            sender,
            recipients,
            text,
            disclaimer,
            now,
            state=UNKNOWN,
            last_error="the sender has not written back an outcome",
        )
        with self.engine.begin() as conn:
            sms_id = int(
                conn.execute(outbound.insert().values(row).returning(outbound.c.id)).scalar_one()
            )
        return OutboundSms(sms_id, kind, sender, tuple(recipients), text, disclaimer, 0, now)

    def claim_outbound(self, limit: int) -> list[OutboundSms]:
        """Claim up to ``limit`` due outbound SMS for this relay; a delivery's later reply
        only once its earlier ones are settled (they go out in order)."""
        with self.engine.begin() as conn:
            ids = self.claim_ids(conn, outbound, limit, _no_earlier_part_pending())
            if not ids:
                return []
            rows = conn.execute(
                sa.select(
                    outbound.c.id,
                    outbound.c.kind,
                    outbound.c.sender,
                    outbound.c.recipients,
                    outbound.c.text,
                    outbound.c.disclaimer,
                    outbound.c.attempts,
                    outbound.c.queued_at,
                    deliveries.c.webhook_id,
                )
                .outerjoin(deliveries, deliveries.c.id == outbound.c.delivery_id)
                .where(outbound.c.id.in_(ids))
                .order_by(outbound.c.id)
            )
            return [
                OutboundSms(
                    r.id,
                    r.kind,
                    r.sender,
                    tuple(json.loads(r.recipients)),
                    r.text,
                    bool(r.disclaimer),
                    r.attempts,
                    r.queued_at,
                    r.webhook_id,
                )
                for r in rows
            ]

    def next_outbound_due(self) -> datetime | None:
        """When the next outbound SMS not claimed by this relay falls due (a reply waiting
        for its delivery's earlier one does not count: the outbox wakes when that settles)."""
        query = sa.select(sa.func.min(outbound.c.next_attempt_at)).where(
            outbound.c.state == PENDING,
            sa.or_(outbound.c.claimed_by.is_(None), outbound.c.claimed_by != self.relay_id),
            _no_earlier_part_pending(),
        )
        with self.engine.connect() as conn:
            value: datetime | None = conn.execute(query).scalar_one_or_none()
        return value

    def record_send(
        self,
        sms_id: int,
        attempted_at: datetime,
        outcome: SendOutcome,
        events: Sequence[QueuedEvent] = (),
    ) -> bool:
        """Write back one attempt's ``outcome``, releasing the claim, and queue ``events``
        (the ``sms.sent`` or ``sms.failed`` deliveries it causes) in the same transaction.

        The provider's answer (``sent_at``, ids, status) and a retry time are written only
        when given. An SMS already sent or failed is left as it is and queues nothing (an
        outcome written twice tells each webhook once); False then.
        """
        values: dict[str, object] = {
            "state": outcome.state,
            "last_attempt_at": attempted_at,
            "last_status": outcome.last_status,
            "last_error": outcome.last_error,
        }
        if outcome.next_attempt_at is not None:
            values["next_attempt_at"] = outcome.next_attempt_at
        if outcome.sent_at is not None:
            values["sent_at"] = outcome.sent_at
        if outcome.provider_ids is not None:
            values["provider_ids"] = json.dumps(list(outcome.provider_ids))
            values["provider_status"] = outcome.provider_status
        now = self.clock.now()
        queued = [
            {
                **{name: getattr(e, name) for name in _EVENT_COLUMNS},
                "outbound_id": sms_id,
                "state": PENDING,
                "attempts": 0,
                "queued_at": now,
                "next_attempt_at": now,
            }
            for e in events
        ]
        with self.engine.begin() as conn:
            written = conn.execute(
                outbound.update()
                .where(outbound.c.id == sms_id, outbound.c.state.in_(_OPEN))
                .values(
                    attempts=outbound.c.attempts + 1,
                    claimed_by=None,
                    claim_expires_at=None,
                    **values,
                )
            ).rowcount
            if written and queued:
                conn.execute(
                    self.insert(deliveries).on_conflict_do_nothing(
                        index_elements=[
                            deliveries.c.outbound_id,
                            deliveries.c.event,
                            deliveries.c.webhook,
                        ]
                    ),
                    queued,
                )
        return bool(written)

    def outbound_counts(self) -> dict[str, int]:
        """Outbound SMS by state."""
        query = sa.select(outbound.c.state, sa.func.count()).group_by(outbound.c.state)
        with self.engine.connect() as conn:
            found = {state: int(n) for state, n in conn.execute(query)}
        states = (PENDING, SENT, FAILED, UNKNOWN, REFUSED)
        return {state: found.get(state, 0) for state in states}
