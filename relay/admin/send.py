"""The commands that go straight to the Aatrox API: ``send`` and ``messages show``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from relay.admin.render import ago, dumps, iso, printable
from relay.api import AatroxClient
from relay.clock import SystemClock
from relay.config import Config
from relay.errors import ConfigError, InvalidNumber
from relay.inbound import InboundMessage
from relay.outbox import check_text, send_now
from relay.phone import normalise, valid_number
from relay.store import OutboundSms


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
