"""The chat route of docs/protocol.md, two or more clients over a real Redis channel layer."""

import asyncio

import pytest
from channels.db import database_sync_to_async

from app.chat import services
from app.chat.models import ChatRoom, Message, MessageReaction, RoomBan, RoomEvent
from app.realtime.consumers.registry import registry

pytestmark = [pytest.mark.django_db(transaction=True)]


async def join(ws, user, room="lobby", query=""):
    """Open a chat client, read its join frames and wait until the heartbeat knows it."""
    before = len(registry.consumers)
    client = await ws(f"/ws/chat/{room}/{query}", user)
    end = "resume_end" if "last_" in query else "history_end"
    client.joined = await client.recv_until(end)
    for _ in range(100):  # connect() finishes (user_joined) just after the join frames
        if len(registry.consumers) > before:
            break
        await asyncio.sleep(0.01)
    return client


@database_sync_to_async
def stored():
    """A snapshot of everything the chat stores, to prove bad input changed nothing."""
    return (
        list(Message.objects.order_by("id").values_list(
            "id", "content", "is_edited", "is_deleted")),
        list(RoomEvent.objects.order_by("id").values_list("room_id", "seq")),
        list(MessageReaction.objects.order_by("id").values_list("message_id", "user_id", "emoji")),
    )


async def pair(ws, make_user, room="lobby"):
    """alice and bob in one room, with alice past bob's user_joined."""
    alice, bob = await make_user("alice"), await make_user("bob")
    a = await join(ws, alice, room)
    b = await join(ws, bob, room)
    await a.recv_type("user_joined")
    return a, b


async def say(client, text, **extra):
    """Send a message and return the sender's copy of its broadcast."""
    await client.send({"type": "message", "message": text, **extra})
    return await client.recv_type("message")


# ---------------------------------------------------------------------------- joining
async def test_connect_sends_connected_user_list_and_history_end(ws, make_user):
    """A new client gets `connected`, `user_list` and an empty history ending in `history_end`."""
    client = await join(ws, await make_user("alice"))
    kinds = [f["type"] for f in client.joined]
    assert kinds == ["connected", "user_list", "history_end"]
    assert client.joined[0]["user"] == "alice"
    assert [u["user"] for u in client.joined[1]["users"]] == ["alice"]
    assert client.joined[2]["seq"] == 0


async def test_others_get_user_joined_and_the_user_list_names_everyone(ws, make_user):
    """The second user appears in the first one's stream and sees both in `user_list`."""
    a, b = await pair(ws, make_user)
    users = next(f for f in b.joined if f["type"] == "user_list")["users"]
    assert {u["user"] for u in users} == {"alice", "bob"}
    assert all(u["status"] == "online" for u in users)


async def test_history_on_connect_is_the_latest_messages_oldest_first(ws, make_user):
    """A late joiner receives earlier messages as `message` frames marked history."""
    a, _ = await pair(ws, make_user)
    for n in range(3):
        await say(a, f"m{n}")
    carol = await join(ws, await make_user("carol"))
    history = [f for f in carol.joined if f["type"] == "message"]
    assert [f["message"] for f in history] == ["m0", "m1", "m2"]
    assert [f["seq"] for f in history] == [1, 2, 3]
    assert all(f["history"] and f["reactions"] == {} for f in history)
    assert carol.joined[-1] == {"type": "history_end", "room": "lobby", "seq": 3}


async def test_user_left_is_sent_when_the_last_connection_closes(ws, make_user):
    """bob leaving makes alice receive `user_left`."""
    a, b = await pair(ws, make_user)
    await b.close()
    left = await a.recv_type("user_left")
    assert left["user"] == "bob"


# ---------------------------------------------------------------------------- messages
async def test_message_reaches_everyone_with_both_field_names(ws, make_user):
    """A message is broadcast to all clients, with `message` and `content`, and `client_id`."""
    a, b = await pair(ws, make_user)
    await a.send({"type": "message", "message": "hello", "id": "c1"})
    for client in (a, b):
        frame = await client.recv_type("message")
        assert frame["message"] == frame["content"] == "hello"
        assert frame["user"] == "alice" and frame["client_id"] == "c1"
        assert frame["seq"] == 1 and frame["message_id"]


async def test_advanced_reference_client_sending_content_works(ws, make_user):
    """The reference chapter's advanced client sends `content`; it is accepted too."""
    a, b = await pair(ws, make_user)
    await a.send({"type": "message", "content": "via content", "id": 7})
    frame = await b.recv_type("message")
    assert frame["content"] == "via content" and frame["client_id"] == 7


async def test_a_frame_without_type_but_with_message_is_a_message(ws, make_user):
    """`{"message": ...}` without a type is treated as a chat message."""
    a, b = await pair(ws, make_user)
    await a.send({"message": "typeless"})
    assert (await b.recv_type("message"))["message"] == "typeless"


async def test_message_is_stored_before_it_is_broadcast(ws, make_user):
    """When the broadcast arrives, the message and its event are already in the database."""
    a, b = await pair(ws, make_user)
    frame = await say(a, "durable")
    messages, events, _ = await stored()
    assert (frame["message_id"], "durable", False, False) in messages
    assert len(events) == 1


async def test_reply_to_is_echoed(ws, make_user):
    """A reply names the message it answers."""
    a, b = await pair(ws, make_user)
    first = await say(a, "question")
    await b.recv_type("message")
    await b.send({"type": "message", "message": "answer", "reply_to": first["message_id"]})
    assert (await a.recv_type("message"))["reply_to"] == first["message_id"]


async def test_reply_to_a_message_of_another_room_is_not_found(ws, make_user):
    """reply_to must name a message of the same room; nothing is stored otherwise."""
    a, _ = await pair(ws, make_user)
    other = await join(ws, await make_user("carol"), "other")
    elsewhere = await say(other, "elsewhere")
    before = await stored()
    await a.send({"type": "message", "message": "x", "reply_to": elsewhere["message_id"]})
    assert (await a.recv_type("error"))["code"] == "not_found"
    assert await stored() == before


async def test_typing_reaches_others_but_never_the_sender(ws, make_user):
    """Typing indicators go to everyone else only."""
    a, b = await pair(ws, make_user)
    await a.send({"type": "typing", "is_typing": True})
    frame = await b.recv_type("typing")
    assert frame["user"] == "alice" and frame["is_typing"] is True
    assert await a.silent()


# ---------------------------------------------------------------------------- reactions, edits
async def test_reaction_add_and_remove_are_broadcast_and_stored(ws, make_user):
    """Reactions are stored, numbered and broadcast; adding twice changes nothing."""
    a, b = await pair(ws, make_user)
    message = await say(a, "react to me")
    await b.send({"type": "reaction", "message_id": message["message_id"], "emoji": "👍"})
    frame = await a.recv_type("reaction")
    assert (frame["emoji"], frame["action"], frame["user"]) == ("👍", "add", "bob")
    await b.send({"type": "reaction", "message_id": message["message_id"], "emoji": "👍"})
    await b.send({"type": "reaction", "message_id": message["message_id"], "emoji": "👍",
                  "action": "remove"})
    frame = await a.recv_type("reaction")
    assert frame["action"] == "remove" and frame["seq"] == message["seq"] + 2
    assert (await stored())[2] == []
    await b.send({"type": "reaction", "message_id": message["message_id"], "emoji": "🎉"})
    await a.recv_type("reaction")
    late = await join(ws, await make_user("carol"))
    history = next(f for f in late.joined if f["type"] == "message")
    assert history["reactions"] == {"🎉": ["bob"]}


async def test_reacting_to_a_message_of_another_room_is_not_found(ws, make_user):
    """A reaction must name a message of this room."""
    a, _ = await pair(ws, make_user)
    other = await join(ws, await make_user("carol"), "other")
    elsewhere = await say(other, "elsewhere")
    before = await stored()
    await a.send({"type": "reaction", "message_id": elsewhere["message_id"], "emoji": "x"})
    assert (await a.recv_type("error"))["code"] == "not_found"
    assert await stored() == before


async def test_author_edits_and_everyone_sees_message_edited(ws, make_user):
    """An edit by the author is stored and broadcast as `message_edited`."""
    a, b = await pair(ws, make_user)
    message = await say(a, "tpyo")
    await a.send({"type": "edit", "message_id": message["message_id"], "content": "typo"})
    frame = await b.recv_type("message_edited")
    assert frame["content"] == frame["message"] == "typo"
    messages, _, _ = await stored()
    assert messages[0][1:3] == ("typo", True)


async def test_editing_someone_elses_message_is_forbidden_and_changes_nothing(ws, make_user):
    """Only the author may edit."""
    a, b = await pair(ws, make_user)
    message = await say(a, "mine")
    before = await stored()
    await b.send({"type": "edit", "message_id": message["message_id"], "content": "yours",
                  "id": "e1"})
    error = await b.recv_type("error")
    assert (error["code"], error["client_id"]) == ("forbidden", "e1")
    assert await stored() == before


async def test_editing_a_message_of_another_room_is_not_found(ws, make_user):
    """Edits are scoped to the room of the connection."""
    a, _ = await pair(ws, make_user)
    other_room = await join(ws, await make_user("alice2"), "other")
    elsewhere = await say(other_room, "elsewhere")
    before = await stored()
    await a.send({"type": "edit", "message_id": elsewhere["message_id"], "content": "x"})
    assert (await a.recv_type("error"))["code"] == "not_found"
    assert await stored() == before


async def test_delete_leaves_a_tombstone_in_history(ws, make_user):
    """A deleted message is broadcast as `message_deleted` and stays in history as a tombstone."""
    a, b = await pair(ws, make_user)
    message = await say(a, "regret")
    await a.send({"type": "delete", "message_id": message["message_id"]})
    assert (await b.recv_type("message_deleted"))["message_id"] == message["message_id"]
    late = await join(ws, await make_user("carol"))
    tomb = next(f for f in late.joined if f["type"] == "message")
    assert (tomb["message_id"], tomb["is_deleted"], tomb["content"]) == (
        message["message_id"], True, "")


async def test_deleting_someone_elses_message_is_forbidden(ws, make_user):
    """Only the author may delete."""
    a, b = await pair(ws, make_user)
    message = await say(a, "keep")
    before = await stored()
    await b.send({"type": "delete", "message_id": message["message_id"]})
    assert (await b.recv_type("error"))["code"] == "forbidden"
    assert await stored() == before


# ------------------------------------------------------------------ ping, heartbeat, status
async def test_ping_gets_pong_with_client_id(ws, make_user):
    """`ping` is answered by `pong`."""
    client = await join(ws, await make_user())
    await client.send({"type": "ping", "id": "p"})
    pong = await client.recv_type("pong")
    assert pong["client_id"] == "p" and pong["ts"] > 0


async def test_heartbeat_is_sent_and_its_answer_is_timed(ws, make_user):
    """The process heartbeat sends `heartbeat`; answering with `pong` records a round trip."""
    from app.realtime.ops import metrics

    client = await join(ws, await make_user())
    await registry.beat()
    beat = await client.recv_type("heartbeat")
    before = metrics.HEARTBEAT_RTT._sum.get()
    await client.send({"type": "pong", "ts": beat["ts"]})
    await client.send({"type": "ping"})
    await client.recv_type("pong")
    assert metrics.HEARTBEAT_RTT._sum.get() > before


async def test_status_change_reaches_the_others_in_the_room(ws, make_user):
    """`status` is stored and sent as `user_status` to the other users."""
    a, b = await pair(ws, make_user)
    await a.send({"type": "status", "status": "away", "custom_message": "lunch"})
    frame = await b.recv_type("user_status")
    assert (frame["user"], frame["status"], frame["custom_message"]) == ("alice", "away", "lunch")
    assert await a.silent()


# ---------------------------------------------------------------------------- resume
async def test_resume_replays_exactly_the_missed_messages_in_order(ws, make_user):
    """Disconnect, 20 messages from another client, reconnect with last_seq: exactly those 20."""
    a, b = await pair(ws, make_user)
    seen = await say(a, "before")
    await b.recv_type("message")
    await b.close()
    sent = [(await say(a, f"missed {n}"))["seq"] for n in range(20)]
    b2 = await join(ws, await _user("bob"), "lobby", f"?last_seq={seen['seq']}")
    replayed = [f for f in b2.joined if f["type"] == "message"]
    assert [f["seq"] for f in replayed] == sent
    assert [f["message"] for f in replayed] == [f"missed {n}" for n in range(20)]
    assert all(f["replay"] for f in replayed)
    assert b2.joined[-1]["replayed"] == 20 and b2.joined[-1]["seq"] == sent[-1]
    await say(a, "live")
    live = await b2.recv_type("message")
    assert live["seq"] == sent[-1] + 1 and "replay" not in live


async def test_resume_includes_edits_deletions_and_reactions(ws, make_user):
    """Changes to old messages made while away are replayed as their own events."""
    a, b = await pair(ws, make_user)
    old = await say(a, "old")
    await b.recv_type("message")
    await b.close()
    await a.send({"type": "edit", "message_id": old["message_id"], "content": "new"})
    await a.recv_type("message_edited")
    await a.send({"type": "reaction", "message_id": old["message_id"], "emoji": "🎉"})
    await a.recv_type("reaction")
    await a.send({"type": "delete", "message_id": old["message_id"]})
    await a.recv_type("message_deleted")
    b2 = await join(ws, await _user("bob"), "lobby", f"?last_seq={old['seq']}")
    kinds = [f["type"] for f in b2.joined if "seq" in f and f["type"] != "resume_end"]
    assert kinds == ["message_edited", "reaction", "message_deleted"]


async def test_resume_by_last_message_id(ws, make_user):
    """?last_id=<message id> resumes after that message."""
    a, _ = await pair(ws, make_user)
    first = await say(a, "one")
    await say(a, "two")
    b2 = await join(ws, await _user("bob"), "lobby", f"?last_id={first['message_id']}")
    assert [f["message"] for f in b2.joined if f["type"] == "message"] == ["two"]


async def test_a_bad_resume_position_gets_an_error_and_the_history(ws, make_user):
    """?last_seq=abc is answered with invalid_field and the normal history."""
    user = await make_user()
    client = await ws("/ws/chat/lobby/?last_seq=abc", user)
    frames = await client.recv_until("history_end")
    error = next(f for f in frames if f["type"] == "error")
    assert (error["code"], error["field"]) == ("invalid_field", "last_seq")


async def test_a_lost_broadcast_is_filled_from_the_database_in_order(ws, make_user):
    """An event stored but never broadcast (lost in a failover) arrives before the next one."""
    a, b = await pair(ws, make_user)
    room = await database_sync_to_async(ChatRoom.objects.get)(name="lobby")
    alice = await _user("alice")
    lost = await database_sync_to_async(services.post_message)(room, alice, "lost", None, None)
    await say(a, "after")
    frames = [await b.recv_type("message"), await b.recv_type("message")]
    assert [f["message"] for f in frames] == ["lost", "after"]
    assert [f["seq"] for f in frames] == [lost["seq"], lost["seq"] + 1]


async def test_a_lost_broadcast_in_a_quiet_room_arrives_on_the_heartbeat(ws, make_user):
    """The heartbeat notices a newer committed seq and fills the gap without new traffic.

    Nothing but the database knows of this event: no broadcast, no mark in Redis (a failover
    can lose both).
    """
    a, b = await pair(ws, make_user)
    room = await database_sync_to_async(ChatRoom.objects.get)(name="lobby")
    await database_sync_to_async(services.post_message)(
        room, await _user("alice"), "quiet", None, None)
    await registry.beat()
    assert (await b.recv_type("message"))["message"] == "quiet"


async def test_a_heartbeat_reads_each_room_sequence_once_for_all_its_sockets(
        ws, make_user, monkeypatch):
    """One query for the rooms' latest seq per heartbeat portion, not one per socket."""
    a, b = await pair(ws, make_user)
    await join(ws, await make_user("carol"), "other")
    reads = []
    original = services.latest_seqs

    def counted(room_ids):
        reads.append(list(room_ids))
        return original(room_ids)

    monkeypatch.setattr(services, "latest_seqs", counted)
    await registry.beat()
    rooms = await database_sync_to_async(
        lambda: sorted(ChatRoom.objects.values_list("id", flat=True)))()
    assert reads == [rooms]
    for client in (a, b):
        await client.recv_type("heartbeat")


async def test_frames_that_keep_their_own_hygiene_skip_the_dispatch_hop(ws, make_user,
                                                                        monkeypatch):
    """Keepalives, typing and stored changes skip channels' hop; `status` (async ORM) keeps it.

    A stored change is written through channels' database_sync_to_async, which closes old
    connections in its own thread before and after (channels' test communicator turns that
    off, so it is not counted here).
    """
    import channels.consumer

    client = await join(ws, await make_user())
    hops = []
    original = channels.consumer.aclose_old_connections

    async def counted():
        hops.append(1)
        await original()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    await client.send({"type": "pong", "ts": 1.0})
    await client.send({"type": "ping", "id": "k"})
    await client.recv_type("pong")
    await client.send({"type": "typing", "is_typing": True})
    await say(client, "stored")
    assert hops == []
    await client.send({"type": "status", "status": "away"})
    await client.send({"type": "ping", "id": "k2"})
    await client.recv_type("pong")
    assert hops == [1]


async def test_a_broadcast_that_fails_is_reported_stored_and_filled_on_the_heartbeat(
        ws, make_user, monkeypatch):
    """A group send that gives up: the sender hears `broadcast_failed`, the others the heartbeat."""
    from channels.layers import get_channel_layer

    from app.realtime.layer.channel_layer import LayerUnavailable

    a, b = await pair(ws, make_user)
    layer = get_channel_layer()
    original = layer.group_send

    async def failing(group, message):
        if message["type"] == "room.event":
            raise LayerUnavailable("retry window ran out")
        return await original(group, message)

    monkeypatch.setattr(layer, "group_send", failing)
    await a.send({"type": "message", "message": "stored anyway", "id": "s1"})
    error = await a.recv_type("error")
    assert error["code"] == "broadcast_failed" and error["client_id"] == "s1"
    stored = await database_sync_to_async(
        lambda: Message.objects.get(pk=error["message_id"]).content)()
    assert stored == "stored anyway"
    monkeypatch.setattr(layer, "group_send", original)
    await registry.beat()
    frame = await b.recv_type("message")
    assert (frame["seq"], frame["message"]) == (error["seq"], "stored anyway")


@database_sync_to_async
def _user(name):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(username=name)


# ---------------------------------------------------------------------------- handshake refusals
async def test_no_session_is_closed_with_4001(ws):
    """An anonymous handshake is accepted and closed with 4001."""
    client = await ws("/ws/chat/lobby/", None)
    assert await client.closed_with() == 4001


async def test_invalid_room_name_is_closed_with_4004(ws, make_user):
    """Room names are validated."""
    client = await ws("/ws/chat/bad$name/", await make_user())
    assert await client.closed_with() == 4004


async def test_unknown_room_without_auto_create_is_closed_with_4004(ws, make_user, settings):
    """With automatic creation off, a missing room is 4004."""
    settings.CHAT_AUTO_CREATE_ROOMS = False
    client = await ws("/ws/chat/nowhere/", await make_user())
    assert await client.closed_with() == 4004


async def test_banned_user_is_closed_with_4003(ws, make_user):
    """A banned user cannot join."""
    user = await make_user()
    room = await database_sync_to_async(ChatRoom.objects.create)(name="strict")
    await database_sync_to_async(RoomBan.objects.create)(room=room, user=user)
    client = await ws("/ws/chat/strict/", user)
    assert await client.closed_with() == 4003


async def test_private_room_non_member_is_closed_with_4003_and_member_joins(ws, make_user):
    """Private rooms admit members only."""
    member, outsider = await make_user("member"), await make_user("outsider")

    @database_sync_to_async
    def private_room():
        room = ChatRoom.objects.create(name="secret", is_private=True)
        room.members.add(member)

    await private_room()
    assert await (await ws("/ws/chat/secret/", outsider)).closed_with() == 4003
    await join(ws, member, "secret")


async def test_full_room_is_closed_with_4003(ws, make_user):
    """A room at max_users refuses a new user but not a second tab of a present one."""
    await database_sync_to_async(ChatRoom.objects.create)(name="tiny", max_users=1)
    alice = await make_user("alice")
    await join(ws, alice, "tiny")
    await join(ws, alice, "tiny")
    assert await (await ws("/ws/chat/tiny/", await make_user("bob"))).closed_with() == 4003


async def test_connection_rate_limit_closes_with_4029(ws, make_user, settings):
    """Past WS_CONNECT_RATE connections per user, handshakes are closed with 4029."""
    settings.WS_CONNECT_RATE = "2/60"
    user = await make_user()
    await join(ws, user)
    await join(ws, user)
    assert await (await ws("/ws/chat/lobby/", user)).closed_with() == 4029


async def test_disallowed_origin_is_refused_at_the_handshake(ws, make_user):
    """AllowedHostsOriginValidator refuses a foreign Origin before the consumer runs."""
    client = await ws("/ws/chat/lobby/", await make_user(), accept=False,
                      origin=(b"origin", b"http://evil.example"))
    assert not client.accepted


async def test_channel_layer_down_closes_the_handshake_with_4503(ws, make_user, settings):
    """When Redis cannot be reached, a handshake is refused with the retryable 4503."""
    from app.realtime.layer.store import reset_stores

    user = await make_user()
    dead = {"address": "redis://127.0.0.1:1/0", "socket_connect_timeout": 0.2}
    layer = dict(settings.CHANNEL_LAYERS["default"])
    layer["CONFIG"] = {**layer["CONFIG"], "hosts": [dead], "retry_seconds": 0.5}
    settings.CHANNEL_LAYERS = {"default": layer}
    reset_stores()
    client = await ws("/ws/chat/lobby/", user)
    assert await client.closed_with(timeout=10) == 4503


# ---------------------------------------------------------------------------- closes after connect
async def test_inactivity_closes_with_4000(ws, make_user, settings):
    """A client silent for WS_INACTIVITY_TIMEOUT is closed with 4000 on the heartbeat."""
    client = await join(ws, await make_user())
    settings.WS_INACTIVITY_TIMEOUT = 0
    await registry.beat()
    assert await client.closed_with() == 4000


async def test_frame_flood_closes_with_1008(ws, make_user, settings):
    """More frames than WS_FRAME_RATE allows on one connection closes it with 1008."""
    settings.WS_FRAME_RATE = "5/60"
    client = await join(ws, await make_user())
    for _ in range(6):
        await client.send({"type": "ping"})
    assert await client.closed_with() == 1008


async def test_drain_sends_reconnect_with_position_then_closes_1012(ws, make_user):
    """A drain tells each client where to resume and closes it with 1012."""
    a, _ = await pair(ws, make_user)
    message = await say(a, "position")
    try:
        await registry.drain(window=0.1, retry_max_ms=3000)
        frame = await a.recv_type("reconnect")
        assert frame["reason"] == "drain" and frame["last_seq"] == message["seq"]
        assert 0 <= frame["retry_after_ms"] <= 3000
        assert await a.closed_with() == 1012
    finally:
        registry.draining = False


async def test_handshake_while_draining_is_refused(ws, make_user):
    """A draining process refuses new sockets before accepting (nginx retries elsewhere)."""
    registry.draining = True
    try:
        client = await ws("/ws/chat/lobby/", await make_user(), accept=False)
        assert not client.accepted and client.refusal == 1012
    finally:
        registry.draining = False


async def test_a_drain_that_starts_during_a_handshake_still_sends_that_socket_away(
        ws, make_user, monkeypatch):
    """The drain's snapshot misses a socket still joining; that socket is sent away itself."""
    from app.chat.consumers import ChatConsumer

    send_history = ChatConsumer.send_history

    async def drain_meanwhile(consumer, recorded=None):
        registry.draining = True  # the drain begins after accept, before the join completes
        await send_history(consumer, recorded)

    monkeypatch.setattr(ChatConsumer, "send_history", drain_meanwhile)
    try:
        client = await ws("/ws/chat/lobby/", await make_user())
        await client.recv_until("history_end")
        frame = await client.recv_type("reconnect")
        assert frame["reason"] == "drain" and frame["last_seq"] == 0
        assert await client.closed_with() == 1012
    finally:
        registry.draining = False


async def test_heartbeat_gap_fill_and_live_delivery_never_duplicate(ws, make_user):
    """A heartbeat gap fill racing live broadcasts still delivers each seq exactly once."""
    a, b = await pair(ws, make_user)
    room = await database_sync_to_async(ChatRoom.objects.get)(name="lobby")
    alice = await _user("alice")
    for n in range(5):  # stored but never broadcast: the heartbeat must fill them
        await database_sync_to_async(services.post_message)(room, alice, f"lost {n}", None, None)
    await asyncio.gather(registry.beat(), *(say(a, f"live {n}") for n in range(5)))
    seqs = []
    while len(seqs) < 10:
        seqs.append((await b.recv_type("message"))["seq"])
    assert seqs == list(range(1, 11))
    assert await b.silent(0.3)


async def test_the_handshake_headers_are_released_once_connected(ws, make_user):
    """Every scope copy shares the header list; after connect() it is emptied in place."""
    client = await ws("/ws/chat/lobby/", await make_user())
    await client.recv_type("history_end")
    for _ in range(100):  # the consumer registers itself right after its last join frame
        if registry.consumers:
            break
        await asyncio.sleep(0.01)
    (consumer,) = registry.consumers
    assert consumer.scope["headers"] == []
    assert consumer.scope["url_route"]["kwargs"]["room_name"] == "lobby"
