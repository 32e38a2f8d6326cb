"""`entrypoint.sh ws` serves the app under uvicorn (the default) and under daphne (WS_SERVER)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the ws process exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the ws process never answered /healthz")


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_the_ws_role_serves_http_and_websockets(server, tmp_path):
    """Both servers answer probes and pass the protocol's close codes (4001 here) through."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_URL"))},
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "WS_SERVER": server, "PORT": str(port), "BIND": "127.0.0.1", "DEBUG": "1",
        "DJANGO_SETTINGS_MODULE": "app.settings", "DATABASE_URL": "",
        "SQLITE_PATH": str(tmp_path / "db.sqlite3"),
    }
    proc = subprocess.Popen([str(ENTRYPOINT), "ws"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port, proc)
        url = f"ws://127.0.0.1:{port}/ws/chat/lobby/"
        with connect(url, additional_headers={"Origin": "http://localhost"},
                     open_timeout=10) as client:
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=10)
        assert closed.value.rcvd.code == 4001
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
