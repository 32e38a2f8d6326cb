"""Pages of the web client. Everything live happens in the browser over the WebSocket routes of
docs/protocol.md; these views only render the shell of each page, behind the login.

Every page gets a strict Content-Security-Policy: scripts, styles and images only from this
origin, WebSockets only to this host, no inline script and no framing. The page never renders
user text as HTML either (Django escapes it here; the scripts use textContent), so the policy is
a second line of defence, not the first.
"""

from functools import wraps

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.urls import reverse_lazy
from django.views.decorators.cache import never_cache

from app.chat import login_guard, services
from app.chat.models import ChatRoom, Notification

LOGIN_URL = reverse_lazy("web:login")


def content_security_policy(request) -> str:
    """The page's policy; WebSockets may go to this host only (ws:// or wss:// as served)."""
    host = request.get_host()
    sockets = f"wss://{host}" if request.is_secure() else f"ws://{host} wss://{host}"
    return "; ".join([
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        f"connect-src 'self' {sockets}",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def secure_page(view):
    """Add the Content-Security-Policy and a same-origin referrer policy to a page."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response.headers["Content-Security-Policy"] = content_security_policy(request)
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return response

    return wrapped


def page(view):
    """A signed-in page: login redirect, no caching of personal pages, the security headers."""
    return secure_page(never_cache(login_required(view, login_url=LOGIN_URL)))


def unread_count(user) -> int:
    """The user's unread notifications, for the bell's first paint (then the socket takes over)."""
    return Notification.objects.filter(user=user, read=False).count()


def visible_rooms(user):
    """Rooms the user may see: public ones and their own private ones (staff see all)."""
    rooms = ChatRoom.objects.all()
    if not user.is_staff:
        rooms = rooms.filter(is_private=False) | rooms.filter(members=user)
    return rooms.distinct().order_by("name")[:500]


def _render(request, template: str, script: str, **context):
    context.update(page_script=f"web/{script}", unread_count=unread_count(request.user))
    return render(request, template, context)


@page
def rooms(request):
    """The room list, a form to create a room and the live-updates panel (topic `rooms`)."""
    return _render(request, "web/rooms.html", "rooms.js", rooms=visible_rooms(request.user))


@page
def room(request, name: str):
    """One room: history, live messages, replies, reactions, typing and the member list."""
    if not services.valid_room_name(name):
        raise Http404("no such room")
    chat_room = ChatRoom.objects.filter(name=name).first()
    if chat_room is None:
        if not settings.CHAT_AUTO_CREATE_ROOMS:
            raise Http404("no such room")
    elif services.access_problem(chat_room, request.user):
        # Same answer as a missing room, like the API: a private room's name is not confirmed.
        raise Http404("no such room")
    return _render(request, "web/room.html", "room.js", room_name=name, room=chat_room)


@page
def notifications(request):
    """The notifications list with mark-read (ws/notifications/)."""
    return _render(request, "web/notifications.html", "notifications.js")


def throttled(view):
    """Answer an attempt the login throttle refused with 429 and Retry-After."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        return login_guard.with_refusal_status(view(request, *args, **kwargs))

    return wrapped


login = secure_page(throttled(auth_views.LoginView.as_view(
    template_name="web/login.html",
    authentication_form=login_guard.ThrottledAuthenticationForm,
    redirect_authenticated_user=True,
    next_page=reverse_lazy("web:rooms"),
)))
# Django's LogoutView takes POST only (with the CSRF token) and is never cached.
logout = secure_page(auth_views.LogoutView.as_view(next_page=reverse_lazy("web:login")))
