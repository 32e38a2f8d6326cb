"""Model signals that publish live updates (the `rooms` topic lists rooms as they change)."""

import logging

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from .models import ChatRoom
from .streams import publish_live_update

logger = logging.getLogger(__name__)


@receiver(post_save, sender=ChatRoom)
def room_saved(sender, instance: ChatRoom, created: bool, **kwargs):
    """Publish a public room's creation or change to the `rooms` topic after commit."""
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
