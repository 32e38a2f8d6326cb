"""Generate chanfleet's Grafana dashboards with grafana-foundation-sdk.

Run from the repository root, then commit the JSON it writes:

    .venv/bin/python -m monitoring.dashboards.generate

Every panel is built by one of the small panel functions below, which share ``_defaults``;
job names come from ``monitoring.alerts_source.SELECTORS`` (the one place they live); a
dashboard's UID is its file name without ``.json``. The JSON is written with sorted keys and
an indent of 2, so a regenerated file is byte for byte the committed one (a test checks this).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from monitoring.alerts_source import SELECTORS

# Written where the chart reads them (Helm sees nothing outside the chart): the one copy.
DASHBOARD_DIR = (Path(__file__).resolve().parents[2] / "deploy" / "helm" / "chanfleet" / "files"
                 / "dashboards")
OVERVIEW = "chanfleet-overview.json"
CHANNEL_LAYER = "chanfleet-channel-layer.json"

# Every panel and query reads from the datasource picked in the ${datasource} variable.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"

# Label matchers: the job selector of each kind of target, narrowed to the ${instance}
# variable for the chanfleet processes (Redis and nginx panels are not narrowed).
INSTANCE = 'instance=~"$instance"'
WS = f"{SELECTORS['ws']}, {INSTANCE}"
HTTP = f"{SELECTORS['http']}, {INSTANCE}"
APP = f"{SELECTORS['app']}, {INSTANCE}"
HTTP_5XX = f'{HTTP}, status=~"5.."'
REDIS = SELECTORS["redis"]
NGINX = SELECTORS["nginx"]

Target = tuple[str, str]  # (PromQL expression, legend format)

# Grafana's own "Annotations & Alerts" query, present in every dashboard Grafana saves.
BUILT_IN_ANNOTATION = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


# ---------------------------------------------------------------------------- panel helpers
def _query(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
        .range()
    )


def _defaults(panel, title: str, description: str, targets: list[Target], unit: str,
              span: int, height: int):
    """Apply what every panel shares: datasource, size, unit, description and queries."""
    panel.title(title).description(description).datasource(DATASOURCE)
    panel.span(span).height(height).unit(unit)
    for index, (expr, legend) in enumerate(targets):
        panel.with_target(_query(expr, legend, chr(ord("A") + index)))
    return panel


def graph(title: str, description: str, targets: list[Target], unit: str = "short",
          span: int = 12, height: int = 8) -> timeseries.Panel:
    """A time series panel with a bottom legend table (mean, max, last) and a shared tooltip."""
    panel = timeseries.Panel()
    _defaults(panel, title, description, targets, unit, span, height)
    return (
        panel.line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .min(0)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(
            common_builder.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )


def single_stat(title: str, description: str, expr: str, unit: str = "none",
                red_below: float | None = None, red_above: float | None = None,
                span: int = 6, height: int = 4) -> stat.Panel:
    """A stat panel of one instant value, coloured red below or above a threshold."""
    panel = stat.Panel()
    _defaults(panel, title, description, [(expr, "")], unit, span, height)
    if red_below is not None:
        steps = [Threshold(None, "red"), Threshold(red_below, "green")]
    elif red_above is not None:
        steps = [Threshold(None, "green"), Threshold(red_above, "red")]
    else:
        steps = [Threshold(None, "blue")]
    return (
        panel.graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    )


def quantiles(metric: str, selector: str, by: str = "", window: str = RATE,
              qs: tuple[float, ...] = (0.5, 0.99)) -> list[Target]:
    """histogram_quantile targets (p50, p99 by default) over the rate of a histogram's buckets."""
    grouping = f"{by}, le" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({grouping}) "
            f"(rate({metric}_bucket{{{selector}}}[{window}])))",
            f"{prefix}p{round(q * 100)}",
        )
        for q in qs
    ]


def rate(metric: str, selector: str, by: str = "") -> str:
    """The per-second rate of a counter, summed (by the given labels)."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{selector}}}[{RATE}]))"


def row(title: str) -> dashboard.Row:
    """An expanded row; the panels that follow it on the dashboard belong to it."""
    return dashboard.Row(title).collapsed(False)


# ---------------------------------------------------------------------------- dashboards
def _variables() -> list:
    datasource = (
        dashboard.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
    )
    instance = (
        dashboard.QueryVariable("instance")
        .label("Process")
        .description("chanfleet processes (WebSocket and HTTP) to show; Redis panels ignore it")
        .datasource(DATASOURCE)
        .query(f"label_values(up{{{SELECTORS['app']}}}, instance)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
    )
    return [datasource, instance]


def _build(file_name: str, title: str, description: str, tags: list[str],
           sections: list[tuple[str, list]]) -> dict:
    """Build one dashboard: UID from the file name, panels in rows, stable panel ids."""
    builder = (
        dashboard.Dashboard(title)
        .uid(Path(file_name).stem)
        .description(description)
        .tags(["chanfleet", *tags])
        .editable()
        .timezone("browser")
        .time("now-1h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .variables(_variables())
    )
    for section, panels in sections:
        builder.with_row(row(section))
        for panel in panels:
            builder.with_panel(panel)
    model = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for number, panel in enumerate(model["panels"], start=1):
        panel["id"] = number
    for variable in model["templating"]["list"]:
        variable.pop("id", None)  # the SDK writes an all-zero UUID; Grafana does not need it
    # The SDK (10.1) cannot mark an annotation as built in; Grafana expects this one.
    model["annotations"] = {"list": [BUILT_IN_ANNOTATION]}
    return model


def overview() -> dict:
    """The fleet overview: WebSockets, messages, heartbeat, channel layer, HTTP and drains."""
    return _build(
        OVERVIEW,
        "Chanfleet / Overview",
        "WebSocket (uvicorn) and HTTP (gunicorn) processes of chanfleet. Metrics: docs/metrics.md.",
        ["overview"],
        [
            ("Fleet", [
                single_stat("Open WebSockets", "Open WebSocket connections, all processes.",
                            f"sum(chanfleet_ws_connections{{{WS}}})"),
                single_stat("Canary healthy", "Lowest chanfleet_canary_healthy over the "
                            "WebSocket processes, which run the canary (1 = every canary makes "
                            "its round trip).",
                            f"min(chanfleet_canary_healthy{{{WS}}})", red_below=1),
                single_stat("Channel layer available", "Lowest chanfleet_layer_available over "
                            "processes (0 = some process cannot reach Redis).",
                            f"min(chanfleet_layer_available{{{APP}}})", red_below=1),
                single_stat("Draining processes", "Processes currently draining.",
                            f"sum(chanfleet_draining{{{APP}}})", red_above=1),
            ]),
            ("WebSocket connections", [
                graph("Open WebSockets per process",
                      "Open WebSocket connections in each WebSocket process.",
                      [(f"sum by (instance) (chanfleet_ws_connections{{{WS}}})", "{{instance}}")],
                      span=12),
                graph("Connects and disconnects by close code",
                      "Accepted connections per second, and closes per second by close code "
                      "(1000/1001 normal, 1006 dropped, 1011 server error, 1012 drain, "
                      "4000 inactivity, 1008 policy).",
                      [(rate("chanfleet_ws_connects_total", WS), "connects"),
                       (rate("chanfleet_ws_disconnects_total", WS, "code"), "close {{code}}")],
                      unit="ops"),
                graph("Handshakes refused by reason",
                      "WebSocket handshakes refused per second, by reason.",
                      [(rate("chanfleet_ws_handshakes_refused_total", WS, "reason"),
                        "{{reason}}")],
                      unit="ops"),
                graph("Connection duration p50 / p99",
                      "How long closed WebSocket connections had stayed open.",
                      quantiles("chanfleet_ws_connection_duration_seconds", WS), unit="s"),
            ]),
            ("Messages", [
                graph("Messages received per second by type",
                      "Client frames received per second, by message type.",
                      [(rate("chanfleet_ws_messages_received_total", WS, "type"), "{{type}}")],
                      unit="ops"),
                graph("Messages sent per second by type",
                      "Frames sent to clients per second, by message type.",
                      [(rate("chanfleet_ws_messages_sent_total", WS, "type"), "{{type}}")],
                      unit="ops"),
                graph("Error frames by reason", "Error frames sent to clients per second.",
                      [(rate("chanfleet_ws_errors_total", WS, "reason"), "{{reason}}")],
                      unit="ops"),
                graph("Resume replays and gap fills",
                      "Resumes served, room events replayed, and database gap fills per second.",
                      [(rate("chanfleet_resume_replays_total", WS), "resumes"),
                       (rate("chanfleet_resume_replayed_messages_total", WS),
                        "replayed messages"),
                       (rate("chanfleet_gap_fills_total", WS), "gap fills")],
                      unit="ops"),
                graph("Chat writes per database transaction p50 / p99",
                      "Stored chat changes (messages, edits, deletes, reactions) committed "
                      "together in one transaction: above 1 when changes arrive faster than "
                      "the database commits them one by one.",
                      quantiles("chanfleet_chat_write_batch_size", WS)),
            ]),
            ("Heartbeat", [
                graph("Heartbeat RTT p50 / p99",
                      "Heartbeat round-trip time measured from client answers.",
                      quantiles("chanfleet_heartbeat_rtt_seconds", WS), unit="s"),
                graph("Heartbeat pings, pongs and timeouts",
                      "Heartbeat frames sent and answered per second, and connections closed "
                      "for inactivity (close code 4000).",
                      [(rate("chanfleet_heartbeat_pings_total", WS), "pings"),
                       (rate("chanfleet_heartbeat_pongs_total", WS), "pongs"),
                       (rate("chanfleet_heartbeat_timeouts_total", WS), "timeouts")],
                      unit="ops"),
            ]),
            ("Channel layer", [
                graph("Group send p50 / p99", "group_send latency, retries included.",
                      quantiles("chanfleet_group_send_seconds", APP), unit="s"),
                graph("Group sends, retries and failures",
                      "group_send calls per second that reached Redis, attempts retried after a "
                      "Redis error, and calls given up after the retry window.",
                      [(rate("chanfleet_group_sends_total", APP), "sends"),
                       (rate("chanfleet_group_send_retries_total", APP), "retries"),
                       (rate("chanfleet_group_send_failures_total", APP), "failures")],
                      unit="ops"),
                graph("Canary lag p50 / p99",
                      "Round trip of the canary message through the channel layer (WebSocket "
                      "processes).",
                      quantiles("chanfleet_canary_lag_seconds", WS), unit="s"),
                graph("Canary loss rate",
                      "Share of canary messages not received back within the interval.",
                      [(f"{rate('chanfleet_canary_lost_total', WS, 'instance')} / "
                        f"{rate('chanfleet_canary_sent_total', WS, 'instance')}",
                        "{{instance}}")],
                      unit="percentunit"),
            ]),
            ("HTTP", [
                graph("HTTP requests per second by status",
                      "Requests answered by the gunicorn processes, by status code.",
                      [(rate("chanfleet_http_requests_total", HTTP, "status"), "{{status}}")],
                      unit="reqps"),
                graph("HTTP latency p50 / p99", "Request latency of the gunicorn processes.",
                      quantiles("chanfleet_http_request_seconds", HTTP), unit="s"),
                # `or vector(0)`: no 5xx series at all is a ratio of 0, not an empty panel.
                graph("HTTP 5xx error ratio", "Share of requests answered with a 5xx status.",
                      [(f"({rate('chanfleet_http_requests_total', HTTP_5XX)} or vector(0)) / "
                        f"{rate('chanfleet_http_requests_total', HTTP)}", "5xx ratio")],
                      unit="percentunit"),
                graph("Logins, refusals and locks",
                      "Login attempts per second by outcome, attempts refused by the throttle "
                      "by scope, locks started by scope, and attempts counted in their own "
                      "process because Redis could not count them.",
                      [(rate("chanfleet_login_attempts_total", HTTP, "outcome"), "{{outcome}}"),
                       (rate("chanfleet_login_refusals_total", HTTP, "scope"),
                        "refused: {{scope}}"),
                       (rate("chanfleet_login_locks_total", HTTP, "scope"), "locked: {{scope}}"),
                       (rate("chanfleet_login_counted_locally_total", HTTP),
                        "counted locally")],
                      unit="ops"),
                graph("nginx active connections",
                      "Client connections open at nginx (stub_status), WebSockets included.",
                      [(f"sum by (instance) (nginx_connections_active{{{NGINX}}})",
                        "{{instance}}")]),
            ]),
            ("Drain", [
                graph("Draining processes", "1 while a process drains (after SIGTERM).",
                      [(f"max by (instance) (chanfleet_draining{{{APP}}})", "{{instance}}")]),
                graph("Reconnects requested by drains",
                      "Clients asked per second to reconnect elsewhere by a drain.",
                      [(rate("chanfleet_drain_reconnects_requested_total", WS, "instance"),
                        "{{instance}}")],
                      unit="ops"),
            ]),
        ],
    )


def channel_layer() -> dict:
    """The channel layer and Redis: availability, failovers, master, delivery and Redis itself."""
    return _build(
        CHANNEL_LAYER,
        "Chanfleet / Channel layer & Redis",
        "The Redis channel layer of chanfleet and the Redis Sentinel setup behind it.",
        ["channel-layer", "redis"],
        [
            ("Availability", [
                single_stat("Channel layer available", "Lowest chanfleet_layer_available over "
                            "processes.", f"min(chanfleet_layer_available{{{APP}}})",
                            red_below=1, span=5),
                single_stat("Failover windows", "Channel layer outage windows in the time range.",
                            f"sum(increase(chanfleet_layer_failover_windows_total{{{APP}}}"
                            "[$__range]))", red_above=1, span=5),
                single_stat("Master changes", "Times Sentinel named a new Redis master in the "
                            "time range (failovers). Every WebSocket process counts the same "
                            "failover, so this is the highest count over processes.",
                            f"max(increase(chanfleet_redis_master_changes_total{{{WS}}}"
                            "[$__range]))", red_above=1, span=5),
                single_stat("Outage p99", "p99 length of the outage windows in the time range.",
                            "histogram_quantile(0.99, sum by (le) "
                            f"(increase(chanfleet_layer_outage_seconds_bucket{{{APP}}}"
                            "[$__range])))", unit="s", span=5),
                single_stat("Redis masters in use", "Distinct Redis master addresses the "
                            "processes last used for one shard, the highest over the shards "
                            "(more than 1 = processes disagree).",
                            "max(count by (shard) (count by (shard, address) "
                            f"(chanfleet_redis_master_info{{{APP}}})))",
                            red_above=2, span=4),
                graph("Channel layer available per process",
                      "1 while the process's channel layer reaches Redis, 0 during an outage.",
                      [(f"min by (instance) (chanfleet_layer_available{{{APP}}})",
                        "{{instance}}")]),
                graph("Failover windows",
                      "Outage windows started per process (counted when the first Redis error "
                      "of a window is seen).",
                      [(f"sum by (instance) (increase(chanfleet_layer_failover_windows_total"
                        f"{{{APP}}}[{RATE}]))", "{{instance}}")]),
                graph("Outage duration",
                      "Length of the channel layer outage windows that ended in the last 15 "
                      "minutes (p50, p99 and mean).",
                      [*quantiles("chanfleet_layer_outage_seconds", APP, window="15m"),
                       (f"sum(rate(chanfleet_layer_outage_seconds_sum{{{APP}}}[15m])) / "
                        f"sum(rate(chanfleet_layer_outage_seconds_count{{{APP}}}[15m]))",
                        "mean")],
                      unit="s", span=24),
            ]),
            ("Redis master", [
                graph("Redis master used by the channel layer",
                      "Processes per shard and Redis master address "
                      "(chanfleet_redis_master_info).",
                      [(f"count by (shard, address) (chanfleet_redis_master_info{{{APP}}})",
                        "{{shard}} {{address}}")], span=8),
                graph("Redis master changes",
                      "New Redis masters named by Sentinel, as seen by each WebSocket process "
                      "(chanfleet_redis_master_changes_total).",
                      [(f"sum by (instance) (increase(chanfleet_redis_master_changes_total"
                        f"{{{WS}}}[{RATE}]))", "{{instance}}")], span=8),
                graph("Redis instance roles",
                      "Role each Redis instance reports (redis_instance_info from the exporter).",
                      [(f"max by (instance, role) (redis_instance_info{{{REDIS}}})",
                        "{{instance}} {{role}}")], span=8),
            ]),
            ("Delivery", [
                graph("Messages dropped over capacity",
                      "Messages dropped per second because the receiving channel was full.",
                      [(rate("chanfleet_channel_over_capacity_total", APP, "instance"),
                        "{{instance}}")],
                      unit="ops"),
                graph("Group send retries and failures",
                      "group_send attempts retried after a Redis error, and calls given up.",
                      [(rate("chanfleet_group_send_retries_total", APP), "retries"),
                       (rate("chanfleet_group_send_failures_total", APP), "failures")],
                      unit="ops"),
                graph("Receive loop errors", "Redis errors in the channel layer receive loop.",
                      [(rate("chanfleet_layer_receive_errors_total", APP, "instance"),
                        "{{instance}}")],
                      unit="ops"),
                graph("Group memberships refreshed",
                      "Group memberships re-added on Redis after an outage.",
                      [(f"sum by (instance) (increase(chanfleet_group_memberships_refreshed_total"
                        f"{{{APP}}}[{RATE}]))", "{{instance}}")]),
            ]),
            ("Redis", [
                graph("Redis up", "1 while the exporter reaches the Redis instance.",
                      [(f"redis_up{{{REDIS}}}", "{{instance}}")], span=8),
                graph("Redis connected replicas", "Replicas connected to each instance.",
                      [(f"redis_connected_slaves{{{REDIS}}}", "{{instance}}")], span=8),
                graph("Redis connected clients", "Client connections of each instance.",
                      [(f"redis_connected_clients{{{REDIS}}}", "{{instance}}")], span=8),
                graph("Redis memory used", "Memory used by each instance.",
                      [(f"redis_memory_used_bytes{{{REDIS}}}", "{{instance}}")],
                      unit="bytes"),
                graph("Redis commands per second", "Commands processed per second.",
                      [(f"sum by (instance) (rate(redis_commands_processed_total{{{REDIS}}}"
                        f"[{RATE}]))", "{{instance}}")],
                      unit="ops"),
            ]),
        ],
    )


DASHBOARDS = {OVERVIEW: overview, CHANNEL_LAYER: channel_layer}


def to_json(model: dict) -> str:
    """Serialise a dashboard the way it is committed: sorted keys, indent 2, final newline."""
    return json.dumps(model, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Return {file name: JSON text} for every dashboard."""
    return {name: to_json(build()) for name, build in DASHBOARDS.items()}


def main() -> int:
    """Write every dashboard next to this file."""
    for name, text in render().items():
        (DASHBOARD_DIR / name).write_text(text)
        print(f"wrote {DASHBOARD_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
