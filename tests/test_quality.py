"""The code stays ruff- and mypy --strict-clean: CI runs these with the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_is_clean() -> None:
    """ruff check and ruff format --check find nothing."""
    check = _run("ruff", "check", ".")
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = _run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict_is_clean() -> None:
    """mypy --strict (configured in pyproject.toml) finds nothing in relay/."""
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


STORE_CALLS = """\
from relay.store import AsyncStore
async def probe(store: AsyncStore) -> None:
    await store.call(store.sync.record_failure, "+61400000000", 3)
    await store.call(store.sync.claim, "hook")
    await store.call(store.sync.claim, "hook", 10)
    found: set[str] = await store.call(store.sync.known_numbers)
"""


def test_mypy_checks_every_store_call(tmp_path: Path) -> None:
    """A store call through AsyncStore with a wrong or missing argument fails mypy
    --strict (the store is typed end to end), and a right one passes."""
    probe = tmp_path / "probe.py"
    probe.write_text(STORE_CALLS)
    result = _run("mypy", "--strict", str(probe))
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["3", "4"], result.stdout
    assert 'incompatible type "int"; expected "str"' in errors[0]
    assert 'Missing positional argument "limit"' in errors[1]
