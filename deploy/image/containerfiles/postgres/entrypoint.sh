#!/bin/bash
# First start: initdb into the empty PGDATA, set the password of POSTGRES_USER, create
# POSTGRES_DB. Every start: serve on 0.0.0.0:5432 with scram-sha-256 for TCP clients.
# Extra arguments go to postgres (e.g. -c max_connections=200).
set -o errexit -o pipefail -o nounset

: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
# The socket goes to /tmp: the root filesystem may be read-only.
socket_dir="${POSTGRES_SOCKET_DIR:-/tmp}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  printf '%s\n' "host all all 0.0.0.0/0 scram-sha-256" "host all all ::/0 scram-sha-256" \
    >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    pg_ctl --pgdata="$PGDATA" --wait --silent \
      --options="-c listen_addresses='' -c unix_socket_directories=$socket_dir" start
    # \gexec runs the generated statement; %I quotes the name whatever it holds.
    psql --host="$socket_dir" --username="$user" --dbname=postgres --no-psqlrc \
      --set=ON_ERROR_STOP=1 --set=db="$db" --quiet <<'SQL'
SELECT format('CREATE DATABASE %I', :'db') \gexec
SQL
    pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
  fi
  echo "chanfleet-postgres: initialised $PGDATA (user $user, database $db)"
fi

exec postgres -c listen_addresses='*' -c unix_socket_directories="$socket_dir" \
  -c password_encryption=scram-sha-256 "$@"
