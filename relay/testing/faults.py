"""Failures the simulator can be told to answer with: a :class:`Fault`, queued in order."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

from relay.http import Response

#: Size of each piece of a streamed fault body.
STREAM_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """A failure applied to the next ``count`` API requests whose path starts with ``path``.

    After ``delay`` seconds: ``reset`` drops the connection without an answer; ``size``
    above 0 streams a body of that many bytes (a JSON array padded with spaces) with
    ``status``; otherwise ``status`` is answered with ``body``. A ``status`` of 0 answers
    normally after the delay (a slow but correct API).
    """

    status: int = 500
    body: bytes = b'{"error": "simulated"}'
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    count: int = 1
    path: str = "/api/v2/"
    size: int = 0
    reset: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            msg = f"count: {self.count} is not a positive number of requests"
            raise ValueError(msg)
        if self.status != 0 and not 100 <= self.status <= 999:
            msg = f"status: {self.status} is not an HTTP status"
            raise ValueError(msg)
        if self.delay < 0 or self.size < 0:
            msg = "delay and size cannot be negative"
            raise ValueError(msg)


class PendingFault:
    """A queued fault and how many more requests it applies to."""

    __slots__ = ("fault", "remaining")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.count


async def fault_response(fault: Fault) -> Response | None:
    """Wait out ``fault``'s delay, then its answer (None: answer normally)."""
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.reset:
        return Response(abort=True)
    if fault.status == 0:
        return None
    headers = list(fault.headers)
    if fault.size > 0:
        body: bytes | AsyncIterator[bytes] = _padded_array(fault.size)
        return Response(fault.status, body, headers, fault.content_type)
    return Response(fault.status, fault.body, headers, fault.content_type)


async def _padded_array(size: int) -> AsyncIterator[bytes]:
    """``[`` + spaces + ``]``: a valid JSON empty array exactly ``size`` bytes long."""
    if size < 2:
        yield b" " * size
        return
    remaining = size - 2
    yield b"["
    block = b" " * STREAM_CHUNK_BYTES
    while remaining > 0:
        piece = block if remaining >= len(block) else block[:remaining]
        remaining -= len(piece)
        yield piece
    yield b"]"


class RateLimit:
    """A provider's per-token rate limit: ``per_second`` requests a second on average, up to
    a second's worth at once; past it, :meth:`admit` says how long until the next one."""

    def __init__(self, per_second: float) -> None:
        if not per_second > 0:
            msg = f"per_second: {per_second} is not a positive rate"
            raise ValueError(msg)
        self.per_second = per_second
        #: Per token: tokens left and when they were counted (monotonic seconds).
        self._buckets: dict[bytes, tuple[float, float]] = {}

    def admit(self, token: bytes, now: float) -> float:
        """0.0 when a request with ``token`` may go through now (it is counted); else the
        seconds until one may (the request is not counted)."""
        rate = self.per_second
        tokens, stamp = self._buckets.get(token, (rate, now))
        tokens = min(rate, tokens + (now - stamp) * rate)
        if tokens < 1.0:
            self._buckets[token] = (tokens, now)
            return (1.0 - tokens) / rate
        self._buckets[token] = (tokens - 1.0, now)
        return 0.0


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value for a wait of ``seconds``: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
