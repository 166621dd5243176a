"""The commands that go straight to the Aatrox API: ``send`` and ``messages show``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from relay.admin.render import ago, dumps, iso, printable
from relay.api import AatroxClient
from relay.clock import SystemClock
from relay.config import Config
from relay.errors import ApiError, ApiOutcomeUnknown, ConfigError, InvalidNumber
from relay.inbound import InboundMessage
from relay.outbound_events import OutboundEvents
from relay.outbox import OPTED_OUT, check_text, send_now
from relay.phone import normalise, valid_number
from relay.store import (
    FAILED,
    REFUSED,
    SENT,
    UNKNOWN,
    OutboundSms,
    SendOutcome,
    Store,
    open_existing,
)
from relay.store.engine import sqlite_file
from relay.store.schema import OutboundState

#: The outbound row's kind for an SMS ``aatrox-relay send`` sent (``data.cause`` "cli").
KIND = "cli"


def _phone(value: str, option: str, config: Config) -> str:
    try:
        return normalise(value, config.api.default_region)
    except InvalidNumber as exc:
        raise ConfigError(f"{option}: {exc}") from None


def number_option(value: str, option: str, config: Config) -> str:
    """A number to send from or to, valid for its country; the operator's input is echoed."""
    try:
        return valid_number(value, config.api.default_region)
    except InvalidNumber as exc:
        msg = f"{option} {value.strip()!r}: {exc}"
        raise ConfigError(msg) from None


@dataclass(frozen=True)
class SendReport:
    """What ``send`` did: the provider's ids, and the recipients it refused."""

    ids: tuple[str, ...]
    #: Recipients who opted out (STOP) of SMS from ``sender``: not sent to.
    refused: tuple[str, ...]
    sender: str
    #: Whether an SMS went out (to the recipients not refused).
    sent: bool = True

    def refusal(self) -> str:
        """The one-line error naming the refused recipients."""
        return f"not sent to {', '.join(self.refused)}: opted out (STOP) of SMS from {self.sender}"


async def send_report(
    config: Config, sender: str, recipients: Sequence[str], text: str, *, disclaimer: bool
) -> SendReport:
    """Send one SMS now, straight through the API, to the recipients who have not opted
    out of SMS from ``sender`` (STOP); none is sent when all of them have.

    The SMS is recorded in the store first (``unknown`` until the answer is written
    back, so a send killed mid-way is never repeated by a relay), and its outcome with
    the ``sms.sent`` or ``sms.failed`` events it causes. A store that was never created
    (no relay has run) records nothing; one that cannot be reached fails the send
    before anything is sent.
    """
    source = number_option(sender, "--from", config)
    targets = tuple(dict.fromkeys(number_option(r, "--to", config) for r in recipients))
    try:
        check_text(text)
    except ValueError as exc:
        raise ConfigError(f"--text: {exc}") from None
    if disclaimer and len(targets) > 1:
        msg = "--disclaimer: the provider's bulk endpoint has no disclaimer variant (one --to only)"
        raise ConfigError(msg)
    clock = SystemClock()
    with _recording(config) as store:
        refused: tuple[str, ...] = ()
        if store is None:
            sms = OutboundSms(0, KIND, source, targets, text, disclaimer, 0, clock.now())
        else:
            out = store.opted_out(source, targets)
            refused = tuple(t for t in targets if t in out)
            kept = tuple(t for t in targets if t not in out) or targets
            sms = store.begin_direct_send(KIND, source, kept, text, disclaimer)
            if len(refused) == len(targets):
                _record(store, config, sms, clock.now(), SendOutcome(REFUSED, None, OPTED_OUT))
                return SendReport((), refused, source, sent=False)
        started = clock.now()
        try:
            async with AatroxClient(config.api) as api:
                sent = await send_now(api, sms)
        except ApiError as exc:
            if store is not None:
                state: OutboundState = UNKNOWN if isinstance(exc, ApiOutcomeUnknown) else FAILED
                _record(store, config, sms, started, SendOutcome(state, exc.status, str(exc)))
            raise
        if store is not None:
            outcome = SendOutcome(
                SENT,
                200,
                None,
                sent_at=clock.now(),
                provider_ids=sent.ids,
                provider_status=sent.status,
            )
            _record(store, config, sms, started, outcome)
    return SendReport(sent.ids, refused, source)


@contextmanager
def _recording(config: Config) -> Iterator[Store | None]:
    """The store ``send`` records in; None when it is a SQLite file never created."""
    db = sqlite_file(config.store.url)
    if db is not None and not db.exists():
        yield None
        return
    with open_existing(config.store.url, lease=config.store.lease) as store:
        yield store


def _record(
    store: Store, config: Config, sms: OutboundSms, started: datetime, outcome: SendOutcome
) -> None:
    """Write back what the send came to, with the events it causes."""
    told = OutboundEvents(config.webhooks, config.numbers).queued(sms, outcome, store.clock.now())
    store.record_send(sms.id, started, outcome, told)


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
