"""Presence across processes: online while any connection lives, expiring after a crash."""

import asyncio

import pytest

from app.chat import presence
from app.chat.models import ChatRoom
from app.chat.test_chat_consumer import join
from app.realtime.consumers.registry import registry

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_online_while_one_of_two_connections_remains_then_offline(ws, make_user):
    """Closing one of two connections keeps the user online; closing the last does not."""
    alice = await make_user("alice")
    first, second = await join(ws, alice), await join(ws, alice)
    assert await presence.is_online(alice.pk)
    await first.close()
    assert await presence.is_online(alice.pk)
    await second.close()
    assert not await presence.is_online(alice.pk)


async def test_presence_expires_after_a_process_dies_without_disconnect(ws, make_user, settings):
    """A process killed without running disconnect stops refreshing, so its users expire."""
    settings.PRESENCE_TTL = 1
    alice = await make_user("alice")
    client = await join(ws, alice)
    assert await presence.is_online(alice.pk)
    # A kill -9: the consumer task dies, disconnect() never runs, nothing refreshes presence.
    client.comm.future.cancel()
    registry.consumers.clear()
    await asyncio.sleep(1.2)
    assert not await presence.is_online(alice.pk)
    room = await ChatRoom.objects.aget(name="lobby")
    assert alice.pk not in await presence.room_user_ids(room.id)


async def test_the_heartbeat_keeps_presence_alive_past_the_ttl(ws, make_user, settings):
    """A live connection is refreshed by the process heartbeat and never expires."""
    settings.PRESENCE_TTL = 1
    alice = await make_user("alice")
    await join(ws, alice)
    for _ in range(3):
        await asyncio.sleep(0.5)
        await registry.beat()
    assert await presence.is_online(alice.pk)


async def test_rooms_of_lists_the_rooms_a_user_is_in(ws, make_user):
    """Status changes go to every room the user is in, found through presence."""
    alice = await make_user("alice")
    await join(ws, alice, "one")
    await join(ws, alice, "two")
    assert await presence.rooms_of(alice.pk) == {"one", "two"}
