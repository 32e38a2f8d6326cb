"""The load generator: a few OS processes, each an asyncio loop holding a share of the sockets.

The orchestrator (`Generator`, synchronous) talks to each worker over a pipe, one command at a
time. Workers hold their sockets with `loadtest.bench.wsclient` (`websockets`' sans-I/O
protocol with a callback per message, no task per socket; it offers permessage-deflate, as
browsers do). A sender puts `bench|<phase>|<counter>|<send time>` in the message text; every
receiver finds that marker in the raw frame (no JSON decoding on the hot path) and records the
broadcast round-trip time (receive time minus send time: all processes read the same clock),
per phase, plus receive counts in 100 ms buckets for throughput windows.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import multiprocessing
import os
import random
import resource
import time
from array import array
from dataclasses import dataclass, field

from loadtest.bench.wsclient import Client

MARK = "bench|"
RESUMED = '"resume_end"'  # ends a resuming connection's welcome (ours only)
BUCKET = 10  # receive-time buckets per second


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def settle_heap() -> None:
    """Collect, then freeze what the open sockets hold, so full collections pass it over.

    A full collection scans every tracked object. With thousands of sockets open it held a
    worker's loop so long that its clients read their frames and reconnected late, and the
    figures were the generator's. Called between phases, when nothing is being timed.
    """
    gc.collect()
    gc.freeze()


@dataclass
class Spec:
    """One connection to open: where, with which headers, in which room."""

    cid: int
    url: str
    headers: list[tuple[str, str]]
    room: int
    sender: bool = False
    local_host: str | None = None
    worker: int | None = None  # which generator process holds it (default: cid % workers)


@dataclass
class _Conn:
    spec: Spec
    ws: Client | None = None
    last: int = -1
    ready: bool = False
    seq: int | None = None  # the room position its welcome ended at (ours: history_end's seq)
    welcomed: asyncio.Future | None = None  # set when `ready` becomes true


@dataclass
class _Stats:
    latencies: dict[str, array] = field(default_factory=dict)  # phase -> ms (float32)
    buckets: collections.Counter = field(default_factory=collections.Counter)
    duplicates: int = 0


def _alive(conn: _Conn) -> bool:
    """The connection is open."""
    return conn.ws is not None and conn.ws.open


class Worker:
    """The asyncio side: opens, reads, sends on and closes its share of the connections."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.conns: dict[int, _Conn] = {}
        self.stats = _Stats()
        self.ready_marker: str | None = None
        self.closing = False
        self.closed: collections.Counter = collections.Counter()
        self.counters: collections.Counter = collections.Counter()
        self.last_bucket = 0
        self.parked: list[_Conn] = []  # closed by cmd_park, reopened by cmd_resume

    # ------------------------------------------------------------------ pipe
    async def serve(self) -> None:
        """Run commands from the pipe until `exit`."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def read_command() -> None:
            try:
                queue.put_nowait(self.pipe.recv())
            except EOFError:
                # The orchestrator is gone (killed): a pipe at EOF stays readable, so keeping
                # the reader would raise here on every loop iteration, a core busy forever.
                loop.remove_reader(self.pipe.fileno())
                queue.put_nowait(None)

        loop.add_reader(self.pipe.fileno(), read_command)
        while True:
            command = await queue.get()
            if command is None:
                await self.close_all(5)
                return
            name = command.pop("cmd")
            if name == "exit":
                await self.close_all(5)
                self.pipe.send({"ok": True})
                return
            try:
                result = await getattr(self, f"cmd_{name}")(**command)
            except Exception as error:  # reported to the orchestrator, which raises
                result = {"error": f"{type(error).__name__}: {error}"}
            self.pipe.send(result)

    # ------------------------------------------------------------------ connecting
    async def cmd_connect(self, specs: list[Spec], start_at: float, concurrency: int,
                          timeout: float, retries: int, ready_marker: str | None,
                          deadline: float) -> dict:
        """Open connections (bounded concurrency, a few retries); report timings and errors."""
        self.ready_marker = ready_marker
        self.closing = False
        self.closed.clear()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        semaphore = asyncio.Semaphore(concurrency)
        errors: collections.Counter = collections.Counter()
        done_at: list[float] = []
        attempts = collections.Counter()

        async def open_one(spec: Spec) -> None:
            for attempt in range(retries + 1):
                async with semaphore:
                    attempts["n"] += 1
                    conn = _Conn(spec)
                    conn.ready = self.ready_marker is None
                    try:
                        conn.ws = await Client.connect(
                            spec.url, spec.headers, timeout,
                            local_addr=(spec.local_host, 0) if spec.local_host else None,
                            on_message=self._receiver(conn), on_close=self._closed,
                        )
                    except Exception as error:
                        errors[_error_name(error)] += 1
                if conn.ws is not None:
                    self.conns[spec.cid] = conn
                    done_at.append(time.time())
                    return
                await asyncio.sleep(0.2 * (attempt + 1) * random.uniform(0.5, 1.5))

        tasks = [asyncio.create_task(open_one(spec)) for spec in specs]
        _, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.time()))
        for task in pending:  # out of time: report what opened so far
            task.cancel()
        if pending:
            errors["gave up (connect deadline)"] += len(pending)
            await asyncio.wait(pending, timeout=5)
        settle_heap()
        return {
            "opened": len(done_at),
            "failed": len(specs) - len(done_at),
            "attempts": attempts["n"],
            "errors": dict(errors),
            "last_open": max(done_at) if done_at else None,
        }

    async def cmd_wait_ready(self, timeout: float) -> dict:
        """Wait until every open connection got its ready frame (or timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = sum(1 for c in self.conns.values() if not c.ready and _alive(c))
            if not pending:
                break
            await asyncio.sleep(0.05)
        ready = sum(1 for c in self.conns.values() if c.ready)
        return {"ready": ready, "open": self._open_count(), "at": time.time()}

    async def cmd_park(self, every: int, timeout: float) -> dict:
        """Close every `every`-th non-sending connection that has a position, to resume later.

        Closed before any reopens, so that the server's work for the closes (presence, groups)
        is over before the resumes are timed (`cmd_resume`).
        """
        self.parked = [c for cid, c in self.conns.items()
                       if not c.spec.sender and cid % every == 0 and _alive(c)
                       and c.seq is not None]
        semaphore = asyncio.Semaphore(200)

        async def close(conn: _Conn) -> None:
            async with semaphore:
                conn.ws.on_close = lambda code: None  # a close the benchmark asked for
                await conn.ws.aclose(timeout=5)

        if self.parked:
            await asyncio.wait_for(asyncio.gather(*(close(c) for c in self.parked)), timeout)
        return {"parked": len(self.parked)}

    async def cmd_resume(self, concurrency: int, timeout: float, deadline: float) -> dict:
        """Reopen the parked connections with ?last_seq=; time them to the 101 and resume_end.

        Nothing was sent meanwhile, so each resume has nothing to replay: the cheapest
        handshake a reconnecting client makes, timed like the fresh ones.
        """
        chosen, self.parked = self.parked, []
        semaphore = asyncio.Semaphore(concurrency)
        errors: collections.Counter = collections.Counter()
        opened_at: list[float] = []
        ready_at: list[float] = []
        loop = asyncio.get_running_loop()

        async def again(conn: _Conn) -> None:
            spec = conn.spec
            conn.ready, conn.welcomed = False, loop.create_future()
            separator = "&" if "?" in spec.url else "?"
            async with semaphore:
                try:
                    conn.ws = await Client.connect(
                        f"{spec.url}{separator}last_seq={conn.seq}", spec.headers, timeout,
                        local_addr=(spec.local_host, 0) if spec.local_host else None,
                        on_message=self._receiver(conn), on_close=self._closed)
                except Exception as error:
                    errors[_error_name(error)] += 1
                    return
                opened_at.append(time.time())
            await asyncio.wait([conn.welcomed, conn.ws.closed], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            if conn.ready:
                ready_at.append(time.time())

        tasks = [asyncio.create_task(again(conn)) for conn in chosen]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.time()))
            for task in pending:
                task.cancel()
            if pending:
                errors["gave up (resume deadline)"] += len(pending)
                await asyncio.wait(pending, timeout=5)
        settle_heap()
        return {"chosen": len(chosen), "opened": len(opened_at), "ready": len(ready_at),
                "errors": dict(errors), "last_open": max(opened_at, default=None),
                "last_ready": max(ready_at, default=None)}

    def _open_count(self) -> int:
        return sum(1 for c in self.conns.values() if _alive(c))

    # ------------------------------------------------------------------ receiving
    def _receiver(self, conn: _Conn):
        """The callback that reads `conn`'s messages, called by its protocol for each one."""
        stats = self.stats
        latencies = stats.latencies
        buckets = stats.buckets
        now = time.time
        marker = self.ready_marker

        def receive(ws: Client, text) -> None:
            if not isinstance(text, str):
                return
            i = text.find(MARK)
            if i >= 0:
                received = now()
                j = text.find('"', i)
                _, phase, counter, sent = text[i:j].split("|")
                counter = int(counter)
                if counter <= conn.last:
                    stats.duplicates += 1
                    return
                conn.last = counter
                values = latencies.get(phase)
                if values is None:
                    values = latencies[phase] = array("f")
                values.append((received - float(sent)) * 1000.0)
                buckets[int(received * BUCKET)] += 1
            elif marker is not None and not conn.ready and (marker in text or RESUMED in text):
                conn.ready = True
                if '"seq"' in text:
                    conn.seq = json.loads(text).get("seq")
                if conn.welcomed is not None and not conn.welcomed.done():
                    conn.welcomed.set_result(None)
            elif '"heartbeat"' in text:
                frame = json.loads(text)
                ws.send_text(json.dumps({"type": "pong", "ts": frame.get("ts")}))

        return receive

    def _closed(self, code: int) -> None:
        """Count a close the benchmark did not ask for, by its code."""
        if not self.closing:
            self.closed[str(code)] += 1

    # ------------------------------------------------------------------ sending
    async def cmd_phase(self, phase: str, rate: float, start_at: float,
                        duration: float) -> dict:
        """Senders of this worker send `rate` messages/s each from start_at for duration."""
        senders = self._senders()
        results = await asyncio.gather(*(self._send(c, phase, rate, start_at, duration)
                                         for c in senders))
        return {
            "sent": sum(r[0] for r in results),
            "max_lag": max((r[1] for r in results), default=0.0),
            "senders": len(senders),
            "stand_ins": sum(1 for c in senders if not c.spec.sender),
        }

    def _senders(self) -> list[_Conn]:
        """One open socket per room this worker sends for: the room's sender, or a stand-in.

        A system may close sockets after the handshake (the stock layer closes some with 1011
        when its Redis pool runs dry); a room whose sender is gone is then sent to by another
        open member on the same worker, so the room still counts.
        """
        chosen = []
        for conn in self.conns.values():
            if not conn.spec.sender:
                continue
            if _alive(conn):
                chosen.append(conn)
                continue
            stand_in = next((o for o in self.conns.values()
                             if o.spec.room == conn.spec.room and not o.spec.sender and _alive(o)),
                            None)
            if stand_in is not None:
                chosen.append(stand_in)
        return chosen

    async def _send(self, conn: _Conn, phase: str, rate: float, start_at: float,
                    duration: float) -> tuple[int, float]:
        sent = 0
        max_lag = 0.0
        room = conn.spec.room
        for at in send_times(rate, duration):
            target = start_at + at
            delay = target - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
                if -delay > max(duration, 1.0):
                    # The sender itself cannot keep up: stop rather than run on. Never for
                    # less than a second of lag: a phase of one send (loadtest.scale) would
                    # otherwise skip it whenever the loop woke a little late.
                    break
            self.counters[room] += 1
            counter = self.counters[room]
            text = (f'{{"type":"message","message":"{MARK}{phase}|{counter}|{time.time():.6f}",'
                    f'"id":{counter}}}')
            if not conn.ws.send_text(text):
                break
            sent += 1
        return sent, max_lag

    # ------------------------------------------------------------------ results
    async def cmd_stats(self, reset: bool = False) -> dict:
        """Latencies per phase (raw float32 bytes), receive buckets, duplicates, closes."""
        stats = self.stats
        result = {
            "latencies": {k: v.tobytes() for k, v in stats.latencies.items()},
            "buckets": dict(stats.buckets),
            "duplicates": stats.duplicates,
            "closed": dict(self.closed),
            "open": self._open_count(),
        }
        if reset:
            # In place: every reader holds references to these containers.
            self.last_bucket = max(stats.buckets, default=self.last_bucket)
            stats.latencies.clear()
            stats.buckets.clear()
            stats.duplicates = 0
        return result

    async def cmd_last_receive(self) -> dict:
        """The newest receive bucket (to wait for a backlog to drain)."""
        return {"last": max(self.stats.buckets, default=self.last_bucket) / BUCKET}

    async def cmd_close(self, timeout: float) -> dict:
        """Close every connection."""
        count = len(self.conns)
        await self.close_all(timeout)
        return {"closed": count}

    async def close_all(self, timeout: float) -> None:
        """Close connections concurrently (bounded), then forget them."""
        self.closing = True
        conns = list(self.conns.values())
        self.conns = {}
        semaphore = asyncio.Semaphore(200)

        async def close_one(conn: _Conn) -> None:
            async with semaphore:
                await conn.ws.aclose(timeout=2)

        if conns:
            try:
                await asyncio.wait_for(asyncio.gather(*(close_one(c) for c in conns)), timeout)
            except TimeoutError:
                for conn in conns:
                    conn.ws.abort()


def _error_name(error: BaseException) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    return type(error).__name__


def send_times(rate: float, duration: float) -> list[float]:
    """When a sender sends in a phase: rate x duration moments drawn at random, in order."""
    # A Poisson process given its count, as independent users send: rooms' messages coincide
    # about as often in every run (evenly spaced senders made that a draw per run).
    count = max(1, int(round(rate * duration)))
    return sorted(random.uniform(0, duration) for _ in range(count))


def _worker_main(pipe) -> None:
    raise_nofile()
    asyncio.run(Worker(pipe).serve())


class Generator:
    """The orchestrator's handle on the worker processes (synchronous calls over pipes)."""

    def __init__(self, workers: int, main=None):
        """Start `workers` processes running `main(pipe)` (default: the benchmark's Worker)."""
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(workers):
            parent, child = context.Pipe()
            proc = context.Process(target=main or _worker_main, args=(child,), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def size(self) -> int:
        """Number of worker processes."""
        return len(self.pipes)

    def pids(self) -> list[int]:
        """Worker PIDs."""
        return [p.pid for p in self.procs]

    def call(self, commands: list[dict], timeout: float) -> list[dict]:
        """Send one command to each worker and wait for every answer."""
        for pipe, command in zip(self.pipes, commands, strict=True):
            pipe.send(command)
        deadline = time.monotonic() + timeout
        answers = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load generator worker did not answer {commands[0]['cmd']}")
            answer = pipe.recv()
            if "error" in answer:
                raise RuntimeError(f"load generator worker failed: {answer['error']}")
            answers.append(answer)
        return answers

    def broadcast(self, command: dict, timeout: float) -> list[dict]:
        """The same command to every worker."""
        return self.call([dict(command) for _ in self.pipes], timeout)

    def connect(self, specs: list[Spec], concurrency: int, timeout: float, retries: int,
                ready_marker: str | None, deadline: float) -> dict:
        """Open every connection (split by cid over workers); return the connect figures."""
        shares: list[list[Spec]] = [[] for _ in self.pipes]
        for spec in specs:
            index = spec.worker if spec.worker is not None else spec.cid
            shares[index % self.size].append(spec)
        start_at = time.time() + 0.3
        per_worker = max(1, concurrency // self.size)
        answers = self.call([
            {"cmd": "connect", "specs": share, "start_at": start_at, "concurrency": per_worker,
             "timeout": timeout, "retries": retries, "ready_marker": ready_marker,
             "deadline": start_at + deadline}
            for share in shares
        ], deadline + 30)
        opened = sum(a["opened"] for a in answers)
        errors: collections.Counter = collections.Counter()
        for answer in answers:
            errors.update(answer["errors"])
        last = max((a["last_open"] for a in answers if a["last_open"]), default=start_at)
        return {
            "start": start_at,
            "opened": opened,
            "failed": sum(a["failed"] for a in answers),
            "attempts": sum(a["attempts"] for a in answers),
            "errors": dict(errors),
            "seconds": max(last - start_at, 1e-6),
            "rate": opened / max(last - start_at, 1e-6),
        }

    def park(self, every: int, timeout: float = 60) -> int:
        """Close every `every`-th member socket to resume it later; how many were closed."""
        answers = self.broadcast({"cmd": "park", "every": every, "timeout": timeout},
                                 timeout + 15)
        return sum(a["parked"] for a in answers)

    def resume(self, concurrency: int, timeout: float, deadline: float) -> dict:
        """Reopen the parked sockets resuming (`Worker.cmd_resume`); the figures."""
        start = time.time()
        answers = self.broadcast({"cmd": "resume",
                                  "concurrency": max(1, concurrency // self.size),
                                  "timeout": timeout, "deadline": start + deadline},
                                 deadline + 30)
        opened = sum(a["opened"] for a in answers)
        ready = sum(a["ready"] for a in answers)
        errors: collections.Counter = collections.Counter()
        for answer in answers:
            errors.update(answer["errors"])
        last_open = max((a["last_open"] for a in answers if a["last_open"]), default=start)
        last_ready = max((a["last_ready"] for a in answers if a["last_ready"]), default=start)
        return {
            "chosen": sum(a["chosen"] for a in answers), "opened": opened, "ready": ready,
            "failed": sum(a["chosen"] for a in answers) - opened, "errors": dict(errors),
            "seconds": max(last_open - start, 1e-6),
            "rate": opened / max(last_open - start, 1e-6) if opened else None,
            "ready_seconds": max(last_ready - start, 0.0),
        }

    def wait_ready(self, timeout: float) -> dict:
        """Wait for the ready frame on every connection."""
        answers = self.broadcast({"cmd": "wait_ready", "timeout": timeout}, timeout + 10)
        return {"ready": sum(a["ready"] for a in answers),
                "open": sum(a["open"] for a in answers),
                "at": max(a["at"] for a in answers)}

    def phase(self, phase: str, rate: float, duration: float, lead: float = 0.3) -> dict:
        """Run one sending phase on every worker's senders; returns totals and the window."""
        start_at = time.time() + lead
        answers = self.broadcast({"cmd": "phase", "phase": phase, "rate": rate,
                                  "start_at": start_at, "duration": duration}, duration + 60)
        return {"sent": sum(a["sent"] for a in answers),
                "max_lag": max(a["max_lag"] for a in answers),
                "senders": sum(a["senders"] for a in answers),
                "stand_ins": sum(a["stand_ins"] for a in answers),
                "start": start_at, "end": start_at + duration}

    def stats(self, reset: bool = False) -> dict:
        """Merged statistics of every worker."""
        answers = self.broadcast({"cmd": "stats", "reset": reset}, 60)
        latencies: dict[str, array] = {}
        buckets: collections.Counter = collections.Counter()
        closed: collections.Counter = collections.Counter()
        for answer in answers:
            for phase, raw in answer["latencies"].items():
                values = latencies.setdefault(phase, array("f"))
                values.frombytes(raw)
            buckets.update(answer["buckets"])
            closed.update(answer["closed"])
        return {
            "latencies": latencies,
            "buckets": buckets,
            "duplicates": sum(a["duplicates"] for a in answers),
            "closed": dict(closed),
            "open": sum(a["open"] for a in answers),
        }

    def wait_quiet(self, quiet: float = 1.5, timeout: float = 30) -> float:
        """Wait until no broadcast arrived for `quiet` seconds (a backlog drained)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = max(a["last"] for a in self.broadcast({"cmd": "last_receive"}, 30))
            if time.time() - last >= quiet:
                return time.time() - last
            time.sleep(0.25)
        return 0.0

    def close_all(self, timeout: float = 60) -> None:
        """Close every connection of every worker."""
        self.broadcast({"cmd": "close", "timeout": timeout}, timeout + 15)

    def shutdown(self) -> None:
        """Stop the workers (close their sockets first)."""
        for pipe in self.pipes:
            try:
                pipe.send({"cmd": "exit"})
            except OSError:
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                os.kill(proc.pid, 9)
                proc.join(5)
