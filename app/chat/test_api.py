"""The JSON HTTP API: session login with CSRF, rooms, history pages, notifications."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from app.chat import services
from app.chat.models import ChatRoom, Notification

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def alice():
    """A plain user."""
    return get_user_model().objects.create_user("alice", password="pw")


@pytest.fixture
def staff():
    """A staff user."""
    return get_user_model().objects.create_user("boss", password="pw", is_staff=True)


def csrf_client():
    """A client that enforces CSRF like a browser-facing deployment, with its token."""
    client = Client(enforce_csrf_checks=True)
    token = client.get("/api/csrf").json()["csrf_token"]
    return client, token


def post(client, path, data, token=None, **headers):
    """POST JSON, with the CSRF header when a token is given."""
    if token:
        headers["HTTP_X_CSRFTOKEN"] = token
    return client.post(path, json.dumps(data), content_type="application/json", **headers)


def test_login_needs_the_csrf_token(alice):
    """POST /api/login without the CSRF header is refused with 403."""
    client = Client(enforce_csrf_checks=True)
    client.get("/api/csrf")
    assert post(client, "/api/login", {"username": "alice", "password": "pw"}).status_code == 403


def test_login_sets_the_session_and_me_answers(alice):
    """A JSON login with CSRF sets the session cookie; /api/me then knows the user."""
    client, token = csrf_client()
    response = post(client, "/api/login", {"username": "alice", "password": "pw"}, token)
    assert response.status_code == 200 and "sessionid" in response.cookies
    assert client.get("/api/me").json()["user"]["username"] == "alice"


def test_wrong_password_is_401(alice):
    """Bad credentials get 401 invalid_credentials."""
    client, token = csrf_client()
    response = post(client, "/api/login", {"username": "alice", "password": "no"}, token)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_credentials")


def test_login_with_wrong_types_is_400(alice):
    """Non-string credentials are a 400, not a crash."""
    client, token = csrf_client()
    assert post(client, "/api/login", {"username": 1, "password": []}, token).status_code == 400
    assert client.post("/api/login", "[1]", content_type="application/json",
                       HTTP_X_CSRFTOKEN=token).status_code == 400
    response = post(client, "/api/login", {"username": "al\x00ice", "password": "pw"}, token)
    assert (response.status_code, response.json()["field"]) == (400, "username")


def test_logout_ends_the_session(alice):
    """After logout, /api/me is 401."""
    client, token = csrf_client()
    post(client, "/api/login", {"username": "alice", "password": "pw"}, token)
    token = client.cookies["csrftoken"].value
    assert post(client, "/api/logout", {}, token).status_code == 200
    assert client.get("/api/me").status_code == 401


def test_anonymous_api_calls_are_401():
    """Anonymous calls get JSON 401s, not login redirects."""
    client = Client()
    for path in ("/api/me", "/api/rooms", "/api/notifications", "/api/rooms/x/messages"):
        assert client.get(path).status_code == 401


def test_create_and_list_rooms(alice):
    """POST /api/rooms creates a room (creator becomes a member); GET lists it."""
    client = Client()
    client.force_login(alice)
    response = post(client, "/api/rooms", {"name": "dev-talk", "display_name": "Dev talk"})
    assert response.status_code == 201
    assert response.json()["room"]["display_name"] == "Dev talk"
    names = [r["name"] for r in client.get("/api/rooms").json()["rooms"]]
    assert names == ["dev-talk"]
    assert post(client, "/api/rooms", {"name": "dev-talk"}).status_code == 409


@pytest.mark.parametrize("data,field", [
    ({"name": "bad name"}, "name"),
    ({"name": ""}, "name"),
    ({"name": "ok", "max_users": 0}, "max_users"),
    ({"name": "ok", "max_users": "5"}, "max_users"),
    ({"name": "ok", "is_private": "yes"}, "is_private"),
    ({"name": "ok", "display_name": 5}, "display_name"),
    ({"name": "ok", "description": "a\x00b"}, "description"),
])
def test_room_creation_validates_fields(alice, data, field):
    """Bad room fields are 400 invalid_field naming the field; nothing is created."""
    client = Client()
    client.force_login(alice)
    response = post(client, "/api/rooms", data)
    assert (response.status_code, response.json().get("field")) == (400, field)
    assert not ChatRoom.objects.exists()


def test_private_rooms_are_hidden_from_non_members(alice, staff):
    """A private room is not listed or readable for non-members."""
    room = ChatRoom.objects.create(name="secret", is_private=True)
    room.members.add(staff)
    client = Client()
    client.force_login(alice)
    assert client.get("/api/rooms").json()["rooms"] == []
    assert client.get("/api/rooms/secret/messages").status_code == 404


def test_history_is_paginated_by_message_id(alice):
    """Pages go backwards by message id, newest first, with next_before."""
    room = ChatRoom.objects.create(name="lobby")
    ids = [services.post_message(room, alice, f"m{n}", None, None)["message_id"]
           for n in range(5)]
    client = Client()
    client.force_login(alice)
    page = client.get("/api/rooms/lobby/messages?limit=2").json()
    assert [m["message_id"] for m in page["messages"]] == [ids[4], ids[3]]
    page = client.get(f"/api/rooms/lobby/messages?limit=2&before={page['next_before']}").json()
    assert [m["message"] for m in page["messages"]] == ["m2", "m1"]
    assert client.get("/api/rooms/lobby/messages?limit=x").status_code == 400
    assert client.get("/api/rooms/lobby/messages?limit=500").status_code == 400


def test_room_detail_counts_online_users(alice):
    """GET /api/rooms/<name> describes the room."""
    ChatRoom.objects.create(name="lobby")
    client = Client()
    client.force_login(alice)
    assert client.get("/api/rooms/lobby").json()["room"]["online"] == 0
    assert client.get("/api/rooms/nope").status_code == 404


def test_notifications_list_with_unread_count(alice):
    """GET /api/notifications returns the user's notifications and unread count."""
    Notification.objects.create(user=alice, title="a", message="", read=True)
    Notification.objects.create(user=alice, title="b", message="")
    client = Client()
    client.force_login(alice)
    data = client.get("/api/notifications").json()
    assert [n["title"] for n in data["notifications"]] == ["b", "a"]
    assert data["unread_count"] == 1


def test_staff_send_a_notification_with_csrf(alice, staff):
    """Staff with a session and CSRF token may send; the notification is stored."""
    client, token = csrf_client()
    post(client, "/api/login", {"username": "boss", "password": "pw"}, token)
    token = client.cookies["csrftoken"].value
    data = {"user_id": alice.pk, "title": "Hi", "message": "there", "category": "system"}
    assert post(client, "/api/notifications/send", data).status_code == 403  # no CSRF header
    response = post(client, "/api/notifications/send", data, token)
    assert response.status_code == 201
    assert Notification.objects.get(user=alice).category == "system"


def test_a_service_sends_with_its_bearer_token(alice, settings):
    """A service sends with Authorization: Bearer $SERVICE_TOKEN and no session."""
    settings.SERVICE_TOKEN = "s3cret"
    data = {"user_id": alice.pk, "title": "From a job", "message": ""}
    response = post(Client(enforce_csrf_checks=True), "/api/notifications/send", data,
                    HTTP_AUTHORIZATION="Bearer s3cret")
    assert response.status_code == 201
    wrong = post(Client(), "/api/notifications/send", data, HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401


def test_plain_users_cannot_send_notifications(alice):
    """Non-staff sessions get 403."""
    client = Client()
    client.force_login(alice)
    data = {"user_id": alice.pk, "title": "x", "message": ""}
    assert post(client, "/api/notifications/send", data).status_code == 403


@pytest.mark.parametrize("data,field", [
    ({"user_id": "1", "title": "t", "message": ""}, "user_id"),
    ({"user_id": 1, "title": "", "message": ""}, "title"),
    ({"user_id": 1, "title": "t", "message": 3}, "message"),
    ({"user_id": 1, "title": "t", "message": "", "category": "spam"}, "category"),
    ({"user_id": 1, "title": "t\x00", "message": ""}, "title"),
])
def test_notification_send_validates(staff, data, field):
    """Bad notification fields are 400 naming the field; nothing is stored."""
    client = Client()
    client.force_login(staff)
    response = post(client, "/api/notifications/send", data)
    assert (response.status_code, response.json()["field"]) == (400, field)
    assert not Notification.objects.exists()


def test_notification_to_a_missing_user_is_404(staff):
    """Sending to a user that does not exist is 404."""
    client = Client()
    client.force_login(staff)
    data = {"user_id": 999, "title": "t", "message": ""}
    assert post(client, "/api/notifications/send", data).status_code == 404
