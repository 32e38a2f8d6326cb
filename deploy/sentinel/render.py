"""Render the Redis data-node and Sentinel configs for the local topology (and tests).

The templates next to this file are the single source of truth; the Helm chart fills the same
files with ``replace``. Sentinel and data nodes rewrite their config at runtime, so every process
gets its own freshly rendered copy in a writable state directory::

    python -m deploy.sentinel.render --state-dir var/redis [--password P --sentinel-password S]
"""

from __future__ import annotations

import argparse
import os
import string
from dataclasses import dataclass
from pathlib import Path

from deploy.templating import render

HERE = Path(__file__).resolve().parent
# The chart reads them from its files/ (Helm sees nothing outside the chart): the one copy.
TEMPLATES = HERE.parent / "helm" / "chanfleet" / "files"
REDIS_TEMPLATE = TEMPLATES / "redis.conf.tmpl"
SENTINEL_TEMPLATE = TEMPLATES / "sentinel.conf.tmpl"

# Characters a password may hold: printable, no whitespace, no quotes or backslash, because the
# templates put passwords inside "..." and Redis's config parser gives those characters meaning.
_PASSWORD_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&()*+,-./:;<=>?@[]^_`{|}~")
# Hostnames, IPs, sizes and paths are single config tokens: no whitespace, quotes or comments.
_FORBIDDEN_IN_TOKEN = frozenset(" \t\r\n\"'\\#")


@dataclass(frozen=True)
class LocalTopology:
    """Addresses and timings of the local master + replica + three sentinels."""

    master_name: str = "chanfleet"
    host: str = "127.0.0.1"
    master_port: int = 6380
    replica_port: int = 6381
    sentinel_ports: tuple[int, ...] = (26380, 26381, 26382)
    down_after_ms: int = 1000
    failover_timeout_ms: int = 10_000
    maxmemory: str = "256mb"
    # Channel layer shards: shard i > 0 is master `<master_name>-<i+1>` with its own replica,
    # on the ports ten times i above the first's; the same sentinels watch every master.
    shards: int = 1
    # Local-only defaults; production passwords come from Kubernetes Secrets.
    password: str = "chanfleet-local-redis"
    sentinel_password: str = "chanfleet-local-sentinel"

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """Return the sentinel addresses as (host, port) pairs, as clients are configured."""
        return [(self.host, port) for port in self.sentinel_ports]

    @property
    def masters(self) -> list[tuple[str, int, int]]:
        """(master name, master port, replica port) of each shard, the first one first."""
        return [(self.master_name if i == 0 else f"{self.master_name}-{i + 1}",
                 self.master_port + 10 * i, self.replica_port + 10 * i)
                for i in range(self.shards)]

    @staticmethod
    def node_names(shard: int) -> tuple[str, str]:
        """The config (and program) names of a shard's master and replica."""
        suffix = "" if shard == 0 else f"-{shard + 1}"
        return f"master{suffix}", f"replica{suffix}"


LOCAL_DEFAULTS = LocalTopology()

# How much longer each further sentinel waits before it calls a master down. With equal timers
# every sentinel sees a dead master in the same tick and votes for itself; no one has a
# majority, and the next election waits twice failover-timeout, by when a restarted old master
# is back and the failover never happens. Staggered, the first to see it asks the others, who
# have not started an election of their own, and they vote for it.
DOWN_AFTER_STAGGER_MS = 250


def staggered_down_after_ms(down_after_ms: int, index: int) -> int:
    """The down-after of the sentinel numbered ``index`` (from 0) of a set sharing one base."""
    if index < 0:
        raise ValueError(f"a sentinel's index counts from 0, got {index!r}")
    return int(down_after_ms) + index * DOWN_AFTER_STAGGER_MS


def _check_password(name: str, value: str) -> str:
    """Refuse a password that is empty or would break the quoted config token."""
    if not value:
        raise ValueError(f"{name} must not be empty: every Redis and Sentinel requires AUTH")
    bad = sorted(set(value) - _PASSWORD_CHARS)
    if bad:
        raise ValueError(f"{name} contains characters unsafe in a Redis config: {bad!r}")
    return value


def _check_token(name: str, value: object) -> str:
    """Refuse a value that is empty or would split into several config tokens."""
    text = str(value)
    if not text or set(text) & _FORBIDDEN_IN_TOKEN:
        raise ValueError(f"{name} must be one non-empty config token, got {text!r}")
    return text


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_port(name: str, value: int) -> int:
    """Refuse a port number outside 1..65535."""
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError(f"{name} must be a TCP port, got {value!r}")
    return port


def render_redis_conf(
    *,
    port: int,
    data_dir: str | os.PathLike[str],
    password: str,
    bind: str = "127.0.0.1",
    announce_ip: str | None = None,
    announce_port: int | None = None,
    replicaof: tuple[str, int] | None = None,
    maxmemory: str = LOCAL_DEFAULTS.maxmemory,
) -> str:
    """Render redis.conf.tmpl for a master (replicaof None) or a replica of ``replicaof``."""
    if replicaof is None:
        replicaof_line = ""
    else:
        replicaof_line = (
            f"replicaof {_check_token('replicaof host', replicaof[0])} "
            f"{_check_port('replicaof port', replicaof[1])}"
        )
    return render(
        REDIS_TEMPLATE.read_text(),
        {
            "BIND": _check_token("bind", bind),
            "PORT": _check_port("port", port),
            "DIR": _check_token("data_dir", os.fspath(data_dir)),
            "REDIS_PASSWORD": _check_password("password", password),
            "ANNOUNCE_IP": _check_token("announce_ip", announce_ip or bind),
            "ANNOUNCE_PORT": _check_port("announce_port", announce_port or port),
            "REPLICAOF_LINE": replicaof_line,
            "MAXMEMORY": _check_token("maxmemory", maxmemory),
        },
    )


def render_sentinel_conf(
    *,
    port: int,
    data_dir: str | os.PathLike[str],
    password: str,
    sentinel_password: str,
    master_host: str,
    master_port: int,
    master_name: str = LOCAL_DEFAULTS.master_name,
    bind: str = "127.0.0.1",
    announce_ip: str | None = None,
    announce_port: int | None = None,
    down_after_ms: int = LOCAL_DEFAULTS.down_after_ms,
    failover_timeout_ms: int = LOCAL_DEFAULTS.failover_timeout_ms,
    quorum: int = 2,
    more_masters: tuple[tuple[str, str, int], ...] = (),
) -> str:
    """Render sentinel.conf.tmpl for one sentinel watching ``master_name`` (quorum of sentinels).

    ``more_masters`` ((name, host, port), ...) are watched too, with the same settings: the
    template's monitored-master section is repeated for each.
    """
    if int(down_after_ms) <= 0 or int(failover_timeout_ms) <= 0:
        raise ValueError("down_after_ms and failover_timeout_ms must be positive milliseconds")
    common = {"port": port, "data_dir": data_dir, "password": password,
              "sentinel_password": sentinel_password, "bind": bind, "announce_ip": announce_ip,
              "announce_port": announce_port, "down_after_ms": down_after_ms,
              "failover_timeout_ms": failover_timeout_ms, "quorum": quorum}
    first, *others = [
        _render_sentinel(**common, master_name=name, master_host=host, master_port=at)
        for name, host, at in [(master_name, master_host, master_port), *more_masters]]
    return first + "".join("\n" + other[other.index(MASTER_SECTION):] for other in others)


# Where the template's per-master settings begin (repeated for each extra master).
MASTER_SECTION = "# " + "-" * 64 + " the monitored master"


def _render_sentinel(*, port, data_dir, password, sentinel_password, master_host, master_port,
                     master_name, bind, announce_ip, announce_port, down_after_ms,
                     failover_timeout_ms, quorum) -> str:
    return render(
        SENTINEL_TEMPLATE.read_text(),
        {
            "BIND": _check_token("bind", bind),
            "PORT": _check_port("port", port),
            "DIR": _check_token("data_dir", os.fspath(data_dir)),
            "SENTINEL_PASSWORD": _check_password("sentinel_password", sentinel_password),
            "REDIS_PASSWORD": _check_password("password", password),
            "ANNOUNCE_IP": _check_token("announce_ip", announce_ip or bind),
            "ANNOUNCE_PORT": _check_port("announce_port", announce_port or port),
            "MASTER_NAME": _check_token("master_name", master_name),
            "MASTER_HOST": _check_token("master_host", master_host),
            "MASTER_PORT": _check_port("master_port", master_port),
            "DOWN_AFTER_MS": int(down_after_ms),
            "FAILOVER_TIMEOUT_MS": int(failover_timeout_ms),
            "QUORUM": _check_positive("quorum", quorum),
        },
    )


def write_local_configs(
    state_dir: str | os.PathLike[str],
    *,
    topology: LocalTopology = LOCAL_DEFAULTS,
    password: str | None = None,
    sentinel_password: str | None = None,
) -> dict[str, Path]:
    """Write fresh master.conf, replica.conf and sentinel-N.conf (plus data dirs) into state_dir."""
    state = Path(state_dir).resolve()
    password = password or topology.password
    sentinel_password = sentinel_password or topology.sentinel_password
    written: dict[str, Path] = {}

    def write(name: str, text: str) -> None:
        """Write one rendered config, replacing any copy a previous run rewrote."""
        path = state / f"{name}.conf"
        path.write_text(text)
        path.chmod(0o600)  # it holds passwords
        written[name] = path

    nodes = {}
    for shard, (_, master_port, replica_port) in enumerate(topology.masters):
        master, replica = topology.node_names(shard)
        nodes[master] = (master_port, None)
        nodes[replica] = (replica_port, (topology.host, master_port))
    for name, (port, replicaof) in nodes.items():
        data_dir = state / name
        data_dir.mkdir(parents=True, exist_ok=True)
        conf = render_redis_conf(
            port=port,
            data_dir=data_dir,
            password=password,
            bind=topology.host,
            replicaof=replicaof,
            maxmemory=topology.maxmemory,
        )
        write(name, conf)
    for index, port in enumerate(topology.sentinel_ports, start=1):
        name = f"sentinel-{index}"
        data_dir = state / name
        data_dir.mkdir(parents=True, exist_ok=True)
        conf = render_sentinel_conf(
            port=port,
            data_dir=data_dir,
            password=password,
            sentinel_password=sentinel_password,
            master_name=topology.master_name,
            master_host=topology.host,
            master_port=topology.master_port,
            bind=topology.host,
            down_after_ms=staggered_down_after_ms(topology.down_after_ms, index - 1),
            failover_timeout_ms=topology.failover_timeout_ms,
            more_masters=tuple((master, topology.host, master_port)
                               for master, master_port, _ in topology.masters[1:]),
        )
        write(name, conf)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: render the local topology's configs into --state-dir."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.sentinel.render",
        description="Write master.conf, replica.conf and sentinel-1..3.conf for the local setup.",
    )
    parser.add_argument("--state-dir", required=True, help="writable directory for configs/data")
    parser.add_argument(
        "--password",
        default=os.environ.get("REDIS_PASSWORD") or LOCAL_DEFAULTS.password,
        help="Redis data-node password (default: $REDIS_PASSWORD or the local default)",
    )
    parser.add_argument(
        "--sentinel-password",
        default=os.environ.get("REDIS_SENTINEL_PASSWORD") or LOCAL_DEFAULTS.sentinel_password,
        help="Sentinel password (default: $REDIS_SENTINEL_PASSWORD or the local default)",
    )
    args = parser.parse_args(argv)
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    written = write_local_configs(
        state, password=args.password, sentinel_password=args.sentinel_password
    )
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
