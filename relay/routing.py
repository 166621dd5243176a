"""Which webhooks an inbound message is queued for: its number's webhooks that take
``sms.received`` (their ``events``), less those whose ``[webhooks.match]`` it fails.
Decided when the message is recorded, in the same transaction that records it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from relay.config import SMS_RECEIVED, MatchConfig, WebhookConfig
from relay.inbound import InboundMessage

#: Which webhooks (by name) a message goes to.
Router = Callable[[InboundMessage], Sequence[str]]


def matches(match: MatchConfig, message: InboundMessage) -> bool:
    """Whether ``message`` passes every condition ``match`` sets: a sender that begins
    with one of its prefixes (a sender that is not a phone number never does), and a
    text in which its regular expression is found."""
    if match.senders and not (message.sender or "").startswith(match.senders):
        return False
    return match.text is None or match.text.search(message.text or "") is not None


def router(names: Sequence[str], webhooks: Mapping[str, WebhookConfig]) -> Router:
    """The webhooks among ``names`` that each message goes to."""
    every = tuple(name for name in names if SMS_RECEIVED in webhooks[name].events)
    filters = [(name, webhooks[name].match) for name in every]
    if all(match is None for _name, match in filters):
        return lambda _m: every

    def route(message: InboundMessage) -> Sequence[str]:
        return tuple(n for n, match in filters if match is None or matches(match, message))

    return route
