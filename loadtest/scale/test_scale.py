"""The scale benchmark's placement, figures and report; its topology parts on real processes."""

from array import array
from collections import Counter
from pathlib import Path

import pytest

from deploy.local.topology import Ports
from loadtest.bench.systems import Ceiling, with_ws_processes
from loadtest.scale import report
from loadtest.scale.cli import nginx_values, parse
from loadtest.scale.run import (
    Config,
    above_idle,
    broadcast_figures,
    build_specs,
    command_rates,
    spent,
)


def headers(cookie):
    return [("Cookie", f"sessionid={cookie}")]


def test_every_process_gets_the_same_share_whatever_its_users():
    """Sockets go to the ports in turn, not by how many users the hash ring gave each."""
    by_port = {1: ["a"], 2: ["b", "c", "d", "e"], 3: ["f", "g"], 4: []}
    specs = build_specs(Config(members=9_000, per_worker=4_000), lambda room: f"ws://x/{room}/",
                        headers, by_port)
    cookie_port = {c: port for port, cookies in by_port.items() for c in cookies}
    per_port = Counter(cookie_port[dict(s.headers)["Cookie"].split("=")[1]] for s in specs)
    assert per_port == {1: 3_000, 2: 3_000, 3: 3_000}
    assert [s.sender for s in specs].count(True) == 1 and specs[0].sender
    # ceil(9000 / 4000) generator processes for the members, one more for the sender alone
    assert {s.worker for s in specs} == {0, 1, 2, 3}
    assert [s.cid for s in specs if s.worker == 3] == [0]
    assert len({s.local_host for s in specs}) == 8
    # Every user's first socket is among the first round of sockets (announced early).
    first_round = {dict(s.headers)["Cookie"] for s in specs[:3 * 4]}
    assert len(first_round) == 7


def test_several_rooms_each_have_members_on_every_process_and_one_sender():
    by_port = {1: ["a"], 2: ["b"], 3: ["c"]}
    specs = build_specs(Config(members=1_200, rooms=4), lambda room: f"ws://x/{room}/", headers,
                        by_port)
    port_of = {"a": 1, "b": 2, "c": 3}
    for room in range(4):
        members = [s for s in specs if s.room == room]
        assert len(members) == 300 and {s.url for s in members} == {f"ws://x/{room}/"}
        assert {port_of[dict(s.headers)["Cookie"][-1]] for s in members} == {1, 2, 3}
        senders = [s for s in members if s.sender]
        assert len(senders) == 1
    # The senders sit on different processes.
    assert len({dict(s.headers)["Cookie"] for s in specs if s.sender}) == 3


def test_no_placed_user_is_an_error():
    with pytest.raises(RuntimeError):
        build_specs(Config(members=10), str, headers, {1: [], 2: []})


def test_broadcast_figures_count_losses_and_take_first_and_last_per_broadcast():
    latencies = {"b0": array("f", [5, 50, 20]), "b1": array("f", [7, 70])}
    figures = broadcast_figures(latencies, ["b0", "b1", "b2"], receivers=3)
    assert figures["lost"] == 1 + 3
    assert figures["delivered"] == 5
    assert [e.get("last_ms") for e in figures["each"]] == [50, 70, None]
    assert figures["first_p50_ms"] == pytest.approx(6)
    assert figures["last_p99_ms"] == pytest.approx(69.8)


def test_cpu_of_a_window_is_counted_above_the_idle_rate():
    # 10 s idle spent 0.1 s: 10 ms/s; 20 s of broadcasts spent 0.3 s: 0.1 s above idle.
    idle = {"redis": 0.1, "seconds": 10.0}
    assert above_idle(idle, {"redis": 0.3, "seconds": 20.0}, "redis") == pytest.approx(0.1)
    assert above_idle(idle, {"redis": 0.1, "seconds": 20.0}, "redis") == 0.0


def test_a_window_between_readings_counts_cpu_and_commands():
    before = {"at": 1.0, "redis": 2.0, "ws": 10.0,
              "commands": {"publish": (10, 100), "get": (5, 5)}}
    after = {"at": 3.0, "redis": 2.5, "ws": 11.0,
             "commands": {"publish": (30, 500), "get": (5, 5), "evalsha": (2, 40)}}
    window = spent(before, after)
    assert (window["seconds"], window["redis"], window["ws"]) == (2.0, 0.5, 1.0)
    assert command_rates(window["commands"], window["seconds"], top=2) == {
        "publish": {"calls_per_s": 10.0, "us_per_s": 200},
        "evalsha": {"calls_per_s": 1.0, "us_per_s": 20}}


def test_ports_for_more_websocket_processes_keep_the_internal_listeners_apart():
    ports = with_ws_processes(Ports().shifted(6000), 4)
    assert ports.ws == (14101, 14102, 14103, 14104)
    assert ports.ws_internal == (14111, 14112, 14113, 14114)
    assert not set(ports.ws) & set(ports.ws_internal)
    with pytest.raises(ValueError):
        with_ws_processes(Ports(), 10)


def test_nginx_spreads_connections_over_its_workers_by_reuseport():
    values = nginx_values(14000, 8)
    assert values["LISTEN"] == "127.0.0.1:14000 reuseport"
    assert values["WORKER_PROCESSES"] == "8"
    # Two descriptors per proxied socket must fit the per-process limit (20,000 here).
    assert int(values["WORKER_CONNECTIONS"]) < 20_000


def result(system, last_p99, lost=0, kib=20.0):
    return {"system": system, "members": 1000, "ws_processes": 4, "interval": 5.0,
            "open_at_end": 1000, "sockets_per_process": {1: 250, 2: 250, 3: 250, 4: 250},
            "connect": {"rate": 100.0}, "broadcasts": 20, "delivered": 20_000 - lost,
            "first_p50_ms": 10.0, "first_p99_ms": 20.0, "last_p50_ms": last_p99 / 2,
            "last_p99_ms": last_p99, "lost": lost, "duplicates": 0, "ws_kib_per_socket": kib,
            "nginx_kib_per_socket": 21.0,
            "idle_cpu_share": {"redis": 0.02, "ws": 0.5}, "busy_cpu_share": {"redis": 0.025},
            "cpu_us_per_delivery": {"ws": 20.0, "nginx": 3.0, "generator": 9.0}}


def test_the_section_states_each_target_and_whether_it_holds():
    cost = [{"fanout": "pubsub", "size": 100, "processes": 4, "us_per_send": 10.0,
             "redis_cpu_ms_per_send": 0.02, "bytes_per_send": 300},
            {"fanout": "pubsub", "size": 50_000, "processes": 4, "us_per_send": 30.0,
             "redis_cpu_ms_per_send": 0.03, "bytes_per_send": 300}]
    run = {"id": "1", "commit": "abc", "date": "d", "minutes": 20.0, "command": "c",
           "nginx_workers": 8, "users": 100, "fanout": "pubsub", "shards": 1}
    text = report.section([result("ours", 3000.0, lost=2, kib=30.0),
                           result("ceiling", 1000.0)], cost, run)
    assert text.startswith(report.BEGIN) and text.endswith(report.END)
    assert "2 lost, 0 duplicates: **no**" in text
    assert "socket in the WebSocket processes: 30.0: **no**" in text
    assert "the ceiling's: 3.00x: **no**" in text
    assert "(pub/sub): 3.0x: **no**" in text
    assert "| pubsub | 10.0 | 30.0 | 3.0x |" in text
    assert "| ours | 1,000 (250 / 250 / 250 / 250) | 100 |" in text
    assert "| 20.0, 3.0, 9.0 |" in text
    assert "cores busy: ours WebSocket processes 0.50, Redis 0.02; ceiling" in text
    assert len(text.splitlines()) < 30


def test_the_command_line_defaults_are_the_issues_run():
    args = parse([])
    assert (args.members, args.broadcasts, args.ws_processes) == (50_000, 20, 4)
    assert args.systems == "ours,ceiling" and args.fanout == "pubsub"


@pytest.mark.timeout(120)
def test_a_small_room_on_the_ceiling_through_nginx_loses_nothing(tmp_path: Path):
    """The whole run on real processes: nginx with reuseport, four ceiling processes, Redis."""
    from loadtest.bench.systems import port_busy
    from loadtest.scale.run import measure

    base = 15300
    system = Ceiling(tmp_path, base, processes=4, nginx_values=nginx_values(base, 2))
    if any(port_busy(p) for p in system.ports()):
        pytest.skip("ports taken")
    system.start()
    try:
        figures = measure(system, Config(members=200, users=8, broadcasts=3, interval=0.5,
                                         idle_seconds=1.0, run_id="t"), log=lambda _: None)
    finally:
        system.stop()
    assert figures["lost"] == 0 and figures["delivered"] == 600
    assert sum(figures["sockets_per_process"].values()) == 200
    assert figures["last_p99_ms"] >= figures["first_p50_ms"] > 0


def test_a_part_busier_idle_than_broadcasting_reads_below_idle_not_zero():
    """The difference of shares is no cost per delivery once it is negative."""
    saturated = {**result("ceiling", 1000.0),
                 "idle_cpu_share": {"ws": 0.50, "nginx": 0.10, "generator": 0.24},
                 "busy_cpu_share": {"ws": 0.47, "nginx": 0.14, "generator": 0.32},
                 "cpu_us_per_delivery": {"ws": 0.0, "nginx": 8.67, "generator": 16.05}}
    row = report.system_table([saturated]).splitlines()[-1]
    assert row.endswith("| below idle, 8.67, 16.05 |")
    text = report.section([saturated], [], {"id": "1", "commit": "abc", "date": "d",
                                            "minutes": 1.0, "command": "c",
                                            "nginx_workers": 8, "users": 100,
                                            "fanout": "pubsub", "shards": 1})
    assert "While broadcasting: ceiling WebSocket processes 0.47, nginx 0.14" in text
