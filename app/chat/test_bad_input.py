"""Every bad input of docs/protocol.md gets its documented answer and changes no stored data."""

import pytest

from app.chat.test_chat_consumer import join, pair, say, stored

pytestmark = [pytest.mark.django_db(transaction=True)]

BAD_FRAMES = [
    ("{not json", "invalid_json", None),
    ("[1, 2, 3]", "not_an_object", None),
    ('"just a string"', "not_an_object", None),
    ("null", "not_an_object", None),
    ('{"type": "launch_missiles"}', "unknown_type", None),
    ('{"type": 42}', "invalid_field", "type"),
    ('{"type": "message"}', "invalid_field", "message"),
    ('{"type": "message", "message": 5}', "invalid_field", "message"),
    ('{"type": "message", "message": ["a"]}', "invalid_field", "message"),
    ('{"type": "message", "message": "   "}', "empty_message", None),
    ('{"type": "message", "message": ""}', "empty_message", None),
    ('{"type": "message", "message": "x", "reply_to": "1"}', "invalid_field", "reply_to"),
    ('{"type": "message", "message": "x", "reply_to": true}', "invalid_field", "reply_to"),
    ('{"type": "message", "message": "x", "id": {"a": 1}}', "invalid_field", "id"),
    ('{"type": "edit", "message_id": "1", "content": "x"}', "invalid_field", "message_id"),
    ('{"type": "edit", "content": "x"}', "invalid_field", "message_id"),
    ('{"type": "delete"}', "invalid_field", "message_id"),
    ('{"type": "delete", "message_id": 999999}', "not_found", None),
    ('{"type": "reaction", "message_id": 1}', "invalid_field", "emoji"),
    ('{"type": "reaction", "message_id": 1, "emoji": ""}', "invalid_field", "emoji"),
    ('{"type": "reaction", "message_id": 1, "emoji": "x", "action": "toggle"}',
     "invalid_field", "action"),
    ('{"type": "typing", "is_typing": "yes"}', "invalid_field", "is_typing"),
    ('{"type": "status", "status": "asleep"}', "invalid_field", "status"),
    ('{"type": "status"}', "invalid_field", "status"),
    # PostgreSQL cannot store U+0000; it is refused before anything is stored, on SQLite too.
    ('{"type": "message", "message": "a\\u0000b"}', "invalid_field", "message"),
    ('{"type": "message", "message": "x", "id": "\\u0000"}', "invalid_field", "id"),
    ('{"type": "reaction", "message_id": 1, "emoji": "\\u0000"}', "invalid_field", "emoji"),
    ('{"type": "status", "status": "away", "custom_message": "\\u0000"}',
     "invalid_field", "custom_message"),
]


@pytest.mark.parametrize("frame,code,field", BAD_FRAMES)
async def test_bad_frame_gets_its_error_and_the_connection_stays_usable(ws, make_user, frame,
                                                                        code, field):
    """A bad frame is answered with its error code; nothing changes; the socket still works."""
    a, b = await pair(ws, make_user)
    await say(a, "existing")
    await b.recv_type("message")
    before = await stored()
    await a.send(frame)
    error = await a.recv_type("error")
    assert error["code"] == code
    if field:
        assert error["field"] == field
    assert await stored() == before
    if not await b.silent(0.2):
        pytest.fail(f"the other client was sent {await b.recv()}")  # name it: seen once in CI
    assert (await say(a, "still works"))["message"] == "still works"


async def test_binary_frames_are_refused_with_binary_frame(ws, make_user):
    """Binary frames get an error; the connection stays usable."""
    client = await join(ws, await make_user())
    await client.comm.send_to(bytes_data=b"\x00\x01")
    assert (await client.recv_type("error"))["code"] == "binary_frame"
    assert (await say(client, "ok"))["message"] == "ok"


async def test_oversized_frame_gets_frame_too_large(ws, make_user, settings):
    """A frame over WS_MAX_FRAME_BYTES is refused before parsing."""
    client = await join(ws, await make_user())
    before = await stored()
    await client.send({"type": "message", "message": "x" * (settings.WS_MAX_FRAME_BYTES + 1)})
    error = await client.recv_type("error")
    assert (error["code"], error["limit"]) == ("frame_too_large", settings.WS_MAX_FRAME_BYTES)
    assert await stored() == before


async def test_overlong_message_gets_too_long(ws, make_user, settings):
    """Text over CHAT_MESSAGE_MAX_LENGTH is refused."""
    settings.CHAT_MESSAGE_MAX_LENGTH = 10
    client = await join(ws, await make_user())
    await client.send({"type": "message", "message": "x" * 11})
    assert (await client.recv_type("error"))["code"] == "too_long"


async def test_unicode_and_huge_ids_are_handled(ws, make_user):
    """Unicode text round-trips; an id of 64 characters is echoed, 65 is refused."""
    client = await join(ws, await make_user())
    frame = await say(client, "héllo 🌍 \u202e", id="i" * 64)
    assert frame["message"] == "héllo 🌍 \u202e" and frame["client_id"] == "i" * 64
    await client.send({"type": "message", "message": "x", "id": "i" * 65})
    assert (await client.recv_type("error"))["field"] == "id"


async def test_content_filter_blocks_configured_words(ws, make_user, settings):
    """CONTENT_FILTER_WORDS refuses matching messages with blocked_content."""
    settings.CONTENT_FILTER_WORDS = ["spam"]
    client = await join(ws, await make_user())
    before = await stored()
    await client.send({"type": "message", "message": "buy SPAM now"})
    assert (await client.recv_type("error"))["code"] == "blocked_content"
    assert await stored() == before


async def test_message_flood_over_the_rate_limit_is_refused_and_not_stored(ws, make_user,
                                                                           settings):
    """Past CHAT_MESSAGE_RATE, messages get rate_limited with retry_after and are not stored."""
    settings.CHAT_MESSAGE_RATE = "3/60"
    client = await join(ws, await make_user())
    for n in range(3):
        await say(client, f"ok {n}")
    before = await stored()
    await client.send({"type": "message", "message": "one too many"})
    error = await client.recv_type("error")
    assert error["code"] == "rate_limited" and 0 < error["retry_after"] <= 60
    assert await stored() == before
    await client.send({"type": "ping"})
    assert (await client.recv_type("pong"))["type"] == "pong"


async def test_the_message_rate_limit_is_shared_across_processes(ws, make_user, settings,
                                                                 redis_layer):
    """Hits counted by another process (straight into Redis) count against this one too."""
    import time

    import redis

    settings.CHAT_MESSAGE_RATE = "3/60"
    user = await make_user()
    client = await join(ws, user)
    other_process = redis.Redis.from_url(redis_layer["address"])
    window = int(time.time() // 60)
    other_process.incrby(f"{settings.REDIS_PREFIX}:rl:msg:{user.pk}:{window}", 3)
    await client.send({"type": "message", "message": "over"})
    assert (await client.recv_type("error"))["code"] == "rate_limited"


async def test_the_connection_rate_limit_is_shared_across_processes(ws, make_user, settings,
                                                                    redis_layer):
    """Connections counted elsewhere count here: the limit is per user, not per process."""
    import time

    import redis

    settings.WS_CONNECT_RATE = "2/60"
    user = await make_user()
    window = int(time.time() // 60)
    redis.Redis.from_url(redis_layer["address"]).incrby(
        f"{settings.REDIS_PREFIX}:rl:connect:{user.pk}:{window}", 2)
    assert await (await ws("/ws/chat/lobby/", user)).closed_with() == 4029
