"""When each user was last connected, written in batches rather than once per closing socket.

Every chat socket that closes records its user's `last_seen`. Written at once, a reconnect
storm or a drain became a storm of single-row writes, each taking its turn in the one thread
that runs this process's database work, ahead of the handshakes waiting there. Noted here,
they are written together `LAST_SEEN_FLUSH_SECONDS` after the first, in one transaction; a
process that stops gracefully writes what it holds (`flush`, on the ASGI lifespan's shutdown).
A process killed loses at most that interval of `last_seen`, which only the admin shows.
"""

import asyncio
import logging
from datetime import datetime

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction
from django.utils import timezone

from app.realtime.consumers.errors import database_unreachable
from app.realtime.ops import lifecycle

from .models import UserStatus

logger = logging.getLogger(__name__)


def write(seen: dict[int, datetime]) -> None:
    """Set each user's last_seen in one transaction (a status row made where none exists)."""
    with transaction.atomic():
        for user_id, when in seen.items():
            UserStatus.objects.filter(user_id=user_id).update(last_seen=when)
        have = set(UserStatus.objects.filter(user_id__in=seen).values_list("user_id", flat=True))
        missing = [uid for uid in seen if uid not in have]
        if missing:
            # A user deleted since their socket closed gets no row.
            alive = get_user_model().objects.filter(pk__in=missing).values_list("pk", flat=True)
            UserStatus.objects.bulk_create(
                [UserStatus(user_id=uid, last_seen=seen[uid]) for uid in alive],
                ignore_conflicts=True)


class LastSeen:
    """The last_seen times this process has noted and not written yet."""

    def __init__(self):
        self.pending: dict[int, datetime] = {}
        self.flusher: asyncio.Task | None = None

    def note(self, user_id: int) -> None:
        """Record that the user was connected until now; written within the flush interval."""
        self.pending[user_id] = timezone.now()
        loop = asyncio.get_running_loop()
        if self.flusher is None or self.flusher.done() or self.flusher.get_loop() is not loop:
            self.flusher = loop.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(settings.LAST_SEEN_FLUSH_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        """Write every noted time now; skipped, with a warning, while the database is away."""
        seen, self.pending = self.pending, {}
        if not seen:
            return
        try:
            await database_sync_to_async(write)(seen)
        except DatabaseError as error:
            if not database_unreachable(error):
                logger.exception("last_seen of %d users not recorded", len(seen))
                return
            logger.warning("last_seen of %d users not recorded: %s", len(seen), error)


last_seen = LastSeen()
lifecycle.shutdown_hooks.append(last_seen.flush)
