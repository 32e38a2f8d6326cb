"""The whole chanfleet topology on one machine, run by supervisor: `make run` and the tests.

Redis master + replica + three sentinels, two uvicorn (ws) and two gunicorn (http) processes
started through deploy/entrypoint.sh, nginx in front, and Prometheus with Debian's nginx and
Redis exporters when they are installed. Everything lives under one state folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from deploy.nginx import render as nginx_render
from deploy.processes.nginx import nginx_command, write_nginx_conf
from deploy.processes.redis_nodes import redis_command
from deploy.sentinel import render as sentinel_render

REPO = Path(__file__).resolve().parents[2]


def database_url_named(url: str, name: str) -> str:
    """DATABASE_URL pointing at database `name` on the same server, its options kept.

    Query parameters such as `sslmode` or `options` (server settings for the session) belong
    to the connection, not to one database, so they carry over.
    """
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@dataclasses.dataclass(frozen=True)
class Ports:
    """Every port of the topology; `make run` uses the defaults, tests shift them."""

    nginx: int = 8000
    nginx_status: int = 8090
    ws: tuple[int, ...] = (8101, 8102)
    http: tuple[int, ...] = (8201, 8202)
    # Each process's loopback-only listener of the drain and status endpoints (INTERNAL_PORT),
    # ten above its public port: tests shift whole plans by multiples of 500, never onto these.
    ws_internal: tuple[int, ...] = (8111, 8112)
    http_internal: tuple[int, ...] = (8211, 8212)
    redis_master: int = 6380
    redis_replica: int = 6381
    sentinels: tuple[int, ...] = (26380, 26381, 26382)
    prometheus: int = 9091
    nginx_exporter: int = 9113
    redis_exporter: int = 9121

    def shifted(self, offset: int) -> Ports:
        """The same plan moved by offset (tests run beside a developer's `make run`)."""
        return Ports(**{
            f.name: (tuple(p + offset for p in v) if isinstance(v, tuple) else v + offset)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        })

    def internal(self, port: int) -> int:
        """The internal listener's port of the WebSocket or HTTP process serving `port`."""
        return dict(zip(self.ws + self.http, self.ws_internal + self.http_internal,
                        strict=True))[port]

    def mapping(self, other: Ports) -> dict[int, int]:
        """Map each default port to the corresponding port of another plan."""
        result = {}
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, tuple):
                result.update(zip(mine, theirs, strict=True))
            else:
                result[mine] = theirs
        return result


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )


class Topology:
    """Render, start, inspect and stop the local topology."""

    def __init__(self, state_dir: Path | str = REPO / "var" / "run", ports: Ports = Ports(),
                 env: dict[str, str] | None = None, monitoring: bool | None = None,
                 ws_env: dict[str, str] | None = None,
                 nginx_values: dict[str, str] | None = None, shards: int = 1):
        self.state = Path(state_dir).resolve()
        self.ports = ports
        self.extra_env = env or {}
        self.ws_env = ws_env or {}
        # Placeholder values of nginx.conf.tmpl on top of the local ones (the benchmark's).
        self.nginx_values = nginx_values or {}
        self.monitoring = (_tool("prometheus") is not None) if monitoring is None else monitoring
        self.redis = sentinel_render.LocalTopology(
            master_port=ports.redis_master,
            replica_port=ports.redis_replica,
            sentinel_ports=ports.sentinels,
            shards=shards,
        )
        self.conf = self.state / "supervisord.conf"
        self.redis_restart_delay = 5
        # A topology started by tests gets its own PostgreSQL database (when DATABASE_URL
        # names one), so runs never see each other's rooms; `make run` uses DATABASE_URL as is.
        self.own_database = self.state != (REPO / "var" / "run").resolve()

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        """The public URL, through nginx."""
        return f"http://127.0.0.1:{self.ports.nginx}"

    @property
    def ws_url(self) -> str:
        """The public WebSocket base URL, through nginx."""
        return f"ws://127.0.0.1:{self.ports.nginx}"

    @property
    def prometheus_url(self) -> str:
        """Prometheus' URL (when monitoring runs)."""
        return f"http://127.0.0.1:{self.ports.prometheus}"

    def ws_programs(self) -> list[str]:
        """Supervisor names of the WebSocket processes."""
        return [f"ws-{i}" for i in range(1, len(self.ports.ws) + 1)]

    def http_programs(self) -> list[str]:
        """Supervisor names of the HTTP processes."""
        return [f"http-{i}" for i in range(1, len(self.ports.http) + 1)]

    # ------------------------------------------------------------------ environment
    def app_env(self) -> dict[str, str]:
        """The environment every app process gets (the settings of .env.example)."""
        secret_file = self.state / "secret_key"
        if not secret_file.exists():
            secret_file.parent.mkdir(parents=True, exist_ok=True)
            secret_file.write_text(secrets.token_urlsafe(50))
            secret_file.chmod(0o600)
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports.sentinels)
        origins = f"http://127.0.0.1:{self.ports.nginx},http://localhost:{self.ports.nginx}"
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "SECRET_KEY": secret_file.read_text().strip(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "CSRF_TRUSTED_ORIGINS": origins,
            "HTTPS": "false",
            "REDIS_SENTINELS": hosts,
            "REDIS_MASTER_NAME": self.redis.master_name,
            "REDIS_PASSWORD": self.redis.password,
            "REDIS_SENTINEL_PASSWORD": self.redis.sentinel_password,
            # The channel layer's shards: every master the sentinels watch (one: the default).
            "REDIS_SHARDS": ",".join(name for name, _, _ in self.redis.masters),
            "SQLITE_PATH": str(self.state / "chanfleet.sqlite3"),
            "SERVICE_TOKEN": "chanfleet-local-service-token",
            "STATIC_ROOT": str(REPO / "staticfiles"),
            "PYTHONUNBUFFERED": "1",
            # Never inherit a test runner's settings module (app.settings_test).
            "DJANGO_SETTINGS_MODULE": "app.settings",
        }
        for name in ("DATABASE_URL", "LOG_LEVEL", "CHANNEL_GROUP_FANOUT"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        if env.get("DATABASE_URL") and self.own_database:
            env["DATABASE_URL"] = self._database_url(env["DATABASE_URL"])
        env.update(self.extra_env)
        return env

    def _database_name(self) -> str:
        return "chanfleet_" + hashlib.sha1(str(self.state).encode()).hexdigest()[:12]

    def _database_url(self, url: str) -> str:
        return database_url_named(url, self._database_name())

    def _admin(self, sql: str) -> None:
        """Run one statement on the server of DATABASE_URL (create/drop our database)."""
        import psycopg

        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as connection:
            connection.execute(sql)

    def create_database(self) -> None:
        """Create this topology's own PostgreSQL database, if it uses one."""
        if os.environ.get("DATABASE_URL", "").startswith("postgres") and self.own_database:
            name = self._database_name()
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self._admin(f'CREATE DATABASE "{name}"')

    def drop_database(self) -> None:
        """Drop this topology's own PostgreSQL database, if it made one."""
        if os.environ.get("DATABASE_URL", "").startswith("postgres") and self.own_database:
            self._admin(f'DROP DATABASE IF EXISTS "{self._database_name()}" WITH (FORCE)')

    # ------------------------------------------------------------------ rendering
    def render(self) -> None:
        """Write every config of the topology into the state folder."""
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "logs").mkdir(exist_ok=True)
        redis_dir = self.state / "redis"
        if redis_dir.exists():
            shutil.rmtree(redis_dir)  # sentinels rewrite configs: start from the templates
        redis_dir.mkdir()
        sentinel_render.write_local_configs(redis_dir, topology=self.redis)
        nginx_dir = self.state / "nginx"
        values = nginx_render.local_values(
            nginx_dir, self.ports.nginx, self.ports.ws, self.ports.http, self.ports.nginx_status
        )
        write_nginx_conf(nginx_dir, {**values, **self.nginx_values})
        if self.monitoring:
            self._render_prometheus()
        self.conf.write_text(self._supervisord_conf())

    def _render_prometheus(self) -> None:
        source = REPO / "monitoring" / "prometheus.yml"
        config = yaml.safe_load(source.read_text())
        ports = Ports().mapping(self.ports)

        def move(target: str) -> str:
            host, _, port = target.rpartition(":")
            return f"{host}:{ports.get(int(port), int(port))}" if port.isdigit() else target

        def walk(node):
            if isinstance(node, dict):
                return {k: ([move(t) for t in v] if k == "targets" else walk(v))
                        for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v) for v in node]
            if isinstance(node, str) and node.startswith("redis://"):
                return "redis://" + move(node[len("redis://"):])
            return node

        config = walk(config)
        config["rule_files"] = [
            str((source.parent / f).resolve()) for f in config.get("rule_files", [])
        ]
        (self.state / "prometheus").mkdir(exist_ok=True)
        (self.state / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _program(self, name: str, command: str, priority: int, env: dict[str, str] | None = None,
                 stopsignal: str = "TERM", stopwait: int = 15) -> str:
        lines = [
            f"[program:{name}]",
            f"command={command}",
            f"directory={REPO}",
            f"priority={priority}",
            "autostart=true",
            "autorestart=true",
            "startsecs=1",
            "startretries=20",
            f"stopsignal={stopsignal}",
            f"stopwaitsecs={stopwait}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={self.state / 'logs' / (name + '.log')}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=1",
        ]
        if env:
            lines.append("environment=" + ",".join(f'{k}="{v}"' for k, v in env.items()))
        return "\n".join(lines) + "\n"

    def _supervisord_conf(self) -> str:
        state, redis_dir = self.state, self.state / "redis"
        sections = [
            f"[unix_http_server]\nfile={state / 'supervisor.sock'}\nchmod=0700\n",
            f"[supervisord]\nlogfile={state / 'logs' / 'supervisord.log'}\n"
            f"pidfile={state / 'supervisord.pid'}\nchildlogdir={state / 'logs'}\n"
            f"directory={REPO}\nnodaemon=false\nminfds=4096\n",
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
            f"[supervisorctl]\nserverurl=unix://{state / 'supervisor.sock'}\n",
        ]
        for shard in range(self.redis.shards):
            for priority, name in enumerate(self.redis.node_names(shard), start=10):
                # A crashed data node comes back after a pause, like a Kubernetes restart
                # back-off: an instant restart would beat Sentinel's down-after and hide the
                # failover (and bring the node back as master with an old snapshot).
                marker = redis_dir / name / ".started"
                command = (f"/bin/sh -c 'if [ -e {marker} ]; then sleep "
                           f"{self.redis_restart_delay}; fi; touch {marker}; "
                           f"exec {redis_command(redis_dir / f'{name}.conf')}'")
                sections.append(self._program(f"redis-{name}", command, priority))
        for i in range(1, len(self.ports.sentinels) + 1):
            sections.append(self._program(
                f"sentinel-{i}", redis_command(redis_dir / f"sentinel-{i}.conf", sentinel=True), 12
            ))
        entry = REPO / "deploy" / "entrypoint.sh"
        for name, port in zip(self.ws_programs(), self.ports.ws, strict=True):
            env = {"PORT": str(port), "INTERNAL_PORT": str(self.ports.internal(port)),
                   "BIND": "127.0.0.1", **self.ws_env}
            sections.append(self._program(name, f"{entry} ws", 20, env, stopwait=20))
        for name, port in zip(self.http_programs(), self.ports.http, strict=True):
            env = {
                "PORT": str(port), "INTERNAL_PORT": str(self.ports.internal(port)),
                "BIND": "127.0.0.1",
                "PROMETHEUS_MULTIPROC_DIR": str(state / f"metrics-{name}"),
            }
            sections.append(self._program(name, f"{entry} http", 20, env, stopwait=30))
        sections.append(self._program(
            "nginx", nginx_command(state / "nginx" / "nginx.conf", state / "nginx"), 30,
            stopsignal="QUIT",
        ))
        if self.monitoring:
            sections.append(self._program(
                "prometheus",
                f"{_tool('prometheus')} --config.file={state / 'prometheus.yml'} "
                f"--storage.tsdb.path={state / 'prometheus'} "
                f"--web.listen-address=127.0.0.1:{self.ports.prometheus} "
                "--storage.tsdb.retention.time=2d",
                40,
            ))
            if _tool("prometheus-nginx-exporter"):
                sections.append(self._program(
                    "nginx-exporter",
                    f"{_tool('prometheus-nginx-exporter')} "
                    f"-nginx.scrape-uri=http://127.0.0.1:{self.ports.nginx_status}/nginx_status "
                    f"-web.listen-address=127.0.0.1:{self.ports.nginx_exporter}",
                    40,
                ))
            if _tool("prometheus-redis-exporter"):
                sections.append(self._program(
                    "redis-exporter",
                    f"{_tool('prometheus-redis-exporter')} "
                    f"-web.listen-address=127.0.0.1:{self.ports.redis_exporter} "
                    f"-redis.addr=redis://127.0.0.1:{self.ports.redis_master}",
                    40, env={"REDIS_PASSWORD": self.redis.password},
                ))
        return "\n".join(sections)

    # ------------------------------------------------------------------ lifecycle
    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run `manage.py` with the topology's environment."""
        return subprocess.run(
            [sys.executable, str(REPO / "manage.py"), *args],
            env={**os.environ, **self.app_env()}, cwd=REPO, check=check,
            capture_output=True, text=True,
        )

    def up(self, timeout: float = 90) -> None:
        """Migrate, start supervisord with every process, and wait until all are ready."""
        if self.running():
            raise RuntimeError(f"already running (state in {self.state}); `make stop` first")
        self.render()
        self.create_database()
        migrated = self.manage("migrate", "--noinput", check=False)
        if migrated.returncode:
            raise RuntimeError(f"migrations failed:\n{migrated.stdout}\n{migrated.stderr}")
        collected = self.manage("collectstatic", "--noinput", check=False)
        if collected.returncode:
            raise RuntimeError(f"collectstatic failed:\n{collected.stderr}")
        subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
            env={**os.environ, **self.app_env()}, cwd=REPO, check=True,
        )
        self.wait_ready(timeout)
        # After Redis is up: creating the demo room publishes a live update through it.
        self.manage("seed_demo")

    def running(self) -> bool:
        """Whether this state folder's supervisord is alive."""
        pid = self.supervisord_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def supervisord_pid(self) -> int | None:
        """The PID of supervisord, from its pid file."""
        try:
            return int((self.state / "supervisord.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def ctl(self, *args: str) -> str:
        """Run supervisorctl against this topology and return its output."""
        result = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            capture_output=True, text=True, cwd=REPO,
        )
        return result.stdout + result.stderr

    def pid(self, program: str) -> int:
        """The PID of one program (0 when it is not running)."""
        out = self.ctl("pid", program).strip()
        return int(out) if out.isdigit() else 0

    def kill(self, program: str, sig: int = signal.SIGKILL) -> int:
        """Send a signal to one program's process by PID (supervisor restarts it)."""
        pid = self.pid(program)
        if pid:
            os.kill(pid, sig)
        return pid

    def get(self, url: str, timeout: float = 2) -> tuple[int, bytes]:
        """GET a URL; returns (status, body), status 0 when unreachable."""
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (OSError, urllib.error.URLError):
            return 0, b""

    def wait_ready(self, timeout: float = 90, programs: list[str] | None = None) -> None:
        """Wait until every app process answers /readyz with 200 and nginx routes."""
        deadline = time.monotonic() + timeout
        targets = {
            name: f"http://127.0.0.1:{port}/readyz"
            for name, port in [*zip(self.ws_programs(), self.ports.ws, strict=True),
                               *zip(self.http_programs(), self.ports.http, strict=True)]
            if programs is None or name in programs
        }
        if programs is None:
            targets["nginx"] = f"{self.url}/healthz"
        pending = dict(targets)
        while pending:
            for name, url in list(pending.items()):
                if self.get(url)[0] == 200:
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"not ready after {timeout}s: {sorted(pending)}\n{self.ctl('status')}\n"
                    + self.log_tails(sorted(pending))
                )
            time.sleep(0.3)

    def log_tails(self, programs: list[str], lines: int = 15) -> str:
        """The last lines of some programs' logs, for error messages."""
        out = []
        for name in programs:
            path = self.state / "logs" / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(out)

    def down(self, timeout: float = 60) -> None:
        """Stop supervisord and everything it runs, by PID."""
        pid = self.supervisord_pid()
        if pid is None or not self.running():
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.running():
            os.kill(pid, signal.SIGKILL)
        self.drop_database()

    def redis_master(self, shard: int = 0) -> tuple[str, int]:
        """The master address of a shard the sentinels agree on now."""
        import redis

        for port in self.ports.sentinels:
            try:
                client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1,
                                     decode_responses=True,
                                     password=self.redis.sentinel_password)
                host, master_port = client.sentinel_get_master_addr_by_name(
                    self.redis.masters[shard][0])
                return host, int(master_port)
            except Exception:
                continue
        raise RuntimeError("no sentinel answered")

    def wait_new_master(self, old: tuple[str, int], timeout: float,
                        shard: int = 0) -> tuple[str, int]:
        """Wait until the sentinels name another master of a shard; raise with their logs if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                master = self.redis_master(shard)
            except RuntimeError:
                master = old
            if master != old:
                return master
            time.sleep(0.2)
        sentinels = [f"sentinel-{i}" for i in range(1, len(self.ports.sentinels) + 1)]
        # The elections (votes, aborts, TILT) are in the sentinels' logs and nowhere else.
        raise RuntimeError(f"the sentinels named no new master for {old} within {timeout} s\n"
                           + self.log_tails(sentinels, lines=25))

    def redis_program(self, port: int) -> str:
        """The supervisor program serving a Redis port."""
        programs = {}
        for shard, (_, master_port, replica_port) in enumerate(self.redis.masters):
            master, replica = self.redis.node_names(shard)
            programs[master_port], programs[replica_port] = f"redis-{master}", f"redis-{replica}"
        return programs[port]
