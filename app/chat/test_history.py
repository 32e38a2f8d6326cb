"""The history a fresh join gets, cached per room while the room's newest seq is unchanged."""

import pytest

from app.chat.history import room_history
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
