"""The fan-out benchmark's machinery, end to end at a tiny size (no performance assertions).

The whole run is one subprocess (`python -m loadtest.bench`): all three systems (the chanfleet
topology, the stock project, the ceiling) behind nginx, rooms of 20, a couple of seconds per
phase. The test checks that every figure of every scenario is there, and the report's pieces.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time

import numpy
import pytest

from deploy.local.topology import REPO
from loadtest.bench import ceiling, report
from loadtest.bench.generator import MARK, Spec, Worker, _Conn, merge_firsts, send_times
from loadtest.bench.placement import balanced_senders, established_by_port
from loadtest.bench.profile import summarise
from loadtest.bench.runner import (
    Config,
    build_specs,
    cpu_pressure_seconds,
    machine_cpu_seconds,
    rooms_for,
)
from loadtest.bench.systems import (
    Ceiling,
    children,
    context_switches,
    switches,
    total_cpu_seconds,
)

# Ports().shifted(5500) for ours (nginx 13500, sentinels 31880-31882), stock on 14000, the
# ceiling on 14100: clear of `make run`, the other tests' topologies (offsets 1000-5000) and
# below the kernel's ephemeral range (32768+), where a client socket may hold a port.
OFFSET = 5500


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


def test_a_swamped_baseline_that_delivered_nothing_is_a_figure_not_a_gap():
    """A stock run with no broadcast in its comfortable phase reads "none arrived"; ours: a gap."""
    def scenario(system):
        return {"system": system, "size": 5000, "sockets": 5000, "rooms": 1,
                "connect": {"rate": 90.0, "failed": 0}, "memory": {"per_socket_kib": 80.0},
                "comfort": {"delivered": 0, "expected": 100, "p50_ms": None, "p99_ms": None},
                "saturation": {"throughput": 3000.0}}

    assert report.missing_figures([scenario("stock")]) == []
    assert len(report.missing_figures([scenario("ours")])) == 2
    assert "| none arrived | none arrived |" in report.figures_table([scenario("stock")])


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


def test_loops_and_nginx_are_read_as_context_switches_of_the_right_processes(tmp_path):
    """A main thread's (voluntary, involuntary) switches; only the workers of the named nginx."""
    proc = tmp_path / "proc"

    def process(pid: int, status: str = "", kids: tuple[int, ...] = ()) -> None:
        task = proc / str(pid) / "task" / str(pid)
        task.mkdir(parents=True)
        (task / "children").write_text("".join(f"{kid} " for kid in kids))
        (proc / str(pid) / "status").write_text(status)

    process(10, kids=(11, 12))  # our nginx master
    process(11, "voluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n")
    process(12, "voluntary_ctxt_switches:\t30\nnonvoluntary_ctxt_switches:\t2\n")
    process(20, kids=(21,))  # another system's nginx master
    process(21)
    assert children(10, proc) == [11, 12]
    assert children(20, proc) == [21]
    assert children(99, proc) == []  # gone
    assert context_switches(11, proc) == (120, 7)
    assert context_switches(21, proc) == (0, 0)  # no figures
    assert context_switches(99, proc) == (0, 0)  # gone
    assert switches(children(10, proc), proc) == (150, 9)  # one system's workers only
    assert context_switches(os.getpid())[0] > 0  # this process's own, from the real /proc
    assert children(os.getppid()) and os.getpid() in children(os.getppid())  # the real /proc


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
    """Text outside the markers survives a rerun."""
    path = tmp_path / "benchmarks.md"
    report.write_markdown(path, f"{report.BEGIN}\nold\n{report.END}")
    path.write_text("# Title\n\nhand-written\n\n" + path.read_text().split("\n", 3)[-1]
                    + "\nafter\n")
    report.write_markdown(path, f"{report.BEGIN}\nnew\n{report.END}")
    text = path.read_text()
    assert "hand-written" in text and "after" in text and "new" in text and "old" not in text


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
        "--drain-timeout", "10", "--port-offset", str(OFFSET),
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
        assert result["comfort"]["delivered"] > 0, result
        assert 0 < result["comfort"]["first_p99_ms"] <= result["comfort"]["max_ms"], result
        assert result["saturation"]["steps"], result
        assert result["memory"]["after_kib"] > 0, result
        assert result["comfort"]["machine_cpu_ms_per_s"] > 0, result
        assert result["comfort"]["ws_loop_sleeps_per_s"] > 0, result
        assert result["comfort"]["nginx_wakeups_per_1000_deliveries"] > 0, result
    sessions = outcome["run"]["sessions"]
    assert sessions["ours"]["session_queries"] == 0, sessions
    assert sessions["stock"]["session_queries"] == 1, sessions
    text = out.read_text()
    assert report.BEGIN in text and report.END in text
    for needle in ("ours/stock", "ours/ceiling", "saturation >= 0.5x ceiling", "RTT p99",
                   "KiB per idle socket", "conn/s"):
        assert needle in text, needle
    assert MARK not in text


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


def test_the_report_says_how_senders_were_split():
    """Each scenario's split is listed; runs without placement print nothing."""
    results = [{"system": "ours", "size": 100, "sender_split": {"15101": 5, "15102": 5}},
               {"system": "ceiling", "size": 1000, "sender_split": {"15611": 1}}]
    assert report.senders_text(results).endswith("ours x100 5/5; ceiling x1000 1.")
    assert report.senders_text([{"system": "ours", "size": 100}]) == ""


def test_send_times_fill_the_phase_with_the_rate_asked():
    """Both arrival models send rate x duration messages inside the phase, in order."""
    for arrivals in ("poisson", "staggered"):
        times = send_times(15.0, 10.0, arrivals)
        assert len(times) == 150 and times == sorted(times)
        assert 0 <= times[0] and times[-1] < 10.0 + 1 / 15
    gaps = numpy.diff(send_times(15.0, 10.0, "staggered"))
    assert numpy.allclose(gaps, 1 / 15)
    # Random moments: some gaps far shorter than the mean, as independent senders' are.
    assert min(numpy.diff(send_times(15.0, 100.0, "poisson"))) < 0.1 / 15
    with pytest.raises(ValueError):
        send_times(1.0, 1.0, "bursts")


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


def test_a_message_counts_once_as_first_delivered_at_its_earliest_member():
    """Per message, the first delivery is the earliest member's, in a worker and over workers."""
    from array import array

    worker = Worker(multiprocessing.Pipe()[1])
    members = [_Conn(Spec(cid, "ws://x/", [], room=3)) for cid in range(3)]
    other_room = _Conn(Spec(9, "ws://x/", [], room=4))
    sent = time.time() - 0.010  # sent 10 ms ago

    def deliver(conn, counter):
        text = f'{{"type":"message","message":"{MARK}c|{counter}|{sent:.6f}"}}'
        worker._receiver(conn)(None, text)

    deliver(members[0], 1)
    time.sleep(0.1)
    deliver(members[1], 1)
    deliver(members[2], 1)
    deliver(other_room, 1)  # the same counter in another room is another message
    stats = asyncio.run(worker.cmd_stats(reset=True))

    keys, values = array("q"), array("f")
    keys.frombytes(stats["firsts"]["c"][0])
    values.frombytes(stats["firsts"]["c"][1])
    firsts = dict(zip(keys, values, strict=True))
    latencies = array("f")
    latencies.frombytes(stats["latencies"]["c"])
    assert len(latencies) == 4 and len(firsts) == 2
    assert firsts[(3 << 32) | 1] == min(latencies[:3]) < 50 < 100 < max(latencies[:3])
    assert asyncio.run(worker.cmd_stats())["firsts"] == {}  # reset

    # Another worker's member of room 3 got it sooner; one of room 4 later.
    merged = merge_firsts(dict(firsts), [((3 << 32) | 1, 2.0), ((4 << 32) | 1, 500.0)])
    assert merged == {(3 << 32) | 1: 2.0, (4 << 32) | 1: firsts[(4 << 32) | 1]}
