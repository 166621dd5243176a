"""TwiML answers: each ``<Message>`` of a ``twilio`` webhook's answer becomes exactly one
SMS to the sender, with the guarantees of ``{"reply": ...}``; what is not a reply, or cannot be read
safely, sends nothing and the message still counts as delivered."""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import pytest
from twilio.twiml.messaging_response import Message as TwilioMessage
from twilio.twiml.messaging_response import MessagingResponse

from relay.daemon import Relay
from relay.retry import Backoff
from relay.testing.faults import Fault
from relay.testing.receiver import Rule, WebhookReceiver
from relay.testing.simulator import DISCLAIMER, Simulator
from relay.twiml import MAX_MESSAGES, Twiml, read
from tests.support import (
    NUMBERS,
    SECRET,
    SENDER,
    RelayProcess,
    relay_config,
    replies_survive_sigkill,
    run_for_replies,
    write_config,
)
from tests.test_formats import AUTH_TOKEN, TWILIO_PATH, formatted, twilio_receiver

pytestmark = pytest.mark.anyio

MESSAGE = "<Response><Message>Thanks, see you at 3</Message></Response>"
BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Response>\n  <Message>\n    <Body>Thanks, see you at 3</Body>\n  </Message>\n</Response>"
)
LAUGHS = "".join(
    f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' if i else '<!ENTITY lol0 "lol">' for i in range(10)
)
BILLION_LAUGHS = (
    f'<?xml version="1.0"?><!DOCTYPE lolz [{LAUGHS}]><Response><Message>&lol9;</Message></Response>'
)


def twiml(body: str, times: int | None = None, content_type: str = "text/xml") -> Rule:
    """A 200 answer carrying the TwiML ``body``."""
    return Rule(200, body.encode(), (("Content-Type", content_type),), times=times)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(MESSAGE, "text/xml"), (BODY, "application/xml; charset=utf-8"), (BODY, "TEXT/XML")],
)
async def test_a_twiml_message_becomes_one_sms(
    sim: Simulator, sqlite_url: str, body: str, content_type: str
) -> None:
    """<Message>text</Message> and <Message><Body>text</Body></Message>, as text/xml or
    application/xml, send one SMS from the number to the sender, once."""
    async with twilio_receiver() as receiver:
        receiver.respond(twiml(body, content_type=content_type))
        sim.inject(SENDER, NUMBERS[0], "Can I book for 3pm?")
        config = relay_config(sim.url, "http://unused", sqlite_url)
        async with Relay(formatted(config, receiver.url + TWILIO_PATH, "twilio")) as relay:
            await run_for_replies(relay, sim, 1)
    assert all(d.verified for d in receiver.deliveries)
    assert [(s.endpoint, s.sender, list(s.recipients), s.text) for s in sim.sent] == [
        ("send", NUMBERS[0], [SENDER], "Thanks, see you at 3")
    ]


async def test_each_message_is_one_sms_and_the_rest_is_ignored(
    sim: Simulator, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two <Message>s make two SMS, in order, to the sender (never to a to= attribute);
    <Redirect>, <Media> and attributes are named in one log line that never holds the
    text; a number with disclaimer = true replies through its endpoint."""
    caplog.set_level(logging.INFO, logger="relay")
    body = (
        '<Response><Message to="+61499999999" action="/x">First line</Message>'
        "<Redirect>https://app.example.com/next</Redirect>"
        "<Message><Body>Second line</Body><Media>https://img.example.com/a.png</Media>"
        "</Message></Response>"
    )
    async with twilio_receiver() as receiver:
        receiver.respond(twiml(body))
        sim.inject(SENDER, NUMBERS[0], "hello")
        config = relay_config(sim.url, "http://unused", sqlite_url, numbers=NUMBERS[:1])
        number = dataclasses.replace(config.numbers[0], disclaimer=True)
        config = dataclasses.replace(config, numbers=(number,))
        async with Relay(formatted(config, receiver.url + TWILIO_PATH, "twilio")) as relay:
            await run_for_replies(relay, sim, 2)
    assert [(s.endpoint, list(s.recipients)) for s in sim.sent] == 2 * [
        ("send_disclaimer", [SENDER])
    ]
    # In order: the second is sent once the first is settled.
    assert [s.text.removesuffix(DISCLAIMER) for s in sim.sent] == ["First line", "Second line"]
    ignored = [r for r in caplog.records if r.getMessage() == "relay.reply.twiml_ignored"]
    assert len(ignored) == 1
    fields = ignored[0].__dict__["relay_fields"]
    assert fields["ignored"] == "Message@to,Message@action,Redirect,Media"
    assert fields["webhook"] == "hook"
    for record in caplog.records:
        shown = f"{record.getMessage()} {record.__dict__.get('relay_fields')}"
        assert "First line" not in shown
        assert "Second line" not in shown


async def test_a_twiml_reply_after_failed_attempts_is_sent_once(
    sim: Simulator, sqlite_url: str
) -> None:
    """A twilio webhook that fails twice, then answers TwiML on every later attempt,
    causes one SMS."""
    async with twilio_receiver() as receiver:
        receiver.respond(Rule(status=500, times=1))
        receiver.respond(
            Rule(status=503, body=b"<Response><Message>no</Message></Response>", times=1)
        )
        receiver.respond(twiml(MESSAGE))
        sim.inject(SENDER, NUMBERS[0], "hello")
        config = relay_config(sim.url, "http://unused", sqlite_url, numbers=NUMBERS[:1])
        async with Relay(formatted(config, receiver.url + TWILIO_PATH, "twilio")) as relay:
            await run_for_replies(relay, sim, 1)
    assert [d.status for d in receiver.deliveries] == [500, 503, 200]
    assert all(d.verified for d in receiver.deliveries)
    assert [s.text for s in sim.sent] == ["Thanks, see you at 3"]


async def test_a_twiml_reply_survives_sigkill(sim: Simulator, tmp_path: Path) -> None:
    """Killed after the twilio webhook replied with two <Message>s, while the first reply
    hangs at the API: after restart, exactly one SMS per <Message> of each message (the
    token read from a file by the config's dir)."""
    (tmp_path / "twilio-token").write_text(f"{AUTH_TOKEN}\n")
    async with twilio_receiver() as receiver:
        receiver.respond(
            twiml("<Response><Message>auto-reply</Message><Message>more</Message></Response>")
        )
        path = write_config(
            tmp_path / "relay.toml",
            sim.url,
            receiver.url + TWILIO_PATH,
            f"sqlite:///{tmp_path / 'relay.db'}",
        )
        twilio = 'format = "twilio"\ntwilio_auth_token_file = "twilio-token"'
        path.write_text(path.read_text().replace(f'secret = "{SECRET}"', twilio))
        await replies_survive_sigkill(RelayProcess(path), sim, receiver, per_message=2)
    assert all(d.verified for d in receiver.deliveries)
    assert len(receiver.unique_ids()) == 3
    assert sorted((s.sender, tuple(s.recipients), s.text) for s in sim.sent) == sorted(
        (NUMBERS[i % 2], (SENDER,), text) for i in range(3) for text in ("auto-reply", "more")
    )


@pytest.mark.parametrize("seed", [41, 42, 43])
async def test_every_message_of_every_answer_is_sent_once_in_order(
    sim: Simulator, sqlite_url: str, seed: int
) -> None:
    """Adversarial, seeded (replay with the seed): a twilio webhook fails at random and
    answers each message with TwiML of 1 to 3 <Message>s; sends meet random 500s and 503s
    (429s slow the whole relay: tests/test_budget.py). In the end every <Message> of
    every answer was sent exactly once, after the earlier ones of its answer, and nothing
    else was sent."""
    rng = random.Random(seed)
    count = 6
    for _ in range(rng.randint(3, 8)):
        fault = Fault(rng.choice([500, 503]), count=rng.randint(1, 2), path="/api/v2/sms/send")
        sim.add_fault(fault)
    answers = [[f"answer {j} part {i}" for i in range(rng.randint(1, 3))] for j in range(count)]
    rules = [twiml("<Response>" + "".join(f"<Message>{t}</Message>" for t in a) + "</Response>",
                   times=1) for a in answers]  # fmt: skip
    for _ in range(rng.randint(2, 6)):  # failures in between: each is a retry of someone
        rules.insert(rng.randrange(len(rules) + 1), Rule(rng.choice([500, 503, 429]), times=1))
    wanted = sum(len(a) for a in answers)
    async with twilio_receiver() as receiver:
        for rule in rules:
            receiver.respond(rule)
        for i in range(count):
            sim.inject(SENDER, NUMBERS[0], f"m{i}")
        config = relay_config(sim.url, "http://unused", sqlite_url, numbers=NUMBERS[:1])
        async with Relay(formatted(config, receiver.url + TWILIO_PATH, "twilio")) as relay:
            relay.outbox.backoff = Backoff(0.05, 0.2, 600.0)  # retries in a test's time
            await run_for_replies(relay, sim, wanted)
    texts = [s.text for s in sim.sent]
    assert sorted(texts) == sorted(t for a in answers for t in a)
    for answer in answers:
        assert [texts.index(t) for t in answer] == sorted(texts.index(t) for t in answer)


async def test_what_is_no_safe_reply_sends_nothing(
    sim: Simulator, sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed XML, a billion-laughs bomb, external entities (a file, a URL), another
    root, TwiML as text/plain and empty answers send no SMS, fetch nothing, and every
    message still counts as delivered; the refusals are logged without the body."""
    caplog.set_level(logging.INFO, logger="relay")
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("file-entity-secret")
    async with WebhookReceiver(b"") as fetched:
        answers = [
            twiml("<Response><Message>unclosed</Response>"),
            twiml(BILLION_LAUGHS),
            twiml(
                f'<!DOCTYPE r [<!ENTITY xxe SYSTEM "{secret_file.as_uri()}">]>'
                "<Response><Message>&xxe;</Message></Response>"
            ),
            twiml(
                f'<!DOCTYPE r [<!ENTITY xxe SYSTEM "{fetched.url}/xxe">]>'
                "<Response><Message>&xxe;</Message></Response>"
            ),
            twiml("<Reply><Message>wrong root</Message></Reply>"),
            twiml(MESSAGE, content_type="text/plain"),
            twiml(""),
            twiml("<Response/>"),
            twiml('{"reply": "json is not TwiML"}', content_type="application/json"),
        ]
        async with twilio_receiver() as receiver:
            for answer in answers:
                receiver.respond(dataclasses.replace(answer, times=1))
            for i in range(len(answers)):
                sim.inject(SENDER, NUMBERS[0], f"m{i}")
            config = relay_config(sim.url, "http://unused", sqlite_url, numbers=NUMBERS[:1])
            async with Relay(formatted(config, receiver.url + TWILIO_PATH, "twilio")) as relay:
                summary = await relay.poll_once()
        assert fetched.deliveries == []
    assert summary.counts["delivered"] == len(answers)
    assert sim.requests["send"] == 0
    reasons = [
        str(r.__dict__["relay_fields"]["reason"])
        for r in caplog.records
        if r.getMessage() == "relay.reply.ignored"
    ]
    refused = "the answer declares a DTD or XML entities: refused (TwiML needs neither)"
    assert sorted(reasons) == sorted(
        [
            "the answer is not well-formed XML (line 1, column 29)",
            refused,
            refused,
            refused,
            "the answer's root element is Reply, not Response",
        ]
    )
    assert not any("file-entity-secret" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (MESSAGE, Twiml(("Thanks, see you at 3",))),
        (BODY, Twiml(("Thanks, see you at 3",))),
        ("<Response>\n</Response>", Twiml()),
        ("  ", Twiml()),
        ("<Response><Message>a &amp; b &lt;3</Message></Response>", Twiml(("a & b <3",))),
        (
            "<Response><Message>x<Media>u</Media> y</Message></Response>",
            Twiml(("x y",), ("Media",)),
        ),
        ("<Response><Message>  </Message></Response>", Twiml((), ("Message (empty)",))),
        ("<Response><Say>hi</Say><Message>a</Message></Response>", Twiml(("a",), ("Say",))),
        ("<Response><Message><![CDATA[<b>]]></Message></Response>", Twiml(("<b>",))),
        (
            "<Response>" + "".join(f"<Message>{i}</Message>" for i in range(12)) + "</Response>",
            Twiml(tuple(map(str, range(MAX_MESSAGES))), (f"Message (past {MAX_MESSAGES})",)),
        ),
    ],
)
def test_twiml_is_read_as_twilio_reads_it(body: str, expected: Twiml) -> None:
    """Each <Message>'s text (its <Body>'s when it has one), trimmed and unescaped, the
    first MAX_MESSAGES of them; what is not a reply is named, not read."""
    assert read(body.encode()) == expected


@pytest.mark.parametrize(
    "body",
    [
        "<Response><Message>",
        BILLION_LAUGHS,
        '<!DOCTYPE r SYSTEM "http://127.0.0.1:9/dtd"><Response/>',
        '<Response xmlns="urn:x"><Message>a</Message></Response>',
        "not xml",
    ],
)
def test_unreadable_twiml_is_a_value_error(body: str) -> None:
    """Malformed XML, entities, a DTD, or a root that is not a plain <Response> refuse."""
    with pytest.raises(ValueError, match=r"^the answer"):
        read(body.encode())


def test_the_twilio_librarys_own_twiml_is_read() -> None:
    """TwiML built by the Twilio helper library (as an existing app builds it) reads as
    its <Message>s, its <Media> and <Redirect> named as ignored."""
    response = MessagingResponse()
    response.message("Thanks & <3")
    second = TwilioMessage()
    second.body("Second")
    second.media("https://img.example.com/a.png")
    response.append(second)
    response.redirect("https://app.example.com/next")
    assert read(str(response).encode()) == Twiml(("Thanks & <3", "Second"), ("Media", "Redirect"))
