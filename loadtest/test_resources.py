"""Tests of the soak's resource sampler against real processes and a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import redis

from loadtest import resources


def test_process_usage_counts_a_tree_of_processes():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while True:
            usage = resources.process_usage(os.getpid())
            if usage["processes"] >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        alone = resources.process_usage(child.pid)
    finally:
        child.kill()
        child.wait()
    assert usage["processes"] >= 2
    assert usage["rss"] > alone["rss"] > 1 << 20
    assert usage["fds"] > alone["fds"] >= 3


def test_program_pids_reads_supervisorctl_status():
    output = (
        "http-1                           RUNNING   pid 4242, uptime 0:01:02\n"
        "nginx                            RUNNING   pid 17, uptime 0:01:00\n"
        "redis-master                     STOPPED   Dec 06 07:00 AM\n"
        "ws-2                             STARTING  \n"
    )
    assert resources.program_pids(output) == {"http-1": 4242, "nginx": 17}
    assert [resources.group_of(p) for p in ("ws-1", "http-2", "nginx", "redis-replica",
                                            "sentinel-3", "prometheus", "nginx-exporter",
                                            "redis-exporter")] == [
        "ws", "http", "nginx", "redis", "sentinel", None, None, None]


def test_redis_usage_counts_keys_by_prefix(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.set("asgi:group:room-1", "x")
    client.set("asgi:group:room-2", "x")
    client.set("chanfleet:presence:room-1", "x")
    client.set("plain", "x")
    usage = resources.redis_usage(client)
    assert usage["keys"] == 4
    assert usage["prefixes"] == {"asgi:group": 2, "chanfleet:presence": 1, "plain": 1}
    assert usage["used_memory"] > 0 and usage["connected_clients"] >= 1


def _samples(minutes: int, rss_per_hour: float) -> list[dict]:
    start = 1_000_000.0
    return [
        {"t": start + m * 60,
         "programs": {"ws-1": {"rss": 100e6 + rss_per_hour * m / 60, "fds": 50, "processes": 1},
                      "ws-2": {"rss": 100e6, "fds": 50, "processes": 1}},
         "redis": {"used_memory": 5e6, "used_memory_rss": 9e6, "keys": 100,
                   "connected_clients": 12, "prefixes": {}}}
        for m in range(minutes)
    ]


def test_summary_reports_growth_per_hour_after_the_warmup():
    samples = _samples(120, rss_per_hour=6e6)
    samples[0]["programs"]["ws-1"]["rss"] = 500e6  # a warm-up spike the fit must leave out
    summary = resources.summarise(samples, warmup=600)
    ws = summary["series"]["ws.rss"]
    assert abs(ws["growth_per_hour"] - 6e6) < 1e3
    assert ws["max"] == 600e6 and ws["first"] == 600e6
    assert summary["series"]["ws.fds"]["growth_per_hour"] == 0
    assert summary["series"]["redis_server.keys"]["last"] == 100
    assert summary["programs"]["ws-1"]["rss_max"] == 500e6
    assert summary["programs"]["ws-2"] == {"rss_max": 100e6, "fds_max": 50}
    assert any("ws.rss" in line and "5.7 MiB/h" in line
               for line in resources.report_lines(summary))


def test_render_and_main_on_a_run_folder(tmp_path, capsys):
    (tmp_path / "resources.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in _samples(30, rss_per_hour=0)))
    assert resources.main([str(tmp_path)]) == 0
    assert (tmp_path / "resources.png").stat().st_size > 10_000
    assert "redis_server.used_memory" in capsys.readouterr().out
