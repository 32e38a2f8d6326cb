"""The delivery ledger of one Locust process: loss, duplicates, echoes and a per-second series.

Pure Python (no locust, no gevent, no sockets), so the accounting is unit-tested on its own.

Receivers. A *member* is one load user in one room, across all its reconnects. Its first
`history_end` fixes `base`: every room event with `seq > base` is owed to it from then on (the
server joins the room group before it reads the history position, and resumes replay every
event after `last_seq`). The member's `seen` set holds the seqs it received live, by gap fill
or by replay. At report time a member is owed

* every seq up to the highest position it knows (`high`: a seq it saw, or the `seq` of a
  `history_end`/`resume_end`), and
* every seq another member of this process had already seen `grace` seconds before this
  member left (or lost its connection for good): a member that stops hearing a busy room
  while connected is caught too.

A seq it is owed but never saw is a lost delivery; a seq it saw twice is a duplicate (the
server promises each connection every event once, and resume starts after the last seen one,
so a seq seen twice across a resume is a duplicate too).

Senders. Every chat message carries a unique client `id`. The sender must see its own message
come back (live, by gap fill or in a replay after a reconnect) with that id as `client_id`.
An error frame naming the id (rate limit, unavailable) means nothing was stored: *rejected*.
A message still unechoed at report time was either sent into a connection that closed before
the echo (*unconfirmed at close*: it may never have reached the server; reported, not a
loss), or sent on a healthy connection more than `grace` before its sender left: *unechoed*,
a loss. One client id stored under two different seqs is a duplicate store.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
from collections import Counter, defaultdict


def bucket(ms: float) -> int:
    """Round a duration in ms the way Locust's statistics do (exact below 100 ms)."""
    value = int(round(ms))
    if value < 100:
        return value
    if value < 1000:
        return int(round(value, -1))
    if value < 10000:
        return int(round(value, -2))
    return int(round(value, -3))


def percentile(histogram: dict, fraction: float) -> float | None:
    """The `fraction` percentile (0..1) of a {ms: count} histogram; None when it is empty."""
    items = sorted((float(k), v) for k, v in histogram.items() if v)
    total = sum(v for _, v in items)
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    running = 0
    for value, count in items:
        running += count
        if running >= rank:
            return value
    return items[-1][0]


def merge(histograms) -> dict[float, int]:
    """Add several {ms: count} histograms (JSON keys may be strings)."""
    total: Counter = Counter()
    for histogram in histograms:
        for key, count in histogram.items():
            total[float(key)] += count
    return dict(total)


@dataclasses.dataclass(eq=False)
class Member:
    """One load user in one room, across its reconnects."""

    room: str
    name: str
    base: int | None = None
    high: int = 0
    seen: set[int] = dataclasses.field(default_factory=set)
    duplicates: int = 0
    out_of_order: int = 0
    connected: bool = False
    lost_at: float | None = None
    left_at: float | None = None


@dataclasses.dataclass(eq=False)
class Pending:
    """A chat message sent and not yet seen coming back."""

    client_id: str
    member: Member
    connection: int
    sent_at: float
    at_close: bool = False


class Ledger:
    """Everything the users of one process saw; gevent-safe (one lock, no blocking inside)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new test run)."""
        self.members: list[Member] = []
        self.first_seen: dict[str, dict[int, float]] = defaultdict(dict)
        self.pending: dict[str, Pending] = {}
        self.stored: dict[str, int] = {}
        self.double_stored = 0
        self.rejected = 0
        self.echoed = 0
        self.sent = 0
        self.counters: Counter = Counter()
        self.gauges: Counter = Counter()
        self.reconnect_ms: list[float] = []
        self.window = Window()

    # ------------------------------------------------------------------ receivers
    def member(self, room: str, name: str) -> Member:
        """Register a receiver (one user in one room)."""
        member = Member(room, name)
        with self.lock:
            self.members.append(member)
        return member

    def synced(self, member: Member, seq: int, now: float) -> None:
        """A `history_end` or `resume_end`: the member is live at position seq."""
        with self.lock:
            if member.base is None:
                member.base = seq
            member.high = max(member.high, seq)
            member.connected = True
            member.lost_at = None

    def event(self, member: Member, seq: int, now: float) -> str:
        """A stored room event arrived; returns "new", "duplicate", "early" or "old"."""
        with self.lock:
            if member.base is None:
                self.counters["violation room event before history_end"] += 1
                return "early"
            if seq <= member.base or seq in member.seen:
                member.duplicates += 1
                return "duplicate" if seq > member.base else "old"
            if seq < member.high:
                member.out_of_order += 1
            member.seen.add(seq)
            member.high = max(member.high, seq)
            room = self.first_seen[member.room]
            if seq not in room:
                room[seq] = now
            return "new"

    def disconnected(self, member: Member, now: float) -> None:
        """The member's connection dropped; it is owed nothing new until it resumes."""
        with self.lock:
            if member.connected:
                member.connected = False
                member.lost_at = now

    def left(self, member: Member, now: float) -> None:
        """The member left on purpose (its user stopped)."""
        with self.lock:
            member.left_at = member.lost_at if not member.connected and member.lost_at else now
            member.connected = False

    def resume_position(self, member: Member) -> int | None:
        """The position to resume from: the last event seen (None before the first sync)."""
        return None if member.base is None else member.high

    # ------------------------------------------------------------------ senders
    def sent_message(self, client_id: str, member: Member, connection: int, now: float) -> None:
        """A chat message was written to the socket."""
        with self.lock:
            self.sent += 1
            self.pending[client_id] = Pending(client_id, member, connection, now)

    def echo(self, client_id: str, seq: int) -> Pending | None:
        """A `message` frame carrying client_id arrived; returns the pending send it settles."""
        with self.lock:
            first = self.stored.setdefault(client_id, seq)
            if first != seq:
                self.double_stored += 1
            pending = self.pending.pop(client_id, None)
            if pending is not None:
                self.echoed += 1
            return pending

    def reject(self, client_id: str) -> Pending | None:
        """An error frame named client_id: the message was not stored."""
        with self.lock:
            pending = self.pending.pop(client_id, None)
            if pending is not None:
                self.rejected += 1
            return pending

    def forget(self, client_id: str) -> None:
        """A message that could not be written at all: it was never sent."""
        with self.lock:
            if self.pending.pop(client_id, None) is not None:
                self.sent -= 1

    def connection_closed(self, member: Member, connection: int) -> None:
        """Messages still unechoed on a connection that closed may never have reached the server."""
        with self.lock:
            for pending in self.pending.values():
                if pending.member is member and pending.connection == connection:
                    pending.at_close = True

    # ------------------------------------------------------------------ counters
    def count(self, name: str, amount: int = 1) -> None:
        """Add to a named counter (drops, connect errors, reconnects...)."""
        with self.lock:
            self.counters[name] += amount

    def gauge(self, name: str, delta: int) -> None:
        """Move a gauge (open connections) up or down."""
        with self.lock:
            self.gauges[name] += delta

    def reconnected(self, ms: float) -> None:
        """A connection was live again ms after it dropped."""
        with self.lock:
            self.reconnect_ms.append(ms)

    # ------------------------------------------------------------------ report
    def _latest_seen_by(self, room: str) -> tuple[list[int], list[float]]:
        """Seqs of a room in order, with the earliest time any of them or a later one was seen."""
        seqs = sorted(self.first_seen.get(room, {}))
        times = [self.first_seen[room][s] for s in seqs]
        for i in range(len(times) - 2, -1, -1):
            times[i] = min(times[i], times[i + 1])
        return seqs, times

    def report(self, now: float, grace: float = 5.0) -> dict:
        """Loss, duplicates and echo figures; see the module docstring for the rules."""
        with self.lock:
            rooms = {room: self._latest_seen_by(room) for room in self.first_seen}
            lost_deliveries = 0
            lost_events: dict[str, set[int]] = defaultdict(set)
            duplicates = sum(m.duplicates for m in self.members)
            for member in self.members:
                if member.base is None:
                    continue
                until = _until(member, now)
                seqs, times = rooms.get(member.room, ([], []))
                index = bisect.bisect_right(times, until - grace) - 1
                owed = max(member.high, seqs[index] if index >= 0 else 0)
                have = len(member.seen) if not member.seen or max(member.seen) <= owed else sum(
                    1 for s in member.seen if s <= owed)
                if owed - member.base > have:
                    missing = [s for s in range(member.base + 1, owed + 1) if s not in member.seen]
                    lost_deliveries += len(missing)
                    lost_events[member.room].update(missing)
            unechoed = []
            at_close = 0
            for pending in self.pending.values():
                if pending.at_close:
                    at_close += 1
                    continue
                if pending.sent_at <= _until(pending.member, now) - grace:
                    unechoed.append(pending.client_id)
            reconnects = sorted(self.reconnect_ms)
            return {
                "members": len(self.members),
                "sent": self.sent,
                "echoed": self.echoed,
                "rejected": self.rejected,
                "lost_deliveries": lost_deliveries,
                "lost_events": sum(len(v) for v in lost_events.values()),
                "lost_by_room": {r: sorted(v)[:20] for r, v in lost_events.items() if v},
                "unechoed": len(unechoed),
                "unechoed_examples": unechoed[:10],
                "unconfirmed_at_close": at_close,
                "duplicates": duplicates + self.double_stored,
                "duplicate_deliveries": duplicates,
                "double_stored": self.double_stored,
                "out_of_order": sum(m.out_of_order for m in self.members),
                "loss": lost_deliveries + len(unechoed),
                "reconnects": len(reconnects),
                "reconnect_p50_ms": _exact_percentile(reconnects, 0.50),
                "reconnect_p95_ms": _exact_percentile(reconnects, 0.95),
                "protocol_violations": sum(
                    v for k, v in self.counters.items() if k.startswith("violation ")),
                "counters": dict(self.counters),
            }


def _until(member: Member, now: float) -> float:
    """Until when a member listened: now while connected, else when it left or dropped."""
    if member.connected:
        return now
    return member.left_at or member.lost_at or now


def _exact_percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    return values[max(0, math.ceil(fraction * len(values)) - 1)]


class Window:
    """Counts and an RTT histogram for the current second of the time series."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.rtt: Counter = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        """Count something in this second."""
        with self.lock:
            self.counts[name] += amount

    def add_rtt(self, ms: float) -> None:
        """Record one broadcast round-trip time in this second."""
        with self.lock:
            self.rtt[bucket(ms)] += 1

    def take(self) -> tuple[dict, dict]:
        """Return this second's counts and RTT histogram and start the next second."""
        with self.lock:
            counts, rtt = dict(self.counts), dict(self.rtt)
            self.counts.clear()
            self.rtt.clear()
        return counts, rtt


LEDGER = Ledger()


def check_thresholds(summary: dict, limits: dict) -> list[str]:
    """The failed thresholds (empty when the run passes), as readable lines.

    limits: max_loss, max_duplicates, max_rtt_p99 (seconds), max_fail_ratio, max_dropped and
    max_protocol_violations; a negative or missing limit is not checked.
    """
    failed = []

    def check(name: str, value, limit, unit: str = "") -> None:
        if limit is None or limit < 0:
            return
        if value is None:
            failed.append(f"{name}: no data (limit {limit}{unit})")
        elif value > limit:
            failed.append(f"{name}: {value:g}{unit} > limit {limit:g}{unit}")

    check("messages lost", summary.get("loss"), limits.get("max_loss"))
    check("duplicates", summary.get("duplicates"), limits.get("max_duplicates"))
    p99 = summary.get("rtt_p99_ms")
    check("broadcast RTT p99", None if p99 is None else p99 / 1000, limits.get("max_rtt_p99"),
          " s")
    check("failure ratio", summary.get("fail_ratio"), limits.get("max_fail_ratio"))
    check("WebSockets dropped", summary.get("dropped"), limits.get("max_dropped"))
    check("protocol violations", summary.get("protocol_violations"),
          limits.get("max_protocol_violations"))
    return failed
