"""The history a fresh join gets, cached per room while the room's newest seq is unchanged."""

import asyncio

import pytest
from channels.db import database_sync_to_async

from app.chat import history
from app.chat.history import room_history
from app.chat.models import ChatRoom
from app.chat.test_chat_consumer import join
from app.chat.test_handshake_facts import database_thread_queries
from app.realtime.layer.store import get_store

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_joins_of_an_unchanged_room_read_no_history_from_the_database(ws, make_user):
    """The second join sends the same frames from memory; history queries run once."""
    alice, bob = await make_user("alice"), await make_user("bob")
    first = await join(ws, alice, room="quiet")
    for text in ("one", "two"):
        await first.send({"type": "message", "message": text})
        await first.recv_type("message")
    second = await join(ws, bob, room="quiet")  # reads the history, caches it
    async with database_thread_queries() as queries:
        third = await join(ws, bob, room="quiet")
    history = [f for f in third.joined if f.get("history")]
    assert [f["content"] for f in history] == ["one", "two"]
    assert history == [f for f in second.joined if f.get("history")]
    assert not [q for q in queries.captured_queries if "chat_roomevent" in q["sql"]]


async def test_each_change_to_the_room_is_in_the_next_joins_history(ws, make_user):
    """A new message, an edit, a reaction and a delete each move the seq: the cache misses."""
    alice, bob = await make_user("alice"), await make_user("bob")
    author = await join(ws, alice, room="busy")
    await author.send({"type": "message", "message": "first"})
    message = await author.recv_type("message")
    steps = [
        ({"type": "edit", "message_id": message["message_id"], "content": "edited"},
         "message_edited", lambda h: h[-1]["content"] == "edited"),
        ({"type": "reaction", "message_id": message["message_id"], "emoji": "+1"}, "reaction",
         lambda h: h[-1]["reactions"] == {"+1": ["alice"]}),
        ({"type": "message", "message": "second"}, "message",
         lambda h: [f["content"] for f in h][-1] == "second"),
    ]
    for frame, kind, check in steps:
        await author.send(frame)
        await author.recv_type(kind)
        reader = await join(ws, bob, room="busy")
        history = [f for f in reader.joined if f.get("history")]
        assert check(history), (kind, history)
        await reader.close()


async def test_a_record_lagging_the_database_is_raised_and_nothing_is_skipped(
        ws, make_user):
    """With the room's recorded position lost (a failover), the join reads the database,
    raises the record, and its history_end names the database's newest seq."""
    alice, bob = await make_user("alice"), await make_user("bob")
    author = await join(ws, alice, room="lagging")
    await author.send({"type": "message", "message": "kept"})
    seq = (await author.recv_type("message"))["seq"]
    store = get_store()
    await store.client.flushdb()  # every recorded position gone, as on a new master
    room_history.clear()
    reader = await join(ws, bob, room="lagging")
    end = [f for f in reader.joined if f["type"] == "history_end"][-1]
    assert end["seq"] == seq
    rooms = [key async for key in store.client.scan_iter(store.key("seq", "*"))]
    assert len(rooms) == 1


def history_queries(queries) -> list[str]:
    """The SQL of history reads among captured queries (they all read chat_roomevent)."""
    return [q["sql"] for q in queries.captured_queries if "chat_roomevent" in q["sql"]]


async def written_room(ws, make_user, name: str, texts) -> tuple:
    """A room where alice wrote `texts`: (the room, alice's open client)."""
    author = await join(ws, await make_user("alice"), room=name)
    for text in texts:
        await author.send({"type": "message", "message": text})
        await author.recv_type("message")
    return await database_sync_to_async(ChatRoom.objects.get)(name=name), author


async def test_joins_missing_together_share_one_history_read(ws, make_user):
    """Twenty joins of a room none has read, all at once: one read, the same frames."""
    room, _ = await written_room(ws, make_user, "crowded", ("one", "two"))
    room_history.clear()
    async with database_thread_queries() as alone:
        await room_history.latest(room)
    room_history.clear()
    async with database_thread_queries() as together:
        answers = await asyncio.gather(*(room_history.latest(room) for _ in range(20)))
    assert history_queries(together) == history_queries(alone)
    assert len({(upto, tuple(frames)) for upto, frames in answers}) == 1
    assert [frame for frame in answers[0][1] if '"one"' in frame]


async def test_a_shared_read_older_than_the_joins_position_is_read_again(
        ws, make_user, monkeypatch):
    """A join that knows of a newer event than the read in flight does not take that read."""
    room, author = await written_room(ws, make_user, "moving", ("one",))
    room_history.clear()
    started, release = asyncio.Event(), asyncio.Event()
    real_read = history._read

    async def held_read(room):
        answer = await real_read(room)
        if not started.is_set():  # only the first read waits, holding its old answer
            started.set()
            await release.wait()
        return answer

    monkeypatch.setattr(history, "_read", held_read)
    first = asyncio.ensure_future(room_history.latest(room))
    await started.wait()
    await author.send({"type": "message", "message": "two"})
    newest = (await author.recv_type("message"))["seq"]
    second = asyncio.ensure_future(room_history.latest(room, newest))
    await asyncio.sleep(0.05)  # the second join finds the first's read in flight
    release.set()
    (old_upto, old_frames), (upto, frames) = await first, await second
    assert old_upto == newest - 1 and not [f for f in old_frames if '"two"' in f]
    assert upto == newest and [f for f in frames if '"two"' in f]
