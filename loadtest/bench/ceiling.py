"""The ceiling: a minimal room broadcaster with no Django, to show what the hardware allows.

    python -m loadtest.bench.ceiling --port 14611 --redis redis://127.0.0.1:14620/0

`websockets` serves `/ws/chat/<room>/` (any cookie is accepted); each process holds one Redis
pub/sub subscription per room that has local members. A client's `message` frame is turned
into one `message` frame with ours' fields, serialised once and PUBLISHed; the subscription
reader hands the text to `websockets.broadcast`, which writes it to every local member
without awaiting. Compression is off, as ours (WS_PER_MESSAGE_DEFLATE=0) and stock daphne
decline permessage-deflate: the same bytes on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import time
from datetime import UTC, datetime

import websockets
from redis import asyncio as aioredis
from websockets.asyncio.server import broadcast, serve


def message_frame(message_id: int, room: str, content: str, user: str, user_id: int,
                  client_id) -> str:
    """The serialised `message` frame, field for field ours (app/chat/services.py).

    Both systems then serialise, send and parse frames of the same size. `seq` is a per-process
    count here, where ours numbers each room's events; a number of the same width either way.
    """
    return json.dumps({
        "type": "message", "message_id": message_id, "message": content, "content": content,
        "user": user, "user_id": user_id, "timestamp": datetime.now(UTC).isoformat(),
        "reply_to": None, "is_edited": False, "is_deleted": False,
        "room": room, "client_id": client_id, "seq": message_id,
    }, separators=(",", ":"))


class Broadcaster:
    """Room membership of this process and its pub/sub subscriptions."""

    def __init__(self, redis_url: str):
        self.redis = aioredis.from_url(redis_url, max_connections=200)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.rooms: dict[str, set] = {}
        self.reader: asyncio.Task | None = None
        self.ids = itertools.count(1)

    async def join(self, room: str, ws) -> None:
        """Add a member; subscribe to the room on its first local member."""
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = set()
            await self.pubsub.subscribe(f"room:{room}")
            if self.reader is None or self.reader.done():
                self.reader = asyncio.create_task(self.read())
        members.add(ws)

    async def leave(self, room: str, ws) -> None:
        """Remove a member; unsubscribe when the room has no local member left."""
        members = self.rooms.get(room)
        if members is None:
            return
        members.discard(ws)
        if not members:
            del self.rooms[room]
            await self.pubsub.unsubscribe(f"room:{room}")

    async def read(self) -> None:
        """Deliver every published frame to the local members of its room."""
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            room = message["channel"].decode()[len("room:"):]
            members = self.rooms.get(room)
            if members:
                broadcast(members, message["data"], text=True)

    async def handler(self, ws) -> None:
        """One client: join its room, publish its messages, answer pings."""
        parts = ws.request.path.split("?")[0].strip("/").split("/")
        if len(parts) != 3 or parts[:2] != ["ws", "chat"] or not parts[2]:
            await ws.close(4004, "invalid_room")
            return
        room = parts[2]
        user_id = id(ws) % 100000
        user = f"user{user_id}"
        await self.join(room, ws)
        try:
            async for text in ws:
                try:
                    data = json.loads(text)
                except ValueError:
                    continue
                kind = data.get("type", "message")
                if kind == "message":
                    frame = message_frame(next(self.ids), room, str(data.get("message", "")),
                                          user, user_id, data.get("id"))
                    await self.redis.publish(f"room:{room}", frame)
                elif kind == "ping":
                    await ws.send(json.dumps({"type": "pong", "ts": time.time()}))
        except websockets.ConnectionClosed:
            pass
        finally:
            await self.leave(room, ws)


async def main(port: int, redis_url: str) -> None:
    """Serve until SIGTERM/SIGINT."""
    broadcaster = Broadcaster(redis_url)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(broadcaster.handler, "127.0.0.1", port, compression=None,
                     max_size=65536, backlog=4096):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench.ceiling")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    from loadtest.bench.generator import raise_nofile

    raise_nofile()
    asyncio.run(main(args.port, args.redis))
