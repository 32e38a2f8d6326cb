"""Every Prometheus metric chanfleet exports; names and labels are documented in docs/metrics.md.

WebSocket (uvicorn) processes are single-process targets. HTTP (gunicorn) workers run with
PROMETHEUS_MULTIPROC_DIR set, so prometheus-client aggregates their files on scrape.
"""

from prometheus_client import Counter, Gauge, Histogram, Info

# Buckets for sub-second real-time latencies, up to the failover window.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)

# ---------------------------------------------------------------------------- connections
WS_CONNECTIONS = Gauge(
    "chanfleet_ws_connections", "Open WebSocket connections in this process.", ["route"],
    multiprocess_mode="livesum",
)
WS_CONNECTS = Counter("chanfleet_ws_connects", "Accepted WebSocket connections.", ["route"])
WS_DISCONNECTS = Counter(
    "chanfleet_ws_disconnects", "Closed WebSocket connections by close code.", ["route", "code"]
)
WS_REFUSED = Counter(
    "chanfleet_ws_handshakes_refused", "WebSocket handshakes refused, by reason.",
    ["route", "reason"],
)
WS_DURATION = Histogram(
    "chanfleet_ws_connection_duration_seconds", "How long WebSocket connections stayed open.",
    ["route"], buckets=DURATION_BUCKETS,
)
# The routes of app/chat/consumers.py start at 0: a series born non-zero hides its first
# increase from rate() and histogram_quantile() (the first closes would never show).
for _route in ("chat", "notifications", "live", "user"):
    for _metric in (WS_CONNECTIONS, WS_CONNECTS, WS_DURATION):
        _metric.labels(_route)

# ---------------------------------------------------------------------------- messages
MESSAGES_RECEIVED = Counter(
    "chanfleet_ws_messages_received", "Client frames received, by message type.", ["route", "type"]
)
MESSAGES_SENT = Counter(
    "chanfleet_ws_messages_sent", "Frames sent to clients, by message type.", ["route", "type"]
)
MESSAGE_ERRORS = Counter(
    "chanfleet_ws_errors", "Error frames sent to clients, by error code.", ["route", "reason"]
)
RESUME_REPLAYS = Counter("chanfleet_resume_replays", "Resumes served (reconnects with a position).")
RESUME_MESSAGES = Counter(
    "chanfleet_resume_replayed_messages", "Room events replayed to resuming or lagging clients."
)
GAP_FILLS = Counter(
    "chanfleet_gap_fills", "Times a consumer fetched missed room events from the database."
)
WRITE_BATCH = Histogram(
    "chanfleet_chat_write_batch_size", "Chat changes written in one database transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)

# ---------------------------------------------------------------------------- heartbeat
HEARTBEAT_PINGS = Counter("chanfleet_heartbeat_pings", "Heartbeat frames sent to clients.")
HEARTBEAT_PONGS = Counter("chanfleet_heartbeat_pongs", "Heartbeat answers received from clients.")
HEARTBEAT_RTT = Histogram(
    "chanfleet_heartbeat_rtt_seconds", "Heartbeat round-trip time measured from client answers.",
    buckets=LATENCY_BUCKETS,
)
HEARTBEAT_TIMEOUTS = Counter(
    "chanfleet_heartbeat_timeouts", "Connections closed for inactivity (close code 4000)."
)

# ---------------------------------------------------------------------------- group sends
GROUP_SENDS = Counter("chanfleet_group_sends", "group_send calls that reached Redis.")
GROUP_SEND_LATENCY = Histogram(
    "chanfleet_group_send_seconds", "group_send latency, retries included.",
    buckets=LATENCY_BUCKETS,
)
GROUP_SEND_RETRIES = Counter(
    "chanfleet_group_send_retries", "group_send attempts retried after a Redis error."
)
GROUP_SEND_FAILURES = Counter(
    "chanfleet_group_send_failures", "group_send calls given up after the retry window."
)
OVER_CAPACITY = Counter(
    "chanfleet_channel_over_capacity", "Messages dropped because a channel was over capacity."
)
GROUPS_REFRESHED = Counter(
    "chanfleet_group_memberships_refreshed", "Group memberships re-added (heartbeat or recovery)."
)

# ---------------------------------------------------------------------------- channel layer
LAYER_RECEIVE_ERRORS = Counter(
    "chanfleet_layer_receive_errors", "Redis errors in the channel layer receive loop."
)
LAYER_FAILOVERS = Counter(
    "chanfleet_layer_failover_windows", "Windows in which the channel layer could not reach Redis."
)
LAYER_OUTAGE = Histogram(
    "chanfleet_layer_outage_seconds", "Length of each channel layer outage window.",
    buckets=(0.1, 0.5, 1, 2, 3, 5, 10, 30, 60),
)
LAYER_AVAILABLE = Gauge(
    "chanfleet_layer_available", "1 while the channel layer reaches Redis, 0 during an outage.",
    multiprocess_mode="livemin",
)
LAYER_AVAILABLE.set(1)  # no outage before the layer exists (gunicorn workers create it lazily)
REDIS_MASTER = Info("chanfleet_redis_master", "The Redis master Sentinel names now, by shard.",
                    ["shard"])
MASTER_CHANGES = Counter(
    "chanfleet_redis_master_changes", "Times Sentinel named a new Redis master (failovers)."
)
PUBSUB_CAUGHT_UP = Counter(
    "chanfleet_pubsub_caught_up",
    "Messages a process missed while it resubscribed (pub/sub fan-out), delivered from the "
    "groups' streams.",
)
REDIS_OOM_REFUSALS = Counter(
    "chanfleet_redis_oom_refusals",
    "Redis writes refused with OOM (used memory over maxmemory), by operation.",
    ["operation"],
)
# Every operation's series starts at 0, so the alert's increase() sees the very first refusal.
OOM_OPERATIONS = ("group_send", "group_add", "group_discard", "send", "receive", "memberships",
                  "rate_limit", "presence", "generations")
for _operation in OOM_OPERATIONS:
    REDIS_OOM_REFUSALS.labels(_operation)

# ---------------------------------------------------------------------------- login throttle
LOGIN_ATTEMPTS = Counter(
    "chanfleet_login_attempts",
    "Login attempts settled by the throttle, by outcome (ok, fail, void: not checked).",
    ["outcome"],
)
LOGIN_REFUSALS = Counter(
    "chanfleet_login_refusals",
    "Login attempts refused before their password was checked, by the scope that refused.",
    ["scope"],
)
LOGIN_LOCKS = Counter(
    "chanfleet_login_locks", "Login locks started by a failure, by scope.", ["scope"]
)
LOGIN_COUNTED_LOCALLY = Counter(
    "chanfleet_login_counted_locally",
    "Login attempts counted in their own process: Redis unreachable or refusing the write.",
)
for _outcome in ("ok", "fail", "void"):
    LOGIN_ATTEMPTS.labels(_outcome)
for _scope in ("address", "user", "user_everywhere", "busy"):
    LOGIN_REFUSALS.labels(_scope)
    if _scope != "busy":
        LOGIN_LOCKS.labels(_scope)

# ---------------------------------------------------------------------------- drain
DRAINING = Gauge("chanfleet_draining", "1 while this process drains.", multiprocess_mode="livemax")
DRAIN_RECONNECTS = Counter(
    "chanfleet_drain_reconnects_requested", "Clients asked to reconnect elsewhere by a drain."
)

# ---------------------------------------------------------------------------- canary
CANARY_SENT = Counter("chanfleet_canary_sent", "Canary messages sent through the channel layer.")
CANARY_LOST = Counter(
    "chanfleet_canary_lost", "Canary messages not received back within the interval."
)
CANARY_LAG = Histogram(
    "chanfleet_canary_lag_seconds", "Canary round trip through the channel layer.",
    buckets=LATENCY_BUCKETS,
)
CANARY_HEALTHY = Gauge(
    "chanfleet_canary_healthy", "1 while the canary succeeds within its threshold.",
    multiprocess_mode="livemin",
)

# ---------------------------------------------------------------------------- readiness
DEPENDENCY_UP = Gauge(
    "chanfleet_dependency_up",
    "1 when the last /readyz check reached the shared dependency, 0 when it failed.",
    ["dependency"], multiprocess_mode="livemin",
)
READY = Gauge(
    "chanfleet_ready", "1 when the last /readyz answer was ready (200), 0 when 503.",
    multiprocess_mode="livemin",
)
# 1 until a check says otherwise, as chanfleet_layer_available: a process nobody probes has
# no outage to report, and the series exist from the start.
for _dependency in ("database", "redis", "channel_layer"):
    DEPENDENCY_UP.labels(_dependency).set(1)
READY.set(1)

# ---------------------------------------------------------------------------- http
HTTP_REQUESTS = Counter(
    "chanfleet_http_requests", "HTTP requests by view, method and status.",
    ["view", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "chanfleet_http_request_seconds", "HTTP request latency by view.", ["view"],
    buckets=LATENCY_BUCKETS,
)
