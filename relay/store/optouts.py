"""Opt-outs: which senders asked (STOP) for no more SMS from which number."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from relay.store.base import LOOKUP_CHUNK, StoreBase
from relay.store.records import OptoutRow
from relay.store.schema import optouts


class Optouts(StoreBase):
    """The ``optouts`` table: read before every send, written by keywords and operators."""

    def opted_out(self, number: str, recipients: Sequence[str]) -> set[str]:
        """Which of ``recipients`` opted out of SMS from ``number``."""
        found: set[str] = set()
        wanted = list(dict.fromkeys(recipients))
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                query = sa.select(optouts.c.sender).where(
                    optouts.c.number == number,
                    optouts.c.sender.in_(wanted[start : start + LOOKUP_CHUNK]),
                )
                found.update(conn.scalars(query))
        return found

    def add_optout(self, number: str, sender: str, source: str = "cli") -> bool:
        """Opt ``sender`` out of SMS from ``number``; False when they already were."""
        stmt = (
            self.insert(optouts)
            .values(number=number, sender=sender, created_at=self.clock.now(), source=source)
            .on_conflict_do_nothing(index_elements=[optouts.c.number, optouts.c.sender])
            .returning(optouts.c.sender)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    def remove_optout(self, number: str, sender: str) -> bool:
        """Opt ``sender`` in again to SMS from ``number``; False when they were not out."""
        stmt = optouts.delete().where(optouts.c.number == number, optouts.c.sender == sender)
        with self.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    def list_optouts(self, number: str | None = None) -> list[OptoutRow]:
        """Every opt-out (of ``number``), by number, newest first."""
        query = sa.select(
            optouts.c.number, optouts.c.sender, optouts.c.created_at, optouts.c.source
        ).order_by(optouts.c.number, optouts.c.created_at.desc(), optouts.c.sender)
        if number is not None:
            query = query.where(optouts.c.number == number)
        with self.engine.connect() as conn:
            return [OptoutRow(*row) for row in conn.execute(query)]

    def optout_counts(self) -> dict[str, int]:
        """Opt-outs per number (for ``/metrics``)."""
        query = sa.select(optouts.c.number, sa.func.count()).group_by(optouts.c.number)
        with self.engine.connect() as conn:
            return {number: int(n) for number, n in conn.execute(query)}
