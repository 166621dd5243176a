"""Prometheus metrics for ``GET /metrics``, in a registry of the relay's own.

The daemon calls one method per thing that happened (:meth:`Metrics.poll`,
:meth:`Metrics.delivery`...); :meth:`Metrics.render` produces the exposition. Nothing
touches prometheus_client's global registry, so several relays (tests, the demo) can
live in one process.

The ``number`` label follows ``log.pii`` as the logs and ``status`` do: a number is
shown masked to its last three digits unless ``log.pii = true``, with two hex digits of
a hash after it (``*********001-a7``, :func:`number_label`) so that numbers ending alike
stay apart.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from relay import logs
from relay.phone import mask

NAMESPACE = "aatrox_relay"

DELIVERED = "delivered"
RETRY = "retry"
DEAD = "dead"
#: What a delivery attempt may come to.
DELIVERY_OUTCOMES = (DELIVERED, RETRY, DEAD)
SENT = "sent"
FAILED = "failed"
#: The send went out and no answer came: the SMS may or may not have been sent.
UNKNOWN = "unknown"
#: Not sent: every recipient had opted out (STOP) of SMS from its sender.
REFUSED = "refused"
#: What sending an SMS (a reply, ``POST /v1/send``) may come to.
OUTBOUND_OUTCOMES = (SENT, FAILED, UNKNOWN, REFUSED)
#: The poll outcome for a successful poll; failures use a short error kind
#: ("unauthorized", "rate_limited", "timeout", "error"...): keep the set small and fixed.
POLL_OK = "ok"

#: Seconds from the provider receiving a message to the webhook's 2xx: a first attempt
#: takes well under a second past the poll interval, retries can take hours.
LATENCY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
                   4 * 3600.0, 86400.0, float("inf"))  # fmt: skip
#: Hex digits of the hash after a masked number in its label: enough to tell apart
#: numbers ending in the same three digits, too few to give one away (about 400 of the
#: 100,000 Australian mobile numbers ending in the same three digits share them). The
#: hash is not keyed: a key would have to be a secret every relay on the store shares
#: and keeps, and the config's secrets rotate.
NUMBER_HASH_CHARS = 2
#: BLAKE2b personalisation of that hash.
_NUMBER_HASH_PERSON = b"relay-metrics"
_POLL_AGE = f"{NAMESPACE}_last_successful_poll_age_seconds"
_POLL_AGE_HELP = "Seconds since the last successful poll of the number."


def number_label(number: str, *, pii: bool | None = None, chars: int = NUMBER_HASH_CHARS) -> str:
    """The ``number`` label of ``number``: the number itself when ``pii`` (default:
    ``log.pii``), else masked as the logs mask it and ``chars`` hex digits of its hash."""
    if logs.pii() if pii is None else pii:
        return number
    digest = hashlib.blake2b(number.encode(), person=_NUMBER_HASH_PERSON).hexdigest()
    return f"{mask(number)}-{digest[:chars]}"


class _NumberLabels:
    """Each number's label, distinct: a number whose label another one already has (same
    last three digits and hash digits) gets more digits of its hash, the first one keeps
    its label."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._labels: dict[tuple[str, bool], str] = {}
        self._numbers: dict[str, str] = {}  # label -> number

    def __call__(self, number: str) -> str:
        pii = logs.pii()
        with self._lock:
            label = self._labels.get((number, pii))
            if label is not None:
                return label
            chars = NUMBER_HASH_CHARS
            label = number_label(number, pii=pii, chars=chars)
            while self._numbers.setdefault(label, number) != number:
                chars += NUMBER_HASH_CHARS
                label = number_label(number, pii=pii, chars=chars)
            self._labels[(number, pii)] = label
            return label


class _PollAgeCollector:
    """``last_successful_poll_age_seconds``, computed when scraped from stored timestamps."""

    def __init__(self, clock: Callable[[], float], labels: _NumberLabels) -> None:
        self._labels = labels
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ok: dict[str, float] = {}

    def polled_ok(self, number: str, when: float) -> None:
        with self._lock:
            if when >= self._last_ok.get(number, when):
                self._last_ok[number] = when

    def keep(self, numbers: Iterable[str]) -> None:
        """Forget every number but ``numbers`` (the ones configured now)."""
        wanted = set(numbers)
        with self._lock:
            self._last_ok = {n: t for n, t in self._last_ok.items() if n in wanted}

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(_POLL_AGE, _POLL_AGE_HELP, labels=["number"])]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            last_ok = dict(self._last_ok)
        now = self._clock()
        family = GaugeMetricFamily(_POLL_AGE, _POLL_AGE_HELP, labels=["number"])
        for number, when in sorted(last_ok.items()):
            family.add_metric([self._labels(number)], max(now - when, 0.0))
        return [family]


def _check(outcome: str, allowed: tuple[str, ...], what: str) -> None:
    if outcome not in allowed:
        msg = f"{what} outcome {outcome!r} is not one of {', '.join(allowed)}"
        raise ValueError(msg)


class Metrics:
    """The relay's metrics; ``clock`` is monotonic (the one ``polled_ok`` times are read on)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, process: bool = True
    ) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self._polls = Counter(
            "polls", "Polls of the Aatrox API, by number and outcome.",
            ["number", "outcome"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._received = Counter(
            "messages_received", "New inbound messages recorded, by number.",
            ["number"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._gaps = Counter(
            "poll_gaps", "Listings that held nothing seen before: messages may have been missed.",
            ["number"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._unresolved = Counter(
            "messages_unresolved",
            "Listed messages whose details could not be had in time (reported once each).",
            ["number"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._deliveries = Counter(
            "deliveries", "Delivery attempts, by webhook and outcome (delivered, retry, dead).",
            ["webhook", "outcome"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._latency = Histogram(
            "delivery_latency_seconds",
            "Seconds from the provider receiving a message to the webhook's 2xx.",
            ["webhook"], namespace=NAMESPACE, registry=reg, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self._pending = Gauge(
            "deliveries_pending", "Deliveries waiting for a (next) attempt, by webhook.",
            ["webhook"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._dead = Gauge(
            "deliveries_dead", "Deliveries given up on and kept in the store, by webhook.",
            ["webhook"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._ready = Gauge(
            "ready", "1 when GET /readyz would answer 200 (updated on each scrape).",
            namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._interval = Gauge(
            "poll_interval_seconds",
            "The number's current poll interval (its configured one, unless adaptive polling "
            "moved it).",
            ["number"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._interval_labels: set[str] = set()
        self._interval_source: Callable[[], Mapping[str, float]] | None = None
        self._api_requests = Counter(
            "api_requests", "Requests to the Aatrox API, by endpoint and outcome.",
            ["endpoint", "outcome"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._circuit = Gauge(
            "webhook_circuit_open",
            "1 while the webhook's circuit is open (one probe per circuit_probe), by webhook.",
            ["webhook"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._oldest = Gauge(
            "oldest_pending_delivery_age_seconds",
            "Age of the oldest pending delivery, by webhook (0 when none is pending).",
            ["webhook"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._outbound = Counter(
            "outbound_sms",
            "SMS sent through the Aatrox API (replies), by outcome (sent, failed, unknown, "
            "refused: the recipient opted out).",
            ["outcome"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        for outcome in OUTBOUND_OUTCOMES:
            self._outbound.labels(outcome)
        self._optouts = Gauge(
            "optouts",
            "Senders opted out (STOP) of SMS from the number, as the store holds them.",
            ["number"], namespace=NAMESPACE, registry=reg,
        )  # fmt: skip
        self._optout_labels: set[str] = set()
        self._number = _NumberLabels()
        self._poll_age = _PollAgeCollector(clock, self._number)
        reg.register(self._poll_age)
        self._webhooks: set[str] = set()
        if process:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)

    def poll(self, number: str, outcome: str) -> None:
        """One poll of ``number`` ended with ``outcome`` (:data:`POLL_OK` or an error kind)."""
        self._polls.labels(self._number(number), outcome).inc()

    def received(self, number: str, count: int = 1) -> None:
        """``count`` new messages were recorded on ``number``."""
        self._received.labels(self._number(number)).inc(count)

    def gap(self, number: str) -> None:
        """A listing on ``number`` outran the relay."""
        self._gaps.labels(self._number(number)).inc()

    def unresolved(self, number: str, count: int) -> None:
        """``count`` messages on ``number`` were given up on waiting for their details."""
        self._unresolved.labels(self._number(number)).inc(count)

    def _webhook(self, webhook: str) -> None:
        """Start every outcome of a new webhook at 0, so that rate() sees the first one."""
        if webhook not in self._webhooks:
            self._webhooks.add(webhook)
            for outcome in DELIVERY_OUTCOMES:
                self._deliveries.labels(webhook, outcome)
            self._circuit.labels(webhook).set(0)

    def delivery(self, webhook: str, outcome: str, latency: float | None = None) -> None:
        """A delivery attempt to ``webhook`` ended with ``outcome``.

        ``latency`` (seconds from the message's ``received_at`` to the 2xx) is observed
        for delivered ones; a negative one (clocks disagree) counts as 0.
        """
        _check(outcome, DELIVERY_OUTCOMES, "delivery")
        self._webhook(webhook)
        self._deliveries.labels(webhook, outcome).inc()
        if outcome == DELIVERED and latency is not None:
            self._latency.labels(webhook).observe(max(latency, 0.0))

    def queue(
        self, webhook: str, pending: int, dead: int, oldest_pending_age: float | None
    ) -> None:
        """The store's queue for ``webhook`` now: counts and the oldest pending's age (s)."""
        self._webhook(webhook)
        self._pending.labels(webhook).set(pending)
        self._dead.labels(webhook).set(dead)
        age = 0.0 if oldest_pending_age is None else max(oldest_pending_age, 0.0)
        self._oldest.labels(webhook).set(age)

    def ready(self, is_ready: bool) -> None:
        """Whether the relay is ready, as ``/readyz`` judges it."""
        self._ready.set(1 if is_ready else 0)

    def configured(self, intervals: Mapping[str, float]) -> None:
        """The numbers configured now, with their poll intervals: the others' series go
        (a number removed by a reload stops showing a growing poll age)."""
        shown = {self._number(number): seconds for number, seconds in intervals.items()}
        for label in self._interval_labels - set(shown):
            self._interval.remove(label)
        for label, seconds in shown.items():
            self._interval.labels(label).set(seconds)
        self._interval_labels = set(shown)
        self._poll_age.keep(intervals)

    def optouts(self, numbers: Iterable[str], counts: Mapping[str, int]) -> None:
        """Opt-outs from each configured number (0 when none); others' series go."""
        shown = {self._number(n): counts.get(n, 0) for n in numbers}
        for label in self._optout_labels - set(shown):
            self._optouts.remove(label)
        for label, count in shown.items():
            self._optouts.labels(label).set(count)
        self._optout_labels = set(shown)

    def follow_intervals(self, source: Callable[[], Mapping[str, float]]) -> None:
        """Read each number's current interval from ``source`` at every scrape, in place of
        the configured ones (:meth:`configured`): adaptive polling moves them."""
        self._interval_source = source

    def api_request(self, endpoint: str, outcome: str) -> None:
        """One request to the API's ``endpoint`` (receive, details, send...) ended with
        ``outcome`` (ok, rate_limited, client_error, server_error, failed)."""
        self._api_requests.labels(endpoint, outcome).inc()

    def circuit(self, webhook: str, is_open: bool) -> None:
        """``webhook``'s circuit opened or closed."""
        self._webhook(webhook)
        self._circuit.labels(webhook).set(1 if is_open else 0)

    def polled_ok(self, number: str, when_monotonic: float) -> None:
        """``number`` was polled successfully at ``when_monotonic`` (on this object's clock)."""
        self._poll_age.polled_ok(number, when_monotonic)

    def outbound(self, outcome: str) -> None:
        """An SMS send ended with ``outcome`` (:data:`SENT` or :data:`FAILED`)."""
        _check(outcome, OUTBOUND_OUTCOMES, "outbound")
        self._outbound.labels(outcome).inc()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type: Prometheus text, or OpenMetrics if ``accept``
        asks for it.
        """
        if self._interval_source is not None:
            self.configured(self._interval_source())
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
