"""The benchmark (``python -m bench``) runs end to end at a tiny scale."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from bench.scenarios import SCENARIOS
from bench.stores import postgres_reachable

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("RELAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def test_every_scenario_produces_a_row_with_numbers(tmp_path: Path) -> None:
    """At a tiny scale every scenario yields a row of finite numbers, printed and written."""
    scenarios = list(SCENARIOS)
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
