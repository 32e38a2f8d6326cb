"""nginx: the binary, its config (deploy/nginx/render.py), its command line, running it by PID.

``Nginx(values)`` renders the template into a state directory (a temporary one unless given);
``Nginx(conf_path)`` runs an already rendered file. Either way nginx runs in the foreground
(the template says ``daemon off``) as a child process in its own session, is waited for until
its listen port accepts, and is stopped by PID: SIGQUIT (graceful), then SIGKILL to its process
group (master and workers), then reaped. It binds only what the config says.

Usage::

    with Nginx.local(free_port(), ws_ports=[...], http_ports=[...], status_port=free_port()) as n:
        urllib.request.urlopen(n.url + "/")
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from deploy.nginx.render import local_values, prepare_state_dir, render_nginx_conf
from deploy.processes.children import (
    HOST,
    BinaryMissing,
    Child,
    ProcessError,
    accepts,
    find_program,
    poll_until,
)

# Set to an nginx path to run another build than the one on PATH or in /usr/sbin.
NGINX_ENV = "CHANFLEET_NGINX"
MISSING_BINARY_HELP = (
    "nginx was not found (${env}, PATH, /usr/sbin/nginx). The routing tests run a real nginx; "
    "Debian: apt-get install nginx-light (needs stub_status, realip and upstream hash)."
).replace("{env}", NGINX_ENV)

_LISTEN = re.compile(r"^\s*listen\s+([^\s;]+)", re.MULTILINE)


class NginxBinaryMissing(BinaryMissing):
    """nginx is not installed; the message says how to get it."""


class NginxError(ProcessError):
    """nginx failed its config test, failed to start, or did not listen in time."""


def find_nginx() -> str:
    """Return the nginx executable path, or raise NginxBinaryMissing explaining the fix."""
    return find_program("nginx", NGINX_ENV, MISSING_BINARY_HELP, NginxBinaryMissing)


def parse_listen(listen: str) -> tuple[str, int]:
    """Return (host, port) for an nginx `listen` value such as 127.0.0.1:8000 or 8080."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host = HOST
    elif host in ("", "*", "0.0.0.0"):
        host = HOST
    return host.strip("[]"), int(port)


def nginx_argv(
    conf_path: str | os.PathLike[str], prefix: str | os.PathLike[str], *options: str
) -> list[str]:
    """Return nginx's command line for a config with its own prefix (state) directory."""
    # `-e stderr`: errors before the config's own error_log is open reach the log we keep,
    # not the build's default /var/log/nginx path.
    return [find_nginx(), *options, "-p", f"{os.fspath(prefix)}/", "-e", "stderr",
            "-c", os.fspath(conf_path)]


def nginx_command(conf_path: str | os.PathLike[str], prefix: str | os.PathLike[str]) -> str:
    """Return nginx_argv() as one shell-quoted command line (for supervisor's `command=`)."""
    return shlex.join(nginx_argv(conf_path, prefix))


def write_nginx_conf(state_dir: str | os.PathLike[str], values: Mapping[str, object]) -> Path:
    """Create the state directory nginx needs and write nginx.conf rendered from values there."""
    state = prepare_state_dir(state_dir)
    conf = state / "nginx.conf"
    conf.write_text(render_nginx_conf(**values), encoding="utf-8")
    return conf


def nginx_test(conf_path: str | os.PathLike[str], prefix: str | os.PathLike[str]) -> str:
    """Run `nginx -t` on a config with its own prefix; return the output or raise NginxError."""
    argv = nginx_argv(conf_path, prefix, "-t", "-q")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise NginxError(f"nginx -t failed ({result.returncode}):\n{output}")
    return output


class Nginx:
    """One nginx master (plus its workers) serving a chanfleet config, as a context manager."""

    def __init__(
        self,
        config: str | os.PathLike[str] | Mapping[str, object],
        *,
        state_dir: str | os.PathLike[str] | None = None,
        address: tuple[str, int] | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        """Take render values (placeholder names) or the path of a rendered nginx.conf.

        With values, a missing STATE_DIR becomes ``state_dir`` or a fresh temporary directory
        (removed on stop), and missing ERROR_LOG / ACCESS_LOG become files in it. ``address``
        is where to wait for nginx to accept; by default the first `listen` of the config.
        """
        self._owned_dir: Path | None = None
        if isinstance(config, Mapping):
            values = dict(config)
            if "STATE_DIR" not in values:
                if state_dir is None:
                    self._owned_dir = Path(tempfile.mkdtemp(prefix="chanfleet-nginx-"))
                    state_dir = self._owned_dir
                values["STATE_DIR"] = str(Path(state_dir).absolute())
            self.state_dir = Path(os.fspath(values["STATE_DIR"]))
            values.setdefault("ERROR_LOG", str(self.state_dir / "error.log"))
            values.setdefault("ACCESS_LOG", str(self.state_dir / "access.log"))
            self.values: dict[str, object] | None = values
            self.conf_path = self.state_dir / "nginx.conf"
        else:
            self.values = None
            self.conf_path = Path(config).absolute()
            self.state_dir = Path(state_dir).absolute() if state_dir else self.conf_path.parent
        self._address = address
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.child: Child | None = None

    @classmethod
    def local(
        cls,
        listen_port: int,
        ws_ports: Sequence[int],
        http_ports: Sequence[int],
        status_port: int,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        **overrides: object,
    ) -> Nginx:
        """Return an (unstarted) Nginx for the local topology's values plus overrides.

        ``overrides`` are placeholder values on top of local_values(), e.g.
        ``WS_READ_TIMEOUT="3s"``. Without ``state_dir`` a temporary one is removed on stop.
        """
        owned = None if state_dir is not None else Path(tempfile.mkdtemp(prefix="chanfleet-nginx-"))
        state = Path(state_dir) if state_dir is not None else owned
        assert state is not None
        values = {
            **local_values(state, listen_port, ws_ports, http_ports, status_port),
            **overrides,
        }
        nginx = cls(values)
        nginx._owned_dir = owned
        return nginx

    @property
    def address(self) -> tuple[str, int]:
        """Return the (host, port) nginx is waited on: the public listener by default."""
        if self._address is None:
            match = _LISTEN.search(self.conf_path.read_text(encoding="utf-8"))
            if match is None:
                raise NginxError(f"no listen directive in {self.conf_path}")
            self._address = parse_listen(match.group(1))
        return self._address

    @property
    def url(self) -> str:
        """Return http://host:port of the public listener."""
        host, port = self.address
        return f"http://{host}:{port}"

    @property
    def ws_url(self) -> str:
        """Return ws://host:port of the public listener."""
        host, port = self.address
        return f"ws://{host}:{port}"

    @property
    def pid(self) -> int | None:
        """Return the master's PID while it runs, else None."""
        return self.child.pid if self.child else None

    @property
    def output_path(self) -> Path:
        """Return the file holding what nginx writes to stdout and stderr."""
        return self.state_dir / "nginx-output.log"

    @property
    def error_log_path(self) -> Path:
        """Return the error log file (the ERROR_LOG value, else error.log in the state dir)."""
        if self.values is not None and not str(self.values["ERROR_LOG"]).startswith(
            ("stderr", "/dev/")
        ):
            return Path(os.fspath(self.values["ERROR_LOG"]))
        return self.state_dir / "error.log"

    def output(self) -> str:
        """Return what nginx wrote to stdout/stderr so far (config errors before logs open)."""
        try:
            return self.output_path.read_text(errors="replace")
        except OSError:
            return ""

    def diagnostics(self, lines: int = 30) -> str:
        """Return nginx's console output and the tail of its error log, for failure messages."""
        try:
            log = self.error_log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            log = ["(no error log)"]
        return f"--- nginx output:\n{self.output()}--- error log tail:\n" + "\n".join(log)

    def start(self) -> Nginx:
        """Render (if given values), test the config, start nginx and wait until it accepts."""
        if self.values is not None:
            write_nginx_conf(self.state_dir, self.values)
            # Workers drop to `nobody` when the master runs as root: let them reach the
            # temp directories below a mkdtemp (0700) state dir.
            if self._owned_dir is not None:
                self._owned_dir.chmod(0o755)
        nginx_test(self.conf_path, self.state_dir)
        argv = nginx_argv(self.conf_path, self.state_dir)
        self.child = Child("nginx", argv, self.output_path, stop_signal=signal.SIGQUIT).start()
        try:
            self._wait_accepting()
        except BaseException:
            self.stop(grace=0)
            raise
        return self

    def _wait_accepting(self) -> None:
        """Poll the listen address until it accepts; fail fast if nginx exits."""
        assert self.child is not None
        child = self.child

        def check() -> bool | None:
            code = child.exit_code()
            if code is not None:
                raise NginxError(f"nginx exited with code {code} at startup\n{self.diagnostics()}")
            return True if accepts(self.address) else None

        poll_until(f"nginx to accept on {self.address}", check, self.start_timeout,
                   self.diagnostics, error=NginxError)

    def stop(self, grace: float | None = None) -> int | None:
        """Stop by PID: SIGQUIT, wait up to grace seconds, then SIGKILL the group; reap it."""
        code = None
        if self.child is not None:
            code = self.child.stop(self.stop_timeout if grace is None else grace)
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None
        return code

    def __enter__(self) -> Nginx:
        """Start on entering the context."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop on leaving the context."""
        self.stop()
