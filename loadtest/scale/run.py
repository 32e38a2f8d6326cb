"""One room of many members through nginx, measured on one system (ours or the ceiling).

1. Sessions: a few signed-in users; where nginx sends each user's sockets is read off the
   kernel (`loadtest.bench.placement`), so every WebSocket process gets the same share of the
   room whatever the hash ring does.
2. Connect: every member joins the one room (ours: with history), at most `concurrency`
   handshakes at once, from several loopback source addresses.
3. Idle: resident memory of the WebSocket processes and of nginx's workers, before the room
   and with it, per socket; Redis CPU over an idle window (heartbeats, presence).
4. Broadcasts: one member sends `broadcasts` messages, one every `interval` seconds; each is
   its own phase, so the receivers' timestamps give its first and last delivery and its count.
   With `rooms` > 1 (the capacity model's check) every room's sender sends once per interval,
   and a phase's first and last delivery are over all its rooms' broadcasts.
   Redis CPU over the window (`INFO cpu`, the idle rate subtracted) per broadcast.
"""

from __future__ import annotations

import dataclasses
import math
import time
from array import array

from loadtest.bench.generator import Generator, Spec
from loadtest.bench.placement import established_by_port, process_of
from loadtest.bench.runner import percentile, settle
from loadtest.bench.systems import System, children_of, rss_kib, total_cpu_seconds

PHASE = "scale"


@dataclasses.dataclass
class Config:
    """Every knob of one scale run (the command line fills it)."""

    members: int = 50_000
    rooms: int = 1  # the members are dealt over this many rooms, each with its own sender
    users: int = 100  # ours' rooms hold at most 100 users; sockets are spread over them
    broadcasts: int = 20
    interval: float = 10.0  # seconds between broadcasts, the same for every system
    concurrency: int = 200  # handshakes in flight, all generator processes together
    per_worker: int = 4_000  # sockets per generator process
    source_addrs: int = 8  # 127.0.0.2.. so the ephemeral port range never runs out
    handshake_timeout: float = 60.0
    connect_deadline: float = 3_600.0
    # Whole periods of the 20 s keep-alive pings (WS_PING_INTERVAL, websockets' default): the
    # ceiling's start in a bunch when its fast connect ends, and a shorter window catches
    # more or fewer of them than their average.
    idle_seconds: float = 60.0
    drain_timeout: float = 60.0  # after the last broadcast, for the last deliveries
    run_id: str = ""

    def workers(self) -> int:
        """Generator processes: the fd limit is per process, and each holds `per_worker`."""
        return max(2, math.ceil(self.members / self.per_worker))


def room_url(system: System, config: Config, room: int = 0) -> str:
    """The URL of one of the run's rooms."""
    return f"{system.ws_url}/ws/chat/scale-{config.run_id}-{room}/"


def locate(system: System, cookies: list[str], url: str) -> dict[int, list[str]]:
    """The users whose sockets nginx sends to each WebSocket port."""
    by_port: dict[int, list[str]] = {port: [] for port in system.ws_ports}
    for cookie in cookies:
        port = process_of(system, cookie, url)
        if port in by_port:
            by_port[port].append(cookie)
    return by_port


def build_specs(config: Config, url, headers, by_port: dict[int, list[str]]) -> list[Spec]:
    """Member i goes to the i-th port in turn, as one of that port's users in turn.

    `url(room)` names a room. In each port's turns the rooms follow each other, so every
    room has members on every process, as nginx's hash on users leaves a real room. Room r's
    sender is its first member on port r (mod the ports): the senders' work is spread too.
    Each user's first socket comes in the first round of every port, so `user_joined` is
    announced while the room is small, as it would be in life.
    """
    ports = [port for port, cookies in by_port.items() if cookies]
    if not ports:
        raise RuntimeError("no user's sockets could be placed on any WebSocket process")
    workers = config.workers()
    urls = [url(room) for room in range(config.rooms)]
    specs = []
    for cid in range(config.members):
        turn, index = divmod(cid, len(ports))
        room = turn % config.rooms
        cookies = by_port[ports[index]]
        local = f"127.0.0.{2 + cid % config.source_addrs}" if config.source_addrs else None
        sender = turn == room and index == room % len(ports)
        # The senders have a generator process of their own: one that also reads thousands
        # of deliveries would send late, and stamp its sends late.
        specs.append(Spec(cid=cid, url=urls[room], headers=headers(cookies[turn % len(cookies)]),
                          room=room, sender=sender, local_host=local,
                          worker=workers if sender else cid % workers))
    return specs


def broadcast_figures(latencies: dict[str, array], phases: list[str], receivers: int) -> dict:
    """First and last delivery of each broadcast (ms after its send), p50/p99 over them, lost."""
    firsts, lasts, lost, each = array("f"), array("f"), 0, []
    for phase in phases:
        values = latencies.get(phase, array("f"))
        lost += max(0, receivers - len(values))
        if not len(values):
            each.append({"phase": phase, "count": 0})
            continue
        first, last = min(values), max(values)
        firsts.append(first)
        lasts.append(last)
        each.append({"phase": phase, "count": len(values), "first_ms": round(first, 1),
                     "last_ms": round(last, 1)})
    return {
        "broadcasts": len(phases), "receivers": receivers,
        "delivered": sum(e["count"] for e in each), "lost": lost,
        "first_p50_ms": percentile(firsts, 50), "first_p99_ms": percentile(firsts, 99),
        "last_p50_ms": percentile(lasts, 50), "last_p99_ms": percentile(lasts, 99),
        "each": each,
    }


def redis_cpu(clients) -> float:
    """Redis CPU seconds so far (user + system), summed over the servers."""
    total = 0.0
    for client in clients:
        info = client.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def commandstats(clients) -> dict[str, tuple[int, int]]:
    """Calls and microseconds of each command so far, summed over the servers."""
    totals: dict[str, tuple[int, int]] = {}
    for client in clients:
        for name, stats in client.info("commandstats").items():
            calls, usec = totals.get(name.removeprefix("cmdstat_"), (0, 0))
            totals[name.removeprefix("cmdstat_")] = (calls + int(stats["calls"]),
                                                     usec + int(stats["usec"]))
    return totals


def reading(clients, pids: dict[str, list[int]]) -> dict:
    """CPU seconds so far of Redis and of each group of processes, and Redis's commands."""
    return {"at": time.monotonic(), "redis": redis_cpu(clients),
            "commands": commandstats(clients),
            **{part: total_cpu_seconds(group) for part, group in pids.items()}}


def spent(before: dict, after: dict) -> dict:
    """What a window between two readings cost: CPU seconds per part, commands, its length."""
    window = {part: after[part] - before[part] for part in before
              if part not in ("at", "commands")}
    window["seconds"] = after["at"] - before["at"]
    window["commands"] = {name: (calls - before["commands"].get(name, (0, 0))[0],
                                 usec - before["commands"].get(name, (0, 0))[1])
                          for name, (calls, usec) in after["commands"].items()}
    return window


def above_idle(idle: dict, busy: dict, part: str) -> float:
    """CPU seconds a part spent in the busy window beyond its idle rate (never below 0)."""
    rate = idle[part] / idle["seconds"] if idle["seconds"] > 0 else 0.0
    return max(0.0, busy[part] - rate * busy["seconds"])


def command_rates(spent_commands: dict, seconds: float, top: int = 8) -> dict:
    """The commands that took Redis most time in a window: calls/s and µs/s of each."""
    busiest = sorted(spent_commands.items(), key=lambda item: -item[1][1])[:top]
    return {name: {"calls_per_s": round(calls / seconds, 1), "us_per_s": round(usec / seconds)}
            for name, (calls, usec) in busiest if calls}


def nginx_workers_rss(system: System) -> int:
    """Summed RSS (KiB) of nginx's worker processes."""
    master = system.nginx_pid()
    return sum(rss_kib(pid) for pid in children_of(master)) if master else 0


def measure(system: System, config: Config, log=print) -> dict:
    """The whole run on a started system; the figures as a dict."""
    started = time.monotonic()
    cookies = system.cookies(config.users, log=log)
    by_port = locate(system, cookies, room_url(system, config, 0))
    log(f"  {system.name}: users per WebSocket process "
        f"{ {port: len(c) for port, c in by_port.items()} }")
    specs = build_specs(config, lambda room: room_url(system, config, room),
                        system.headers, by_port)
    generator = Generator(config.workers() + 1)  # the last one holds the senders only
    try:
        settle(system, 20)
        ws_before = system.rss_kib()
        nginx_before = nginx_workers_rss(system)
        log(f"  {system.name}: opening {config.members} sockets through nginx, "
            f"{config.concurrency} handshakes in flight, {generator.size} generator processes")
        connect = generator.connect(specs, config.concurrency, config.handshake_timeout, 3,
                                    system.ready_marker, config.connect_deadline)
        log(f"  {system.name}: {connect['opened']} opened in {connect['seconds']:.0f} s "
            f"({connect['rate']:.0f}/s), failed {connect['failed']} {connect['errors']}")
        ready = generator.wait_ready(120)
        settle(system, 60)
        sockets = ready["open"]
        ws_after, nginx_after = system.rss_kib(), nginx_workers_rss(system)
        per_process = dict(established_by_port(system.ws_ports))
        clients = system.redis_clients()
        pids = {"ws": system.ws_pids(), "nginx": children_of(system.nginx_pid() or 0),
                "generator": generator.pids()}
        before = reading(clients, pids)
        time.sleep(config.idle_seconds)
        idle = spent(before, reading(clients, pids))
        generator.stats(reset=True)

        phases = [f"b{i}" for i in range(config.broadcasts)]
        log(f"  {system.name}: {len(phases)} broadcasts, one every {config.interval:g} s")
        before = reading(clients, pids)
        first_at = time.time() + 1.0
        # One room: each broadcast at the start of its slot. Several: each room's sender
        # sends once at a random moment of the slot's first half, as independent rooms do.
        spread = 0.001 if config.rooms == 1 else config.interval / 2
        lags, unsent = [], 0
        for i, phase in enumerate(phases):
            lead = max(0.0, first_at + i * config.interval - time.time())
            sent = generator.phase(phase, rate=1 / spread, duration=spread, lead=lead)
            lags.append(sent["max_lag"])
            unsent += sent["senders"] - sent["sent"]
        # Every broadcast gets one interval, the last one too, then whatever its stragglers
        # take: the window holds every delivery it counts.
        time.sleep(max(0.0, first_at + len(phases) * config.interval - time.time()))
        generator.wait_quiet(quiet=2.0, timeout=config.drain_timeout)
        busy = spent(before, reading(clients, pids))
        stats = generator.stats()
        figures = broadcast_figures(stats["latencies"], phases, stats["open"])
        for client in clients:
            client.close()
        log(f"  {system.name}: {figures['delivered']} of "
            f"{figures['receivers'] * len(phases)} delivered, last delivery p50/p99 "
            f"{figures['last_p50_ms']:.0f}/{figures['last_p99_ms']:.0f} ms")
        cpu = {part: above_idle(idle, busy, part) for part in pids}
        return {
            "system": system.name, "members": config.members, "rooms": config.rooms,
            "opened": connect["opened"],
            "open_at_end": stats["open"], "closed": stats["closed"],
            "duplicates": stats["duplicates"], "connect": connect,
            "ws_processes": len(system.ws_ports), "sockets_per_process": per_process,
            "users_per_process": {port: len(c) for port, c in by_port.items()},
            "ws_rss_kib": {"before": ws_before, "after": ws_after},
            "ws_kib_per_socket": round((ws_after - ws_before) / max(1, sockets), 2),
            "nginx_rss_kib": {"before": nginx_before, "after": nginx_after},
            "nginx_kib_per_socket": round((nginx_after - nginx_before) / max(1, sockets), 2),
            "idle_cpu_share": {part: round(idle[part] / idle["seconds"], 4)
                               for part in ("redis", *pids)},
            "busy_cpu_share": {part: round(busy[part] / busy["seconds"], 4)
                               for part in ("redis", *pids)},
            "deliveries_per_s": round(figures["delivered"] / busy["seconds"]),
            "cpu_us_per_delivery": {part: round(cpu[part] * 1e6 / max(1, figures["delivered"]),
                                                2) for part in pids},
            "redis_commands": {"idle": command_rates(idle["commands"], idle["seconds"]),
                               "broadcasting": command_rates(busy["commands"],
                                                             busy["seconds"])},
            "send_lag_max_s": round(max(lags, default=0.0), 3), "unsent": unsent,
            "interval": config.interval, "seconds": round(time.monotonic() - started),
            **figures,
        }
    finally:
        generator.shutdown()

