#!/usr/bin/env bash
# Run a command with a throw-away PostgreSQL server on 127.0.0.1.
#
# Installs Debian's `postgresql` package when the server binaries are missing (needs root
# and apt-get), creates a cluster in a temporary folder, exports MODELFLEET_TEST_PG_URL for
# the tests marked `postgres`, runs the command and always stops the server.
# Where no server can be had, the command still runs: locally those tests skip; in CI
# (CI=true) they fail, so a missing install step cannot hide behind a skip.
set -uo pipefail

find_pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

PG_BIN="$(find_pg_bin)"
if [ -z "$PG_BIN" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing PostgreSQL from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq postgresql >/dev/null 2>&1 || echo "!! apt-get install postgresql failed"
  PG_BIN="$(find_pg_bin)"
fi

cleanup() { :; }
if [ -n "$PG_BIN" ]; then
  PGDIR="$(mktemp -d /tmp/modelfleet-pg.XXXXXX)"
  RUNAS=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd -r -M postgres
    chown postgres "$PGDIR"
    RUNAS=(runuser -u postgres --)
  fi
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  if "${RUNAS[@]}" "$PG_BIN/initdb" -D "$PGDIR/data" -U postgres -A trust >"$PGDIR/initdb.log" 2>&1 \
    && "${RUNAS[@]}" "$PG_BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 \
         -o "-h 127.0.0.1 -p $PORT -k $PGDIR -c fsync=off -c max_connections=200" start >/dev/null; then
    export MODELFLEET_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
    echo "== PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT"
    cleanup() {
      "${RUNAS[@]}" "$PG_BIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true
      rm -rf "$PGDIR"
    }
  else
    echo "!! could not start PostgreSQL:"; tail -5 "$PGDIR"/*.log 2>/dev/null
    rm -rf "$PGDIR"
  fi
else
  echo "!! no PostgreSQL server available; tests marked 'postgres' will skip (fail under CI)"
fi
trap cleanup EXIT

"$@"
