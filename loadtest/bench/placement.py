"""Which WebSocket process nginx gives a session, so every system's senders split evenly.

nginx picks a room's WebSocket process by hashing the session cookie. With ten senders and two
processes the split is a coin toss per sender (5/5 a quarter of the time, 7/3 or worse a third
of the time), and each system of a run gets its own toss. A sender costs its process far more
than a member (it parses, rate-limits, stores and publishes every message), so an uneven split
moved ours' p99 at rooms of 100 between runs of the same code by more than the targets' margin.
The benchmark therefore learns where each candidate cookie lands and gives the rooms' senders
to the processes in turn, for every system alike.

Where a cookie lands is read off the kernel, not off the system under test: open a WebSocket
through nginx with the cookie and see which process's port gained an established connection
(`/proc/net/tcp`). That works the same for ours, the stock project and the ceiling.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

ESTABLISHED = "01"


def established_by_port(ports: list[int], tables=("/proc/net/tcp", "/proc/net/tcp6")) -> dict:
    """Count established TCP connections whose local port is one of `ports`."""
    wanted = set(ports)
    counts = collections.Counter({port: 0 for port in ports})
    for table in tables:
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != ESTABLISHED:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in wanted:
                counts[port] += 1
    return counts


def process_of(system, cookie: str, room_url: str, attempts: int = 3) -> int | None:
    """The WebSocket port nginx sends this cookie's sockets to, or None if it cannot tell.

    Another socket opening or closing meanwhile would blur the difference; the probe is then
    repeated.
    """
    from websockets.sync.client import connect

    for _ in range(attempts):
        before = established_by_port(system.ws_ports)
        try:
            with connect(room_url, additional_headers=system.headers(cookie), open_timeout=10,
                         max_size=None):
                after = established_by_port(system.ws_ports)
        except Exception:
            time.sleep(0.2)
            continue
        gained = [port for port in system.ws_ports if after[port] - before[port] == 1]
        if len(gained) == 1 and sum(after.values()) - sum(before.values()) == 1:
            return gained[0]
        time.sleep(0.2)
    return None


def balanced_senders(cookies: list[str], rooms: int, ports: list[int], locate) -> tuple:
    """Pick one sender cookie per room so that room r's sender lands on ports[r % len(ports)].

    `locate(cookie)` says where a cookie lands (a port, or None). Cookies are tried in order,
    each at most once; returns (sender cookies by room, how many senders each port got). Rooms
    whose process no remaining cookie reaches get the next unused cookie, wherever it lands.
    """
    want = collections.Counter(ports[room % len(ports)] for room in range(rooms))
    found: dict[int, list[str]] = {port: [] for port in ports}
    spare: list[tuple[str, int | None]] = []
    for cookie in cookies:
        if all(len(found[port]) >= want[port] for port in ports):
            break
        port = locate(cookie)
        if port in found and len(found[port]) < want[port]:
            found[port].append(cookie)
        else:
            spare.append((cookie, port))
    senders, split = [], collections.Counter()
    for room in range(rooms):
        port = ports[room % len(ports)]
        if found[port]:
            senders.append(found[port].pop(0))
            split[port] += 1
        elif spare:
            cookie, landed = spare.pop(0)
            senders.append(cookie)
            split[landed] += 1
        else:
            senders.append(cookies[room % len(cookies)])
            split[None] += 1
    return senders, dict(split)
