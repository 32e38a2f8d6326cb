"""While the database cannot be reached: the documented retryable answers, never `internal`.

The error is the one Django raises for a PostgreSQL server that is not listening; the whole
outage, with a real server stopped and started again, is drilled in tests/test_database_outage.py.
"""

import pytest
from channels.db import database_sync_to_async
from django.db import ProgrammingError
from django.test import AsyncClient, Client
from django.utils import timezone

from app.chat import services, views
from app.chat.models import Message
from app.chat.unavailable import unavailable_response
from app.realtime.consumers.errors import DATABASE_RETRY_AFTER
from app.realtime.consumers.test_errors import refused_connection_error

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def refused():
    """Django's error for a refused PostgreSQL connection (made outside the event loop)."""
    return refused_connection_error()


def failing(error):
    """A stand-in for a services function whose database call raised error."""

    def change(*args, **kwargs):
        raise error

    return change


async def test_a_message_the_database_cannot_take_is_answered_database_unavailable(
        ws, make_user, monkeypatch, refused):
    """The sender gets `database_unavailable` with retry_after; the socket stays and works."""
    alice = await make_user("alice")
    client = await ws("/ws/chat/outage/", alice)
    await client.recv_type("history_end")
    monkeypatch.setattr(services, "post_message", failing(refused))
    await client.send({"type": "message", "message": "lost?", "id": "m1"})
    error = await client.recv_type("error")
    assert error == {"type": "error", "code": "database_unavailable", "client_id": "m1",
                     "retry_after": DATABASE_RETRY_AFTER, "message": error["message"]}
    assert await database_sync_to_async(Message.objects.count)() == 0
    monkeypatch.undo()
    await client.send({"type": "message", "message": "after", "id": "m2"})
    frame = await client.recv_type("message")
    assert (frame["message"], frame["client_id"], frame["seq"]) == ("after", "m2", 1)


async def test_a_database_bug_is_still_internal(ws, make_user, monkeypatch):
    """Only an unreachable database is retryable: a bad query stays a server bug."""
    client = await ws("/ws/chat/outage/", await make_user("bob"))
    await client.recv_type("history_end")
    monkeypatch.setattr(services, "post_message", failing(ProgrammingError("no such column")))
    await client.send({"type": "message", "message": "x", "id": "b1"})
    assert (await client.recv_type("error"))["code"] == "internal"


def test_the_http_api_answers_503_database_unavailable_with_retry_after(
        django_user_model, monkeypatch):
    """A view whose database is unreachable answers 503 in the API's error format.

    The test client runs the sync stack; the ASGI stack of the HTTP processes is drilled with
    a real outage in tests/test_database_outage.py.
    """
    user = django_user_model.objects.create_user("carol", password="pw")
    client = Client(raise_request_exception=False)
    client.force_login(user)
    monkeypatch.setattr(views, "visible_room", failing(refused_connection_error()))
    response = client.get("/api/rooms/lobby/messages")
    assert response.status_code == 503
    assert response.json()["error"] == "database_unavailable"
    assert response["Retry-After"] == str(DATABASE_RETRY_AFTER)


async def test_the_asgi_stack_answers_the_same_503(make_user, monkeypatch, refused):
    """Under ASGI (the HTTP processes' uvicorn workers) as well, where Django's 500 is built
    in another thread."""
    client = AsyncClient(raise_request_exception=False)
    await client.aforce_login(await make_user("frank"))
    monkeypatch.setattr(views, "visible_room", failing(refused))
    response = await client.get("/api/rooms/lobby/messages")
    assert (response.status_code, response.json()["error"]) == (503, "database_unavailable")


def test_pages_get_the_503_in_plain_text(rf):
    """Outside /api/ the same 503 and Retry-After, as text a browser shows."""
    response = unavailable_response(rf.get("/rooms/lobby/"))
    assert (response.status_code, response["Content-Type"]) == (
        503, "text/plain; charset=utf-8")
    assert response["Retry-After"] == str(DATABASE_RETRY_AFTER)


def test_other_server_errors_keep_the_plain_500(django_user_model, monkeypatch):
    """Errors that are not an unreachable database keep Django's 500."""
    user = django_user_model.objects.create_user("dave", password="pw")
    client = Client(raise_request_exception=False)
    client.force_login(user)
    monkeypatch.setattr(views, "visible_room", failing(ProgrammingError("bad query")))
    assert client.get("/api/rooms/lobby/messages").status_code == 500


async def test_last_seen_is_skipped_while_the_database_is_unreachable(monkeypatch, caplog,
                                                                       refused):
    """Sockets closing during the outage log a warning instead of failing their cleanup."""
    from app.chat import last_seen as module

    monkeypatch.setattr(module, "write", failing(refused))
    module.last_seen.pending = {1: timezone.now()}
    await module.last_seen.flush()
    assert "last_seen of 1 users not recorded" in caplog.text
    assert module.last_seen.pending == {}


async def test_a_handshake_whose_room_the_database_cannot_give_is_closed_4503(
        ws, make_user, monkeypatch, refused):
    """The room lookup fails: close 4503 (retry with backoff), never a server error."""
    alice = await make_user("alice")
    monkeypatch.setattr(services, "find_room", failing(refused))
    client = await ws("/ws/chat/outage/", alice)
    assert await client.closed_with() == 4503


async def test_a_handshake_whose_user_the_database_cannot_give_is_closed_4503(
        ws, make_user, monkeypatch, refused):
    """The session's user lookup fails before the consumer runs: 4503 too, not HTTP 500."""
    from app.realtime.consumers import handshake

    alice = await make_user("alice")

    async def user(session):
        raise refused

    monkeypatch.setattr(handshake.session_users, "user", user)
    client = await ws("/ws/chat/outage/", alice)
    assert await client.closed_with() == 4503
