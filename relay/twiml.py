"""Reading a ``twilio`` webhook's TwiML answer: the ``<Message>`` texts it asks to send.

``<Response><Message>text</Message></Response>`` and
``<Response><Message><Body>text</Body></Message></Response>`` are replies, one SMS per
``<Message>`` (at most :data:`MAX_MESSAGES`; the rest are ignored); every other
verb (``<Redirect>``...), noun (``<Media>``) and attribute (``to=``, ``from=``,
``action=``...) is ignored, and named in :attr:`Twiml.ignored` for one log line. The
XML is parsed by ``defusedxml`` with DTDs forbidden: an entity-expansion bomb or an
external entity is refused before anything is expanded or fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException  # type: ignore[import-untyped,unused-ignore]
from defusedxml.ElementTree import fromstring  # type: ignore[import-untyped,unused-ignore]

#: The content types of an answer read as TwiML (parameters such as charset aside).
CONTENT_TYPES = frozenset(("text/xml", "application/xml"))
#: At most this many names are kept in :attr:`Twiml.ignored`, each cut to
#: :data:`MAX_NAME` characters: they go to a log line.
MAX_IGNORED = 10
MAX_NAME = 40
#: At most this many ``<Message>``s of one answer are sent; those past it are ignored.
MAX_MESSAGES = 10


@dataclass(frozen=True)
class Twiml:
    """What a TwiML answer asks for."""

    #: The text of each ``<Message>`` that has one, in order, stripped.
    messages: tuple[str, ...] = ()
    #: What was ignored: ``Redirect``, ``Media``, ``Message@to``, ``Message (empty)``...
    ignored: tuple[str, ...] = ()


def is_twiml(content_type: str) -> bool:
    """Whether an answer of ``content_type`` is read as TwiML."""
    return content_type.partition(";")[0].strip().lower() in CONTENT_TYPES


def read(body: bytes) -> Twiml:
    """The ``<Message>`` texts of the TwiML ``body`` (none for an empty body); ValueError
    when it is not well-formed XML, declares a DTD or entities, or is not a ``<Response>``.
    The error never quotes the body."""
    if not body.strip():
        return Twiml()
    try:
        root: Element = fromstring(body, forbid_dtd=True)
    except DefusedXmlException:
        msg = "the answer declares a DTD or XML entities: refused (TwiML needs neither)"
        raise ValueError(msg) from None
    except ParseError as exc:
        msg = f"the answer is not well-formed XML ({_position(exc)})"
        raise ValueError(msg) from None
    if root.tag != "Response":
        msg = f"the answer's root element is {_name(root.tag)}, not Response"
        raise ValueError(msg)
    messages: list[str] = []
    ignored: list[str] = []
    for verb in root:
        if verb.tag != "Message":
            ignored.append(_name(verb.tag))
            continue
        ignored.extend(f"Message@{_name(attribute)}" for attribute in verb.attrib)
        text = _text(verb, ignored)
        if text and len(messages) >= MAX_MESSAGES:
            ignored.append(f"Message (past {MAX_MESSAGES})")
        elif text:
            messages.append(text)
        else:
            ignored.append("Message (empty)")
    names = tuple(dict.fromkeys(ignored))[:MAX_IGNORED]
    return Twiml(tuple(messages), names)


def _text(message: Element, ignored: list[str]) -> str:
    """A ``<Message>``'s text: its ``<Body>`` nouns' when it has any, else its own."""
    bodies = [noun for noun in message if noun.tag == "Body"]
    ignored.extend(_name(noun.tag) for noun in message if noun.tag != "Body")
    if bodies:
        return "".join("".join(body.itertext()) for body in bodies).strip()
    return "".join([message.text or "", *(noun.tail or "" for noun in message)]).strip()


def _name(tag: str) -> str:
    """An element or attribute name for the log, cut short."""
    return tag[:MAX_NAME]


def _position(exc: ParseError) -> str:
    """Where the XML broke, without quoting it: ``line 1, column 22``."""
    line, column = getattr(exc, "position", (0, 0))
    return f"line {line}, column {column}"
