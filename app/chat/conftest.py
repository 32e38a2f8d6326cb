"""Fixtures for consumer tests: users, sessions and WebSocket clients on the real ASGI app."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client as HttpClient

from app.asgi import application

ORIGIN = (b"origin", b"http://localhost")


class WsClient:
    """A WebSocket client speaking docs/protocol.md over the full ASGI stack."""

    def __init__(self, path: str, cookie: str | None, origin=ORIGIN):
        headers = [(b"host", b"localhost")]
        if origin is not None:
            headers.append(origin)
        if cookie:
            headers.append((b"cookie", f"sessionid={cookie}".encode()))
        self.comm = WebsocketCommunicator(application, path, headers=headers)
        self.close_code = None

    async def open(self) -> bool:
        """Perform the handshake; True when accepted (else `refusal` holds the close code)."""
        self.accepted, self.refusal = await self.comm.connect(timeout=10)
        return self.accepted

    async def send(self, frame) -> None:
        """Send a JSON frame (or a raw string)."""
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.comm.send_to(text_data=text)

    async def recv(self, timeout: float = 5) -> dict:
        """Receive the next frame as JSON; a close raises AssertionError with its code."""
        output = await self.comm.receive_output(timeout)
        if output["type"] == "websocket.close":
            self.close_code = output.get("code")
            raise AssertionError(f"closed with {self.close_code}")
        return json.loads(output["text"])

    async def recv_type(self, kind: str, timeout: float = 5) -> dict:
        """Receive frames until one of the given type arrives (heartbeats and notices skipped)."""
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == kind:
                return frame

    async def recv_until(self, kind: str, timeout: float = 5) -> list[dict]:
        """Receive frames up to and including the first of the given type."""
        frames = []
        while True:
            frames.append(await self.recv(timeout))
            if frames[-1]["type"] == kind:
                return frames

    async def closed_with(self, timeout: float = 5) -> int:
        """Wait for the server to close, skipping frames; return the close code."""
        while True:
            output = await self.comm.receive_output(timeout)
            if output["type"] == "websocket.close":
                return output.get("code")

    async def silent(self, timeout: float = 0.3) -> bool:
        """True if nothing arrives within the timeout."""
        return await self.comm.receive_nothing(timeout)

    async def close(self) -> None:
        """Close from the client side."""
        await self.comm.disconnect()


@pytest.fixture
def make_user(db):
    """Create a user from async tests: `alice = await make_user("alice")`."""
    counter = iter(range(1, 10_000))

    @database_sync_to_async
    def make(username=None, staff=False):
        name = username or f"user{next(counter)}"
        return get_user_model().objects.create_user(name, password="pw", is_staff=staff)

    return make


@database_sync_to_async
def session_for(user) -> str:
    """Log a user in and return the session cookie value."""
    client = HttpClient()
    client.force_login(user)
    return client.cookies["sessionid"].value


@pytest.fixture
async def ws(redis_layer):
    """Open WebSocket clients as a user: `await ws("/ws/chat/lobby/", user)`; closes them all."""
    opened = []

    async def open_client(path, user=None, accept=True, origin=ORIGIN):
        cookie = await session_for(user) if user is not None else None
        client = WsClient(path, cookie, origin)
        connected = await client.open()
        if accept:
            assert connected, f"handshake to {path} was refused"
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        try:
            await client.comm.disconnect()
        except (Exception, asyncio.CancelledError):  # already closed by the server or the test
            pass
    layer = get_channel_layer()
    if hasattr(layer, "stop_readers"):
        await layer.stop_readers()
