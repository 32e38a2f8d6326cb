"""The three systems under test, each behind the same nginx template.

Two WebSocket processes each (more for `loadtest.scale`).

* `Ours`: the real chanfleet topology (`deploy.local.topology.Topology`, shifted ports), with
  benchmark rate limits; users log in over the JSON API.
* `Stock`: the reference chapter's project (`loadtest.bench.stock`) under two daphne
  processes, on its own standalone redis-server; sessions are written by its own script.
* `Ceiling`: `loadtest.bench.ceiling` (websockets + Redis pub/sub) in two processes.

Every system: `start()`, `stop()`, `restart_ws()` (fresh WebSocket processes, so that each
scenario's memory figure starts from a clean heap), `ws_pids()`, `cookies(n)`, `ws_url`,
`ready_marker` (the frame that ends a connection's welcome, if any).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.local.topology import REPO, Ports, Topology, database_url_named
from deploy.processes.children import Child, accepts, poll_until
from deploy.processes.nginx import Nginx
from deploy.processes.redis_nodes import RedisServer

# Benchmark-only nginx values: the local default of 1024 worker connections holds 512
# proxied WebSockets per worker, and the per-address limit (100) would refuse a load
# generator that opens thousands of sockets from a few loopback addresses.
NGINX_OVERRIDES = {"WORKER_CONNECTIONS": "16384", "CONN_LIMIT_PER_ADDR": "60000"}

# The resume phases close sockets and reopen them once the server has settled, as a page
# reload does; a user back within CHAT_LEAVE_GRACE is no news to the room (docs/protocol.md).
# The grace covers the whole phase, however long the settling, so its handshakes are resumes
# alone, as in a storm (whose users never left), not resumes plus a user_left and a
# user_joined broadcast each.
OURS_ENV = {
    "CHAT_LEAVE_GRACE": "300",
    "CHAT_MESSAGE_RATE": "1000000/10",
    "WS_CONNECT_RATE": "1000000/60",
    "WS_FRAME_RATE": "1000000/10",
}


def port_busy(port: int) -> bool:
    """Whether something listens on (or holds) 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_port(port: int, timeout: float = 30) -> None:
    """Wait until 127.0.0.1:port accepts TCP connections."""
    poll_until(f"127.0.0.1:{port} to accept", lambda: accepts(("127.0.0.1", port)) or None,
               timeout)


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def total_cpu_seconds(pids: list[int]) -> float:
    """Summed user + system CPU seconds of these processes."""
    return sum(cpu_seconds(pid) for pid in pids)


def cpu_ticks(stat_text: str) -> tuple[int, int]:
    """(all, idle) clock ticks of every CPU together, from /proc/stat's first line."""
    fields = [int(x) for x in stat_text.splitlines()[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # idle and iowait


def cpu_busy(seconds: float = 2.0) -> float:
    """Share of all CPUs busy (not idle/iowait) over a short window, from /proc/stat."""
    total0, idle0 = cpu_ticks(Path("/proc/stat").read_text())
    time.sleep(seconds)
    total1, idle1 = cpu_ticks(Path("/proc/stat").read_text())
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)




def with_ws_processes(ports: Ports, count: int) -> Ports:
    """The plan with `count` WebSocket processes on consecutive ports from its first one."""
    if not 1 <= count <= 9:  # the internal listeners sit ten above the public ones
        raise ValueError("between 1 and 9 WebSocket processes")
    first, internal = ports.ws[0], ports.ws_internal[0]
    return dataclasses.replace(ports, ws=tuple(first + i for i in range(count)),
                               ws_internal=tuple(internal + i for i in range(count)))


def children_of(pid: int) -> list[int]:
    """The direct children of a process (nginx's workers), from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


class System:
    """Common parts of the three systems."""

    name = "?"
    ready_marker: str | None = None
    resumes = False  # whether a socket can come back with ?last_seq= (resume_end)
    nginx_port = 0
    ws_ports: list[int] = []

    @property
    def ws_url(self) -> str:
        """The WebSocket base URL through nginx."""
        return f"ws://127.0.0.1:{self.nginx_port}"

    @property
    def origin(self) -> str:
        """The Origin header a browser on the public URL sends."""
        return f"http://127.0.0.1:{self.nginx_port}"

    def headers(self, cookie: str) -> list[tuple[str, str]]:
        """Handshake headers for one session."""
        return [("Cookie", f"sessionid={cookie}"), ("Origin", self.origin)]

    def ws_pids(self) -> list[int]:  # pragma: no cover - overridden
        """PIDs of the WebSocket processes."""
        raise NotImplementedError

    def rss_kib(self) -> int:
        """Summed RSS of the WebSocket processes."""
        return sum(rss_kib(pid) for pid in self.ws_pids())

    def ports(self) -> list[int]:
        """Every port this system listens on."""
        raise NotImplementedError


class Ours(System):
    """The chanfleet topology."""

    name = "ours"
    ready_marker = '"history_end"'
    resumes = True

    def __init__(self, state: Path, offset: int, ws_env: dict[str, str] | None = None, *,
                 ws_processes: int = 2, shards: int = 1,
                 nginx_values: dict[str, str] | None = None):
        self.topology = Topology(state, ports=with_ws_processes(Ports().shifted(offset),
                                                                ws_processes),
                                 env=dict(OURS_ENV), monitoring=False, ws_env=ws_env or {},
                                 nginx_values={**NGINX_OVERRIDES, **(nginx_values or {})},
                                 shards=shards)
        self.nginx_port = self.topology.ports.nginx
        self.ws_ports = list(self.topology.ports.ws)
        self._cookies: list[str] = []

    def ports(self) -> list[int]:
        """Every port of the shifted plan that the topology opens (monitoring is off)."""
        plan = self.topology.ports
        return [plan.nginx, plan.nginx_status, *plan.ws, *plan.http, plan.redis_master,
                plan.redis_replica, *plan.sentinels]

    def start(self) -> None:
        """Bring the topology up."""
        self.topology.up(timeout=120)

    def stop(self) -> None:
        """Stop the topology (supervisord and everything it runs, by PID)."""
        self.topology.down()

    def ws_pids(self) -> list[int]:
        """The WebSocket processes ws-1, ws-2, ..."""
        return [pid for pid in (self.topology.pid(n) for n in self.topology.ws_programs()) if pid]

    def nginx_pid(self) -> int | None:
        """nginx's master process."""
        return self.topology.pid("nginx") or None

    def redis_clients(self) -> list:
        """A client of each shard's current master (the channel layer's Redis)."""
        import redis

        clients = []
        for shard in range(self.topology.redis.shards):
            host, port = self.topology.redis_master(shard)
            clients.append(redis.Redis(host=host, port=port, socket_timeout=5,
                                       password=self.topology.redis.password))
        return clients

    def restart_ws(self) -> None:
        """Kill every WebSocket process (supervisor restarts them) and wait until ready."""
        old = self.ws_pids()
        for name in self.topology.ws_programs():
            self.topology.kill(name, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = self.ws_pids()
            if len(pids) == len(self.ws_ports) and not set(pids) & set(old):
                break
            time.sleep(0.2)
        self.topology.wait_ready(60, programs=self.topology.ws_programs())

    def cookies(self, count: int, log=print) -> list[str]:
        """Create `count` users with make_load_users and log each in over the JSON API."""
        if len(self._cookies) >= count:
            return self._cookies[:count]
        made = self.topology.manage("make_load_users", str(count), check=False)
        if made.returncode:
            raise RuntimeError(f"make_load_users failed: {made.stderr}")
        from tests.support.chat_client import login

        started = time.monotonic()
        names = [f"load{i:04d}" for i in range(1, count + 1)]
        with ThreadPoolExecutor(4) as pool:
            self._cookies = list(pool.map(lambda n: login(self.topology.url, n), names))
        log(f"  ours: {count} users logged in over HTTP in {time.monotonic() - started:.1f} s")
        return self._cookies

    def check_session_queries(self) -> dict:
        """Count database queries of a handshake's session and user lookup (Redis-cached)."""
        if not self._cookies:
            return {}
        code = _SESSION_CHECK % {"key": self._cookies[0]}
        result = self.topology.manage("shell", "-c", code, check=False)
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": (result.stdout + result.stderr)[-500:]}


@contextlib.contextmanager
def ours_running(state: Path, offset: int, log=print):
    """`Ours` on `Ports().shifted(offset)`: the topology running in `state` as it is, else
    started here (refused when its ports are taken) and stopped when the block ends."""
    system = Ours(state, offset)
    if system.topology.running():
        log(f"using the topology running in {system.topology.state}")
        yield system
        return
    busy = [p for p in system.ports() if port_busy(p)]
    if busy:
        raise SystemExit(f"ports taken: {busy}; pick another --port-offset")
    log(f"starting the topology in {system.topology.state} (nginx on {system.nginx_port})")
    system.start()
    try:
        yield system
    finally:
        system.stop()


# Run inside `manage.py shell` with the topology's environment: the same session engine,
# cache and database as the WebSocket processes. It resolves the handshake's user the way
# channels.auth.AuthMiddleware does and lists the SQL it ran.
_SESSION_CHECK = """
import json
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from channels.auth import get_user
from importlib import import_module
store = import_module(settings.SESSION_ENGINE).SessionStore
def run():
    session = store("%(key)s")
    with CaptureQueriesContext(connection) as queries:
        user = get_user.func({"session": session})
    return user, [q["sql"] for q in queries.captured_queries]
run()  # the first lookup may fill the cache
user, sqls = run()
print(json.dumps({"engine": settings.SESSION_ENGINE, "user": user.get_username(),
                  "queries": len(sqls), "session_queries": sum("django_session" in s for s in sqls),
                  "sql": [s[:120] for s in sqls]}))
"""


class _Processes(System):
    """WebSocket processes we run ourselves (two by default), nginx and a standalone Redis."""

    def __init__(self, state: Path, base_port: int, processes: int = 2,
                 nginx_values: dict[str, str] | None = None):
        if not 1 <= processes <= 8:  # base_port + 20 is Redis's
            raise ValueError("between 1 and 8 WebSocket processes")
        self.state = state
        self.nginx_port = base_port
        self.ws_ports = [base_port + 11 + i for i in range(processes)]
        # The tests' standalone Redis (the chart's config, with a password) on a fixed port;
        # maxclients stated so that a lowered default cannot refuse the load's connections.
        self.redis = RedisServer(port=base_port + 20, base_dir=state / "redis",
                                 extra_args=["--maxclients", "10000"])
        self.nginx = Nginx.local(base_port, self.ws_ports, self.ws_ports, base_port + 90,
                                 state_dir=state / "nginx",
                                 **{**NGINX_OVERRIDES, **(nginx_values or {})})
        self.procs: list[Child | None] = [None] * processes

    def ports(self) -> list[int]:
        """nginx, its status port, the WebSocket processes and Redis."""
        return [self.nginx_port, self.nginx_port + 90, *self.ws_ports, self.redis.port]

    def command(self, port: int) -> list[str]:  # pragma: no cover - overridden
        """The command line of one WebSocket process."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The environment of the WebSocket processes."""
        return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}

    def _spawn(self, index: int) -> None:
        name = f"ws-{index + 1}"
        self.procs[index] = Child(name, self.command(self.ws_ports[index]),
                                  self.state / f"{name}.log", cwd=REPO, env=self.env()).start()

    def start(self) -> None:
        """Start Redis, the WebSocket processes and nginx."""
        self.state.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        self.prepare()
        for index in range(len(self.ws_ports)):
            self._spawn(index)
        for port in self.ws_ports:
            wait_port(port, 60)
        self.nginx.start()

    def prepare(self) -> None:
        """Anything to do before the WebSocket processes start."""

    def stop(self) -> None:
        """Stop nginx, the WebSocket processes and Redis, by PID."""
        self.nginx.stop()
        for proc in self.procs:
            if proc is not None:
                proc.stop(grace=5)
        self.redis.stop()

    def restart_ws(self) -> None:
        """Replace every WebSocket process with a fresh one."""
        for proc in self.procs:
            if proc is not None:
                proc.kill()
        for index in range(len(self.ws_ports)):
            self._spawn(index)
        for port in self.ws_ports:
            wait_port(port, 60)

    def ws_pids(self) -> list[int]:
        """PIDs of the WebSocket processes."""
        return [p.pid for p in self.procs if p is not None and p.pid is not None]

    def nginx_pid(self) -> int | None:
        """nginx's master process."""
        return self.nginx.pid

    def redis_clients(self) -> list:
        """A client of the standalone Redis."""
        return [self.redis.client(socket_timeout=5)]


class Stock(_Processes):
    """The reference chapter's project under daphne."""

    name = "stock"

    def __init__(self, state: Path, base_port: int, max_connections: int | None = None):
        super().__init__(state, base_port)
        self.max_connections = max_connections
        self._cookies: list[str] = []

    @property
    def database_url(self) -> str | None:
        """Its own PostgreSQL database when DATABASE_URL names a server (as ours gets)."""
        url = os.environ.get("DATABASE_URL", "")
        if not url.startswith("postgres"):
            return None
        return database_url_named(url, self.database_name)

    @property
    def database_name(self) -> str:
        """The PostgreSQL database name, unique per state folder."""
        return "chanfleet_bench_stock_" + hashlib.sha1(str(self.state).encode()).hexdigest()[:10]

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as connection:
            connection.execute(sql)

    def env(self) -> dict[str, str]:
        """Stock settings, its Redis and its database."""
        env = {**super().env(), "DJANGO_SETTINGS_MODULE": "loadtest.bench.stock.settings",
               "STOCK_REDIS_URL": self.redis.url, "STOCK_DB": str(self.state / "stock.sqlite3")}
        if self.database_url:
            env["STOCK_DATABASE_URL"] = self.database_url
        if self.max_connections:
            env["STOCK_REDIS_MAX_CONNECTIONS"] = str(self.max_connections)
        return env

    def command(self, port: int) -> list[str]:
        """daphne as the chapter deploys it."""
        daphne = str(Path(sys.executable).parent / "daphne")
        return [daphne, "-b", "127.0.0.1", "-p", str(port),
                "loadtest.bench.stock.asgi:application"]

    def prepare(self) -> None:
        """Create the database (the session script migrates)."""
        if self.database_url:
            self._admin(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)')
            self._admin(f'CREATE DATABASE "{self.database_name}"')
        self.cookies(1)

    def stop(self) -> None:
        """Stop everything, then drop its PostgreSQL database."""
        super().stop()
        if self.database_url:
            self._admin(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)')

    def cookies(self, count: int, log=print) -> list[str]:
        """Users bench0001.. with one database session each."""
        if len(self._cookies) >= count:
            return self._cookies[:count]
        result = subprocess.run([sys.executable, "-m", "loadtest.bench.stock.sessions",
                                 str(count)], env=self.env(), cwd=REPO, capture_output=True,
                                text=True, check=False)
        if result.returncode:
            raise RuntimeError(f"stock sessions failed: {result.stderr[-2000:]}")
        self._cookies = json.loads(result.stdout.strip().splitlines()[-1])
        return self._cookies

    raised_pool = 1000  # enough for the benchmark's connect phase

    def raise_pool(self) -> None:
        """Restart the WebSocket processes with redis-py's pool limit raised."""
        self.max_connections = self.raised_pool
        self.restart_ws()

    def check_session_queries(self) -> dict:
        """The same check as ours, with the stock settings (database sessions)."""
        code = _SESSION_CHECK % {"key": self._cookies[0]}
        result = subprocess.run([sys.executable, "-m", "django", "shell", "-c", code],
                                env=self.env(), cwd=REPO, capture_output=True, text=True,
                                check=False)
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": (result.stdout + result.stderr)[-500:]}


class Ceiling(_Processes):
    """The minimal websockets + Redis pub/sub broadcaster."""

    name = "ceiling"

    def command(self, port: int) -> list[str]:
        """python -m loadtest.bench.ceiling."""
        return [sys.executable, "-m", "loadtest.bench.ceiling", "--port", str(port),
                "--redis", self.redis.url]

    def cookies(self, count: int, log=print) -> list[str]:
        """Any cookie is accepted; distinct ones spread sockets over the processes."""
        return [f"ceiling-session-{i:05d}" for i in range(1, count + 1)]

    def check_session_queries(self) -> dict:
        """No sessions at all."""
        return {}
