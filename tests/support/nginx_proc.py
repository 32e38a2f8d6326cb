"""A real nginx for tests, running the chanfleet config rendered from deploy/nginx/nginx.conf.tmpl.

``Nginx(values)`` renders the template into a temporary state directory; ``Nginx(conf_path)``
runs an already rendered file. Either way nginx runs in the foreground (``daemon off``) as a
child process in its own process group, is waited for until its listen port accepts, and is
stopped by PID: SIGQUIT (graceful), then SIGKILL to its process group (master and workers),
then reaped. Binds only what the config says (127.0.0.1 in the local values).

Usage::

    values = local_values(tmp, listen_port=free_port(), ws_ports=[...], http_ports=[...],
                          status_port=free_port())
    with Nginx(values) as nginx:
        urllib.request.urlopen(nginx.url + "/")
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from deploy.nginx.render import local_values, prepare_state_dir, render_nginx_conf

HOST = "127.0.0.1"
# Set to an nginx path to test another build than /usr/sbin/nginx or the one on PATH.
NGINX_ENV = "CHANFLEET_NGINX"
MISSING_BINARY_HELP = (
    "nginx was not found (${env}, PATH, /usr/sbin/nginx). The routing tests run a real nginx; "
    "Debian: apt-get install nginx-light (needs stub_status, realip and upstream hash)."
).replace("{env}", NGINX_ENV)
POLL_INTERVAL = 0.02

_LISTEN = re.compile(r"^\s*listen\s+([^\s;]+)", re.MULTILINE)


class NginxBinaryMissing(RuntimeError):
    """nginx is not installed; the message says how to get it."""


class NginxError(RuntimeError):
    """nginx failed its config test, failed to start, or did not listen in time."""


def find_nginx() -> str:
    """Return the nginx executable path, or raise NginxBinaryMissing explaining the fix."""
    candidates = [os.environ.get(NGINX_ENV), shutil.which("nginx"), "/usr/sbin/nginx"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise NginxBinaryMissing(MISSING_BINARY_HELP)


def free_port(host: str = HOST) -> int:
    """Return a TCP port that was free on host a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def parse_listen(listen: str) -> tuple[str, int]:
    """Return (host, port) for an nginx `listen` value such as 127.0.0.1:8000 or 8080."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host = HOST
    elif host in ("", "*", "0.0.0.0"):
        host = HOST
    return host.strip("[]"), int(port)


def nginx_test(conf_path: str | os.PathLike[str], prefix: str | os.PathLike[str]) -> str:
    """Run `nginx -t` on a config with its own prefix; return the output or raise NginxError."""
    argv = [
        find_nginx(),
        "-t",
        "-q",
        "-p",
        f"{os.fspath(prefix)}/",
        "-e",
        "stderr",
        "-c",
        os.fspath(conf_path),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise NginxError(f"nginx -t failed ({result.returncode}):\n{output}")
    return output


# Strong references on purpose: an Nginx dropped without stop() must still be killed at exit.
_LIVE: set[Nginx] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort if a test run dies before teardown: kill every nginx still ours."""
    for nginx in list(_LIVE):
        nginx.stop(grace=0)


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

        With values, a missing STATE_DIR becomes a fresh temporary directory (removed on
        stop) and missing ERROR_LOG / ACCESS_LOG become files in it. ``address`` is where
        to wait for nginx to accept; by default the first `listen` of the config.
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
        self.popen: subprocess.Popen[bytes] | None = None
        self._output: tempfile._TemporaryFileWrapper[bytes] | None = None

    @classmethod
    def local(
        cls,
        listen_port: int,
        ws_ports: Sequence[int],
        http_ports: Sequence[int],
        status_port: int,
        **overrides: object,
    ) -> Nginx:
        """Return an (unstarted) Nginx for the local topology in its own temporary state dir.

        ``overrides`` are placeholder values on top of local_values(), e.g.
        ``WS_READ_TIMEOUT="3s"``. The state dir is removed on stop.
        """
        owned = Path(tempfile.mkdtemp(prefix="chanfleet-nginx-"))
        values = {
            **local_values(owned, listen_port, ws_ports, http_ports, status_port),
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
        return self.popen.pid if self.popen and self.popen.poll() is None else None

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
        if self._output is None:
            return ""
        self._output.flush()
        return Path(self._output.name).read_text(errors="replace")

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
            prepare_state_dir(self.state_dir)
            # Workers drop to `nobody` when the master runs as root: let them reach the
            # temp directories below a mkdtemp (0700) state dir.
            if self._owned_dir is not None:
                self._owned_dir.chmod(0o755)
            self.conf_path.write_text(render_nginx_conf(**self.values), encoding="utf-8")
        nginx_test(self.conf_path, self.state_dir)
        self._output = tempfile.NamedTemporaryFile(prefix="chanfleet-nginx-out-", delete=False)
        argv = [find_nginx(), "-p", f"{self.state_dir}/", "-e", "stderr", "-c", str(self.conf_path)]
        # Own session and process group: stop() can SIGKILL the workers along with the
        # master without ever signalling anything else.
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=self._output,
            start_new_session=True,
        )
        _LIVE.add(self)
        try:
            self._wait_accepting()
        except BaseException:
            self.stop(grace=0)
            raise
        return self

    def _wait_accepting(self) -> None:
        """Poll the listen address until it accepts; fail fast if nginx exits."""
        assert self.popen is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self.popen.poll()
            if code is not None:
                raise NginxError(f"nginx exited with code {code} at startup\n{self.diagnostics()}")
            try:
                with socket.create_connection(self.address, timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise NginxError(
                    f"nginx did not accept on {self.address} within {self.start_timeout}s\n"
                    f"{self.diagnostics()}"
                )
            time.sleep(POLL_INTERVAL)

    def stop(self, grace: float | None = None) -> int | None:
        """Stop by PID: SIGQUIT, wait up to grace seconds, then SIGKILL the group; reap it."""
        grace = self.stop_timeout if grace is None else grace
        code = None
        if self.popen is not None:
            if self.popen.poll() is None:
                try:
                    os.kill(self.popen.pid, signal.SIGQUIT)
                    if grace > 0:
                        self.popen.wait(timeout=grace)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
                if self.popen.poll() is None:
                    # Not reaped yet, so the master's PID is still our process group id:
                    # this reaches its workers too and nothing else.
                    try:
                        os.killpg(self.popen.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            code = self.popen.wait()
        _LIVE.discard(self)
        if self._output is not None:
            self._output.close()
            Path(self._output.name).unlink(missing_ok=True)
            self._output = None
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None
        return code

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
