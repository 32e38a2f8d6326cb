"""Unit tests of the Redis/Sentinel templates and their renderer (no processes started)."""

import os
import re
import stat

import pytest

from deploy.sentinel import render as r
from deploy.templating import placeholders

TEMPLATES = [r.REDIS_TEMPLATE, r.SENTINEL_TEMPLATE]


def directives(text: str) -> list[list[str]]:
    """Return the non-blank, non-comment lines of a config, split into words."""
    return [line.split() for line in text.splitlines() if line.strip() and line[0] != "#"]


def redis_conf(**overrides: object) -> str:
    """Render a data-node config with test values."""
    values = {"port": 7001, "data_dir": "/srv/redis", "password": "p4ss"}
    return r.render_redis_conf(**(values | overrides))


def sentinel_conf(**overrides: object) -> str:
    """Render a sentinel config with test values."""
    values = {
        "port": 27001,
        "data_dir": "/srv/sentinel",
        "password": "p4ss",
        "sentinel_password": "s3ntinel",
        "master_host": "10.0.0.5",
        "master_port": 7001,
    }
    return r.render_sentinel_conf(**(values | overrides))


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_every_directive_is_commented(template):
    lines = template.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        # Redis has no trailing comments, so the comment must be the line right above.
        assert number > 1 and lines[number - 2].startswith("# "), (
            f"{template.name}:{number} {line!r} has no explaining comment right above it"
        )


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_templates_hold_plain_tokens_only(template):
    text = template.read_text()
    # Helm's `replace` fills tokens literally: no template logic may appear.
    assert "{{" not in text and "{%" not in text
    assert set(re.findall(r"@@(.*?)@@", text)) == placeholders(text)


def test_redis_placeholders_are_exactly_the_documented_set():
    assert placeholders(r.REDIS_TEMPLATE.read_text()) == {
        "BIND",
        "PORT",
        "DIR",
        "REDIS_PASSWORD",
        "ANNOUNCE_IP",
        "ANNOUNCE_PORT",
        "REPLICAOF_LINE",
        "MAXMEMORY",
    }


def test_sentinel_placeholders_are_exactly_the_documented_set():
    assert placeholders(r.SENTINEL_TEMPLATE.read_text()) == {
        "BIND",
        "PORT",
        "DIR",
        "SENTINEL_PASSWORD",
        "REDIS_PASSWORD",
        "ANNOUNCE_IP",
        "ANNOUNCE_PORT",
        "MASTER_NAME",
        "MASTER_HOST",
        "MASTER_PORT",
        "DOWN_AFTER_MS",
        "FAILOVER_TIMEOUT_MS",
        "QUORUM",
    }


def test_master_config_is_filled_and_safe():
    text = redis_conf()
    assert "@@" not in text
    words = directives(text)
    assert ["requirepass", '"p4ss"'] in words
    assert ["masterauth", '"p4ss"'] in words
    assert ["port", "7001"] in words
    assert ["dir", "/srv/redis"] in words
    assert ["maxmemory-policy", "noeviction"] in words
    assert ["protected-mode", "yes"] in words
    assert ["timeout", "0"] in words
    assert ["appendonly", "no"] in words
    assert ["repl-diskless-sync", "yes"] in words
    assert ["replica-announce-ip", "127.0.0.1"] in words
    assert ["replica-announce-port", "7001"] in words
    assert not [w for w in words if w[0] == "replicaof"]


def test_replica_config_points_at_master_and_announces_itself():
    text = redis_conf(
        bind="0.0.0.0",
        replicaof=("redis-0.redis", 6379),
        announce_ip="redis-1.redis",
        announce_port=6379,
    )
    words = directives(text)
    assert ["replicaof", "redis-0.redis", "6379"] in words
    assert ["replica-announce-ip", "redis-1.redis"] in words
    assert ["replica-announce-port", "6379"] in words
    assert ["bind", "0.0.0.0"] in words


def test_sentinel_config_quorum_auth_and_timings():
    text = sentinel_conf(master_name="chanfleet", down_after_ms=1000, failover_timeout_ms=3000)
    assert "@@" not in text
    words = directives(text)
    monitor = [w for w in words if w[:2] == ["sentinel", "monitor"]]
    assert monitor == [["sentinel", "monitor", "chanfleet", "10.0.0.5", "7001", "2"]]
    assert ["sentinel", "auth-pass", "chanfleet", '"p4ss"'] in words
    assert ["requirepass", '"s3ntinel"'] in words
    assert ["sentinel", "sentinel-pass", '"s3ntinel"'] in words
    assert ["sentinel", "down-after-milliseconds", "chanfleet", "1000"] in words
    assert ["sentinel", "failover-timeout", "chanfleet", "3000"] in words
    assert ["sentinel", "parallel-syncs", "chanfleet", "1"] in words
    assert ["sentinel", "resolve-hostnames", "yes"] in words
    assert ["sentinel", "announce-hostnames", "yes"] in words
    assert ["sentinel", "announce-ip", "127.0.0.1"] in words
    assert ["sentinel", "announce-port", "27001"] in words


def test_resolve_hostnames_precedes_monitor():
    # Sentinel resolves the monitor address when it parses that line, so the flag must come first.
    words = directives(sentinel_conf(master_host="redis-0.redis"))
    assert words.index(["sentinel", "resolve-hostnames", "yes"]) < next(
        i for i, w in enumerate(words) if w[:2] == ["sentinel", "monitor"]
    )


@pytest.mark.parametrize("bad", ["", "has space", 'quo"te', "back\\slash", "new\nline", "sin'gle"])
def test_unsafe_passwords_are_refused(bad):
    with pytest.raises(ValueError):
        redis_conf(password=bad)
    with pytest.raises(ValueError):
        sentinel_conf(sentinel_password=bad)


@pytest.mark.parametrize("field", ["bind", "announce_ip", "data_dir"])
def test_values_that_would_split_a_directive_are_refused(field):
    with pytest.raises(ValueError):
        redis_conf(**{field: "a b"})


def test_an_isolated_master_keeps_taking_writes_as_the_partition_drill_decided():
    # tests/test_partition.py proves what that costs; raising it needs that drill redone
    # with NOREPLICAS refusals (deploy/sentinel/README.md, "A partition").
    words = directives(redis_conf())
    assert ["min-replicas-to-write", "0"] in words
    assert ["min-replicas-max-lag", "10"] in words


def test_local_defaults_describe_the_local_topology():
    d = r.LOCAL_DEFAULTS
    assert d.master_name == "chanfleet"
    assert (d.host, d.master_port, d.replica_port) == ("127.0.0.1", 6380, 6381)
    assert d.sentinels == [("127.0.0.1", 26380), ("127.0.0.1", 26381), ("127.0.0.1", 26382)]
    assert d.down_after_ms == 1000


def test_cli_writes_one_fresh_config_per_process(tmp_path, capsys):
    state = tmp_path / "state"
    assert r.main(["--state-dir", str(state), "--password", "pw", "--sentinel-password", "sp"]) == 0
    names = sorted(p.name for p in state.glob("*.conf"))
    assert names == [
        "master.conf",
        "replica.conf",
        "sentinel-1.conf",
        "sentinel-2.conf",
        "sentinel-3.conf",
    ]
    master = directives((state / "master.conf").read_text())
    replica = directives((state / "replica.conf").read_text())
    assert ["port", "6380"] in master and not [w for w in master if w[0] == "replicaof"]
    assert ["replicaof", "127.0.0.1", "6380"] in replica and ["port", "6381"] in replica
    assert ["requirepass", '"pw"'] in replica
    seen_ports, seen_dirs = set(), set()
    for n in (1, 2, 3):
        words = directives((state / f"sentinel-{n}.conf").read_text())
        assert ["sentinel", "monitor", "chanfleet", "127.0.0.1", "6380", "2"] in words
        assert ["requirepass", '"sp"'] in words
        seen_ports.add(next(w[1] for w in words if w[0] == "port"))
        seen_dirs.add(next(w[1] for w in words if w[0] == "dir"))
    # Each sentinel rewrites its own file and keeps its own state directory.
    assert seen_ports == {"26380", "26381", "26382"}
    assert len(seen_dirs) == 3 and all(os.path.isdir(d) for d in seen_dirs)
    assert stat.S_IMODE((state / "master.conf").stat().st_mode) == 0o600
    assert "sentinel-3.conf" in capsys.readouterr().out


def test_cli_overwrites_a_previous_runs_rewritten_config(tmp_path):
    r.main(["--state-dir", str(tmp_path)])
    (tmp_path / "sentinel-1.conf").write_text("sentinel myid deadbeef\n")
    r.main(["--state-dir", str(tmp_path)])
    assert "sentinel myid" not in (tmp_path / "sentinel-1.conf").read_text()


def test_two_shards_get_their_own_nodes_and_the_same_sentinels_watch_both(tmp_path):
    written = r.write_local_configs(tmp_path, topology=r.LocalTopology(shards=2))
    assert sorted(written) == ["master", "master-2", "replica", "replica-2",
                               "sentinel-1", "sentinel-2", "sentinel-3"]
    assert "replicaof 127.0.0.1 6390" in written["replica-2"].read_text()
    assert "port 6391" in written["replica-2"].read_text()
    sentinel = written["sentinel-2"].read_text()
    assert re.findall(r"^sentinel monitor (\S+) \S+ (\d+) 2$", sentinel, re.M) == [
        ("chanfleet", "6380"), ("chanfleet-2", "6390")]
    for setting in ("auth-pass", "down-after-milliseconds", "failover-timeout", "parallel-syncs"):
        assert len(re.findall(rf"^sentinel {setting} chanfleet-2 ", sentinel, re.M)) == 1
    assert sentinel.count("\nport ") == 1  # the sentinel's own settings are not repeated


def test_each_sentinel_calls_a_master_down_later_than_the_one_before(tmp_path):
    """Distinct down-after timers, so one sentinel asks for votes first (no three-way split)."""
    written = r.write_local_configs(tmp_path, topology=r.LocalTopology(shards=2))
    timers = [re.findall(r"^sentinel down-after-milliseconds (\S+) (\d+)$",
                         written[f"sentinel-{n}"].read_text(), re.M) for n in (1, 2, 3)]
    base, step = r.LOCAL_DEFAULTS.down_after_ms, r.DOWN_AFTER_STAGGER_MS
    assert timers == [[("chanfleet", str(base + i * step)), ("chanfleet-2", str(base + i * step))]
                      for i in range(3)]
    # Apart by more than a tick of the sentinel timer (at most a tenth of a second).
    assert step > 100
    with pytest.raises(ValueError):
        r.staggered_down_after_ms(1000, -1)
