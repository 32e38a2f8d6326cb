"""Render the chart's files/nginx.conf.tmpl for the local topology (the chart fills it too).

Usage::

    python -m deploy.nginx.render --state-dir var/nginx --listen 8000 \\
        --ws 8101 --ws 8102 --http 8201 --http 8202 --status 8090 --out var/nginx/nginx.conf
    nginx -p var/nginx -e stderr -c var/nginx/nginx.conf
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

from deploy.templating import placeholders, render

# The chart reads it from its files/ (Helm sees nothing outside the chart): the one copy.
TEMPLATE_PATH = (Path(__file__).resolve().parents[1] / "helm" / "chanfleet" / "files"
                 / "nginx.conf.tmpl")

# The app's WebSocket heartbeat; WS_READ_TIMEOUT must stay well above it.
APP_HEARTBEAT_SECONDS = 25

# Directories nginx needs under STATE_DIR (the *_temp_path directives of the template).
TEMP_DIRS = ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp")

# Values that do not depend on the environment. Everything else must be given.
DEFAULTS: dict[str, str] = {
    "WORKER_PROCESSES": "auto",
    "WORKER_CONNECTIONS": "4096",
    "WORKER_SHUTDOWN_TIMEOUT": "30s",
    "ERROR_LOG": "stderr",
    "ACCESS_LOG": "/dev/stdout",
    "REAL_IP_CONFIG": "",
    "RESOLVER_LINE": "",
    "WS_READ_TIMEOUT": "75s",
    "UPSTREAM_CONNECT_TIMEOUT": "3s",
    "HTTP_KEEPALIVE_TIMEOUT": "4s",
    "CLIENT_MAX_BODY_SIZE": "1m",
    "CONN_LIMIT_PER_ADDR": "100",
    "FORWARDED_PROTO": "$scheme",
}

# Values that differ per environment and have no default. PID_FILE defaults to
# STATE_DIR/nginx.pid.
REQUIRED = ("LISTEN", "STATUS_LISTEN", "WS_SERVERS", "HTTP_SERVERS", "STATE_DIR")

# Indentation of the server lines inside an upstream block of the template.
_SERVER_INDENT = "\n        "


def template_text() -> str:
    """Return the nginx.conf template exactly as stored (the chart keeps a byte-identical copy)."""
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def upstream_servers(
    addresses: Iterable[str], *, max_fails: int = 1, fail_timeout: str = "5s"
) -> str:
    """Return the block of `server host:port ...;` lines for an upstream placeholder."""
    lines = [
        f"server {address} max_fails={max_fails} fail_timeout={fail_timeout};"
        for address in addresses
    ]
    if not lines:
        raise ValueError("an upstream needs at least one server")
    return _SERVER_INDENT.join(lines)


def render_nginx_conf(**values: object) -> str:
    """Render the template from placeholder-named values on top of DEFAULTS, refusing gaps."""
    missing = [name for name in REQUIRED if name not in values]
    if missing:
        raise KeyError(f"nginx.conf values without default missing: {missing}")
    filled: dict[str, object] = {**DEFAULTS, **values}
    filled.setdefault("PID_FILE", f"{os.fspath(values['STATE_DIR'])}/nginx.pid")
    filled["STATE_DIR"] = os.fspath(values["STATE_DIR"])
    return render(template_text(), filled)


def local_values(
    state_dir: str | os.PathLike[str],
    listen_port: int,
    ws_ports: Iterable[int],
    http_ports: Iterable[int],
    status_port: int,
) -> dict[str, str]:
    """Return render values for the local topology: everything on 127.0.0.1, logs in state_dir."""
    state = Path(state_dir).absolute()
    return {
        "LISTEN": f"127.0.0.1:{listen_port}",
        "STATUS_LISTEN": f"127.0.0.1:{status_port}",
        # max_fails=0 for WebSockets: an upgraded connection never "finishes", so a server
        # marked failed (refused during a restart) stays blocked long after it is back;
        # proxy_next_upstream already moves each handshake to a live process.
        "WS_SERVERS": upstream_servers((f"127.0.0.1:{port}" for port in ws_ports), max_fails=0),
        "HTTP_SERVERS": upstream_servers(f"127.0.0.1:{port}" for port in http_ports),
        "STATE_DIR": str(state),
        "PID_FILE": str(state / "nginx.pid"),
        "ERROR_LOG": str(state / "error.log"),
        "ACCESS_LOG": str(state / "access.log"),
        "WORKER_PROCESSES": "2",
        "WORKER_CONNECTIONS": "1024",
    }


def prepare_state_dir(state_dir: str | os.PathLike[str]) -> Path:
    """Create the state directory and the temp directories nginx writes into; return it."""
    state = Path(state_dir).absolute()
    for name in TEMP_DIRS:
        (state / name).mkdir(parents=True, exist_ok=True)
    return state


def _parse_set(option: str) -> tuple[str, str]:
    name, sep, value = option.partition("=")
    if not sep or name not in placeholders(template_text()):
        raise argparse.ArgumentTypeError(f"expected PLACEHOLDER=value, got {option!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    """Command line: render the local nginx.conf and create the directories it needs."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.nginx.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state-dir", required=True, help="pid, logs and temp files")
    parser.add_argument("--listen", type=int, required=True, help="public port")
    parser.add_argument(
        "--ws",
        type=int,
        action="append",
        required=True,
        help="a WebSocket (uvicorn) port; repeat for each process",
    )
    parser.add_argument(
        "--http",
        type=int,
        action="append",
        required=True,
        help="a gunicorn (HTTP) port; repeat for each process",
    )
    parser.add_argument("--status", type=int, required=True, help="stub_status port")
    parser.add_argument("--out", help="where to write nginx.conf (default STATE_DIR/nginx.conf)")
    parser.add_argument(
        "--set",
        type=_parse_set,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one placeholder, e.g. WS_READ_TIMEOUT=90s",
    )
    args = parser.parse_args(argv)

    state = prepare_state_dir(args.state_dir)
    values: dict[str, str] = local_values(state, args.listen, args.ws, args.http, args.status)
    values.update(dict(args.set))
    out = Path(args.out) if args.out else state / "nginx.conf"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_nginx_conf(**values), encoding="utf-8")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
