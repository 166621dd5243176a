"""``aatrox-relay run`` as a service: signals, systemd, health and metrics, Sentry.

Around a :class:`relay.daemon.Relay` this adds what an operator relies on:

- SIGTERM and SIGINT stop it cleanly (exit 0); SIGHUP re-reads the config.
- systemd ``Type=notify``: READY=1 once the store is migrated and polls are
  scheduled, WATCHDOG=1 while the event loop and the scheduler are alive,
  a STATUS= summary, STOPPING=1 on the way out.
- ``[http] listen``: ``/healthz``, ``/readyz``, ``/metrics``, and ``POST /v1/send``
  when a send token is configured.
- ``[sentry]``: problems worth a human, reported once per change of state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from relay import __version__, redact, sentry
from relay.config import Config
from relay.daemon import Relay
from relay.errors import InvalidNumber, RelayError
from relay.events import Events
from relay.health import HealthApp, NumberHealth
from relay.http import Guard, Request, Response, bearer_matches, json_response, unauthorized
from relay.logs import fields
from relay.logs import number as shown
from relay.metrics import (
    DEAD,
    DELIVERED,
    OUTBOUND_OUTCOMES,
    POLL_OK,
    RETRY,
    SENT,
    UNKNOWN,
    Metrics,
)
from relay.outbox import check_text
from relay.phone import valid_number
from relay.systemd import Notifier

if TYPE_CHECKING:
    from relay.httpd import HttpServer

log = logging.getLogger("relay.service")

#: How often queue gauges, the systemd status line and persisted poll state refresh.
REFRESH_EVERY = 10.0
#: Largest body ``POST /v1/send`` accepts.
MAX_SEND_BODY = 16 * 1024
#: Where the send endpoint is served.
SEND_PATH = "/v1/send"
#: Largest body any other path accepts: the probes and /metrics take none.
MAX_PROBE_BODY = 1024
#: Most connections the HTTP endpoint holds at once (probes, scrapes, senders).
HTTP_MAX_CONNECTIONS = 128


class Telemetry(Events):
    """Pipeline events into metrics, Sentry alerts and cron check-ins."""

    def __init__(
        self,
        metrics: Metrics,
        alerts: sentry.Alerts,
        heartbeats: sentry.Heartbeats | None = None,
        intervals: dict[str, float] | None = None,
    ) -> None:
        self.metrics = metrics
        self.alerts = alerts
        self.heartbeats = heartbeats
        self.intervals = intervals or {}

    def _beat(self, number: str, ok: bool) -> None:
        if self.heartbeats is not None:
            interval = self.intervals.get(number, 60.0)
            self.heartbeats.beat(
                sentry.monitor_slug(number), ok, monitor_config=sentry.monitor_config(interval)
            )

    def poll_succeeded(self, number: str, new: int) -> None:
        """Count it; a working token clears the token alert."""
        self.metrics.poll(number, POLL_OK)
        if new:
            self.metrics.received(number, new)
        self.metrics.polled_ok(number, time.monotonic())
        self.alerts.resolved("token_rejected")
        self._beat(number, True)

    def poll_failed(self, number: str, error: str, *, unauthorized: bool = False) -> None:
        """Count it; a rejected token is a problem worth a human, once."""
        self.metrics.poll(number, "unauthorized" if unauthorized else "error")
        if unauthorized:
            self.alerts.problem("token_rejected", "The Aatrox API rejected the token (401)")
        self._beat(number, False)

    def poll_gap(self, number: str, listed: int) -> None:
        """Count it; a gap episode is worth a human, once until a listing overlaps again."""
        self.metrics.gap(number)
        self.alerts.problem(
            f"poll_gap:{number}",
            f"A listing of {listed} messages on {shown(number)} held none seen before: "
            "messages received before it may have been missed",
        )

    def poll_gap_closed(self, number: str) -> None:
        """The gap episode on ``number`` is over."""
        self.alerts.resolved(f"poll_gap:{number}")

    def messages_unresolved(self, number: str, count: int) -> None:
        """Count them."""
        self.metrics.unresolved(number, count)

    def delivered(self, webhook: str, latency: float | None) -> None:
        """Count it; the webhook works again."""
        self.metrics.delivery(webhook, DELIVERED, latency)
        self.alerts.resolved(f"webhook_dead:{webhook}")

    def delivery_failed(self, webhook: str, error: str, *, dead: bool) -> None:
        """Count it; a dead letter is reported once until the webhook accepts again."""
        self.metrics.delivery(webhook, DEAD if dead else RETRY)
        if dead:
            self.alerts.problem(
                f"webhook_dead:{webhook}",
                f"Webhook {webhook} is dead-lettering deliveries: {error}",
                webhook=webhook,
            )

    def circuit_changed(self, webhook: str, is_open: bool) -> None:
        """Show it in the gauge; Sentry hears once when the circuit opens and once when it
        closes again."""
        self.metrics.circuit(webhook, is_open)
        key = f"circuit_open:{webhook}"
        if is_open:
            self.alerts.problem(
                key,
                f"Webhook {webhook} keeps failing: its circuit is open, one probe per "
                "circuit_probe until it answers",
                webhook=webhook,
            )
        else:
            self.alerts.recovered(
                key, f"Webhook {webhook} answers again: its circuit is closed", webhook=webhook
            )

    def outbound(self, outcome: str) -> None:
        """Count sent, failed and unknown outbound SMS; an unknown outcome is worth a human,
        once until an SMS is sent again."""
        if outcome in OUTBOUND_OUTCOMES:
            self.metrics.outbound(outcome)
        if outcome == UNKNOWN:
            self.alerts.problem(
                "outbound_unknown",
                "An SMS send got no answer: it may or may not have been sent "
                "(see aatrox-relay status; [outbound] retry_unknown)",
            )
        elif outcome == SENT:
            self.alerts.resolved("outbound_unknown")

    def unexpected(self, exc: BaseException) -> None:
        """Report a bug to Sentry (scrubbed, without local variables)."""
        self.alerts.exception(exc)

    def store_failed(self, error: str) -> None:
        """A store error is reported once until the store answers again."""
        self.alerts.problem("store_error", f"The relay's store failed: {error}")


class Service:
    """Runs a relay until SIGTERM, as systemd and an operator expect."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.alerts = sentry.Alerts()
        self.relay: Relay | None = None
        #: The send token the HTTP endpoint was started with (``[http]`` needs a restart).
        self._send_token: str | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    # --- what /healthz and /readyz look at -------------------------------------------

    def scheduler_running(self) -> bool:
        """Whether polls are being scheduled."""
        return bool(self.relay and self.relay.scheduler and self.relay.scheduler.running)

    def number_health(self) -> Sequence[NumberHealth]:
        """The numbers this relay polls (holds the lease of), and how their polls go."""
        if self.relay is None:
            return []
        relay = self.relay
        return [
            NumberHealth(
                number, state.config.interval, state.last_success_monotonic, state.last_error
            )
            for number, state in relay.poller.states.items()
            if relay.leases.holds(number)
        ]

    async def store_ok(self) -> str | None:
        """None when the store answers."""
        if self.relay is None:
            return "not started"
        try:
            await self.relay.store.call(self.relay.store.sync.ping)
        except RelayError as exc:
            return str(exc)
        return None

    # --- POST /v1/send ------------------------------------------------------------------

    async def send_endpoint(self, request: Request) -> Response:
        """Queue an outbound SMS: ``{"from", "to", "text"}`` with the send token; 202 + id.

        Recipients who opted out (STOP) of SMS from ``from`` are refused: 409 naming them
        when that is every recipient, else the others are queued and the answer lists the
        refused ones (``"refused"``). The outbox checks again when it sends.

        The server's guard has already refused a wrong token and a large body from the
        request head; both are checked again here, so the handler is safe on its own.
        """
        assert self.relay is not None
        token = self._send_token or ""
        if not bearer_matches(request.headers.get("authorization"), token):
            return unauthorized()
        if len(request.body) > MAX_SEND_BODY:
            return json_response({"error": "body too large"}, 413)
        try:
            sender, recipients, text, disclaimer = self._parse_send(request.body)
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        store = self.relay.store
        try:
            out = await store.call(store.sync.opted_out, sender, recipients)
            refused = [r for r in recipients if r in out]
            kept = [r for r in recipients if r not in out]
            if not kept:
                log.info("relay.send.refused", extra=fields(recipients=len(refused)))
                error = f"opted out (STOP) of SMS from {sender}: {', '.join(refused)}"
                return json_response({"error": error, "refused": refused}, 409)
            sms_id = await store.call(store.sync.queue_send, sender, kept, text, disclaimer)
        except RelayError as exc:
            return json_response({"error": str(exc)}, 503)
        self.relay.outbox.wake()
        log.info(
            "relay.send.queued",
            extra=fields(id=sms_id, recipients=len(kept), refused=len(refused)),
        )
        answer: dict[str, object] = {"id": sms_id, "status": "queued"}
        if refused:
            answer["refused"] = refused
        return json_response(answer, 202)

    def _parse_send(self, body: bytes) -> tuple[str, list[str], str, bool]:
        try:
            doc = json.loads(body)
        except ValueError:
            msg = "body is not JSON"
            raise ValueError(msg) from None
        if not isinstance(doc, dict):
            msg = 'body must be an object {"from", "to", "text"}'
            raise ValueError(msg)
        region = self.config.api.default_region
        raw_to = doc.get("to")
        to_list = raw_to if isinstance(raw_to, list) else [raw_to]
        if (
            not isinstance(doc.get("from"), str)
            or not to_list
            or not all(isinstance(t, str) for t in to_list)
        ):
            msg = '"from" must be a number and "to" a number or a list of numbers'
            raise ValueError(msg)
        if not isinstance(doc.get("text"), str):
            msg = '"text" must be a string'
            raise ValueError(msg)
        disclaimer = doc.get("disclaimer", False)
        if not isinstance(disclaimer, bool) or (disclaimer and len(to_list) > 1):
            msg = '"disclaimer" must be true or false, and only with one recipient'
            raise ValueError(msg)
        listed = isinstance(raw_to, list)
        named = [('"from"', doc["from"])]
        named += [(f'"to"[{i}]' if listed else '"to"', t) for i, t in enumerate(to_list)]
        numbers = []
        for field, value in named:
            try:
                numbers.append(valid_number(value, region))
            except InvalidNumber as exc:
                msg = f"{field}: {exc}"
                raise ValueError(msg) from None
        sender, *recipients = numbers
        return sender, list(dict.fromkeys(recipients)), check_text(doc["text"]), disclaimer

    # --- running ------------------------------------------------------------------------

    def _summary(self, pending: int) -> str:
        assert self.relay is not None
        held = len(self.relay.leases.held)
        total = len(self.relay.config.numbers)
        polling = f"polling {held} numbers" if held == total else f"polling {held}/{total} numbers"
        return f"{polling}, {pending} pending"

    async def _refresh(self) -> None:
        """Every few seconds: queue gauges, the systemd status, poll state for ``status``."""
        assert self.relay is not None
        relay = self.relay
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            try:
                stats = await relay.store.call(relay.store.sync.queue_stats)
                optouts = await relay.store.call(relay.store.sync.optout_counts)
                await relay.store.call(
                    relay.store.sync.save_poll_states, relay.poller.take_changed_states()
                )
            except RelayError as exc:
                log.error("relay.service.refresh_failed", extra=fields(error=str(exc)))
                continue
            self.alerts.resolved("store_error")
            now = relay.clock.now()
            for hook in relay.config.webhooks:
                pending, dead, oldest = stats.get(hook.name, (0, 0, None))
                self.metrics.queue(hook.name, pending, dead, _age(now, oldest))
            self.metrics.optouts((n.number for n in relay.config.numbers), optouts)
            self.notifier.status(self._summary(sum(p for p, _d, _o in stats.values())))

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            log.info("relay.reload.requested")
            self.notifier.reloading()
            self._reload.set()
        else:
            log.info("relay.signal", extra=fields(signal=sig.name))
            self._stop.set()

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT; exit code 0."""
        config = self.config
        # Logs and Sentry events alike: the config's secrets and URLs are never shown.
        redact.register(config)
        sentry.setup(config.sentry, version=__version__)
        heartbeats = sentry.Heartbeats() if config.sentry and config.sentry.monitor else None
        telemetry = Telemetry(
            self.metrics, self.alerts, heartbeats, {n.number: n.interval for n in config.numbers}
        )
        self.metrics.configured(telemetry.intervals)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        server: HttpServer | None = None
        try:
            async with Relay(config, events=telemetry) as relay:
                self.relay = relay
                # Adaptive polling moves the intervals; every API request is counted.
                self.metrics.follow_intervals(relay.poll_intervals)
                relay.api.on_request = self.metrics.api_request
                if config.http is not None:
                    server = await self._serve_http(config)
                started = asyncio.Event()
                runner = asyncio.create_task(
                    relay.run(
                        self._stop,
                        reload=self._reload,
                        on_started=started,
                        on_reloaded=self._reloaded,
                    )
                )
                # Until the relay has started, or has failed to (then raise its error).
                starting = asyncio.create_task(started.wait())
                await asyncio.wait([starting, runner], return_when=asyncio.FIRST_COMPLETED)
                starting.cancel()
                if runner.done():
                    runner.result()
                self.notifier.ready(self._summary(0))
                helpers = [
                    asyncio.create_task(self._refresh()),
                    asyncio.create_task(self.notifier.run_watchdog(self.scheduler_running)),
                ]
                try:
                    await runner
                finally:
                    self.notifier.stopping()
                    for task in helpers:
                        task.cancel()
                    await asyncio.gather(*helpers, return_exceptions=True)
                    if server is not None:
                        await server.close(config.run.shutdown_timeout)
        except RelayError as exc:
            self.alerts.problem("fatal", str(exc))
            raise
        except Exception as exc:
            self.alerts.exception(exc)
            raise
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            sentry.close()
        return 0

    async def _serve_http(self, config: Config) -> HttpServer:
        """Start ``[http]``: the probes, /metrics and, with a send token, ``POST /v1/send``
        behind a guard that refuses a wrong token or a large body before reading it."""
        from relay.httpd import HttpServer  # the server library loads only when serving

        assert config.http is not None
        app = HealthApp(self, metrics=self.metrics)
        guards = {}
        self._send_token = config.http.send_token
        if self._send_token:
            app.route("POST", SEND_PATH, self.send_endpoint)
            guards[SEND_PATH] = Guard(MAX_SEND_BODY, bearer_token=self._send_token)
        server = HttpServer(
            app,
            config.http.host,
            config.http.port,
            max_body_bytes=MAX_PROBE_BODY,
            guards=guards,
            max_connections=HTTP_MAX_CONNECTIONS,
        )
        await server.start()
        addresses = ",".join(server.addresses)
        log.info("relay.http.listening", extra=fields(addresses=addresses, url=server.url))
        if self._send_token and not server.loopback_only:
            log.warning(
                "relay.http.exposed",
                extra=fields(
                    addresses=addresses,
                    path=SEND_PATH,
                    hint="other hosts can reach the send endpoint: listen on 127.0.0.1 "
                    "or firewall the port",
                ),
            )
        return server

    def _reloaded(self, ok: bool) -> None:
        assert self.relay is not None
        if ok:
            self.config = self.relay.config  # its secrets: redact.register in Relay.reload
            self.metrics.configured({n.number: n.interval for n in self.config.numbers})
        self.notifier.ready(self._summary(0) + ("" if ok else " (reload refused)"))


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else (now - then).total_seconds()
