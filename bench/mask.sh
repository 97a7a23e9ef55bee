#!/usr/bin/env bash
# pgcordon masking benchmark: a large SELECT with masked columns.
#
# Starts a throwaway PostgreSQL with a table bench_people (id, name, email, ssn, card) of
# $ROWS rows, PgBouncer (session mode) and two pgcordon instances of the same binary:
# "pgcordon" with a policy that matches the bench user and masks nothing, and
# "pgcordon-masked" with a policy that masks ssn and card (partial, last 4 kept) and email
# (method email). Checks once that pgcordon-masked really masks, then fetches the whole
# table with psql and with psycopg through every target, round-robin, and reports the
# median wall time, MB/s and the issue's two ratios:
#   pgcordon-masked / direct   <= 1.5
#   pgcordon / pgbouncer       <= 1.0
# See bench/README.md ("Masking benchmark"). Everything is torn down on exit, also on
# failure.
set -Eeuo pipefail

# ---------------------------------------------------------------- settings
ROWS=${ROWS:-1000000}             # rows in bench_people
ROUNDS=${ROUNDS:-3}               # round-robin rounds
WORKERS=${WORKERS:-2}             # pgcordon listen.workers
TARGETS=${TARGETS:-"direct pgbouncer pgcordon pgcordon-masked"}
CLIENTS=${CLIENTS:-"psql psycopg"}
WARMUP=${WARMUP:-1}               # 1 = one untimed psql fetch per target first (also checks rows/bytes)
PG_SHARED_BUFFERS=${PG_SHARED_BUFFERS:-1GB}  # > 4x the table, so the seq scan reads shared buffers
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}
PY=${PY:-/usr/bin/python3}        # Debian's python3-psycopg lives here
DETECT=${DETECT:-0}               # 1 = pgcordon-masked also runs every content detector over every value
KEEP_TMP=${KEEP_TMP:-0}           # 1 = keep the temp dir (logs, configs) after exit

MASKED_MAX=1.5                    # pgcordon-masked / direct must be <= this
OPEN_MAX=1.0                      # pgcordon / pgbouncer must be <= this

SQL="SELECT id, name, email, ssn, card FROM bench_people"
CHECK_SQL="SELECT ssn, card, email FROM bench_people WHERE id = 1"

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
PGCORDON=${PGCORDON:-$REPO/build/pgcordon}

die() { echo "bench: ERROR: $*" >&2; exit 1; }
log() { echo "# $*"; }

has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
has_client() { [[ " $CLIENTS " == *" $1 "* ]]; }
has_cordon() { [[ " $TARGETS " == *" pgcordon"* ]]; }

# ---------------------------------------------------------------- preflight
[[ $ROWS =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive integer, not '$ROWS'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$ROUNDS'"
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive integer, not '$WORKERS'"
[[ $DETECT == 0 || $DETECT == 1 ]] || die "DETECT must be 0 or 1, not '$DETECT'"
for t in $TARGETS; do
  case $t in direct|pgbouncer|pgcordon|pgcordon-masked) ;; *) die "unknown target '$t' in TARGETS";; esac
done
for c in $CLIENTS; do
  case $c in psql|psycopg) ;; *) die "unknown client '$c' in CLIENTS (psql, psycopg)";; esac
done
[[ -n ${TARGETS// /} ]] || die "TARGETS is empty"
[[ -n ${CLIENTS// /} ]] || die "CLIENTS is empty"
# the byte count for MB/s and the masking check are taken against direct PostgreSQL
has_target direct || die "TARGETS must include direct (the byte count and the masking check use it)"

if has_cordon && [[ ! -x "$PGCORDON" ]]; then
  echo "bench: ERROR: pgcordon binary not found or not executable: $PGCORDON" >&2
  echo "bench: build it first:  make -C $REPO" >&2
  exit 2
fi
for b in "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/postgres" "$PY"; do
  [[ -x "$b" ]] || die "required program missing: $b"
done
for b in psql wc awk sort sha256sum; do command -v "$b" >/dev/null || die "required program missing: $b"; done
has_target pgbouncer && { [[ -x "$PGBOUNCER" ]] || die "required program missing: $PGBOUNCER"; }
"$PY" -c 'import psycopg' 2>/dev/null || die "$PY cannot import psycopg 3 (apt-get install python3-psycopg)"

# PostgreSQL and PgBouncer refuse to run as root.
if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user"
  AS_PG=(runuser -u postgres --)
  EXEC_AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)  # execs: $! is pgbouncer's pid
else
  AS_PG=()
  EXEC_AS_PG=()
fi

# ---------------------------------------------------------------- cleanup
TMP=""
PG_STARTED=0
BOUNCER_PID=""
CORDON_PID=""   # pgcordon (policy without mask rules)
MASKED_PID=""   # pgcordon-masked
CHILD_PID=""    # foreground client (psql / python), killed on exit

pid_alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# run_child CMD... : run CMD in the background and wait for it, so that a signal to
# this script interrupts the wait at once and cleanup can kill CMD
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

exec {OUT_FD}>&1 {ERR_FD}>&2

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  exec 1>&"$OUT_FD" 2>&"$ERR_FD"
  if (( rc != 0 )) && [[ -n "$TMP" && -d "$TMP" ]]; then
    for f in pgcordon.log pgcordon-masked.log pgbouncer.log postgres.log; do
      [[ -s "$TMP/$f" ]] || continue
      echo "---- last 30 lines of $f ----" >&2
      tail -n 30 "$TMP/$f" >&2
    done
  fi
  if pid_alive "$CHILD_PID"; then kill -TERM "$CHILD_PID" 2>/dev/null; wait "$CHILD_PID" 2>/dev/null; fi
  stop_pid pgcordon "$CORDON_PID" TERM
  stop_pid pgcordon-masked "$MASKED_PID" TERM
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

rand_pw() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

target_port() {
  case $1 in
    direct) echo "$PG_PORT";; pgbouncer) echo "$BOUNCER_PORT";;
    pgcordon) echo "$CORDON_PORT";; pgcordon-masked) echo "$MASKED_PORT";;
  esac
}
target_password() { case $1 in pgcordon*) echo "$GW_PASSWORD";; *) echo "$PG_PASSWORD";; esac; }
target_pid() {
  case $1 in pgcordon) echo "$CORDON_PID";; pgcordon-masked) echo "$MASKED_PID";; pgbouncer) echo "$BOUNCER_PID";; esac
}

# tpsql TARGET ARGS... : psql as bench through TARGET
tpsql() {
  local t=$1; shift
  PGPASSWORD=$(target_password "$t") PGCONNECT_TIMEOUT=10 psql -X -q -h 127.0.0.1 -p "$(target_port "$t")" \
    -U bench -d bench "$@"
}

# wait_ready NAME PID TARGET : poll "select 1" through the endpoint
wait_ready() {
  local name=$1 pid=$2 t=$3 i
  for ((i = 0; i < 300; i++)); do
    if [[ -n "$pid" ]] && ! pid_alive "$pid"; then die "$name (pid $pid) exited during startup"; fi
    if tpsql "$t" -Atc 'select 1' >/dev/null 2>"$TMP/ready-$name.err"; then return 0; fi
    sleep 0.1
  done
  cat "$TMP/ready-$name.err" >&2
  die "$name did not accept an authenticated 'select 1' on port $(target_port "$t") within 30 s"
}

# ---------------------------------------------------------------- header
echo "=== pgcordon masking benchmark ==="
printf '# command: '; printf '%q ' env ROWS="$ROWS" ROUNDS="$ROUNDS" WORKERS="$WORKERS" TARGETS="$TARGETS" \
  CLIENTS="$CLIENTS" WARMUP="$WARMUP" DETECT="$DETECT" "$0" "$@"; echo
log "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
log "machine: $(uname -srm), nproc=$(nproc), cpu: $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)," \
    "mem: $(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
log "postgres: $("$PGBIN/postgres" --version); psql: $(psql --version)"
has_target pgbouncer && log "pgbouncer: $("$PGBOUNCER" --version 2>&1 | head -n1)"
log "psycopg: $("$PY" -c 'import psycopg, sys; print(psycopg.__version__, "(" + psycopg.pq.__impl__ + " implementation),",
  "libpq", psycopg.pq.version(), "| python", sys.version.split()[0])')"
if has_cordon; then
  rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
  dirty=$(git -C "$REPO" status --porcelain -- src Makefile 2>/dev/null | head -c1)
  log "pgcordon: $PGCORDON (repo rev $rev${dirty:+, src/ has uncommitted changes}," \
      "built $(date -u -r "$PGCORDON" '+%Y-%m-%dT%H:%M:%SZ')), listen.workers=$WORKERS"
fi
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running on the box skews the numbers)"
log "statement: $SQL"

# ---------------------------------------------------------------- PostgreSQL
TMP=$(mktemp -d /tmp/pgcordon-maskbench.XXXXXX)
chmod 755 "$TMP"
[[ $(id -u) -eq 0 ]] && chown postgres: "$TMP"

# the pgcordon instances run a private copy of the binary (a rebuild cannot swap it mid-run)
if has_cordon; then
  for ((i = 0; i < 60; i++)); do
    if cp "$PGCORDON" "$TMP/pgcordon.bin" 2>/dev/null && "$TMP/pgcordon.bin" passwd --password x >/dev/null 2>&1; then
      break
    fi
    (( i == 59 )) && die "cannot copy a working $PGCORDON (is a build running?)"
    sleep 1
  done
  log "pgcordon binary under test: copy of $PGCORDON, sha256 $(sha256sum "$TMP/pgcordon.bin" | cut -c1-16)"
  PGCORDON=$TMP/pgcordon.bin
fi

USED_PORTS=" "
alloc_port() {  # alloc_port VAR : a free port not handed out before in this run
  local p
  while :; do p=$(free_port); [[ $USED_PORTS == *" $p "* ]] || break; done
  USED_PORTS+="$p "
  printf -v "$1" '%s' "$p"
}
alloc_port PG_PORT
alloc_port BOUNCER_PORT
alloc_port CORDON_PORT
alloc_port MASKED_PORT

PG_PASSWORD=$(rand_pw)      # password of role bench in PostgreSQL (and PgBouncer)
GW_PASSWORD=$(rand_pw)      # password of pgcordon's local user bench

log "temp dir: $TMP; ports: postgres=$PG_PORT pgbouncer=$BOUNCER_PORT pgcordon=$CORDON_PORT" \
    "pgcordon-masked=$MASKED_PORT"
log "starting PostgreSQL (shared_buffers=$PG_SHARED_BUFFERS, fsync=off) ..."
"${AS_PG[@]}" "$PGBIN/initdb" -D "$TMP/data" -U postgres -E UTF8 --no-sync \
  --auth-local=trust --auth-host=scram-sha-256 >"$TMP/initdb.log" 2>&1 \
  || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
cat >>"$TMP/data/postgresql.conf" <<EOF

# --- pgcordon masking bench ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP'
max_connections = 100
shared_buffers = '$PG_SHARED_BUFFERS'
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
EOF
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 start >/dev/null \
  || die "pg_ctl start failed (see $TMP/postgres.log)"
PG_STARTED=1

"${AS_PG[@]}" psql -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PG_PORT" -U postgres -d postgres \
  >/dev/null <<EOF || die "creating role/database failed"
CREATE ROLE bench LOGIN PASSWORD '$PG_PASSWORD';
CREATE DATABASE bench OWNER bench;
EOF
wait_ready postgres "" direct

# The table is created by role bench (the role every gateway logs in as), so it owns it.
log "creating bench_people with $ROWS rows ..."
t0=$(date +%s.%N)
tpsql direct -v ON_ERROR_STOP=1 >/dev/null 2>"$TMP/load.err" <<EOF || { cat "$TMP/load.err" >&2; die "loading bench_people failed"; }
CREATE TABLE bench_people (id int PRIMARY KEY, name text, email text, ssn text, card text);
INSERT INTO bench_people (id, name, email, ssn, card)
SELECT i,
       'Person ' || i,
       'user' || i || '@example.com',
       lpad((i % 899 + 100)::text, 3, '0') || '-' || lpad((i % 99 + 1)::text, 2, '0') || '-'
         || lpad((i % 9999 + 1)::text, 4, '0'),
       '4111' || lpad(i::text, 12, '0')
FROM generate_series(1, $ROWS) AS i;
VACUUM (FREEZE, ANALYZE) bench_people;
EOF
owner=$(tpsql direct -Atc "select tableowner from pg_tables where tablename = 'bench_people'")
[[ $owner == bench ]] || die "bench_people is owned by '$owner', expected bench"
log "bench_people loaded in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s:" \
    "$(tpsql direct -Atc "select count(*) || ' rows, ' || pg_size_pretty(pg_table_size('bench_people'))
                          || ' heap, owner ' || (select tableowner from pg_tables where tablename = 'bench_people')
                          from bench_people")"
log "row 1 (direct): $(tpsql direct -Atc "select * from bench_people where id = 1")"

# ---------------------------------------------------------------- PgBouncer
if has_target pgbouncer; then
  verifier=$("${AS_PG[@]}" psql -X -Atq -h "$TMP" -p "$PG_PORT" -U postgres -d postgres \
    -c "select rolpassword from pg_authid where rolname = 'bench'")
  [[ $verifier == SCRAM-SHA-256\$* ]] || die "unexpected verifier for role bench: $verifier"
  printf '"bench" "%s"\n' "$verifier" >"$TMP/userlist.txt"
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
default_pool_size = 20
max_client_conn = 100
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
  [[ $(id -u) -eq 0 ]] && chown postgres: "$TMP/pgbouncer.ini" "$TMP/userlist.txt"
  log "starting PgBouncer (session mode) ..."
  "${EXEC_AS_PG[@]}" "$PGBOUNCER" "$TMP/pgbouncer.ini" >>"$TMP/pgbouncer.stderr" 2>&1 &
  BOUNCER_PID=$!
  wait_ready pgbouncer "$BOUNCER_PID" pgbouncer
fi

# ---------------------------------------------------------------- pgcordon
# cordon_config FILE PORT : the part both instances share (as bench/run.sh writes it)
cordon_config() {
  cat >"$1" <<EOF
listen: {address: 127.0.0.1, port: $2, workers: $WORKERS}
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
}

start_cordon() {  # start_cordon NAME CONFIG
  local name=$1 cfg=$2 pid
  PGCORDON_BENCH_DB_PASSWORD=$PG_PASSWORD "$PGCORDON" check-config --config "$cfg" >"$TMP/check-config-$name.log" 2>&1 \
    || { cat "$TMP/check-config-$name.log" >&2; die "pgcordon check-config rejected $cfg"; }
  log "starting $name (workers=$WORKERS, port $(target_port "$name")) ..."
  PGCORDON_BENCH_DB_PASSWORD=$PG_PASSWORD \
    "$PGCORDON" serve --config "$cfg" >"$TMP/$name.stdout" 2>"$TMP/$name.log" &
  pid=$!
  case $name in pgcordon) CORDON_PID=$pid;; pgcordon-masked) MASKED_PID=$pid;; esac
  wait_ready "$name" "$pid" "$name"
}

if has_cordon; then
  gw_verifier=$("$PGCORDON" passwd --password "$GW_PASSWORD") || die "pgcordon passwd failed"
  [[ $gw_verifier == SCRAM-SHA-256\$* ]] || die "pgcordon passwd printed unexpected output: $gw_verifier"
fi
if has_target pgcordon; then
  # a policy that matches the bench user and has no rules at all: nothing is masked
  cordon_config "$TMP/pgcordon.yaml" "$CORDON_PORT"
  cat >>"$TMP/pgcordon.yaml" <<'EOF'
policies:
  - name: open
    match: {users: [bench]}
EOF
  start_cordon pgcordon "$TMP/pgcordon.yaml"
fi
if has_target pgcordon-masked; then
  # the key is only used by method hash (not used here); written without a newline
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/mask.key"
  chmod 600 "$TMP/mask.key"
  cordon_config "$TMP/pgcordon-masked.yaml" "$MASKED_PORT"
  cat >>"$TMP/pgcordon-masked.yaml" <<EOF
masking:
  hash_key_file: $TMP/mask.key
policies:
  - name: masked
    match: {users: [bench]}
    mask:
      - columns: ["public.bench_people.ssn", "*.card"]
        method: partial
        keep_last: 4
      - columns: ["*.email"]
        method: email
EOF
  if [[ $DETECT == 1 ]]; then
    # content detection over every text value returned (names too), on top of the masks
    cat >>"$TMP/pgcordon-masked.yaml" <<EOF
      - detect: [credit_card, us_ssn, email, iban, aws_access_key, jwt, private_key]
        method: redact
EOF
  fi
  start_cordon pgcordon-masked "$TMP/pgcordon-masked.yaml"
fi

# ---------------------------------------------------------------- psycopg client
cat >"$TMP/fetch.py" <<'EOF'
"""fetch.py HOST PORT SQL [ROWS_EXPECTED]: one psycopg 3 connection, cur.execute(SQL), fetchall().

Prints "WALL_SECONDS ROWS" (wall time from connect to the last row fetched and the
connection closed; interpreter start-up and imports are not included), or with
--show the rows, one per line, values joined by '|'.
"""
import os
import sys
import time

import psycopg

args = sys.argv[1:]
show = args and args[0] == "--show"
if show:
    args = args[1:]
host, port, sql = args[0], int(args[1]), args[2]
t0 = time.perf_counter()
conn = psycopg.connect(host=host, port=port, user="bench", dbname="bench", password=os.environ["PGPASSWORD"],
                       connect_timeout=10, autocommit=True)
try:
    cur = conn.cursor()
    cur.execute(sql)
    rows = cur.fetchall()
    cur.close()
finally:
    conn.close()
t1 = time.perf_counter()
if show:
    for r in rows:
        print("|".join("" if v is None else str(v) for v in r))
else:
    print(f"{t1 - t0:.6f} {len(rows)}")
EOF

tpy() {  # tpy TARGET ARGS... : fetch.py through TARGET
  local t=$1; shift
  PGPASSWORD=$(target_password "$t") "$PY" "$TMP/fetch.py" "$@"
}

# ---------------------------------------------------------------- checks
# pgcordon-masked must really mask: each of ssn, card, email of row 1 differs from what
# PostgreSQL returns directly, with psql (simple query protocol) and with psycopg
# (extended protocol). The no-rule instance must return the values unchanged.
echo
echo "=== checks: $CHECK_SQL ==="
ref=$(tpsql direct -At -F '|' -c "$CHECK_SQL" 2>&1) || die "direct: $CHECK_SQL failed: $ref"
[[ -n $ref ]] || die "direct: $CHECK_SQL returned no row"
printf '%-16s %-8s %s\n' direct psql "$ref"
IFS='|' read -r -a ref_v <<<"$ref"
(( ${#ref_v[@]} == 3 )) || die "direct: unexpected row: $ref"
for t in pgbouncer pgcordon pgcordon-masked; do
  has_target "$t" || continue
  for c in psql psycopg; do
    if [[ $c == psql ]]; then
      out=$(tpsql "$t" -At -F '|' -c "$CHECK_SQL" 2>&1) || { echo "$out" >&2; die "$t: $CHECK_SQL failed with psql"; }
    else
      out=$(tpy "$t" --show 127.0.0.1 "$(target_port "$t")" "$CHECK_SQL" 2>&1) \
        || { echo "$out" >&2; die "$t: $CHECK_SQL failed with psycopg"; }
    fi
    printf '%-16s %-8s %s\n' "$t" "$c" "$out"
    IFS="|" read -r -a vals <<<"$out"
    (( ${#vals[@]} == 3 )) || die "$t ($c): unexpected row: $out"
    if [[ $t == pgcordon-masked ]]; then
      for i in 0 1 2; do
        col=$(cut -d' ' -f$((i + 1)) <<<"ssn card email")
        [[ ${vals[$i]} != "${ref_v[$i]}" ]] || die "pgcordon-masked ($c) did NOT mask $col: '${vals[$i]}' is the direct value"
      done
    else
      [[ $out == "$ref" ]] || die "$t ($c) returned '$out', direct returned '$ref' (no masking expected)"
    fi
  done
done
has_target pgcordon-masked && log "masking check passed: pgcordon-masked returns ssn, card and email different from direct"

# ---------------------------------------------------------------- where masking costs
# Informational, does not fail the bench. (1) The statement as pgcordon-masked sends it
# upstream: taken from PostgreSQL's log (log_statement = all, on only for this step) for
# "$SQL LIMIT 0" sent through the gateway, then both it and the original are run under
# EXPLAIN ANALYZE directly on PostgreSQL, which executes the statement, masking
# expressions included, without sending the rows anywhere. (EXPLAIN through the gateway
# is refused for masked columns.) (2) The per-connection set-up: psql's \timing of the
# first statement of a session, which through pgcordon-masked waits for the session's
# masking catalog query.
pg_admin() { "${AS_PG[@]}" psql -X -q -At -v ON_ERROR_STOP=1 -h "$TMP" -p "$PG_PORT" -U postgres -d postgres "$@"; }
exec_ms() {  # exec_ms SQL : EXPLAIN ANALYZE execution time in ms, direct as bench (the lower of 2 runs)
  local i
  for i in 1 2; do
    tpsql direct -At -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) $1" 2>/dev/null |
      sed -n 's/^Execution Time: \([0-9.]*\) ms$/\1/p' || true
  done | sort -g | head -n1
}
first_stmt_ms() {  # first_stmt_ms TARGET : median of 5 (\timing of "select 1" as a session's first statement)
  local t=$1 i
  for ((i = 0; i < 5; i++)); do
    tpsql "$t" -At -c '\timing on' -c 'select 1' 2>/dev/null | sed -n 's/^Time: \([0-9.]*\) ms$/\1/p'
  done | sort -g | awk '{v[NR] = $1} END {if (NR) printf "%.1f", v[int((NR + 1) / 2)]}'
}
if has_target pgcordon-masked; then
  echo
  echo "=== where masking costs (informational) ==="
  REWRITTEN=""
  if pg_admin -c "ALTER SYSTEM SET log_statement = 'all'" && pg_admin -c "SELECT pg_reload_conf()" >/dev/null; then
    sleep 0.5
    marker="/* mask-bench-$$-$RANDOM */"
    tpsql pgcordon-masked -At -c "$SQL LIMIT 0 $marker" >/dev/null 2>&1 || true
    sleep 0.3
    line=$(grep -F "$marker" "$TMP/postgres.log" | grep -F 'statement: ' | tail -n1 || true)
    REWRITTEN=${line#*statement: }
    REWRITTEN=${REWRITTEN% "$marker"}
    REWRITTEN=${REWRITTEN% LIMIT 0}
    [[ -n $line && $REWRITTEN != *LIMIT\ 0* ]] || REWRITTEN=""
    pg_admin -c "ALTER SYSTEM RESET log_statement" && pg_admin -c "SELECT pg_reload_conf()" >/dev/null || true
  fi
  if [[ -n $REWRITTEN && $REWRITTEN != "$SQL" ]]; then
    log "statement as pgcordon-masked sends it upstream (${#REWRITTEN} chars):"
    fold -w 150 <<<"$REWRITTEN" | sed 's/^#*/#   /'
    e0=$(exec_ms "$SQL") e1=$(exec_ms "$REWRITTEN")
    if [[ -n $e0 && -n $e1 ]]; then
      log "server execution, EXPLAIN ANALYZE directly on PostgreSQL (no rows sent, lower of 2 runs): original $e0 ms," \
          "rewritten $e1 ms, +$(awk -v a="$e0" -v b="$e1" -v n="$ROWS" 'BEGIN {printf "%.0f ms = %.2f us per row", b - a, (b - a) * 1000 / n}')"
    else
      log "EXPLAIN ANALYZE of the statements failed; no server-side figures"
    fi
  else
    log "could not capture the rewritten statement from the PostgreSQL log; skipped"
  fi
  for t in direct pgbouncer pgcordon pgcordon-masked; do
    has_target "$t" || continue
    log "first statement of a session (select 1, psql \\timing, median of 5): $t $(first_stmt_ms "$t") ms"
  done
fi

# ---------------------------------------------------------------- warm-up
read -r -a TARGET_LIST <<<"$TARGETS"
read -r -a CLIENT_LIST <<<"$CLIENTS"
NT=${#TARGET_LIST[@]}

# One untimed psql fetch per target, counted with wc: every target must print $ROWS lines;
# direct's byte count is the size of the result used for MB/s (as psql -At prints it).
declare -A OUT_BYTES=()
echo
echo "=== warm-up and size: psql -X -q -At -c \"$SQL\" | wc -lc (untimed) ==="
for t in "${TARGET_LIST[@]}"; do
  [[ $t == direct || $WARMUP == 1 ]] || continue
  read -r lines bytes < <(tpsql "$t" -At -c "$SQL" 2>"$TMP/warmup-$t.err" | wc -lc) || true
  [[ -s $TMP/warmup-$t.err ]] && { cat "$TMP/warmup-$t.err" >&2; die "$t: the warm-up fetch failed"; }
  [[ ${lines:-0} == "$ROWS" ]] || die "$t: the warm-up fetch printed ${lines:-0} lines, expected $ROWS"
  OUT_BYTES[$t]=$bytes
  printf '%-16s %10s lines %12s bytes\n' "$t" "$lines" "$bytes"
done
BYTES=${OUT_BYTES[direct]}
log "result size for MB/s: $BYTES bytes ($(awk -v b="$BYTES" 'BEGIN {printf "%.2f", b / 1e6}') MB, 1 MB = 10^6 bytes)," \
    "direct psql output; every target's MB/s is this size / its wall time"
if [[ -n ${OUT_BYTES[pgcordon-masked]:-} ]]; then
  log "pgcordon-masked prints ${OUT_BYTES[pgcordon-masked]} bytes (masked emails are shorter); its MB/s still uses $BYTES"
fi
if has_client psycopg; then
  tpy direct 127.0.0.1 "$PG_PORT" "SELECT 1" >/dev/null || die "psycopg cannot fetch from direct"
fi

# ---------------------------------------------------------------- timed runs
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
PM_PID=$(head -n1 "$TMP/data/postmaster.pid")
cpu_ticks() {  # "TOTAL OURS PG" clock ticks (bench/cpu_ticks.py)
  "$PY" "$BENCH_DIR/cpu_ticks.py" "$PM_PID" "$$" "$CORDON_PID" "$MASKED_PID" "$BOUNCER_PID"
}
self_child_ticks() { awk '{sub(/^.*\) /, ""); print $14 + $15}' /proc/$$/stat; }  # cutime + cstime of this script
proc_ns() {  # CPU time of all threads of PID in ns
  [[ -n $1 && -d /proc/$1/task ]] || { echo 0; return 0; }
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'
}

RESULTS=$TMP/results.tsv
: >"$RESULTS"
FAILED_RUNS=0
echo
echo "=== timed fetches: $ROWS rows, $ROUNDS rounds (round-robin, target order rotated each round) ==="
echo "# psql: wall time of the psql process (start, connect, query, print to /dev/null, exit)"
echo "# psycopg: wall time inside python from connect to fetchall() done and connection closed"
echo "# cpu columns (s): client = the psql/python process; gateway = all gateway threads; postgres = postmaster"
echo "# and backends; other = CPU used by anything else on the box, % of all $NCPU CPUs"
printf '%-5s %-8s %-16s %9s %9s %10s %10s %10s %8s\n' round client target wall_s "MB/s" client_cpu gw_cpu pg_cpu other
for ((r = 1; r <= ROUNDS; r++)); do
  for c in "${CLIENT_LIST[@]}"; do
    for ((k = 0; k < NT; k++)); do
      t=${TARGET_LIST[$(( (k + r - 1) % NT ))]}
      out=$TMP/run-$r-$c-$t.out
      rc=0
      gpid=$(target_pid "$t")
      g0=$(proc_ns "$gpid")
      v0=$(date +%s.%N)
      read -r c0_total c0_ours c0_pg < <(cpu_ticks)
      s0=$(self_child_ticks)
      w0=$(date +%s.%N)
      if [[ $c == psql ]]; then
        run_child env PGPASSWORD="$(target_password "$t")" PGCONNECT_TIMEOUT=10 psql -X -q -At -h 127.0.0.1 \
          -p "$(target_port "$t")" -U bench -d bench -c "$SQL" >/dev/null 2>"$out" || rc=$?
      else
        run_child env PGPASSWORD="$(target_password "$t")" "$PY" "$TMP/fetch.py" 127.0.0.1 "$(target_port "$t")" \
          "$SQL" >"$out" 2>&1 || rc=$?
      fi
      w1=$(date +%s.%N)
      s1=$(self_child_ticks)
      read -r c1_total c1_ours c1_pg < <(cpu_ticks)
      v1=$(date +%s.%N)
      g1=$(proc_ns "$gpid")
      if [[ $c == psql ]]; then
        wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", b - a}')
        [[ -s $out ]] && (( rc == 0 )) && rc=1   # psql -q prints nothing on stderr unless something went wrong
      else
        read -r wall nrows < <(tail -n1 "$out") || true
        [[ ${nrows:-} == "$ROWS" ]] || { (( rc != 0 )) || rc=1; }
      fi
      if (( rc != 0 )); then
        FAILED_RUNS=$((FAILED_RUNS + 1))
        printf '%-5s %-8s %-16s %9s   (exit %s; output below)\n' "$r" "$c" "$t" FAILED "$rc"
        sed 's/^/    | /' "$out" | tail -n 20
        if [[ $t == pgcordon* ]] && ! pid_alive "$(target_pid "$t")"; then die "$t is no longer running"; fi
        continue
      fi
      mbs=$(awk -v b="$BYTES" -v s="$wall" 'BEGIN {printf "%.2f", b / 1e6 / s}')
      ccpu=$(awk -v a="$s0" -v b="$s1" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / hz}')
      gcpu=-
      [[ -n $gpid ]] && gcpu=$(awk -v a="$g0" -v b="$g1" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
      pcpu=$(awk -v a="$c0_pg" -v b="$c1_pg" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / hz}')
      other=$(awk -v a="$c0_total" -v c="$c0_ours" -v b="$c1_total" -v d="$c1_ours" -v w0="$v0" -v w1="$v1" \
        -v hz="$CLK_TCK" -v n="$NCPU" 'BEGIN {o = ((b - a) - (d - c)) / hz / ((w1 - w0) * n) * 100;
          if (o < 0) o = 0; printf "%.1f%%", o}')
      printf '%-5s %-8s %-16s %9.3f %9s %10s %10s %10s %8s\n' "$r" "$c" "$t" "$wall" "$mbs" "$ccpu" "$gcpu" "$pcpu" "$other"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$c" "$r" "$wall" "$ccpu" "$gcpu" "$pcpu" >>"$RESULTS"
      sleep 0.5
    done
  done
done

median() {  # median TARGET CLIENT [COLUMN] : 4 = wall, 5 = client cpu, 6 = gateway cpu, 7 = postgres cpu
  awk -F'\t' -v t="$1" -v c="$2" -v k="${3:-4}" '$1 == t && $2 == c && $k != "-" {print $k}' "$RESULTS" | sort -g |
    awk '{v[NR] = $1} END {if (NR == 0) print ""; else if (NR % 2) printf "%.3f\n", v[(NR+1)/2];
         else printf "%.3f\n", (v[NR/2] + v[NR/2+1]) / 2}'
}
ratio() { [[ -n "$1" && -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}' || echo "-"; }
round_wall() { awk -F'\t' -v t="$1" -v c="$2" -v r="$3" '$1 == t && $2 == c && $3 == r {print $4}' "$RESULTS"; }

echo
echo "=== median over $ROUNDS rounds: wall seconds / MB/s ($(awk -v b="$BYTES" 'BEGIN {printf "%.2f", b / 1e6}') MB result) ==="
printf '%-8s' client
for t in "${TARGET_LIST[@]}"; do printf ' %22s' "$t"; done
echo
declare -A MED=()
for c in "${CLIENT_LIST[@]}"; do
  printf '%-8s' "$c"
  for t in "${TARGET_LIST[@]}"; do
    MED[$t,$c]=$(median "$t" "$c")
    if [[ -n ${MED[$t,$c]} ]]; then
      printf ' %22s' "$(awk -v s="${MED[$t,$c]}" -v b="$BYTES" 'BEGIN {printf "%.3f s / %.1f MB/s", s, b / 1e6 / s}')"
    else
      printf ' %22s' -
    fi
  done
  echo
done

echo
echo "=== median CPU seconds per fetch: client / gateway / postgres ==="
printf '%-8s' client
for t in "${TARGET_LIST[@]}"; do printf ' %22s' "$t"; done
echo
for c in "${CLIENT_LIST[@]}"; do
  printf '%-8s' "$c"
  for t in "${TARGET_LIST[@]}"; do
    cc=$(median "$t" "$c" 5) gc=$(median "$t" "$c" 6) pc=$(median "$t" "$c" 7)
    printf ' %22s' "$(printf '%.2f/%s/%.2f' "${cc:-0}" "$( [[ -n $gc ]] && printf '%.2f' "$gc" || echo -)" "${pc:-0}")"
  done
  echo
done

# ratio rows NUMERATOR/DENOMINATOR[/MAX]: with a MAX, the issue's acceptance threshold
RATIOS=()
has_target pgcordon-masked && RATIOS+=("pgcordon-masked/direct/$MASKED_MAX")
has_target pgcordon && has_target pgbouncer && RATIOS+=("pgcordon/pgbouncer/$OPEN_MAX")
has_target pgcordon-masked && has_target pgcordon && RATIOS+=("pgcordon-masked/pgcordon")
has_target pgcordon && RATIOS+=("pgcordon/direct")
has_target pgbouncer && RATIOS+=("pgbouncer/direct")
ACCEPT_FAIL=0
ACCEPT_CHECKED=0
if (( ${#RATIOS[@]} )); then
  echo
  echo "=== ratios of wall time (lower is better): ratio of the medians, and within each round ==="
  printf '%-26s %-8s %8s  %-7s %-8s %s\n' ratio client medians target verdict "per round"
  for rr in "${RATIOS[@]}"; do
    IFS=/ read -r num den max <<<"$rr"
    for c in "${CLIENT_LIST[@]}"; do
      v=$(ratio "${MED[$num,$c]:-}" "${MED[$den,$c]:-}")
      verdict=-
      if [[ -n $max ]]; then
        ACCEPT_CHECKED=1
        if [[ $v != - ]] && awk -v x="$v" -v m="$max" 'BEGIN {exit !(x <= m)}'; then
          verdict=MET
        else
          verdict="NOT MET"; ACCEPT_FAIL=1
        fi
      fi
      per=""
      for ((r = 1; r <= ROUNDS; r++)); do per+=" $(ratio "$(round_wall "$num" "$c" "$r")" "$(round_wall "$den" "$c" "$r")")"; done
      printf '%-26s %-8s %8s  %-7s %-8s%s\n' "$num/$den" "$c" "$v" "${max:+<=$max}" "$verdict" "$per"
    done
  done
  if (( ACCEPT_CHECKED )); then
    echo "# acceptance (pgcordon-masked/direct <= $MASKED_MAX and pgcordon/pgbouncer <= $OPEN_MAX, clients: ${CLIENT_LIST[*]}):" \
      "$( (( ACCEPT_FAIL )) && echo "NOT MET in this run" || echo "MET in this run")"
  fi
fi

for t in pgcordon pgcordon-masked pgbouncer; do
  has_target "$t" || continue
  pid_alive "$(target_pid "$t")" || { echo "# $t is no longer running"; FAILED_RUNS=$((FAILED_RUNS + 1)); }
done
log "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in pgcordon pgcordon-masked; do
  has_target "$t" || continue
  n=$(grep -c . "$TMP/$t.log" 2>/dev/null || true)
  (( ${n:-0} > 0 )) && { log "$t logged $n line(s) at level warn or above; last 5:"; tail -n 5 "$TMP/$t.log" | sed 's/^/#   /'; }
done
if (( FAILED_RUNS > 0 )); then
  echo "bench: $FAILED_RUNS run(s) FAILED (see output above)" >&2
  exit 1
fi
