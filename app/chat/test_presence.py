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


async def notices(client) -> list[str]:
    """The presence notices (user_joined, user_left) a client receives until it is quiet."""
    kinds = []
    while not await client.silent(0.3):
        frame = await client.recv()
        if frame["type"] in ("user_joined", "user_left"):
            kinds.append(frame["type"])
    return kinds


async def pair_in_lobby(ws, make_user):
    alice, bob = await make_user("alice"), await make_user("bob")
    a = await join(ws, alice)
    b = await join(ws, bob)
    assert await notices(a) == ["user_joined"]
    return a, b, bob


async def test_a_user_back_from_a_drain_is_neither_announced_leaving_nor_joining(ws, make_user):
    """A drained socket leaves its presence to expire; the user's return is no news."""
    a, b, bob = await pair_in_lobby(ws, make_user)
    registry.draining = True
    try:
        await b.close()  # the client leaves on `reconnect`, as clients do
        assert await notices(a) == []
    finally:
        registry.draining = False
    await join(ws, bob)  # on another process in real life; this one is not draining now
    assert await notices(a) == []


async def test_a_user_back_from_a_killed_process_is_not_announced_again(ws, make_user):
    """The killed process's entries have not expired: the user never looked absent."""
    a, b, bob = await pair_in_lobby(ws, make_user)
    b.comm.future.cancel()  # kill -9: disconnect() never runs
    registry.consumers.clear()  # nor does anything of that process refresh presence
    await join(ws, bob)
    assert await notices(a) == []


async def test_a_user_who_really_left_is_announced_again_on_return(ws, make_user):
    """Outside a drain, a clean close says user_left and the next join user_joined."""
    a, b, bob = await pair_in_lobby(ws, make_user)
    await b.close()
    assert await notices(a) == ["user_left"]
    await join(ws, bob)
    assert await notices(a) == ["user_joined"]


async def test_a_user_back_within_the_leave_grace_is_no_news(ws, make_user, redis_layer,
                                                             settings):
    """A reload or a dropped network: the room hears neither user_left nor user_joined."""
    settings.CHAT_LEAVE_GRACE = 1.0
    a, b, bob = await pair_in_lobby(ws, make_user)
    await b.close()
    assert await notices(a) == []
    await join(ws, bob)
    await asyncio.sleep(1.0)  # past the grace: the pending leave finds bob back
    assert await notices(a) == []


async def test_a_user_who_stays_away_is_announced_once_the_grace_is_over(ws, make_user,
                                                                       redis_layer, settings):
    """user_left comes when the grace ends, not before; the room's set drops the user then."""
    settings.CHAT_LEAVE_GRACE = 0.8
    a, b, bob = await pair_in_lobby(ws, make_user)
    room = await ChatRoom.objects.aget(name="lobby")
    closed = asyncio.get_running_loop().time()
    await b.close()
    assert await a.silent(0.5)
    assert bob.pk in await presence.room_user_ids(room.id)
    await a.recv_type("user_left")
    assert asyncio.get_running_loop().time() - closed >= 0.8
    assert bob.pk not in await presence.room_user_ids(room.id)
    assert await notices(a) == []


async def test_a_grace_longer_than_the_presence_ttl_keeps_the_user_that_long(
        ws, make_user, redis_layer, settings):
    """The kept entry outlives its last refresh: back after PRESENCE_TTL, within the grace."""
    settings.PRESENCE_TTL = 1
    settings.CHAT_LEAVE_GRACE = 2.5
    a, b, bob = await pair_in_lobby(ws, make_user)
    await b.close()
    await asyncio.sleep(1.5)  # bob's entries were last written more than PRESENCE_TTL ago
    await join(ws, bob)
    assert await notices(a) == []


async def test_leaving_again_after_a_return_within_the_grace_is_one_user_left(
        ws, make_user, redis_layer, settings):
    """Each leave's settling checks that it is still the latest: one user_left, at the end."""
    settings.CHAT_LEAVE_GRACE = 0.8
    a, b, bob = await pair_in_lobby(ws, make_user)
    await b.close()
    await asyncio.sleep(0.3)
    again = await join(ws, bob)
    await asyncio.sleep(0.3)
    await again.close()  # the first leave's settling comes before this one's
    await asyncio.sleep(1.2)
    assert await notices(a) == ["user_left"]


async def test_the_room_holds_each_user_once_however_many_sockets(ws, make_user, redis_layer,
                                                                    settings):
    """A handshake reads the room's users, not their sockets (its cost must not grow with a
    big room's connections); a user leaves the room's set with their last socket."""
    import redis

    alice, bob = await make_user("alice"), await make_user("bob")
    alices = [await join(ws, alice) for _ in range(6)]
    bobs = [await join(ws, bob)]
    room = await ChatRoom.objects.aget(name="lobby")
    raw = redis.Redis.from_url(redis_layer["address"])
    key = f"{settings.REDIS_PREFIX}:presence:room:{room.id}"
    assert sorted(raw.zrange(key, 0, -1)) == sorted([str(alice.pk).encode(),
                                                     str(bob.pk).encode()])
    for client in alices[:-1]:
        await client.close()
    assert await presence.room_user_ids(room.id) == {alice.pk, bob.pk}
    await alices[-1].close()
    assert await presence.room_user_ids(room.id) == {bob.pk}
    assert raw.zcard(f"{key}:{alice.pk}") == 0
    await bobs[0].close()
    raw.close()


async def test_members_written_by_the_previous_release_still_count(ws, make_user, settings):
    """During a rolling deploy older processes write "<user id>:<channel>" room members."""
    from app.realtime.layer.store import get_store

    alice = await make_user("alice")
    client = await join(ws, alice)
    room = await ChatRoom.objects.aget(name="lobby")
    await get_store().presence_touch(f"room:{room.id}", "4242:specific.old!abc", 60)
    assert await presence.room_user_ids(room.id) == {alice.pk, 4242}
    await client.close()
