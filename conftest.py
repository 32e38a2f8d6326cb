"""Fixtures shared by every test: real Redis processes, and the app wired to them."""

import os

import pytest

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's test databases, with the database thread's connection closed at the end.

    Async tests reach the database through channels' database_sync_to_async, which runs in
    asgiref's one shared thread; with CONN_MAX_AGE that thread's connection outlives the tests,
    and PostgreSQL refused to drop the test database ("being accessed by other users").
    The close goes to that thread through asgiref's sync_to_async: channels' wrapper would
    first check the connection (close_old_connections), a database access pytest-django
    refuses outside a test.
    """
    yield
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    asyncio.run(sync_to_async(connections.close_all, thread_sensitive=True)())


@pytest.fixture
def redis_layer(redis_url, settings):
    """Point the channel layer, the store (presence, rate limits) and the cache at real Redis."""
    from app.realtime.layer.store import reset_stores

    connection = {"address": redis_url, "max_connections": 500, "socket_timeout": 10}
    settings.REDIS_CONNECTION = connection
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "app.realtime.layer.channel_layer.ResilientRedisChannelLayer",
            "CONFIG": {
                "hosts": [connection],
                "prefix": "test:asgi",
                "capacity": 1000,
                "expiry": 30,
                "group_expiry": 120,
                "retry_seconds": 2,
                # CHANNEL_GROUP_FANOUT=pubsub runs the suite on pub/sub fan-out.
                "group_fanout": os.environ.get("CHANNEL_GROUP_FANOUT", "script"),
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
