"""A real Prometheus for the monitoring tests: start it, wait for targets, query it.

Typical use in a live test (the topology already running, see monitoring/README.md):

    prom = start_prometheus("monitoring/prometheus.yml", 9091, tmp_path / "prom")
    try:
        wait_for_targets_up(prom.url, ["chanfleet-ws", "chanfleet-http"], timeout=60)
        for name, expr in dashboard_expressions() + alert_expressions():
            query(prom.url, expr)          # raises PrometheusError if Prometheus rejects it
    finally:
        prom.stop()

Only the standard library and PyYAML are used.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from monitoring import alerts_source
from monitoring.dashboards.queries import dashboard_queries, to_promql

MONITORING_DIR = Path(__file__).resolve().parent
ALERTS_FILE = alerts_source.ALERTS_PATH


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error, or could not be reached."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when asked."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str, timeout: float = 10) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:  # 400/422/503 carry a JSON error body
        try:
            return json.loads(error.read())
        except ValueError:
            raise PrometheusError(f"{url}: HTTP {error.code}") from error
    except (urllib.error.URLError, OSError) as error:
        raise PrometheusError(f"{url}: {error}") from error


@dataclass
class PrometheusProcess:
    """A Prometheus server started by start_prometheus(); stop() ends it."""

    popen: subprocess.Popen
    url: str
    port: int
    data_dir: Path
    log_path: Path
    _log: object = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The process id of the Prometheus server."""
        return self.popen.pid

    def log(self) -> str:
        """Return what Prometheus has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10) -> int:
        """Stop this Prometheus (SIGTERM, then SIGKILL after timeout) and return its exit code."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.returncode

    def __enter__(self) -> PrometheusProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_prometheus(config_path: str | os.PathLike, port: int, data_dir: str | os.PathLike,
                     *, binary: str = "prometheus", timeout: float = 30,
                     extra_args: tuple[str, ...] = ()) -> PrometheusProcess:
    """Start Prometheus on 127.0.0.1:port with a config and a data dir; wait until it is ready."""
    executable = shutil.which(binary)
    if executable is None:
        raise FileNotFoundError(f"{binary} not found on PATH")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "prometheus.log"
    log = open(log_path, "ab")  # closed by PrometheusProcess.stop()
    command = [
        executable,
        f"--config.file={Path(config_path).resolve()}",
        f"--storage.tsdb.path={data_dir.resolve() / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
        "--web.enable-lifecycle",
        *extra_args,
    ]
    popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    prom = PrometheusProcess(popen, f"http://127.0.0.1:{port}", port, data_dir, log_path, log)
    deadline = time.monotonic() + timeout
    while True:
        if popen.poll() is not None:
            prom.stop()
            raise PrometheusError(f"prometheus exited with {popen.returncode}:\n{prom.log()}")
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return prom
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            prom.stop()
            raise TimeoutError(f"prometheus not ready after {timeout}s:\n{prom.log()}")
        time.sleep(0.2)


def targets(prom_url: str) -> list[dict]:
    """Return the active scrape targets of a Prometheus (its /api/v1/targets answer)."""
    answer = _get_json(f"{prom_url}/api/v1/targets?state=active")
    if answer.get("status") != "success":
        raise PrometheusError(f"targets: {answer}")
    return answer["data"]["activeTargets"]


def wait_for_targets_up(prom_url: str, jobs: list[str], timeout: float = 60) -> list[dict]:
    """Wait until every job has at least one target and all its targets are up; return them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [t for t in targets(prom_url) if t["labels"].get("job") in jobs]
        pending = {
            job: [f"{t['labels'].get('instance')}: {t['health']} {t.get('lastError', '')}"
                  for t in found if t["labels"].get("job") == job and t["health"] != "up"]
            for job in jobs
        }
        missing = [job for job in jobs if not any(t["labels"].get("job") == job for t in found)]
        if not missing and not any(pending.values()):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"targets not up after {timeout}s: missing jobs {missing}, not up {pending}"
            )
        time.sleep(0.5)


def query(prom_url: str, expr: str, at: float | None = None) -> list[dict]:
    """Run an instant query and return its series (`[{"metric": {...}, "value": [t, v]}]`)."""
    params = {"query": expr}
    if at is not None:
        params["time"] = str(at)
    answer = _get_json(f"{prom_url}/api/v1/query?{urllib.parse.urlencode(params)}")
    if answer.get("status") != "success":
        raise PrometheusError(
            f"{answer.get('errorType')}: {answer.get('error')} (query: {expr})"
        )
    data = answer["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def dashboard_expressions(variables: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Return (dashboard: panel, expr) for every dashboard query, Grafana variables filled in."""
    return [(name, to_promql(expr, variables)) for name, expr in dashboard_queries()]


def alert_expressions(path: str | os.PathLike = ALERTS_FILE) -> list[tuple[str, str]]:
    """Return (alert name, expr) for every alerting rule of the generated rule file."""
    document = yaml.safe_load(Path(path).read_text())
    return [
        (rule["alert"], rule["expr"].strip())
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def scrape_every(top, interval: str) -> None:
    """Make a running topology's Prometheus scrape and evaluate every `interval` (SIGHUP)."""
    import signal

    path = top.state / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    config["global"].update(scrape_interval=interval, scrape_timeout=interval,
                            evaluation_interval=interval)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    top.kill("prometheus", signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        loaded = yaml.safe_load(_get_json(f"{top.prometheus_url}/api/v1/status/config",
                                          timeout=5)["data"]["yaml"])
        if loaded["global"]["scrape_interval"] == interval:
            return
        time.sleep(0.2)
    raise AssertionError("Prometheus did not reload its configuration")

