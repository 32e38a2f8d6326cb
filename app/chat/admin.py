"""Django admin for the chat models."""

from django.contrib import admin

from .models import ChatRoom, Message, MessageReaction, Notification, RoomBan, RoomEvent, UserStatus


@admin.register(ChatRoom)
class ChatRoomAdmin(admin.ModelAdmin):
    """Rooms with their privacy and size limits."""

    list_display = ["name", "display_name", "is_private", "max_users", "last_seq", "created_at"]
    search_fields = ["name", "display_name"]
    filter_horizontal = ["members"]
    readonly_fields = ["last_seq"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Messages; deleting here would break resume, so admins mark them deleted instead."""

    list_display = ["id", "room", "user", "content", "is_edited", "is_deleted", "created_at"]
    list_filter = ["is_deleted", "is_edited"]
    raw_id_fields = ["room", "user", "reply_to"]

    def has_delete_permission(self, request, obj=None):
        """Messages become tombstones through the protocol, never vanish."""
        return False


@admin.register(MessageReaction)
class MessageReactionAdmin(admin.ModelAdmin):
    """Reactions."""

    list_display = ["message", "user", "emoji", "created_at"]
    raw_id_fields = ["message", "user"]


@admin.register(RoomEvent)
class RoomEventAdmin(admin.ModelAdmin):
    """The resume log, read-only."""

    list_display = ["room", "seq", "kind", "message", "created_at"]
    list_filter = ["kind"]

    def has_change_permission(self, request, obj=None):
        """The log is append-only."""
        return False


@admin.register(RoomBan)
class RoomBanAdmin(admin.ModelAdmin):
    """Bans."""

    list_display = ["room", "user", "reason", "expires_at", "created_at"]
    raw_id_fields = ["room", "user"]


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    """Notifications."""

    list_display = ["user", "title", "category", "read", "created_at"]
    list_filter = ["category", "read"]
    raw_id_fields = ["user"]


@admin.register(UserStatus)
class UserStatusAdmin(admin.ModelAdmin):
    """Chosen statuses."""

    list_display = ["user", "status", "custom_message", "last_seen"]
    raw_id_fields = ["user"]
