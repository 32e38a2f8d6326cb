"""Per-process services around the ASGI application: the canary and drain's handshake guard.

The services start on the ASGI lifespan's startup (uvicorn: the `ws` role and `make dev`) or,
where no lifespan runs (daphne, `WS_SERVER=daphne`), on the first request the process serves.
"""

import asyncio

from channels.layers import get_channel_layer
from django.conf import settings

from app.realtime.consumers.registry import registry
from app.realtime.ops import metrics
from app.realtime.ops.canary import Canary

_canary: Canary | None = None
# Coroutine functions awaited at the lifespan's shutdown (app/chat/last_seen.py adds its flush).
shutdown_hooks: list = []


def canary() -> Canary | None:
    """This process's canary, if it runs one (WebSocket and dev roles)."""
    return _canary


def start_services() -> None:
    """Start the canary in this process if its role serves WebSockets."""
    global _canary
    if settings.PROCESS_ROLE not in ("ws", "dev"):
        return
    layer = get_channel_layer()
    if layer is None:
        return
    if _canary is None:
        _canary = Canary(layer, settings.CANARY_INTERVAL, settings.CANARY_FAIL_AFTER)
    _canary.start()
    metrics.DRAINING.set(0)


class ProcessServices:
    """ASGI wrapper: starts process services once and refuses handshakes while draining."""

    def __init__(self, application):
        self.application = application
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope, receive, send):
        """Serve one ASGI connection, or the lifespan of the process."""
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.loop = loop
            start_services()
        if scope["type"] == "websocket" and registry.draining:
            # Refusing before accept makes daphne answer 403, which nginx's
            # proxy_next_upstream turns into a handshake on the next WebSocket process.
            await receive()
            registry.count_refusal()
            await send({"type": "websocket.close", "code": 1012})
            return
        await self.application(scope, receive, send)

    async def lifespan(self, receive, send) -> None:
        """ASGI lifespan: start the services, then at shutdown stop the canary and run the hooks."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.loop = asyncio.get_running_loop()
                    start_services()
                except Exception as error:  # the server then exits instead of serving
                    await send({"type": "lifespan.startup.failed", "message": repr(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _canary is not None:
                    _canary.stop()
                for hook in shutdown_hooks:
                    await hook()
                await send({"type": "lifespan.shutdown.complete"})
                return
