"""uvicorn's private API: its sans-I/O WebSocket protocol, subclassed for fan-out.

Relied on, from `uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol`
(an implementation module, not a documented interface): its constructor, `handle_connect`,
`receive`, `start_keepalive`, `send_keepalive_ping` (called by the ping timer), `schedule_ping`
(which sets `ping_timer`), and the attributes `conn` (websockets' ServerProtocol), `scope`,
`request`, `response`, `queue` (put_nowait, empty), `writable` (set, clear, is_set, wait),
`read_paused`, `close_sent`, `close_timer`, `handshake_complete`, `disconnected` and
`transport`; that uvicorn's HTTP protocol calls only the constructor, `connection_made`
and `data_received` of a new protocol before handing it the transport (a draining
process's refusal builds nothing else); its `data_received`, `handle_parser_exception`
(called once the websockets parser has failed), `pause_writing` and `resume_writing`; that
`handle_close` and `connection_lost` cancel `close_timer` and `run_asgi` leaves the transport
open while it is set; that `send` waits on `writable` only after the handshake; and that its
`send` sends every message whole (never a fragment), so no fragmented message is ever in
progress on its connections; and `logger`, the logger of its per-connection lines.

Each socket logged INFO lines through `uvicorn.error` (uvicorn's `"WebSocket /ws/..."
[accepted]`, websockets' "connection open" and "connection closed"), a noticeable part of a
handshake's CPU in a reconnect storm. nginx's access log already has every handshake with its
status and times, so the lines of both protocols below WARNING are dropped; their warnings and
errors (an exception in the application) still reach `uvicorn.error`.
"""

import asyncio
import collections
import contextlib
import logging

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import OPEN

from app.realtime.adapters import websockets as websockets_adapter
from app.realtime.consumers.delivery import DIRECT_SOCKET, WaitQueue
from app.realtime.consumers.registry import registry
from app.realtime.server.held import HeldWrites
from app.realtime.server.limits import SLOW_CLIENT, SocketLimits
from app.realtime.server.lingering import CloseFrameWatch

PACKAGE = "uvicorn"
# A 0.x release: any minor may rework the protocol classes (the sans-I/O one is recent).
SUPPORTED = ">=0.54,<0.55"
# What a send to a socket the client has already closed raises.
CLIENT_GONE = (ClientDisconnected,)
# A draining process's answer to an upgrade: the 403 uvicorn sends when the application
# refuses before accepting (app/realtime/ops/lifecycle.py), without its optional headers.
DRAINING_REFUSAL = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class WarningsOnly(logging.LoggerAdapter):
    """A logger's warnings and errors; its INFO, DEBUG and TRACE lines are dropped.

    An adapter rather than a logger with a level: logging configured later (uvicorn's, then
    Django's `dictConfig`) resets the levels of existing child loggers.
    """

    @property
    def level(self) -> int:
        """The level uvicorn compares with TRACE before formatting a trace line."""
        return max(logging.WARNING, self.logger.getEffectiveLevel())

    def isEnabledFor(self, level: int) -> bool:
        """Whether a record of this level would be written."""
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


SOCKET_LOG = WarningsOnly(logging.getLogger("uvicorn.error"))


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

    It hands itself to the application in the scope (`inbox`, `write_text`, `writes_held`),
    forgets the upgrade request and its response once the 101 is out (uvicorn keeps both as
    attributes, websockets' parser keeps the request, for the connection's life although nothing
    reads them), and swaps its event queue and back-pressure event for equivalents without
    deques.
    It applies `limits` (app/realtime/server/limits.py): the slow-client rule, and a lingering
    close after its own close frames; `with_limits` makes the class a process serves.
    """

    limits = SocketLimits()

    # The last text frame serialised. A broadcast hands the same str to every local member in
    # turn, and a server's frames are unmasked: without compression the bytes on the wire are
    # the same for every socket, so they are framed once per broadcast, not once per member.
    _last_frame: tuple[str | None, bytes] = (None, b"")

    def __init__(self, *args, **kwargs):
        # While the process drains, the upgrade is refused in connection_made and nothing of
        # a WebSocket is built for it: in a drain every client of the process comes back
        # through nginx, which tries this process before the next one, and the parse, the
        # protocol and the application's own refusal took the CPU the drain itself needed.
        self.refused = registry.draining
        if self.refused:
            self.transport = None
            self.writable = Flag()  # what the transport's flow control calls touch
            self.slow_timer = self.backlog = None
            self.close_sent = True
            return
        super().__init__(*args, **kwargs)
        self.logger = SOCKET_LOG
        self.request = None
        self.response = None
        self.queue = WaitQueue()
        self.writable = Flag()
        self.writable.set()
        self.plain = False  # no extension negotiated: frames can be written as framed once
        self.conn = websockets_adapter.refusal_aware(self.conn, SOCKET_LOG)
        self.slow_timer: asyncio.TimerHandle | None = None
        self.backlog: collections.deque | None = None  # sent while writes were paused
        self.shedding = False  # closed by the server itself: what the application sends is dropped
        self.linger: CloseFrameWatch | None = None
        self.heard = False  # bytes came from the client since the last keep-alive ping was due

    @classmethod
    def with_limits(cls, limits: SocketLimits) -> type["FanoutWebSocketProtocol"]:
        """This protocol class applying `limits` (uvicorn takes a class, not an instance)."""
        return type(cls.__name__, (cls,), {"limits": limits})

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

        Only an open socket with no extension (permessage-deflate), no write back-pressure and
        no backlog qualifies. Every other case (closing, paused by a slow reader, a compressor)
        is left to `send`, its backlog and uvicorn's errors.
        """
        if (
            self.conn.state is not OPEN
            or not self.plain
            or self.close_sent
            or not self.writable.is_set()
            or self.backlog
            or self.transport.is_closing()
        ):
            return False
        last, frame = FanoutWebSocketProtocol._last_frame
        if last is not text:
            frame = websockets_adapter.text_frame(text)
            FanoutWebSocketProtocol._last_frame = (text, frame)
        self.transport.write(frame)
        return True

    @contextlib.contextmanager
    def writes_held(self):
        """Hold every write to the socket during the block, then write it all in one go.

        Every writer (the 101, `write_text`, `send`, a close) goes through `transport`, so
        what is held stays in order with what comes after it. Nested blocks hold once.
        """
        if isinstance(self.transport, HeldWrites):
            yield
            return
        held = self.transport = HeldWrites(self.transport)
        try:
            yield
        finally:
            self.transport = held.inner
            held.release()

    def send_keepalive_ping(self) -> None:
        """uvicorn's keep-alive ping, skipped when the client was heard from since the last one.

        Bytes from the client prove the connection alive as well as a pong would, and a
        client of the protocol sends some every heartbeat interval (its `pong` answers). The
        ping would cost every idle socket a frame each way and two timers. A silent client is
        still pinged and closed when it does not answer within the ping timeout: a connection
        gone dark is found within two ping intervals and the timeout, not one.
        """
        if self.heard and not self.close_sent and not self.transport.is_closing():
            self.heard = False
            self.schedule_ping()
            return
        super().send_keepalive_ping()

    def start_keepalive(self) -> None:
        """Called once, right after the 101 went out: forget the handshake, then start pings.

        Done here rather than in `send`, which runs once per delivered frame.
        """
        self.request = None
        self.response = None
        self.plain = not websockets_adapter.negotiated_extensions(self.conn)
        super().start_keepalive()

    # ------------------------------------------------------------------ the slow-client rule
    def connection_made(self, transport) -> None:
        """Take over the upgraded connection, pausing writes past the send buffer limit.

        While draining, answer the 403 at once instead (nginx tries the next process).
        """
        if self.refused:
            self.transport = transport
            registry.count_refusal()
            transport.write(DRAINING_REFUSAL)
            transport.close()
            return
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=self.limits.send_buffer_bytes)

    async def send(self, message) -> None:
        """uvicorn's ASGI send, except that it never waits for a slow reader.

        uvicorn's send waits while the write buffer is over its limit. Here a frame sent then
        joins the socket's backlog, written in order as the client reads, and the slow-client
        rule bounds how long that may last. Waiting would hold up the sender, and the channel
        layer's reader runs fan-out handlers itself (RUN, app/realtime/consumers/delivery.py):
        one client that stopped reading would stall delivery to every socket of the process.
        Once the server has closed the socket itself (a slow client, a message over
        WS_MAX_SIZE), whatever the application still sends is dropped: uvicorn would raise,
        ending a consumer before its disconnect cleanup ran.
        """
        if self.shedding:
            return
        if (self.handshake_complete and not self.close_sent and not self.disconnected
                and (self.backlog or not self.writable.is_set())):
            if message["type"] == "websocket.send":
                if self.backlog is None:
                    self.backlog = collections.deque()
                self.backlog.append(message)
                return
            if message["type"] == "websocket.close":
                # The close goes out after every frame sent before it, without waiting.
                while self.backlog:
                    self._write_message(self.backlog.popleft())
                self.backlog = None
                self._close(message.get("code", 1000), message.get("reason") or "")
                return
        await super().send(message)

    def _write_message(self, message) -> None:
        """Write one websocket.send message now, as uvicorn's send would."""
        if message.get("bytes") is not None:
            self.conn.send_binary(message["bytes"])
        else:
            self.conn.send_text(message["text"].encode())
        self.transport.write(b"".join(self.conn.data_to_send()))

    def pause_writing(self) -> None:
        """The write buffer is over the limit: the client has slow_client_seconds to catch up."""
        super().pause_writing()
        if self.slow_timer is None and not self.close_sent:
            self.slow_timer = self.loop.call_later(self.limits.slow_client_seconds,
                                                   self.close_slow_client)

    def resume_writing(self) -> None:
        """The client read the buffer down: write the backlog; caught up, it is not slow."""
        super().resume_writing()
        while self.backlog and self.writable.is_set() and not self.transport.is_closing():
            self._write_message(self.backlog.popleft())
        if not self.backlog:
            self.backlog = None
            if self.writable.is_set() and self.slow_timer is not None:
                self.slow_timer.cancel()
                self.slow_timer = None

    def connection_lost(self, exc) -> None:
        """The connection is gone: nothing more to time or to write."""
        if self.refused:
            return
        if self.slow_timer is not None:
            self.slow_timer.cancel()
            self.slow_timer = None
        self.backlog = None
        super().connection_lost(exc)

    def close_slow_client(self) -> None:
        """Close a client that has not caught up with its writes for slow_client_seconds.

        The close frame goes after what the transport holds, so a client that reads again gets
        those frames and then the code; the backlog is dropped (the client resumes from its
        last `seq`). The client has linger_seconds to read and answer the close.
        """
        self.slow_timer = None
        if self.close_sent or self.transport.is_closing():
            return
        self.shedding = True
        self.backlog = None
        self._close(SLOW_CLIENT, "slow client")

    def _close(self, code: int, reason: str) -> None:
        """uvicorn's websocket.close without waiting for room, then the lingering close."""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:  # the client's close frame must be read
            self.read_paused = False
            self.transport.resume_reading()
        self._close_after_linger()

    # ------------------------------------------------------------------ the lingering close
    def handle_parser_exception(self) -> None:
        """A message over WS_MAX_SIZE: send 1009 and linger; other failures as uvicorn does.

        uvicorn closes the connection right after the close frame, while the client is still
        sending the refused message: the kernel then resets the connection, and the reset can
        reach the client before the close frame (RFC 6455 §7.1.1). Here the server keeps
        reading, walking the client's frames, and closes once the client's close frame is in.
        No half-close either: nginx ends an upgraded connection, and resets a client still
        sending, as soon as the upstream's end of stream is relayed.
        """
        rest = websockets_adapter.oversized_frame_rest(self.conn)
        if rest is None or self.close_sent:
            super().handle_parser_exception()
            return
        close = self.conn.close_sent
        self.queue.put_nowait({"type": "websocket.disconnect", "code": int(close.code),
                               "reason": close.reason})
        # Joined, websockets' end-of-stream mark (b"") vanishes: no half-close (see above).
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.shedding = True  # the application may send before it reads its disconnect
        skip, read_after = rest
        self.linger = CloseFrameWatch(skip, self.limits.linger_bytes)
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self._close_after_linger()
        if read_after:
            self._discard(read_after)

    def data_received(self, data: bytes) -> None:
        """Frames for websockets' parser; after a 1009, bytes for the lingering close to discard."""
        if self.refused:
            return
        self.heard = True
        if self.linger is None:
            super().data_received(data)
        else:
            self._discard(data)

    def _discard(self, data: bytes) -> None:
        if self.linger.feed(data) and not self.transport.is_closing():
            if self.linger.close_received:
                self.transport.close()  # the closing handshake is complete
            else:
                self.transport.abort()  # the byte budget is spent

    def _close_after_linger(self) -> None:
        """Cut the connection off linger_seconds from now unless the client closed it first."""
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(self.limits.linger_seconds, self._linger_over)

    def _linger_over(self) -> None:
        self.close_timer = None
        # Whatever is still buffered will never be read: close() would wait for it forever.
        self.transport.abort()
