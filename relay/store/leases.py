"""Leases: which relay polls which number, and the heartbeats that say who is alive.

How the relays share the work is told in :mod:`relay.leases`, which runs the rounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa

from relay.store.base import CLAIMABLE, StoreBase
from relay.store.schema import circuits, leases, relays

#: Lease rounds per lease period.
ROUNDS_PER_LEASE = 5


def round_interval(lease: float) -> float:
    """Seconds between two lease rounds."""
    return lease / ROUNDS_PER_LEASE


class Leases(StoreBase):
    """The ``leases`` and ``relays`` tables."""

    def balance(self, names: Sequence[str]) -> set[str]:
        """One lease round for this relay over the configured numbers; the numbers it now holds."""
        now = self.clock.now()
        me = self.relay_id
        expires = now + timedelta(seconds=self.lease - round_interval(self.lease))
        wanted = list(names)
        with self.engine.begin() as conn:
            conn.execute(
                self.insert(relays)
                .values(id=me, started_at=now, heartbeat_at=now)
                .on_conflict_do_update(index_elements=[relays.c.id], set_={"heartbeat_at": now})
            )
            conn.execute(relays.delete().where(relays.c.heartbeat_at < now - timedelta(days=1)))
            conn.execute(
                circuits.delete().where(circuits.c.relay_id.not_in(sa.select(relays.c.id)))
            )
            alive = conn.execute(
                sa.select(sa.func.count()).select_from(relays).where(self.alive(now))
            ).scalar_one()
            for table in CLAIMABLE:
                conn.execute(
                    table.update()
                    .where(table.c.claimed_by == me, table.c.claim_expires_at >= now)
                    .values(claim_expires_at=now + timedelta(seconds=self.lease))
                )
            if not wanted:
                return set()
            conn.execute(
                self.insert(leases).on_conflict_do_nothing(index_elements=[leases.c.name]),
                [{"name": name} for name in wanted],
            )
            held = set(
                conn.scalars(
                    leases.update()
                    .where(
                        leases.c.owner == me, leases.c.expires_at >= now, leases.c.name.in_(wanted)
                    )
                    .values(expires_at=expires)
                    .returning(leases.c.name)
                )
            )
            share = math.ceil(len(wanted) / max(int(alive), 1))
            if len(held) < share:
                free = (
                    sa.select(leases.c.name)
                    .where(
                        leases.c.name.in_(wanted),
                        sa.or_(leases.c.owner.is_(None), leases.c.expires_at < now),
                    )
                    .order_by(leases.c.name)
                    .limit(share - len(held))
                    .with_for_update(skip_locked=True)
                )
                held.update(
                    conn.scalars(
                        leases.update()
                        .where(leases.c.name.in_(free.scalar_subquery()))
                        .values(owner=me, expires_at=expires)
                        .returning(leases.c.name)
                    )
                )
            elif len(held) > share:
                extra = sorted(held)[share:]
                conn.execute(
                    leases.update()
                    .where(leases.c.owner == me, leases.c.name.in_(extra))
                    .values(owner=None, expires_at=None)
                )
                held.difference_update(extra)
        return held

    def release_leases(self) -> None:
        """Hand back every lease and claim of this relay and drop its heartbeat (at shutdown)."""
        with self.engine.begin() as conn:
            conn.execute(
                leases.update()
                .where(leases.c.owner == self.relay_id)
                .values(owner=None, expires_at=None)
            )
            conn.execute(relays.delete().where(relays.c.id == self.relay_id))
            conn.execute(circuits.delete().where(circuits.c.relay_id == self.relay_id))
        self.release_claims()
