"""What a chat handshake needs to know about its room and users, cached in this process.

Four caches, each entry valid while its generation key in Redis keeps the token it had when
the entry was read (app/realtime/layer/generations.py; the keys are bumped after commit by
app/chat/signals.py):

- the room by name (id, name, privacy, max_users): `room:<name>`;
- the room's bans in force when read, with their expiry: `bans:<room id>`; an expiry is
  compared with the clock at each check, not when it was cached;
- a user's membership of a private room: `member:<room id>:<user id>`, read only when it
  decides (a private room, a user who is not staff);
- a user's name and chosen status, for `user_list` and `user_joined`: `user:<user id>`, the
  key the handshake's user cache uses too (app/realtime/consumers/handshake.py).

Made of the last: each room's latest `user_list` and its frame's text, kept while the same
users are listed under the same tokens and until the first of their entries expires. A storm
of handshakes into one room lists it once, not once per socket.

Bans are kept per room, not per user and room: the sockets of a process are spread over many
pairs of user and room but few rooms, so after a crash the process that takes over its
clients finds the bans of their rooms cached, where one entry per pair would send each
resume to the database.

A handshake reads the tokens of its room, its bans, its membership when needed and every user
it lists in one MGET (`for_handshake`); on a miss it reads the database for what is missing.
"""

import copy
import json
import time
from typing import NamedTuple

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from redis.exceptions import RedisError

from app.realtime.consumers.handshake import user_key
from app.realtime.layer.generations import FactsCache, tokens

from . import presence, services
from .models import UserStatus


def room_key(name: str) -> str:
    """The generation key of a room's own facts, by name (the handshake knows only that)."""
    return f"room:{name}"


def bans_key(room_id: int) -> str:
    """The generation key of a room's bans."""
    return f"bans:{room_id}"


def member_key(room_id: int, user_id: int) -> str:
    """The generation key of one user's membership of one room."""
    return f"member:{room_id}:{user_id}"


def needs_membership(room, user) -> bool:
    """True when membership decides whether the user may join: a private room, not staff."""
    return room.is_private and not user.is_staff


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
def _load_bans(room_id: int) -> dict[int, object]:
    return services.bans_in_force(room_id)


@database_sync_to_async
def _load_member(room, user) -> bool:
    return services.is_member(room, user)


async def _cached(cache: FactsCache, key, token, load):
    """The value cached under `key` for `token`, else `await load()`, kept when a token was read."""
    if token is UNREAD:
        return await load()
    return await cache.value(key, token, load)


@database_sync_to_async
def _load_people(ids: list[int]) -> dict[int, tuple[str, str] | None]:
    names = dict(get_user_model().objects.filter(pk__in=ids).values_list("id", "username"))
    statuses = dict(UserStatus.objects.filter(user_id__in=ids).values_list("user_id", "status"))
    return {uid: (names[uid], statuses.get(uid, "online")) if uid in names else None
            for uid in ids}


class Joining(NamedTuple):
    """What a chat handshake needs: the room, why the user may not join, who is present, the
    `user_list` entries (the joining user included), the room's position as recorded in
    Redis (None when unknown), read with the presence, and the `user_list` frame's text."""

    room: object
    problem: str | None
    present: set[int]
    users: list[dict]
    position: int | None = None
    users_frame: str | None = None


class HandshakeFacts:
    """The room, ban, membership and user-list facts of chat handshakes in this process."""

    def __init__(self):
        self.rooms = FactsCache()
        self.bans = FactsCache()
        self.members = FactsCache()
        self.people = FactsCache()
        self.listings = FactsCache(max_entries=settings.CHAT_HISTORY_CACHE_ROOMS)

    async def for_handshake(self, name: str, user, create: bool) -> Joining:
        """Everything a chat handshake checks and lists, with one MGET when the room is known.

        The room's presence is read first, under the id this process last knew the room by,
        so that the tokens of the room, its bans, the membership (when it decides) and every
        listed user go in one MGET.
        """
        known = self._known_room(name)
        if known is None:
            room, problem = await self.room_for(name, user, create)
            return await self._listing(room, problem, user)
        present, position = await presence.room_user_ids_and_position(known.id)
        listed = sorted(present | {user.pk})
        keys = self._fact_keys(name, known, user)
        read = await _tokens([*keys, *(user_key(uid) for uid in listed)])
        tokens = dict(zip(keys, read[:len(keys)], strict=True))
        room, problem = await self.room_for(name, user, create, tokens)
        if room is None or problem or room.id != known.id:
            # Refused, or the name now names another room (deleted and made again).
            return await self._listing(room, problem, user)
        users, frame = await self.listing(room, listed, read[len(keys):])
        return Joining(room, problem, present, users, position, frame)

    async def _listing(self, room, problem, user) -> Joining:
        if room is None or problem:
            return Joining(room, problem, set(), [])
        present, position = await presence.room_user_ids_and_position(room.id)
        users, frame = await self.listing(room, sorted(present | {user.pk}))
        return Joining(room, problem, present, users, position, frame)

    def _known_room(self, name: str):
        """The room this process last knew by this name, valid or not (None if none)."""
        entry = self.rooms.entries.get(name)
        return entry[2] if entry is not None else None

    @staticmethod
    def _fact_keys(name: str, room, user) -> list[str]:
        """The generation keys of a join's room facts, `room` being the room last known."""
        keys = [room_key(name)]
        if room is not None:
            keys.append(bans_key(room.id))
            if needs_membership(room, user):
                keys.append(member_key(room.id, user.pk))
        return keys

    async def room_for(self, name: str, user, create: bool, tokens: dict | None = None):
        """(room, problem): the room by name (None if absent) and why the user may not join.

        `tokens` maps generation keys to the tokens the caller read already; the keys it
        lacks (the room was not known, or has changed) are read here.
        """
        if tokens is None:
            keys = self._fact_keys(name, self._known_room(name), user)
            tokens = dict(zip(keys, await _tokens(keys), strict=True))
        room = await _cached(self.rooms, name, tokens[room_key(name)],
                             lambda: _load_room(name, user, create))
        if room is None:
            return None, None
        missing = [key for key in self._fact_keys(name, room, user) if key not in tokens]
        if missing:
            tokens.update(zip(missing, await _tokens(missing), strict=True))
        bans = await _cached(self.bans, room.id, tokens[bans_key(room.id)],
                             lambda: _load_bans(room.id))
        member = needs_membership(room, user) and await _cached(
            self.members, (room.id, user.pk), tokens[member_key(room.id, user.pk)],
            lambda: _load_member(room, user))
        access = services.Access(user.pk in bans, bans.get(user.pk), member)
        # Each socket gets its own instance: Django caches related objects on it.
        return copy.copy(room), services.access_verdict(room, user, access)

    async def listing(self, room, user_ids: list[int], tokens=None) -> tuple[list[dict], str]:
        """The `user_list` entries of `room` for these sorted ids (unknown ones left out), and
        the frame's JSON text.

        `tokens` are the users' tokens in that order when the caller read them already.
        """
        if tokens is None:
            tokens = await _tokens([user_key(uid) for uid in user_ids])
        token = (room.name, tuple(user_ids), tuple(tokens))
        hit, value = self.listings.get(room.id, token)
        if hit:
            return value
        users, expires = await self._describe(user_ids, tokens)
        value = users, json.dumps({"type": "user_list", "room": room.name, "users": users},
                                  separators=(",", ":"))
        if expires is not None:
            self.listings.put(room.id, token, value, expires)
        return value

    async def _describe(self, ids: list[int], tokens) -> tuple[list[dict], float | None]:
        """Name and status of each user, for `user_list` (unknown ids left out), and when the
        first people entry they came from expires (None when one was not cached: a token was
        not read)."""
        if not ids:
            return [], time.monotonic() + settings.HANDSHAKE_FACTS_TTL
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
        entries = [self.people.entries.get(uid) for uid in ids]
        expires = None if None in entries or UNREAD in tokens else min(e[1] for e in entries)
        return [{"user_id": uid, "user": found[uid][0], "status": found[uid][1]}
                for uid in ids if found[uid] is not None], expires

    def clear(self) -> None:
        """Forget everything (tests)."""
        for cache in (self.rooms, self.bans, self.members, self.people, self.listings):
            cache.clear()


handshake_facts = HandshakeFacts()
