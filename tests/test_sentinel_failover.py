"""Real Redis Sentinel failover: master + replica + 3 sentinels from deploy/sentinel templates.

Run with ``-s`` to see the measured failover and client-outage seconds.
"""

import asyncio
import os
import time

import pytest
import redis
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from deploy.processes.redis_nodes import RedisServer
from tests.support.sentinel_topology import SentinelTopology

pytestmark = pytest.mark.slow


def sentinel_client(topology: SentinelTopology) -> Sentinel:
    """Return a redis-py asyncio Sentinel configured like the app (both passwords)."""
    return Sentinel(
        topology.sentinels,
        sentinel_kwargs={
            "password": topology.sentinel_password,
            "socket_timeout": 1.0,
            "socket_connect_timeout": 1.0,
        },
        password=topology.password,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
    )


def no_retry() -> Retry:
    """Return a Retry that fails at once, so expected AUTH failures do not back off for seconds."""
    return Retry(NoBackoff(), 0)


def pid_alive(pid: int) -> bool:
    """Return whether a process with this PID still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------------------- plain server helper


def test_redis_url_requires_password_and_starts_empty(redis_server, redis_url):
    assert redis_url.startswith(f"redis://:{redis_server.password}@127.0.0.1:")
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("leftover", "1")
    with (
        redis.Redis(host=redis_server.host, port=redis_server.port, retry=no_retry()) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.get("leftover")


def test_redis_url_is_flushed_between_tests(redis_url):
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("leftover") is None


def test_redis_server_stop_leaves_no_process(tmp_path):
    server = RedisServer(base_dir=tmp_path).start()
    pids = server.pids()
    assert pids and all(pid_alive(p) for p in pids)
    server.stop()
    assert not any(pid_alive(p) for p in pids)


# ---------------------------------------------------------------------------- sentinel topology


def test_topology_starts_converged(sentinel_topology):
    t = sentinel_topology
    master, replica = t.data_nodes
    assert t.master_address() == master
    assert t.role_of(master) == "master" and t.role_of(replica) == "slave"
    assert len(t.sentinels) == 3
    assert t.channel_layer_host() == {
        "sentinels": t.sentinels,
        "master_name": "chanfleet",
        "sentinel_kwargs": {"password": t.sentinel_password},
        "password": t.password,
    }
    # Sentinels insist on their own password, separate from the data nodes' one.
    host, port = t.sentinels[0]
    with (
        redis.Redis(host=host, port=port, retry=no_retry()) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", t.master_name)
    with redis.Redis(host=host, port=port, password=t.password, retry=no_retry()) as wrong:
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()


async def test_sentinel_client_finds_master_and_writes(sentinel_topology):
    t = sentinel_topology
    sentinel = sentinel_client(t)
    assert await sentinel.discover_master(t.master_name) == t.master_address()
    master = sentinel.master_for(t.master_name)
    try:
        await master.set("greeting", "hello")
        assert await master.get("greeting") == b"hello"
    finally:
        await master.aclose()


async def test_failover_promotes_replica_and_keeps_replicated_data(sentinel_topology):
    t = sentinel_topology
    sentinel = sentinel_client(t)
    master = sentinel.master_for(t.master_name)
    old_master = t.master_address()
    (former_replica,) = [a for a in t.data_nodes if a != old_master]
    try:
        for i in range(50):
            await master.set(f"before:{i}", i)
        # WAIT returns once the replica has acknowledged everything written so far.
        assert await master.wait(1, 100) >= 1

        # A writer that keeps going through the kill, to measure what clients experience.
        errors: list[str] = []
        outage: dict[str, float] = {}

        async def writer() -> None:
            n = 0
            while True:
                n += 1
                try:
                    await master.set("tick", n)
                except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError) as exc:
                    errors.append(type(exc).__name__)
                    outage.setdefault("first_error", time.monotonic())
                else:
                    if "first_error" in outage:
                        outage["recovered"] = time.monotonic()
                        return
                await asyncio.sleep(0.05)

        writing = asyncio.create_task(writer())
        await asyncio.sleep(0.2)
        killed_at = time.monotonic()
        assert await asyncio.to_thread(t.kill_master) == old_master
        seconds = await asyncio.to_thread(t.wait_for_failover, old_master, 15)
        print(f"\nfailover: all sentinels named the new master {seconds:.2f}s after SIGKILL")
        assert seconds < 10

        assert t.master_address() == former_replica
        assert t.role_of(former_replica) == "master"
        assert await sentinel.discover_master(t.master_name) == former_replica

        await asyncio.wait_for(writing, timeout=15)
        print(
            f"client outage: {outage['recovered'] - killed_at:.2f}s after SIGKILL, "
            f"{len(errors)} failed writes ({', '.join(sorted(set(errors)))})"
        )

        await master.set("after", "failover")
        assert await master.get("after") == b"failover"
        values = await master.mget([f"before:{i}" for i in range(50)])
        assert values == [str(i).encode() for i in range(50)]

        # The crashed node comes back as a replica of the new master and catches up.
        assert await asyncio.to_thread(t.restart_killed) == old_master
        assert t.role_of(old_master) == "slave"
        assert await master.wait(1, 1000) >= 1
        with t.node_client(old_master) as client:
            assert client.get("after") == "failover"
    finally:
        await master.aclose()


def test_topology_stop_leaves_no_process(tmp_path):
    topology = SentinelTopology(base_dir=tmp_path).start()
    pids = topology.pids()
    assert len(pids) == 5 and all(pid_alive(p) for p in pids)
    topology.stop()
    assert not any(pid_alive(p) for p in pids)
