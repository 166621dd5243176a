"""relay/store/schema.py declares what the migrations build: Alembic's own comparison of its
metadata with a store migrated from empty finds nothing, on SQLite and on PostgreSQL, so
the models and the migrations cannot drift apart (issue 12)."""

from __future__ import annotations

import pprint
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from relay.clock import SystemClock
from relay.store import Store
from relay.store.schema import metadata

#: What autogenerate compares beyond tables, columns, nullability, indexes and constraints.
#: Both compare cleanly on both backends (the UtcDateTime decorator and SQLite's types
#: included), so no difference is excused.
OPTIONS = {"compare_type": True, "compare_server_default": True}


@pytest.fixture
def migrated(store_url: str) -> Iterator[MigrationContext]:
    """Alembic's view of a store migrated from empty: a fresh SQLite file or PostgreSQL schema."""
    store = Store.open(store_url, SystemClock())
    try:
        with store.engine.connect() as conn:
            yield MigrationContext.configure(conn, opts=OPTIONS)
    finally:
        store.close()


def summary(diffs: list[Any]) -> list[tuple[str, str]]:
    """Each of autogenerate's differences as (operation, what it names), e.g.
    ``("remove_index", "ix_deliveries_due")`` or ``("modify_type", "deliveries.webhook")``."""
    found: list[tuple[str, str]] = []
    for diff in diffs:
        if isinstance(diff, list):  # one column's modifications come as a list of them
            found.extend(summary(diff))
            continue
        op, *rest = diff
        if op.startswith("modify_"):  # (op, schema, table, column, existing, old, new)
            found.append((op, f"{rest[1]}.{rest[2]}"))
        elif op in ("add_column", "remove_column"):  # (op, schema, table, column)
            found.append((op, f"{rest[1]}.{rest[2].name}"))
        elif isinstance(rest[0], sa.ForeignKeyConstraint):  # named on PostgreSQL only
            fk = rest[0]
            target = fk.elements[0].target_fullname
            found.append((op, f"{fk.table.name}.{','.join(fk.column_keys)} -> {target}"))
        else:  # (op, the table, index or constraint)
            found.append((op, str(rest[0].name)))
    return found


def differences(context: MigrationContext, target: sa.MetaData = metadata) -> list[Any]:
    """What ``alembic revision --autogenerate`` would do to bring the store to ``target``."""
    diffs: list[Any] = compare_metadata(context, target)
    return diffs


def edited(edit: Callable[[sa.MetaData], None]) -> sa.MetaData:
    """A copy of the schema's metadata, changed by ``edit``."""
    copy = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(copy)
    edit(copy)
    return copy


def test_the_metadata_matches_a_store_migrated_from_empty(migrated: MigrationContext) -> None:
    """Tables, columns, types, nullability, server defaults, indexes, unique constraints and
    foreign keys: autogenerate finds nothing to change."""
    diffs = differences(migrated)
    assert not diffs, (
        "relay/store/schema.py and relay/migrations/versions/ differ; autogenerate would do:\n"
        + "\n".join(f"  {op} {what}" for op, what in summary(diffs))
        + "\nin full:\n"
        + pprint.pformat(diffs, width=100)
    )


def test_no_index_is_partial() -> None:
    """Autogenerate does not compare an index's ``WHERE`` (sqlite_where, postgresql_where):
    the comparison above cannot vouch for one, so a partial index needs a check of its own
    before it is declared here (none of the migrations makes one)."""
    partial = [
        index.name
        for table in metadata.sorted_tables
        for index in table.indexes
        for dialect in ("sqlite", "postgresql")
        if index.dialect_options[dialect]["where"] is not None
    ]
    assert partial == []


def without(name: str) -> Callable[[sa.MetaData], None]:
    """An edit that takes the index or constraint called ``name`` out of the metadata."""

    def edit(copy: sa.MetaData) -> None:
        for table in copy.tables.values():
            table.indexes = {i for i in table.indexes if i.name != name}
            table.constraints = {c for c in table.constraints if c.name != name}

    return edit


def test_every_index_and_unique_constraint_is_compared(migrated: MigrationContext) -> None:
    """Taking any one index or unique constraint out of the metadata is a difference that
    names it: the comparison above would catch a declaration going missing."""
    declared = {
        str(index.name): "remove_index"
        for table in metadata.sorted_tables
        for index in table.indexes
    } | {
        str(constraint.name): "remove_constraint"
        for table in metadata.sorted_tables
        for constraint in table.constraints
        if isinstance(constraint, sa.UniqueConstraint)
    }
    assert {
        "ix_deliveries_claimed_by",
        "ix_deliveries_due",
        "ix_messages_received_at",
        "ix_outbound_due",
        "uq_deliveries_message_webhook",
        "uq_messages_number_provider_id",
        "uq_outbound_delivery_part",
    } <= set(declared)
    missed = {
        name: found
        for name, op in declared.items()
        if (found := summary(differences(migrated, edited(without(name))))) != [(op, name)]
    }
    assert missed == {}


def test_an_index_the_migrations_lack_is_found(migrated: MigrationContext) -> None:
    """An index declared in the metadata but missing from the migrated store is named too."""
    conn = migrated.connection
    assert conn is not None
    conn.execute(sa.text("DROP INDEX ix_deliveries_claimed_by"))
    assert summary(differences(migrated)) == [("add_index", "ix_deliveries_claimed_by")]


def _replace_index(copy: sa.MetaData, table: str, name: str, *columns: str, **kw: Any) -> None:
    """Declare index ``name`` of ``table`` over ``columns`` instead."""
    target = copy.tables[table]
    target.indexes = {i for i in target.indexes if i.name != name}
    sa.Index(name, *(target.c[c] for c in columns), **kw)


def _reorder_deliveries_due(copy: sa.MetaData) -> None:
    """ix_deliveries_due with its first two columns swapped."""
    _replace_index(copy, "deliveries", "ix_deliveries_due", "state", "webhook", "next_attempt_at")


def _unique_received_at(copy: sa.MetaData) -> None:
    """ix_messages_received_at made unique."""
    _replace_index(copy, "messages", "ix_messages_received_at", "received_at", unique=True)


def _set_null_deliveries(copy: sa.MetaData) -> None:
    """deliveries.message_id set to NULL, not cascaded, when its message goes."""
    (fk,) = copy.tables["deliveries"].c.message_id.foreign_keys
    assert fk.constraint is not None
    fk.constraint.ondelete = "SET NULL"


def _retype_webhook(copy: sa.MetaData) -> None:
    """deliveries.webhook half as long."""
    copy.tables["deliveries"].append_column(
        sa.Column("webhook", sa.String(32), nullable=False), replace_existing=True
    )


def _redefault_gaps(copy: sa.MetaData) -> None:
    """numbers.gaps defaulting to 1."""
    copy.tables["numbers"].append_column(
        sa.Column("gaps", sa.Integer(), nullable=False, server_default="1"), replace_existing=True
    )


def _nullable_sender(copy: sa.MetaData) -> None:
    """messages.sender nullable."""
    copy.tables["messages"].append_column(
        sa.Column("sender", sa.String(32), nullable=True), replace_existing=True
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            _reorder_deliveries_due,
            [("remove_index", "ix_deliveries_due"), ("add_index", "ix_deliveries_due")],
        ),
        (
            _unique_received_at,
            [("remove_index", "ix_messages_received_at"), ("add_index", "ix_messages_received_at")],
        ),
        (
            _set_null_deliveries,
            [
                ("remove_fk", "deliveries.message_id -> messages.id"),
                ("add_fk", "deliveries.message_id -> messages.id"),
            ],
        ),
        (_retype_webhook, [("modify_type", "deliveries.webhook")]),
        (_redefault_gaps, [("modify_default", "numbers.gaps")]),
        (_nullable_sender, [("modify_nullable", "messages.sender")]),
    ],
)
def test_drift_is_found(
    migrated: MigrationContext,
    edit: Callable[[sa.MetaData], None],
    expected: list[tuple[str, str]],
) -> None:
    """An index's column order and uniqueness, a foreign key's ON DELETE, a column's type,
    server default and nullability: each is compared, on both backends."""
    assert summary(differences(migrated, edited(edit))) == expected
