"""Headless Chromium (Debian's package) driven by Playwright, for the web page's browser tests.

Playwright never downloads a browser here (`playwright install` is not used): it launches
/usr/bin/chromium from Debian's `chromium` package, which `make test` installs with apt.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "build" / "screenshots"


def chromium_path() -> str:
    """Debian's Chromium, or fail (never skip) with how to get it."""
    override = os.environ.get("CHROMIUM")
    for candidate in ([override] if override else []) + list(CHROMIUM_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium")
    if found:
        return found
    pytest.fail(
        "Chromium is not installed: the browser tests drive Debian's /usr/bin/chromium. "
        "`make test` installs it (apt-get install -y chromium, as root); "
        "Playwright's own browser download is not used.",
        pytrace=False,
    )


def require_playwright():
    """Import Playwright's sync API, or fail with how to install it."""
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: `make venv` installs it from requirements-dev.lock "
            "(pip install playwright; never `playwright install`).",
            pytrace=False,
        )
    return sync_api


def launch(playwright):
    """Launch headless Chromium from Debian's package."""
    return playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
    )


def busy_ports(ports: Iterable[int]) -> list[int]:
    """Ports on 127.0.0.1 that something listens on (TIME_WAIT leftovers do not count)."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Like the servers themselves: a closed connection's TIME_WAIT does not block them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def all_ports(plan) -> list[int]:
    """Every port of a deploy.local Ports plan."""
    ports = []
    for value in vars(plan).values():
        ports.extend(value if isinstance(value, tuple) else [value])
    return ports


@dataclass
class PageWatch:
    """What a page reported that a test must not ignore: script errors, CSP, dialogs."""

    errors: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    pages: list = field(default_factory=list)

    def attach(self, page) -> None:
        """Listen on a page; dialogs are recorded and dismissed."""
        self.pages.append(page)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

        def console(message):
            if message.type == "error" and "Content Security Policy" in message.text:
                self.csp.append(message.text)

        page.on("console", console)

        def dialog(d):
            self.dialogs.append(f"{d.type}: {d.message}")
            d.dismiss()

        page.on("dialog", dialog)

    def assert_clean(self) -> None:
        """No uncaught script error, no CSP violation, no dialog."""
        assert not self.errors, f"page errors: {self.errors}"
        assert not self.csp, f"CSP violations: {self.csp}"
        assert not self.dialogs, f"dialogs opened: {self.dialogs}"


class ChatWriter(threading.Thread):
    """A second, independent client (the websockets library) changing a room during a drain.

    It posts messages and, in between, edits, reacts to and deletes its own messages, so a
    resume has every kind of room event to replay. It keeps going through drains: when its
    socket closes it reconnects. What it managed to do does not matter to the tests; the
    database is the reference. One action per `interval` stays under the message rate limit.
    """

    PLAN = ("message", "message", "edit", "message", "reaction", "message", "delete")

    def __init__(self, ws_url: str, origin: str, session: str, room: str, actions: int,
                 interval: float = 0.6, prefix: str = "writer"):
        super().__init__(daemon=True)
        self.url = f"{ws_url}/ws/chat/{room}/"
        self.origin = origin
        self.session = session
        self.actions = actions
        self.interval = interval
        self.prefix = prefix
        self.done = 0
        self.reconnects = 0
        self.mine: list[int] = []  # message ids of this writer's messages, oldest first
        self.errors: list[dict] = []
        self.failures: list[str] = []

    def frame(self, step: int) -> dict | None:
        kind = self.PLAN[step % len(self.PLAN)]
        if kind == "message" or not self.mine:
            return {"type": "message", "message": f"{self.prefix} {step}"}
        if kind == "edit":
            return {"type": "edit", "message_id": self.mine[-1],
                    "content": f"{self.prefix} {step} (edited)"}
        if kind == "reaction":
            return {"type": "reaction", "message_id": self.mine[-1], "emoji": "🎉"}
        return {"type": "delete", "message_id": self.mine.pop(0)}

    def read_until(self, ws, end: float) -> None:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                frame = json.loads(ws.recv(timeout=left))
            except TimeoutError:
                return
            if frame.get("type") == "heartbeat":
                ws.send(json.dumps({"type": "pong", "ts": frame["ts"]}))
            elif frame.get("type") == "message" and str(frame.get("client_id", "")).startswith(
                "w"
            ):
                self.mine.append(frame["message_id"])
            elif frame.get("type") == "error":
                self.errors.append(frame)

    def run(self) -> None:
        from websockets.sync.client import connect

        deadline = time.monotonic() + 90
        step = 0
        while step < self.actions and time.monotonic() < deadline:
            try:
                with connect(self.url, origin=self.origin, open_timeout=5,
                             additional_headers={"Cookie": f"sessionid={self.session}"}) as ws:
                    self.read_until(ws, time.monotonic() + 0.3)  # welcome, users, history
                    while step < self.actions:
                        frame = self.frame(step)
                        ws.send(json.dumps({**frame, "id": f"w{step}"}))
                        step += 1
                        self.done += 1
                        self.read_until(ws, time.monotonic() + self.interval)
            except Exception as error:  # closed by a drain, or refused while draining
                self.failures.append(repr(error))
                self.reconnects += 1
                time.sleep(0.3)
