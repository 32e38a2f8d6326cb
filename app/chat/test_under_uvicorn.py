"""The chat consumer under uvicorn with our protocol, as a WebSocket process runs it.

The other consumer tests use channels' communicator, where channels' own receive loop runs;
here the server's event queue doubles as the consumer's channel inbox (one task per socket)
and room events are written synchronously by the layer's reader (deliver_now/write_text).
"""

import asyncio
import contextlib
import json

import pytest
from channels.layers import get_channel_layer
from websockets.asyncio.client import connect

from app.asgi import application
from app.chat.conftest import session_for
from app.realtime.test_wsserver import serve

pytestmark = [pytest.mark.django_db(transaction=True)]


@contextlib.asynccontextmanager
async def chanfleet_server():
    """The full ASGI application under uvicorn on a free loopback port."""
    try:
        async with serve(application) as served:
            yield served
    finally:
        await get_channel_layer().stop_readers()


async def joined(url: str, user):
    """Open a chat socket as a user and read up to the end of its history."""
    cookie = await session_for(user)
    socket = await connect(url, compression=None, additional_headers={
        "Cookie": f"sessionid={cookie}", "Origin": "http://localhost"})
    while json.loads(await asyncio.wait_for(socket.recv(), 5))["type"] != "history_end":
        pass
    return socket


async def next_of(socket, kind: str) -> dict:
    """The next frame of a type (heartbeats, presence and notices skipped)."""
    while True:
        frame = json.loads(await asyncio.wait_for(socket.recv(), 5))
        if frame["type"] == kind:
            return frame


async def test_one_task_per_socket_reads_frames_and_room_events_in_order(redis_layer, make_user):
    """No channels receiver tasks; the layer delivers into uvicorn's queue; nothing reordered."""
    alice, bob = await make_user("alice"), await make_user("bob")
    async with chanfleet_server() as (server, url):
        a = await joined(f"{url}/ws/chat/lobby/", alice)
        b = await joined(f"{url}/ws/chat/lobby/", bob)
        inboxes = list(get_channel_layer()._queues.values())
        assert {id(p.queue) for p in server.server_state.connections} <= set(map(id, inboxes))
        receivers = [t for t in asyncio.all_tasks()
                     if t.get_coro().__qualname__.endswith(".receive")]
        assert receivers == []  # channels' await_many_dispatch would run two per socket
        for n in range(20):
            await a.send(json.dumps({"type": "message", "message": f"m{n}", "id": n}))
        got = [(await next_of(b, "message"))["message"] for _ in range(20)]
        echoed = [(await next_of(a, "message"))["client_id"] for _ in range(20)]
        assert got == [f"m{n}" for n in range(20)] and echoed == list(range(20))
        await a.close()
        await b.close()
