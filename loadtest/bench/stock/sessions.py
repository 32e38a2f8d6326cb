"""Create the stock project's database, N users and one signed-in session each.

    DJANGO_SETTINGS_MODULE=loadtest.bench.stock.settings python -m loadtest.bench.stock.sessions N

Prints a JSON list of session keys. The sessions are exactly what `django.contrib.auth.login`
stores (user id, backend, session hash) in the default database-backed session engine.
"""

import json
import os
import sys


def main(count: int) -> list[str]:
    """Migrate, create users bench0001.., and return one session key per user."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loadtest.bench.stock.settings")
    import django

    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    names = [f"bench{i:04d}" for i in range(1, count + 1)]
    existing = set(User.objects.filter(username__in=names).values_list("username", flat=True))
    User.objects.bulk_create(
        [User(username=n, password="!unusable") for n in names if n not in existing]
    )
    keys = []
    for user in User.objects.filter(username__in=names).order_by("username"):
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys.append(session.session_key)
    return keys


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
