"""Command line of the scale benchmark (`make bench-scale`, not in CI).

    python -m loadtest.scale [--members 50000] [--ws-processes 4] [--nginx-workers 8]
        [--shards 1] [--fanout pubsub] [--broadcasts 20] [--interval 5] [--systems ours,ceiling]
        [--out docs/benchmarks.md]

One room of N members through nginx, on ours (the chanfleet topology, shifted ports) and on
the no-Django ceiling, one after the other, each with the same number of WebSocket processes
and nginx workers: every process here may hold at most 20,000 file descriptors, so the
sockets are spread over several of each, and the load generator opens them from several
127.0.0.x source addresses over one generator process per 4,000 sockets. Reports, per
system, handshakes/s, the first and last delivery of each broadcast (p50/p99), deliveries
lost, resident KiB per socket in the WebSocket processes and in nginx's workers, and Redis
CPU per broadcast; then Redis's cost of a broadcast by room size (`loadtest.redis_cost`).
Writes build/scale/<time>.json and, with --out, the generated section of the report. Every
process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deploy.local.topology import REPO
from loadtest.bench.cli import commit
from loadtest.bench.generator import raise_nofile
from loadtest.bench.report import write_markdown
from loadtest.bench.systems import Ceiling, Ours, port_busy

from . import report
from .run import Config, measure


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Config()
    add = parser.add_argument
    add("--members", type=int, default=d.members, help="sockets in the room")
    add("--rooms", type=int, default=d.rooms,
        help="deal the members over this many rooms, each with a sender (the model's check)")
    add("--users", type=int, default=d.users, help="signed-in users the sockets belong to")
    add("--broadcasts", type=int, default=d.broadcasts)
    add("--interval", type=float, default=d.interval, help="seconds between broadcasts")
    add("--concurrency", type=int, default=d.concurrency, help="handshakes in flight")
    add("--ws-processes", type=int, default=4, help="WebSocket processes of each system")
    add("--nginx-workers", type=int, default=8)
    add("--shards", type=int, default=1, help="ours: Redis masters of the channel layer")
    add("--fanout", choices=("pubsub", "script"), default="pubsub",
        help="ours: CHANNEL_GROUP_FANOUT")
    add("--systems", default="ours,ceiling")
    add("--cost-sizes", default="100,1000,10000,50000",
        help="room sizes of the Redis cost table ('' skips it)")
    add("--port-offset", type=int, default=6000,
        help="ours on Ports().shifted(N), the ceiling from 8600+N")
    add("--out", type=Path, help="write the generated section of this Markdown file")
    add("--json", type=Path, help="result file (default build/scale/<time>.json)")
    add("--from-json", type=Path, help="run nothing: write the section of a saved result")
    return parser.parse_args(argv)


def nginx_values(port: int, workers: int) -> dict[str, str]:
    """nginx for many sockets: more workers, each accepting on its own socket (reuseport), so
    the kernel spreads connections evenly and no worker runs into its descriptor limit."""
    return {"WORKER_PROCESSES": str(workers), "WORKER_CONNECTIONS": "19000",
            "LISTEN": f"127.0.0.1:{port} reuseport"}


def build_systems(args: argparse.Namespace, state: Path) -> list:
    """The systems asked for, each with the same WebSocket processes and nginx workers."""
    offset, count = args.port_offset, args.ws_processes
    made = []
    for name in args.systems.split(","):
        if name == "ours":
            nginx_port = 8000 + offset
            made.append(Ours(state / "ours", offset, {"CHANNEL_GROUP_FANOUT": args.fanout},
                             ws_processes=count, shards=args.shards,
                             nginx_values=nginx_values(nginx_port, args.nginx_workers)))
        elif name == "ceiling":
            base = 8600 + offset
            made.append(Ceiling(state / "ceiling", base, processes=count,
                                nginx_values=nginx_values(base, args.nginx_workers)))
        else:
            raise SystemExit(f"unknown system {name!r} (ours, ceiling)")
    return made


def redis_cost(sizes: str, out: Path) -> list[dict]:
    """Rows of `python -m loadtest.redis_cost` (its own Redis), both fan-outs."""
    if not sizes:
        return []
    subprocess.run([sys.executable, "-m", "loadtest.redis_cost", "--sizes", sizes,
                    "--json", str(out)], cwd=REPO, check=True)
    return json.loads(out.read_text())["rows"]


def run(args: argparse.Namespace, config: Config, log=print) -> dict:
    """Each system in turn: start, measure, stop. Then the Redis cost table."""
    raise_nofile()
    state = (REPO / "build" / "scale" / "state").resolve()
    if state.exists():
        shutil.rmtree(state)
    systems = build_systems(args, state)
    busy = [(s.name, p) for s in systems for p in s.ports() if port_busy(p)]
    if busy:
        raise SystemExit(f"ports taken: {busy}; pick another --port-offset")
    results = []
    for system in systems:
        log(f"[scale] starting {system.name}")
        system.start()
        try:
            results.append(measure(system, config, log))
        finally:
            system.stop()
    return {"results": results,
            "cost": redis_cost(args.cost_sizes, state / "redis_cost.json")}


def main(argv: list[str] | None = None) -> int:
    """Entry point of python -m loadtest.scale."""
    args = parse(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        section = report.section(saved["results"], saved["cost"], saved["run"])
        print(section)
        if args.out:
            write_markdown(args.out, section, report.BEGIN, report.END)
        return 0
    config = Config(members=args.members, rooms=args.rooms, users=args.users,
                    broadcasts=args.broadcasts, interval=args.interval,
                    concurrency=args.concurrency, run_id=time.strftime("%m%d%H%M%S"))
    started = time.time()
    outcome = run(args, config)
    info = {"id": config.run_id, "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "minutes": (time.time() - started) / 60,
            "command": " ".join(["python -m loadtest.scale", *(argv or sys.argv[1:])]),
            "nginx_workers": args.nginx_workers, "users": args.users, "fanout": args.fanout,
            "shards": args.shards}
    section = report.section(outcome["results"], outcome["cost"], info)
    out = args.json or Path("build/scale") / f"{config.run_id}.json"
    out = out if out.is_absolute() else REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": info, **outcome}, indent=1, default=str))
    print("\n" + section)
    print(f"\nresults: {out}")
    if args.out:
        write_markdown(args.out, section, report.BEGIN, report.END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
