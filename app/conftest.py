"""Fixtures for every test of the app."""

import pytest

from app.realtime.layer.login_throttle import LOCAL


@pytest.fixture(autouse=True)
def fresh_login_counts():
    """Forget this process's failed-login counts, so one test's wrong passwords lock no other."""
    LOCAL.clear()
    yield
    LOCAL.clear()


@pytest.fixture(autouse=True)
def fresh_chat_process_state():
    """Forget the histories and replay spans this process cached (each test's database
    numbers rooms afresh, so a room id and its seq may name another test's room) and the
    last_seen times noted but not written (the test's database is gone by the time they
    would be)."""
    from app.chat.history import room_history
    from app.chat.last_seen import last_seen
    from app.chat.replay import room_events

    room_history.clear()
    room_events.clear()
    yield
    room_history.clear()
    room_events.clear()
    last_seen.pending.clear()
