"""The benchmark (``python -m bench``) runs end to end at a tiny scale."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.scenarios import SCENARIOS
from bench.stores import postgres_reachable

ROOT = Path(__file__).resolve().parent.parent
#: The budget scenarios have smoke tests of their own (their rows hold other numbers).
BUDGETED = ("conversations", "provider-limit")
PG_URL = os.environ.get("RELAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def test_every_scenario_produces_a_row_with_numbers(tmp_path: Path) -> None:
    """At a tiny scale every scenario yields a row of finite numbers, printed and written."""
    scenarios = [name for name in SCENARIOS if name not in BUDGETED]
    if postgres_reachable(PG_URL) is not None and os.environ.get("RELAY_REQUIRE_POSTGRES") != "1":
        scenarios.remove("scale-out")
    out, results = tmp_path / "benchmarks.md", tmp_path / "results.json"
    command = [sys.executable, "-m", "bench", "--scale", "0.005", "--seconds", "2", "--repeat", "1"]
    command += ["--out", str(out), "--json", str(results), "--postgres", PG_URL]
    for name in scenarios:
        command += ["--scenario", name]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(results.read_text())["rows"]
    assert {row["name"] for row in rows} == set(scenarios)
    for row in rows:
        assert set(row["values"]) == {"relay", "bare", "ratio"}
        assert all(math.isfinite(v) and v > 0 for v in row["values"].values()), row
        assert f"| {row['scenario']} " in done.stdout
    assert "| scenario " in out.read_text() and "python -m bench" in out.read_text()


def _tiny_row(tmp_path: Path, scenario: str) -> dict[str, Any]:
    """The one row of ``scenario`` run at a tiny scale."""
    results = tmp_path / "results.json"
    command = [sys.executable, "-m", "bench", "--scale", "0.005", "--seconds", "2", "--repeat", "1"]
    command += ["--json", str(results), "--scenario", scenario]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    rows: list[dict[str, Any]] = json.loads(results.read_text())["rows"]
    assert [row["name"] for row in rows] == [scenario]
    assert all(math.isfinite(v) and v >= 0 for v in rows[0]["values"].values()), rows
    assert f"| {rows[0]['scenario']} " in done.stdout
    return rows[0]


def test_the_conversations_scenario_compares_adaptive_with_fixed(tmp_path: Path) -> None:
    """A few numbers, two conversations: the row holds both p99s, the fixed one named."""
    row = _tiny_row(tmp_path, "conversations")
    assert row["bare"].startswith("fixed ")
    assert row["values"]["relay"] > 0


def test_the_provider_limit_scenario_reports_rate_429s_and_polled(tmp_path: Path) -> None:
    """A few numbers against a tiny per-token limit: the row gives the settled rate, the
    share of 429s and how many numbers were polled."""
    row = _tiny_row(tmp_path, "provider-limit")
    assert "429" in row["relay"] and " polled" in row["check"]
    assert row["values"]["bare"] == 1.0


def test_the_posts_microbenchmark_prints_a_row_of_numbers_per_rate() -> None:
    """``python -m bench.posts`` measures the bare and the relay's POST at each rate."""
    command = [sys.executable, "-m", "bench.posts", "--requests", "40", "--workers", "4"]
    command += ["--rate", "0", "--rate", "400"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and " ms, " in line]
    assert [row.split(" | ")[0] for row in rows] == ["| as fast as it goes", "| 400/s"]
    for row in rows:
        ratio = float(row.rstrip(" |").rsplit(" | ", 1)[1].rstrip("x"))
        assert math.isfinite(ratio) and ratio > 0, row
