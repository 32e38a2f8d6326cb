"""A per-socket FIFO with waiting receivers that costs two slots while idle.

Both per-socket queues of a WebSocket process use it: the channel layer's mailbox of each
consumer (app/realtime/layer.py) and uvicorn's queue of ASGI events (app/realtime/wsserver.py).
asyncio.Queue allocates three deques (about 2 KiB) per instance although an idle socket has
nothing pending and one receiver waiting; here the deque and the waiter list exist only while
they hold something.
"""

import asyncio
import collections


class WaitQueue:
    """An unbounded FIFO: `put` (also `put_nowait`), `await get()`, `empty()`, `qsize()`."""

    __slots__ = ("items", "waiters")

    def __init__(self):
        self.items: collections.deque | None = None
        self.waiters: list[asyncio.Future] | None = None

    def put(self, item) -> None:
        """Queue an item and wake the receivers."""
        if self.items is None:
            self.items = collections.deque()
        self.items.append(item)
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    put_nowait = put  # asyncio.Queue's name, which uvicorn calls

    async def get(self):
        """The next item, waiting for one if needed."""
        while not self.items:
            waiter = asyncio.get_running_loop().create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if self.waiters is not None and waiter in self.waiters:
                    self.waiters.remove(waiter)
                    if not self.waiters:
                        self.waiters = None
        items = self.items
        item = items.popleft()
        if not items:
            self.items = None
        return item

    def empty(self) -> bool:
        """Nothing pending."""
        return not self.items

    def qsize(self) -> int:
        """Items pending."""
        return len(self.items) if self.items else 0

    @property
    def idle(self) -> bool:
        """A receiver waits and nothing is pending or on its way to one."""
        # Called for every local member of every broadcast: a loop, not a generator.
        if self.items or not self.waiters:
            return False
        for waiter in self.waiters:
            if not waiter.done():
                return True
        return False
