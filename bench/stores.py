"""Stores for the runs: configs, a SQLite store filled with history, PostgreSQL databases.

The schema is always made by the relay itself (``python -m relay poll-once`` on a config
without numbers applies its migrations), so the bench follows the relay's migrations.
"""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from bench.procs import BenchError, Env, Peers

WEBHOOK_NAME = "bench"
#: History messages per number in a filled store.
HISTORY_PER_NUMBER = 1000
#: History is spread over this many days before now (well within the 30-day retention).
HISTORY_DAYS = 20
HISTORY_SENDER = "+61412345678"
#: API URL, token, webhook URL and secret of a config that reaches nothing.
UNREACHABLE = (
    "http://127.0.0.1:9",
    "unused",
    "http://127.0.0.1:9/",
    "whsec_" + base64.b64encode(b"unused-unused-unused").decode(),
)


def numbers(count: int, *, prefix: str = "+614") -> list[str]:
    """``count`` distinct Australian mobile numbers in E.164."""
    return [f"{prefix}{index:08d}" for index in range(1, count + 1)]


def write_config(
    path: Path,
    peers: Peers | None,
    store_url: str,
    polled: Sequence[str],
    *,
    interval: float,
    backfill: str = "all",
    jitter: float = 0.0,
    poll: str = "",
) -> Path:
    """A relay config polling ``polled`` on the peers' simulator, delivering to their sink.

    Without peers, the API and the webhook are unreachable placeholders (for poll-once).
    ``poll`` adds lines to ``[poll]`` (``min_interval = "1s"``...).
    """
    api_url, token, hook_url, secret = UNREACHABLE
    if peers is not None:
        api_url, token, hook_url, secret = peers.api_url, peers.token, peers.hook_url, peers.secret
    entries = "".join(f'\n[[numbers]]\nnumber = "{n}"\n' for n in polled)
    path.write_text(
        f"""# Written by the bench.
[api]
base_url = "{api_url}"
token = "{token}"
timeout = "5s"

[store]
url = "{store_url}"

[poll]
interval = "{interval:g}s"
jitter = "{jitter:g}s"
backfill = "{backfill}"
{poll}{entries}
[[webhooks]]
name = "{WEBHOOK_NAME}"
url = "{hook_url}"
secret = "{secret}"
timeout = "5s"
retry_initial = "1s"
retry_max = "5s"

[log]
level = "info"
""",
        encoding="utf-8",
    )
    return path


def migrate(env: Env, store_url: str) -> None:
    """Create the relay's schema in ``store_url`` the way the relay does: by starting it."""
    config = write_config(
        env.workdir / f"migrate-{uuid.uuid4().hex[:8]}.toml", None, store_url, [], interval=1.0
    )
    done = subprocess.run(
        [sys.executable, "-m", "relay", "poll-once", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=env.cwd,
        env=env.environ(),
        timeout=120,
    )
    if done.returncode != 0:
        msg = f"poll-once could not create the schema: {(done.stderr or done.stdout).strip()}"
        raise BenchError(msg)


def fill_sqlite(path: Path, count: int) -> float:
    """Add ``count`` delivered history messages to the SQLite store at ``path``; seconds taken.

    The history is on numbers of its own (``+6149...``, 1,000 messages each, each number
    marked as polled), every message with one delivered delivery, received over the last
    20 days: what a store holds after weeks of traffic.
    """
    started = time.monotonic()
    now = datetime.now(timezone.utc)
    base = int((now - timedelta(days=HISTORY_DAYS)).timestamp())
    step = HISTORY_DAYS * 86400 / max(count, 1)
    stamp = now.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    owners = -(-count // HISTORY_PER_NUMBER)
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        first = db.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0] + 1
        with db:
            db.executemany(
                "INSERT INTO numbers (number, first_polled_at, last_poll_at, last_success_at,"
                " consecutive_failures) VALUES (?, ?, ?, ?, 0)",
                [(n, stamp, stamp, stamp) for n in numbers(owners, prefix="+6149")],
            )
            series = "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?)"
            when = "datetime(? + CAST(i * ? AS INTEGER), 'unixepoch') || '.000000'"
            owner = f"printf('+6149%08d', i / {HISTORY_PER_NUMBER} + 1)"
            db.execute(
                f"{series} INSERT INTO messages (id, number, provider_id, sender, recipient,"
                f" text, received_at, seen_at) SELECT ? + i, {owner}, 'h' || i, ?, {owner},"
                f" 'history message ' || i, {when}, {when} FROM c",
                (count - 1, first, HISTORY_SENDER, base, step, base, step),
            )
            db.execute(
                "INSERT INTO deliveries (message_id, webhook, webhook_id, state, attempts,"
                " queued_at, next_attempt_at, last_attempt_at, delivered_at, last_status)"
                " SELECT id, ?, 'msg_' || substr(hex(randomblob(16)), 1, 32), 'delivered', 1,"
                " seen_at, seen_at, seen_at, seen_at, 204 FROM messages WHERE id >= ?",
                (WEBHOOK_NAME, first),
            )
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return time.monotonic() - started


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database, created from ``admin_url``'s server and dropped after."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield (
                sa.engine.make_url(admin_url)
                .set(database=name)
                .render_as_string(hide_password=False)
            )
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def postgres_reachable(admin_url: str) -> str | None:
    """None when PostgreSQL answers at ``admin_url``; else why not, in one line."""
    try:
        engine = sa.create_engine(admin_url)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        return str(exc).strip().splitlines()[0][:200]
    return None
