#!/usr/bin/env bash
# How long does an audited gateway take to start on a long chain? Its start derives the
# next record's key: from key(1), one SHA-256 step per record ever written, or from the
# last rung of <key_file>.rungs (docs/audit.md, "Key rungs").
#
# Writes one record (a failed login; no PostgreSQL is needed), sets the store's head to
# seq=HEAD_SEQ by hand (as if that many records had been written), then times from launch
# to the ready line (the listener is open before it, but answers nobody): once without a
# rungs file, once with the one the first start wrote. The key steps each start took are
# read from its audit_started line.
#   HEAD_SEQ=100000000 bench/audit_start.sh [BIN]
set -Eeuo pipefail
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/pgcordon}
HEAD_SEQ=${HEAD_SEQ:-100000000}
export BENCH_UNUSED_PASSWORD=unused # the database is never reached
PORT=${GW_PORT:-47198}
TMP=$(mktemp -d)
GW=
cleanup() {
  [[ -n $GW ]] && kill "$GW" 2>/dev/null && wait "$GW" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
cat > "$TMP/gw.yaml" <<EOC
listen: {address: 127.0.0.1, port: $PORT, workers: 2}
log: {level: info}
databases:
  app: {host: 127.0.0.1, port: 1, dbname: app, user: app, password_env: BENCH_UNUSED_PASSWORD, sslmode: disable}
users:
  alice: {password: "$("$BIN" passwd --password right)", groups: [g]}
audit:
  store: "sqlite:$TMP/audit.db"
  key_file: $TMP/audit.key
EOC

# Starts the gateway; SECS: the seconds from launch until it logs that it is ready.
start() {
  local t0 t1 ready
  ready=$(cat "$TMP/gw.log" 2>/dev/null | grep -c "event=ready" || true)
  t0=$(date +%s.%N)
  "$BIN" serve --config "$TMP/gw.yaml" >> "$TMP/gw.log" 2>&1 &
  GW=$!
  until (( $(grep -c "event=ready" "$TMP/gw.log" || true) > ready )); do
    kill -0 "$GW" 2>/dev/null || { tail -5 "$TMP/gw.log" >&2; exit 1; }
    sleep 0.01
  done
  t1=$(date +%s.%N)
  SECS=$(echo "$t1 - $t0" | bc)
}
stop() { kill "$GW"; wait "$GW" || true; GW=; }

start
PGPASSWORD=wrong psql -h 127.0.0.1 -p "$PORT" -U alice -d app -c "SELECT 1" > /dev/null 2>&1 || true
sleep 0.1
stop
sqlite3 "$TMP/audit.db" "UPDATE audit_batches SET last_seq = $HEAD_SEQ"
rm -f "$TMP/audit.key.head" # it names seq=1; the edited store would read as another chain's

for run in "without a rungs file" "with the rungs file the first start wrote"; do
  start
  steps=$(grep -o 'event=audit_started .*key_steps=[0-9]*' "$TMP/gw.log" | tail -1 | sed 's/.*key_steps=//')
  printf 'head seq=%s, %s: ready after %.3f s, key_steps=%s, rungs file %s lines\n' "$HEAD_SEQ" "$run" "$SECS" \
    "$steps" "$(cat "$TMP/audit.key.rungs" 2>/dev/null | wc -l)"
  stop
done
