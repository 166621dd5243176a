"""The ``optouts`` commands: list, add and remove opt-outs (STOP) in the store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from relay import logs
from relay.admin.render import ago, dumps, table
from relay.admin.send import number_option
from relay.config import Config
from relay.store import OptoutRow, open_existing


def optouts_json(rows: Sequence[OptoutRow], now: datetime) -> dict[str, object]:
    """The ``optouts list --json`` document; numbers masked unless ``log.pii``."""
    shown = [
        asdict(r) | {"number": logs.number(r.number), "sender": logs.number(r.sender)} for r in rows
    ]
    return {"now": now, "optouts": shown}


def optouts_text(rows: Sequence[OptoutRow], now: datetime) -> str:
    """``optouts list`` for a terminal; senders masked unless ``log.pii``."""
    if not rows:
        return "no opt-outs"
    return table(
        ["NUMBER", "SENDER", "SINCE", "HOW"],
        [
            [logs.number(r.number), logs.number(r.sender), ago(r.created_at, now), r.source]
            for r in rows
        ],
    )


def optouts_report(config: Config, *, number: str | None, as_json: bool) -> str:
    """What ``optouts list`` prints."""
    wanted = None if number is None else number_option(number, "--number", config)
    with open_existing(config.store.url, lease=config.store.lease) as store:
        rows = store.list_optouts(wanted)
        now = store.clock.now()
    return dumps(optouts_json(rows, now)) if as_json else optouts_text(rows, now)


def change_optout(config: Config, *, number: str, sender: str, add: bool) -> str:
    """``optouts add`` (``add``) or ``optouts remove``: what changed, in one line."""
    source = number_option(number, "--number", config)
    target = number_option(sender, "--sender", config)
    with open_existing(config.store.url, lease=config.store.lease) as store:
        if add:
            changed = store.add_optout(source, target, "cli")
        else:
            changed = store.remove_optout(source, target)
    shown = f"{logs.number(target)} from {logs.number(source)}"
    if add:
        return f"opted out {shown}" if changed else f"{shown}: already opted out"
    return f"opted in {shown} again" if changed else f"{shown}: was not opted out"
