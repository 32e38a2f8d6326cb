"""One ASGI layer for WebSocket handshakes: origin check, session cookie, signed-in user.

It does what channels' `AllowedHostsOriginValidator(AuthMiddlewareStack(inner))` does, with
channels' own checks and `get_user`, in one coroutine instead of four. Every layer of that
stack copies the scope and stays suspended, with its locals, for the socket's whole life;
with thousands of mostly idle sockets per process those copies are a large part of what a
socket costs (docs/benchmarks.md, "Where the memory goes").

What the consumer sees is the same: `scope["cookies"]`, `scope["session"]` (a session store
of SESSION_ENGINE, loaded again on first use) and `scope["user"]` (the user, or AnonymousUser). A
refused origin gets channels' `WebsocketDenier` (HTTP 403), as before.
"""

import logging
from importlib import import_module
from urllib.parse import urlparse

from channels.auth import get_user
from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from django.conf import settings
from django.http.cookie import parse_cookie

from app.realtime.adapters import django as django_adapter
from app.realtime.consumers.base import Close
from app.realtime.consumers.errors import database_unreachable

log = logging.getLogger(__name__)


async def refuse_unavailable(receive, send) -> None:
    """Accept the handshake, then close it with 4503: the client retries with backoff."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": Close.UNAVAILABLE,
                "reason": "database_unavailable"})


class WebSocketAuth:
    """ASGI middleware for WebSocket scopes: deny bad origins, attach session and user."""

    def __init__(self, inner):
        self.inner = inner
        # channels' validator, kept for its checks only: ALLOWED_HOSTS, DEBUG defaults, ports.
        self.origins = AllowedHostsOriginValidator(inner)
        self.session_store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope, receive, send):
        """Check the origin, then run the inner application with session and user resolved."""
        origin = cookie = None
        for name, value in scope["headers"]:
            if name == b"origin":
                try:
                    origin = urlparse(value.decode("latin1"))
                except (UnicodeDecodeError, ValueError):
                    origin = None
            elif name == b"cookie":
                cookie = value
        if not self.origins.valid_origin(origin):
            return await WebsocketDenier()(scope, receive, send)
        cookies = parse_cookie(cookie.decode("latin1")) if cookie is not None else {}
        scope = dict(scope, cookies=cookies)
        scope["session"] = session = self.session_store(cookies.get(settings.SESSION_COOKIE_NAME))
        try:
            scope["user"] = await get_user(scope)
        except Exception as error:
            if not database_unreachable(error):
                raise
            # A session or user the database could not give: refuse with the protocol's
            # temporary close code (accepted first, so the client sees it), not an HTTP 500.
            log.warning("handshake refused, database unreachable: %s", error)
            return await refuse_unavailable(receive, send)
        # The session's data was needed for the user only; the socket keeps the store for its
        # life, so the loaded data is dropped and reloaded should anything read it again.
        django_adapter.drop_session_data(session)
        return await self.inner(scope, receive, send)
