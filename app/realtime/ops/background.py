"""Tasks that run on after whoever started them has returned."""

import asyncio

# The event loop keeps only weak references to its tasks: one nobody holds can be collected
# before it is done.
_running: set[asyncio.Task] = set()


def spawn(coroutine) -> asyncio.Task:
    """Run a coroutine as a task of the running loop, held until it is done."""
    task = asyncio.get_running_loop().create_task(coroutine)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
