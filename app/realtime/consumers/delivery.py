"""The fast delivery path: what the server hands a consumer, and what the layer's reader calls.

A broadcast reaches each local member without a task switch, a coroutine or a framing of its
own when three parties agree on this interface, and only then:

* The server (FanoutWebSocketProtocol, app/realtime/adapters/uvicorn.py) puts a `DirectSocket`
  in each WebSocket's ASGI scope, under `scope["extensions"][DIRECT_SOCKET]`: its `inbox`, the
  WaitQueue its ASGI `receive` reads, `write_text(text)`, which writes one text frame at
  once or returns False (closing, back-pressure, compression) and writes nothing, and
  `writes_held()`, a block whose writes reach the socket together when it ends.
* The consumer (RealtimeConsumer, app/realtime/consumers/base.py) takes the extension out of
  the scope, sends every frame through `write_text` first and, on the Redis channel layer,
  hands the inbox to the layer (`adopt_inbox`), so one task reads its client frames and its
  channel messages.
  Once connected it registers as its channel's `FanoutReceiver` (`register_receiver`).
* The channel layer's reader (app/realtime/layer/channel_layer.py), for each local member of a
  message whose inbox is idle (its consumer waits, nothing pending), calls `take(message)`:
  WRITTEN, the consumer has written it (or had nothing to write); RUN, the reader awaits
  `dispatch(message)` itself; QUEUE, the message goes into the inbox like any other.

Without the extension (daphne, channels' test communicator) a consumer runs channels' own
receive loop and sends through ASGI `send`; the layer may still call `take` and `dispatch`.
"""

import asyncio
import collections
import contextlib
from typing import Protocol

# The scope extension under which the server hands over its DirectSocket.
DIRECT_SOCKET = "chanfleet.direct_socket"

# What FanoutReceiver.take answers.
QUEUE = 0
WRITTEN = 1
RUN = 2


class WaitQueue:
    """An unbounded FIFO: `put` (also `put_nowait`), `await get()`, `empty()`, `qsize()`.

    A socket's inbox: the server's queue of ASGI events, which under uvicorn is also the
    consumer's channel mailbox (elsewhere the layer's Mailbox). asyncio.Queue allocates three
    deques per instance although an idle socket has nothing pending and one receiver waiting;
    here the deque and the waiter list exist only while they hold something.
    """

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


class DirectSocket(Protocol):
    """What a server hands a consumer in its scope (DIRECT_SOCKET)."""

    inbox: WaitQueue

    def write_text(self, text: str) -> bool:
        """Write one text frame now; False, writing nothing, when ASGI `send` must do it."""

    def writes_held(self) -> contextlib.AbstractContextManager:
        """Hold what is written to the socket in the block, in order, and write it as one."""


class FanoutReceiver(Protocol):
    """What the channel layer's reader calls on a consumer waiting idle."""

    def take(self, message: dict) -> int:
        """WRITTEN, RUN or QUEUE (see the module docstring); never awaits."""

    async def dispatch(self, message: dict) -> None:
        """Run the message's handler (after RUN)."""


def take_direct_socket(scope) -> DirectSocket | None:
    """Remove and return the server's DirectSocket from a scope, if it offers one.

    Taken out, so that the scope the server keeps does not refer back to the server's protocol
    for the socket's life (every copy of the scope shares the one extensions dict).
    """
    extensions = scope.get("extensions")
    return extensions.pop(DIRECT_SOCKET, None) if extensions else None
