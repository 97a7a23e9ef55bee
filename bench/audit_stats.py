#!/usr/bin/env python3
"""Counts what an audit instance's SQLite store holds, for bench/run.sh.

The store keeps one row per commit batch (audit_batches); `records` is a zstd frame of
the batch's text, one record a line: {"seq":N,"time":...,"kind":...,...,"record":BODY}
(see src/audit/store_sqlite.c). Readable while the gateway writes (WAL mode).

  audit_stats.py count DB          statement records
  audit_stats.py check DB SQL      statement records whose sql is SQL
  audit_stats.py last DB SQL       the body of the last of those
  audit_stats.py summary DB        "<statements> <others> <mean statement body bytes> <kind=n ...>"
  audit_stats.py newest DB         the time of the newest committed record, in unix seconds
"""
import datetime
import json
import re
import sqlite3
import sys

import zstandard

KIND = re.compile(r'"kind":"([a-z_]+)"')
BODY = ',"record":'


def records(db):
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        try:
            cur = c.execute("SELECT records FROM audit_batches ORDER BY first_seq")
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return
            raise
        d = zstandard.ZstdDecompressor()
        for (packed,) in cur:
            text = d.decompress(packed) if isinstance(packed, bytes) and packed[:4] == b"\x28\xb5\x2f\xfd" else packed
            text = text.decode() if isinstance(text, bytes) else text
            yield from text[2:-2].split(",\n")
    finally:
        c.close()


def kind_of(line):
    m = KIND.search(line)
    return m[1] if m else "?"


def body_of(line):
    return line[line.index(BODY) + len(BODY):-1]


def main():
    cmd, db = sys.argv[1], sys.argv[2]
    if cmd == "count":
        print(sum(1 for ln in records(db) if kind_of(ln) == "statement"))
    elif cmd in ("check", "last"):
        sql, n, last = sys.argv[3], 0, ""
        needle = json.dumps(sql)[1:-1]
        for ln in records(db):
            if needle in ln and kind_of(ln) == "statement" and json.loads(body_of(ln)).get("sql") == sql:
                n, last = n + 1, body_of(ln)
        print(n if cmd == "check" else last)
    elif cmd == "newest":
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            (t,) = c.execute("SELECT max(max_time) FROM audit_batches").fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                raise
            t = None
        finally:
            c.close()
        print(datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ")
              .replace(tzinfo=datetime.timezone.utc).timestamp() if t else 0)
    elif cmd == "summary":
        kinds, body_bytes = {}, 0
        for ln in records(db):
            k = kind_of(ln)
            kinds[k] = kinds.get(k, 0) + 1
            if k == "statement":
                body_bytes += len(body_of(ln))
        st = kinds.get("statement", 0)
        other = sum(kinds.values()) - st
        print(st, other, f"{body_bytes / st if st else 0:.1f}",
              " ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
