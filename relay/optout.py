"""Opt-out compliance: STOP, START and HELP keywords.

An inbound message whose whole text, trimmed, in any case and without trailing
punctuation (``Stop.``, `` stop!! ``), is one of ``[optout] stop`` opts its sender out
of SMS from that number; one of ``start`` opts them in again; ``help`` changes nothing.
The store records the keyword and the opt-out in the transaction that records the
message (:meth:`relay.store.Store.record`), applying a batch's keywords in provider
order, so a STOP and a later START leave the sender opted in.

While a sender is opted out no SMS goes from the number to them (replies, ``POST
/v1/send``, ``aatrox-relay send``), except the one ``stop_reply`` confirming the STOP.
Confirmations are queued with the message, once each, and only for a message received
within :data:`CONFIRM_WITHIN` (a STOP found in a first poll's backlog from last month
is honoured, not answered), and only to a sender that is a phone number.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from datetime import timedelta

from relay.clock import Clock
from relay.config import Config, OptoutConfig
from relay.inbound import InboundMessage
from relay.phone import repliable
from relay.store import KeywordAction

STOP = "stop"
START = "start"
HELP = "help"
#: A keyword message older than this gets no confirmation (its opt-out still counts).
CONFIRM_WITHIN = timedelta(hours=1)
#: The outbound kind of a STOP's confirmation: the one SMS an opted-out sender is sent.
CONFIRMATION_KIND = "optout"
#: The outbound kind of a START's or HELP's confirmation.
KEYWORD_REPLY_KIND = "keyword"


def _trimmed(text: str) -> str:
    """``text`` without surrounding space and trailing punctuation, words single-spaced,
    upper-cased."""
    text = text.strip()
    while text and unicodedata.category(text[-1]).startswith("P"):
        text = text[:-1].rstrip()
    return " ".join(text.split()).upper()


def keyword(text: str | None, config: OptoutConfig) -> str | None:
    """Which keyword ``text`` is ("stop", "start", "help"), or None."""
    if not config.enabled or not text:
        return None
    word = _trimmed(text)
    for name, words in ((STOP, config.stop), (START, config.start), (HELP, config.help)):
        if word in words:
            return name
    return None


class Keywords:
    """What an inbound message's keyword asks of the store (see :class:`KeywordAction`);
    the callable :meth:`relay.store.Store.record` takes."""

    def __init__(self, config: OptoutConfig, disclaimer: Mapping[str, bool], clock: Clock) -> None:
        self.config = config
        self._disclaimer = dict(disclaimer)
        self._clock = clock
        self._replies = {
            STOP: config.stop_reply,
            START: config.start_reply,
            HELP: config.help_reply,
        }

    @classmethod
    def of(cls, config: Config, clock: Clock) -> Keywords:
        """The keywords of ``config``: its ``[optout]``, its numbers' disclaimers."""
        return cls(config.optout, {n.number: n.disclaimer for n in config.numbers}, clock)

    def __call__(self, number: str, message: InboundMessage) -> KeywordAction | None:
        """The action for ``message`` on ``number``; None when it is no keyword."""
        found = keyword(message.text, self.config)
        if found is None:
            return None
        confirm = self._replies[found] or None
        recent = self._clock.now() - message.received_at <= CONFIRM_WITHIN
        if confirm is not None and not (recent and message.sender and repliable(message.sender)):
            confirm = None
        return KeywordAction(
            keyword=found,
            opt_out=found == STOP,
            opt_in=found == START,
            confirm=confirm,
            confirm_kind=CONFIRMATION_KIND if found == STOP else KEYWORD_REPLY_KIND,
            disclaimer=self._disclaimer.get(number, False),
        )
