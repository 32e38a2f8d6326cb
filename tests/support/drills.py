"""What every chat drill needs: a steady sender, waiting for a room to settle, the exactly-once
check. Used by the local topology's drills and the deployed form's (a `top` is anything with a
`url`: the local topology, or the chart installed in the test cluster)."""

import asyncio
import time

import requests

from tests.support.chat_client import ChatClient


def room_seq(top, room: str, cookie: str) -> int:
    """The room's last seq, from the HTTP API (the database)."""
    return requests.get(f"{top.url}/api/rooms/{room}", cookies={"sessionid": cookie},
                        timeout=10).json()["room"]["last_seq"]


async def settle(clients, top, room, at_least: int, timeout=20) -> int:
    """Wait until the room has at_least events and every client holds every one of them."""
    cookie = clients[0].cookie
    deadline = time.monotonic() + timeout
    while True:
        last = await asyncio.to_thread(room_seq, top, room, cookie)
        if last >= at_least and all(set(c.events) >= set(range(1, last + 1)) for c in clients):
            return last
        if time.monotonic() > deadline:
            missing = {c.username: sorted(set(range(1, last + 1)) - set(c.events))[:10]
                       for c in clients}
            raise AssertionError(f"clients missing events after {timeout}s: {missing}")
        await asyncio.sleep(0.3)


def assert_exactly_once_in_order(clients, last: int) -> None:
    """Every client saw seq 1..last exactly once, in order."""
    for c in clients:
        assert sorted(c.events) == list(range(1, last + 1)), c.username
        assert c.duplicates == [], (c.username, c.duplicates)
        assert c.out_of_order == [], (c.username, c.out_of_order)


class Sender:
    """Sends numbered messages steadily and records when each broadcast came back."""

    def __init__(self, chat: ChatClient, interval: float):
        self.chat, self.interval = chat, interval
        self.sent: dict[str, float] = {}
        self.task = None

    def acked(self) -> dict[str, float]:
        """client_id -> when its broadcast reached the sender (live, gap fill or resume)."""
        return {f["client_id"]: f["_at"] for f in self.chat.events.values()
                if f.get("client_id") in self.sent}

    async def run(self, count: int) -> None:
        """Send count messages, one per interval, riding through reconnects."""
        for n in range(count):
            key = f"{self.chat.username}-{n}"
            while not self.chat.may_send:
                await asyncio.sleep(0.05)
            try:
                await self.chat.send({"type": "message", "message": key, "id": key})
                self.sent[key] = time.monotonic()
            except Exception:
                await asyncio.sleep(0.05)
                continue
            await asyncio.sleep(self.interval)
