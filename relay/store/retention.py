"""Retention: deleting what is settled and older than ``store.retention``."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from relay.store.base import LOOKUP_CHUNK, StoreBase
from relay.store.records import Pruned
from relay.store.schema import (
    DEAD,
    DELIVERED,
    FAILED,
    PENDING,
    REFUSED,
    SENT,
    UNKNOWN,
    deliveries,
    messages,
    outbound,
)

#: Outbound SMS in these states are settled: :meth:`Store.prune` deletes them once old.
SETTLED_OUTBOUND = (SENT, FAILED, UNKNOWN, REFUSED)


class Retention(StoreBase):
    """Pruning the store."""

    def prune(self, retention: float) -> int:
        """Apply ``retention`` (see :meth:`apply_retention`); how many messages were deleted."""
        return self.apply_retention(retention).messages

    def apply_retention(self, retention: float) -> Pruned:
        """Delete what is settled and older than ``retention`` seconds, in one transaction.

        Messages whose deliveries are all settled: a message with a pending delivery is
        kept, whatever its age; so is one with a dead delivery that failed within the
        retention window (it may be replayed). Outbound SMS that are sent, failed or of
        unknown outcome, whose last attempt (or queueing) is older than the horizon: a
        pending one is kept, whatever its age. Outbound SMS go first, so the deliveries
        deleted after them (their ``delivery_id`` is set to NULL, ``ON DELETE SET NULL``)
        touch only the replies still kept. Outbound events (``sms.sent``, ``sms.failed``)
        go by the same rules as a message's deliveries: delivered, or dead and last tried
        before the horizon, and queued before it.
        """
        horizon = self.clock.now() - timedelta(seconds=retention)
        blocking = sa.select(deliveries.c.id).where(
            deliveries.c.message_id == messages.c.id,
            sa.or_(
                deliveries.c.state == PENDING,
                sa.and_(deliveries.c.state == DEAD, deliveries.c.last_attempt_at >= horizon),
            ),
        )
        old = sa.select(messages.c.id).where(messages.c.received_at < horizon, ~blocking.exists())
        settled = sa.select(outbound.c.id).where(
            outbound.c.state.in_(SETTLED_OUTBOUND),
            sa.func.coalesce(outbound.c.last_attempt_at, outbound.c.queued_at) < horizon,
        )
        told = sa.select(deliveries.c.id).where(
            deliveries.c.message_id.is_(None),
            deliveries.c.queued_at < horizon,
            sa.or_(
                deliveries.c.state == DELIVERED,
                sa.and_(deliveries.c.state == DEAD, deliveries.c.last_attempt_at < horizon),
            ),
        )
        with self.engine.begin() as conn:
            events = list(conn.scalars(told))
            for start in range(0, len(events), LOOKUP_CHUNK):
                chunk = events[start : start + LOOKUP_CHUNK]
                conn.execute(deliveries.delete().where(deliveries.c.id.in_(chunk)))
            sms = list(conn.scalars(settled))
            for start in range(0, len(sms), LOOKUP_CHUNK):
                conn.execute(
                    outbound.delete().where(outbound.c.id.in_(sms[start : start + LOOKUP_CHUNK]))
                )
            ids = list(conn.scalars(old))
            for start in range(0, len(ids), LOOKUP_CHUNK):
                chunk = ids[start : start + LOOKUP_CHUNK]
                conn.execute(deliveries.delete().where(deliveries.c.message_id.in_(chunk)))
                conn.execute(messages.delete().where(messages.c.id.in_(chunk)))
        return Pruned(messages=len(ids), outbound=len(sms), events=len(events))
