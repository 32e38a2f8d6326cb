"""The reconnect-storm drill against a running chanfleet topology, phase by phase.

1. fresh joins: every client joins its room (history), at most `concurrency` handshakes at
   once: fresh joins/s;
2. resumes with nothing missed: a share of the clients closes and comes back with
   `?last_seq=`, the same concurrency, nothing sent meanwhile: resumes/s;
3. the storm: one sender per room sends steadily; one WebSocket process is killed (`kill -9`,
   supervisor restarts it) or drained (POST /internal/drain); its clients reconnect as the web
   page does (backoff and jitter, or the drain's `retry_after_ms`) and resume. Measured from
   the fault to each affected client's `resume_end`;
4. the senders stop, every client catches up; each client's seqs are checked against its
   room's final seq from the database: lost and duplicated events.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections import Counter

import requests

from loadtest import resources
from loadtest.bench.generator import Generator, Spec
from loadtest.bench.runner import settle
from loadtest.bench.systems import total_cpu_seconds

from . import report, tracking
from .worker import main as worker_main


@dataclasses.dataclass
class Config:
    """Every knob of one drill (the command line fills it)."""

    clients: int = 10_000
    rooms: int = 100
    users: int = 100
    mode: str = "kill"  # or "drain"
    target: int = 0  # index of the WebSocket process to kill or drain
    workers: int = 0  # 0: one per 4,000 clients, at least 2
    concurrency: int = 200  # handshakes in flight in the measured phases, all workers together
    resume_share: float = 0.5  # of the clients, reopened to measure resumes/s
    rate: float = 0.5  # messages/s each room's sender sends during the storm
    before_fault: float = 5.0  # seconds of sending before the fault
    after_resumed: float = 3.0  # seconds of sending after the last affected client resumed
    storm_timeout: float = 180.0  # give up waiting for the affected clients after this
    handshake_timeout: float = 90.0  # a client gives up one handshake after this (then backs off)
    settle_timeout: float = 60.0
    drain_window: float | None = None  # POST /internal/drain?window=; None: the server's setting
    source_addrs: int = 8  # sockets spread over 127.0.0.2.. so ephemeral ports never run out
    run_id: str = ""

    def worker_count(self) -> int:
        """Generator processes: each holds at most ~4,000 sockets (the fd limit is per process)."""
        return self.workers or max(2, -(-self.clients // 4000))


def build_specs(config: Config, ws_url: str, headers, cookies: list[str],
                workers: int) -> list[Spec]:
    """One spec per client; room r's first client is its sender, each room spread over workers."""
    specs = []
    per_room = -(-config.clients // config.rooms)
    for cid in range(config.clients):
        room, member = divmod(cid, per_room)
        # Distinct users per room position: nginx hashes on the session cookie, so one user's
        # sockets all land on one process and rooms span both processes.
        cookie = cookies[(room + member) % len(cookies)]
        local = f"127.0.0.{2 + cid % config.source_addrs}" if config.source_addrs else None
        specs.append(Spec(
            cid=cid, url=f"{ws_url}/ws/chat/storm-{config.run_id}-{room}/",
            headers=headers(cookie), room=room, sender=member == 0, local_host=local,
            worker=cid % workers))
    return specs


def rate_of(times: list[float], start: float) -> dict:
    """Count, seconds from start to the last completion, and completions per second."""
    if not times:
        return {"count": 0, "seconds": None, "rate": None}
    seconds = max(max(times) - start, 1e-3)
    return {"count": len(times), "seconds": round(seconds, 2), "rate": len(times) / seconds}


def cpu_per_handshake(before: dict[str, float], after: dict[str, float], count: int) -> dict:
    """CPU milliseconds each part spent per handshake of a phase, and the handshakes per
    second this machine's cores could serve at that cost: a figure other load on the
    machine does not move, as it moves the rates."""
    if not count:
        return {}
    spent = {part: round((after[part] - before[part]) * 1000 / count, 3) for part in before}
    total = sum(spent.values())
    spent["all"] = round(total, 3)
    spent["cores"] = os.cpu_count() or 1
    spent["capacity_per_s"] = round(spent["cores"] * 1000 / total) if total else None
    return spent


def post(url: str, timeout: float = 10) -> int:
    """POST without a body; the HTTP status (0 when unreachable)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"),
                                    timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


class Drill:
    """One storm drill on a started `loadtest.bench.systems.Ours` (its topology running)."""

    def __init__(self, config: Config, system, log=print):
        self.config = config
        self.system = system
        self.topology = system.topology
        self.log = log
        self.result: dict = {"config": dataclasses.asdict(config)}
        self.generator: Generator | None = None
        self.acked: dict[int, int] = {}  # room -> highest seq its sender saw acknowledged

    def run(self) -> dict:
        """Run every phase; return the figures (also when a phase failed, with `error`)."""
        cfg, log = self.config, self.log
        # Both processes up (an earlier drill's victim may still be restarting).
        self.topology.wait_ready(90, programs=self.topology.ws_programs())
        cookies = self.system.cookies(cfg.users, log=log)
        self.generator = Generator(cfg.worker_count(), main=worker_main)
        try:
            specs = build_specs(cfg, self.system.ws_url, self.system.headers, cookies,
                                self.generator.size)
            rooms = sorted({s.room for s in specs})
            self.result["rooms"] = len(rooms)
            log(f"[storm] {len(specs)} clients in {len(rooms)} rooms, {cfg.users} users, "
                f"{self.generator.size} generator processes; mode {cfg.mode}")
            self.fresh_phase(specs)
            self.resume_phase()
            self.storm_phase()
            self.check_phase(rooms, cookies[0])
        except Exception as error:  # keep the figures so far; the targets then fail
            self.result["error"] = repr(error)
            log(f"[storm] the drill failed: {error!r}")
        finally:
            self.result["machine"] = {"load_average": report.load_average()}
            try:
                self.generator.broadcast({"cmd": "close", "timeout": 30}, 60)
            except (TimeoutError, RuntimeError) as error:
                log(f"[storm] closing the clients failed: {error!r}")
            self.generator.shutdown()
        return self.result

    # ------------------------------------------------------------------ phases
    def fresh_phase(self, specs: list[Spec]) -> None:
        """Every client joins once: fresh joins/s."""
        cfg, gen = self.config, self.generator
        shares: list[list[Spec]] = [[] for _ in range(gen.size)]
        for spec in specs:
            shares[spec.worker].append(spec)
        start = time.time()
        cpu_before = self.cpu_now()
        timeout = max(120.0, len(specs) / 10)  # bounded, yet enough for a slow handshake
        answers = gen.call([{"cmd": "start", "specs": share,
                             "concurrency": max(1, cfg.concurrency // gen.size),
                             "handshake_timeout": cfg.handshake_timeout,
                             "deadline": start + timeout} for share in shares], timeout + 60)
        synced = sum(a["synced"] for a in answers)
        fresh = rate_of([t for a in answers for t in a["times"]], start)
        fresh["clients"] = len(specs)
        fresh["cpu_ms"] = cpu_per_handshake(cpu_before, self.cpu_now(), fresh["count"])
        self.result["fresh"] = fresh
        self.log(f"[storm] fresh joins: {synced}/{len(specs)} in {fresh['seconds']} s = "
                 f"{_num(fresh['rate'])} joins/s; {report.cpu_words(fresh['cpu_ms'])}")
        if synced < len(specs):
            raise RuntimeError(f"only {synced} of {len(specs)} clients joined")

    def resume_phase(self) -> None:
        """A share of the clients closes and resumes with nothing missed: resumes/s."""
        cfg, gen = self.config, self.generator
        if cfg.resume_share <= 0:
            return
        every = max(1, round(1 / cfg.resume_share))
        gen.broadcast({"cmd": "park", "every": every, "deadline": time.time() + 60}, 90)
        settle(self.system, cfg.settle_timeout)  # the closes' work done before timing
        start = time.time()
        cpu_before = self.cpu_now()
        timeout = max(60.0, cfg.clients * cfg.resume_share / 10)
        answers = gen.broadcast({"cmd": "reopen",
                                 "concurrency": max(1, cfg.concurrency // gen.size),
                                 "deadline": start + timeout}, timeout + 60)
        resume = rate_of([t for a in answers for t in a["times"]], start)
        resume["chosen"] = sum(a["chosen"] for a in answers)
        resume["cpu_ms"] = cpu_per_handshake(cpu_before, self.cpu_now(), resume["count"])
        self.result["resume"] = resume
        self.log(f"[storm] resumes (nothing missed): {resume['count']}/{resume['chosen']} in "
                 f"{resume['seconds']} s = {_num(resume['rate'])} resumes/s; "
                 f"{report.cpu_words(resume['cpu_ms'])}")

    def cpu_now(self) -> dict[str, float]:
        """CPU seconds used so far by each part: WebSocket processes, nginx, the Redis master
        and the load generator's clients."""
        tree = resources.children()
        nginx = self.topology.pid("nginx")
        pids = {
            "ws": self.system.ws_pids(),
            "nginx": resources.process_tree(nginx, tree) if nginx else [],
            "redis": [pid for pid in [self.topology.pid("redis-master")] if pid],
            "clients": self.generator.pids(),
        }
        return {part: total_cpu_seconds(members) for part, members in pids.items()}

    def target(self) -> tuple[str, int, str]:
        """(supervisor program, public port, node name) of the process to kill or drain."""
        top = self.topology
        program = top.ws_programs()[self.config.target]
        port = top.ports.ws[self.config.target]
        _, body = top.get(f"http://127.0.0.1:{top.ports.internal(port)}/internal/status")
        node = json.loads(body)["node"]
        return program, port, node

    def storm_phase(self) -> None:
        """Senders on; kill or drain one process; wait until its clients are all back."""
        cfg, gen, log = self.config, self.generator, self.log
        program, port, node = self.target()
        gen.broadcast({"cmd": "send", "rate": cfg.rate}, 30)
        time.sleep(cfg.before_fault)
        fault_at = time.time()
        affected = sum(a["affected"] for a in gen.broadcast(
            {"cmd": "fault", "node": node, "at": fault_at}, 30))
        if cfg.mode == "kill":
            pid = self.topology.kill(program, signal.SIGKILL)
            log(f"[storm] kill -9 {program} (pid {pid}, {node}): {affected} clients affected")
        else:
            query = "" if cfg.drain_window is None else f"?window={cfg.drain_window:g}"
            status = post(f"http://127.0.0.1:{self.topology.ports.internal(port)}"
                          f"/internal/drain{query}")
            log(f"[storm] drain {program} ({node}): HTTP {status}, {affected} clients affected")
            if status not in (200, 202):
                raise RuntimeError(f"POST /internal/drain answered HTTP {status}")
        deadline = fault_at + cfg.storm_timeout
        resumed = 0
        last_report = time.monotonic()
        while time.time() < deadline:
            status = gen.broadcast({"cmd": "status"}, 30)
            resumed = sum(s["resumed"] for s in status)
            if resumed >= affected:
                break
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                log(f"[storm]   {resumed}/{affected} resumed after "
                    f"{time.time() - fault_at:.0f} s")
            time.sleep(0.25)
        self.result["fault"] = {"mode": cfg.mode, "program": program, "node": node,
                                "at": fault_at, "affected": affected,
                                "waited_s": round(time.time() - fault_at, 2)}
        time.sleep(cfg.after_resumed)
        quiet = gen.broadcast({"cmd": "quiet"}, 60)
        for answer in quiet:
            for room, seq in answer["acked"].items():
                self.acked[int(room)] = max(self.acked.get(int(room), 0), seq)
        self.result["sent"] = sum(a["sent"] for a in quiet)
        log(f"[storm] {resumed}/{affected} resumed; senders stopped after "
            f"{self.result['sent']} messages")

    def check_phase(self, rooms: list[int], cookie: str) -> None:
        """Wait for every client to catch up, then count lost and duplicated events."""
        cfg, gen = self.config, self.generator
        finals = {room: self.room_seq(room, cookie) for room in rooms}
        short = {room: seq for room, seq in self.acked.items() if finals.get(room, 0) < seq}
        deadline = time.monotonic() + cfg.settle_timeout
        behind = None
        while time.monotonic() < deadline:
            behind = sum(a["behind"] for a in gen.broadcast({"cmd": "behind",
                                                             "finals": finals}, 30))
            if not behind:
                break
            time.sleep(0.5)
        answers = gen.broadcast({"cmd": "results", "finals": finals}, 120)
        self.result.update(summarise(answers, self.result["fault"]["at"]))
        self.result["final_seqs"] = {"rooms": len(finals), "events": sum(finals.values()),
                                     "acked_beyond_database": short}
        self.result["behind_at_end"] = behind

    def room_seq(self, room: int, cookie: str) -> int:
        """A room's last seq, from the HTTP API (the database)."""
        name = f"storm-{self.config.run_id}-{room}"
        response = requests.get(f"{self.topology.url}/api/rooms/{name}",
                                cookies={"sessionid": cookie}, timeout=30)
        response.raise_for_status()
        return int(response.json()["room"]["last_seq"])


def summarise(answers: list[dict], fault_at: float) -> dict:
    """The storm's figures from every worker's results."""
    seconds = [s for a in answers for s in a["resume_seconds"]]
    affected = sum(a["affected"] for a in answers)
    outcomes = Counter()
    for answer in answers:
        outcomes.update(answer["outcomes"].get("storm", {}))
    refused, failed = tracking.split_outcomes(dict(outcomes))
    earlier = Counter()
    for answer in answers:
        for phase in ("fresh", "resume", "steady"):
            earlier.update(answer["outcomes"].get(phase, {}))
    errors = Counter()
    for answer in answers:
        errors.update(answer["errors"])
    return {
        "storm": {
            **tracking.resume_figures(seconds, affected),
            "lost_socket": sum(a["affected_lost_socket"] for a in answers),
            "collateral": sum(a["collateral"] for a in answers),
            "handshakes": dict(outcomes), "refused": sum(refused.values()),
            "failed": sum(failed.values()), "refusals": refused, "failures": failed,
            "resumes_per_s": tracking.rate_series(
                [t for a in answers for t in a["resumed_at"]], fault_at),
            # Where the time goes, from the fault: the drain's `reconnect` frame read, the
            # wait after it (retry_after_ms and any lag of the generator), the first handshake
            # begun, the first 101 (resume_end is the figures above).
            "steps": {step: tracking.step_figures(
                [s for a in answers for s in a.get(f"{step}_seconds", [])])
                for step in ("told", "waited", "reopened", "upgraded")},
            "generator_loop_lag_s": [a.get("loop_lag_s") for a in answers],
            "resumed_on": dict(sum((Counter(a.get("resumed_on", {})) for a in answers),
                                   Counter())),
        },
        "before_storm_handshakes": dict(earlier),
        "clients": sum(a["clients"] for a in answers),
        "never_joined": sum(a["never_joined"] for a in answers),
        "lost": sum(a["lost"] for a in answers),
        "lost_clients": sum(a["lost_clients"] for a in answers),
        "away_at_end": sum(a.get("away_at_end", 0) for a in answers),
        "pending_for_away": sum(a.get("pending_for_away", 0) for a in answers),
        "lost_samples": [s for a in answers for s in a["lost_samples"]][:10],
        "duplicates": sum(a["duplicates"] for a in answers),
        "duplicate_clients": sum(a["duplicate_clients"] for a in answers),
        "duplicate_samples": [s for a in answers for s in a["duplicate_samples"]][:10],
        "gaps": sum(a["gaps"] for a in answers),
        "errors": dict(errors),
    }


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
