"""The per-socket queue of the layer's mailboxes and of uvicorn's ASGI events."""

import asyncio

import pytest

from app.realtime.consumers.delivery import WaitQueue


async def test_keeps_order_and_wakes_every_waiter():
    """WaitQueue behaves as asyncio.Queue does for put_nowait/get/empty."""
    queue = WaitQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert sorted(await asyncio.gather(first, second)) == ["a", "b"]
    queue.put_nowait("c")
    queue.put_nowait("d")
    assert [await queue.get(), await queue.get()] == ["c", "d"]
    assert queue.empty()


async def test_get_can_be_cancelled_without_losing_an_event():
    """A cancelled receiver leaves the next event for the next get()."""
    queue = WaitQueue()
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    queue.put_nowait("kept")
    assert await asyncio.wait_for(queue.get(), 1) == "kept"


async def test_idle_means_a_receiver_waits_with_nothing_pending():
    """The layer's reader may run a handler itself only while its consumer is idle."""
    queue = WaitQueue()
    assert not queue.idle
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert queue.idle
    queue.put("event")
    assert not queue.idle
    assert await waiting == "event"
    assert queue.items is None and queue.waiters is None
