"""Helpers shared by the end-to-end tests: configs for a relay pointed at loopback peers."""

from __future__ import annotations

import base64
from pathlib import Path

from relay.config import (
    ApiConfig,
    Backfill,
    Config,
    NumberConfig,
    PollConfig,
    RunConfig,
    StoreConfig,
    TokenSource,
    WebhookConfig,
)

TOKEN = "test-token-5f2c"
KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NUMBERS = ("+61400000001", "+61400000002")
SENDER = "+61412345678"


def relay_config(
    api_url: str,
    hook_url: str,
    store_url: str,
    *,
    numbers: tuple[str, ...] = NUMBERS,
    interval: float = 0.2,
    backfill: Backfill | None = None,
    retention: float = 30 * 86400.0,
    retry_initial: float = 0.2,
    retry_max: float = 1.0,
) -> Config:
    """A config for a fast-polling relay against the simulator and one receiver."""
    return Config(
        api=ApiConfig(
            token_source=TokenSource("inline", TOKEN), token=TOKEN, base_url=api_url, timeout=2.0
        ),
        store=StoreConfig(url=store_url, retention=retention),
        poll=PollConfig(interval=interval, jitter=0.0, backfill=backfill or Backfill("all")),
        numbers=tuple(NumberConfig(n, ("hook",), interval) for n in numbers),
        run=RunConfig(shutdown_timeout=2.0),
        webhooks=(
            WebhookConfig(
                "hook", hook_url, KEY, timeout=2.0, retry_initial=retry_initial, retry_max=retry_max
            ),
        ),
    )


def write_config(
    path: Path,
    api_url: str,
    hook_url: str,
    store_url: str,
    *,
    extra: str = "",
    interval: str = "200ms",
) -> Path:
    """The same kind of config as TOML, for subprocess tests of the real command."""
    numbers = "".join(f'\n[[numbers]]\nnumber = "{n}"\n' for n in NUMBERS)
    path.write_text(
        f"""
[api]
base_url = "{api_url}"
token = "{TOKEN}"
timeout = "2s"

[store]
url = "{store_url}"

[poll]
interval = "{interval}"
jitter = 0
backfill = "all"
{numbers}
[[webhooks]]
name = "hook"
url = "{hook_url}"
secret = "{SECRET}"
timeout = "2s"
retry_initial = "200ms"
retry_max = "1s"
{extra}
""",
        encoding="utf-8",
    )
    return path
