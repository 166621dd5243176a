"""Connecting to the store: the engine for a URL, and the private files of a SQLite store."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from relay.errors import StoreError
from relay.logs import fields

#: The mode of a SQLite store's files (the database, its ``-wal`` and ``-shm``, the
#: instance lock): message texts and phone numbers are for the relay's user alone.
PRIVATE_FILE_MODE = 0o600
#: Files SQLite keeps beside a database (WAL, shared memory, rollback journal); it
#: creates them with the database file's own mode, but older relays left them ``0644``.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


log = logging.getLogger("relay.store")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other engines and in-memory databases."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.query.get("uri") == "true":  # a sqlite3 URI ("file:...?mode=ro"): not a path
        return None
    return Path(parsed.database)


def private_file(path: Path, *, create: bool) -> None:
    """Make ``path`` readable by its owner alone: create it ``0600`` (when ``create``
    and it is missing), or tighten an existing one with a wider mode, with the warning
    ``relay.store.permissions_tightened`` (``relay.store.permissions_open`` when it cannot
    be changed: the file belongs to another user).

    OSError when it cannot be created.
    """
    if create:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
        except FileExistsError:
            pass
        else:
            return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if not mode & ~PRIVATE_FILE_MODE:
        return
    try:
        os.chmod(path, mode & PRIVATE_FILE_MODE)
    except OSError as exc:
        log.warning(
            "relay.store.permissions_open",
            extra=fields(path=str(path), mode=f"{mode:04o}", error=exc.strerror or str(exc)),
        )
    else:
        log.warning(
            "relay.store.permissions_tightened",
            extra=fields(path=str(path), was=f"{mode:04o}", now=f"{mode & PRIVATE_FILE_MODE:04o}"),
        )


def private_sqlite_files(db: Path) -> None:
    """Create the SQLite database ``db`` ``0600`` before SQLite does (its ``-wal`` and
    ``-shm`` then follow its mode), and tighten it and any of those left wider.

    StoreError naming ``store.url`` when the file cannot be created.
    """
    try:
        private_file(db, create=True)
    except OSError as exc:
        msg = f"store.url: cannot create {db}: {exc.strerror or exc}"
        raise StoreError(msg) from None
    for suffix in SQLITE_SIDE_FILES:
        private_file(db.with_name(db.name + suffix), create=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def shown_url(url: str) -> str:
    """A store URL fit to print: its password, if any, replaced by ``***``."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def create_engine(url: str, *, connect_timeout: int | None = None) -> Engine:
    """An engine for ``url``, tuned for the relay (WAL and foreign keys on SQLite).

    ``postgresql://`` and ``postgres://`` mean psycopg 3, the driver the relay ships with.
    ``connect_timeout`` (whole seconds) bounds how long connecting to PostgreSQL may take.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    sqlite = url.startswith("sqlite")
    connect_args: dict[str, Any] = {}
    if connect_timeout is not None and not sqlite:
        connect_args["connect_timeout"] = connect_timeout
    try:
        engine = sa.create_engine(url, pool_pre_ping=not sqlite, connect_args=connect_args)
    except (sa.exc.ArgumentError, ImportError) as exc:
        msg = f"store.url: cannot use {sa.engine.make_url(url).render_as_string()}: {exc}"
        raise StoreError(msg) from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def one_line(exc: BaseException) -> str:
    """A database error's first line, without SQL or parameters (they may hold message text)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}"[:300]
