"""`entrypoint.sh ws` serves the app under uvicorn (the default) and under daphne (WS_SERVER)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
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


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 30,
                 address: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the ws process exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the ws process never answered /healthz")


def role_env(server: str, port: int, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of an `entrypoint.sh ws` on loopback with a SQLite database."""
    return {
        **{k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "DATABASE_URL", "INTERNAL_PORT", "FORWARDED_"))},
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "WS_SERVER": server, "PORT": str(port), "BIND": "127.0.0.1", "DEBUG": "1",
        "DJANGO_SETTINGS_MODULE": "app.settings", "DATABASE_URL": "",
        "SQLITE_PATH": str(tmp_path / "db.sqlite3"), **extra,
    }


def request(url: str, method: str = "GET", **headers: str) -> tuple[int, bytes]:
    """(status, body) of one plain HTTP request; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers),
                                    timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def stop(proc: subprocess.Popen) -> None:
    """Terminate a role's process (by its PID) and reap it."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_the_ws_role_serves_http_and_websockets(server, tmp_path):
    """Both servers answer probes and pass the protocol's close codes (4001 here) through."""
    port = free_port()
    proc = subprocess.Popen([str(ENTRYPOINT), "ws"], env=role_env(server, port, tmp_path),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port, proc)
        url = f"ws://127.0.0.1:{port}/ws/chat/lobby/"
        with connect(url, additional_headers={"Origin": "http://localhost"},
                     open_timeout=10) as client:
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=10)
        assert closed.value.rcvd.code == 4001
    finally:
        stop(proc)


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_internal_endpoints_answer_only_on_the_loopback_listener(server, tmp_path):
    """A forged X-Forwarded-For or Host on the public port reaches no internal endpoint.

    The preStop hook (`entrypoint.sh drain`) reaches the drain on INTERNAL_PORT with
    `Host: 127.0.0.1`, which Django's ALLOWED_HOSTS would refuse, and the process exits after.
    """
    # As in a pod: the public listener on the pod's address (127.0.0.2 here), ALLOWED_HOSTS the
    # public name and that address, and another pod's forged requests sent to it.
    pod = "127.0.0.2"
    port, internal = free_port(), free_port()
    env = role_env(server, port, tmp_path, INTERNAL_PORT=str(internal), BIND=pod,
                   ALLOWED_HOSTS=f"chat.example.com,{pod}", DRAIN_WINDOW="0")
    proc = subprocess.Popen([str(ENTRYPOINT), "ws"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port, proc, address=pod)
        for forged in ({"X-Forwarded-For": "127.0.0.1"}, {"Host": "127.0.0.1"},
                       {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}):
            status, _ = request(f"http://{pod}:{port}/internal/drain?exit=0", "POST", **forged)
            assert status == 404, (forged, status)
            assert request(f"http://{pod}:{port}/internal/status", **forged)[0] == 404
        status, body = request(f"http://127.0.0.1:{internal}/internal/status")
        assert status == 200 and json.loads(body)["draining"] is False, body
        assert request(f"http://127.0.0.1:{internal}/internal/drain")[0] == 405
        drained = subprocess.run([str(ENTRYPOINT), "drain"], env=env, cwd=REPO,
                                 capture_output=True, text=True, timeout=30)
        assert drained.returncode == 0, drained.stderr
        assert json.loads(drained.stdout)["status"] == "drained"
        proc.wait(20)  # the drain ends the process, as SIGTERM would
    finally:
        stop(proc)


def test_internal_port_equal_to_port_is_refused(tmp_path):
    """One port cannot be both the public and the loopback-only listener."""
    port = free_port()
    result = subprocess.run(
        [str(ENTRYPOINT), "ws"], env=role_env("uvicorn", port, tmp_path, INTERNAL_PORT=str(port)),
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "INTERNAL_PORT" in result.stderr
