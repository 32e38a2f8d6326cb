"""Smoke checks run inside a built image: a command, the exit code and the output it must give."""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from deploy.image.engine import Engine
from deploy.image.versions import IMAGE_PYTHON, REPO

ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"


@dataclass(frozen=True)
class Check:
    """One command in a fresh container of the image, and what it must exit with and print."""

    name: str
    args: tuple[str, ...] = ()
    entrypoint: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    exit_code: int = 0
    # A regular expression the combined stdout and stderr must contain.
    expect: str = ""


@dataclass(frozen=True)
class Result:
    """What a check did: passed or not, its exit code, its output and how long it took."""

    check: Check
    passed: bool
    exit_code: int
    output: str
    seconds: float


# Modules every role needs besides the ones entrypoint.sh runs with `python -m`; the daphne
# adapter (zope.interface, Twisted) is imported by app.asgi only when daphne serves it.
ROLE_MODULES = ("app.asgi", "daphne.server", "app.realtime.adapters.daphne", "uvicorn_worker",
                "gunicorn", "psycopg", "redis.asyncio", "channels_redis.core", "websockets",
                "httptools", "hiredis", "whitenoise")


def entrypoint_modules(entrypoint_sh: str) -> list[str]:
    """Return the modules deploy/entrypoint.sh runs with `python -m` (the ws role's server)."""
    return sorted(set(re.findall(r"\bpython -m ([\w.]+)", entrypoint_sh)))


def imports_program(modules: Sequence[str]) -> str:
    """Return a python -c program that sets Django up, imports modules and prints the version."""
    return ("import django; django.setup(); import platform, importlib; "
            f"[importlib.import_module(name) for name in {list(modules)!r}]; "
            "print('imports ok', platform.python_version())")


# Each role's server in turn, answering /healthz inside the container (no network needed):
# the in-memory layer and SQLite, so no Redis or PostgreSQL. The ws role under both servers.
ROLES_SCRIPT = """\
set -u
status=0
for name in ws ws-daphne http; do
  role=${name%%-*}
  server=$([ "$name" = ws-daphne ] && echo daphne || echo uvicorn)
  port=$(case $name in ws) echo 8101;; ws-daphne) echo 8102;; *) echo 8201;; esac)
  WS_SERVER=$server PORT=$port /app/deploy/entrypoint.sh "$role" >"/tmp/$name.log" 2>&1 &
  pid=$!
  if ! python - "$name" "$port" <<'PY'
import sys, time, urllib.request
role, port = sys.argv[1], sys.argv[2]
for _ in range(300):
    try:
        answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
    except OSError:
        time.sleep(0.1)
        continue
    print(f"role {role} /healthz {answer.status}")
    sys.exit(0)
sys.exit(1)
PY
  then echo "role $name never answered /healthz"; cat "/tmp/$name.log"; status=1; fi
  kill -TERM "$pid"; wait "$pid"
done
exit $status
"""


def app_checks(secret_key: str) -> list[Check]:
    """Return the smoke checks of the chanfleet image: imports, every role, the deploy checks."""
    run_env = {"SECRET_KEY": secret_key, "DATABASE_URL": "sqlite:////tmp/smoke.sqlite3"}
    return [
        Check("runs as uid 10001", entrypoint="id", args=("-u",), expect=r"^10001$"),
        Check("imports of every role", entrypoint="python", args=("-c", imports_program(
            [*entrypoint_modules(ENTRYPOINT.read_text(encoding="utf-8")), *ROLE_MODULES])),
              env={"SECRET_KEY": secret_key},
              expect=rf"imports ok {re.escape(IMAGE_PYTHON)}"),
        Check("entrypoint.sh without a role exits 64", entrypoint="/app/deploy/entrypoint.sh",
              exit_code=64, expect=r"usage: .*\{http\|ws\|migrate\|drain\}"),
        Check("entrypoint.sh migrate on SQLite in /tmp", args=("migrate",), env=run_env,
              expect=r"Applying chat\.0001_initial\.\.\. OK"),
        Check("manage.py check --deploy", entrypoint="python",
              args=("manage.py", "check", "--deploy", "--fail-level", "WARNING"),
              env={"SECRET_KEY": secret_key}, expect=r"no issues"),
        Check("ws (uvicorn, daphne) and http roles answer /healthz", entrypoint="bash",
              args=("-c", ROLES_SCRIPT), env={**run_env, "HTTPS": "false"},
              expect=r"role ws /healthz 200\s+role ws-daphne /healthz 200\s+"
                     r"role http /healthz 200"),
    ]


def dummy_secret_key() -> str:
    """Return a throwaway SECRET_KEY long and random enough for check --deploy."""
    return secrets.token_urlsafe(50)


def judge(check: Check, exit_code: int, output: str) -> bool:
    """Return whether an exit code and output are what the check expects."""
    if exit_code != check.exit_code:
        return False
    return not check.expect or re.search(check.expect, output, flags=re.MULTILINE) is not None


def run(engine: Engine, image: str, checks: Sequence[Check], timeout: float = 300) -> list[Result]:
    """Run every check in its own container of image and print one line for each."""
    results = []
    for check in checks:
        command = engine.run_command(image, check.args, entrypoint=check.entrypoint,
                                     env=check.env, user=check.user)
        start = time.monotonic()
        try:
            done = engine.run(command, capture_output=True, text=True, timeout=timeout)
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            code, output = -1, f"timed out after {timeout} s"
        seconds = time.monotonic() - start
        passed = judge(check, code, output)
        results.append(Result(check, passed, code, output, seconds))
        print(f"smoke {'ok  ' if passed else 'FAIL'} {seconds:5.1f} s  {check.name}"
              f" (exit {code})", flush=True)
        if not passed:
            print(output[-4000:], flush=True)
    return results
