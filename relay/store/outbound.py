"""Outbound SMS: replies and sends queued for the provider, claimed and written back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from relay.store.base import StoreBase
from relay.store.records import OutboundSms, SendOutcome
from relay.store.schema import FAILED, PENDING, SENT, UNKNOWN, outbound


class Outbound(StoreBase):
    """The outbox's side of the store: the ``outbound`` queue."""

    def queue_send(
        self, sender: str, recipients: Sequence[str], text: str, disclaimer: bool = False
    ) -> int:
        """Queue an outbound SMS (``kind="send"``); its id."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    outbound.insert()
                    .values(
                        kind="send",
                        sender=sender,
                        recipients=json.dumps(list(recipients)),
                        text=text,
                        disclaimer=disclaimer,
                        state=PENDING,
                        queued_at=now,
                        next_attempt_at=now,
                    )
                    .returning(outbound.c.id)
                ).scalar_one()
            )

    def claim_outbound(self, limit: int) -> list[OutboundSms]:
        """Claim up to ``limit`` due outbound SMS for this relay."""
        with self.engine.begin() as conn:
            ids = self.claim_ids(conn, outbound, limit)
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
                )
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
                )
                for r in rows
            ]

    def next_outbound_due(self) -> datetime | None:
        """When the next outbound SMS not claimed by this relay falls due."""
        query = sa.select(sa.func.min(outbound.c.next_attempt_at)).where(
            outbound.c.state == PENDING,
            sa.or_(outbound.c.claimed_by.is_(None), outbound.c.claimed_by != self.relay_id),
        )
        with self.engine.connect() as conn:
            value: datetime | None = conn.execute(query).scalar_one_or_none()
        return value

    def record_send(self, sms_id: int, attempted_at: datetime, outcome: SendOutcome) -> None:
        """Write back one attempt's ``outcome``, releasing the claim. The provider's
        answer (``sent_at``, ids, status) and a retry time are written only when given."""
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
        with self.engine.begin() as conn:
            conn.execute(
                outbound.update()
                .where(outbound.c.id == sms_id)
                .values(
                    attempts=outbound.c.attempts + 1,
                    claimed_by=None,
                    claim_expires_at=None,
                    **values,
                )
            )

    def outbound_counts(self) -> dict[str, int]:
        """Outbound SMS by state."""
        query = sa.select(outbound.c.state, sa.func.count()).group_by(outbound.c.state)
        with self.engine.connect() as conn:
            found = {state: int(n) for state, n in conn.execute(query)}
        return {state: found.get(state, 0) for state in (PENDING, SENT, FAILED, UNKNOWN)}
