"""The WebSocket process: uvicorn serving the ASGI application with the fan-out protocol.

`deploy/entrypoint.sh ws` runs `python -m app.realtime.server.uvicorn_server`. uvicorn rather
than daphne (docs/architecture.md): asyncio transports write at once where daphne's frames go
through autobahn and a Twisted reactor on top of asyncio, handshakes are cheaper, and the
process serves ASGI lifespan events, so its services start before the first probe. The
protocol is app/realtime/adapters/uvicorn.py's; daphne stays available with `WS_SERVER=daphne`
(app/realtime/server/daphne_server.py).

Environment (all optional): PORT, BIND, WS_PING_INTERVAL (20 s), WS_PING_TIMEOUT (30 s),
WS_MAX_SIZE (1 MiB, larger messages are closed with 1009), WS_SEND_BUFFER_BYTES (64 KiB) and
WS_SLOW_CLIENT_SECONDS (10 s: a client leaving more than that buffered for that long is closed
with 4008), WS_CLOSE_LINGER_SECONDS (5 s) and WS_CLOSE_LINGER_BYTES (64 MiB: how long and how
much the server reads after its close frame; app/realtime/server/limits.py),
WS_PER_MESSAGE_DEFLATE (0),
FORWARDED_ALLOW_IPS (addresses or CIDRs whose X-Forwarded-For is believed: nginx's; default
127.0.0.1), WS_GRACEFUL_SHUTDOWN (10 s), INTERNAL_PORT (the loopback-only listener of the drain
and status endpoints, app/realtime/ops/internal.py; none when unset).
"""

import gc
import os
import socket
import sys

import uvicorn

from app.realtime.adapters.uvicorn import FanoutWebSocketProtocol
from app.realtime.ops.internal import internal_port
from app.realtime.server.limits import SocketLimits


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def config() -> uvicorn.Config:
    """The uvicorn configuration of a WebSocket process, from the environment."""
    return uvicorn.Config(
        "app.asgi:application",
        host=os.environ.get("BIND", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8000")),
        ws=FanoutWebSocketProtocol.with_limits(SocketLimits.from_environ()),
        # Deflate keeps a compressor per socket and compresses once per member per broadcast;
        # chat frames are small. Browsers offer it; declining is what daphne always did.
        ws_per_message_deflate=_flag("WS_PER_MESSAGE_DEFLATE", "0"),
        # Protocol pings find dead TCP peers (a laptop lid closed) that never send a close
        # frame; the app heartbeat (WS_HEARTBEAT_INTERVAL) is separate.
        ws_ping_interval=float(os.environ.get("WS_PING_INTERVAL", "20")),
        ws_ping_timeout=float(os.environ.get("WS_PING_TIMEOUT", "30")),
        ws_max_size=int(os.environ.get("WS_MAX_SIZE", str(1 << 20))),
        proxy_headers=True,
        # Only nginx's own X-Forwarded-For is believed: from anyone else it is a claim.
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        # Lifespan starts the canary before the first request and fails the process if the
        # application cannot start.
        lifespan="on",
        # The C parser: h11's pure-Python one took a noticeable share of a handshake's CPU.
        http="httptools",
        access_log=False,
        timeout_graceful_shutdown=float(os.environ.get("WS_GRACEFUL_SHUTDOWN", "10")),
    )


def main(argv: list[str]) -> None:
    """Serve the ASGI application until SIGTERM (after a drain) or SIGINT."""
    if argv:
        sys.exit("app.realtime.server.uvicorn_server takes no arguments; it is configured by the "
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
    it, that the socket's task kept for its whole life.
    Made here, before the server starts, they are found by every task through the context it
    inherits. The backend holds no per-request state, and its Redis client is process-wide
    already (app/realtime/adapters/django_redis.py).
    """
    from django.conf import settings
    from django.core.cache import caches

    for alias in settings.CACHES:
        caches[alias]


# Young-generation collections between two full ones (Python's default is 10).
FULL_COLLECTION_EVERY = 100


def tune_gc() -> None:
    """Keep the cyclic garbage collector off what lives as long as the process.

    Everything imported at startup (Django, the URLconf, models) is moved out of the
    collector's sight, so a full collection scans only what connections made. The young
    generation keeps Python's threshold: a larger one saved little CPU but made each pause
    longer, and a pause is in every member's round trip (docs/benchmarks.md has the figures).
    Full collections come less often than Python's default: each scans every open
    socket's objects, a long pause, and finds almost no garbage, because a closed socket's
    objects are freed by reference counting. Python still waits for the objects promoted
    since the last full collection to reach a quarter of those that survived it.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


if __name__ == "__main__":
    main(sys.argv[1:])
