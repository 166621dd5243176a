"""Deliveries to webhooks: claiming the due ones, writing back what each attempt came
to (with the reply it asked for, in the same transaction), and the queue's figures."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from relay.store.base import StoreBase
from relay.store.outbound import outbound_row
from relay.store.records import DueDelivery, Outcome
from relay.store.schema import (
    DEAD,
    DELIVERED,
    PENDING,
    UtcDateTime,
    circuits,
    deliveries,
    messages,
    outbound,
)


def _due_columns() -> sa.Select[Any]:
    """A due delivery with its message; an outbound event (no message) gets blank message
    fields, ``received_at`` its queueing time, and its ``data``."""
    blank = sa.literal("")
    return sa.select(
        deliveries.c.id,
        deliveries.c.webhook,
        deliveries.c.webhook_id,
        deliveries.c.attempts,
        deliveries.c.queued_at,
        sa.func.coalesce(messages.c.number, blank),
        sa.func.coalesce(messages.c.provider_id, blank),
        sa.func.coalesce(messages.c.sender, blank),
        sa.func.coalesce(messages.c.recipient, blank),
        sa.func.coalesce(messages.c.text, blank),
        sa.func.coalesce(messages.c.received_at, deliveries.c.queued_at).label("received_at"),
        deliveries.c.last_attempt_at,
        deliveries.c.event,
        deliveries.c.data,
        messages.c.keyword,
    ).outerjoin(messages, messages.c.id == deliveries.c.message_id)


def _save_outcome() -> sa.Update:
    """One attempt's result, written back by ``executemany`` (parameters ``b_*``)."""
    ts = UtcDateTime()
    return (
        deliveries.update()
        .where(deliveries.c.id == sa.bindparam("b_id"))
        .values(
            state=sa.bindparam("b_state"),
            attempts=deliveries.c.attempts + 1,
            last_attempt_at=sa.bindparam("b_at", type_=ts),
            last_status=sa.bindparam("b_status", type_=sa.Integer()),
            last_error=sa.bindparam("b_error", type_=sa.Text()),
            delivered_at=sa.bindparam("b_delivered_at", type_=ts),
            next_attempt_at=sa.func.coalesce(
                sa.bindparam("b_next", type_=ts), deliveries.c.next_attempt_at
            ),
            claimed_by=None,
            claim_expires_at=None,
        )
    )


def _no_earlier_pending() -> sa.ColumnElement[bool]:
    """For ``ordering = "sender"``: no earlier message (by provider time, then the order
    it was recorded in) from the same sender to the same number is pending to the same
    webhook. Correlated with the ``deliveries`` row being claimed."""
    this = messages.alias("this_message")
    earlier_d = deliveries.alias("earlier_delivery")
    earlier_m = messages.alias("earlier_message")
    earlier = (
        sa.select(earlier_d.c.id)
        .select_from(earlier_d.join(earlier_m, earlier_m.c.id == earlier_d.c.message_id))
        .where(
            this.c.id == deliveries.c.message_id,
            earlier_d.c.webhook == deliveries.c.webhook,
            earlier_d.c.state == PENDING,
            earlier_m.c.number == this.c.number,
            earlier_m.c.sender == this.c.sender,
            sa.or_(
                earlier_m.c.received_at < this.c.received_at,
                sa.and_(earlier_m.c.received_at == this.c.received_at, earlier_m.c.id < this.c.id),
            ),
        )
        .correlate(deliveries)
    )
    return ~earlier.exists()


#: Built once: the statement :meth:`Deliveries.save_outcomes` runs for every batch.
SAVE_OUTCOME = _save_outcome()


class Deliveries(StoreBase):
    """Delivering's side of the store: the ``deliveries`` queue."""

    @functools.cached_property
    def _queue_reply(self) -> Any:
        """Queue a reply, each part at most once per delivery (this dialect's ``ON CONFLICT``)."""
        return self.insert(outbound).on_conflict_do_nothing(
            index_elements=[outbound.c.delivery_id, outbound.c.part]
        )

    def claim(self, webhook: str, limit: int, *, in_order: bool = False) -> list[DueDelivery]:
        """Claim up to ``limit`` due deliveries to ``webhook`` for this relay, oldest first;
        ``in_order`` (``ordering = "sender"``): only those with no earlier message from the
        same sender to the same number still pending to it."""
        where = [deliveries.c.webhook == webhook]
        if in_order:
            where.append(_no_earlier_pending())
        with self.engine.begin() as conn:
            ids = self.claim_ids(conn, deliveries, limit, *where)
            if not ids:
                return []
            rows = conn.execute(
                _due_columns()
                .where(deliveries.c.id.in_(ids))
                .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            )
            return [DueDelivery(*row) for row in rows]

    def next_due(self, webhook: str, *, in_order: bool = False) -> datetime | None:
        """When the next pending delivery to ``webhook`` that this relay is not already
        sending can be claimed: its retry time, or when another relay's claim runs out.
        ``in_order``: deliveries waiting for an earlier message of their sender do not
        count (the lane is woken when that one is settled)."""
        unclaimed = sa.select(sa.func.min(deliveries.c.next_attempt_at)).where(
            deliveries.c.webhook == webhook,
            deliveries.c.state == PENDING,
            deliveries.c.claimed_by.is_(None),
            *([_no_earlier_pending()] if in_order else []),
        )
        with self.engine.connect() as conn:
            found = [conn.execute(unclaimed).scalar_one_or_none()]
            if not self.alone:
                others = sa.select(sa.func.min(deliveries.c.claim_expires_at)).where(
                    deliveries.c.claimed_by.is_not(None),
                    deliveries.c.claimed_by != self.relay_id,
                    deliveries.c.webhook == webhook,
                    deliveries.c.state == PENDING,
                )
                found.append(conn.execute(others).scalar_one_or_none())
        times = [t for t in found if t is not None]
        return min(times) if times else None

    def save_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Write back a batch of attempt results in one transaction, releasing their claims.

        The replies that came with a 2xx are queued in the same transaction, each at
        most once per delivery: a repeated delivery's replies are ignored.
        """
        if not outcomes:
            return
        rows = [
            {
                "b_id": o.delivery_id,
                "b_state": o.state,
                "b_at": o.attempted_at,
                "b_status": o.status,
                "b_error": o.error,
                "b_delivered_at": o.attempted_at if o.state == DELIVERED else None,
                "b_next": o.next_attempt_at,
            }
            for o in outcomes
        ]
        replies = [
            outbound_row(
                "reply",
                reply.sender,
                [reply.recipient],
                reply.text,
                reply.disclaimer,
                o.attempted_at,
                delivery_id=o.delivery_id,
                part=part,
            )
            for o in outcomes
            for part, reply in enumerate(o.replies)
        ]
        with self.engine.begin() as conn:
            conn.execute(SAVE_OUTCOME, rows)
            if replies:
                conn.execute(self._queue_reply, replies)

    def queue_stats(self) -> dict[str, tuple[int, int, datetime | None]]:
        """Per webhook: pending deliveries, dead ones, and when the oldest pending was queued."""
        query = (
            sa.select(
                deliveries.c.webhook,
                deliveries.c.state,
                sa.func.count(),
                sa.func.min(deliveries.c.queued_at),
            )
            .where(deliveries.c.state.in_([PENDING, DEAD]))
            .group_by(deliveries.c.webhook, deliveries.c.state)
        )
        stats: dict[str, tuple[int, int, datetime | None]] = {}
        with self.engine.connect() as conn:
            for hook, state, count, oldest in conn.execute(query):
                pending, dead, first = stats.get(hook, (0, 0, None))
                if state == PENDING:
                    pending, first = int(count), oldest
                else:
                    dead = int(count)
                stats[hook] = (pending, dead, first)
        return stats

    def counts(self) -> dict[str, int]:
        """Deliveries by state, for status lines and tests."""
        query = sa.select(deliveries.c.state, sa.func.count()).group_by(deliveries.c.state)
        with self.engine.connect() as conn:
            found = {state: int(n) for state, n in conn.execute(query)}
        return {state: found.get(state, 0) for state in (PENDING, DELIVERED, DEAD)}

    def save_circuit(self, webhook: str, opened_at: datetime | None) -> None:
        """Note that this relay's circuit for ``webhook`` opened at ``opened_at``, or (None)
        that it is closed, for ``status``."""
        gone = circuits.delete().where(
            circuits.c.webhook == webhook, circuits.c.relay_id == self.relay_id
        )
        with self.engine.begin() as conn:
            conn.execute(gone)
            if opened_at is not None:
                conn.execute(
                    circuits.insert().values(
                        webhook=webhook, relay_id=self.relay_id, opened_at=opened_at
                    )
                )
