"""The store for the event loop: each call runs on one store thread, with a timeout."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import sqlalchemy as sa

from relay.errors import StoreError
from relay.store.engine import one_line

if TYPE_CHECKING:
    from relay.store import Store

#: How long a store call may take before the caller gives up on it.
STORE_TIMEOUT = 30.0

P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    """The store for the event loop: ``await store.call(store.sync.record, number, new,
    targets)`` runs ``record`` on the store thread, its arguments checked by mypy.

    Calls run one at a time, in the order made. A call that takes longer than
    ``timeout`` raises StoreError in its caller, but a thread cannot be stopped: the
    statement keeps running on the store thread, and every later call queues behind
    it until it ends (or the database's own timeouts end it). So a store that hangs
    shows up as every caller's timeout, not as a pile of threads.
    """

    def __init__(self, store: Store, *, timeout: float = STORE_TIMEOUT) -> None:
        self.sync = store
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-store")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the store thread; StoreError when it fails or is slow."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            msg = f"store call {_name(fn)} took longer than {self.timeout:g}s"
            raise StoreError(msg) from None
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"store call {_name(fn)} failed: {one_line(exc)}") from exc

    def close(self) -> None:
        """Wait for the store thread's current call, then release the store."""
        self._executor.shutdown(wait=True)
        self.sync.close()


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
