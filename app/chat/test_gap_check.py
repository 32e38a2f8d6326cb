"""The heartbeat's gap-check read: answered, or given up on without holding the heartbeat."""

import asyncio
import threading
import time

import pytest
from channels.db import database_sync_to_async

from app.chat import gap_check, services
from app.chat.models import ChatRoom
from app.realtime.consumers.test_errors import refused_connection_error

pytestmark = [pytest.mark.django_db(transaction=True)]


@database_sync_to_async
def room_with_seq(name: str, seq: int) -> int:
    return ChatRoom.objects.create(name=name, last_seq=seq).id


async def test_the_latest_seqs_come_from_the_database():
    """The normal case: one read for all the rooms."""
    a, b = await room_with_seq("a", 3), await room_with_seq("b", 0)
    assert await gap_check.latest_seqs([a, b]) == {a: 3, b: 0}


async def test_a_hung_database_is_given_up_on_and_not_queued_behind(monkeypatch):
    """A read slower than TIMEOUT returns None; while it waits, later beats do not queue more."""
    room = await room_with_seq("hung", 5)
    release, reads = threading.Event(), []
    original = services.latest_seqs

    def hanging(room_ids):
        reads.append(room_ids)
        release.wait(10)  # the database thread waits, as on a frozen server
        return original(room_ids)

    monkeypatch.setattr(services, "latest_seqs", hanging)
    monkeypatch.setattr(gap_check, "TIMEOUT", 0.2)
    started = time.monotonic()
    assert await gap_check.latest_seqs([room]) is None
    assert await gap_check.latest_seqs([room]) is None
    assert time.monotonic() - started < 2 and len(reads) == 1
    release.set()
    await asyncio.sleep(0.3)  # the first read finishes in the background
    assert await gap_check.latest_seqs([room]) == {room: 5}


async def test_an_unreachable_database_skips_the_check(monkeypatch, caplog):
    """A refused connection is logged as a warning, not raised into the heartbeat."""
    error = await asyncio.to_thread(refused_connection_error)

    def refused(room_ids):
        raise error

    monkeypatch.setattr(services, "latest_seqs", refused)
    assert await gap_check.latest_seqs([1]) is None
    assert "the database is unreachable" in caplog.text
