"""A storm load-generator process: chat clients that stay connected the way the web page does.

Each client is one task: connect (with `?last_seq=` once it has a position), read frames
through `loadtest.bench.wsclient`, and after any close come back with realtime.js's delay,
honouring a drain's `reconnect` frame. Every stored room event it receives goes into its
`SeqTrack`. A room's sender also sends `message` frames at a steady rate. The orchestrator
(`drill.py`) drives the process over the bench generator's pipe, one command at a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from dataclasses import dataclass, field

from loadtest.bench.generator import Spec, Worker, raise_nofile, settle_heap
from loadtest.bench.wsclient import Client

from .tracking import SeqTrack, outcome_of, percentile, reconnect_delay

LOG_ENTRIES = 12
SEQ_EVENTS = frozenset({"message", "message_edited", "message_deleted", "reaction"})


@dataclass
class StormClient:
    """One client's state over its connections."""

    spec: Spec
    track: SeqTrack = field(default_factory=SeqTrack)
    ws: Client | None = None
    node: str = ""
    generation: int = 0  # connections that completed their welcome
    welcomed: bool = False
    synced: asyncio.Future | None = None  # resolves to "history" or "resume"
    leave: asyncio.Future | None = None  # set by a `reconnect` frame
    drain: dict | None = None
    reopen: asyncio.Event | None = None  # closed on purpose: come back when it is set
    affected: bool = False
    fault_generation: int = 0
    lost_socket: bool = False  # a connection ended after the fault (not on purpose)
    resumed_at: float | None = None
    resumed_on: str = ""  # the node that served that resume
    told_at: float | None = None  # when it read a drain's `reconnect` frame after the fault
    reopened_at: float | None = None  # its first handshake after the fault began
    upgraded_at: float | None = None  # the first 101 after the fault
    task: asyncio.Task | None = None
    token: object = None  # identifies the current connection to its frame callback
    resumed_from: int | None = None  # the last_seq of the current connection
    log: list[str] = field(default_factory=list)  # its connections, for the loss samples

    def note(self, what: str) -> None:
        """Remember a step of this client's connections (the last few), timed from the epoch."""
        self.log.append(f"{time.time() % 1000:.1f} {what}")
        del self.log[:-LOG_ENTRIES]

    @property
    def open(self) -> bool:
        """Connected, welcomed and not asked to leave."""
        return self.ws is not None and self.ws.open and self.welcomed and self.drain is None


class StormWorker(Worker):
    """The asyncio side: holds its share of the clients and answers the orchestrator."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self.clients: dict[int, StormClient] = {}
        self.gate: asyncio.Semaphore | None = None  # bounds handshakes in the measured phases
        self.phase = "fresh"
        self.outcomes: dict[str, collections.Counter] = collections.defaultdict(
            collections.Counter)
        self.synced_at: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: collections.Counter = collections.Counter()
        self.duplicate_samples: list[dict] = []
        self.acked: dict[int, int] = {}  # room -> highest seq a sender saw acknowledged
        self.sent = 0
        self.senders: list[asyncio.Task] = []
        self.handshake_timeout = 90.0
        self.stopping = False
        self.fault_at: float | None = None
        self.parked: list[StormClient] = []  # closed by cmd_park, back with cmd_reopen
        # Affected clients resumed since the fault: counted as they resume, because the
        # orchestrator polls it several times a second, and a pass over every client per poll
        # took CPU from the servers being measured.
        self.resumed = 0
        # How late this process's event loop ran after the fault: a generator that lags
        # delays its clients' reconnects, and the drill would time itself, not the servers.
        self.lags: list[float] = []
        self.lag_task: asyncio.Task | None = None

    # ------------------------------------------------------------------ connecting
    async def cmd_start(self, specs: list[Spec], concurrency: int,
                        handshake_timeout: float, deadline: float) -> dict:
        """Start every client (at most `concurrency` handshakes at once); wait for their joins."""
        self.handshake_timeout = handshake_timeout
        self.phase = "fresh"
        self.gate = asyncio.Semaphore(concurrency)
        for spec in specs:
            client = self.clients[spec.cid] = StormClient(spec)
            client.task = asyncio.create_task(self._life(client))
        await self._until(lambda: all(c.generation for c in self.clients.values()), deadline)
        self.gate = None
        settle_heap()
        return {"synced": sum(1 for c in self.clients.values() if c.generation),
                "times": self.synced_at["fresh"]}

    async def cmd_park(self, every: int, deadline: float) -> dict:
        """Close every `every`-th non-sending client; it waits for `cmd_reopen` to come back.

        The closes come first, so that the server's work for them is over before the resumes
        are timed.
        """
        self.parked = [c for c in self.clients.values()
                       if not c.spec.sender and c.spec.cid % every == 0 and c.open]
        for client in self.parked:
            client.reopen = asyncio.Event()
            client.ws.close(1000)
        await self._until(lambda: not any(c.ws.open for c in self.parked), deadline)
        return {"parked": len(self.parked)}

    async def cmd_reopen(self, concurrency: int, deadline: float) -> dict:
        """Let the parked clients come back resuming (`concurrency` at once); wait for them."""
        self.phase = "resume"
        self.gate = asyncio.Semaphore(concurrency)
        chosen, self.parked = self.parked, []
        marks = {c.spec.cid: c.generation for c in chosen}
        for client in chosen:
            client.reopen.set()
        await self._until(lambda: all(c.generation > marks[c.spec.cid] for c in chosen),
                          deadline)
        self.gate = None
        self.phase = "steady"
        settle_heap()
        return {"chosen": len(chosen),
                "resumed": sum(1 for c in chosen if c.generation > marks[c.spec.cid]),
                "times": self.synced_at["resume"]}

    async def _until(self, done, deadline: float) -> None:
        while not done() and time.time() < deadline:
            await asyncio.sleep(0.1)

    async def _life(self, client: StormClient) -> None:
        """Connect, live, and reconnect with the web page's delays until the drill stops."""
        attempt = 0
        while not self.stopping:
            code, attempt_ok = await self._connection(client)
            if self.stopping:
                return
            if client.reopen is not None:
                await client.reopen.wait()  # parked until cmd_reopen
                client.reopen = None
                delay, attempt = 0.0, 0
            else:
                drain = client.drain
                delay, attempt = reconnect_delay(
                    code, 0 if attempt_ok else attempt,
                    None if drain is None else drain.get("retry_after_ms", 0))
            if delay is None:
                return  # a final refusal (4001, 4003, 4004): the page gives up too
            await asyncio.sleep(delay / 1000)

    async def _connection(self, client: StormClient) -> tuple[int | None, bool]:
        """One connection from handshake to close: (close code, whether it was welcomed)."""
        spec = client.spec
        loop = asyncio.get_running_loop()
        server_seq = client.drain.get("last_seq") if client.drain else None
        position = client.track.resume_from(server_seq)
        client.resumed_from = position
        url = spec.url + (f"?last_seq={position}" if position is not None else "")
        client.welcomed, client.drain = False, None
        client.synced, client.leave = loop.create_future(), loop.create_future()
        # Frames of an earlier connection (still closing) must not count: realtime.js drops
        # its socket's handlers when it leaves, so the page never sees them.
        token = client.token = object()
        phase = self.phase
        gate = self.gate or contextlib.nullcontext()
        async with gate:
            client.note(f"open last_seq={position}")
            if client.affected and client.reopened_at is None:
                client.reopened_at = time.time()
            try:
                client.ws = await Client.connect(
                    url, spec.headers, self.handshake_timeout,
                    local_addr=(spec.local_host, 0) if spec.local_host else None,
                    on_message=lambda ws, text: client.token is token and self._frame(
                        client, ws, text))
            except Exception as error:
                self.outcomes[phase][outcome_of(error)] += 1
                client.note(f"failed {outcome_of(error)}")
                client.ws = None
                return None, False
            ws = client.ws
            if client.affected and client.upgraded_at is None:
                client.upgraded_at = time.time()
            await asyncio.wait([client.synced, ws.closed], timeout=self.handshake_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        if not client.synced.done():
            if ws.closed.done():  # accepted, then refused with a close code before the welcome
                self.outcomes[phase][f"close {ws.closed.result()}"] += 1
                return ws.closed.result(), False
            self.outcomes[phase]["no welcome (timeout)"] += 1
            client.note("no welcome")
            ws.abort()
            await asyncio.wait([ws.closed], timeout=5)
            return 1006, False
        self.outcomes[phase]["ok"] += 1
        client.generation += 1
        now = time.time()
        self.synced_at[phase].append(now)
        if (client.affected and client.resumed_at is None
                and client.generation > client.fault_generation):
            client.resumed_at, client.resumed_on = now, client.node
            self.resumed += 1
        await asyncio.wait([ws.closed, client.leave], return_when=asyncio.FIRST_COMPLETED)
        client.note(f"closed {ws.closed.result() if ws.closed.done() else 'on reconnect'}"
                    f" at seq {client.track.highest}")
        if self.fault_at is not None and not self.stopping and client.reopen is None:
            client.lost_socket = True
        if client.leave.done() and not ws.closed.done():
            ws.close(1000)  # the page leaves at once on `reconnect` (realtime.js)
            return 1012, True
        return ws.closed.result(), True

    # ------------------------------------------------------------------ frames
    def _frame(self, client: StormClient, ws: Client, text) -> None:
        """Handle one server frame of `client`'s current connection."""
        if not isinstance(text, str) or client.drain is not None:
            return  # after `reconnect` the page reads nothing more on this socket
        frame = json.loads(text)
        kind = frame.get("type")
        seq = frame.get("seq")
        if kind in SEQ_EVENTS:
            if frame.get("history") or not isinstance(seq, int):
                return
            if client.track.highest is not None and seq > client.track.highest + 1:
                client.note(f"gap: {seq} after {client.track.highest}"
                            f"{' (replay)' if frame.get('replay') else ''}")
            if not client.track.event(seq) and len(self.duplicate_samples) < 10:
                self.duplicate_samples.append({
                    "cid": client.spec.cid, "room": client.spec.room, "seq": seq,
                    "type": kind, "replay": bool(frame.get("replay")),
                    "resumed_from": client.resumed_from, "generation": client.generation})
            if client.spec.sender and frame.get("client_id", "") and str(
                    frame["client_id"]).startswith(f"s{client.spec.cid}-"):
                room = client.spec.room
                self.acked[room] = max(self.acked.get(room, 0), seq)
        elif kind == "heartbeat":
            ws.send_text(json.dumps({"type": "pong", "ts": frame.get("ts")}))
        elif kind == "connected":
            client.node = frame.get("node", "")
            client.welcomed = True
        elif kind == "history_end":
            client.note(f"history_end {seq} from {client.node}")
            client.track.joined(seq)
            if not client.synced.done():
                client.synced.set_result("history")
        elif kind == "resume_end":
            client.note(f"resume_end {seq} replayed {frame.get('replayed')} from {client.node}")
            if not client.synced.done():
                client.synced.set_result("resume")
        elif kind == "reconnect":
            client.drain = frame
            if client.affected and client.told_at is None:
                client.told_at = time.time()
            if not client.leave.done():
                client.leave.set_result(None)
        elif kind == "error":
            self.errors[str(frame.get("code"))] += 1

    # ------------------------------------------------------------------ sending
    async def cmd_send(self, rate: float) -> dict:
        """Each sender of this worker sends `rate` messages/s from now until `cmd_quiet`."""
        self.phase = "steady"
        for client in self.clients.values():
            if client.spec.sender:
                self.senders.append(asyncio.create_task(self._sender(client, rate)))
        return {"senders": len(self.senders)}

    async def _sender(self, client: StormClient, rate: float) -> None:
        interval = 1.0 / rate
        number = 0
        next_at = time.monotonic()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if not client.open:
                continue  # reconnecting: the page sends nothing meanwhile
            number += 1
            text = json.dumps({"type": "message", "message": f"storm {client.spec.room} {number}",
                               "id": f"s{client.spec.cid}-{number}"})
            if client.ws.send_text(text):
                self.sent += 1

    async def cmd_quiet(self) -> dict:
        """Stop sending."""
        for task in self.senders:
            task.cancel()
        await asyncio.gather(*self.senders, return_exceptions=True)
        self.senders = []
        return {"sent": self.sent, "acked": self.acked}

    # ------------------------------------------------------------------ the fault
    async def cmd_fault(self, node: str, at: float) -> dict:
        """Mark the clients connected to `node` as affected by the fault starting `at`."""
        self.phase = "storm"
        self.fault_at = at
        marked = 0
        for client in self.clients.values():
            if client.open and client.node == node:
                client.affected = True
                client.fault_generation = client.generation
                marked += 1
        self.lag_task = asyncio.create_task(self._watch_lag())
        return {"affected": marked}

    async def _watch_lag(self, tick: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + tick
            await asyncio.sleep(tick)
            self.lags.append(loop.time() - due)

    async def cmd_status(self) -> dict:
        """What the orchestrator polls while waiting: affected clients resumed so far."""
        return {"resumed": self.resumed}

    async def cmd_behind(self, finals: dict[int, int]) -> dict:
        """How many connected clients have not yet received their room's final seq."""
        return {"behind": sum(1 for c in self.clients.values() if c.open
                              and c.track.start is not None
                              and (c.track.highest or 0) < finals.get(c.spec.room, 0))}

    # ------------------------------------------------------------------ results
    async def cmd_results(self, finals: dict[int, int]) -> dict:
        """Resume times, handshake outcomes, loss and duplicates against the rooms' final seqs.

        Loss is counted over the clients connected at the end: one still away has its missing
        events pending, not lost.
        """
        clients = list(self.clients.values())
        lost, lost_clients, samples, pending, away = 0, 0, [], 0, 0
        for client in clients:
            missing = client.track.missing(finals.get(client.spec.room, 0))
            if not client.open:
                # Not back (yet): its resume would replay these, so they are not lost; the
                # drill reports the client as not resumed instead.
                away += 1
                pending += len(missing)
                continue
            if missing:
                lost += len(missing)
                lost_clients += 1
                if len(samples) < 5:
                    samples.append({"cid": client.spec.cid, "room": client.spec.room,
                                    "missing": missing[:10], "count": len(missing),
                                    "log": client.log})
        fault = self.fault_at or 0.0
        return {
            "clients": len(clients),
            "never_joined": sum(1 for c in clients if c.track.start is None),
            "affected": sum(1 for c in clients if c.affected),
            "affected_lost_socket": sum(1 for c in clients if c.affected and c.lost_socket),
            "collateral": sum(1 for c in clients if not c.affected and c.lost_socket),
            "resume_seconds": [c.resumed_at - fault for c in clients
                               if c.affected and c.resumed_at is not None],
            "resumed_at": [c.resumed_at for c in clients
                           if c.affected and c.resumed_at is not None],
            "told_seconds": [c.told_at - fault for c in clients
                             if c.affected and c.told_at is not None],
            "waited_seconds": [c.reopened_at - c.told_at for c in clients if c.affected
                               and c.told_at is not None and c.reopened_at is not None],
            "reopened_seconds": [c.reopened_at - fault for c in clients
                                 if c.affected and c.reopened_at is not None],
            "upgraded_seconds": [c.upgraded_at - fault for c in clients
                                 if c.affected and c.upgraded_at is not None],
            "resumed_on": dict(collections.Counter(
                c.resumed_on for c in clients if c.affected and c.resumed_at is not None)),
            "loop_lag_s": {"p50": percentile(self.lags, 50), "p99": percentile(self.lags, 99),
                           "max": max(self.lags, default=None)},
            "outcomes": {phase: dict(counter) for phase, counter in self.outcomes.items()},
            "errors": dict(self.errors),
            "lost": lost, "lost_clients": lost_clients, "lost_samples": samples,
            "away_at_end": away, "pending_for_away": pending,
            "duplicates": sum(c.track.duplicates for c in clients),
            "duplicate_clients": sum(1 for c in clients if c.track.duplicates),
            "duplicate_samples": self.duplicate_samples,
            "gaps": sum(c.track.gaps for c in clients),
            "sent": self.sent, "acked": self.acked,
        }

    # ------------------------------------------------------------------ the end
    async def cmd_close(self, timeout: float) -> dict:
        """Stop every client (no reconnects) and close its socket."""
        count = len(self.clients)
        await self.close_all(timeout)
        return {"closed": count}

    async def close_all(self, timeout: float) -> None:
        """Stop sending and reconnecting, close the sockets (bounded), forget the clients."""
        self.stopping = True
        if self.lag_task is not None:
            self.lag_task.cancel()
        await self.cmd_quiet()
        clients, self.clients = list(self.clients.values()), {}
        for client in clients:
            if client.reopen is not None:
                client.reopen.set()  # a parked client ends its loop
            if client.ws is not None:
                client.ws.close(1000)
        tasks = [c.task for c in clients if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            for client in clients:
                if client.ws is not None:
                    client.ws.abort()
            if pending:
                await asyncio.wait(pending, timeout=5)


def main(pipe) -> None:
    """Entry point of a storm worker process."""
    raise_nofile()
    asyncio.run(StormWorker(pipe).serve())
