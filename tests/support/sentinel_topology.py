"""A real Redis master, replica and three sentinels for failover tests (SentinelTopology).

The processes themselves (binary, configs from deploy/sentinel templates, start, wait and stop by
PID) are deploy/processes/redis_nodes.py's; this module adds what only the failover tests use:
waiting for replication and the sentinels to converge, killing the master, measuring a failover
and bringing the killed node back. Everything binds to 127.0.0.1 on free ports, always with a
password, in a temporary directory unless one is given.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis

from deploy.processes.children import Address, WorkDir, free_ports, poll_until, stop_all
from deploy.processes.redis_nodes import (
    PORT_ATTEMPTS,
    PortInUse,
    RedisNode,
    RedisProcessError,
    redis_client,
)
from deploy.sentinel.render import (
    render_redis_conf,
    render_sentinel_conf,
    staggered_down_after_ms,
)

T = TypeVar("T")


def _poll(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    describe: Callable[[], str] = lambda: "",
) -> T:
    """Call check until it returns a non-None value, retrying Redis errors, until timeout."""
    return poll_until(
        what, check, timeout, describe,
        retry_on=(redis.RedisError, OSError), error=RedisProcessError,
    )


def _pairs(flat: list[Any]) -> dict[str, Any]:
    """Turn a flat [key, value, key, value] reply (SENTINEL MASTER and friends) into a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _stop_nodes(nodes: Sequence[RedisNode], grace: float = 5.0) -> None:
    """SIGTERM all at once, then reap each, SIGKILLing any still alive after grace seconds.

    Simultaneous: a master stopped alone with an attached replica waits for the replica's next
    REPLCONF ACK (up to a second) before exiting; stopping both together avoids that wait.
    """
    stop_all([node.child for node in nodes if node.child is not None], grace)


class SentinelTopology:
    """Master + one replica + three sentinels (quorum 2) on free loopback ports, for failover tests.

    ``start()`` returns only once the replica is online and every sentinel knows the master, the
    replica and both other sentinels. ``kill_master()`` SIGKILLs the current master and
    ``wait_for_failover()`` measures until every sentinel names a different one.
    """

    SENTINEL_COUNT = 3

    def __init__(
        self,
        *,
        master_name: str = "chanfleet",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        password: str | None = None,
        sentinel_password: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password or secrets.token_hex(16)
        self.sentinel_password = sentinel_password or secrets.token_hex(16)
        self._workdir = WorkDir(base_dir, "chanfleet-sentinel-")
        self._startup_timeout = startup_timeout
        self._nodes: list[RedisNode] = []
        self._sentinels: list[RedisNode] = []
        self._killed: RedisNode | None = None
        self._killed_at: float | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def sentinels(self) -> list[Address]:
        """Return the sentinels as (host, port) pairs."""
        return [proc.address for proc in self._sentinels]

    @property
    def data_nodes(self) -> list[Address]:
        """Return the data nodes (master and replica, in start order) as (host, port) pairs."""
        return [proc.address for proc in self._nodes]

    @property
    def workdir(self) -> Path | None:
        """Return the directory holding configs, data and logs (None when stopped)."""
        return self._workdir.path

    def pids(self) -> list[int]:
        """Return the PIDs of every running process of this topology."""
        return [p.pid for p in self._nodes + self._sentinels if p.pid is not None]

    def channel_layer_host(self) -> dict[str, Any]:
        """Return the channels_redis ``hosts`` entry that reaches the master through sentinels."""
        return {
            "sentinels": self.sentinels,
            "master_name": self.master_name,
            "sentinel_kwargs": {"password": self.sentinel_password},
            "password": self.password,
        }

    def node_client(self, address: Address) -> redis.Redis:
        """Return a direct client (bypassing sentinels) for the data node at address."""
        return redis_client(address, self.password)

    def role_of(self, address: Address) -> str:
        """Return the INFO replication role ("master" or "slave") of the data node at address."""
        with self.node_client(address) as client:
            return client.info("replication")["role"]

    def _ask_sentinel(self, sentinel: RedisNode) -> Address:
        """Return the master address one sentinel reports."""
        with sentinel.client() as client:
            reply = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not reply:
            raise redis.ConnectionError(f"{sentinel.name} does not know {self.master_name!r}")
        return (reply[0], int(reply[1]))

    def master_address(self) -> Address:
        """Return the master address as reported by the first sentinel that answers."""
        errors = []
        for sentinel in self._sentinels:
            if sentinel.pid is None:
                continue
            try:
                return self._ask_sentinel(sentinel)
            except (redis.RedisError, OSError) as exc:
                errors.append(f"{sentinel.name}: {exc!r}")
        raise RedisProcessError(f"no sentinel answered get-master-addr-by-name: {errors}")

    def _node_at(self, address: Address) -> RedisNode:
        """Return the data-node process listening on address."""
        for node in self._nodes:
            if node.address == tuple(address):
                return node
        raise LookupError(f"no data node of this topology listens on {address}")

    def _logs(self) -> str:
        """Return the log tails of every process, for timeout errors."""
        return "\n".join(proc.log_tail(15) for proc in self._nodes + self._sentinels)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SentinelTopology:
        """Start all five processes and wait until replication and sentinels have converged."""
        if self._nodes:
            raise RuntimeError("SentinelTopology already started")
        self._workdir.create()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start_once()
                return self
            except PortInUse:
                self._stop_processes()
                if attempt == PORT_ATTEMPTS:
                    self._workdir.remove()
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        """One start attempt with freshly chosen ports."""
        workdir = self._workdir.create()
        ports = free_ports(2 + self.SENTINEL_COUNT)
        master = RedisNode("redis-a", workdir, ports[0], self.password)
        replica = RedisNode("redis-b", workdir, ports[1], self.password)
        self._nodes = [master, replica]
        self._sentinels = [
            RedisNode(f"sentinel-{i}", workdir, port, self.sentinel_password, sentinel=True)
            for i, port in enumerate(ports[2:], start=1)
        ]
        deadline = time.monotonic() + self._startup_timeout

        def remaining() -> float:
            return max(0.5, deadline - time.monotonic())

        self._launch_node(master, replicaof=None)
        self._launch_node(replica, replicaof=master.address)
        for proc in self._nodes:
            proc.wait_ready(remaining())
        self._wait_replica_online(master, replica, remaining())
        for index, sentinel in enumerate(self._sentinels):
            sentinel.launch(
                render_sentinel_conf(
                    port=sentinel.port,
                    data_dir=sentinel.data_dir,
                    password=self.password,
                    sentinel_password=self.sentinel_password,
                    master_name=self.master_name,
                    master_host=master.address[0],
                    master_port=master.address[1],
                    down_after_ms=staggered_down_after_ms(self.down_after_ms, index),
                    failover_timeout_ms=self.failover_timeout_ms,
                )
            )
        for sentinel in self._sentinels:
            sentinel.wait_ready(remaining())
        self._wait_sentinels_agree(master.address, [replica.address], remaining())

    def _launch_node(self, node: RedisNode, replicaof: Address | None) -> None:
        """Render a fresh data-node config (master or replica of replicaof) and start it."""
        node.launch(
            render_redis_conf(
                port=node.port,
                data_dir=node.data_dir,
                password=self.password,
                replicaof=replicaof,
                maxmemory="64mb",
            )
        )

    def _wait_replica_online(self, master: RedisNode, replica: RedisNode, timeout: float) -> None:
        """Wait until the master lists the replica as an online, connected replica."""

        def check() -> bool | None:
            master.check_alive()
            replica.check_alive()
            with master.client() as client:
                info = client.info("replication")
            for key, value in info.items():
                if (
                    key.startswith("slave")
                    and isinstance(value, dict)
                    and int(value.get("port", -1)) == replica.port
                    and value.get("state") == "online"
                ):
                    return True
            return None

        _poll(
            f"{replica.name} to be an online replica of {master.name}",
            check,
            timeout,
            lambda: master.log_tail(15) + "\n" + replica.log_tail(15),
        )

    def _master_state(self, client: redis.Redis) -> dict[str, Any]:
        """One sentinel's SENTINEL MASTER answer for the monitored master, as a dict."""
        return _pairs(client.execute_command("SENTINEL", "MASTER", self.master_name))

    @staticmethod
    def _names_unflagged(state: dict[str, Any], master: Address) -> bool:
        """The sentinel's answer names `master` and flags it neither down nor failing over."""
        return (state["ip"], int(state["port"])) == tuple(master) and state["flags"] == "master"

    def _wait_sentinels_agree(
        self, master: Address, replicas: list[Address], timeout: float
    ) -> None:
        """Wait until every sentinel names master, sees the replicas healthy and both peers."""
        wanted_replicas = {tuple(a) for a in replicas}
        states: dict[str, str] = {}

        def check_one(sentinel: RedisNode) -> bool:
            sentinel.check_alive()
            with sentinel.client() as client:
                state = self._master_state(client)
                peers = client.execute_command("SENTINEL", "SENTINELS", self.master_name)
                known = [
                    _pairs(r)
                    for r in client.execute_command("SENTINEL", "REPLICAS", self.master_name)
                ]
            healthy = {
                (r["ip"], int(r["port"]))
                for r in known
                if r["flags"] == "slave" and r.get("master-link-status") == "ok"
            }
            states[sentinel.name] = (
                f"master={state['ip']}:{state['port']} flags={state['flags']} "
                f"peers={len(peers)} healthy_replicas={sorted(healthy)}"
            )
            return (
                self._names_unflagged(state, master)
                and len(peers) == self.SENTINEL_COUNT - 1
                and wanted_replicas <= healthy
            )

        def check() -> bool | None:
            results = [check_one(s) for s in self._sentinels]
            return True if all(results) else None

        _poll(
            "all sentinels to agree on the master, its replica and each other",
            check,
            timeout,
            lambda: f"sentinel states: {states}\n{self._logs()}",
        )

    def _wait_master_settled(self, master: Address, timeout: float) -> None:
        """Wait until every sentinel has named master, unflagged, for two down-after periods."""
        hold = 2 * self.down_after_ms / 1000
        since: list[float | None] = [None]
        states: dict[str, str] = {}

        def named_by(sentinel: RedisNode) -> bool:
            with sentinel.client() as client:
                state = self._master_state(client)
            states[sentinel.name] = f"master={state['ip']}:{state['port']} flags={state['flags']}"
            return self._names_unflagged(state, master)

        def check() -> bool | None:
            try:
                steady = all([named_by(s) for s in self._sentinels])
            except (redis.RedisError, OSError):
                steady = False
            if not steady:
                since[0] = None
                return None
            now = time.monotonic()
            since[0] = since[0] or now
            return True if now - since[0] >= hold else None

        _poll(
            f"every sentinel to keep {master[0]}:{master[1]} as an unflagged master",
            check,
            timeout,
            lambda: f"sentinel states: {states}\n{self._logs()}",
        )

    def kill_master(self) -> Address:
        """SIGKILL the current master (asked from a sentinel) by PID and return its address."""
        address = self.master_address()
        node = self._node_at(address)
        node.kill()
        self._killed = node
        self._killed_at = time.monotonic()
        return address

    def wait_for_failover(self, old_address: Address, timeout: float = 15) -> float:
        """Wait until all sentinels name one master other than old_address; return the seconds.

        Seconds are counted from kill_master() if it was called, else from this call.
        """
        started = time.monotonic()
        since = self._killed_at if self._killed_at is not None else started
        answers: dict[str, str] = {}

        def check() -> Address | None:
            seen = set()
            for sentinel in self._sentinels:
                try:
                    address = self._ask_sentinel(sentinel)
                except (redis.RedisError, OSError) as exc:
                    answers[sentinel.name] = repr(exc)
                    return None
                answers[sentinel.name] = f"{address[0]}:{address[1]}"
                seen.add(address)
            if len(seen) == 1 and tuple(old_address) not in seen:
                return seen.pop()
            return None

        new_master = _poll(
            f"sentinels to fail over away from {old_address[0]}:{old_address[1]}",
            check,
            timeout,
            lambda: f"sentinel answers: {answers}\n{self._logs()}",
        )
        elapsed = time.monotonic() - since
        # The promoted node must really be master, not just named by the sentinels.
        _poll(
            f"{new_master} to report role:master",
            lambda: True if self.role_of(new_master) == "master" else None,
            max(1.0, timeout - (time.monotonic() - started)),
            self._logs,
        )
        return elapsed

    def restart_killed(self, timeout: float = 30.0) -> Address:
        """Restart the node kill_master() killed as a replica of the current master; return it."""
        node = self._killed
        if node is None:
            raise RuntimeError("restart_killed() needs a previous kill_master()")
        master = self._node_at(self.master_address())
        deadline = time.monotonic() + timeout
        # With a short down-after, a sentinel may flag the just-promoted master down briefly
        # right after switching to it (+sdown soon after +switch-master, then -sdown). With no
        # replica that costs nothing; with the restarted node already back it is a second
        # failover, to that node. So the node comes back only once that has passed.
        self._wait_master_settled(master.address, max(0.5, deadline - time.monotonic()))
        self._launch_node(node, replicaof=master.address)
        node.wait_ready(timeout)
        self._wait_replica_online(master, node, max(0.5, deadline - time.monotonic()))
        self._wait_sentinels_agree(
            master.address, [node.address], max(0.5, deadline - time.monotonic())
        )
        self._killed = None
        self._killed_at = None
        return node.address

    def _stop_processes(self) -> None:
        """Stop every process by PID, sentinels first so they cannot react to the nodes stopping."""
        _stop_nodes(self._sentinels)
        _stop_nodes(self._nodes)
        self._sentinels = []
        self._nodes = []
        self._killed = None
        self._killed_at = None

    def stop(self) -> None:
        """Stop all processes this topology started and remove its temp dir."""
        self._stop_processes()
        self._workdir.remove()

    def __enter__(self) -> SentinelTopology:
        """Start on entering the context."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop on leaving the context."""
        self.stop()
