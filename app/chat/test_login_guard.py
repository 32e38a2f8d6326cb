"""Login throttling at /api/login, the web login page and the admin, on real Redis."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from app.chat.login_guard import wait_text

pytestmark = [pytest.mark.django_db]

GUESSER = "203.0.113.9"
HOME = "198.51.100.7"


@pytest.fixture(autouse=True)
def throttle(settings, redis_layer):
    """The shared counters in real Redis, locking a user name after three failures."""
    settings.LOGIN_USER_FAILURES = 3
    settings.LOGIN_ADDRESS_FAILURES = 10
    settings.LOGIN_USER_EVERYWHERE_FAILURES = 10


@pytest.fixture
def alice():
    """A plain user."""
    return get_user_model().objects.create_user("alice", password="pw")


@pytest.fixture
def boss():
    """A staff user."""
    return get_user_model().objects.create_user("boss", password="pw", is_staff=True)


def api_login(username: str, password: str, address: str = GUESSER, **headers):
    """POST /api/login from an address (REMOTE_ADDR, as uvicorn sets it)."""
    return Client(REMOTE_ADDR=address).post(
        "/api/login", json.dumps({"username": username, "password": password}),
        content_type="application/json", **headers)


def test_the_api_answers_429_with_retry_after_once_locked(alice):
    """Three wrong passwords, then even the right one gets 429 rate_limited and Retry-After."""
    assert [api_login("alice", "no").status_code for _ in range(3)] == [401] * 3
    response = api_login("alice", "pw")
    assert response.status_code == 429
    body = response.json()
    assert body["error"] == "rate_limited" and "Try again in" in body["message"]
    assert 1 <= body["retry_after"] <= 60 and response["Retry-After"] == str(body["retry_after"])


def test_the_owner_logs_in_from_another_address(alice):
    """A lock earned by a guesser's address does not stop alice at home."""
    for _ in range(3):
        api_login("alice", "no")
    assert api_login("alice", "pw", address=HOME).status_code == 200


def test_a_success_resets_the_count(alice):
    """Two failures, a success, two failures: 401s, never 429."""
    statuses = [api_login("alice", p).status_code for p in ("no", "no", "pw", "no", "no", "pw")]
    assert statuses == [401, 401, 200, 401, 401, 200]


def test_a_forged_forwarded_for_does_not_move_the_guesser(alice):
    """X-Forwarded-For is a claim: each guess naming a new address still counts for REMOTE_ADDR."""
    for n in range(3):
        api_login("alice", "no", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}")
    assert api_login("alice", "pw", HTTP_X_FORWARDED_FOR="10.0.0.99").status_code == 429


def test_the_web_login_page_says_why_with_429(alice):
    """The login page answers a locked attempt 429, with Retry-After and the wait in words."""
    client = Client(REMOTE_ADDR=GUESSER)
    for _ in range(3):
        response = client.post("/login/", {"username": "alice", "password": "no"})
        assert response.status_code == 200 and b"Wrong username or password" in response.content
    response = client.post("/login/", {"username": "alice", "password": "pw"})
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert b"Too many failed login attempts. Try again in" in response.content
    assert b"Wrong username or password" not in response.content
    assert "Content-Security-Policy" in response.headers


def test_the_web_login_page_still_signs_in(alice):
    """An unthrottled right password on the page signs in and goes to the rooms."""
    response = Client(REMOTE_ADDR=HOME).post("/login/", {"username": "alice", "password": "pw"})
    assert response.status_code == 302 and response["Location"] == "/"


def test_the_admin_login_says_why_with_429(boss):
    """The admin login answers a locked attempt 429 with the wait, in its own page."""
    client = Client(REMOTE_ADDR=GUESSER)
    for _ in range(3):
        response = client.post("/admin/login/", {"username": "boss", "password": "no"})
        assert response.status_code == 200
    response = client.post("/admin/login/", {"username": "boss", "password": "pw"})
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert b"Too many failed login attempts. Try again in" in response.content


def test_the_admin_login_still_signs_staff_in(boss):
    """The admin's own login works as Django's did."""
    response = Client(REMOTE_ADDR=HOME).post(
        "/admin/login/?next=/admin/", {"username": "boss", "password": "pw"})
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_api_and_pages_share_one_count(alice):
    """Guesses at the API, the page and the admin add up for the same name and address."""
    client = Client(REMOTE_ADDR=GUESSER)
    api_login("alice", "no")
    client.post("/login/", {"username": "alice", "password": "no"})
    client.post("/admin/login/", {"username": "alice", "password": "no"})
    assert api_login("alice", "pw").status_code == 429


@pytest.mark.parametrize(("seconds", "words"), [
    (1, "1 second"), (59, "59 seconds"), (120, "2 minutes"), (61 * 60 + 1, "62 minutes"),
    (3 * 3600, "3 hours"), (5401, "2 hours"),
])
def test_waits_are_said_in_words_rounded_up(seconds, words):
    """The wait a person reads is never shorter than the real one."""
    assert wait_text(seconds) == words


def test_settings_refuse_a_throttle_that_would_refuse_everyone():
    """LOGIN_USER_FAILURES=0 would refuse every login: the settings refuse to load instead."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "app.settings", "SECRET_KEY": "k" * 60,
           "LOGIN_USER_FAILURES": "0"}
    result = subprocess.run([sys.executable, "manage.py", "check"], env=env, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode != 0 and "LOGIN_* failure counts" in result.stderr
