"""The fan-out benchmark's rules and machinery, fast; one end-to-end run at a tiny size.

The ramp and the capacity are checked against a simulated system (`FakeGenerator`): the
real ramp loop, no sockets. The end-to-end run (marked topology, so not in `make test`) is one
subprocess, `python -m loadtest.bench`, all three systems behind nginx at rooms of 20.
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing
import os
import subprocess
import sys
import time
from array import array
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy.local.topology import REPO
from loadtest.bench import ceiling, cli, ramp, report
from loadtest.bench.diagnose import cpu_pressure_seconds, machine_cpu_seconds
from loadtest.bench.generator import BUCKET, MARK, Spec, Worker, send_times, settle_heap
from loadtest.bench.placement import balanced_senders, established_by_port
from loadtest.bench.profile import summarise
from loadtest.bench.runner import Config, Scenario, build_specs, rooms_for
from loadtest.bench.systems import Ceiling, total_cpu_seconds

# Ports().shifted(5500) for ours (nginx 13500, sentinels 31880-31882), stock on 14000, the
# ceiling on 14100: clear of `make run`, the other tests' topologies (offsets 1000-5000) and
# below the kernel's ephemeral range (32768+), where a client socket may hold a port.
OFFSET = 5500
OLD_CAP = 80_500  # deliveries/s of the eighth step, where the ramp used to end


class FakeGenerator:
    """A system that delivers up to `capacity` deliveries/s, as the generator reports it.

    Under 80% of capacity a delivery takes 5 ms, up to capacity 100 ms, beyond it `overload_ms`;
    `loss` of every step's deliveries never arrive.
    """

    size = 1

    def __init__(self, capacity: float, members: int, overload_ms: float = 1000.0,
                 loss: float = 0.0):
        self.capacity, self.members = capacity, members
        self.overload_ms, self.loss = overload_ms, loss
        self.clock = 1000.0
        self.latencies: dict[str, array] = {}
        self.buckets: collections.Counter = collections.Counter()

    def phase(self, name: str, rate: float, duration: float) -> dict:
        start, sent = self.clock, round(rate * duration)
        self.clock += duration + 1
        offered = sent * self.members / duration
        for bucket in range(int(start * BUCKET), int((start + duration) * BUCKET)):
            self.buckets[bucket] += int(min(offered, self.capacity) / BUCKET)
        latency = (5.0 if offered < 0.8 * self.capacity else 100.0
                   if offered <= self.capacity else self.overload_ms)
        self.latencies[name] = array("f", [latency]) * int(sent * self.members
                                                           * (1 - self.loss))
        return {"sent": sent, "max_lag": 0.0, "stand_ins": 0, "start": start,
                "end": start + duration}

    def stats(self, reset: bool = False) -> dict:
        out = {"latencies": self.latencies, "buckets": self.buckets, "duplicates": 0,
               "closed": {}, "open": 0}
        self.latencies, self.buckets = {}, collections.Counter()
        return out

    def wait_quiet(self, *args) -> float:
        return 0.0


def ramp_of(generator: FakeGenerator, **config) -> dict:
    """The real ramp loop against a simulated system: one room of 100."""
    scenario = Scenario(Config(budget=100, step_seconds=1, warm_seconds=0, **config),
                        SimpleNamespace(name="ours"), 100, generator, log=lambda _: None)
    scenario.ramp_phase()
    return scenario.result["ramp"]


def test_the_ramp_goes_past_the_old_cap_until_deliveries_stop_growing():
    """A system good for 200k deliveries/s is ramped beyond 80,500 until it stays flat."""
    result = ramp_of(FakeGenerator(200_000, 100))
    steps = result["steps"]
    assert steps[-1]["offered"] > 2 * OLD_CAP and len(steps) > 8
    assert result["stopped"] == "flat"
    # The last two steps did not grow; the one before them reached the system's capacity.
    assert [round(s["throughput"], -3) for s in steps[-3:]] == [200_000] * 3
    assert report.step({"ramp": result}, "best")["throughput"] == pytest.approx(200_000, 0.01)
    # Capacity: the last step at or under the system's own limit (p99 100 ms); beyond it 1 s.
    capacity = report.step({"ramp": result}, "capacity")
    assert capacity["offered"] <= 200_000 < steps[result["capacity"] + 1]["offered"]


def test_the_ramp_stops_at_once_when_p99_blows_up():
    """The first step past capacity with a p99 over 5 s ends the ramp, flat or not."""
    result = ramp_of(FakeGenerator(20_000, 100, overload_ms=9000))
    assert result["stopped"] == "p99"
    assert result["steps"][-1]["offered"] > 20_000 >= result["steps"][-2]["offered"]


def test_max_steps_cuts_the_ramp_and_the_report_marks_a_lower_bound():
    """--max-steps ends a still-growing ramp; its figures are shown as "≥"."""
    result = ramp_of(FakeGenerator(200_000, 100), max_steps=3)
    assert len(result["steps"]) == 3 and result["stopped"] == "max-steps"
    scenario = {"ramp": result}
    assert report.open_ended(scenario, "best") and report.open_ended(scenario, "capacity")
    assert report._bound(report.throughput(scenario, "best")).startswith("≥ ")


def test_stop_reason_counts_steps_without_growth_since_the_best():
    """Two steps in a row under 5% above the best so far end the ramp; growth resets it."""
    def steps(*throughputs, p99=10.0):
        return [{"throughput": t, "p99_ms": p99} for t in throughputs]

    assert ramp.stop_reason([]) is None
    assert ramp.stop_reason(steps(100, 200, 204)) is None
    assert ramp.stop_reason(steps(100, 200, 204, 190)) == "flat"
    assert ramp.stop_reason(steps(100, 200, 204, 300, 305)) is None
    assert ramp.stop_reason(steps(100, 200, p99=5001)) == "p99"


def test_capacity_is_the_highest_step_with_nothing_lost_and_p99_within_the_bound():
    """Loss or a p99 over 250 ms disqualifies a step; none qualifying means no capacity."""
    def s(rate, p99, lost=0):
        return {"rate_per_room": rate, "throughput": rate * 100, "p99_ms": p99,
                "expected": 1000, "delivered": 1000 - lost}

    assert ramp.capacity([s(1, 10), s(2, 250), s(3, 251)])["rate_per_room"] == 2
    assert ramp.capacity([s(1, 10), s(2, 20, lost=1), s(3, 300)])["rate_per_room"] == 1
    assert ramp.capacity([s(1, 10, lost=5)]) is None
    assert ramp.capacity([s(1, 10), s(2, 10)], bound_ms=5) is None
    assert ramp.best([s(1, 10), s(3, 900), s(2, 20)])["rate_per_room"] == 3
    assert ramp_of(FakeGenerator(20_000, 100, loss=0.01))["capacity"] is None


def test_diagnose_is_off_by_default_and_the_standing_run_reads_no_counters():
    """No --diagnose: no /proc counters, no py-spy; the comfortable phase gives RTTs only."""
    assert cli.parse([]).diagnose is False and Config().diagnose is False
    assert cli.config_from(cli.parse(["--diagnose"])).diagnose is True
    scenario = Scenario(Config(budget=100, step_seconds=1, warm_seconds=0, max_steps=2),
                        SimpleNamespace(name="ours"), 100, FakeGenerator(20_000, 100),
                        log=lambda _: None)  # a system with no PIDs: reading one would fail
    assert not scenario.profile
    scenario.ramp_phase()
    scenario.comfort_phase()
    assert "counters" not in scenario.result["comfort"]
    assert scenario.result["comfort"]["p99_ms"] == pytest.approx(5.0)


def test_the_help_lists_the_ramp_and_diagnose_options(capsys):
    """--help renders (argparse expands % in help strings) and names the main knobs."""
    with pytest.raises(SystemExit) as done:
        cli.parse(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--max-steps", "--p99-bound", "--diagnose", "--port-offset", "--comfort"):
        assert option in text, option


def full_run(steps: int = 12) -> tuple[list[dict], dict]:
    """Synthetic results of a three-size, three-system run with long ramps."""
    results = []
    for size, rooms in ((100, 10), (1000, 1), (5000, 1)):
        for system, top in (("ours", 50_000), ("stock", 6_000), ("ceiling", 120_000)):
            ramp_steps = [{"rate_per_room": 3000 * 1.6**i / (size * rooms),
                           "offered": 3000 * 1.6**i,
                           "throughput": min(3000 * 1.6**i, top), "p99_ms": 10.0 * 1.8**i,
                           "p50_ms": 5.0, "expected": 1000, "delivered": 1000}
                          for i in range(steps)]
            results.append({
                "system": system, "size": size, "rooms": rooms, "sockets": size * rooms,
                "connect": {"rate": 150.0, "failed": 0,
                            **({"resume": {"rate": 420.0}} if system == "ours" else {})},
                "memory": {"per_socket_kib": 22.4},
                "comfort": {"rate_per_room": 20.0, "offered": 20_000, "delivered": 10,
                            "expected": 10, "p50_ms": 5.2, "p99_ms": 25.8},
                "ramp": {"stopped": "flat", "steps": ramp_steps,
                         "best": steps - 1, "capacity": min(5, steps - 1)},
                "sender_split": {"1": rooms // 2 or 1, "2": rooms // 2},
            })
    run = {"run_id": "1", "commit": "abc1234", "started": "2026-12-06 04:00", "minutes": 25,
           "command": "python -m loadtest.bench --out docs/benchmarks.md",
           "config": dataclasses_config(), "database": "SQLite (WAL)",
           "sessions": {"ours": {"queries": 1, "session_queries": 0}},
           "machine": {"nproc": 2, "cpu": "Intel", "memory_gib": 23, "kernel": "6.18",
                       "python": "3.11.7", "packages": {"Django": "5.2"},
                       "tools": {"nginx": "nginx/1.22.1"}}}
    return results, run


def dataclasses_config() -> dict:
    return cli._jsonable(Config())


def test_the_report_puts_the_figures_on_the_first_screen_and_stays_under_300_lines(tmp_path):
    """docs/benchmarks.md with a full three-size run's section: figures first, < 300 lines."""
    results, run = full_run()
    doc = tmp_path / "benchmarks.md"
    doc.write_text((Path(REPO) / "docs" / "benchmarks.md").read_text())
    report.write_markdown(doc, report.generated_section(results, run))
    lines = doc.read_text().splitlines()
    assert len(lines) < 300, len(lines)
    first_screen = "\n".join(lines[:50])
    for needle in ("capacity, deliveries/s", "| 100 | ours | 31,457 | 50,000 (",
                   "| 5000 | ceiling |", "ours/stock", "ours/ceiling", "targets met"):
        assert needle in first_screen, needle
    assert "## Decisions" in doc.read_text()  # the hand-written part survived


def test_the_table_has_resuming_handshakes_for_ours_and_a_dash_for_the_others():
    """Resumes with nothing missed are their own column; stock and the ceiling cannot resume."""
    results, _ = full_run(steps=3)
    table = report.figures_table(results)
    assert "| handshakes/s | resuming handshakes/s |" in table
    assert "| 150 | 420 |" in next(line for line in table.splitlines() if "| ours |" in line)
    assert "| 150 | - |" in next(line for line in table.splitlines() if "| stock |" in line)


def test_ours_without_a_resume_figure_is_a_gap_unless_it_was_skipped():
    """A run of ours that measured no resume lacks a figure; --resume-share 0 does not."""
    results, _ = full_run(steps=3)
    ours = next(r for r in results if r["system"] == "ours")
    ours["connect"]["resume"] = {"rate": None, "opened": 0}
    assert report.missing_figures([ours]) == ["ours x100: resuming handshakes/s"]
    ours["connect"]["resume"] = {"skipped": True}
    assert report.missing_figures([ours]) == []


def test_a_worker_reopens_sockets_resuming_from_their_welcome_position():
    """cmd_park closes a member socket; cmd_resume reopens it with ?last_seq=<its position>."""
    from websockets.asyncio.server import serve

    paths = []

    async def handler(ws):
        path = ws.request.path
        paths.append(path)
        await ws.send('{"type":"connected"}')
        if "last_seq=" in path:
            await ws.send('{"type":"resume_end","room":"r","seq":7,"replayed":0}')
        else:
            await ws.send('{"type":"history_end","room":"r","seq":7}')
        await ws.wait_closed()

    async def main():
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            worker = Worker(multiprocessing.Pipe()[1])
            specs = [Spec(cid, f"ws://127.0.0.1:{port}/ws/chat/r/", [], room=0,
                          sender=cid == 0) for cid in range(4)]
            opened = await worker.cmd_connect(specs, time.time(), concurrency=4, timeout=5,
                                              retries=0, ready_marker='"history_end"',
                                              deadline=time.time() + 10)
            parked = await worker.cmd_park(every=2, timeout=5)
            resumed = await worker.cmd_resume(concurrency=2, timeout=5,
                                              deadline=time.time() + 10)
            closed = dict(worker.closed)
            await worker.close_all(5)
            return opened, parked, resumed, closed

    opened, parked, resumed, closed = asyncio.run(asyncio.wait_for(main(), 20))
    assert opened["opened"] == 4
    assert parked == {"parked": 1}
    assert resumed["chosen"] == 1 and resumed["opened"] == 1 and resumed["ready"] == 1, resumed
    assert paths.count("/ws/chat/r/?last_seq=7") == 1, paths
    assert closed == {}  # the benchmark's own close is not an unexpected one


def test_lower_bounds_leave_a_target_undecided():
    """A ratio against a capped ceiling is "<=": met only if the bound itself says so."""
    assert report.ratio((100, False), (50, True)) == (2.0, "<=")
    assert report.ratio((100, True), (50, False)) == (2.0, ">=")
    assert report.verdict(0.6, "<=", 0.5) == "?"
    assert report.verdict(0.4, "<=", 0.5) == "**no**"
    assert report.verdict(0.6, ">=", 0.5) == "yes"
    assert report.verdict(3.9, "", 2, higher=False) == "**no**"


def test_a_swamped_baseline_that_delivered_nothing_is_a_figure_not_a_gap():
    """A stock run with no broadcast in its comfortable phase reads "none arrived"; ours: a gap."""
    results, _ = full_run(steps=3)
    for result in results:
        result["comfort"].update(delivered=0, p50_ms=None, p99_ms=None)
    stock = [r for r in results if r["system"] == "stock"][:1]
    ours = [r for r in results if r["system"] == "ours"][:1]
    assert report.missing_figures(stock) == []
    assert len(report.missing_figures(ours)) == 2
    assert "| none arrived |" in report.figures_table(stock)


def test_send_times_fill_the_phase_at_random_moments():
    """rate x duration sends inside the phase, in order, some far closer than the mean gap."""
    times = send_times(15.0, 10.0)
    assert len(times) == 150 and times == sorted(times)
    assert 0 <= times[0] and times[-1] <= 10.0
    times = send_times(15.0, 100.0)
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) < 0.1 / 15


def test_the_machine_is_read_as_busy_cpu_seconds_and_seconds_of_waiting_for_a_cpu():
    """/proc/stat without idle and iowait, in seconds; PSI's `some` total, in seconds."""
    hz = os.sysconf("SC_CLK_TCK")
    stat = "cpu  100 5 40 900 30 0 15 2 0 0\ncpu0 50 2 20 450 15 0 7 1 0 0\n"
    assert machine_cpu_seconds(stat) == (100 + 5 + 40 + 15 + 2) / hz
    pressure = ("some avg10=1.50 avg60=0.40 avg300=0.10 total=2500000\n"
                "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert cpu_pressure_seconds(pressure) == 2.5
    assert cpu_pressure_seconds("") is None
    assert machine_cpu_seconds() > 0  # this machine's own, since boot


def test_the_ceilings_message_frame_has_ours_fields_in_ours_order():
    """The issue's "same message format": what the ceiling sends is what ours broadcasts."""
    from django.utils import timezone

    from app.chat.models import Message
    from app.chat.services import message_frame

    stored = Message(id=7, room_id=1, user_id=3, content="hi", created_at=timezone.now())
    # post_message adds the room and the client's id, the room event its sequence number.
    ours = {**message_frame(stored, "load0003"), "room": "r1", "client_id": "c1", "seq": 7}
    theirs = json.loads(ceiling.message_frame(7, "r1", "hi", "load0003", 3, "c1"))
    assert list(theirs) == list(ours)
    assert {key: type(value) for key, value in theirs.items()} == {
        key: type(value) for key, value in ours.items()}


def test_cpu_seconds_are_summed_over_the_processes_given():
    """This process's own CPU time is counted once per PID listed; a gone PID counts 0."""
    own = total_cpu_seconds([os.getpid()])
    assert own > 0
    assert total_cpu_seconds([os.getpid(), os.getpid()]) >= 2 * own
    assert total_cpu_seconds([]) == 0
    assert total_cpu_seconds([2**22 + 1]) == 0  # above pid_max's ceiling: no such process


def test_rooms_and_specs_spread_senders_over_workers(tmp_path):
    """One sender per room, senders on different workers and users, every socket in its room."""
    config = Config(budget=100, run_id="t", source_addrs=4)
    system = Ceiling(tmp_path, 14100)
    specs = build_specs(config, system, 20, system.cookies(3), workers=3)
    assert rooms_for(config, 20) == 5 and len(specs) == 100
    senders = [s for s in specs if s.sender]
    assert len(senders) == 5
    assert {s.worker for s in senders} == {0, 1, 2}
    assert len({dict(s.headers)["Cookie"] for s in senders}) == 3
    assert len({s.url for s in specs}) == 5
    assert {s.local_host for s in specs} == {f"127.0.0.{i}" for i in range(2, 6)}
    assert rooms_for(config, 5000) == 1


def test_profile_summary_counts_self_and_inclusive():
    """Collapsed stacks become self and inclusive shares."""
    stacks = {"thread;a (x.py:1);b (y.py:2)": 3, "thread;a (x.py:1)": 1}
    summary = summarise(stacks)
    assert summary["samples"] == 4
    assert dict(summary["self"]) == {"b (y.py)": 75.0, "a (x.py)": 25.0}
    assert dict(summary["inclusive"])["a (x.py)"] == 100.0


def test_markdown_section_is_replaced_in_place(tmp_path):
    """Text outside the markers survives a rerun; a missing file is made around the section."""
    path = tmp_path / "benchmarks.md"
    report.write_markdown(path, f"{report.BEGIN}\nfirst\n{report.END}")
    assert path.read_text().startswith("# Benchmarks") and "first" in path.read_text()
    path.write_text(f"# Title\n\nhand-written\n\n{report.BEGIN}\nold\n{report.END}\n\nafter\n")
    report.write_markdown(path, f"{report.BEGIN}\nnew\n{report.END}")
    text = path.read_text()
    assert "hand-written" in text and "after" in text and "new" in text and "old" not in text


def test_senders_are_dealt_to_the_processes_in_turn():
    """Room r's sender lands on port r % 2; cookies are probed in order, each at most once."""
    lands = {"a": 1, "b": 1, "c": 1, "d": 2, "e": 1, "f": 2, "g": 2}
    probed = []

    def locate(cookie):
        probed.append(cookie)
        return lands[cookie]

    senders, split = balanced_senders(list("abcdefg"), 4, [1, 2], locate)
    assert [lands[cookie] for cookie in senders] == [1, 2, 1, 2]
    assert split == {1: 2, 2: 2}
    assert probed == list("abcdef")  # stops once every process has its share
    assert len(set(senders)) == 4


def test_senders_fall_back_to_unused_cookies_when_a_process_is_out_of_reach():
    """If no cookie reaches a process, its rooms still get distinct senders."""
    senders, split = balanced_senders(list("abcd"), 3, [1, 2], lambda cookie: 1)
    assert senders[0] == "a" and senders[2] == "b" and senders[1] in "cd"
    assert split == {1: 3}
    assert len(set(senders)) == 3


def test_established_connections_are_counted_by_local_port(tmp_path):
    """Both ends of a loopback connection are in the table; the server end's local port counts."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    before = established_by_port([port])[port]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        assert established_by_port([port])[port] == before + 1
    finally:
        for sock in (client, accepted, server):
            sock.close()


def test_a_worker_whose_orchestrator_is_gone_stops_instead_of_spinning():
    """A worker left by a killed benchmark reads EOF on its pipe: it closes its sockets, exits."""
    parent, child = multiprocessing.Pipe()
    parent.close()
    asyncio.run(asyncio.wait_for(Worker(child).serve(), 10))


def test_a_worker_answers_a_heartbeat_that_comes_with_the_handshake():
    """A server's first frame in the same read as its 101 is answered: the pong arrives."""
    from websockets.frames import Opcode
    from websockets.server import ServerProtocol

    pongs = []

    async def serve_one(reader, writer):
        # websockets' sans-I/O server, so that the 101 and the heartbeat go out in one write.
        server = ServerProtocol()
        server.receive_data(await reader.readuntil(b"\r\n\r\n"))
        [request] = server.events_received()
        server.send_response(server.accept(request))
        server.send_text(b'{"type":"heartbeat","ts":7}')
        writer.write(b"".join(server.data_to_send()))
        while not pongs and (data := await reader.read(65536)):
            server.receive_data(data)
            pongs.extend(json.loads(e.data) for e in server.events_received()
                         if e.opcode is Opcode.TEXT)
        writer.close()

    async def main():
        listener = await asyncio.start_server(serve_one, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        worker = Worker(multiprocessing.Pipe()[1])
        spec = Spec(0, f"ws://127.0.0.1:{port}/ws/chat/r/", [], room=0)
        opened = await worker.cmd_connect([spec], time.time(), concurrency=1, timeout=5,
                                          retries=0, ready_marker=None,
                                          deadline=time.time() + 10)
        for _ in range(100):
            if pongs:
                break
            await asyncio.sleep(0.05)
        await worker.close_all(5)
        listener.close()
        return opened

    opened = asyncio.run(asyncio.wait_for(main(), 20))
    assert opened["opened"] == 1, opened
    assert pongs == [{"type": "pong", "ts": 7}]


@pytest.mark.topology
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tiny_benchmark_reports_every_figure(tmp_path):
    """Rooms of 20 on all three systems: every figure present, the report written."""
    out = tmp_path / "benchmarks.md"
    results = tmp_path / "results.json"
    command = [
        sys.executable, "-m", "loadtest.bench", "--sizes", "20", "--budget", "40",
        "--users", "4", "--workers", "2", "--concurrency", "20", "--comfort-seconds", "2",
        "--step-seconds", "2", "--warm-seconds", "0.5", "--max-steps", "2",
        "--start-deliveries", "200", "--max-wait", "0", "--settle-timeout", "5",
        "--drain-timeout", "10", "--port-offset", str(OFFSET), "--diagnose",
        "--profile-seconds", "1",
        "--state-dir", str(tmp_path / "state"), "--json", str(results), "--out", str(out),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    outcome = json.loads(results.read_text())
    scenarios = outcome["results"]
    assert {(r["system"], r["size"]) for r in scenarios} == {
        ("ours", 20), ("stock", 20), ("ceiling", 20)}
    assert report.missing_figures(scenarios) == []
    for result in scenarios:
        assert result["connect"]["opened"] == 40, result
        if result["system"] == "ours":  # half the members reopened resuming, all back
            resume = result["connect"]["resume"]
            assert resume["opened"] == resume["ready"] == resume["chosen"] > 0, resume
        assert result["comfort"]["delivered"] > 0, result
        assert 0 < result["comfort"]["p99_ms"] <= result["comfort"]["max_ms"], result
        assert len(result["ramp"]["steps"]) == 2 and result["ramp"]["stopped"], result
        assert result["memory"]["after_kib"] > 0, result
        counters = result["comfort"]["counters"]  # --diagnose
        assert counters["machine_cpu_ms_per_s"] > 0, result
        assert counters["ws_cpu_ms_per_s"] > 0, result
    sessions = outcome["run"]["sessions"]
    assert sessions["ours"]["session_queries"] == 0, sessions
    assert sessions["stock"]["session_queries"] == 1, sessions
    text = out.read_text()
    assert report.BEGIN in text and report.END in text
    for needle in ("ours/stock", "ours/ceiling", "capacity", "best step", "RTT p99",
                   "KiB per idle socket", "handshakes/s"):
        assert needle in text, needle
    assert MARK not in text
    assert "machine_cpu" not in text and "py-spy" not in text  # --diagnose stays out


def test_settle_heap_leaves_what_lives_now_out_of_full_collections():
    """After a phase, the objects alive then are frozen; the collector scans only newer ones."""
    import gc

    held = [[] for _ in range(1000)]
    gc.unfreeze()  # what an earlier test froze would count too
    assert gc.get_freeze_count() == 0
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(held)
    finally:
        gc.unfreeze()
