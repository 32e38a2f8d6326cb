"""One scenario: one system at one room size, through the phases of docs/benchmarks.md's method.

1. warm both WebSocket processes, read their RSS, open every socket through nginx and wait for
   each welcome: handshakes/s;
2. wait until the processes are idle, read their RSS again: KiB per idle socket; then (ours,
   the only system with resume) close a share of the sockets and reopen them with
   `?last_seq=`, nothing missed: resuming handshakes/s, apart from the fresh joins';
3. the ramp: the send rate grows step by step until the system saturates (`ramp.stop_reason`);
   the capacity is the highest step that lost nothing within the p99 bound, the best step the
   one with the most deliveries/s;
4. comfortable load, after the backlog drained: one rate for every system of this size (a
   share of the first system's best step), RTT p50/p99 of every delivery;
5. with `--diagnose`, /proc counters over the comfortable phase and py-spy of ours.

The WebSocket processes are replaced after each scenario (cli.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from array import array
from pathlib import Path

import numpy

from . import ramp
from .generator import BUCKET, Generator, Spec
from .placement import balanced_senders, process_of
from .systems import System, cpu_busy, total_cpu_seconds


@dataclasses.dataclass
class Config:
    """Every knob of a run (the command line fills it)."""

    sizes: list[int] = dataclasses.field(default_factory=lambda: [100, 1000, 5000])
    systems: list[str] = dataclasses.field(default_factory=lambda: ["ours", "stock", "ceiling"])
    budget: int = 1000  # sockets per scenario at least: rooms = max(1, budget // size)
    users: int = 100  # distinct signed-in users (sessions) per system
    workers: int = 3
    concurrency: int = 200  # handshakes in flight, all workers together
    source_addrs: int = 8  # spread sockets over 127.0.0.2.. so ephemeral ports never run out
    comfort: dict[int, float] = dataclasses.field(default_factory=dict)  # size -> msg/s/room
    comfort_seconds: float = 10.0  # at least; long enough for 10 messages per room
    comfort_share: float = 0.4  # of the first system's best step, when comfort has no entry
    step_seconds: float = 6.0
    warm_seconds: float = 1.0  # excluded from each step's throughput window
    max_steps: int = 0  # 0: ramp until the system saturates
    start_deliveries: float = 3000.0  # deliveries/s of the first step
    growth: float = 1.6
    p99_bound_ms: float = ramp.P99_BOUND_MS
    connect_timeout: float = 180.0
    resume_share: float = 0.5  # of the sockets, reopened resuming after the fresh connect
    drain_timeout: float = 60.0
    settle_timeout: float = 60.0
    max_foreign_busy: float = 0.35  # wait while other work keeps this share of the CPUs busy
    max_wait: float = 180.0
    diagnose: bool = False  # /proc counters and py-spy (diagnose.py, profile.py)
    profile_seconds: float = 15.0
    out_dir: Path = Path("build/bench")
    run_id: str = ""


def rooms_for(config: Config, size: int) -> int:
    """How many rooms a scenario of this size has."""
    return max(1, config.budget // size)


def build_specs(config: Config, system: System, size: int, cookies: list[str],
                workers: int, senders: list[str] | None = None) -> list[Spec]:
    """One spec per socket; room r's sender is its socket 0, on worker r % workers."""
    # Senders are different users (`senders[r]`, else user r): nginx hashes on the session
    # cookie, and one user sending to every room would put every room's writes on one process.
    specs = []
    cid = 0
    for room in range(rooms_for(config, size)):
        url = f"{system.ws_url}/ws/chat/bench-{config.run_id}-{size}-{room}/"
        for member in range(size):
            if member == 0 and senders:
                cookie = senders[room]
            else:
                cookie = cookies[(room if member == 0 else room * size + member) % len(cookies)]
            local = f"127.0.0.{2 + cid % config.source_addrs}" if config.source_addrs else None
            specs.append(Spec(cid=cid, url=url, headers=system.headers(cookie), room=room,
                              sender=member == 0, local_host=local,
                              worker=(member + room) % workers))
            cid += 1
    return specs


def percentile(values: array, q: float) -> float | None:
    """q-th percentile of float32 values, or None."""
    if not len(values):
        return None
    return float(numpy.percentile(numpy.frombuffer(values, dtype=numpy.float32), q))


def wait_quiet_machine(config: Config, log) -> float:
    """Wait (bounded) until other work leaves the CPUs mostly idle; return the last reading."""
    deadline = time.monotonic() + config.max_wait
    busy = cpu_busy()
    while busy > config.max_foreign_busy and time.monotonic() < deadline:
        log(f"  machine busy ({busy:.0%} of CPUs); waiting")
        time.sleep(10)
        busy = cpu_busy()
    return busy


def settle(system: System, timeout: float, idle_share: float = 0.03) -> float:
    """Wait until the WebSocket processes use < idle_share of a CPU each; return seconds."""
    started = time.monotonic()
    pids = system.ws_pids()  # one lookup (for ours a `supervisorctl` call) for every reading
    count = max(1, len(pids))
    before = total_cpu_seconds(pids)
    while time.monotonic() - started < timeout:
        time.sleep(1.0)
        after = total_cpu_seconds(pids)
        if after - before < idle_share * count:
            break
        before = after
    return time.monotonic() - started


def warm_up(system: System, cookie: str, room: str) -> None:
    """One socket straight to each WebSocket process: one message sent and received."""
    # New rooms each call: the chapter's consumer fails (1011) on joining a room that has
    # messages (`get_recent_messages` reverses a sliced queryset, which Django refuses).
    from websockets.sync.client import connect

    for index, port in enumerate(system.ws_ports):
        url = f"ws://127.0.0.1:{port}/ws/chat/{room}-{index}-{int(time.time() * 1000)}/"
        try:
            with connect(url, additional_headers=system.headers(cookie), open_timeout=20,
                         max_size=None) as ws:
                ws.send('{"type":"message","message":"warm-up","id":"w"}')
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    if "warm-up" in ws.recv(timeout=5):
                        break
        except Exception as error:  # a failed warm-up only skews memory slightly
            print(f"  warm-up of {system.name} port {port} failed: {error!r}")


class Scenario:
    """One system at one room size."""

    def __init__(self, config: Config, system: System, size: int, generator: Generator, log,
                 comfort_rate: float | None = None):
        self.config = config
        self.comfort_rate = comfort_rate
        self.system = system
        self.size = size
        self.rooms = rooms_for(config, size)
        self.generator = generator
        self.log = log
        self.latencies: dict[str, array] = {}
        self.buckets: dict[int, int] = {}
        self.duplicates = 0
        self.profile = config.diagnose and system.name == "ours"
        self.result: dict = {"system": system.name, "size": size, "rooms": self.rooms,
                             "sockets": size * self.rooms}

    def collect(self) -> dict:
        """Pull and merge the workers' statistics since the last pull."""
        stats = self.generator.stats(reset=True)
        for phase, values in stats["latencies"].items():
            self.latencies.setdefault(phase, array("f")).extend(values)
        for bucket, count in stats["buckets"].items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + count
        self.duplicates += stats["duplicates"]
        return stats

    def deliveries_between(self, start: float, end: float) -> int:
        """Deliveries received in [start, end)."""
        low, high = int(start * BUCKET), int(end * BUCKET)
        return sum(c for b, c in self.buckets.items() if low <= b < high)

    def run(self) -> dict:
        """Run every phase; return the figures."""
        cfg, system, log = self.config, self.system, self.log
        self.result["foreign_busy"] = round(wait_quiet_machine(cfg, log), 3)
        cookies = system.cookies(cfg.users, log=log)
        specs = build_specs(cfg, system, self.size, cookies, self.generator.size,
                            self.place_senders(cookies))
        log(f"[{system.name} x{self.size}] {len(specs)} sockets in {self.rooms} room(s)")
        self.result["connect"] = self.connect_phase(specs, cookies)
        self.collect()  # drop anything before the first sending phase (joins and such)
        self.latencies.clear()
        self.buckets.clear()
        self.duplicates = 0
        self.ramp_phase()
        self.comfort_phase()
        if self.profile:
            self.profile_phase()
        stats = self.collect()
        self.result["duplicates"] = self.duplicates
        self.result["unexpected_closes"] = stats["closed"]
        self.result["open_at_end"] = stats["open"]
        return self.result

    def place_senders(self, cookies: list[str]) -> list[str] | None:
        """Sender cookies that give the WebSocket processes the rooms' senders in turn."""
        cfg, system = self.config, self.system
        if len(system.ws_ports) < 2:
            return None
        room_url = f"{system.ws_url}/ws/chat/bench-{cfg.run_id}-{self.size}-placement/"
        senders, split = balanced_senders(
            cookies, self.rooms, list(system.ws_ports),
            lambda cookie: process_of(system, cookie, room_url),
        )
        self.result["sender_split"] = {str(port): count for port, count in split.items()}
        return senders

    # ------------------------------------------------------------------ connect and memory
    def connect_phase(self, specs: list[Spec], cookies: list[str]) -> dict:
        """Open every socket; handshakes/s and KiB per idle socket."""
        system = self.system
        base, connect = self.open_sockets(specs, cookies)
        if (connect["failed"] > 0.05 * len(specs) or connect["ready"] < 0.95 * len(specs)) \
                and getattr(system, "raise_pool", None) is not None \
                and not getattr(system, "max_connections", None):
            # The stock layer with redis-py's default pool: keep what happened, then measure
            # the rest with the pool limit raised (as docs/channel-layer.md explains).
            self.result["default_pool_connect"] = connect
            self.log(f"  {system.name}: {connect['failed']} handshakes failed with the default "
                     f"redis-py pool; raising its limit to {system.raised_pool}")
            system.raise_pool()
            self.generator.close_all(15)
            base, connect = self.open_sockets(specs, cookies)
        settled = settle(system, self.config.settle_timeout)
        after = system.rss_kib()
        per_socket = (after - base) / max(connect["opened"], 1)
        self.result["memory"] = {"base_kib": base, "after_kib": after,
                                 "per_socket_kib": per_socket,
                                 "settle_seconds": round(settled, 1)}
        self.log(f"  memory: {base} -> {after} KiB RSS = {per_socket:.1f} KiB/socket")
        if getattr(system, "resumes", False):
            connect["resume"] = (self.resume_sockets(len(specs)) if self.config.resume_share > 0
                                 else {"skipped": True})
        return connect

    def resume_sockets(self, count: int) -> dict:
        """Reopen a share of the member sockets with ?last_seq= (nothing missed): resumes/s."""
        cfg = self.config
        every = max(1, round(1 / cfg.resume_share))
        timeout = max(cfg.connect_timeout, count / every / 15)
        self.generator.park(every)
        settle(self.system, cfg.settle_timeout)  # the closes' work done before timing
        with self.profiled("resume"):
            resume = self.generator.resume(cfg.concurrency, 30, timeout + 60)
        self.log(f"  resume: {resume['opened']}/{resume['chosen']} reopened with last_seq, "
                 f"{resume['failed']} failed {resume['errors'] or ''} in "
                 f"{resume['seconds']:.1f} s = {resume['rate'] or 0:.0f} resuming handshakes/s; "
                 f"{resume['ready']} resumed after {resume['ready_seconds']:.1f} s")
        return resume

    def open_sockets(self, specs: list[Spec], cookies: list[str]) -> tuple[int, dict]:
        """Warm up, read the base RSS, open every socket; return (base RSS, connect figures)."""
        cfg, system, gen = self.config, self.system, self.generator
        warm_up(system, cookies[-1], f"warmup-{cfg.run_id}-{self.size}")
        settle(system, 10)
        base = system.rss_kib()
        with self.profiled("connect"):
            # Bounded, but long enough for a slow system to fill a big room (>= 15 conn/s).
            timeout = max(cfg.connect_timeout, len(specs) / 15)
            connect = gen.connect(specs, cfg.concurrency, 30, 2, system.ready_marker, timeout + 60)
            ready = gen.wait_ready(timeout)
            connect["ready"] = ready["ready"]
            connect["ready_seconds"] = max(ready["at"] - connect["start"], 0.0)
        self.log(f"  connect: {connect['opened']}/{len(specs)} open, {connect['failed']} failed "
                 f"{connect['errors'] or ''} in {connect['seconds']:.1f} s = "
                 f"{connect['rate']:.0f} handshakes/s; {ready['ready']} ready after "
                 f"{connect['ready_seconds']:.1f} s")
        return base, connect

    # ------------------------------------------------------------------ the ramp
    def ramp_phase(self) -> None:
        """Raise the send rate step by step until the system saturates."""
        cfg, gen, log = self.config, self.generator, self.log
        rate = cfg.start_deliveries / (self.rooms * self.size)
        steps: list[dict] = []
        reason = "max-steps"
        while not cfg.max_steps or len(steps) < cfg.max_steps:
            name = f"s{len(steps)}"
            phase = gen.phase(name, rate, cfg.step_seconds)
            self.collect()
            window = phase["end"] - phase["start"] - cfg.warm_seconds
            throughput = self.deliveries_between(phase["start"] + cfg.warm_seconds,
                                                 phase["end"]) / window
            # What arrived so far: the step's p99 once drained can only be higher.
            p99 = percentile(self.latencies.get(name, array("f")), 99) or 0.0
            steps.append({"name": name, "rate_per_room": rate,
                          "offered": phase["sent"] * self.size / (phase["end"] - phase["start"]),
                          "throughput": throughput, "sent": phase["sent"], "p99_ms": p99,
                          "stand_ins": phase["stand_ins"],
                          "sender_lag_s": round(phase["max_lag"], 3)})
            log(f"  step {len(steps) - 1}: {rate:.2f} msg/s/room, offered "
                f"{steps[-1]['offered']:.0f}/s, delivered {throughput:.0f}/s, p99 so far "
                f"{p99:.0f} ms"
                + (f", {phase['stand_ins']} closed sender(s) stood in for"
                   if phase["stand_ins"] else ""))
            stop = ramp.stop_reason(steps)
            if stop:
                reason = stop
                break
            rate *= cfg.growth
        gen.wait_quiet(1.5, cfg.drain_timeout)
        self.collect()
        for step in steps:
            values = self.latencies.get(step["name"], array("f"))
            step["delivered"] = len(values)
            step["expected"] = step["sent"] * self.size
            step["p50_ms"] = percentile(values, 50)
            step["p99_ms"] = percentile(values, 99)
        top = ramp.best(steps)
        fit = ramp.capacity(steps, cfg.p99_bound_ms)
        self.result["ramp"] = {"stopped": reason, "p99_bound_ms": cfg.p99_bound_ms,
                               "best": steps.index(top), "steps": steps,
                               "capacity": None if fit is None else steps.index(fit)}
        log(f"  capacity: {_rate(fit)} (p99 <= {cfg.p99_bound_ms:g} ms, none lost); "
            f"best step: {_rate(top)}, p99 {_ms(top['p99_ms'])}; ramp stopped: {reason}")

    # ------------------------------------------------------------------ comfortable load
    def comfort_phase(self) -> None:
        """A fixed, comfortable send rate: broadcast RTT percentiles."""
        cfg, gen = self.config, self.generator
        rate = self.comfort_rate
        if rate is None:
            if self.size in cfg.comfort:
                rate = cfg.comfort[self.size]
            else:
                top = ramp.best(self.result["ramp"]["steps"])
                rate = max(round(cfg.comfort_share * top["throughput"]
                                 / (self.rooms * self.size), 3), 0.05)
            self.comfort_rate = rate
        duration = min(max(cfg.comfort_seconds, 10 / rate), 60)
        before = self.read_counters() if cfg.diagnose else None
        phase = gen.phase("c", rate, duration)
        after = self.read_counters() if cfg.diagnose else None
        gen.wait_quiet(1.0, cfg.drain_timeout)
        self.collect()
        values = self.latencies.get("c", array("f"))
        comfort = {
            "rate_per_room": rate, "seconds": duration,
            "offered": rate * self.rooms * self.size, "sent": phase["sent"],
            "expected": phase["sent"] * self.size, "delivered": len(values),
            "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
            "max_ms": float(max(values)) if len(values) else None,
            "sender_lag_s": round(phase["max_lag"], 3),
        }
        if before is not None:
            from .diagnose import counters

            comfort["counters"] = counters(before, after, duration, len(values))
        self.result["comfort"] = comfort
        self.log(f"  comfortable {rate:g} msg/s/room ({comfort['offered']:.0f} deliveries/s "
                 f"offered): RTT p50 {_ms(comfort['p50_ms'])} p99 {_ms(comfort['p99_ms'])}, "
                 f"{len(values)}/{comfort['expected']} delivered"
                 + (f"; {comfort['counters']}" if before is not None else ""))

    def read_counters(self) -> dict:
        """The /proc counters of --diagnose (diagnose.py)."""
        from .diagnose import reading

        return reading(self.system.ws_pids(), self.generator.pids())

    # ------------------------------------------------------------------ py-spy (--diagnose)
    def start_profile(self, what: str):
        """py-spy on ours' WebSocket processes for profile_seconds, if diagnosing ours."""
        if not self.profile:
            return None
        from .profile import record

        return record(self.system.ws_pids(), self.config.profile_seconds,
                      self.config.out_dir / f"profile-ours-{self.size}-{what}")

    @contextlib.contextmanager
    def profiled(self, what: str):
        """py-spy over the block when diagnosing ours; its summary as result["profile_<what>"]."""
        recorder = self.start_profile(what)
        try:
            yield
        finally:
            if recorder is not None:
                self.result[f"profile_{what}"] = recorder.finish()

    def profile_phase(self) -> None:
        """Send at the best step's rate while py-spy samples both WebSocket processes."""
        steps = self.result["ramp"]["steps"]
        recorder = self.start_profile("best-step")
        self.generator.phase("p", steps[self.result["ramp"]["best"]]["rate_per_room"],
                             self.config.profile_seconds + 2)
        self.result["profile"] = recorder.finish()
        self.generator.wait_quiet(1.5, self.config.drain_timeout)
        self.latencies.pop("p", None)
        self.log(f"  profile: {self.result['profile'].get('files')}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _rate(step: dict | None) -> str:
    return "none" if step is None else f"{step['throughput']:.0f} deliveries/s"
