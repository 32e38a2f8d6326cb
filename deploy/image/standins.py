"""Stand-ins for the chart's public images (redis, nginx, postgres), made from Debian's packages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from deploy.image import base, smoke
from deploy.image.app_image import save
from deploy.image.engine import Engine
from deploy.image.timing import step
from deploy.image.versions import (
    CONTAINERFILES,
    NGINX_SRC_CRATE,
    NGINX_SRC_CRATE_VERSION,
    NGINX_VERSION,
    REPO,
    STANDIN_TAGS,
)

NAMES = tuple(STANDIN_TAGS)
BUILD = REPO / "build"
NGINX_FETCH = BUILD / "nginx-src-fetch"
CONTEXTS = BUILD / "image-context"

CARGO_MANIFEST = f"""\
# Throwaway: only makes cargo fetch {NGINX_SRC_CRATE} (nginx's source) from crates.io.
[package]
name = "fetch-nginx-src"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
{NGINX_SRC_CRATE} = "={NGINX_SRC_CRATE_VERSION}"
"""


def cargo_home() -> Path:
    """Return cargo's home (CARGO_HOME, else ~/.cargo), where fetched crates are cached."""
    return Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo")


def crate_file(home: Path, name: str = NGINX_SRC_CRATE,
               version: str = NGINX_SRC_CRATE_VERSION) -> Path | None:
    """Return the cached .crate archive of name and version under cargo's home, if fetched."""
    found = sorted((home / "registry" / "cache").glob(f"*/{name}-{version}.crate"))
    return found[0] if found else None


def source_version(nginx_h: str) -> str:
    """Return NGINX_VERSION from the text of src/core/nginx.h."""
    match = re.search(r'#define\s+NGINX_VERSION\s+"([^"]+)"', nginx_h)
    if not match:
        raise ValueError("no NGINX_VERSION in nginx.h")
    return match.group(1)


def extract_nginx(crate: Path, dest: Path) -> Path:
    """Extract the crate's nginx/ tree (nginx's own repository layout) into dest."""
    prefix = f"{NGINX_SRC_CRATE}-{NGINX_SRC_CRATE_VERSION}/nginx/"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(crate, "r:gz") as archive:
        for member in archive.getmembers():
            if not member.name.startswith(prefix) or member.name == prefix:
                continue
            member.name = member.name[len(prefix):]
            # The safe "data" filter where this Python has it (3.11.4 and later).
            if hasattr(tarfile, "data_filter"):
                archive.extract(member, dest, filter="data")
            else:
                archive.extract(member, dest)
    version = source_version((dest / "src" / "core" / "nginx.h").read_text(encoding="utf-8"))
    if version != NGINX_VERSION:
        raise SystemExit(f"{crate.name} holds nginx {version}, not {NGINX_VERSION}")
    return dest


def nginx_source(dest: Path = NGINX_FETCH / "nginx") -> Path:
    """Fetch nginx's source from crates.io with cargo (cached) and extract it into dest."""
    crate = crate_file(cargo_home())
    if crate is None:
        if not shutil.which("cargo"):
            raise SystemExit("cargo is needed to fetch nginx's source (crates.io's nginx-src)")
        NGINX_FETCH.mkdir(parents=True, exist_ok=True)
        (NGINX_FETCH / "Cargo.toml").write_text(CARGO_MANIFEST, encoding="utf-8")
        (NGINX_FETCH / "src").mkdir(exist_ok=True)
        (NGINX_FETCH / "src" / "lib.rs").write_text("", encoding="utf-8")
        with step(f"cargo fetch {NGINX_SRC_CRATE} {NGINX_SRC_CRATE_VERSION}"):
            subprocess.run(["cargo", "fetch", "--manifest-path", str(NGINX_FETCH / "Cargo.toml")],
                           check=True)
        crate = crate_file(cargo_home())
        if crate is None:
            raise SystemExit(f"cargo fetched no {NGINX_SRC_CRATE}-{NGINX_SRC_CRATE_VERSION}.crate")
    return extract_nginx(crate, dest)


def context(name: str) -> Path:
    """Return the build context of a stand-in; nginx's also holds the fetched source."""
    if name != "nginx":
        return CONTAINERFILES / name
    target = CONTEXTS / "nginx"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(CONTAINERFILES / "nginx", target)
    source = nginx_source()
    shutil.copytree(source, target / "nginx-source")
    return target


def chart_nginx_conf() -> str:
    """Return the chart's nginx.conf as Kubernetes gets it: port 8080, `resolve`, state in /tmp."""
    from deploy.nginx.render import render_nginx_conf, upstream_servers

    return render_nginx_conf(
        LISTEN="8080",
        STATUS_LISTEN="127.0.0.1:9090",
        WS_SERVERS=upstream_servers(["localhost:8000 resolve"], max_fails=0),
        HTTP_SERVERS=upstream_servers(["localhost:8000 resolve"]),
        STATE_DIR="/tmp",
        RESOLVER_LINE="resolver 127.0.0.1 valid=5s;",
        REAL_IP_CONFIG="set_real_ip_from 10.0.0.0/8; real_ip_header X-Forwarded-For; "
                       "real_ip_recursive on;",
    )


# An HTTP/1.0 GET through bash's /dev/tcp: the stand-ins have no curl.
_GET = ('exec 3<>/dev/tcp/127.0.0.1/{port} && printf "GET {path} HTTP/1.0\\r\\n\\r\\n" >&3 '
        '&& head -n 1 <&3')

REDIS_SCRIPT = """\
set -eu
redis-server --version
for tool in sh getent timeout sed awk hostname redis-cli redis-sentinel; do
  command -v "$tool" >/dev/null || { echo "missing $tool"; exit 1; }
done
getent hosts localhost
redis-server --port 6379 --dir /tmp --daemonize no >/tmp/redis.log 2>&1 &
printf 'port 26379\\ndir /tmp\\nsentinel monitor m 127.0.0.1 6379 1\\n' >/tmp/sentinel.conf
redis-server /tmp/sentinel.conf --sentinel >/tmp/sentinel.log 2>&1 &
for _ in $(seq 50); do redis-cli -p 6379 ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
echo "redis $(redis-cli -p 6379 ping)"
for _ in $(seq 50); do redis-cli -p 26379 ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
echo "sentinel master $(redis-cli -p 26379 SENTINEL get-master-addr-by-name m | tr '\\n' ' ')"
"""

NGINX_SCRIPT = f"""\
set -eu
printf '%s' "$CHART_CONF" >/tmp/chart.conf
nginx -t -e stderr -c /tmp/chart.conf 2>&1
nginx -g 'daemon off;' 2>/tmp/nginx.log &
for _ in $(seq 50); do ({_GET.format(port=8080, path="/")}) 2>/dev/null && exit 0; sleep 0.1; done
cat /tmp/nginx.log; exit 1
"""

POSTGRES_SCRIPT = """\
set -eu
/usr/local/bin/chanfleet-postgres >/tmp/postgres.log 2>&1 &
for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc \
  "select 'connected as ' || current_user || ' to ' || current_database() || ' ' || \
   (select auth_method from pg_hba_file_rules where address = '0.0.0.0' limit 1)"
if PGPASSWORD=wrong psql -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c 'select 1' \
  >/dev/null 2>&1; then echo "a wrong password was accepted"; exit 1; fi
echo "wrong password refused"
"""


def checks(name: str) -> list[smoke.Check]:
    """Return the smoke checks of one stand-in."""
    if name == "redis":
        return [
            smoke.Check("runs as uid 999", entrypoint="id", args=("-u",), expect=r"^999$"),
            smoke.Check("redis, sentinel and the init script's tools", entrypoint="bash",
                        args=("-c", REDIS_SCRIPT),
                        expect=r"redis PONG\s+sentinel master 127\.0\.0\.1 6379"),
        ]
    if name == "nginx":
        major, minor, patch = (int(part) for part in NGINX_VERSION.split("."))
        assert (major, minor, patch) >= (1, 27, 3), "upstream `resolve` needs nginx >= 1.27.3"
        return [
            smoke.Check("runs as uid 101", entrypoint="id", args=("-u",), expect=r"^101$"),
            smoke.Check("nginx version and modules", args=("nginx", "-V"),
                        expect=rf"nginx/{re.escape(NGINX_VERSION)}(?s:.*)http_realip_module"
                               r"(?s:.*)http_stub_status_module"),
            smoke.Check("the chart's nginx.conf passes nginx -t; the default serves 8080",
                        entrypoint="bash", args=("-c", NGINX_SCRIPT),
                        env={"CHART_CONF": chart_nginx_conf()},
                        expect=r"test is successful(?s:.*)HTTP/1\.1 200 OK"),
        ]
    if name == "postgres":
        env = {"POSTGRES_USER": "chanfleet", "POSTGRES_PASSWORD": "smoke-only",
               "POSTGRES_DB": "chanfleet", "PGDATA": "/tmp/pgdata"}
        return [
            smoke.Check("runs as uid 999", entrypoint="id", args=("-u",), expect=r"^999$"),
            smoke.Check("initdb from the environment, scram over TCP", entrypoint="bash",
                        args=("-c", POSTGRES_SCRIPT), env=env,
                        expect=r"connected as chanfleet to chanfleet scram-sha-256\s+"
                               r"wrong password refused"),
        ]
    raise ValueError(f"no stand-in named {name}")


def build_one(engine: Engine, name: str) -> Path:
    """Build, check and save one stand-in; return its archive's path."""
    tag = STANDIN_TAGS[name]
    where = context(name)
    with step(f"build {tag} ({engine.name})"):
        engine.run(engine.build_command(where, where / "Containerfile", [tag]), check=True)
    with step(f"smoke-test {tag}"):
        results = smoke.run(engine, tag, checks(name))
    failed = [result.check.name for result in results if not result.passed]
    if failed:
        raise SystemExit(f"{tag}: smoke checks failed: {', '.join(failed)}")
    path = save(engine, tag)
    print(f"image {tag}: {engine.image_size(tag) / 1e6:.0f} MB, archive {path} "
          f"{path.stat().st_size / 1e6:.0f} MB", flush=True)
    return path


def build_all(engine: Engine, names: list[str]) -> list[Path]:
    """Build every named stand-in on the shared Debian base; return their archives."""
    print(f"base {base.BASE_IMAGE}: {base.ensure(engine)}", flush=True)
    return [build_one(engine, name) for name in names]
