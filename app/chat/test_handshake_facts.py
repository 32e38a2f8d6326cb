"""The handshake's caches: every change to what they hold applies at the next handshake.

Each cache is checked in two instances sharing one real Redis, as two WebSocket processes
would: a change made through the ORM (as the admin or the API makes it, in any process)
bumps its generation key after commit, and both instances read the database again.
"""

import asyncio
import contextlib
import json
import time
from datetime import timedelta
from importlib import import_module

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from app.chat.conftest import WsClient, session_for
from app.chat.facts import HandshakeFacts, handshake_facts
from app.chat.last_seen import last_seen, write
from app.chat.models import ChatRoom, RoomBan, UserStatus
from app.chat.test_chat_consumer import join
from app.realtime.consumers.handshake import SessionUsers, session_users

pytestmark = [pytest.mark.django_db(transaction=True)]


@contextlib.asynccontextmanager
async def database_thread_queries():
    """Capture the SQL run in the database thread (where the consumers' queries run)."""
    capture = await sync_to_async(
        lambda: CaptureQueriesContext(connections["default"]).__enter__(),
        thread_sensitive=True)()
    try:
        yield capture
    finally:
        await sync_to_async(capture.__exit__, thread_sensitive=True)(None, None, None)


def session(cookie: str):
    """A session store for a cookie, as the handshake builds one."""
    return import_module(settings.SESSION_ENGINE).SessionStore(cookie)


@database_sync_to_async
def change(function):
    """Run an ORM change in the database thread (committed at once: autocommit)."""
    return function()


@pytest.fixture
def processes(redis_layer):
    """Two processes' caches over the same Redis, both starting empty."""
    handshake_facts.clear()
    session_users.cache.clear()
    return HandshakeFacts(), HandshakeFacts()


# ---------------------------------------------------------------------------- the user
async def test_a_cached_user_is_resolved_without_a_query_but_the_session_is_read(
        processes, make_user):
    """A second resolution reads no table but the session's; a logout is seen at once."""
    alice = await make_user("alice")
    cookie = await session_for(alice)
    users = SessionUsers()
    assert (await users.user(session(cookie))).pk == alice.pk
    async with database_thread_queries() as queries:
        assert (await users.user(session(cookie))).pk == alice.pk
    assert queries.captured_queries == []  # the session came from Redis, the user from memory
    await sync_to_async(session(cookie).delete)()  # a logout elsewhere
    assert isinstance(await users.user(session(cookie)), AnonymousUser)


async def test_handshakes_of_one_user_arriving_together_read_the_user_once(
        processes, make_user):
    """A cold process (one that took over a crashed one's clients): twenty of one user's
    handshakes at once share one read of the users table."""
    alice = await make_user("alice")
    cookie = await session_for(alice)
    users = SessionUsers()
    async with database_thread_queries() as queries:
        found = await asyncio.gather(*(users.user(session(cookie)) for _ in range(20)))
    assert {user.pk for user in found} == {alice.pk}
    assert len({id(user) for user in found}) == 20  # each socket its own instance
    assert len([q for q in queries.captured_queries if "auth_user" in q["sql"]]) == 1


async def test_a_session_missing_from_redis_is_read_from_the_database(processes, make_user):
    """cached_db's fallback holds: a session evicted from Redis still signs its user in."""
    from django.core.cache import caches

    alice = await make_user("alice")
    cookie = await session_for(alice)
    store = session(cookie)
    await sync_to_async(caches[settings.SESSION_CACHE_ALIAS].delete)(store.cache_key)
    async with database_thread_queries() as queries:
        assert (await SessionUsers().user(session(cookie))).pk == alice.pk
    assert any("django_session" in q["sql"] for q in queries.captured_queries)


async def test_a_deactivated_user_is_refused_at_the_next_handshake_in_every_process(
        processes, make_user):
    """Deactivation bumps the user's key: both processes' cached users are dropped."""
    alice = await make_user("alice")
    cookie = await session_for(alice)
    one, two = SessionUsers(), SessionUsers()
    for users in (one, two):
        assert (await users.user(session(cookie))).pk == alice.pk

    def deactivate():
        alice.is_active = False
        alice.save()

    await change(deactivate)
    for users in (one, two):
        assert isinstance(await users.user(session(cookie)), AnonymousUser)


async def test_a_changed_password_refuses_the_old_session_and_flushes_it(processes, make_user):
    """The cached session auth hash follows the password: the old session is refused."""
    alice = await make_user("alice")
    cookie = await session_for(alice)
    users = SessionUsers()
    assert (await users.user(session(cookie))).pk == alice.pk

    def new_password():
        alice.set_password("another")
        alice.save()

    await change(new_password)
    assert isinstance(await users.user(session(cookie)), AnonymousUser)
    assert not await sync_to_async(session(cookie).exists)(cookie)  # flushed, as channels does


async def test_a_deactivated_user_is_closed_with_4001_on_the_next_handshake(ws, make_user):
    """Through the whole stack: joined once (cached), deactivated, then refused."""
    alice = await make_user("alice")
    first = await join(ws, alice)
    await first.close()

    def deactivate():
        alice.is_active = False
        alice.save()

    await change(deactivate)
    assert await (await ws("/ws/chat/lobby/", alice)).closed_with() == 4001


# ---------------------------------------------------------------------------- room and access
async def room_verdicts(processes, name, user):
    """What each process answers for this user and room."""
    return [(await facts.room_for(name, user, True))[1] for facts in processes]


async def test_a_ban_applies_at_the_next_handshake_in_every_process(processes, make_user):
    """A ban given after the access was cached is seen by both processes."""
    alice = await make_user("alice")
    room = await change(lambda: ChatRoom.objects.create(name="strict"))
    for _ in range(2):  # the second time both the room and the access come from the cache
        assert await room_verdicts(processes, "strict", alice) == [None, None]
    ban = await change(lambda: RoomBan.objects.create(room=room, user=alice))
    assert await room_verdicts(processes, "strict", alice) == ["banned", "banned"]
    await change(ban.delete)
    assert await room_verdicts(processes, "strict", alice) == [None, None]


async def test_a_cached_ban_ends_when_it_expires_without_any_change(processes, make_user):
    """The ban's expiry is compared with the clock at each check, not when it was cached."""
    alice = await make_user("alice")
    room = await change(lambda: ChatRoom.objects.create(name="strict"))
    await change(lambda: RoomBan.objects.create(
        room=room, user=alice, expires_at=timezone.now() + timedelta(seconds=1)))
    for _ in range(2):
        assert await room_verdicts(processes, "strict", alice) == ["banned", "banned"]
    await asyncio.sleep(1.1)  # nothing changed, nothing bumped: only the clock moved
    assert await room_verdicts(processes, "strict", alice) == [None, None]


async def test_a_room_made_private_refuses_non_members_at_the_next_handshake(
        processes, make_user):
    """Privacy is part of the cached room: saving the room bumps its key."""
    alice, staff = await make_user("alice"), await make_user("boss", staff=True)
    room = await change(lambda: ChatRoom.objects.create(name="lounge"))
    assert await room_verdicts(processes, "lounge", alice) == [None, None]

    def make_private():
        room.is_private = True
        room.save()

    await change(make_private)
    assert await room_verdicts(processes, "lounge", alice) == ["private", "private"]
    assert await room_verdicts(processes, "lounge", staff) == [None, None]


async def test_a_removed_membership_refuses_at_the_next_handshake(processes, make_user):
    """Membership removed from either side (remove, clear) bumps the access key."""
    alice, bob = await make_user("alice"), await make_user("bob")

    def private_room():
        room = ChatRoom.objects.create(name="secret", is_private=True)
        room.members.add(alice, bob)
        return room

    room = await change(private_room)
    for user in (alice, bob):
        assert await room_verdicts(processes, "secret", user) == [None, None]
    await change(lambda: room.members.remove(alice))
    assert await room_verdicts(processes, "secret", alice) == ["private", "private"]
    await change(lambda: bob.chat_rooms.clear())
    assert await room_verdicts(processes, "secret", bob) == ["private", "private"]
    await change(lambda: alice.chat_rooms.add(room))
    assert await room_verdicts(processes, "secret", alice) == [None, None]


async def test_a_deleted_room_is_not_found_and_a_renamed_one_under_its_new_name(
        processes, make_user, settings):
    """The room is cached by name: a rename invalidates the old name and the new one."""
    settings.CHAT_AUTO_CREATE_ROOMS = False
    alice = await make_user("alice")
    room = await change(lambda: ChatRoom.objects.create(name="old"))
    assert (await processes[0].room_for("old", alice, False))[0].id == room.id
    assert (await processes[0].room_for("new", alice, False))[0] is None

    def rename():
        room.name = "new"
        room.save()

    await change(rename)
    assert (await processes[0].room_for("old", alice, False))[0] is None
    assert (await processes[0].room_for("new", alice, False))[0].id == room.id
    await change(room.delete)
    assert (await processes[0].room_for("new", alice, False))[0] is None


async def test_a_ban_closes_the_next_handshake_with_4003(ws, make_user):
    """Through the whole stack: joined once (everything cached), banned, then refused."""
    alice = await make_user("alice")
    first = await join(ws, alice, "strict")
    await first.close()
    room = await change(lambda: ChatRoom.objects.get(name="strict"))
    await change(lambda: RoomBan.objects.create(room=room, user=alice))
    assert await (await ws("/ws/chat/strict/", alice)).closed_with() == 4003


# ---------------------------------------------------------------------------- the user list
async def test_a_status_change_shows_in_the_next_user_list_in_every_process(
        processes, make_user):
    """The chosen status is cached with the name; changing it bumps the user's key."""
    alice = await make_user("alice")
    room = await change(lambda: ChatRoom.objects.create(name="lobby"))
    for facts in processes:
        assert (await facts.listing(room, [alice.pk]))[0] == [
            {"user_id": alice.pk, "user": "alice", "status": "online"}]
    await change(lambda: UserStatus.objects.update_or_create(
        user=alice, defaults={"status": "busy"}))
    for facts in processes:
        assert (await facts.listing(room, [alice.pk]))[0][0]["status"] == "busy"


async def test_a_room_listing_is_built_once_while_its_users_and_tokens_hold(
        processes, make_user):
    """The same users under the same tokens: the same entries and frame, no user read; a
    status or name change, or a user more, makes a new listing in every process."""
    alice, bob = await make_user("alice"), await make_user("bob")
    room = await change(lambda: ChatRoom.objects.create(name="lobby"))
    ids = sorted([alice.pk, bob.pk])
    first = {facts: await facts.listing(room, ids) for facts in processes}
    for facts, (users, frame) in first.items():
        assert [u["status"] for u in users] == ["online", "online"]
        assert json.loads(frame) == {"type": "user_list", "room": "lobby", "users": users}
        assert await facts.listing(room, ids) is first[facts]
    await change(lambda: UserStatus.objects.update_or_create(
        user=bob, defaults={"status": "busy"}))
    await change(lambda: get_user_model().objects.filter(pk=alice.pk).update(username="al"))
    await change(lambda: get_user_model().objects.get(pk=alice.pk).save())  # bumps via signal
    carol = await make_user("carol")
    for facts in processes:
        users, frame = await facts.listing(room, ids)
        assert [(u["user"], u["status"]) for u in users] == [("al", "online"), ("bob", "busy")]
        assert json.loads(frame)["users"] == users
        more = await facts.listing(room, sorted([*ids, carol.pk]))
        assert [u["user"] for u in more[0]] == ["al", "bob", "carol"]


async def test_a_room_listing_expires_with_the_first_user_entry_it_was_made_of(
        processes, make_user):
    """A listing never outlives the user entries it was made of (HANDSHAKE_FACTS_TTL each)."""
    alice, bob = await make_user("alice"), await make_user("bob")
    room = await change(lambda: ChatRoom.objects.create(name="lobby"))
    facts = processes[0]
    await facts.listing(room, [alice.pk])
    token, _, value = facts.people.entries[alice.pk]
    soon = time.monotonic() + 0.2
    facts.people.entries[alice.pk] = (token, soon, value)  # read long ago: expires first
    listing = await facts.listing(room, sorted([alice.pk, bob.pk]))
    assert facts.listings.entries[room.id][1] == soon < facts.people.entries[bob.pk][1]
    assert await facts.listing(room, sorted([alice.pk, bob.pk])) is listing
    await asyncio.sleep(0.25)
    again = await facts.listing(room, sorted([alice.pk, bob.pk]))
    assert again is not listing and again[0] == listing[0]


async def test_last_seen_updates_do_not_invalidate_the_user(processes, make_user):
    """Every disconnect records last_seen; that must not empty the cache for everyone."""
    from app.realtime.layer.generations import tokens

    alice = await make_user("alice")
    before = await tokens([f"user:{alice.pk}"])
    await change(lambda: write({alice.pk: timezone.now()}))  # creates the row
    await change(lambda: write({alice.pk: timezone.now()}))
    assert before == await tokens([f"user:{alice.pk}"])


async def a_lobby_resume(cookie: str, seq: int) -> tuple[list[dict], list[str]]:
    """The frames of one resume of the lobby after `seq`, and the SQL it ran."""
    async with database_thread_queries() as queries:
        client = WsClient(f"/ws/chat/lobby/?last_seq={seq}", cookie)
        assert await client.open()
        frames = await client.recv_until("resume_end")
    await client.close()
    return frames, [q["sql"] for q in queries.captured_queries]


async def test_a_warm_resume_with_nothing_missed_runs_no_query(ws, make_user):
    """Session, user, room, access, user list and position all come from Redis and memory."""
    alice = await make_user("alice")
    first = await join(ws, alice)
    await first.send({"type": "message", "message": "hello"})
    seq = (await first.recv_type("message"))["seq"]
    await first.close()
    warm = await join(ws, alice, query=f"?last_seq={seq}")
    await warm.close()
    await last_seen.flush()  # the closes' last_seen, written now rather than during the resume
    frames, queries = await a_lobby_resume(await session_for(alice), seq)
    assert frames[-1] == {"type": "resume_end", "room": "lobby", "seq": seq, "replayed": 0}
    assert queries == []


async def test_a_users_first_resume_into_a_room_this_process_knows_runs_no_query(ws, make_user):
    """Bans are cached per room: a user new to the room (as after a crash) reads no table."""
    alice, bob = await make_user("alice"), await make_user("bob")
    await change(lambda: ChatRoom.objects.create(name="lobby"))  # made by a join, it is read twice
    staying = await join(ws, alice)  # the lobby, its bans and alice are cached now
    await staying.send({"type": "message", "message": "hello"})
    seq = (await staying.recv_type("message"))["seq"]
    await (await join(ws, bob, room="elsewhere")).close()  # bob himself is cached now
    await last_seen.flush()
    frames, queries = await a_lobby_resume(await session_for(bob), seq)
    await staying.close()
    assert frames[-1]["replayed"] == 0
    assert queries == []


async def test_the_bans_cached_are_those_in_force_for_whom_they_name(processes, make_user):
    """An expired ban is not loaded; a ban names one user and leaves the others alone."""
    alice, bob, carol = [await make_user(n) for n in ("alice", "bob", "carol")]
    room = await change(lambda: ChatRoom.objects.create(name="strict"))
    await change(lambda: RoomBan.objects.create(
        room=room, user=alice, expires_at=timezone.now() - timedelta(seconds=1)))
    await change(lambda: RoomBan.objects.create(room=room, user=bob))
    for _ in range(2):
        assert await room_verdicts(processes, "strict", alice) == [None, None]
        assert await room_verdicts(processes, "strict", bob) == ["banned", "banned"]
        assert await room_verdicts(processes, "strict", carol) == [None, None]
    assert [set(facts.bans.entries[room.id][2]) for facts in processes] == [{bob.pk}] * 2

async def test_make_load_users_resetting_passwords_drops_the_cached_users(processes):
    """The command changes passwords with .update() (no signal) and bumps the keys itself."""
    from django.core.management import call_command

    await change(lambda: call_command("make_load_users", 2, password="first", verbosity=0))
    user = await change(lambda: get_user_model().objects.get(username="load0001"))
    cookie = await session_for(user)
    users = SessionUsers()
    assert (await users.user(session(cookie))).pk == user.pk
    await change(lambda: call_command("make_load_users", 2, password="second", verbosity=0))
    assert isinstance(await users.user(session(cookie)), AnonymousUser)


async def test_a_warm_handshake_reads_its_chat_facts_in_one_mget(ws, make_user, monkeypatch):
    """Room, access and every listed user: one MGET (the user's own token is the auth layer's)."""
    from app.realtime.layer.store import RedisStore

    alice, bob = await make_user("alice"), await make_user("bob")
    await join(ws, alice)
    first = await join(ws, bob)
    await first.close()
    await join(ws, bob)  # the room and both users are cached now
    reads = []
    original = RedisStore.generations

    async def counted(store, keys, ttl):
        reads.append(list(keys))
        return await original(store, keys, ttl)

    monkeypatch.setattr(RedisStore, "generations", counted)
    await join(ws, bob)
    room = await change(lambda: ChatRoom.objects.get(name="lobby"))
    assert reads == [
        [f"user:{bob.pk}"],
        ["room:lobby", f"bans:{room.id}", f"user:{alice.pk}", f"user:{bob.pk}"],
    ]
