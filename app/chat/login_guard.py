"""Login throttling at the three doors: the JSON API, the web login page and the admin.

Each door checks a password through `authenticate_throttled`, which asks the shared counters of
app/realtime/layer/login_throttle.py first: a locked attempt is refused (429 and Retry-After)
without its password being checked, so a lock costs no password hash either.
"""

import logging

from asgiref.sync import async_to_sync
from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import authenticate
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.views.decorators.debug import sensitive_variables

from app.realtime.layer import login_throttle
from app.realtime.layer.login_throttle import BUSY, Refusal

log = logging.getLogger(__name__)


def client_address(request) -> str:
    """The client's address: REMOTE_ADDR, which no request header can set.

    uvicorn (also as gunicorn's worker) takes the client from X-Forwarded-For only when the
    peer is in FORWARDED_ALLOW_IPS, that is nginx, which replaces whatever the client sent;
    Django's ASGI handler puts that client in REMOTE_ADDR. X-Forwarded-For itself is never
    read here: from anyone else it is a claim.
    """
    return request.META.get("REMOTE_ADDR") or "unknown"


@sensitive_variables("password")
def authenticate_throttled(request, username: str, password: str):
    """authenticate() behind the throttle: the user, None for wrong credentials, or a Refusal."""
    address = client_address(request)
    attempt = async_to_sync(login_throttle.begin)(username, address)
    if isinstance(attempt, Refusal):
        log.warning("login refused (%s) from %s for %d s", attempt.scope, address,
                    attempt.retry_after)
        return attempt
    outcome = "void"  # an error while checking is neither a success nor a failure
    try:
        user = authenticate(request, username=username, password=password)
        outcome = "fail" if user is None else "ok"
        return user
    finally:
        for lock in async_to_sync(login_throttle.settle)(attempt, outcome):
            log.warning("login locked (%s) from %s for %g s", lock.scope, address, lock.seconds)


def wait_text(seconds: int) -> str:
    """A wait in words, rounded up: "45 seconds", "2 minutes", "1 hour"."""
    if seconds < 90:
        amount, unit = seconds, "second"
    elif seconds < 90 * 60:
        amount, unit = -(-seconds // 60), "minute"
    else:
        amount, unit = -(-seconds // 3600), "hour"
    return f"{amount} {unit}{'' if amount == 1 else 's'}"


def refusal_message(refusal: Refusal) -> str:
    """What a person is told when a login attempt is refused."""
    if refusal.scope == BUSY:
        return "Too many login attempts at once. Try again in a moment."
    return f"Too many failed login attempts. Try again in {wait_text(refusal.retry_after)}."


def with_refusal_status(response):
    """Answer a login page that refused an attempt with 429 and Retry-After (else unchanged)."""
    context = getattr(response, "context_data", None) or {}
    refusal = getattr(context.get("form"), "refusal", None)
    if refusal is not None:
        response.status_code = 429
        response["Retry-After"] = str(refusal.retry_after)
    return response


class ThrottledLoginForm:
    """AuthenticationForm's check of the password, through the throttle (a form mixin)."""

    refusal: Refusal | None = None

    @sensitive_variables()
    def clean(self):
        """Authenticate, or fail with a `throttled` error naming the wait."""
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is not None and password:
            outcome = authenticate_throttled(self.request, username, password)
            if isinstance(outcome, Refusal):
                self.refusal = outcome
                raise ValidationError(refusal_message(outcome), code="throttled")
            self.user_cache = outcome
            if outcome is None:
                raise self.get_invalid_login_error()
            self.confirm_login_allowed(outcome)
        return self.cleaned_data


class ThrottledAuthenticationForm(ThrottledLoginForm, AuthenticationForm):
    """The web login page's form."""


class ThrottledAdminAuthenticationForm(ThrottledLoginForm, AdminAuthenticationForm):
    """The admin's login form (staff only, as Django's)."""


class ThrottledAdminSite(AdminSite):
    """The admin site (settings: app.web.apps.AdminConfig), its login behind the throttle."""

    login_form = ThrottledAdminAuthenticationForm

    def login(self, request, extra_context=None):
        """Django's admin login, answering a refused attempt with 429 and Retry-After."""
        return with_refusal_status(super().login(request, extra_context))
