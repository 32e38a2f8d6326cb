"""Tests of the monitoring bundle: Prometheus config, alerts, promtool tests, dashboards, docs.

Run: .venv/bin/pytest -p no:django monitoring -q   (needs promtool/prometheus on PATH)
"""

import ast
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # pytest puts monitoring/ on sys.path, the imports need the root
    sys.path.insert(0, str(ROOT))

from monitoring import alerts_source  # noqa: E402
from monitoring.dashboards import generate, queries  # noqa: E402
from tests.support import prometheus as live  # noqa: E402

MONITORING = ROOT / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
ALERTS_YAML = alerts_source.ALERTS_PATH
DASHBOARDS = ROOT / "deploy" / "helm" / "chanfleet" / "files" / "dashboards"
ALERTS_TEST = MONITORING / "tests" / "alerts_test.yaml"
RUNBOOK = ROOT / "docs" / "runbooks" / "alerts.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"
METRICS_PY = ROOT / "app" / "realtime" / "ops" / "metrics.py"

EXPECTED_DASHBOARDS = {
    "chanfleet-overview.json": "Chanfleet / Overview",
    "chanfleet-channel-layer.json": "Chanfleet / Channel layer & Redis",
}
# prometheus-client 0.26 exposition suffixes of each metric type.
SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
    "Info": ("_info",),
}
CHANFLEET_NAME = re.compile(r"\bchanfleet_[a-zA-Z0-9_]+")


# ---------------------------------------------------------------------------- helpers
def promtool(*args: str) -> subprocess.CompletedProcess:
    """Run promtool from the repository root and return the finished process."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found on PATH (Debian: apt-get install prometheus)")
    return subprocess.run(
        ["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def alert_rules() -> list[dict]:
    """Every alerting rule of alerts.yaml."""
    document = yaml.safe_load(ALERTS_YAML.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def promtool_cases() -> list[dict]:
    """Every alert_rule_test case of the promtool unit test file."""
    document = yaml.safe_load(ALERTS_TEST.read_text())
    return [case for test in document["tests"] for case in test.get("alert_rule_test", [])]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def defined_metrics() -> dict[str, str]:
    """{metric name: type} of every metric constructed in app/realtime/ops/metrics.py."""
    found = {}
    for node in ast.walk(ast.parse(METRICS_PY.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        first = node.args[0]
        if kind in SUFFIXES and isinstance(first, ast.Constant) and isinstance(first.value, str):
            name = first.value
            if kind == "Counter":
                name = name.removesuffix("_total")
            found[name] = kind
    return found


def all_expressions() -> list[tuple[str, str]]:
    """(where, expr) for every dashboard expression and every alert expression."""
    return [(f"dashboard {n}", e) for n, e in queries.dashboard_queries()] + [
        (f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()
    ]


def referenced_chanfleet_names() -> dict[str, str]:
    """{series name: where} for every chanfleet_ series named by a dashboard or an alert."""
    return {
        name: where for where, expr in all_expressions() for name in CHANFLEET_NAME.findall(expr)
    }


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A throwaway Prometheus on a free port that scrapes only itself every second."""
    work = tmp_path_factory.mktemp("prometheus")
    port = live.free_port()
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: prometheus\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    prom = live.start_prometheus(config, port, work / "data")
    yield prom
    prom.stop()


# ---------------------------------------------------------------------------- promtool
def test_promtool_check_config_passes():
    """promtool accepts prometheus.yml and the rule files it points at."""
    result = promtool("check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_check_rules_passes():
    """promtool accepts alerts.yaml."""
    result = promtool("check", "rules", str(ALERTS_YAML))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    """The promtool unit tests of the alerts pass."""
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------- alerts
def test_alerts_yaml_is_generated_from_source():
    """alerts.yaml is exactly what monitoring/alerts_source.py renders (no hand edits)."""
    assert ALERTS_YAML.read_text() == alerts_source.render(), (
        "run: .venv/bin/python -m monitoring.alerts_source"
    )


def test_alert_names_are_prefixed_camel_case_and_unique():
    """Alert names are CamelCase, start with Chanfleet and are unique."""
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"Chanfleet(?:[A-Z0-9][a-z0-9]*)+", name), name


def test_every_alert_has_for_severity_and_annotations():
    """Every alert has for, a critical/warning severity, summary, description and runbook_url."""
    for rule in alert_rules():
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key), f"{rule['alert']} lacks {key}"
        assert "{{" not in annotations["summary"], f"{rule['alert']}: summary must be static"
        assert "{{" in annotations["description"], f"{rule['alert']}: description not templated"


def test_runbook_urls_point_at_existing_headings():
    """Every runbook_url is the runbook file plus the anchor of an existing heading."""
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    anchors = {github_anchor(heading) for heading in headings}
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == alerts_source.RUNBOOK_BASE, url
        assert anchor == rule["alert"].lower(), url
        assert anchor in anchors, f"no '## {rule['alert']}' heading in {RUNBOOK}"


def test_every_runbook_section_belongs_to_an_alert():
    """The runbook has no section for an alert that does not exist."""
    headings = re.findall(r"^## (Chanfleet\w*)\s*$", RUNBOOK.read_text(), flags=re.MULTILINE)
    assert set(headings) == {rule["alert"] for rule in alert_rules()}


def test_every_alert_has_a_firing_promtool_test():
    """Every alert has a promtool case that expects it to fire, with labels and annotations."""
    firing = {}
    for case in promtool_cases():
        for alert in case.get("exp_alerts") or []:
            assert alert.get("exp_labels") and alert.get("exp_annotations"), case
            firing.setdefault(case["alertname"], 0)
            firing[case["alertname"]] += 1
    missing = {rule["alert"] for rule in alert_rules()} - set(firing)
    assert not missing, f"no firing promtool test for {sorted(missing)}"


def test_every_alert_has_a_quiet_promtool_test():
    """Every alert has a promtool case that expects it not to fire."""
    quiet = {case["alertname"] for case in promtool_cases() if not case.get("exp_alerts")}
    missing = {rule["alert"] for rule in alert_rules()} - quiet
    assert not missing, f"no not-firing promtool test for {sorted(missing)}"


# ---------------------------------------------------------------------------- config
def test_prometheus_yml_scrapes_the_configured_jobs():
    """prometheus.yml scrapes exactly the jobs named in alerts_source.JOBS, every 5s."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {scrape["job_name"] for scrape in config["scrape_configs"]}
    assert jobs == set(alerts_source.JOBS.values())
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == ["../deploy/helm/chanfleet/files/alerts.yaml"]


def test_expressions_use_job_matchers_from_selectors_only():
    """Every job matcher of a dashboard or alert expression is one of alerts_source.SELECTORS."""
    allowed = set(alerts_source.SELECTORS.values())
    for where, expr in all_expressions():
        for matcher in re.findall(r'job\s*=~?\s*"[^"]*"', expr):
            assert matcher in allowed, f"{where}: {matcher}"



def test_canary_series_are_read_from_the_websocket_job_only():
    """Only ws processes run the canary (gunicorn exports it at 0): expressions select ws."""
    for where, expr in all_expressions():
        for match in re.finditer(r"chanfleet_canary_\w+\{([^}]*)\}", expr):
            assert alerts_source.SELECTORS["ws"] in match.group(1), f"{where}: {match.group(0)}"

# ---------------------------------------------------------------------------- dashboards
def test_dashboards_regenerate_byte_for_byte():
    """Regenerating the dashboards reproduces the committed JSON exactly."""
    rendered = generate.render()
    assert set(rendered) == set(EXPECTED_DASHBOARDS)
    for name, text in rendered.items():
        committed = (DASHBOARDS / name).read_text()
        assert committed == text, f"{name} differs: run .venv/bin/python -m " \
            "monitoring.dashboards.generate"


def test_dashboards_have_stable_uids_and_titles():
    """Each dashboard's uid is its file name and its title is the expected one."""
    for name, title in EXPECTED_DASHBOARDS.items():
        model = json.loads((DASHBOARDS / name).read_text())
        assert model["uid"] == Path(name).stem
        assert model["title"] == title


def test_dashboards_have_datasource_and_instance_variables():
    """Each dashboard has a Prometheus ${datasource} variable and an instance variable."""
    for name in EXPECTED_DASHBOARDS:
        model = json.loads((DASHBOARDS / name).read_text())
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["instance"]["type"] == "query"


def test_every_panel_uses_the_datasource_variable():
    """Every panel and target reads from ${datasource}, and panel ids are unique."""
    for name in EXPECTED_DASHBOARDS:
        model = json.loads((DASHBOARDS / name).read_text())
        ids = [panel["id"] for panel in model["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in model["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_queries_walk_nested_row_panels():
    """queries.panel_queries finds the targets of panels inside collapsed rows."""
    model = {"panels": [
        {"type": "timeseries", "title": "top", "targets": [{"expr": "up"}]},
        {"type": "row", "title": "r", "collapsed": True, "panels": [
            {"type": "stat", "title": "inner", "targets": [{"expr": "sum(up)"}, {"refId": "B"}]},
        ]},
    ]}
    assert queries.panel_queries(model) == [("top", "up"), ("inner", "sum(up)")]


def test_queries_find_every_dashboard_expression():
    """Every committed dashboard contributes expressions, about one per requested panel."""
    found = queries.dashboard_queries()
    assert len([n for n, _ in found if n.startswith("chanfleet-overview:")]) >= 30
    assert len([n for n, _ in found if n.startswith("chanfleet-channel-layer:")]) >= 15


def test_dashboard_expressions_parse_as_promql(tmp_path):
    """promtool parses every dashboard expression (as recording rules, variables filled in)."""
    rules = [
        {"record": f"chanfleet:dashboard_expr_{index}", "expr": queries.to_promql(expr)}
        for index, (_, expr) in enumerate(queries.dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------- metric names
def test_referenced_chanfleet_metrics_exist():
    """Every chanfleet_ metric named by a dashboard or alert is defined in metrics.py."""
    defined = defined_metrics()
    for name, where in referenced_chanfleet_names().items():
        base = re.sub(r"_(total|bucket|sum|count|info)$", "", name)
        assert base in defined, f"{where}: {name} is not defined in {METRICS_PY}"


def test_referenced_chanfleet_series_have_the_suffix_of_their_type():
    """Counters are used as _total, histograms as _bucket/_sum/_count, gauges bare, Info _info."""
    allowed = {
        base + suffix for base, kind in defined_metrics().items() for suffix in SUFFIXES[kind]
    }
    for name, where in referenced_chanfleet_names().items():
        assert name in allowed, f"{where}: {name} is not an exposed series name"


def test_metrics_doc_lists_every_metric():
    """docs/metrics.md documents every metric of metrics.py under its exposed name."""
    doc = METRICS_DOC.read_text()
    for base, kind in defined_metrics().items():
        exposed = base + {"Counter": "_total", "Info": "_info"}.get(kind, "")
        assert f"`{exposed}`" in doc, f"{exposed} missing from docs/metrics.md"


# ---------------------------------------------------------------------------- live helpers
def test_start_prometheus_serves_its_own_up_series(prometheus):
    """A started Prometheus scrapes itself, and query('up') returns that series as 1."""
    live.wait_for_targets_up(prometheus.url, ["prometheus"], timeout=30)
    deadline = time.monotonic() + 10
    series = live.query(prometheus.url, 'up{job="prometheus"}')
    while not series and time.monotonic() < deadline:
        time.sleep(0.2)
        series = live.query(prometheus.url, 'up{job="prometheus"}')
    assert [s["value"][1] for s in series] == ["1"]
    assert series[0]["metric"]["instance"] == f"127.0.0.1:{prometheus.port}"


def test_query_raises_on_invalid_promql(prometheus):
    """query() raises PrometheusError when Prometheus rejects the expression."""
    with pytest.raises(live.PrometheusError, match="bad_data"):
        live.query(prometheus.url, "sum(rate(up[5m])")


def test_every_expression_is_accepted_by_a_real_prometheus(prometheus):
    """A real Prometheus accepts every dashboard and alert expression as an instant query."""
    for name, expr in live.dashboard_expressions() + live.alert_expressions():
        live.query(prometheus.url, expr)  # raises PrometheusError on a rejected query
        assert name


def test_wait_for_targets_up_times_out_for_an_unknown_job(prometheus):
    """wait_for_targets_up raises TimeoutError naming a job that has no target."""
    with pytest.raises(TimeoutError, match="no-such-job"):
        live.wait_for_targets_up(prometheus.url, ["no-such-job"], timeout=1)


def test_stop_ends_the_prometheus_process(tmp_path):
    """stop() ends the process that start_prometheus() started."""
    port = live.free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    prom = live.start_prometheus(config, port, tmp_path / "data")
    assert prom.popen.poll() is None
    prom.stop()
    assert prom.popen.poll() is not None


def test_dashboard_expressions_have_no_grafana_variables_left():
    """live.dashboard_expressions() substitutes every Grafana variable."""
    expressions = live.dashboard_expressions()
    assert expressions
    for name, expr in expressions:
        assert "$" not in expr, f"{name}: {expr}"


def test_alert_expressions_list_every_alert():
    """live.alert_expressions() returns one (name, expr) pair per alerting rule."""
    pairs = live.alert_expressions()
    assert [name for name, _ in pairs] == [rule["alert"] for rule in alert_rules()]
    assert all(expr for _, expr in pairs)
