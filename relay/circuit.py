"""A webhook's circuit breaker: after ``circuit_failures`` failed attempts in a row the
circuit opens, and the lane sends nothing but one probe per ``circuit_probe``; the first
probe the webhook accepts closes it, and the backlog drains at the lane's concurrency
(and ``rate_limit``).

A failure is an attempt that says the webhook is not there: no answer (a timeout, a
refused or reset connection), a 5xx, 408 or 429. Any other answer (2xx, and 4xx such as
400 or 410, which only refuse one message) proves it is up: the count starts again.
Deliveries that fall due while the circuit is open wait, claimed by this relay, in the
order they came; each keeps its ``give_up_after``, counted from when it was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from relay.clock import Clock
from relay.logs import fields

log = logging.getLogger("relay.delivery")

#: Answers that count as the webhook failing, beside no answer at all and 5xx.
FAILING_STATUSES = frozenset({408, 429})


def is_failure(status: int | None, ok: bool) -> bool:
    """Whether an attempt's answer counts against the circuit."""
    if ok:
        return False
    return status is None or status >= 500 or status in FAILING_STATUSES


class Circuit:
    """The circuit of one webhook in one relay."""

    def __init__(
        self,
        name: str,
        failures: int,
        probe: float,
        clock: Clock,
        on_change: Callable[[bool], None] = lambda _open: None,
    ) -> None:
        self.name = name
        #: Failed attempts in a row that open it.
        self.threshold = failures
        #: Seconds between probes while open.
        self.probe = probe
        self._clock = clock
        self._on_change = on_change
        self.failures = 0
        self.open = False
        #: Monotonic time from which the next probe may start.
        self._next_probe = 0.0
        self._probing = False
        self._changed = asyncio.Event()

    async def admit(self) -> bool:
        """Wait until an attempt may start; True when it is the open circuit's probe."""
        while self.open:
            wait = self._next_probe - self._clock.monotonic()
            if wait <= 0 and not self._probing:
                self._probing = True
                return True
            self._changed.clear()
            timeout = None if self._probing else wait
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return False

    def record(self, failed: bool) -> bool | None:
        """The result of an admitted attempt (``failed``: see :func:`is_failure`); the
        circuit's new state when this opened (True) or closed (False) it, else None."""
        self._probing = False
        self._changed.set()
        if not failed:
            self.failures = 0
            if not self.open:
                return None
            self.open = False
            log.warning("relay.circuit.closed", extra=fields(webhook=self.name))
            self._on_change(False)
            return False
        self.failures += 1
        if self.open:
            self._next_probe = self._clock.monotonic() + self.probe
            return None
        if not self.threshold or self.failures < self.threshold:
            return None
        self.open = True
        self._next_probe = self._clock.monotonic() + self.probe
        log.error(
            "relay.circuit.opened",
            extra=fields(webhook=self.name, failures=self.failures, probe=f"{self.probe:g}s"),
        )
        self._on_change(True)
        return True

    def abandon(self, probe: bool) -> None:
        """An admitted attempt ended without a result (cancelled): a probe may start again."""
        if probe:
            self._probing = False
            self._changed.set()
