#!/usr/bin/env bash
# Start (or stop) a throwaway PostgreSQL from Debian's packages for the tests: cluster under /tmp,
# socket and TCP on 127.0.0.1:${SM_PG_PORT:-25432}. Prints the SQLAlchemy URL on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${SM_PG_PORT:-25432}
# outside the checkout: the postgres user must be able to reach it wherever the clone lives
DATA=${SM_PG_DATA:-/tmp/stratmaster-pg-$PORT/data}
if [[ "${1:-start}" == "stop" ]]; then
  [[ -d $DATA ]] && su postgres -c "$(ls -d /usr/lib/postgresql/*/bin | tail -1)/pg_ctl -D $DATA -m fast stop" >/dev/null 2>&1 || true
  exit 0
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "[postgres] installing Debian's postgresql package" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
mkdir -p "$(dirname "$DATA")"
chown postgres "$(dirname "$DATA")"
if [[ ! -f $DATA/PG_VERSION ]]; then
  su postgres -c "$BIN/initdb -D $DATA -A trust -U postgres" >/dev/null
fi
if ! su postgres -c "$BIN/pg_ctl -D $DATA status" >/dev/null 2>&1; then
  su postgres -c "$BIN/pg_ctl -D $DATA -l $DATA/../log -w -o '-p $PORT -k /tmp -c listen_addresses=127.0.0.1' start" >&2
fi
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
