"""What a chat handshake needs to know about its room and users, cached in this process.

Three caches, each entry valid while its generation key in Redis keeps the token it had when
the entry was read (app/realtime/layer/generations.py; the keys are bumped after commit by
app/chat/signals.py):

- the room by name (id, name, privacy, max_users): `room:<name>`;
- a user's access to a room (a ban with its expiry, membership): `access:<room id>:<user id>`;
  the ban's expiry is compared with the clock at each check, not when it was cached;
- a user's name and chosen status, for `user_list` and `user_joined`: `user:<user id>`, the
  key the handshake's user cache uses too (app/realtime/consumers/handshake.py).

A handshake reads the tokens of its room, its access and every user it lists in one MGET
(`for_handshake`); on a miss it reads the database for what is missing.
"""

import copy
from typing import NamedTuple

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from redis.exceptions import RedisError

from app.realtime.consumers.handshake import user_key
from app.realtime.layer.generations import FactsCache, tokens

from . import presence, services
from .models import UserStatus


def room_key(name: str) -> str:
    """The generation key of a room's own facts, by name (the handshake knows only that)."""
    return f"room:{name}"


def access_key(room_id: int, user_id: int) -> str:
    """The generation key of one user's ban and membership in one room."""
    return f"access:{room_id}:{user_id}"


UNREAD = object()  # no token was read for this key: a value loaded now is not cached


async def _tokens(keys: list[str]) -> list:
    try:
        return await tokens(keys)
    except RedisError:
        return [UNREAD] * len(keys)  # Redis is gone: every fact comes from the database


@database_sync_to_async
def _load_room(name: str, user, create: bool):
    return services.find_room(name, user, create)


@database_sync_to_async
def _load_access(room, user) -> services.Access:
    return services.access_of(room, user)


@database_sync_to_async
def _load_people(ids: list[int]) -> dict[int, tuple[str, str] | None]:
    names = dict(get_user_model().objects.filter(pk__in=ids).values_list("id", "username"))
    statuses = dict(UserStatus.objects.filter(user_id__in=ids).values_list("user_id", "status"))
    return {uid: (names[uid], statuses.get(uid, "online")) if uid in names else None
            for uid in ids}


class Joining(NamedTuple):
    """What a chat handshake needs: the room, why the user may not join, who is present, the
    `user_list` entries (the joining user included) and the room's position as recorded in
    Redis (None when unknown), read with the presence."""

    room: object
    problem: str | None
    present: set[int]
    users: list[dict]
    position: int | None = None


class HandshakeFacts:
    """The room, access and user-list facts of chat handshakes in this process."""

    def __init__(self):
        self.rooms = FactsCache()
        self.access = FactsCache()
        self.people = FactsCache()

    async def for_handshake(self, name: str, user, create: bool) -> Joining:
        """Everything a chat handshake checks and lists, with one MGET when the room is known.

        The room's presence is read first, under the id this process last knew the room by,
        so that the tokens of the room, the access and every listed user go in one MGET.
        """
        known_id = self._known_id(name)
        if known_id is None:
            room, problem = await self.room_for(name, user, create)
            return await self._listing(room, problem, user)
        present, position = await presence.room_user_ids_and_position(known_id)
        listed = sorted(present | {user.pk})
        read = await _tokens([room_key(name), access_key(known_id, user.pk),
                              *(user_key(uid) for uid in listed)])
        room, problem = await self.room_for(name, user, create, (known_id, read[:2]))
        if room is None or problem or room.id != known_id:
            # Refused, or the name now names another room (deleted and made again).
            return await self._listing(room, problem, user)
        return Joining(room, problem, present, await self.describe(listed, read[2:]), position)

    async def _listing(self, room, problem, user) -> Joining:
        if room is None or problem:
            return Joining(room, problem, set(), [])
        present, position = await presence.room_user_ids_and_position(room.id)
        return Joining(room, problem, present, await self.describe(present | {user.pk}),
                       position)

    def _known_id(self, name: str) -> int | None:
        """The id this process last knew the room by, valid or not."""
        entry = self.rooms.entries.get(name)
        return entry[2].id if entry is not None and entry[2] is not None else None

    async def room_for(self, name: str, user, create: bool, read=None):
        """(room, problem): the room by name (None if absent) and why the user may not join.

        `read` is (the room id the access token belongs to, [room token, access token]) when
        the caller read them already.
        """
        if read is None:
            known_id = self._known_id(name)
            keys = [room_key(name)]
            if known_id is not None:
                keys.append(access_key(known_id, user.pk))
            read = (known_id, await _tokens(keys))
        known_id, tokens = read
        hit, room = self.rooms.get(name, tokens[0]) if tokens[0] is not UNREAD else (False, None)
        if not hit:
            room = await _load_room(name, user, create)
            if tokens[0] is not UNREAD:
                self.rooms.put(name, tokens[0], room)
        if room is None:
            return None, None
        if known_id == room.id and len(tokens) > 1:
            token = tokens[1]
        else:  # this process did not know the room: its access token is read now
            token = (await _tokens([access_key(room.id, user.pk)]))[0]
        hit, access = ((False, None) if token is UNREAD
                       else self.access.get((room.id, user.pk), token))
        if not hit:
            access = await _load_access(room, user)
            if token is not UNREAD:
                self.access.put((room.id, user.pk), token, access)
        # Each socket gets its own instance: Django caches related objects on it.
        return copy.copy(room), services.access_verdict(room, user, access)

    async def describe(self, user_ids, tokens=None) -> list[dict]:
        """Name and status of each user, for `user_list`, sorted by id; unknown ids left out.

        `tokens` are the users' tokens in that order when the caller read them already.
        """
        ids = sorted(user_ids)
        if not ids:
            return []
        if tokens is None:
            tokens = await _tokens([user_key(uid) for uid in ids])
        found, missing = {}, []
        for uid, token in zip(ids, tokens, strict=True):
            hit, value = (False, None) if token is UNREAD else self.people.get(uid, token)
            if hit:
                found[uid] = value
            else:
                missing.append((uid, token))
        if missing:
            loaded = await _load_people([uid for uid, _ in missing])
            for uid, token in missing:
                found[uid] = loaded[uid]
                if token is not UNREAD:
                    self.people.put(uid, token, loaded[uid])
        return [{"user_id": uid, "user": found[uid][0], "status": found[uid][1]}
                for uid in ids if found[uid] is not None]

    def clear(self) -> None:
        """Forget everything (tests)."""
        for cache in (self.rooms, self.access, self.people):
            cache.clear()


handshake_facts = HandshakeFacts()
