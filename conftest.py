"""Fixtures shared by every test: real Redis processes, and the app wired to them."""

import pytest

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test databases, with the database thread's connection closed at the end.

    Async tests reach the database through channels' database_sync_to_async, which runs in
    asgiref's one shared thread; with CONN_MAX_AGE that thread's connection outlives the tests,
    and PostgreSQL refused to drop the test database ("being accessed by other users").
    The close runs with database access unblocked: channels' thread handler first checks the
    connection (close_old_connections), which pytest-django refuses outside a test.
    """
    yield
    import asyncio

    from channels.db import database_sync_to_async
    from django.db import connections

    with django_db_blocker.unblock():
        asyncio.run(database_sync_to_async(connections.close_all)())


@pytest.fixture
def redis_layer(redis_url, settings):
    """Point the channel layer, the store (presence, rate limits) and the cache at real Redis."""
    from app.realtime.store import reset_stores

    connection = {"address": redis_url, "max_connections": 500, "socket_timeout": 10}
    settings.REDIS_CONNECTION = connection
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "app.realtime.layer.ResilientRedisChannelLayer",
            "CONFIG": {
                "hosts": [connection],
                "prefix": "test:asgi",
                "capacity": 1000,
                "expiry": 30,
                "group_expiry": 120,
                "retry_seconds": 2,
            },
        }
    }
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "OPTIONS": {"IGNORE_EXCEPTIONS": True},
        }
    }
    reset_stores()
    yield connection
    reset_stores()


def pytest_collection_modifyitems(items):
    """Mark every test that runs the whole local topology (`make test-integration` runs them)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if any("topology" in name and name != "sentinel_topology" for name in names):
            item.add_marker(pytest.mark.topology)
