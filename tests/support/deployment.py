"""The chart installed in the local Kubernetes cluster, as the deployed-form drills use it.

`Deployment.installed()` brings the cluster up when it is not (and down again afterwards),
builds and imports the images (`make image`, the test stand-ins), runs a PostgreSQL of its own
in the drill namespace, installs the chart with tests/deployed-values.yaml, creates the drill
users, and removes the release and the namespace at the end.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from deploy import cluster
from deploy.image.versions import STANDIN_TAGS, app_tag, archive_path

REPO = Path(__file__).resolve().parent.parent.parent
CHART = REPO / "deploy" / "helm" / "chanfleet"
VALUES = REPO / "tests" / "deployed-values.yaml"
NAMESPACE = "chanfleet-drill"
RELEASE = "chanfleet"
NODE_PORT = 30180
SERVICE_TOKEN = "drill-service-token-not-for-production-0123456789"
DB_PASSWORD = "drill-database-password"
PASSWORD = "chanfleet"

# Run in a pod of the app image: POST each ws pod's /internal/drain claiming to be the pod
# itself, on the public port and on the internal one. Prints {ip: {public, internal}} as JSON.
FORGER = """
import json, sys, urllib.error, urllib.request
port, internal, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
def post(url):
    request = urllib.request.Request(url, method="POST", headers={
        "X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Host": "127.0.0.1"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return "refused"
print(json.dumps({ip: {"public": post(f"http://{ip}:{port}/internal/drain?exit=0"),
                       "internal": post(f"http://{ip}:{internal}/internal/drain?exit=0")}
                  for ip in targets}))
"""

POSTGRES = """
apiVersion: v1
kind: Secret
metadata: {{name: drill-postgres}}
stringData:
  POSTGRES_DB: chanfleet
  POSTGRES_USER: chanfleet
  POSTGRES_PASSWORD: {password}
---
apiVersion: v1
kind: Secret
metadata: {{name: drill-database}}
stringData:
  DATABASE_URL: postgres://chanfleet:{password}@drill-postgres:5432/chanfleet
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: drill-postgres}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: drill-postgres}}}}
  template:
    metadata: {{labels: {{app: drill-postgres}}}}
    spec:
      containers:
        - name: postgres
          image: {image}
          imagePullPolicy: Never
          envFrom: [{{secretRef: {{name: drill-postgres}}}}]
          ports: [{{containerPort: 5432}}]
          readinessProbe:
            tcpSocket: {{port: 5432}}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {{name: drill-postgres}}
spec:
  selector: {{app: drill-postgres}}
  ports: [{{port: 5432, targetPort: 5432}}]
"""


def session_of(base_url: str, username: str) -> requests.Session:
    """A logged-in requests session (its cookies hold sessionid and csrftoken)."""
    session = requests.Session()
    token = session.get(f"{base_url}/api/csrf", timeout=10).json()["csrf_token"]
    answer = session.post(f"{base_url}/api/login",
                          json={"username": username, "password": PASSWORD},
                          headers={"X-CSRFToken": token}, timeout=60)
    answer.raise_for_status()
    return session


def build_and_import_images() -> dict[str, float]:
    """Build the app image and the stand-ins (cached when unchanged) and import them."""
    timings = {}
    for command in (["image"], ["test-images"]):
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "deploy.image", *command], cwd=REPO, check=True,
                       timeout=3600)
        timings[command[0]] = time.monotonic() - started
    started = time.monotonic()
    for tag in (app_tag(), *STANDIN_TAGS.values()):
        cluster.load_image(archive_path(tag))
    timings["import"] = time.monotonic() - started
    return timings


class LogFollower:
    """`kubectl logs -f` of one pod, collected until stop()."""

    def __init__(self, pod: str, namespace: str):
        self.proc = subprocess.Popen(
            [str(cluster.KUBECTL), "logs", "-f", pod, "-n", namespace, "--tail=-1"],
            env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self, timeout: float = 10) -> str:
        """Stop following (the pod may be gone already) and return what was read."""
        if self.proc.poll() is None:
            self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self.reader.join(timeout)
        return "".join(self.lines)


class Deployment:
    """One installed release of the chart, reached through the nginx NodePort on 127.0.0.1."""

    namespace = NAMESPACE
    release = RELEASE
    app_port = 8000
    internal_port = 9000

    def __init__(self):
        self.url = cluster.nodeport_url(NODE_PORT).rstrip("/")
        self.ws_url = self.url.replace("http://", "ws://", 1)

    # -------------------------------------------------------------- install and remove
    @classmethod
    @contextlib.contextmanager
    def installed(cls, users: list[str] = ()) -> Iterator[Deployment]:
        """Install the chart (cluster, images, database, release, users); remove it after."""
        brought_up = not cluster.is_up()
        started = time.monotonic()
        if brought_up:
            cluster.up()
        up_seconds = time.monotonic() - started
        deployment = cls()
        try:
            timings = build_and_import_images()
            deployment.install()
            deployment.create_users(users)
            print(f"\ndeployment: cluster up {up_seconds:.0f}s, images "
                  + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
                  + f", helm install {deployment.install_seconds:.0f}s", flush=True)
            yield deployment
        finally:
            deployment.remove()
            if brought_up:
                cluster.down()

    def install(self) -> None:
        """Create the namespace and its PostgreSQL, then `helm install --wait` the chart."""
        self.kubectl("create", "namespace", NAMESPACE, check=False)
        manifest = POSTGRES.format(password=DB_PASSWORD, image=STANDIN_TAGS["postgres"])
        self.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=manifest)
        self.kubectl("rollout", "status", "deployment/drill-postgres", "-n", NAMESPACE,
                     "--timeout=180s", timeout=200)
        repository, _, tag = app_tag().rpartition(":")
        started = time.monotonic()
        result = self.helm(
            "upgrade", "--install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(VALUES),
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", f"secrets.serviceToken={SERVICE_TOKEN}",
            "--wait", "--timeout", "10m0s", timeout=660)
        self.install_seconds = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"helm install failed:\n{result.stdout}\n{result.stderr}\n"
                               + self.describe())

    def describe(self) -> str:
        """Pods and recent events of the namespace, for a failure message."""
        pods = self.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
        events = self.kubectl("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp",
                              check=False).stdout
        return f"{pods}\n{events[-6000:]}"

    def create_users(self, users: list[str]) -> None:
        """The demo users (alice, bob, admin; room lobby) and the drills' users."""
        self.manage("seed_demo")
        names = ",".join(repr(u) for u in users)
        self.manage("shell", "--no-imports", "-c", (
            "from django.contrib.auth.models import User\n"
            f"for name in [{names}]:\n"
            "    u, _ = User.objects.get_or_create(username=name)\n"
            f"    u.set_password({PASSWORD!r}); u.save()\n"))

    def remove(self) -> None:
        """Uninstall the release and delete the namespace (with its PostgreSQL)."""
        self.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "3m0s",
                  timeout=200)
        self.kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=180s",
                     check=False, timeout=200)

    # -------------------------------------------------------------- commands
    def kubectl(self, *args: str, timeout: float = 60, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess:
        """Run kubectl against the cluster."""
        return cluster.kubectl(*args, timeout=timeout, check=check, input=input)

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run helm against the cluster (never raises: callers read returncode)."""
        return cluster.helm(*args, timeout=timeout, check=False)

    def manage(self, *args: str) -> str:
        """Run manage.py in an HTTP pod and return its output."""
        return self.kubectl("exec", f"deployment/{RELEASE}-http", "-n", NAMESPACE, "-c", "http",
                            "--", "python", "manage.py", *args, timeout=120).stdout

    def pods(self, component: str) -> list[str]:
        """Names of the component's pods that are running and not terminating."""
        out = self.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json", "-l",
                           f"app.kubernetes.io/instance={RELEASE},"
                           f"app.kubernetes.io/component={component}").stdout
        return sorted(p["metadata"]["name"] for p in json.loads(out)["items"]
                      if p["status"].get("phase") == "Running"
                      and not p["metadata"].get("deletionTimestamp"))

    def pod_ip(self, pod: str) -> str:
        """A pod's address on the cluster network."""
        return self.kubectl("get", "pod", pod, "-n", NAMESPACE, "-o",
                            "jsonpath={.status.podIP}").stdout.strip()

    def in_pod(self, pod: str, script: str, container: str = "ws", timeout: float = 30) -> str:
        """Run a Python snippet in one of the app's pods and return what it printed."""
        return self.kubectl("exec", pod, "-n", NAMESPACE, "-c", container, "--", "python", "-c",
                            script, timeout=timeout).stdout

    def process_status(self, pod: str) -> dict:
        """The pod's /internal/status, asked from inside the pod (its loopback listener)."""
        return json.loads(self.in_pod(pod, (
            "import urllib.request as u; print(u.urlopen("
            f"'http://127.0.0.1:{self.internal_port}/internal/status', timeout=5).read()"
            ".decode())")))

    def run_pod(self, name: str, command: list[str], timeout: float = 120) -> dict:
        """Run a one-off pod of the app image to completion; return the JSON it printed."""
        self.kubectl("delete", "pod", name, "-n", NAMESPACE, "--ignore-not-found", timeout=90)
        self.kubectl("run", name, "-n", NAMESPACE, f"--image={app_tag()}",
                     "--image-pull-policy=Never", "--restart=Never", "--command", "--",
                     *command)
        deadline = time.monotonic() + timeout
        while True:
            phase = self.kubectl("get", "pod", name, "-n", NAMESPACE, "-o",
                                 "jsonpath={.status.phase}").stdout.strip()
            if phase in ("Succeeded", "Failed"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {name} still {phase!r} after {timeout}s")
            time.sleep(1)
        logs = self.kubectl("logs", name, "-n", NAMESPACE).stdout
        self.kubectl("delete", "pod", name, "-n", NAMESPACE, "--wait=false", check=False)
        assert phase == "Succeeded", logs
        return json.loads(logs.strip().splitlines()[-1])

    def follow_logs(self, pod: str) -> LogFollower:
        """Start collecting a pod's log (to read after it is gone)."""
        return LogFollower(pod, NAMESPACE)

    # -------------------------------------------------------------- Redis Sentinel
    def sentinel(self, pod: str, *args: str) -> str:
        """Run a SENTINEL command on one Redis pod's sentinel."""
        # The container's REDISCLI_AUTH is the sentinel password.
        return self.kubectl("exec", pod, "-n", NAMESPACE, "-c", "sentinel", "--", "redis-cli",
                            "-p", "26379", "SENTINEL", *args, timeout=20).stdout.strip()

    def redis_cli(self, pod: str, *args: str) -> str:
        """Run a Redis command on one Redis pod's data node."""
        # The container's REDISCLI_AUTH is the Redis password.
        return self.kubectl("exec", pod, "-n", NAMESPACE, "-c", "redis", "--", "redis-cli",
                            "-p", "6379", *args, timeout=20).stdout.strip()

    def redis_master_pod(self, asking: list[str] | None = None,
                         master: str = "chanfleet") -> str:
        """The pod the sentinels name as `master` (its announced name starts with the pod's).

        Only the first Redis group's pods run sentinels; the others' are skipped.
        """
        for pod in asking or self.pods("redis"):
            with contextlib.suppress(subprocess.SubprocessError):
                answer = self.sentinel(pod, "get-master-addr-by-name", master)
                host = answer.splitlines()[0] if answer else ""
                if host:
                    return host.split(".")[0]
        raise RuntimeError("no sentinel names a master")

    def wait_new_master(self, old: str, timeout: float) -> str:
        """Wait until the surviving sentinels name another pod as master; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            survivors = [p for p in self.pods("redis") if p != old]
            with contextlib.suppress(RuntimeError):
                master = self.redis_master_pod(survivors)
                if master != old:
                    return master
            time.sleep(0.5)
        raise TimeoutError(f"no new master within {timeout}s of killing {old}")

    def wait_redis_ready(self, timeout: float) -> None:
        """Wait until every Redis pod is back and ready (after a drill killed one)."""
        self.kubectl("rollout", "status", f"statefulset/{RELEASE}-redis", "-n", NAMESPACE,
                     f"--timeout={int(timeout)}s", timeout=timeout + 20)

    # -------------------------------------------------------------- metrics
    def watch_drain_metrics(self, pods: list[str], seen: dict[str, float],
                            timeout: float) -> None:
        """While each pod terminates, read its drain counter once it is non-zero.

        The counter lives only as long as the pod, so it is read from inside the pod between
        the preStop hook's start and the process's exit.
        """
        script = ("import urllib.request as u; print(u.urlopen("
                  f"'http://127.0.0.1:{self.app_port}/metrics', timeout=3).read().decode())")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(seen) < len(pods):
            for pod in pods:
                if pod in seen:
                    continue
                with contextlib.suppress(subprocess.SubprocessError, AssertionError):
                    body = self.in_pod(pod, script, timeout=10)
                    value = sum(float(v) for v in re.findall(
                        r"^chanfleet_drain_reconnects_requested_total(?:{[^}]*})? (\S+)$",
                        body, re.M))
                    if value >= 1:
                        seen[pod] = value
            time.sleep(0.5)
