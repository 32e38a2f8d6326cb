"""The storm drill's own logic: seq accounting, the page's reconnect delays, figures, targets."""

import pytest

from loadtest.storm import cli, report, tracking
from loadtest.storm.drill import Config, build_specs, cpu_per_handshake, rate_of, summarise
from loadtest.storm.tracking import SeqTrack


def test_events_after_the_join_count_and_history_before_it_does_not():
    """A fresh join at seq 5 expects 6.. and nothing below; missing ones are listed."""
    track = SeqTrack()
    track.joined(5)
    for seq in (6, 7, 9):
        assert track.event(seq)
    assert track.missing(10) == [8, 10]
    assert track.missing(5) == []
    assert track.gaps == 1  # 9 came right after 7


def test_a_seq_seen_twice_or_one_from_before_the_join_is_a_duplicate():
    """Replayed or live, the second copy counts once; so does a seq the history held."""
    track = SeqTrack()
    track.joined(3)
    assert track.event(4)
    assert not track.event(4)
    assert not track.event(2)
    assert track.duplicates == 2
    assert track.missing(4) == []


def test_a_client_that_never_joined_has_nothing_to_lose():
    """No join position: loss cannot be judged (the drill counts it as never joined)."""
    assert SeqTrack().missing(10) == []


def test_resume_position_is_the_highest_seq_or_the_drain_frames_if_older():
    """realtime.js: resume from min(our position, the `reconnect` frame's last_seq)."""
    track = SeqTrack()
    assert track.resume_from() is None
    track.joined(0)
    track.event(1)
    track.event(2)
    assert track.resume_from() == 2
    assert track.resume_from(server_seq=1) == 1
    assert track.resume_from(server_seq=7) == 2


def test_backoff_doubles_from_half_a_second_with_jitter_and_caps_at_thirty_seconds():
    """The page's backoffDelay: between half and all of min(30 s, 0.5 s x 2^attempt)."""
    assert tracking.backoff_delay(0, random=lambda: 0.0) == 250
    assert tracking.backoff_delay(0, random=lambda: 1.0) == 500
    assert tracking.backoff_delay(3, random=lambda: 1.0) == 4000
    assert tracking.backoff_delay(10, random=lambda: 0.0) == 15_000
    assert tracking.backoff_delay(50, random=lambda: 1.0) == 30_000


@pytest.mark.parametrize(("code", "drain", "expected"), [
    (1006, None, (250, 1)),           # a lost connection: backoff
    (1012, 1200, (1200, 0)),          # a drain: the server's delay, no backoff
    (1008, None, (10_000, 1)),        # frame flood: at least 10 s
    (4029, None, (5_000, 1)),         # too many connections: at least 5 s
    (4503, None, (1000, 1)),          # channel layer failover: 1-5 s
    (4003, None, (None, 0)),          # forbidden: give up
])
def test_reconnect_delays_follow_the_page(code, drain, expected):
    """Each close code gets realtime.js's delay and attempt count."""
    assert tracking.reconnect_delay(code, 0, drain, random=lambda: 0.0) == expected


def test_percentiles_are_nearest_rank():
    """p50 of 1..100 is 50, p99 is 99, and one value is every percentile."""
    values = [float(v) for v in range(100, 0, -1)]
    assert tracking.percentile(values, 50) == 50
    assert tracking.percentile(values, 99) == 99
    assert tracking.percentile([3.0], 99) == 3.0
    assert tracking.percentile([], 50) is None


def test_handshake_outcomes_split_into_refused_and_failed():
    """HTTP statuses and close codes are refusals; timeouts and resets are failures."""
    refused, failed = tracking.split_outcomes(
        {"ok": 90, "HTTP 502": 2, "close 4029": 1, "TimeoutError": 3, "no welcome (timeout)": 1})
    assert refused == {"HTTP 502": 2, "close 4029": 1}
    assert failed == {"TimeoutError": 3, "no welcome (timeout)": 1}


def test_a_refused_handshake_is_named_by_its_http_status():
    """An InvalidStatus-like error reads `HTTP <status>`; anything else by its type."""
    class Response:
        status_code = 503

    class Refused(Exception):
        response = Response()

    assert tracking.outcome_of(Refused()) == "HTTP 503"
    assert tracking.outcome_of(TimeoutError()) == "TimeoutError"


def test_rates_count_completions_per_second_since_the_start():
    """Average over the time to the last completion; peak in one second."""
    assert rate_of([], 0.0)["rate"] is None
    assert rate_of([10.5, 11.0, 12.0], 10.0) == {"count": 3, "seconds": 2.0, "rate": 1.5}
    series = tracking.rate_series([100.2, 100.4, 100.9, 101.5], 100.0)
    assert series == {"average": 4 / 1.5, "peak": 3.0}


def test_specs_give_every_room_a_sender_and_spread_users_and_workers():
    """One sender per room, senders of different users, rooms over every worker."""
    config = Config(clients=40, rooms=4, users=8, run_id="t")
    cookies = [f"c{i}" for i in range(8)]
    specs = build_specs(config, "ws://x", lambda c: [("Cookie", c)], cookies, workers=3)
    assert len(specs) == 40
    senders = [s for s in specs if s.sender]
    assert [s.room for s in senders] == [0, 1, 2, 3]
    assert len({s.headers[0][1] for s in senders}) == 4
    assert {s.worker for s in specs if s.room == 0} == {0, 1, 2}
    assert specs[0].url == "ws://x/ws/chat/storm-t-0/"
    assert specs[0].local_host == "127.0.0.2"


def test_worker_count_keeps_each_process_under_its_file_limit():
    """At least two processes, one more for every 4,000 clients."""
    assert Config(clients=400).worker_count() == 2
    assert Config(clients=10_000).worker_count() == 3
    assert Config(clients=10_000, workers=5).worker_count() == 5


def worker_answer(**overrides) -> dict:
    answer = {"clients": 100, "never_joined": 0, "affected": 50, "affected_lost_socket": 50,
              "collateral": 0, "resume_seconds": [1.0, 2.0], "resumed_at": [101.0, 102.0],
              "outcomes": {"fresh": {"ok": 100}, "storm": {"ok": 2, "HTTP 502": 1}},
              "errors": {}, "lost": 0, "lost_clients": 0, "lost_samples": [],
              "away_at_end": 0, "pending_for_away": 0,
              "duplicates": 0, "duplicate_clients": 0, "duplicate_samples": [], "gaps": 0,
              "sent": 10, "acked": {}}
    answer.update(overrides)
    return answer


def test_summary_merges_workers_and_counts_clients_that_never_resumed():
    """Two workers: 100 affected, 4 resumed; storm handshakes merged; 502 is a refusal."""
    result = summarise([worker_answer(), worker_answer(lost=2, lost_clients=1)], 100.0)
    storm = result["storm"]
    assert storm["affected"] == 100 and storm["resumed"] == 4 and storm["not_resumed"] == 96
    assert storm["last_s"] == 2.0
    assert storm["refused"] == 2 and storm["refusals"] == {"HTTP 502": 2}
    assert result["lost"] == 2
    assert result["before_storm_handshakes"] == {"ok": 200}


def test_summary_times_each_step_of_the_way_back_and_where_clients_landed():
    """Step times merge over workers; a step no client reached (a kill's `reconnect`) is empty."""
    answers = [worker_answer(told_seconds=[1.0], waited_seconds=[2.0], reopened_seconds=[3.0],
                             upgraded_seconds=[4.0], resumed_on={"h:2": 2},
                             loop_lag_s={"p50": 0.0, "p99": 0.1, "max": 0.5}),
               worker_answer(told_seconds=[5.0], waited_seconds=[1.0], reopened_seconds=[6.0],
                             upgraded_seconds=[9.0], resumed_on={"h:2": 1, "h:1": 1})]
    storm = summarise(answers, 100.0)["storm"]
    assert storm["steps"]["told"] == {"count": 2, "p50_s": 1.0, "p99_s": 5.0, "last_s": 5.0}
    assert storm["steps"]["upgraded"]["last_s"] == 9.0
    assert storm["resumed_on"] == {"h:2": 3, "h:1": 1}
    assert storm["generator_loop_lag_s"][0]["max"] == 0.5
    text = report.summary(full_result(**storm))
    assert "`reconnect` read 2 p50 1.00 s last 5.00 s; then waited 2" in text
    assert "101 2 p50 4.00 s last 9.00 s" in text
    assert "late by p99/max 0.10/0.50 s" in text
    kill = summarise([worker_answer(reopened_seconds=[3.0])], 100.0)["storm"]
    assert kill["steps"]["told"]["count"] == 0
    assert report.steps_words(kill["steps"]) == "handshake begun 1 p50 3.00 s last 3.00 s"


def full_result(**storm) -> dict:
    result = {"config": {"mode": "kill", "clients": 100, "users": 10, "rate": 0.5,
                         "concurrency": 20},
              "rooms": 2, "fresh": {"rate": 80.0, "count": 100, "seconds": 1.25},
              "resume": {"rate": 120.0, "count": 50, "seconds": 0.4},
              "fault": {"mode": "kill", "program": "ws-1", "node": "h:1"},
              "storm": {"affected": 50, "resumed": 50, "not_resumed": 0, "p50_s": 1.0,
                        "p99_s": 2.0, "last_s": 2.5, "refused": 0, "failed": 0,
                        "handshakes": {"ok": 50}, "resumes_per_s": {"average": 20, "peak": 30}},
              "lost": 0, "duplicates": 0, "gaps": 0, "sent": 10,
              "final_seqs": {"events": 10}, "machine": {"load_average": [1.0, 1.0, 1.0]}}
    result["storm"].update(storm)
    return result


def test_targets_fail_on_slow_resumes_refusals_loss_duplicates_and_slow_handshakes():
    """Each target names its figure; -1 (left out of limits) turns one off."""
    args = cli.parse(["--mode", "kill"])
    limits = cli.limits_from(args)
    assert limits["max_resume_seconds"] == 15 and "max_failed" not in limits
    assert report.failures(full_result(), limits) == [
        "resumes/s with nothing missed 120 < 1000"]
    slow = full_result(last_s=20.0, refused=3, not_resumed=1)
    slow["lost"], slow["duplicates"] = 2, 1
    found = report.failures(slow, {**limits, "min_resumes_per_s": 100})
    assert len(found) == 5, found
    assert found[0].startswith("last affected client resumed after 20.00 s")


def test_a_drains_default_resume_target_is_its_window_plus_five_seconds():
    """--mode drain: the drain window (the server's 10 s unless given) plus 5 s."""
    assert cli.limits_from(cli.parse(["--mode", "drain"]))["max_resume_seconds"] == 15
    drain = cli.parse(["--mode", "drain", "--drain-window", "4"])
    assert cli.limits_from(drain)["max_resume_seconds"] == 9


def test_a_drill_with_no_resume_figure_fails_its_targets():
    """A drill cut short (no storm figures) fails rather than passing by default."""
    found = report.failures({"config": {}}, cli.limits_from(cli.parse([])))
    assert any("resumed after -" in f for f in found)


def test_the_summary_names_every_figure():
    """The console summary carries the issue's figures."""
    text = report.summary(full_result())
    for needle in ("fresh joins 80/s", "resumes with nothing missed 120/s", "p50 1.00 s",
                   "p99 2.00 s", "last 2.50 s", "refused 0", "lost 0", "duplicates 0",
                   "load average"):
        assert needle in text, needle


def test_events_missing_for_a_client_still_away_are_pending_not_lost():
    """At the end, a connected client's gap is loss; an absent client's is pending its resume."""
    import asyncio
    import multiprocessing
    from types import SimpleNamespace

    from loadtest.bench.generator import Spec
    from loadtest.storm.worker import StormClient, StormWorker

    worker = StormWorker(multiprocessing.Pipe()[1])
    for cid, connected in ((1, True), (2, False)):
        client = StormClient(Spec(cid, "ws://x/", [], room=0))
        client.track.joined(0)
        client.track.event(1)
        client.ws, client.welcomed = SimpleNamespace(open=connected), True
        worker.clients[cid] = client
    result = asyncio.run(worker.cmd_results({0: 3}))
    assert result["lost"] == 2 and result["lost_clients"] == 1
    assert result["away_at_end"] == 1 and result["pending_for_away"] == 2
    assert asyncio.run(worker.cmd_behind({0: 3})) == {"behind": 1}


def test_cpu_per_handshake_divides_each_parts_cpu_and_bounds_the_rate():
    """Two seconds of CPU over 1,000 handshakes is 2 ms each: 1,000/s per 2 cores at most."""
    before = {"ws": 10.0, "nginx": 1.0, "redis": 2.0, "clients": 3.0}
    after = {"ws": 11.2, "nginx": 1.2, "redis": 2.2, "clients": 3.4}
    spent = cpu_per_handshake(before, after, 1000)
    assert spent["ws"] == 1.2 and spent["all"] == 2.0
    assert spent["capacity_per_s"] == spent["cores"] * 500
    assert cpu_per_handshake(before, after, 0) == {}
