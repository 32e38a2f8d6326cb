"""One ASGI layer for WebSocket handshakes: origin check, session cookie, signed-in user.

It does what channels' `AllowedHostsOriginValidator(AuthMiddlewareStack(inner))` does, with
channels' own checks and `get_user`, in one coroutine instead of four. Every layer of that
stack copies the scope and stays suspended, with its locals, for the socket's whole life;
with thousands of mostly idle sockets per process those copies are a large part of what a
socket costs (docs/benchmarks.md, "Where the memory goes").

What the consumer sees is the same: `scope["cookies"]`, `scope["session"]` (a session store
of SESSION_ENGINE, loaded again on first use) and `scope["user"]` (the user, or AnonymousUser). A
refused origin gets channels' `WebsocketDenier` (HTTP 403), as before.

The session is read on every handshake (a logout or an expired session is refused at once);
the user it names comes from a process-local cache invalidated through the generation key
`user:<id>` (app/realtime/layer/generations.py, bumped by app/chat/signals.py), so a reconnect
storm does not read the users table once per socket.
"""

import copy
import logging
from importlib import import_module
from urllib.parse import urlparse

from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie
from django.utils.crypto import constant_time_compare
from redis.exceptions import RedisError

from app.realtime.adapters import django as django_adapter
from app.realtime.adapters import django_redis as django_redis_adapter
from app.realtime.consumers.base import Close
from app.realtime.consumers.errors import database_unreachable
from app.realtime.layer.generations import FactsCache, tokens
from app.realtime.layer.store import RedisStore, get_store


def user_key(user_id) -> str:
    """The generation key of everything cached about one user."""
    return f"user:{user_id}"


async def _load_session(session) -> None:
    """Load the session's data: with one GET when django-redis caches it, else as Django does.

    The Redis of the store is the cache's (app/settings.py builds both from one setting); a
    session not found there is loaded by the store itself, from the database, which also
    caches it again.
    """
    key = django_redis_adapter.session_cache_key(session)
    store = get_store()
    if key is not None and isinstance(store, RedisStore):
        try:
            raw = await store.get(key)
        except RedisError:
            raw = None
        if raw is not None:
            django_adapter.set_session_data(session, django_redis_adapter.decode_session(raw))
            return
    await database_sync_to_async(session.keys)()


def _credentials(session) -> tuple[object, str, str | None] | None:
    """(user id, backend path, auth hash) from the loaded session, or None if nobody signed in."""
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except KeyError:
        return None
    return user_id, backend_path, session.get(HASH_SESSION_KEY)


@database_sync_to_async
def _load_user(backend_path: str, user_id) -> tuple[object, str | None] | None:
    """The backend's user (None when unknown or inactive) and its session auth hash."""
    user = load_backend(backend_path).get_user(user_id)
    if user is None:
        return None
    auth_hash = user.get_session_auth_hash() if hasattr(user, "get_session_auth_hash") else None
    return user, auth_hash


class SessionUsers:
    """Resolve a session to its user as channels' `get_user` does, the user cached."""

    def __init__(self):
        self.cache = FactsCache()

    async def user(self, session):
        """The session's user, or AnonymousUser; a session whose auth hash fails is flushed."""
        if session.session_key is None:
            return AnonymousUser()  # no cookie, or not a session key: nothing to look up
        await _load_session(session)
        credentials = _credentials(session)
        if credentials is None:
            return AnonymousUser()
        user_id, backend_path, session_hash = credentials
        if backend_path not in settings.AUTHENTICATION_BACKENDS:
            return AnonymousUser()
        try:
            token = (await tokens([user_key(user_id)]))[0]
        except RedisError:
            # Nothing to check a cached user against: read it.
            found = await _load_user(backend_path, user_id)
        else:
            found = await self.cache.value((backend_path, user_id), token,
                                           lambda: _load_user(backend_path, user_id))
        if found is None:
            return AnonymousUser()
        user, auth_hash = found
        if auth_hash is not None and not (
                session_hash and constant_time_compare(session_hash, auth_hash)):
            await database_sync_to_async(session.flush)()
            return AnonymousUser()
        # Each socket gets its own instance: Django caches related objects on it.
        return copy.copy(user)


session_users = SessionUsers()

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

    def __init__(self, inner, users: SessionUsers | None = None):
        self.inner = inner
        self.users = users or session_users
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
            scope["user"] = await self.users.user(session)
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
