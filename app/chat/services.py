"""Database work behind the chat protocol: every change and its numbered room event.

These are plain synchronous functions, called from consumers through
`database_sync_to_async` (which also keeps Django's connection hygiene) and from HTTP views.
Each change and its RoomEvent commit in one transaction, before anything is broadcast.
"""

import re
from datetime import datetime
from typing import NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from app.realtime.consumers.errors import ProtocolError

from .models import ChatRoom, Message, MessageReaction, RoomBan, RoomEvent

ROOM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
EMOJI_MAX = 32


def valid_room_name(name: str) -> bool:
    """Room names are 1-100 letters, digits, '_', '-' or '.', not starting with punctuation."""
    return bool(ROOM_NAME.match(name))


def group_name(room_name: str) -> str:
    """The channel-layer group of a room (group names allow the same characters)."""
    return f"chat.{room_name}"


def find_room(name: str, user, create: bool) -> ChatRoom | None:
    """Return the room, creating a public one when allowed (the reference clients expect it)."""
    room = ChatRoom.objects.filter(name=name).first()
    if room is None and create:
        room, _ = ChatRoom.objects.get_or_create(
            name=name, defaults={"display_name": name, "created_by": user}
        )
    return room


class Access(NamedTuple):
    """A user's standing in a room as stored: a ban (and until when), membership."""

    banned: bool
    ban_expires_at: datetime | None
    member: bool


def access_of(room: ChatRoom, user) -> Access:
    """Read the user's ban and membership in a room."""
    ban = RoomBan.objects.filter(room=room, user=user).values_list("expires_at").first()
    return Access(ban is not None, ban[0] if ban else None, is_member(room, user))


def is_member(room: ChatRoom, user) -> bool:
    """Whether the user is a member of the room (what lets them into a private one)."""
    return room.members.filter(pk=user.pk).exists()


def bans_in_force(room_id: int) -> dict[int, datetime | None]:
    """The room's bans not expired yet: user id -> until when (None: for good)."""
    now = timezone.now()
    return dict(RoomBan.objects.filter(room_id=room_id)
                .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
                .values_list("user_id", "expires_at"))


def access_verdict(room: ChatRoom, user, access: Access) -> str | None:
    """Why a user may not join a room ("banned", "private"), or None, checking expiry now."""
    if access.banned and (access.ban_expires_at is None
                          or access.ban_expires_at > timezone.now()):
        return "banned"
    if room.is_private and not user.is_staff and not access.member:
        return "private"
    return None


def access_problem(room: ChatRoom, user) -> str | None:
    """Why a user may not join a room ("banned", "private"), or None."""
    return access_verdict(room, user, access_of(room, user))


def user_name(user) -> str:
    """The display name used in frames."""
    return user.get_username()


def _insert(instance) -> None:
    """INSERT a new model instance and set its primary key, as `save()` would, for less.

    For the per-message hot path only: `save()` spent about four times as long in Python as
    the statement took to run (its machinery, a query object compiled per call). Values come
    from the fields themselves (`pre_save` fills auto_now dates, `get_db_prep_save` converts),
    so nothing is copied by hand. The models written here have no save() override and no
    signal receivers.
    """
    meta = instance._meta
    fields = [field for field in meta.concrete_fields if not field.primary_key]
    quote = connection.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({}) RETURNING {}".format(
        quote(meta.db_table),
        ", ".join(quote(field.column) for field in fields),
        ", ".join(["%s"] * len(fields)),
        quote(meta.pk.column),
    )
    params = [field.get_db_prep_save(field.pre_save(instance, True), connection)
              for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        instance.pk = cursor.fetchone()[0]
    instance._state.adding = False


def _next_seq(room_id: int) -> int:
    # The UPDATE takes the room row's lock until commit, so sequence numbers of one room
    # commit in order and a rolled-back change gives its number back: no gaps, ever.
    # RETURNING (SQLite 3.35+, PostgreSQL) reads the new number in the same statement.
    table = connection.ops.quote_name(ChatRoom._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_seq = last_seq + 1 WHERE id = %s RETURNING last_seq",
            [room_id],
        )
        return cursor.fetchone()[0]


def _record(room_id: int, kind: str, message_id: int, payload: dict) -> dict:
    seq = _next_seq(room_id)
    payload = {**payload, "seq": seq}
    _insert(RoomEvent(room_id=room_id, seq=seq, kind=kind, message_id=message_id,
                      payload=payload))
    return payload


def message_frame(message: Message, username: str) -> dict:
    """The `message` frame of a message in its current state (both content field names)."""
    content = "" if message.is_deleted else message.content
    return {
        "type": "message",
        "message_id": message.id,
        "message": content,
        "content": content,
        "user": username,
        "user_id": message.user_id,
        "timestamp": message.created_at.isoformat(),
        "reply_to": message.reply_to_id,
        "is_edited": message.is_edited,
        "is_deleted": message.is_deleted,
    }


def post_message(room: ChatRoom, user, content: str, reply_to, client_id) -> dict:
    """Store a message and its event; return the frame to broadcast."""
    with transaction.atomic():
        reply = None
        if reply_to is not None:
            reply = Message.objects.filter(pk=reply_to, room=room).first()
            if reply is None:
                raise ProtocolError("not_found", "reply_to is not a message of this room")
        message = Message(room_id=room.id, user_id=user.pk, content=content, reply_to=reply)
        _insert(message)
        frame = message_frame(message, user_name(user))
        frame["room"] = room.name
        frame["client_id"] = client_id
        return _record(room.id, RoomEvent.Kind.MESSAGE, message.id, frame)


def _own_message(room: ChatRoom, user, message_id) -> Message:
    message = Message.objects.select_for_update().filter(pk=message_id, room=room).first()
    if message is None:
        raise ProtocolError("not_found", "no such message in this room")
    if message.user_id != user.pk:
        raise ProtocolError("forbidden", "only the author may change this message")
    if message.is_deleted:
        raise ProtocolError("not_found", "this message was deleted")
    return message


def edit_message(room: ChatRoom, user, message_id, content: str, client_id) -> dict:
    """Change the text of one's own message; return the `message_edited` frame."""
    with transaction.atomic():
        message = _own_message(room, user, message_id)
        message.content = content
        message.is_edited = True
        message.save(update_fields=["content", "is_edited", "updated_at"])
        frame = {
            "type": "message_edited",
            "room": room.name,
            "message_id": message.id,
            "content": content,
            "message": content,
            "user": user_name(user),
            "user_id": user.pk,
            "edited_at": message.updated_at.isoformat(),
            "client_id": client_id,
        }
        return _record(room.id, RoomEvent.Kind.EDIT, message.id, frame)


def delete_message(room: ChatRoom, user, message_id, client_id) -> dict:
    """Turn one's own message into a tombstone; return the `message_deleted` frame."""
    with transaction.atomic():
        message = _own_message(room, user, message_id)
        message.is_deleted = True
        message.content = ""
        message.save(update_fields=["content", "is_deleted", "updated_at"])
        frame = {
            "type": "message_deleted",
            "room": room.name,
            "message_id": message.id,
            "user": user_name(user),
            "user_id": user.pk,
            "deleted_at": message.updated_at.isoformat(),
            "client_id": client_id,
        }
        return _record(room.id, RoomEvent.Kind.DELETE, message.id, frame)


def react(room: ChatRoom, user, message_id, emoji: str, action: str, client_id) -> dict | None:
    """Add or remove a reaction; return the `reaction` frame, or None if nothing changed."""
    with transaction.atomic():
        message = Message.objects.filter(pk=message_id, room=room, is_deleted=False).first()
        if message is None:
            raise ProtocolError("not_found", "no such message in this room")
        if action == "add":
            _, changed = MessageReaction.objects.get_or_create(
                message=message, user=user, emoji=emoji
            )
        else:
            changed, _ = MessageReaction.objects.filter(
                message=message, user=user, emoji=emoji
            ).delete()
        if not changed:
            return None
        frame = {
            "type": "reaction",
            "room": room.name,
            "message_id": message.id,
            "emoji": emoji,
            "action": action,
            "user": user_name(user),
            "user_id": user.pk,
            "client_id": client_id,
        }
        return _record(room.id, RoomEvent.Kind.REACTION, message.id, frame)


def latest_seq(room_id: int) -> int:
    """The sequence number of the room's newest event."""
    return latest_seqs([room_id])[room_id]


def latest_seqs(room_ids: list[int]) -> dict[int, int]:
    """Each room's newest event seq, by room id, in one query (the heartbeat's gap check)."""
    return dict(ChatRoom.objects.filter(id__in=room_ids).values_list("id", "last_seq"))


def events_between(room_id: int, after: int, upto: int | None = None, limit: int = 1000):
    """Stored frames of events with after < seq <= upto, oldest first."""
    query = RoomEvent.objects.filter(room_id=room_id, seq__gt=after)
    if upto is not None:
        query = query.filter(seq__lte=upto)
    return list(query.order_by("seq").values_list("payload", flat=True)[:limit])


def seq_of_message(room_id: int, message_id: int) -> int | None:
    """The sequence number of a message's creation event (for `last_id` resumes)."""
    return (
        RoomEvent.objects.filter(room_id=room_id, message_id=message_id, kind="message")
        .values_list("seq", flat=True)
        .first()
    )


def _state_frames(room: ChatRoom, events) -> list[dict]:
    """`message` frames in current state for creation events, with seq and reactions."""
    ids = [event.message_id for event in events]
    reactions: dict[int, dict[str, list[str]]] = {}
    for message_id, emoji, username in (
        MessageReaction.objects.filter(message_id__in=ids)
        .order_by("id")
        .values_list("message_id", "emoji", "user__username")
    ):
        reactions.setdefault(message_id, {}).setdefault(emoji, []).append(username)
    frames = []
    for event in events:
        frame = message_frame(event.message, user_name(event.message.user))
        frame["room"] = room.name
        frame["seq"] = event.seq
        frame["reactions"] = reactions.get(event.message_id, {})
        frames.append(frame)
    return frames


def _creations(room: ChatRoom):
    return RoomEvent.objects.filter(room=room, kind=RoomEvent.Kind.MESSAGE).select_related(
        "message__user"
    )


def recent_history(room: ChatRoom, upto_seq: int, size: int | None = None) -> list[dict]:
    """The newest messages created at or before upto_seq, oldest first, in current state."""
    size = size or settings.CHAT_HISTORY_SIZE
    events = list(_creations(room).filter(seq__lte=upto_seq).order_by("-seq")[:size])
    frames = _state_frames(room, list(reversed(events)))
    for frame in frames:
        frame["history"] = True
    return frames


def history_page(room: ChatRoom, before: int | None, limit: int) -> list[dict]:
    """A page of messages older than `before` (a message id), newest first, for the HTTP API."""
    events = _creations(room).order_by("-message_id")
    if before is not None:
        events = events.filter(message_id__lt=before)
    return _state_frames(room, list(events[:limit]))
