"""One benchmark run: every room size against every system, interleaved, with the same generator.

For each size (ascending) and each system in turn, a scenario:

1. warm the two WebSocket processes (one socket each, straight to the process: the lazy
   imports and pools of the socket path), then read their RSS;
2. open every socket through nginx (bounded concurrency, split over the generator's workers)
   and wait for each welcome; connect rate = sockets / seconds until the last handshake;
3. wait until the WebSocket processes are idle, read their RSS again: KiB per idle socket;
4. saturation: the send rate grows step by step (x growth) until deliveries stop growing or
   latency explodes; the best deliveries/s of any step is the saturation throughput;
5. comfortable load, after the backlog drained: each room's sender sends at one rate for every
   system of this size, by default `comfort_share` (40%) of the first system's (ours')
   saturation throughput; RTT p50/p99 of every delivery;
6. the WebSocket processes are replaced (kill + fresh start), which ends the sockets without a
   disconnect storm leaking into the next system's scenario.
"""

from __future__ import annotations

import dataclasses
import os
import time
from array import array
from pathlib import Path

import numpy

from .generator import BUCKET, Generator, Spec, merge_firsts
from .placement import balanced_senders, process_of
from .systems import System, switches, total_cpu_seconds


@dataclasses.dataclass
class Config:
    """Every knob of a run (the command line fills it)."""

    sizes: list[int] = dataclasses.field(default_factory=lambda: [100, 1000, 5000])
    systems: list[str] = dataclasses.field(default_factory=lambda: ["ours", "stock", "ceiling"])
    budget: int = 1000  # sockets per scenario at least: rooms = max(1, budget // size)
    users: int = 100  # distinct signed-in users (sessions) per system
    workers: int = 3
    concurrency: int = 200  # handshakes in flight, all workers together
    source_addrs: int = 8  # spread sockets over 127.0.0.2.. (0: kernel's choice)
    comfort: dict[int, float] = dataclasses.field(default_factory=dict)  # size -> msg/s/room
    comfort_seconds: float = 10.0  # at least; long enough for 10 messages per room
    comfort_share: float = 0.4  # of the first system's saturation, when comfort has no entry
    step_seconds: float = 6.0
    warm_seconds: float = 1.0  # excluded from each step's throughput window
    max_steps: int = 8
    explode_ms: float = 5000.0  # a saturation step with a p99 above this ends the ramp
    start_deliveries: float = 3000.0  # deliveries/s of the first saturation step
    growth: float = 1.6
    connect_timeout: float = 180.0
    drain_timeout: float = 60.0
    settle_timeout: float = 60.0
    max_foreign_busy: float = 0.35  # wait while other work keeps this share of the CPUs busy
    max_wait: float = 180.0
    arrivals: str = "poisson"  # when senders send (generator.send_times)
    balance_senders: bool = True  # rooms' senders on the WebSocket processes in turn
    profile_seconds: float = 0.0  # > 0: py-spy both ours' WebSocket processes at saturation
    profile_dir: Path = Path("build/bench")
    run_id: str = ""

    def comfort_rate(self, size: int) -> float:
        """Messages per second per room at comfortable load (fixed by size if not measured)."""
        if size in self.comfort:
            return self.comfort[size]
        return 2.0 if size >= 5000 else 5.0


def rooms_for(config: Config, size: int) -> int:
    """How many rooms a scenario of this size has."""
    return max(1, config.budget // size)


def build_specs(config: Config, system: System, size: int, cookies: list[str],
                workers: int, senders: list[str] | None = None) -> list[Spec]:
    """One spec per socket; the sender of room r is socket 0 and lives on worker r % W.

    Room r's sender signs in as `senders[r]` if given (see placement.py), else as user r
    (modulo the users), so senders are different users: nginx hashes on the session cookie,
    and one user sending to every room would put every room's writes on the same WebSocket
    process.
    """
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


def _cpu_ticks(stat_text: str) -> tuple[int, int]:
    """(all, idle) clock ticks of every CPU together, from /proc/stat's first line."""
    fields = [int(x) for x in stat_text.splitlines()[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # idle and iowait


def cpu_busy(seconds: float = 2.0) -> float:
    """Share of all CPUs busy (not idle/iowait) over a short window, from /proc/stat."""
    total0, idle0 = _cpu_ticks(Path("/proc/stat").read_text())
    time.sleep(seconds)
    total1, idle1 = _cpu_ticks(Path("/proc/stat").read_text())
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def machine_cpu_seconds(stat_text: str | None = None) -> float:
    """CPU seconds every process of the machine has spent since boot (not idle nor iowait)."""
    total, idle = _cpu_ticks(stat_text if stat_text is not None
                             else Path("/proc/stat").read_text())
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def cpu_pressure_seconds(pressure_text: str | None = None) -> float | None:
    """Seconds since boot during which some runnable task waited for a CPU (Linux PSI).

    None where the kernel has no /proc/pressure/cpu. Over a phase, the growth per second says
    how much of it the cores were oversubscribed: queueing that every hop of a message pays.
    """
    if pressure_text is None:
        try:
            pressure_text = Path("/proc/pressure/cpu").read_text()
        except OSError:
            return None
    for line in pressure_text.splitlines():
        if line.startswith("some "):
            total = dict(item.split("=", 1) for item in line.split()[1:])["total"]
            return int(total) / 1e6  # microseconds
    return None


def wait_quiet_machine(config: Config, log) -> float:
    """Wait (bounded) until other work leaves the CPUs mostly idle; return the last reading."""
    deadline = time.monotonic() + config.max_wait
    busy = cpu_busy()
    while busy > config.max_foreign_busy and time.monotonic() < deadline:
        log(f"  machine busy ({busy:.0%} of CPUs, load {load_average():.2f}); waiting")
        time.sleep(10)
        busy = cpu_busy()
    return busy


def load_average() -> float:
    """The 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


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
    """One socket straight to each WebSocket process: one message sent and received.

    Each call uses new rooms: the chapter's consumer fails (1011) on joining a room that has
    messages (`get_recent_messages` reverses a sliced queryset, which Django refuses).
    """
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
        self.firsts: dict[str, dict[int, float]] = {}  # phase -> message -> first delivery ms
        self.buckets: dict[int, int] = {}
        self.duplicates = 0
        self.result: dict = {"system": system.name, "size": size, "rooms": self.rooms,
                             "sockets": size * self.rooms}

    def collect(self) -> dict:
        """Pull and merge the workers' statistics since the last pull."""
        stats = self.generator.stats(reset=True)
        for phase, values in stats["latencies"].items():
            self.latencies.setdefault(phase, array("f")).extend(values)
        for phase, earliest in stats["firsts"].items():
            merge_firsts(self.firsts.setdefault(phase, {}), earliest.items())
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
        cfg, system, gen, log = self.config, self.system, self.generator, self.log
        result = self.result
        result["foreign_busy"] = round(wait_quiet_machine(cfg, log), 3)
        result["load_average"] = load_average()
        cookies = system.cookies(cfg.users, log=log)
        specs = build_specs(cfg, system, self.size, cookies, gen.size, self.place_senders(cookies))
        log(f"[{system.name} x{self.size}] {len(specs)} sockets in {self.rooms} room(s)")
        base, connect = self.connect(specs, cookies)
        if (connect["failed"] > 0.05 * len(specs) or connect["ready"] < 0.95 * len(specs)) \
                and getattr(system, "raise_pool", None) is not None \
                and not getattr(system, "max_connections", None):
            # The stock layer with redis-py's default pool: keep what happened, then measure
            # the rest with the pool limit raised (as docs/channel-layer.md explains).
            result["default_pool_connect"] = connect
            log(f"  {system.name}: {connect['failed']} handshakes failed with the default "
                f"redis-py pool; raising its limit to {system.raised_pool} for the figures")
            system.raise_pool()
            gen.close_all(15)
            base, connect = self.connect(specs, cookies)
        result["connect"] = connect

        settled = settle(system, cfg.settle_timeout)
        after = system.rss_kib()
        opened = max(connect["opened"], 1)
        result["memory"] = {"base_kib": base, "after_kib": after,
                            "per_socket_kib": (after - base) / opened,
                            "settle_seconds": round(settled, 1)}
        log(f"  memory: {base} -> {after} KiB RSS = {(after - base) / opened:.1f} KiB/socket")
        self.collect()  # drop anything before the first phase (joins and such)
        self.latencies.clear()
        self.firsts.clear()
        self.buckets.clear()
        self.duplicates = 0

        self.saturation_phases()
        self.comfort_phase()
        if cfg.profile_seconds and system.name == "ours":
            self.profile_phase()
        stats = self.collect()
        result["duplicates"] = self.duplicates
        result["unexpected_closes"] = stats["closed"]
        result["open_at_end"] = stats["open"]
        return result

    def place_senders(self, cookies: list[str]) -> list[str] | None:
        """Sender cookies that give the WebSocket processes the rooms' senders in turn."""
        cfg, system = self.config, self.system
        if not cfg.balance_senders or len(system.ws_ports) < 2:
            return None
        room_url = f"{system.ws_url}/ws/chat/bench-{cfg.run_id}-{self.size}-placement/"
        senders, split = balanced_senders(
            cookies, self.rooms, list(system.ws_ports),
            lambda cookie: process_of(system, cookie, room_url),
        )
        self.result["sender_split"] = {str(port): count for port, count in split.items()}
        self.log("  senders per WebSocket process: "
                 + ", ".join(f"{count} on :{port}" for port, count in split.items()))
        return senders

    def connect(self, specs: list[Spec], cookies: list[str]) -> tuple[int, dict]:
        """Warm up, read the base RSS, open every socket; return (base RSS, connect figures)."""
        cfg, system, gen, log = self.config, self.system, self.generator, self.log
        warm_up(system, cookies[-1], f"warmup-{cfg.run_id}-{self.size}")
        settle(system, 10)
        base = system.rss_kib()
        recorder = None
        if cfg.profile_seconds and system.name == "ours":
            from .profile import record

            recorder = record(system.ws_pids(), cfg.profile_seconds,
                              cfg.profile_dir / f"profile-ours-{self.size}-connect")
        # Bounded, but long enough for a slow system to fill a big room (>= 15 conn/s).
        timeout = max(cfg.connect_timeout, len(specs) / 15)
        connect = gen.connect(specs, cfg.concurrency, 30, 2, system.ready_marker, timeout + 60)
        ready = gen.wait_ready(timeout)
        connect["ready"] = ready["ready"]
        connect["ready_seconds"] = max(ready["at"] - connect["start"], 0.0)
        if recorder is not None:
            self.result["profile_connect"] = recorder.finish()
        log(f"  connect: {connect['opened']}/{len(specs)} open, {connect['failed']} failed "
            f"{connect['errors'] or ''} in {connect['seconds']:.1f} s = "
            f"{connect['rate']:.0f} conn/s; {ready['ready']} ready after "
            f"{connect['ready_seconds']:.1f} s")
        return base, connect

    # ------------------------------------------------------------------ comfortable load
    def comfort_phase(self) -> None:
        """A fixed, comfortable send rate: broadcast RTT percentiles."""
        cfg, gen = self.config, self.generator
        rate = self.comfort_rate
        if rate is None:
            if self.size in cfg.comfort or "saturation" not in self.result:
                rate = cfg.comfort_rate(self.size)
            else:
                throughput = self.result["saturation"]["throughput"]
                rate = round(cfg.comfort_share * throughput / (self.rooms * self.size), 3)
                rate = max(rate, 0.05)
            self.comfort_rate = rate
        duration = min(max(cfg.comfort_seconds, 10 / rate), 60)
        # The servers' CPU, the load generator's and the whole machine's, how long runnable
        # tasks waited for a core (PSI), and how the servers' event loops and nginx were
        # scheduled: they share the cores, so a busy machine is a queue that every hop of a
        # message waits in, and a preempted loop sends a broadcast's frames in several bursts,
        # each waking nginx and the clients again. The processes are looked up once.
        loops, workers = self.system.ws_pids(), self.system.nginx_workers()
        server_before, generator_before = total_cpu_seconds(loops), self._generator_cpu()
        machine_before, pressure_before = machine_cpu_seconds(), cpu_pressure_seconds()
        loops_before, nginx_before = switches(loops), switches(workers)[0]
        phase = gen.phase("c", rate, duration)
        loops_after, nginx_after = switches(loops), switches(workers)[0]
        server_cpu = total_cpu_seconds(loops) - server_before
        generator_cpu = self._generator_cpu() - generator_before
        machine_cpu = machine_cpu_seconds() - machine_before
        pressure_after = cpu_pressure_seconds()
        pressure = (None if pressure_before is None or pressure_after is None
                    else pressure_after - pressure_before)
        gen.wait_quiet(1.0, cfg.drain_timeout)
        self.collect()
        values = self.latencies.get("c", array("f"))
        firsts = array("f", self.firsts.get("c", {}).values())
        expected = phase["sent"] * self.size
        comfort = {
            "rate_per_room": rate,
            "seconds": duration,
            "offered": rate * self.rooms * self.size,
            "share_of_own_saturation": (rate * self.rooms * self.size
                                        / self.result["saturation"]["throughput"]
                                        if self.result.get("saturation", {}).get("throughput")
                                        else None),
            "sent": phase["sent"],
            "expected": expected,
            "delivered": len(values),
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "max_ms": float(max(values)) if len(values) else None,
            # Each message's earliest member: the server's part of the broadcast, before the
            # fan-out. Close to p99 above when whole messages are late, not single members.
            "first_p50_ms": percentile(firsts, 50),
            "first_p99_ms": percentile(firsts, 99),
            "sender_lag_s": round(phase["max_lag"], 3),
            "ws_cpu_ms_per_s": round(1000 * server_cpu / duration, 1),
            "generator_cpu_ms_per_s": round(1000 * generator_cpu / duration, 1),
            "machine_cpu_ms_per_s": round(1000 * machine_cpu / duration, 1),
            "cpu_pressure_ms_per_s": (None if pressure is None
                                      else round(1000 * pressure / duration, 1)),
            "ws_loop_sleeps_per_s": round((loops_after[0] - loops_before[0]) / duration, 1),
            "ws_loop_preempted_per_s": round((loops_after[1] - loops_before[1]) / duration, 1),
            "nginx_wakeups_per_1000_deliveries": (
                round(1000 * (nginx_after - nginx_before) / len(values), 1) if values else None),
        }
        self.result["comfort"] = comfort
        self.log(f"  comfortable {rate:g} msg/s/room ({comfort['offered']:.0f} deliveries/s "
                 f"offered): RTT p50 {_ms(comfort['p50_ms'])} p99 {_ms(comfort['p99_ms'])} "
                 f"(first member p50 {_ms(comfort['first_p50_ms'])} "
                 f"p99 {_ms(comfort['first_p99_ms'])}), "
                 f"{len(values)}/{expected} delivered; CPU ms/s: WebSocket processes "
                 f"{comfort['ws_cpu_ms_per_s']:.0f}, load generator "
                 f"{comfort['generator_cpu_ms_per_s']:.0f}, machine "
                 f"{comfort['machine_cpu_ms_per_s']:.0f} of {1000 * (os.cpu_count() or 1)}"
                 + ("" if pressure is None else
                    f", some task waiting for a CPU {comfort['cpu_pressure_ms_per_s']:.0f}")
                 + f"; event loops preempted {comfort['ws_loop_preempted_per_s']:.0f}/s"
                 + ("" if not values else
                    f", nginx woken {comfort['nginx_wakeups_per_1000_deliveries']:.0f} times "
                    "per 1000 deliveries"))

    def _forget_phase(self, phase: str) -> None:
        """Drop what was collected of one phase (its latencies and its first deliveries)."""
        self.latencies.pop(phase, None)
        self.firsts.pop(phase, None)

    def _generator_cpu(self) -> float:
        """CPU seconds the load generator's workers used so far."""
        return total_cpu_seconds(self.generator.pids())

    # ------------------------------------------------------------------ saturation
    def saturation_phases(self) -> None:
        """Raise the send rate step by step until deliveries stop growing."""
        cfg, gen, log = self.config, self.generator, self.log
        members = self.rooms * self.size
        rate = cfg.start_deliveries / members
        steps = []
        strikes = 0
        best = 0.0
        pids = self.system.ws_pids()  # restarted only between scenarios
        for index in range(cfg.max_steps):
            name = f"s{index}"
            cpu_before = total_cpu_seconds(pids)
            phase = gen.phase(name, rate, cfg.step_seconds)
            cpu = total_cpu_seconds(pids) - cpu_before
            self.collect()
            window = phase["end"] - phase["start"] - cfg.warm_seconds
            got = self.deliveries_between(phase["start"] + cfg.warm_seconds, phase["end"])
            throughput = got / window
            whole = self.deliveries_between(phase["start"] - 0.3, phase["end"] + 0.5)
            offered = phase["sent"] * self.size / (phase["end"] - phase["start"])
            p99_so_far = percentile(self.latencies.get(name, array("f")), 99) or 0.0
            steps.append({"name": name, "rate_per_room": rate, "offered": offered,
                          "throughput": throughput, "sent": phase["sent"],
                          "ws_cpu_seconds": round(cpu, 2), "stand_ins": phase["stand_ins"],
                          "cpu_us_per_delivery": round(1e6 * cpu / whole, 1) if whole else None,
                          "sender_lag_s": round(phase["max_lag"], 3)})
            log(f"  step {index}: {rate:.2f} msg/s/room, offered {offered:.0f}/s, delivered "
                f"{throughput:.0f}/s, p99 so far {p99_so_far:.0f} ms"
                + (f", {phase['stand_ins']} closed sender(s) stood in for"
                   if phase["stand_ins"] else ""))
            # Past saturation a backlog builds up and deliveries/s stay at capacity: stop after
            # two steps without 5% growth, or at once when latency explodes.
            grew = throughput > best * 1.05
            best = max(best, throughput)
            strikes = 0 if grew else strikes + 1
            exploded = p99_so_far > cfg.explode_ms and throughput < 0.85 * offered
            if strikes >= 2 or exploded:
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
        top = max(steps, key=lambda s: s["throughput"])
        expected = sum(s["expected"] for s in steps)
        delivered = sum(s["delivered"] for s in steps)
        self.result["saturation"] = {
            "throughput": top["throughput"],
            "cpu_us_per_delivery": top["cpu_us_per_delivery"],
            "at_rate_per_room": top["rate_per_room"],
            "p99_ms_at_best": top["p99_ms"],
            "loss": 1 - delivered / expected if expected else None,
            "steps": steps,
        }
        log(f"  saturation: {top['throughput']:.0f} deliveries/s "
            f"(loss over all steps {self.result['saturation']['loss'] or 0:.2%})")

    # ------------------------------------------------------------------ profile
    def profile_phase(self) -> None:
        """Send at the measured saturation rate while py-spy samples both WebSocket processes."""
        from .profile import record

        cfg = self.config
        rate = self.result["saturation"]["at_rate_per_room"]
        out = cfg.profile_dir / f"profile-ours-{self.size}"
        pids = self.system.ws_pids()
        recorder = record(pids, cfg.profile_seconds, out)
        self.generator.phase("p", rate, cfg.profile_seconds + 2)
        self.result["profile"] = recorder.finish()
        self.generator.wait_quiet(1.5, cfg.drain_timeout)
        self._forget_phase("p")
        self.log(f"  profile: {self.result['profile'].get('files')}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"
