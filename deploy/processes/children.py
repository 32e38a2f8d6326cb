"""Child processes started by PID: own session, output in a log file, stopped by PID and reaped.

Nothing here signals a process it did not start: stop() signals the child's PID, and its process
group only while the child is not yet reaped (so the group id cannot belong to anyone else).
Waits poll with short sleeps against overall deadlines: a loaded machine makes them slower,
never flaky by a fixed sleep.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"
POLL_INTERVAL = 0.05

T = TypeVar("T")
Address = tuple[str, int]


class ProcessError(RuntimeError):
    """A child process failed to start or to reach the expected state in time."""


class BinaryMissing(RuntimeError):
    """A program is not installed; the message says how to get it."""


def free_port(host: str = HOST) -> int:
    """Return a TCP port that was free on host a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Return count distinct free ports, holding them all open while choosing."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def accepts(address: Address, timeout: float = 0.5) -> bool:
    """Return whether address accepts a TCP connection now."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def poll_until(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    describe: Callable[[], str] = lambda: "",
    *,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
    error: type[ProcessError] = ProcessError,
) -> T:
    """Call check until it returns a non-None value, or raise error once timeout has passed."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
        except retry_on as exc:
            result, last_error = None, exc
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            detail = describe()
            raise error(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else "")
                + (f"\n{detail}" if detail else "")
            )
        time.sleep(POLL_INTERVAL)


def find_program(
    name: str,
    env_var: str | None = None,
    help_text: str = "",
    error: type[BinaryMissing] = BinaryMissing,
) -> str:
    """Return the path of a program ($env_var, PATH, /usr/sbin, /usr/bin) or raise error."""
    candidates = [
        os.environ.get(env_var) if env_var else None,
        shutil.which(name),
        f"/usr/sbin/{name}",
        f"/usr/bin/{name}",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise error(help_text or f"{name} was not found on PATH, /usr/sbin or /usr/bin")


def account(user: str | None) -> dict[str, object]:
    """Return subprocess keyword arguments that run a child as user (with its group), or none."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


# Strong references on purpose: a child dropped without stop() must still be killed at exit.
_LIVE: set[Child] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort if the parent dies before its teardown: SIGKILL every child still ours."""
    for child in list(_LIVE):
        child.kill()


class Child:
    """One program run as a child in its own session, its output appended to log_path."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: str | os.PathLike[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.stop_signal = stop_signal
        # Run as this account (root only): servers such as PostgreSQL refuse to run as root,
        # and switching in the child keeps the server itself our child, stopped by its PID.
        self.user = user
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Return the PID while the process runs, else None."""
        return self.popen.pid if self.popen and self.popen.poll() is None else None

    def start(self) -> Child:
        """Start the program in its own session with stdin closed and output to the log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"==== starting {shlex.join(self.argv)}\n".encode())
            log.flush()
            # Own session and process group: stop() can SIGKILL the program's own children
            # (nginx workers) with it and never signals anything else.
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                **account(self.user),
            )
        _LIVE.add(self)
        return self

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the log, headed by the child's name, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"--- {self.name}: no log at {self.log_path}"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} log lines of {self.name} ({self.log_path}):\n{tail}"

    def exit_code(self) -> int | None:
        """Return the exit code once the process has exited (it is then reaped), else None."""
        if self.popen is None:
            return None
        code = self.popen.poll()
        if code is not None:
            _LIVE.discard(self)
        return code

    def signal(self, sig: int) -> None:
        """Send sig to the process by PID if it still runs (does not wait)."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the process and its group by PID and reap it (simulates a crash)."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            # Not reaped yet, so its PID is still our process group's id: nothing else is hit.
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait()
        _LIVE.discard(self)

    def reap(self, deadline: float) -> int | None:
        """Wait for the exit until deadline (monotonic), then SIGKILL; always reap."""
        if self.popen is None:
            return None
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
        _LIVE.discard(self)
        return self.popen.wait()

    def stop(self, grace: float = 5.0) -> int | None:
        """Stop by PID: stop_signal, up to grace seconds, then SIGKILL; return the exit code."""
        self.signal(self.stop_signal)
        return self.reap(time.monotonic() + grace)


def stop_all(children: Sequence[Child], grace: float = 5.0) -> None:
    """Signal every child at once, then reap each, SIGKILLing any still alive after grace."""
    for child in children:
        child.signal(child.stop_signal)
    deadline = time.monotonic() + grace
    for child in children:
        child.reap(deadline)


class WorkDir:
    """A directory for configs and logs: the caller's (kept), or a temporary one removed on stop."""

    def __init__(self, base_dir: str | os.PathLike[str] | None, prefix: str) -> None:
        self._given = Path(base_dir).resolve() if base_dir is not None else None
        self._prefix = prefix
        self.path: Path | None = None

    @property
    def owned(self) -> bool:
        """Return whether the directory is a temporary one this object removes."""
        return self._given is None

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
        """Delete the directory if it is a temporary one."""
        if self.path is not None and self._given is None:
            shutil.rmtree(self.path, ignore_errors=True)
        self.path = None
