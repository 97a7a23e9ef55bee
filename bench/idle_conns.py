#!/usr/bin/python3
"""Open N authenticated idle connections through a gateway and report the
gateway's resident-memory growth.

Usage: idle_conns.py PID N  (connection parameters come from libpq env vars:
PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD). With BENCH_ADMIN_DSN set (a
direct superuser connection to PostgreSQL) it also reports how many upstream
backends of PGUSER the N connections added.

RSS is VmRSS summed over PID and all its descendants (so a forking gateway is
measured completely), read from /proc/*/status. Prints one line of key=value.
Must run under /usr/bin/python3, where Debian's python3-psycopg is installed.
"""
import os
import sys
import time

import psycopg


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # field 4 (ppid) comes after the parenthesised comm, which may hold spaces
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_rss_kib(pid):
    kids = children_map()
    todo, total, nproc = [pid], 0, 0
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        nproc += 1
                        break
        except OSError:
            pass
        todo.extend(kids.get(p, []))
    return total, nproc


def count_backends():
    """PostgreSQL client backends of PGUSER, counted over a direct connection
    given by BENCH_ADMIN_DSN (not through the gateway); -1 if not set."""
    dsn = os.environ.get("BENCH_ADMIN_DSN")
    if not dsn:
        return -1
    with psycopg.connect(dsn) as c:
        return c.execute(
            "select count(*) from pg_stat_activity"
            " where usename = %s and backend_type = 'client backend'",
            (os.environ["PGUSER"],)).fetchone()[0]


def main():
    pid, n = int(sys.argv[1]), int(sys.argv[2])
    before, nproc = tree_rss_kib(pid)
    upstream_before = count_backends()
    conns = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            # connect() returns after AuthenticationOk + ReadyForQuery: the
            # session is authenticated and idle.
            conns.append(psycopg.connect(connect_timeout=30))
    except Exception as e:  # report how far we got, then fail
        print(f"error after {len(conns)} connections: {type(e).__name__}: {e}".strip(),
              file=sys.stderr)
        for c in conns:
            c.close()
        sys.exit(1)
    open_s = time.monotonic() - t0
    time.sleep(2)  # let the gateway settle
    after, nproc_after = tree_rss_kib(pid)
    upstream_after = count_backends()
    for c in conns:
        c.close()
    # wait (up to 10 s) for the gateway to release the upstream sessions, so the
    # next measurement starts clean and a leak shows up as upstream_left > 0
    deadline = time.monotonic() + 10
    left = count_backends() - upstream_before
    while left > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        left = count_backends() - upstream_before
    delta = after - before
    print(f"conns={n} rss_before_kib={before} rss_after_kib={after} delta_kib={delta} "
          f"kib_per_conn={delta / n:.1f} procs={nproc_after} open_seconds={open_s:.2f} "
          f"upstream_backends_added={upstream_after - upstream_before} "
          f"upstream_left_after_close={left}")


if __name__ == "__main__":
    main()
