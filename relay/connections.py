"""HTTP clients of one connection each: one per request in flight, at most ``limit``.

httpx's pool (httpcore's) suits many requests sharing a few connections. The relay's
pattern, a fixed number of requests in flight that start and end all the time, costs it
twice over (measured in a 10,000-message burst, docs/benchmarks.md):

- requests that start in the same turn of the event loop are all handed the same idle
  connection (it is still idle until the first of them uses it); all but one find it
  taken and queue again (``ConnectionNotAvailable``): 15,369 such retries for 12,037
  requests, each a scan of the pool and one more turn of the loop;
- at every request and every answer the pool asks each idle connection whether the
  server closed it (``has_expired``: through anyio's extra attributes, a
  ``getpeername`` and a ``poll`` system call each).

A client of one connection, used by one request at a time, has neither cost: its pool
holds that request only. It keeps its connection alive for the next request that takes
it. Beyond ``limit`` requests a request waits for a client as it would for a pooled
connection, and fails with :class:`httpx.PoolTimeout` after ``wait`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

import httpx

from relay.clock import within


class Connections:
    """Up to ``limit`` single-connection clients made by ``make``, lent one per request."""

    def __init__(self, limit: int, make: Callable[[], httpx.AsyncClient], wait: float) -> None:
        self.limit = max(limit, 1)
        self._make = make
        self._wait = wait
        #: Every client made (to close them, and to change their headers).
        self.clients: list[httpx.AsyncClient] = []
        #: Clients with no request in flight, the one used last at the end.
        self._idle: list[httpx.AsyncClient] = []
        self._waiters: deque[asyncio.Future[httpx.AsyncClient]] = deque()

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one request, its own until the block ends."""
        client = await self._take()
        try:
            yield client
        finally:
            self._give(client)

    async def _take(self) -> httpx.AsyncClient:
        if self._idle:
            return self._idle.pop()  # the last used: its connection is the likeliest alive
        if len(self.clients) < self.limit:
            client = self._make()
            self.clients.append(client)
            return client
        future: asyncio.Future[httpx.AsyncClient] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            return await within(self._wait, _result(future))
        except BaseException as exc:
            if future.done() and not future.cancelled():
                self._give(future.result())  # handed over as this request gave up: pass it on
            else:
                future.cancel()
                self._waiters.remove(future)
            if isinstance(exc, asyncio.TimeoutError):
                msg = f"no connection free within {self._wait:g}s ({self.limit} in use)"
                raise httpx.PoolTimeout(msg) from None
            raise

    def _give(self, client: httpx.AsyncClient) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(client)
                return
        self._idle.append(client)

    async def aclose(self) -> None:
        """Close every client's connection."""
        clients, self.clients, self._idle = self.clients, [], []
        for client in clients:
            await client.aclose()


async def _result(future: asyncio.Future[httpx.AsyncClient]) -> httpx.AsyncClient:
    return await future
