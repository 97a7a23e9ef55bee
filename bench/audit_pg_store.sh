#!/usr/bin/env bash
# Does a PostgreSQL audit store keep up? Runs pgbench -S -M prepared through one pgcordon
# whose audit.store is a database on the same server, then watches the store until its
# record count has not moved for 8 s, and prints how long after pgbench's end the last
# commit came. A store that keeps up commits within the 20 ms flush interval; one that
# does not is still writing seconds later (and past audit.max_pending it would drop).
#
# Needs a running PostgreSQL that pgbench was initialized on, reachable as a superuser
# (see bench/README.md, "A PostgreSQL audit store"):
#   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres PGPASSWORD=... BENCH_DB=bench \
#   BENCH_USER=bench BENCH_PASSWORD=... bench/audit_pg_store.sh [BIN]
# It creates (and drops at the end) the database pgcordon_bench_audit; the gateway reaches
# it with the same PGUSER and PGPASSWORD (libpq reads them from the environment).
set -Eeuo pipefail
export PGOPTIONS="-c client_min_messages=warning"  # no NOTICE for DROP ... IF EXISTS
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/pgcordon}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
PORT=${GW_PORT:-47199}
: "${PGHOST:?}" "${PGPORT:?}" "${PGUSER:?}" "${BENCH_DB:?}" "${BENCH_USER:?}" "${BENCH_PASSWORD:?}"
STORE_DB=pgcordon_bench_audit
TMP=$(mktemp -d)
GW=
cleanup() {
  [[ -n $GW ]] && kill "$GW" 2>/dev/null && wait "$GW" 2>/dev/null
  psql -qAt -d postgres -c "DROP DATABASE IF EXISTS $STORE_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
psql -qAt -d postgres -c "DROP DATABASE IF EXISTS $STORE_DB WITH (FORCE)" -c "CREATE DATABASE $STORE_DB" >/dev/null
cat > "$TMP/gw.yaml" <<EOC
listen: {address: 127.0.0.1, port: $PORT, workers: 2}
log: {level: warn}
databases:
  bench: {host: $PGHOST, port: $PGPORT, dbname: $BENCH_DB, user: $BENCH_USER, password_env: BENCH_PASSWORD, sslmode: disable}
users:
  bench: {password: "$("$BIN" passwd --password gwpw)", groups: [bench-agents]}
audit:
  store: "postgresql://$PGUSER@$PGHOST:$PGPORT/$STORE_DB?sslmode=disable"
  key_file: $TMP/audit.key
  on_failure: continue
  max_pending: 4GiB
EOC
"$BIN" serve --config "$TMP/gw.yaml" > "$TMP/gw.log" 2>&1 &
GW=$!
for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p "$PORT" && break; sleep 0.1; done
PGPASSWORD=gwpw pgbench -n -S -M prepared -c "$CLIENTS" -j 2 -T "$DURATION" -h 127.0.0.1 -p "$PORT" -U bench bench \
  2>&1 | grep -E "^tps|processed"
start=$(date +%s.%N) last=-1 same=0 seen=$start
while (( same < 8 )); do
  n=$(psql -qAt -d "$STORE_DB" -c "SELECT count(*) FROM audit_records")
  if [[ $n == "$last" ]]; then same=$((same + 1)); else same=0; seen=$(date +%s.%N); fi
  last=$n
  sleep 1
done
echo "records in the store: $last; last commit seen $(echo "$seen - $start" | bc) s after pgbench ended"
grep -h "audit_events_dropped" "$TMP/gw.log" | tail -1 || true
