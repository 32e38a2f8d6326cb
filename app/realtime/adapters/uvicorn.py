"""uvicorn's private API: its sans-I/O WebSocket protocol, subclassed for fan-out.

Relied on, from `uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol`
(an implementation module, not a documented interface): its constructor, `handle_connect`,
`receive`, `start_keepalive`, and the attributes `conn` (websockets' ServerProtocol), `scope`,
`request`, `response`, `queue` (put_nowait, empty), `writable` (set, clear, is_set, wait),
`read_paused`, `close_sent` and `transport`; and that its `send` sends every message whole
(never a fragment), so no fragmented message is ever in progress on its connections.
"""

import asyncio

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import OPEN

from app.realtime.adapters import websockets as websockets_adapter
from app.realtime.consumers.delivery import DIRECT_SOCKET, WaitQueue

PACKAGE = "uvicorn"
# A 0.x release: any minor may rework the protocol classes (the sans-I/O one is recent).
SUPPORTED = ">=0.54,<0.55"


class Flag:
    """The part of asyncio.Event uvicorn uses for write back-pressure, without its deque."""

    __slots__ = ("_set", "_waiters")

    def __init__(self):
        self._set = False
        self._waiters: list[asyncio.Future] | None = None

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._set

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        """Clear the flag."""
        self._set = False

    async def wait(self) -> bool:
        """Return at once if set, else when set."""
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class FanoutWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol as a DirectSocket (app/realtime/consumers/delivery.py).

    It hands itself to the application in the scope (`inbox`, `write_text`), forgets the
    upgrade request and its response once the 101 is out (uvicorn keeps both as attributes,
    websockets' parser keeps the request, for the connection's life although nothing reads
    them), and swaps its event queue and back-pressure event for equivalents without deques.
    """

    # The last text frame serialised. A broadcast hands the same str to every local member in
    # turn, and a server's frames are unmasked: without compression the bytes on the wire are
    # the same for every socket, so they are framed once per broadcast, not once per member.
    _last_frame: tuple[str | None, bytes] = (None, b"")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = None
        self.response = None
        self.queue = WaitQueue()
        self.writable = Flag()
        self.writable.set()
        self.plain = False  # no extension negotiated: frames can be written as framed once

    @property
    def inbox(self) -> WaitQueue:
        """The queue `receive` reads: client events, and channel messages put there."""
        return self.queue

    def handle_connect(self, event) -> None:
        """Start the ASGI application for an upgrade request, with this protocol in its scope."""
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # None when the upgrade was refused before the application
            scope["extensions"][DIRECT_SOCKET] = self
        websockets_adapter.forget_request(self.conn)

    async def receive(self):
        """The next ASGI event; reading resumes once no client frame is left waiting.

        uvicorn pauses reading after each client frame and resumes when its queue is empty.
        Here the queue also carries the socket's channel messages, which must not hold back
        the client's next frame: a sender's delay would be in every member's round trip.
        """
        message = await self.queue.get()
        if self.read_paused and not any(
            pending["type"] == "websocket.receive" for pending in self.queue.items or ()
        ):
            self.read_paused = False
            self.transport.resume_reading()
        return message

    def write_text(self, text: str) -> bool:
        """Write a text frame now, without a coroutine; False when `send` must do it instead.

        Only an open socket with no extension (permessage-deflate) and no write back-pressure
        qualifies. Every other case (closing, paused by a slow reader, a compressor) is left to
        uvicorn's `send`, its waiting and its errors.
        """
        if (
            self.conn.state is not OPEN
            or not self.plain
            or self.close_sent
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        last, frame = FanoutWebSocketProtocol._last_frame
        if last is not text:
            frame = websockets_adapter.text_frame(text)
            FanoutWebSocketProtocol._last_frame = (text, frame)
        self.transport.write(frame)
        return True

    def start_keepalive(self) -> None:
        """Called once, right after the 101 went out: forget the handshake, then start pings.

        Done here rather than in `send`, which runs once per delivered frame.
        """
        self.request = None
        self.response = None
        self.plain = not websockets_adapter.negotiated_extensions(self.conn)
        super().start_keepalive()
