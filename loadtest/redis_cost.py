"""Redis CPU per broadcast as a room grows, for the channel layer in use.

    python -m loadtest.redis_cost [--sizes 100,1000,10000,50000] [--processes 4] [--sends 30]
        [--pace 0.25] [--fanouts script,pubsub]

Starts a redis-server of its own on a free loopback port, makes one room of N members spread
over P WebSocket processes (N channel names in the room's group, as P processes' `group_add`s
leave them, or P processes subscribed once each with `group_fanout="pubsub"`), and sends the
room a chat message `--sends` times through the channel layer, as a sender's process does.
Measured on Redis: the group send's script's own microseconds per call (EVAL: the fan-out, or
pub/sub's EVALSHA: XADD and PUBLISH; INFO commandstats) and the server's CPU per send (INFO cpu,
user + system), and the bytes written per send. No sockets are opened: this is Redis's share of
a broadcast only, the part every WebSocket process of a deployment shares. Prints a table and
writes build/redis_cost/*.json.
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


def redis_figures(client, command: str) -> dict[str, float]:
    """Redis's CPU seconds so far, and the calls and microseconds of one command."""
    cpu = client.info("cpu")
    stats = client.info("commandstats").get(f"cmdstat_{command}", {}) or {}
    return {"cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            "calls": float(stats.get("calls", 0)), "usec": float(stats.get("usec", 0))}


async def broadcast(layer, group: str, sends: int, pace: float = 0.0) -> None:
    """Send the room `sends` chat events, one every `pace` seconds (0: back to back)."""
    started = time.monotonic()
    for seq in range(1, sends + 1):
        await asyncio.sleep(max(0.0, started + (seq - 1) * pace - time.monotonic()))
        await layer.group_send(group, {"type": "room.event", "seq": seq, "text": TEXT,
                                       "kind": "message"})


def measure(url: str, size: int, processes: int, sends: int, fanout: str = "script",
            pace: float = 0.0) -> dict:
    """Redis's cost of one broadcast to a room of `size` members on `processes` processes.

    `script`: the members are in the group's sorted set, as `group_add` leaves them. `pubsub`:
    each process's members are in that process only, and the process subscribed once. With
    `pace`, sends start that many seconds apart, so Redis idles between them for as long at
    every size (back to back, a larger room's local fan-out leaves Redis longer idle, and a
    command after a longer idle runs on colder caches: microseconds that are not its work).
    """
    import redis

    from app.realtime.adapters import channels_redis as channels_redis_adapter
    from app.realtime.layer.channel_layer import ResilientRedisChannelLayer

    client = redis.Redis.from_url(url)
    client.flushall()

    def layer():
        return ResilientRedisChannelLayer(hosts=[{"address": url}], prefix="cost",
                                          capacity=sends + 10, expiry=600, group_expiry=3600,
                                          group_fanout=fanout)

    group = "chat.scale"
    sender = layer()
    memory_before = client.info("memory")["used_memory"]
    # Both fan-outs send with a script; pub/sub's by its SHA (its XADD and PUBLISH).
    command = "eval" if fanout == "script" else "evalsha"

    async def timed():
        holders = []
        if fanout == "script":
            names = members(size, processes)
            fill_group(client, channels_redis_adapter.group_key(sender, group), names)
        else:
            for process in range(processes):
                holder = layer()
                holders.append(holder)
                for _ in range(process, size, processes):  # this process's share
                    holder.local_groups[group].add(await holder.new_channel())
                await holder.subscriptions(group).add(group)
        await broadcast(sender, group, 1)  # warm: the script cached, the pool connected
        first = redis_figures(client, command)
        started = time.monotonic()
        await broadcast(sender, group, sends, pace)
        seconds = time.monotonic() - started
        last = redis_figures(client, command)
        for holder in [sender, *holders]:
            await holder.stop_readers()
        return first, seconds, last

    before, seconds, after = asyncio.run(timed())
    written = client.info("memory")["used_memory"] - memory_before
    calls = after["calls"] - before["calls"]
    client.flushall()
    client.close()
    return {
        "fanout": fanout, "size": size, "processes": processes, "sends": sends,
        "us_per_send": round((after["usec"] - before["usec"]) / max(calls, 1), 1),
        "redis_cpu_ms_per_send": round((after["cpu"] - before["cpu"]) * 1000 / sends, 3),
        "bytes_per_send": round(written / (sends + 1)),
        "sends_per_s": round(sends / seconds, 1), "pace": pace,
    }


def table(rows: list[dict]) -> str:
    """The figures as a Markdown table, each against the same fan-out's smallest room."""
    base = {}
    for row in rows:
        base.setdefault(row["fanout"], row["us_per_send"] or 1)
    lines = ["| fan-out | members | processes | Redis µs per send (the command's own) | "
             "Redis CPU ms per send (INFO cpu) | bytes stored per send | against the smallest "
             "room |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['fanout']} | {row['size']:,} | {row['processes']} | "
                     f"{row['us_per_send']:,} | {row['redis_cpu_ms_per_send']} | "
                     f"{row['bytes_per_send']:,} | "
                     f"{row['us_per_send'] / base[row['fanout']]:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of python -m loadtest.redis_cost."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.redis_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000,50000")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--sends", type=int, default=30)
    parser.add_argument("--pace", type=float, default=0.25,
                        help="seconds from one send's start to the next's (0: back to back)")
    parser.add_argument("--fanouts", default="script,pubsub",
                        help="the layer's group_fanout modes to measure")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings_test")
    django.setup()
    from deploy.processes.redis_nodes import RedisServer

    sizes = [int(s) for s in args.sizes.split(",")]
    with RedisServer() as server:
        rows = [measure(server.url, size, args.processes, args.sends, fanout, args.pace)
                for fanout in args.fanouts.split(",") for size in sizes]
    print(table(rows))
    out = args.json or REPO / "build" / "redis_cost" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "argv": sys.argv}, indent=1))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
