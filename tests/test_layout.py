"""The package's layout holds: the running relay never imports its own test peers."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parent.parent / "relay"
TESTING = "relay.testing"
#: The one production module that may import relay.testing, and only inside a function
#: (``aatrox-relay simulate`` and ``aatrox-relay demo``).
LAZY_ALLOWED = RELAY / "cli.py"


def _imported(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """The absolute names ``node`` imports (for ``from a import b``: ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _testing_imports(source: str, importer: str, is_package: bool) -> Iterator[tuple[int, bool]]:
    """(line, inside a function) of each import of relay.testing in ``source``."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[int, bool]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = _imported(node, importer, is_package)
            if any(name == TESTING or name.startswith(TESTING + ".") for name in names):
                yield node.lineno, in_function
        for child in ast.iter_child_nodes(node):
            yield from walk(child, in_function or isinstance(node, functions))

    yield from walk(ast.parse(source), False)


def _violations() -> list[str]:
    found = []
    for path in sorted(RELAY.rglob("*.py")):
        if RELAY / "testing" in path.parents:
            continue
        parts = path.relative_to(RELAY.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        importer = ".".join(parts[:-1] if is_package else parts)
        source = path.read_text(encoding="utf-8")
        for line, in_function in _testing_imports(source, importer, is_package):
            if not (path == LAZY_ALLOWED and in_function):
                found.append(f"{path.relative_to(RELAY.parent)}:{line}")
    return found


def test_production_modules_do_not_import_relay_testing() -> None:
    """No module outside relay/testing imports it, bar cli.py's lazy simulate/demo imports."""
    assert _violations() == []


@pytest.mark.parametrize(
    ("statement", "caught"),
    [
        ("import relay.testing.simulator", True),
        ("from relay.testing.clock import FakeClock", True),
        ("from relay import testing", True),
        ("from .testing import demo", True),
        ("from . import testing", True),
        ("from relay.clock import SystemClock", False),
        ("import relay.testingish", False),
    ],
)
def test_every_spelling_of_the_import_is_seen(statement: str, caught: bool) -> None:
    """Plain, from, relative and package imports of relay.testing are found, lazy or not."""
    source = f"{statement}\n\n\ndef f() -> None:\n    {statement}\n"
    found = list(_testing_imports(source, "relay.poller", is_package=False))
    assert found == ([(1, False), (5, True)] if caught else [])
