"""The metrics, read back through prometheus_client's own parser of the exposition."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from relay import logs
from relay.metrics import (
    DEAD,
    DELIVERED,
    FAILED,
    NUMBER_HASH_CHARS,
    POLL_OK,
    RETRY,
    SENT,
    Metrics,
    number_label,
)
from relay.testing.clock import FakeClock
from tests.support import kept_logging

NUMBER = "+61400000001"
OTHER = "+61400000002"
#: Their labels without log.pii: masked, and a short hash.
LABEL = number_label(NUMBER, pii=False)
OTHER_LABEL = number_label(OTHER, pii=False)
AGE = "aatrox_relay_last_successful_poll_age_seconds"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> Samples:
    """Every sample of the rendered text, keyed by name and labels."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; KeyError when absent."""
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def clock() -> FakeClock:
    """A monotonic clock that moves only when told."""
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> Metrics:
    """Metrics on the fake clock, without process collectors."""
    return Metrics(clock=clock.monotonic, process=False)


def test_polls_are_counted_by_number_and_outcome(metrics: Metrics) -> None:
    """poll() counts each (number, outcome) pair separately."""
    metrics.poll(NUMBER, POLL_OK)
    metrics.poll(NUMBER, POLL_OK)
    metrics.poll(NUMBER, "unauthorized")
    metrics.poll(OTHER, POLL_OK)
    s = scrape(metrics)
    assert value(s, "aatrox_relay_polls_total", number=LABEL, outcome="ok") == 2
    assert value(s, "aatrox_relay_polls_total", number=LABEL, outcome="unauthorized") == 1
    assert value(s, "aatrox_relay_polls_total", number=OTHER_LABEL, outcome="ok") == 1


def test_received_messages_are_counted_by_number(metrics: Metrics) -> None:
    """received() adds its count to the number's total."""
    metrics.received(NUMBER, 3)
    metrics.received(NUMBER)
    metrics.received(OTHER, 0)
    s = scrape(metrics)
    assert value(s, "aatrox_relay_messages_received_total", number=LABEL) == 4
    assert value(s, "aatrox_relay_messages_received_total", number=OTHER_LABEL) == 0


def test_deliveries_count_outcomes_and_observe_latency(metrics: Metrics) -> None:
    """delivery() counts by webhook and outcome; only delivered ones feed the histogram."""
    metrics.delivery("crm", DELIVERED, 0.8)
    metrics.delivery("crm", DELIVERED, 42.0)
    metrics.delivery("crm", RETRY, None)
    metrics.delivery("crm", DEAD, 99.0)
    s = scrape(metrics)
    assert value(s, "aatrox_relay_deliveries_total", webhook="crm", outcome="delivered") == 2
    assert value(s, "aatrox_relay_deliveries_total", webhook="crm", outcome="retry") == 1
    assert value(s, "aatrox_relay_deliveries_total", webhook="crm", outcome="dead") == 1
    assert value(s, "aatrox_relay_delivery_latency_seconds_count", webhook="crm") == 2
    assert value(s, "aatrox_relay_delivery_latency_seconds_sum", webhook="crm") == 42.8
    assert value(s, "aatrox_relay_delivery_latency_seconds_bucket", webhook="crm", le="1.0") == 1
    assert value(s, "aatrox_relay_delivery_latency_seconds_bucket", webhook="crm", le="60.0") == 2


def test_a_new_webhook_starts_every_outcome_at_zero(metrics: Metrics) -> None:
    """The first delivery of a webhook exposes its other outcomes as 0, so rate() sees them."""
    metrics.delivery("crm", RETRY)
    s = scrape(metrics)
    assert value(s, "aatrox_relay_deliveries_total", webhook="crm", outcome="delivered") == 0
    assert value(s, "aatrox_relay_deliveries_total", webhook="crm", outcome="dead") == 0


def test_negative_latency_counts_as_zero(metrics: Metrics) -> None:
    """A provider clock ahead of ours gives no negative latency."""
    metrics.delivery("crm", DELIVERED, -3.0)
    s = scrape(metrics)
    assert value(s, "aatrox_relay_delivery_latency_seconds_sum", webhook="crm") == 0


def test_unknown_outcomes_are_refused(metrics: Metrics) -> None:
    """Delivery and outbound outcomes are a fixed set: a typo is an error, not a new series."""
    with pytest.raises(ValueError, match="delivery outcome 'ok'"):
        metrics.delivery("crm", "ok")
    with pytest.raises(ValueError, match="outbound outcome 'delivered'"):
        metrics.outbound("delivered")


def test_queue_gauges_follow_the_last_report(metrics: Metrics) -> None:
    """queue() sets pending, dead and oldest-pending age; None age reads 0."""
    metrics.queue("crm", pending=5, dead=1, oldest_pending_age=12.5)
    metrics.queue("erp", pending=7, dead=0, oldest_pending_age=3.0)
    metrics.queue("erp", pending=0, dead=2, oldest_pending_age=None)
    s = scrape(metrics)
    assert value(s, "aatrox_relay_deliveries_pending", webhook="crm") == 5
    assert value(s, "aatrox_relay_deliveries_dead", webhook="crm") == 1
    assert value(s, "aatrox_relay_oldest_pending_delivery_age_seconds", webhook="crm") == 12.5
    assert value(s, "aatrox_relay_deliveries_pending", webhook="erp") == 0
    assert value(s, "aatrox_relay_deliveries_dead", webhook="erp") == 2
    assert value(s, "aatrox_relay_oldest_pending_delivery_age_seconds", webhook="erp") == 0


def test_poll_age_is_computed_when_scraped(metrics: Metrics, clock: FakeClock) -> None:
    """Seconds since the last successful poll grow with the clock between scrapes."""
    metrics.polled_ok(NUMBER, clock.monotonic())
    clock.advance(4)
    metrics.polled_ok(OTHER, clock.monotonic())
    clock.advance(3)
    s = scrape(metrics)
    assert value(s, AGE, number=LABEL) == 7
    assert value(s, AGE, number=OTHER_LABEL) == 3
    clock.advance(10)
    later = scrape(metrics)
    assert value(later, AGE, number=LABEL) == 17
    metrics.polled_ok(NUMBER, clock.monotonic())
    fresh = scrape(metrics)
    assert value(fresh, AGE, number=LABEL) == 0


def test_poll_age_ignores_an_older_report(metrics: Metrics, clock: FakeClock) -> None:
    """A success reported late (an older timestamp) does not make the age jump back up."""
    metrics.polled_ok(NUMBER, clock.monotonic())
    metrics.polled_ok(NUMBER, clock.monotonic() - 60)
    clock.advance(1)
    assert value(scrape(metrics), AGE, number=LABEL) == 1


def test_a_number_never_polled_ok_has_no_poll_age(metrics: Metrics) -> None:
    """Only numbers that were polled successfully at least once have an age."""
    metrics.poll(NUMBER, "unauthorized")
    names = {name for name, _ in scrape(metrics)}
    assert AGE not in names


def test_outbound_sms_are_counted_by_outcome(metrics: Metrics) -> None:
    """outbound() counts sent and failed SMS; both series exist from the start."""
    assert value(scrape(metrics), "aatrox_relay_outbound_sms_total", outcome="failed") == 0
    metrics.outbound(SENT)
    metrics.outbound(SENT)
    metrics.outbound(FAILED)
    s = scrape(metrics)
    assert value(s, "aatrox_relay_outbound_sms_total", outcome="sent") == 2
    assert value(s, "aatrox_relay_outbound_sms_total", outcome="failed") == 1


def test_each_metrics_has_its_own_registry() -> None:
    """Two Metrics never share series, and nothing lands in prometheus_client's global registry."""
    one, two = Metrics(process=False), Metrics(process=False)
    one.poll(NUMBER, POLL_OK)
    assert ("aatrox_relay_polls_total", frozenset({("number", LABEL), ("outcome", "ok")})) in (
        scrape(one)
    )
    assert "aatrox_relay_polls_total" not in {name for name, _ in scrape(two)}
    assert REGISTRY.get_sample_value("aatrox_relay_polls_total", {"number": NUMBER}) is None
    assert one.registry is not REGISTRY


def test_process_metrics_are_included_by_default() -> None:
    """The default Metrics also exposes the process's own metrics (memory, CPU, fds)."""
    s = scrape(Metrics())
    resident = value(s, "process_resident_memory_bytes")
    assert resident > 0
    assert not math.isnan(resident)


def test_render_speaks_openmetrics_when_asked(metrics: Metrics) -> None:
    """An Accept of application/openmetrics-text gets OpenMetrics, ending with # EOF."""
    metrics.poll(NUMBER, POLL_OK)
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    plain, plain_type = metrics.render()
    assert plain_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# EOF" not in plain


@pytest.fixture
def pii() -> Iterator[None]:
    """``log.pii = true`` for the test, as ``logs.setup`` sets it; the logging set-up is
    put back afterwards."""
    with kept_logging():
        logs.setup("info", pii=True)
        yield


def test_number_labels_are_masked_like_the_logs(metrics: Metrics, clock: FakeClock) -> None:
    """Without log.pii no series shows a number in full: each is masked as the logs mask
    it, with a short hash after it."""
    metrics.poll(NUMBER, POLL_OK)
    metrics.received(NUMBER, 2)
    metrics.gap(NUMBER)
    metrics.unresolved(NUMBER, 1)
    metrics.polled_ok(NUMBER, clock.monotonic())
    body, _ = metrics.render()
    assert NUMBER.encode() not in body and NUMBER[1:].encode() not in body
    assert LABEL.startswith(logs.number(NUMBER) + "-")
    assert len(LABEL) == len(logs.number(NUMBER)) + 1 + NUMBER_HASH_CHARS
    s = scrape(metrics)
    for name in (
        "aatrox_relay_messages_received_total",
        "aatrox_relay_poll_gaps_total",
        "aatrox_relay_messages_unresolved_total",
        AGE,
    ):
        assert value(s, name, number=LABEL) >= 0
    assert value(s, "aatrox_relay_polls_total", number=LABEL, outcome="ok") == 1


@pytest.mark.usefixtures("pii")
def test_number_labels_are_full_with_log_pii(metrics: Metrics) -> None:
    """With log.pii = true the label is the number itself, as in the logs."""
    metrics.poll(NUMBER, POLL_OK)
    assert value(scrape(metrics), "aatrox_relay_polls_total", number=NUMBER, outcome="ok") == 1


def test_numbers_ending_alike_keep_distinct_labels(metrics: Metrics) -> None:
    """Numbers with the same last three digits get different labels, even when their
    short hashes are the same too: the later one gets more hash digits."""
    first = "+61411111001"
    twin = next(
        candidate
        for candidate in (f"+614{i:05d}001" for i in range(100_000))
        if candidate != first
        and number_label(candidate, pii=False) == number_label(first, pii=False)
    )
    metrics.poll(first, POLL_OK)
    metrics.poll(twin, POLL_OK)
    metrics.poll(NUMBER, POLL_OK)
    metrics.poll(first, POLL_OK)
    polls = {
        dict(labels)["number"]: v
        for (name, labels), v in scrape(metrics).items()
        if name == "aatrox_relay_polls_total"
    }
    assert polls == {
        number_label(first, pii=False): 2,
        number_label(twin, pii=False, chars=2 * NUMBER_HASH_CHARS): 1,
        LABEL: 1,
    }


def test_configured_numbers_export_their_interval_and_removed_ones_go(
    metrics: Metrics, clock: FakeClock
) -> None:
    """aatrox_relay_poll_interval_seconds follows the config; a number a reload removed
    loses its interval and its (otherwise ever growing) poll age."""
    metrics.configured({NUMBER: 10.0, OTHER: 30.0})
    metrics.polled_ok(NUMBER, clock.monotonic())
    metrics.polled_ok(OTHER, clock.monotonic())
    samples = scrape(metrics)
    assert value(samples, "aatrox_relay_poll_interval_seconds", number=LABEL) == 10.0
    assert value(samples, "aatrox_relay_poll_interval_seconds", number=OTHER_LABEL) == 30.0
    metrics.configured({NUMBER: 5.0})
    samples = scrape(metrics)
    assert value(samples, "aatrox_relay_poll_interval_seconds", number=LABEL) == 5.0
    assert (
        "aatrox_relay_poll_interval_seconds",
        frozenset({("number", OTHER_LABEL)}),
    ) not in samples
    assert (AGE, frozenset({("number", OTHER_LABEL)})) not in samples
    assert value(samples, AGE, number=LABEL) == 0.0


def test_poll_intervals_followed_are_read_at_each_scrape(metrics: Metrics) -> None:
    """With a source of current intervals (adaptive polling), each scrape shows what it
    says now, not the configured intervals."""
    current = {NUMBER: 30.0, OTHER: 30.0}
    metrics.configured(current)
    metrics.follow_intervals(lambda: dict(current))
    current[NUMBER] = 1.0
    samples = scrape(metrics)
    assert value(samples, "aatrox_relay_poll_interval_seconds", number=LABEL) == 1.0
    assert value(samples, "aatrox_relay_poll_interval_seconds", number=OTHER_LABEL) == 30.0


def test_api_requests_are_counted_by_endpoint_and_outcome(metrics: Metrics) -> None:
    """aatrox_relay_api_requests_total counts each request by endpoint and outcome."""
    metrics.api_request("receive", "ok")
    metrics.api_request("receive", "ok")
    metrics.api_request("receive", "rate_limited")
    metrics.api_request("send", "ok")
    samples = scrape(metrics)
    name = "aatrox_relay_api_requests_total"
    assert value(samples, name, endpoint="receive", outcome="ok") == 2.0
    assert value(samples, name, endpoint="receive", outcome="rate_limited") == 1.0
    assert value(samples, name, endpoint="send", outcome="ok") == 1.0


def test_optouts_and_refused_sms_are_exported(metrics: Metrics) -> None:
    """Opt-outs per configured number (0 for one without; a removed number's series
    goes) and refused outbound SMS, counted apart from failed ones."""
    metrics.optouts([NUMBER, OTHER], {NUMBER: 3, "+61400000009": 5})
    metrics.outbound("refused")
    s = scrape(metrics)
    assert value(s, "aatrox_relay_optouts", number=LABEL) == 3
    assert value(s, "aatrox_relay_optouts", number=OTHER_LABEL) == 0
    assert value(s, "aatrox_relay_outbound_sms_total", outcome="refused") == 1
    assert value(s, "aatrox_relay_outbound_sms_total", outcome="failed") == 0
    metrics.optouts([OTHER], {})
    with pytest.raises(KeyError):
        value(scrape(metrics), "aatrox_relay_optouts", number=LABEL)
