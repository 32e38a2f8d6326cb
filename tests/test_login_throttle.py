"""Login throttling across the whole topology: two gunicorn processes, one Redis, nginx.

Attempts go to each gunicorn process directly from 127.0.0.1 (trusted, as nginx is, so its
X-Forwarded-For names the client), through nginx from other loopback addresses (nginx
replaces any X-Forwarded-For with the real peer), and straight from an untrusted peer.
"""

import http.client
import json
import re
import signal
import time
import urllib.parse
from http.cookies import SimpleCookie

import pytest

from deploy.local.topology import Ports
from tests.support.topologies import busy_ports, running

pytestmark = [pytest.mark.topology, pytest.mark.timeout(600)]

PORT_OFFSET = 11000
PASSWORD = "chanfleet"
USERS = ["carol", "dave", "erin", "frank", "grace", "henry", "ivan"]
# Three failures lock a user name at an address; locks long enough to outlast each test.
ENV = {
    "LOGIN_USER_FAILURES": "3",
    "LOGIN_ADDRESS_FAILURES": "10",
    "LOGIN_USER_EVERYWHERE_FAILURES": "30",
    "LOGIN_LOCK_SECONDS": "300",
}


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    """The local topology on this test's own ports, with a strict throttle and a few users."""
    ports = Ports().shifted(PORT_OFFSET)
    busy = busy_ports(ports)
    assert not busy, f"ports of the login-throttle topology are taken: {busy}"
    with running(tmp_path_factory.mktemp("login-throttle") / "run", ports, ENV, USERS,
                 timeout=180, password=PASSWORD) as top:
        yield top


class Browser:
    """One client: a source address, cookies, and the CSRF token, over one server port."""

    def __init__(self, port: int, source: str = "127.0.0.1", forwarded_for: str | None = None):
        self.port, self.source, self.forwarded_for = port, source, forwarded_for
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        """One request on a new connection from the source address; (status, headers, body)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120,
                                                source_address=(self.source, 0))
        sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.forwarded_for:
            sent["X-Forwarded-For"] = self.forwarded_for
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
            for header in response.headers.get_all("Set-Cookie") or []:
                self.cookies.update({k: m.value for k, m in SimpleCookie(header).items()})
            return response.status, dict(response.headers), data
        finally:
            connection.close()

    def api_login(self, username: str, password: str) -> tuple[int, dict, dict]:
        """GET /api/csrf, then POST /api/login; (status, headers, JSON body)."""
        _, _, data = self.request("GET", "/api/csrf")
        token = json.loads(data)["csrf_token"]
        status, headers, data = self.request(
            "POST", "/api/login", json.dumps({"username": username, "password": password}).encode(),
            {"Content-Type": "application/json", "X-CSRFToken": token})
        return status, headers, json.loads(data)

    def form_login(self, path: str, username: str, password: str) -> tuple[int, dict, str]:
        """GET a login page, then POST its form with the CSRF token; (status, headers, page)."""
        _, _, page = self.request("GET", path)
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": username,
                                       "password": password}).encode()
        status, headers, page = self.request(
            "POST", path, form, {"Content-Type": "application/x-www-form-urlencoded"})
        return status, headers, page.decode()


def test_failures_at_either_process_add_up(topology):
    """Three wrong passwords spread over both gunicorn processes lock carol on both."""
    one, two = (Browser(p, forwarded_for="203.0.113.10") for p in topology.ports.http)
    statuses = [b.api_login("carol", "wrong")[0] for b in (one, two, one)]
    assert statuses == [401, 401, 401]
    for browser in (two, one):
        status, headers, body = browser.api_login("carol", PASSWORD)
        assert (status, body["error"]) == (429, "rate_limited")
        assert 1 <= int(headers["Retry-After"]) <= 300 and body["retry_after"] >= 1


def test_the_owner_logs_in_from_her_own_address(topology):
    """dave locked at a guesser's address still logs in from his; the guesser stays locked."""
    one, two = (Browser(p, forwarded_for="203.0.113.20") for p in topology.ports.http)
    for browser in (one, two, one):
        browser.api_login("dave", "wrong")
    home = Browser(topology.ports.http[1], forwarded_for="198.51.100.20")
    assert home.api_login("dave", PASSWORD)[0] == 200
    assert two.api_login("dave", PASSWORD)[0] == 429


def test_a_success_resets_the_count(topology):
    """Two failures, a success, two failures, on alternating processes: never locked."""
    one, two = (Browser(p, forwarded_for="203.0.113.30") for p in topology.ports.http)
    tries = [(one, "wrong"), (two, "wrong"), (one, PASSWORD), (two, "wrong"), (one, "wrong"),
             (two, PASSWORD)]
    assert [b.api_login("erin", p)[0] for b, p in tries] == [401, 401, 200, 401, 401, 200]


def test_through_nginx_the_real_address_counts_not_a_forged_one(topology):
    """Guesses naming a new X-Forwarded-For each time still lock their real address."""
    for n in range(3):
        guesser = Browser(topology.ports.nginx, "127.0.0.5", forwarded_for=f"10.1.2.{n}")
        assert guesser.api_login("frank", "wrong")[0] == 401
    guesser = Browser(topology.ports.nginx, "127.0.0.5", forwarded_for="10.1.2.99")
    status, headers, _ = guesser.api_login("frank", PASSWORD)
    assert status == 429 and "Retry-After" in headers
    assert Browser(topology.ports.nginx, "127.0.0.6").api_login("frank", PASSWORD)[0] == 200


def test_an_untrusted_peer_cannot_name_its_address(topology):
    """Straight to gunicorn from a peer outside FORWARDED_ALLOW_IPS, X-Forwarded-For is ignored."""
    port = topology.ports.http[0]
    for n in range(3):
        Browser(port, "127.0.0.7", forwarded_for=f"10.3.4.{n}").api_login("grace", "wrong")
    assert Browser(port, "127.0.0.7", forwarded_for="10.3.4.99").api_login(
        "grace", PASSWORD)[0] == 429


def test_the_web_login_page_and_the_admin_say_why_with_429(topology):
    """Through nginx, both login pages answer a locked attempt 429 with the wait in words."""
    page = Browser(topology.ports.nginx, "127.0.0.8")
    for _ in range(3):
        assert page.form_login("/login/", "henry", "wrong")[0] == 200
    status, headers, text = page.form_login("/login/", "henry", PASSWORD)
    assert status == 429 and "Retry-After" in headers
    assert "Too many failed login attempts. Try again in" in text

    admin = Browser(topology.ports.nginx, "127.0.0.9")
    for _ in range(3):
        assert admin.form_login("/admin/login/", "admin", "wrong")[0] == 200
    status, headers, text = admin.form_login("/admin/login/", "admin", PASSWORD)
    assert status == 429 and "Retry-After" in headers
    assert "Too many failed login attempts. Try again in" in text


def test_logins_go_on_through_a_redis_failover(topology):
    """With the Redis master killed, logins still answer (counted in each process meanwhile),
    and once Sentinel has promoted the replica the shared counts lock again."""
    old_master = topology.redis_master()
    topology.kill(topology.redis_program(old_master[1]), signal.SIGKILL)
    killed_at = time.monotonic()
    browser = Browser(topology.ports.nginx, "127.0.0.10")
    status = browser.api_login("ivan", PASSWORD)[0]
    answered = time.monotonic() - killed_at
    print(f"\nlogin answered {status} {answered:.2f}s after the Redis master's kill -9")
    assert status == 200
    topology.wait_new_master(old_master, 60)
    one, two = (Browser(p, forwarded_for="203.0.113.40") for p in topology.ports.http)
    statuses = [b.api_login("ivan", "wrong")[0] for b in (one, two, one)]
    assert statuses == [401, 401, 401]
    assert two.api_login("ivan", PASSWORD)[0] == 429
    topology.wait_ready(90)
