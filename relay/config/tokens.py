"""Reading the API token from its file at run time: at start and again after a 401."""

from __future__ import annotations

from pathlib import Path

from relay.errors import ConfigError


def read_token_file(path: str) -> str:
    """The stripped contents of the token file at ``path``.

    Raises :class:`ConfigError` naming the file when it cannot be read, is not UTF-8
    text or is empty.
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        msg = f"api.token_file: cannot read {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    except UnicodeDecodeError:
        msg = f"api.token_file: {path} is not UTF-8 text"
        raise ConfigError(msg) from None
    if not token:
        msg = f"api.token_file: {path} is empty"
        raise ConfigError(msg)
    return token
