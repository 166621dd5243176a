"""Parsing ``[optout]``: the STOP, START and HELP keywords and their confirmations."""

from __future__ import annotations

from relay.config.model import OptoutConfig
from relay.config.tables import Table, show

#: The keys of ``[optout]``.
OPTOUT_KEYS = ("enabled", "stop", "start", "help", "stop_reply", "start_reply", "help_reply")
#: The keyword lists, in the order a word is looked up.
KEYWORD_LISTS = ("stop", "start", "help")
#: The longest confirmation: ten SMS segments, as for any text the relay sends.
MAX_REPLY = 1600


def parse_optout(table: Table) -> OptoutConfig:
    """``[optout]``; the defaults when it is missing. Keywords are compared without case,
    so they are kept upper-cased; a word in two lists is an error naming the second."""
    defaults = OptoutConfig()
    lists: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for name in KEYWORD_LISTS:
        words = table.strings(name)
        if words is None:
            words = list(getattr(defaults, name))
        kept: list[str] = []
        for i, word in enumerate(words):
            key = f"{name}[{i}]"
            folded = " ".join(word.split()).upper()
            if not folded:
                table.fail(key, "is empty")
            if folded in owner:
                table.fail(key, f"{show(word)} is already in {table.sub(owner[folded])}")
            owner[folded] = key
            kept.append(folded)
        lists[name] = tuple(kept)
    replies = {}
    for name in ("stop_reply", "start_reply", "help_reply"):
        text = table.get(name, str, "a string", "")
        if len(text) > MAX_REPLY:
            table.fail(name, f"is {len(text)} characters, more than {MAX_REPLY} (ten SMS segments)")
        if "\x00" in text:
            table.fail(name, "holds a NUL character")
        replies[name] = text.strip()
    return OptoutConfig(
        enabled=table.get("enabled", bool, "a boolean", True),
        stop=lists["stop"],
        start=lists["start"],
        help=lists["help"],
        **replies,
    )
