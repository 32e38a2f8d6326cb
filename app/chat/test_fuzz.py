"""Property-based fuzzing of the chat and notification consumers over real Redis.

Thousands of generated frames: random JSON values, wrong types, huge and unicode strings,
random field combinations. Properties: the consumer never crashes or closes, every answer is a
documented frame, and stored data changes only when the server reports a stored event.
"""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.chat.conftest import WsClient, session_for
from app.chat.models import ChatRoom, Message, MessageReaction, Notification, RoomEvent

pytestmark = [pytest.mark.django_db(transaction=True)]

ERROR_CODES = {
    "invalid_json", "not_an_object", "binary_frame", "frame_too_large", "unknown_type",
    "invalid_field", "empty_message", "too_long", "blocked_content", "rate_limited",
    "not_found", "forbidden", "invalid_topic", "permission_denied", "too_many_topics",
    "unavailable", "broadcast_failed",
}
CHAT_TYPES = ["message", "edit", "delete", "reaction", "typing", "status", "ping", "pong"]
CHAT_ANSWERS = {"message", "message_edited", "message_deleted", "reaction", "pong", "error",
                "user_status", "typing"}
NOTIFY_TYPES = ["mark_read", "mark_all_read", "get_notifications", "ping"]
NOTIFY_ANSWERS = {"count_update", "notifications_list", "notifications_read", "pong", "error"}
STORED_EVENTS = {"message", "message_edited", "message_deleted", "reaction"}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=50), st.text(alphabet="🌍é\u202e\x00<>'\"\\", max_size=20),
    st.sampled_from(["", " ", "add", "remove", "online", "away", "x" * 5000]),
    st.integers(0, 30),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)


def frames_for(types, fields):
    """Frames: protocol-shaped objects with random values, random JSON, and raw garbage."""
    shaped = st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(types), scalars)},
        optional={name: st.one_of(scalars, json_values) for name in fields},
    ).map(json.dumps)
    return st.one_of(
        shaped, shaped, shaped,
        json_values.map(json.dumps),
        st.text(max_size=40),
        st.tuples(st.text(min_size=1, max_size=3), st.integers(16385, 20000)).map(
            lambda t: json.dumps({"type": "message", "message": (t[0] * t[1])[:t[1]]})),
    )


CHAT_FRAMES = frames_for(CHAT_TYPES, ["message", "content", "message_id", "reply_to", "emoji",
                                      "action", "is_typing", "status", "custom_message", "id",
                                      "ts"])
NOTIFY_FRAMES = frames_for(NOTIFY_TYPES, ["notification_id", "limit", "before", "id", "action"])


@database_sync_to_async
def snapshot():
    """Everything the consumers can store."""
    return (
        list(Message.objects.order_by("id").values_list("id", "content", "is_deleted")),
        RoomEvent.objects.count(),
        list(MessageReaction.objects.order_by("id").values_list("id", "emoji")),
        list(Notification.objects.order_by("id").values_list("id", "read")),
    )


async def answers_to(client: WsClient, text: str, marker: int) -> list[dict]:
    """Send one frame, then a marked ping; return every frame that came before the pong."""
    await client.comm.send_input({"type": "websocket.receive", "text": text})
    await client.send({"type": "ping", "id": f"marker-{marker}"})
    frames = []
    while True:
        frame = await client.recv(timeout=10)
        if frame.get("type") == "pong" and frame.get("client_id") == f"marker-{marker}":
            return frames
        frames.append(frame)


def check_answer(frames: list[dict], allowed: set[str]) -> set[str]:
    """Every answer is a documented frame; return the stored-event types among them."""
    for frame in frames:
        assert frame["type"] in allowed | {"heartbeat", "user_joined", "user_left"}, frame
        if frame["type"] == "error":
            assert frame["code"] in ERROR_CODES, frame
            assert isinstance(frame["message"], str)
    return {f["type"] for f in frames} & STORED_EVENTS


class Tally:
    """How many generated frames the fuzzers sent."""

    count = 0


async def fuzz_route(path: str, user, frames: list[str], allowed: set[str]) -> None:
    """Run one batch of frames on a fresh connection and check the properties after each."""
    client = WsClient(path, await session_for(user))
    assert await client.open()
    # Read the join frames (chat) or the unread count (notifications).
    await client.recv_until("history_end" if "chat" in path else "count_update")
    try:
        for frame in frames:
            before = await snapshot()
            Tally.count += 1
            answers = await answers_to(client, frame, Tally.count)
            stored = check_answer(answers, allowed)
            after = await snapshot()
            errors = [f for f in answers if f["type"] == "error"]
            new_events = after[1] - before[1]
            if errors:
                assert after == before, (frame, errors)
            if new_events:
                # A valid change: exactly one event, and its broadcast reaches the sender
                # (perhaps just after the marker pong, since it travels through Redis).
                assert new_events == 1 and not errors, frame
                while not stored:
                    stored = check_answer([await client.recv(timeout=10)], allowed)
            else:
                assert not stored, frame
                assert (after[0], after[2]) == (before[0], before[2]), frame
    finally:
        await client.close()


@pytest.fixture
def fuzz_settings(settings, redis_layer):
    """Generous limits so the fuzzer explores the protocol rather than the flood guards."""
    settings.WS_FRAME_RATE = "100000/10"
    settings.CHAT_MESSAGE_RATE = "100000/10"
    settings.WS_CONNECT_RATE = "100000/60"
    return settings


def test_fuzz_chat_and_notification_consumers(fuzz_settings, django_user_model):
    """Thousands of generated frames: no crash, documented answers, no stray stored changes."""
    user = django_user_model.objects.create_user("fuzzer", password="pw")
    other = django_user_model.objects.create_user("other", password="pw")
    room = ChatRoom.objects.create(name="fuzz")
    # Give the fuzzer messages and notifications to aim at, its own and someone else's.
    for owner in (user, other):
        Message.objects.create(room=room, user=owner, content="target")
        Notification.objects.create(user=owner, title="t", message="")

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(chat=st.lists(CHAT_FRAMES, min_size=30, max_size=30),
           notify=st.lists(NOTIFY_FRAMES, min_size=20, max_size=20))
    def run(chat, notify):
        async def both():
            await fuzz_route("/ws/chat/fuzz/", user, chat, CHAT_ANSWERS)
            await fuzz_route("/ws/notifications/", user, notify, NOTIFY_ANSWERS)
        asyncio.run(both())

    run()
    print(f"fuzz: {Tally.count} generated frames sent to the chat and notification consumers")
    assert Tally.count >= 2000
