"""Resource use of a running topology over time: what a long soak watches for leaks.

A sampler thread records, every `interval` seconds, the resident memory and open file
descriptors of each supervisor program's process tree (WebSocket and HTTP processes, nginx,
Redis, the sentinels) and the Redis master's memory and key counts, one JSON line per sample in
`resources.jsonl`. `summarise` fits a line through the steady part of each series (after the
warm-up) and reports its growth per hour; `render` plots the series.

    python -m loadtest.resources build/loadtest/<run>     # summary and plot of a finished run
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

# Programs are grouped the way the chart deploys them: one group per kind of pod/container.
GROUPS = (("ws", "ws-"), ("http", "http-"), ("nginx", "nginx"), ("redis", "redis-"),
          ("sentinel", "sentinel-"))
# Keys are counted by prefix up to this many ':'-separated parts ("asgi:group", ...).
PREFIX_PARTS = 2
SCAN_LIMIT = 200_000


def children() -> dict[int, list[int]]:
    """Map each PID to its direct children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int, tree: dict[int, list[int]]) -> list[int]:
    """A process and all its descendants, given `children()`."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def process_usage(pid: int, tree: dict[int, list[int]] | None = None) -> dict[str, int]:
    """Resident bytes, open file descriptors and process count of a process and its children."""
    rss = fds = count = 0
    for member in process_tree(pid, children() if tree is None else tree):
        try:
            status = Path(f"/proc/{member}/status").read_text()
            fds += len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue  # exited between the listing and the read
        count += 1
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
    return {"rss": rss, "fds": fds, "processes": count}


def program_pids(status_output: str) -> dict[str, int]:
    """PIDs of the running programs in `supervisorctl status` output."""
    pids = {}
    for line in status_output.splitlines():
        words = line.split()
        if len(words) >= 4 and words[1] == "RUNNING" and words[2] == "pid":
            pids[words[0]] = int(words[3].rstrip(","))
    return pids


def group_of(program: str) -> str | None:
    """The resource group a supervisor program belongs to (None: not watched)."""
    if program.endswith("-exporter"):
        return None  # monitoring sidecars, not the product's processes
    for group, prefix in GROUPS:
        if program == prefix or program.startswith(prefix):
            return group
    return None


def key_prefix(key: str) -> str:
    """A key's family: its first PREFIX_PARTS ':'-separated parts."""
    return ":".join(key.split(":")[:PREFIX_PARTS])


def redis_usage(client) -> dict:
    """Memory, clients and keys (in all and by prefix) of one Redis server."""
    memory = client.info("memory")
    clients = client.info("clients")
    prefixes: Counter[str] = Counter()
    for i, key in enumerate(client.scan_iter(count=1000)):
        if i >= SCAN_LIMIT:
            break
        prefixes[key_prefix(key)] += 1
    return {
        "used_memory": memory["used_memory"],
        "used_memory_rss": memory["used_memory_rss"],
        "connected_clients": clients["connected_clients"],
        "keys": client.dbsize(),
        "prefixes": dict(prefixes),
    }


def sample(topology) -> dict:
    """One sample of every watched program and of the Redis master."""
    tree = children()
    programs = {}
    for program, pid in program_pids(topology.ctl("status")).items():
        if group_of(program):
            programs[program] = process_usage(pid, tree)
    line = {"t": time.time(), "programs": programs}
    try:
        import redis

        host, port = topology.redis_master()
        client = redis.Redis(host=host, port=port, password=topology.redis.password,
                             socket_timeout=5, decode_responses=True)
        line["redis"] = redis_usage(client)
        client.close()
    except Exception as error:  # a failover in progress: the sample says so, the run goes on
        line["redis_error"] = str(error).splitlines()[0] if str(error) else repr(error)
    return line


class Sampler:
    """A daemon thread writing one sample every interval seconds to resources.jsonl."""

    def __init__(self, topology, folder: Path, interval: float = 15.0):
        self.topology, self.interval = topology, interval
        self.path = Path(folder) / "resources.jsonl"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resources", daemon=True)

    def start(self) -> Sampler:
        """Start sampling (the first sample at once)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take a last sample and stop."""
        self._stop.set()
        self._thread.join(timeout=self.interval + 30)

    def _run(self) -> None:
        with open(self.path, "a") as handle:
            while True:
                try:
                    handle.write(json.dumps(sample(self.topology)) + "\n")
                    handle.flush()
                except Exception as error:  # one failed sample must not end the soak's record
                    print(f"[resources] sample failed: {error}", file=sys.stderr, flush=True)
                if self._stop.wait(self.interval):
                    break


def load(folder: Path | str) -> list[dict]:
    """The samples of a run folder, oldest first."""
    path = Path(folder) / "resources.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(samples: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Named (time, value) series: per group RSS, fds and processes, Redis memory and keys."""
    out: dict[str, list[tuple[float, float]]] = {}
    for line in samples:
        totals: dict[str, Counter] = {}
        for program, usage in line["programs"].items():
            totals.setdefault(group_of(program), Counter()).update(usage)
        for group, usage in totals.items():
            for field in ("rss", "fds", "processes"):
                out.setdefault(f"{group}.{field}", []).append((line["t"], usage[field]))
        if "redis" in line:
            for field in ("used_memory", "used_memory_rss", "keys", "connected_clients"):
                out.setdefault(f"redis_server.{field}", []).append(
                    (line["t"], line["redis"][field]))
    return out


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of value over time, per hour (None with fewer than 3 points)."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 3600


def summarise(samples: list[dict], warmup: float = 600.0) -> dict:
    """Per series: first, last, min, max, and growth per hour after `warmup` seconds."""
    if not samples:
        return {}
    start = samples[0]["t"]
    summary = {"duration_s": round(samples[-1]["t"] - start, 1), "samples": len(samples),
               "warmup_s": warmup, "series": {}}
    for name, points in series(samples).items():
        steady = [(t, v) for t, v in points if t - start >= warmup] or points
        values = [v for _, v in points]
        slope = slope_per_hour(steady)
        summary["series"][name] = {
            "first": values[0], "last": values[-1], "min": min(values), "max": max(values),
            "steady_mean": sum(v for _, v in steady) / len(steady),
            "growth_per_hour": None if slope is None else round(slope, 1),
        }
    # Per process (a pod's container in the chart): what requests and limits are sized from.
    peaks: dict[str, dict[str, float]] = {}
    for line in samples:
        for program, usage in line["programs"].items():
            peak = peaks.setdefault(program, {"rss_max": 0, "fds_max": 0})
            peak["rss_max"] = max(peak["rss_max"], usage["rss"])
            peak["fds_max"] = max(peak["fds_max"], usage["fds"])
    summary["programs"] = peaks
    return summary


def render(folder: Path | str) -> Path | None:
    """Plot RSS, file descriptors, Redis memory and keys over time into resources.png."""
    samples = load(folder)
    if not samples:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, t0 = series(samples), samples[0]["t"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), dpi=100)
    panels = [
        (axes[0][0], "rss", "resident memory (MiB)", 1 / 2**20),
        (axes[0][1], "fds", "open file descriptors", 1),
        (axes[1][0], "redis_server.used", "Redis master memory (MiB)", 1 / 2**20),
        (axes[1][1], "redis_server.keys", "Redis master keys", 1),
    ]
    for ax, field, label, scale in panels:
        for name, points in sorted(data.items()):
            if name.endswith("." + field) or (field.startswith("redis_server.")
                                               and name.startswith(field)):
                ax.plot([(t - t0) / 60 for t, _ in points], [v * scale for _, v in points],
                        label=name)
        ax.set_xlabel("minutes since start")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Resources over time — {Path(folder).resolve().name}")
    fig.tight_layout()
    path = Path(folder) / "resources.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def report_lines(summary: dict) -> list[str]:
    """Human-readable lines of a summary: one per series with its growth per hour."""
    lines = [f"resources: {summary.get('samples', 0)} samples over "
             f"{summary.get('duration_s', 0) / 60:.1f} min (growth fitted after "
             f"{summary.get('warmup_s', 0) / 60:.0f} min)"]
    for name, s in sorted(summary.get("series", {}).items()):
        mib = name.endswith(("rss", "memory"))
        unit = (lambda v: f"{v / 2**20:.1f} MiB") if mib else (lambda v: f"{v:g}")
        growth = s["growth_per_hour"]
        grown = "n/a" if growth is None else unit(growth) + "/h"
        lines.append(f"  {name}: first {unit(s['first'])}, last {unit(s['last'])}, "
                     f"max {unit(s['max'])}, growth {grown}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Summarise and plot a run folder given on the command line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadtest.resources RUN_FOLDER", file=sys.stderr)
        return 64
    summary = summarise(load(args[0]))
    print("\n".join(report_lines(summary)))
    print(render(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
