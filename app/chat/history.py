"""The history a fresh join is sent, cached per room while the room has no newer event.

A room's history (its newest CHAT_HISTORY_SIZE messages in their current state, with their
reactions) changes only with a new event of that room, and every event has the next seq: a
history read when the room's newest seq was N is the history for as long as N stays the
newest. The room's position recorded in Redis (raised after each commit, app/chat/writer.py)
says what N is now without a database read, so a join finding the cached N sends the cached
frames, already serialised. The record may lag the database (a raise lost in a failover, or
not made yet); the client then gets the history as of N and `history_end` with N, and the
events after N reach it by the gap fill, as after a resume (ChatConsumer.send_replay). It never
runs ahead of the database, so cached frames never skip an event.

Joins that miss together share one read: after a deploy or a crash, a popular room's clients
all join within the same second, and each would otherwise read the same history. A shared
read begun before the room's newest recorded event is not taken by a join that knows of that
event; it reads again.

Not covered by a seq: a user renamed after writing a message. Entries are also dropped after
HANDSHAKE_FACTS_TTL, which bounds how long an old name can be shown.
"""

import json

from channels.db import database_sync_to_async
from django.conf import settings
from redis.exceptions import RedisError

from app.realtime.layer.generations import FactsCache
from app.realtime.layer.store import get_store

from . import services


@database_sync_to_async
def _read(room) -> tuple[int, list[str]]:
    upto = services.latest_seq(room.id)
    frames = services.recent_history(room, upto)
    return upto, [json.dumps(frame, separators=(",", ":")) for frame in frames]


class RoomHistory:
    """Each room's history as JSON frames, valid while the room's newest seq is unchanged."""

    def __init__(self):
        self.cache = FactsCache(max_entries=settings.CHAT_HISTORY_CACHE_ROOMS)

    async def latest(self, room, position: int | None = None) -> tuple[int, list[str]]:
        """(the seq the history is complete up to, its `message` frames as JSON text).

        `position` is the room's recorded position if the caller has read it (None: unknown).
        """
        if position is not None:
            hit, frames = self.cache.get(room.id, position)
            if hit:
                return position, frames
        upto, frames = await self.cache.shared(room.id, lambda: self._load(room, position))
        if position is not None and upto < position:
            upto, frames = await self._load(room, position)
        return upto, frames

    async def _load(self, room, position: int | None) -> tuple[int, list[str]]:
        store = get_store()
        upto, frames = await _read(room)
        if position is None or upto > position:
            try:
                await store.raise_room_positions({room.id: upto}, settings.ROOM_POSITION_TTL)
            except RedisError:
                return upto, frames  # nothing recorded to check a cached copy against
        self.cache.put(room.id, upto, frames)
        return upto, frames

    def clear(self) -> None:
        """Forget every room and the reads in flight (tests)."""
        self.cache.clear()


room_history = RoomHistory()
