#!/usr/bin/env bash
# The one entry point of every chanfleet process. The Dockerfile, the Helm chart and the local
# topology (`make run`) all call it with a role, so the three cannot drift apart.
#
#   entrypoint.sh http      gunicorn with uvicorn workers: the HTTP API, admin, pages
#   entrypoint.sh ws        uvicorn (or daphne, WS_SERVER=daphne): the WebSocket routes, one process per pod
#   entrypoint.sh migrate   apply database migrations, then exit
#   entrypoint.sh drain     ask the local ws process to drain and wait (Kubernetes preStop)
#
# Environment: PORT (default 8000), BIND (default 0.0.0.0), INTERNAL_PORT (the loopback-only
# listener of the drain and status endpoints; none when unset, the image sets 9000), plus the
# app's settings (.env.example). Extra arguments are passed to gunicorn, daphne or migrate; the uvicorn ws server
# is configured by the environment only and refuses them.
set -o errexit -o pipefail -o nounset

cd "$(dirname "$0")/.."
role="${1:-}"
[ $# -gt 0 ] && shift
PORT="${PORT:-8000}"
BIND="${BIND:-0.0.0.0}"

case "$role" in
  http)
    export CHANFLEET_ROLE=http
    # prometheus-client multiprocess mode: each worker writes its samples here and /metrics
    # sums them; stale files from a previous run would be counted again, so start empty.
    export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/chanfleet-metrics-$PORT}"
    rm -rf "$PROMETHEUS_MULTIPROC_DIR"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    internal=()
    [ -n "${INTERNAL_PORT:-}" ] && internal=(--bind "127.0.0.1:$INTERNAL_PORT")
    exec gunicorn app.asgi:application --config deploy/gunicorn.conf.py \
      --bind "$BIND:$PORT" "${internal[@]}" "$@"
    ;;
  ws)
    export CHANFLEET_ROLE=ws
    # uvicorn (app/realtime/server/uvicorn_server.py reads PORT, BIND, WS_PING_*, WS_MAX_SIZE, ...):
    # less than half daphne's CPU per delivered frame and twice its handshake rate
    # (docs/benchmarks.md). WS_SERVER=daphne runs daphne with the same timings instead.
    if [ "${WS_SERVER:-uvicorn}" = daphne ]; then
      # --websocket_connect_timeout: a handshake the app has not accepted by then is dropped;
      # 30 s, not 10: in a 5000-socket reconnect storm 69-87 of 5000 handshakes took longer.
      internal=()
      [ -n "${INTERNAL_PORT:-}" ] && internal=(--endpoint "tcp:port=$INTERNAL_PORT:interface=127.0.0.1")
      # No --proxy-headers: daphne would believe X-Forwarded-For from any peer; app/asgi.py
      # applies FORWARDED_ALLOW_IPS instead, as uvicorn and gunicorn do.
      exec daphne --bind "$BIND" --port "$PORT" "${internal[@]}" \
        --ping-interval "${WS_PING_INTERVAL:-20}" --ping-timeout "${WS_PING_TIMEOUT:-30}" \
        --websocket_connect_timeout "${WS_CONNECT_TIMEOUT:-30}" \
        --websocket-max-message-size "${WS_MAX_SIZE:-1048576}" \
        --application-close-timeout 10 \
        "$@" app.asgi:application
    fi
    exec python -m app.realtime.server.uvicorn_server "$@"  # refuses arguments: uvicorn reads the environment
    ;;
  migrate)
    export CHANFLEET_ROLE=migrate
    exec python manage.py migrate --noinput "$@"
    ;;
  drain)
    # preStop: returns when every client was told to reconnect elsewhere; the process exits.
    # The internal listener is loopback-only, so this reaches the pod's own ws process.
    exec python -c "import sys, urllib.request as u; \
r = u.urlopen(u.Request('http://127.0.0.1:${INTERNAL_PORT:-9000}/internal/drain?wait=1', \
method='POST'), timeout=float(sys.argv[1])); print(r.read().decode())" "${DRAIN_TIMEOUT:-60}"
    ;;
  *)
    echo "usage: $0 {http|ws|migrate|drain} [server arguments]" >&2
    exit 64
    ;;
esac
