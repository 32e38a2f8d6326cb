"""The ladder's rungs: the WebSocket process serving less and less of the chat handshake.

    python -m loadtest.ladder.rungs bare|auth|consumer|full

runs one WebSocket process as `app.realtime.server.uvicorn_server` does (its configuration,
environment, cache backends and GC tuning, `ProcessServices` and the internal endpoints around
the application), with the WebSocket route replaced below the full rung:

- bare: accept and send the join's last frame, nothing else (uvicorn and the fan-out protocol);
- auth: the same behind `WebSocketAuth` (origin, session, cached user);
- consumer: a `RealtimeConsumer` that accepts and sends that frame (registry, connect slots,
  the layer's channel and inbox, metrics), behind `WebSocketAuth`;
- full: the chat application itself (`app.asgi.application`).
"""

from __future__ import annotations

import json
import os
import sys
from urllib.parse import parse_qs

RUNGS = ("bare", "auth", "consumer", "full")


def end_frame(query_string: bytes) -> dict:
    """The frame that ends a join: `resume_end` for a `?last_seq=` handshake, else `history_end`."""
    query = parse_qs(query_string.decode("latin-1"))
    if "last_seq" in query:
        return {"type": "resume_end", "seq": int(query["last_seq"][-1]), "replayed": 0}
    return {"type": "history_end", "seq": 0}


async def bare(scope, receive, send) -> None:
    """Accept, send the join's last frame, and wait for the close."""
    await receive()
    await send({"type": "websocket.accept"})
    frame = end_frame(scope.get("query_string", b""))
    await send({"type": "websocket.send", "text": json.dumps(frame)})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def websocket_app(rung: str):
    """The ASGI application of a rung's WebSocket scopes (None: the full rung's own)."""
    # Imported here: they need Django's apps loaded, which `application` does first.
    from channels.routing import URLRouter
    from django.urls import re_path

    from app.realtime.consumers.base import RealtimeConsumer
    from app.realtime.consumers.handshake import WebSocketAuth

    class JoinOnly(RealtimeConsumer):
        """The consumer's machinery with no chat: accept and end the join at once."""

        # No database here, so no hygiene hop for these events: as the chat's consumer.
        hygienic_events = frozenset({"websocket.connect", "websocket.disconnect"})

        async def connect(self):
            await self.accept()
            await self.send_frame(end_frame(self.scope.get("query_string", b"")))

    if rung == "bare":
        return bare
    if rung == "auth":
        return WebSocketAuth(bare)
    if rung == "consumer":
        return WebSocketAuth(URLRouter([re_path(r"^ws/chat/(?P<room_name>[^/]+)/$",
                                                JoinOnly.as_asgi())]))
    if rung == "full":
        return None
    raise ValueError(f"unknown rung {rung!r}: one of {', '.join(RUNGS)}")


def application(rung: str):
    """The whole ASGI application of a rung, wrapped as app/asgi.py wraps the chat's."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings")
    from app import asgi

    websocket = websocket_app(rung)
    if websocket is None:
        return asgi.application
    from channels.routing import ProtocolTypeRouter

    from app.realtime.ops.internal import InternalEndpoints
    from app.realtime.ops.lifecycle import ProcessServices

    return ProcessServices(InternalEndpoints(ProtocolTypeRouter(
        {"http": asgi.django_asgi_app, "websocket": websocket})))


def main(argv: list[str]) -> None:
    """Serve one rung on PORT until SIGTERM, as a WebSocket process."""
    if len(argv) != 1 or argv[0] not in RUNGS:
        sys.exit(f"usage: python -m loadtest.ladder.rungs {'|'.join(RUNGS)}")
    import uvicorn

    from app.realtime.server import uvicorn_server

    server_config = uvicorn_server.config()
    server_config.app = application(argv[0])
    server_config.load()
    uvicorn_server.share_cache_backends()
    uvicorn_server.tune_gc()
    uvicorn.Server(server_config).run(sockets=uvicorn_server.listeners(server_config))


if __name__ == "__main__":
    main(sys.argv[1:])
