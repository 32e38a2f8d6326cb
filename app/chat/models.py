"""Rooms, messages, reactions, notifications, user status, bans and the room event log."""

from django.conf import settings
from django.db import models
from django.utils import timezone

User = settings.AUTH_USER_MODEL


class ChatRoom(models.Model):
    """A chat room; `last_seq` numbers its events without gaps (see RoomEvent)."""

    name = models.CharField(max_length=100, unique=True)
    display_name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    is_private = models.BooleanField(default=False)
    max_users = models.PositiveIntegerField(default=100)
    members = models.ManyToManyField(User, blank=True, related_name="chat_rooms")
    last_seq = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.display_name or self.name


class Message(models.Model):
    """A chat message; deletion keeps a tombstone so history never loses its place."""

    room = models.ForeignKey(ChatRoom, on_delete=models.CASCADE, related_name="messages")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="chat_messages")
    content = models.TextField()
    reply_to = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="replies"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    is_edited = models.BooleanField(default=False)
    is_deleted = models.BooleanField(default=False)

    class Meta:
        ordering = ["id"]
        # History pages: the newest messages of a room, and "messages before id N".
        indexes = [models.Index(fields=["room", "-id"], name="message_room_recent")]

    def __str__(self):
        return f"{self.user_id}: {self.content[:50]}"


class MessageReaction(models.Model):
    """One user's emoji on one message."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reactions")
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    emoji = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "user", "emoji"], name="one_reaction_each")
        ]

    def __str__(self):
        return f"{self.emoji} by {self.user_id} on {self.message_id}"


class RoomEvent(models.Model):
    """Every persisted broadcast of a room, numbered 1, 2, 3... per room: the resume log.

    The payload is the exact JSON object that was broadcast, so a replay is byte-for-byte the
    live frame. Sequence numbers are taken under the room row's lock inside the same
    transaction as the change, so they commit in order and never leave gaps.
    """

    class Kind(models.TextChoices):
        MESSAGE = "message"
        EDIT = "message_edited"
        DELETE = "message_deleted"
        REACTION = "reaction"

    room = models.ForeignKey(ChatRoom, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=20, choices=Kind.choices)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="events")
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["room", "seq"]
        constraints = [models.UniqueConstraint(fields=["room", "seq"], name="room_event_seq")]

    def __str__(self):
        return f"{self.room_id}#{self.seq} {self.kind}"


class RoomBan(models.Model):
    """A user banned from a room, optionally until a time."""

    room = models.ForeignKey(ChatRoom, on_delete=models.CASCADE, related_name="bans")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="room_bans")
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="one_ban_each")]

    def __str__(self):
        return f"{self.user_id} banned from {self.room_id}"

    def is_active(self) -> bool:
        """True while the ban has not expired."""
        return self.expires_at is None or self.expires_at > timezone.now()


class Notification(models.Model):
    """A notification for one user."""

    CATEGORY_CHOICES = [
        ("general", "General"),
        ("message", "Message"),
        ("mention", "Mention"),
        ("system", "System"),
        ("warning", "Warning"),
    ]

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="notifications")
    title = models.CharField(max_length=200)
    message = models.TextField()
    category = models.CharField(max_length=20, choices=CATEGORY_CHOICES, default="general")
    read = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        # The unread badge and the notifications list of one user.
        indexes = [models.Index(fields=["user", "read", "-id"], name="notification_user_unread")]

    def __str__(self):
        return f"{self.user_id}: {self.title}"

    def as_dict(self) -> dict:
        """The protocol's notification object."""
        return {
            "id": self.id,
            "title": self.title,
            "message": self.message,
            "category": self.category,
            "timestamp": self.created_at.isoformat(),
            "read": self.read,
        }


class UserStatus(models.Model):
    """The status a user chose and when they were last seen.

    Whether a user is connected at all comes from presence (app/chat/presence.py); this row
    keeps what they chose to show while connected ("offline" means appear offline).
    """

    STATUS_CHOICES = [
        ("online", "Online"),
        ("away", "Away"),
        ("busy", "Busy"),
        ("offline", "Offline"),
    ]

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="chat_status")
    status = models.CharField(max_length=20, choices=STATUS_CHOICES, default="online")
    last_seen = models.DateTimeField(default=timezone.now)
    custom_message = models.CharField(max_length=100, blank=True)

    def __str__(self):
        return f"{self.user_id}: {self.status}"
