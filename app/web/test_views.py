"""The web client's pages with Django's test client: login, rendering, escaping and the CSP."""

import re
from html.parser import HTMLParser

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

from app.chat.models import ChatRoom, Notification

pytestmark = pytest.mark.django_db

PAGES = ["web:rooms", "web:notifications"]
EVIL = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="pw-bob")


@pytest.fixture
def signed_in(client, alice):
    client.force_login(alice)
    return client


class Tags(HTMLParser):
    """Collect every start tag with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(response) -> list[tuple[str, dict]]:
    parser = Tags()
    parser.feed(response.content.decode())
    return parser.tags


def csp(response) -> dict[str, list[str]]:
    policy = response.headers["Content-Security-Policy"]
    return {
        part.split()[0]: part.split()[1:] for part in (p.strip() for p in policy.split(";")) if part
    }


# ---------------------------------------------------------------------------- login required
@pytest.mark.parametrize("url", ["/", "/rooms/lobby/", "/notifications/"])
def test_pages_redirect_anonymous_users_to_the_login_page(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('web:login')}?next={url}"


def test_login_page_has_labelled_fields_and_a_csrf_token(client):
    response = client.get(reverse("web:login"))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<label for="id_username">' in html and 'id="id_username"' in html
    assert '<label for="id_password">' in html and 'type="password"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'autocomplete="current-password"' in html


def test_login_with_the_form_signs_in_and_goes_to_the_rooms(alice):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    page = client.get(reverse("web:login"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
    response = client.post(reverse("web:login"), {
        "username": "alice", "password": "pw-alice", "csrfmiddlewaretoken": token,
    })
    assert response.status_code == 302
    assert response["Location"] == reverse("web:rooms")
    assert client.get("/").status_code == 200


def test_login_without_the_csrf_token_is_refused(alice):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("web:login"), {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 403


def test_login_goes_back_to_a_safe_next_page_only(client, alice):
    response = client.post(f"{reverse('web:login')}?next=/rooms/lobby/",
                           {"username": "alice", "password": "pw-alice", "next": "/rooms/lobby/"})
    assert response["Location"] == "/rooms/lobby/"
    client.logout()
    response = client.post(reverse("web:login"), {
        "username": "alice", "password": "pw-alice", "next": "https://evil.example/",
    })
    assert response["Location"] == reverse("web:rooms")


def test_wrong_password_shows_an_error_and_no_session(client, alice):
    response = client.post(reverse("web:login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b'role="alert"' in response.content and b"Wrong username or password" in response.content
    assert b'aria-invalid="true"' in response.content
    assert client.get("/").status_code == 302


def test_signed_in_users_skip_the_login_page(signed_in):
    response = signed_in.get(reverse("web:login"))
    assert response.status_code == 302 and response["Location"] == reverse("web:rooms")


def test_logout_needs_post_and_ends_the_session(signed_in):
    assert signed_in.get(reverse("web:logout")).status_code == 405
    response = signed_in.post(reverse("web:logout"))
    assert response.status_code == 302 and response["Location"] == reverse("web:login")
    assert signed_in.get("/").status_code == 302


# ---------------------------------------------------------------------------- pages
def test_room_list_shows_public_and_own_private_rooms_only(signed_in, alice, bob):
    ChatRoom.objects.create(name="lobby", display_name="Lobby")
    mine = ChatRoom.objects.create(name="alices", display_name="Alice's corner", is_private=True)
    mine.members.add(alice)
    theirs = ChatRoom.objects.create(name="bobs", display_name="Bob's secret", is_private=True)
    theirs.members.add(bob)
    response = signed_in.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'href="/rooms/lobby/"' in html and "Lobby" in html
    assert 'href="/rooms/alices/"' in html and "Alice&#x27;s corner" in html
    assert "bobs" not in html and "Bob" not in html
    assert 'data-testid="live-updates"' in html and 'aria-live="polite"' in html
    assert '<label for="room-name">Name</label>' in html


def test_room_page_renders_for_an_existing_or_auto_created_room(signed_in):
    ChatRoom.objects.create(name="lobby", display_name="Lobby", description="Say hello.")
    response = signed_in.get(reverse("web:room", args=["lobby"]))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-room="lobby"' in html and "Say hello." in html
    assert 'role="log"' in html and 'aria-live="polite"' in html
    assert '<label for="message-input" class="visually-hidden">Message</label>' in html
    # A room that does not exist yet is created on first join (CHAT_AUTO_CREATE_ROOMS).
    assert signed_in.get(reverse("web:room", args=["brand-new"])).status_code == 200
    assert not ChatRoom.objects.filter(name="brand-new").exists()


def test_room_page_404s_for_bad_missing_or_private_rooms(signed_in, bob, settings):
    assert signed_in.get("/rooms/-bad/").status_code == 404
    assert signed_in.get("/rooms/" + "x" * 101 + "/").status_code == 404
    private = ChatRoom.objects.create(name="secret", is_private=True)
    private.members.add(bob)
    assert signed_in.get("/rooms/secret/").status_code == 404
    settings.CHAT_AUTO_CREATE_ROOMS = False
    assert signed_in.get("/rooms/nowhere/").status_code == 404


def test_user_text_is_escaped_in_every_page(signed_in, alice):
    ChatRoom.objects.create(name="evil", display_name=EVIL, description=EVIL)
    for url in ["/", "/rooms/evil/"]:
        html = signed_in.get(url).content.decode()
        assert "<img src=x" not in html and "<script>window" not in html
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html


def test_the_bell_shows_the_unread_count_at_first_paint(signed_in, alice):
    Notification.objects.create(user=alice, title="one")
    Notification.objects.create(user=alice, title="two")
    Notification.objects.create(user=alice, title="old", read=True)
    html = signed_in.get(reverse("web:notifications")).content.decode()
    assert 'aria-label="Notifications, 2 unread"' in html
    assert re.search(r'data-testid="unread-count"\s*>2</span>', html)


def test_the_page_knows_the_user_only_through_data_attributes(signed_in, alice):
    html = signed_in.get("/").content.decode()
    assert f'data-user="alice" data-user-id="{alice.pk}"' in html
    assert '<meta name="csrf-token" content="' in html


# ---------------------------------------------------------------------------- CSP and headers
@pytest.mark.parametrize("name", PAGES)
def test_pages_send_a_strict_content_security_policy(signed_in, name):
    response = signed_in.get(reverse(name))
    policy = csp(response)
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["connect-src"] == ["'self'", "ws://testserver", "wss://testserver"]
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert "no-store" in response.headers["Cache-Control"]


def test_https_pages_allow_only_wss(signed_in, settings):
    response = signed_in.get("/", secure=True)
    assert csp(response)["connect-src"] == ["'self'", "wss://testserver"]


def test_login_page_has_the_policy_too(client):
    assert csp(client.get(reverse("web:login")))["script-src"] == ["'self'"]


@pytest.mark.parametrize("url", ["/", "/rooms/lobby/", "/notifications/", "/login/"])
def test_no_inline_script_or_event_handler_attribute(signed_in, url):
    if url == "/login/":
        signed_in.logout()
    found = tags(signed_in.get(url))
    scripts = [attrs for tag, attrs in found if tag == "script"]
    assert all(attrs.get("src", "").startswith("/static/web/") for attrs in scripts)
    assert all(attrs.get("type") == "module" for attrs in scripts)
    assert not [(t, a) for t, a in found for name in a if name.startswith("on")]
    assert not [(t, a) for t, a in found if "style" in a]


def test_every_page_script_and_its_imports_are_static_files(signed_in):
    for url, script in [("/", "rooms.js"), ("/rooms/lobby/", "room.js"),
                        ("/notifications/", "notifications.js")]:
        html = signed_in.get(url).content.decode()
        assert f'src="/static/web/{script}"' in html
    for name in ["realtime.js", "common.js", "rooms.js", "room.js", "notifications.js",
                 "app.css", "icon.svg"]:
        path = finders.find(f"web/{name}")
        assert path, name
        if name.endswith(".js"):
            source = open(path, encoding="utf-8").read()
            for imported in re.findall(r'from "\./([\w.]+)"', source):
                assert finders.find(f"web/{imported}"), f"{name} imports {imported}"
            assert "innerHTML" not in source and "insertAdjacentHTML" not in source
            assert "eval(" not in source and "document.write" not in source
