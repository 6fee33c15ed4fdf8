#!/usr/bin/env bash
# Make sure a throwaway PostgreSQL server for the tests runs on 127.0.0.1:$PGPORT and print
# its SQLAlchemy URL. Installs PostgreSQL from Debian's packages if it is missing. Idempotent.
set -euo pipefail
PGPORT="${VMPLANE_TEST_PG_PORT:-55432}"
PGDATA="${VMPLANE_TEST_PG_DIR:-/tmp/vmplane-test-pg}"
URL="postgresql+asyncpg://vmplane@127.0.0.1:${PGPORT}/postgres"

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

if [ -z "$(bindir)" ]; then
  echo "installing PostgreSQL from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
fi
BIN="$(bindir)"

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if ! as_pg "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" 2>/dev/null; then
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    [ "$(id -u)" = 0 ] && chown postgres: "$PGDATA"
    as_pg "$BIN/initdb" -D "$PGDATA" -U vmplane --auth=trust -E UTF8 >/dev/null
  fi
  as_pg "$BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 \
    -o "-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=300" start >&2
fi
echo "$URL"
