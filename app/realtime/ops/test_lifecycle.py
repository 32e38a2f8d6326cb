"""The process services around the ASGI application: started on the lifespan's startup."""

import asyncio

from app.realtime.ops.lifecycle import ProcessServices


async def test_lifespan_starts_the_services_and_stops_the_canary(settings, monkeypatch):
    """uvicorn's lifespan startup runs start_services; shutdown completes."""
    started = []
    monkeypatch.setattr("app.realtime.ops.lifecycle.start_services", lambda: started.append(1))
    events = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        events.put_nowait({"type": kind})
    sent = []

    async def send(message):
        sent.append(message["type"])

    await ProcessServices(None)({"type": "lifespan"}, events.get, send)
    assert started == [1]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
