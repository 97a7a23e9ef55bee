#!/usr/bin/env bash
# pgcordon throughput / memory benchmark.
#
# Starts a throwaway PostgreSQL, PgBouncer (session mode) and pgcordon, runs
# read-only pgbench (-S) against all three in alternation, then measures the
# gateways' RSS growth with idle authenticated client connections.
# See bench/README.md. Everything is torn down on exit, also on failure.
set -Eeuo pipefail

# ---------------------------------------------------------------- settings
DURATION=${DURATION:-15}          # seconds per pgbench run
ROUNDS=${ROUNDS:-3}               # round-robin rounds
CLIENTS=${CLIENTS:-16}            # pgbench -c
THREADS=${THREADS:-2}             # pgbench -j
SCALE=${SCALE:-10}                # pgbench -i -s
WORKERS=${WORKERS:-2}             # pgcordon listen.workers
IDLE_CONNS=${IDLE_CONNS:-500}     # idle connections for the RSS measurement (0 = skip)
TARGETS=${TARGETS:-"direct pgbouncer pgcordon"}
MODES=${MODES:-"simple prepared"}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}
PY=${PY:-/usr/bin/python3}        # Debian's python3-psycopg lives here
KEEP_TMP=${KEEP_TMP:-0}           # 1 = keep the temp dir (logs, configs) after exit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
PGCORDON=${PGCORDON:-$REPO/build/pgcordon}

# one upstream backend per gateway session is possible (pgcordon), so the
# idle-connection test needs max_connections above IDLE_CONNS.
_mc=$(( IDLE_CONNS + 100 )); (( _mc < 200 )) && _mc=200
PG_MAX_CONNECTIONS=${PG_MAX_CONNECTIONS:-$_mc}

die() { echo "bench: ERROR: $*" >&2; exit 1; }
log() { echo "# $*"; }

has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- preflight
if has_target pgcordon || has_target pgcordon_rss; then
  if [[ ! -x "$PGCORDON" ]]; then
    echo "bench: ERROR: pgcordon binary not found or not executable: $PGCORDON" >&2
    echo "bench: build it first:  make -C $REPO" >&2
    exit 2
  fi
fi
for b in "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/postgres" "$PY"; do
  [[ -x "$b" ]] || die "required program missing: $b"
done
for b in pgbench psql; do command -v "$b" >/dev/null || die "required program missing: $b"; done
has_target pgbouncer && { [[ -x "$PGBOUNCER" ]] || die "required program missing: $PGBOUNCER"; }
"$PY" -c 'import psycopg' 2>/dev/null || (( IDLE_CONNS == 0 )) \
  || die "$PY cannot import psycopg (apt-get install python3-psycopg)"
for t in $TARGETS; do
  case $t in direct|pgbouncer|pgcordon) ;; *) die "unknown target '$t' in TARGETS";; esac
done
for m in $MODES; do
  case $m in simple|extended|prepared) ;; *) die "unknown mode '$m' in MODES";; esac
done

# PostgreSQL and PgBouncer refuse to run as root.
if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user"
  AS_PG=(runuser -u postgres --)
  # setpriv execs (no intermediate process), so $! is pgbouncer's own pid
  EXEC_AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)
else
  AS_PG=()
  EXEC_AS_PG=()
fi

# raise the fd limit for the idle-connection test (inherited by the gateways)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null || true

# ---------------------------------------------------------------- cleanup
TMP=""
PG_STARTED=0
BOUNCER_PID=""
CORDON_PID=""

CHILD_PID=""   # foreground benchmark client (pgbench / idle_conns.py), killed on exit

pid_alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# run_child CMD... : run CMD in the background and wait for it, so that a
# signal to this script interrupts the wait at once and cleanup can kill CMD
run_child() {
  local rc=0
  "$@" &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

stop_pid() {  # stop_pid NAME PID SIGNAL : signal, wait up to 15 s, then SIGKILL
  local name=$1 pid=$2 sig=$3 i rc
  pid_alive "$pid" || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  if pid_alive "$pid"; then
    echo "# cleanup: $name (pid $pid) still running 15 s after SIG$sig, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rc=0; wait "$pid" 2>/dev/null || rc=$?
  echo "# cleanup: $name exited with status $rc after SIG$sig" >&2
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if (( rc != 0 )) && [[ -n "$TMP" && -d "$TMP" ]]; then
    for f in pgcordon.log pgbouncer.log postgres.log; do
      [[ -s "$TMP/$f" ]] || continue
      echo "---- last 30 lines of $f ----" >&2
      tail -n 30 "$TMP/$f" >&2
    done
  fi
  if pid_alive "$CHILD_PID"; then kill -TERM "$CHILD_PID" 2>/dev/null; wait "$CHILD_PID" 2>/dev/null; fi
  stop_pid pgcordon "$CORDON_PID" TERM
  stop_pid pgbouncer "$BOUNCER_PID" INT
  if (( PG_STARTED )); then
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$TMP/data" -m immediate -w -t 30 stop >/dev/null 2>&1
    if [[ -f "$TMP/data/postmaster.pid" ]]; then
      local pmpid; pmpid=$(head -n1 "$TMP/data/postmaster.pid")
      pid_alive "$pmpid" && kill -KILL "$pmpid" 2>/dev/null
    fi
  fi
  if [[ -n "$TMP" && -d "$TMP" ]]; then
    if [[ "$KEEP_TMP" == 1 ]]; then
      echo "# temp dir kept: $TMP" >&2
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
free_port() {
  "$PY" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# wait_ready NAME PID PORT PASSWORD : poll "select 1" through the endpoint
wait_ready() {
  local name=$1 pid=$2 port=$3 pass=$4 i
  for ((i = 0; i < 300; i++)); do
    if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
      die "$name (pid $pid) exited during startup"
    fi
    if PGPASSWORD=$pass PGCONNECT_TIMEOUT=3 psql -X -q -h 127.0.0.1 -p "$port" -U bench -d bench \
         -Atc 'select 1' >/dev/null 2>"$TMP/ready-$name.err"; then
      return 0
    fi
    sleep 0.1
  done
  cat "$TMP/ready-$name.err" >&2
  die "$name did not accept an authenticated 'select 1' on port $port within 30 s"
}

rand_pw() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# ---------------------------------------------------------------- header
echo "=== pgcordon benchmark ==="
printf '# command: '; printf '%q ' env DURATION="$DURATION" ROUNDS="$ROUNDS" CLIENTS="$CLIENTS" \
  THREADS="$THREADS" SCALE="$SCALE" WORKERS="$WORKERS" IDLE_CONNS="$IDLE_CONNS" \
  TARGETS="$TARGETS" MODES="$MODES" "$0" "$@"; echo
log "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
log "machine: $(uname -srm), nproc=$(nproc), cpu: $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)," \
    "mem: $(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
log "postgres: $("$PGBIN/postgres" --version)"
log "pgbench: $(pgbench --version)"
has_target pgbouncer && log "pgbouncer: $("$PGBOUNCER" --version 2>&1 | head -n1)"
if has_target pgcordon; then
  rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
  dirty=$(git -C "$REPO" status --porcelain -- src Makefile 2>/dev/null | head -c1)
  log "pgcordon: $PGCORDON (repo rev $rev${dirty:+, src/ has uncommitted changes}," \
      "built $(date -u -r "$PGCORDON" '+%Y-%m-%dT%H:%M:%SZ')), listen.workers=$WORKERS"
fi
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running on the box skews the numbers)"
log "pgbench per run: pgbench -S -n -c $CLIENTS -j $THREADS -T $DURATION -M <mode> -h 127.0.0.1 -p <port> -U bench bench"

# ---------------------------------------------------------------- PostgreSQL
TMP=$(mktemp -d /tmp/pgcordon-bench.XXXXXX)
chmod 755 "$TMP"
[[ $(id -u) -eq 0 ]] && chown postgres: "$TMP"

PG_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
CORDON_PORT=$(free_port)
while [[ $BOUNCER_PORT == "$PG_PORT" ]]; do BOUNCER_PORT=$(free_port); done
while [[ $CORDON_PORT == "$PG_PORT" || $CORDON_PORT == "$BOUNCER_PORT" ]]; do CORDON_PORT=$(free_port); done

PG_PASSWORD=$(rand_pw)      # password of role bench in PostgreSQL (and PgBouncer)
GW_PASSWORD=$(rand_pw)      # password of pgcordon's local user bench

log "temp dir: $TMP; ports: postgres=$PG_PORT pgbouncer=$BOUNCER_PORT pgcordon=$CORDON_PORT"
log "starting PostgreSQL (max_connections=$PG_MAX_CONNECTIONS, fsync=off) ..."
"${AS_PG[@]}" "$PGBIN/initdb" -D "$TMP/data" -U postgres -E UTF8 --no-sync \
  --auth-local=trust --auth-host=scram-sha-256 >"$TMP/initdb.log" 2>&1 \
  || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
cat >>"$TMP/data/postgresql.conf" <<EOF

# --- pgcordon bench ---
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
wait_ready postgres "" "$PG_PORT" "$PG_PASSWORD"

# ---------------------------------------------------------------- PgBouncer
if has_target pgbouncer; then
  verifier=$("${AS_PG[@]}" psql -X -Atq -h "$TMP" -p "$PG_PORT" -U postgres -d postgres \
    -c "select rolpassword from pg_authid where rolname = 'bench'")
  [[ $verifier == SCRAM-SHA-256\$* ]] || die "unexpected verifier for role bench: $verifier"
  # the SCRAM verifier (not the plain password): PgBouncer authenticates the
  # client against it and reuses the client's proof to log in upstream
  printf '"bench" "%s"\n' "$verifier" >"$TMP/userlist.txt"
  pool=$(( CLIENTS + 4 )); (( pool < 20 )) && pool=20
  cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $TMP/userlist.txt
pool_mode = session
default_pool_size = $pool
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
  [[ $(id -u) -eq 0 ]] && chown postgres: "$TMP/pgbouncer.ini" "$TMP/userlist.txt"
  log "starting PgBouncer (session mode, default_pool_size=$pool) ..."
  "${EXEC_AS_PG[@]}" "$PGBOUNCER" "$TMP/pgbouncer.ini" >>"$TMP/pgbouncer.stderr" 2>&1 &
  BOUNCER_PID=$!
  wait_ready pgbouncer "$BOUNCER_PID" "$BOUNCER_PORT" "$PG_PASSWORD"
fi

# ---------------------------------------------------------------- pgcordon
if has_target pgcordon; then
  gw_verifier=$("$PGCORDON" passwd --password "$GW_PASSWORD") || die "pgcordon passwd failed"
  [[ $gw_verifier == SCRAM-SHA-256\$* ]] || die "pgcordon passwd printed unexpected output: $gw_verifier"
  cat >"$TMP/pgcordon.yaml" <<EOF
listen: {address: 127.0.0.1, port: $CORDON_PORT, workers: $WORKERS}
log: {level: warn}
databases:
  bench:
    host: 127.0.0.1
    port: $PG_PORT
    dbname: bench
    user: bench
    password_env: PGCORDON_BENCH_DB_PASSWORD
    sslmode: disable
users:
  bench: {password: "$gw_verifier"}
EOF
  PGCORDON_BENCH_DB_PASSWORD=$PG_PASSWORD "$PGCORDON" check-config --config "$TMP/pgcordon.yaml" >"$TMP/check-config.log" 2>&1 \
    || { cat "$TMP/check-config.log" >&2; die "pgcordon check-config rejected the bench config"; }
  log "starting pgcordon (workers=$WORKERS) ..."
  PGCORDON_BENCH_DB_PASSWORD=$PG_PASSWORD \
    "$PGCORDON" serve --config "$TMP/pgcordon.yaml" >"$TMP/pgcordon.stdout" 2>"$TMP/pgcordon.log" &
  CORDON_PID=$!
  wait_ready pgcordon "$CORDON_PID" "$CORDON_PORT" "$GW_PASSWORD"
fi

target_port() {
  case $1 in direct) echo "$PG_PORT";; pgbouncer) echo "$BOUNCER_PORT";; pgcordon) echo "$CORDON_PORT";; esac
}
target_password() {
  case $1 in pgcordon) echo "$GW_PASSWORD";; *) echo "$PG_PASSWORD";; esac
}

# ---------------------------------------------------------------- throughput
read -r -a TARGET_LIST <<<"$TARGETS"
read -r -a MODE_LIST <<<"$MODES"
NT=${#TARGET_LIST[@]}
RESULTS=$TMP/results.tsv
: >"$RESULTS"
FAILED_RUNS=0

echo
echo "=== throughput: pgbench -S, $CLIENTS clients, $THREADS threads, ${DURATION}s per run, $ROUNDS rounds (round-robin) ==="
printf '%-5s %-9s %-10s %12s %12s\n' round mode target tps "lat_avg_ms"
for ((r = 1; r <= ROUNDS; r++)); do
  for mode in "${MODE_LIST[@]}"; do
    # rotate the target order every round so no target always runs first
    for ((k = 0; k < NT; k++)); do
      t=${TARGET_LIST[$(( (k + r - 1) % NT ))]}
      out=$TMP/run-$r-$mode-$t.log
      rc=0
      run_child env PGPASSWORD="$(target_password "$t")" pgbench -S -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
        -M "$mode" -h 127.0.0.1 -p "$(target_port "$t")" -U bench bench >"$out" 2>&1 || rc=$?
      tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out")
      lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out")
      failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")
      if (( rc != 0 )) || [[ -z "$tps" ]] || [[ -n "$failed" && "$failed" != 0 ]]; then
        FAILED_RUNS=$((FAILED_RUNS + 1))
        printf '%-5s %-9s %-10s %12s   (pgbench exit %s; output below)\n' "$r" "$mode" "$t" FAILED "$rc"
        sed 's/^/    | /' "$out" | tail -n 20
        if [[ $t == pgcordon ]] && ! pid_alive "$CORDON_PID"; then
          die "pgcordon is no longer running"
        fi
        continue
      fi
      printf '%-5s %-9s %-10s %12.1f %12s\n' "$r" "$mode" "$t" "$tps" "${lat:--}"
      printf '%s\t%s\t%s\t%s\n' "$t" "$mode" "$r" "$tps" >>"$RESULTS"
      sleep 1
    done
  done
done

median() {  # median of the tps values for target $1 mode $2
  awk -F'\t' -v t="$1" -v m="$2" '$1 == t && $2 == m {print $4}' "$RESULTS" | sort -g |
    awk '{v[NR] = $1} END {if (NR == 0) print ""; else if (NR % 2) printf "%.1f\n", v[(NR+1)/2];
         else printf "%.1f\n", (v[NR/2] + v[NR/2+1]) / 2}'
}
ratio() { [[ -n "$1" && -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}' || echo "-"; }

echo
echo "=== median TPS over $ROUNDS rounds ==="
printf '%-9s' mode
for t in "${TARGET_LIST[@]}"; do printf ' %12s' "$t"; done
has_target pgcordon && has_target pgbouncer && printf ' %18s' "pgcordon/pgbouncer"
has_target pgcordon && has_target direct && printf ' %16s' "pgcordon/direct"
echo
for mode in "${MODE_LIST[@]}"; do
  printf '%-9s' "$mode"
  declare -A med=()
  for t in "${TARGET_LIST[@]}"; do med[$t]=$(median "$t" "$mode"); printf ' %12s' "${med[$t]:--}"; done
  has_target pgcordon && has_target pgbouncer && printf ' %18s' "$(ratio "${med[pgcordon]}" "${med[pgbouncer]}")"
  has_target pgcordon && has_target direct && printf ' %16s' "$(ratio "${med[pgcordon]}" "${med[direct]}")"
  echo
  unset med
done

# ---------------------------------------------------------------- idle-connection memory
if (( IDLE_CONNS > 0 )); then
  echo
  echo "=== gateway memory: $IDLE_CONNS idle authenticated connections (VmRSS of the gateway process tree) ==="
  printf '%-10s %14s %14s %12s %12s %6s %8s %15s %14s\n' gateway rss_before_kib rss_after_kib delta_kib kib_per_conn \
    procs open_s upstream_added upstream_left
  for t in pgcordon pgbouncer; do
    has_target "$t" || continue
    pid=$CORDON_PID; [[ $t == pgbouncer ]] && pid=$BOUNCER_PID
    rc=0
    run_child env PGHOST=127.0.0.1 PGPORT="$(target_port "$t")" PGUSER=bench PGDATABASE=bench \
      BENCH_ADMIN_DSN="host=$TMP port=$PG_PORT user=postgres dbname=postgres" \
      PGPASSWORD="$(target_password "$t")" "$PY" "$BENCH_DIR/idle_conns.py" "$pid" "$IDLE_CONNS" \
      >"$TMP/idle-$t.out" 2>"$TMP/idle-$t.err" || rc=$?
    line=$(cat "$TMP/idle-$t.out")
    if (( rc != 0 )); then
      printf '%-10s FAILED: %s\n' "$t" "$(tail -n 3 "$TMP/idle-$t.err" | tr '\n' ' ')"
      FAILED_RUNS=$((FAILED_RUNS + 1))
      continue
    fi
    declare -A kv=()
    for pair in $line; do kv[${pair%%=*}]=${pair#*=}; done
    printf '%-10s %14s %14s %12s %12s %6s %8s %15s %14s\n' "$t" "${kv[rss_before_kib]}" "${kv[rss_after_kib]}" \
      "${kv[delta_kib]}" "${kv[kib_per_conn]}" "${kv[procs]}" "${kv[open_seconds]}" "${kv[upstream_backends_added]}" \
      "${kv[upstream_left_after_close]}"
    unset kv
    pid_alive "$pid" || die "$t died during the idle-connection test"
  done
fi

echo
if (( FAILED_RUNS > 0 )); then
  echo "bench: $FAILED_RUNS run(s) FAILED (see output above)" >&2
  exit 1
fi
echo "# done"
