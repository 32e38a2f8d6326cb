"""Unit tests for deploy/nginx/render.py and the nginx.conf template it fills."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.nginx import render as nginx_render
from deploy.nginx.render import (
    APP_HEARTBEAT_SECONDS,
    DEFAULTS,
    REQUIRED,
    TEMP_DIRS,
    local_values,
    main,
    prepare_state_dir,
    render_nginx_conf,
    template_text,
    upstream_servers,
)
from deploy.processes.nginx import nginx_test
from deploy.templating import PLACEHOLDER, placeholders

LOCAL_PORTS = {
    "listen_port": 18000,
    "ws_ports": [18101, 18102],
    "http_ports": [18201, 18202],
    "status_port": 18090,
}


def _seconds(nginx_time: str) -> float:
    """Convert an nginx time value such as 75s, 2m or 500ms to seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", nginx_time)
    assert match, nginx_time
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return int(match.group(1)) * scale


def _local_conf(state_dir: Path, **overrides: str) -> Path:
    prepare_state_dir(state_dir)
    values = {**local_values(state_dir, **LOCAL_PORTS), **overrides}
    conf = state_dir / "nginx.conf"
    conf.write_text(render_nginx_conf(**values))
    return conf


def test_every_placeholder_has_a_default_or_is_required() -> None:
    """The template's placeholders are exactly DEFAULTS + REQUIRED + PID_FILE (derived)."""
    assert placeholders(template_text()) == set(DEFAULTS) | set(REQUIRED) | {"PID_FILE"}


def test_template_holds_only_plain_placeholder_tokens() -> None:
    """Every @@ in the template belongs to a plain @@NAME@@ token, so Helm's replace can fill it."""
    text = template_text()
    assert text.count("@@") == 2 * len(PLACEHOLDER.findall(text))


def test_local_render_fills_every_placeholder(tmp_path: Path) -> None:
    """Rendering the local values leaves no placeholder behind."""
    rendered = render_nginx_conf(**local_values(tmp_path, **LOCAL_PORTS))
    assert "@@" not in rendered
    assert "server 127.0.0.1:18101 max_fails=0 fail_timeout=5s;" in rendered
    assert "server 127.0.0.1:18202 max_fails=1 fail_timeout=5s;" in rendered
    assert f"pid {tmp_path}/nginx.pid;" in rendered
    assert "listen 127.0.0.1:18090;" in rendered


def test_render_refuses_missing_and_unknown_values(tmp_path: Path) -> None:
    """A missing environment value or a misspelt placeholder name raises KeyError."""
    values = local_values(tmp_path, **LOCAL_PORTS)
    del values["WS_SERVERS"]
    with pytest.raises(KeyError, match="WS_SERVERS"):
        render_nginx_conf(**values)
    with pytest.raises(KeyError, match="WS_READ_TIMEOT"):
        render_nginx_conf(**local_values(tmp_path, **LOCAL_PORTS), WS_READ_TIMEOT="90s")


def test_upstream_needs_a_server() -> None:
    """An empty server list is refused rather than rendering an upstream nginx rejects."""
    with pytest.raises(ValueError):
        upstream_servers([])


def test_default_ws_read_timeout_is_well_above_the_app_heartbeat() -> None:
    """The default WebSocket idle timeout survives at least two missed heartbeats."""
    assert _seconds(DEFAULTS["WS_READ_TIMEOUT"]) >= 2 * APP_HEARTBEAT_SECONDS


def test_rendered_local_config_passes_nginx_t(tmp_path: Path) -> None:
    """`nginx -t -p STATE_DIR -c nginx.conf` accepts the local config without warnings."""
    output = nginx_test(_local_conf(tmp_path), tmp_path)
    assert "[warn]" not in output and "[emerg]" not in output, output


def test_config_needs_nothing_from_system_nginx_dirs(tmp_path: Path) -> None:
    """No include of /etc/nginx (mime.types) and no /var/lib, /var/log or /run paths."""
    # Directives only: comments may mention these directories.
    rendered = re.sub(r"#.*", "", _local_conf(tmp_path).read_text())
    assert not re.search(r"^\s*include\b", rendered, re.MULTILINE)
    for system_dir in ("/etc/nginx", "/var/lib/nginx", "/var/log/nginx", "/run/"):
        assert system_dir not in rendered
    assert "default_type application/octet-stream;" in rendered
    for name in TEMP_DIRS:
        assert f"{tmp_path}/{name};" in rendered


def test_container_style_values_pass_nginx_t(tmp_path: Path) -> None:
    """stdout/stderr logs, a resolver line and a realip block (Kubernetes shape) parse."""
    prepare_state_dir(tmp_path)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        render_nginx_conf(
            LISTEN="127.0.0.1:18080",
            STATUS_LISTEN="127.0.0.1:18081",
            # `resolve` needs nginx >= 1.27.3; the servers are plain addresses here so that
            # the older nginx of the test machine can check everything else.
            WS_SERVERS=upstream_servers(["127.0.0.1:18101", "127.0.0.1:18102"]),
            HTTP_SERVERS=upstream_servers(["127.0.0.1:18201"]),
            STATE_DIR=str(tmp_path),
            ERROR_LOG="stderr",
            ACCESS_LOG="/dev/stdout",
            RESOLVER_LINE="resolver 127.0.0.1 valid=5s ipv6=off;",
            REAL_IP_CONFIG=(
                "set_real_ip_from 10.0.0.0/8;\n    real_ip_header X-Forwarded-For;\n"
                "    real_ip_recursive on;"
            ),
            FORWARDED_PROTO="$http_x_forwarded_proto",
            WORKER_PROCESSES="auto",
        )
    )
    output = nginx_test(conf, tmp_path)
    assert "[warn]" not in output, output


def test_cli_renders_config_and_creates_temp_dirs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI writes nginx.conf where asked, creates the temp dirs, and nginx -t accepts it."""
    state = tmp_path / "state"
    out = tmp_path / "conf" / "nginx.conf"
    argv = [
        "--state-dir",
        str(state),
        "--listen",
        "18000",
        "--ws",
        "18101",
        "--ws",
        "18102",
        "--http",
        "18201",
        "--http",
        "18202",
        "--status",
        "18090",
        "--out",
        str(out),
        "--set",
        "WS_READ_TIMEOUT=90s",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert all((state / name).is_dir() for name in TEMP_DIRS)
    rendered = out.read_text()
    assert "proxy_read_timeout 90s;" in rendered
    assert f"access_log {state}/access.log chanfleet_json;" in rendered
    nginx_test(out, state)


def test_cli_refuses_unknown_override(tmp_path: Path) -> None:
    """--set with a name that is not a placeholder is a usage error."""
    with pytest.raises(SystemExit):
        main(
            [
                "--state-dir",
                str(tmp_path),
                "--listen",
                "1",
                "--ws",
                "2",
                "--http",
                "3",
                "--status",
                "4",
                "--set",
                "NOT_A_PLACEHOLDER=1",
            ]
        )


def test_template_path_is_the_charts_file() -> None:
    """render.py reads the chart's files/nginx.conf.tmpl, the one copy the chart fills too."""
    chart_files = Path(__file__).resolve().parents[1] / "helm" / "chanfleet" / "files"
    assert nginx_render.TEMPLATE_PATH == chart_files / "nginx.conf.tmpl"
    assert nginx_render.TEMPLATE_PATH.read_bytes().decode("utf-8") == template_text()
