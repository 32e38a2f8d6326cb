"""Spawned tasks are held while they run and let go when done."""

import asyncio

from app.realtime.ops import background


async def test_a_spawned_task_is_held_until_its_end_then_let_go():
    done = asyncio.Event()

    async def later():
        await asyncio.sleep(0.05)
        done.set()
    task = background.spawn(later())
    assert task in background._running  # the loop itself holds tasks only weakly
    await asyncio.wait_for(done.wait(), 1)
    await asyncio.sleep(0)
    assert task.done() and task not in background._running
