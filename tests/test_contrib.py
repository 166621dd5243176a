"""contrib/: the Prometheus alerts pass their promtool unit tests, and every metric the
alerts and the Grafana dashboard query is one the relay exports.

The exported names come from building the relay's registry (:class:`relay.metrics.Metrics`)
and collecting it, so renaming a metric in the relay fails here rather than leaving a
dashboard panel empty or an alert silent. promtool tests skip when promtool is not on
the PATH, unless RELAY_REQUIRE_PROMTOOL=1 (as in CI), where they fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "contrib" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "aatrox-relay.json"

#: The series a sample family's type adds to its name in the exposition.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
#: Series Prometheus itself records for every scrape target.
SCRAPE_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)
#: PromQL words that are neither metrics nor followed by "(".
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
     "group_left", "group_right", "atan2", "inf", "nan"}
)  # fmt: skip
#: Variables Grafana defines itself.
GRAFANA_VARIABLES = frozenset({"__rate_interval", "__interval", "__range", "__interval_ms"})

_STRING_OR_COMMENT = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`|#[^\n]*')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([a-zA-Z_:][\w:]*)"')
_VARIABLE = re.compile(r"\$\{(\w+)[^}]*\}|\$(\w+)|\[\[(\w+)[^\]]*\]\]")
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?")
_LABEL_VALUES = re.compile(r"\s*label_values\s*\((.*),\s*[a-zA-Z_]\w*\s*\)\s*", re.S)
_QUERY_RESULT = re.compile(r"\s*query_result\s*\((.*)\)\s*", re.S)
_NO_METRIC_QUERY = re.compile(r"\s*(?:label_values\s*\(\s*\w+\s*\)|label_names\(|metrics\()")


def exported_names() -> frozenset[str]:
    """Every series name the relay's /metrics may hold: its registry's families, collected,
    with the suffixes their types add."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type not in SUFFIXES:
            msg = f"{family.name}: no suffixes known for metric type {family.type!r}"
            raise AssertionError(msg)
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed in it)."""
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING_OR_COMMENT.sub(lambda m: "" if m[0][0] == "#" else '""', expr)
    text = _VARIABLE.sub(" ", text)
    text = _BRACES.sub("{}", text)
    text = _BRACKETS.sub("[]", text)
    text = _LABEL_LIST.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word, call = match[1], match[2]
        if call is None and word.lower() not in KEYWORDS:
            names.add(word)
    return names


def variable_query(query: str) -> str | None:
    """The PromQL in a Grafana Prometheus variable's query, None when it has none."""
    for form in (_LABEL_VALUES, _QUERY_RESULT):
        match = form.fullmatch(query)
        if match:
            return match[1]
    return None if _NO_METRIC_QUERY.match(query) else query


def _walk_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", ()))  # a collapsed row holds its panels


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression in a dashboard: panels' targets (rows included),
    annotations and template variables."""
    exprs = [
        target["expr"]
        for panel in _walk_panels(dashboard.get("panels", ()))
        for target in panel.get("targets", ())
        if "expr" in target
    ]
    exprs += [a["expr"] for a in dashboard.get("annotations", {}).get("list", ()) if "expr" in a]
    for variable in dashboard.get("templating", {}).get("list", ()):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        inner = variable_query(query)
        if inner is not None:
            exprs.append(inner)
    return exprs


def yaml_values(text: str, key: str) -> list[str]:
    """The values of every ``key:`` in YAML written as contrib's is: inline (quoted or
    not) or a ``|``/``>`` block. Commented-out keys are not read. (PyYAML is not a
    dependency; promtool checks the files' structure.)"""
    lines = text.splitlines()
    pattern = re.compile(rf"^(\s*)(?:-\s+)?{re.escape(key)}:\s*(.*)$")
    values = []
    i = 0
    while i < len(lines):
        match = pattern.match(lines[i])
        i += 1
        if not match:
            continue
        indent, value = len(match[1]), match[2].strip()
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
            ):
                block.append(lines[i])
                i += 1
            values.append("\n".join(block))
        elif len(value) > 1 and value[0] in "'\"" and value[-1] == value[0]:
            values.append(value[1:-1])
        else:
            values.append(value)
    return values


def alert_exprs() -> list[str]:
    """Every rule expression in alerts.yml."""
    return yaml_values(ALERTS.read_text(), "expr")


def unknown_metrics(exprs: Iterable[str], exported: frozenset[str]) -> dict[str, list[str]]:
    """Metric names the expressions use that neither the relay nor a scrape exports,
    each with the expressions using it."""
    unknown: dict[str, list[str]] = {}
    for expr in exprs:
        for name in sorted(metric_names(expr) - exported - SCRAPE_SERIES):
            unknown.setdefault(name, []).append(expr)
    return unknown


def _load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _rename(dashboard: Any, old: str, new: str) -> Any:
    """A copy of a dashboard with the metric ``old`` called ``new`` in every query."""
    word = re.compile(rf"(?<![\w:]){re.escape(old)}(?![\w:])")
    if isinstance(dashboard, dict):
        return {
            key: word.sub(new, value)
            if key in ("expr", "query", "definition") and isinstance(value, str)
            else _rename(value, old, new)
            for key, value in dashboard.items()
        }
    if isinstance(dashboard, list):
        return [_rename(item, old, new) for item in dashboard]
    return copy.copy(dashboard)


EXPORTED = exported_names()
DASHBOARD_METRICS = sorted(set().union(*map(metric_names, dashboard_exprs(_load_dashboard()))))
ALERT_METRICS = sorted(set().union(*map(metric_names, alert_exprs())))


# --- the metric name check itself --------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="aatrox-relay"} == 0', {"up"}),
        ("sum by (number, outcome) (rate(aatrox_relay_polls_total[5m]))",
         {"aatrox_relay_polls_total"}),
        ('histogram_quantile(0.99, sum by (le) (rate(x_bucket{webhook=~"$webhook"}'
         "[$__rate_interval])))", {"x_bucket"}),
        ("sum(rate(a[1m])) by (le) / on (job) group_left (number) b offset 15m", {"a", "b"}),
        ("a > bool 3 unless ignoring (outcome) b # c is a comment, d's too\nor e", {"a", "b", "e"}),
        ('{__name__="a", le=~"1e3|Inf"} and x:recorded:rate5m', {"a", "x:recorded:rate5m"}),
        ('max_over_time(a[${range}:1m]) * 1e3 + NaN - Inf', {"a"}),
    ],
)  # fmt: skip
def test_metric_names_finds_selectors_only(expr: str, names: set[str]) -> None:
    """Functions, aggregations, keywords, label names, numbers, durations, strings,
    comments and Grafana variables are not taken for metrics."""
    assert metric_names(expr) == names


def test_the_registry_is_really_collected() -> None:
    """The exported names hold the relay's own families with their suffixes and the
    process metrics, and nothing made up."""
    assert {
        "aatrox_relay_polls_total",
        "aatrox_relay_delivery_latency_seconds_bucket",
        "aatrox_relay_delivery_latency_seconds_count",
        "aatrox_relay_last_successful_poll_age_seconds",
        "process_start_time_seconds",
    } <= EXPORTED
    assert "aatrox_relay_polls" not in EXPORTED
    assert "aatrox_relay_delivery_latency_seconds" not in EXPORTED


# --- Grafana ---------------------------------------------------------------------------


def test_dashboard_queries_use_exported_metrics_only() -> None:
    """Every metric the dashboard queries (panels, rows, annotations, variables) is one
    the relay exports."""
    exprs = dashboard_exprs(_load_dashboard())
    assert len(exprs) > 20
    unknown = unknown_metrics(exprs, EXPORTED)
    assert not unknown, f"the relay exports no {', '.join(unknown)}: {unknown}"


@pytest.mark.parametrize("name", DASHBOARD_METRICS)
def test_dashboard_check_reports_a_metric_renamed_in_the_dashboard(name: str) -> None:
    """A dashboard with one metric renamed fails the check, naming it."""
    dashboard = _load_dashboard()
    before = set(unknown_metrics(dashboard_exprs(dashboard), EXPORTED))
    renamed = _rename(dashboard, name, name + "_renamed")
    after = set(unknown_metrics(dashboard_exprs(renamed), EXPORTED))
    assert after == (before - {name}) | {name + "_renamed"}


@pytest.mark.parametrize("name", sorted({*DASHBOARD_METRICS, *ALERT_METRICS} - SCRAPE_SERIES))
def test_checks_report_a_metric_renamed_in_the_relay(name: str) -> None:
    """Were the relay to export ``name`` under another name, the dashboard and the
    alerts using it would fail the check, naming it."""
    exported = (EXPORTED - {name}) | {name + "_renamed"}
    for used, exprs in (
        (DASHBOARD_METRICS, dashboard_exprs(_load_dashboard())),
        (ALERT_METRICS, alert_exprs()),
    ):
        before = set(unknown_metrics(exprs, EXPORTED))
        after = set(unknown_metrics(exprs, exported))
        assert after == before | ({name} if name in used else set())


def test_dashboard_is_importable() -> None:
    """Grafana can import it: a schema version, a Prometheus data source variable every
    panel and query uses, number and webhook variables from label_values, unique panel
    ids, and every variable a query uses defined."""
    dashboard = _load_dashboard()
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("number", "webhook"):
        query = variables[name]["query"]
        assert re.fullmatch(rf"label_values\(.+, {name}\)", query), query
    source = {"type": "prometheus", "uid": "${datasource}"}
    panels = list(_walk_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert any(panel.get("collapsed") for panel in panels if panel["type"] == "row")
    used = {
        next(group for group in match.groups() if group)
        for expr in dashboard_exprs(dashboard)
        for match in _VARIABLE.finditer(expr)
    }
    assert used - GRAFANA_VARIABLES <= set(variables)


# --- Prometheus --------------------------------------------------------------------------


def test_alert_rules_use_exported_metrics_only() -> None:
    """Every metric the alert rules query is one the relay exports (or Prometheus's
    ``up``), and every alert's expression is read."""
    exprs = alert_exprs()
    alerts = re.findall(r"^\s*- alert:", ALERTS.read_text(), re.M)
    assert len(exprs) == len(alerts) >= 7
    unknown = unknown_metrics(exprs, EXPORTED)
    assert not unknown, f"the relay exports no {', '.join(unknown)}: {unknown}"


def test_alert_tests_feed_exported_series() -> None:
    """The promtool unit tests feed series the relay exports, so they test the rules
    against what a scrape really holds."""
    series = yaml_values(ALERTS_TEST.read_text(), "series")
    assert series
    unknown = {s.split("{", 1)[0].strip() for s in series} - EXPORTED - SCRAPE_SERIES
    assert not unknown, f"the relay exports no {', '.join(sorted(unknown))}"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("RELAY_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is required (RELAY_REQUIRE_PROMTOOL=1) but not on the PATH")
        pytest.skip("promtool is not on the PATH (Debian: apt-get install prometheus)")
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_promtool_check_rules() -> None:
    """promtool finds the rules valid, as many as this test reads."""
    result = _run("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    """The alerts' unit tests pass: each alert fires when it should and not when healthy."""
    result = _run("test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL (checked by promtool as recording rules, with
    Grafana's variables filled in)."""
    fill = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
    exprs = [
        _VARIABLE.sub(lambda m: fill.get(next(g for g in m.groups() if g), ".*"), expr)
        for expr in dashboard_exprs(_load_dashboard())
    ]
    rules = [{"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
