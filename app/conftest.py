"""Fixtures for every test of the app."""

import pytest

from app.realtime.layer.login_throttle import LOCAL


@pytest.fixture(autouse=True)
def fresh_login_counts():
    """Forget this process's failed-login counts, so one test's wrong passwords lock no other."""
    LOCAL.clear()
    yield
    LOCAL.clear()
