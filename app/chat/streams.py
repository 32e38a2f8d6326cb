"""Server-side publishing: notifications, live-update topics and per-user stream events.

Each helper has an async form (for consumers and async views) and a sync form (for views,
signals, management commands and tasks); the sync forms use async_to_sync, never
`asyncio.create_task` from a worker thread.
"""

import json
import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from .models import Notification

logger = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    """The channel-layer group of a user's event stream."""
    return f"user.{user_id}"


def notify_group(user_id: int) -> str:
    """The channel-layer group of a user's notification sockets."""
    return f"notify.{user_id}"


def topic_group(topic: str) -> str:
    """The channel-layer group of a live-update topic."""
    return f"live.{topic}"


def _event(frame: dict) -> dict:
    return {"type": "stream.event", "text": json.dumps(frame, separators=(",", ":")),
            "kind": frame["type"]}


async def asend_to_user(user_id: int, frame: dict) -> None:
    """Send a frame to the user's event stream (ws/user/<id>/)."""
    await get_channel_layer().group_send(user_group(user_id), _event(frame))


def send_to_user(user_id: int, frame: dict) -> None:
    """Sync form of asend_to_user."""
    async_to_sync(asend_to_user)(user_id, frame)


async def asend_notification_to_user(user_id: int, title: str, message: str,
                                     category: str = "general") -> Notification:
    """Store a notification, push it and the new unread count to the user's sockets."""
    notification = await Notification.objects.acreate(
        user_id=user_id, title=title, message=message, category=category
    )
    unread = await Notification.objects.filter(user_id=user_id, read=False).acount()
    layer = get_channel_layer()
    frame = {"type": "notification", **notification.as_dict()}
    count = {"type": "count_update", "unread_count": unread}
    try:
        await layer.group_send(notify_group(user_id), _event(frame))
        await layer.group_send(notify_group(user_id), _event(count))
        await layer.group_send(user_group(user_id), _event(frame))
    except Exception:
        # Stored already: the user sees it on the next connect or get_notifications.
        logger.exception("notification %s stored but not pushed", notification.pk)
    return notification


def send_notification_to_user(user_id: int, title: str, message: str,
                              category: str = "general") -> Notification:
    """Sync form of asend_notification_to_user."""
    return async_to_sync(asend_notification_to_user)(user_id, title, message, category)


async def apublish_live_update(topic: str, payload: dict) -> None:
    """Publish a payload to every subscriber of a live-update topic."""
    frame = {"type": "update", "topic": topic, "payload": payload, "timestamp": time.time()}
    await get_channel_layer().group_send(topic_group(topic), _event(frame))


def publish_live_update(topic: str, payload: dict) -> None:
    """Sync form of apublish_live_update."""
    async_to_sync(apublish_live_update)(topic, payload)
