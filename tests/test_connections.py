"""A keep-alive connection per request in flight (relay.connections), over loopback: at
most ``limit`` connections, reused, waited for past the limit, never lost to a request
that gives up; and the API client's token rotation reaches every connection."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from relay.api import AatroxClient
from relay.config import ApiConfig, TokenSource
from relay.connections import Connections
from relay.testing.simulator import Simulator
from tests.support import NUMBERS, TOKEN, time_limit

pytestmark = pytest.mark.anyio


class HeldServer:
    """An HTTP/1.1 keep-alive server that answers each request once :meth:`release`d (or
    at once when ``hold`` is False), counting connections and requests in flight."""

    def __init__(self) -> None:
        self.hold = True
        #: Seconds each answer waits when not held (none when None).
        self.pause: Callable[[], float] | None = None
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.answered = 0
        self._go = asyncio.Event()
        self.url = ""

    def release(self) -> None:
        """Answer every request held, and those to come, until :meth:`reset`."""
        self._go.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                if self.hold:
                    await self._go.wait()
                elif self.pause is not None:
                    await asyncio.sleep(self.pause())
                self.in_flight -= 1
                self.answered += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        finally:
            self.open -= 1
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HeldServer]:
        """Listen on a loopback port for the block."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        try:
            yield self
        finally:
            self.release()
            server.close()


def pool(limit: int, wait: float = 5.0) -> Connections:
    """Connections of plain clients, ``limit`` at most."""
    return Connections(limit, lambda: httpx.AsyncClient(timeout=5.0), wait)


async def get(connections: Connections, url: str, lent: set[int] | None = None) -> int:
    """One GET through a borrowed client; its status. ``lent``: the clients lent now,
    checked never to hold one twice."""
    async with connections.client() as client:
        if lent is None:
            return (await client.get(url)).status_code
        assert id(client) not in lent, "a client lent to two requests at once"
        lent.add(id(client))
        try:
            return (await client.get(url)).status_code
        finally:
            lent.discard(id(client))


async def until(condition: object, seconds: float = 5.0) -> None:
    """Until ``condition()`` holds."""
    async with time_limit(seconds):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_requests_started_together_each_get_a_connection_kept_for_the_next() -> None:
    """Five requests started in the same turn of the loop are all in flight at once, on
    five connections; the next five reuse them, opening none."""
    connections = pool(8)
    async with HeldServer().running() as server:
        first = [asyncio.create_task(get(connections, server.url)) for _ in range(5)]
        await until(lambda: server.in_flight == 5)
        server.release()
        assert await asyncio.gather(*first) == [200] * 5
        assert await asyncio.gather(*(get(connections, server.url) for _ in range(5))) == [200] * 5
        assert (server.connections, len(connections.clients)) == (5, 5)
    await connections.aclose()


async def test_past_the_limit_a_request_waits_for_a_connection_then_times_out() -> None:
    """With every connection busy, a request waits for one and is served when it is
    handed back; one that waits longer than ``wait`` fails as httpx's pool would."""
    connections = pool(2, wait=0.3)
    async with HeldServer().running() as server:
        busy = [asyncio.create_task(get(connections, server.url)) for _ in range(2)]
        await until(lambda: server.in_flight == 2)
        with pytest.raises(httpx.PoolTimeout) as caught:
            await get(connections, server.url)
        assert str(caught.value) == "no connection free within 0.3s (2 in use)"
        third = asyncio.create_task(get(connections, server.url))
        await asyncio.sleep(0.05)
        assert server.in_flight == 2 and not third.done()
        server.release()
        assert await asyncio.gather(*busy, third) == [200] * 3
        assert server.most_open == 2 and len(connections.clients) == 2
    await connections.aclose()


async def test_a_connection_handed_to_a_request_that_gave_up_goes_to_the_next() -> None:
    """A waiting request cancelled in the very turn a connection is handed to it passes
    the connection on to the next waiter: none is lost, the limit holds."""
    connections = pool(1, wait=1.0)
    got: list[httpx.AsyncClient] = []

    async def borrow() -> None:
        async with connections.client() as client:
            got.append(client)

    holding = connections.client()
    held = await holding.__aenter__()
    quitter = asyncio.create_task(borrow())
    patient = asyncio.create_task(borrow())
    await asyncio.sleep(0.01)  # both wait now
    await holding.__aexit__(None, None, None)  # hands ``held`` to the quitter...
    quitter.cancel()  # ...which gives up before it could run
    await patient
    (quit_result,) = await asyncio.gather(quitter, return_exceptions=True)
    if sys.version_info >= (3, 11):
        assert isinstance(quit_result, asyncio.CancelledError)
        assert got == [held]
    else:  # 3.10's asyncio.wait_for drops a cancellation that meets its result: the
        # quitter then uses the connection and gives it back
        assert quit_result is None or isinstance(quit_result, asyncio.CancelledError)
        assert got in ([held], [held, held])
    assert connections.clients == [held]
    await connections.aclose()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_requests_and_cancellations_never_pass_the_limit_nor_lose_one(
    seed: int,
) -> None:
    """Seeded: 200 requests start at random moments, a random quarter cancelled at
    random moments, answers delayed at random. No client is ever lent to two requests at
    once, no more than ``limit`` are made; every request not cancelled is answered; in
    the end every client is back."""
    rng = random.Random(seed)
    limit = rng.randint(1, 6)
    connections = pool(limit, wait=30.0)
    async with HeldServer().running() as server:
        server.hold = False
        server.pause = lambda: rng.random() * 0.003
        lent: set[int] = set()
        most = 0
        tasks = []
        cancelled = set()
        for i in range(200):
            tasks.append(asyncio.create_task(get(connections, server.url, lent)))
            most = max(most, len(lent))
            if rng.random() < 0.25:
                cancelled.add(i)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.002)
            for j in list(cancelled):
                if rng.random() < 0.5:
                    tasks[j].cancel()
        for j in cancelled:
            tasks[j].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(results):
            if i not in cancelled:
                assert result == 200, (i, result)
        assert most <= limit and len(connections.clients) <= limit
        assert not lent
        # Every client is idle again: ``limit`` requests at once take no new one.
        made = len(connections.clients)
        assert (
            await asyncio.gather(*(get(connections, server.url) for _ in range(made)))
            == [200] * made
        )
        assert len(connections.clients) == made
    await connections.aclose()


async def test_a_rotated_token_reaches_every_connection_already_open(sim: Simulator) -> None:
    """Three polls at once open three connections; after the simulator and the client
    both move to a new token, three polls at once again all carry it (none is 401)."""
    config = ApiConfig(TokenSource("inline", TOKEN), TOKEN, base_url=sim.url, timeout=2.0)
    async with AatroxClient(config, max_connections=3) as api:
        await asyncio.gather(*(api.receive(NUMBERS[0]) for _ in range(3)))
        assert len(api._connections.clients) == 3
        sim.token = "rotated-token"
        assert api.set_token("rotated-token")
        listings = await asyncio.gather(*(api.receive(NUMBERS[0]) for _ in range(6)))
        assert [listing.listed for listing in listings] == [0] * 6
        assert len(api._connections.clients) == 3
