"""The source of the alert rules (the chart's files/alerts.yaml); the one place naming jobs.

Edit the alerts here, then regenerate the rule file from the repository root:

    .venv/bin/python -m monitoring.alerts_source

``JOBS``/``SELECTORS`` are the only place the job names live: the dashboard generator
(monitoring/dashboards/generate.py) imports them, and a test checks that
monitoring/prometheus.yml scrapes exactly these jobs. ``runbook_url`` is built in one place,
``runbook_url()``, from the alert name (the GitHub anchor of ``## <AlertName>`` in
docs/runbooks/alerts.md). Tests fail when alerts.yaml differs from ``render()``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

# Prometheus job names (the `job` label). Kubernetes: the ServiceMonitors must produce the
# same values (jobLabel/relabelings), or change them here and regenerate everything.
JOBS = {
    "ws": "chanfleet-ws",
    "http": "chanfleet-http",
    "nginx": "nginx",
    "redis": "redis",
    "prometheus": "prometheus",
}

# Label matchers used by every alert and dashboard expression.
SELECTORS = {
    "ws": f'job="{JOBS["ws"]}"',
    "http": f'job="{JOBS["http"]}"',
    "app": f'job=~"{JOBS["ws"]}|{JOBS["http"]}"',
    "nginx": f'job="{JOBS["nginx"]}"',
    "redis": f'job="{JOBS["redis"]}"',
    "prometheus": f'job="{JOBS["prometheus"]}"',
}

# Label values the application must use (documented in docs/metrics.md).
ABNORMAL_CLOSE_CODES = "1006|1011"
REFUSAL_REASONS = "rate_limited|unavailable"

RUNBOOK_BASE = "https://github.com/chanfleet/chanfleet/blob/main/docs/runbooks/alerts.md"
# Written where the chart reads it (Helm sees nothing outside the chart); the local Prometheus
# and promtool read the same file.
ALERTS_PATH = (Path(__file__).resolve().parents[1] / "deploy" / "helm" / "chanfleet" / "files"
               / "alerts.yaml")


def runbook_url(alert_name: str) -> str:
    """Return the runbook link of an alert: the GitHub anchor of its `## Name` heading."""
    return f"{RUNBOOK_BASE}#{alert_name.lower()}"


@dataclass(frozen=True)
class Alert:
    """One alerting rule; `group` is the rule group it is rendered into."""

    group: str
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    def rule(self) -> dict:
        """Return the Prometheus rule as a plain dict, in rule-file key order."""
        return {
            "alert": self.name,
            "expr": self.expr.strip() + "\n" if "\n" in self.expr.strip() else self.expr.strip(),
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": runbook_url(self.name),
            },
        }


S = SELECTORS

ALERTS = [
    # ------------------------------------------------------------------ scraping / processes
    Alert(
        group="chanfleet-processes",
        name="ChanfleetWebSocketProcessDown",
        expr=f"up{{{S['ws']}}} == 0",
        for_="1m",
        severity="critical",
        summary="A WebSocket process is down or cannot be scraped.",
        description=(
            "Prometheus has not reached {{ $labels.instance }} (job {{ $labels.job }}) for more "
            "than 1 minute: the WebSocket process is down or its /metrics endpoint fails. Its "
            "WebSocket clients must reconnect to the remaining processes."
        ),
    ),
    Alert(
        group="chanfleet-processes",
        name="ChanfleetMetricsScrapeFailing",
        expr=f"up{{{S['http']}}} == 0",
        for_="2m",
        severity="warning",
        summary="Prometheus cannot scrape a gunicorn HTTP process.",
        description=(
            "Prometheus has failed to scrape {{ $labels.instance }} (job {{ $labels.job }}) "
            "for 2 minutes: the gunicorn process is down or its /metrics endpoint returns an "
            "error, so its requests and the HTTP alerts are not observed."
        ),
    ),
    Alert(
        group="chanfleet-processes",
        name="ChanfleetMetricsTargetsMissing",
        expr=f"absent(up{{{S['ws']}}}) or absent(up{{{S['http']}}})",
        for_="5m",
        severity="warning",
        summary="Prometheus has no scrape target for a chanfleet job.",
        description=(
            "Prometheus has had no target of job {{ $labels.job }} for 5 minutes: service "
            "discovery or the scrape configuration lost the chanfleet processes, and every "
            "chanfleet alert based on that job is blind."
        ),
    ),
    Alert(
        group="chanfleet-processes",
        name="ChanfleetProcessDrainingTooLong",
        expr=f"chanfleet_draining{{{S['app']}}} == 1",
        for_="5m",
        severity="warning",
        summary="A chanfleet process has been draining for more than 5 minutes.",
        description=(
            "{{ $labels.instance }} (job {{ $labels.job }}) has reported chanfleet_draining=1 "
            "for more than 5 minutes; a drain should finish within seconds. The process is "
            "stuck between SIGTERM and exit and keeps holding clients and capacity."
        ),
    ),
    # ------------------------------------------------------------------ websocket
    Alert(
        group="chanfleet-websocket",
        name="ChanfleetAbnormalDisconnectSpike",
        expr=f"""
(
  sum by (job, instance) (
    rate(chanfleet_ws_disconnects_total{{{S['ws']}, code=~"{ABNORMAL_CLOSE_CODES}"}}[5m])
  )
  /
  sum by (job, instance) (rate(chanfleet_ws_disconnects_total{{{S['ws']}}}[5m]))
) > 0.2
and
sum by (job, instance) (
  rate(chanfleet_ws_disconnects_total{{{S['ws']}, code=~"{ABNORMAL_CLOSE_CODES}"}}[5m])
) > 0.2
""",
        for_="2m",
        severity="warning",
        summary="Many WebSocket connections close abnormally (1006/1011).",
        description=(
            "{{ $value | humanizePercentage }} of the WebSocket closes on {{ $labels.instance }} "
            "in the last 5 minutes had code 1006 (dropped without a close frame) or 1011 "
            "(server error)."
        ),
    ),
    Alert(
        group="chanfleet-websocket",
        name="ChanfleetHandshakesRefusedHigh",
        expr=f"""
(
  sum by (job, instance) (
    rate(chanfleet_ws_handshakes_refused_total{{{S['ws']}, reason=~"{REFUSAL_REASONS}"}}[5m])
  )
  /
  (
    sum by (job, instance) (rate(chanfleet_ws_connects_total{{{S['ws']}}}[5m]))
    +
    sum by (job, instance) (rate(chanfleet_ws_handshakes_refused_total{{{S['ws']}}}[5m]))
  )
) > 0.1
and
sum by (job, instance) (
  rate(chanfleet_ws_handshakes_refused_total{{{S['ws']}, reason=~"{REFUSAL_REASONS}"}}[5m])
) > 0.05
""",
        for_="5m",
        severity="warning",
        summary="Many WebSocket handshakes are refused (rate limited or unavailable).",
        description=(
            "{{ $value | humanizePercentage }} of the WebSocket handshakes on "
            "{{ $labels.instance }} in the last 5 minutes were refused as rate_limited or "
            "unavailable."
        ),
    ),
    Alert(
        group="chanfleet-websocket",
        name="ChanfleetHeartbeatRTTHigh",
        expr=f"""
histogram_quantile(0.99,
  sum by (job, instance, le) (rate(chanfleet_heartbeat_rtt_seconds_bucket{{{S['ws']}}}[5m]))
) > 1
""",
        for_="10m",
        severity="warning",
        summary="WebSocket heartbeat round trips are slow.",
        description=(
            "The p99 heartbeat round-trip time on {{ $labels.instance }} has been "
            "{{ $value | humanizeDuration }} (above 1s) for 10 minutes."
        ),
    ),
    # ------------------------------------------------------------------ channel layer
    Alert(
        group="chanfleet-channel-layer",
        name="ChanfleetChannelLayerUnavailable",
        expr=f"chanfleet_layer_available{{{S['app']}}} == 0",
        for_="30s",
        severity="critical",
        summary="The channel layer cannot reach Redis.",
        description=(
            "The channel layer of {{ $labels.instance }} (job {{ $labels.job }}) has not reached "
            "Redis for more than 30 seconds, far longer than a Sentinel failover: group "
            "messages are not delivered."
        ),
    ),
    Alert(
        group="chanfleet-channel-layer",
        name="ChanfleetCanaryFailing",
        # Only WebSocket processes run the canary; gunicorn exports the gauge at 0 regardless.
        expr=f"chanfleet_canary_healthy{{{S['ws']}}} == 0",
        for_="1m",
        severity="critical",
        summary="The channel layer canary fails.",
        description=(
            "The canary of {{ $labels.instance }} (job {{ $labels.job }}) has not made a round "
            "trip through the channel layer within its threshold for 1 minute: messages between "
            "processes are not delivered."
        ),
    ),
    Alert(
        group="chanfleet-channel-layer",
        name="ChanfleetCanaryLoss",
        expr=(
            "sum by (job, instance) "
            f"(increase(chanfleet_canary_lost_total{{{S['ws']}}}[10m])) > 2"
        ),
        for_="1m",
        severity="warning",
        summary="Canary messages are lost in the channel layer.",
        description=(
            "{{ $labels.instance }} lost {{ $value | humanize }} canary messages in the last "
            "10 minutes."
        ),
    ),
    Alert(
        group="chanfleet-channel-layer",
        name="ChanfleetGroupSendFailures",
        expr=(
            "sum by (job, instance) "
            f"(increase(chanfleet_group_send_failures_total{{{S['app']}}}[5m])) > 0"
        ),
        for_="1m",
        severity="warning",
        summary="group_send calls fail after their retry window.",
        description=(
            "{{ $labels.instance }} gave up on {{ $value | humanize }} group_send calls in the "
            "last 5 minutes: those room messages reached no other process."
        ),
    ),
    Alert(
        group="chanfleet-channel-layer",
        name="ChanfleetChannelOverCapacity",
        expr=(
            "sum by (job, instance) "
            f"(increase(chanfleet_channel_over_capacity_total{{{S['app']}}}[5m])) > 0"
        ),
        for_="10m",
        severity="warning",
        summary="Messages are dropped because channels are over capacity.",
        description=(
            "{{ $labels.instance }} dropped {{ $value | humanize }} messages in the last "
            "5 minutes because a receiving channel was full, and has kept dropping for "
            "10 minutes."
        ),
    ),
    # ------------------------------------------------------------------ http
    Alert(
        group="chanfleet-http",
        name="ChanfleetHTTP5xxRatioHigh",
        expr=f"""
sum by (job) (rate(chanfleet_http_requests_total{{{S['http']}, status=~"5.."}}[5m]))
/
sum by (job) (rate(chanfleet_http_requests_total{{{S['http']}}}[5m]))
> 0.05
""",
        for_="5m",
        severity="critical",
        summary="Many HTTP requests fail with a 5xx status.",
        description=(
            "{{ $value | humanizePercentage }} of the HTTP requests of job {{ $labels.job }} "
            "answered 5xx over the last 5 minutes (threshold 5%)."
        ),
    ),
    Alert(
        group="chanfleet-http",
        name="ChanfleetHTTPLatencyHigh",
        expr=f"""
histogram_quantile(0.99,
  sum by (job, le) (rate(chanfleet_http_request_seconds_bucket{{{S['http']}}}[5m]))
) > 1
""",
        for_="10m",
        severity="warning",
        summary="HTTP requests are slow.",
        description=(
            "The p99 HTTP request latency of job {{ $labels.job }} has been "
            "{{ $value | humanizeDuration }} (above 1s) for 10 minutes."
        ),
    ),
    Alert(
        group="chanfleet-http",
        name="ChanfleetLoginGuessing",
        # A person mistyping a password rarely reaches a lock; ten locks in a quarter of an
        # hour are someone guessing, or a client retrying a wrong stored password.
        expr=(
            "sum by (job) "
            f"(increase(chanfleet_login_locks_total{{{S['http']}}}[15m])) >= 10"
        ),
        for_="0m",
        severity="warning",
        summary="Failed logins keep locking user names or addresses: password guessing.",
        description=(
            "The login throttle of job {{ $labels.job }} started {{ $value | humanize }} "
            "locks in the last 15 minutes. Locked attempts are answered 429 without their "
            "password being checked; the owners of the user names can still log in from "
            "addresses that have not failed."
        ),
    ),
    # ------------------------------------------------------------------ redis
    Alert(
        group="chanfleet-redis",
        name="ChanfleetRedisMasterMissing",
        expr=f'absent(redis_instance_info{{{S["redis"]}, role="master"}})',
        for_="1m",
        severity="critical",
        summary="No Redis instance reports the master role.",
        description=(
            "No Redis instance scraped by job {{ $labels.job }} has reported role=master for "
            "1 minute: Sentinel has not promoted a replica, or the redis exporter cannot reach "
            "Redis."
        ),
    ),
    Alert(
        group="chanfleet-redis",
        name="ChanfleetRedisFailover",
        # Every WebSocket process counts the same failover: max, not sum, over the processes.
        expr=(
            "max by (job) "
            f"(increase(chanfleet_redis_master_changes_total{{{S['ws']}}}[15m])) > 0"
        ),
        for_="0m",
        severity="warning",
        summary="Sentinel promoted a new Redis master.",
        description=(
            "The WebSocket processes (job {{ $labels.job }}) saw Sentinel name a new Redis "
            "master {{ $value | printf \"%.0f\" }} time(s) in the last 15 minutes. The channel "
            "layer rides through a failover; check that the old master came back as a replica "
            "and find out why it failed, especially if this repeats."
        ),
    ),
    Alert(
        group="chanfleet-redis",
        name="ChanfleetRedisNoReplica",
        expr=f"""
(
  redis_connected_slaves{{{S['redis']}}}
  and on (instance)
  redis_instance_info{{{S['redis']}, role="master"}}
) < 1
""",
        for_="5m",
        severity="warning",
        summary="The Redis master has no connected replica.",
        description=(
            "The Redis master {{ $labels.instance }} has had no connected replica for 5 "
            "minutes: the next master failure is an outage instead of a failover."
        ),
    ),
    Alert(
        group="chanfleet-redis",
        name="ChanfleetRedisMemoryNearLimit",
        # The master only: a replica ignores maxmemory, and what matters is where writes go.
        expr=f"""
(
  redis_memory_used_bytes{{{S['redis']}}} / (redis_memory_max_bytes{{{S['redis']}}} > 0) > 0.9
)
and on (instance)
redis_instance_info{{{S['redis']}, role="master"}}
""",
        for_="5m",
        severity="warning",
        summary="The Redis master is close to its maxmemory.",
        description=(
            "The Redis master {{ $labels.instance }} has used {{ $value | humanizePercentage }} "
            "of its maxmemory for 5 minutes. At the limit it refuses writes (maxmemory-policy "
            "noeviction): new WebSocket connections are refused and, once memberships expire, "
            "live delivery stops."
        ),
    ),
    Alert(
        group="chanfleet-redis",
        name="ChanfleetRedisRefusingWrites",
        # One full Redis behind every process: one alert per job, not one per process.
        expr=(
            "sum by (job) "
            f"(increase(chanfleet_redis_oom_refusals_total{{{S['app']}}}[5m])) > 0"
        ),
        for_="0m",
        severity="critical",
        summary="Redis is full and refuses the application's writes (OOM).",
        description=(
            "The processes of job {{ $labels.job }} had {{ $value | humanize }} Redis writes "
            "refused with OOM (used memory over maxmemory) in the last 5 minutes: new WebSocket "
            "connections are refused with 4503, and memberships and presence cannot be "
            "refreshed, so once they expire chat changes reach the rooms only by the "
            "heartbeat's gap check."
        ),
    ),
    Alert(
        group="chanfleet-dependencies",
        name="ChanfleetDatabaseUnreachable",
        # /readyz keeps pods ready through a short database outage (READINESS_DEPENDENCY_GRACE),
        # so the outage must be seen here instead of as pods leaving their Services.
        expr=(
            "sum by (job) "
            f"(1 - chanfleet_dependency_up{{{S['app']}, dependency=\"database\"}}) > 0"
        ),
        for_="1m",
        severity="critical",
        summary="Application processes cannot reach the database.",
        description=(
            "{{ $value | humanize }} of the processes of job {{ $labels.job }} have failed "
            "their database check for over a minute: chat changes are refused with "
            "`database_unavailable`, the HTTP API answers 503 and new WebSocket connections "
            "are closed with 4503; open sockets stay and keep receiving what Redis carries."
        ),
    ),
]


class _Dumper(yaml.SafeDumper):
    """A YAML dumper that writes multi-line strings as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)

HEADER = (
    "# Generated by monitoring/alerts_source.py; do not edit by hand.\n"
    "# Regenerate: .venv/bin/python -m monitoring.alerts_source\n"
)


def groups() -> list[dict]:
    """Return the rule groups, in source order, as plain dicts."""
    names: list[str] = []
    for alert in ALERTS:
        if alert.group not in names:
            names.append(alert.group)
    return [
        {"name": name, "rules": [a.rule() for a in ALERTS if a.group == name]} for name in names
    ]


def render() -> str:
    """Return the text of the rule file."""
    body = yaml.dump(
        {"groups": groups()}, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True
    )
    return HEADER + body


def main() -> int:
    """Write the rule file into the chart (ALERTS_PATH)."""
    ALERTS_PATH.write_text(render())
    print(f"wrote {ALERTS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
