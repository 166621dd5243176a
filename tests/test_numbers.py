"""Numbers we send to or configure: valid for their country, never guessed from letters."""

from __future__ import annotations

import re

import pytest

from relay.errors import InvalidNumber
from relay.phone import valid_number

#: Wrong numbers an operator or a client typed, and the reason each is refused. Before
#: the fix the first went to +61412322278 (letters as keypad digits) and the third to
#: +61412345678222.
WRONG_NUMBERS = {
    "04123abc78": "no letters",
    "0412345678999": "too long for a phone number in AU (3 digits too many)",
    "0412-345-678abc": "no letters",
    "+61 412 345 678 ext 9": "no letters",
    "1234": "too short for a phone number in AU",
}

#: Spellings of +61412345678 that keep working.
SPELLINGS = (
    "0412 345 678",
    "+61412345678",
    "61412345678",
    "(04) 1234 5678",
    "0412-345-678",
    "0412.345.678",
    "+61 (0) 412 345 678",
)
NUMBER = "+61412345678"

#: Three digits in a row: a reason that has them may be repeating the number.
DIGIT_RUN = re.compile(r"\d{3}")


@pytest.mark.parametrize(("wrong", "reason"), WRONG_NUMBERS.items())
def test_wrong_numbers_are_refused(wrong: str, reason: str) -> None:
    """Letters, a digit too many, an extension or a short code: refused, with a reason."""
    with pytest.raises(InvalidNumber) as caught:
        valid_number(wrong, "AU")

    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("wrong", "reason"),
    [
        ("0412345678#9", "only digits, spaces and + - . ( )"),
        ("0412;345;678", "only digits, spaces and + - . ( )"),
        ("0412\u00a0345\u00a0678", "only digits, spaces and + - . ( )"),
        ("\uff10\uff14\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18", "only digits"),
        ("\u0417412345678", "no letters"),
        ("+61 4123 45678 9", "(1 digit too many)"),
        ("0412 345 67", "not a valid phone number in AU"),
        ("9876 5432", "not a valid phone number in AU"),
        ("+61 999 999 999", "not a valid phone number in AU"),
        ("+61 9999 9999 9999 9", "too long for a phone number in AU"),
        ("+999 1234 5678", "the country code after + is unknown"),
        ("1" * 300, "too long for a phone number"),
        ("()", "not a phone number"),
        ("  ", "empty phone number"),
    ],
)
def test_other_wrong_numbers_are_refused(wrong: str, reason: str) -> None:
    """Other characters, a range not in use and an unknown country each have a reason."""
    with pytest.raises(InvalidNumber) as caught:
        valid_number(wrong, "AU")

    assert reason in str(caught.value)


@pytest.mark.parametrize("wrong", [*WRONG_NUMBERS, "0412 345 67", "+999 1234 5678"])
def test_reasons_do_not_repeat_the_number(wrong: str) -> None:
    """A reason is one line with no run of the number's digits, so it may go to a log."""
    with pytest.raises(InvalidNumber) as caught:
        valid_number(wrong, "AU")

    message = str(caught.value)
    assert "\n" not in message and DIGIT_RUN.search(message) is None


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_spellings_of_a_valid_number(spelling: str) -> None:
    """E.164, international digits and national forms with separators all give E.164."""
    assert valid_number(spelling, "AU") == NUMBER


def test_national_form_is_read_in_the_region() -> None:
    """A national number is read with the region given; one with + with its own country."""
    assert valid_number("021 234 5678", "NZ") == "+64212345678"
    assert valid_number("021 234 5678", "AU") == "+61212345678"
    assert valid_number("+64 21 234 5678", "AU") == "+64212345678"
