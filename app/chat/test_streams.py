"""The notifications, live-updates and per-user routes of docs/protocol.md, over real Redis."""

import pytest
from channels.db import database_sync_to_async

from app.chat.models import ChatRoom, Notification
from app.chat.streams import (
    apublish_live_update,
    asend_notification_to_user,
    asend_to_user,
    send_notification_to_user,
)

pytestmark = [pytest.mark.django_db(transaction=True)]


@database_sync_to_async
def notification_states(user):
    """(id, read) of a user's notifications."""
    return list(Notification.objects.filter(user=user).order_by("id").values_list("id", "read"))


# ---------------------------------------------------------------------------- notifications
async def test_notifications_connect_sends_the_unread_count(ws, make_user):
    """On connect the client learns how many notifications are unread."""
    user = await make_user()
    await asend_notification_to_user(user.pk, "t", "m")
    client = await ws("/ws/notifications/", user)
    assert await client.recv() == {"type": "count_update", "unread_count": 1}


async def test_a_sent_notification_arrives_with_the_new_count(ws, make_user):
    """send_notification_to_user pushes `notification` then `count_update`."""
    user = await make_user()
    client = await ws("/ws/notifications/", user)
    await client.recv_type("count_update")
    await asend_notification_to_user(user.pk, "Hello", "world", "mention")
    frame = await client.recv_type("notification")
    assert (frame["title"], frame["message"], frame["category"], frame["read"]) == (
        "Hello", "world", "mention", False)
    assert (await client.recv_type("count_update"))["unread_count"] == 1


async def test_the_sync_helper_works_from_a_worker_thread(ws, make_user):
    """The sync form (views, signals) stores and pushes without create_task tricks."""
    user = await make_user()
    client = await ws("/ws/notifications/", user)
    await client.recv_type("count_update")
    await database_sync_to_async(send_notification_to_user)(user.pk, "sync", "path")
    assert (await client.recv_type("notification"))["title"] == "sync"


async def test_mark_read_updates_every_socket_of_the_user(ws, make_user):
    """mark_read (as the reference client's `action`) is pushed to all the user's sockets."""
    user = await make_user()
    first = await asend_notification_to_user(user.pk, "a", "a")
    await asend_notification_to_user(user.pk, "b", "b")
    one, two = await ws("/ws/notifications/", user), await ws("/ws/notifications/", user)
    await one.recv_type("count_update")
    await two.recv_type("count_update")
    await one.send({"action": "mark_read", "notification_id": first.pk})
    assert (await one.recv_type("notifications_read"))["ids"] == [first.pk]
    assert (await one.recv_type("count_update"))["unread_count"] == 1
    assert (await two.recv_type("count_update"))["unread_count"] == 1
    assert (await notification_states(user))[0] == (first.pk, True)


async def test_mark_all_read(ws, make_user):
    """mark_all_read clears the count."""
    user = await make_user()
    await asend_notification_to_user(user.pk, "a", "a")
    client = await ws("/ws/notifications/", user)
    await client.recv_type("count_update")
    await client.send({"type": "mark_all_read"})
    assert (await client.recv_type("notifications_read"))["all"] is True
    assert (await client.recv_type("count_update"))["unread_count"] == 0


async def test_get_notifications_lists_newest_first_with_paging(ws, make_user):
    """get_notifications returns `notifications_list` with limit and before."""
    user = await make_user()
    made = [await asend_notification_to_user(user.pk, f"n{i}", "") for i in range(3)]
    client = await ws("/ws/notifications/", user)
    await client.recv_type("count_update")
    await client.send({"type": "get_notifications", "limit": 2, "id": "q"})
    page = await client.recv_type("notifications_list")
    assert [n["title"] for n in page["notifications"]] == ["n2", "n1"]
    assert page["client_id"] == "q"
    await client.send({"type": "get_notifications", "before": made[1].pk})
    page = await client.recv_type("notifications_list")
    assert [n["title"] for n in page["notifications"]] == ["n0"]


async def test_marking_someone_elses_notification_is_not_found(ws, make_user):
    """A user cannot touch another user's notification; nothing changes."""
    owner, other = await make_user(), await make_user()
    notification = await asend_notification_to_user(owner.pk, "private", "")
    client = await ws("/ws/notifications/", other)
    await client.recv_type("count_update")
    await client.send({"type": "mark_read", "notification_id": notification.pk})
    assert (await client.recv_type("error"))["code"] == "not_found"
    assert await notification_states(owner) == [(notification.pk, False)]


@pytest.mark.parametrize("frame,code", [
    ({"type": "mark_read"}, "invalid_field"),
    ({"type": "mark_read", "notification_id": "1"}, "invalid_field"),
    ({"type": "get_notifications", "limit": 0}, "invalid_field"),
    ({"type": "get_notifications", "limit": "5"}, "invalid_field"),
    ({"type": "explode"}, "unknown_type"),
    ({"action": 3}, "invalid_field"),
])
async def test_bad_notification_frames_get_errors(ws, make_user, frame, code):
    """Bad notification frames are answered with their error code."""
    user = await make_user()
    await asend_notification_to_user(user.pk, "keep", "")
    client = await ws("/ws/notifications/", user)
    await client.recv_type("count_update")
    await client.send(frame)
    assert (await client.recv_type("error"))["code"] == code
    assert [read for _, read in await notification_states(user)] == [False]


async def test_notifications_need_a_session(ws):
    """Anonymous notification sockets are closed with 4001."""
    assert await (await ws("/ws/notifications/", None)).closed_with() == 4001


# ---------------------------------------------------------------------------- live updates
async def test_subscribers_receive_published_updates(ws, make_user):
    """publish_live_update reaches the topic's subscribers only."""
    user = await make_user()
    sub, other = await ws("/ws/live-updates/", user), await ws("/ws/live-updates/", user)
    await sub.send({"type": "subscribe", "topic": "scores", "id": 1})
    assert await sub.recv() == {"type": "subscribed", "topic": "scores", "client_id": 1}
    await apublish_live_update("scores", {"home": 2})
    update = await sub.recv_type("update")
    assert (update["topic"], update["payload"]) == ("scores", {"home": 2})
    assert await other.silent()


async def test_unsubscribe_stops_updates(ws, make_user):
    """After unsubscribe, nothing more arrives."""
    client = await ws("/ws/live-updates/", await make_user())
    await client.send({"type": "subscribe", "topic": "t"})
    await client.recv_type("subscribed")
    await client.send({"type": "unsubscribe", "topic": "t"})
    await client.recv_type("unsubscribed")
    await apublish_live_update("t", {})
    assert await client.silent()


async def test_room_creation_is_published_on_the_rooms_topic(ws, make_user):
    """Saving a public room publishes to `rooms` (the model signal)."""
    client = await ws("/ws/live-updates/", await make_user())
    await client.send({"type": "subscribe", "topic": "rooms"})
    await client.recv_type("subscribed")
    await database_sync_to_async(ChatRoom.objects.create)(name="fresh", display_name="Fresh")
    update = await client.recv_type("update")
    assert update["payload"]["event"] == "created"
    assert update["payload"]["room"]["name"] == "fresh"


async def test_staff_topics_need_staff(ws, make_user):
    """A topic under a private prefix is refused to non-staff and allowed to staff."""
    plain = await ws("/ws/live-updates/", await make_user())
    await plain.send({"type": "subscribe", "topic": "staff.alerts"})
    assert (await plain.recv_type("error"))["code"] == "permission_denied"
    staff = await ws("/ws/live-updates/", await make_user(staff=True))
    await staff.send({"type": "subscribe", "topic": "staff.alerts"})
    assert (await staff.recv_type("subscribed"))["topic"] == "staff.alerts"


@pytest.mark.parametrize("topic", ["", "has space", "x" * 101, "a/b"])
async def test_invalid_topics_are_refused(ws, make_user, topic):
    """Topic names are validated."""
    client = await ws("/ws/live-updates/", await make_user())
    await client.send({"type": "subscribe", "topic": topic})
    assert (await client.recv_type("error"))["code"] == "invalid_topic"


async def test_too_many_topics(ws, make_user, settings):
    """More than 50 topics on one socket is refused."""
    settings.WS_FRAME_RATE = "100/10"
    client = await ws("/ws/live-updates/", await make_user())
    for n in range(50):
        await client.send({"type": "subscribe", "topic": f"t{n}"})
        await client.recv_type("subscribed")
    await client.send({"type": "subscribe", "topic": "t50"})
    assert (await client.recv_type("error"))["code"] == "too_many_topics"


async def test_live_updates_need_a_session(ws):
    """Anonymous live-update sockets are closed with 4001."""
    assert await (await ws("/ws/live-updates/", None)).closed_with() == 4001


# ---------------------------------------------------------------------------- user stream
async def test_the_owner_receives_their_stream(ws, make_user):
    """ws/user/<own id>/ receives send_to_user frames and notifications."""
    user = await make_user()
    client = await ws(f"/ws/user/{user.pk}/", user)
    assert await client.recv() == {"type": "connected", "user_id": user.pk}
    await asend_to_user(user.pk, {"type": "mention", "room": "lobby"})
    assert await client.recv() == {"type": "mention", "room": "lobby"}
    await asend_notification_to_user(user.pk, "n", "")
    assert (await client.recv_type("notification"))["title"] == "n"


async def test_another_users_stream_is_closed_with_4003(ws, make_user):
    """Opening someone else's stream is forbidden."""
    owner, other = await make_user(), await make_user()
    assert await (await ws(f"/ws/user/{owner.pk}/", other)).closed_with() == 4003


async def test_staff_may_open_any_stream(ws, make_user):
    """Staff can watch a user's stream."""
    owner, staff = await make_user(), await make_user(staff=True)
    client = await ws(f"/ws/user/{owner.pk}/", staff)
    assert (await client.recv())["user_id"] == owner.pk


async def test_user_stream_needs_a_session(ws, make_user):
    """Anonymous user-stream sockets are closed with 4001."""
    owner = await make_user()
    assert await (await ws(f"/ws/user/{owner.pk}/", None)).closed_with() == 4001
