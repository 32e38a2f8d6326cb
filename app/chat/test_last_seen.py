"""last_seen, noted as sockets close and written in batches."""

import asyncio
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from app.chat.last_seen import LastSeen, write
from app.chat.models import UserStatus
from app.chat.test_handshake_facts import database_thread_queries

pytestmark = [pytest.mark.django_db(transaction=True)]


async def rows() -> dict:
    return {s.user_id: s async for s in UserStatus.objects.all()}


async def test_a_storm_of_closes_becomes_one_write_per_user_in_one_transaction(
        make_user, settings):
    """Five hundred closes of three users: one flush, three rows, nothing before the interval."""
    settings.LAST_SEEN_FLUSH_SECONDS = 0.3
    users = [await make_user(name) for name in ("alice", "bob", "carol")]
    await UserStatus.objects.acreate(user=users[0], status="busy",
                                     last_seen=timezone.now() - timedelta(days=3))
    seen = LastSeen()
    async with database_thread_queries() as queries:
        for n in range(500):
            seen.note(users[n % 3].pk)
        early = await rows()
        assert list(early) == [users[0].pk]
        assert timezone.now() - early[users[0].pk].last_seen > timedelta(days=2)
        await asyncio.sleep(0.6)
    statements = [q["sql"] for q in queries.captured_queries]
    assert sum(s.startswith(("UPDATE", "INSERT")) for s in statements) == 4  # 3 updates, 1 insert
    assert seen.pending == {}
    found = await rows()
    assert set(found) == {u.pk for u in users}
    assert found[users[0].pk].status == "busy"  # the chosen status is left alone
    for status in found.values():
        assert timezone.now() - status.last_seen < timedelta(seconds=5)


async def test_a_user_deleted_before_the_flush_gets_no_row(make_user):
    """The flush skips users that no longer exist instead of failing the whole batch."""
    alice, bob = await make_user("alice"), await make_user("bob")
    await bob.adelete()
    await database_sync_to_async(write)({alice.pk: timezone.now(), bob.pk: timezone.now()})
    assert set(await rows()) == {alice.pk}


async def test_flush_writes_at_once_what_is_pending(make_user, settings):
    """A process stopping gracefully (the lifespan's shutdown hook) writes what it holds."""
    settings.LAST_SEEN_FLUSH_SECONDS = 3600
    alice = await make_user("alice")
    seen = LastSeen()
    seen.note(alice.pk)
    await seen.flush()
    assert set(await rows()) == {alice.pk}
    seen.flusher.cancel()
