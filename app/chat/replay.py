"""The events a resume replays, read from the database once per room, not once per client.

When a WebSocket process dies or drains, its clients resume together, and the clients of one
room resume from about the same position: they had received the same events. Each replay read
the room's events after its position on its own, one query after another in the database
thread, while the handshakes waiting on it held the process's handshake slots.

A stored event never changes (its payload is the frame as it was broadcast), and every seq up
to a room's `last_seq` is committed: a change takes its room's row lock and raises `last_seq`
in its own transaction (app/chat/writer.py). So the events read for a span of seqs ending at
the `last_seq` read with them are all the events of that span, for good. This keeps each
room's newest span read, as frames serialised once with `"replay": true`; a replay inside it is
answered from memory, and replays of one room that arrive while it is being read wait for
that read instead of each making their own.

A span is used only when it reaches the room's position recorded in Redis (which never runs
ahead of the database): the replay then holds at least what a read would have held when the
record was made, and any later event follows as after any resume (ChatConsumer.send_replay).
"""

import asyncio
import bisect
import json

from channels.db import database_sync_to_async
from django.conf import settings

from app.realtime.ops.background import spawn_keyed

from . import services

# The most events one replay sends; a client further behind gets the rest by gap fill.
REPLAY_LIMIT = 100_000


def replay_text(frame: dict) -> str:
    """A stored event's frame as replayed: the frame with `"replay": true`, as JSON."""
    return json.dumps({**frame, "replay": True}, separators=(",", ":"))


class Span:
    """Every stored event of one room with `low < seq <= high`, as (seq, type, JSON text)."""

    __slots__ = ("low", "high", "seqs", "frames")

    def __init__(self, low: int, high: int, frames: list[tuple[int, str, str]]):
        self.low, self.high = low, high
        self.frames = frames
        self.seqs = [seq for seq, _, _ in frames]

    def covers(self, position: int) -> bool:
        """Whether the events after `position`, up to `high`, are all here."""
        return self.low <= position <= self.high

    def after(self, position: int) -> list[tuple[int, str, str]]:
        """The events after `position` (a position the span covers)."""
        return self.frames[bisect.bisect_right(self.seqs, position):]

    def extend(self, seq: int, kind: str, text: str) -> None:
        """Add the event with the next seq."""
        self.frames.append((seq, kind, text))
        self.seqs.append(seq)
        self.high = seq

    def trimmed(self, keep: int) -> "Span":
        """The span without its oldest events past the newest `keep`."""
        if len(self.frames) <= keep:
            return self
        dropped = len(self.frames) - keep
        return Span(self.frames[dropped - 1][0], self.high, self.frames[dropped:])


def union(a: Span, b: Span) -> Span:
    """One span of two that overlap or adjoin; of two apart, the newer."""
    first, second = (a, b) if a.low <= b.low else (b, a)
    if second.low > first.high:
        return a if a.high >= b.high else b
    if second.high <= first.high:
        return first
    head = first.frames[:bisect.bisect_right(first.seqs, second.low)]
    return Span(first.low, second.high, head + second.frames)


@database_sync_to_async
def _read(room_id: int, after: int) -> Span:
    upto = services.latest_seq(room_id)
    after = min(after, upto)
    events = services.events_between(room_id, after, upto, limit=REPLAY_LIMIT)
    # A replay cut at the limit covers only what it read.
    high = upto if len(events) < REPLAY_LIMIT else events[-1]["seq"]
    return Span(after, high, [(e["seq"], e["type"], replay_text(e)) for e in events])


class RoomEvents:
    """Each room's newest span of stored events that replays read, in this process."""

    def __init__(self):
        self.spans: dict[int, Span] = {}
        self.reading: dict[int, asyncio.Task] = {}

    async def replay(self, room, position: int, recorded: int | None
                     ) -> tuple[list[tuple[int, str, str]], int, int, bool]:
        """(the events after `position` as (seq, type, JSON text), the position clamped to
        the room's newest seq, the seq the replay is complete up to, whether it read the
        database).

        `recorded` is the room's position recorded in Redis (None, unknown: the database is
        read).
        """
        for _ in range(2):
            span = self.spans.get(room.id)
            if (span is not None and recorded is not None and span.covers(position)
                    and recorded <= span.high):
                return span.after(position), position, span.high, False
            reading = self.reading.get(room.id)
            if reading is None:
                break
            await asyncio.shield(reading)  # another replay of the room is reading: share it
        read = await asyncio.shield(spawn_keyed(self.reading, room.id,
                                                self._read_and_keep(room.id, position)))
        return read.after(read.low), read.low, read.high, True

    def saw(self, room_id: int, seq: int, kind: str, text: str) -> None:
        """A stored event broadcast to the room: kept when it is the next seq of the room's
        span (its frame as broadcast is the frame stored), so the span keeps up with the room
        without reading it again."""
        span = self.spans.get(room_id)
        if span is not None and seq == span.high + 1:
            span.extend(seq, kind, text[:-1] + ',"replay":true}')
            if len(span.frames) > 2 * settings.CHAT_REPLAY_CACHE_EVENTS:
                self.spans[room_id] = span.trimmed(settings.CHAT_REPLAY_CACHE_EVENTS)

    async def _read_and_keep(self, room_id: int, position: int) -> Span:
        read = await _read(room_id, position)
        kept = self.spans.pop(room_id, None)
        if len(self.spans) >= settings.CHAT_HISTORY_CACHE_ROOMS:
            self.spans.pop(next(iter(self.spans)))  # the room kept longest ago goes first
        joined = read if kept is None else union(kept, read)
        self.spans[room_id] = joined.trimmed(settings.CHAT_REPLAY_CACHE_EVENTS)
        return read

    def clear(self) -> None:
        """Forget every room and the reads in flight (tests)."""
        self.spans.clear()
        self.reading.clear()


room_events = RoomEvents()
