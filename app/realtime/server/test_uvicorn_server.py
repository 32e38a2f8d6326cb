"""The WebSocket process's server: uvicorn's configuration, close codes and start-up tuning."""

import asyncio
import contextvars
import gc

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.realtime.adapters.test_uvicorn import serve
from app.realtime.server.uvicorn_server import (
    FULL_COLLECTION_EVERY,
    config,
    share_cache_backends,
    tune_gc,
)


async def test_the_application_close_code_reaches_the_client():
    """Registered close codes such as 1012 (a drain) arrive as sent (daphne needed help)."""
    async with serve() as (_, url):
        async with connect(url + "/restart") as client:
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
    assert closed.value.rcvd.code == 1012


async def test_a_refusal_before_accept_is_http_403():
    """nginx's proxy_next_upstream retries a 403 on another process (the drain guard)."""
    async with serve() as (_, url):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url + "/refuse"):
                pass
    assert refused.value.response.status_code == 403


async def test_a_message_over_ws_max_size_is_closed_with_1009():
    """WS_MAX_SIZE bounds what a client can make the server buffer."""
    async with serve(ws_max_size=1024) as (_, url):
        async with connect(url + "/room", max_size=None) as client:
            await client.send("x" * 2048)
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
    assert closed.value.rcvd.code == 1009


async def test_deflate_is_declined_unless_asked_for(monkeypatch):
    """Browsers offer permessage-deflate; each accepted socket would carry a compressor."""
    monkeypatch.delenv("WS_PER_MESSAGE_DEFLATE", raising=False)
    assert config().ws_per_message_deflate is False
    monkeypatch.setenv("WS_PER_MESSAGE_DEFLATE", "1")
    assert config().ws_per_message_deflate is True


def test_tune_gc_freezes_startup_objects_and_spaces_full_collections():
    """What exists before serving is frozen; young collections keep their short pauses and
    full ones, which scan every socket, come less often."""
    threshold = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (*threshold[:2], FULL_COLLECTION_EVERY)
        assert FULL_COLLECTION_EVERY > threshold[2]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_cache_backends_made_before_serving_are_shared_by_every_connection_task():
    """Each task finds the startup backend instead of building (and keeping) its own."""
    from django.core.cache import caches

    async def backends_seen_by_two_tasks():
        async def backend():
            return caches["default"]

        return await asyncio.gather(asyncio.create_task(backend()),
                                    asyncio.create_task(backend()))

    def serve(share: bool):
        if share:
            share_cache_backends()
        return asyncio.run(backends_seen_by_two_tasks())

    first, second = contextvars.Context().run(serve, False)
    assert first is not second  # Django's default: a backend per task
    first, second = contextvars.Context().run(serve, True)
    assert first is second
