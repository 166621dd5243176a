"""Alembic migrations for the relay's store; applied by :func:`relay.store.Store.migrate`.

:data:`HEAD` names the newest revision in ``versions/``. A store already there is
left alone without loading Alembic at all (importing it costs a tenth of a second of
every start); bump :data:`HEAD` with every new migration (``tests/test_migrate.py``
fails until you do).

On PostgreSQL, relays started together upgrade one after the other: each takes
:data:`LOCK_KEY` with ``pg_advisory_xact_lock`` in the transaction that upgrades,
and the ones that waited find the schema at head and have nothing left to do.
SQLite needs no such lock: one relay at a time holds its instance lock.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from relay.logs import fields

log = logging.getLogger("relay.store")

#: The newest revision in ``versions/``: what a store migrated by this relay is at.
HEAD = "0009"
#: Where Alembic finds ``env.py`` and ``versions/``.
SCRIPT_LOCATION = Path(__file__).parent
#: Alembic's table holding the revision a store is at.
VERSION_TABLE = "alembic_version"
#: The database-wide advisory lock held while migrating: the bytes ``b"aatrxmig"`` as a
#: bigint (in ``pg_locks``: classid 0x61617472, objid 0x786d6967).
LOCK_KEY = int.from_bytes(b"aatrxmig", "big")


def revision(conn: Connection) -> str | None:
    """The revision the store at ``conn`` is at; None for a store never migrated."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    found = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return None if found is None else str(found)


def upgrade(conn: Connection) -> bool:
    """Bring the store at ``conn`` to :data:`HEAD`, in the transaction ``conn`` is in.

    Returns whether anything was applied. On PostgreSQL the upgrade holds
    :data:`LOCK_KEY` until that transaction ends.
    """
    before = revision(conn)
    if before == HEAD:
        return False
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_KEY)))
        before = revision(conn)  # a relay that held the lock may have just migrated it
        if before == HEAD:
            return False
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")
    after = revision(conn)
    if after == before:
        return False
    log.info(
        "relay.store.migrated",
        extra=fields(from_revision=before or "none", to_revision=after or "none"),
    )
    return True
