"""The internal endpoints answer on the loopback listener only, whatever a request claims."""

import asyncio
import json

import pytest

from app.realtime.consumers.registry import registry
from app.realtime.ops.internal import InternalEndpoints, on_internal_listener

INTERNAL = 9000


async def app_reached(scope, receive, send):
    """Stands for Django: answers 299 so a test sees the request got past the wrapper."""
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def call(path, *, server, method="GET", headers=()):
    """(status, JSON body or None) of one request through InternalEndpoints."""
    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "server": server, "client": ("10.1.2.3", 40000), "headers": list(headers)}
    if "?" in path:
        scope["path"], query = path.split("?", 1)
        scope["query_string"] = query.encode()
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await InternalEndpoints(app_reached, port=INTERNAL)(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body) if body else None


@pytest.fixture(autouse=True)
def not_draining():
    yield
    registry.draining = False


@pytest.mark.parametrize("server", [("127.0.0.1", 8000), ("10.0.0.7", INTERNAL), None])
def test_only_a_loopback_socket_on_the_internal_port_is_internal(server):
    """The public port, or the internal port number on another address, is not internal."""
    assert not on_internal_listener({"server": server}, INTERNAL)
    assert on_internal_listener({"server": ("127.0.0.1", INTERNAL)}, INTERNAL)
    assert on_internal_listener({"server": ("::1", INTERNAL)}, INTERNAL)
    assert not on_internal_listener({"server": ("127.0.0.1", INTERNAL)}, None)


async def test_public_listener_answers_404_to_internal_paths_whatever_the_headers_say():
    """X-Forwarded-For and Host are claims; the socket a request came in on is not."""
    forged = [(b"x-forwarded-for", b"127.0.0.1"), (b"host", b"127.0.0.1")]
    for path in ("/internal/drain", "/internal/status", "/internal/anything"):
        status, _ = await call(path, server=("0.0.0.0", 8000), method="POST", headers=forged)
        assert status == 404
    assert not registry.draining


async def test_public_listener_passes_everything_else_to_the_app():
    """Only /internal/ is held back on the public listener."""
    assert (await call("/healthz", server=("10.0.0.7", 8000)))[0] == 299


async def test_internal_listener_drains_on_post_with_any_host():
    """The preStop hook's POST with Host 127.0.0.1 drains (ALLOWED_HOSTS is not consulted)."""
    status, body = await call("/internal/drain?exit=0&window=0", server=("127.0.0.1", INTERNAL),
                              method="POST", headers=[(b"host", b"127.0.0.1")])
    assert status == 202 and body["status"] == "draining"
    for _ in range(100):  # the drain runs in a task of its own
        if registry.draining:
            break
        await asyncio.sleep(0.01)
    assert registry.draining
    status, body = await call("/internal/drain?exit=0", server=("127.0.0.1", INTERNAL),
                              method="POST")
    assert (status, body["status"]) == (202, "draining")  # a second drain does not restart it


async def test_internal_listener_needs_post_to_drain():
    """GET does not drain."""
    assert (await call("/internal/drain", server=("127.0.0.1", INTERNAL)))[0] == 405
    assert not registry.draining


async def test_internal_listener_reports_status_and_serves_nothing_else():
    """Status says what the process holds; the app itself is not reachable there."""
    status, body = await call("/internal/status", server=("127.0.0.1", INTERNAL))
    assert status == 200 and body["draining"] is False and "connections" in body
    assert (await call("/healthz", server=("127.0.0.1", INTERNAL)))[0] == 404
