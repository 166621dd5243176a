"""The results: the table, the machine they were measured on, docs/benchmarks.md and JSON."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import asdict
from pathlib import Path

from bench.procs import ROOT
from bench.scenarios import Report, Row

HEADERS = ("scenario", "relay", "bare (or baseline)", "ratio / target", "result")
#: docs/benchmarks.md: what lies between these markers is replaced on each --out run.
BEGIN = "<!-- bench:results -->"
END = "<!-- /bench:results -->"


def machine() -> dict[str, str]:
    """nproc, CPU model, RAM, Python, kernel."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "ram": ram,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def revision(relay_path: Path | None = None) -> str:
    """The relay measured: its git commit, and whether relay/ had uncommitted changes."""
    tree = relay_path or ROOT
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", "relay"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"relay from {tree} (not a git checkout)"
    return f"relay at {head}" + (" with uncommitted changes in relay/" if dirty else "")


def table(rows: list[Row]) -> str:
    """A Markdown table, columns padded so it also reads as plain text."""
    cells = [list(HEADERS)] + [
        [row.scenario, row.relay, row.bare, row.check, "pass" if row.passed else "FAIL"]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def markdown(report: Report, command: str, relay: str) -> str:
    """The generated part of docs/benchmarks.md, markers included."""
    box = machine()
    notes = "\n".join(f"- {note}" for note in report.notes)
    return f"""{BEGIN}
## Results

Measured on {box["cpus"]} CPUs ({box["cpu"]}), {box["ram"]} RAM, Python {box["python"]},
{box["os"]}; {relay}. Reproduce with:

```sh
{command}
```

{table(report.rows)}

{notes}
{END}"""


def write_markdown(path: Path, report: Report, command: str, relay: str) -> None:
    """Replace the results between the markers of ``path`` (or write them as a new file)."""
    generated = markdown(report, command, relay)
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = ""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if pattern.search(current):
        text = pattern.sub(lambda _m: generated, current)
    else:
        text = (current.rstrip() + "\n\n" if current else "# Benchmarks\n\n") + generated + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_json(path: Path, report: Report, command: str, relay: str) -> None:
    """The rows with their numbers, the notes, the machine, the relay and the command."""
    doc = {
        "command": command,
        "relay": relay,
        "machine": machine(),
        "rows": [asdict(row) for row in report.rows],
        "notes": report.notes,
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
