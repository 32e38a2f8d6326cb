"""Model signals: live updates of the `rooms` topic, and invalidation of the handshake caches.

The handshake caches (app/chat/facts.py, app/realtime/consumers/handshake.py) are invalidated
by bumping generation keys after commit (app/realtime/layer/generations.py). They are wired
here because the chat app's ready() runs in every process, the HTTP ones included, where
the admin and the API change rooms, bans and users.

Queryset `.update()`, `bulk_create()`, `bulk_update()` and raw SQL send no signals: code
changing users, statuses, rooms, bans or memberships that way calls `bump_on_commit` itself
with the keys below (app/chat/management/commands/make_load_users.py does).
"""

import logging

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver

from app.realtime.consumers.handshake import user_key
from app.realtime.layer.generations import bump_on_commit

from .facts import bans_key, member_key, room_key
from .models import ChatRoom, RoomBan, UserStatus
from .streams import publish_live_update

logger = logging.getLogger(__name__)


@receiver(post_save, sender=ChatRoom)
def room_saved(sender, instance: ChatRoom, created: bool, **kwargs):
    """Publish a public room's creation or change to the `rooms` topic after commit."""
    bump_on_commit(room_key(instance.name), *getattr(instance, "_old_room_keys", ()))
    if instance.is_private:
        return
    payload = {
        "event": "created" if created else "updated",
        "room": {"name": instance.name, "display_name": instance.display_name,
                 "description": instance.description},
    }

    def publish():
        try:
            publish_live_update("rooms", payload)
        except Exception:
            # A live update is a convenience; it must never fail the save that caused it.
            logger.exception("live update for room %s not published", instance.name)

    transaction.on_commit(publish)


@receiver(pre_save, sender=ChatRoom)
def room_renaming(sender, instance: ChatRoom, raw: bool = False, **kwargs):
    """Remember a saved room's stored name: a rename must invalidate the old name too."""
    if instance.pk is None or raw:
        return
    old = ChatRoom.objects.filter(pk=instance.pk).values_list("name", flat=True).first()
    instance._old_room_keys = (room_key(old),) if old and old != instance.name else ()


@receiver(post_delete, sender=ChatRoom)
def room_deleted(sender, instance: ChatRoom, **kwargs):
    """A deleted room's name no longer finds it."""
    bump_on_commit(room_key(instance.name))


@receiver(post_save, sender=RoomBan)
@receiver(post_delete, sender=RoomBan)
def ban_changed(sender, instance: RoomBan, **kwargs):
    """A ban given, changed or lifted applies at the user's next handshake."""
    bump_on_commit(bans_key(instance.room_id))


@receiver(m2m_changed, sender=ChatRoom.members.through)
def members_changed(sender, instance, action: str, reverse: bool, pk_set, **kwargs):
    """Membership added or removed, from either side, applies at the next handshake."""
    if action == "pre_clear":
        # post_clear does not say whom it removed: read them while they are still there.
        if reverse:
            instance._cleared = list(instance.chat_rooms.values_list("id", flat=True))
        else:
            instance._cleared = list(instance.members.values_list("id", flat=True))
        return
    if action == "post_clear":
        others = getattr(instance, "_cleared", [])
    elif action in ("post_add", "post_remove"):
        others = pk_set or ()
    else:
        return
    if reverse:  # instance is the user, the others are rooms
        bump_on_commit(*(member_key(room_id, instance.pk) for room_id in others))
    else:
        bump_on_commit(*(member_key(instance.pk, user_id) for user_id in others))


@receiver(post_save, sender=get_user_model())
@receiver(post_delete, sender=get_user_model())
def user_changed(sender, instance, update_fields=None, **kwargs):
    """A user deactivated, renamed, made staff, given a new password or deleted."""
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # every login saves last_login; nothing a handshake uses
    bump_on_commit(user_key(instance.pk))


@receiver(post_save, sender=UserStatus)
@receiver(post_delete, sender=UserStatus)
def status_changed(sender, instance: UserStatus, update_fields=None, **kwargs):
    """A chosen status changed (not last_seen, which every disconnect writes)."""
    if update_fields is not None and "status" not in update_fields:
        return
    bump_on_commit(user_key(instance.user_id))
