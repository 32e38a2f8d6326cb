"""The readiness checks of the shared dependencies answer in time, whatever the dependency does."""

import asyncio
import threading
import time

import pytest

from app.realtime.ops import probes

pytestmark = [pytest.mark.django_db]


async def test_the_database_check_passes_on_a_new_connection_of_its_own():
    """SELECT 1 on a connection the check opens and closes in its own thread."""
    assert await probes.database() is True


async def test_a_hung_database_check_answers_false_in_time_and_queues_nothing(monkeypatch):
    """A check that hangs is False after TIMEOUT; the next is False at once, not queued."""
    release, calls = threading.Event(), []

    def hanging() -> bool:
        calls.append(1)
        release.wait(10)  # a frozen server: connecting never completes
        return True

    monkeypatch.setattr(probes, "database_select_one", hanging)
    monkeypatch.setattr(probes, "TIMEOUT", 0.2)
    started = time.monotonic()
    try:
        assert await probes.database() is False
        assert await probes.database() is False
        assert time.monotonic() - started < 1.5 and len(calls) == 1
    finally:
        release.set()
    await asyncio.sleep(0.1)
    assert await probes.database() is True  # the hung check ended: a new one runs


async def test_a_failing_database_check_is_false(monkeypatch):
    """Any error of the check is a failed check, not an error of /readyz."""
    def broken() -> bool:
        raise RuntimeError("no database")

    monkeypatch.setattr(probes, "database_select_one", broken)
    assert await probes.database() is False
