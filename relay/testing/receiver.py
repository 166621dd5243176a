"""A real webhook receiver for the demo and tests: a fake consumer, not a mock.

It verifies every delivery's Standard Webhooks signature as it arrives, records it, and
answers by the queued :class:`Rule` (204 when none is queued): so tests can make a
consumer fail, stall or reset the connection, count what arrived, and wait (on events,
not by polling) until given numbers of messages were delivered. Given a :data:`Check`,
it verifies requests of another format (``twilio``, ``slack``) that way instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.errors import SignatureError
from relay.http import Request, Response
from relay.signing import verify
from relay.testing.served import Served

DEFAULT_WAIT_TIMEOUT = 10.0

#: A consumer's own check of a request that is no Standard Webhook (a ``twilio`` or
#: ``slack`` delivery): the delivery's id (what :meth:`WebhookReceiver.unique_ids` and
#: :meth:`WebhookReceiver.wait_for` count) and None, or why the request does not verify.
Check = Callable[[Request], tuple[str, str | None]]


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got, verified or not."""

    webhook_id: str  # "" when the header is missing
    timestamp: int  # 0 when the header is missing or malformed
    headers: dict[str, str]
    body: bytes
    #: The JSON body; {} when it is not a JSON object.
    payload: dict[str, object]
    #: The signature verifies and the body is a JSON object.
    verified: bool
    #: Why it is not verified.
    error: str | None
    #: :func:`time.monotonic` when it arrived.
    received_at: float
    path: str = "/"
    #: The status its rule answers (0: the connection is reset).
    status: int = 204


@dataclass(frozen=True)
class Rule:
    """How to answer the next deliveries."""

    status: int = 204
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    #: Use the rule this many times, then drop it; None: forever.
    times: int | None = None
    #: Reset the connection instead of answering.
    reset: bool = False


_DEFAULT_RULE = Rule()


class _PendingRule:
    """A queued rule and how many more times it applies (None: forever)."""

    __slots__ = ("remaining", "rule")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.remaining = rule.times


class _Waiter:
    __slots__ = ("any_answer", "count", "future")

    def __init__(self, count: int, any_answer: bool, future: asyncio.Future[None]) -> None:
        self.count = count
        self.any_answer = any_answer
        self.future = future


class WebhookReceiver(Served):
    """An HTTP server that accepts Standard Webhooks signed with ``secret``."""

    def __init__(
        self,
        secret: bytes,
        *,
        on_delivery: Callable[[Delivery], None] | None = None,
        check: Check | None = None,
    ) -> None:
        self._secret = secret
        #: Verifies each request in place of the Standard Webhooks signature and JSON body.
        self._check = check
        self._on_delivery = on_delivery
        self._rules: list[_PendingRule] = []
        self._verified_ids: set[str] = set()
        self._accepted_ids: set[str] = set()
        self._waiters: list[_Waiter] = []
        #: Every request, in arrival order.
        self.deliveries: list[Delivery] = []
        #: Requests being answered now, and the most there ever were at once.
        self.in_flight = 0
        self.max_in_flight = 0

    def respond(self, rule: Rule) -> None:
        """Queue ``rule``; with no rule queued the receiver answers 204."""
        self._rules.append(_PendingRule(rule))

    def clear_rules(self) -> None:
        """Drop every queued rule: answer 204 from now on."""
        self._rules.clear()

    def unique_ids(self) -> set[str]:
        """The distinct webhook-ids of verified deliveries, whatever they were answered."""
        return set(self._verified_ids)

    def accepted_ids(self) -> set[str]:
        """The distinct webhook-ids of verified deliveries answered 2xx."""
        return set(self._accepted_ids)

    async def wait_for(
        self, count: int, timeout: float = DEFAULT_WAIT_TIMEOUT, *, any_answer: bool = False
    ) -> None:
        """Wait until ``count`` distinct verified webhook-ids have been answered 2xx.

        A delivery counts as its 2xx answer is sent (after the rule's delay; never when
        the connection drops first). With ``any_answer``, a verified delivery counts on
        arrival whatever the rule answers. Raises :class:`TimeoutError`.
        """
        if self._satisfied(count, any_answer):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(count, any_answer, future)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            got = len(self._verified_ids if any_answer else self._accepted_ids)
            what = "verified" if any_answer else "verified and accepted (2xx)"
            unverified = sum(1 for d in self.deliveries if not d.verified)
            msg = (
                f"webhook receiver: {got} of {count} distinct {what} deliveries after "
                f"{timeout:g}s ({len(self.deliveries)} requests, {unverified} unverified)"
            )
            raise TimeoutError(msg) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    # --- internals -------------------------------------------------------

    def _satisfied(self, count: int, any_answer: bool) -> bool:
        return len(self._verified_ids if any_answer else self._accepted_ids) >= count

    def _next_rule(self) -> Rule:
        if not self._rules:
            return _DEFAULT_RULE
        pending = self._rules[0]
        if pending.remaining is not None:
            pending.remaining -= 1
            if pending.remaining <= 0:
                self._rules.pop(0)
        return pending.rule

    async def _handle(self, request: Request) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            rule = self._next_rule()
            delivery = self._record(request, 0 if rule.reset else rule.status)
            if rule.delay:
                await asyncio.sleep(rule.delay)
            if rule.reset:
                return Response(abort=True)
            if delivery.verified and 200 <= rule.status < 300:
                self._accepted_ids.add(delivery.webhook_id)
                self._wake()
            return Response(rule.status, rule.body, list(rule.headers))
        finally:
            self.in_flight -= 1

    def _record(self, request: Request, status: int) -> Delivery:
        if self._check is not None:
            webhook_id, problem = self._check(request)
            return self._add(request, status, webhook_id, 0, {}, problem)
        headers = request.headers
        error: str | None = None
        try:
            verify(self._secret, headers, request.body, time.time())
        except SignatureError as exc:
            error = str(exc)
        payload: dict[str, object] = {}
        try:
            decoded = json.loads(request.body)
        except (ValueError, RecursionError):
            decoded = None
        if isinstance(decoded, dict):
            payload = decoded
        elif error is None:
            error = "body is not a JSON object"
        try:
            timestamp = int(headers.get("webhook-timestamp", "0"))
        except ValueError:
            timestamp = 0
        return self._add(request, status, headers.get("webhook-id", ""), timestamp, payload, error)

    def _add(
        self,
        request: Request,
        status: int,
        webhook_id: str,
        timestamp: int,
        payload: dict[str, object],
        error: str | None,
    ) -> Delivery:
        delivery = Delivery(
            webhook_id=webhook_id,
            timestamp=timestamp,
            headers=request.headers,
            body=request.body,
            payload=payload,
            verified=error is None,
            error=error,
            received_at=time.monotonic(),
            path=request.path,
            status=status,
        )
        self.deliveries.append(delivery)
        if delivery.verified:
            self._verified_ids.add(delivery.webhook_id)
            self._wake()
        if self._on_delivery is not None:
            self._on_delivery(delivery)
        return delivery

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.future.done() and self._satisfied(waiter.count, waiter.any_answer):
                waiter.future.set_result(None)
