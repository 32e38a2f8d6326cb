"""The web page in headless Chromium against the real topology (nginx, uvicorn, gunicorn, Redis).

Two browser contexts are two people (alice and bob). They chat, react, edit and delete and see
each other live; a WebSocket process is drained under them and each page comes back with the
database's messages, no gap and no duplicate; hostile text stays text. Screenshots of the room
and the notifications page are saved under build/screenshots/.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.request

import pytest

from deploy.local.topology import Ports, Topology
from tests.support.browser import (
    SCREENSHOTS,
    ChatWriter,
    PageWatch,
    all_ports,
    busy_ports,
    chromium_path,
    launch,
    require_playwright,
)

pytestmark = [pytest.mark.topology, pytest.mark.slow, pytest.mark.timeout(180)]

PASSWORD = "chanfleet"  # seed_demo's default
OFFSET = 4000
SERVICE_TOKEN = "chanfleet-local-service-token"  # Topology.app_env sets it
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1;alert(1)"> & <b>bold</b>'

sync_api = require_playwright()
expect = sync_api.expect


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    """The whole topology on shifted ports, with the web app's static files collected."""
    chromium_path()  # fail first and clearly when the browser is missing
    ports = Ports().shifted(OFFSET)
    busy = busy_ports(all_ports(ports))
    if busy:
        pytest.fail(f"ports in use, needed by the browser test topology: {busy}", pytrace=False)
    state = tmp_path_factory.mktemp("web")
    static_root = state / "static"
    topo = Topology(state / "run", ports=ports, monitoring=False,
                    env={"STATIC_ROOT": str(static_root)})
    topo.state.mkdir(parents=True, exist_ok=True)
    collected = topo.manage("collectstatic", "--noinput", check=False)
    assert collected.returncode == 0, collected.stderr
    try:
        topo.up(timeout=120)
        yield topo
    finally:
        topo.down()


@pytest.fixture(scope="module")
def browser(topology):
    with sync_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


def login(browser, topology, username: str):
    """A browser context signed in through the login form."""
    context = browser.new_context(base_url=topology.url, viewport={"width": 1280, "height": 800},
                                  locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto("/")
    expect(page).to_have_url(f"{topology.url}/login/?next=/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")
    expect(page).to_have_url(f"{topology.url}/")
    expect(page.get_by_test_id("current-user")).to_have_text(username)
    page.close()
    return context


@pytest.fixture(scope="module")
def alice(browser, topology):
    context = login(browser, topology, "alice")
    yield context
    context.close()


@pytest.fixture(scope="module")
def bob(browser, topology):
    context = login(browser, topology, "bob")
    yield context
    context.close()


@pytest.fixture
def watch():
    """Watches the test's pages for errors, and closes them afterwards: a page left open would
    keep its sockets and reconnect through every later drain."""
    watch = PageWatch()
    yield watch
    for page in watch.pages:
        if not page.is_closed():
            page.close()


def open_page(context, watch: PageWatch, path: str):
    page = context.new_page()
    watch.attach(page)
    page.goto(path)
    return page


def open_room(context, watch: PageWatch, room: str):
    """Open a room page and wait until its history arrived and everything is connected."""
    page = open_page(context, watch, f"/rooms/{room}/")
    expect(page.get_by_test_id("messages")).to_have_attribute("data-synced", "history")
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "connected")
    return page


def new_room() -> str:
    return f"web-{secrets.token_hex(4)}"


def message(page, text: str):
    """The message element holding exactly this text."""
    return page.locator("li[data-message-id]").filter(
        has=page.locator(".msg-text", has_text=text)
    )


def send(page, text: str) -> None:
    box = page.get_by_test_id("message-input")
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def api_messages(context, room: str) -> list[dict]:
    response = context.request.get(f"/api/rooms/{room}/messages?limit=200")
    assert response.ok, response.text()
    return list(reversed(response.json()["messages"]))


def api_last_seq(context, room: str) -> int:
    response = context.request.get(f"/api/rooms/{room}")
    assert response.ok, response.text()
    return response.json()["room"]["last_seq"]


def page_messages(page) -> list[dict]:
    return page.evaluate("window.chanfleet.messages()")


def same_as_database(page, context, room: str) -> tuple[bool, list, list]:
    shown = [(m["id"], "" if m["deleted"] else m["text"], m["deleted"], m["edited"])
             for m in page_messages(page)]
    stored = [(m["message_id"], m["content"], m["is_deleted"], m["is_edited"])
              for m in api_messages(context, room)]
    return shown == stored, shown, stored


# ---------------------------------------------------------------------------- tests
def test_create_a_room_and_others_see_it_in_the_live_updates_panel(alice, bob, watch):
    room = new_room()
    bobs = open_page(bob, watch, "/")
    expect(bobs.get_by_test_id("conn-state")).to_have_attribute("data-state", "connected")
    bobs.wait_for_function("(window.chanfleet.subscribed || []).includes('rooms')")

    alices = open_page(alice, watch, "/")
    alices.get_by_label("Name", exact=True).fill(room)
    alices.get_by_label("Display name").fill(f"Room {room}")
    alices.get_by_test_id("create-room").click()
    expect(alices).to_have_url(re.compile(rf"/rooms/{room}/$"))
    expect(alices.get_by_role("heading", level=1)).to_have_text(f"Room {room}")

    update = bobs.get_by_test_id("live-update").filter(has_text=f"Room {room}")
    expect(update).to_contain_text("created")
    expect(bobs.locator(f'#room-list li[data-room="{room}"] a')).to_have_attribute(
        "href", f"/rooms/{room}/")
    # An invalid name is refused before anything is sent, with the reason next to the form.
    alices.goto("/")
    alices.get_by_label("Name", exact=True).fill("-bad name")
    alices.get_by_test_id("create-room").click()
    expect(alices.locator("#create-status")).to_contain_text("letters, digits")
    expect(alices.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    watch.assert_clean()


def test_two_people_chat_react_reply_edit_and_delete_live(alice, bob, watch):
    room = new_room()
    a = open_room(alice, watch, room)
    b = open_room(bob, watch, room)

    # Presence: each sees the other in the member list.
    expect(a.locator('[data-testid="member"][data-user="bob"]')).to_have_attribute(
        "data-status", "online")
    expect(b.locator('[data-testid="member"][data-user="alice"]')).to_be_visible()

    # Typing: bob types, alice sees it; the message itself ends the indicator.
    b.get_by_test_id("message-input").press_sequentially("Hi al")
    expect(a.get_by_test_id("typing")).to_have_text("bob is typing…")

    send(a, "Hello from alice")
    mine = message(b, "Hello from alice")
    expect(mine).to_have_count(1)
    expect(mine.locator(".msg-user")).to_have_text("alice")
    expect(message(a, "Hello from alice")).to_have_class(re.compile(r"\bmine\b"))

    # Bob replies to it (keyboard only: the reply button, then typing and Enter).
    mine.hover()
    mine.get_by_role("button", name="Reply").click()
    box = b.get_by_test_id("message-input")
    expect(box).to_be_focused()
    box.fill("Hi alice, nice to see you")
    box.press("Enter")
    expect(a.get_by_test_id("typing")).to_have_text("")
    reply = message(a, "Hi alice, nice to see you")
    expect(reply.locator(".msg-reply")).to_have_text("↪ Reply to alice: Hello from alice")

    # Bob reacts with a thumbs up; alice sees the count, then adds her own.
    mine.hover()
    mine.get_by_role("button", name="React").click()
    b.get_by_role("button", name="React with 👍").click()
    thumbs = message(a, "Hello from alice").locator('.reaction[data-emoji="👍"]')
    expect(thumbs).to_have_attribute("data-count", "1")
    expect(thumbs).to_have_attribute("aria-pressed", "false")
    thumbs.click()
    expect(mine.locator('.reaction[data-emoji="👍"]')).to_have_attribute("data-count", "2")
    expect(thumbs).to_have_attribute("aria-pressed", "true")

    # Status: bob is away.
    b.get_by_label("My status").select_option("away")
    expect(a.locator('[data-testid="member"][data-user="bob"]')).to_have_attribute(
        "data-status", "away")

    # Only the author can edit or delete.
    expect(message(b, "Hello from alice").get_by_role("button", name="Edit")).to_be_hidden()
    bobs_reply = message(a, "Hi alice, nice to see you")
    expect(bobs_reply.get_by_role("button", name="Edit")).to_be_hidden()
    send(a, "Second thought, to be deleted")

    # Alice edits her first message; bob sees the new text marked edited.
    first = message(a, "Hello from alice")
    first.hover()
    first.get_by_role("button", name="Edit").click()
    box = a.get_by_test_id("message-input")
    expect(box).to_have_value("Hello from alice")
    box.fill("Hello from alice (edited)")
    box.press("Enter")
    edited = message(b, "Hello from alice (edited)")
    expect(edited).to_have_attribute("data-edited", "true")
    expect(edited.locator(".msg-edited")).to_be_visible()
    # The reply's quote follows the edit.
    expect(message(b, "Hi alice, nice to see you").locator(".msg-reply")).to_have_text(
        "↪ Reply to alice: Hello from alice (edited)")

    # Alice deletes her second message (two clicks: delete, confirm).
    doomed = message(a, "Second thought, to be deleted")
    doomed_id = doomed.get_attribute("data-message-id")
    doomed.hover()
    doomed.get_by_role("button", name="Delete").click()
    doomed.get_by_role("button", name="Confirm delete").click()
    gone = b.locator(f'li[data-message-id="{doomed_id}"]')
    expect(gone).to_have_attribute("data-deleted", "true")
    expect(gone.locator(".msg-text")).to_have_text("This message was deleted.")

    # Both lists equal the database, in order, with the same state.
    for page, context in ((a, alice), (b, bob)):
        ok, shown, stored = same_as_database(page, context, room)
        assert ok, (shown, stored)
    # The README's picture: alice's view while bob is typing.
    b.get_by_test_id("message-input").fill("")
    b.get_by_test_id("message-input").press_sequentially("See you in the lobby")
    expect(a.get_by_test_id("typing")).to_have_text("bob is typing…")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    a.screenshot(path=str(SCREENSHOTS / "room.png"))
    watch.assert_clean()


def test_hostile_text_is_shown_as_text_and_runs_nothing(alice, bob, watch):
    room = new_room()
    a = open_room(alice, watch, room)
    b = open_room(bob, watch, room)
    send(a, XSS)
    for page in (a, b):
        shown = page.locator("li[data-message-id] .msg-text").last
        expect(shown).to_have_text(XSS)
        assert page.locator("#messages img, #messages script, #messages b").count() == 0
        assert page.evaluate("typeof window.__xss") == "undefined"
    # Still text after a reload (history) and in the reply quote.
    b.reload()
    expect(b.get_by_test_id("messages")).to_have_attribute("data-synced", "history")
    target = b.locator("li[data-message-id]").last
    expect(target.locator(".msg-text")).to_have_text(XSS)
    target.hover()
    target.get_by_role("button", name="Reply").click()
    b.get_by_test_id("message-input").fill("quoting that")
    b.get_by_test_id("message-input").press("Enter")
    expect(message(a, "quoting that").locator(".msg-reply")).to_contain_text("<script>")
    a.wait_for_timeout(500)  # give any injected handler a chance to run
    for page in (a, b):
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("#messages img").count() == 0
    watch.assert_clean()


def test_mobile_width_has_no_horizontal_scroll(alice, watch):
    page = alice.new_page()
    page.set_viewport_size({"width": 375, "height": 740})
    watch.attach(page)
    for path in ("/", f"/rooms/{new_room()}/", "/notifications/"):
        page.goto(path)
        expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "connected")
        assert page.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth"), path
    page.get_by_test_id("bell").focus()
    watch.assert_clean()


def test_notifications_bell_counts_live_and_mark_read(alice, topology, watch):
    page = open_page(alice, watch, "/notifications/")
    expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "connected")
    user_id = int(page.locator("body").get_attribute("data-user-id"))
    before = int(page.get_by_test_id("bell").get_attribute("aria-label").split(", ")[1].split()[0])

    def notify(title, message, category="general"):
        request = urllib.request.Request(
            f"{topology.url}/api/notifications/send", method="POST",
            data=json.dumps({"user_id": user_id, "title": title, "message": message,
                             "category": category}).encode(),
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201

    notify("Welcome to chanfleet", "Rooms, presence and live updates are ready.", "system")
    notify("bob mentioned you", "@alice have a look at the <lobby> & say hi", "mention")
    notify("Maintenance tonight", "A WebSocket process restarts at 22:00; you stay connected.",
           "warning")
    expect(page.get_by_test_id("unread-count")).to_have_text(str(before + 3))
    items = page.get_by_test_id("notification")
    expect(items.first).to_contain_text("Maintenance tonight")
    mention = items.filter(has_text="bob mentioned you")
    expect(mention.locator(".notification-message")).to_have_text(
        "@alice have a look at the <lobby> & say hi")
    mention.get_by_test_id("mark-read").click()
    expect(mention).to_have_attribute("data-read", "true")
    expect(page.get_by_test_id("unread-count")).to_have_text(str(before + 2))
    expect(page.get_by_test_id("bell")).to_have_attribute(
        "aria-label", f"Notifications, {before + 2} unread")
    page.reload()
    mention = page.get_by_test_id("notification").filter(has_text="bob mentioned you")
    expect(mention).to_have_attribute("data-read", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "notifications.png"))
    page.get_by_test_id("mark-all-read").click()
    expect(page.get_by_test_id("unread-count")).to_be_hidden()
    expect(page.get_by_test_id("bell")).to_have_attribute("aria-label", "Notifications, 0 unread")
    watch.assert_clean()


def drain(port: int) -> int:
    """Drain one WebSocket process (window 1 s): each client gets `reconnect` and 1012.
    Returns how many sockets it had.

    `exit=0` keeps the drained process up, refusing handshakes with 403, which nginx retries
    on the other process and never counts as a failure; `replace` then restarts it once its
    clients have left. With the default exit, clients reconnecting while it is gone make nginx
    mark it failed (max_fails=1), and since a WebSocket only "completes" when it closes, nginx
    then lets one handshake per fail_timeout through: draining the second process soon after
    answered 502 "no live upstreams" for ~25 s. The page leaves on the `reconnect` frame by
    itself, without waiting for the close (1012) that follows it.
    """
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/internal/drain?window=1&exit=0", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert response.status == 202 and answer["status"] == "draining", answer
    return answer["clients"]


def replace(topology, program: str) -> None:
    """Restart a drained process through supervisor and wait until it is ready."""
    old_pid = topology.pid(program)
    topology.ctl("restart", program)
    assert topology.pid(program) not in (0, old_pid), topology.ctl("status")
    topology.wait_ready(timeout=60, programs=[program])


def wait_connected(pages, timeout: float = 20) -> None:
    for page in pages:
        expect(page.get_by_test_id("conn-state")).to_have_attribute(
            "data-state", "connected", timeout=timeout * 1000)


def admin_session(browser, topology) -> str:
    """Log admin in through the JSON API (with CSRF) and return the session cookie."""
    context = browser.new_context(base_url=topology.url)
    try:
        token = context.request.get("/api/csrf").json()["csrf_token"]
        response = context.request.post("/api/login", headers={"X-CSRFToken": token},
                                        data={"username": "admin", "password": PASSWORD})
        assert response.ok, response.text()
        return next(c["value"] for c in context.cookies() if c["name"] == "sessionid")
    finally:
        context.close()


def test_drain_moves_both_pages_without_gap_or_duplicate(alice, bob, browser, topology, watch):
    room = new_room()
    pages = {"alice": (open_room(alice, watch, room), alice),
             "bob": (open_room(bob, watch, room), bob)}
    a, b = pages["alice"][0], pages["bob"][0]
    send(a, "Before the drain, from alice")
    send(b, "Before the drain, from bob")
    expect(a.locator("li[data-message-id]")).to_have_count(2)
    expect(b.locator("li[data-message-id]")).to_have_count(2)
    marks = {name: page.evaluate("window.chanfleet.stateLog.length")
             for name, (page, _) in pages.items()}

    # Someone else keeps changing the room while the pages are moved: messages, edits,
    # reactions and deletions the pages must receive live or by resume, exactly once.
    writer = ChatWriter(topology.ws_url, topology.url, admin_session(browser, topology), room,
                        actions=22, interval=0.6)
    writer.start()
    # Drain each WebSocket process in turn: whichever one a page is on (nginx hashes the
    # session cookie), it is told to reconnect, waits retry_after_ms and resumes elsewhere.
    drained = []
    for program, port in zip(topology.ws_programs(), topology.ports.ws, strict=True):
        started = time.monotonic()
        drained.append(drain(topology.ports.internal(port)))
        # Clients wait retry_after_ms (0-3 s) after the 1 s window, then resume elsewhere.
        time.sleep(max(0.0, started + 4.5 - time.monotonic()))
        wait_connected([a, b])
        replace(topology, program)
    # Each page holds a chat and a notifications socket; all of them were on a drained process.
    assert sum(drained) >= 4, drained
    writer.join(timeout=90)
    assert not writer.is_alive()
    assert writer.done == 22, writer.failures

    wait_connected([a, b])
    for name, (page, _) in pages.items():
        states = [entry["state"] for entry in
                  page.evaluate("window.chanfleet.stateLog")[marks[name]:]]
        assert "reconnecting" in states, (name, states)
        assert page.evaluate("window.chanfleet.room.connection.drains") >= 1, name
        assert states[-1] == "connected", (name, states)
    # Live traffic flows again in both directions.
    send(a, "After the drain, from alice")
    send(b, "After the drain, from bob")
    expect(message(b, "After the drain, from alice")).to_have_count(1)
    expect(message(a, "After the drain, from bob")).to_have_count(1)

    last_seq = api_last_seq(alice, room)
    for name, (page, context) in pages.items():
        page.wait_for_function(f"window.chanfleet.room.position === {last_seq}")
        ok, shown, stored = same_as_database(page, context, room)
        assert ok, (name, shown, stored)
        client = page.evaluate("""() => {
            const room = window.chanfleet.room;
            return {applied: room.applied, syncs: room.syncs, gaps: room.gaps};
        }""")
        start = client["syncs"][0]["seq"]
        assert client["syncs"][0]["mode"] == "history"
        # Every event after the first history, each exactly once and in order: no gap, no dup.
        assert client["applied"] == list(range(start + 1, last_seq + 1)), (name, client)
        assert any(sync["mode"] == "resume" for sync in client["syncs"]), (name, client)
        ids = [m["id"] for m in page_messages(page)]
        assert len(ids) == len(set(ids))
    watch.assert_clean()


REALTIME_RULES = """async () => {
  const rt = await import("/static/web/realtime.js");
  const sockets = [];
  class FakeSocket {
    constructor(url) { this.url = url; this.readyState = 0; this.sent = []; sockets.push(this); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close() { this.readyState = 3; }
    open() { this.readyState = 1; this.onopen({}); }
    frame(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
    shut(code, reason = "") {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason });
    }
  }
  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const out = {};
  const options = { WebSocketImpl: FakeSocket };

  // Heartbeat: answered with a pong carrying the same ts; the first frame means connected.
  const plain = new rt.Connection("/ws/notifications/", options).start();
  out.firstState = plain.state;
  sockets[0].open();
  out.afterOpen = plain.state;
  sockets[0].frame({ type: "heartbeat", ts: 1234.5 });
  out.pong = sockets[0].sent[0];
  out.connected = plain.state;
  plain.stop();

  // 4001, 4003, 4004: offline for good, never retried.
  out.final = {};
  const beforeRefusals = sockets.length;
  const refused = [4001, 4003, 4004].map((code) => {
    const connection = new rt.Connection("/ws/chat/x/", options).start();
    sockets.at(-1).open();
    sockets.at(-1).shut(code, "refused");
    return [code, connection];
  });
  await wait(1200); // longer than any first backoff
  out.refusalSockets = sockets.length - beforeRefusals; // 3: none of them was retried
  for (const [code, connection] of refused) {
    out.final[code] = { state: connection.state, final: connection.detail.final === true };
    connection.stop();
  }

  // Any other close: reconnecting, then a new socket after a jittered backoff.
  const flaky = new rt.Connection("/ws/live-updates/", options).start();
  sockets.at(-1).open();
  sockets.at(-1).frame({ type: "subscribed", topic: "rooms" });
  const count = sockets.length;
  sockets.at(-1).shut(1006);
  out.flaky = { state: flaky.state, immediate: sockets.length - count };
  await wait(600);
  out.flaky.later = sockets.length - count;
  flaky.stop();

  // The chat room: history position, live events, duplicates, a gap, resume, then a drain.
  const room = new rt.RoomClient("lobby", options).start();
  const events = [];
  room.addEventListener("event", (e) => events.push(e.detail.seq ?? `h${e.detail.message_id}`));
  let s = sockets.at(-1);
  out.firstUrl = s.url;
  s.open();
  s.frame({ type: "connected", room: "lobby", user: "alice", user_id: 1, heartbeat_interval: 25 });
  s.frame({ type: "user_list", room: "lobby", users: [] });
  s.frame({ type: "message", message_id: 9, content: "old", history: true });
  s.frame({ type: "history_end", room: "lobby", seq: 5 });
  s.frame({ type: "reaction", seq: 6, message_id: 9, emoji: "x", action: "add" });
  s.frame({ type: "reaction", seq: 6, message_id: 9, emoji: "x", action: "add" });
  s.frame({ type: "message", seq: 5, message_id: 9, content: "old" });
  const beforeGap = sockets.length;
  s.frame({ type: "message", seq: 8, message_id: 11, content: "after a gap" });
  await wait(50);
  out.gapReconnected = sockets.length - beforeGap;
  s = sockets.at(-1);
  out.resumeUrl = s.url;
  s.open();
  s.frame({ type: "connected", room: "lobby", user: "alice", user_id: 1, heartbeat_interval: 25 });
  s.frame({ type: "message", seq: 7, message_id: 10, content: "a", replay: true });
  s.frame({ type: "message", seq: 8, message_id: 11, content: "b", replay: true });
  s.frame({ type: "resume_end", room: "lobby", seq: 8, replayed: 2 });
  const beforeDrain = sockets.length;
  s.frame({ type: "reconnect", reason: "drain", retry_after_ms: 400, last_seq: 8 });
  out.drainState = room.state; // left at once, without waiting for the server's close
  out.drainClosedByClient = s.readyState === 3;
  s.shut(1012, "service restart");
  await wait(150);
  out.drainEarly = sockets.length - beforeDrain;
  await wait(600);
  out.drainLater = sockets.length - beforeDrain;
  out.drainUrl = sockets.at(-1).url;
  out.events = events;
  out.applied = room.applied;
  out.dropped = room.dropped;
  out.gaps = room.gaps;
  room.stop();

  out.backoff = [0, 1, 2, 3, 10, 30].map((attempt) => [
    rt.backoffDelay(attempt, { random: () => 0 }), rt.backoffDelay(attempt, { random: () => 1 }),
  ]);
  return out;
}"""


def test_realtime_module_follows_the_protocol_rules(alice, watch):
    """realtime.js against a scripted fake socket: heartbeats, close codes, seq, resume, drain."""
    page = open_page(alice, watch, "/notifications/")
    out = page.evaluate(REALTIME_RULES)
    assert out["firstState"] == "connecting" and out["afterOpen"] == "connecting"
    assert out["pong"] == {"type": "pong", "ts": 1234.5}
    assert out["connected"] == "connected"
    assert out["refusalSockets"] == 3
    for code in ("4001", "4003", "4004"):
        assert out["final"][code] == {"state": "offline", "final": True}, code
    assert out["flaky"] == {"state": "reconnecting", "immediate": 0, "later": 1}
    assert out["firstUrl"].endswith("/ws/chat/lobby/")
    assert out["gapReconnected"] == 1 and out["gaps"] == 1
    assert out["resumeUrl"].endswith("/ws/chat/lobby/?last_seq=6")
    assert out["events"] == ["h9", 6, 7, 8]
    assert out["applied"] == [6, 7, 8] and out["dropped"] == 2
    assert out["drainState"] == "reconnecting" and out["drainClosedByClient"]
    assert out["drainEarly"] == 0 and out["drainLater"] == 1
    assert out["drainUrl"].endswith("?last_seq=8")
    assert out["backoff"] == [[250, 500], [500, 1000], [1000, 2000], [2000, 4000],
                              [15000, 30000], [15000, 30000]]
    watch.assert_clean()
