"""Tolerant parsing of every listing and message shape the API may send."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from relay.errors import ApiInvalidResponse
from relay.inbound import (
    ENVELOPE_KEYS,
    ID_KEYS,
    RECIPIENT_KEYS,
    SENDER_KEYS,
    TEXT_KEYS,
    TIME_KEYS,
    InboundMessage,
    Listing,
    parse_detail,
    parse_listing,
    parse_message,
    parse_timestamp,
)

NUMBER = "+61400000002"
SENDER = "+61412345678"
UTC = timezone.utc
AEST = timezone(timedelta(hours=10))
WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
SECRET_TEXT = "the secret text 0412 999 888"


def item(**overrides: object) -> dict[str, object]:
    """A well-formed message object, with fields replaced or (None) removed."""
    base: dict[str, object] = {
        "id": "42",
        "from": SENDER,
        "to": NUMBER,
        "text": "hello",
        "timestamp": "2026-03-04T05:06:07Z",
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def renamed(old: str, new: str, value: object = None) -> dict[str, object]:
    """The well-formed item with field ``old`` moved to ``new`` (and maybe a new value)."""
    message = item()
    moved = message.pop(old)
    message[new] = moved if value is None else value
    return message


def listing(payload: object, tz: timezone = UTC) -> Listing:
    """parse_listing for the polled NUMBER in region AU."""
    return parse_listing(payload, number=NUMBER, region="AU", tz=tz)


def one(payload: object, tz: timezone = UTC) -> InboundMessage:
    """The single message a listing holds."""
    result = listing(payload, tz)
    assert result.skipped == ()
    assert len(result.messages) == 1
    return result.messages[0]


EXPECTED = InboundMessage("42", SENDER, NUMBER, "hello", WHEN)


@pytest.mark.parametrize(
    "payload",
    [
        [item()],
        *[{key: [item()]} for key in ENVELOPE_KEYS],
        *[{"data": {key: [item()]}, "meta": {"count": 1}} for key in ENVELOPE_KEYS],
    ],
    ids=["array", *ENVELOPE_KEYS, *[f"data.{key}" for key in ENVELOPE_KEYS]],
)
def test_every_envelope(payload: object) -> None:
    """A bare array and every envelope key (also nested under data) are read."""
    assert one(payload) == EXPECTED


@pytest.mark.parametrize("key", ID_KEYS)
@pytest.mark.parametrize("value", ["42", 42, " 42 ", 42.0], ids=["str", "int", "padded", "float"])
def test_every_id_key_and_type(key: str, value: object) -> None:
    """Ids under every key, as strings or integers, come out as the string "42"."""
    assert one([renamed("id", key, value)]).id == "42"


@pytest.mark.parametrize("key", SENDER_KEYS)
def test_every_sender_key(key: str) -> None:
    """The sender is read under from, sender and source."""
    assert one([renamed("from", key)]).sender == SENDER


@pytest.mark.parametrize("key", RECIPIENT_KEYS)
def test_every_recipient_key(key: str) -> None:
    """The recipient is read under to, recipient and destination."""
    assert one([renamed("to", key, "+61400000777")]).recipient == "+61400000777"


def test_missing_recipient_is_the_polled_number() -> None:
    """An item without a recipient was received on the polled number."""
    assert one([item(to=None)]).recipient == NUMBER


@pytest.mark.parametrize("key", TEXT_KEYS)
def test_every_text_key(key: str) -> None:
    """The text is read under text, message, body and content."""
    assert one([renamed("text", key)]).text == "hello"


def test_no_text_is_none() -> None:
    """A listing item with only id and timestamp has text None."""
    message = one([{"id": 7, "from": SENDER, "timestamp": 1772600767}])
    assert message.text is None
    assert message.id == "7"


def test_message_object_is_not_text() -> None:
    """An object under "message" is not the text; a later text key still is."""
    assert one([item(text=None, message={"status": "x"})]).text is None
    assert one([item(text=None, message={"status": "x"}, body="hi")]).text == "hi"


@pytest.mark.parametrize("key", TIME_KEYS)
def test_every_time_key(key: str) -> None:
    """The time is read under every known key."""
    assert one([renamed("timestamp", key)]).received_at == WHEN


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-04T05:06:07Z", WHEN),
        ("2026-03-04T05:06:07z", WHEN),
        ("2026-03-04T05:06:07+00:00", WHEN),
        ("2026-03-04T15:06:07+10:00", WHEN),
        ("2026-03-04T15:06:07+1000", WHEN),
        ("2026-03-04T00:06:07-05:00", WHEN),
        ("2026-03-04 05:06:07Z", WHEN),
        ("2026-03-04 05:06:07 UTC", WHEN),
        ("2026-03-04T05:06:07.5Z", WHEN.replace(microsecond=500_000)),
        ("2026-03-04T05:06:07.123Z", WHEN.replace(microsecond=123_000)),
        ("2026-03-04T05:06:07.123456789Z", WHEN.replace(microsecond=123_456)),
        ("2026-03-04T05:06:07,25Z", WHEN.replace(microsecond=250_000)),
        ("Wed, 04 Mar 2026 05:06:07 GMT", WHEN),
        (1772600767, WHEN),
        (1772600767.5, WHEN.replace(microsecond=500_000)),
        (1772600767123, WHEN.replace(microsecond=123_000)),
        (1772600767123.5, WHEN.replace(microsecond=123_500)),
        ("1772600767", WHEN),
        ("1772600767.123", WHEN.replace(microsecond=123_000)),
        ("1772600767123", WHEN.replace(microsecond=123_000)),
        (" 1772600767 ", WHEN),
    ],
)
def test_time_formats(value: object, expected: datetime) -> None:
    """ISO 8601 (Z, offsets, space, fractions), HTTP dates and Unix s/ms all parse."""
    parsed = parse_timestamp(value, AEST)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    ["2026-03-04T15:06:07", "2026-03-04 15:06:07", "2026-03-04 15:06:07.000"],
)
def test_naive_time_uses_the_given_zone(value: str) -> None:
    """A time without zone is read in the configured zone."""
    assert parse_timestamp(value, AEST) == WHEN
    assert parse_timestamp(value, UTC) == WHEN + timedelta(hours=10)
    assert parse_timestamp(value, ZoneInfo("Australia/Brisbane")) == WHEN


def test_naive_time_in_a_listing_uses_tz() -> None:
    """parse_listing passes its tz on to naive item times."""
    assert one([item(timestamp="2026-03-04 15:06:07")], tz=AEST).received_at == WHEN


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        "",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-03-04T25:00:00Z",
        "2026-03-04T05:06:07+99:00",
        "9999-12-31T23:59:59-05:00",
        "1e999999999",
        float("nan"),
        float("inf"),
        1e300,
        [1772600767],
        {"seconds": 1},
    ],
)
def test_bad_times_raise(value: object) -> None:
    """Unreadable times raise a one-line ApiInvalidResponse."""
    with pytest.raises(ApiInvalidResponse) as caught:
        parse_timestamp(value, UTC)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "spelling",
    ["+61412345678", "61412345678", "0412345678", "0412 345 678", "+61 412 345 678", 61412345678],
    ids=["e164", "international", "national", "national-spaced", "e164-spaced", "integer"],
)
def test_number_formats(spelling: object) -> None:
    """Senders and recipients in E.164, international or national form become E.164."""
    national_recipient = "0400000002"
    message = one([item(**{"from": spelling, "to": national_recipient})])
    assert message.sender == SENDER
    assert message.recipient == NUMBER


def test_region_reads_national_numbers() -> None:
    """A national number is read in the given region."""
    message = parse_message(
        item(**{"from": "021 234 5678", "to": "+6421000000"}), number=None, region="NZ", tz=UTC
    )
    assert message.sender == "+64212345678"


def test_bad_items_are_skipped_and_the_rest_kept() -> None:
    """Only items without a usable id or time are skipped, each with a reason; the rest
    go through, a missing or odd sender as None or as given, a bad recipient as the
    polled number."""
    payload = [
        item(id="1"),
        item(id=None, text=SECRET_TEXT),
        item(id="3", **{"from": None}, text=SECRET_TEXT),
        item(id="4", **{"from": "not a number"}, text=SECRET_TEXT),
        item(id="5", timestamp=None, text=SECRET_TEXT),
        item(id="6", timestamp="soon", text=SECRET_TEXT),
        SECRET_TEXT,
        item(id="8", to="0412"),
        item(id=["9"], text=SECRET_TEXT),
        item(id="10", **{"from": {"n": 1}}),
        item(id="11"),
        item(id="1", text="a duplicate"),
        item(id="bad\nid"),
    ]
    result = listing(payload)
    assert [m.id for m in result.messages] == ["1", "3", "4", "8", "10", "11"]
    by_id = {m.id: m for m in result.messages}
    assert by_id["3"].sender is None and not by_id["3"].complete
    assert by_id["4"].sender == "not a number"
    assert by_id["8"].recipient == NUMBER
    assert by_id["10"].sender is None
    assert len(result.skipped) == len(payload) - 6
    expected = [
        "item 1: no id",
        "item 4: message 5: no timestamp",
        "item 5: message 6: timestamp: not ISO 8601",
        "item 6: message is a string",
        "item 8: id: an array is not an id",
        "item 11: message 1: duplicate id",
        "item 12: id: not a usable id",
    ]
    for reason, start in zip(result.skipped, expected, strict=True):
        assert reason.startswith(start), reason
    for reason in result.skipped:
        assert "\n" not in reason
        assert "secret" not in reason
        assert "999 888" not in reason
        assert "412345678" not in reason


@pytest.mark.parametrize(
    ("item_fields", "sender", "text"),
    [
        ({"from": None, "to": None, "text": None}, None, None),  # "IDs with timestamps"
        ({"from": None}, None, "hello"),
        ({"text": None}, "+61412345678", None),
    ],
)
def test_half_complete_items_are_kept_for_their_details(
    item_fields: dict[str, object], sender: str | None, text: str | None
) -> None:
    """An item with an id and a time but no sender, no text or neither is kept, incomplete."""
    (message,) = listing([item(**item_fields)]).messages
    assert (message.sender, message.text) == (sender, text)
    assert message.recipient == NUMBER
    assert message.complete == (sender is not None and text is not None)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("Telstra", "Telstra"),
        (" CommBank ", "CommBank"),
        ("1234", "1234"),
        (1234, "1234"),
        ("04123abc78", "04123abc78"),  # letters are never read as keypad digits
        ("61412345678", "+61412345678"),
        ("0412 345 678", "+61412345678"),
    ],
)
def test_alphanumeric_senders_and_short_codes_are_kept_as_given(given: object, kept: str) -> None:
    """A sender that is not a phone number is delivered exactly as the provider gave it."""
    (message,) = listing([item(**{"from": given})]).messages
    assert message.sender == kept


def test_missing_recipient_without_number_is_an_error() -> None:
    """parse_message with no polled number needs a recipient field."""
    with pytest.raises(ApiInvalidResponse, match="no recipient"):
        parse_message(item(to=None), number=None, region="AU", tz=UTC)


@pytest.mark.parametrize(
    "payload",
    [None, "[]", 42, True, {}, {"error": "nope"}, {"messages": "x"}, {"data": {"other": []}}],
    ids=["null", "string", "number", "bool", "empty", "error", "messages-str", "data-other"],
)
def test_payload_of_unknown_shape_is_invalid(payload: object) -> None:
    """A payload that is no array and no known envelope raises ApiInvalidResponse."""
    with pytest.raises(ApiInvalidResponse) as caught:
        listing(payload)
    assert "\n" not in str(caught.value)


def test_empty_and_null_envelopes_are_empty_listings() -> None:
    """An empty array, or an envelope holding null, is a listing of nothing."""
    assert listing([]) == Listing((), ())
    assert listing({"messages": None}) == Listing((), ())
    assert listing({"data": {"items": []}}) == Listing((), ())


@pytest.mark.parametrize(
    "payload",
    [
        item(),
        {"data": item()},
        {"message": item()},
        {"sms": item()},
        {"data": {"message": item()}},
        {"status": "ok", "data": item()},
    ],
    ids=["bare", "data", "message", "sms", "data.message", "with-status"],
)
def test_detail_shapes(payload: object) -> None:
    """A detail answer is read bare or under data, message or sms."""
    assert parse_detail(payload, number=NUMBER, region="AU", tz=UTC) == EXPECTED


def test_detail_message_text_is_not_unwrapped() -> None:
    """A bare message whose text is under "message" stays a bare message."""
    payload = renamed("text", "message")
    assert parse_detail(payload, number=NUMBER, region="AU", tz=UTC).text == "hello"


def test_detail_without_id_takes_the_requested_one() -> None:
    """A detail answer that omits the id gets the id that was asked for."""
    payload = {"data": item(id=None)}
    message = parse_detail(payload, number=NUMBER, region="AU", tz=UTC, message_id="42")
    assert message == EXPECTED


def test_detail_that_is_not_an_object_is_invalid() -> None:
    """A detail answer that is an array raises ApiInvalidResponse."""
    with pytest.raises(ApiInvalidResponse, match="not an object"):
        parse_detail([item()], number=NUMBER, region="AU", tz=UTC)
