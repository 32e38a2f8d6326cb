"""Pytest plugin with real Redis fixtures (`pytest_plugins = ["tests.support.fixtures"]`).

Nothing here skips: a missing redis-server fails the test with instructions, because a suite that
silently skips its Redis tests would report green without testing the channel layer at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.processes.redis_nodes import RedisBinaryMissing, RedisServer, find_redis_server
from tests.support.sentinel_topology import SentinelTopology


def _require_redis_server() -> None:
    """Fail (never skip) the requesting test if redis-server is not installed."""
    try:
        find_redis_server()
    except RedisBinaryMissing as exc:
        message = str(exc)
    else:
        return
    pytest.fail(message, pytrace=False)


def _session_server(tmp_path_factory: pytest.TempPathFactory, name: str
                    ) -> Iterator[RedisServer]:
    _require_redis_server()
    with RedisServer(base_dir=tmp_path_factory.mktemp(name)) as server:
        yield server


def _emptied(server: RedisServer) -> str:
    with server.client() as client:
        client.flushall()
    return server.url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One password-protected standalone redis-server for the whole session."""
    yield from _session_server(tmp_path_factory, "redis-server")


@pytest.fixture(scope="session")
def second_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Another standalone redis-server: a second shard for the sharded layer's tests."""
    yield from _session_server(tmp_path_factory, "redis-server-2")


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL (with password), FLUSHALLed so each test starts empty."""
    return _emptied(redis_server)


@pytest.fixture
def second_redis_url(second_redis_server: RedisServer) -> str:
    """The second server's URL, FLUSHALLed so each test starts empty."""
    return _emptied(second_redis_server)


@pytest.fixture
def sentinel_topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    """A fresh master + replica + 3 sentinels (down-after 1000 ms) that a test may kill."""
    _require_redis_server()
    # Configs and logs stay in tmp_path after the test, for post-mortems of a failed failover.
    with SentinelTopology(down_after_ms=1000, base_dir=tmp_path / "sentinel") as topology:
        yield topology


@pytest.fixture
def second_sentinel_topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    """Another master + replica + 3 sentinels under its own master name: a second shard."""
    _require_redis_server()
    with SentinelTopology(master_name="chanfleet-2", down_after_ms=1000,
                          base_dir=tmp_path / "sentinel-2") as topology:
        yield topology
