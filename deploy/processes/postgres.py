"""PostgreSQL servers of a test's own: Debian's binaries, a data directory, a loopback port.

What deploy/local/postgres.sh does for `make postgres`, as a child process the caller owns:
initdb once (trust auth, UTF-8, C locale), the server in the foreground on 127.0.0.1 only
(no Unix socket), waited for until it answers a query, a database created, stopped by PID. As
root the server runs as the `postgres` account: initdb and postgres refuse to run as root.
Nothing here touches any other PostgreSQL on the machine (pg_lsclusters, `make postgres`).

The drills stop it as an outage would: `shutdown()` (fast, smart or immediate, the server's
own modes) and `start()` again on the same data and port, or `freeze()`/`thaw()` (SIGSTOP and
SIGCONT of the postmaster and every backend) for a server that hangs instead of going away.

Usage::

    with PostgresServer() as pg:
        os.environ["DATABASE_URL"] = pg.url
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg

from deploy.processes.children import (
    HOST,
    BinaryMissing,
    Child,
    ProcessError,
    WorkDir,
    account,
    free_port,
    poll_until,
)

# Set to a PostgreSQL bin directory (initdb, postgres) to run another build than Debian's newest.
PG_BIN_ENV = "CHANFLEET_PG_BIN"
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
MISSING_BINARY_HELP = (
    "PostgreSQL's initdb and postgres were not found (${env}, " + DEBIAN_BIN_GLOB + "). "
    "Debian: apt-get install postgresql (`make postgres` installs it when run as root)."
).replace("{env}", PG_BIN_ENV)
OWNER = "postgres"
PORT_ATTEMPTS = 4
# The server's shutdown modes and the postmaster signal that asks for each.
SHUTDOWN_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
# A throwaway server: durability off (the data is deleted with the work directory).
DEFAULT_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class PostgresBinaryMissing(BinaryMissing):
    """PostgreSQL's server binaries are not installed; the message says how to get them."""


class PostgresError(ProcessError):
    """The server failed to initialise, start, answer or stop in time."""


class PortInUse(PostgresError):
    """The free port picked for the server was taken before it could bind; retry with another."""


def find_bindir() -> Path:
    """Return the directory of initdb and postgres ($CHANFLEET_PG_BIN, else Debian's newest)."""
    candidates = [os.environ.get(PG_BIN_ENV) or ""]
    debian = sorted(Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")),
                    key=lambda p: [int(x) if x.isdigit() else 0
                                   for x in p.parent.name.split(".")])
    candidates += [str(p) for p in reversed(debian)]
    for candidate in candidates:
        if candidate and all(os.access(Path(candidate) / name, os.X_OK)
                             for name in ("initdb", "postgres")):
            return Path(candidate)
    raise PostgresBinaryMissing(MISSING_BINARY_HELP)


def server_owner() -> str | None:
    """Return the account the server must run as: `postgres` when we are root, else ourselves."""
    return OWNER if os.geteuid() == 0 else None


def postgres_url(port: int, database: str, host: str = HOST) -> str:
    """Return the DATABASE_URL of a database on a trust-auth server (user postgres)."""
    return f"postgres://{OWNER}@{host}:{port}/{database}"


def process_tree(pid: int) -> list[int]:
    """Return pid and every live descendant of it, parents first (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name (field 2) may hold spaces and parentheses: split after its end.
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        tree.append(current)
        queue.extend(children.get(current, []))
    return tree


class PostgresServer:
    """One PostgreSQL server on a loopback port with its data directory in a work directory.

    ``port`` defaults to a free one (kept across restarts). ``base_dir`` keeps data and log
    there (it must be reachable by the `postgres` account when run as root); by default a
    temporary directory is used and removed by stop(). ``settings`` are server settings
    (``-c name=value``) on top of DEFAULT_SETTINGS.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        database: str = "test",
        startup_timeout: float = 60.0,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.host = HOST
        self.database = database
        self._port = port
        self._fixed_port = port is not None
        self._workdir = WorkDir(base_dir, "chanfleet-postgres-")
        self._startup_timeout = startup_timeout
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._owner = server_owner()
        self._child: Child | None = None
        self._frozen: list[int] = []

    # ------------------------------------------------------------------ addresses
    @property
    def port(self) -> int:
        """Return the port the server listens on (a free one is known only after start())."""
        if self._port is None:
            raise RuntimeError("PostgresServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """Return the DATABASE_URL of the server's database."""
        return postgres_url(self.port, self.database, self.host)

    @property
    def admin_url(self) -> str:
        """Return the URL of the `postgres` maintenance database (to create or drop others)."""
        return postgres_url(self.port, "postgres", self.host)

    @property
    def pid(self) -> int | None:
        """Return the postmaster's PID while it runs, else None."""
        return self._child.pid if self._child else None

    @property
    def data_dir(self) -> Path:
        """Return the data directory (inside the work directory)."""
        return self._workdir.create() / "data"

    @property
    def log_path(self) -> Path:
        """Return the server log (initdb's and every start's output)."""
        return self._workdir.create() / "postgres.log"

    def connect(self, **kwargs) -> psycopg.Connection:
        """Return a new psycopg connection to the server's database (kwargs passed through)."""
        return psycopg.connect(self.url, **{"connect_timeout": 5, **kwargs})

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the server log, for error messages."""
        if self._child is not None:
            return self._child.log_tail(lines)
        return f"--- postgres: not started ({self.log_path})"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PostgresServer:
        """Initialise (first time only), start the server, wait until it answers; create the db.

        Called again after shutdown(), it restarts on the same data directory and port.
        """
        if self.pid is not None:
            raise RuntimeError("PostgresServer already running")
        bindir = find_bindir()
        workdir = self._workdir.create()
        try:
            if self._owner is not None:
                shutil.chown(workdir, self._owner, self._owner)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bindir)
            self._launch(bindir)
            self._create_database()
        except BaseException:
            if self._child is not None:
                self._child.kill()
            self._child = None
            raise
        return self

    def _initdb(self, bindir: Path) -> None:
        argv = [str(bindir / "initdb"), "--pgdata", str(self.data_dir), "--username", OWNER,
                "--auth", "trust", "--encoding", "UTF8", "--locale", "C.UTF-8", "--no-sync",
                "--no-instructions"]
        with open(self.log_path, "ab") as log:
            done = subprocess.run(argv, cwd=self._workdir.path, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log, check=False, **account(self._owner))
        if done.returncode:
            tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
            raise PostgresError(f"initdb failed with code {done.returncode}:\n" + "\n".join(tail))

    def _argv(self, bindir: Path, port: int) -> list[str]:
        settings = {**self._settings, "listen_addresses": self.host,
                    "unix_socket_directories": ""}
        argv = [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(port)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _launch(self, bindir: Path) -> None:
        attempts = 1 if self._fixed_port else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else free_port(self.host)
            self._child = Child("postgres", self._argv(bindir, port), self.log_path,
                                cwd=self._workdir.path, stop_signal=SHUTDOWN_SIGNALS["fast"],
                                user=self._owner).start()
            try:
                self._wait_ready(port)
            except PortInUse:
                self._child.kill()
                self._child = None
                if attempt == attempts:
                    raise
                continue
            self._port = port
            return

    def _wait_ready(self, port: int) -> None:
        url = postgres_url(port, "postgres", self.host)

        def check() -> bool | None:
            assert self._child is not None
            code = self._child.exit_code()
            if code is not None:
                tail = self._child.log_tail()
                if "could not bind" in tail or "Address already in use" in tail:
                    raise PortInUse(f"postgres: port {port} was taken\n{tail}")
                raise PostgresError(f"postgres exited with code {code} during startup\n{tail}")
            with psycopg.connect(url, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
            return True

        poll_until(f"postgres on port {port} to answer a query", check, self._startup_timeout,
                   self.log_tail, retry_on=(psycopg.OperationalError, OSError),
                   error=PostgresError)

    def _create_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [self.database]).fetchone()
            if not exists:
                connection.execute(f'CREATE DATABASE "{self.database}"')

    def shutdown(self, mode: str = "fast", timeout: float = 30.0) -> float:
        """Stop the server in one of its shutdown modes, keeping the data; return the seconds taken.

        fast: connections are cut at once, transactions rolled back (a restart, a failover);
        smart: waits for every client to disconnect; immediate: exits without a checkpoint
        (crash recovery on the next start). SIGKILL if it has not exited within timeout.
        """
        if self._child is None:
            return 0.0
        self.thaw()
        started = time.monotonic()
        self._child.signal(SHUTDOWN_SIGNALS[mode])
        self._child.reap(started + timeout)
        self._child = None
        return time.monotonic() - started

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster and every backend (a hung server); return the stopped PIDs."""
        if self.pid is None:
            raise RuntimeError("PostgresServer is not running")
        stopped = []
        for pid in process_tree(self.pid):
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            stopped.append(pid)
        self._frozen = stopped
        return stopped

    def thaw(self) -> None:
        """SIGCONT whatever freeze() stopped (children first, the postmaster last)."""
        for pid in reversed(self._frozen):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self._frozen = []

    def stop(self) -> None:
        """Shut the server down (fast, then SIGKILL) and remove its temporary directory."""
        self.shutdown("fast", timeout=15)
        self._workdir.remove()

    def __enter__(self) -> PostgresServer:
        """Start on entering the context."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop on leaving the context."""
        self.stop()
