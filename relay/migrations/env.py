"""Alembic environment: the relay passes its own connection in ``config.attributes``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

connection = context.config.attributes.get("connection")


def _run(conn: object) -> None:
    context.configure(connection=conn, render_as_batch=True)  # type: ignore[arg-type]
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:  # `alembic -x url=... upgrade head` from a shell
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        msg = "pass the store URL with: alembic -x url=sqlite:///relay.db upgrade head"
        raise SystemExit(msg)
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
