"""Real redis-server / redis-sentinel processes for tests, rendered from deploy/sentinel templates.

Everything binds to 127.0.0.1 on free ports, lives in a temporary directory, always requires a
password (tests exercise the same AUTH path as production; there is no no-auth mode) and is
stopped by PID: SIGTERM, then SIGKILL, then reaped. Waits poll with short sleeps against overall
deadlines, so a loaded 2-core machine only makes them slower, never flaky by a fixed sleep.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from deploy.sentinel.render import render_redis_conf, render_sentinel_conf

HOST = "127.0.0.1"
# Set to a redis-server path to test against another build than the one on PATH.
REDIS_SERVER_ENV = "CHANFLEET_REDIS_SERVER"
MISSING_BINARY_HELP = (
    "redis-server was not found on PATH (or ${env}). The test suite runs real Redis and "
    "Sentinel processes; `make test` installs them (Debian: apt-get install redis-server "
    "redis-sentinel)."
).replace("{env}", REDIS_SERVER_ENV)
POLL_INTERVAL = 0.05
PORT_ATTEMPTS = 4

T = TypeVar("T")
Address = tuple[str, int]


class RedisBinaryMissing(RuntimeError):
    """redis-server is not installed; the message says how to get it."""


class RedisProcessError(RuntimeError):
    """A Redis or Sentinel process failed to start or to reach the expected state in time."""


class _PortInUse(RedisProcessError):
    """The free port picked for a process was taken before it could bind; retry with new ports."""


def find_redis_server() -> str:
    """Return the redis-server executable path, or raise RedisBinaryMissing explaining the fix."""
    candidate = os.environ.get(REDIS_SERVER_ENV) or shutil.which("redis-server")
    if not candidate or not os.access(candidate, os.X_OK):
        raise RedisBinaryMissing(MISSING_BINARY_HELP)
    return candidate


def free_port(host: str = HOST) -> int:
    """Return a TCP port that was free on host a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _free_ports(count: int) -> list[int]:
    """Return count distinct free ports, holding them all open while choosing."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _poll(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    describe: Callable[[], str] = lambda: "",
) -> T:
    """Call check until it returns a non-None value or the deadline passes (then raise)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError) as exc:
            result, last_error = None, exc
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            detail = describe()
            raise RedisProcessError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else "")
                + (f"\n{detail}" if detail else "")
            )
        time.sleep(POLL_INTERVAL)


def _client(address: Address, password: str, timeout: float = 1.0) -> redis.Redis:
    """Return a short-timeout, decoded, RESP2 client that never retries: callers poll instead."""
    return redis.Redis(
        host=address[0],
        port=address[1],
        password=password,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        decode_responses=True,
        protocol=2,
        retry=Retry(NoBackoff(), 0),
    )


def _pairs(flat: list[Any]) -> dict[str, Any]:
    """Turn a flat [key, value, key, value] reply (SENTINEL MASTER and friends) into a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


# Strong references on purpose: a helper dropped without stop() must still be killed at exit.
_LIVE: set[_Process] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort if a test run dies before teardown: SIGKILL every process still ours."""
    for proc in list(_LIVE):
        proc.kill()


class _Process:
    """One redis-server (data node or sentinel) process with its config and log file."""

    def __init__(
        self, name: str, workdir: Path, port: int, password: str, *, sentinel: bool = False
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.port = port
        self.password = password
        self.sentinel = sentinel
        self.conf_path = workdir / f"{name}.conf"
        self.log_path = workdir / f"{name}.log"
        self.data_dir = workdir / name
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> Address:
        """Return (host, port) of this process."""
        return (HOST, self.port)

    @property
    def pid(self) -> int | None:
        """Return the PID while the process runs, else None."""
        return self.popen.pid if self.popen and self.popen.poll() is None else None

    def client(self) -> redis.Redis:
        """Return an authenticated client for this process."""
        return _client(self.address, self.password)

    def launch(self, conf: str, extra_args: Sequence[str] = ()) -> None:
        """Write a fresh config (the process may rewrite it) and start the process."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(conf)
        self.conf_path.chmod(0o600)
        argv = [find_redis_server(), str(self.conf_path)]
        if self.sentinel:
            argv.append("--sentinel")
        argv.extend(extra_args)
        with open(self.log_path, "ab") as log:
            log.write(f"==== starting {shlex.join(argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        _LIVE.add(self)

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the process log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"--- {self.name}: no log at {self.log_path}"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} log lines of {self.name} ({self.log_path}):\n{tail}"

    def _check_alive(self) -> None:
        """Raise with the log tail if the process has exited."""
        assert self.popen is not None
        code = self.popen.poll()
        if code is None:
            return
        _LIVE.discard(self)
        tail = self.log_tail()
        if "Address already in use" in tail:
            raise _PortInUse(f"{self.name}: port {self.port} was taken\n{tail}")
        raise RedisProcessError(f"{self.name} exited with code {code} during startup\n{tail}")

    def wait_ready(self, timeout: float) -> None:
        """Wait until the process answers an authenticated PING (fail fast if it exits)."""
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            self._check_alive()
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except (redis.RedisError, OSError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise RedisProcessError(
                    f"{self.name} on port {self.port} did not answer PING within {timeout:.0f}s "
                    f"(last error: {last_error!r})\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def kill(self) -> None:
        """SIGKILL the process by PID and reap it (simulates a crash)."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait()
        _LIVE.discard(self)

    def terminate(self) -> None:
        """Send SIGTERM by PID if the process still runs (does not wait)."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def reap(self, deadline: float) -> None:
        """Wait for the process to exit until deadline (monotonic), then SIGKILL; always reap."""
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
        self.popen.wait()
        _LIVE.discard(self)

    def stop(self, grace: float = 5.0) -> None:
        """Stop by PID: SIGTERM, wait up to grace seconds, then SIGKILL; always reap."""
        self.terminate()
        self.reap(time.monotonic() + grace)


def _stop_all(procs: Sequence[_Process], grace: float = 5.0) -> None:
    """SIGTERM all at once, then reap each, SIGKILLing any still alive after grace seconds.

    Simultaneous: a master stopped alone with an attached replica waits for the replica's next
    REPLCONF ACK (up to a second) before exiting; stopping both together avoids that wait.
    """
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.reap(deadline)


class _WorkDir:
    """A temporary directory owned by a helper, removed on stop unless the caller supplied it."""

    def __init__(self, base_dir: str | os.PathLike[str] | None, prefix: str) -> None:
        self._given = Path(base_dir).resolve() if base_dir is not None else None
        self._prefix = prefix
        self.path: Path | None = None

    def create(self) -> Path:
        """Create (or reuse the given) directory and return it."""
        if self.path is None:
            if self._given is not None:
                self._given.mkdir(parents=True, exist_ok=True)
                self.path = self._given
            else:
                self.path = Path(tempfile.mkdtemp(prefix=self._prefix)).resolve()
        return self.path

    def remove(self) -> None:
        """Delete the directory if this helper created it."""
        if self.path is not None and self._given is None:
            shutil.rmtree(self.path, ignore_errors=True)
        self.path = None


class RedisServer:
    """A standalone, password-protected, non-persistent redis-server on a free loopback port.

    ``password`` defaults to a random token; there is deliberately no no-auth mode. ``base_dir``
    keeps config and log there (and they survive stop); by default a temp dir is used and removed.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        port: int | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.host = HOST
        self.password = password or secrets.token_hex(16)
        self._fixed_port = port
        self._workdir = _WorkDir(base_dir, "chanfleet-redis-")
        self._startup_timeout = startup_timeout
        self._proc: _Process | None = None

    @property
    def port(self) -> int:
        """Return the port the server listens on (only valid after start())."""
        if self._proc is None:
            raise RuntimeError("RedisServer is not started")
        return self._proc.port

    @property
    def url(self) -> str:
        """Return redis://:PASSWORD@127.0.0.1:PORT/0 (password URL-quoted)."""
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Return the server PID while it runs."""
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        """Return the path of the server's log file."""
        if self._proc is None:
            raise RuntimeError("RedisServer is not started")
        return self._proc.log_path

    def pids(self) -> list[int]:
        """Return the PID of the running server process (empty when stopped)."""
        return [self._proc.pid] if self._proc and self._proc.pid else []

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return a synchronous redis-py client for this server (kwargs passed through)."""
        return redis.Redis.from_url(self.url, **kwargs)

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; retry on a port race."""
        if self._proc is not None:
            raise RuntimeError("RedisServer already started")
        workdir = self._workdir.create()
        attempts = 1 if self._fixed_port else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._fixed_port or free_port()
            proc = _Process("redis", workdir, port, self.password)
            conf = render_redis_conf(port=port, data_dir=proc.data_dir, password=self.password)
            # No persistence for a throwaway test server: no snapshots, no AOF, nothing on stop.
            proc.launch(conf, ["--save", "", "--appendonly", "no"])
            try:
                proc.wait_ready(self._startup_timeout)
            except _PortInUse:
                proc.stop()
                if attempt == attempts:
                    self._workdir.remove()
                    raise
                continue
            except BaseException:
                proc.stop()
                self._workdir.remove()
                raise
            self._proc = proc
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL) and remove its temp dir."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        self._workdir.remove()

    def __enter__(self) -> RedisServer:
        """Start on entering the context."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop on leaving the context."""
        self.stop()


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
        self._workdir = _WorkDir(base_dir, "chanfleet-sentinel-")
        self._startup_timeout = startup_timeout
        self._nodes: list[_Process] = []
        self._sentinels: list[_Process] = []
        self._killed: _Process | None = None
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
        return _client(address, self.password)

    def role_of(self, address: Address) -> str:
        """Return the INFO replication role ("master" or "slave") of the data node at address."""
        with self.node_client(address) as client:
            return client.info("replication")["role"]

    def _ask_sentinel(self, sentinel: _Process) -> Address:
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

    def _node_at(self, address: Address) -> _Process:
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
            except _PortInUse:
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
        ports = _free_ports(2 + self.SENTINEL_COUNT)
        master = _Process("redis-a", workdir, ports[0], self.password)
        replica = _Process("redis-b", workdir, ports[1], self.password)
        self._nodes = [master, replica]
        self._sentinels = [
            _Process(f"sentinel-{i}", workdir, port, self.sentinel_password, sentinel=True)
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
        for sentinel in self._sentinels:
            sentinel.launch(
                render_sentinel_conf(
                    port=sentinel.port,
                    data_dir=sentinel.data_dir,
                    password=self.password,
                    sentinel_password=self.sentinel_password,
                    master_name=self.master_name,
                    master_host=master.address[0],
                    master_port=master.address[1],
                    down_after_ms=self.down_after_ms,
                    failover_timeout_ms=self.failover_timeout_ms,
                )
            )
        for sentinel in self._sentinels:
            sentinel.wait_ready(remaining())
        self._wait_sentinels_agree(master.address, [replica.address], remaining())

    def _launch_node(self, node: _Process, replicaof: Address | None) -> None:
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

    def _wait_replica_online(self, master: _Process, replica: _Process, timeout: float) -> None:
        """Wait until the master lists the replica as an online, connected replica."""

        def check() -> bool | None:
            master._check_alive()
            replica._check_alive()
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

        def check_one(sentinel: _Process) -> bool:
            sentinel._check_alive()
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

        def named_by(sentinel: _Process) -> bool:
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
        # With down-after as short as 1000 ms, a sentinel may flag the just-promoted master
        # down about a second after switching to it (a failed run's logs: +sdown 1.05 s after
        # +switch-master, -sdown 70 ms later). With no replica that costs nothing; with the
        # restarted node already back it is a second failover, to that node. So the node comes
        # back only once that has passed.
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
        _stop_all(self._sentinels)
        _stop_all(self._nodes)
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
