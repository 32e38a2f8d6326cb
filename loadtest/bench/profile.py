"""py-spy for `--diagnose`: sample running WebSocket processes, summarise where time goes.

`record(pids, seconds, out)` starts one `py-spy record --format raw` per process (collapsed
stacks, which speedscope and flamegraph tools import); `finish()` waits for them and returns
the files and the top functions by own (self) samples and by inclusive samples.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy executable of this venv (or PATH), if installed."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@dataclass
class Recorder:
    """py-spy processes in flight."""

    seconds: float
    procs: list[tuple[int, Path, subprocess.Popen]] = field(default_factory=list)
    error: str = ""

    def finish(self) -> dict:
        """Wait for py-spy, then summarise every profile."""
        files = []
        stacks: collections.Counter = collections.Counter()
        for _pid, path, proc in self.procs:
            try:
                proc.wait(self.seconds + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if path.exists():
                files.append(str(path))
                stacks.update(read_collapsed(path))
        summary = summarise(stacks) if stacks else {}
        return {"files": files, "error": self.error, **summary}


def record(pids: list[int], seconds: float, out: Path) -> Recorder:
    """Start py-spy on each PID for `seconds`; files are <out>-<pid>.txt."""
    recorder = Recorder(seconds)
    binary = py_spy()
    if binary is None:
        recorder.error = "py-spy is not installed (pip install py-spy)"
        return recorder
    out.parent.mkdir(parents=True, exist_ok=True)
    for pid in pids:
        path = out.parent / f"{out.name}-{pid}.txt"
        proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
             "100", "--format", "raw", "--nonblocking", "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        recorder.procs.append((pid, path, proc))
    return recorder


def read_collapsed(path: Path) -> collections.Counter:
    """Stacks of a raw (collapsed) py-spy file: 'frame;frame;... count' per line."""
    stacks: collections.Counter = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def _name(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarise(stacks: collections.Counter, top: int = 25) -> dict:
    """Top functions by self and inclusive samples (percent of all samples)."""
    total = sum(stacks.values())
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    for stack, count in stacks.items():
        frames = [_name(f) for f in stack.split(";")[1:]]  # the first item is the thread
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return {
        "samples": total,
        "self": [(name, round(100 * n / total, 1)) for name, n in own.most_common(top)],
        "inclusive": [(name, round(100 * n / total, 1))
                      for name, n in inclusive.most_common(top)],
    }
