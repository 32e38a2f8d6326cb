"""The monitoring bundle against the live topology: a real Prometheus scraping real processes.

The acceptance of the observability work. After a burst of real traffic every dashboard and
alert expression is accepted by Prometheus and every dashboard expression has data; a gunicorn
process's /metrics adds up its workers exactly; a Redis failover, a failing canary and a drain
show up in the metrics (in Prometheus and in the processes' own /metrics) and in /readyz.
Measured figures are printed: run with -s to see them.

The topology runs on ports shifted by 2000 (next to a developer's `make run`), with the timings
of ENV, and its Prometheus is reloaded to scrape and evaluate every second instead of 5 s.
"""

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests
import websockets
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.topology import Ports, Topology
from monitoring.alerts_source import JOBS
from tests.support import prometheus as live
from tests.support.chat_client import ChatClient, login, spread_over

pytestmark = [pytest.mark.topology, pytest.mark.timeout(240)]

ENV = {
    # pytest-django exports DJANGO_SETTINGS_MODULE=app.settings_test, which the topology's
    # processes would inherit (heartbeat every hour, PROCESS_ROLE "test": no canary).
    "DJANGO_SETTINGS_MODULE": "app.settings",
    "WS_HEARTBEAT_INTERVAL": "2",
    "CANARY_INTERVAL": "1",
    "CANARY_FAIL_AFTER": "4",
    "DRAIN_WINDOW": "2",
    "PRESENCE_TTL": "6",
    "GROUP_EXPIRY": "10",
    "CHAT_MESSAGE_RATE": "100000/10",
    "WS_CONNECT_RATE": "100000/60",
    "WS_FRAME_RATE": "100000/10",
}
SERVICE_TOKEN = "chanfleet-local-service-token"
USERS = ["alice", "bob", "admin"]  # seeded by `manage.py seed_demo`, password "chanfleet"
SCRAPE_INTERVAL = "1s"  # monitoring/prometheus.yml says 5s; the test reloads Prometheus with 1s
FREEZE_SECONDS = 8  # how long the readiness test stops Redis (CANARY_FAIL_AFTER is 4 s)

# Dashboard panels ("<dashboard uid>: <panel title>") allowed to return no data, and why.
# None: every panel has data after the traffic below, or is written to show 0 (5xx ratio).
ALLOWED_EMPTY: dict[str, str] = {}
# Panels whose data may be NaN (a quantile or mean of a histogram without observations in its
# window), and why. Every other panel must show a number.
ALLOWED_NAN: dict[str, str] = {
    "chanfleet-channel-layer: Outage p99": "no channel layer outage before the failover test",
    "chanfleet-channel-layer: Outage duration": "no channel layer outage before the failover test",
}


# ---------------------------------------------------------------------------- helpers
def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _plan_free(ports: Ports) -> bool:
    flat = [p for v in vars(ports).values() for p in (v if isinstance(v, tuple) else (v,))]
    return all(_port_free(p) for p in flat)


def scrape(port: int) -> list[tuple[str, dict, float]]:
    """(sample name, labels, value) of every sample a process's /metrics exposes."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(samples: list[tuple[str, dict, float]], name: str, **labels: str) -> float:
    """Sum of the samples of one name whose labels include the given ones."""
    return sum(
        v for n, got, v in samples
        if n == name and all(got.get(k) == want for k, want in labels.items())
    )


def master_addresses(samples: list[tuple[str, dict, float]]) -> set[str]:
    """The addresses of chanfleet_redis_master_info in one process's samples."""
    return {got.get("address") for n, got, _ in samples if n == "chanfleet_redis_master_info"}


def by_instance(top: Topology, expr: str) -> dict[str, float]:
    """{instance: value} of an instant query."""
    return {
        s["metric"].get("instance", ""): float(s["value"][1])
        for s in live.query(top.prometheus_url, expr)
    }


def readyz(port: int) -> tuple[int, dict]:
    """(status, checks) of a process's /readyz; status 0 when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=6) as response:
            return response.status, json.loads(response.read())["checks"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()).get("checks", {})
    except OSError:
        return 0, {}


def wait_until(check, timeout: float, what: str, interval: float = 0.2) -> float:
    """Call check() until it is true; return the seconds it took, fail after timeout."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


async def eventually(check, timeout: float, what: str, interval: float = 0.2) -> float:
    """wait_until for async tests: check() (blocking) runs in a thread, the loop keeps going."""
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


def ws_instances(top: Topology) -> list[str]:
    """The Prometheus `instance` of each WebSocket process."""
    return [f"127.0.0.1:{port}" for port in top.ports.ws]


def scrape_faster(top: Topology) -> None:
    """Make the topology's Prometheus scrape and evaluate every SCRAPE_INTERVAL."""
    live.scrape_every(top, SCRAPE_INTERVAL)


def replica_online(top: Topology) -> bool:
    """Whether the current Redis master has a replica with an online link."""
    host, port = top.redis_master()
    try:
        info = redis.Redis(host=host, port=port, password=top.redis.password,
                           socket_timeout=1).info("replication")
    except redis.RedisError:
        return False
    return info.get("role") == "master" and info.get("slave0", {}).get("state") == "online"


async def frame(client: ChatClient, predicate, timeout: float = 10) -> dict:
    """The first frame a chat client received that matches predicate (waiting for it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = next((f for f in client.frames if predicate(f)), None)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            closes = [c.close_code for c in client.connections]
            raise AssertionError(f"{client.username} got no matching frame in {timeout}s "
                                 f"(close codes {closes}, last frames {client.frames[-5:]})")
        await asyncio.sleep(0.05)


async def chat_clients(top: Topology, room: str, at_least: int = 4) -> list[ChatClient]:
    """Started chat clients of a room, at least one on each WebSocket process."""
    clients = [ChatClient(top.url, top.ws_url, USERS[n % len(USERS)], room)
               for n in range(at_least)]
    return await spread_over(clients, len(top.ports.ws))


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    """The local topology with monitoring, on ports shifted by 2000 (or a free fallback)."""
    ports = next((Ports().shifted(o) for o in (2000, 2500, 4500) if _plan_free(Ports().shifted(o))),
                 None)
    if ports is None:
        pytest.fail("no free port plan (offsets 2000, 2500, 4500 are all in use)")
    top = Topology(tmp_path_factory.mktemp("monitoring") / "run", ports=ports, env=ENV,
                   monitoring=True)
    try:
        top.up(timeout=120)
        scrape_faster(top)
        live.wait_for_targets_up(top.prometheus_url, list(JOBS.values()), timeout=60)
        yield top
    finally:
        top.down()


async def _burst(top: Topology) -> dict:
    """Real traffic through nginx: chat on both processes, errors, notifications, HTTP API."""
    clients = await chat_clients(top, "observability")
    a = clients[0]
    b = next(c for c in clients if c.node != a.node)
    try:
        for n, chat in enumerate(clients):
            await chat.send({"type": "message", "message": f"hello {n}", "id": f"m{n}"})
            await chat.send({"type": "ping", "id": f"p{n}"})
        await a.send({"type": "typing", "is_typing": True})
        await a.send({"type": "no_such_type"})  # answered with an error frame (unknown_type)
        first = await frame(b, lambda f: f["type"] == "message" and f.get("client_id") == "m0")
        await b.send({"type": "reaction", "message_id": first["message_id"], "emoji": "👀"})
        await frame(a, lambda f: f["type"] == "reaction")
        await frame(a, lambda f: f["type"] == "error" and f["code"] == "unknown_type")
        for chat in (a, b):  # heartbeats answered: pongs and round-trip times on both
            await frame(chat, lambda f: f["type"] == "heartbeat")
        # A handshake without a session: accepted, then closed with 4001 (a refusal).
        async with websockets.connect(f"{top.ws_url}/ws/chat/observability/",
                                      additional_headers={"Origin": top.url}) as anonymous:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(anonymous.recv(), 10)
            assert anonymous.close_code == 4001
        notified = await _notification(top)
        statuses = await asyncio.to_thread(_http_requests, top)
        await asyncio.sleep(0.5)  # the last pongs reach the server
    finally:
        await asyncio.gather(*(c.stop() for c in clients))
    return {"clients": len(clients), "notification": notified, "http": statuses}


async def _notification(top: Topology) -> dict:
    """POST a notification with the service token; alice's notifications socket receives it."""
    cookie = await asyncio.to_thread(login, top.url, "alice")
    me = await asyncio.to_thread(
        requests.get, f"{top.url}/api/me", cookies={"sessionid": cookie}, timeout=10)
    async with websockets.connect(
        f"{top.ws_url}/ws/notifications/",
        additional_headers={"Cookie": f"sessionid={cookie}", "Origin": top.url},
    ) as socket_:
        assert json.loads(await asyncio.wait_for(socket_.recv(), 10))["type"] == "count_update"
        response = await asyncio.to_thread(
            requests.post, f"{top.url}/api/notifications/send",
            json={"user_id": me.json()["user"]["id"], "title": "monitoring", "message": "hi"},
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}, timeout=10,
        )
        assert response.status_code == 201, response.text
        while True:
            received = json.loads(await asyncio.wait_for(socket_.recv(), 10))
            if received["type"] == "notification":
                return received


def _http_requests(top: Topology) -> dict[str, int]:
    """API requests through nginx, 2xx and 4xx; returns {path: status}."""
    cookies = {"sessionid": login(top.url, "bob")}
    statuses = {
        path: requests.get(f"{top.url}{path}", cookies=cookies, timeout=10).status_code
        for path in ("/api/rooms", "/api/rooms/observability",
                     "/api/rooms/observability/messages", "/api/rooms/no-such-room-here")
    }
    statuses["/api/me (anonymous)"] = requests.get(f"{top.url}/api/me", timeout=10).status_code
    assert statuses == {"/api/rooms": 200, "/api/rooms/observability": 200,
                        "/api/rooms/observability/messages": 200,
                        "/api/rooms/no-such-room-here": 404, "/api/me (anonymous)": 401}
    return statuses


@pytest.fixture(scope="module")
def traffic(topology):
    """A short burst of real traffic, run once for the module."""
    return asyncio.run(_burst(topology))


# ---------------------------------------------------------------------------- expressions
def test_every_dashboard_and_alert_expression_is_accepted_by_the_live_prometheus(topology):
    """The topology's Prometheus accepts every dashboard and alert expression."""
    rejected = []
    expressions = live.dashboard_expressions() + live.alert_expressions()
    for name, expr in expressions:
        try:
            live.query(topology.prometheus_url, expr)
        except live.PrometheusError as error:
            rejected.append(f"{name}: {error}")
    assert not rejected, "\n".join(rejected)
    assert len(expressions) > 60


def test_every_dashboard_expression_returns_data_after_real_traffic(topology, traffic):
    """After a burst of real traffic every dashboard expression has data (a number)."""
    expressions = [(n, e) for n, e in live.dashboard_expressions() if n not in ALLOWED_EMPTY]
    results: dict[tuple[str, str], list] = {}

    def missing() -> list[str]:
        """Expressions without data, or with only NaN where a number is expected."""
        results.clear()
        results.update({(n, e): live.query(topology.prometheus_url, e) for n, e in expressions})
        return sorted(
            f"{n}: {'NaN' if series else 'no data'}\n    {e}"
            for (n, e), series in results.items()
            if not series
            or (n not in ALLOWED_NAN and all(s["value"][1] == "NaN" for s in series))
        )

    try:
        waited = wait_until(lambda: not missing(), 30, "every dashboard expression has data", 1)
    except AssertionError:
        raise AssertionError("dashboard expressions without data:\n" + "\n".join(missing())) \
            from None
    print(f"\ndashboards: {len(expressions)} expressions, all with data {waited:.1f}s after the "
          f"burst ({traffic['clients']} chat clients); NaN allowed: {sorted(ALLOWED_NAN)}")


def test_no_alert_is_pending_or_firing_in_the_healthy_topology(topology, traffic):
    """With every process healthy and normal traffic, no alert is pending or firing."""
    time.sleep(2)  # two more rule evaluations after the burst
    active = [
        f"{s['metric']['alertname']} {s['metric'].get('instance', '')} "
        f"({s['metric']['alertstate']})"
        for s in live.query(topology.prometheus_url, "ALERTS")
    ]
    assert active == []


# ---------------------------------------------------------------------------- gunicorn
def _healthz_per_worker(directory: Path) -> dict[str, float]:
    """{pid: count} of chanfleet_http_requests_total{view=healthz,GET,200} per worker file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        for key, count, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)
            if sample == "chanfleet_http_requests_total" and labels == {
                "view": "healthz", "method": "GET", "status": "200"
            }:
                counts[path.stem.removeprefix("counter_")] = count
    return counts


def test_gunicorn_metrics_add_up_the_uvicorn_workers_exactly(topology):
    """N requests to one gunicorn process: two workers served them, /metrics counts exactly N."""
    requests_sent = 40
    port = topology.ports.http[0]
    directory = topology.state / f"metrics-{topology.http_programs()[0]}"
    labels = {"view": "healthz", "method": "GET", "status": "200"}
    before = value(scrape(port), "chanfleet_http_requests_total", **labels)
    per_worker_before = _healthz_per_worker(directory)

    def get(_) -> int:  # a new connection per request, so both workers accept some
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(get, range(requests_sent))) == [200] * requests_sent
    after = value(scrape(port), "chanfleet_http_requests_total", **labels)
    per_worker = _healthz_per_worker(directory)
    served = {pid: n - per_worker_before.get(pid, 0) for pid, n in per_worker.items()}
    served = {pid: n for pid, n in served.items() if n}
    print(f"\ngunicorn: {requests_sent} requests, per worker pid {served}, "
          f"/metrics +{after - before:.0f}")
    assert len(served) >= 2, f"only one worker served the requests: {served}"
    assert sum(served.values()) == requests_sent
    assert after - before == requests_sent


# ---------------------------------------------------------------------------- failover
async def _send_steadily(chat: ChatClient, stop: asyncio.Event) -> int:
    """Send chat messages every 50 ms until stop is set (riding through reconnects)."""
    sent = 0
    while not stop.is_set():
        if chat.socket is not None:
            try:
                await chat.send({"type": "message", "message": f"steady {sent}", "id": f"s{sent}"})
                sent += 1
            except websockets.ConnectionClosed:
                pass
        await asyncio.sleep(0.05)
    return sent


async def test_redis_master_failover_shows_in_prometheus_and_in_process_metrics(topology):
    """kill -9 the Redis master under traffic: master changes, new address, canary recovers."""
    top = topology
    ports, instances = top.ports.ws, ws_instances(top)
    before = {p: await asyncio.to_thread(scrape, p) for p in ports}
    changes_query = 'chanfleet_redis_master_changes_total{job="chanfleet-ws"}'
    prom_before = await asyncio.to_thread(by_instance, top, changes_query)
    assert set(prom_before) == set(instances)
    clients = await chat_clients(top, "failover-metrics", at_least=2)
    stop = asyncio.Event()
    sending = asyncio.create_task(_send_steadily(clients[0], stop))
    await asyncio.sleep(1)
    old = top.redis_master()
    killed_at = time.monotonic()
    top.kill(top.redis_program(old[1]), signal.SIGKILL)
    try:
        new = await asyncio.to_thread(top.wait_new_master, old, 30)
        address = f"{new[0]}:{new[1]}"
        sentinel_s = time.monotonic() - killed_at

        def processes_show_it() -> bool:
            now = {p: scrape(p) for p in ports}
            return all(
                value(now[p], "chanfleet_redis_master_changes_total")
                > value(before[p], "chanfleet_redis_master_changes_total")
                and master_addresses(now[p]) == {address}
                for p in ports
            )

        await eventually(processes_show_it, 30, "every /metrics shows the master change")
        processes_s = time.monotonic() - killed_at

        def prometheus_shows_it() -> bool:
            changes = by_instance(top, changes_query)
            info = live.query(top.prometheus_url, 'chanfleet_redis_master_info{job="chanfleet-ws"}')
            return (
                all(changes.get(i, 0) > prom_before[i] for i in instances)
                and {s["metric"]["address"] for s in info} == {address}
                and {s["metric"]["instance"] for s in info} == set(instances)
            )

        await eventually(prometheus_shows_it, 30, "Prometheus shows the master change")
        prometheus_s = time.monotonic() - killed_at

        def canary_recovered() -> bool:
            now = {p: scrape(p) for p in ports}
            return all(value(now[p], "chanfleet_canary_healthy") == 1 for p in ports)

        await eventually(canary_recovered, 30, "the canaries are healthy again")
        lag_counts = {p: value(await asyncio.to_thread(scrape, p),
                               "chanfleet_canary_lag_seconds_count") for p in ports}

        def lag_observed_again() -> bool:
            return all(value(scrape(p), "chanfleet_canary_lag_seconds_count") >= lag_counts[p] + 2
                       for p in ports)

        await eventually(lag_observed_again, 15, "canary lag observations continue")
        canary_s = time.monotonic() - killed_at
        alert = 'ALERTS{alertname="ChanfleetRedisFailover", alertstate="firing"}'
        await eventually(lambda: live.query(top.prometheus_url, alert), 15,
                         "ChanfleetRedisFailover fires")
        alert_s = time.monotonic() - killed_at
        await eventually(
            lambda: by_instance(
                top, 'min by (instance) (chanfleet_canary_healthy{job="chanfleet-ws"}) == 1'
                ' and on (instance) increase(chanfleet_canary_lag_seconds_count'
                '{job="chanfleet-ws"}[10s]) > 0'
            ).keys() == set(instances),
            15, "Prometheus sees healthy canaries with fresh lag observations",
        )
    finally:
        stop.set()
        sent = await sending
        await asyncio.gather(*(c.stop() for c in clients))
    refused = [f["code"] for f in clients[0].frames if f["type"] == "error"]
    after = {p: await asyncio.to_thread(scrape, p) for p in ports}
    windows = {p: value(after[p], "chanfleet_layer_failover_windows_total")
               - value(before[p], "chanfleet_layer_failover_windows_total") for p in ports}
    retries = sum(value(after[p], "chanfleet_group_send_retries_total")
                  - value(before[p], "chanfleet_group_send_retries_total") for p in ports)
    windows_query = 'increase(chanfleet_layer_failover_windows_total{job="chanfleet-ws"}[2m])'
    windows_prom = await asyncio.to_thread(by_instance, top, windows_query)
    print(f"\nfailover: master {old} -> {new}; after the kill: Sentinel {sentinel_s:.1f}s, "
          f"every /metrics {processes_s:.1f}s, Prometheus {prometheus_s:.1f}s, canaries "
          f"healthy with fresh lag {canary_s:.1f}s; failover windows {windows}, group_send "
          f"retries {retries:.0f}; {sent} messages sent, {len(refused)} answered with an error "
          f"{sorted(set(refused))}; ChanfleetRedisFailover firing "
          f"{alert_s:.1f}s")
    assert all(n >= 1 for n in windows.values()), windows
    assert all(windows_prom.get(i, 0) > 0 for i in instances), windows_prom
    # Leave a replica behind for the next tests: the old master restarts and re-attaches.
    await eventually(lambda: replica_online(top), 60, "the old master is back as a replica", 0.5)


# ---------------------------------------------------------------------------- readiness
def test_readyz_is_not_ready_while_the_canary_fails_and_ready_again_after(topology):
    """Freeze Redis 8 s: WebSocket /readyz answers 503 with canary false, then 200 again."""
    # Both data nodes are stopped (SIGSTOP), the master first: with the replica frozen too,
    # no failover can end the outage early, so the canary fails for CANARY_FAIL_AFTER
    # whatever the channel layer does; SIGCONT resumes the master first, then the replica.
    top = topology
    fail_after = float(ENV["CANARY_FAIL_AFTER"])
    master = top.redis_master()
    programs = [top.redis_program(master[1])]
    programs += [p for p in ("redis-master", "redis-replica") if p not in programs]
    seen: dict[int, list[tuple[float, int, dict]]] = {p: [] for p in top.ports.ws}
    polling = threading.Event()

    def poll(port: int, delay: float) -> None:
        time.sleep(delay)
        while not polling.is_set():
            status, checks = readyz(port)
            seen[port].append((time.monotonic(), status, checks))
            time.sleep(0.2)

    # A /readyz with Redis frozen takes 3 s (its Redis ping times out): four staggered pollers
    # per process still see an answer about every second.
    threads = [threading.Thread(target=poll, args=(p, n * 0.8), daemon=True)
               for p in top.ports.ws for n in range(4)]
    for thread in threads:
        thread.start()
    stopped_at = time.monotonic()
    pids = []
    try:
        for program in programs:
            pids.append(top.kill(program, signal.SIGSTOP))
        assert all(pids), dict(zip(programs, pids, strict=False))
        time.sleep(FREEZE_SECONDS)
    finally:
        for pid in pids:
            if pid:
                os.kill(pid, signal.SIGCONT)
    try:
        back = wait_until(lambda: all(readyz(p)[0] == 200 for p in top.ports.ws), 20,
                          "/readyz of both WebSocket processes is 200 again", 0.3)
    finally:
        polling.set()
        for thread in threads:
            thread.join(10)
    canary_gauge = by_instance(
        top, 'min_over_time(chanfleet_canary_healthy{job="chanfleet-ws"}[1m])')
    flips = {}
    for port, records in seen.items():
        failing = [t for t, status, checks in records
                   if status == 503 and checks.get("canary") is False]
        assert failing, f"127.0.0.1:{port} never answered 503 with canary false: {records[-5:]}"
        flips[port] = failing[0] - stopped_at
        assert failing[0] - stopped_at >= fail_after - 1.5  # not before the threshold
    print(f"\nreadyz: Redis {programs} stopped {FREEZE_SECONDS} s; canary false on /readyz after "
          f"{ {p: round(s, 1) for p, s in flips.items()} }s; both 200 again {back:.1f}s after "
          f"SIGCONT; master now {top.redis_master()}")
    assert all(canary_gauge.get(i) == 0 for i in ws_instances(top)), canary_gauge


async def test_drain_turns_readyz_not_ready_and_shows_in_metrics_until_restarted(topology):
    """POST /internal/drain?exit=0: 503 not_draining false, chanfleet_draining 1; restart: ready."""
    top = topology
    port, program = top.ports.ws[-1], top.ws_programs()[-1]
    internal = top.ports.internal(port)
    instance = f"127.0.0.1:{port}"
    before = value(await asyncio.to_thread(scrape, port),
                   "chanfleet_drain_reconnects_requested_total")
    cookie = await asyncio.to_thread(login, top.url, "bob")
    async with websockets.connect(  # straight to the process, so it surely holds one client
        f"ws://127.0.0.1:{port}/ws/chat/drain-metrics/",
        additional_headers={"Cookie": f"sessionid={cookie}", "Origin": top.url},
    ) as client:
        joined = []
        while not any(f["type"] == "history_end" for f in joined):
            joined.append(json.loads(await asyncio.wait_for(client.recv(), 10)))

        def registered() -> bool:  # the consumer joins the registry after its join frames
            with urllib.request.urlopen(f"http://127.0.0.1:{internal}/internal/status",
                                        timeout=5) as response:
                return json.loads(response.read())["connections"] >= 1

        await eventually(registered, 5, "the process holds the client")
        request = urllib.request.Request(
            f"http://127.0.0.1:{internal}/internal/drain?exit=0&window=1", method="POST")
        drained_at = time.monotonic()
        response = await asyncio.to_thread(urllib.request.urlopen, request, None, 5)
        assert response.status == 202
        frames = []
        deadline = time.monotonic() + 15
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            while time.monotonic() < deadline:  # heartbeats keep coming until the close
                frames.append(json.loads(await asyncio.wait_for(client.recv(), 10)))
        assert client.close_code == 1012, [f["type"] for f in frames]
        assert any(f["type"] == "reconnect" and f["reason"] == "drain" for f in frames)

    def not_ready() -> bool:
        status, checks = readyz(port)
        return status == 503 and checks.get("not_draining") is False

    readyz_s = await eventually(not_ready, 5, "/readyz answers 503 with not_draining false")
    await eventually(lambda: by_instance(top, 'chanfleet_draining{job="chanfleet-ws"}')
                     .get(instance) == 1, 15, "Prometheus sees chanfleet_draining 1")
    prometheus_s = time.monotonic() - drained_at
    after = value(await asyncio.to_thread(scrape, port),
                  "chanfleet_drain_reconnects_requested_total")
    assert after - before >= 1
    restarted_at = time.monotonic()
    await asyncio.to_thread(top.ctl, "restart", program)
    await asyncio.to_thread(top.wait_ready, 60, [program])
    ready_s = time.monotonic() - restarted_at
    await eventually(lambda: by_instance(top, 'chanfleet_draining{job="chanfleet-ws"}')
                     .get(instance) == 0, 15, "Prometheus sees chanfleet_draining 0 again")
    print(f"\ndrain: /readyz 503 (not_draining false) {readyz_s:.2f}s after the drain request, "
          f"chanfleet_draining 1 in Prometheus after {prometheus_s:.1f}s; {program} ready "
          f"{ready_s:.1f}s after `supervisorctl restart`")
