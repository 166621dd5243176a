"""AsyncStore: one store thread, a timeout per call, and what a timed-out call does."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anyio
import pytest

from relay.clock import SystemClock
from relay.errors import StoreError
from relay.store import AsyncStore, Store


@pytest.fixture
def store(store_url: str) -> Iterator[AsyncStore]:
    """An AsyncStore whose calls time out after 0.2 s."""
    aio = AsyncStore(Store.open(store_url, SystemClock()), timeout=0.2)
    yield aio
    aio.close()


def test_calls_run_one_at_a_time_in_order(store: AsyncStore) -> None:
    """Calls made at once run on the one store thread, one after another, in order."""
    order: list[int] = []
    threads: set[str] = set()

    def note(i: int) -> None:
        threads.add(threading.current_thread().name)
        order.append(i)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(store.call, note, i)
                await anyio.sleep(0)

    anyio.run(main)
    assert order == list(range(20))
    assert len(threads) == 1


def test_a_timed_out_call_keeps_the_thread_and_later_calls_wait(store: AsyncStore) -> None:
    """A call past its timeout raises StoreError in its caller but runs on to its end on
    the store thread; a call queued behind it that times out before it starts never runs,
    and one made after the slow call ends runs normally."""
    gate = threading.Event()
    ran: list[str] = []

    def slow() -> None:
        gate.wait(10)
        ran.append("slow")

    async def main() -> None:
        with pytest.raises(StoreError, match=r"store call slow took longer than 0\.2s"):
            await store.call(slow)
        with pytest.raises(StoreError, match="took longer than"):
            await store.call(ran.append, "queued")  # still behind slow: dropped
        assert ran == []
        gate.set()
        await store.call(ran.append, "after")
        await store.call(store.sync.ping)

    anyio.run(main)
    assert ran == ["slow", "after"]
