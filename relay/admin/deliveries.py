"""The ``deliveries list`` and ``deliveries replay`` commands."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from relay import logs
from relay.admin.render import ago, cell, dumps, plural, table
from relay.config import Config
from relay.errors import ConfigError
from relay.store import DeliveryRow, ReplyRow, Store, open_existing
from relay.store.schema import DELIVERED, PENDING
from relay.worker import IDLE_RECHECK


def deliveries_json(rows: Sequence[DeliveryRow], now: datetime) -> dict[str, Any]:
    """The ``deliveries list --json`` document."""
    return {
        "now": now,
        "deliveries": [
            asdict(r) | ({"number": logs.number(r.number)} if r.number else {}) for r in rows
        ],
    }


def _when(r: DeliveryRow, now: datetime) -> str:
    if r.state == PENDING:
        return "next now" if r.next_attempt_at <= now else f"next {ago(r.next_attempt_at, now)}"
    if r.state == DELIVERED:
        return f"delivered {ago(r.delivered_at, now)}"
    return f"dead {ago(r.last_attempt_at, now)}"


def deliveries_text(rows: Sequence[DeliveryRow], now: datetime) -> str:
    """``deliveries list`` for a terminal."""
    if not rows:
        return "no deliveries"
    headers = ["ID", "WEBHOOK", "STATE", "ATTEMPTS", "WEBHOOK-ID", "NUMBER", "PROVIDER-ID"]
    headers += ["QUEUED", "NEXT/DONE", "STATUS", "REPLY", "LAST ERROR"]
    return table(
        headers,
        [
            [
                str(r.id),
                r.webhook,
                r.state,
                str(r.attempts),
                r.webhook_id,
                logs.number(r.number) if r.number else "-",
                cell(r.provider_id or f"{r.event} #{r.outbound_id}"),
                ago(r.queued_at, now),
                _when(r, now),
                cell(str(r.last_status or "")),
                cell(_replies(r.replies)),
                cell(r.last_error),
            ]
            for r in rows
        ],
    )


def _replies(replies: Sequence[ReplyRow]) -> str | None:
    """``#12 sent out-9912``, several separated by commas; None for none."""
    shown = [" ".join([f"#{r.id}", r.state, *r.provider_ids]) for r in replies]
    return ", ".join(shown) or None


def deliveries_report(
    config: Config, *, state: str | None, webhook: str | None, limit: int, as_json: bool
) -> str:
    """What ``deliveries list`` prints."""
    if limit < 1:
        msg = f"--limit: {limit} is not a positive number"
        raise ConfigError(msg)
    with open_existing(config.store.url, lease=config.store.lease) as store:
        if webhook is not None:
            _check_webhook(store, config, webhook)
        rows = store.list_deliveries(state=state, webhook=webhook, limit=limit)
        now = store.clock.now()
    return dumps(deliveries_json(rows, now)) if as_json else deliveries_text(rows, now)


def _check_webhook(store: Store, config: Config, name: str) -> None:
    """ConfigError unless ``name`` is configured or has deliveries (a typo would find none)."""
    if any(h.name == name for h in config.webhooks):
        return
    if not store.has_deliveries(name):
        msg = f"--webhook: no webhook named {name!r} in the config or the store"
        raise ConfigError(msg)


def replay_report(
    config: Config, ids: Sequence[int], *, dead: bool, webhook: str | None, since: float | None
) -> str:
    """What ``deliveries replay`` prints."""
    if dead == bool(ids):
        msg = "give delivery ids or --dead, not both" if ids else "give delivery ids, or --dead"
        raise ConfigError(msg)
    if not dead and (webhook is not None or since is not None):
        msg = "--webhook and --since go with --dead"
        raise ConfigError(msg)
    with open_existing(config.store.url, lease=config.store.lease) as store:
        if webhook is not None:
            _check_webhook(store, config, webhook)
        done = store.replay(ids, dead=dead, webhook=webhook, since=since)
    them = "it" if done.queued == 1 else "them"
    lines = [f"queued {plural(done.queued, 'delivery', 'deliveries')} again"]
    if done.redelivered:
        which = "it" if done.queued == 1 else f"{done.redelivered} of them"
        again = "it" if done.redelivered == 1 else "they"
        lines.append(
            f"{which} had been delivered: {again} will be sent again, with the same webhook-id"
        )
    unknown = sorted(done.webhooks - {h.name for h in config.webhooks})
    if unknown:
        lines.append(f"not in the config, so no relay will send {them}: {', '.join(unknown)}")
    if done.webhooks - set(unknown):
        lines.append(f"a running relay picks {them} up within {IDLE_RECHECK:g}s")
    return "\n".join(lines)
