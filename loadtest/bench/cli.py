"""Command line of the fan-out benchmark.

    python -m loadtest.bench [--sizes 100,1000,5000] [--systems ours,stock,ceiling]
        [--out docs/benchmarks.md] [--max-steps N] [--port-offset 6000] [--diagnose] ...

Starts the three systems (chanfleet's topology, the reference chapter's stock project, the
no-Django ceiling), each behind nginx with two WebSocket processes, runs every room size
against each in turn with the same load generator, prints the figures and the ratios
ours/stock and ours/ceiling, and writes the JSON results (and, with --out, the generated
section of docs/benchmarks.md). Every process it starts is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deploy.local.topology import REPO

from . import report
from .generator import Generator, raise_nofile
from .runner import Config, Scenario
from .systems import Ceiling, Ours, Stock, port_busy


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Config()
    add = parser.add_argument
    add("--sizes", default="100,1000,5000", help="room sizes")
    add("--systems", default="ours,stock,ceiling")
    add("--out", type=Path, help="markdown file whose generated section to write")
    add("--json", type=Path, default=Path("build/bench/results.json"))
    add("--state-dir", type=Path, default=Path("build/bench/state"))
    add("--port-offset", type=int, default=6000,
        help="ours on Ports().shifted(N); stock on 8500+N, ceiling on 8600+N")
    add("--budget", type=int, default=d.budget,
        help="sockets per scenario at least (rooms = budget // size)")
    add("--users", type=int, default=d.users, help="signed-in users (sessions) per system")
    add("--workers", type=int, default=d.workers, help="load generator processes")
    add("--concurrency", type=int, default=d.concurrency, help="handshakes in flight")
    add("--comfort", default="",
        help="comfortable msg/s per room by size, e.g. 100:5,5000:2 (default: "
             f"{100 * d.comfort_share:.0f}%% of the first system's best step)")
    add("--comfort-seconds", type=float, default=d.comfort_seconds)
    add("--step-seconds", type=float, default=d.step_seconds)
    add("--warm-seconds", type=float, default=d.warm_seconds)
    add("--max-steps", type=int, default=d.max_steps,
        help="stop the ramp after N steps (default 0: ramp until the system saturates)")
    add("--start-deliveries", type=float, default=d.start_deliveries,
        help="deliveries/s offered by the first step")
    add("--growth", type=float, default=d.growth, help="rate factor from step to step")
    add("--p99-bound", type=float, default=d.p99_bound_ms,
        help="capacity: the highest step that lost nothing with p99 <= this (ms)")
    add("--connect-timeout", type=float, default=d.connect_timeout)
    add("--resume-share", type=float, default=d.resume_share,
        help="share of ours' sockets reopened with ?last_seq= to measure resuming "
             "handshakes/s (0: skip)")
    add("--drain-timeout", type=float, default=d.drain_timeout)
    add("--settle-timeout", type=float, default=d.settle_timeout)
    add("--max-wait", type=float, default=d.max_wait,
        help="seconds to wait for other work on the machine to calm down")
    add("--diagnose", action="store_true",
        help="also read /proc counters over the comfortable phase and py-spy ours' WebSocket "
             "processes (printed and in the JSON, not in the document)")
    add("--profile-seconds", type=float, default=d.profile_seconds,
        help="py-spy seconds with --diagnose")
    add("--ours-ws-env", action="append", default=[], metavar="NAME=VALUE",
        help="extra environment for ours' WebSocket processes (A/B experiments)")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    """The run's Config from parsed options."""
    comfort = {}
    for item in filter(None, args.comfort.split(",")):
        size, _, rate = item.partition(":")
        comfort[int(size)] = float(rate)
    return Config(
        sizes=[int(s) for s in args.sizes.split(",") if s],
        systems=[s for s in args.systems.split(",") if s],
        budget=args.budget, users=args.users, workers=args.workers,
        concurrency=args.concurrency, comfort=comfort, comfort_seconds=args.comfort_seconds,
        step_seconds=args.step_seconds, warm_seconds=args.warm_seconds,
        max_steps=args.max_steps, start_deliveries=args.start_deliveries, growth=args.growth,
        p99_bound_ms=args.p99_bound, connect_timeout=args.connect_timeout,
        resume_share=args.resume_share,
        drain_timeout=args.drain_timeout, settle_timeout=args.settle_timeout,
        max_wait=args.max_wait, diagnose=args.diagnose, profile_seconds=args.profile_seconds,
        out_dir=args.json.parent, run_id=time.strftime("%m%d%H%M%S"),
    )


def build_systems(config: Config, state: Path, offset: int,
                  ws_env: dict[str, str] | None = None) -> list:
    """The systems asked for, on their ports."""
    makers = {
        "ours": lambda: Ours(state / "ours", offset, ws_env),
        "stock": lambda: Stock(state / "stock", 8500 + offset),
        "ceiling": lambda: Ceiling(state / "ceiling", 8600 + offset),
    }
    unknown = set(config.systems) - set(makers)
    if unknown:
        raise SystemExit(f"unknown systems: {sorted(unknown)}")
    return [makers[name]() for name in config.systems]


def commit() -> str:
    """The checkout's short commit, marked when the tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def run(config: Config, state: Path, offset: int = 6000, log=print, command: str = "",
        ws_env: dict[str, str] | None = None) -> dict:
    """Run the whole benchmark; return {"run": ..., "results": [...]}."""
    raise_nofile()
    started = time.time()
    state = state.resolve()
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    systems = build_systems(config, state, offset, ws_env)
    busy = [(s.name, p) for s in systems for p in s.ports() if port_busy(p)]
    if busy:
        raise SystemExit(f"ports taken: {busy}; pick another --port-offset")
    run_info = {"run_id": config.run_id, "command": command, "commit": commit(),
                "config": _jsonable(config), "machine": report.machine(),
                "started": time.strftime("%Y-%m-%d %H:%M"), "sessions": {},
                "ours_ws_env": ws_env or {},
                "database": ("PostgreSQL" if os.environ.get("DATABASE_URL", "").startswith(
                    "postgres") else "SQLite (WAL)")}
    results: list[dict] = []
    generator: Generator | None = None
    try:
        for system in systems:
            log(f"starting {system.name}")
            system.start()
        for system in systems:
            system.cookies(config.users, log=log)
            run_info["sessions"][system.name] = system.check_session_queries()
        generator = Generator(config.workers)
        for size in config.sizes:
            comfort_rate = None  # set by the first system of this size, used by the others
            for system in systems:
                scenario = Scenario(config, system, size, generator, log, comfort_rate)
                try:
                    results.append(scenario.run())
                    comfort_rate = comfort_rate or scenario.comfort_rate
                except Exception as error:  # keep the other scenarios' figures
                    log(f"  {system.name} x{size} failed: {error!r}")
                    scenario.result["error"] = repr(error)
                    results.append(scenario.result)
                    if isinstance(error, TimeoutError):
                        generator.shutdown()
                        generator = Generator(config.workers)
                finally:
                    system.restart_ws()
                    try:
                        generator.close_all(15)
                    except (TimeoutError, RuntimeError):
                        generator.shutdown()
                        generator = Generator(config.workers)
    finally:
        if generator is not None:
            generator.shutdown()
        for system in systems:
            try:
                system.stop()
            except Exception as error:
                log(f"stopping {system.name} failed: {error!r}")
    run_info["minutes"] = round((time.time() - started) / 60, 1)
    return {"run": run_info, "results": results}


def _jsonable(config: Config) -> dict:
    data = dataclasses.asdict(config)
    data["out_dir"] = str(config.out_dir)
    data["comfort"] = {str(k): v for k, v in config.comfort.items()}
    return data


def print_diagnosis(results: list[dict]) -> None:
    """The --diagnose counters and profiles, on the console only."""
    for result in results:
        counters = result.get("comfort", {}).get("counters")
        if counters:
            print(f"{result['system']} x{result['size']} comfortable phase: "
                  + ", ".join(f"{key} {value}" for key, value in counters.items()))
        for key in ("profile_connect", "profile_resume", "profile"):
            profile = result.get(key)
            if profile and profile.get("self"):
                print(f"{result['system']} x{result['size']} {key} ({profile['samples']} "
                      f"samples, {' '.join(profile['files'])}); top self: "
                      + "; ".join(f"{share}% {name}" for name, share in profile["self"][:8]))
            elif profile:
                print(f"{result['system']} x{result['size']} {key}: {profile.get('error')}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of python -m loadtest.bench."""
    args = parse(argv)
    config = config_from(args)
    command = "python -m loadtest.bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    outcome = run(config, args.state_dir if args.state_dir.is_absolute()
                  else REPO / args.state_dir, args.port_offset, command=command,
                  ws_env=dict(item.split("=", 1) for item in args.ours_ws_env))
    results = outcome["results"]
    json_path = args.json if args.json.is_absolute() else REPO / args.json
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(outcome, indent=1, default=str))
    print("\n" + report.headline(results, config.p99_bound_ms))
    if config.diagnose:
        print()
        print_diagnosis(results)
    print(f"\nresults: {json_path}")
    if args.out:
        out = args.out if args.out.is_absolute() else REPO / args.out
        report.write_markdown(out, report.generated_section(results, outcome["run"]))
        print(f"wrote {out}")
    gaps = report.missing_figures(results)
    if gaps:
        print("missing figures: " + "; ".join(gaps))
        return 1
    return 0
