"""Operator commands: status, deliveries list and replay, prune, send, messages show.

Store queries are synchronous functions over a :class:`~relay.store.Store`; each
command has a ``*_report`` function that opens what it needs, does the work and
returns the text to print. Numbers are masked as in the logs unless ``log.pii``.
Message and reply texts are never printed, except by ``messages show``, whose
point is to show one message to the operator who asked for it.

The ``--json`` documents are the dataclasses below as dicts, times as ISO 8601 UTC
strings (or null); their shapes are documented in each command's ``--help``, and
keys are only ever added.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import sqlalchemy as sa

from relay import logs
from relay.api import AatroxClient
from relay.clock import SystemClock
from relay.config import Config, WebhookConfig
from relay.errors import ConfigError, InvalidNumber, StoreError
from relay.inbound import InboundMessage
from relay.outbox import OutboundSms, check_text, counts, send_now
from relay.phone import normalise, valid_number
from relay.schema import (
    DEAD,
    DELIVERED,
    PENDING,
    UNKNOWN,
    deliveries,
    leases,
    messages,
    numbers,
    outbound,
)
from relay.store import LOOKUP_CHUNK, Store, create_engine, sqlite_file
from relay.webhook import USER_AGENT
from relay.worker import IDLE_RECHECK

#: Rows ``deliveries list`` shows unless ``--limit`` says otherwise.
DEFAULT_LIST_LIMIT = 50
#: What ``status`` says of outbound SMS whose send had an unknown outcome.
UNKNOWN_HINT = (
    "the request went out and no answer came: check with the provider before sending again"
    " (relay.outbox.unknown in the log; [outbound] retry_unknown = true retries them)"
)
NONE = "-"


@contextmanager
def open_store(config: Config) -> Iterator[Store]:
    """The configured store, closed afterwards; database errors become one-line StoreErrors.

    A SQLite store that does not exist is a ConfigError naming ``store.url``: an operator
    command never creates one (a wrong ``--config`` or working directory would otherwise
    show an empty store as the truth).
    """
    db = sqlite_file(config.store.url)
    if db is not None and not db.exists():
        msg = f'store.url: no store at {db} (run "aatrox-relay run" first, or check store.url)'
        raise ConfigError(msg)
    store = Store.open(config.store.url, SystemClock(), lease=config.store.lease)
    try:
        yield store
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"cannot read the store: {_db_error(exc)}") from None
    finally:
        store.close()


def _db_error(exc: sa.exc.SQLAlchemyError) -> str:
    """A database error's type and first line (no SQL, no parameters), at most 280 characters."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0]
    return f"{type(orig).__name__}: {first}"[:280]


# --- status ------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberStatus:
    """One configured number's poll state and lease."""

    number: str
    last_poll_at: datetime | None
    last_success_at: datetime | None
    consecutive_failures: int
    last_error: str | None
    #: When the gap episode under way began (a listing outran the relay); None: none.
    gap_since: datetime | None
    #: Listings that outran the relay, ever.
    gaps: int
    #: Listed messages reported as unresolved (details never had).
    unresolved: int
    lease_owner: str | None
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class WebhookStatus:
    """One webhook's deliveries."""

    name: str
    configured: bool
    pending: int
    delivered: int
    dead: int
    oldest_pending_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


@dataclass(frozen=True)
class Status:
    """What ``status`` shows."""

    now: datetime
    numbers: tuple[NumberStatus, ...]
    webhooks: tuple[WebhookStatus, ...]
    outbound: dict[str, int]


def status(store: Store, config: Config) -> Status:
    """Every configured number and webhook (and any other webhook with deliveries)."""
    now = store.clock.now()
    d, n = deliveries.c, numbers.c
    columns = (
        n.last_poll_at,
        n.last_success_at,
        n.consecutive_failures,
        n.last_error,
        n.gap_since,
        n.gaps,
        n.unresolved,
    )
    with store.engine.connect() as conn:
        polled = {row[0]: row[1:] for row in conn.execute(sa.select(n.number, *columns))}
        lease = sa.select(leases.c.name, leases.c.owner, leases.c.expires_at)
        held = {row[0]: row[1:] for row in conn.execute(lease.where(leases.c.expires_at > now))}
        queues: dict[str, dict[str, int]] = {}
        oldest: dict[str, datetime] = {}
        query = sa.select(d.webhook, d.state, sa.func.count(), sa.func.min(d.queued_at))
        for hook, state, count, first in conn.execute(query.group_by(d.webhook, d.state)):
            queues.setdefault(hook, {})[state] = int(count)
            if state == PENDING:
                oldest[hook] = first
        configured = [h.name for h in config.webhooks]
        hooks = configured + sorted(set(queues) - set(configured))
        failures = {
            hook: conn.execute(
                sa.select(d.last_error, d.last_attempt_at)
                .where(d.webhook == hook, d.last_error.is_not(None))
                .order_by(d.last_attempt_at.desc(), d.id.desc())
                .limit(1)
            ).first()
            for hook in hooks
        }
    never, free = (None, None, 0, None, None, 0, 0), (None, None)
    number_rows = [
        NumberStatus(c.number, *polled.get(c.number, never), *held.get(c.number, free))
        for c in config.numbers
    ]
    hook_rows = []
    for hook in hooks:
        q = queues.get(hook, {})
        hook_rows.append(
            WebhookStatus(
                hook,
                hook in configured,
                q.get(PENDING, 0),
                q.get(DELIVERED, 0),
                q.get(DEAD, 0),
                oldest.get(hook),
                *(failures[hook] or (None, None)),
            )
        )
    return Status(now, tuple(number_rows), tuple(hook_rows), counts(store))


def status_json(found: Status) -> dict[str, Any]:
    """The ``status --json`` document."""
    doc = asdict(found)
    for number in doc["numbers"]:
        number["number"] = logs.number(number["number"])
    return doc


def status_text(found: Status) -> str:
    """``status`` for a terminal: aligned columns, ages relative to now."""
    now = found.now
    numbers_table = table(
        ["NUMBER", "LAST POLL", "LAST SUCCESS", "FAILURES", "GAP", "LEASE", "LAST ERROR"],
        [
            [
                logs.number(n.number),
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
        ["WEBHOOK", "PENDING", "DEAD", "DELIVERED", "OLDEST PENDING", "LAST ERROR"],
        [
            [
                w.name if w.configured else f"{w.name} (not configured)",
                str(w.pending),
                str(w.dead),
                str(w.delivered),
                ago(w.oldest_pending_at, now, NONE),
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
    with open_store(config) as store:
        found = status(store, config)
    return dumps(status_json(found)) if as_json else status_text(found)


# --- deliveries ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyRow:
    """The SMS a delivery's 2xx asked to send back (never its text)."""

    id: int
    state: str
    provider_ids: tuple[str, ...]


@dataclass(frozen=True)
class DeliveryRow:
    """One delivery, with the message it carries (never its text)."""

    id: int
    webhook: str
    state: str
    attempts: int
    webhook_id: str
    number: str
    provider_id: str
    queued_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    reply: ReplyRow | None


def list_deliveries(
    store: Store,
    *,
    state: str | None = None,
    webhook: str | None = None,
    limit: int = DEFAULT_LIST_LIMIT,
) -> list[DeliveryRow]:
    """The latest ``limit`` deliveries (highest id first), filtered by state and webhook."""
    d = deliveries.c
    query = (
        sa.select(
            *(d[name] for name in ("id", "webhook", "state", "attempts", "webhook_id")),
            messages.c.number,
            messages.c.provider_id,
            *(d[name] for name in ("queued_at", "next_attempt_at", "last_attempt_at")),
            *(d[name] for name in ("delivered_at", "last_status", "last_error")),
            outbound.c.id.label("reply_id"),
            outbound.c.state.label("reply_state"),
            outbound.c.provider_ids,
        )
        .join(messages, messages.c.id == d.message_id)
        .outerjoin(outbound, outbound.c.delivery_id == d.id)
        .order_by(d.id.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(d.state == state)
    if webhook is not None:
        query = query.where(d.webhook == webhook)
    with store.engine.connect() as conn:
        rows = list(conn.execute(query))
    replies = {
        row.id: ReplyRow(row.reply_id, row.reply_state, tuple(json.loads(row.provider_ids or "[]")))
        for row in rows
        if row.reply_id is not None
    }
    return [DeliveryRow(*(*row[:13], replies.get(row.id))) for row in rows]


def deliveries_json(rows: Sequence[DeliveryRow], now: datetime) -> dict[str, Any]:
    """The ``deliveries list --json`` document."""
    return {"now": now, "deliveries": [asdict(r) | {"number": logs.number(r.number)} for r in rows]}


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
                logs.number(r.number),
                cell(r.provider_id),
                ago(r.queued_at, now),
                _when(r, now),
                cell(str(r.last_status or "")),
                cell(_reply(r.reply)),
                cell(r.last_error),
            ]
            for r in rows
        ],
    )


def _reply(reply: ReplyRow | None) -> str | None:
    return None if reply is None else " ".join([f"#{reply.id}", reply.state, *reply.provider_ids])


def deliveries_report(
    config: Config, *, state: str | None, webhook: str | None, limit: int, as_json: bool
) -> str:
    """What ``deliveries list`` prints."""
    if limit < 1:
        msg = f"--limit: {limit} is not a positive number"
        raise ConfigError(msg)
    with open_store(config) as store:
        if webhook is not None:
            _check_webhook(store, config, webhook)
        rows = list_deliveries(store, state=state, webhook=webhook, limit=limit)
        now = store.clock.now()
    return dumps(deliveries_json(rows, now)) if as_json else deliveries_text(rows, now)


def _check_webhook(store: Store, config: Config, name: str) -> None:
    """ConfigError unless ``name`` is configured or has deliveries (a typo would find none)."""
    if any(h.name == name for h in config.webhooks):
        return
    query = sa.select(deliveries.c.id).where(deliveries.c.webhook == name).limit(1)
    with store.engine.connect() as conn:
        if conn.execute(query).first() is None:
            msg = f"--webhook: no webhook named {name!r} in the config or the store"
            raise ConfigError(msg)


@dataclass(frozen=True)
class Replayed:
    """What :func:`replay` queued again."""

    queued: int
    #: Of them, how many had been delivered (a deliberate re-send).
    redelivered: int
    webhooks: frozenset[str]


def replay(
    store: Store,
    ids: Sequence[int] = (),
    *,
    dead: bool = False,
    webhook: str | None = None,
    since: float | None = None,
) -> Replayed:
    """Make deliveries pending again now: by ``ids``, or every dead one (of ``webhook``,
    whose last attempt was within ``since`` seconds).

    ``queued_at`` restarts the give-up window; attempts and ``webhook_id`` are kept.
    Claims are cleared, except on a pending delivery being attempted right now (its
    claim is live), which would otherwise be sent twice at once. Unknown ids raise
    :class:`ConfigError` naming them, and nothing changes.
    """
    now = store.clock.now()
    d = deliveries.c
    query = sa.select(d.id, d.state, d.webhook)
    if dead:
        query = query.where(d.state == DEAD)
        if webhook is not None:
            query = query.where(d.webhook == webhook)
        if since is not None:
            query = query.where(d.last_attempt_at >= now - timedelta(seconds=since))
    live = sa.and_(d.state == PENDING, d.claim_expires_at >= now)
    with store.engine.begin() as conn:
        if dead:
            found = list(conn.execute(query))
        else:
            found = []
            for start in range(0, len(ids), LOOKUP_CHUNK):
                chunk = ids[start : start + LOOKUP_CHUNK]
                found += conn.execute(query.where(d.id.in_(chunk)))
        missing = sorted(set(ids) - {row.id for row in found})
        if missing:
            msg = f"no delivery with id {', '.join(map(str, missing))}; nothing replayed"
            raise ConfigError(msg)
        chosen = [row.id for row in found]
        for start in range(0, len(chosen), LOOKUP_CHUNK):
            conn.execute(
                deliveries.update()
                .where(d.id.in_(chosen[start : start + LOOKUP_CHUNK]))
                .values(
                    state=PENDING,
                    queued_at=now,
                    next_attempt_at=now,
                    delivered_at=None,
                    claimed_by=sa.case((live, d.claimed_by), else_=None),
                    claim_expires_at=sa.case((live, d.claim_expires_at), else_=None),
                )
            )
    return Replayed(
        len(chosen),
        sum(row.state == DELIVERED for row in found),
        frozenset(row.webhook for row in found),
    )


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
    with open_store(config) as store:
        if webhook is not None:
            _check_webhook(store, config, webhook)
        done = replay(store, ids, dead=dead, webhook=webhook, since=since)
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


def prune_report(config: Config) -> str:
    """What ``prune`` prints."""
    with open_store(config) as store:
        pruned = store.apply_retention(config.store.retention)
    return (
        f"pruned {plural(pruned.messages, 'message', 'messages')} and "
        f"{pruned.outbound} outbound SMS (store.retention: {span(config.store.retention)})"
    )


# --- check -------------------------------------------------------------------------------

#: How long ``check`` waits for PostgreSQL to accept a connection, in seconds.
CHECK_CONNECT_TIMEOUT = 10
#: Answers to ``check``'s HEAD that mean deliveries will fail, and what to look at. Any
#: other answer proves the webhook reachable (405: it takes no HEAD, yet may take POST).
FAILING_HEAD_ANSWERS = {
    401: "it refuses the relay: check the webhook's headers",
    403: "it refuses the relay: check the webhook's headers",
    404: "nothing is there: check the webhook's url",
}


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
        engine = create_engine(url, connect_timeout=CHECK_CONNECT_TIMEOUT)
    except StoreError as exc:
        return False, str(exc)
    try:
        with engine.connect() as conn:
            found = migrations.revision(conn)
    except sa.exc.SQLAlchemyError as exc:
        return False, f"cannot open it: {_db_error(exc)}"
    finally:
        engine.dispose()
    if found is None:
        return True, "new: no relay tables yet, run creates them"
    if found == migrations.HEAD:
        return True, f"schema at revision {found}, current"
    known = {path.name.split("_")[0] for path in migrations.SCRIPT_LOCATION.glob("versions/*_*.py")}
    if found in known:
        return True, f"schema at revision {found}, run upgrades it to {migrations.HEAD}"
    return False, f"schema at revision {found}, which this relay does not know: a newer one made it"


def shown_store_url(config: Config) -> str:
    """``store.url`` fit to print: its password, if any, replaced by ``***``."""
    return sa.engine.make_url(config.store.url).render_as_string(hide_password=True)


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


# --- the API ---------------------------------------------------------------------------


def _phone(value: str, option: str, config: Config) -> str:
    try:
        return normalise(value, config.api.default_region)
    except InvalidNumber as exc:
        raise ConfigError(f"{option}: {exc}") from None


def _send_number(value: str, option: str, config: Config) -> str:
    """A number to send from or to, valid for its country; the operator's input is echoed."""
    try:
        return valid_number(value, config.api.default_region)
    except InvalidNumber as exc:
        msg = f"{option} {value.strip()!r}: {exc}"
        raise ConfigError(msg) from None


async def send_report(
    config: Config, sender: str, recipients: Sequence[str], text: str, *, disclaimer: bool
) -> str:
    """Send one SMS now, straight through the API; the provider's ids, one per line."""
    source = _send_number(sender, "--from", config)
    targets = tuple(dict.fromkeys(_send_number(r, "--to", config) for r in recipients))
    try:
        check_text(text)
    except ValueError as exc:
        raise ConfigError(f"--text: {exc}") from None
    if disclaimer and len(targets) > 1:
        msg = "--disclaimer: the provider's bulk endpoint has no disclaimer variant (one --to only)"
        raise ConfigError(msg)
    sms = OutboundSms(0, "send", source, targets, text, disclaimer, 0, SystemClock().now())
    async with AatroxClient(config.api) as api:
        sent = await send_now(api, sms)
    return "\n".join(sent.ids)


async def message_report(
    config: Config, message_id: str, *, number: str | None, as_json: bool
) -> str:
    """What ``messages show`` prints: one message from the details endpoint, text and all."""
    if not message_id.strip():
        msg = "ID: empty message id"
        raise ConfigError(msg)
    recipient = None if number is None else _phone(number, "--number", config)
    async with AatroxClient(config.api) as api:
        found = await api.details(message_id, number=recipient)
    return dumps(message_json(found)) if as_json else message_text(found, SystemClock().now())


def message_json(m: InboundMessage) -> dict[str, object]:
    """The ``messages show --json`` document."""
    return {
        "id": m.id,
        "from": m.sender,
        "to": m.recipient,
        "received_at": m.received_at,
        "text": m.text,
    }


def message_text(m: InboundMessage, now: datetime) -> str:
    """One message for a terminal, its text in full (control characters escaped)."""
    text = "\n".join(printable(line) for line in (m.text or "").split("\n"))
    fields = [("id", printable(m.id)), ("from", m.sender), ("to", m.recipient)]
    fields += [("received at", f"{iso(m.received_at)} ({ago(m.received_at, now)})")]
    fields += [("text", text.replace("\n", "\n" + " " * 13))]
    return "\n".join(f"{name:<11}  {value}" for name, value in fields)


# --- formatting ------------------------------------------------------------------------


def dumps(doc: object) -> str:
    """JSON for scripts: indented, UTF-8 kept, times in ISO 8601 UTC."""
    return json.dumps(doc, indent=2, ensure_ascii=False, default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(type(value).__name__)


def iso(when: datetime | None) -> str | None:
    """``2026-11-24T13:40:00.250000Z``, or None."""
    if when is None:
        return None
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def plural(count: int, one: str, many: str) -> str:
    """``1 delivery``, ``2 deliveries``: the count and the word that goes with it."""
    return f"{count} {one if count == 1 else many}"


def span(seconds: float) -> str:
    """``45s``, ``3m``, ``2h``, ``4d``: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def ago(when: datetime | None, now: datetime, empty: str = "never") -> str:
    """``3m ago`` (or ``in 3m``), or ``empty`` for no time at all."""
    if when is None:
        return empty
    seconds = (now - when).total_seconds()
    return f"{span(seconds)} ago" if seconds >= 0 else f"in {span(-seconds)}"


def printable(text: str) -> str:
    """``text`` with control characters escaped, so it cannot drive the terminal."""
    return "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in text)


def cell(text: str | None) -> str:
    """A value for one table cell: one line, printable, ``-`` when there is none."""
    return NONE if not text else printable(" ".join(text.split()))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, indented by two."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        for cells in [headers, *rows]
    )
