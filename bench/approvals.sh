#!/usr/bin/env bash
# pgcordon approvals benchmark: does holding statements for approval slow down everyone
# else on the same gateway?
#
# Starts a throwaway PostgreSQL and one pgcordon (like bench/run.sh: same PostgreSQL
# settings, a private copy of the binary, a local SCRAM user "bench"), then runs
#   pgbench -S -n -c $CLIENTS -j $THREADS -T $DURATION
# through the gateway twice per round: once with no held sessions ("baseline") and once
# while $HELD psycopg connections each wait in wait mode on a statement held for approval
# ("held"). Prints both TPS figures and held/baseline. The held sessions are denied
# through the admin API afterwards and must all get the denial.
#
# bench/run.sh is one script without a function library, so the few helpers it has
# (cleanup, free ports, wait_ready) are repeated here in short form. See bench/README.md
# ("Approvals benchmark"). Everything is torn down on exit, also on failure.
set -Eeuo pipefail

# ---------------------------------------------------------------- settings
DURATION=${DURATION:-10}          # seconds per pgbench run
CLIENTS=${CLIENTS:-8}             # pgbench -c
THREADS=${THREADS:-2}             # pgbench -j
SCALE=${SCALE:-10}                # pgbench -i -s
WORKERS=${WORKERS:-2}             # pgcordon listen.workers
HELD=${HELD:-100}                 # sessions held for approval during the "held" run
ROUNDS=${ROUNDS:-1}               # rounds of (baseline, held)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PY=${PY:-/usr/bin/python3}        # Debian's python3-psycopg lives here
KEEP_TMP=${KEEP_TMP:-0}           # 1 = keep the temp dir (logs, configs) after exit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
PGCORDON=${PGCORDON:-$REPO/build/pgcordon}

die() { echo "bench: ERROR: $*" >&2; exit 1; }
log() { echo "# $*"; }

# ---------------------------------------------------------------- preflight
if [[ ! -x "$PGCORDON" ]]; then
  echo "bench: ERROR: pgcordon binary not found or not executable: $PGCORDON" >&2
  echo "bench: build it first:  make -C $REPO" >&2
  exit 2
fi
for b in "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/postgres" "$PY"; do
  [[ -x "$b" ]] || die "required program missing: $b"
done
for b in pgbench psql; do command -v "$b" >/dev/null || die "required program missing: $b"; done
"$PY" -c 'import psycopg' 2>/dev/null || die "$PY cannot import psycopg (apt-get install python3-psycopg)"
for v in DURATION CLIENTS THREADS SCALE WORKERS HELD ROUNDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] && (( ${!v} > 0 )) || die "$v must be a positive integer (is '${!v}')"
done

if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user"
  AS_PG=(runuser -u postgres --)
else
  AS_PG=()
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null || true

# ---------------------------------------------------------------- cleanup
TMP=""
PG_STARTED=0
CORDON_PID=""
HOLDER_PID=""
CHILD_PID=""

pid_alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

run_child() {  # run CMD in the background and wait, so a signal interrupts the wait at once
  local rc=0
  "$@" &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

stop_pid() {  # stop_pid NAME PID : SIGTERM, wait up to 15 s, then SIGKILL
  local name=$1 pid=$2 i
  pid_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  if pid_alive "$pid"; then
    echo "# cleanup: $name (pid $pid) still running 15 s after SIGTERM, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

exec {OUT_FD}>&1 {ERR_FD}>&2

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  exec 1>&"$OUT_FD" 2>&"$ERR_FD"
  if (( rc != 0 )) && [[ -n "$TMP" && -d "$TMP" ]]; then
    for f in pgcordon.log holder.log postgres.log; do
      [[ -s "$TMP/$f" ]] || continue
      echo "---- last 30 lines of $f ----" >&2
      tail -n 30 "$TMP/$f" >&2
    done
  fi
  if pid_alive "$CHILD_PID"; then kill -TERM "$CHILD_PID" 2>/dev/null; wait "$CHILD_PID" 2>/dev/null; fi
  stop_pid holder "$HOLDER_PID"
  stop_pid pgcordon "$CORDON_PID"
  if (( PG_STARTED )); then
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$TMP/data" -m immediate -w -t 30 stop >/dev/null 2>&1
  fi
  if [[ -n "$TMP" && -d "$TMP" ]]; then
    if [[ "$KEEP_TMP" == 1 ]]; then echo "# temp dir kept: $TMP" >&2; else rm -rf "$TMP"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rand_pw() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

wait_ready() {  # wait_ready NAME PID PORT PASSWORD : an authenticated "select 1" as bench
  local name=$1 pid=$2 port=$3 pass=$4 i
  for ((i = 0; i < 300; i++)); do
    if [[ -n "$pid" ]] && ! pid_alive "$pid"; then die "$name (pid $pid) exited during startup"; fi
    if PGPASSWORD=$pass PGCONNECT_TIMEOUT=3 psql -X -q -h 127.0.0.1 -p "$port" -U bench -d bench \
         -Atc 'select 1' >/dev/null 2>"$TMP/ready-$name.err"; then
      return 0
    fi
    sleep 0.1
  done
  cat "$TMP/ready-$name.err" >&2
  die "$name did not accept an authenticated 'select 1' on port $port within 30 s"
}

# ---------------------------------------------------------------- header
echo "=== pgcordon approvals benchmark ==="
printf '# command: '; printf '%q ' env DURATION="$DURATION" CLIENTS="$CLIENTS" THREADS="$THREADS" \
  SCALE="$SCALE" WORKERS="$WORKERS" HELD="$HELD" ROUNDS="$ROUNDS" "$0" "$@"; echo
log "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
log "machine: $(uname -srm), nproc=$(nproc), cpu: $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
log "postgres: $("$PGBIN/postgres" --version); pgbench: $(pgbench --version)"
rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
log "pgcordon: $PGCORDON (repo rev $rev), listen.workers=$WORKERS"
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

TMP=$(mktemp -d /tmp/pgcordon-bench-approvals.XXXXXX)
chmod 755 "$TMP"
[[ $(id -u) -eq 0 ]] && chown postgres: "$TMP"
cp "$PGCORDON" "$TMP/pgcordon.bin" || die "cannot copy $PGCORDON"
PGCORDON=$TMP/pgcordon.bin
log "pgcordon binary under test: copy, sha256 $(sha256sum "$PGCORDON" | cut -c1-16)"

PG_PORT=$(free_port)
GW_PORT=$(free_port)
ADMIN_PORT=$(free_port)
while [[ $GW_PORT == "$PG_PORT" ]]; do GW_PORT=$(free_port); done
while [[ $ADMIN_PORT == "$PG_PORT" || $ADMIN_PORT == "$GW_PORT" ]]; do ADMIN_PORT=$(free_port); done
PG_PASSWORD=$(rand_pw)
GW_PASSWORD=$(rand_pw)
HOLD_PASSWORD=$(rand_pw)

# ---------------------------------------------------------------- PostgreSQL
# one upstream session per held client, plus pgbench and some slack
PG_MAX_CONNECTIONS=$(( HELD + CLIENTS + 50 ))
log "starting PostgreSQL (port $PG_PORT, max_connections=$PG_MAX_CONNECTIONS, fsync=off) ..."
"${AS_PG[@]}" "$PGBIN/initdb" -D "$TMP/data" -U postgres -E UTF8 --no-sync \
  --auth-local=trust --auth-host=scram-sha-256 >"$TMP/initdb.log" 2>&1 \
  || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
cat >>"$TMP/data/postgresql.conf" <<EOF

# --- pgcordon approvals bench ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP'
max_connections = $PG_MAX_CONNECTIONS
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
EOF
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 start >/dev/null \
  || die "pg_ctl start failed"
PG_STARTED=1
"${AS_PG[@]}" psql -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PG_PORT" -U postgres -d postgres \
  >/dev/null <<EOF || die "creating role/database failed"
CREATE ROLE bench LOGIN PASSWORD '$PG_PASSWORD';
CREATE DATABASE bench OWNER bench;
EOF
log "pgbench -i -s $SCALE ..."
PGPASSWORD=$PG_PASSWORD pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U bench bench \
  >"$TMP/pgbench-init.log" 2>&1 || { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }
PGPASSWORD=$PG_PASSWORD psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U bench -d bench \
  -c "CREATE TABLE held_payments (id int PRIMARY KEY, amount numeric)" \
  -c "INSERT INTO held_payments SELECT g, g FROM generate_series(1, 100) g" >/dev/null \
  || die "creating held_payments failed"

# ---------------------------------------------------------------- pgcordon
# bench: no policy rules (as "pgcordon" in bench/run.sh); holder: every statement on
# public.held_payments is held in wait mode for 10 minutes. The approver's API key is made
# with `pgcordon apikey create`.
gw_verifier=$("$PGCORDON" passwd --password "$GW_PASSWORD") || die "pgcordon passwd failed"
hold_verifier=$("$PGCORDON" passwd --password "$HOLD_PASSWORD") || die "pgcordon passwd failed"
keyout=$("$PGCORDON" apikey create bench-approver --groups security-oncall) || die "apikey create failed"
APPROVER_KEY=$(sed -n 's/^  \(pgc_[A-Za-z0-9_-]\{43\}\)$/\1/p' <<<"$keyout")
APPROVER_HASH=$(sed -n 's/^  bench-approver: {hash: "\(sha256:[0-9a-f]\{64\}\)".*/\1/p' <<<"$keyout")
[[ -n $APPROVER_KEY && -n $APPROVER_HASH ]] || { echo "$keyout" >&2; die "cannot parse apikey create's output"; }

cat >"$TMP/pgcordon.yaml" <<EOF
listen: {address: 127.0.0.1, port: $GW_PORT, workers: $WORKERS}
limits: {max_client_conn: $(( HELD + CLIENTS + 50 ))}
log: {level: warn}
admin: {address: 127.0.0.1, port: $ADMIN_PORT, auditors: [security]}
databases:
  bench:
    host: 127.0.0.1
    port: $PG_PORT
    dbname: bench
    user: bench
    password_env: PGCORDON_BENCH_DB_PASSWORD
    sslmode: disable
users:
  bench: {password: "$gw_verifier", groups: [bench-agents]}
$(for ((h = 0; h * 100 < HELD; h++)); do echo "  holder$h: {password: \"$hold_verifier\", groups: [holders]}"; done)
api_keys:
  bench-approver: {hash: "$APPROVER_HASH", groups: [security-oncall]}
approvals:
  approvers: [security-oncall]
  mode: wait
  wait: 10m
default: deny
policies:
  - name: bench-agents
    match: {groups: [bench-agents]}
  - name: holders
    match: {groups: [holders]}
    review:
      - tables: [public.held_payments]
EOF
PGCORDON_BENCH_DB_PASSWORD=$PG_PASSWORD "$PGCORDON" check-config --config "$TMP/pgcordon.yaml" \
  >"$TMP/check-config.log" 2>&1 || { cat "$TMP/check-config.log" >&2; die "check-config rejected the config"; }
log "starting pgcordon (port $GW_PORT, admin $ADMIN_PORT) ..."
PGCORDON_BENCH_DB_PASSWORD=$PG_PASSWORD "$PGCORDON" serve --config "$TMP/pgcordon.yaml" \
  >"$TMP/pgcordon.stdout" 2>"$TMP/pgcordon.log" &
CORDON_PID=$!
wait_ready pgcordon "$CORDON_PID" "$GW_PORT" "$GW_PASSWORD"

# ---------------------------------------------------------------- the holder
# HELD connections as "holder0", "holder1", ... (100 each), one thread each, each sending a different statement on
# held_payments (wait mode: it waits). Ready once every one got its NOTICE and the API
# lists them all as pending; on $TMP/release it checks they are still pending, denies them
# all through the API and checks every client got the denial (SQLSTATE 42501).
cat >"$TMP/holder.py" <<'EOF'
import json, os, sys, threading, time, urllib.request
import psycopg

port, admin, pw, key, n, tmp, tag = sys.argv[1:8]
n = int(n)
api = f"http://127.0.0.1:{admin}"


def call(method, path, body=None):
    req = urllib.request.Request(api + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def pending():
    out, before = [], ""
    while True:
        page = call("GET", "/api/approvals?status=pending&limit=1000" + (f"&before={before}" if before else ""))
        out += [r for r in page["approvals"] if tag in (r.get("statement") or "")]
        before = page.get("next")
        if not before:
            return out


noticed = [threading.Event() for _ in range(n)]
results = [None] * n
conns = []
for i in range(n):
    # a requester may have 100 requests pending: holder0 holds the first 100, holder1 the next
    c = psycopg.connect(host="127.0.0.1", port=port, user=f"holder{i // 100}", password=pw, dbname="bench",
                        sslmode="disable", autocommit=True, connect_timeout=30)
    c.add_notice_handler(lambda d, i=i: "held for approval" in (d.message_primary or "")
                         and noticed[i].set())
    conns.append(c)


def run(i):
    try:
        conns[i].execute(f"SELECT amount FROM held_payments WHERE id = {i % 100 + 1} "
                         f"AND '{tag}-{i}' <> ''")
        results[i] = "ran"
    except psycopg.Error as e:
        results[i] = e.sqlstate


threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
t0 = time.monotonic()
for t in threads:
    t.start()
for i, e in enumerate(noticed):
    if not e.wait(max(1, 120 - (time.monotonic() - t0))):
        sys.exit(f"holder: session {i} got no 'held for approval' notice within 120 s")
deadline = time.monotonic() + 30
while len(pending()) < n:
    if time.monotonic() > deadline:
        sys.exit(f"holder: the API lists {len(pending())} of {n} held requests as pending")
    time.sleep(0.2)
print(f"holder: {n} sessions held ({time.monotonic() - t0:.2f}s to hold them all)", flush=True)
open(os.path.join(tmp, "held.ready"), "w").close()
while not os.path.exists(os.path.join(tmp, "release")):
    time.sleep(0.1)
still = pending()
alive = sum(t.is_alive() for t in threads)
print(f"holder: after the run {len(still)} requests pending, {alive} clients still waiting",
      flush=True)
for r in still:
    call("POST", f"/api/approvals/{r['id']}/deny", {"reason": "bench over"})
for t in threads:
    t.join(60)
bad = [(i, r) for i, r in enumerate(results) if r != "42501"]
for c in conns:
    c.close()
if len(still) != n or alive != n or bad:
    sys.exit(f"holder: expected {n} pending and waiting, then {n} denials; "
             f"got {len(still)} pending, {alive} waiting, unexpected results {bad[:5]}")
print(f"holder: all {n} denied and released", flush=True)
EOF

# ---------------------------------------------------------------- runs
pgbench_run() {  # pgbench_run LABEL -> prints the TPS
  local label=$1 out=$TMP/pgbench-$1.log tps
  if ! PGPASSWORD=$GW_PASSWORD run_child pgbench -S -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
       -h 127.0.0.1 -p "$GW_PORT" -U bench bench >"$out" 2>&1; then
    cat "$out" >&2
    die "pgbench ($label) failed"
  fi
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$out")
  [[ -n $tps ]] || tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | tail -n1)
  [[ -n $tps ]] || { cat "$out" >&2; die "no tps line in pgbench's output ($label)"; }
  if grep -qE '^number of failed transactions: [1-9]' "$out"; then
    cat "$out" >&2
    die "pgbench ($label) had failed transactions"
  fi
  echo "$tps"
}

hold_start() {  # starts the holder and waits until HELD sessions are held
  rm -f "$TMP/held.ready" "$TMP/release"
  "$PY" "$TMP/holder.py" "$GW_PORT" "$ADMIN_PORT" "$HOLD_PASSWORD" "$APPROVER_KEY" "$HELD" "$TMP" \
    "bench-hold-$1" >>"$TMP/holder.log" 2>&1 &
  HOLDER_PID=$!
  local i
  for ((i = 0; i < 1800; i++)); do
    [[ -e $TMP/held.ready ]] && return 0
    pid_alive "$HOLDER_PID" || { cat "$TMP/holder.log" >&2; die "the holder exited before holding $HELD sessions"; }
    sleep 0.1
  done
  cat "$TMP/holder.log" >&2
  die "$HELD sessions were not held within 180 s"
}

hold_stop() {
  touch "$TMP/release"
  local rc=0
  wait "$HOLDER_PID" || rc=$?
  HOLDER_PID=""
  (( rc == 0 )) || { cat "$TMP/holder.log" >&2; die "the holder failed (exit $rc)"; }
}

log "pgbench per run: pgbench -S -n -c $CLIENTS -j $THREADS -T $DURATION -h 127.0.0.1 -p $GW_PORT -U bench bench"
echo
printf '%-6s %-10s %12s\n' round run tps
BASE=() HOLD=()
for ((r = 1; r <= ROUNDS; r++)); do
  tps=$(pgbench_run "baseline-$r")
  BASE+=("$tps")
  printf '%-6s %-10s %12s\n' "$r" baseline "$tps"
  hold_start "$r"
  tail -n1 "$TMP/holder.log" | sed 's/^/# /'
  tps=$(pgbench_run "held-$r")
  HOLD+=("$tps")
  hold_stop
  printf '%-6s %-10s %12s   (%s sessions held meanwhile)\n' "$r" held "$tps" "$HELD"
  tail -n2 "$TMP/holder.log" | sed 's/^/# /'
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
mb=$(median "${BASE[@]}")
mh=$(median "${HOLD[@]}")
echo
echo "=== result (median of $ROUNDS round(s)) ==="
printf 'baseline (no held sessions):  %10.1f tps\n' "$mb"
printf 'held (%d sessions held):     %10.1f tps\n' "$HELD" "$mh"
awk -v a="$mh" -v b="$mb" 'BEGIN {printf "held / baseline:              %10.3f\n", a / b}'
pid_alive "$CORDON_PID" || die "pgcordon exited during the benchmark"
