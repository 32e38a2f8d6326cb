"""The load-test harness: the ledger's accounting without a server, and real smoke runs.

The smoke runs start Locust as a subprocess (`python -m loadtest.run`), never in this process:
locust monkey-patches the standard library with gevent when it is imported.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from deploy.local.topology import REPO
from loadtest import report
from loadtest.conftest import OFFSET
from loadtest.ledger import Ledger, bucket, check_thresholds, percentile

GRACE = 5.0


def synced_member(ledger: Ledger, base: int = 10, room: str = "r", name: str = "u"):
    """A member that joined at position `base` at time 0."""
    member = ledger.member(room, name)
    ledger.synced(member, base, 0.0)
    return member


# ---------------------------------------------------------------------- receivers
def test_contiguous_delivery_is_neither_lost_nor_duplicated():
    """Every seq after the history position, once each, leaves nothing to report."""
    ledger = Ledger()
    member = synced_member(ledger)
    for seq in range(11, 21):
        assert ledger.event(member, seq, 1.0) == "new"
    summary = ledger.report(now=100.0, grace=GRACE)
    assert (summary["loss"], summary["duplicates"]) == (0, 0)


def test_a_gap_that_is_never_filled_is_a_lost_delivery():
    """Seqs 12 and 13 missing between 11 and 14 count as two lost deliveries."""
    ledger = Ledger()
    member = synced_member(ledger)
    for seq in (11, 14):
        ledger.event(member, seq, 1.0)
    summary = ledger.report(now=100.0, grace=GRACE)
    assert (summary["lost_deliveries"], summary["lost_events"]) == (2, 2)
    assert summary["lost_by_room"] == {"r": [12, 13]}


def test_a_gap_filled_later_is_not_lost():
    """A late (gap-filled) seq counts as out of order, not lost."""
    ledger = Ledger()
    member = synced_member(ledger)
    for seq in (11, 13, 12):
        ledger.event(member, seq, 1.0)
    summary = ledger.report(now=100.0, grace=GRACE)
    assert (summary["loss"], summary["out_of_order"]) == (0, 1)


def test_a_seq_seen_twice_is_a_duplicate():
    """The same seq twice on a member is one duplicate delivery."""
    ledger = Ledger()
    member = synced_member(ledger)
    assert [ledger.event(member, s, 1.0) for s in (11, 12, 12)] == ["new", "new", "duplicate"]
    assert ledger.report(now=100.0, grace=GRACE)["duplicate_deliveries"] == 1


def test_an_event_at_or_before_the_history_position_is_a_duplicate():
    """The history already covered seq <= base, so receiving it live again is a duplicate."""
    ledger = Ledger()
    member = synced_member(ledger, base=10)
    assert ledger.event(member, 9, 1.0) == "old"
    assert ledger.report(now=100.0, grace=GRACE)["duplicates"] == 1


def test_resume_replay_fills_the_outage():
    """Events missed while disconnected and replayed after resume are not lost."""
    ledger = Ledger()
    member = synced_member(ledger)
    ledger.event(member, 11, 1.0)
    ledger.disconnected(member, 2.0)
    assert ledger.resume_position(member) == 11
    for seq in (12, 13):
        ledger.event(member, seq, 3.0)
    ledger.synced(member, 13, 3.0)
    assert ledger.report(now=100.0, grace=GRACE)["loss"] == 0


def test_a_resume_end_past_the_replayed_events_is_loss():
    """resume_end at 14 after replaying only 12 means 13 and 14 were skipped."""
    ledger = Ledger()
    member = synced_member(ledger)
    ledger.event(member, 11, 1.0)
    ledger.disconnected(member, 2.0)
    ledger.event(member, 12, 3.0)
    ledger.synced(member, 14, 3.0)
    assert ledger.report(now=100.0, grace=GRACE)["lost_deliveries"] == 2


def test_a_connected_member_that_stops_hearing_the_room_loses_what_others_saw():
    """Events another member saw more than grace before the report are owed to a live member."""
    ledger = Ledger()
    deaf = synced_member(ledger, name="deaf")
    other = synced_member(ledger, name="other")
    ledger.event(other, 11, 10.0)
    ledger.event(other, 12, 98.0)  # within the grace: may still be on its way
    summary = ledger.report(now=100.0, grace=GRACE)
    assert summary["lost_deliveries"] == 1
    assert deaf.high == 10


def test_a_member_that_left_is_owed_only_what_came_before_it_left():
    """Events first seen after a member left (minus grace) are not owed to it."""
    ledger = Ledger()
    leaver = synced_member(ledger, name="leaver")
    other = synced_member(ledger, name="other")
    ledger.event(other, 11, 1.0)
    ledger.event(leaver, 11, 1.0)
    ledger.left(leaver, 10.0)
    ledger.event(other, 12, 20.0)
    assert ledger.report(now=100.0, grace=GRACE)["loss"] == 0


def test_a_dropped_member_that_never_resumed_is_owed_up_to_its_position_only():
    """A member still disconnected at the end is owed nothing after it dropped."""
    ledger = Ledger()
    dropped = synced_member(ledger, name="dropped")
    other = synced_member(ledger, name="other")
    ledger.disconnected(dropped, 5.0)
    ledger.event(other, 11, 30.0)
    ledger.left(dropped, 90.0)
    assert ledger.report(now=100.0, grace=GRACE)["loss"] == 0


def test_events_before_the_first_sync_are_a_protocol_violation_not_loss():
    """A room event before history_end is flagged and not counted for loss."""
    ledger = Ledger()
    member = ledger.member("r", "u")
    assert ledger.event(member, 5, 1.0) == "early"
    summary = ledger.report(now=100.0, grace=GRACE)
    assert (summary["loss"], summary["protocol_violations"]) == (0, 1)


# ---------------------------------------------------------------------- senders
def test_an_echoed_message_is_settled():
    """The sender seeing its client id come back settles the send."""
    ledger = Ledger()
    member = synced_member(ledger)
    ledger.sent_message("lt-u-1", member, 1, 1.0)
    assert ledger.echo("lt-u-1", 11) is not None
    summary = ledger.report(now=100.0, grace=GRACE)
    assert (summary["sent"], summary["echoed"], summary["unechoed"]) == (1, 1, 0)


def test_a_message_never_echoed_on_a_healthy_connection_is_lost():
    """No echo for longer than grace on an open connection counts as a lost message."""
    ledger = Ledger()
    member = synced_member(ledger)
    ledger.sent_message("lt-u-1", member, 1, 1.0)
    ledger.sent_message("lt-u-2", member, 1, 98.0)  # still within grace
    summary = ledger.report(now=100.0, grace=GRACE)
    assert (summary["unechoed"], summary["loss"]) == (1, 1)


def test_a_message_sent_into_a_closing_connection_is_unconfirmed_not_lost():
    """Unechoed sends on a connection that then closed are reported apart from loss."""
    ledger = Ledger()
    member = synced_member(ledger)
    ledger.sent_message("lt-u-1", member, 1, 1.0)
    ledger.connection_closed(member, 1)
    summary = ledger.report(now=100.0, grace=GRACE)
    assert (summary["unconfirmed_at_close"], summary["loss"]) == (1, 0)


def test_a_rejected_message_is_not_lost():
    """An error frame naming the client id (nothing stored) settles the send as rejected."""
    ledger = Ledger()
    member = synced_member(ledger)
    ledger.sent_message("lt-u-1", member, 1, 1.0)
    ledger.reject("lt-u-1")
    summary = ledger.report(now=100.0, grace=GRACE)
    assert (summary["rejected"], summary["loss"]) == (1, 0)


def test_one_client_id_stored_under_two_seqs_is_a_duplicate():
    """The same send coming back with two different seqs was stored twice."""
    ledger = Ledger()
    member = synced_member(ledger)
    ledger.sent_message("lt-u-1", member, 1, 1.0)
    ledger.echo("lt-u-1", 11)
    ledger.echo("lt-u-1", 12)
    assert ledger.report(now=100.0, grace=GRACE)["double_stored"] == 1


# ---------------------------------------------------------------------- gate and statistics
def test_thresholds_pass_when_every_value_is_within_its_limit():
    """A clean summary yields no failed threshold."""
    summary = {"loss": 0, "duplicates": 0, "rtt_p99_ms": 250, "fail_ratio": 0.001,
               "dropped": 0, "protocol_violations": 0}
    limits = {"max_loss": 0, "max_duplicates": 0, "max_rtt_p99": 1.0, "max_fail_ratio": 0.01,
              "max_dropped": 0, "max_protocol_violations": 0}
    assert check_thresholds(summary, limits) == []


def test_thresholds_name_each_failure_and_skip_negative_limits():
    """Loss and RTT over their limits are reported; a negative limit is not checked."""
    summary = {"loss": 3, "duplicates": 0, "rtt_p99_ms": 1500, "fail_ratio": 0.5,
               "dropped": 7}
    limits = {"max_loss": 0, "max_duplicates": 0, "max_rtt_p99": 1.0, "max_fail_ratio": -1,
              "max_dropped": -1}
    failed = check_thresholds(summary, limits)
    assert [line.split(":")[0] for line in failed] == ["messages lost", "broadcast RTT p99"]


def test_percentiles_of_a_rounded_histogram():
    """Locust-style rounding and percentiles over {ms: count}."""
    assert [bucket(v) for v in (42.4, 123, 4567, 23456)] == [42, 120, 4600, 23000]
    histogram = {"10": 98, "500": 1, "2000": 1}
    assert (percentile(histogram, 0.5), percentile(histogram, 0.99)) == (10.0, 500.0)
    assert percentile({}, 0.5) is None


def test_window_statistics_split_rtt_at_the_fault_window():
    """Seconds overlapping a fault window count inside it, the others outside."""
    series = [{"t": 100.0 + i, "rtt": {"20": 10} if i < 5 else {"3000": 10}} for i in range(8)]
    stats = report.window_stats(series, [{"start": 104.5, "end": 107.0}])
    assert (stats["outside"]["p99_ms"], stats["inside"]["p99_ms"]) == (20.0, 3000.0)
    assert stats["inside"]["samples"] == 30


@pytest.mark.django_db
def test_make_load_users_is_idempotent():
    """Running the command twice creates the users once, with a working password."""
    from django.contrib.auth import authenticate, get_user_model
    from django.core.management import call_command

    outputs = [io.StringIO(), io.StringIO()]
    for output in outputs:
        call_command("make_load_users", "3", "--password", "pw-1", stdout=output)
    names = sorted(get_user_model().objects.filter(username__startswith="load")
                   .values_list("username", flat=True))
    assert names == ["load0001", "load0002", "load0003"]
    assert authenticate(username="load0002", password="pw-1") is not None
    assert [o.getvalue().split(",")[0] for o in outputs] == ["3 created", "0 created"]


# ---------------------------------------------------------------------- real runs
def smoke(topology, out, *extra: str) -> subprocess.CompletedProcess:
    """Run `python -m loadtest.run smoke` (20 users) against the module's topology."""
    return subprocess.run(
        [sys.executable, "-m", "loadtest.run", "smoke", "--users", "20", "--rooms", "4",
         "--ramp", "8", "--ramp-down", "3", "--state-dir", str(topology.state),
         "--port-offset", str(OFFSET), "--out", str(out), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=150,
    )


@pytest.mark.topology
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_smoke_run_passes_its_thresholds(load_topology, tmp_path):
    """20 users for ~30 s: no loss, no duplicates, p99 RTT and failures within limits."""
    result = smoke(load_topology, tmp_path / "smoke", "--duration", "15")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    assert summary["passed"] and summary["sent"] > 50 and summary["rtt_samples"] > 100, output
    assert (summary["loss"], summary["duplicates"], summary["dropped"]) == (0, 0, 0)
    for name in ("locust_stats.csv", "report.html", "rtt.png", "connections.png",
                 "throughput.png", "timeseries.jsonl"):
        assert (tmp_path / "smoke" / name).stat().st_size > 0, name
    print(output[output.find("====="):])


@pytest.mark.topology
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_impossible_rtt_threshold_fails_the_run(load_topology, tmp_path):
    """The same run with a 0.1 ms p99 RTT limit exits non-zero and names the threshold."""
    result = smoke(load_topology, tmp_path / "gate", "--duration", "5", "--max-rtt-p99",
                   "0.0001")
    assert result.returncode != 0
    assert "THRESHOLD FAILED: broadcast RTT p99" in result.stdout, result.stdout[-4000:]
    assert json.loads((tmp_path / "gate" / "summary.json").read_text())["passed"] is False
