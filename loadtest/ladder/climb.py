"""Command line and driver of the handshake ladder.

    python -m loadtest.ladder [--sockets 3000] [--rounds 2] [--rungs bare,auth,consumer,full]

Starts the local topology on shifted ports (or uses the one running in --state-dir) for its
Redis, database and signed-in users, then one extra WebSocket process per rung
(`loadtest.ladder.rungs`). Per round and rung the benchmark's load generator opens --sockets
sockets straight to that process (no nginx), --concurrency handshakes in flight, spread over
--rooms rooms with a different user per room position: fresh joins until each has its
`history_end`; then it closes them (`park`) and reopens them resuming from that position
(nothing missed) until each has its `resume_end`. For each phase it reports handshakes/s, the
CPU per handshake of the rung process, the generator and the Redis master, and what the
machine's cores would serve at that cost (nginx's share left out), as the storm drill does.
Closes are outside the timed phases.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from deploy.local.topology import REPO
from loadtest.bench.generator import Generator, Spec, raise_nofile
from loadtest.bench.systems import Ours, ours_running, port_busy, total_cpu_seconds, wait_port
from loadtest.storm.drill import Config, build_specs, cpu_per_handshake
from loadtest.storm.report import cpu_words

from .rungs import RUNGS

PARTS = ("ws", "clients", "redis")  # whose CPU a phase counts: the rung process, the
# generator, the Redis master


def specs_for(port: int, tag: str, count: int, rooms: int, headers, cookies: list[str],
              workers: int) -> list[Spec]:
    """The storm drill's sockets (a different user per room position, over 127.0.0.2-9) sent
    to one rung process; none is a sender, so that every one is parked and resumed."""
    config = Config(clients=count, rooms=rooms, run_id=f"ladder-{tag}")
    return [dataclasses.replace(spec, sender=False) for spec in
            build_specs(config, f"ws://127.0.0.1:{port}", headers, cookies, workers)]


def phase_figures(count: int, failed: int, seconds: float, before: dict, after: dict) -> dict:
    """One phase: handshakes that ended their join, those that did not, per second, and the
    CPU per handshake by part with what the cores would serve (`cpu_per_handshake`)."""
    return {"handshakes": count, "failed": failed,
            "per_s": round(count / max(seconds, 1e-6)),
            "cpu_ms": cpu_per_handshake(before, after, count)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.ladder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--sockets", type=int, default=3000, help="sockets per phase")
    add("--rooms", type=int, default=100)
    add("--users", type=int, default=100, help="signed-in users (sessions)")
    add("--concurrency", type=int, default=32, help="handshakes in flight")
    add("--workers", type=int, default=1, help="load generator processes")
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
    try:
        for _process, port in started.values():
            wait_port(port, 60)
    except BaseException:
        stop_rungs(started)  # the caller never gets them to stop
        raise
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


def climb(args, system: Ours, started: dict[str, tuple], cookies: list[str],
          log=print) -> dict:
    """Every round's phases of every rung: {rung: [{"fresh": ..., "resume": ...}, ...]}."""
    results: dict[str, list[dict]] = {rung: [] for rung in args.rungs}
    redis_pid = system.topology.pid("redis-master")  # the layer's, the store's and the cache's
    generator = Generator(args.workers)
    run = time.strftime("%H%M%S")
    try:
        for round_ in range(args.rounds):
            for rung in args.rungs:
                process, port = started[rung]
                pids = {"ws": [process.pid], "clients": generator.pids(), "redis": [redis_pid]}

                def cpu_now(pids=pids) -> dict[str, float]:
                    return {part: total_cpu_seconds(pids[part]) for part in PARTS}

                specs = specs_for(port, f"{run}-{round_}-{rung}", args.sockets, args.rooms,
                                  system.headers, cookies, generator.size)
                time.sleep(args.pause)
                before = cpu_now()
                opened = generator.connect(specs, args.concurrency, args.timeout, 0,
                                           '"history_end"', args.timeout)
                ready = generator.wait_ready(args.timeout)
                fresh = phase_figures(ready["ready"], len(specs) - ready["ready"],
                                      ready["at"] - opened["start"], before, cpu_now())
                generator.park(1)
                time.sleep(args.pause)
                before = cpu_now()
                resumed = generator.resume(args.concurrency, args.timeout, args.timeout)
                resume = phase_figures(resumed["ready"], len(specs) - resumed["ready"],
                                       resumed["ready_seconds"], before, cpu_now())
                generator.close_all()
                results[rung].append({"fresh": fresh, "resume": resume})
                for name, figures in (("fresh", fresh), ("resume", resume)):
                    log(f"[ladder] round {round_ + 1} {rung:8} {name:6} " + words(figures))
    finally:
        generator.shutdown()
    return results


def words(figures: dict) -> str:
    """One phase's figures as a line."""
    failed = f", {figures['failed']} failed" if figures["failed"] else ""
    return f"{figures['per_s']}/s{failed}; {cpu_words(figures['cpu_ms'])}"


def summary(results: dict[str, list[dict]]) -> str:
    """A table of each rung's median figures over its rounds, fresh and resuming."""
    lines = ["| rung | phase | handshakes/s | CPU ms per handshake: server, clients, Redis "
             "| the cores would serve/s | failed |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for rung, rounds in results.items():
        for name in ("fresh", "resume"):
            runs = [r[name] for r in rounds if name in r]
            if runs:
                cpu = ", ".join(median_of([r["cpu_ms"] for r in runs], part, ms=True)
                                for part in PARTS)
                cells = [median_of(runs, "per_s"), cpu,
                         median_of([r["cpu_ms"] for r in runs], "capacity_per_s")]
                lines.append(f"| {rung} | {name} | " + " | ".join(cells)
                             + f" | {sum(r['failed'] for r in runs)} |")
    return "\n".join(lines)


def median_of(runs: list[dict], key: str, ms: bool = False) -> str:
    """The median of one figure over rounds, as a table cell (- when none has it)."""
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return "-"
    middle = statistics.median(values)
    return f"{middle:.2f}" if ms else f"{round(middle):,}"



def main(argv: list[str] | None = None) -> int:
    """Entry point of python -m loadtest.ladder: exits 1 when a handshake failed."""
    args = parse(argv)
    raise_nofile()
    state = args.state_dir if args.state_dir.is_absolute() else REPO / args.state_dir
    with ours_running(state, args.port_offset, lambda line: print(f"[ladder] {line}")) as system:
        rungs: dict[str, tuple] = {}
        try:
            cookies = system.cookies(args.users)
            rungs = start_rungs(system, args.rungs, state.parent)
            results = climb(args, system, rungs, cookies)
        finally:
            stop_rungs(rungs)
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
