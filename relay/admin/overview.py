"""The ``status`` command: each number's polls and lease, each webhook's queue, outbound SMS.

(Named ``overview``, not ``status``, so that :func:`relay.admin.status` stays a function.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from relay import logs
from relay.admin.render import NONE, ago, cell, dumps, duration, table
from relay.config import Config
from relay.store import NumberStatus, Status, Store, open_existing
from relay.store.schema import UNKNOWN

#: What ``status`` says of outbound SMS whose send had an unknown outcome.
UNKNOWN_HINT = (
    "the request went out and no answer came: check with the provider before sending again"
    " (relay.outbox.unknown in the log; [outbound] retry_unknown = true retries them)"
)


def status(store: Store, config: Config) -> Status:
    """Every configured number and webhook (and any other webhook with deliveries)."""
    return store.read_status([c.number for c in config.numbers], [h.name for h in config.webhooks])


def intervals(config: Config) -> dict[str, str]:
    """Each number's poll interval as ``status`` shows it: ``10s``, or ``1s-30s`` under
    adaptive polling. The current one lives in the polling relay only (it is not in the
    store): ``aatrox_relay_poll_interval_seconds`` exports it."""
    low = config.poll.min_interval
    return {
        n.number: duration(n.interval)
        if low is None
        else f"{duration(min(low, n.interval))}-{duration(n.interval)}"
        for n in config.numbers
    }


def status_json(found: Status, shown: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``status --json`` document; with ``shown`` (:func:`intervals`), each number's."""
    doc = asdict(found)
    for number in doc["numbers"]:
        if shown is not None:
            number["interval"] = shown.get(number["number"])
        number["number"] = logs.number(number["number"])
    return doc


def status_text(found: Status, shown: Mapping[str, str] | None = None) -> str:
    """``status`` for a terminal: aligned columns, ages relative to now; with ``shown``
    (:func:`intervals`), an INTERVAL column."""
    now = found.now
    columns = ["NUMBER", "LAST POLL", "LAST SUCCESS", "FAILURES", "GAP", "LEASE", "LAST ERROR"]
    numbers_table = table(
        columns[:1] + ["INTERVAL"] * (shown is not None) + columns[1:],
        [
            [
                logs.number(n.number),
                *([] if shown is None else [shown.get(n.number, NONE)]),
                ago(n.last_poll_at, now),
                ago(n.last_success_at, now),
                str(n.consecutive_failures),
                _gap(n, now),
                cell(n.lease_owner),
                cell(n.last_error),
            ]
            for n in found.numbers
        ],
    )
    hooks_table = table(
        ["WEBHOOK", "PENDING", "DEAD", "DELIVERED", "OLDEST PENDING", "CIRCUIT", "LAST ERROR"],
        [
            [
                w.name if w.configured else f"{w.name} (not configured)",
                str(w.pending),
                str(w.dead),
                str(w.delivered),
                ago(w.oldest_pending_at, now, NONE),
                f"open {ago(w.circuit_open_since, now)}" if w.circuit_open_since else "closed",
                cell(w.last_error and f"{ago(w.last_error_at, now)}: {w.last_error}"),
            ]
            for w in found.webhooks
        ],
    )
    outbox = ", ".join(f"{n} {state}" for state, n in found.outbound.items())
    if found.outbound.get(UNKNOWN):
        outbox += f"\n  {UNKNOWN}: {UNKNOWN_HINT}"
    return f"numbers\n{numbers_table}\nwebhooks\n{hooks_table}\noutbound sms: {outbox}"


def _gap(n: NumberStatus, now: datetime) -> str:
    """What ``status`` says of a number's gaps and unresolved messages."""
    parts = []
    if n.gap_since is not None:
        parts.append(f"began {ago(n.gap_since, now)}")
    if n.gaps:
        parts.append(f"{n.gaps} ever")
    if n.unresolved:
        parts.append(f"{n.unresolved} unresolved")
    return ", ".join(parts) or NONE


def status_report(config: Config, *, as_json: bool) -> str:
    """What ``status`` prints."""
    with open_existing(config.store.url, lease=config.store.lease) as store:
        found = status(store, config)
    shown = intervals(config)
    return dumps(status_json(found, shown)) if as_json else status_text(found, shown)
