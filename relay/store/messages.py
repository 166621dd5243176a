"""Inbound messages and the numbers they arrive on: what has been seen, and recording
new messages together with their deliveries, in one transaction."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from relay.inbound import InboundMessage
from relay.store.base import LOOKUP_CHUNK, StoreBase
from relay.store.outbound import outbound_row
from relay.store.records import (
    KeywordAction,
    KeywordRules,
    NumberRecord,
    Recorded,
    SavedPollState,
)
from relay.store.schema import (
    PENDING,
    UtcDateTime,
    deliveries,
    messages,
    numbers,
    optouts,
    outbound,
)


def webhook_id(number: str, provider_id: str, webhook: str) -> str:
    """The Standard Webhooks ``webhook-id`` of one message to one webhook.

    Derived from what identifies the delivery, so it is the same on every
    attempt, after a replay, and even if the store were rebuilt.
    """
    digest = hashlib.sha256(f"{number}\x00{provider_id}\x00{webhook}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def _keyword(action: KeywordAction | None) -> str | None:
    return None if action is None else action.keyword


def _poll_columns(state: SavedPollState) -> dict[str, Any]:
    """The columns of ``state`` (all but the number)."""
    columns = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    del columns["number"]
    columns["awaiting_details"] = _awaiting_json(columns.pop("awaiting"))
    return columns


def _awaiting_json(messages: Sequence[InboundMessage]) -> str | None:
    """``numbers.awaiting_details`` for ``messages`` (None: none)."""
    if not messages:
        return None
    return json.dumps(
        [
            {
                "id": m.id,
                "sender": m.sender,
                "to": m.recipient,
                "text": m.text,
                "received_at": m.received_at.isoformat(),
            }
            for m in messages
        ],
        ensure_ascii=False,
    )


def _awaiting(value: str | None) -> tuple[InboundMessage, ...]:
    """The messages of ``numbers.awaiting_details``; what cannot be read is left out
    (the column is the relay's own, so that only happens to a hand-edited store)."""
    if not value:
        return ()
    try:
        items = json.loads(value)
        return tuple(
            InboundMessage(
                str(item["id"]),
                item["sender"],
                str(item["to"]),
                item["text"],
                datetime.fromisoformat(item["received_at"]),
            )
            for item in items
        )
    except (ValueError, TypeError, KeyError):
        return ()


class Messages(StoreBase):
    """Polling's side of the store: numbers' poll state and the messages seen."""

    def load_numbers(self, names: Sequence[str]) -> dict[str, NumberRecord]:
        """What the store knows of each configured number, marking any it has never seen
        (or knew only from failed polls) as configured now: one transaction."""
        now = self.clock.now()
        wanted = list(dict.fromkeys(names))
        found: dict[str, NumberRecord] = {}
        with self.engine.begin() as conn:
            if wanted:
                conn.execute(
                    self.insert(numbers).on_conflict_do_nothing(index_elements=[numbers.c.number]),
                    [{"number": name, "configured_at": now} for name in wanted],
                )
                conn.execute(
                    numbers.update()
                    .where(numbers.c.number.in_(wanted), numbers.c.configured_at.is_(None))
                    .values(configured_at=now)
                )
            n = numbers.c
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                chunk = wanted[start : start + LOOKUP_CHUNK]
                query = sa.select(
                    n.number,
                    n.configured_at,
                    n.first_polled_at,
                    n.last_success_at,
                    n.longest_listing,
                    n.gap_since,
                    n.gaps,
                    n.awaiting_details,
                ).where(n.number.in_(chunk))
                for row in conn.execute(query):
                    found[row.number] = NumberRecord(
                        configured_at=row.configured_at,
                        first_polled_at=row.first_polled_at,
                        last_success_at=row.last_success_at,
                        longest_listing=row.longest_listing,
                        gap_since=row.gap_since,
                        gaps=row.gaps,
                        awaiting=_awaiting(row.awaiting_details),
                    )
        return found

    def known_numbers(self) -> set[str]:
        """Numbers that have had their first poll (their backfill is done)."""
        with self.engine.connect() as conn:
            return set(
                conn.scalars(
                    sa.select(numbers.c.number).where(numbers.c.first_polled_at.is_not(None))
                )
            )

    def known_ids(self, number: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are already recorded for ``number``: one query per 500 ids."""
        found: set[str] = set()
        if not ids:
            return found
        with self.engine.connect() as conn:
            for start in range(0, len(ids), LOOKUP_CHUNK):
                chunk = ids[start : start + LOOKUP_CHUNK]
                query = sa.select(messages.c.provider_id).where(
                    messages.c.number == number, messages.c.provider_id.in_(chunk)
                )
                found.update(conn.scalars(query))
        return found

    def record(
        self,
        number: str,
        new: Sequence[InboundMessage],
        targets: Callable[[InboundMessage], Sequence[str]],
        keywords: KeywordRules | None = None,
    ) -> Recorded:
        """Record ``new`` messages of ``number`` as seen and queue their deliveries.

        One transaction: the number's first-poll mark, the messages, one pending
        delivery per webhook that ``targets(message)`` names, and what each keyword
        message asks (``keywords``: its keyword, the sender's opt-out or opt-in, a
        confirmation), applied in provider order; without ``keywords``, the store's own
        (:attr:`keywords`, set by the daemon from ``[optout]``). A message already
        recorded (by an earlier poll or another relay) is left alone, and gets no second
        set of deliveries nor a second confirmation.
        """
        keywords = keywords if keywords is not None else self.keywords
        now = self.clock.now()
        with self.engine.begin() as conn:
            conn.execute(
                self.insert(numbers)
                .values(number=number, first_polled_at=now, last_poll_at=now, last_success_at=now)
                .on_conflict_do_update(
                    index_elements=[numbers.c.number],
                    set_={
                        "first_polled_at": sa.func.coalesce(numbers.c.first_polled_at, now),
                        "last_poll_at": now,
                        "last_success_at": now,
                        "consecutive_failures": 0,
                        "last_error": None,
                    },
                )
            )
            if not new:
                return Recorded(0, 0)
            actions: dict[str, KeywordAction] = {}
            if keywords is not None:
                for m in new:
                    action = keywords(number, m)
                    if action is not None:
                        actions[m.id] = action
            rows = [
                {
                    "number": number,
                    "provider_id": m.id,
                    "sender": m.sender or "",
                    "recipient": m.recipient,
                    "text": m.text or "",
                    "received_at": m.received_at,
                    "seen_at": now,
                    "keyword": _keyword(actions.get(m.id)),
                }
                for m in new
            ]
            stmt = (
                self.insert(messages)
                .on_conflict_do_nothing(index_elements=[messages.c.number, messages.c.provider_id])
                .returning(messages.c.id, messages.c.provider_id)
            )
            inserted = {pid: mid for mid, pid in conn.execute(stmt, rows)}
            queued = [
                {
                    "message_id": inserted[m.id],
                    "webhook": hook,
                    "webhook_id": webhook_id(number, m.id, hook),
                    "state": PENDING,
                    "attempts": 0,
                    "queued_at": now,
                    "next_attempt_at": now,
                }
                for m in new
                if m.id in inserted
                for hook in targets(m)
            ]
            if queued:
                conn.execute(deliveries.insert(), queued)
            acted = [m for m in new if m.id in inserted and m.id in actions]
            for m in sorted(acted, key=lambda m: (m.received_at, inserted[m.id])):
                self._apply_keyword(conn, number, m, actions[m.id], now)
        return Recorded(len(inserted), len(queued))

    def _apply_keyword(
        self, conn: sa.Connection, number: str, m: InboundMessage, act: KeywordAction, now: datetime
    ) -> None:
        """The opt-out, opt-in and confirmation one keyword message asks for."""
        sender = m.sender or ""
        if act.opt_out:
            conn.execute(
                self.insert(optouts)
                .values(number=number, sender=sender, created_at=now, source="keyword")
                .on_conflict_do_nothing(index_elements=[optouts.c.number, optouts.c.sender])
            )
        if act.opt_in:
            conn.execute(
                optouts.delete().where(optouts.c.number == number, optouts.c.sender == sender)
            )
        if act.confirm is not None:
            confirmation = outbound_row(
                act.confirm_kind, number, [sender], act.confirm, act.disclaimer, now
            )
            conn.execute(outbound.insert().values(confirmation))

    def record_failure(self, number: str, error: str) -> None:
        """Note a failed poll of ``number`` (for ``status``). A number never polled
        successfully gets a row without a first poll: its backfill is still ahead."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            conn.execute(
                self.insert(numbers)
                .values(number=number, last_poll_at=now, consecutive_failures=1, last_error=error)
                .on_conflict_do_update(
                    index_elements=[numbers.c.number],
                    set_={
                        "last_poll_at": now,
                        "consecutive_failures": numbers.c.consecutive_failures + 1,
                        "last_error": error,
                    },
                )
            )

    def save_poll_states(self, states: Sequence[SavedPollState]) -> None:
        """Persist numbers' poll state (for ``status`` and the next start) in one
        transaction. Unknown numbers are skipped."""
        if not states:
            return
        stmt = (
            numbers.update()
            .where(numbers.c.number == sa.bindparam("key"))
            .values(
                last_poll_at=sa.func.coalesce(
                    sa.bindparam("last_poll_at", type_=UtcDateTime()), numbers.c.last_poll_at
                ),
                last_success_at=sa.func.coalesce(
                    sa.bindparam("last_success_at", type_=UtcDateTime()), numbers.c.last_success_at
                ),
                consecutive_failures=sa.bindparam("consecutive_failures"),
                last_error=sa.bindparam("last_error"),
                longest_listing=sa.bindparam("longest_listing"),
                gap_since=sa.bindparam("gap_since", type_=UtcDateTime()),
                gaps=sa.bindparam("gaps"),
                unresolved=sa.bindparam("unresolved"),
                awaiting_details=sa.bindparam("awaiting_details"),
            )
        )
        with self.engine.begin() as conn:
            conn.execute(
                stmt,
                [{"key": s.number, **_poll_columns(s)} for s in states],
            )
