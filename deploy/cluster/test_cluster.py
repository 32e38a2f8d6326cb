"""The real local cluster: node, Deployment, Service DNS, NodePort, logs, exec and Helm.

Brings the cluster up unless it already is (and then leaves it up); `make test-integration`.
"""

import json
import os
import time
import urllib.request

import pytest

from deploy import cluster
from deploy.cluster import paths, settings

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.topology,
    # Covers a cold build of the binaries in the first test's setup.
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.geteuid() != 0, reason="the local cluster needs root"),
]

NAMESPACE = "probe-test"
CHART = paths.PACKAGE / "testdata" / "probe-chart"


def probe_container(version: str, ready: bool) -> dict:
    """The probe image serving on 8080, with a readiness probe when ready."""
    container = {
        "name": "probe",
        "image": settings.PROBE_IMAGE,
        # Images are imported into containerd, never pulled.
        "imagePullPolicy": "Never",
        "args": ["serve", "-addr", ":8080"],
        "env": [{"name": "PROBE_VERSION", "value": version}],
        "ports": [{"name": "http", "containerPort": 8080}],
    }
    if ready:
        container["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 2,
        }
    return container


def manifests() -> str:
    """The Deployment, its ClusterIP and NodePort Services, and a long-lived client pod."""
    labels = {"app": "web"}
    ports = [{"port": 80, "targetPort": "http"}]
    pod_spec = {"terminationGracePeriodSeconds": 5, "containers": [probe_container("web", True)]}
    items = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": ports},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web-nodeport"},
            "spec": {"type": "NodePort", "selector": labels, "ports": ports},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [probe_container("client", False)],
            },
        },
    ]
    for item in items:
        item["metadata"]["namespace"] = NAMESPACE
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


@pytest.fixture(scope="module")
def up():
    """The cluster, brought up here (and down at the end) unless it already was."""
    was_up = cluster.is_up()
    started = time.monotonic()
    timings = {} if was_up else cluster.up()
    print(f"\ncluster {'was already up' if was_up else 'up'}: " + ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in timings.items()
    ) + f" (fixture {time.monotonic() - started:.1f} s)")  # fmt: skip
    yield
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
    if not was_up:
        print(f"cluster down in {cluster.down():.1f} s")
        assert cluster.leftovers() == []


@pytest.fixture(scope="module")
def workloads(up):
    """The probe Deployment, its Services and a client pod in a namespace of their own."""
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("apply", "-f", "-", input=manifests())
    started = time.monotonic()
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deployment/web", "--timeout=120s",
                    timeout=130)  # fmt: skip
    cluster.kubectl("-n", NAMESPACE, "wait", "pod/client", "--for=condition=Ready",
                    "--timeout=120s", timeout=130)  # fmt: skip
    print(f"\nworkloads ready in {time.monotonic() - started:.1f} s")


def exec_in_client(*argv: str, timeout: float = 60) -> str:
    """Run the probe binary in the client pod and return what it printed."""
    return cluster.kubectl(
        "-n", NAMESPACE, "exec", "client", "--", "/probe", *argv, timeout=timeout
    ).stdout  # fmt: skip


def served_version(url: str, expected: str, timeout: float = 30) -> str:
    """The version a Service answers with, polled until it is expected (pods are replaced)."""
    deadline = time.monotonic() + timeout
    while True:
        version = exec_in_client("test", url, timeout=90).split()[-1]
        if version == expected or time.monotonic() > deadline:
            return version
        time.sleep(1)


def test_node_is_ready(up):
    assert cluster.node_ready()
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [node["metadata"]["name"] for node in nodes] == [settings.NODE_NAME]
    assert nodes[0]["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.28.")


def test_deployment_becomes_available(workloads):
    deployment = json.loads(
        cluster.kubectl("-n", NAMESPACE, "get", "deployment", "web", "-o", "json").stdout
    )
    assert deployment["status"]["availableReplicas"] == 2


def test_service_is_reached_by_dns_name_from_another_pod(workloads):
    name = f"web.{NAMESPACE}.svc.{settings.CLUSTER_DOMAIN}"
    addresses = exec_in_client("lookup", name).split()
    service = cluster.kubectl("-n", NAMESPACE, "get", "service", "web",
                              "-o", "jsonpath={.spec.clusterIP}").stdout  # fmt: skip
    assert addresses == [service]
    # probe test retries: kube-proxy may not have written the new Service's rules yet.
    assert exec_in_client("test", f"http://{name}/", timeout=90).startswith("probe web-")
    # The short name through the pod's search domains, and the kube-dns Service itself.
    assert exec_in_client("test", "http://web/", timeout=90).startswith("probe web-")
    assert exec_in_client("lookup", "kube-dns.kube-system").split() == [settings.dns_ip()]


def test_nodeport_is_reachable_from_the_host(workloads):
    port = cluster.kubectl("-n", NAMESPACE, "get", "service", "web-nodeport",
                           "-o", "jsonpath={.spec.ports[0].nodePort}").stdout  # fmt: skip
    url = cluster.nodeport_url(int(port))
    assert url.startswith("http://127.0.0.1:")
    deadline, body = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
                break
        except OSError:
            time.sleep(1)
    assert body.startswith("probe web-")


def test_logs_and_exec(workloads):
    logs = cluster.kubectl("-n", NAMESPACE, "logs", "deployment/web").stdout
    assert "probe serving on :8080" in logs
    hostname = cluster.kubectl("-n", NAMESPACE, "exec", "client", "--", "/probe", "get",
                               "http://127.0.0.1:8080/").stdout  # fmt: skip
    assert hostname.strip() == "probe client client"


def test_helm_install_test_upgrade_uninstall(workloads):
    started = time.monotonic()
    common = ("--namespace", NAMESPACE, "--wait", "--timeout", "120s")
    cluster.helm("install", "demo", str(CHART), *common, timeout=150)
    test = cluster.helm("test", "demo", "--namespace", NAMESPACE, "--timeout", "120s", timeout=150)
    assert "Phase:          Succeeded" in test.stdout
    assert served_version("http://demo-probe/", "v1") == "v1"
    cluster.helm("upgrade", "demo", str(CHART), "--set", "version=v2", *common, timeout=150)
    assert served_version("http://demo-probe/", "v2") == "v2"
    history = cluster.helm("history", "demo", "--namespace", NAMESPACE).stdout
    assert len(history.strip().splitlines()) == 3  # a header and two revisions
    cluster.helm("uninstall", "demo", "--namespace", NAMESPACE, "--wait", timeout=150)
    left = cluster.kubectl("-n", NAMESPACE, "get", "deployment,service", "-l",
                           "app.kubernetes.io/instance=demo", "-o", "name").stdout  # fmt: skip
    assert left.strip() == ""
    print(f"\nhelm install/test/upgrade/uninstall in {time.monotonic() - started:.1f} s")
