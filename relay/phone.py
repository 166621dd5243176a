"""Phone numbers, normalised to E.164 so that every spelling of a number is one key."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

from relay.errors import InvalidNumber

#: What a number to send to or configure may hold: ASCII digits and these separators.
NUMBER_CHARACTERS = frozenset("0123456789 +-.()")

#: The fewest digits phonenumbers parses after a country code.
MIN_NATIONAL_DIGITS = 2

_E164 = phonenumbers.PhoneNumberFormat.E164

#: Why phonenumbers could not parse a number, as a reason for an operator.
_PARSE_REASONS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "the country code after + is unknown",
    phonenumbers.NumberParseException.TOO_LONG: "too long for a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short for a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short for a phone number",
}


@lru_cache(maxsize=65536)
def normalise(number: str, region: str = "AU") -> str:
    """Return ``number`` in E.164 (``+61412345678``).

    Accepts E.164, international digits without the plus (``61412345678``) and
    national form (``0412345678``, read with ``region``). Raises
    :class:`InvalidNumber` for anything that cannot be a phone number. Lenient, for
    what the provider hands us; numbers to send to or configure use :func:`valid_number`.
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


def valid_number(text: str, region: str) -> str:
    """``text`` in E.164 if it is a number we may send to or configure; else InvalidNumber.

    Stricter than :func:`normalise`, which reads what the provider hands us: a letter
    is refused instead of being read as a keypad digit, and so is any character but
    digits, spaces and ``+ - . ( )`` (so no extension); and the number must be valid
    for its country (``phonenumbers.is_valid_number``: a range in use, no digit too
    many), not only possible. The one-line reason never repeats the number.
    """
    value = text.strip()
    if not value:
        msg = "empty phone number"
        raise InvalidNumber(msg)
    if any(char.isalpha() for char in value):
        msg = "a phone number has no letters (they are not read as keypad digits)"
        raise InvalidNumber(msg)
    if not set(value) <= NUMBER_CHARACTERS:
        msg = "a phone number has only digits, spaces and + - . ( )"
        raise InvalidNumber(msg)
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        msg = _PARSE_REASONS.get(exc.error_type, "not a phone number")
        raise InvalidNumber(msg) from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber(_invalid_reason(parsed))
    return phonenumbers.format_number(parsed, _E164)


def _invalid_reason(parsed: phonenumbers.PhoneNumber) -> str:
    """Why a parsed number is not valid, in a few words and without its digits."""
    country = phonenumbers.region_code_for_country_code(parsed.country_code or 0)  # set by parse
    extra = _digits_too_many(parsed)
    if extra:
        digits = "digit" if extra == 1 else "digits"
        return f"too long for a phone number in {country} ({extra} {digits} too many)"
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason == phonenumbers.ValidationResult.TOO_SHORT:
        return f"too short for a phone number in {country}"
    if reason == phonenumbers.ValidationResult.TOO_LONG:
        return f"too long for a phone number in {country}"
    return f"not a valid phone number in {country}"


def _digits_too_many(parsed: phonenumbers.PhoneNumber) -> int:
    """How many trailing digits to drop to leave a valid number (0 when none would do)."""
    e164 = phonenumbers.format_number(parsed, _E164)
    national = phonenumbers.national_significant_number(parsed)
    for cut in range(1, len(national) - MIN_NATIONAL_DIGITS + 1):
        if phonenumbers.is_valid_number(phonenumbers.parse(e164[:-cut])):
            return cut
    return 0


def prefix(text: str, region: str) -> str:
    """A number prefix (``+6141``, or national ``041`` read with ``region``) in E.164 form.

    Separators are dropped. Raises :class:`InvalidNumber` for anything else: a prefix
    cannot be checked against the numbering plan, so it must say where it starts.
    """
    digits = "".join(c for c in text if c not in " -.()")
    if digits.startswith("+") and digits[1:].isdigit() and len(digits) <= 16:
        return digits
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    trunk = (metadata.national_prefix if metadata else None) or ""
    if trunk and digits.startswith(trunk) and digits.isdigit() and len(digits) <= 16:
        code = phonenumbers.country_code_for_region(region)
        return f"+{code}{digits[len(trunk) :]}"
    msg = f"is not a number prefix in E.164 (+61...) or national form ({trunk or '0'}...)"
    raise InvalidNumber(msg)


def mask(number: str) -> str:
    """``+61412345678`` -> ``********678``: enough to tell numbers apart in a log."""
    return "*" * max(len(number) - 3, 0) + number[-3:]


def is_region(region: str) -> bool:
    """Whether ``region`` is a region code phonenumbers knows (``AU``, ``NZ``...)."""
    return region in phonenumbers.SUPPORTED_REGIONS


def repliable(sender: str) -> bool:
    """Whether an SMS can go back to ``sender``, an inbound message's sender: a phone
    number valid for its country, not a sender id (``Telstra``), a short code or a
    number the provider wrote with a digit too many. Inbound senders are stored in
    E.164 (or as given, when they are no phone number), so the region only matters for
    what is not E.164: those are refused anyway."""
    try:
        valid_number(sender, "AU")
    except InvalidNumber:
        return False
    return True
