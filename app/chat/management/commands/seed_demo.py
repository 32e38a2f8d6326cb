"""Create the demo users and room that `make run` prints (idempotent)."""

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from app.chat.models import ChatRoom

DEMO_USERS = [("alice", False), ("bob", False), ("admin", True)]


class Command(BaseCommand):
    """Create alice, bob and admin (password $DEMO_PASSWORD, default "chanfleet") and lobby."""

    help = __doc__

    def handle(self, *args, **options):
        """Create what is missing and print how to log in."""
        password = os.environ.get("DEMO_PASSWORD", "chanfleet")
        users = get_user_model().objects
        for name, staff in DEMO_USERS:
            user, created = users.get_or_create(
                username=name, defaults={"is_staff": staff, "is_superuser": staff}
            )
            if created:
                user.set_password(password)
                user.save()
        room, _ = ChatRoom.objects.get_or_create(
            name="lobby", defaults={"display_name": "Lobby", "description": "Say hello."}
        )
        self.stdout.write(f"users: alice, bob, admin (staff); password: {password}; room: lobby")
