#!/usr/bin/env bash
# A PostgreSQL of the project's own, for `make test` on PostgreSQL (what CI runs): Debian's
# postgresql server binaries, a data directory under var/postgres, 127.0.0.1 only, trust auth,
# database `test`. The machine's own clusters (pg_lsclusters) are left alone.
#
#   deploy/local/postgres.sh start   # installs postgresql with apt when missing (root), starts
#   deploy/local/postgres.sh stop    # stops it (by the PID in its pid file)
#   deploy/local/postgres.sh url     # prints the DATABASE_URL
#
# Environment: PGPORT (default 5432), PGSTATE (default var/postgres).
set -o errexit -o pipefail -o nounset

cd "$(dirname "$0")/../.."
port="${PGPORT:-5432}"
state="$(realpath -m "${PGSTATE:-var/postgres}")"
data="$state/data"
url="postgres://postgres@127.0.0.1:$port/test"

bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && echo "$dir"
}

# initdb and the server refuse to run as root: they run as the postgres account, or as the
# caller when that is not root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  if [ -z "$(bindir)" ]; then
    if [ "$(id -u)" != 0 ]; then echo "please run: sudo apt-get install postgresql" >&2; exit 1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
  fi
  local bin; bin=$(bindir)
  mkdir -p "$state"
  [ "$(id -u)" = 0 ] && chown postgres: "$state"
  if [ ! -f "$data/PG_VERSION" ]; then
    as_owner "$bin/initdb" --pgdata "$data" --username postgres --auth trust \
      --encoding UTF8 --locale C.UTF-8 >"$state/initdb.log"
  fi
  if as_owner "$bin/pg_ctl" --pgdata "$data" status >/dev/null 2>&1; then
    echo "PostgreSQL already running: DATABASE_URL=$url"
    return
  fi
  # fsync off: a test database, thrown away with var/; the socket stays inside the state folder.
  as_owner "$bin/pg_ctl" --pgdata "$data" --log "$state/server.log" --wait --timeout 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $state -c fsync=off -c max_connections=200" \
    start >/dev/null
  as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
    || as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres test
  echo "PostgreSQL running: DATABASE_URL=$url"
}

stop() {
  local bin; bin=$(bindir) || return 0
  [ -f "$data/postmaster.pid" ] || { echo "PostgreSQL not running"; return 0; }
  as_owner "$bin/pg_ctl" --pgdata "$data" --mode fast --wait stop >/dev/null
  echo "PostgreSQL stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$url" ;;
  *) echo "usage: $0 {start|stop|url}" >&2; exit 64 ;;
esac
