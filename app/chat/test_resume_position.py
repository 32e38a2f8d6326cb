"""A resume answered from the room's position in Redis, and why a stale one loses nothing."""

import pytest
from channels.db import database_sync_to_async

from app.chat.models import ChatRoom
from app.chat.test_chat_consumer import join, pair, say
from app.realtime.consumers.registry import registry
from app.realtime.layer.store import get_store

pytestmark = [pytest.mark.django_db(transaction=True)]


async def lobby() -> ChatRoom:
    return await database_sync_to_async(ChatRoom.objects.get)(name="lobby")


async def record(room_id: int, seq: int) -> None:
    """Overwrite the recorded position, as a raise lost in a Redis failover leaves it."""
    store = get_store()
    await store.client.set(store.key("seq", room_id), seq)


async def messages_until(client, text: str) -> list[dict]:
    """The `message` frames a client receives up to the one with this text."""
    frames = []
    while not frames or frames[-1]["message"] != text:
        frames.append(await client.recv_type("message"))
    return frames


async def missed_while_away(ws, make_user):
    """bob leaves at position `left`; alice then stores three messages bob did not see."""
    a, b = await pair(ws, make_user)
    left = (await say(a, "seen"))["seq"]
    await b.recv_type("message")
    await b.close()
    for n in range(3):
        await say(a, f"missed {n}")
    return a, left


async def test_each_commit_raises_the_recorded_position(ws, make_user):
    """After a message is stored the room's position in Redis is its seq."""
    a, _ = await pair(ws, make_user)
    room = await lobby()
    for n in range(3):
        seq = (await say(a, f"m{n}"))["seq"]
        assert await get_store().room_position(room.id) == seq


async def test_the_recorded_position_is_never_lowered(redis_layer):
    """Raises reaching Redis out of order leave the highest."""
    store = get_store()
    await store.raise_room_positions({7: 5}, 60)
    await store.raise_room_positions({7: 3}, 60)
    assert await store.room_position(7) == 5


async def test_a_resume_behind_the_record_replays_from_the_database(ws, make_user):
    """A client that missed events gets them replayed before `resume_end`, as before."""
    a, left = await missed_while_away(ws, make_user)
    bob = await join(ws, await user("bob"), query=f"?last_seq={left}")
    replayed = [f for f in bob.joined if f["type"] == "message"]
    assert [f["seq"] for f in replayed] == [left + 1, left + 2, left + 3]
    assert bob.joined[-1]["replayed"] == 3


async def test_a_stale_record_delivers_every_missed_event_once_on_the_heartbeat(ws, make_user):
    """The record lags the database: `resume_end` comes at once, the heartbeat fills the gap."""
    a, left = await missed_while_away(ws, make_user)
    await record((await lobby()).id, left)
    bob = await join(ws, await user("bob"), query=f"?last_seq={left}")
    assert bob.joined[-1]["seq"] == left and bob.joined[-1]["replayed"] == 0  # the fast path
    await registry.beat()
    await say(a, "live")
    frames = await messages_until(bob, "live")
    assert [f["seq"] for f in frames] == [left + 1, left + 2, left + 3, left + 4]
    assert [f["message"] for f in frames] == ["missed 0", "missed 1", "missed 2", "live"]
    await registry.beat()
    assert not [f for f in await drain_frames(bob) if f["type"] == "message"]


async def test_a_stale_record_delivers_every_missed_event_once_before_the_next_live_one(
        ws, make_user):
    """Without a heartbeat, the next broadcast's gap check fetches the missed events first."""
    a, left = await missed_while_away(ws, make_user)
    await record((await lobby()).id, left)
    bob = await join(ws, await user("bob"), query=f"?last_seq={left}")
    assert bob.joined[-1]["replayed"] == 0
    await say(a, "live")
    frames = await messages_until(bob, "live")
    assert [f["seq"] for f in frames] == [left + 1, left + 2, left + 3, left + 4]
    await registry.beat()
    assert not [f for f in await drain_frames(bob) if f["type"] == "message"]


async def test_a_client_ahead_of_a_stale_record_is_checked_against_the_database(ws, make_user):
    """A position past the record is read from the database, and the record raised to it."""
    a, left = await missed_while_away(ws, make_user)
    room = await lobby()
    await record(room.id, left)
    latest = left + 3
    bob = await join(ws, await user("bob"), query=f"?last_seq={latest}")
    assert bob.joined[-1] == {"type": "resume_end", "room": "lobby", "seq": latest,
                              "replayed": 0}
    assert await get_store().room_position(room.id) == latest
    await say(a, "live")
    assert [f["seq"] for f in await messages_until(bob, "live")] == [latest + 1]


@database_sync_to_async
def user(name):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(username=name)


async def drain_frames(client) -> list[dict]:
    """Every frame that arrives until the client has been quiet for a moment."""
    frames = []
    while not await client.silent(0.3):
        frames.append(await client.recv())
    return frames
