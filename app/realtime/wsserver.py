"""The WebSocket process's server: uvicorn with websockets' sans-I/O protocol, tuned for fan-out.

`deploy/entrypoint.sh ws` runs `python -m app.realtime.wsserver`. Why uvicorn rather than
daphne, measured with `make bench` on the same machine (docs/benchmarks.md): a delivery costs
less than half the CPU (asyncio transports write at once; daphne's frames go through autobahn
and a Twisted reactor on top of asyncio), handshakes run about twice as fast, and the process
serves ASGI lifespan events, so its services start before the first probe. daphne stays
available with `WS_SERVER=daphne` (app/realtime/daphne_compat.py).

Environment (all optional): PORT, BIND, WS_PING_INTERVAL (20 s), WS_PING_TIMEOUT (30 s),
WS_MAX_SIZE (1 MiB, larger messages are closed with 1009), WS_PER_MESSAGE_DEFLATE (0),
FORWARDED_ALLOW_IPS (addresses or CIDRs whose X-Forwarded-For is believed: nginx's; default
127.0.0.1), WS_GRACEFUL_SHUTDOWN (10 s), INTERNAL_PORT (the loopback-only listener of the drain
and status endpoints, app/realtime/internal.py; none when unset).
"""

import asyncio
import gc
import os
import socket
import sys

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Protocol

from .internal import internal_port
from .waitqueue import WaitQueue


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
    """uvicorn's sans-I/O WebSocket protocol that forgets the handshake once it is answered.

    The parsed upgrade request and its response (header multidicts, 6-7 KiB) stay referenced
    for the connection's whole life although nothing reads them after the 101 went out: uvicorn
    keeps both as attributes, and websockets' server parser keeps the request as a local of its
    generator, which then parses every frame. An idle socket is largely such leftovers. Its
    event queue and back-pressure event are swapped for equivalents without deques.
    """

    # The last text frame serialised. A broadcast hands the same str to every local member in
    # turn, and a server's frames are unmasked: without compression the bytes on the wire are
    # the same for every socket, so they are framed once per broadcast, not once per member.
    _last_frame: tuple[str | None, bytes] = (None, b"")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = None
        self.response = None
        # The same behaviour without asyncio.Queue's and asyncio.Event's deques (about 3 KiB).
        self.queue = WaitQueue()
        self.writable = Flag()
        self.writable.set()

    def handle_connect(self, event) -> None:
        """Start the ASGI application for an upgrade request; parse frames without it."""
        super().handle_connect(event)
        conn = self.conn
        if not conn.reader.buffer and not conn.reader.eof:
            # At a frame boundary with nothing buffered, websockets' base frame parser is
            # exactly where the server's parser now stands, minus the request it holds.
            conn.parser = Protocol.parse(conn)
            next(conn.parser)

    async def receive(self):
        """The next ASGI event; reading resumes once no client frame is left waiting.

        uvicorn pauses reading after each client frame and resumes when its queue is empty.
        Here the queue also carries the socket's channel messages (RealtimeConsumer.__call__),
        which must not hold back the client's next frame: a sender's delay is in every member's
        round trip (rooms of 100 at 7.7 msg/s, p99 126/61 ms without this, 24/54 ms with it).
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

        For fan-out: only an open socket with no extension (permessage-deflate) and no write
        back-pressure qualifies. Every other case (closing, paused by a slow reader, a
        compressor) is left to uvicorn's `send`, its waiting and its errors.
        """
        conn = self.conn
        if (
            conn.state is not OPEN
            or conn.extensions
            or conn.expect_continuation_frame
            or self.close_sent
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        last, frame = FanoutWebSocketProtocol._last_frame
        if last is not text:
            frame = Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
            FanoutWebSocketProtocol._last_frame = (text, frame)
        self.transport.write(frame)
        return True

    def start_keepalive(self) -> None:
        """Called once, right after the 101 went out: forget the handshake, then start pings.

        Done here rather than in `send`, which runs once per delivered frame.
        """
        self.request = None
        self.response = None
        super().start_keepalive()


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def config() -> uvicorn.Config:
    """The uvicorn configuration of a WebSocket process, from the environment."""
    return uvicorn.Config(
        "app.asgi:application",
        host=os.environ.get("BIND", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8000")),
        ws=FanoutWebSocketProtocol,
        # Deflate keeps a compressor per socket (by zlib's formula about 32 KiB at uvicorn's 12
        # window bits and memLevel 5, plus the inflater; not measured here) and compresses once
        # per member per broadcast; chat frames are a few hundred bytes. Browsers offer it;
        # declining is what daphne always did.
        ws_per_message_deflate=_flag("WS_PER_MESSAGE_DEFLATE", "0"),
        # Protocol pings find dead TCP peers (a laptop lid closed) that never send a close
        # frame; the app heartbeat (25 s) is separate.
        ws_ping_interval=float(os.environ.get("WS_PING_INTERVAL", "20")),
        ws_ping_timeout=float(os.environ.get("WS_PING_TIMEOUT", "30")),
        ws_max_size=int(os.environ.get("WS_MAX_SIZE", str(1 << 20))),
        proxy_headers=True,
        # Only nginx's own X-Forwarded-For is believed: from anyone else it is a claim.
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        # Lifespan starts the canary before the first request and fails the process if the
        # application cannot start.
        lifespan="on",
        http="h11",
        access_log=False,
        timeout_graceful_shutdown=float(os.environ.get("WS_GRACEFUL_SHUTDOWN", "10")),
    )


def main(argv: list[str]) -> None:
    """Serve the ASGI application until SIGTERM (after a drain) or SIGINT."""
    if argv:
        sys.exit("app.realtime.wsserver takes no arguments; it is configured by the "
                 "environment (see its docstring and .env.example)")
    server_config = config()
    server_config.load()  # imports the application: Django, its models, URLs and consumers
    share_cache_backends()
    tune_gc()
    uvicorn.Server(server_config).run(sockets=listeners(server_config))


def listeners(server_config: uvicorn.Config) -> list[socket.socket]:
    """The public socket (BIND:PORT) and, with INTERNAL_PORT, the loopback-only internal one."""
    port = internal_port()
    if port is not None and port == server_config.port:
        sys.exit(f"INTERNAL_PORT ({port}) must differ from PORT: the internal endpoints "
                 "are served on a loopback-only listener of their own")
    sockets = [server_config.bind_socket()]
    if port is not None:
        internal = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        internal.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        internal.bind(("127.0.0.1", port))
        sockets.append(internal)
    return sockets


def share_cache_backends() -> None:
    """Create the cache backends once, in the context that every connection's task copies.

    Django keeps cache backends in an asgiref `Local`, which is per asyncio task: each
    handshake's session lookup (`cached_db`) built a backend object, and a storage dict to hold
    it, that the socket's task kept for its whole life (tracemalloc: about 0.4 KiB per socket).
    Made here, before the server starts, they are found by every task through the context it
    inherits. The backend holds no per-request state, and its Redis client is process-wide
    already (app/realtime/cache.py).
    """
    from django.conf import settings
    from django.core.cache import caches

    for alias in settings.CACHES:
        caches[alias]


def tune_gc() -> None:
    """Keep the cyclic garbage collector off what lives as long as the process.

    Everything imported at startup (Django, the URLconf, models) is moved out of the
    collector's sight, so a full collection scans only what connections made. Measured with
    `make bench`'s runner, rooms of 1000 (docs/benchmarks.md): the collector was 8% of a busy
    WebSocket process, and saturation rose from 34.9 to 39.3 k deliveries/s. The young
    generation keeps Python's threshold: 7000 instead of 700 added 1% more (39.6 k) but made
    each pause longer, rooms of 100 at 12.4 k deliveries/s: young collections 3.5 ms instead
    of 0.2, middle ones 24 ms instead of 1.2-1.6, in every member's round trip.
    """
    gc.collect()
    gc.freeze()


if __name__ == "__main__":
    main(sys.argv[1:])
