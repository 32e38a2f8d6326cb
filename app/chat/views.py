"""The JSON HTTP API: session login for non-browser clients, rooms, history, notifications."""

import json

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model, login, logout
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware, get_token
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from app.realtime.consumers.errors import ProtocolError, nul_field

from . import services
from .login_guard import Refusal, authenticate_throttled, refusal_message
from .models import ChatRoom, Notification
from .presence import room_user_ids
from .streams import send_notification_to_user

CATEGORIES = {choice for choice, _ in Notification.CATEGORY_CHOICES}


def error(status: int, code: str, message: str, **extra) -> JsonResponse:
    """A JSON error response with the same `code` vocabulary as the WebSocket protocol."""
    return JsonResponse({"error": code, "message": message, **extra}, status=status)


def body(request: HttpRequest) -> dict:
    """Parse a JSON object body, or raise ProtocolError (`invalid_json`, `invalid_field`)."""
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_json", "send a JSON object")
    name = nul_field(data)
    if name is not None:
        raise ProtocolError("invalid_field", "text may not contain U+0000", field=name)
    return data


def user_dict(user) -> dict:
    """The public description of a user."""
    return {"id": user.pk, "username": user.get_username(), "is_staff": user.is_staff}


def room_dict(room: ChatRoom, online: int | None = None) -> dict:
    """The public description of a room."""
    data = {
        "name": room.name,
        "display_name": room.display_name or room.name,
        "description": room.description,
        "is_private": room.is_private,
        "max_users": room.max_users,
        "last_seq": room.last_seq,
    }
    if online is not None:
        data["online"] = online
    return data


def login_required_json(view):
    """Answer 401 in JSON (not a redirect) to anonymous API calls."""

    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return error(401, "unauthenticated", "log in first")
        return view(request, *args, **kwargs)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


# ---------------------------------------------------------------------------- session
@require_GET
@ensure_csrf_cookie
def csrf(request):
    """Set the CSRF cookie and return the token for the X-CSRFToken header."""
    return JsonResponse({"csrf_token": get_token(request)})


@require_POST
def api_login(request):
    """Log in with {"username", "password"}; sets the session cookie (429 while throttled)."""
    try:
        data = body(request)
    except ProtocolError as problem:
        return error(400, problem.code, str(problem), **problem.extra)
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return error(400, "invalid_field", "username and password are required")
    user = authenticate_throttled(request, username, password)
    if isinstance(user, Refusal):
        response = error(429, "rate_limited", refusal_message(user), retry_after=user.retry_after)
        response["Retry-After"] = str(user.retry_after)
        return response
    if user is None:
        return error(401, "invalid_credentials", "wrong username or password")
    login(request, user)
    return JsonResponse({"user": user_dict(user), "csrf_token": get_token(request)})


@require_POST
def api_logout(request):
    """End the session."""
    logout(request)
    return JsonResponse({"ok": True})


@require_GET
@login_required_json
def me(request):
    """The signed-in user."""
    return JsonResponse({"user": user_dict(request.user)})


# ---------------------------------------------------------------------------- rooms
@require_http_methods(["GET", "POST"])
@login_required_json
def rooms(request):
    """GET lists the rooms the user may join; POST creates one."""
    if request.method == "GET":
        visible = ChatRoom.objects.all()
        if not request.user.is_staff:
            visible = visible.filter(is_private=False) | visible.filter(members=request.user)
        items = [room_dict(r) for r in visible.distinct().order_by("name")[:500]]
        return JsonResponse({"rooms": items})
    try:
        data = body(request)
    except ProtocolError as problem:
        return error(400, problem.code, str(problem), **problem.extra)
    name = data.get("name")
    if not isinstance(name, str) or not services.valid_room_name(name):
        return error(400, "invalid_field", "name: 1-100 of A-Z a-z 0-9 _ . -", field="name")
    fields = {
        "display_name": (data.get("display_name") or name, str, 200),
        "description": (data.get("description") or "", str, 2000),
    }
    values = {}
    for key, (value, kind, limit) in fields.items():
        if not isinstance(value, kind) or len(value) > limit:
            return error(400, "invalid_field", f"{key} is invalid", field=key)
        values[key] = value
    is_private = data.get("is_private", False)
    max_users = data.get("max_users", 100)
    if not isinstance(is_private, bool):
        return error(400, "invalid_field", "is_private must be a boolean", field="is_private")
    if type(max_users) is not int or not 1 <= max_users <= 100000:
        return error(400, "invalid_field", "max_users must be 1-100000", field="max_users")
    try:
        room = ChatRoom.objects.create(
            name=name, is_private=is_private, max_users=max_users, created_by=request.user,
            **values,
        )
    except (IntegrityError, ValidationError):
        return error(409, "exists", "a room with this name exists")
    room.members.add(request.user)
    return JsonResponse({"room": room_dict(room)}, status=201)


def visible_room(request, name: str) -> ChatRoom | None:
    """The room, if the user may see it (private rooms look missing to outsiders)."""
    room = ChatRoom.objects.filter(name=name).first()
    if room is None or services.access_problem(room, request.user):
        return None
    return room


def page_params(request, default: int, most: int) -> tuple[int | None, int]:
    """Parse ?before=<id>&limit=<1-most>, raising ValueError on bad values."""
    before = int(request.GET["before"]) if "before" in request.GET else None
    limit = int(request.GET.get("limit", default))
    if not 1 <= limit <= most:
        raise ValueError(f"limit must be 1-{most}")
    return before, limit


@require_GET
@login_required_json
def room_detail(request, name):
    """One room, with how many users are online in it."""
    room = visible_room(request, name)
    if room is None:
        return error(404, "not_found", "no such room")
    online = len(async_to_sync(room_user_ids)(room.id))
    return JsonResponse({"room": room_dict(room, online)})


@require_GET
@login_required_json
def room_messages(request, name):
    """History, newest first, paginated by message id: ?before=<id>&limit=<1-200>."""
    room = visible_room(request, name)
    if room is None:
        return error(404, "not_found", "no such room")
    try:
        before, limit = page_params(request, 50, 200)
    except ValueError:
        return error(400, "invalid_field", "before must be an id and limit 1-200", field="limit")
    messages = services.history_page(room, before, limit)
    next_before = messages[-1]["message_id"] if len(messages) == limit else None
    return JsonResponse({"messages": messages, "next_before": next_before})


# ---------------------------------------------------------------------------- notifications
@require_GET
@login_required_json
def notifications(request):
    """The user's notifications, newest first: ?before=<id>&limit=<1-100>."""
    try:
        before, limit = page_params(request, 20, 100)
    except ValueError:
        return error(400, "invalid_field", "before must be an id and limit 1-100", field="limit")
    query = Notification.objects.filter(user=request.user)
    if before is not None:
        query = query.filter(pk__lt=before)
    items = [n.as_dict() for n in query.order_by("-id")[:limit]]
    unread = Notification.objects.filter(user=request.user, read=False).count()
    return JsonResponse({"notifications": items, "unread_count": unread})


def _service_caller(request) -> bool:
    token = settings.SERVICE_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return constant_time_compare(header[7:], token)
    return False


@csrf_exempt
@require_POST
def send_notification(request):
    """Staff (session + CSRF) or a service (Bearer SERVICE_TOKEN) sends a notification."""
    if not _service_caller(request):
        if not request.user.is_authenticated:
            return error(401, "unauthenticated", "log in or send the service token")
        if not request.user.is_staff:
            return error(403, "forbidden", "staff only")
        # csrf_exempt only lets bearer-token calls through; sessions still need the token.
        reason = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
        if reason is not None:
            return error(403, "csrf", "CSRF token missing or wrong")
    try:
        data = body(request)
    except ProtocolError as problem:
        return error(400, problem.code, str(problem), **problem.extra)
    user_id, title, message = data.get("user_id"), data.get("title"), data.get("message")
    category = data.get("category", "general")
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        return error(400, "invalid_field", "user_id must be an integer", field="user_id")
    if not isinstance(title, str) or not 1 <= len(title) <= 200:
        return error(400, "invalid_field", "title: 1-200 characters", field="title")
    if not isinstance(message, str) or len(message) > 10000:
        return error(400, "invalid_field", "message: up to 10000 characters", field="message")
    if category not in CATEGORIES:
        return error(400, "invalid_field", f"category: one of {sorted(CATEGORIES)}",
                     field="category")
    if not get_user_model().objects.filter(pk=user_id).exists():
        return error(404, "not_found", "no such user")
    notification = send_notification_to_user(user_id, title, message, category)
    return JsonResponse({"notification": notification.as_dict()}, status=201)
