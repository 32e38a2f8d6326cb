"""The four WebSocket routes of docs/protocol.md: chat rooms, notifications, live updates and
the per-user stream."""

import asyncio
import json
import logging
import re
import time
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.conf import settings
from redis.exceptions import RedisError

from app.realtime.adapters import uvicorn as uvicorn_adapter
from app.realtime.consumers.base import Close, RealtimeConsumer, field
from app.realtime.consumers.delivery import QUEUE, RUN, WRITTEN
from app.realtime.consumers.errors import ProtocolError
from app.realtime.consumers.registry import registry
from app.realtime.layer.ratelimit import Rate, allow
from app.realtime.layer.store import get_store
from app.realtime.ops import metrics

from . import gap_check, presence, services
from .facts import handshake_facts
from .history import room_history
from .last_seen import last_seen
from .models import Notification, UserStatus
from .replay import room_events
from .streams import notify_group, topic_group, user_group
from .writer import writer

logger = logging.getLogger(__name__)

TOPIC = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
STATUSES = {"online", "away", "busy", "offline"}


def _dumps(frame: dict) -> str:
    return json.dumps(frame, separators=(",", ":"))


def notice_event(room, user, kind: str, extra: dict) -> dict:
    """The group event of an ephemeral frame about `user` in `room`, for all but the user."""
    frame = {"type": kind, "room": room.name, "user": services.user_name(user),
             "user_id": user.pk, **extra}
    return {"type": "room.notice", "text": _dumps(frame), "kind": kind, "skip_user": user.pk}


class ChatConsumer(RealtimeConsumer):
    """A chat room: messages, replies, reactions, edits, deletes, typing, presence, resume."""

    route = "chat"
    # Stored changes reach the database only through database_sync_to_async (the writer's
    # batches, see store_and_broadcast); typing never does. `status` uses the async ORM: not
    # listed.
    hygienic_frames = RealtimeConsumer.hygienic_frames | {
        "message", "edit", "delete", "reaction", "typing"}
    # The handshake (facts, history, replay) and the close (last_seen) reach the database only
    # through database_sync_to_async too. Without the hop a storm of handshakes does not queue
    # in the database thread behind each other's and the closes' work.
    hygienic_events = frozenset({"websocket.connect", "websocket.disconnect"})
    handlers = {
        "message": "handle_message",
        "typing": "handle_typing",
        "reaction": "handle_reaction",
        "edit": "handle_edit",
        "delete": "handle_delete",
        "status": "handle_status",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.room = None
        self.room_group = None
        self.next_seq = 1
        # Live delivery (this consumer's task) and the heartbeat's gap check (the process
        # heartbeat task) both advance next_seq; the lock keeps each event sent exactly once.
        self.delivery = asyncio.Lock()

    # ------------------------------------------------------------------ connect
    async def connect(self):
        """Check the handshake, join the room, then send welcome, users and history or replay."""
        user = self.user
        name = self.scope["url_route"]["kwargs"]["room_name"]
        if user is None or not user.is_authenticated:
            return await self.refuse(Close.UNAUTHENTICATED, "unauthenticated")
        if not services.valid_room_name(name):
            return await self.refuse(Close.NOT_FOUND, "invalid_room")
        allowed, _ = await allow(f"connect:{user.pk}", Rate.parse(settings.WS_CONNECT_RATE))
        if not allowed:
            return await self.refuse(Close.RATE_LIMITED, "rate_limited")
        # Presence is read once: for the size check, whether to announce the user and the
        # user list.
        room, problem, present, users, recorded, users_frame = await handshake_facts.for_handshake(
            name, user, settings.CHAT_AUTO_CREATE_ROOMS)
        if room is None:
            return await self.refuse(Close.NOT_FOUND, "not_found")
        if problem:
            return await self.refuse(Close.FORBIDDEN, problem)
        if user.pk not in present and len(present) >= room.max_users:
            return await self.refuse(Close.FORBIDDEN, "room_full")

        self.room = room
        self.room_group = services.group_name(room.name)
        await self.channel_layer.group_add(self.room_group, self.channel_name)
        await self.accept()
        # A user still present (another socket, or an old one of a killed or drained
        # process whose entries have not expired) is not announced again.
        first_connection = await presence.join(self.user.pk, room, self.channel_name, present)

        position, bad_position = self._resume_request()
        await self.send_frame({
            "type": "connected",
            "room": room.name,
            "user": services.user_name(user),
            "user_id": user.pk,
            "heartbeat_interval": settings.WS_HEARTBEAT_INTERVAL,
            "node": settings.NODE_NAME,
        })
        if bad_position:
            await self.send_error("invalid_field", "last_seq/last_id must be integers",
                                  field="last_seq")
        await self.send_frame(users_frame, "user_list")
        if position is None:
            await self.send_history(recorded)
        else:
            await self.send_replay(*position, recorded)
        if first_connection:
            status = next((u["status"] for u in users if u["user_id"] == user.pk), "online")
            await self.notice("user_joined", {
                "message": f"{services.user_name(user)} joined the room",
                "status": status,
            })

    def _resume_request(self) -> tuple[tuple[str, int] | None, bool]:
        """Read ?last_seq=N (or ?last_id=<message id>) from the handshake; flag bad values."""
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        for key in ("last_seq", "last_id"):
            if key in query:
                try:
                    value = int(query[key][-1])
                except ValueError:
                    return None, True
                return ((key, value), False) if value >= 0 else (None, True)
        return None, False

    async def send_history(self, recorded: int | None = None):
        """Send the latest messages as `message` frames, then `history_end` with the position.

        `recorded` is the room's position as recorded in Redis when the handshake read it.
        """
        upto, frames = await room_history.latest(self.room, recorded)
        for frame in frames:
            await self.send_frame(frame, "message")
        self.next_seq = upto + 1
        await self.send_frame({"type": "history_end", "room": self.room.name, "seq": upto})

    async def send_replay(self, key: str, value: int, recorded: int | None = None):
        """Replay every stored event after the client's position, then `resume_end`.

        `recorded` is the room's position as recorded in Redis when the handshake read it
        (raised after each commit, app/chat/writer.py). A client resuming at exactly that
        position has missed nothing and gets `resume_end` without a database read; one
        behind it gets the events from the room's span this process holds when that span
        reaches the record (app/chat/replay.py), else from the database. The record may lag
        the database (a raise lost in a failover, or not made yet): then events after the
        replay's end exist that this path does not send, and they are sent by the gap fill,
        in order and exactly once, as for a broadcast Redis lost. `next_seq` is the
        replay's end + 1, so the next live event finds the gap and `room_event` fills it
        from the database first, and in a quiet room the heartbeat's check against the
        database's latest seq (`heartbeat_many`) does. The record never runs ahead of the
        database, so neither fast path can skip an event.
        """
        if key != "last_seq":
            recorded = None
            value = await self._seq_of_message(value)
        if recorded is not None and value == recorded:
            frames, after = [], value
        else:
            frames, after, upto, read = await room_events.replay(self.room, value, recorded)
            if read:
                await self._record_position(upto)
        metrics.RESUME_REPLAYS.inc()
        metrics.RESUME_MESSAGES.inc(len(frames))
        for _, kind, text in frames:
            await self.send_frame(text, kind)
        self.next_seq = (frames[-1][0] if frames else after) + 1
        await self.send_frame({
            "type": "resume_end",
            "room": self.room.name,
            "seq": self.next_seq - 1,
            "replayed": len(frames),
        })

    async def _record_position(self, seq: int) -> None:
        try:
            await get_store().raise_room_positions({self.room.id: seq}, settings.ROOM_POSITION_TTL)
        except RedisError:
            pass  # the next resume reads the database again

    @database_sync_to_async
    def _seq_of_message(self, message_id: int) -> int:
        return services.seq_of_message(self.room.id, message_id) or 0

    # ------------------------------------------------------------------ disconnect
    async def disconnect(self, code):
        """Leave the group and presence; tell the room if this was the user's last connection."""
        if self.room is None:
            return
        await self.channel_layer.group_discard(self.room_group, self.channel_name)
        if not registry.draining:
            # The user is kept for CHAT_LEAVE_GRACE (a reload, a dropped network): user_left
            # comes after it, if they did not come back. A drained client was told to
            # reconnect elsewhere: its entries are left to expire unless it does, within
            # PRESENCE_TTL, so the room sees no user_left and user_joined.
            await presence.leave(self.user.pk, self.room, self.channel_name,
                                 settings.CHAT_LEAVE_GRACE, self._left_notice())
        last_seen.note(self.user.pk)

    def _left_notice(self):
        """A coroutine function announcing that the user left. It holds the layer, the room
        and the user, not this consumer (and its socket), through the leave grace, and
        encodes the notice only if it is sent."""
        layer, group, room, user = self.channel_layer, self.room_group, self.room, self.user

        async def say_left():
            await layer.group_send(group, notice_event(room, user, "user_left", {
                "message": f"{services.user_name(user)} left the room",
            }))
        return say_left

    # ------------------------------------------------------------------ client frames
    async def handle_message(self, data):
        """Store a chat message, then broadcast it (`message` or `content` accepted)."""
        key = "content" if "content" in data and "message" not in data else "message"
        content = self._content(data, key)
        reply_to = field(data, "reply_to", int, required=False)
        await self.store_and_broadcast(services.post_message, content, reply_to, data)

    async def handle_edit(self, data):
        """Edit one's own message."""
        message_id = field(data, "message_id", int)
        key = "message" if "message" in data and "content" not in data else "content"
        content = self._content(data, key)
        await self.store_and_broadcast(services.edit_message, message_id, content, data)

    async def handle_delete(self, data):
        """Delete one's own message (it becomes a tombstone)."""
        message_id = field(data, "message_id", int)
        await self.store_and_broadcast(services.delete_message, message_id, data)

    async def handle_reaction(self, data):
        """Add or remove an emoji reaction on a message of this room."""
        message_id = field(data, "message_id", int)
        emoji = field(data, "emoji", str).strip()
        action = field(data, "action", str, required=False, default="add")
        if not emoji or len(emoji) > services.EMOJI_MAX:
            raise ProtocolError("invalid_field", "emoji must be 1-32 characters", field="emoji")
        if action not in ("add", "remove"):
            raise ProtocolError("invalid_field", "action must be add or remove", field="action")
        await self.store_and_broadcast(services.react, message_id, emoji, action, data)

    async def store_and_broadcast(self, change, *args) -> None:
        """Count the write against the rate limit, store it with its event, then broadcast.

        `change` is a services function taking (room, user, *args, client_id); the last of
        `args` is the client frame, whose `id` becomes the broadcast's `client_id`.
        """
        *values, data = args
        await self._rate_limit()
        frame = await writer().write(change, self.room, self.user, *values, data.get("id"))
        if frame is not None:  # None: nothing changed (a reaction already in that state)
            await self.broadcast(frame, data.get("id"))

    async def handle_typing(self, data):
        """Tell the others that this user is (not) typing; never echoed to the sender."""
        is_typing = field(data, "is_typing", bool, required=False, default=True)
        await self.notice("typing", {"is_typing": is_typing})

    async def handle_status(self, data):
        """Change the user's status and tell every room the user is in."""
        status = field(data, "status", str)
        custom = field(data, "custom_message", str, required=False, default="")
        if status not in STATUSES:
            raise ProtocolError("invalid_field", "status must be online, away, busy or offline",
                                field="status")
        if len(custom) > 100:
            raise ProtocolError("invalid_field", "custom_message is limited to 100 characters",
                                field="custom_message")
        await UserStatus.objects.aupdate_or_create(
            user=self.user, defaults={"status": status, "custom_message": custom}
        )
        frame = {
            "type": "user_status",
            "user": services.user_name(self.user),
            "user_id": self.user.pk,
            "status": status,
            "custom_message": custom,
            "timestamp": time.time(),
        }
        for room_name in await presence.rooms_of(self.user.pk):
            await self.channel_layer.group_send(services.group_name(room_name), {
                "type": "room.notice", "text": _dumps(frame), "kind": "user_status",
                "skip_user": self.user.pk,
            })

    def _content(self, data: dict, key: str) -> str:
        content = field(data, key, str).strip()
        if not content:
            raise ProtocolError("empty_message", "the message is empty")
        if len(content) > settings.CHAT_MESSAGE_MAX_LENGTH:
            raise ProtocolError("too_long", "the message is too long",
                                limit=settings.CHAT_MESSAGE_MAX_LENGTH)
        lowered = content.lower()
        if any(word.lower() in lowered for word in settings.CONTENT_FILTER_WORDS):
            raise ProtocolError("blocked_content", "the message was blocked by the content filter")
        return content

    async def _rate_limit(self):
        allowed, retry_after = await allow(
            f"msg:{self.user.pk}", Rate.parse(settings.CHAT_MESSAGE_RATE)
        )
        if not allowed:
            raise ProtocolError("rate_limited", "too many messages, slow down",
                                retry_after=retry_after)

    # ------------------------------------------------------------------ broadcasting
    async def broadcast(self, frame: dict, client_id) -> None:
        """Fan a stored event out to the room; on failure tell the sender it will come by resume."""
        try:
            await self.channel_layer.group_send(self.room_group, {
                "type": "room.event", "seq": frame["seq"], "text": _dumps(frame),
                "kind": frame["type"],
            })
        except Exception:  # LayerUnavailable after the retry window, or RedisFull at once
            await self.send_error(
                "broadcast_failed",
                "stored, but not delivered live; clients receive it when they resume",
                client_id, seq=frame["seq"], message_id=frame.get("message_id"),
            )

    async def notice(self, kind: str, extra: dict) -> None:
        """Send an ephemeral (unstored) frame to the others in the room."""
        await self.channel_layer.group_send(self.room_group,
                                            notice_event(self.room, self.user, kind, extra))

    # ------------------------------------------------------------------ group events
    async def room_event(self, event):
        """Deliver a stored room event in sequence order, filling any gap from the database."""
        room_events.saw(self.room.id, event["seq"], event["kind"], event["text"])
        async with self.delivery:
            seq = event["seq"]
            if seq < self.next_seq:
                return  # already delivered (history, replay, gap fill or a retried send)
            if seq > self.next_seq:
                await self.fill_gap(seq - 1)
            await self.send_frame(event["text"], event["kind"])
            self.next_seq = seq + 1

    def take(self, message) -> int:
        """Write a room event or notice at once when it is the next thing this socket gets.

        A room event out of sequence, or one arriving while a gap fill holds `delivery`, is
        queued for `room_event`, which fills the gap first; one the server cannot write now
        has `room_event` run by the layer's reader.
        """
        kind = message["type"]
        if kind == "room.event":
            room_events.saw(self.room.id, message["seq"], message["kind"], message["text"])
        if kind == "room.event" and not self.busy:
            seq = message["seq"]
            if seq > self.next_seq or self.delivery.locked():
                return QUEUE
            if seq == self.next_seq:
                if not self.write_frame(message["text"], message["kind"]):
                    return RUN
                self.next_seq = seq + 1
            return WRITTEN  # seq below next_seq: already delivered (history, replay, gap fill)
        if kind == "room.notice" and not self.busy:
            if message.get("skip_user") == self.user.pk:
                return WRITTEN
            return WRITTEN if self.write_frame(message["text"], message["kind"]) else RUN
        return super().take(message)

    async def room_notice(self, event):
        """Deliver an ephemeral room frame to everyone but its author."""
        if event.get("skip_user") != self.user.pk:
            await self.send_frame(event["text"], event["kind"])

    async def fill_gap(self, upto: int) -> None:
        """Send stored events the channel layer did not bring (lost in a failover).

        Callers hold `self.delivery`, so nothing else moves next_seq meanwhile.
        """
        frames = await database_sync_to_async(services.events_between)(
            self.room.id, self.next_seq - 1, upto
        )
        metrics.GAP_FILLS.inc()
        metrics.RESUME_MESSAGES.inc(len(frames))
        for frame in frames:
            if frame["seq"] == self.next_seq:
                await self.send_frame(frame)
                self.next_seq = frame["seq"] + 1

    @classmethod
    async def heartbeat_many(cls, consumers):
        """Heartbeats, plus a check that no broadcast was lost while a room was quiet.

        The rooms' latest sequence numbers come in one database read for all these sockets.
        The database, not Redis, is asked: it holds every committed event, while a mark kept
        in Redis could be lost in a failover together with the very broadcast it should reveal
        (and it cost every chat message a Redis command besides its group send).
        """
        await super().heartbeat_many(consumers)
        live = [c for c in consumers if c.room is not None and not c.closing]
        rooms = sorted({c.room.id for c in live})
        if not rooms:
            return
        latest = await gap_check.latest_seqs(rooms)
        if latest is None:
            return  # the database is away or hangs: checked again on the next beat
        for consumer in live:
            seq = latest.get(consumer.room.id)
            if seq is None or seq < consumer.next_seq:
                continue  # nothing missed: the usual case, checked without a coroutine
            try:
                await consumer.catch_up(seq)
            except uvicorn_adapter.CLIENT_GONE:
                logger.debug("gap check of %s: the client is gone", consumer.channel_name)
            except Exception:
                logger.exception("gap check of %s failed", consumer.channel_name)

    async def catch_up(self, latest: int | None) -> None:
        """Fill the gap up to the room's latest seq if this socket has not had it."""
        if latest is not None and latest >= self.next_seq and not self.closing:
            async with self.delivery:
                if latest >= self.next_seq:
                    await self.fill_gap(latest)

    def presence_entries(self):
        """Presence kept alive by the heartbeat: user, room and the user's room list."""
        if self.room is None:
            return []
        return presence.entries(self.user.pk, self.room, self.channel_name)

    def groups_joined(self):
        """The room group."""
        return [self.room_group] if self.room_group else []

    def resume_position(self):
        """The last seq delivered on this connection."""
        return self.next_seq - 1 if self.room is not None else None


class NotificationConsumer(RealtimeConsumer):
    """The notifications of the signed-in user: unread count, list and mark-read."""

    route = "notifications"
    handlers = {
        "mark_read": "handle_mark_read",
        "mark_all_read": "handle_mark_all_read",
        "get_notifications": "handle_get_notifications",
    }

    async def connect(self):
        """Join the user's notification group and send the unread count."""
        if self.user is None or not self.user.is_authenticated:
            return await self.refuse(Close.UNAUTHENTICATED, "unauthenticated")
        self.groups = [notify_group(self.user.pk)]
        await self.channel_layer.group_add(self.groups[0], self.channel_name)
        await self.accept()
        await self.send_count()

    async def disconnect(self, code):
        """Leave the notification group."""
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    def decode(self, text_data, bytes_data):
        """Accept the reference client's `action` as the message type."""
        if text_data is not None and len(text_data) <= settings.WS_MAX_FRAME_BYTES:
            try:
                data = json.loads(text_data)
            except (ValueError, RecursionError):
                data = None
            if isinstance(data, dict) and "type" not in data and "action" in data:
                data["type"] = data["action"]
                text_data = json.dumps(data)
        return super().decode(text_data, bytes_data)

    async def unread_count(self) -> int:
        """Count the user's unread notifications."""
        return await Notification.objects.filter(user=self.user, read=False).acount()

    async def send_count(self):
        """Send `count_update` to this connection."""
        await self.send_frame({"type": "count_update", "unread_count": await self.unread_count()})

    async def push_read(self, which: dict):
        """Tell every notification socket of the user what was read, then the new count."""
        read = {"type": "notifications_read", **which}
        count = {"type": "count_update", "unread_count": await self.unread_count()}
        for frame in (read, count):
            await self.channel_layer.group_send(self.groups[0], {
                "type": "stream.event", "text": _dumps(frame), "kind": frame["type"],
            })

    async def handle_mark_read(self, data):
        """Mark one of the user's notifications read."""
        notification_id = field(data, "notification_id", int)
        exists = await Notification.objects.filter(pk=notification_id, user=self.user).aexists()
        if not exists:
            raise ProtocolError("not_found", "no such notification")
        await Notification.objects.filter(pk=notification_id).aupdate(read=True)
        await self.push_read({"ids": [notification_id]})

    async def handle_mark_all_read(self, data):
        """Mark all of the user's notifications read."""
        await Notification.objects.filter(user=self.user, read=False).aupdate(read=True)
        await self.push_read({"all": True})

    async def handle_get_notifications(self, data):
        """Send a page of the user's notifications, newest first."""
        limit = field(data, "limit", int, required=False, default=20)
        before = field(data, "before", int, required=False)
        if not 1 <= limit <= 100:
            raise ProtocolError("invalid_field", "limit must be 1-100", field="limit")
        query = Notification.objects.filter(user=self.user)
        if before is not None:
            query = query.filter(pk__lt=before)
        items = [n.as_dict() async for n in query.order_by("-id")[:limit]]
        await self.send_frame({
            "type": "notifications_list", "notifications": items, "client_id": data.get("id"),
        })


class LiveUpdateConsumer(RealtimeConsumer):
    """Named topics a client subscribes to; the server publishes with publish_live_update."""

    route = "live"
    handlers = {"subscribe": "handle_subscribe", "unsubscribe": "handle_unsubscribe"}
    max_topics = 50

    async def connect(self):
        """Accept signed-in users."""
        if self.user is None or not self.user.is_authenticated:
            return await self.refuse(Close.UNAUTHENTICATED, "unauthenticated")
        self.topics: set[str] = set()
        await self.accept()

    async def disconnect(self, code):
        """Leave every topic."""
        for topic in getattr(self, "topics", ()):
            await self.channel_layer.group_discard(topic_group(topic), self.channel_name)

    def _topic(self, data) -> str:
        topic = field(data, "topic", str)
        if not TOPIC.match(topic):
            raise ProtocolError("invalid_topic", "topics are 1-100 of A-Z a-z 0-9 _ . -")
        return topic

    async def handle_subscribe(self, data):
        """Subscribe to a topic, if permitted."""
        topic = self._topic(data)
        private = any(topic.startswith(p) for p in settings.LIVE_UPDATE_PRIVATE_PREFIXES)
        if private and not self.user.is_staff:
            raise ProtocolError("permission_denied", "this topic needs staff permission")
        if topic not in self.topics and len(self.topics) >= self.max_topics:
            raise ProtocolError("too_many_topics", f"at most {self.max_topics} topics")
        await self.channel_layer.group_add(topic_group(topic), self.channel_name)
        self.topics.add(topic)
        await self.send_frame({"type": "subscribed", "topic": topic, "client_id": data.get("id")})

    async def handle_unsubscribe(self, data):
        """Unsubscribe from a topic."""
        topic = self._topic(data)
        await self.channel_layer.group_discard(topic_group(topic), self.channel_name)
        self.topics.discard(topic)
        await self.send_frame({"type": "unsubscribed", "topic": topic,
                               "client_id": data.get("id")})

    def groups_joined(self):
        """One group per subscribed topic."""
        return [topic_group(t) for t in getattr(self, "topics", ())]


class UserConsumer(RealtimeConsumer):
    """The per-user event stream; only that user (or staff) may open it."""

    route = "user"

    async def connect(self):
        """Accept the owner of the stream or staff."""
        if self.user is None or not self.user.is_authenticated:
            return await self.refuse(Close.UNAUTHENTICATED, "unauthenticated")
        user_id = int(self.scope["url_route"]["kwargs"]["user_id"])
        if user_id != self.user.pk and not self.user.is_staff:
            return await self.refuse(Close.FORBIDDEN, "forbidden")
        self.groups = [user_group(user_id)]
        await self.channel_layer.group_add(self.groups[0], self.channel_name)
        await self.accept()
        await self.send_frame({"type": "connected", "user_id": user_id})

    async def disconnect(self, code):
        """Leave the stream group."""
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)
