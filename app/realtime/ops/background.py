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


def spawn_keyed(tasks: dict, key, coroutine) -> asyncio.Task:
    """Spawn a coroutine and keep its task in `tasks` under `key` until it is done.

    For work that callers wanting the same thing at once share (each awaits the task through
    `asyncio.shield`, so one caller's cancellation stops nobody else's): its exception is
    raised to them and never reported as not retrieved.
    """
    task = tasks[key] = spawn(coroutine)
    task.add_done_callback(lambda done: _forget(tasks, key, done))
    return task


def _forget(tasks: dict, key, task: asyncio.Task) -> None:
    if tasks.get(key) is task:
        del tasks[key]
    if not task.cancelled():
        task.exception()
