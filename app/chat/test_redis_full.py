"""The chat route while Redis is full (maxmemory reached): what docs/protocol.md promises.

The test's Redis gets maxmemory 1 byte with CONFIG SET, so it refuses every write that may
grow memory (OOM), as a Redis at its limit with policy noeviction does.
"""

import asyncio
import os

import pytest
import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from app.chat.models import Message
from app.realtime.adapters.channels_redis import group_key
from app.realtime.consumers.registry import registry

pytestmark = [pytest.mark.django_db(transaction=True)]
# Memberships kept in Redis, and a group send that a full Redis refuses, are the script
# fan-out's; with pub/sub fan-out memberships live in each process and PUBLISH needs no memory.
script_fanout_only = pytest.mark.skipif(
    os.environ.get("CHANNEL_GROUP_FANOUT") == "pubsub", reason="script fan-out's behaviour")


class Memory:
    """Lowers the test Redis's maxmemory below its use, and restores it."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url)
        self.limit = self.client.config_get("maxmemory")["maxmemory"]

    def fill(self) -> None:
        """Make Redis full: writes that may grow memory are refused with OOM."""
        self.client.config_set("maxmemory", "1")

    def free(self) -> None:
        """Give Redis its memory back."""
        self.client.config_set("maxmemory", self.limit)

    def expire_room(self, room: str = "lobby") -> None:
        """Drop a room's memberships, as group_expiry does when nothing could refresh them."""
        self.client.delete(group_key(get_channel_layer(), f"chat.{room}"))


@pytest.fixture
def memory(redis_layer):
    """The test Redis's memory limit, restored at teardown, pass or fail."""
    memory = Memory(redis_layer["address"])
    yield memory
    memory.free()
    memory.client.close()


async def join(ws, user, room="lobby"):
    """Open a chat client, read its join frames and wait until the heartbeat knows it."""
    before = len(registry.consumers)
    client = await ws(f"/ws/chat/{room}/", user)
    await client.recv_until("history_end")
    for _ in range(100):
        if len(registry.consumers) > before:
            break
        await asyncio.sleep(0.01)
    return client


async def pair(ws, make_user):
    """alice and bob in one room, with alice past bob's user_joined."""
    a = await join(ws, await make_user("alice"))
    b = await join(ws, await make_user("bob"))
    await a.recv_type("user_joined")
    return a, b


async def still_open(client) -> bool:
    """The connection answers a ping."""
    await client.send({"type": "ping", "id": "still-open"})
    return (await client.recv_type("pong"))["client_id"] == "still-open"


async def test_a_message_is_stored_and_broadcast_live_while_the_memberships_last(
        ws, make_user, memory):
    """The rate limit cannot count and lets it through; the group send still passes."""
    a, b = await pair(ws, make_user)
    memory.fill()
    await a.send({"type": "message", "message": "while full", "id": "f1"})
    for client in (a, b):
        frame = await client.recv_type("message")
        assert (frame["seq"], frame["message"], frame["client_id"]) == (1, "while full", "f1")
    content = await database_sync_to_async(
        lambda: Message.objects.get(pk=frame["message_id"]).content)()
    assert content == "while full"


@script_fanout_only
async def test_once_the_memberships_expired_everyone_gets_messages_by_the_gap_check(
        ws, make_user, memory):
    """No live broadcast reaches anyone, and nothing says so: the heartbeat delivers it."""
    a, b = await pair(ws, make_user)
    memory.fill()
    memory.expire_room()
    await a.send({"type": "message", "message": "by gap fill", "id": "g1"})
    assert await a.silent(0.5) and await b.silent(0.1)
    await registry.beat()  # the heartbeat's gap check reads the database, not Redis
    for client in (a, b):
        frame = await client.recv_type("message")
        assert (frame["seq"], frame["message"], frame["client_id"]) == (1, "by gap fill", "g1")
    assert await still_open(a) and await still_open(b)


@script_fanout_only
async def test_a_subscription_is_answered_unavailable_and_the_socket_stays_open(
        ws, make_user, memory):
    """Subscribing needs a membership Redis cannot store: `unavailable`, retry later."""
    client = await ws("/ws/live-updates/", await make_user("alice"))
    memory.fill()
    await client.send({"type": "subscribe", "topic": "rooms", "id": "s1"})
    error = await client.recv_type("error")
    assert (error["code"], error["client_id"]) == ("unavailable", "s1")
    assert await still_open(client)


async def test_a_new_connection_is_refused_with_4503(ws, make_user, memory):
    """Joining needs a group membership Redis cannot store: the retryable close code."""
    user = await make_user("carol")
    memory.fill()
    client = await ws("/ws/chat/lobby/", user)
    assert await client.closed_with() == 4503


@script_fanout_only
async def test_live_delivery_comes_back_by_itself_when_memory_frees(ws, make_user, memory):
    """The heartbeat's first refresh that passes re-adds the memberships: broadcasts are live."""
    a, b = await pair(ws, make_user)
    memory.fill()
    memory.expire_room()
    await a.send({"type": "message", "message": "missed live", "id": "m1"})
    assert await b.silent(0.5)
    memory.free()
    await registry.beat()
    await a.send({"type": "message", "message": "live again", "id": "m2"})
    received = [await b.recv_type("message"), await b.recv_type("message")]
    assert [(f["seq"], f["message"]) for f in received] == [(1, "missed live"), (2, "live again")]
