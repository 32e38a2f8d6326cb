"""redis-server data nodes and sentinels: the binary, their command lines, running them by PID.

Configs come from deploy/sentinel/render.py (the chart's templates), always with a password:
there is no no-auth mode. A node is started as a child process with its config in a work
directory, waited for until it answers an authenticated PING, and stopped by PID.
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from deploy.processes.children import (
    HOST,
    Address,
    BinaryMissing,
    Child,
    ProcessError,
    WorkDir,
    find_program,
    free_port,
    poll_until,
)
from deploy.sentinel.render import render_redis_conf

# Set to a redis-server path to run another build than the one on PATH.
REDIS_SERVER_ENV = "CHANFLEET_REDIS_SERVER"
MISSING_BINARY_HELP = (
    "redis-server was not found on PATH (or ${env}). The test suite runs real Redis and "
    "Sentinel processes; `make test` installs them (Debian: apt-get install redis-server "
    "redis-sentinel)."
).replace("{env}", REDIS_SERVER_ENV)
PORT_ATTEMPTS = 4


class RedisBinaryMissing(BinaryMissing):
    """redis-server is not installed; the message says how to get it."""


class RedisProcessError(ProcessError):
    """A Redis or Sentinel process failed to start or to reach the expected state in time."""


class PortInUse(RedisProcessError):
    """The free port picked for a process was taken before it could bind; retry with new ports."""


def find_redis_server() -> str:
    """Return the redis-server executable path, or raise RedisBinaryMissing explaining the fix."""
    return find_program("redis-server", REDIS_SERVER_ENV, MISSING_BINARY_HELP, RedisBinaryMissing)


def redis_argv(
    conf_path: str | os.PathLike[str], *, sentinel: bool = False, extra: Sequence[str] = ()
) -> list[str]:
    """Return the command line of a data node (or, with sentinel, a sentinel) for a config."""
    # A sentinel is redis-server in sentinel mode: Debian's redis-sentinel is the same binary.
    argv = [find_redis_server(), os.fspath(conf_path)]
    if sentinel:
        argv.append("--sentinel")
    return argv + list(extra)


def redis_command(
    conf_path: str | os.PathLike[str], *, sentinel: bool = False, extra: Sequence[str] = ()
) -> str:
    """Return redis_argv() as one shell-quoted command line (for supervisor's `command=`)."""
    return shlex.join(redis_argv(conf_path, sentinel=sentinel, extra=extra))


def write_conf(path: str | os.PathLike[str], text: str) -> Path:
    """Write one rendered config readable only by its owner (it holds passwords); return it."""
    target = Path(path)
    target.write_text(text)
    target.chmod(0o600)
    return target


def redis_client(address: Address, password: str, timeout: float = 1.0) -> redis.Redis:
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


class RedisNode:
    """One redis-server (data node or sentinel) with its config, data dir and log in workdir."""

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
        self.child: Child | None = None

    @property
    def address(self) -> Address:
        """Return (host, port) of this process."""
        return (HOST, self.port)

    @property
    def pid(self) -> int | None:
        """Return the PID while the process runs, else None."""
        return self.child.pid if self.child else None

    def client(self) -> redis.Redis:
        """Return an authenticated client for this process."""
        return redis_client(self.address, self.password)

    def launch(self, conf: str, extra_args: Sequence[str] = ()) -> None:
        """Write a fresh config (the process may rewrite it) and start the process."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_conf(self.conf_path, conf)
        argv = redis_argv(self.conf_path, sentinel=self.sentinel, extra=extra_args)
        self.child = Child(self.name, argv, self.log_path, cwd=self.workdir).start()

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the process log, for error messages."""
        if self.child is None:
            return f"--- {self.name}: not started"
        return self.child.log_tail(lines)

    def check_alive(self) -> None:
        """Raise with the log tail if the process has exited."""
        assert self.child is not None
        code = self.child.exit_code()
        if code is None:
            return
        tail = self.log_tail()
        if "Address already in use" in tail:
            raise PortInUse(f"{self.name}: port {self.port} was taken\n{tail}")
        raise RedisProcessError(f"{self.name} exited with code {code} during startup\n{tail}")

    def wait_ready(self, timeout: float) -> None:
        """Wait until the process answers an authenticated PING (fail fast if it exits)."""

        def check() -> bool | None:
            self.check_alive()
            with self.client() as client:
                return True if client.ping() else None

        poll_until(f"{self.name} on port {self.port} to answer PING", check, timeout,
                   self.log_tail, retry_on=(redis.RedisError, OSError), error=RedisProcessError)

    def kill(self) -> None:
        """SIGKILL the process by PID and reap it (simulates a crash)."""
        if self.child is not None:
            self.child.kill()

    def stop(self, grace: float = 5.0) -> None:
        """Stop by PID: SIGTERM, wait up to grace seconds, then SIGKILL; always reap."""
        if self.child is not None:
            self.child.stop(grace)


class RedisServer:
    """A standalone, password-protected, non-persistent redis-server on a loopback port.

    ``password`` defaults to a random token; there is deliberately no no-auth mode. ``port``
    defaults to a free one. ``base_dir`` keeps config and log there (and they survive stop); by
    default a temp dir is used and removed. ``extra_args`` are appended to the command line.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        port: int | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = HOST
        self.password = password or secrets.token_hex(16)
        self._fixed_port = port
        self._workdir = WorkDir(base_dir, "chanfleet-redis-")
        self._startup_timeout = startup_timeout
        self._extra_args = list(extra_args)
        self._node: RedisNode | None = None

    @property
    def port(self) -> int:
        """Return the port the server listens on (a free one is known only after start())."""
        if self._node is not None:
            return self._node.port
        if self._fixed_port is not None:
            return self._fixed_port
        raise RuntimeError("RedisServer is not started")

    @property
    def url(self) -> str:
        """Return redis://:PASSWORD@127.0.0.1:PORT/0 (password URL-quoted)."""
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Return the server PID while it runs."""
        return self._node.pid if self._node else None

    @property
    def log_path(self) -> Path:
        """Return the path of the server's log file."""
        if self._node is None:
            raise RuntimeError("RedisServer is not started")
        return self._node.log_path

    def pids(self) -> list[int]:
        """Return the PID of the running server process (empty when stopped)."""
        return [self._node.pid] if self._node and self._node.pid else []

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return a synchronous redis-py client for this server (kwargs passed through)."""
        return redis.Redis.from_url(self.url, **kwargs)

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; retry on a port race."""
        if self._node is not None:
            raise RuntimeError("RedisServer already started")
        workdir = self._workdir.create()
        attempts = 1 if self._fixed_port else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._fixed_port or free_port()
            node = RedisNode("redis", workdir, port, self.password)
            conf = render_redis_conf(port=port, data_dir=node.data_dir, password=self.password)
            # No persistence for a throwaway server: no snapshots, no AOF, nothing on stop.
            node.launch(conf, ["--save", "", "--appendonly", "no", *self._extra_args])
            try:
                node.wait_ready(self._startup_timeout)
            except PortInUse:
                node.stop()
                if attempt == attempts:
                    self._workdir.remove()
                    raise
                continue
            except BaseException:
                node.stop()
                self._workdir.remove()
                raise
            self._node = node
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL) and remove its temp dir."""
        if self._node is not None:
            self._node.stop()
            self._node = None
        self._workdir.remove()

    def __enter__(self) -> RedisServer:
        """Start on entering the context."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop on leaving the context."""
        self.stop()
