"""The handshake path: one auth layer, bounded handshakes, released headers."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser

from app.chat.conftest import session_for
from app.realtime.consumers.handshake import WebSocketAuth
from app.realtime.consumers.registry import registry

pytestmark = [pytest.mark.django_db(transaction=True)]


def scope_catcher():
    """An inner app that accepts and records the scope it was given."""
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)
        await receive()
        await send({"type": "websocket.accept"})
        await receive()

    return app, seen


def communicator(app, headers):
    return WebsocketCommunicator(app, "/ws/x/", headers=[(b"host", b"localhost"), *headers])


async def test_a_signed_in_session_gives_the_inner_app_its_user():
    """scope["user"] is the user itself (no lazy proxy), with session and cookies beside it."""
    user = await database_sync_to_async(get_user_model().objects.create_user)("ada", password="pw")
    cookie = await session_for(user)
    app, seen = scope_catcher()
    comm = communicator(WebSocketAuth(app), [(b"origin", b"http://localhost"),
                                              (b"cookie", f"sessionid={cookie}".encode())])
    assert (await comm.connect())[0]
    assert seen["user"] == user and type(seen["user"]) is type(user)
    assert seen["cookies"]["sessionid"] == cookie
    assert seen["session"].session_key == cookie
    # Its data was dropped after the lookup, and comes back when read.
    assert "_session_cache" not in seen["session"].__dict__
    assert await seen["session"].aget("_auth_user_id") == str(user.pk)
    await comm.disconnect()


async def test_no_session_is_an_anonymous_user():
    """Without a cookie the inner app still runs; the consumer refuses with 4001."""
    app, seen = scope_catcher()
    comm = communicator(WebSocketAuth(app), [(b"origin", b"http://localhost")])
    assert (await comm.connect())[0]
    assert isinstance(seen["user"], AnonymousUser)
    await comm.disconnect()


async def test_a_foreign_or_missing_origin_is_denied_before_the_app_runs():
    """channels' AllowedHostsOriginValidator rules: the inner app never sees the scope."""
    for headers in ([(b"origin", b"http://evil.example")], []):
        app, seen = scope_catcher()
        comm = communicator(WebSocketAuth(app), headers)
        assert (await comm.connect())[0] is False
        assert seen == {}


async def test_no_more_than_ws_connect_concurrency_handshakes_run_at_once(settings):
    """A reconnect storm is worked through a few handshakes at a time, in arrival order."""
    settings.WS_CONNECT_CONCURRENCY = 2  # read when this test's event loop first asks
    running, peak, order = 0, 0, []

    async def handshake(number):
        nonlocal running, peak
        async with registry.connect_slots():
            running += 1
            peak = max(peak, running)
            order.append(number)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(handshake(n) for n in range(10)))
    assert peak == 2
    assert order == list(range(10))
