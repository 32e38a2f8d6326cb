"""Redis CPU per broadcast as a room grows, for the channel layer in use.

    python -m loadtest.redis_cost [--sizes 100,1000,10000,50000] [--processes 4] [--sends 30]

Starts a redis-server of its own on a free loopback port, makes one room of N members spread
over P WebSocket processes (N channel names in the room's group, as P processes' `group_add`s
leave them), and sends the room a chat message `--sends` times through the channel layer, as
a sender's process does. Measured on Redis: the script's microseconds per call (INFO
commandstats) and the server's CPU per send (INFO cpu, user + system), and the bytes written
per send. No sockets are opened: this is Redis's share of a broadcast only, the part every
WebSocket process of a deployment shares. Prints a table and writes build/redis_cost/*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A chat message frame of a usual size, as the group send carries it.
TEXT = json.dumps({"type": "message", "room": "scale", "user": "load0001", "user_id": 1,
                   "message_id": 1, "content": "x" * 120, "timestamp": 1.0, "seq": 1,
                   "reactions": {}, "client_id": "c1"}, separators=(",", ":"))


def members(size: int, processes: int) -> list[str]:
    """Channel names of a room of `size` sockets dealt over `processes` processes in turn."""
    return [f"specific.proc{n % processes:02d}!{n:09d}" for n in range(size)]


def fill_group(client, key: str, names: list[str]) -> None:
    """Put every name in the group's sorted set now, as their group_adds would."""
    now = time.time()
    for start in range(0, len(names), 10_000):
        client.zadd(key, {name: now for name in names[start:start + 10_000]})


def redis_figures(client) -> dict[str, float]:
    """Redis's CPU seconds so far, and the calls and microseconds of scripts run with EVAL."""
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    script = stats.get("cmdstat_eval", {}) or {}
    return {"cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            "eval_calls": float(script.get("calls", 0)),
            "eval_usec": float(script.get("usec", 0))}


async def broadcast(layer, group: str, sends: int) -> None:
    """Send the room `sends` chat events, one after the other."""
    for seq in range(1, sends + 1):
        await layer.group_send(group, {"type": "room.event", "seq": seq, "text": TEXT,
                                       "kind": "message"})


def measure(url: str, size: int, processes: int, sends: int) -> dict:
    """Redis's cost of one broadcast to a room of `size` members on `processes` processes."""
    import redis

    from app.realtime.adapters import channels_redis as channels_redis_adapter
    from app.realtime.layer.channel_layer import ResilientRedisChannelLayer

    client = redis.Redis.from_url(url)
    client.flushall()
    layer = ResilientRedisChannelLayer(hosts=[{"address": url}], prefix="cost", capacity=sends + 10,
                                       expiry=600, group_expiry=3600)
    group = "chat.scale"
    fill_group(client, channels_redis_adapter.group_key(layer, group), members(size, processes))
    memory_before = client.info("memory")["used_memory"]

    async def timed():
        await broadcast(layer, group, 1)  # warm: the script cached, the pool connected
        first = redis_figures(client)
        started = time.monotonic()
        await broadcast(layer, group, sends)
        return first, time.monotonic() - started, redis_figures(client)

    before, seconds, after = asyncio.run(timed())
    written = client.info("memory")["used_memory"] - memory_before
    calls = after["eval_calls"] - before["eval_calls"]
    client.flushall()
    client.close()
    return {
        "size": size, "processes": processes, "sends": sends,
        "script_us_per_send": round((after["eval_usec"] - before["eval_usec"]) / max(calls, 1), 1),
        "redis_cpu_ms_per_send": round((after["cpu"] - before["cpu"]) * 1000 / sends, 3),
        "bytes_per_send": round(written / (sends + 1)),
        "sends_per_s": round(sends / seconds, 1),
    }


def table(rows: list[dict]) -> str:
    """The figures as a Markdown table, with each size's cost against the smallest's."""
    base = rows[0]["script_us_per_send"] or 1
    lines = ["| members | processes | Redis script µs per send | Redis CPU ms per send "
             "(INFO cpu) | bytes stored per send | against the smallest room |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['size']:,} | {row['processes']} | {row['script_us_per_send']:,} | "
                     f"{row['redis_cpu_ms_per_send']} | {row['bytes_per_send']:,} | "
                     f"{row['script_us_per_send'] / base:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of python -m loadtest.redis_cost."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.redis_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000,50000")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--sends", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings_test")
    django.setup()
    from deploy.processes.redis_nodes import RedisServer

    sizes = [int(s) for s in args.sizes.split(",")]
    with RedisServer() as server:
        rows = [measure(server.url, size, args.processes, args.sends) for size in sizes]
    print(table(rows))
    out = args.json or REPO / "build" / "redis_cost" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "argv": sys.argv}, indent=1))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
