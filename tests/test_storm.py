"""The reconnect-storm drill at a size CI affords: a few hundred clients, one WebSocket process
killed (`kill -9`) or drained, every affected client resumed, nothing lost or duplicated.

The figures are printed (run with -s); `make rehearse-storm` runs the full-size drill. The
handshake ladder (`make bench-ladder`) runs here too, at CI size, on the same topology.
"""

import os
import time

import pytest

from loadtest.bench.systems import Ours, port_busy
from loadtest.ladder import climb as ladder
from loadtest.storm import report
from loadtest.storm.drill import Config, Drill

pytestmark = [pytest.mark.topology, pytest.mark.timeout(240)]

# Ports().shifted(3500): nginx on 11500, Redis 9880-9881, sentinels 29880-29882: clear of the
# other tests' plans and below the kernel's ephemeral ports (32768-), which an outgoing
# connection could hold. STORM_PORT_OFFSET moves it on a machine where it is taken.
OFFSET = int(os.environ.get("STORM_PORT_OFFSET", "3500"))
CLIENTS, ROOMS, USERS = 400, 10, 20


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """The topology with the benchmark's rate limits and nginx limits, on shifted ports."""
    system = Ours(tmp_path_factory.mktemp("storm") / "ours", OFFSET)
    busy = [p for p in system.ports() if port_busy(p)]
    if busy:
        pytest.fail(f"ports {busy} are taken (Ports().shifted({OFFSET}))", pytrace=False)
    try:
        system.start()
        yield system
    finally:
        system.stop()


def drill(ours, mode: str, **overrides) -> dict:
    """Run one drill at CI size and print its summary."""
    config = Config(clients=CLIENTS, rooms=ROOMS, users=USERS, mode=mode, concurrency=100,
                    resume_share=0.25, rate=1.0, before_fault=2.0, after_resumed=2.0,
                    storm_timeout=90.0, settle_timeout=30.0, run_id=time.strftime("%H%M%S"),
                    **overrides)
    result = Drill(config, ours).run()
    print("\n" + report.summary(result))
    return result


def assert_nothing_lost_and_everyone_back(result: dict, within: float) -> None:
    assert "error" not in result, result["error"]
    storm = result["storm"]
    assert result["never_joined"] == 0, result
    assert storm["affected"] > 0 and storm["lost_socket"] == storm["affected"], storm
    assert storm["not_resumed"] == 0, storm
    assert storm["last_s"] < within, storm
    assert result["lost"] == 0, result["lost_samples"]
    assert result["duplicates"] == 0, result["duplicate_samples"]
    assert result["behind_at_end"] == 0 and result["away_at_end"] == 0, result
    assert result["final_seqs"]["events"] > 0 and not result["final_seqs"]["acked_beyond_database"]
    assert result["fresh"]["rate"] > 0 and result["resume"]["rate"] > 0, result


def test_kill_9_storm_every_client_resumes_and_nothing_is_lost(ours):
    """kill -9 one of two WebSocket processes under 400 clients: all of its clients resume."""
    result = drill(ours, "kill")
    assert_nothing_lost_and_everyone_back(result, within=60)


def test_drain_storm_every_client_resumes_within_the_window_and_nothing_is_lost(ours):
    """Drain one process over 4 s: its clients leave on `reconnect`, all resume, none lost."""
    result = drill(ours, "drain", drain_window=4.0)
    assert_nothing_lost_and_everyone_back(result, within=4.0 + 3 + 20)


def test_the_handshake_ladder_serves_every_rung_and_the_chat_costs_most(ours):
    """`make bench-ladder` at CI size, on this topology: each rung's process serves every fresh
    join and every resume, and the full chat join costs its server more than the bare one."""
    args = ladder.parse(["--sockets", "200", "--rooms", "10", "--rounds", "1", "--pause", "0.2"])
    started = ladder.start_rungs(ours, args.rungs, ours.topology.state / "ladder")
    try:
        results = ladder.climb(args, ours, started, ours.cookies(USERS))
    finally:
        ladder.stop_rungs(started)
    print("\n" + ladder.summary(results))
    assert set(results) == set(ladder.RUNGS)
    for rung, (figures,) in results.items():
        for phase in ("fresh", "resume"):
            assert figures[phase]["failed"] == 0 and figures[phase]["handshakes"] == 200, rung
    server = {rung: rounds[0]["resume"]["cpu_ms"]["ws"] for rung, rounds in results.items()}
    assert server["full"] > server["bare"]
