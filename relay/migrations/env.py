"""Alembic environment: the relay passes its own connection in ``config.attributes``.

Run from a shell (``alembic -x url=... upgrade head``) it connects by itself and, on
PostgreSQL, takes the relays' migration lock (:data:`relay.migrations.LOCK_KEY`) so that
it never migrates at the same time as a relay starting up.

The target metadata is :data:`relay.store.schema.metadata`, so ``alembic -x url=...
revision --autogenerate`` (or ``check``) compares the store with it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlalchemy import create_engine

from relay.migrations import LOCK_KEY
from relay.store.schema import metadata

connection = context.config.attributes.get("connection")


def _run(conn: sa.Connection, *, lock: bool = False) -> None:
    context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        if lock and conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_KEY)))
        context.run_migrations()


if connection is not None:  # relay.migrations.upgrade holds the lock already
    _run(connection)
else:  # `alembic -x url=... upgrade head` from a shell
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        msg = "pass the store URL with: alembic -x url=sqlite:///relay.db upgrade head"
        raise SystemExit(msg)
    with create_engine(url).connect() as conn:
        _run(conn, lock=True)
        conn.commit()
