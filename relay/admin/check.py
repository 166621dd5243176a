"""``check``'s looks at the store and at each webhook (the API it tries itself)."""

from __future__ import annotations

import os

import httpx

from relay.config import Config, WebhookConfig
from relay.errors import StoreError
from relay.store import schema_revision, shown_url, sqlite_file
from relay.webhook import USER_AGENT

#: How long ``check`` waits for PostgreSQL to accept a connection, in seconds.
CHECK_CONNECT_TIMEOUT = 10
#: Answers to ``check``'s HEAD that mean deliveries will fail, and what to look at. Any
#: other answer proves the webhook reachable (405: it takes no HEAD, yet may take POST).
FAILING_HEAD_ANSWERS = {
    401: "it refuses the relay: check the webhook's headers",
    403: "it refuses the relay: check the webhook's headers",
    404: "nothing is there: check the webhook's url",
}


def shown_store_url(config: Config) -> str:
    """``store.url`` fit to print: its password, if any, replaced by ``***``."""
    return shown_url(config.store.url)


def check_store(config: Config) -> tuple[bool, str]:
    """``check``'s look at the store: whether it is usable, and a line saying how it is.

    Connects and reads the schema revision, never creating anything: a SQLite store not
    made yet is fine when ``run`` can create it. Never shows the URL's password.
    """
    from relay import migrations

    url = config.store.url
    db = sqlite_file(url)
    if db is not None and not db.exists():
        parent = next(p for p in db.parents if p.exists())
        if not os.access(parent, os.W_OK | os.X_OK):
            return False, f"no store yet, and run cannot create it: {parent} is not writable"
        return True, "new: no store yet, run creates it"
    try:
        found = schema_revision(url, connect_timeout=CHECK_CONNECT_TIMEOUT)
    except StoreError as exc:
        return False, str(exc)
    if found is None:
        return True, "new: no relay tables yet, run creates them"
    if found == migrations.HEAD:
        return True, f"schema at revision {found}, current"
    known = {path.name.split("_")[0] for path in migrations.SCRIPT_LOCATION.glob("versions/*_*.py")}
    if found in known:
        return True, f"schema at revision {found}, run upgrades it to {migrations.HEAD}"
    return False, f"schema at revision {found}, which this relay does not know: a newer one made it"


async def probe_webhook(client: httpx.AsyncClient, hook: WebhookConfig) -> tuple[bool, str]:
    """``check``'s HEAD to one webhook, with its headers and the relay's User-Agent: whether
    deliveries can get there, and a line saying what it answered. Nothing is delivered."""
    headers = {"User-Agent": USER_AGENT, **dict(hook.headers)}
    try:
        response = await client.head(hook.url, headers=headers, timeout=hook.timeout)
    except httpx.HTTPError as exc:
        return False, f"cannot reach it: {type(exc).__name__}: {exc}"[:300]
    status = response.status_code
    answered = f"HEAD answered {status} {response.reason_phrase}".rstrip()
    if status in FAILING_HEAD_ANSWERS:
        return False, f"{answered}: {FAILING_HEAD_ANSWERS[status]}"
    return True, f"reachable ({answered})"
