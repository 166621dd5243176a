"""systemd's notify protocol: READY=1, STATUS=, STOPPING=1, RELOADING=1 and the watchdog.

One datagram per message to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading
``@`` is the abstract namespace), as ``sd_notify(3)`` sends it, with the stdlib only.
Outside systemd there is no ``$NOTIFY_SOCKET`` and every call is a no-op.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from relay.logs import fields

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
#: The watchdog is fed this often, as a share of ``WatchdogSec=`` (sd_watchdog_enabled(3)).
WATCHDOG_SHARE = 0.5
#: Longest STATUS= text sent; systemd shows it in ``systemctl status``.
MAX_STATUS_CHARS = 200


def _address(path: str) -> str:
    """The socket address for ``$NOTIFY_SOCKET``: ``@name`` is the abstract ``\\0name``."""
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    msg = f"${NOTIFY_SOCKET_ENV} {path!r} is not an AF_UNIX socket path"
    raise OSError(errno.EAFNOSUPPORT, msg)


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``"READY=1"``, ``"STATUS=..."``; lines joined by newlines) to systemd.

    Returns False when there is no ``$NOTIFY_SOCKET`` (not run by systemd, or not
    ``Type=notify``); raises :class:`OSError` when the socket cannot be reached.
    """
    env = os.environ if environ is None else environ
    path = env.get(NOTIFY_SOCKET_ENV, "")
    if not path:
        return False
    if not message:
        msg = "an sd_notify message cannot be empty"
        raise ValueError(msg)
    data = message.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sent = sock.sendto(data, _address(path))
    if sent != len(data):
        msg = f"sd_notify sent {sent} of {len(data)} bytes"
        raise OSError(errno.EMSGSIZE, msg)
    return True


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC``.

    None when systemd runs no watchdog for this process: no or a malformed
    ``$WATCHDOG_USEC``, or a ``$WATCHDOG_PID`` that is not our pid.
    """
    env = os.environ if environ is None else environ
    usec = env.get(WATCHDOG_USEC_ENV, "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get(WATCHDOG_PID_ENV)
    if pid is not None and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 * WATCHDOG_SHARE


def _one_line(text: str) -> str:
    """``text`` fit for STATUS=: one line (a newline would start another assignment), short."""
    return " ".join(text.split())[:MAX_STATUS_CHARS]


def _monotonic_usec() -> int:
    return time.monotonic_ns() // 1000


class Notifier:
    """The relay's side of ``Type=notify``: a no-op outside systemd, never raises.

    A failure to reach systemd is logged once (``relay.systemd.notify_failed``) and the
    call returns False: a relay that cannot say it is alive is killed by the watchdog,
    which is the right outcome, but it must not crash on its own account.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        monotonic_usec: Callable[[], int] = _monotonic_usec,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        self._environ = env
        self._monotonic_usec = monotonic_usec
        self._failed = False
        #: Whether systemd listens (``$NOTIFY_SOCKET`` is set).
        self.enabled = bool(env.get(NOTIFY_SOCKET_ENV))
        #: Seconds between WATCHDOG=1 pings, or None without a watchdog.
        self.watchdog_period = watchdog_period(env) if self.enabled else None

    def _send(self, *lines: str) -> bool:
        if not self.enabled:
            return False
        try:
            return notify("\n".join(lines), environ=self._environ)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("relay.systemd.notify_failed", extra=fields(error=str(exc)))
            return False

    def ready(self, status: str | None = None) -> bool:
        """READY=1: config loaded, store migrated, scheduler running; also after a reload."""
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self._send(*lines)

    def status(self, text: str) -> bool:
        """STATUS=: a one-line summary for ``systemctl status``."""
        return self._send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun."""
        lines = ["STOPPING=1"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self._send(*lines)

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC=: a reload (SIGHUP) has begun; send ready() after."""
        return self._send("RELOADING=1", f"MONOTONIC_USEC={self._monotonic_usec()}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the loop is alive; send every :attr:`watchdog_period` seconds."""
        if self.watchdog_period is None:
            return False
        return self._send("WATCHDOG=1")

    async def run_watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping the watchdog every :attr:`watchdog_period` while ``healthy()``; until cancelled.

        Returns at once when there is no watchdog. Run it as a task on the relay's
        event loop: a blocked loop or an unhealthy relay stops the pings and systemd
        restarts the service.
        """
        period = self.watchdog_period
        if period is None:
            return
        while True:
            if healthy():
                self.watchdog()
            await asyncio.sleep(period)
