"""The local topology the load-test smoke runs share: started once per module, on shifted ports."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest

from deploy.local.topology import Ports, Topology

# Ports().shifted(3000): nginx on 11000, uvicorn (ws) 11101-11102, gunicorn 11201-11202, Redis
# 9380-9381, sentinels 29380-29382: clear of `make run` (8000...) and of the other tests.
OFFSET = 3000

# Rate limits a load test would hit by design; a short heartbeat so the smoke run exercises
# heartbeat answers and the heartbeat's gap check under traffic.
ENV = {
    "CHAT_MESSAGE_RATE": "1000/10",
    "WS_CONNECT_RATE": "10000/60",
    "WS_HEARTBEAT_INTERVAL": "3",
}


def _ports(plan: Ports) -> list[int]:
    ports = []
    for field in dataclasses.fields(plan):
        value = getattr(plan, field.name)
        ports.extend(value if isinstance(value, tuple) else [value])
    return ports


def _busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture(scope="module")
def load_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """A whole topology (nginx, 2 uvicorn ws, 2 gunicorn, Redis Sentinel) for this module's runs."""
    ports = Ports().shifted(OFFSET)
    busy = [port for port in _ports(ports) if _busy(port)]
    if busy:
        pytest.fail(f"ports {busy} are taken; the load-test topology needs them "
                    f"(Ports().shifted({OFFSET}))", pytrace=False)
    topology = Topology(tmp_path_factory.mktemp("loadtest"), ports=ports, env=ENV,
                        monitoring=False)
    try:
        topology.up()
        yield topology
    finally:
        topology.down()
