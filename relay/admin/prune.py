"""The ``prune`` command: delete what is settled and older than ``store.retention``."""

from __future__ import annotations

from relay.admin.render import plural, span
from relay.config import Config
from relay.store import open_existing


def prune_report(config: Config) -> str:
    """What ``prune`` prints."""
    with open_existing(config.store.url, lease=config.store.lease) as store:
        pruned = store.apply_retention(config.store.retention)
    parts = [plural(pruned.messages, "message", "messages"), f"{pruned.outbound} outbound SMS"]
    if pruned.events:
        parts.append(plural(pruned.events, "outbound event", "outbound events"))
    listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"pruned {listed} (store.retention: {span(config.store.retention)})"
