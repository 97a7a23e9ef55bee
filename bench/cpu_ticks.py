#!/usr/bin/python3
"""Print "TOTAL OURS PG" CPU clock ticks, for telling how busy the box was with other work.

Usage: cpu_ticks.py POSTMASTER_PID SELF_PID [GATEWAY_PID ...]

TOTAL is user+nice+system of all CPUs from /proc/stat. OURS is the CPU time of the
benchmark's own processes: SELF_PID (the bench script, whose cutime/cstime include every
pgbench run it has waited for), the postmaster with its reaped children (backends that
ended) and its live children, and each gateway (all threads, plus reaped children).
Between two snapshots, (dTOTAL - dOURS) is CPU that something else on the machine used.
PG is the PostgreSQL part of OURS (postmaster, reaped and live children).
"""
import os
import sys


def stat_fields(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    # after "pid (comm) ": state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based
    return s[s.rindex(")") + 2:].split()


def own_ticks(pid, children_too):
    f = stat_fields(pid)
    if f is None:
        return 0
    t = int(f[11]) + int(f[12])
    if children_too:
        t += int(f[13]) + int(f[14])
    return t


def main():
    pm, self_pid, gws = sys.argv[1], sys.argv[2], [p for p in sys.argv[3:] if p]
    with open("/proc/stat") as f:
        cpu = f.readline().split()
    total = int(cpu[1]) + int(cpu[2]) + int(cpu[3])
    ours = own_ticks(self_pid, True) + sum(own_ticks(g, True) for g in gws)
    pg = 0
    if pm:
        pg += own_ticks(pm, True)
        for d in os.listdir("/proc"):
            if d.isdigit():
                f = stat_fields(d)
                if f is not None and f[1] == pm:
                    pg += int(f[11]) + int(f[12])
    print(total, ours + pg, pg)


main()
