"""Starting the whole local topology for a drill: free ports, the drill's users, teardown."""

import contextlib
import dataclasses
import socket
from collections.abc import Iterator

from deploy.local.topology import Ports, Topology


def busy_ports(ports: Ports) -> list[int]:
    """The ports of a plan something already listens on (127.0.0.1)."""
    flat = [p for f in dataclasses.fields(ports) for v in [getattr(ports, f.name)]
            for p in (v if isinstance(v, tuple) else (v,))]
    busy = []
    for port in flat:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def create_users(top: Topology, names, password: str = "chanfleet") -> None:
    """Make sure each user exists with the password (one manage.py call for all)."""
    listed = ",".join(repr(name) for name in names)
    top.manage("shell", "--no-imports", "-c", (
        "from django.contrib.auth.models import User\n"
        f"for name in [{listed}]:\n"
        "    u, _ = User.objects.get_or_create(username=name)\n"
        f"    u.set_password({password!r}); u.save()\n"))


@contextlib.contextmanager
def running(state, ports: Ports, env: dict, users, monitoring: bool = False,
            timeout: float = 120, password: str = "chanfleet",
            shards: int = 1) -> Iterator[Topology]:
    """The topology up on `ports` with `users`, stopped (and its database dropped) after."""
    top = Topology(state, ports=ports, env=env, monitoring=monitoring, shards=shards)
    try:
        top.up(timeout=timeout)
        create_users(top, users, password)
        yield top
    finally:
        top.down()
