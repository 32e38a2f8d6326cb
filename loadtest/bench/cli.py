"""Command line of the fan-out benchmark.

    python -m loadtest.bench [--sizes 100,1000,5000] [--systems ours,stock,ceiling]
        [--out docs/benchmarks.md] [--profile 15] [--port-offset 6000] ...

Starts the three systems (chanfleet's topology, the reference chapter's stock project, the
no-Django ceiling), each behind nginx with two WebSocket processes, runs every room size
against each in turn with the same load generator, prints every figure and the ratios
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
import sys
import time
from pathlib import Path

from deploy.local.topology import REPO

from . import report
from .generator import ARRIVALS, Generator, raise_nofile
from .runner import Config, Scenario
from .systems import Ceiling, Ours, Stock, port_busy


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    parser.add_argument("--sizes", default="100,1000,5000", help="room sizes")
    parser.add_argument("--systems", default="ours,stock,ceiling")
    parser.add_argument("--out", type=Path, help="markdown file to write (docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, default=Path("build/bench/results.json"))
    parser.add_argument("--state-dir", type=Path, default=Path("build/bench/state"))
    parser.add_argument("--port-offset", type=int, default=6000,
                        help="ours on Ports().shifted(N); stock on 8500+N, ceiling on 8600+N")
    parser.add_argument("--budget", type=int, default=defaults.budget,
                        help="sockets per scenario at least (rooms = budget // size)")
    parser.add_argument("--users", type=int, default=defaults.users,
                        help="signed-in users (sessions) per system")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help="handshakes in flight")
    parser.add_argument("--source-addrs", type=int, default=defaults.source_addrs)
    parser.add_argument("--comfort", default="",
                        help="comfortable msg/s per room by size, e.g. 100:5,1000:5,5000:2")
    parser.add_argument("--comfort-seconds", type=float, default=defaults.comfort_seconds)
    parser.add_argument("--comfort-share", type=float, default=defaults.comfort_share,
                        help="comfortable load = this share of the first system's saturation")
    parser.add_argument("--step-seconds", type=float, default=defaults.step_seconds)
    parser.add_argument("--warm-seconds", type=float, default=defaults.warm_seconds)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--start-deliveries", type=float, default=defaults.start_deliveries)
    parser.add_argument("--growth", type=float, default=defaults.growth)
    parser.add_argument("--connect-timeout", type=float, default=defaults.connect_timeout)
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout)
    parser.add_argument("--settle-timeout", type=float, default=defaults.settle_timeout)
    parser.add_argument("--max-wait", type=float, default=defaults.max_wait,
                        help="seconds to wait for other work on the machine to calm down")
    parser.add_argument("--max-foreign-busy", type=float, default=defaults.max_foreign_busy)
    parser.add_argument("--arrivals", choices=ARRIVALS, default=defaults.arrivals,
                        help="when senders send: at random moments (default) or evenly "
                             "spaced at a random phase per room (generator.send_times)")
    parser.add_argument("--no-balance-senders", dest="balance_senders", action="store_false",
                        help="let nginx's hash of random session cookies place the senders "
                             "(default: the rooms' senders go to the WebSocket processes in "
                             "turn; loadtest/bench/placement.py)")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="py-spy ours' WebSocket processes at saturation for SECONDS")
    parser.add_argument("--ours-ws-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for ours' WebSocket processes (A/B experiments)")
    parser.add_argument("--stock-max-connections", type=int, default=0,
                        help="raise the stock layer's redis-py pool limit (default: untouched)")
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
        concurrency=args.concurrency, source_addrs=args.source_addrs, comfort=comfort,
        comfort_seconds=args.comfort_seconds, comfort_share=args.comfort_share,
        step_seconds=args.step_seconds,
        warm_seconds=args.warm_seconds, max_steps=args.max_steps,
        start_deliveries=args.start_deliveries, growth=args.growth,
        connect_timeout=args.connect_timeout, drain_timeout=args.drain_timeout,
        settle_timeout=args.settle_timeout, max_wait=args.max_wait,
        max_foreign_busy=args.max_foreign_busy, profile_seconds=args.profile,
        balance_senders=args.balance_senders, arrivals=args.arrivals,
        profile_dir=args.json.parent, run_id=time.strftime("%m%d%H%M%S"),
    )


def build_systems(config: Config, state: Path, offset: int, stock_max: int,
                  ws_env: dict[str, str] | None = None) -> list:
    """The systems asked for, on their ports."""
    makers = {
        "ours": lambda: Ours(state / "ours", offset, ws_env),
        "stock": lambda: Stock(state / "stock", 8500 + offset, stock_max or None),
        "ceiling": lambda: Ceiling(state / "ceiling", 8600 + offset),
    }
    unknown = set(config.systems) - set(makers)
    if unknown:
        raise SystemExit(f"unknown systems: {sorted(unknown)}")
    return [makers[name]() for name in config.systems]


def run(config: Config, state: Path, offset: int = 6000, stock_max: int = 0,
        log=print, command: str = "", ws_env: dict[str, str] | None = None) -> dict:
    """Run the whole benchmark; return {"run": ..., "results": [...]}."""
    raise_nofile()
    started = time.time()
    state = state.resolve()
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    systems = build_systems(config, state, offset, stock_max, ws_env)
    busy = [(s.name, p) for s in systems for p in s.ports() if port_busy(p)]
    if busy:
        raise SystemExit(f"ports taken: {busy}; pick another --port-offset")
    run_info = {"run_id": config.run_id, "command": command, "config": _jsonable(config),
                "machine": report.machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "sessions": {}, "stock_max_connections": stock_max or None,
                "ours_ws_env": ws_env or {},
                "database": ("PostgreSQL" if os.environ.get("DATABASE_URL", "").startswith(
                    "postgres") else "SQLite (WAL)")}
    results: list[dict] = []

    def new_generator() -> Generator:
        return Generator(config.workers, config.arrivals)

    generator: Generator | None = None
    try:
        for system in systems:
            log(f"starting {system.name}")
            system.start()
        for system in systems:
            system.cookies(config.users, log=log)
            run_info["sessions"][system.name] = system.check_session_queries()
        log(f"session check: {json.dumps(run_info['sessions'])}")
        generator = new_generator()
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
                        generator = new_generator()
                finally:
                    system.restart_ws()
                    try:
                        generator.close_all(15)
                    except (TimeoutError, RuntimeError):
                        generator.shutdown()
                        generator = new_generator()
    finally:
        if generator is not None:
            generator.shutdown()
        for system in systems:
            try:
                system.stop()
            except Exception as error:
                log(f"stopping {system.name} failed: {error!r}")
    run_info["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    run_info["seconds"] = time.time() - started
    run_info["foreign_busy"] = ", ".join(
        f"{r['system']} x{r['size']} {r.get('foreign_busy', 0):.0%}" for r in results)
    return {"run": run_info, "results": results}


def _jsonable(config: Config) -> dict:
    data = dataclasses.asdict(config)
    data["profile_dir"] = str(config.profile_dir)
    data["comfort"] = {str(k): v for k, v in config.comfort.items()}
    return data


def main(argv: list[str] | None = None) -> int:
    """Entry point of python -m loadtest.bench."""
    args = parse(argv)
    config = config_from(args)
    command = "python -m loadtest.bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    outcome = run(config, args.state_dir if args.state_dir.is_absolute()
                  else REPO / args.state_dir, args.port_offset, args.stock_max_connections,
                  command=command,
                  ws_env=dict(item.split("=", 1) for item in args.ours_ws_env))
    results = outcome["results"]
    json_path = args.json if args.json.is_absolute() else REPO / args.json
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(outcome, indent=1, default=str))
    print("\n" + report.figures_table(results))
    print("\n" + report.ratios_text(results))
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
