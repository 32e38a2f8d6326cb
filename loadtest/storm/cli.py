"""Command line of the reconnect-storm drill.

    python -m loadtest.storm [--clients 10000] [--rooms 100] [--users 100] [--mode kill|drain]
        [--port-offset 7000] [--max-resume-seconds 15] [--max-lost 0] ...

Starts the local topology on shifted ports (or attaches to the one already running in
--state-dir) with the benchmark's rate limits and nginx limits, opens N chat clients through
nginx spread over both WebSocket processes, measures fresh joins/s and resumes/s with nothing
else going on, then kills (`kill -9`) or drains one WebSocket process while a sender per room
sends, and measures how long its clients take to resume, which handshakes were refused or
failed, and whether any event was lost or duplicated. Prints a summary, writes the JSON to
build/storm/, and exits 1 when a target fails (the defaults are issue 32's targets).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from deploy.local.topology import REPO
from loadtest.bench.generator import raise_nofile
from loadtest.bench.systems import ours_running

from . import report
from .drill import Config, Drill

SERVER_DRAIN_WINDOW = 10.0  # DRAIN_WINDOW's default (app/settings.py), when not overridden


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.storm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Config()
    add = parser.add_argument
    add("--clients", type=int, default=d.clients)
    add("--rooms", type=int, default=d.rooms)
    add("--users", type=int, default=d.users, help="signed-in users (sessions)")
    add("--mode", choices=("kill", "drain"), default=d.mode)
    add("--target", type=int, default=d.target, help="which WebSocket process (0 or 1)")
    add("--workers", type=int, default=d.workers,
        help="load generator processes (default: one per 4,000 clients, at least 2)")
    add("--concurrency", type=int, default=d.concurrency,
        help="handshakes in flight while measuring fresh joins/s and resumes/s")
    add("--resume-share", type=float, default=d.resume_share,
        help="share of the clients reopened to measure resumes/s (0: skip)")
    add("--rate", type=float, default=d.rate, help="messages/s per room's sender")
    add("--before-fault", type=float, default=d.before_fault)
    add("--after-resumed", type=float, default=d.after_resumed)
    add("--storm-timeout", type=float, default=d.storm_timeout)
    add("--handshake-timeout", type=float, default=d.handshake_timeout)
    add("--settle-timeout", type=float, default=d.settle_timeout)
    add("--drain-window", type=float, help="POST /internal/drain?window= (default: the server's)")
    add("--port-offset", type=int, default=7000, help="the topology on Ports().shifted(N)")
    add("--state-dir", type=Path, default=Path("build/storm/state"),
        help="the topology's state folder; a topology running there is used as it is")
    add("--json", type=Path, help="result file (default build/storm/<mode>-<time>.json)")
    targets = parser.add_argument_group("targets (exit 1 when one fails; -1 turns one off)")
    targets.add_argument("--max-resume-seconds", type=float,
                         help="every affected client resumed within this many seconds of the "
                              "fault (default: 15 after a kill, the drain window + 5 after a "
                              "drain)")
    targets.add_argument("--max-not-resumed", type=int, default=0)
    targets.add_argument("--max-refused", type=int, default=0)
    targets.add_argument("--max-failed", type=int, default=-1)
    targets.add_argument("--max-lost", type=int, default=0)
    targets.add_argument("--max-duplicates", type=int, default=0)
    targets.add_argument("--min-resumes-per-s", type=float, default=1000.0,
                         help="resumes/s with nothing missed (nothing else going on)")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    """The drill's Config from parsed options."""
    return Config(
        clients=args.clients, rooms=args.rooms, users=args.users, mode=args.mode,
        target=args.target, workers=args.workers, concurrency=args.concurrency,
        resume_share=args.resume_share, rate=args.rate, before_fault=args.before_fault,
        after_resumed=args.after_resumed, storm_timeout=args.storm_timeout,
        handshake_timeout=args.handshake_timeout, settle_timeout=args.settle_timeout,
        drain_window=args.drain_window, run_id=time.strftime("%m%d%H%M%S"),
    )


def limits_from(args: argparse.Namespace) -> dict[str, float]:
    """The targets to check, by result figure (those set to -1 left out)."""
    resume = args.max_resume_seconds
    if resume is None:
        window = args.drain_window if args.drain_window is not None else SERVER_DRAIN_WINDOW
        resume = 15.0 if args.mode == "kill" else window + 5
    limits = {"max_resume_seconds": resume, "max_not_resumed": args.max_not_resumed,
              "max_refused": args.max_refused, "max_failed": args.max_failed,
              "max_lost": args.max_lost, "max_duplicates": args.max_duplicates,
              "min_resumes_per_s": args.min_resumes_per_s}
    return {name: value for name, value in limits.items() if value != -1}


def run(config: Config, state: Path, offset: int, log=print) -> dict:
    """Start (or attach to) the topology, run the drill, stop what it started."""
    raise_nofile()
    with ours_running(state, offset, lambda line: log(f"[storm] {line}")) as system:
        return Drill(config, system, log).run()


def main(argv: list[str] | None = None) -> int:
    """Entry point of python -m loadtest.storm."""
    args = parse(argv)
    config = config_from(args)
    state = args.state_dir if args.state_dir.is_absolute() else REPO / args.state_dir
    load_before = report.load_average()
    result = run(config, state, args.port_offset)
    result["machine"]["load_average_before"] = load_before
    limits = limits_from(args)
    failures = report.failures(result, limits)
    result["limits"], result["failures"] = limits, failures
    out = args.json or Path("build/storm") / f"{config.mode}-{config.run_id}.json"
    out = out if out.is_absolute() else REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print("\n" + report.summary(result))
    print(f"\nresults: {out}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("RESULT: " + ("FAIL" if failures else "PASS"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
