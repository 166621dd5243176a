"""``/healthz``, ``/readyz`` and ``/metrics``: a handler for :class:`relay.httpd.HttpServer`.

The app sees the relay only through :class:`RelayView`, so it knows nothing of the
daemon's insides, and tests drive it with a small fake. Further routes (``POST /v1/send``)
are mounted with :meth:`HealthApp.route`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.http import Handler, Request, Response, json_response
from relay.logs import fields
from relay.metrics import Metrics
from relay.phone import mask

log = logging.getLogger(__name__)

#: A number is ready while its last successful poll is at most this many intervals old.
READY_INTERVALS = 3
#: /readyz gives the store this long to answer.
STORE_CHECK_TIMEOUT = 2.0
#: Probes must never be answered from a cache.
NO_STORE = ("Cache-Control", "no-store")


@dataclass(frozen=True)
class NumberHealth:
    """How polling one number is going."""

    number: str  # E.164
    #: Seconds between polls of this number.
    interval: float
    #: When the last successful poll ended, on the app's monotonic clock; None if never.
    last_success_monotonic: float | None
    #: The one-line error of the last poll if it failed, else None.
    last_error: str | None


class RelayView(Protocol):
    """What the health endpoints need to know of the running relay."""

    def scheduler_running(self) -> bool:
        """Whether the scheduler that starts polls is running."""
        ...

    def number_health(self) -> Sequence[NumberHealth]:
        """The state of every configured number."""
        ...

    async def store_ok(self) -> str | None:
        """None when the store answers a trivial query, else a one-line reason."""
        ...


def _one_line(text: str) -> str:
    return " ".join(text.split())


def number_reason(health: NumberHealth, now: float) -> str | None:
    """Why ``health``'s number is not ready at monotonic ``now``, or None if it is.

    Ready means a successful poll within :data:`READY_INTERVALS` intervals: one failed
    poll among successes is tolerated; a failing number is reported with its error.
    """
    last = health.last_success_monotonic
    age = None if last is None else max(now - last, 0.0)
    if age is not None and age <= READY_INTERVALS * health.interval:
        return None
    shown = mask(health.number)
    if health.last_error is not None:
        reason = f"{shown}: last poll failed: {_one_line(health.last_error)}"
        return reason if age is None else f"{reason}; last success {age:.0f}s ago"
    if age is None:
        return f"{shown}: no successful poll yet"
    return f"{shown}: no successful poll for {age:.0f}s (interval {health.interval:g}s)"


class HealthApp:
    """The HTTP handler: ``HttpServer(HealthApp(view, metrics=metrics))``.

    ``clock`` must be the monotonic clock the view's ``last_success_monotonic`` is read on.
    """

    def __init__(
        self,
        view: RelayView,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        store_timeout: float = STORE_CHECK_TIMEOUT,
    ) -> None:
        self._view = view
        self._metrics = metrics
        self._clock = clock
        self._store_timeout = store_timeout
        self._routes: dict[str, dict[str, Handler]] = {}
        self.route("GET", "/healthz", self._healthz)
        self.route("GET", "/readyz", self._readyz)
        if metrics is not None:
            self.route("GET", "/metrics", self._metrics_page)

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method`` ``path`` (exact match) with ``handler``; GET routes also answer HEAD.

        Raises ValueError when the route exists already or ``path`` does not start with /.
        """
        if not path.startswith("/"):
            msg = f"route path {path!r} must start with /"
            raise ValueError(msg)
        methods = self._routes.setdefault(path, {})
        method = method.upper()
        if method in methods:
            msg = f"route {method} {path} is already served"
            raise ValueError(msg)
        methods[method] = handler

    async def __call__(self, request: Request) -> Response:
        """Answer ``request``: its route, else 404, or 405 for a method the path lacks."""
        methods = self._routes.get(request.path)
        if methods is None:
            return json_response({"error": "not found"}, 404, [NO_STORE])
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allowed = sorted({*methods, *(["HEAD"] if "GET" in methods else [])})
            headers = [("Allow", ", ".join(allowed)), NO_STORE]
            return json_response({"error": "method not allowed"}, 405, headers)
        return await handler(request)

    async def readiness(self) -> list[str]:
        """Why the relay is not ready; empty when it is."""
        reasons = []
        if not self._view.scheduler_running():
            reasons.append("scheduler is not running")
        store = await self._check_store()
        if store is not None:
            reasons.append(f"store: {_one_line(store)}")
        now = self._clock()
        for health in self._view.number_health():
            reason = number_reason(health, now)
            if reason is not None:
                reasons.append(reason)
        return reasons

    async def _check_store(self) -> str | None:
        try:
            return await asyncio.wait_for(self._view.store_ok(), self._store_timeout)
        except asyncio.TimeoutError:
            return f"no answer within {self._store_timeout:g}s"
        except Exception as exc:  # the view should answer a reason; never fail the probe
            log.warning("relay.health.store_check_failed", extra=fields(error=str(exc)))
            return f"check failed ({type(exc).__name__})"

    async def _healthz(self, request: Request) -> Response:
        if self._view.scheduler_running():
            return json_response({"status": "ok"}, 200, [NO_STORE])
        body = {"status": "unhealthy", "reasons": ["scheduler is not running"]}
        return json_response(body, 503, [NO_STORE])

    async def _readyz(self, request: Request) -> Response:
        reasons = await self.readiness()
        if not reasons:
            return json_response({"status": "ready"}, 200, [NO_STORE])
        return json_response({"status": "not ready", "reasons": reasons}, 503, [NO_STORE])

    async def _metrics_page(self, request: Request) -> Response:
        assert self._metrics is not None
        self._metrics.ready(not await self.readiness())
        body, content_type = self._metrics.render(request.headers.get("accept"))
        return Response(status=200, body=body, content_type=content_type, headers=[NO_STORE])
