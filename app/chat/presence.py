"""Who is where, across every process: presence entries in Redis that expire unless refreshed.

A connection keeps four entries alive (refreshed by the process heartbeat):
``user:<id>`` -> channel, ``room:<room id>:<user id>`` -> channel, ``room:<room id>`` -> user id
and ``rooms:<user id>`` -> "<room name>|<channel>". The room's own set holds users, not
connections: a handshake reads it, so its cost grows with the users present, not with their
sockets; a user leaves it when the last of their connections to the room closes. A process
that dies without running `disconnect` stops refreshing them, so its users drop out after
PRESENCE_TTL seconds.
A socket closed by a drain leaves its entries to expire the same way (app/chat/consumers.py):
a user who reconnects within PRESENCE_TTL never looks absent, so the room hears no
`user_left` and `user_joined` for what was only a move to another process.
A user whose last connection to a room closes otherwise stays in the room's set for
CHAT_LEAVE_GRACE seconds (`leave`): a reload or a dropped network that reconnects within it
is neither a `user_left` nor a `user_joined`.
"""

import asyncio
import logging
import time

from django.conf import settings

from app.realtime.layer.store import get_store
from app.realtime.ops.background import spawn


def entries(user_id: int, room, channel: str) -> list[tuple[str, str]]:
    """The (scope, member) entries of one chat connection."""
    # The user's own entry in the room before the room's entry for the user: `leave` counts
    # the first and removes the second, and must never count before a join's first write.
    return [
        (f"user:{user_id}", channel),
        (f"room:{room.id}:{user_id}", channel),
        (f"room:{room.id}", str(user_id)),
        (f"rooms:{user_id}", f"{room.name}|{channel}"),
    ]


async def join(user_id: int, room, channel: str, present: set[int] | None = None) -> bool:
    """Record a new chat connection; return whether it is the user's first in the room.

    `present` is the room's users as the caller just read them (saves reading them again).
    """
    if present is None:
        present = await room_user_ids(room.id)
    await get_store().presence_touch_many(entries(user_id, room, channel), settings.PRESENCE_TTL)
    return user_id not in present


logger = logging.getLogger(__name__)


async def leave(user_id: int, room, channel: str, grace: float, on_left) -> None:
    """Remove a closed connection; await `on_left()` once its user has left the room.

    When this was the user's last connection to the room, the user stays present for `grace`
    seconds more (none: leaves now). `on_left` runs then, in a task of its own, unless the
    user came back meanwhile (to any process). If this process dies first, the entry expires
    at that time without `on_left`, as for a crash.
    """
    parent = (f"room:{room.id}", str(user_id))
    rest = f"room:{room.id}:{user_id}"
    until = time.time() + grace if grace > 0 else None
    left = await get_store().presence_leave(
        [entry for entry in entries(user_id, room, channel) if entry != parent],
        rest, parent, until)
    if left == 0:
        await on_left()
    elif left < 0:
        spawn(_settle(rest, parent, until, on_left))


async def _settle(rest: str, parent: tuple[str, str], until: float, on_left) -> None:
    await asyncio.sleep(max(0.0, until - time.time()))
    try:
        gone = await get_store().presence_settle(rest, parent, until)
        if gone:
            await on_left()
    except Exception as error:  # Redis gone past its retries: the entry expires by itself
        logger.warning("presence leave of %s not settled: %r", parent, error)


async def room_user_ids(room_id: int) -> set[int]:
    """Users with at least one live connection to the room."""
    return _user_ids(await get_store().presence_members(f"room:{room_id}"))


async def room_user_ids_and_position(room_id: int) -> tuple[set[int], int | None]:
    """Users present in the room, and the room's position as recorded in Redis (or None)."""
    members, position = await get_store().room_presence(f"room:{room_id}", room_id)
    return _user_ids(members), position


def _user_ids(room_members: list[str]) -> set[int]:
    # Also reads "<user id>:<channel>", the members a process of an older release writes
    # during a rolling deploy.
    return {int(m.split(":", 1)[0]) for m in room_members}


async def is_online(user_id: int) -> bool:
    """Whether the user has a live connection on any process."""
    return bool(await get_store().presence_members(f"user:{user_id}"))


async def rooms_of(user_id: int) -> set[str]:
    """Names of the rooms the user is connected to."""
    members = await get_store().presence_members(f"rooms:{user_id}")
    return {m.split("|", 1)[0] for m in members}
