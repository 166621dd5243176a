"""Phone numbers, normalised to E.164 so that every spelling of a number is one key."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

from relay.errors import InvalidNumber


@lru_cache(maxsize=65536)
def normalise(number: str, region: str = "AU") -> str:
    """Return ``number`` in E.164 (``+61412345678``).

    Accepts E.164, international digits without the plus (``61412345678``) and
    national form (``0412345678``, read with ``region``). Raises
    :class:`InvalidNumber` for anything that cannot be a phone number.
    """
    text = number.strip()
    if not text:
        msg = "empty phone number"
        raise InvalidNumber(msg)
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        msg = f"{text!r} is not a phone number ({exc._msg})"
        raise InvalidNumber(msg) from None
    if not phonenumbers.is_possible_number(parsed):
        msg = f"{text!r} is not a possible phone number for region {region}"
        raise InvalidNumber(msg)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask(number: str) -> str:
    """``+61412345678`` -> ``********678``: enough to tell numbers apart in a log."""
    return "*" * max(len(number) - 3, 0) + number[-3:]


def is_region(region: str) -> bool:
    """Whether ``region`` is a region code phonenumbers knows (``AU``, ``NZ``...)."""
    return region in phonenumbers.SUPPORTED_REGIONS
