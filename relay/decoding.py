"""Content-Encoding undone a bounded step at a time, for every answer the relay reads.

httpx decodes each raw chunk of a body whole, so a few kilobytes of ``gzip, gzip`` can
become gigabytes in one step before any size check sees them. Here the raw bytes are
read with :meth:`httpx.Response.aiter_raw` and inflated at most :data:`STEP_BYTES` at a
time (``zlib`` with ``max_length``), layer by layer: a reader that stops iterating once
its cap is passed holds at most the cap plus one step, whatever the body expands to.

Only gzip and deflate are decoded (the codings :data:`ACCEPT_ENCODING` asks for); any
other coding is refused as :class:`UndecodableBody`, never passed on as if plain.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, Callable, Iterator

import httpx

#: The ``Accept-Encoding`` the relay's clients send: the codings decoded here.
ACCEPT_ENCODING = "gzip, deflate"
#: Most decoded bytes one step of decoding produces (and most input one layer holds).
STEP_BYTES = 64 * 1024
#: Longest content-encoding value quoted in an error message.
QUOTE_LIMIT = 40

IDENTITY = "identity"
_GZIP_WBITS = zlib.MAX_WBITS | 16
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS
#: A zlib stream's header: once past it, "deflate" is known not to be raw deflate.
ZLIB_HEADER_BYTES = 2
#: The window bits each supported coding starts with ("x-gzip" is gzip: RFC 9110 8.4.1.3).
CODINGS = {"gzip": _GZIP_WBITS, "x-gzip": _GZIP_WBITS, "deflate": _ZLIB_WBITS}


class UndecodableBody(Exception):
    """The answer's content-encoding is not supported or does not decode."""


def quoted(content_encoding: str) -> str:
    """A peer's content-encoding value made fit for a one-line message."""
    return " ".join(content_encoding.split())[:QUOTE_LIMIT]


def codings(content_encoding: str) -> tuple[str, ...]:
    """The codings applied to a body, in the order they were applied, ``identity`` left
    out; :class:`UndecodableBody` when one is not supported here."""
    names = tuple(name for part in content_encoding.split(",") if (name := part.strip().lower()))
    found = tuple(name for name in names if name != IDENTITY)
    for name in found:
        if name not in CODINGS:
            msg = f"content-encoding ({quoted(content_encoding)}) is not supported"
            raise UndecodableBody(msg)
    return found


def is_encoded(response: httpx.Response) -> bool:
    """Whether ``response`` declares a coding other than identity (supported or not)."""
    value = response.headers.get("content-encoding", "")
    return bool(value) and any(
        part.strip().lower() not in ("", IDENTITY) for part in value.split(",")
    )


class _Inflater:
    """One coding undone: pulls compressed input from ``source``, gives decoded output."""

    def __init__(self, wbits: int, source: Callable[[], bytes], label: str) -> None:
        self._zlib = zlib.decompressobj(wbits)
        self._source = source
        self._label = label
        self._tail = b""
        #: "deflate" input until its zlib header has passed, replayed if it is raw.
        self._start: bytes | None = b"" if wbits == _ZLIB_WBITS else None

    def read(self) -> bytes:
        """Up to :data:`STEP_BYTES` decoded bytes; empty when more input is needed (or
        the stream ended: what follows its end is ignored, as httpx does)."""
        while not self._zlib.eof:
            out = self._inflate(self._tail)
            self._tail = self._zlib.unconsumed_tail
            if out:
                return out
            if self._tail:
                continue
            more = self._source()
            if not more:
                return b""
            self._tail = more
        return b""

    def _inflate(self, data: bytes) -> bytes:
        if self._start is not None:
            self._start += data
        try:
            out = self._zlib.decompress(data, STEP_BYTES)
        except zlib.error:
            if self._start is None:
                msg = f"content-encoding ({self._label}) does not decode"
                raise UndecodableBody(msg) from None
        else:
            if self._start is not None and len(self._start) >= ZLIB_HEADER_BYTES:
                self._start = None
            return out
        # "deflate" is zlib-wrapped by the RFC, raw deflate by many servers: replay raw.
        replay, self._start = self._start or b"", None
        self._zlib = zlib.decompressobj(_RAW_DEFLATE_WBITS)
        return self._inflate(replay)


class BodyDecoder:
    """Undoes a body's Content-Encoding, raw chunk by raw chunk, a bounded step at a time."""

    def __init__(self, content_encoding: str) -> None:
        self._raw = b""
        self._top: Callable[[], bytes] = self._take_raw
        label = quoted(content_encoding)
        for name in reversed(codings(content_encoding)):  # the last applied, undone first
            self._top = _Inflater(CODINGS[name], self._top, label).read

    def decode(self, raw: bytes) -> Iterator[bytes]:
        """The decoded bytes that ``raw`` (the next raw chunk) completes, at most
        :data:`STEP_BYTES` per item, lazily: stop iterating and nothing more is inflated.

        Raises :class:`UndecodableBody` when the body does not decode."""
        self._raw += raw
        while piece := self._top():
            yield piece
        self._raw = b""  # anything left follows the end of the encoded stream: ignored

    def _take_raw(self) -> bytes:
        piece, self._raw = self._raw[:STEP_BYTES], self._raw[STEP_BYTES:]
        return piece


async def aiter_decoded(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The body of a streamed ``response``, decoded, at most :data:`STEP_BYTES` per item.

    A raw chunk that decodes to nothing yields ``b""``, so a reader can check its clock.
    Raises :class:`UndecodableBody` (before reading anything when the coding is not
    supported) and whatever httpx raises while reading."""
    decoder = BodyDecoder(response.headers.get("content-encoding", ""))
    async for raw in response.aiter_raw():
        produced = False
        for piece in decoder.decode(raw):
            produced = True
            yield piece
        if not produced:
            yield b""  # a chunk that decodes to nothing still lets the reader check its clock
