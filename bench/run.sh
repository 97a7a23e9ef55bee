#!/usr/bin/env bash
# pgcordon throughput / memory benchmark.
#
# Starts a throwaway PostgreSQL, PgBouncer (session mode) and four pgcordon
# instances of the same binary -- one without policies, one enforcing a policy
# of 20+ rules that applies to the bench user, and two that write an audit
# trail to SQLite (durability default and strict) -- runs read-only pgbench (-S)
# against all of them in alternation, reports the audit trail's size, measures
# the policy layer's per-statement cost (bench/inspect_cost.c), then the
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
TARGETS=${TARGETS:-"direct pgbouncer pgcordon pgcordon-policies pgcordon-audit pgcordon-audit-strict"}
MODES=${MODES:-"simple prepared"}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}
PY=${PY:-/usr/bin/python3}        # Debian's python3-psycopg lives here
KEEP_TMP=${KEEP_TMP:-0}           # 1 = keep the temp dir (logs, configs) after exit
INSPECT_COST=${INSPECT_COST:-1}   # 1 = build and run bench/inspect_cost.c (needs cc, libpg_query)
INSPECT_MS=${INSPECT_MS:-100}     # inspect_cost: ms per timed repetition
MIN_RULES=20                      # the policy instance must enforce at least this many rules
AUDIT_VERIFY=${AUDIT_VERIFY:-1}   # 1 = check each audit trail's chain (pgcordon audit verify) after the runs
HUGE_PAGES=${HUGE_PAGES:-1}       # 1 = PostgreSQL's shared memory on huge pages, reserved for the run (root only)
UPSTREAM=${UPSTREAM:-tcp}         # how both gateways reach PostgreSQL: tcp (127.0.0.1) or unix (its socket)
CC=${CC:-cc}

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
has_cordon() { [[ " $TARGETS " == *" pgcordon"* ]]; }   # any pgcordon instance
has_audit() { [[ " $TARGETS " == *" pgcordon-audit"* ]]; } # any audit instance

# ---------------------------------------------------------------- preflight
if has_cordon; then
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
has_audit && { "$PY" -c 'import zstandard' 2>/dev/null || die "$PY cannot import zstandard, needed to read the audit stores (apt-get install python3-zstandard)"; }
"$PY" -c 'import psycopg' 2>/dev/null || (( IDLE_CONNS == 0 )) \
  || die "$PY cannot import psycopg (apt-get install python3-psycopg)"
for t in $TARGETS; do
  case $t in direct|pgbouncer|pgcordon|pgcordon-policies|pgcordon-audit|pgcordon-audit-strict) ;;
    *) die "unknown target '$t' in TARGETS";; esac
done
for m in $MODES; do
  case $m in simple|extended|prepared) ;; *) die "unknown mode '$m' in MODES";; esac
done
case $UPSTREAM in tcp|unix) ;; *) die "UPSTREAM must be tcp or unix, not '$UPSTREAM'";; esac

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
POLICY_PID=""
AUDIT_PID=""    # pgcordon-audit
STRICT_PID=""   # pgcordon-audit-strict
HP_BEFORE=""    # vm.nr_hugepages before the bench reserved some (restored on exit)
HP_LEDGER=/run/pgcordon-bench-hugepages  # "PID PAGES" while a run holds pages: a killed run's are given back

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

stop_pid() {  # stop_pid NAME PID SIGNAL [WHAT] : signal, wait up to 15 s, then SIGKILL
  local name=$1 pid=$2 sig=$3 what=${4:-cleanup} i rc
  pid_alive "$pid" || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  if pid_alive "$pid"; then
    echo "# $what: $name (pid $pid) still running 15 s after SIG$sig, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rc=0; wait "$pid" 2>/dev/null || rc=$?
  echo "# $what: $name exited with status $rc after SIG$sig" >&2
}

# The script's own stdout/stderr. A signal that arrives while run_child waits runs the
# trap inside "run_child ... >LOG 2>&1", i.e. with that redirection in force; cleanup
# restores these so its messages are not written into a log it is about to delete.
exec {OUT_FD}>&1 {ERR_FD}>&2

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  exec 1>&"$OUT_FD" 2>&"$ERR_FD"
  if (( rc != 0 )) && [[ -n "$TMP" && -d "$TMP" ]]; then
    for f in pgcordon.log pgcordon-policies.log pgcordon-audit.log pgcordon-audit-strict.log pgbouncer.log \
             postgres.log; do
      [[ -s "$TMP/$f" ]] || continue
      echo "---- last 30 lines of $f ----" >&2
      tail -n 30 "$TMP/$f" >&2
    done
  fi
  if pid_alive "$CHILD_PID"; then kill -TERM "$CHILD_PID" 2>/dev/null; wait "$CHILD_PID" 2>/dev/null; fi
  stop_pid pgcordon "$CORDON_PID" TERM
  stop_pid pgcordon-policies "$POLICY_PID" TERM
  stop_pid pgcordon-audit "$AUDIT_PID" TERM
  stop_pid pgcordon-audit-strict "$STRICT_PID" TERM
  stop_pid pgbouncer "$BOUNCER_PID" INT
  if (( PG_STARTED )); then
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$TMP/data" -m immediate -w -t 30 stop >/dev/null 2>&1
    if [[ -f "$TMP/data/postmaster.pid" ]]; then
      local pmpid; pmpid=$(head -n1 "$TMP/data/postmaster.pid")
      pid_alive "$pmpid" && kill -KILL "$pmpid" 2>/dev/null
    fi
  fi
  if [[ -n "$HP_BEFORE" ]]; then
    echo "$HP_BEFORE" >/proc/sys/vm/nr_hugepages 2>/dev/null
    rm -f "$HP_LEDGER"
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
  TARGETS="$TARGETS" MODES="$MODES" INSPECT_MS="$INSPECT_MS" HUGE_PAGES="$HUGE_PAGES" UPSTREAM="$UPSTREAM" \
  "$0" "$@"; echo
log "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
log "machine: $(uname -srm), nproc=$(nproc), cpu: $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)," \
    "mem: $(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
log "postgres: $("$PGBIN/postgres" --version)"
log "pgbench: $(pgbench --version)"
has_target pgbouncer && log "pgbouncer: $("$PGBOUNCER" --version 2>&1 | head -n1)"
if has_cordon; then
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
# The gateways' way to PostgreSQL: TCP on 127.0.0.1, or the socket in $TMP (local trust, so
# their upstream logins skip SCRAM; a pgbench run logs in once per client either way).
UPSTREAM_HOST=127.0.0.1
[[ $UPSTREAM == unix ]] && UPSTREAM_HOST=$TMP
log "gateways reach PostgreSQL over $UPSTREAM (host $UPSTREAM_HOST)"

# All pgcordon instances run a private copy of the binary, so a rebuild during the
# run (make in another shell) can neither swap nor break it between instances.
if has_cordon; then
  for ((i = 0; i < 60; i++)); do
    if cp "$PGCORDON" "$TMP/pgcordon.bin" 2>/dev/null && "$TMP/pgcordon.bin" passwd --password x >/dev/null 2>&1; then
      break
    fi
    (( i == 59 )) && die "cannot copy a working $PGCORDON (is a build running?)"
    sleep 1   # a link in progress: wait for make to finish
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
alloc_port POLICY_PORT
alloc_port AUDIT_PORT
alloc_port STRICT_PORT

PG_PASSWORD=$(rand_pw)      # password of role bench in PostgreSQL (and PgBouncer)
GW_PASSWORD=$(rand_pw)      # password of pgcordon's local user bench

log "temp dir: $TMP; ports: postgres=$PG_PORT pgbouncer=$BOUNCER_PORT pgcordon=$CORDON_PORT" \
    "pgcordon-policies=$POLICY_PORT pgcordon-audit=$AUDIT_PORT pgcordon-audit-strict=$STRICT_PORT"

# ---------------------------------------------------------------- inspect_cost
# Linked against the gateway's own library code: the Makefile's LIB_SRCS (everything
# but src/cli), compiled here with the Makefile's CFLAGS into an archive, so only what
# the policy layer needs is linked, and with the Makefile's LDLIBS. The variables are
# read from the Makefile, so new sources or libraries there are picked up.
INSPECT_BIN=$TMP/inspect_cost
if (( INSPECT_COST )) && has_target pgcordon-policies; then
  mkvar() { make --no-print-directory -s -C "$REPO" --eval='bench-print-%: ; @echo $($*)' "bench-print-$1"; }
  read -r -a lib_srcs <<<"$(mkvar LIB_SRCS)"
  read -r -a mk_cflags <<<"$(mkvar CFLAGS)"
  read -r -a mk_ldlibs <<<"$(mkvar LDLIBS)"
  (( ${#lib_srcs[@]} )) || die "could not read LIB_SRCS from $REPO/Makefile"
  log "building bench/inspect_cost.c against the Makefile's LIB_SRCS (${#lib_srcs[@]} files) with its CFLAGS ..."
  mkdir -p "$TMP/obj"
  (
    cd "$REPO"
    printf '%s\n' "${lib_srcs[@]}" | xargs -P "$(nproc)" -I{} sh -c \
      'tmp=$1 src=$2 cc=$3; shift 4; exec "$cc" "$@" -c -o "$tmp/obj/$(echo "$src" | tr / _).o" "$src"' \
      _ "$TMP" {} "$CC" -- "${mk_cflags[@]}"
  ) >"$TMP/inspect_cost.build.log" 2>&1 \
    || { cat "$TMP/inspect_cost.build.log" >&2; die "compiling the gateway sources for inspect_cost failed"; }
  ar rcs "$TMP/libpgcordon.a" "$TMP"/obj/*.o
  (cd "$REPO" && "$CC" "${mk_cflags[@]}" -o "$INSPECT_BIN" "$BENCH_DIR/inspect_cost.c" "$TMP/libpgcordon.a" \
      "${mk_ldlibs[@]}") >>"$TMP/inspect_cost.build.log" 2>&1 \
    || { cat "$TMP/inspect_cost.build.log" >&2; die "building bench/inspect_cost.c failed"; }
fi
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
# Huge pages for shared memory. Without them every new backend faults in each page of
# shared_buffers it touches, one 4 KiB page at a time. On a VM whose page faults are dear
# (the project machine's), that made each pgbench run start at a fifth of its final TPS
# and climb for ten seconds or more, and it was the largest source of run-to-run noise.
# PgBouncer, whose server connections outlive its clients, got warm backends; the
# gateways, which open a backend per client, got cold ones.
HP_STATE="off (HUGE_PAGES=0)"
if [[ "$HUGE_PAGES" == 1 ]]; then
  hp_need=$("${AS_PG[@]}" "$PGBIN/postgres" -D "$TMP/data" -C shared_memory_size_in_huge_pages 2>/dev/null || true)
  if [[ $(id -u) -ne 0 ]]; then
    HP_STATE="off (not root: cannot reserve them)"
  elif ! [[ $hp_need =~ ^[0-9]+$ ]] || (( hp_need <= 0 )); then
    HP_STATE="off (postgres did not say how many it needs: '$hp_need')"
  else
    # A run killed with SIGKILL could not give its pages back (no trap runs): do it for it.
    if read -r hp_pid hp_pages 2>/dev/null <"$HP_LEDGER" && [[ $hp_pid =~ ^[0-9]+$ && $hp_pages =~ ^[0-9]+$ ]] \
       && ! pid_alive "$hp_pid"; then
      hp_now=$(cat /proc/sys/vm/nr_hugepages)
      (( hp_now >= hp_pages )) && echo $(( hp_now - hp_pages )) >/proc/sys/vm/nr_hugepages 2>/dev/null
      log "gave back the $hp_pages huge pages that a killed run (pid $hp_pid) left reserved"
      rm -f "$HP_LEDGER"
    fi
    HP_BEFORE=$(cat /proc/sys/vm/nr_hugepages)
    echo "$$ $hp_need" >"$HP_LEDGER"
    echo $(( HP_BEFORE + hp_need )) >/proc/sys/vm/nr_hugepages 2>/dev/null || true
    hp_free=$(awk '/^HugePages_Free/{print $2}' /proc/meminfo)
    if (( hp_free >= hp_need )); then
      echo "huge_pages = on" >>"$TMP/data/postgresql.conf"
      HP_STATE="on ($hp_need pages of $(awk '/^Hugepagesize/{print $2, $3}' /proc/meminfo) reserved for the run)"
    else
      HP_STATE="off (reserved $hp_free of the $hp_need pages needed: memory too fragmented?)"
      echo "$HP_BEFORE" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
      rm -f "$HP_LEDGER"
      HP_BEFORE=""
    fi
  fi
fi
log "PostgreSQL huge pages: $HP_STATE"
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
bench = host=$UPSTREAM_HOST port=$PG_PORT dbname=bench

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
# Two instances of the same binary with the same workers and upstream, on two
# ports: "pgcordon" has no policies (a plain authenticating proxy, nothing is
# inspected), "pgcordon-policies" enforces the policy below on the bench user.

# cordon_config FILE PORT : the common part of both configs
cordon_config() {
  cat >"$1" <<EOF
listen: {address: 127.0.0.1, port: $2, workers: $WORKERS}
log: {level: warn}
databases:
  bench:
    host: $UPSTREAM_HOST
    port: $PG_PORT
    dbname: bench
    user: bench
    password_env: PGCORDON_BENCH_DB_PASSWORD
    sslmode: disable
users:
  bench: {password: "$gw_verifier", groups: [bench-agents]}
EOF
}

# The policy: every rule kind, 20+ rules, all matching the bench user. pgbench -S
# needs only SELECT on pgbench_accounts with WHERE aid = ... (and, at start-up,
# "select count(*) from pgbench_branches", so select_without_where must not list
# pgbench_branches). inspect_cost counts the rules of the merged policy.
policy_section() {
  cat <<'EOF'
default: deny
policies:
  - name: bench-agents
    match: {groups: [bench-agents], databases: [bench]}
    access:
      tables: [public.pgbench_accounts, public.pgbench_branches, public.pgbench_tellers,
               public.pgbench_history, public.orders, "reporting.*"]
    block:
      - statements: [drop_table, drop_database, truncate, alter_system, copy_to_program,
                     copy_from_program, create_function, do_block, set_role,
                     set_session_authorization, alter_table, create_role]
      - functions: [pg_read_file, pg_read_binary_file, pg_ls_dir, lo_export, lo_import,
                    dblink, pg_sleep, pg_terminate_backend]
      - delete_without_where: true
      - update_without_where: true
      - select_without_where: [public.pgbench_history, public.customers]
    limits:
      max_rows: 100000
      statement_timeout: 30s
EOF
}

# start_cordon NAME CONFIG PORT : check-config, serve, wait until ready
start_cordon() {
  local name=$1 cfg=$2 port=$3 pid
  PGCORDON_BENCH_DB_PASSWORD=$PG_PASSWORD "$PGCORDON" check-config --config "$cfg" >"$TMP/check-config-$name.log" 2>&1 \
    || { cat "$TMP/check-config-$name.log" >&2; die "pgcordon check-config rejected $cfg"; }
  log "starting $name (workers=$WORKERS, port $port) ..."
  PGCORDON_BENCH_DB_PASSWORD=$PG_PASSWORD \
    "$PGCORDON" serve --config "$cfg" >"$TMP/$name.stdout" 2>"$TMP/$name.log" &
  pid=$!
  case $name in
    pgcordon) CORDON_PID=$pid;; pgcordon-policies) POLICY_PID=$pid;;
    pgcordon-audit) AUDIT_PID=$pid;; pgcordon-audit-strict) STRICT_PID=$pid;;
  esac
  wait_ready "$name" "$pid" "$port" "$GW_PASSWORD"
}

if has_cordon; then
  gw_verifier=$("$PGCORDON" passwd --password "$GW_PASSWORD") || die "pgcordon passwd failed"
  [[ $gw_verifier == SCRAM-SHA-256\$* ]] || die "pgcordon passwd printed unexpected output: $gw_verifier"
fi
if has_target pgcordon; then
  cordon_config "$TMP/pgcordon.yaml" "$CORDON_PORT"
  start_cordon pgcordon "$TMP/pgcordon.yaml" "$CORDON_PORT"
fi

RULES=""
if has_target pgcordon-policies; then
  cordon_config "$TMP/pgcordon-policies.yaml" "$POLICY_PORT"
  policy_section >>"$TMP/pgcordon-policies.yaml"
  if (( INSPECT_COST )); then
    # the rule count of the merged policy the gateway computes for bench on bench,
    # plus an offline check of the decisions the benchmark relies on
    PGCORDON_BENCH_DB_PASSWORD=$PG_PASSWORD "$INSPECT_BIN" --rules-only "$TMP/pgcordon-policies.yaml" bench bench \
      >"$TMP/rules.out" 2>&1 || { cat "$TMP/rules.out" >&2; die "inspect_cost --rules-only failed"; }
    RULES=$(sed -n 's/^RULES=//p' "$TMP/rules.out")
    grep -v '^RULES=' "$TMP/rules.out" | sed 's/^/# policy: /'
    if [[ -z $RULES ]] || (( RULES < MIN_RULES )); then
      die "the bench policy has ${RULES:-?} rules, fewer than $MIN_RULES"
    fi
  fi
  start_cordon pgcordon-policies "$TMP/pgcordon-policies.yaml" "$POLICY_PORT"

  # Live checks: the instance really enforces, and really allows the bench statement.
  pol_psql() {  # pol_psql -c SQL [-c SQL ...] : through pgcordon-policies, stdout+stderr
    PGPASSWORD=$GW_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -At -v VERBOSITY=verbose -h 127.0.0.1 \
      -p "$POLICY_PORT" -U bench -d bench "$@" 2>&1
  }
  expect_refused() {  # expect_refused LABEL SQL : SQL runs inside BEGIN ... ROLLBACK
    local out
    out=$(pol_psql -c 'BEGIN' -c "$2" -c 'ROLLBACK')
    if [[ $out != *42501*"pgcordon: blocked by policy bench-agents"* ]]; then
      echo "$out" | sed 's/^/    | /' >&2
      die "pgcordon-policies did not refuse $1: $2"
    fi
    log "policy check: refused ($1): $2 -> $(grep -o 'pgcordon: blocked.*' <<<"$out" | head -n1)"
  }
  expect_refused "block.statements" "DROP TABLE pgbench_history"
  expect_refused "block.functions" "SELECT pg_sleep(0)"
  expect_refused "delete_without_where" "DELETE FROM pgbench_history"
  expect_refused "access.tables" "SELECT count(*) FROM public.secrets WHERE id = 1"
  exists=$("${AS_PG[@]}" psql -X -Atq -h "$TMP" -p "$PG_PORT" -U postgres -d bench \
    -c "select to_regclass('public.pgbench_history') is not null")
  [[ $exists == t ]] || die "pgbench_history is gone: the policy instance did not stop DROP TABLE"
  out=$(pol_psql -c 'SELECT abalance FROM pgbench_accounts WHERE aid = 1')
  [[ $out =~ ^-?[0-9]+$ ]] || { echo "$out" >&2; die "pgcordon-policies refused the pgbench -S statement"; }
  log "policy check: allowed: SELECT abalance FROM pgbench_accounts WHERE aid = 1 -> $out"
  out=$(pol_psql -c 'SHOW statement_timeout')
  [[ $out == 30s ]] || die "pgcordon-policies: upstream statement_timeout is '$out', expected 30s"
  log "policy check: upstream statement_timeout = $out (limits.statement_timeout)"
fi

# ---------------------------------------------------------------- pgcordon with audit
# "pgcordon-audit" and "pgcordon-audit-strict" have the plain "pgcordon" config plus an
# audit section, each with its own SQLite store in the temp dir; the chain key file
# (STORE.key) is created at first start.
audit_db() { case $1 in pgcordon-audit) echo "$TMP/audit.db";; pgcordon-audit-strict) echo "$TMP/audit-strict.db";; esac; }
audit_durability() { case $1 in pgcordon-audit) echo default;; pgcordon-audit-strict) echo strict;; esac; }
audit_stats() {  # audit_stats CMD DB [SQL] : read a store (bench/audit_stats.py; WAL mode, so readable while written)
  "$PY" "$BENCH_DIR/audit_stats.py" "$@"
}
audit_stmt_count() { audit_stats count "$1"; }
AUDIT_CHECK_SQL='SELECT abalance FROM pgbench_accounts WHERE aid = 1'
audit_check_count() {  # statement records of AUDIT_CHECK_SQL in store $1
  audit_stats check "$1" "$AUDIT_CHECK_SQL"
}

for t in pgcordon-audit pgcordon-audit-strict; do
  has_target "$t" || continue
  if [[ $t == pgcordon-audit ]]; then port=$AUDIT_PORT; else port=$STRICT_PORT; fi
  db=$(audit_db "$t")
  cordon_config "$TMP/$t.yaml" "$port"
  cat >>"$TMP/$t.yaml" <<EOF
audit:
  store: "sqlite:$db"
  durability: $(audit_durability "$t")
EOF
  start_cordon "$t" "$TMP/$t.yaml" "$port"
  # Live check: the bench statement goes through and leaves a statement record. In strict
  # mode the record must be committed by the time the client has the statement's result.
  before=$(audit_check_count "$db")
  out=$(PGPASSWORD=$GW_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -At -h 127.0.0.1 -p "$port" -U bench -d bench \
    -c "$AUDIT_CHECK_SQL" 2>&1) || true
  [[ $out =~ ^-?[0-9]+$ ]] || { echo "$out" >&2; die "$t refused the pgbench -S statement"; }
  now=$(audit_check_count "$db")
  if [[ $t == pgcordon-audit-strict ]]; then
    (( now > before )) || die "$t: no statement record committed when the statement's result arrived (strict)"
  else
    for ((i = 0; i < 50 && now <= before; i++)); do sleep 0.1; now=$(audit_check_count "$db"); done
    (( now > before )) || die "$t: no statement record in $db 5 s after the statement"
  fi
  body=$(audit_stats last "$db" "$AUDIT_CHECK_SQL")
  log "audit check: $t (durability $(audit_durability "$t")) recorded a statement record: ${body:0:300}"
done

target_port() {
  case $1 in
    direct) echo "$PG_PORT";; pgbouncer) echo "$BOUNCER_PORT";;
    pgcordon) echo "$CORDON_PORT";; pgcordon-policies) echo "$POLICY_PORT";;
    pgcordon-audit) echo "$AUDIT_PORT";; pgcordon-audit-strict) echo "$STRICT_PORT";;
  esac
}
target_password() {
  case $1 in pgcordon*) echo "$GW_PASSWORD";; *) echo "$PG_PASSWORD";; esac
}
target_pid() {
  case $1 in
    pgcordon) echo "$CORDON_PID";; pgcordon-policies) echo "$POLICY_PID";; pgbouncer) echo "$BOUNCER_PID";;
    pgcordon-audit) echo "$AUDIT_PID";; pgcordon-audit-strict) echo "$STRICT_PID";;
  esac
}

# ---------------------------------------------------------------- throughput
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
PM_PID=$(head -n1 "$TMP/data/postmaster.pid")
# "TOTAL OURS PG" CPU ticks; other_cpu = CPU used by anything but this benchmark during a run
cpu_ticks() {
  "$PY" "$BENCH_DIR/cpu_ticks.py" "$PM_PID" "$$" "$CORDON_PID" "$POLICY_PID" "$AUDIT_PID" "$STRICT_PID" "$BOUNCER_PID"
}
proc_ns() {  # proc_ns PID : CPU time of all threads of PID in ns (scheduler run time, not tick samples)
  [[ -n $1 && -d /proc/$1/task ]] || return 0
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'
}
writer_ns() {  # writer_ns PID : CPU time of the audit writer thread (pgc-audit) of PID in ns, since it started
  local t
  for t in /proc/"$1"/task/*; do
    [[ $(cat "$t/comm" 2>/dev/null) == pgc-audit ]] && { cut -d' ' -f1 "$t/schedstat"; return; }
  done
  echo 0
}
other_cpu() {  # other_cpu TOTAL0 OURS0 WALL0 TOTAL1 OURS1 WALL1 : % of all CPUs used by others in between
  awk -v a="$1" -v c="$2" -v w0="$3" -v b="$4" -v d="$5" -v w1="$6" -v hz="$CLK_TCK" -v n="$NCPU" \
    'BEGIN {o = ((b - a) - (d - c)) / hz / ((w1 - w0) * n) * 100; if (o < 0) o = 0; printf "%.1f%%", o}'
}
read -r -a TARGET_LIST <<<"$TARGETS"
read -r -a MODE_LIST <<<"$MODES"
NT=${#TARGET_LIST[@]}
RESULTS=$TMP/results.tsv
: >"$RESULTS"
FAILED_RUNS=0
declare -A AUDIT_BASE=()   # statement records in each audit store before the pgbench runs
for t in pgcordon-audit pgcordon-audit-strict; do has_target "$t" && AUDIT_BASE[$t]=$(audit_stmt_count "$(audit_db "$t")"); done

echo
echo "=== throughput: pgbench -S, $CLIENTS clients, $THREADS threads, ${DURATION}s per run, $ROUNDS rounds (round-robin) ==="
printf '%-5s %-9s %-22s %12s %12s %10s %14s %14s\n' round mode target tps "lat_avg_ms" "other_cpu" "gw_cpu_us/tx" \
  "pg_cpu_us/tx"
for ((r = 1; r <= ROUNDS; r++)); do
  for mode in "${MODE_LIST[@]}"; do
    # rotate the target order every round so no target always runs first
    for ((k = 0; k < NT; k++)); do
      t=${TARGET_LIST[$(( (k + r - 1) % NT ))]}
      out=$TMP/run-$r-$mode-$t.log
      rc=0
      gpid=$(target_pid "$t")
      g0=$(proc_ns "$gpid")
      read -r c0_total c0_ours c0_pg < <(cpu_ticks)
      w0=$(date +%s.%N)
      run_child env PGPASSWORD="$(target_password "$t")" pgbench -S -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
        -M "$mode" -h 127.0.0.1 -p "$(target_port "$t")" -U bench bench >"$out" 2>&1 || rc=$?
      # How far the trail is behind when pgbench stops (asked at once: a backlog must not drain
      # first). A writer that put its work off past the run would make the audit look cheaper.
      lag=-
      if [[ -n $(audit_db "$t") ]]; then
        wend=$(date +%s.%N)
        newest=$(audit_stats newest "$(audit_db "$t")" 2>/dev/null) || newest=0
        [[ $newest != 0 ]] && lag=$(awk -v e="$wend" -v n="$newest" 'BEGIN {printf "%.0f", (e - n) * 1000}')
      fi
      read -r c1_total c1_ours c1_pg < <(cpu_ticks)
      other=$(other_cpu "$c0_total" "$c0_ours" "$w0" "$c1_total" "$c1_ours" "$(date +%s.%N)")
      g1=$(proc_ns "$gpid")
      ntx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
      gwus=- pgus=-
      if [[ -n $gpid && -n $ntx && $ntx -gt 0 ]]; then
        gwus=$(awk -v a="$g0" -v b="$g1" -v n="$ntx" 'BEGIN {printf "%.2f", (b - a) / 1000 / n}')
      fi
      if [[ -n $ntx && $ntx -gt 0 ]]; then
        pgus=$(awk -v a="$c0_pg" -v b="$c1_pg" -v hz="$CLK_TCK" -v n="$ntx" 'BEGIN {printf "%.2f", (b - a) / hz * 1e6 / n}')
      fi
      tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out")
      lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out")
      failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")
      if (( rc != 0 )) || [[ -z "$tps" ]] || [[ -n "$failed" && "$failed" != 0 ]]; then
        FAILED_RUNS=$((FAILED_RUNS + 1))
        printf '%-5s %-9s %-22s %12s   (pgbench exit %s; output below)\n' "$r" "$mode" "$t" FAILED "$rc"
        sed 's/^/    | /' "$out" | tail -n 20
        if [[ $t == pgcordon* ]] && ! pid_alive "$(target_pid "$t")"; then
          die "$t is no longer running"
        fi
        continue
      fi
      printf '%-5s %-9s %-22s %12.1f %12s %10s %14s %14s\n' "$r" "$mode" "$t" "$tps" "${lat:--}" "$other" "$gwus" "$pgus"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$mode" "$r" "$tps" "$gwus" "$pgus" "$ntx" "$lag" >>"$RESULTS"
      sleep 1
    done
  done
done

median() {  # median of column ${3:-4} (4 = tps, 5 = gateway CPU us/tx, 6 = postgres CPU us/tx, 8 = trail lag ms) for target $1 mode $2
  awk -F'\t' -v t="$1" -v m="$2" -v c="${3:-4}" '$1 == t && $2 == m && $c != "-" {print $c}' "$RESULTS" | sort -g |
    awk -v f="${4:-%.1f}" '{v[NR] = $1} END {if (NR == 0) print ""; else if (NR % 2) printf f "\n", v[(NR+1)/2];
         else printf f "\n", (v[NR/2] + v[NR/2+1]) / 2}'
}
ratio() { [[ -n "$1" && -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}' || echo "-"; }

round_tps() {  # round_tps TARGET MODE ROUND
  awk -F'\t' -v t="$1" -v m="$2" -v r="$3" '$1 == t && $2 == m && $3 == r {print $4}' "$RESULTS"
}

echo
echo "=== median TPS over $ROUNDS rounds ==="
printf '%-9s' mode
for t in "${TARGET_LIST[@]}"; do printf ' %22s' "$t"; done
echo
declare -A MED=()
for mode in "${MODE_LIST[@]}"; do
  printf '%-9s' "$mode"
  for t in "${TARGET_LIST[@]}"; do MED[$t,$mode]=$(median "$t" "$mode"); printf ' %22s' "${MED[$t,$mode]:--}"; done
  echo
done

GW_LIST=()
for t in "${TARGET_LIST[@]}"; do [[ $t == direct ]] || GW_LIST+=("$t"); done
if (( ${#GW_LIST[@]} )); then
  echo
  echo "=== gateway CPU per transaction, us (median; CPU time of all gateway threads during the run / transactions) ==="
  printf '%-9s' mode
  for t in "${GW_LIST[@]}"; do printf ' %22s' "$t"; done
  has_target pgcordon && has_target pgcordon-policies && printf ' %28s' "pgcordon-policies - pgcordon"
  echo
  for mode in "${MODE_LIST[@]}"; do
    printf '%-9s' "$mode"
    declare -A gw=()
    for t in "${GW_LIST[@]}"; do gw[$t]=$(median "$t" "$mode" 5 "%.2f"); printf ' %22s' "${gw[$t]:--}"; done
    if has_target pgcordon && has_target pgcordon-policies; then
      if [[ -n ${gw[pgcordon]} && -n ${gw[pgcordon-policies]} ]]; then
        printf ' %28s' "$(awk -v a="${gw[pgcordon-policies]}" -v b="${gw[pgcordon]}" \
          'BEGIN {printf "%+.2f (%+.1f%%)", a - b, (a - b) / b * 100}')"
      else
        printf ' %28s' -
      fi
    fi
    echo
    unset gw
  done
fi

echo
echo "=== PostgreSQL CPU per transaction, us (median; postmaster and its backends during the run / transactions) ==="
printf '%-9s' mode
for t in "${TARGET_LIST[@]}"; do printf ' %22s' "$t"; done
has_target pgcordon && has_target pgcordon-policies && printf ' %28s' "pgcordon-policies - pgcordon"
echo
for mode in "${MODE_LIST[@]}"; do
  printf '%-9s' "$mode"
  declare -A pgc=()
  for t in "${TARGET_LIST[@]}"; do pgc[$t]=$(median "$t" "$mode" 6 "%.2f"); printf ' %22s' "${pgc[$t]:--}"; done
  if has_target pgcordon && has_target pgcordon-policies; then
    if [[ -n ${pgc[pgcordon]} && -n ${pgc[pgcordon-policies]} ]]; then
      printf ' %28s' "$(awk -v a="${pgc[pgcordon-policies]}" -v b="${pgc[pgcordon]}" \
        'BEGIN {printf "%+.2f (%+.1f%%)", a - b, (a - b) / b * 100}')"
    else
      printf ' %28s' -
    fi
  fi
  echo
  unset pgc
done

# ratio rows: NUMERATOR/DENOMINATOR, with the acceptance threshold where the issue sets one
RATIOS=()
has_target pgcordon-policies && has_target pgcordon && RATIOS+=("pgcordon-policies/pgcordon")
has_target pgcordon-policies && has_target pgbouncer && RATIOS+=("pgcordon-policies/pgbouncer")
has_target pgcordon-audit && has_target pgcordon && RATIOS+=("pgcordon-audit/pgcordon")
has_target pgcordon-audit-strict && has_target pgcordon && RATIOS+=("pgcordon-audit-strict/pgcordon")
has_target pgcordon && has_target pgbouncer && RATIOS+=("pgcordon/pgbouncer")
has_target pgcordon && has_target direct && RATIOS+=("pgcordon/direct")
has_target pgcordon-policies && has_target direct && RATIOS+=("pgcordon-policies/direct")
ACCEPT_FAIL=0         # pgcordon-policies below 0.95x somewhere
AUDIT_ACCEPT_FAIL=0   # pgcordon-audit below 0.95x pgcordon somewhere
# The geometric mean of per-round ratios with its 95% interval (Student's t on their logs):
# how far the rounds, each a pair run back to back, pin the ratio down. Reported only.
geo_interval() {
  tr ' ' '\n' <<<"$1" | grep -E '^[0-9.]+$' | awk '
    BEGIN { split("12.706 4.303 3.182 2.776 2.571 2.447 2.365 2.306 2.262 2.228 2.201 2.179 2.160 " \
                  "2.145 2.131 2.120 2.110 2.101 2.093 2.086 2.080 2.074 2.069 2.064 2.060 2.056 " \
                  "2.052 2.048 2.045 2.042", t, " ") }
    $1 > 0 { l[++n] = log($1); s += log($1) }
    END {
      if (n < 2) { print "-"; exit }
      m = s / n; for (i = 1; i <= n; i++) v += (l[i] - m) ^ 2
      h = (n - 1 <= 30 ? t[n - 1] : 1.960) * sqrt(v / (n - 1) / n)
      printf "%.3f (95%%: %.3f-%.3f, %d rounds)", exp(m), exp(m - h), exp(m + h), n
    }'
}

PAIRED=()
if (( ${#RATIOS[@]} )); then
  echo
  echo "=== ratios: ratio of the medians, the median of the per-round ratios, and each round's ratio ==="
  printf '%-31s %-9s %8s %8s  %-8s %s\n' ratio mode medians rnd_med target "per round"
  for rr in "${RATIOS[@]}"; do
    num=${rr%/*} den=${rr#*/}
    for mode in "${MODE_LIST[@]}"; do
      v=$(ratio "${MED[$num,$mode]}" "${MED[$den,$mode]}")
      goal="" verdict=""
      if [[ $num == pgcordon-policies && ( $den == pgcordon || $den == pgbouncer ) ]]; then
        goal=">=0.95"
        if [[ $v == - ]] || awk -v x="$v" 'BEGIN {exit !(x < 0.95)}'; then verdict=" BELOW"; ACCEPT_FAIL=1; fi
      elif [[ $rr == pgcordon-audit/pgcordon ]]; then
        goal=">=0.95"
        if [[ $v == - ]] || awk -v x="$v" 'BEGIN {exit !(x < 0.95)}'; then verdict=" BELOW"; AUDIT_ACCEPT_FAIL=1; fi
      fi
      per=""
      for ((r = 1; r <= ROUNDS; r++)); do
        per+=" $(ratio "$(round_tps "$num" "$mode" "$r")" "$(round_tps "$den" "$mode" "$r")")"
      done
      # Targets of one round ran back to back: the round's own ratio drifts less with the
      # machine than the medians taken over all rounds.
      rmed=$(tr ' ' '\n' <<<"$per" | grep -E '^[0-9.]+$' | sort -g |
        awk '{a[NR] = $1} END {if (NR) printf "%.3f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; else print "-"}')
      printf '%-31s %-9s %8s %8s  %-8s%s%s\n' "$rr" "$mode" "$v" "$rmed" "${goal:--}" "$per" "$verdict"
      PAIRED+=("$(printf '%-31s %-9s %s' "$rr" "$mode" "$(geo_interval "$per")")")
    done
  done
  echo
  echo "=== per-round ratios: geometric mean and 95% interval (reported only; the verdicts below use the medians) ==="
  printf '%s\n' "${PAIRED[@]}"
  if has_target pgcordon-policies && { has_target pgcordon || has_target pgbouncer; }; then
    goal=""
    has_target pgcordon && goal="0.95x pgcordon"
    has_target pgbouncer && goal="${goal:+$goal and }0.95x pgbouncer"
    echo "# acceptance (pgcordon-policies >= $goal, modes: ${MODE_LIST[*]}):" \
      "$( (( ACCEPT_FAIL )) && echo "NOT MET in this run" || echo "met in this run")"
    echo "# policy instance: ${RULES:-?} rules active (see '# policy:' lines above)"
  fi
  if has_target pgcordon-audit && has_target pgcordon; then
    echo "# acceptance (pgcordon-audit, durability default, >= 0.95x pgcordon, modes: ${MODE_LIST[*]}):" \
      "$( (( AUDIT_ACCEPT_FAIL )) && echo "NOT MET in this run" || echo "met in this run")"
  fi
  has_target pgcordon-audit-strict && has_target pgcordon &&
    echo "# pgcordon-audit-strict/pgcordon: reported only, no threshold"
fi

# ---------------------------------------------------------------- audit trail
# Each audit instance is stopped first (SIGTERM: the writer commits what is queued and
# SQLite checkpoints the WAL into the main file on close), so the counts are final and
# the file size is the whole trail. The instances are not used after this point.
AUDIT_LIST=()
for t in pgcordon-audit pgcordon-audit-strict; do has_target "$t" && AUDIT_LIST+=("$t"); done
if (( ${#AUDIT_LIST[@]} )); then
  echo
  echo "=== audit trail: SQLite store of each audit instance, after the pgbench runs ==="
  declare -A WRITER_NS
  for t in "${AUDIT_LIST[@]}"; do
    pid=$(target_pid "$t")
    pid_alive "$pid" || { echo "# $t is no longer running"; FAILED_RUNS=$((FAILED_RUNS + 1)); }
    WRITER_NS[$t]=$(writer_ns "$pid")
    stop_pid "$t" "$pid" TERM stop 2>&1
    case $t in pgcordon-audit) AUDIT_PID="";; pgcordon-audit-strict) STRICT_PID="";; esac
  done
  printf '%-22s %-8s %12s %12s %12s %9s %10s %12s %10s %14s %10s\n' target durability stmt_records \
    during_runs pgbench_tx rec/tx other_rec db_bytes bytes/stmt "MB/1000_stmt" body_b/stmt
  for t in "${AUDIT_LIST[@]}"; do
    db=$(audit_db "$t")
    read -r stmts other body kinds < <(audit_stats summary "$db")
    # main file plus whatever WAL is left (none after a clean close)
    bytes=$(( $(stat -c %s "$db") + $( [[ -f $db-wal ]] && stat -c %s "$db-wal" || echo 0) ))
    ntx=$(awk -F'\t' -v t="$t" '$1 == t {n += $7} END {printf "%d", n}' "$RESULTS")
    during=$(( stmts - ${AUDIT_BASE[$t]:-0} ))
    awk -v t="$t" -v d="$(audit_durability "$t")" -v s="$stmts" -v dr="$during" -v n="$ntx" -v o="$other" \
        -v b="$bytes" -v bl="$body" 'BEGIN {
      rt = (n > 0) ? sprintf("%.4f", dr / n) : "-"
      bs = (s > 0) ? sprintf("%.1f", b / s) : "-"
      mb = (s > 0) ? sprintf("%.3f", b / s * 1000 / 1e6) : "-"
      printf "%-22s %-8s %12d %12d %12d %9s %10d %12d %10s %14s %10.1f\n", t, d, s, dr, n, rt, o, b, bs, mb, bl }'
    log "$t: records by kind: $kinds; db $db ($(du -k "$db" | cut -f1) KiB on disk)"
    # The writer's own CPU (a thread of the gateway, so also in gw_cpu_us/tx): steadier than
    # the throughput ratio, since it does not move with what the box does to pgbench and PostgreSQL.
    awk -v t="$t" -v w="${WRITER_NS[$t]:-0}" -v s="$stmts" -v o="$other" 'BEGIN {
      if (w > 0 && s + o > 0) printf "# %s: writer thread CPU %.2f us per record (%.2f s for %d records, set-up included)\n",
        t, w / 1000 / (s + o), w / 1e9, s + o }'
  done
  echo "# stmt_records: statement records in the store; during_runs: those written during the pgbench runs;"
  echo "# pgbench_tx: transactions pgbench reported for the target's successful runs (one statement each);"
  echo "# bytes/stmt and MB/1000_stmt: db_bytes (the whole file: zstd-compressed batches, the small session"
  echo "# tables and the few non-statement records) / stmt_records, MB = 10^6 bytes;"
  echo "# body_b/stmt: mean length of a statement record's JSON body, uncompressed"
  for t in "${AUDIT_LIST[@]}"; do
    for mode in "${MODE_LIST[@]}"; do
      med=$(median "$t" "$mode" 8 "%.0f")
      [[ -n $med ]] || continue
      read -r most runs < <(awk -F'\t' -v t="$t" -v m="$mode" '$1 == t && $2 == m && $8 != "-" {n++; if (n == 1 || $8 > x) x = $8}
        END {print x, n}' "$RESULTS")
      printf '%-22s %-9s trail behind at the end of a run: median %s ms, max %s ms (%s runs)\n' "$t" "$mode" "$med" \
        "$most" "$runs"
    done
  done
  echo "# behind: wall clock when pgbench stopped minus the newest committed record's time (the"
  echo "# writer commits every audit.flush_interval, 100 ms by default; seconds here would mean it"
  echo "# put work off past the run)"
  for t in "${AUDIT_LIST[@]}"; do
    line=""
    for mode in "${MODE_LIST[@]}"; do
      g=$(median "$t" "$mode" 5 "%.2f") g0=$(median pgcordon "$mode" 5 "%.2f")
      p=$(median "$t" "$mode" 6 "%.2f") p0=$(median pgcordon "$mode" 6 "%.2f")
      [[ -n $g && -n $g0 && -n $p && -n $p0 ]] || continue
      line+=$(awk -v m="$mode" -v g="$g" -v g0="$g0" -v p="$p" -v p0="$p0" \
        'BEGIN {printf " %s: gateway %+.2f us/tx (%+.1f%%), postgres %+.2f us/tx;", m, g - g0, (g - g0) / g0 * 100, p - p0}')
    done
    has_target pgcordon && [[ -n $line ]] && log "$t minus pgcordon, median CPU per transaction:${line%;}"
  done
  if (( AUDIT_VERIFY )); then
    for t in "${AUDIT_LIST[@]}"; do
      rc=0 s0=$(date +%s.%N)
      run_child "$PGCORDON" audit verify --config "$TMP/$t.yaml" >"$TMP/verify-$t.out" 2>&1 || rc=$?
      secs=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
      if (( rc != 0 )); then
        echo "# $t: pgcordon audit verify FAILED (exit $rc, ${secs} s):"
        tail -n 5 "$TMP/verify-$t.out" | sed 's/^/    | /'
        FAILED_RUNS=$((FAILED_RUNS + 1))
      else
        # The chain's line, and the head file's (the store ends where the gateway says it does).
        while IFS= read -r line; do log "$t: pgcordon audit verify: $line"; done < <(grep '^ok:' "$TMP/verify-$t.out")
        log "$t: pgcordon audit verify took ${secs} s"
      fi
    done
  fi
fi

# ---------------------------------------------------------------- inspection cost
if (( INSPECT_COST )) && has_target pgcordon-policies; then
  echo
  echo "=== policy inspection cost per statement (bench/inspect_cost.c, same policy as pgcordon-policies) ==="
  rc=0
  read -r c0_total c0_ours _ < <(cpu_ticks)
  w0=$(date +%s.%N)
  # sessions per worker during the pgbench runs: they share the worker's cache
  SESS_PER_WORKER=$(( (CLIENTS + WORKERS - 1) / WORKERS ))
  run_child env PGCORDON_BENCH_DB_PASSWORD="$PG_PASSWORD" "$INSPECT_BIN" --ms "$INSPECT_MS" \
    --sessions "$SESS_PER_WORKER" "$TMP/pgcordon-policies.yaml" bench bench >"$TMP/inspect_cost.out" 2>&1 || rc=$?
  read -r c1_total c1_ours _ < <(cpu_ticks)
  log "other_cpu during inspect_cost: $(other_cpu "$c0_total" "$c0_ours" "$w0" "$c1_total" "$c1_ours" "$(date +%s.%N)")" \
      "of $NCPU CPUs" \
      "(CPU used by anything but the benchmark; 0% = quiet)"
  if (( rc != 0 )); then
    cat "$TMP/inspect_cost.out"
    echo "inspect_cost FAILED (exit $rc)"
    FAILED_RUNS=$((FAILED_RUNS + 1))
  else
    sed -n '/^per-statement/,$p' "$TMP/inspect_cost.out" | grep -v '^SUMMARY'
    summary=$(sed -n 's/^SUMMARY //p' "$TMP/inspect_cost.out")
    declare -A ic=()
    for pair in $summary; do ic[${pair%%=*}]=${pair#*=}; done
    for mode in "${MODE_LIST[@]}"; do
      tps=${MED[pgcordon-policies,$mode]:-}
      case $mode in
        simple) us=${ic[simple_folded_hit_sessions_us]:-}; what="folded@${SESS_PER_WORKER}s per Query";;
        *) us=${ic[prepared_bind_sessions_us]:-}; what="bind@${SESS_PER_WORKER}s per Bind";;
      esac
      [[ -n $tps && -n $us ]] || continue
      awk -v us="$us" -v tps="$tps" -v m="$mode" -v w="$what" 'BEGIN {
        printf "# %s: %.3f us (%s) x %.0f tps = %.2f ms CPU per second (%.2f%% of one core), in a hot loop\n",
               m, us, w, tps, us * tps / 1000, us * tps / 10000 }'
    done
    unset ic
  fi
fi

# ---------------------------------------------------------------- idle-connection memory
if (( IDLE_CONNS > 0 )); then
  echo
  echo "=== gateway memory: $IDLE_CONNS idle authenticated connections (VmRSS of the gateway process tree) ==="
  printf '%-18s %14s %14s %12s %12s %6s %8s %15s %14s\n' gateway rss_before_kib rss_after_kib delta_kib kib_per_conn \
    procs open_s upstream_added upstream_left
  for t in pgcordon pgcordon-policies pgbouncer; do
    has_target "$t" || continue
    pid=$(target_pid "$t")
    rc=0
    run_child env PGHOST=127.0.0.1 PGPORT="$(target_port "$t")" PGUSER=bench PGDATABASE=bench \
      BENCH_ADMIN_DSN="host=$TMP port=$PG_PORT user=postgres dbname=postgres" \
      PGPASSWORD="$(target_password "$t")" "$PY" "$BENCH_DIR/idle_conns.py" "$pid" "$IDLE_CONNS" \
      >"$TMP/idle-$t.out" 2>"$TMP/idle-$t.err" || rc=$?
    line=$(cat "$TMP/idle-$t.out")
    if (( rc != 0 )); then
      printf '%-18s FAILED: %s\n' "$t" "$(tail -n 3 "$TMP/idle-$t.err" | tr '\n' ' ')"
      FAILED_RUNS=$((FAILED_RUNS + 1))
      continue
    fi
    declare -A kv=()
    for pair in $line; do kv[${pair%%=*}]=${pair#*=}; done
    printf '%-18s %14s %14s %12s %12s %6s %8s %15s %14s\n' "$t" "${kv[rss_before_kib]}" "${kv[rss_after_kib]}" \
      "${kv[delta_kib]}" "${kv[kib_per_conn]}" "${kv[procs]}" "${kv[open_seconds]}" "${kv[upstream_backends_added]}" \
      "${kv[upstream_left_after_close]}"
    unset kv
    pid_alive "$pid" || die "$t died during the idle-connection test"
  done
fi

# ---------------------------------------------------------------- logs
# What the gateways and PostgreSQL logged (log.level warn): an audit_store_failed,
# audit_events_dropped or any error here means the figures above need a second look.
echo
echo "=== logs: events per gateway log (level event), ERROR lines in postgres.log ==="
for t in "${TARGET_LIST[@]}"; do
  [[ $t == pgcordon* && -f $TMP/$t.log ]] || continue
  ev=$(sed -n 's/^ts=[^ ]* level=\([a-z]*\) event=\([A-Za-z0-9_]*\).*/\1 \2/p' "$TMP/$t.log" | sort | uniq -c |
       awk '{printf "%s%dx %s %s", sep, $1, $2, $3; sep = ", "}')
  other=$(grep -cv '^ts=[^ ]* level=[a-z]* event=' "$TMP/$t.log" || true)
  log "$t.log: ${ev:-no events}$( (( other > 0 )) && echo "; $other other line(s)")"
done
if [[ -f $TMP/postgres.log ]]; then
  pg_err=$(grep -c ' ERROR: ' "$TMP/postgres.log" || true)
  log "postgres.log: $pg_err ERROR line(s)$( (( pg_err > 0 )) && printf '; most frequent: %s' \
    "$(sed -n 's/.* ERROR:  *//p' "$TMP/postgres.log" | sort | uniq -c | sort -rn | head -n 3 |
       awk '{c = $1; $1 = ""; printf "%s%dx%s", sep, c, $0; sep = " |"}')")"
fi

echo
if (( FAILED_RUNS > 0 )); then
  echo "bench: $FAILED_RUNS run(s) FAILED (see output above)" >&2
  exit 1
fi
echo "# done"
