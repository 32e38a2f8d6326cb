"""The partition drill's topology: every Redis node, sentinel and WebSocket process in a network
namespace of its own on one bridge (deploy/processes/netns.py), so that a test can cut the
master's link while WebSocket processes on both sides of the cut keep serving.

Hosts, on 10.231.0.0/24 (names prefixed `cfpart`, nothing in the root namespace):

    redis1 .11   the first master, and WebSocket process `ws-a`: the master's side of a cut
    redis2 .12   the replica
    sent1-3 .21-.23  three sentinels, quorum 2
    app1, app2 .31, .32  WebSocket processes `ws-b1`, `ws-b2`: the majority side
    client .41   the test's majority-side clients (the minority's run inside redis1)

The database is SQLite: one file, reachable from every namespace and on neither side of the
cut, because the drill is about Redis; a PostgreSQL on 127.0.0.1 cannot be reached from inside
the namespaces, and routing one in would take traffic out of the test's own network.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis

from deploy.processes import netns
from deploy.processes.children import Child, poll_until, stop_all
from deploy.processes.redis_nodes import redis_argv, redis_client, write_conf
from deploy.sentinel.render import (
    render_redis_conf,
    render_sentinel_conf,
    staggered_down_after_ms,
)

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
PREFIX = "cfpart"
SUBNET = "10.231.0.0/24"
REDIS_PORT = 6379
SENTINEL_PORT = 26379
APP_PORT = 8000
MASTER_NAME = "chanfleet"
NODES = {"redis1": 11, "redis2": 12}
SENTINELS = {"sent1": 21, "sent2": 22, "sent3": 23}
# WebSocket process name -> the host it runs in. ws-a shares the first master's namespace.
APPS = {"ws-a": "redis1", "ws-b1": "app1", "ws-b2": "app2"}
OTHER_HOSTS = {"app1": 31, "app2": 32, "client": 41}
Address = tuple[str, int]


@dataclass
class App:
    """One WebSocket process: where it runs and its URLs."""

    name: str
    host: netns.Host
    child: Child

    @property
    def url(self) -> str:
        """Its HTTP base URL (reachable from inside the network only)."""
        return f"http://{self.host.address}:{APP_PORT}"

    @property
    def ws_url(self) -> str:
        """Its WebSocket base URL."""
        return f"ws://{self.host.address}:{APP_PORT}"


class PartitionTopology:
    """Start, observe and stop the drill's processes; cut and heal the master's link."""

    def __init__(self, workdir: Path, app_env: dict[str, str], users: list[str],
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.workdir = workdir
        self.app_env = app_env
        self.users = users
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = secrets.token_hex(16)
        self.sentinel_password = secrets.token_hex(16)
        self.net = netns.Network(PREFIX, SUBNET)
        self.redis: dict[str, Child] = {}
        self.sentinels: dict[str, Child] = {}
        self.apps: dict[str, App] = {}
        self.sqlite_path = workdir / "chanfleet.sqlite3"

    # ------------------------------------------------------------------ addresses
    @property
    def hosts(self) -> dict[str, netns.Host]:
        """The network's hosts by name."""
        return self.net.hosts

    def node_address(self, name: str) -> Address:
        """The (ip, port) of data node redis1 or redis2."""
        return (self.hosts[name].address, REDIS_PORT)

    @property
    def sentinel_addresses(self) -> list[Address]:
        """The sentinels' (ip, port) pairs."""
        return [(self.hosts[n].address, SENTINEL_PORT) for n in SENTINELS]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PartitionTopology:
        """Make the network, start Redis, the sentinels and the WebSocket processes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.net.create()
        for name, number in {**NODES, **SENTINELS, **OTHER_HOSTS}.items():
            self.net.add_host(name, number)
        self._start_redis()
        self._prepare_database()
        self._start_apps()
        return self

    def stop(self) -> None:
        """Stop every process by PID (apps, sentinels, data nodes), then remove the network."""
        try:
            stop_all([app.child for app in self.apps.values()], grace=10)
            stop_all(list(self.sentinels.values()))
            stop_all(list(self.redis.values()))
        finally:
            self.net.remove()

    def _child(self, name: str, host: str, argv: list[str], **kwargs: Any) -> Child:
        argv = self.hosts[host].argv(argv)
        return Child(name, argv, self.workdir / f"{name}.log", **kwargs).start()

    def _start_redis(self) -> None:
        master = self.node_address("redis1")
        for name in NODES:
            host = self.hosts[name]
            data = self.workdir / name
            data.mkdir(exist_ok=True)
            conf = render_redis_conf(
                port=REDIS_PORT, data_dir=data, password=self.password, bind=host.address,
                replicaof=None if name == "redis1" else master)
            path = write_conf(self.workdir / f"{name}.conf", conf)
            # Nothing to warm-start from in a drill: no snapshots.
            self.redis[name] = self._child(name, name, redis_argv(path, extra=["--save", ""]),
                                           cwd=self.workdir)
        for index, name in enumerate(SENTINELS):
            host = self.hosts[name]
            data = self.workdir / name
            data.mkdir(exist_ok=True)
            conf = render_sentinel_conf(
                port=SENTINEL_PORT, data_dir=data, password=self.password,
                sentinel_password=self.sentinel_password, master_host=master[0],
                master_port=master[1], bind=host.address,
                down_after_ms=staggered_down_after_ms(self.down_after_ms, index),
                failover_timeout_ms=self.failover_timeout_ms)
            path = write_conf(self.workdir / f"{name}.conf", conf)
            self.sentinels[name] = self._child(name, name, redis_argv(path, sentinel=True),
                                               cwd=self.workdir)
        self.poll("the replica to be online and every sentinel to know its peers",
                  self._converged, 40)

    def _converged(self) -> bool | None:
        """True once the replica is online and each sentinel knows 2 sentinels and 1 replica."""
        for child in [*self.redis.values(), *self.sentinels.values()]:
            if child.exit_code() is not None:
                raise netns.NetnsError(f"{child.name} exited\n{child.log_tail()}")

        def ask() -> bool | None:
            with self.node_client(self.node_address("redis1")) as client:
                replication = client.info("replication")
            if replication.get("connected_slaves") != 1 or "online" not in str(
                    replication.get("slave0", "")):
                return None
            for address in self.sentinel_addresses:
                with self.sentinel_client(address) as client:
                    peers = client.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)
                    replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
                if len(peers) != 2 or len(replicas) != 1:
                    return None
            return True

        return self.on("client", ask)

    def _manage(self, *args: str) -> None:
        env = {**self._base_env(), "SECRET_KEY": "partition-drill-manage-only"}
        result = subprocess.run([sys.executable, str(REPO / "manage.py"), *args], env=env,
                                cwd=REPO, capture_output=True, text=True, timeout=300,
                                check=False)
        if result.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{result.stdout}\n{result.stderr}")

    def _prepare_database(self) -> None:
        self._manage("migrate", "--noinput")
        names = ",".join(repr(u) for u in self.users)
        self._manage("shell", "--no-imports", "-c", (
            "from django.contrib.auth.models import User\n"
            f"for name in [{names}]:\n"
            "    u, _ = User.objects.get_or_create(username=name)\n"
            "    u.set_password('chanfleet'); u.save()\n"))

    def _base_env(self) -> dict[str, str]:
        """The environment of every app process and manage.py run: SQLite, nothing inherited
        that would point elsewhere (a runner's DATABASE_URL, REDIS_*, settings module)."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(
            ("REDIS_", "DATABASE_URL", "INTERNAL_PORT", "DJANGO_", "SQLITE_", "PYTEST"))}
        return {
            **inherited,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "DJANGO_SETTINGS_MODULE": "app.settings",
            "DATABASE_URL": "",
            "SQLITE_PATH": str(self.sqlite_path),
            "HTTPS": "false",
            "PYTHONUNBUFFERED": "1",
        }

    def _start_apps(self) -> None:
        secret = secrets.token_urlsafe(50)
        addresses = ",".join(self.hosts[h].address for h in APPS.values())
        for name, host_name in APPS.items():
            host = self.hosts[host_name]
            env = {
                **self._base_env(),
                "SECRET_KEY": secret,
                "ALLOWED_HOSTS": addresses,
                "REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses),
                "REDIS_MASTER_NAME": MASTER_NAME,
                "REDIS_PASSWORD": self.password,
                "REDIS_SENTINEL_PASSWORD": self.sentinel_password,
                "PORT": str(APP_PORT),
                "BIND": host.address,
                "POD_NAME": name,
                **self.app_env,
            }
            child = self._child(name, host_name, [str(REPO / "deploy" / "entrypoint.sh"), "ws"],
                                cwd=REPO, env=env)
            self.apps[name] = App(name, host, child)
        for app in self.apps.values():
            self.poll(f"{app.name} to answer /healthz", lambda app=app: self._healthy(app), 90)

    def _healthy(self, app: App) -> bool | None:
        if app.child.exit_code() is not None:
            raise RuntimeError(f"{app.name} exited\n{app.child.log_tail()}")

        def get() -> int:
            with urllib.request.urlopen(f"{app.url}/healthz", timeout=2) as answer:
                return answer.status

        return True if self.hosts["client"].call(get) == 200 else None

    # ------------------------------------------------------------------ the partition
    def cut_master_link(self) -> None:
        """Cut redis1's link: redis1 and ws-a (same namespace) keep only each other."""
        self.net.cut(self.hosts["redis1"])

    def heal_master_link(self) -> None:
        """Put redis1 back on the bridge."""
        self.net.heal(self.hosts["redis1"])

    # ------------------------------------------------------------------ observing
    def poll(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        """Poll check until it returns non-None, retrying Redis and socket errors."""
        return poll_until(what, check, timeout, self.logs,
                          retry_on=(redis.RedisError, OSError, ValueError))

    def logs(self, lines: int = 15) -> str:
        """The tail of every process log, for failure messages."""
        children = [*self.redis.values(), *self.sentinels.values(),
                    *(a.child for a in self.apps.values())]
        return "\n".join(c.log_tail(lines) for c in children)

    def sentinel_client(self, address: Address) -> redis.Redis:
        """A short-timeout client of one sentinel (use from inside the network)."""
        return redis_client(address, self.sentinel_password)

    def node_client(self, address: Address) -> redis.Redis:
        """A short-timeout client of one data node (use from inside the network)."""
        return redis_client(address, self.password)

    def on(self, host: str, function: Callable[..., T], *args: Any) -> T:
        """Run function(*args) on a thread inside a host's namespace."""
        return self.hosts[host].call(function, *args)

    def info(self, node: str, section: str, via: str = "client") -> dict[str, Any]:
        """INFO section of a data node, asked from inside host `via`."""
        def ask() -> dict[str, Any]:
            with self.node_client(self.node_address(node)) as client:
                return client.info(section)
        return self.on(via, ask)

    def sentinel_views(self) -> dict[str, str]:
        """What each sentinel names as master ("ip:port"), or the error asking it."""
        def ask() -> dict[str, str]:
            views = {}
            for name, address in zip(SENTINELS, self.sentinel_addresses, strict=True):
                try:
                    with self.sentinel_client(address) as client:
                        ip, port = client.execute_command(
                            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                    views[name] = f"{ip}:{port}"
                except (redis.RedisError, OSError) as error:
                    views[name] = repr(error)
            return views
        return self.on("client", ask)

    def sqlite(self, sql: str, *params: Any) -> list[tuple]:
        """Rows of a query on the drill's database (read-only, from this process)."""
        with sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=20) as db:
            return db.execute(sql, params).fetchall()

    def metrics(self, app: str, via: str = "client") -> dict[str, float]:
        """One WebSocket process's chanfleet_* counters, summed over labels."""
        target = self.apps[app]

        def get() -> str:
            with urllib.request.urlopen(f"{target.url}/metrics", timeout=5) as answer:
                return answer.read().decode()

        totals: dict[str, float] = {}
        for line in self.on(via, get).splitlines():
            if line.startswith("chanfleet_") and " " in line:
                name, _, value = line.rpartition(" ")
                key = name.split("{", 1)[0]
                try:
                    totals[key] = totals.get(key, 0.0) + float(value)
                except ValueError:
                    continue
        return totals

    def describe(self) -> str:
        """A one-line JSON of the roles and the sentinels' view, for messages."""
        roles = {}
        for node in NODES:
            try:
                roles[node] = self.info(node, "replication")["role"]
            except (redis.RedisError, OSError) as error:
                roles[node] = repr(error)
        return json.dumps({"roles": roles, "sentinels": self.sentinel_views()})

    def wait_until(self, what: str, check: Callable[[], T | None], timeout: float) -> float:
        """Poll check until it holds; return the seconds it took."""
        started = time.monotonic()
        self.poll(what, check, timeout)
        return time.monotonic() - started
