"""Run a load-test scenario against a chanfleet topology and write its report.

    python -m loadtest.run smoke|soak|failover|rollout [--users N] [--rooms R]
        [--duration S] [--host URL] [--out DIR] [--state-dir DIR --port-offset N]

Scenarios (defaults; --duration is the plateau):

* smoke: 24 users, 4 rooms, 20 s plateau: a quick end-to-end check.
* soak: 100 users, 10 rooms, 10 min plateau.
* failover: 40 users; 30 s into the plateau the Redis master is killed (SIGKILL) and kept
  down --hold-down s (10) so the sentinels promote the replica; the fault window lasts until
  every app process reaches Redis and its channel layer again.
* rollout: 40 users; from 20 s into the plateau each WebSocket process in turn is drained
  (POST /internal/drain: its clients get `reconnect` + 1012 over DRAIN_WINDOW, then it
  exits and supervisor restarts it), waiting for the new process's /readyz before the next.

The target defaults to the topology of `make run` (http://127.0.0.1:8000, state var/run); the
load users are created there with `manage.py make_load_users` in the topology's environment,
and their session cookies are kept in the state folder (loadtest-sessions.json) so that later
runs skip the PBKDF2 logins (--no-session-cache logs everyone in again).
Locust runs headless as a subprocess; the run folder (default build/loadtest/<scenario>-<time>)
gets Locust's CSV and HTML, locust.log, timeseries.jsonl, summary.json, faults.json and the
PNG plots. While the run lasts, loadtest.resources samples the topology's memory, file
descriptors and Redis keys (resources.jsonl, resources.json with growth per hour,
resources.png; --resources-interval 0 turns it off). The exit status is non-zero when a
threshold fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.local.topology import REPO, Ports, Topology
from loadtest import report, resources

# Sized for the 2-core machine the whole topology shares with Locust: each first login costs
# ~0.5 s of PBKDF2 CPU, so ramps stay near 2 logins/s (later runs reuse the sessions).
SCENARIOS = {
    "smoke": {"users": 24, "rooms": 4, "duration": 20, "ramp": 10, "ramp_down": 3},
    "soak": {"users": 100, "rooms": 10, "duration": 600, "ramp": 60, "ramp_down": 30},
    "failover": {"users": 40, "rooms": 5, "duration": 90, "ramp": 20, "ramp_down": 5,
                 "fault_at": 30},
    "rollout": {"users": 40, "rooms": 5, "duration": 120, "ramp": 20, "ramp_down": 5,
                "fault_at": 20},
}
FAULTS = ("failover", "rollout")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--users", type=int, help="users on the plateau")
    parser.add_argument("--rooms", type=int, help="chat rooms")
    parser.add_argument("--duration", type=float, help="plateau seconds")
    parser.add_argument("--ramp", type=float, help="ramp-up seconds")
    parser.add_argument("--ramp-down", type=float, help="ramp-down seconds")
    parser.add_argument("--fault-at", type=float,
                        help="seconds into the plateau when the fault starts (failover, rollout)")
    parser.add_argument("--hold-down", type=float, default=10.0,
                        help="failover: seconds the killed master stays down (0: supervisor "
                             "restarts it at once, usually too fast for a failover)")
    parser.add_argument("--shard", type=int, default=1,
                        help="failover: which Redis shard's master to kill (1: the first; "
                             "the topology's shard count is $SHARDS, as for make run)")
    parser.add_argument("--host", help="target URL (default: the topology's nginx)")
    parser.add_argument("--out", type=Path, help="run folder")
    parser.add_argument("--state-dir", type=Path, default=REPO / "var" / "run",
                        help="the topology's state folder (default var/run: make run)")
    parser.add_argument("--port-offset", type=int, default=0,
                        help="the topology's Ports().shifted offset")
    parser.add_argument("--no-session-cache", action="store_true",
                        help="log every user in (default: reuse the session cookies of earlier "
                             "runs, kept in the topology's state folder)")
    parser.add_argument("--no-create-users", action="store_true",
                        help="do not run make_load_users (the users exist already)")
    parser.add_argument("--max-rtt-p99", type=float, default=1.0,
                        help="broadcast RTT p99 limit, seconds (outside fault windows)")
    parser.add_argument("--max-rtt-p99-fault", type=float, default=15.0,
                        help="broadcast RTT p99 limit over the whole run when faults happen")
    parser.add_argument("--max-fail-ratio", type=float, default=0.01)
    parser.add_argument("--max-loss", type=float, default=0)
    parser.add_argument("--max-duplicates", type=float, default=0)
    parser.add_argument("--max-dropped", type=float, default=0,
                        help="WebSockets dropped (closes other than a drain's 1012); -1: off")
    parser.add_argument("--max-protocol-violations", type=float, default=0,
                        help="frames against docs/protocol.md (a drain without its 1012...)")
    parser.add_argument("--resources-interval", type=float, default=15.0,
                        help="seconds between resource samples of the topology (0: none)")
    parser.add_argument("--locust-arg", action="append", default=[],
                        help="extra argument for locust (repeatable), e.g. --chat-interval=1")
    args = parser.parse_args(argv)
    defaults = SCENARIOS[args.scenario]
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if "fault_at" not in defaults:
        args.fault_at = -1.0
    elif args.fault_at == defaults["fault_at"]:
        args.fault_at = min(args.fault_at, args.duration / 3)  # a short plateau: fault earlier
    return args


def locust_command(args, host: str, out: Path, sessions: Path | None = None) -> list[str]:
    """The headless locust command line of this run."""
    rtt_limit = args.max_rtt_p99_fault if args.scenario in FAULTS else args.max_rtt_p99
    return [
        str(Path(sys.executable).parent / "locust"),
        "--config", str(REPO / "loadtest" / "locust.conf"),
        "--locustfile", str(REPO / "loadtest" / "locustfile.py"),
        "--headless", "--host", host,
        "--peak-users", str(args.users), "--rooms", str(args.rooms),
        "--ramp-time", str(args.ramp), "--plateau-time", str(args.duration),
        "--ramp-down-time", str(args.ramp_down),
        "--fault-at", str(args.fault_at),
        "--fault-length", str(min(60.0, args.duration / 2) if args.fault_at >= 0 else 0),
        "--room-prefix", f"load-{args.scenario}",
        "--report-dir", str(out), "--csv", str(out / "locust"), "--csv-full-history",
        "--html", str(out / "report.html"),
        "--max-rtt-p99", str(rtt_limit), "--max-fail-ratio", str(args.max_fail_ratio),
        "--max-loss", str(args.max_loss), "--max-duplicates", str(args.max_duplicates),
        "--max-dropped", str(args.max_dropped),
        "--max-protocol-violations", str(args.max_protocol_violations),
        "--session-cache", str(sessions or ""),
        *args.locust_arg,
    ]


def wait_for_start(out: Path, proc: subprocess.Popen, timeout: float = 120) -> float | None:
    """The test's start time (run.json's t0), or None if locust ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return float(json.loads((out / "run.json").read_text())["t0"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.2)
    return None


def app_ready(topology: Topology) -> dict[str, dict]:
    """The /readyz checks of every app process ({} for one that does not answer JSON)."""
    checks = {}
    for name, port in [*zip(topology.ws_programs(), topology.ports.ws, strict=True),
                       *zip(topology.http_programs(), topology.ports.http, strict=True)]:
        _, body = topology.get(f"http://127.0.0.1:{port}/readyz")
        try:
            checks[name] = json.loads(body)["checks"]
        except (ValueError, KeyError):
            checks[name] = {}
    return checks


def wait_layer_back(topology: Topology, timeout: float = 90) -> dict[str, dict]:
    """Wait until every process reaches Redis and its channel layer again; the last checks.

    The canary is left out: it is reported, not waited for (it may fail for other reasons).
    """
    deadline = time.monotonic() + timeout
    while True:
        checks = app_ready(topology)
        if all(c.get("redis") and c.get("channel_layer") and c.get("database")
               for c in checks.values()):
            return checks
        if time.monotonic() > deadline:
            raise TimeoutError(f"Redis not back for every process after {timeout:.0f} s")
        time.sleep(0.3)


def kill_redis_master(topology: Topology, hold_down: float, windows: list[dict],
                      shard: int = 0) -> None:
    """SIGKILL a shard's Redis master (kept down hold_down s); the window ends when all is back.

    With hold_down 0 supervisor restarts the master at once, usually before the sentinels'
    down-after, so there is no failover: the master comes back empty (+reboot). With a
    hold-down longer than down-after the sentinels promote the replica, and the old master
    rejoins as a replica when it is started again.
    """
    _, port = topology.redis_master(shard)
    program = topology.redis_program(port)
    window = {"name": f"{program} killed", "start": time.time(), "end": None}
    windows.append(window)
    start = window["start"]
    pid = topology.kill(program, signal.SIGKILL)
    if hold_down > 0:
        topology.ctl("stop", program)
    print(f"[fault] killed {program} (pid {pid}, port {port}), held down {hold_down:g} s",
          flush=True)
    promoted = None
    while time.time() - start < max(hold_down, 1.0):
        try:
            if promoted is None and topology.redis_master(shard)[1] != port:
                promoted = time.time()
                print(f"[fault] sentinels promoted {topology.redis_master(shard)[1]} after "
                      f"{promoted - start:.1f} s", flush=True)
        except RuntimeError:
            pass
        time.sleep(0.2)
    window["promoted_after"] = None if promoted is None else promoted - start
    if hold_down > 0:
        topology.ctl("start", program)
    checks = wait_layer_back(topology)
    end = window["end"] = time.time()
    canary = {name: c.get("canary") for name, c in checks.items() if "canary" in c}
    print(f"[fault] every process reaches Redis again after {end - start:.1f} s; "
          f"master now on port {topology.redis_master(shard)[1]}; canary checks {canary}",
          flush=True)


def post(url: str) -> int:
    """POST without a body; the HTTP status (0 when unreachable)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"),
                                    timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def roll_ws_processes(topology: Topology, windows: list[dict]) -> None:
    """Drain and replace each WebSocket process in turn; one fault window per process."""
    for program, port in zip(topology.ws_programs(), topology.ports.ws, strict=True):
        old = topology.pid(program)
        window = {"name": f"drain {program}", "start": time.time(), "end": None}
        windows.append(window)
        start = window["start"]
        status = post(f"http://127.0.0.1:{topology.ports.internal(port)}/internal/drain")
        print(f"[fault] drain {program} (pid {old}): HTTP {status}", flush=True)
        if status not in (200, 202):
            raise RuntimeError(f"POST /internal/drain on {program} answered HTTP {status}")
        deadline = time.monotonic() + 120
        while topology.pid(program) in (0, old):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{program} did not exit and restart after its drain")
            time.sleep(0.3)
        topology.wait_ready(timeout=90, programs=[program])
        end = window["end"] = time.time()
        print(f"[fault] {program} replaced (pid {topology.pid(program)}) after "
              f"{end - start:.1f} s", flush=True)


def inject(args, topology: Topology, out: Path, proc: subprocess.Popen) -> None:
    """At the planned moment of the plateau, run the scenario's fault and record its window."""
    t0 = wait_for_start(out, proc)
    if t0 is None:
        return
    delay = t0 + args.ramp + args.fault_at - time.time()
    time.sleep(max(0.0, delay))
    if proc.poll() is not None:
        return
    windows: list[dict] = []
    try:
        if args.scenario == "failover":
            kill_redis_master(topology, args.hold_down, windows, args.shard - 1)
        else:
            roll_ws_processes(topology, windows)
    finally:
        for window in windows:  # a fault that never recovered lasts until it was given up
            window["end"] = window["end"] or time.time()
        (out / "faults.json").write_text(json.dumps(windows, indent=2))


def tee(proc: subprocess.Popen, log: Path) -> threading.Thread:
    """Copy locust's output to locust.log."""
    def run():
        with open(log, "w") as handle:
            for line in proc.stdout:
                handle.write(line)
                handle.flush()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    """Run one scenario; 0 when every threshold passed."""
    args = parse(argv)
    topology = Topology(args.state_dir, ports=Ports().shifted(args.port_offset),
                        monitoring=False, shards=int(os.environ.get("SHARDS") or 1))
    host = args.host or topology.url
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "build" / "loadtest" / f"{args.scenario}-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.scenario in FAULTS and not topology.running():
        print(f"{args.scenario} needs the local topology running (state {topology.state})",
              file=sys.stderr)
        return 2
    if not args.no_create_users:
        if topology.running():
            created = topology.manage("make_load_users", str(args.users))
            print(f"load users: {created.stdout.strip()}", flush=True)
        else:
            print(f"topology in {topology.state} is not running: not creating load users",
                  flush=True)

    sessions = None
    if not args.no_session_cache and topology.running():
        sessions = topology.state / "loadtest-sessions.json"
    command = locust_command(args, host, out, sessions)
    total = args.ramp + args.duration + args.ramp_down
    print(f"{args.scenario}: {args.users} users, {args.rooms} rooms, {total:.0f} s against "
          f"{host}; report in {out}", flush=True)
    proc = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    copier = tee(proc, out / "locust.log")
    sampler = None
    if args.resources_interval > 0 and topology.running():
        sampler = resources.Sampler(topology, out, args.resources_interval).start()
    fault_error = None
    try:
        if args.scenario in FAULTS:
            try:
                inject(args, topology, out, proc)
            except Exception as error:  # the run still ends and reports
                fault_error = f"fault injection failed: {str(error).splitlines()[0]}"
                print(fault_error, file=sys.stderr, flush=True)
        code = proc.wait(timeout=total + 180)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # locust writes its reports on SIGTERM
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = -9
        fault_error = fault_error or "locust did not stop in time"
    finally:
        if proc.poll() is None:
            proc.kill()
        copier.join(timeout=10)
        if sampler is not None:
            sampler.stop()
    return finish(args, out, code, fault_error)


def finish(args, out: Path, code: int, fault_error: str | None) -> int:
    """Print the summary and the fault-window figures, render the plots; the exit status."""
    log = (out / "locust.log").read_text(errors="replace")
    marker = log.find("===== chanfleet load test")
    if marker >= 0:
        print(log[marker:].split("\n[20")[0].rstrip(), flush=True)
    else:
        print(log[-3000:], flush=True)
    failed = []
    if code != 0:
        failed.append(f"locust exited with {code}")
    if fault_error:
        failed.append(fault_error)
    if (out / "timeseries.jsonl").exists():
        plots = report.render(out)
        series, faults = report.load(out)
        if args.scenario in FAULTS:
            stats = report.window_stats(series, faults)
            (out / "windows.json").write_text(json.dumps(stats, indent=2))
            for fault in faults:
                print(f"fault window: {fault['name']}: {fault['end'] - fault['start']:.1f} s",
                      flush=True)
            for name in ("inside", "outside"):
                part = stats[name]
                print(f"broadcast RTT {name} fault windows: p50 {part['p50_ms']} ms, p99 "
                      f"{part['p99_ms']} ms ({part['samples']} deliveries)", flush=True)
            outside = stats["outside"]["p99_ms"]
            if not faults:
                failed.append("no fault was injected")
            elif outside is not None and outside / 1000 > args.max_rtt_p99:
                failed.append(f"broadcast RTT p99 outside fault windows {outside / 1000:g} s > "
                              f"limit {args.max_rtt_p99:g} s")
        print("plots: " + ", ".join(p.name for p in plots), flush=True)
    samples = resources.load(out)
    if samples:
        summary = resources.summarise(samples, warmup=min(600.0, args.duration / 5))
        (out / "resources.json").write_text(json.dumps(summary, indent=2))
        print("\n".join(resources.report_lines(summary)), flush=True)
        resources.render(out)
    print(f"report: {out}", flush=True)
    for line in failed:
        print(f"FAILED: {line}", flush=True)
    print("RESULT: " + ("PASS" if not failed else "FAIL"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
