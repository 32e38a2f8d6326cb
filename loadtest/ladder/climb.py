"""Command line and driver of the handshake ladder.

    python -m loadtest.ladder [--sockets 3000] [--rounds 2] [--rungs bare,auth,consumer,full]

Starts the local topology on shifted ports (or uses the one running in --state-dir) for its
Redis, database and signed-in users, then one extra WebSocket process per rung
(`loadtest.ladder.rungs`). Per round and rung it opens --sockets sockets straight to that
process (no nginx), --concurrency handshakes in flight, each spread over --rooms rooms with a
different user per room position: first fresh joins, which are then closed, then the same
sockets resuming with the `last_seq` each was given (nothing missed). For each phase it
reports handshakes/s, the rung process's CPU per handshake, this client's and the Redis
master's, and what the machine's cores would serve at that cost (nginx's share left out).
Closes are outside the timed phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local.topology import REPO
from loadtest.bench.generator import raise_nofile
from loadtest.bench.systems import Ours, cpu_seconds, port_busy, wait_port
from loadtest.bench.wsclient import Client

from .rungs import RUNGS

JOIN_ENDS = ("history_end", "resume_end")


@dataclass
class Socket:
    """One socket of a phase: where it goes, as whom, from which address, and its position."""

    url: str
    headers: list[tuple[str, str]]
    local_host: str
    seq: int | None = None


@dataclass
class Phase:
    """One timed phase of one rung: its handshakes and the CPU they took."""

    handshakes: int
    seconds: float
    server_cpu: float
    client_cpu: float
    redis_cpu: float = 0.0
    failed: int = 0
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    def figures(self) -> dict:
        """Handshakes/s, CPU ms per handshake (server, client, Redis) and what the cores would
        serve at that cost."""
        count = max(self.handshakes, 1)
        spent = {part: cpu * 1000 / count for part, cpu in (
            ("server_ms", self.server_cpu), ("client_ms", self.client_cpu),
            ("redis_ms", self.redis_cpu))}
        total = sum(spent.values())
        return {"handshakes": self.handshakes, "failed": self.failed,
                "per_s": round(self.handshakes / max(self.seconds, 1e-6)),
                **{part: round(ms, 3) for part, ms in spent.items()},
                "cores_would_serve_per_s": round(self.cores * 1000 / total) if total else None}


def own_cpu() -> float:
    """CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sockets_for(port: int, tag: str, count: int, rooms: int, headers, cookies: list[str],
                source_addrs: int = 8) -> list[Socket]:
    """`count` sockets over `rooms` rooms named by `tag`, a different user per room position."""
    per_room = max(1, -(-count // rooms))
    made = []
    for index in range(count):
        room, member = divmod(index, per_room)
        made.append(Socket(url=f"ws://127.0.0.1:{port}/ws/chat/ladder-{tag}-{room}/",
                           headers=headers(cookies[(room + member) % len(cookies)]),
                           local_host=f"127.0.0.{2 + index % source_addrs}"))
    return made


async def open_all(sockets: list[Socket], resume: bool, concurrency: int,
                   timeout: float) -> tuple[list[Client], int]:
    """Open every socket (`?last_seq=` when resuming) until its join ends; (clients, failed)."""
    gate = asyncio.Semaphore(concurrency)
    clients: list[Client] = []
    failed = 0

    async def one(sock: Socket) -> None:
        nonlocal failed
        joined = asyncio.get_running_loop().create_future()

        def on_message(_client, text) -> None:
            if joined.done() or not isinstance(text, str):
                return
            frame = json.loads(text)
            if frame.get("type") in JOIN_ENDS:
                joined.set_result(frame.get("seq"))

        url = sock.url + (f"?last_seq={sock.seq}" if resume else "")
        async with gate:
            try:
                client = await Client.connect(url, sock.headers, timeout,
                                              local_addr=(sock.local_host, 0),
                                              on_message=on_message)
            except Exception:
                failed += 1
                return
            clients.append(client)
            try:
                seq = await asyncio.wait_for(joined, timeout)
            except TimeoutError:
                failed += 1
                return
            if not resume:
                sock.seq = seq

    await asyncio.gather(*(one(sock) for sock in sockets))
    return clients, failed


async def phase(pid: int, redis_pid: int, sockets: list[Socket], resume: bool,
                concurrency: int, timeout: float) -> tuple[Phase, list[Client]]:
    """Time one phase against the rung process `pid`; the clients stay open."""
    server, client, redis = cpu_seconds(pid), own_cpu(), cpu_seconds(redis_pid)
    started = time.monotonic()
    clients, failed = await open_all(sockets, resume, concurrency, timeout)
    seconds = time.monotonic() - started
    return Phase(handshakes=len(sockets) - failed, seconds=seconds,
                 server_cpu=cpu_seconds(pid) - server, client_cpu=own_cpu() - client,
                 redis_cpu=cpu_seconds(redis_pid) - redis, failed=failed), clients


async def close_all(clients: list[Client]) -> None:
    """Close every client, bounded."""
    await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.ladder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--sockets", type=int, default=3000, help="sockets per phase")
    add("--rooms", type=int, default=100)
    add("--users", type=int, default=100, help="signed-in users (sessions)")
    add("--concurrency", type=int, default=32, help="handshakes in flight")
    add("--rounds", type=int, default=2, help="every rung this many times, interleaved")
    add("--rungs", default=",".join(RUNGS), help="comma-separated, of " + ", ".join(RUNGS))
    add("--pause", type=float, default=1.0, help="seconds between phases, untimed")
    add("--timeout", type=float, default=60.0, help="a handshake and its join, at most")
    add("--port-offset", type=int, default=7000, help="the topology on Ports().shifted(N)")
    add("--state-dir", type=Path, default=Path("build/ladder/state"),
        help="the topology's state folder; a topology running there is used as it is")
    add("--json", type=Path, help="result file (default build/ladder/ladder-<time>.json)")
    args = parser.parse_args(argv)
    args.rungs = [r for r in args.rungs.split(",") if r]
    unknown = sorted(set(args.rungs) - set(RUNGS))
    if unknown:
        parser.error(f"unknown rungs: {', '.join(unknown)}")
    return args


def start_rungs(system: Ours, rungs: list[str], logs: Path) -> dict[str, tuple]:
    """One WebSocket process per rung on free ports beside the topology's: {rung: (popen, port)}."""
    topology = system.topology
    env = {**topology.app_env(), "BIND": "127.0.0.1", "CHANFLEET_ROLE": "ws", **topology.ws_env}
    # Below the kernel's ephemeral ports, where an outgoing connection could hold one, and
    # clear of every plan's ports (the tests shift plans by multiples of 500).
    port = topology.ports.nginx + 300
    started = {}
    logs.mkdir(parents=True, exist_ok=True)
    for rung in rungs:
        while port_busy(port):
            port += 1
        with open(logs / f"rung-{rung}.log", "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "loadtest.ladder.rungs", rung], cwd=REPO,
                env={**env, "PORT": str(port), "NODE_NAME": f"ladder-{rung}"},
                stdout=log, stderr=subprocess.STDOUT)
        started[rung] = (process, port)
        port += 1
    for _process, port in started.values():
        wait_port(port, 60)
    return started


def stop_rungs(started: dict[str, tuple]) -> None:
    """SIGTERM each rung process by its PID; SIGKILL what has not ended after 20 s."""
    for process, _ in started.values():
        process.terminate()
    for process, _ in started.values():
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def climb(args, system: Ours, started: dict[str, tuple], cookies: list[str],
                log=print) -> dict:
    """Every round's phases of every rung: {rung: [{"fresh": ..., "resume": ...}, ...]}."""
    results: dict[str, list[dict]] = {rung: [] for rung in args.rungs}
    redis_pid = system.topology.pid("redis-master")  # the layer's, the store's and the cache's
    run = time.strftime("%H%M%S")
    for round_ in range(args.rounds):
        for rung in args.rungs:
            process, port = started[rung]
            sockets = sockets_for(port, f"{run}-{round_}-{rung}", args.sockets, args.rooms,
                                  system.headers, cookies)
            figures = {}
            for name, resume in (("fresh", False), ("resume", True)):
                await asyncio.sleep(args.pause)
                measured, clients = await phase(process.pid, redis_pid, sockets, resume,
                                                args.concurrency, args.timeout)
                await close_all(clients)
                figures[name] = measured.figures()
                log(f"[ladder] round {round_ + 1} {rung:8} {name:6} " + words(figures[name]))
            results[rung].append(figures)
    return results


def words(figures: dict) -> str:
    """One phase's figures as a line."""
    failed = f", {figures['failed']} failed" if figures["failed"] else ""
    return (f"{figures['per_s']}/s; CPU ms per handshake: server {figures['server_ms']}, "
            f"client {figures['client_ms']}, Redis {figures['redis_ms']}; the cores would serve "
            f"{figures['cores_would_serve_per_s']}/s{failed}")


def summary(results: dict[str, list[dict]]) -> str:
    """A table of each rung's median figures over its rounds, fresh and resuming."""
    lines = ["| rung | phase | handshakes/s | CPU ms per handshake: server, client, Redis "
             "| the cores would serve/s | failed |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for rung, rounds in results.items():
        for name in ("fresh", "resume"):
            runs = [r[name] for r in rounds if name in r]
            if runs:
                cpu = ", ".join(median_of(runs, key)
                                for key in ("server_ms", "client_ms", "redis_ms"))
                cells = [median_of(runs, "per_s"), cpu,
                         median_of(runs, "cores_would_serve_per_s")]
                lines.append(f"| {rung} | {name} | " + " | ".join(cells)
                             + f" | {sum(r['failed'] for r in runs)} |")
    return "\n".join(lines)


def median_of(runs: list[dict], key: str) -> str:
    """The median of one figure over rounds, as a table cell (- when none has it)."""
    values = [r[key] for r in runs if r[key] is not None]
    if not values:
        return "-"
    middle = statistics.median(values)
    return f"{middle:.2f}" if key.endswith("_ms") else f"{round(middle):,}"



def main(argv: list[str] | None = None) -> int:
    """Entry point of python -m loadtest.ladder: exits 1 when a handshake failed."""
    args = parse(argv)
    raise_nofile()
    state = args.state_dir if args.state_dir.is_absolute() else REPO / args.state_dir
    system = Ours(state, args.port_offset)
    started_topology = False
    if not system.topology.running():
        busy = [p for p in system.ports() if port_busy(p)]
        if busy:
            raise SystemExit(f"ports taken: {busy}; pick another --port-offset")
        print(f"[ladder] starting the topology in {state}")
        system.start()
        started_topology = True
    rungs: dict[str, tuple] = {}
    try:
        cookies = system.cookies(args.users)
        rungs = start_rungs(system, args.rungs, state.parent)
        results = asyncio.run(climb(args, system, rungs, cookies))
    finally:
        stop_rungs(rungs)
        if started_topology:
            system.stop()
    result = {"config": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in vars(args).items()},
              "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M"),
              "rungs": results}
    out = args.json or Path("build/ladder") / f"ladder-{time.strftime('%m%d%H%M%S')}.json"
    out = out if out.is_absolute() else REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("\n" + summary(results) + f"\n\nresults: {out}")
    failed = sum(r[p]["failed"] for rounds in results.values() for r in rounds for p in r)
    return 1 if failed else 0
