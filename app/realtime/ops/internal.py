"""The internal endpoints (drain, status), served only on the process's loopback listener.

Each server process listens twice: on BIND:PORT for everything nginx forwards, and on
127.0.0.1:INTERNAL_PORT for the pod itself (the preStop hook, an operator's `kubectl exec`, the
local topology's tests). Which listener a request came in on is the server's own socket address
(`scope["server"]`), which no header can change, so a forged `X-Forwarded-For` or `Host` from
another pod reaches nothing here: on the public listener `/internal/` does not exist.

These handlers are plain ASGI, ahead of Django: Django's ALLOWED_HOSTS lists the public names
and the pod IP, and the preStop hook's `Host: 127.0.0.1` is neither.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
from urllib.parse import parse_qs

from channels.layers import get_channel_layer
from django.conf import settings

from app.realtime.consumers.registry import registry
from app.realtime.ops.background import spawn


def internal_port() -> int | None:
    """The loopback port of the internal endpoints (env INTERNAL_PORT), or None for none."""
    value = os.environ.get("INTERNAL_PORT", "").strip()
    return int(value) if value and value != "0" else None


def on_internal_listener(scope, port: int | None) -> bool:
    """Whether this connection came in on the loopback-only internal listener."""
    server = scope.get("server")
    if port is None or not server or server[1] != port:
        return False
    try:
        return ipaddress.ip_address(server[0]).is_loopback
    except ValueError:
        return False


class InternalEndpoints:
    """ASGI wrapper: the internal listener's requests go to the internal handlers, not Django.

    On the public listener every path under `/internal/` answers 404 without reaching Django.
    """

    def __init__(self, application, port: int | None = None):
        self.application = application
        self.port = internal_port() if port is None else port

    async def __call__(self, scope, receive, send):
        """Serve one connection: internal handlers on the internal listener, else the app."""
        if scope["type"] == "lifespan":
            await self.application(scope, receive, send)
            return
        internal = on_internal_listener(scope, self.port)
        path = scope.get("path", "")
        if internal:
            if scope["type"] != "http":
                await receive()
                await send({"type": "websocket.close", "code": 1008})
                return
            await _serve_internal(scope, receive, send)
            return
        if path.startswith("/internal/") and scope["type"] == "http":
            await _respond(send, 404, {"error": "not_found"})
            return
        await self.application(scope, receive, send)


async def _serve_internal(scope, receive, send) -> None:
    # The request body is never used; read it so the server can reuse the connection.
    while (await receive()).get("more_body"):
        pass
    path, method = scope["path"], scope["method"]
    query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    if path == "/internal/drain":
        if method != "POST":
            await _respond(send, 405, {"error": "method_not_allowed"})
            return
        status, body = await drain(query)
    elif path == "/internal/status":
        status, body = 200, status_of_process()
    else:
        status, body = 404, {"error": "not_found"}
    await _respond(send, status, body)


async def _respond(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
    ]})
    await send({"type": "http.response.body", "body": payload})


async def drain(query: dict[str, str]) -> tuple[int, dict]:
    """Stop taking sockets, move clients elsewhere, then exit; returns (status, body).

    `wait=1` returns only when every client was asked to leave (the preStop hook uses it);
    `exit=0` keeps the process running afterwards (tests); `window=` overrides DRAIN_WINDOW.
    """
    window = float(query.get("window", settings.DRAIN_WINDOW))
    exit_after = query.get("exit", "1") != "0"
    if registry.draining:
        return 202, {"status": "draining"}

    async def run():
        return await registry.drain(window, settings.DRAIN_RETRY_MAX_MS)

    if query.get("wait") == "1":
        count = await run()
        if exit_after:
            spawn(_exit_soon())  # after this response reaches the preStop hook
        return 200, {"status": "drained", "clients": count}

    async def run_then_exit():
        await run()
        if exit_after:
            await _exit_soon()

    spawn(run_then_exit())
    return 202, {"status": "draining", "clients": len(registry.consumers)}


def status_of_process() -> dict:
    """What this process holds (for operators and the topology tests)."""
    layer = get_channel_layer()
    return {
        "node": settings.NODE_NAME,
        "role": settings.PROCESS_ROLE,
        "pid": os.getpid(),
        "draining": registry.draining,
        "connections": len(registry.consumers),
        "layer_prefix": getattr(layer, "client_prefix", None),
        "local_groups": len(getattr(layer, "local_groups", {})),
    }


async def _exit_soon(delay: float = 1.0) -> None:
    # Let the last close frames and the drain response flush, then stop like a SIGTERM would.
    await asyncio.sleep(delay)
    os.kill(os.getpid(), signal.SIGTERM)


