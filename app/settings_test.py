"""The tiny test settings: production settings with test-only secrets and fast hashing."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-not-for-any-deployment-0123456789")
os.environ.setdefault("HTTPS", "false")
os.environ.setdefault("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")

from app.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Heartbeats and presence on a test's time scale; tests that need them lower these further.
WS_HEARTBEAT_INTERVAL = 3600
PROCESS_ROLE = "test"  # no canary in unit tests
# Tests send bursts; the limit tests lower these again.
CHAT_MESSAGE_RATE = "1000/10"
WS_CONNECT_RATE = "1000/60"
# A last close is a user_left at once; the leave-grace tests raise it.
CHAT_LEAVE_GRACE = 0
# A fresh checkout has no collectstatic output; WhiteNoise then warned on every test client's
# start ("No directory at .../staticfiles/"). Looking files up per request, as in development,
# serves the same (nothing, without collectstatic) without the scan or the warning.
WHITENOISE_AUTOREFRESH = True
