"""Timed steps: each prints its name when it starts and its duration when it ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# (step, seconds) of every step finished in this process, for the closing summary.
FINISHED: list[tuple[str, float]] = []


@contextmanager
def step(name: str) -> Iterator[None]:
    """Print name, run the block, then print and record how long it took."""
    print(f"==> {name}", flush=True)
    start = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - start
        FINISHED.append((name, seconds))
        print(f"<== {name}: {seconds:.1f} s", flush=True)


def summary() -> str:
    """Return one line per finished step with its duration, and the total."""
    lines = [f"  {seconds:7.1f} s  {name}" for name, seconds in FINISHED]
    lines.append(f"  {sum(s for _, s in FINISHED):7.1f} s  total")
    return "\n".join(lines)
