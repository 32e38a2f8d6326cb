"""What a storm client keeps and what the drill computes from it: seqs seen, loss, duplicates,
the reconnect delay of the web page, percentiles and handshake outcomes.

Pure logic, no I/O: the worker processes and the orchestrator share it, the unit tests pin it.
"""

from __future__ import annotations

import collections
import math
import random as _random
from dataclasses import dataclass, field

# app/web/static/web/realtime.js, backoffDelay's defaults and Connection.closed's rules: the
# drill's clients come back as the web page does, or its figures would not be the page's.
BACKOFF_BASE_MS = 500
BACKOFF_CAP_MS = 30_000
FINAL_CLOSES = frozenset({4001, 4003, 4004})  # retrying cannot help (docs/protocol.md)


def backoff_delay(attempt: int, base: float = BACKOFF_BASE_MS, cap: float = BACKOFF_CAP_MS,
                  random=_random.random) -> float:
    """Milliseconds before reconnect attempt `attempt` (0, 1, ...): doubling, capped, jittered."""
    ceiling = min(cap, base * 2 ** min(attempt, 16))
    return round(ceiling / 2 + random() * ceiling / 2)


def reconnect_delay(code: int | None, attempt: int, drain_retry_ms: float | None = None,
                    random=_random.random) -> tuple[float | None, int]:
    """(milliseconds before reconnecting or None for never, the next attempt) after a close.

    The rules of realtime.js: a drain's `retry_after_ms` is the server's choice, not a failure
    to back off from; a frame flood and 4029 wait longer; 4503 waits 1-5 s.
    """
    if drain_retry_ms is not None:
        return max(0.0, float(drain_retry_ms)), 0
    if code in FINAL_CLOSES:
        return None, attempt
    if code == 1008:
        return max(10_000, backoff_delay(attempt, random=random)), attempt + 1
    if code == 4029:
        return max(5_000, backoff_delay(attempt, random=random)), attempt + 1
    if code == 4503:
        return 1000 + random() * 4000, attempt + 1
    return backoff_delay(attempt, random=random), attempt + 1


@dataclass
class SeqTrack:
    """The stored room events one client received: where it joined, every seq, duplicates.

    History frames are not counted (they precede the join position); live and replayed frames
    are. A seq received twice is a duplicate; a seq above the next expected one is a gap (the
    server promises order, so the drill reports it).
    """

    start: int | None = None  # the room position at the first join (history_end)
    seen: set[int] = field(default_factory=set)
    highest: int | None = None
    duplicates: int = 0
    gaps: int = 0

    def joined(self, seq: int) -> None:
        """A fresh join's history ended at `seq`: count from there."""
        if self.start is None:
            self.start = seq
        self.highest = seq if self.highest is None else max(self.highest, seq)

    def event(self, seq: int) -> bool:
        """A live or replayed event; False when it was a duplicate."""
        if seq in self.seen or (self.start is not None and seq <= self.start):
            self.duplicates += 1
            return False
        if self.highest is not None and seq > self.highest + 1:
            self.gaps += 1
        self.seen.add(seq)
        self.highest = seq if self.highest is None else max(self.highest, seq)
        return True

    def resume_from(self, server_seq: int | None = None) -> int | None:
        """The `last_seq` to resume from: ours, or the drain frame's if that is older."""
        if self.highest is None:
            return None
        if server_seq is not None:
            return min(self.highest, server_seq)
        return self.highest

    def missing(self, final: int) -> list[int]:
        """Seqs after the join, up to the room's final seq, that never arrived."""
        if self.start is None:
            return []
        return [seq for seq in range(self.start + 1, final + 1) if seq not in self.seen]


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of values, or None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def outcome_of(error: BaseException) -> str:
    """A handshake error's name in the report: `HTTP <status>` for a refusal, else its type."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    return type(error).__name__


def is_refusal(outcome: str) -> bool:
    """Whether an outcome is the server saying no (an HTTP status or a close code)."""
    return outcome.startswith(("HTTP ", "close "))


def split_outcomes(outcomes: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(refused, failed) handshake outcomes; `ok` is neither."""
    refused = {k: v for k, v in outcomes.items() if is_refusal(k)}
    failed = {k: v for k, v in outcomes.items() if k != "ok" and not is_refusal(k)}
    return refused, failed


def rate_series(times: list[float], start: float) -> dict[str, float | None]:
    """Average and peak per-second rate of events at `times` (seconds since epoch) from start."""
    if not times:
        return {"average": None, "peak": None}
    last = max(times)
    per_second = collections.Counter(int(t - start) for t in times)
    return {"average": len(times) / max(last - start, 1e-3),
            "peak": float(max(per_second.values()))}


def step_figures(seconds: list[float]) -> dict:
    """How many clients reached a step, and p50, p99 and last of their times to it."""
    return {"count": len(seconds),
            "p50_s": percentile(seconds, 50), "p99_s": percentile(seconds, 99),
            "last_s": max(seconds) if seconds else None}


def resume_figures(seconds: list[float], affected: int) -> dict:
    """p50, p99 and last of the resume times of the affected clients; how many never resumed."""
    figures = step_figures(seconds)
    return {"affected": affected, "resumed": figures.pop("count"),
            "not_resumed": affected - len(seconds), **figures}
