"""The package's layout holds: the running relay never imports its own test peers, SQL
is written only in the store, and modules stay small or say why they are not."""

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


#: Outside these, no module builds SQL: it may parse a URL or name a database error.
SQL_HOMES = (RELAY / "store", RELAY / "migrations")
SQL_IMPORTS_ALLOWED = frozenset({"sqlalchemy.engine.make_url", "sqlalchemy.exc"})
#: "About 400 lines": a module longer than this says why at its top.
MAX_LINES = 450
#: How a long module's docstring begins its reason.
SIZE_REASON = "Over 400 lines:"


def _sqlalchemy_imports(source: str) -> list[tuple[int, str]]:
    """(line, name) of each SQLAlchemy name ``source`` imports that is not allowed."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            base = node.module or ""
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "sqlalchemy":
                continue
            if not any(name == ok or name.startswith(ok + ".") for ok in SQL_IMPORTS_ALLOWED):
                found.append((node.lineno, name))
    return found


def test_sql_lives_in_the_store() -> None:
    """Only relay/store (and the migrations) import SQLAlchemy to build statements."""
    found = [
        f"{path.relative_to(RELAY.parent)}:{line} {name}"
        for path in sorted(RELAY.rglob("*.py"))
        if not any(home in path.parents for home in SQL_HOMES)
        for line, name in _sqlalchemy_imports(path.read_text(encoding="utf-8"))
    ]
    assert found == []


@pytest.mark.parametrize(
    ("statement", "caught"),
    [
        ("import sqlalchemy as sa", True),
        ("from sqlalchemy import select", True),
        ("from sqlalchemy.dialects.sqlite import insert", True),
        ("from sqlalchemy.engine import Connection", True),
        ("from sqlalchemy.engine import make_url", False),
        ("from sqlalchemy.exc import ArgumentError", False),
        ("import httpx", False),
    ],
)
def test_every_sqlalchemy_import_is_seen(statement: str, caught: bool) -> None:
    """Statement-building imports of SQLAlchemy are found, at the top or inside a function;
    URL parsing and error classes are not."""
    source = f"{statement}\n\n\ndef f() -> None:\n    {statement}\n"
    assert bool(_sqlalchemy_imports(source)) is caught


def test_long_modules_say_why() -> None:
    """Every module over about 400 lines gives the reason at the top of its docstring."""
    unexplained = []
    for path in sorted(RELAY.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_LINES:
            doc = ast.get_docstring(ast.parse(source)) or ""
            if SIZE_REASON not in doc:
                unexplained.append(f"{path.relative_to(RELAY.parent)}: {source.count(chr(10))}")
    assert unexplained == []
