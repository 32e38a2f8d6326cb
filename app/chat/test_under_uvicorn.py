"""The chat consumer under uvicorn with our protocol, as a WebSocket process runs it.

The other consumer tests use channels' communicator, where channels' own receive loop runs;
here the server's event queue doubles as the consumer's channel inbox (one task per socket)
and room events are written synchronously by the layer's reader
(app/realtime/consumers/delivery.py).
"""

import asyncio
import contextlib
import json

import pytest
import websockets
from channels.layers import get_channel_layer
from websockets.asyncio.client import connect

from app.asgi import application
from app.chat.conftest import session_for
from app.realtime.adapters.test_uvicorn import serve

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


async def test_a_message_on_its_way_when_the_drain_begins_is_stored_and_broadcast(
        redis_layer, make_user, caplog):
    """The close waits DRAIN_CLOSE_GRACE after `reconnect`: a frame already sent is handled."""
    from app.realtime.consumers.registry import registry

    alice, bob = await make_user("alice"), await make_user("bob")
    async with chanfleet_server() as (server, url):
        a = await joined(f"{url}/ws/chat/lobby/", alice)
        b = await joined(f"{url}/ws/chat/lobby/", bob)
        await a.send(json.dumps({"type": "message", "message": "crossing", "id": "c1"}))
        try:
            # The drain runs before the server has read alice's frame.
            draining = asyncio.ensure_future(registry.drain(window=0, retry_max_ms=0))
            assert (await next_of(b, "message"))["client_id"] == "c1"
            assert (await next_of(a, "message"))["client_id"] == "c1"
            await draining
            for socket in (a, b):
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:  # presence notices may come first
                        await asyncio.wait_for(socket.recv(), 5)
                assert closed.value.rcvd.code == 1012
            await asyncio.sleep(0.2)  # the consumers' disconnects
            # No consumer died on a send after its close (uvicorn raises on those).
            assert not [r for r in caplog.records if r.levelname == "ERROR"]
            assert registry.consumers == set()
        finally:
            registry.draining = False


async def test_a_room_event_that_races_the_close_is_dropped_and_the_disconnect_still_runs(
        redis_layer, make_user, caplog):
    """An event dispatched after our close is not sent (uvicorn would raise and end the task)."""
    from app.chat import presence
    from app.realtime.consumers.registry import registry

    alice = await make_user("alice")
    async with chanfleet_server() as (server, url):
        socket = await joined(f"{url}/ws/chat/lobby/", alice)
        # Registered just after the join frames: a ping's answer comes after that.
        await socket.send(json.dumps({"type": "ping"}))
        await next_of(socket, "pong")
        (consumer,) = registry.consumers
        layer = get_channel_layer()
        event = {"type": "room.event", "seq": consumer.next_seq, "kind": "message",
                 "text": json.dumps({"type": "message", "seq": consumer.next_seq})}
        # Queued before the close, dispatched after it.
        layer._queues[consumer.channel_name].put(event)
        await consumer.close(code=1012)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                assert json.loads(await asyncio.wait_for(socket.recv(), 5))["type"] != "message"
        await asyncio.sleep(0.2)
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        # The disconnect handler ran: the socket left the registry, the group and presence.
        assert registry.consumers == set()
        assert layer.local_groups == {}
        assert not await presence.is_online(alice.pk)


async def test_a_consumer_ended_by_a_send_to_a_gone_client_still_cleans_up(
        redis_layer, make_user, monkeypatch):
    """uvicorn swallows ClientDisconnected out of the application: the cleanup runs anyway.

    Without it the consumer stayed registered, its inbox kept receiving every broadcast of its
    room and its membership was refreshed forever: memory that grew with the traffic.
    """
    from uvicorn.protocols.utils import ClientDisconnected

    from app.chat import presence
    from app.chat.consumers import ChatConsumer
    from app.realtime.consumers.registry import registry

    original = ChatConsumer.receive

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == '{"type": "gone"}':
            raise ClientDisconnected()  # what a send to a client already gone raises
        return await original(self, text_data, bytes_data)

    monkeypatch.setattr(ChatConsumer, "receive", receive)
    alice = await make_user("alice")
    async with chanfleet_server() as (server, url):
        socket = await joined(f"{url}/ws/chat/lobby/", alice)
        await socket.send(json.dumps({"type": "ping"}))
        await next_of(socket, "pong")
        (consumer,) = registry.consumers
        layer = get_channel_layer()
        await socket.send('{"type": "gone"}')
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(socket.recv(), 5)
        for _ in range(50):
            if not registry.consumers:
                break
            await asyncio.sleep(0.1)
        assert registry.consumers == set()
        assert consumer.channel_name not in layer._queues
        assert layer.local_groups == {}
        assert not await presence.is_online(alice.pk)
