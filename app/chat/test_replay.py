"""Resumes of one room read its events from the database once; what they replay is unchanged."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async

from app.chat import services
from app.chat.replay import RoomEvents, Span, room_events, union
from app.chat.test_chat_consumer import join, say
from app.chat.test_handshake_facts import database_thread_queries
from app.chat.test_resume_position import lobby, missed_while_away, record
from app.chat.test_resume_position import user as user_named
from app.realtime.layer.store import get_store


def span(low: int, high: int) -> Span:
    """Events low+1..high, each frame naming its seq."""
    return Span(low, high, [(seq, "message", json.dumps({"seq": seq}))
                            for seq in range(low + 1, high + 1)])


def seqs(events) -> list[int]:
    return [seq for seq, _, _ in events]


def test_a_span_answers_from_any_position_it_covers():
    """After a covered position: the later events; the span's ends are covered too."""
    events = span(10, 15)
    assert seqs(events.after(12)) == [13, 14, 15]
    assert events.covers(10) and events.covers(15)
    assert seqs(events.after(15)) == []
    assert not events.covers(9) and not events.covers(16)


@pytest.mark.parametrize(("a", "b", "joined"), [
    ((10, 15), (15, 20), (10, 20)),  # adjoining
    ((10, 15), (12, 20), (10, 20)),  # overlapping, in either order
    ((12, 20), (10, 15), (10, 20)),
    ((10, 20), (12, 15), (10, 20)),  # one inside the other
    ((10, 15), (16, 20), (16, 20)),  # apart: the newer, never a span with a hole
    ((16, 20), (10, 15), (16, 20)),
])
def test_two_spans_join_only_without_a_hole(a, b, joined):
    """Every seq of the joined span is there exactly once."""
    union_of = union(span(*a), span(*b))
    assert (union_of.low, union_of.high) == joined
    assert seqs(union_of.frames) == list(range(joined[0] + 1, joined[1] + 1))


def test_a_span_keeps_its_newest_events_and_covers_only_from_them():
    """Trimmed to 3, the span starts at the last dropped seq."""
    trimmed = span(10, 20).trimmed(3)
    assert (trimmed.low, seqs(trimmed.frames)) == (17, [18, 19, 20])
    assert not trimmed.covers(16)


def test_a_broadcast_joins_the_span_only_as_its_next_seq():
    """A later seq would leave a hole, and a room without a span has nothing to extend."""
    events = RoomEvents()
    events.spans[1] = span(10, 12)
    events.saw(1, 14, "message", '{"seq":14}')
    events.saw(2, 1, "message", '{"seq":1}')
    assert events.spans[1].high == 12 and 2 not in events.spans
    events.saw(1, 13, "message", '{"seq":13}')
    assert events.spans[1].high == 13
    assert events.spans[1].after(12) == [(13, "message", '{"seq":13,"replay":true}')]


pytestmark_db = pytest.mark.django_db(transaction=True)


def roomevent_queries(queries) -> list[dict]:
    return [q for q in queries.captured_queries if "chat_roomevent" in q["sql"]]


@pytestmark_db
async def test_resumes_behind_the_record_read_the_rooms_events_once(ws, make_user):
    """The first resume reads the missed events; the next, from the same place, gets the same
    frames from memory."""
    a, left = await missed_while_away(ws, make_user)
    async with database_thread_queries() as queries:
        first = await join(ws, await user_named("bob"), query=f"?last_seq={left}")
    assert len(roomevent_queries(queries)) == 1
    async with database_thread_queries() as queries:
        second = await join(ws, await make_user("carol"), query=f"?last_seq={left}")
        third = await join(ws, await make_user("dave"), query=f"?last_seq={left + 2}")
    assert not roomevent_queries(queries)
    replayed = [f for f in first.joined if f["type"] == "message"]
    assert [f["seq"] for f in replayed] == [left + 1, left + 2, left + 3]
    assert all(f["replay"] for f in replayed)
    assert [f for f in second.joined if f["type"] == "message"] == replayed
    assert [f for f in third.joined if f["type"] == "message"] == replayed[2:]
    assert second.joined[-1] == first.joined[-1] == {
        "type": "resume_end", "room": "lobby", "seq": left + 3, "replayed": 3}


@pytestmark_db
async def test_the_span_keeps_up_with_the_rooms_broadcasts(ws, make_user):
    """An event broadcast after the read joins the span: the next resume reads nothing, and
    replays the same frames a database read gives."""
    a, left = await missed_while_away(ws, make_user)
    await join(ws, await user_named("bob"), query=f"?last_seq={left}")
    latest = (await say(a, "later"))["seq"]
    async with database_thread_queries() as queries:
        carol = await join(ws, await make_user("carol"), query=f"?last_seq={left}")
    assert not roomevent_queries(queries)
    replayed = [f for f in carol.joined if f["type"] == "message"]
    assert [f["seq"] for f in replayed] == list(range(left + 1, latest + 1))
    assert replayed[-1]["message"] == "later" and replayed[-1]["replay"] is True
    room_events.clear()
    dave = await join(ws, await make_user("dave"), query=f"?last_seq={left}")
    assert [f for f in dave.joined if f["type"] == "message"] == replayed


@pytestmark_db
async def test_an_event_the_process_did_not_see_is_read_and_replayed_in_order(ws, make_user):
    """Stored and recorded without a broadcast reaching this process: the record is past the
    span, so the database is read again, and nothing is skipped."""
    a, left = await missed_while_away(ws, make_user)
    bob = await join(ws, await user_named("bob"), query=f"?last_seq={left}")
    await a.close()
    await bob.close()
    room, alice = await lobby(), await user_named("alice")
    frame = await database_sync_to_async(services.post_message)(room, alice, "unseen", None, None)
    await get_store().raise_room_positions({room.id: frame["seq"]}, 60)
    async with database_thread_queries() as queries:
        carol = await join(ws, await make_user("carol"), query=f"?last_seq={left}")
    assert len(roomevent_queries(queries)) == 1
    replayed = [f for f in carol.joined if f["type"] == "message"]
    assert [f["seq"] for f in replayed] == list(range(left + 1, frame["seq"] + 1))
    assert replayed[-1]["message"] == "unseen"


@pytestmark_db
async def test_a_lost_record_is_not_trusted_and_the_database_is_read(ws, make_user):
    """Without the room's record in Redis (a failover), the span is not used."""
    a, left = await missed_while_away(ws, make_user)
    await join(ws, await user_named("bob"), query=f"?last_seq={left}")
    store = get_store()
    await store.client.delete(store.key("seq", (await lobby()).id))
    async with database_thread_queries() as queries:
        carol = await join(ws, await make_user("carol"), query=f"?last_seq={left}")
    assert len(roomevent_queries(queries)) == 1
    assert carol.joined[-1]["replayed"] == 3


@pytestmark_db
async def test_a_record_behind_the_span_still_gets_every_event_the_span_holds(ws, make_user):
    """A lagging record (a raise lost in a failover) below the span's end: the replay holds
    the span's events, to its end."""
    a, left = await missed_while_away(ws, make_user)
    await join(ws, await user_named("bob"), query=f"?last_seq={left}")
    await record((await lobby()).id, left + 1)
    carol = await join(ws, await make_user("carol"), query=f"?last_seq={left}")
    assert [f["seq"] for f in carol.joined if f["type"] == "message"] == [
        left + 1, left + 2, left + 3]
    assert carol.joined[-1]["seq"] == left + 3


@pytestmark_db
async def test_replays_of_a_room_that_arrive_together_share_one_read(ws, make_user):
    """Twenty replays at once, none cached yet: one read of the room's events."""
    a, left = await missed_while_away(ws, make_user)
    room = await lobby()
    recorded = await get_store().room_position(room.id)
    async with database_thread_queries() as queries:
        answers = await asyncio.gather(
            *(room_events.replay(room, left, recorded) for _ in range(20)))
    assert len(roomevent_queries(queries)) == 1
    assert {tuple(seqs(events)) for events, _, _, _ in answers} == {
        (left + 1, left + 2, left + 3)}
    assert sum(read for _, _, _, read in answers) == 1
