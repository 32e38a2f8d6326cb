"""chanfleet load test: chatters, lurkers and notification receivers, with a pass/fail gate.

Run it through `python -m loadtest.run` (which creates the load users and writes the
report), or by hand against `make run`:

    .venv/bin/python manage.py make_load_users 50      # with the topology's environment
    .venv/bin/locust --config loadtest/locust.conf --peak-users 50 --report-dir build/x

Weights, rates and thresholds are Locust options added in `add_options` below (also
LOCUST_* environment variables, or keys of loadtest/locust.conf). One Locust process only:
the loss ledger lives in the process (no --processes, no workers).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import gevent
import gevent.queue
from locust import constant, events, task
from locust.exception import StopUser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.client import SESSIONS, ChanfleetUser, WsFailure
from loadtest.ledger import LEDGER, check_thresholds
from loadtest.shape import SoakShape  # noqa: F401  (locust picks the shape up from here)

EMOJI = ["👍", "🎉", "❤️", "😂", "🚀"]


def room_name(options, number: int) -> str:
    """The room of a user: users are spread round-robin over --rooms rooms."""
    return f"{options.room_prefix}-{(number - 1) % options.rooms + 1:02d}"


class RoomUser(ChanfleetUser):
    """A user that logs in and keeps one chat room open (resuming it after every close)."""

    abstract = True

    def on_start(self):
        """Log in, join the room and wait for its history."""
        self.client.login()
        self.client.join(room_name(self.environment.parsed_options, self.number))
        if not self.client.wait_live(30):
            self.client.fire("ws join chat", 0, WsFailure("no history_end in 30 s"), ms=30000)

    def alive(self) -> None:
        """Stop this user when its room refused it for good (4003/4004)."""
        if self.client.fatal:
            raise StopUser()


class Chatter(RoomUser):
    """Sends messages every --chat-interval seconds on average, types, reacts to recent ones."""

    weight = 6

    def wait_time(self):
        """Jittered around --chat-interval."""
        interval = self.environment.parsed_options.chat_interval
        return random.uniform(0.5 * interval, 1.5 * interval)

    @task
    def chat(self):
        """Maybe type first, send one message, sometimes react to a recent message."""
        self.alive()
        if random.random() < 0.3:
            self.client.send({"type": "typing", "is_typing": True}, "ws send typing")
        self.client.send_message()
        if self.client.recent and random.random() < 0.2:
            self.client.send_reaction(random.choice(self.client.recent), random.choice(EMOJI),
                                      random.choice(["add", "add", "remove"]))


class Lurker(RoomUser):
    """Stays in a room: receives everything and answers heartbeats."""

    weight = 3
    wait_time = constant(5)

    @task
    def listen(self):
        """Nothing to do: the receive greenlet does the work."""
        self.alive()


class NotificationReceiver(ChanfleetUser):
    """Keeps ws/notifications/ open; sends itself notifications over HTTP and checks them."""

    weight = 1

    def wait_time(self):
        """Jittered around --notify-interval."""
        interval = self.environment.parsed_options.notify_interval
        return random.uniform(0.5 * interval, 1.5 * interval)

    def on_start(self):
        """Log in, connect, and take the unread count the server sends first."""
        self.arrived: dict[int, dict] = {}
        self.counts: gevent.queue.Queue = gevent.queue.Queue()
        self.sent = 0
        self.unread: int | None = None
        self.unread_connection = 0
        self.client.listeners.append(self.on_frame)
        self.client.login()
        self.client.open_notifications()
        self.client.wait_live(30)

    def on_frame(self, frame: dict) -> None:
        """Collect notifications and unread counts (with the connection they came on)."""
        if frame.get("type") == "notification":
            self.arrived[frame.get("id")] = frame
        elif frame.get("type") == "count_update":
            self.counts.put((self.client.connection, frame.get("unread_count")))

    def take_count(self, timeout: float) -> tuple[int, int] | None:
        """The next (connection, unread count), or None."""
        try:
            return self.counts.get(timeout=timeout)
        except gevent.queue.Empty:
            return None

    @task
    def notify(self):
        """Send one notification to this user; check it arrives and the unread count follows."""
        options = self.environment.parsed_options
        while not self.counts.empty():  # counts of (re)connects: the new baseline
            self.unread_connection, self.unread = self.counts.get()
        if not self.client.live.is_set() or self.unread is None:
            return
        self.sent += 1
        connection = self.client.connection
        body = json.dumps({"t": time.time(), "n": self.sent})
        note = self.client.notify(options.service_token, self.client.user_id, "load test",
                                  body, "system")
        if note is None:
            return
        deadline = time.monotonic() + 10
        while note["id"] not in self.arrived and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if self.arrived.pop(note["id"], None) is None:
            if self.client.connection == connection and self.client.live.is_set():
                LEDGER.count("notifications_lost")
                self.client.fire("ws recv notification", 0,
                                 WsFailure("created but not delivered in 10 s"), ms=10000)
            self.unread = None  # unknown until the next count
            return
        self.check_count(self.unread + 1)
        if self.sent % 5 == 0 and self.client.live.is_set():
            if self.client.send({"type": "mark_all_read"}, "ws send mark_all_read"):
                self.check_count(0)

    def check_count(self, expected: int) -> None:
        """The next unread count must be `expected` unless the socket reconnected meanwhile."""
        taken = self.take_count(10)
        if taken is None:
            self.client.fire("ws check unread", 0, WsFailure("no count_update in 10 s"), ms=0)
            self.unread = None
            return
        connection, count = taken
        if connection == self.unread_connection and count != expected:
            LEDGER.count("unread_mismatches")
            self.client.fire("ws check unread", 0,
                             WsFailure(f"unread {count}, expected {expected}"), ms=0)
        elif connection == self.unread_connection:
            self.client.fire("ws check unread", 0, ms=0)
        self.unread_connection, self.unread = connection, count


# ---------------------------------------------------------------------- options
@events.init_command_line_parser.add_listener
def add_options(parser):
    """Shape, scenario, report and threshold options (all also LOCUST_* variables)."""
    def option(name, **kwargs):
        env = "LOCUST_" + name.strip("-").upper().replace("-", "_")
        parser.add_argument(name, env_var=env, **kwargs)

    option("--peak-users", type=int, default=30, help="users on the plateau")
    option("--ramp-time", type=float, default=10, help="seconds of ramp-up")
    option("--plateau-time", type=float, default=30, help="seconds on the plateau")
    option("--ramp-down-time", type=float, default=5, help="seconds of ramp-down")
    option("--fault-at", type=float, default=-1,
           help="fault window start, seconds into the plateau (-1: none); a label only")
    option("--fault-length", type=float, default=0, help="planned fault window length (s)")
    option("--rooms", type=int, default=5, help="number of chat rooms")
    option("--room-prefix", default="load", help="rooms are <prefix>-01, <prefix>-02, ...")
    option("--user-prefix", default="load", help="users are <prefix>0001, ...")
    option("--load-password", default="chanfleet", help="password of the load users")
    option("--chatter-weight", type=int, default=6)
    option("--lurker-weight", type=int, default=3)
    option("--notification-weight", type=int, default=1)
    option("--chat-interval", type=float, default=2.0,
           help="mean seconds between a chatter's messages")
    option("--notify-interval", type=float, default=5.0,
           help="mean seconds between a notification receiver's notifications")
    option("--service-token", default="chanfleet-local-service-token",
           help="SERVICE_TOKEN of the target (Bearer for /api/notifications/send)")
    option("--session-cache", default="",
           help="JSON file of session cookies reused across runs (empty: always log in)")
    option("--ws-per-address", type=int, default=50,
           help="WebSockets per loopback source address (0: always 127.0.0.1)")
    option("--report-dir", default="build/loadtest/latest",
           help="where the time series and summary.json go")
    option("--loss-grace", type=float, default=5.0,
           help="seconds a delivery may lag before it counts as lost")
    option("--max-loss", type=float, default=0, help="threshold: messages lost")
    option("--max-duplicates", type=float, default=0, help="threshold: duplicates")
    option("--max-rtt-p99", type=float, default=1.0,
           help="threshold: broadcast round trip p99, seconds")
    option("--max-fail-ratio", type=float, default=0.01, help="threshold: failed requests ratio")
    option("--max-dropped", type=float, default=0,
           help="threshold: WebSockets dropped (closes other than a drain's 1012); -1: off")
    option("--max-protocol-violations", type=float, default=0,
           help="threshold: frames against docs/protocol.md (reconnect without 1012, ...)")


@events.init.add_listener
def apply_weights(environment, **_kwargs):
    """User class weights from the options."""
    options = environment.parsed_options
    if options is None:
        return
    SESSIONS.load(options.session_cache)
    Chatter.weight = options.chatter_weight
    Lurker.weight = options.lurker_weight
    NotificationReceiver.weight = options.notification_weight


# ---------------------------------------------------------------------- time series
class Sampler:
    """Writes one JSON line per second: users, open sockets, messages, RTT histogram, stage."""

    def __init__(self):
        self.greenlet = None
        self.file = None

    def start(self, environment) -> None:
        """Open the report folder and start sampling."""
        options = environment.parsed_options
        folder = Path(options.report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.environment = environment
        self.t0 = time.time()
        (folder / "run.json").write_text(json.dumps({
            "t0": self.t0, "host": environment.host,
            "options": {k: v for k, v in vars(options).items()
                        if isinstance(v, (int, float, str, bool)) and k != "service_token"},
        }, indent=2))
        self.file = open(folder / "timeseries.jsonl", "w")
        self.greenlet = gevent.spawn(self.run)

    def run(self) -> None:
        """Sample every second, on the second of the start."""
        tick = self.t0
        while True:
            tick += 1
            gevent.sleep(max(0.0, tick - time.time()))
            self.sample()

    def sample(self) -> None:
        """Write one line."""
        if self.file is None:
            return
        now = time.time()
        counts, rtt = LEDGER.window.take()
        shape = self.environment.shape_class
        runner = self.environment.runner
        line = {
            "t": round(now, 3),
            "elapsed": round(now - self.t0, 3),
            "stage": shape.stage() if shape is not None and runner is not None else "",
            "users": runner.user_count if runner is not None else 0,
            "open": LEDGER.gauges["open"],
            "sent": counts.get("sent", 0),
            "received": counts.get("received", 0),
            "reconnects": counts.get("reconnects", 0),
            "dropped": LEDGER.counters["dropped"],
            "connect_errors": LEDGER.counters["connect_errors"],
            "rtt": rtt,
        }
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()

    def stop(self) -> None:
        """Write the last second and close the file."""
        if self.greenlet is not None:
            self.greenlet.kill()
            self.greenlet = None
        self.sample()
        if self.file is not None:
            self.file.close()
            self.file = None


SAMPLER = Sampler()


@events.test_start.add_listener
def on_test_start(environment, **_kwargs):
    """Fresh ledger, start the time series."""
    LEDGER.reset()
    SAMPLER.start(environment)


@events.test_stop.add_listener
def on_test_stop(environment, **_kwargs):
    """Stop the time series (every user has closed its socket by now)."""
    SAMPLER.stop()


# ---------------------------------------------------------------------- the gate
def summarize(environment) -> dict:
    """The ledger's report plus Locust's RTT percentiles and failure ratio.

    A member is owed what others saw `grace` seconds before it left; under overload a
    delivery may lag far more than --loss-grace, so the grace is at least twice the p99
    broadcast RTT: only real gaps count as loss then.
    """
    options = environment.parsed_options
    rtt = {}
    entry = environment.stats.entries.get(("ws recv message", "WS"))
    if entry is not None and entry.num_requests:
        rtt["rtt_samples"] = entry.num_requests
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            rtt[f"rtt_{name}_ms"] = entry.get_response_time_percentile(q)
        rtt["rtt_max_ms"] = entry.max_response_time
    else:
        rtt.update(rtt_samples=0, rtt_p50_ms=None, rtt_p95_ms=None, rtt_p99_ms=None)
    grace = max(options.loss_grace, 2 * (rtt["rtt_p99_ms"] or 0) / 1000)
    summary = LEDGER.report(time.time(), grace)
    summary.update(rtt, loss_grace_s=grace)
    counters = summary["counters"]
    summary["notifications_lost"] = counters.get("notifications_lost", 0)
    summary["unread_mismatches"] = counters.get("unread_mismatches", 0)
    summary["loss"] += summary["notifications_lost"]
    summary["dropped"] = counters.get("dropped", 0)
    summary["drained"] = counters.get("drained", 0)
    summary["connect_errors"] = counters.get("connect_errors", 0)
    total = environment.stats.total
    duration = max(1e-9, (total.last_request_timestamp or 0) - (total.start_time or 0))
    summary.update(requests=total.num_requests, failures=total.num_failures,
                   fail_ratio=round(total.fail_ratio, 6), duration_s=round(duration, 1),
                   messages_per_s=round(summary["sent"] / duration, 2),
                   deliveries_per_s=round(summary["rtt_samples"] / duration, 2))
    return summary


def describe(summary: dict) -> str:
    """A human summary of a run."""
    def ms(value):
        return "-" if value is None else f"{value:.0f} ms"

    counters = summary["counters"]
    drops = {k[8:]: v for k, v in counters.items() if k.startswith("dropped ")}
    errors = {k[14:]: v for k, v in counters.items() if k.startswith("connect_error ")}
    violations = {k[10:]: v for k, v in counters.items() if k.startswith("violation ")}
    lines = [
        f"messages sent {summary['sent']} ({summary['messages_per_s']}/s), echoed "
        f"{summary['echoed']}, rejected {summary['rejected']}; deliveries "
        f"{summary['rtt_samples']} ({summary['deliveries_per_s']}/s) to "
        f"{summary['members']} room members",
        f"broadcast RTT p50 {ms(summary['rtt_p50_ms'])}, p95 {ms(summary['rtt_p95_ms'])}, "
        f"p99 {ms(summary['rtt_p99_ms'])}",
        f"messages lost: {summary['loss']} (deliveries {summary['lost_deliveries']}, "
        f"unechoed sends {summary['unechoed']}, notifications {summary['notifications_lost']}); "
        f"unconfirmed at close {summary['unconfirmed_at_close']}",
        f"duplicates: {summary['duplicates']} (deliveries {summary['duplicate_deliveries']}, "
        f"double stored {summary['double_stored']}); out of order {summary['out_of_order']}",
        f"WebSockets dropped: {summary['dropped']}{f' {drops}' if drops else ''}; drained "
        f"(1012): {summary['drained']}; connect errors: {summary['connect_errors']}"
        f"{f' {errors}' if errors else ''}",
        f"reconnects {summary['reconnects']}: p50 {ms(summary['reconnect_p50_ms'])}, "
        f"p95 {ms(summary['reconnect_p95_ms'])}",
        f"protocol violations: {summary['protocol_violations']}"
        f"{f' {violations}' if violations else ''}",
        f"requests {summary['requests']}, failures {summary['failures']} "
        f"(ratio {summary['fail_ratio']:.4f}); unread mismatches {summary['unread_mismatches']}",
    ]
    return "\n".join(lines)


@events.quitting.add_listener
def gate(environment, **_kwargs):
    """Check the thresholds, print the summary, write summary.json, set the exit code."""
    options = environment.parsed_options
    if options is None:
        return
    summary = summarize(environment)
    limits = {name: getattr(options, name) for name in
              ("max_loss", "max_duplicates", "max_rtt_p99", "max_fail_ratio", "max_dropped",
               "max_protocol_violations")}
    failed = check_thresholds(summary, limits)
    summary.update(limits=limits, failed=failed, passed=not failed)
    folder = Path(options.report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    verdict = "PASS" if not failed else "FAIL"
    print(f"\n===== chanfleet load test: {verdict} =====\n{describe(summary)}", flush=True)
    for line in failed:
        print(f"THRESHOLD FAILED: {line}", flush=True)
    environment.process_exit_code = 1 if failed else 0
    SESSIONS.save()
