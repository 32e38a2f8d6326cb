"""Group commit: chat changes that wait together are written in one transaction."""

import asyncio
import threading

import pytest
from channels.db import database_sync_to_async
from django.db import DatabaseError
from django.db.backends.base.base import BaseDatabaseWrapper

from app.chat import services
from app.chat.models import ChatRoom, Message, RoomEvent
from app.chat.writer import Writer
from app.realtime.consumers.errors import ProtocolError
from app.realtime.ops import metrics

pytestmark = [pytest.mark.django_db(transaction=True)]


@database_sync_to_async
def new_room(name="lobby"):
    return ChatRoom.objects.create(name=name, display_name=name)


@database_sync_to_async
def stored(room):
    """(contents, seqs) of a room, oldest first."""
    return (list(Message.objects.filter(room=room).order_by("id").values_list("content",
                                                                              flat=True)),
            list(RoomEvent.objects.filter(room=room).order_by("seq").values_list("seq",
                                                                                 flat=True)))


def batches() -> tuple[float, float]:
    """(batches written, changes written) so far, from the batch-size histogram."""
    count = sum_ = 0.0
    for sample in metrics.WRITE_BATCH.collect()[0].samples:
        if sample.name.endswith("_count"):
            count = sample.value
        elif sample.name.endswith("_sum"):
            sum_ = sample.value
    return count, sum_


async def test_changes_waiting_together_share_one_transaction_in_arrival_order(make_user):
    """Three messages sent at once are one batch; their seqs follow the order they came in."""
    alice, room, writer = await make_user("alice"), await new_room(), Writer()
    before = batches()
    frames = await asyncio.gather(*(
        writer.write(services.post_message, room, alice, text, None, n)
        for n, text in enumerate(["one", "two", "three"])))
    assert [(f["message"], f["seq"], f["client_id"]) for f in frames] == [
        ("one", 1, 0), ("two", 2, 1), ("three", 3, 2)]
    assert await stored(room) == (["one", "two", "three"], [1, 2, 3])
    count, changes = batches()
    assert (count - before[0], changes - before[1]) == (1, 3)


async def test_a_failing_change_is_rolled_back_alone(make_user):
    """A reply to a message of another room fails for its sender; the others commit, gap-free."""
    alice, room, other = await make_user("alice"), await new_room(), await new_room("other")
    elsewhere = await database_sync_to_async(services.post_message)(other, alice, "x", None, 0)
    writer = Writer()
    results = await asyncio.gather(
        writer.write(services.post_message, room, alice, "first", None, 1),
        writer.write(services.post_message, room, alice, "bad", elsewhere["message_id"], 2),
        writer.write(services.post_message, room, alice, "third", None, 3),
        return_exceptions=True)
    assert isinstance(results[1], ProtocolError) and results[1].code == "not_found"
    assert [r["seq"] for r in (results[0], results[2])] == [1, 2]
    assert await stored(room) == (["first", "third"], [1, 2])


async def test_a_failed_commit_stores_nothing_and_every_sender_gets_the_error(
        make_user, monkeypatch):
    """When the batch's commit fails (disk full, a database failover) no change is stored."""
    alice, room, writer = await make_user("alice"), await new_room(), Writer()

    def failing_commit(self):
        raise DatabaseError("commit failed")

    monkeypatch.setattr(BaseDatabaseWrapper, "commit", failing_commit)
    before = batches()
    results = await asyncio.gather(*(
        writer.write(services.post_message, room, alice, text, None, n)
        for n, text in enumerate(["one", "two"])), return_exceptions=True)
    monkeypatch.undo()
    assert [type(r) for r in results] == [DatabaseError, DatabaseError]
    count, changes = batches()
    assert (count - before[0], changes - before[1]) == (1, 2)  # one batch's commit failed
    assert await stored(room) == ([], [])
    frame = await writer.write(services.post_message, room, alice, "after", None, 9)
    assert frame["seq"] == 1  # the failed batch gave its numbers back


async def test_changes_arriving_during_a_write_form_the_next_batch(make_user):
    """A change sent while a batch is in the database waits for it, then goes in the next one."""
    alice, room, writer = await make_user("alice"), await new_room(), Writer()
    in_database, release = threading.Event(), threading.Event()

    def slow_post(*args):
        in_database.set()
        release.wait(5)
        return services.post_message(*args)

    before = batches()
    first = asyncio.ensure_future(writer.write(slow_post, room, alice, "a", None, 1))
    await asyncio.to_thread(in_database.wait, 5)
    later = [asyncio.ensure_future(writer.write(services.post_message, room, alice, t, None, 2))
             for t in ("b", "c")]
    await asyncio.sleep(0)  # both are waiting now
    release.set()
    frames = [await first] + [await f for f in later]
    assert [f["seq"] for f in frames] == [1, 2, 3]
    count, changes = batches()
    assert (count - before[0], changes - before[1]) == (2, 3)


def test_batches_over_the_same_rooms_in_opposite_orders_do_not_deadlock(make_user):
    """Two processes' batches touch rooms A and B in opposite arrival orders, at once.

    Each change holds its room's row lock to the batch's commit. In arrival order the batches
    would wait for each other (PostgreSQL refuses one change: "deadlock detected"); in room
    order the second waits for the first to commit, and every change is stored.
    """
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("row locks and deadlock detection are PostgreSQL's (SQLite locks the file)")
    from django.contrib.auth import get_user_model

    from app.chat.writer import write_batch

    user = get_user_model().objects.create_user("locker", password="pw")
    room_a = ChatRoom.objects.create(name="room-a", display_name="a")
    room_b = ChatRoom.objects.create(name="room-b", display_name="b")
    both_locked_one = threading.Barrier(2)

    def post_then_wait(room, user, text, reply_to, client_id):
        frame = services.post_message(room, user, text, reply_to, client_id)
        try:
            # Hold this room's lock until the other batch holds its first room's lock too
            # (in room order the other batch is already waiting for this one: time out).
            both_locked_one.wait(timeout=1)
        except threading.BrokenBarrierError:
            pass
        return frame

    outcomes = {}

    def process(name, rooms):
        try:
            outcomes[name] = write_batch([
                (post_then_wait if i == 0 else services.post_message,
                 (room, user, f"{name}-{room.name}", None, None))
                for i, room in enumerate(rooms)
            ])
        finally:
            connection.close()

    threads = [threading.Thread(target=process, args=("p1", [room_a, room_b])),
               threading.Thread(target=process, args=("p2", [room_b, room_a]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    errors = [value for results in outcomes.values() for ok, value in results if not ok]
    assert errors == []
    assert Message.objects.count() == 4
    assert sorted(RoomEvent.objects.filter(room=room_a).values_list("seq", flat=True)) == [1, 2]
