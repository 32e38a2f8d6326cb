"""Starting the cluster's processes in the background and stopping them by their PID files."""

import os
import signal
import subprocess
import time
from pathlib import Path

from . import paths


def pid_file(name: str) -> Path:
    """Return where the PID of the named process is kept."""
    return paths.PID_DIR / f"{name}.pid"


def log_file(name: str) -> Path:
    """Return where the named process writes its output."""
    return paths.LOG_DIR / f"{name}.log"


def read_pid(name: str) -> int | None:
    """Return the PID of the named process if it still runs the program it was started with."""
    try:
        pid_text, _, program = pid_file(name).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if alive(pid) and _program(pid) == program else None


def _program(pid: int) -> str | None:
    # A PID file outlives its process; after a reboot or a long time its PID may be another's.
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The state letter follows the parenthesised command name.
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start argv in its own session with output to its log file, and record its PID."""
    paths.LOG_DIR.mkdir(parents=True, exist_ok=True)
    paths.PID_DIR.mkdir(parents=True, exist_ok=True)
    with open(log_file(name), "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=paths.STATE_DIR,
        )
    # Popen returns when execve closes its error pipe, a moment before the new program's command
    # line is in place; until then read_pid would take the new process for gone.
    deadline = time.monotonic() + 2.0
    while (_program(process.pid) != argv[0] and process.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.005)
    pid_file(name).write_text(f"{process.pid} {argv[0]}\n")
    return process.pid


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """Send SIGTERM, then SIGKILL once timeout has passed, and wait for the process to go."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                # Reaps it when it is our child (the test fixture starts the cluster itself).
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            if not alive(pid):
                return
            time.sleep(0.1)


def stop(name: str, timeout: float = 10.0) -> None:
    """Stop the named process if it runs, and forget its PID."""
    pid = read_pid(name)
    if pid is not None:
        stop_pid(pid, timeout)
    pid_file(name).unlink(missing_ok=True)


def pids_with_argument(argument: str) -> list[int]:
    """Return the PIDs whose command line contains argument (our containerd socket path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(argument.encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found
