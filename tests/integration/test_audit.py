"""The audit trail (issue #6) through real clients: what each record holds (sessions,
statements with SQL, parameters, decision, outcome and result head, failed logins), the
keyed hash chain and `pgcordon audit verify` against tampering, retention, strict
durability under SIGKILL, a store that cannot be written, a PostgreSQL store shared by
two gateways, and the CLI (`sessions list/replay`, `audit export`) and HTTP API that read
the trail.

Records are read straight from the store (SQLite file or PostgreSQL database) by the test.
A session is found by the unique application_name each test gives its connection."""

import hashlib
import hmac
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
import zstandard

import pgwire

from conftest import (BIN, LOCAL_USERS, ROLE_PW, SUPERUSER_PW, GatewayFactory, asan_build, free_port,
                      require_binary, scram_verifier, to_yaml)
from store_relay import StoreRelay

SFX = secrets.token_hex(3)
REFUSED_MSG = ("pgcordon: the audit store cannot be written; statements are refused until "
               "it recovers")
GUARD = "guard"  # the module gateway's policy for alice: DELETE is blocked
CAP, CAP_ROWS, CAROL_PW = "cap", 3, "ClientCarol-99ee00ff"  # ... and for carol: max_rows 3


def tname(base):
    return f"aud_{base}_{SFX}"


_app_no = [0]


def app_name(base="t"):
    _app_no[0] += 1
    return f"aud-{base}-{SFX}-{_app_no[0]}"


def su_exec(pg, *stmts, dbname=None):
    with (pg.super_connect(dbname) if dbname else pg.super_connect()) as c:
        for s in stmts:
            c.execute(s)


def make_table(pg, t, cols="id int PRIMARY KEY, v text, n int", fill=None):
    stmts = [f"CREATE TABLE {t} ({cols})"]
    if fill:
        stmts.append(fill)
    stmts.append(f"ALTER TABLE {t} OWNER TO gw_scram")
    su_exec(pg, *stmts)
    return t


def wait_for(fn, timeout=5.0, interval=0.05, what="condition"):
    """Polls fn until it returns something truthy; returns it, or fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------- the store

COLS = ("node", "seq", "time", "kind", "session_id", "user_name", "database", "body",
        "prev_tag", "tag")


def _record(row):
    r = dict(zip(COLS, row))
    b = r["body"]
    r["raw_body"] = b if isinstance(b, str) else json.dumps(b)
    r["body"] = json.loads(b) if isinstance(b, str) else b
    return r


class SqliteTrail:
    """The SQLite store read and edited directly. It keeps one row per commit batch
    (audit_batches); `records` is a zstd frame of the batch's text, one record a line:
    {"seq":N,"time":...,"kind":...,"session_id":...,"user":...,"database":...,"tag":...,
    "record":BODY}, and the row keeps the tag before its first record (prev_tag).
    Tampering edits a record's line byte for byte, as an attacker with the file would."""

    RECORD = re.compile(r'^\{"seq":(-?\d+),.*,"record":(.*)\}$')

    def __init__(self, db):
        self.db = Path(db)

    def batches(self):
        """[(first_seq, prev_tag, [record lines])] by first_seq."""
        if not self.db.exists():
            return []
        c = sqlite3.connect(str(self.db), timeout=10)
        try:
            rows = c.execute("SELECT first_seq, prev_tag, records FROM audit_batches "
                             "ORDER BY first_seq").fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise
        finally:
            c.close()
        out = []
        for first, prev, packed in rows:
            text = zstandard.ZstdDecompressor().decompressobj().decompress(packed).decode()  # sized or not
            assert text.startswith("[\n") and text.endswith("\n]"), text[:80]
            out.append((first, prev, text[2:-2].split(",\n") if text[2:-2] else []))  # "[\n\n]": emptied
        return out

    def rows(self, kind=None, seq=None):
        out = []
        for _, prev, lines in self.batches():
            for ln in lines:
                j = json.loads(ln)
                a, b = self.body_span(ln)
                r = {"node": None, "seq": j["seq"], "time": j["time"], "kind": j["kind"],
                     "session_id": j["session_id"], "user_name": j["user"],
                     "database": j["database"], "body": j["record"], "raw_body": ln[a:b],
                     "prev_tag": prev, "tag": j["tag"]}
                prev = r["tag"]
                if (kind is None or r["kind"] == kind) and (seq is None or r["seq"] == seq):
                    out.append(r)
        if out:
            c = sqlite3.connect(str(self.db), timeout=10)
            try:
                node = c.execute("SELECT node FROM audit_batches LIMIT 1").fetchone()[0]
            finally:
                c.close()
            for r in out:
                r["node"] = node
        return sorted(out, key=lambda r: r["seq"])

    def execute(self, sql, args=()):
        c = sqlite3.connect(str(self.db), timeout=10, isolation_level=None)
        try:
            c.execute(sql, args)
        finally:
            c.close()

    def rewrite(self, first_seq, lines, sized=True):
        text = ("[\n" + ",\n".join(lines) + "\n]").encode()
        packer = zstandard.ZstdCompressor(level=1, write_content_size=sized)
        self.execute("UPDATE audit_batches SET records = ? WHERE first_seq = ?", (packer.compress(text), first_seq))

    def edit_record(self, seq, fn, sized=True):
        """Replaces record seq's line with fn(line), or drops it when fn returns None; the
        batch is compressed again, its frame saying its size unless sized is False."""
        for first, _, ls in self.batches():
            for i, ln in enumerate(ls):
                if int(self.RECORD.match(ln)[1]) == seq:
                    new = fn(ln)
                    ls[i:i + 1] = [] if new is None else [new]
                    return self.rewrite(first, ls, sized)
        raise AssertionError(f"no record seq={seq} in the batches")

    def append_line(self, line):
        first, _, ls = self.batches()[-1]
        self.rewrite(first, ls + [line])

    @classmethod
    def body_span(cls, line):
        m = cls.RECORD.match(line)
        return m.start(2), m.end(2)


class PgTrail:
    def __init__(self, pg, dbname):
        self.pg, self.dbname = pg, dbname

    def rows(self, kind=None, seq=None):
        where, args = [], []
        for col, v in (("kind", kind), ("seq", seq)):
            if v is not None:
                where.append(f"{col} = %s")
                args.append(v)
        with self.pg.super_connect(self.dbname) as c:
            if c.execute("SELECT to_regclass('audit_records')").fetchone()[0] is None:
                return []
            sql = (f"SELECT {', '.join(COLS)} FROM audit_records "
                   f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY node, seq")
            return [_record(r) for r in c.execute(sql, args).fetchall()]


def session_id_of(trail, app, timeout=5):
    def find():
        for r in trail.rows(kind="session_start"):
            if r["body"].get("application_name") == app:
                return r["session_id"]
        return None
    return wait_for(find, timeout, what=f"the session_start record of application {app}")


def session_records(trail, sid, timeout=5):
    """All records of a finished session, once its session_end is in the store:
    (session_start, [statement records by seq], session_end)."""
    def find():
        rs = [r for r in trail.rows() if r["session_id"] == sid]
        if any(r["kind"] == "session_end" for r in rs):
            return rs
        return None
    rs = wait_for(find, timeout, what=f"the session_end record of session {sid}")
    start = [r for r in rs if r["kind"] == "session_start"]
    end = [r for r in rs if r["kind"] == "session_end"]
    assert len(start) == 1 and len(end) == 1, [r["kind"] for r in rs]
    stmts = [r for r in rs if r["kind"] == "statement"]
    return start[0], stmts, end[0]


def record_with(trail, needle, kind="statement", timeout=5):
    """The first record of kind whose body text contains needle."""
    def find():
        for r in trail.rows(kind=kind):
            if needle in r["raw_body"]:
                return r
        return None
    return wait_for(find, timeout, what=f"a {kind} record containing {needle!r}")


def check_chain_links(rows):
    """Within each node: seq 1.. without gaps, every prev_tag is the previous tag."""
    by_node = {}
    for r in rows:
        by_node.setdefault(r["node"], []).append(r)
    for node, rs in by_node.items():
        rs.sort(key=lambda r: r["seq"])
        for a, b in zip(rs, rs[1:]):
            assert b["seq"] == a["seq"] + 1, f"node {node}: seq {a['seq']} then {b['seq']}"
            assert b["prev_tag"] == a["tag"], f"node {node}: seq {b['seq']} prev_tag mismatch"
        for r in rs:
            assert re.fullmatch(r"[0-9a-f]{64}", r["tag"]), r


# ---------------------------------------------------------------------------- CLI / HTTP helpers

def cli(*args, timeout=60):
    require_binary()
    return subprocess.run([str(BIN)] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout)


def verify(config_path, *extra):
    return cli("audit", "verify", "--config", config_path, *extra)


def assert_verify_ok(config_path, *extra):
    r = verify(config_path, *extra)
    assert r.returncode == 0 and re.search(r"^ok:", r.stdout, re.M), \
        f"audit verify: exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def assert_verify_fails(config_path, seq, words):
    r = verify(config_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, f"audit verify: expected exit 1, got {r.returncode}\n{out}"
    lines = [ln for ln in out.splitlines()
             if re.search(rf"\bseq={seq}\b", ln) and any(w in ln for w in words)]
    assert lines, f"no line naming seq={seq} with one of {words} in:\n{out}"
    return r


def psql(gw, sql, user="alice", app=None, extra=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=LOCAL_USERS[user], PGCONNECT_TIMEOUT="10", LC_ALL="C")
    if app:
        env["PGAPPNAME"] = app
    conn = f"host={gw.host} port={gw.port} user={user} dbname=app sslmode=disable"
    return subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", conn, "-c", sql,
                           *extra], env=env, capture_output=True, text=True, timeout=60)


def audit_cfg(store, **kw):
    a = {"store": store}
    a.update(kw)
    return a


def start_audited(factory, store, audit=None, more=None):
    """A gateway with audit.store = store (plus audit keys) and more(cfg) applied."""
    def mutate(cfg):
        cfg["audit"] = audit_cfg(store, **(audit or {}))
        if more:
            more(cfg)
    return factory.start(mutate)


def run_session(gw, trail, fn, user="alice", **kw):
    """Opens a psycopg session with a unique application_name, runs fn(conn), closes it and
    returns (session_id, session_start, [statements], session_end, fn's result)."""
    app = app_name(user)
    with gw.connect(user=user, application_name=app, **kw) as c:
        res = fn(c)
    sid = session_id_of(trail, app)
    start, stmts, end = session_records(trail, sid)
    return sid, start, stmts, end, res


# ---------------------------------------------------------------------------- 1. records

@pytest.fixture(scope="module")
def agw_state(pg, certs, tmp_path_factory):
    """The module gateway: SQLite store, results capped at 5 rows / 2KiB, a policy for
    alice that blocks DELETE and one for carol with max_rows (default allow, so bob is
    unrestricted)."""
    require_binary()
    root = tmp_path_factory.mktemp("auditgw")
    db = root / "audit.db"
    f = GatewayFactory(pg, certs, root)

    def mutate(cfg):
        cfg["audit"] = {"store": f"sqlite:{db}", "node": "gwrec",
                        "results": {"rows": 5, "bytes": "2KiB"}}
        cfg["default"] = "allow"
        cfg["users"]["carol"] = {"password": scram_verifier(CAROL_PW), "groups": ["testers"]}
        cfg["policies"] = [{"name": GUARD, "match": {"users": ["alice"]},
                            "block": [{"statements": ["delete"]}]},
                           {"name": CAP, "match": {"users": ["carol"]}, "limits": {"max_rows": CAP_ROWS}}]
    g = f.start(mutate)
    yield g, SqliteTrail(db), db
    f.cleanup()


@pytest.fixture
def agw(agw_state):
    return agw_state[0]


@pytest.fixture
def trail(agw_state):
    return agw_state[1]


@pytest.fixture
def table(pg):
    made = []

    def make(rows=3, cols="id int PRIMARY KEY, v text, n int"):
        t = tname(f"t{len(made)}_{secrets.token_hex(2)}")
        fill = None
        if rows:
            fill = (f"INSERT INTO {t} (id, v, n) SELECT g, 'row ' || g, "
                    f"CASE WHEN g % 2 = 0 THEN NULL ELSE g * 10 END "
                    f"FROM generate_series(1, {rows}) g")
        made.append(make_table(pg, t, cols, fill))
        return t
    yield make
    su_exec(pg, *[f"DROP TABLE IF EXISTS {t}" for t in made])


def test_key_file_created_private(agw_state):
    gw, trail, db = agw_state
    key = Path(str(db) + ".key")
    assert key.exists(), "the default key file <db>.key was not created"
    assert key.stat().st_mode & 0o777 == 0o600, oct(key.stat().st_mode)
    assert re.fullmatch(r"[0-9a-f]{64}\n?", key.read_text())


def test_threads_named(agw_state):
    """top -H, perf and ps show what each thread is: the workers and the audit writer."""
    gw = agw_state[0]
    names = sorted(p.read_text().strip() for p in Path(f"/proc/{gw.pid}/task").glob("*/comm"))
    assert "pgc-audit" in names and "pgc-worker-0" in names, names


def test_simple_query_result_captured(agw, trail, table):
    t = table(3)
    sql = f"SELECT id, v, n AS tens FROM {t} ORDER BY id"
    sid, start, stmts, end, rows = run_session(agw, trail, lambda c: c.execute(sql).fetchall())
    assert rows == [(1, "row 1", 10), (2, "row 2", None), (3, "row 3", 30)]
    assert len(stmts) == 1, [s["body"] for s in stmts]
    r = stmts[0]
    b = r["body"]
    assert r["user_name"] == "alice" and r["database"] == "app" and r["node"] == "gwrec"
    assert b["session_id"] == sid and b["n"] == 1
    assert b["sql"] == sql
    assert b["decision"]["action"] == "allow"
    assert b["tag"] == "SELECT 3" and b["rows"] == 3 and b["rows_sent"] == 3
    assert "error" not in b or b["error"] is None
    assert isinstance(b["duration_ms"], (int, float)) and b["duration_ms"] >= 0
    res = b["result"]
    assert [c["name"] for c in res["columns"]] == ["id", "v", "tens"]
    assert [c["type_oid"] for c in res["columns"]] == [23, 25, 23]
    assert res["rows"] == [["1", "row 1", "10"], ["2", "row 2", None], ["3", "row 3", "30"]]
    assert res["truncated"] is False


def test_result_rows_truncated(agw, trail):
    sql = "SELECT g AS num, 'v' || g AS label FROM generate_series(1, 20) g"
    _, _, stmts, _, rows = run_session(agw, trail, lambda c: c.execute(sql).fetchall())
    assert len(rows) == 20
    b = stmts[0]["body"]
    assert b["tag"] == "SELECT 20" and b["rows"] == 20 and b["rows_sent"] == 20
    res = b["result"]
    assert res["truncated"] is True
    assert res["rows"] == [[str(i), f"v{i}"] for i in range(1, 6)], res["rows"]
    assert [c["name"] for c in res["columns"]] == ["num", "label"]


def test_result_bytes_truncated(agw, trail):
    # three rows of 1500 characters against results.bytes 2KiB
    sql = "SELECT g, repeat(chr(64 + g), 1500) AS big FROM generate_series(1, 3) g"
    _, _, stmts, _, rows = run_session(agw, trail, lambda c: c.execute(sql).fetchall())
    assert len(rows) == 3 and len(rows[2][1]) == 1500
    b = stmts[0]["body"]
    assert b["tag"] == "SELECT 3" and b["rows_sent"] == 3
    res = b["result"]
    assert res["truncated"] is True, res
    kept = len(json.dumps(res["rows"]))
    assert kept <= 2 * 2048, f"result head of {kept} bytes kept with results.bytes 2KiB"
    assert len(res["rows"]) < 3


def test_extended_text_params(agw, trail):
    sql = "SELECT %t::int + %t::int AS s, %t::text AS t"

    def fn(c):
        a = c.execute(sql, (40, 2, "héllo wörld"), prepare=True).fetchall()
        b = c.execute(sql, (1, 2, "second"), prepare=True).fetchall()
        return a, b
    _, _, stmts, _, (a, b) = run_session(agw, trail, fn)
    assert a == [(42, "héllo wörld")] and b == [(3, "second")]
    assert len(stmts) == 2, [s["body"] for s in stmts]
    s1, s2 = stmts[0]["body"], stmts[1]["body"]
    want_sql = "SELECT $1::int + $2::int AS s, $3::text AS t"
    assert s1["sql"] == want_sql and s2["sql"] == want_sql
    assert s1["params"] == ["40", "2", "héllo wörld"]
    assert s2["params"] == ["1", "2", "second"]
    assert s1["result"]["rows"] == [["42", "héllo wörld"]]
    assert s2["result"]["rows"] == [["3", "second"]]
    assert [c["name"] for c in s1["result"]["columns"]] == ["s", "t"]
    assert s1["tag"] == "SELECT 1" and s2["tag"] == "SELECT 1"
    assert s2["n"] == s1["n"] + 1


def test_extended_binary_params(agw, trail):
    # b"abc" is valid text, but was sent in binary format: it is still recorded as hex.
    sql = "SELECT length(%b::bytea) AS l1, length(%b::bytea) AS l2"
    _, _, stmts, _, rows = run_session(
        agw, trail, lambda c: c.execute(sql, (b"\x00\x01\xfe", b"abc")).fetchall())
    assert rows == [(3, 3)]
    b = stmts[0]["body"]
    assert b["sql"] == "SELECT length($1::bytea) AS l1, length($2::bytea) AS l2"
    assert b["params"] == [{"hex": "0001fe"}, {"hex": "616263"}]
    assert b["result"]["rows"] == [["3", "3"]]


def test_binary_results_recorded_as_hex(agw, trail):
    def fn(c):
        with c.cursor(binary=True) as cur:
            return cur.execute("SELECT 1::int4 AS one, NULL::int4 AS nothing").fetchall()
    _, _, stmts, _, rows = run_session(agw, trail, fn)
    assert rows == [(1, None)]
    res = stmts[0]["body"]["result"]
    assert res["rows"] == [[{"hex": "00000001"}, None]], res


def test_null_param(agw, trail):
    sql = "SELECT %s::text IS NULL AS isnull, %s::text AS t"
    _, _, stmts, _, rows = run_session(
        agw, trail, lambda c: c.execute(sql, (None, "x")).fetchall())
    assert rows == [(True, "x")]
    b = stmts[0]["body"]
    assert b["params"] == [None, "x"], b["params"]
    assert b["result"]["rows"] == [["t", "x"]]


def test_error_statements(agw, trail, table):
    t = table(1)

    def fn(c):
        errs = []
        for sql, params in (("SELECT 1/0", None),
                            (f"INSERT INTO {t} (id, v) VALUES (%s, %s)", (1, "dup"))):
            try:
                c.execute(sql, params)
            except psycopg.Error as e:
                errs.append(e)
        return errs
    _, _, stmts, _, errs = run_session(agw, trail, fn)
    assert [e.sqlstate for e in errs] == ["22012", "23505"]
    assert len(stmts) == 2
    d0, d1 = stmts[0]["body"], stmts[1]["body"]
    assert d0["sql"] == "SELECT 1/0"
    assert d0["error"]["sqlstate"] == "22012"
    assert d0["error"]["severity"] == "ERROR"
    assert d0["error"]["message"] == "division by zero"
    assert d0.get("tag") is None
    assert d0["decision"]["action"] == "allow"
    assert d1["error"]["sqlstate"] == "23505"
    assert d1["error"]["message"] == errs[1].diag.message_primary
    assert d1["error"]["detail"] == errs[1].diag.message_detail == "Key (id)=(1) already exists."
    assert d1["params"] == ["1", "dup"] or d1["params"][1] == "dup", d1["params"]


def test_blocked_statement(agw, trail, table, pg):
    t = table(3)

    def fn(c):
        errs = []
        for sql, params in ((f"DELETE FROM {t} WHERE id = 1", None),
                            (f"DELETE FROM {t} WHERE id = %t", (2,))):
            with pytest.raises(psycopg.Error) as ei:
                c.execute(sql, params)
            errs.append(ei.value)
        return errs
    _, _, stmts, _, errs = run_session(agw, trail, fn)
    for e in errs:
        assert e.sqlstate == "42501", e
        assert e.diag.message_primary.startswith(f"pgcordon: blocked by policy {GUARD}: ")
    with pg.super_connect() as c:
        assert c.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
    assert len(stmts) == 2, [s["body"] for s in stmts]
    for s, e, want_sql in zip(stmts, errs, (f"DELETE FROM {t} WHERE id = 1",
                                            f"DELETE FROM {t} WHERE id = $1")):
        b = s["body"]
        assert b["sql"] == want_sql
        d = b["decision"]
        assert d["action"] == "block", d
        assert d["policy"] == GUARD, d
        assert d["rule"] == "statements", d
        assert d.get("reason"), d
        assert b["error"]["message"] == e.diag.message_primary, (b["error"], str(e))
        assert b["error"]["sqlstate"] == "42501"
        assert not b.get("tag")


def test_cut_off_statement_records(agw, trail, table, pg):
    """Statements cut off at max_rows: the record has the error the client got and the rows
    it was sent (not the row past the limit); one that ran to its end also has its tag, as
    the server gave it. A statement of the same Query after the cut-off one still ran: it
    is recorded too, marked withheld (the client saw none of its answer)."""
    t = table(0)
    cut = f"pgcordon: blocked by policy {CAP}: the result exceeds max_rows {CAP_ROWS}"

    def fn(c):
        for sql in ("SELECT g FROM generate_series(1, 10) g",
                    f"INSERT INTO {t} (id, v) SELECT g, 'new' FROM generate_series(1, 10) g RETURNING id"):
            with pytest.raises(psycopg.Error) as ei:
                c.execute(sql)
            assert ei.value.diag.message_primary == cut
        c.execute("BEGIN")
        with pytest.raises(psycopg.Error):
            c.execute(f"UPDATE {t} SET n = 1 RETURNING id")
        c.execute("ROLLBACK")
        with pytest.raises(psycopg.Error):
            c.execute(f"SELECT g FROM generate_series(1, 10) g; UPDATE {t} SET n = 2 WHERE id = 1")
        assert c.execute("SELECT 'after'").fetchone() == ("after",)
    _, _, stmts, _, _ = run_session(agw, trail, fn, user="carol", password=CAROL_PW)
    bodies = [s["body"] for s in stmts]
    assert [b["sql"].split()[0] for b in bodies] == ["SELECT", "INSERT", "BEGIN", "UPDATE", "ROLLBACK",
                                                     "SELECT", "UPDATE", "SELECT"], [b["sql"] for b in bodies]
    for b, tag in zip([bodies[i] for i in (0, 1, 3, 5)], ("SELECT 10", "INSERT 0 10", "UPDATE 10", "SELECT 10")):
        assert b["error"] == {"sqlstate": "42501", "message": cut}, b
        assert b["rows_sent"] == CAP_ROWS, b
        assert len(b["result"]["rows"]) == CAP_ROWS, b
        assert b["tag"] == tag and b["rows"] == int(tag.split()[-1]), b
        assert "withheld" not in b, b
    later = bodies[6]
    assert later.get("part") == 2 and later["n"] == bodies[5]["n"], later
    assert later["tag"] == "UPDATE 1" and later["rows_sent"] == 0 and later["withheld"] is True, later
    assert "result" not in later and "error" not in later, later
    with pg.super_connect() as c:
        assert c.execute(f"SELECT count(*), count(n), max(n) FROM {t}").fetchone() == (10, 1, 2)


def test_blocked_extended_statement_record(agw, trail, table):
    """A statement refused at Parse is recorded at once, with its text and decision. Its
    parameters arrive later, in a Bind the server skips; they are not part of the record
    (docs/audit.md)."""
    t = table(2)

    def fn(c):
        with pytest.raises(psycopg.Error) as ei:
            c.execute(f"DELETE FROM {t} WHERE id = %t AND v = %t", (2, "row 2"))
        return ei.value
    _, _, stmts, _, e = run_session(agw, trail, fn)
    assert e.sqlstate == "42501"
    assert len(stmts) == 1, [x["body"] for x in stmts]
    b = stmts[0]["body"]
    assert b["decision"]["action"] == "block"
    assert b["sql"] == f"DELETE FROM {t} WHERE id = $1 AND v = $2"
    assert b["error"]["sqlstate"] == "42501" and b["error"]["message"] == str(e).strip()
    assert "params" not in b, json.dumps(b)


def test_multi_statement_parts(agw, trail, table):
    t = table(0)
    app = app_name("multi")
    sql = (f"SELECT 1 AS a; SELECT 'two' AS b; INSERT INTO {t} (id, v) VALUES (7, 'x'), "
           f"(8, 'y'); SELECT count(*) AS c FROM {t}")
    r = psql(agw, sql, app=app)
    assert r.returncode == 0, r.stderr
    sid = session_id_of(trail, app)
    _, stmts, _ = session_records(trail, sid)
    assert len(stmts) == 4, [s["body"] for s in stmts]
    bodies = [s["body"] for s in stmts]
    assert "part" not in bodies[0] or bodies[0]["part"] in (None, 1)
    assert [b.get("part") for b in bodies[1:]] == [2, 3, 4]
    assert len({b["n"] for b in bodies}) == 1, "the parts of one Query share its number"
    # The first carries the Query as sent, each later one its own statement's text.
    assert bodies[0]["sql"] == sql
    assert [b["sql"] for b in bodies[1:]] == ["SELECT 'two' AS b", f"INSERT INTO {t} (id, v) VALUES (7, 'x'), (8, 'y')",
                                              f"SELECT count(*) AS c FROM {t}"]
    assert bodies[0]["result"]["rows"] == [["1"]]
    assert bodies[0]["result"]["columns"][0]["name"] == "a"
    assert bodies[1]["result"]["rows"] == [["two"]]
    assert bodies[1]["result"]["columns"][0]["name"] == "b"
    assert bodies[2]["tag"] == "INSERT 0 2" and bodies[2]["rows"] == 2
    assert bodies[3]["result"]["rows"] == [["2"]] and bodies[3]["tag"] == "SELECT 1"


def test_copy_to_stdout(agw, trail, table):
    t = table(3)

    def fn(c):
        with c.cursor() as cur:
            with cur.copy(f"COPY (SELECT id, v FROM {t} ORDER BY id) TO STDOUT") as cp:
                return b"".join(bytes(d) for d in cp)
    _, _, stmts, _, data = run_session(agw, trail, fn)
    assert data == b"1\trow 1\n2\trow 2\n3\trow 3\n"
    b = stmts[0]["body"]
    assert b["tag"] == "COPY 3" and b["rows"] == 3
    res = b["result"]
    assert res["columns"] == [{"name": "COPY"}] or [c["name"] for c in res["columns"]] == ["COPY"]
    lines = [row[0].rstrip("\n") if isinstance(row[0], str) else row[0] for row in res["rows"]]
    assert all(len(row) == 1 for row in res["rows"]), res["rows"]
    assert lines == ["1\trow 1", "2\trow 2", "3\trow 3"], res["rows"]


def test_copy_from_stdin(agw, trail, table, pg):
    t = table(0)

    def fn(c):
        with c.cursor() as cur:
            with cur.copy(f"COPY {t} (id, v) FROM STDIN") as cp:
                for i in range(1, 5):
                    cp.write_row((i, f"copied {i}"))
    _, _, stmts, _, _ = run_session(agw, trail, fn)
    with pg.super_connect() as c:
        assert c.execute(f"SELECT count(*) FROM {t}").fetchone() == (4,)
    b = stmts[0]["body"]
    assert b["sql"] == f"COPY {t} (id, v) FROM STDIN"
    assert b["tag"] == "COPY 4" and b["rows"] == 4
    assert b["decision"]["action"] == "allow"


def test_write_tags_and_numbering(agw, trail, table):
    t = table(0)
    sqls = [f"INSERT INTO {t} (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
            f"UPDATE {t} SET v = 'z' WHERE id >= 2",
            f"INSERT INTO {t} (id, v) VALUES (10, 'p') RETURNING id",
            "SELECT 1"]

    def fn(c):
        for s in sqls:
            c.execute(s)
    _, _, stmts, end, _ = run_session(agw, trail, fn)
    bodies = [s["body"] for s in stmts]
    assert [b["sql"] for b in bodies] == sqls
    assert [b["tag"] for b in bodies] == ["INSERT 0 3", "UPDATE 2", "INSERT 0 1", "SELECT 1"]
    assert [b["rows"] for b in bodies] == [3, 2, 1, 1]
    assert bodies[2]["result"]["rows"] == [["10"]]
    assert [b["n"] for b in bodies] == [1, 2, 3, 4]
    assert end["body"]["statements"] == 4
    seqs = [s["seq"] for s in stmts]
    assert seqs == sorted(seqs)


def test_pipeline_statements(agw, trail):
    def fn(c):
        with c.pipeline():
            curs = [c.execute("SELECT %s::int * 2 AS dbl", (i,)) for i in (1, 2, 3)]
        return [cur.fetchone()[0] for cur in curs]
    _, _, stmts, _, res = run_session(agw, trail, fn)
    assert res == [2, 4, 6]
    bodies = [s["body"] for s in stmts]
    assert len(bodies) == 3
    assert [b["result"]["rows"] for b in bodies] == [[["2"]], [["4"]], [["6"]]]
    assert [b["n"] for b in bodies] == sorted(b["n"] for b in bodies)
    assert len({b["n"] for b in bodies}) == 3


def bind_msg(portal, stmt, *params):
    """A Bind of text parameters, results in text."""
    body = pgwire.cstr(portal) + pgwire.cstr(stmt) + struct.pack("!HH", 0, len(params))
    for p in params:
        body += struct.pack("!I", len(p)) + p.encode()
    return pgwire.msg(b"B", body + struct.pack("!H", 0))


def execute_msg(portal):
    return pgwire.msg(b"E", pgwire.cstr(portal) + struct.pack("!I", 0))


def parse_msg(name, sql):
    return pgwire.msg(b"P", pgwire.cstr(name) + pgwire.cstr(sql) + struct.pack("!H", 0))


def raw_session(gw, user, app):
    conn = pgwire.RawConn(gw.host, gw.port, timeout=30)
    conn.startup(user, "app", LOCAL_USERS[user], extra={"application_name": app})
    return conn


def sql_params_tags(trail, app):
    _, stmts, _ = session_records(trail, session_id_of(trail, app))
    return stmts, [(s["body"]["sql"], s["body"]["params"], s["body"].get("tag")) for s in stmts]


def test_pipelined_texts_stay_with_their_statement(agw, trail):
    """Records share a statement's SQL, a portal's parameters and a decision rather than
    copying them. In one pipeline a prepared statement is executed, closed and prepared
    again with other SQL, and portals are bound and replaced before any answer came back:
    every record still shows the SQL and parameters its own Execute ran with."""
    sql1, sql2 = "SELECT $1::int AS a", "SELECT $1::text AS b, 'x' AS c"
    group = (pgwire.msg(b"P", pgwire.cstr("s1") + pgwire.cstr(sql1) + struct.pack("!H", 0))
             + bind_msg("", "s1", "1") + execute_msg("")
             + pgwire.msg(b"C", b"S" + pgwire.cstr("s1"))
             + pgwire.msg(b"P", pgwire.cstr("s1") + pgwire.cstr(sql2) + struct.pack("!H", 0))
             + bind_msg("", "s1", "two") + execute_msg("")
             + bind_msg("p2", "s1", "three") + bind_msg("", "s1", "four") + execute_msg("p2") + execute_msg("")
             + pgwire.msg(b"S"))
    app = app_name("texts")
    conn = pgwire.RawConn(agw.host, agw.port, timeout=30)
    conn.startup("alice", "app", LOCAL_USERS["alice"], extra={"application_name": app})
    try:
        msgs = conn.exchange(group)
        conn.terminate()
    finally:
        conn.close()
    assert [m[0] for m in msgs].count(b"D") == 4, msgs
    _, stmts, _ = session_records(trail, session_id_of(trail, app))
    got = [(s["body"]["sql"], s["body"]["params"], s["body"]["result"]["rows"]) for s in stmts]
    assert got == [(sql1, ["1"], [["1"]]),
                   (sql2, ["two"], [["two", "x"]]),
                   (sql2, ["three"], [["three", "x"]]),
                   (sql2, ["four"], [["four", "x"]])], got
    assert all(s["body"]["decision"]["action"] == "allow" for s in stmts)
    agw.assert_serves()


def test_hostile_close_messages(agw, trail):
    """Close messages the audit reads to forget a statement name: without a terminator,
    empty, of an unknown kind, with a 100 KB name. Each gets the server's clear error (or,
    for the name PostgreSQL will not take, the end of that session), and the gateway keeps
    recording and serving."""
    for body, sqlstate in ((b"S" + b"no-terminator", "08P01"), (b"S", "08P01"),
                           (b"X" + pgwire.cstr("s1"), "08P01"), (b"S" + pgwire.cstr("n" * 100000), None)):
        conn = pgwire.RawConn(agw.host, agw.port, timeout=30)
        conn.startup("alice", "app", LOCAL_USERS["alice"])
        try:
            if sqlstate:
                msgs = conn.exchange(pgwire.msg(b"C", body) + pgwire.msg(b"S"))
                assert [m[0] for m in msgs] == [b"E", b"Z"], msgs
                assert pgwire.parse_fields(msgs[0][1])["C"] == sqlstate, msgs
                rows, _, err, _ = conn.query("SELECT 'after close'")
                assert err is None and rows == [["after close"]]
            else:
                conn.send(pgwire.msg(b"C", body) + pgwire.msg(b"S"))
                typ, fields = conn.read_msg()
                assert typ == b"E", (typ, fields)
                conn.expect_closed()
        finally:
            conn.close()
    _, _, stmts, _, _ = run_session(agw, trail, lambda c: c.execute("SELECT 'still recorded'").fetchall())
    assert stmts[-1]["body"]["sql"] == "SELECT 'still recorded'"
    agw.assert_serves()


def test_session_start_and_end(agw, trail):
    def fn(c):
        c.execute("SELECT 1")
        c.execute("SELECT repeat('x', 1000)")
        c.execute("SELECT 3")
    sid, start, stmts, end, _ = run_session(agw, trail, fn)
    s = start["body"]
    assert start["user_name"] == "alice" and start["database"] == "app"
    assert start["session_id"] == sid == s["session_id"]
    assert s["user"] == "alice"
    assert s["auth_method"] == "scram"
    assert s["subject"] == "alice"
    assert s["groups"] == ["testers"]
    assert re.fullmatch(r"127\.0\.0\.1(:\d+)?", s["client_address"]), s["client_address"]
    assert s["application_name"].startswith("aud-alice-")
    assert s["database"] == "app"
    assert s.get("role") in (None, "")
    pol = s["policies"]
    assert (GUARD in pol) if isinstance(pol, list) else (GUARD in str(pol).split(",")), pol
    assert s["client_tls"] is False
    assert isinstance(s["gateway_session"], int)
    e = end["body"]
    assert e["session_id"] == sid and e["user"] == "alice"
    assert e["reason"]
    assert e["bytes_from_client"] > 0 and e["bytes_from_server"] > 1000
    assert e["statements"] == 3
    assert e["duration_ms"] >= 0
    assert start["seq"] < stmts[0]["seq"] < end["seq"]


def test_unrestricted_user_session(agw, trail):
    sid, start, stmts, end, _ = run_session(agw, trail, lambda c: c.execute("SELECT 5"),
                                            user="bob")
    assert start["body"]["user"] == "bob"
    pol = start["body"]["policies"]
    assert not pol, pol
    assert stmts[0]["body"]["decision"]["action"] == "allow"
    assert stmts[0]["body"]["result"]["rows"] == [["5"]]


def test_login_failed(agw, trail):
    app = app_name("badpw")
    with pytest.raises(psycopg.OperationalError):
        agw.connect(user="alice", password="wrong-password-" + SFX, application_name=app)
    with pytest.raises(psycopg.OperationalError):
        agw.connect(user=f"ghost{SFX}", password="whatever", application_name=app)

    def find():
        rs = [r for r in trail.rows(kind="login_failed")]
        got_alice = [r for r in rs if r["body"].get("user") == "alice"]
        got_ghost = [r for r in rs if r["body"].get("user") == f"ghost{SFX}"]
        return (got_alice, got_ghost) if got_alice and got_ghost else None
    alice, ghost = wait_for(find, what="login_failed records")
    b = alice[-1]["body"]
    assert b["database"] == "app"
    assert b["method"] == "scram"
    assert b["reason"]
    assert b["client_address"].startswith("127.0.0.1")
    assert "wrong-password" not in alice[-1]["raw_body"]
    assert ghost[-1]["body"]["reason"]


def test_multi_statement_query_records_each_text_once(agw, trail):
    """Every part of a Query with several statements carried the whole text: N statements
    in L bytes made N * L bytes of records (here 2,000 parts of 30 KB: 60 MB, from one
    message; a 64 MiB message of "SELECT;" would have made some 10^14). One client could so
    stall its worker and push the other sessions' records past audit.max_pending. Now the
    first record carries the whole text and each later one its own statement, split by the
    PostgreSQL parser: semicolons in strings, comments and dollar quotes do not split. A
    Query the server might read otherwise (a backslash, a byte past ASCII) or one over
    256 KiB is not split: its later parts carry no text, and every part is still recorded."""
    app = app_name("parts")
    tricky = "SELECT 'a;b' AS s; /* c; */ SELECT $$x;y$$ AS d; SELECT ';' AS e;\n  SELECT 4 -- ;\n"
    many = ";".join(f"SELECT {i} AS v{i}" for i in range(2000))
    unsplit = ["SELECT E'\\n' AS a; SELECT 2 AS b", "SELECT 'M\u00fcller' AS a; SELECT 2 AS b",
               ";".join(f"SELECT {i} AS long_column_name_{i}" for i in range(8000))]
    assert len(unsplit[2]) > 256 * 1024
    with agw.connect(application_name=app) as c:
        for q in [tricky, many] + unsplit:
            c.execute(q)
    sid = session_id_of(trail, app)
    _, stmts, _ = session_records(trail, sid)
    assert [s["body"].get("sql") for s in stmts[:4]] == [tricky, "/* c; */ SELECT $$x;y$$ AS d",
                                                          "SELECT ';' AS e", "SELECT 4 -- ;\n"], stmts[:4]
    big = stmts[4:2004]
    assert len(big) == 2000
    assert big[0]["body"]["sql"] == many
    assert all(b["body"]["sql"] == f"SELECT {i} AS v{i}" for i, b in enumerate(big[1:], 1)), big[1]["body"]
    total = sum(len(b["raw_body"]) for b in big)
    assert total < 2 * len(many) + 2000 * 500, total
    rest = [s["body"] for s in stmts[2004:]]
    assert len(rest) == 2 + 2 + 8000
    assert [rest[0]["sql"], rest[2]["sql"], rest[4]["sql"]] == unsplit
    later = rest[1:2] + rest[3:4] + rest[5:]
    assert all("sql" not in b and b["tag"] == "SELECT 1" for b in later), later[0]
    assert later[0]["result"]["columns"][0]["name"] == "b"


def test_parts_are_not_split_where_the_server_read_otherwise(agw, trail):
    """bob is unrestricted, so he may turn standard_conforming_strings off. The server then
    reads "SELECT 'x\\'; SELECT 1 AS planted; --' AS s; SELECT 2 AS real" as two statements,
    the second "SELECT 2 AS real"; the gateway's parser, with it on, would split off
    "SELECT 1 AS planted", a statement that never ran, and record it as the second part.
    The gateway may hear of the setting only after such a Query has run (a reload, a SET
    sent without a Sync), so a Query with a backslash is not split: its later parts carry
    no text of their own (the first part's is the Query as sent), and replay says so."""
    app = app_name("lexer")
    q = "SELECT 'x\\'; SELECT 1 AS planted; --' AS s; SELECT 2 AS real"
    with agw.connect(user="bob", application_name=app) as c:
        c.execute("SET standard_conforming_strings = off")
        c.execute(q)
    sid = session_id_of(trail, app)
    _, stmts, _ = session_records(trail, sid)
    bodies = [st["body"] for st in stmts]
    assert [b.get("part") for b in bodies[1:]] == [None, 2], bodies
    assert bodies[1]["sql"] == q
    assert "sql" not in bodies[2] and bodies[2]["tag"] == "SELECT 1", bodies[2]
    assert bodies[2]["result"]["columns"][0]["name"] == "real", bodies[2]
    assert "planted" not in json.dumps(bodies[2])
    r = cli("sessions", "replay", "--config", agw.config_path, sid)
    assert r.returncode == 0 and "its text is in the Query above" in r.stdout, r.stdout + r.stderr


def test_multi_statement_error_stops_parts(agw, trail):
    app = app_name("multierr")
    r = psql(agw, "SELECT 'first' AS f; SELECT 1/0; SELECT 'never' AS n", app=app)
    assert r.returncode != 0 and "division by zero" in r.stderr, r.stderr
    sid = session_id_of(trail, app)
    _, stmts, _ = session_records(trail, sid)
    bodies = [s["body"] for s in stmts]
    assert bodies[0]["result"]["rows"] == [["first"]]
    assert bodies[1]["part"] == 2 and bodies[1]["error"]["sqlstate"] == "22012"
    # the third part never ran: no record claims it completed
    assert not any(b.get("tag") and "never" in json.dumps(b.get("result")) for b in bodies[2:])


def test_transaction_block_statements(agw, trail, table):
    t = table(1)

    def fn(c):
        c.execute("BEGIN")
        c.execute(f"UPDATE {t} SET v = 'in tx' WHERE id = 1")
        with pytest.raises(psycopg.Error):
            c.execute("SELECT nosuchcolumn FROM " + t)
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT 1")
        c.execute("ROLLBACK")
        return ei.value
    _, _, stmts, end, e = run_session(agw, trail, fn)
    assert e.sqlstate == "25P02"
    bodies = [s["body"] for s in stmts]
    assert [b.get("tag") for b in bodies] == ["BEGIN", "UPDATE 1", None, None, "ROLLBACK"]
    assert bodies[2]["error"]["sqlstate"] == "42703"
    assert bodies[3]["error"]["sqlstate"] == "25P02"
    assert end["body"]["statements"] == 5


def test_bind_error_recorded(agw, trail):
    def fn(c):
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT %t::int AS x", ("not a number",))
        return ei.value
    _, _, stmts, end, e = run_session(agw, trail, fn)
    assert e.sqlstate == "22P02"
    assert len(stmts) == 1, ("no statement record for a statement that failed at Bind; "
                             f"session_end says statements={end['body']['statements']}")
    b = stmts[0]["body"]
    assert b["sql"] == "SELECT $1::int AS x"
    assert b["params"] == ["not a number"]
    assert b["error"]["sqlstate"] == "22P02"
    assert b["error"]["message"] == e.diag.message_primary


def test_syntax_errors_recorded(agw, trail):
    """bob is unrestricted, so the server itself rejects these: at Parse for the extended
    protocol, in answer to the Query for the simple one."""
    def fn(c):
        errs = []
        for sql, params in ((f"SELEC 'simple-{SFX}'", None), (f"SELEC 'ext-{SFX}', %s", (1,))):
            with pytest.raises(psycopg.Error) as ei:
                c.execute(sql, params)
            errs.append(ei.value)
        c.execute("SELECT 'after'")
        return errs
    _, _, stmts, end, errs = run_session(agw, trail, fn, user="bob")
    assert [e.sqlstate for e in errs] == ["42601", "42601"]
    bodies = [s["body"] for s in stmts]
    assert len(bodies) == 3, bodies
    assert bodies[0]["sql"] == f"SELEC 'simple-{SFX}'"
    assert bodies[1]["sql"] == f"SELEC 'ext-{SFX}', $1"
    for b in bodies[:2]:
        assert b["error"]["sqlstate"] == "42601", b
    assert [b["n"] for b in bodies] == [1, 2, 3]
    assert end["body"]["statements"] == 3


def test_large_sql_and_param_recorded_whole(agw, trail):
    big = "x" * 200_000
    sql_simple = f"SELECT length('{big}') AS l"

    def fn(c):
        a = c.execute(sql_simple).fetchone()[0]
        b = c.execute("SELECT length(%t) AS l", (big,)).fetchone()[0]
        return a, b
    _, _, stmts, _, (a, b) = run_session(agw, trail, fn)
    assert a == b == 200_000
    assert stmts[0]["body"]["sql"] == sql_simple
    assert stmts[1]["body"]["params"] == [big]
    assert stmts[1]["body"]["result"]["rows"] == [["200000"]]


def _ext_msgs(sql, params=(), max_rows=0, name=""):
    m = pgwire.msg
    out = m(b"P", pgwire.cstr(name) + pgwire.cstr(sql) + struct.pack("!H", 0))
    b = pgwire.cstr("") + pgwire.cstr(name) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        v = str(p).encode()
        b += struct.pack("!i", len(v)) + v
    b += struct.pack("!H", 0)
    out += m(b"B", b)
    out += m(b"D", b"P" + pgwire.cstr(""))
    out += m(b"E", pgwire.cstr("") + struct.pack("!I", max_rows))
    return out


def _read_until_ready(conn):
    types = []
    while True:
        typ, body = conn.read_msg()
        types.append(typ.decode())
        if typ == b"Z":
            return types


def test_portal_suspended_execute(agw, trail):
    """Execute with a row limit, then the rest of the portal (as JDBC does with a fetch
    size): the statement is recorded, with every row the client received counted."""
    app = app_name("portal")
    conn = pgwire.RawConn(agw.host, agw.port, timeout=30)
    conn.startup("alice", "app", LOCAL_USERS["alice"], extra={"application_name": app})
    try:
        conn.send(pgwire.msg(b"Q", pgwire.cstr("BEGIN")))
        _read_until_ready(conn)
        sql = f"SELECT g AS portal_{SFX} FROM generate_series(1, $1::int) g"
        conn.send(_ext_msgs(sql, (7,), max_rows=3)
                  + pgwire.msg(b"E", pgwire.cstr("") + struct.pack("!I", 0))
                  + pgwire.msg(b"S"))
        types = _read_until_ready(conn)
        assert types.count("D") == 7 and "s" in types and "C" in types, types
        conn.send(pgwire.msg(b"Q", pgwire.cstr("COMMIT")))
        _read_until_ready(conn)
        conn.terminate()
    finally:
        conn.close()
    sid = session_id_of(trail, app)
    _, stmts, _ = session_records(trail, sid)
    mine = [s["body"] for s in stmts if s["body"]["sql"] == sql]
    assert mine, [s["body"]["sql"] for s in stmts]
    assert sum(b["rows_sent"] for b in mine) == 7, mine
    assert not any(b.get("error") for b in mine), mine
    assert any(b.get("tag") == "SELECT 4" for b in mine), mine
    assert all(b["params"] == ["7"] for b in mine), mine


def test_cut_off_pipeline_records(agw, trail, table, pg):
    """Extended protocol: the Execute of a statement cut off at max_rows, then an INSERT's
    before the same Sync. The server ran both (it had the whole answer before the cut, so
    no cancel went); the client got the error and nothing of the INSERT, and a WARNING that
    it is committed. Both are recorded, the INSERT withheld."""
    t = table(0)
    app = app_name("cutpipe")
    conn = pgwire.RawConn(agw.host, agw.port, timeout=30)
    conn.startup("carol", "app", CAROL_PW, extra={"application_name": app})
    try:
        conn.send(_ext_msgs("SELECT g FROM generate_series(1, 10) g")
                  + _ext_msgs(f"INSERT INTO {t} (id, v) VALUES ($1::int, 'piped')", (7,))
                  + pgwire.msg(b"S"))
        got = []
        while True:
            typ, body = conn.read_msg()
            got.append((typ.decode(), body))
            if typ == b"Z":
                break
        types = [k for k, _ in got]
        assert types == ["1", "2", "T"] + ["D"] * CAP_ROWS + ["E", "N", "Z"], types
        assert b"the result exceeds max_rows" in got[-3][1] and b"INSERT 0 1" in got[-2][1], got[-3:]
        conn.terminate()
    finally:
        conn.close()
    with pg.super_connect() as c:
        assert c.execute(f"SELECT id, v FROM {t}").fetchall() == [(7, "piped")]
    _, stmts, _ = session_records(trail, session_id_of(trail, app))
    cut, later = [s["body"] for s in stmts][-2:]
    assert cut["sql"].startswith("SELECT g") and cut["rows_sent"] == CAP_ROWS and cut["tag"] == "SELECT 10", cut
    assert cut["error"]["sqlstate"] == "42501" and "withheld" not in cut, cut
    assert later["sql"].startswith("INSERT") and later["params"] == ["7"], later
    assert later["tag"] == "INSERT 0 1" and later["withheld"] is True and later["rows_sent"] == 0, later


def test_cut_off_record_kept_when_the_session_ends_first(agw, trail, pg):
    """The cut-off statement's record waits for the statement's end; a client that hangs up
    after the refusal, while the statement still runs upstream, must not take the record
    with it: it is written at the session's end, before session_end."""
    app = app_name("cuthangup")
    # The gateway's cancel must not end the statement first (its error would bring the
    # record out the usual way): this sleep shrugs a cancel off and sleeps on.
    fn = tname("unstoppable")
    su_exec(pg, f"CREATE FUNCTION {fn}(s float8) RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
                f"PERFORM pg_sleep(s); EXCEPTION WHEN query_canceled THEN PERFORM pg_sleep(s); END $$")
    conn = pgwire.RawConn(agw.host, agw.port, timeout=30)
    conn.startup("carol", "app", CAROL_PW, extra={"application_name": app})
    try:
        # Rows past PostgreSQL's 8 KiB send buffer reach the gateway while the last one sleeps.
        sql = (f"SELECT repeat('x', 5000), CASE WHEN g = {CAP_ROWS + 3} THEN {fn}(1.5) END "
               f"FROM generate_series(1, {CAP_ROWS + 3}) g")
        conn.send(pgwire.msg(b"Q", pgwire.cstr(sql)))
        while conn.read_msg()[0] != b"E":
            pass
    finally:
        conn.close()
    sid = session_id_of(trail, app)
    start, stmts, end = session_records(trail, sid)
    assert end is not None, "no session_end"
    [b] = [s["body"] for s in stmts]
    assert b["sql"] == sql and b["rows_sent"] == CAP_ROWS, b
    assert b["error"]["message"].endswith(f"the result exceeds max_rows {CAP_ROWS}"), b
    assert stmts[0]["seq"] < end["seq"], (stmts[0]["seq"], end["seq"])
    su_exec(pg, f"DROP FUNCTION {fn}(float8)")


def test_copy_to_stdout_truncated(agw, trail):
    def fn(c):
        with c.cursor() as cur:
            with cur.copy("COPY (SELECT g FROM generate_series(1, 50) g) TO STDOUT") as cp:
                return b"".join(bytes(d) for d in cp)
    _, _, stmts, _, data = run_session(agw, trail, fn)
    assert data.count(b"\n") == 50
    b = stmts[0]["body"]
    assert b["tag"] == "COPY 50" and b["rows"] == 50
    assert b["result"]["truncated"] is True
    assert [r[0].rstrip("\n") for r in b["result"]["rows"]] == ["1", "2", "3", "4", "5"]


def test_session_end_when_client_vanishes(agw, trail):
    app = app_name("vanish")
    c = agw.connect(application_name=app)
    c.execute("SELECT 'about to vanish'")
    sid = session_id_of(trail, app)
    # drop the connection without a Terminate message
    sock = socket.socket(fileno=os.dup(c.pgconn.socket))
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    _, stmts, end = session_records(trail, sid)
    assert end["body"]["reason"], end["body"]
    assert end["body"]["statements"] == 1
    try:
        c.close()
    except Exception:  # noqa: BLE001
        pass


def test_session_end_log_agrees(agw, trail):
    sid, start, _, end, _ = run_session(agw, trail, lambda c: c.execute("SELECT 'log'"))
    gs = start["body"]["gateway_session"]
    pat = rf"event=session_end session={gs} .*bytes_in=(\d+) bytes_out=(\d+)"
    assert agw.wait_log(pat), f"no session_end log line for session {gs}"
    m = re.search(pat, agw.log_text())
    assert (int(m[1]), int(m[2])) == (end["body"]["bytes_from_client"],
                                      end["body"]["bytes_from_server"])


def test_module_trail_chain_links(agw_state):
    gw, trail, _ = agw_state
    run_session(gw, trail, lambda c: c.execute("SELECT 'one more'"))
    rows = trail.rows()
    assert rows
    text = json.dumps([r["raw_body"] for r in rows])
    for secret in list(LOCAL_USERS.values()) + list(ROLE_PW.values()):
        assert secret not in text, "a password is in the audit trail"
    check_chain_links(rows)
    assert rows[0]["seq"] == 1 and rows[0]["prev_tag"] in ("", None)


# ---------------------------------------------------------------------------- 2. chain

def make_trail(factory, tmp_path, sessions=2, audit=None, pause=0):
    """A stopped gateway with a few sessions in a fresh SQLite trail (pause: seconds
    between sessions, longer than a commit batch)."""
    db = tmp_path / "chain.db"
    gw = start_audited(factory, f"sqlite:{db}", dict(node="chainer", **(audit or {})))
    for i in range(sessions):
        with gw.connect(application_name=app_name("chain")) as c:
            c.execute("SELECT %s::int AS i, 'chain' AS what", (i,))
            c.execute(f"SELECT {i} + 1")
        time.sleep(pause)
    assert gw.stop() == 0
    trail = SqliteTrail(db)
    rows = trail.rows()
    assert len(rows) == sessions * 4, [(r["seq"], r["kind"]) for r in rows]
    return gw, trail


def test_verify_ok_on_fresh_trail(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path)
    check_chain_links(trail.rows())
    assert_verify_ok(gw.config_path)
    assert_verify_ok(gw.config_path, "--node", "chainer")
    assert_verify_ok(gw.config_path, "--key", str(trail.db) + ".key")


def test_verify_ok_after_large_batches(gateway_factory, tmp_path):
    """Thousands of records reach the writer within one flush: batches far larger than the
    writer's first scratch (256 records) still chain and verify."""
    db = tmp_path / "large.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", dict(node="large"))
    n = 3000
    with gw.connect(application_name=app_name("large")) as c:
        c.execute(";".join(f"SELECT {i}" for i in range(n)))
    assert gw.stop() == 0
    trail = SqliteTrail(db)
    rows = trail.rows()
    assert len([r for r in rows if r["kind"] == "statement"]) == n
    check_chain_links(rows)
    assert_verify_ok(gw.config_path)


def test_verify_wrong_key_fails(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=1)
    other = tmp_path / "other.key"
    other.write_text(secrets.token_hex(32) + "\n")
    os.chmod(other, 0o600)
    r = verify(gw.config_path, "--key", other)
    assert r.returncode == 1 and "seq=1" in r.stdout + r.stderr, r.stdout + r.stderr


def test_verify_without_the_key_fails(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=1)
    r = verify(gw.config_path, "--key", tmp_path / "no-such.key")
    assert r.returncode not in (0, None) and not re.search(r"^ok:", r.stdout, re.M), r.stdout


@pytest.mark.parametrize("sized", [True, False], ids=["frame_with_size", "frame_without_size"])
def test_verify_detects_altered_body(gateway_factory, tmp_path, sized):
    """Also when the batch is compressed again into a frame that does not say its size
    (zstd reading a pipe writes those): verify still reads it and names the record."""
    gw, trail = make_trail(gateway_factory, tmp_path)
    victim = [r for r in trail.rows() if r["kind"] == "statement"][1]
    body = dict(victim["body"], sql="SELECT 'nothing to see here'")

    def alter(line):
        a, b = SqliteTrail.body_span(line)
        return line[:a] + json.dumps(body, separators=(",", ":")) + line[b:]
    trail.edit_record(victim["seq"], alter, sized=sized)
    assert trail.rows(seq=victim["seq"])[0]["body"]["sql"] == "SELECT 'nothing to see here'"
    assert_verify_fails(gw.config_path, victim["seq"], ["altered"])


@pytest.mark.parametrize("frame", ["bomb", "cut_short"])
def test_verify_refuses_an_unsized_frame_it_cannot_read(gateway_factory, tmp_path, frame):
    """A hostile batch: a frame without its size that inflates past 256 MiB, or that ends
    early. Verify reads up to the bound, fails and names the batch's first record."""
    gw, trail = make_trail(gateway_factory, tmp_path)
    first = trail.batches()[0][0]
    packer = zstandard.ZstdCompressor(level=1, write_content_size=False)
    blob = (packer.compress(b"[" + b" " * (300 << 20)) if frame == "bomb"
            else packer.compress(("[\n" + ",\n".join(trail.batches()[0][2]) + "\n]").encode())[:-8])
    trail.execute("UPDATE audit_batches SET records = ? WHERE first_seq = ?", (blob, first))
    assert_verify_fails(gw.config_path, first, ["altered", "unreadable"])


def test_verify_reads_a_batch_compressed_again_without_its_size(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path)
    for first, _, ls in trail.batches():
        trail.rewrite(first, ls, sized=False)
    assert_verify_ok(gw.config_path)


def test_verify_detects_altered_indexed_column(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path)
    victim = [r for r in trail.rows() if r["kind"] == "session_start"][1]
    trail.edit_record(victim["seq"], lambda ln: ln.replace('"user":"alice"', '"user":"bob"', 1))
    assert trail.rows(seq=victim["seq"])[0]["user_name"] == "bob"
    assert_verify_fails(gw.config_path, victim["seq"], ["altered"])


def test_verify_detects_deleted_row(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path)
    rows = trail.rows()
    victim = rows[len(rows) // 2]
    trail.edit_record(victim["seq"], lambda ln: None)
    assert victim["seq"] not in {r["seq"] for r in trail.rows()}
    assert_verify_fails(gw.config_path, victim["seq"], ["deleted"])


def test_verify_detects_emptied_batch(gateway_factory, tmp_path):
    """A batch row left in place with its records taken out (also what deleting the only
    record of a batch leaves)."""
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=3, pause=0.2)
    batches = trail.batches()
    assert len(batches) >= 3, [b[0] for b in batches]
    first = batches[len(batches) // 2][0]
    trail.rewrite(first, [])
    assert first not in {r["seq"] for r in trail.rows()}
    assert_verify_fails(gw.config_path, first, ["deleted"])


def test_verify_detects_deleted_batch(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=3, pause=0.2)
    batches = trail.batches()
    assert len(batches) >= 3, [b[0] for b in batches]
    first = batches[len(batches) // 2][0]
    trail.execute("DELETE FROM audit_batches WHERE first_seq = ?", (first,))
    assert_verify_fails(gw.config_path, first, ["deleted"])


def test_verify_detects_inserted_row(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path)
    rows = trail.rows()
    last = rows[-1]
    stmt = [r for r in rows if r["kind"] == "statement"][-1]
    body = dict(stmt["body"], sql="DROP TABLE evidence", n=99)
    seq = last["seq"] + 1
    trail.append_line(json.dumps({"seq": seq, "time": last["time"], "kind": "statement",
                                  "session_id": stmt["session_id"], "user": stmt["user_name"],
                                  "database": stmt["database"], "tag": secrets.token_hex(32),
                                  "record": body}, separators=(",", ":")))
    assert trail.rows()[-1]["seq"] == seq
    assert_verify_fails(gw.config_path, seq, ["inserted", "altered"])


def test_verify_detects_deleted_first_row(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=1)
    trail.edit_record(1, lambda ln: None)
    assert_verify_fails(gw.config_path, 1, ["deleted"])


def test_verify_detects_swapped_bodies(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path)
    a, b = [r for r in trail.rows() if r["kind"] == "statement"][:2]

    def put(body):
        def f(line):
            x, y = SqliteTrail.body_span(line)
            return line[:x] + body + line[y:]
        return f
    trail.edit_record(a["seq"], put(b["raw_body"]))
    trail.edit_record(b["seq"], put(a["raw_body"]))
    assert_verify_fails(gw.config_path, a["seq"], ["altered"])


def _list_ids(cfg, *args):
    r = cli("sessions", "list", "--config", cfg, "--json", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return [s["session_id"] for s in json.loads(r.stdout)]


@pytest.mark.parametrize("how", ["start_deleted", "start_user_altered", "start_rows_added",
                                 "session_batch_deleted", "max_time_backdated", "last_tag_altered"])
def test_verify_checks_what_the_readers_go_by(gateway_factory, tmp_path, how):
    """The SQLite store's readers find records through columns and tables the chain does not
    cover: audit_session_starts (sessions list), audit_sessions (replay), a batch's max_time
    (export --since), its last_seq/last_tag (the writer's head). Editing them hid a session
    or a batch from the readers while verify said ok; verify now checks them against the
    chained records and names what was changed."""
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=3, pause=0.2)
    cfg = gw.config_path
    starts = trail.rows(kind="session_start")
    victim = starts[1]
    sid = victim["session_id"]
    assert sid in _list_ids(cfg) and sid in _list_ids(cfg, "--user", "alice")
    last_batch = trail.batches()[-1][0]
    if how == "start_deleted":
        trail.execute("DELETE FROM audit_session_starts WHERE seq = ?", (victim["seq"],))
        assert sid not in _list_ids(cfg)
        words = ["audit_session_starts", sid]
    elif how == "start_user_altered":
        trail.execute("UPDATE audit_session_starts SET user_name = 'mallory' WHERE seq = ?", (victim["seq"],))
        assert sid not in _list_ids(cfg, "--user", "alice")
        words = ["audit_session_starts", sid]
    elif how == "start_rows_added":
        # Rows pointing at other records, newer than any session: a list with a limit is
        # filled with them and shows no session at all.
        stmts = trail.rows(kind="statement")
        c = sqlite3.connect(str(trail.db), timeout=10, isolation_level=None)
        batch_of = lambda seq: max(b for b, in c.execute("SELECT first_seq FROM audit_batches "
                                                           "WHERE first_seq <= ?", (seq,)))
        for r in stmts[:3]:
            c.execute("INSERT INTO audit_session_starts VALUES (?, ?, '2099-01-01T00:00:00.000000Z', ?, 'alice', 'app')",
                      (r["seq"], batch_of(r["seq"]), r["session_id"]))
        c.close()
        assert _list_ids(cfg, "--limit", "3") == []
        words = ["audit_session_starts", "added"]
    elif how == "session_batch_deleted":
        trail.execute("DELETE FROM audit_sessions WHERE session_id = ?", (sid,))
        r = cli("sessions", "replay", sid, "--config", cfg)
        assert "chain" not in r.stdout, r.stdout
        words = ["audit_sessions", sid]
    elif how == "max_time_backdated":
        trail.execute("UPDATE audit_batches SET max_time = '2000-01-01T00:00:00.000000Z' WHERE first_seq = ?",
                      (last_batch,))
        r = cli("audit", "export", "--config", cfg, "--since", "2001-01-01")
        assert r.returncode == 0 and not any(json.loads(ln)["seq"] >= last_batch
                                             for ln in r.stdout.splitlines()), r.stdout
        words = ["audit_batches", f"first_seq={last_batch}", "max_time"]
    else:
        trail.execute("UPDATE audit_batches SET last_tag = ? WHERE first_seq = ?", ("0" * 64, last_batch))
        words = ["audit_batches", f"first_seq={last_batch}", "last_tag"]
    r = verify(cfg)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and not re.search(r"^ok:", r.stdout, re.M), out
    failed = [ln for ln in out.splitlines() if ln.startswith("FAILED: node chainer: index: ")]
    assert failed and all(w in failed[0] for w in words), (words, out)


def restart(gw):
    """Starts a stopped Gateway again and waits for its new ready line."""
    n = gw.count_log(r"event=ready\b")
    gw.stopped_on_purpose = False
    gw.start()
    wait_for(lambda: gw.count_log(r"event=ready\b") > n, timeout=20,
             what="the restarted gateway's ready line")


def _v1_store(db, key, node, sessions):
    """A store of the earlier layout (a row per record in a table audit_records), chained
    here with Python's hmac, as a gateway before the batch layout wrote it."""
    c = sqlite3.connect(str(db), isolation_level=None)
    c.execute("CREATE TABLE audit_records (seq INTEGER PRIMARY KEY, node TEXT NOT NULL, "
              "time TEXT NOT NULL, kind TEXT NOT NULL, session_id TEXT NOT NULL, "
              "user_name TEXT NOT NULL, database TEXT NOT NULL, body TEXT NOT NULL, "
              "prev_tag TEXT NOT NULL, tag TEXT NOT NULL)")
    c.execute("CREATE INDEX audit_records_session ON audit_records (session_id)")
    k, prev, seq = key, "", 0
    for i in range(sessions):
        sid = f"{i:016x}"
        for kind, body in (("session_start", {"session_id": sid, "user": "alice", "database": "app",
                                               "application_name": f"v1-{i}", "auth_method": "scram",
                                               "groups": [], "client_address": "127.0.0.1:1"}),
                           ("statement", {"session_id": sid, "n": 1, "sql": f"SELECT 'v1 {i}'",
                                          "decision": {"action": "allow", "policy": "", "rule": ""},
                                          "duration_ms": 0.5, "rows_sent": 1, "tag": "SELECT 1",
                                          "rows": 1}),
                           ("session_end", {"session_id": sid, "user": "alice", "reason": "done",
                                            "statements": 1, "bytes_from_client": 1,
                                            "bytes_from_server": 2, "duration_ms": 3})):
            seq += 1
            t = f"2026-01-01T00:00:{seq:02d}.000000Z"
            b = json.dumps(body, separators=(",", ":"))
            fields = [node, str(seq), t, kind, sid, "alice", "app", b, prev]
            msg = b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in fields)
            tag = hmac.new(k, msg, hashlib.sha256).hexdigest()
            c.execute("INSERT INTO audit_records VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (seq, node, t, kind, sid, "alice", "app", b, prev, tag))
            prev, k = tag, hashlib.sha256(k).digest()
    c.close()
    return seq, prev


def test_upgrade_from_row_per_record_layout(gateway_factory, tmp_path):
    """A store written before the batch layout: readable as it is, converted when a gateway
    starts on it, and its chain goes on unchanged."""
    db = tmp_path / "v1.db"
    key = secrets.token_bytes(32)
    Path(str(db) + ".key").write_text(key.hex() + "\n")
    os.chmod(str(db) + ".key", 0o600)
    last_seq, last_tag = _v1_store(db, key, "old", sessions=3)
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"node": "old"})
    assert gw.stop() == 0
    # converted when the gateway started: the same records and tags, in batches
    trail = SqliteTrail(db)
    rows = trail.rows()
    assert [r["seq"] for r in rows][:last_seq] == list(range(1, last_seq + 1))
    assert rows[last_seq - 1]["tag"] == last_tag
    c = sqlite3.connect(str(db))
    assert c.execute("SELECT count(*) FROM sqlite_master WHERE name = 'audit_records'").fetchone()[0] == 0
    c.close()
    assert_verify_ok(gw.config_path)
    restart(gw)
    with gw.connect(application_name=app_name("after-v1")) as c:
        c.execute("SELECT 'after the upgrade'")
    assert gw.stop() == 0
    rows = trail.rows()
    check_chain_links(rows)
    assert rows[last_seq]["prev_tag"] == last_tag
    assert_verify_ok(gw.config_path)
    listed = sessions_json(gw.config_path)
    assert {"v1-0", "v1-2"} <= {s.get("application_name") for s in listed}, listed


def test_reading_a_row_per_record_store(gateway_factory, tmp_path):
    """The CLI reads a store of the earlier layout without converting it."""
    db = tmp_path / "v1r.db"
    key = secrets.token_bytes(32)
    Path(str(db) + ".key").write_text(key.hex() + "\n")
    last_seq, _ = _v1_store(db, key, "old", sessions=2)
    c = gateway_factory.config()
    c["audit"] = {"store": f"sqlite:{db}", "node": "old"}
    cfg = tmp_path / "reader.yaml"
    cfg.write_text(to_yaml(c) + "\n")
    r = assert_verify_ok(cfg)
    assert f"{last_seq} records" in r.stdout, r.stdout
    assert {"v1-0", "v1-1"} == {s.get("application_name") for s in sessions_json(cfg)}
    c = sqlite3.connect(str(db))
    assert c.execute("SELECT type FROM sqlite_master WHERE name = 'audit_records'").fetchone()[0] == "table"
    c.close()
    # tampering with the old layout is still found
    c = sqlite3.connect(str(db), isolation_level=None)
    c.execute("UPDATE audit_records SET body = replace(body, 'v1 1', 'v1 X') WHERE seq = 5")
    c.close()
    assert_verify_fails(cfg, 5, ["altered"])


def test_chain_continues_after_restart(gateway_factory, tmp_path):
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=1)
    before = trail.rows()
    restart(gw)
    with gw.connect(application_name=app_name("again")) as c:
        c.execute("SELECT 'after restart'")
    assert gw.stop() == 0
    rows = trail.rows()
    assert len(rows) == len(before) + 3
    assert rows[:len(before)] == before
    check_chain_links(rows)
    assert rows[len(before)]["prev_tag"] == before[-1]["tag"]
    assert_verify_ok(gw.config_path)


def _head_file(trail):
    path = Path(str(trail.db) + ".key.head")
    lines = path.read_text().splitlines()
    assert [ln.split(" ")[0] for ln in lines] == ["node", "seq", "tag"], lines
    return path, lines[0][5:], int(lines[1][4:]), lines[2][4:]


def test_head_file_follows_the_chain(gateway_factory, tmp_path):
    """The gateway keeps the last record it committed next to its key: node, seq and tag of
    the store's last record once it stops; verify checks the store against it."""
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=2)
    path, node, seq, tag = _head_file(trail)
    last = trail.rows()[-1]
    assert (node, seq, tag) == ("chainer", last["seq"], last["tag"])
    assert os.stat(path).st_mode & 0o777 == 0o600
    r = assert_verify_ok(gw.config_path)
    assert f"the store holds the last record the gateway's head file names (seq {seq}" in r.stdout, r.stdout
    # An auditor's copy of the key, elsewhere: verify reads the head file next to it (none).
    copy = tmp_path / "elsewhere" / "audit.key"
    copy.parent.mkdir()
    shutil.copyfile(str(trail.db) + ".key", copy)
    r = assert_verify_ok(gw.config_path, "--key", copy)
    assert "head file" not in r.stdout and "Compare the head" in r.stdout, r.stdout
    r = assert_verify_ok(gw.config_path, "--key", copy, "--head", path)
    assert "head file names" in r.stdout, r.stdout
    r = verify(gw.config_path, "--head", tmp_path / "no-such.head")  # named, so it must be there
    assert r.returncode == 2 and "--head: no such file" in r.stderr and "ok:" not in r.stdout, r.stdout + r.stderr


def _copy_of_a_stopped_store(db, to):
    wal = Path(str(db) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "the stopped gateway left a WAL"
    shutil.copyfile(db, to)


@pytest.mark.parametrize("how", ["restored_from_an_older_copy", "wiped"])
def test_a_store_that_lost_records_while_stopped(gateway_factory, tmp_path, how):
    """Someone who can write the store (not the gateway's host) restores an older copy of it,
    or deletes it, while the gateway is stopped. The chain that is left verified ok: records
    cut off the end leave nothing behind. Verify now compares the store's end with the head
    file and names what is missing; the gateway, when it starts on such a store, chains a
    store_rewound record saying what was lost, and verify goes on naming it."""
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=1)
    kept = trail.rows()[-1]["seq"]
    older = tmp_path / "older.db"
    _copy_of_a_stopped_store(trail.db, older)
    restart(gw)
    for i in range(2):
        with gw.connect(application_name=app_name("lost")) as c:
            c.execute(f"SELECT 'lost-{i}-{SFX}'")
    assert gw.stop() == 0
    last = trail.rows()[-1]["seq"]
    assert last > kept
    for ext in ("", "-wal", "-shm"):
        Path(str(trail.db) + ext).unlink(missing_ok=True)
    if how == "restored_from_an_older_copy":
        shutil.copyfile(older, trail.db)
    else:
        kept = 0
    r = verify(gw.config_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert f"FAILED: node chainer: records seq={kept + 1}..{last}: deleted (the store ends at seq={kept}; the" \
           f" gateway's head file says it committed through seq={last}" in out, out

    restart(gw)
    assert gw.wait_log(rf"event=audit_store_rewound node=chainer store_seq={kept} head_file_seq={last}\b",
                       timeout=10), gw.log_text()[-2000:]
    with gw.connect(application_name=app_name("after")) as c:
        c.execute("SELECT 'after the loss'")
    assert gw.stop() == 0
    rows = trail.rows()
    check_chain_links(rows)
    rewound = [r for r in rows if r["kind"] == "store_rewound"]
    assert len(rewound) == 1 and rewound[0]["seq"] == kept + 1, rows
    assert rewound[0]["body"]["store_seq"] == kept and rewound[0]["body"]["written_seq"] == last
    assert _head_file(trail)[2] == rows[-1]["seq"]
    r = verify(gw.config_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and f"FAILED: node chainer: records seq={kept + 1}..{last}: lost (record" \
        f" seq={kept + 1}" in out, out
    # The standing loss does not hide an edit of the index made later.
    trail.execute("DELETE FROM audit_session_starts")
    r = verify(gw.config_path)
    assert r.returncode == 1 and "FAILED: node chainer: index: audit_session_starts" in r.stdout, r.stdout


def test_a_store_that_lost_its_last_record(gateway_factory, tmp_path):
    """One record lost (a failed login's) on an idle gateway: its store_rewound record takes
    the very seq the head file names. The head file must still follow it, or verify would
    call the store replaced and the next start would find a second loss."""
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=1)
    older = tmp_path / "older.db"
    _copy_of_a_stopped_store(trail.db, older)
    restart(gw)
    with pytest.raises(psycopg.OperationalError):
        gw.connect(password="not-the-password")
    wait_for(lambda: trail.rows()[-1]["kind"] == "login_failed", what="the login_failed record")
    assert gw.stop() == 0
    last = trail.rows()[-1]["seq"]
    for ext in ("", "-wal", "-shm"):
        Path(str(trail.db) + ext).unlink(missing_ok=True)
    shutil.copyfile(older, trail.db)
    assert trail.rows()[-1]["seq"] == last - 1
    restart(gw)
    assert gw.wait_log(r"event=audit_store_rewound", timeout=10), gw.log_text()[-2000:]
    wait_for(lambda: trail.rows()[-1]["kind"] == "store_rewound", what="the store_rewound record")
    assert gw.stop() == 0
    rows = trail.rows()
    assert rows[-1]["seq"] == last and _head_file(trail)[2:] == (last, rows[-1]["tag"]), rows[-1]
    r = verify(gw.config_path)
    assert r.returncode == 1 and f"records seq={last}..{last}: lost" in r.stdout, r.stdout
    restart(gw)
    assert gw.stop() == 0
    assert gw.count_log(r"event=audit_store_rewound") == 1, gw.log_text()[-2000:]


def test_a_stale_head_file_is_not_taken_for_the_chain(gateway_factory, tmp_path):
    """A head file left from an earlier key (the key and the store were deleted to start
    over): a gateway that stops before its first commit must not take it, at its next start,
    for the new chain's."""
    db = tmp_path / "fresh.db"
    Path(str(db) + ".key.head").write_text("node chainer\nseq 42\ntag " + "ab" * 32 + "\n")
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"node": "chainer"})
    assert gw.wait_log(r"event=audit_head_file_replaced .*reason=a new key", timeout=10), gw.log_text()[-2000:]
    assert gw.stop() == 0
    assert not Path(str(db) + ".key.head").exists()
    restart(gw)
    with gw.connect(application_name=app_name("fresh")) as c:
        c.execute("SELECT 1")
    assert gw.stop() == 0
    assert gw.count_log(r"event=audit_store_rewound") == 0, gw.log_text()[-2000:]
    assert_verify_ok(gw.config_path)


@pytest.mark.parametrize("content", ["garbage\n", "node chainer\nseq -5\ntag " + "0" * 64 + "\n",
                                     "node chainer\nseq 3\ntag xyz\n",
                                     "node \x1b[2Jx\nseq 3\ntag " + "0" * 64 + "\n", "directory", "fifo"],
                         ids=["garbage", "negative_seq", "not_hex", "escape_in_node", "directory", "fifo"])
def test_a_head_file_that_is_not_one_stops_the_start(gateway_factory, tmp_path, content):
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=1)
    path = Path(str(trail.db) + ".key.head")
    path.unlink()
    if content == "directory":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)  # would hang a reader that waits for a writer
    else:
        path.write_text(content)
    try:
        gw.start(timeout=10)
    except Exception:  # noqa: BLE001 - it may die before or after the start is noticed
        pass
    wait_for(lambda: not gw.alive(), 10, what="the gateway to refuse to start")
    assert "audit head file" in gw.log_text() and "remove the file to start without that check" in gw.log_text(), \
        gw.log_text()[-2000:]
    r = verify(gw.config_path)
    assert r.returncode == 2 and "audit head file" in r.stderr, r.stdout + r.stderr


def _key_steps(gw):
    """key_steps of the gateway's last audit_started line: the hashing steps its start took
    to derive the next record's key."""
    found = re.findall(r"event=audit_started .*\bkey_steps=(\d+)", gw.log_text())
    assert found, gw.log_text()[-2000:]
    return int(found[-1])


KEY_RUNG = 65536


def test_key_rungs_spare_the_start_a_walk(gateway_factory, tmp_path):
    """A gateway's start derived the next record's key from key(1), one hashing step per
    record ever written: a minute and more past a billion records. The keys every 65,536
    records are now kept in <key_file>.rungs, each line MACed under key(1), and a start
    walks from the last one. A line that does not verify is not used (nobody without key(1)
    can make one that does) and is rewritten; the chain goes on verifying either way."""
    db = tmp_path / "rungs.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", dict(node="rungs"))
    assert _key_steps(gw) == 0
    script = tmp_path / "one.sql"
    script.write_text("SELECT 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=LOCAL_USERS["alice"], PGCONNECT_TIMEOUT="10", LC_ALL="C")
    r = subprocess.run(["pgbench", "-n", "-h", gw.host, "-p", str(gw.port), "-U", "alice", "-f", str(script),
                        "-M", "prepared", "-c", "4", "-j", "2", "-t", str(KEY_RUNG // 4 + 100), "app"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert gw.stop() == 0
    head = SqliteTrail(db).rows()[-1]["seq"]
    assert head > KEY_RUNG
    path = Path(str(db) + ".key.rungs")
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and re.fullmatch(rf"{KEY_RUNG + 1} [0-9a-f]{{64}} [0-9a-f]{{64}}", lines[0]), lines
    assert os.stat(path).st_mode & 0o777 == 0o600
    good = path.read_text()

    restart(gw)
    assert _key_steps(gw) == head + 1 - (KEY_RUNG + 1)  # from the rung, not from key(1)
    assert gw.count_log(r"event=audit_rungs_file") == 0
    assert gw.stop() == 0

    # The rung's key altered: its MAC fails, so the start walks from key(1) and mends the file.
    k = lines[0].split(" ")[1]
    path.write_text(lines[0].replace(k, ("1" if k[0] == "0" else "0") + k[1:]) + "\n")
    restart(gw)
    assert gw.wait_log(r"event=audit_rungs_file_ignored .*line 1 is not the rung of seq=65537", timeout=5), \
        gw.log_text()[-2000:]
    assert _key_steps(gw) == head
    with gw.connect(application_name=app_name("after")) as c:
        c.execute("SELECT 'after the altered rung'")
    assert gw.stop() == 0
    assert path.read_text() == good
    check_chain_links(SqliteTrail(db).rows())
    assert_verify_ok(gw.config_path)

    # Not a plain file: not used, not written; the gateway and verify go on without it.
    path.unlink()
    path.mkdir()
    restart(gw)
    assert gw.wait_log(r"event=audit_rungs_file_ignored .*not a regular file", timeout=5), gw.log_text()[-2000:]
    assert _key_steps(gw) == SqliteTrail(db).rows()[-1]["seq"]
    with gw.connect(application_name=app_name("dir")) as c:
        c.execute("SELECT 'beside a directory'")
    assert gw.stop() == 0
    r = assert_verify_ok(gw.config_path)
    assert "audit rungs file" in r.stderr and "not a regular file" in r.stderr, r.stderr
    path.rmdir()

    # Another key's rungs, left by a fresh start (store and key gone): cut to nothing at once.
    path.write_text(good)
    for ext in ("", "-wal", "-shm", ".key", ".key.head"):
        Path(str(db) + ext).unlink(missing_ok=True)
    ignored = gw.count_log(r"event=audit_rungs_file_ignored")
    restart(gw)
    assert gw.count_log(r"event=audit_rungs_file_ignored .*line 1 is not the rung of seq=65537") == 2, \
        gw.log_text()[-2000:]
    assert gw.count_log(r"event=audit_rungs_file_ignored") == ignored + 1
    assert _key_steps(gw) == 0
    assert path.read_text() == ""
    assert gw.stop() == 0


# ---------------------------------------------------------------------------- 3. retention

def test_retention_prunes_and_chains(gateway_factory, tmp_path):
    db = tmp_path / "ret.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"retention": "2s", "node": "ret"})
    trail = SqliteTrail(db)
    with gw.connect(application_name=app_name("old")) as c:
        c.execute("SELECT 'old record'")
    old = wait_for(lambda: [r for r in trail.rows() if r["kind"] == "session_end"],
                   what="the first session's records")
    old_seqs = {r["seq"] for r in trail.rows() if r["kind"] != "prune"}
    time.sleep(4.5)
    with gw.connect(application_name=app_name("new")) as c:
        c.execute("SELECT 'new record'")

    def pruned():
        rows = trail.rows()
        seqs = {r["seq"] for r in rows}
        prunes = [r for r in rows if r["kind"] == "prune"]
        if prunes and not (old_seqs & seqs) and any("new record" in r["raw_body"] for r in rows):
            return rows
        return None
    rows = wait_for(pruned, timeout=8, what="old records pruned and a prune record")
    assert old
    prune = [r for r in rows if r["kind"] == "prune"][-1]
    assert prune["node"] == "ret"
    # the remaining records still link up (seq gaps only below the first kept record)
    kept = sorted(rows, key=lambda r: r["seq"])
    for a, b in zip(kept, kept[1:]):
        assert b["seq"] == a["seq"] + 1 and b["prev_tag"] == a["tag"], (a["seq"], b["seq"])
    assert gw.stop() == 0
    assert_verify_ok(gw.config_path)


def test_retention_does_not_trust_a_backdated_batch(gateway_factory, tmp_path):
    """Someone who can write the store (not the key) backdates the max_time of a recent batch,
    a column outside the chain. Retention picked its cut by that column, so the writer itself
    deleted the batch and everything before it under a genuine prune record, and verify said
    ok. The cut is now checked against the record's chained time: nothing is deleted, and
    verify names the edited column."""
    import sqlite3
    import zstandard
    db = tmp_path / "backdate.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"retention": "1h", "node": "bd"})
    for word in ("before", "hidden", "after"):
        with gw.connect(application_name=app_name(word)) as c:
            c.execute(f"SELECT 'marker-{word}-{SFX}'")
            time.sleep(0.3)
    trail = SqliteTrail(db)
    wait_for(lambda: any(f"marker-after-{SFX}" in r["raw_body"] for r in trail.rows()), what="the last record")
    assert gw.stop() == 0
    with sqlite3.connect(db) as con:
        first = [fs for fs, blob in con.execute("SELECT first_seq, records FROM audit_batches")
                 if f"marker-hidden-{SFX}".encode() in zstandard.ZstdDecompressor().decompress(blob)]
        assert first, "no batch holds the statement"
        con.execute("UPDATE audit_batches SET max_time = '2000-01-01T00:00:00.000000Z' WHERE first_seq = ?",
                    (first[0],))
    gw.start()  # a retention check runs at start
    assert gw.wait_log(r"event=audit_prune_refused", timeout=10), gw.log_text()[-2000:]
    assert gw.count_log(r"event=audit_pruned") == 0
    assert any(f"marker-hidden-{SFX}" in r["raw_body"] for r in trail.rows())
    assert gw.stop() == 0
    r = verify(gw.config_path)  # every record is there; the edited column is named
    assert r.returncode == 1 and f"audit_batches row first_seq={first[0]}: its max_time" in r.stdout, r.stdout


def test_an_implausible_head_is_refused(gateway_factory, tmp_path):
    """A head batch whose last_seq says 4e18: the key derivation would spin for ever before
    the gateway listens. It refuses to start, and says why."""
    import sqlite3
    db = tmp_path / "head.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"node": "hd"})
    with gw.connect() as c:
        c.execute("SELECT 1")
    assert gw.stop() == 0
    with sqlite3.connect(db) as con:
        con.execute("UPDATE audit_batches SET last_seq = 4000000000000000000"
                    " WHERE first_seq = (SELECT max(first_seq) FROM audit_batches)")
    try:
        gw.start(timeout=10)
    except Exception:  # noqa: BLE001 - it may die before or after the start is noticed
        pass
    wait_for(lambda: not gw.alive(), 10, what="the gateway to refuse to start")
    assert "which no chain reaches" in gw.log_text(), gw.log_text()[-2000:]


# ---------------------------------------------------------------------------- 4. strict durability

MARK = re.compile(r"sd-[0-9a-f]+-\d+-\d+")


def _load_then_kill(factory, tmp_path, pg, durability, threads=4, seconds=1.5):
    db = tmp_path / f"dur-{durability}.db"
    t = tname(f"dur_{durability}")
    make_table(pg, t, "id serial PRIMARY KEY, marker text NOT NULL")
    try:
        gw = start_audited(factory, f"sqlite:{db}", {"durability": durability})
        acked = []
        lock = threading.Lock()
        stop = threading.Event()
        tag = secrets.token_hex(3)
        errors = []

        def worker(k):
            try:
                c = gw.connect(application_name=app_name("dur"))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                return
            i = 0
            try:
                while not stop.is_set():
                    m = f"sd-{tag}-{k}-{i}"
                    c.execute(f"INSERT INTO {t} (marker) VALUES ('{m}')")
                    with lock:
                        acked.append(m)
                    i += 1
            except psycopg.Error:
                pass
            finally:
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass
        ths = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for th in ths:
            th.start()
        time.sleep(seconds)
        gw.kill()
        stop.set()
        for th in ths:
            th.join(30)
        assert not errors, errors
        with pg.super_connect() as c:
            upstream = {r[0] for r in c.execute(f"SELECT marker FROM {t}").fetchall()}
        recorded = set()
        for r in SqliteTrail(db).rows(kind="statement"):
            if r["body"].get("tag") == "INSERT 0 1":
                recorded.update(MARK.findall(r["body"].get("sql", "")))
        acked = set(acked)
        assert acked <= upstream
        return acked, recorded
    finally:
        su_exec(pg, f"DROP TABLE IF EXISTS {t}")


def test_strict_durability_survives_sigkill(gateway_factory, tmp_path, pg):
    acked, recorded = _load_then_kill(gateway_factory, tmp_path, pg, "strict")
    assert len(acked) > 20, f"only {len(acked)} statements acknowledged under load"
    lost = acked - recorded
    assert not lost, (f"{len(lost)} of {len(acked)} acknowledged statements are missing from "
                      f"the strict trail after SIGKILL, e.g. {sorted(lost)[:5]}")


def test_default_durability_sigkill_report(gateway_factory, tmp_path, pg):
    acked, recorded = _load_then_kill(gateway_factory, tmp_path, pg, "default")
    assert len(acked) > 20
    lost = acked - recorded
    print(f"\ndefault durability: {len(lost)} of {len(acked)} acknowledged statements "
          f"not in the trail after SIGKILL")


def test_strict_record_committed_before_result(gateway_factory, tmp_path):
    db = tmp_path / "strict.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"durability": "strict"})
    trail = SqliteTrail(db)
    with gw.connect(application_name=app_name("strict")) as c:
        for i in range(5):
            m = f"strict-{SFX}-{i}"
            assert c.execute(f"SELECT '{m}'").fetchone() == (m,)
            # no polling: the record must already be committed
            assert any(m in r["raw_body"] for r in trail.rows(kind="statement")), \
                f"statement {m} answered before its record was committed"
        with pytest.raises(psycopg.Error):
            c.execute(f"SELECT 1/0 AS strict_err_{SFX}")
        assert any(f"strict_err_{SFX}" in r["raw_body"] for r in trail.rows(kind="statement"))


def test_strict_pipeline_and_copy(gateway_factory, tmp_path, pg):
    """Held replies keep their order: a pipeline of extended statements, an error in the
    middle of it, and COPY, under strict durability."""
    db = tmp_path / "strictp.db"
    t = make_table(pg, tname("strictp"), "id int PRIMARY KEY, v text")
    try:
        gw = start_audited(gateway_factory, f"sqlite:{db}", {"durability": "strict"})
        trail = SqliteTrail(db)
        with gw.connect(application_name=app_name("strictp")) as c:
            with c.pipeline():
                curs = [c.execute(f"INSERT INTO {t} VALUES (%s, %s) RETURNING id", (i, f"p{i}"))
                        for i in range(1, 6)]
            assert [cur.fetchone()[0] for cur in curs] == [1, 2, 3, 4, 5]
            with pytest.raises(psycopg.Error):
                with c.pipeline():
                    c.execute("SELECT %s::int AS a", (1,))
                    c.execute(f"INSERT INTO {t} VALUES (%s, 'dup')", (1,))
                    c.execute("SELECT %s::int AS c", (3,))
            with c.cursor() as cur:
                with cur.copy(f"COPY {t} (id, v) FROM STDIN") as cp:
                    for i in range(10, 13):
                        cp.write_row((i, "copied"))
                with cur.copy(f"COPY {t} TO STDOUT") as cp:
                    assert sum(bytes(d).count(b"\n") for d in cp) == 8
            rows = trail.rows(kind="statement")
            tags = [r["body"].get("tag") for r in rows]
            assert tags.count("INSERT 0 1") == 5 and "COPY 3" in tags and "COPY 8" in tags, tags
            assert any((r["body"].get("error") or {}).get("sqlstate") == "23505" for r in rows)
    finally:
        su_exec(pg, f"DROP TABLE IF EXISTS {t}")


def test_strict_large_results_and_deep_pipeline(gateway_factory, tmp_path):
    """Strict durability holds a CommandComplete, and what came before it, until the record
    is committed; upstream reading goes on meanwhile up to the high-water mark. Results far
    above that mark (3 MB) and a pipeline whose answers pile up behind held statements
    still arrive whole and in order, and each has its record."""
    db = tmp_path / "strictbig.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"durability": "strict"})
    trail = SqliteTrail(db)
    with gw.connect(application_name=app_name("strictbig")) as c:
        rows = c.execute("SELECT i, repeat('x', 1000) FROM generate_series(1, 3000) i").fetchall()
        assert len(rows) == 3000 and rows[-1][0] == 3000 and len(rows[0][1]) == 1000
        with c.pipeline():
            curs = [c.execute("SELECT %s::int, repeat('y', 200000)", (i,)) for i in range(40)]
        assert [cur.fetchone()[0] for cur in curs] == list(range(40))
    bodies = [r["body"] for r in trail.rows(kind="statement")]
    assert any(b.get("tag") == "SELECT 3000" for b in bodies)
    assert sum(1 for b in bodies if "repeat('y', 200000)" in b.get("sql", "")) == 40


def test_strict_statement_waits_out_a_locked_store(gateway_factory, tmp_path):
    """Strict durability and a store locked for longer than the busy timeout: the statement
    in flight is not lost or hung for good; once the lock goes, the session works."""
    db = tmp_path / "strictlock.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"durability": "strict"})
    conn = gw.connect(application_name=app_name("strictlock"))
    assert _probe(conn, f"sl-before-{SFX}") is None
    lk = _locked(db)
    result = {}

    def run():
        t0 = time.monotonic()
        result["err"] = _probe(conn, f"sl-held-{SFX}")
        result["took"] = time.monotonic() - t0
    th = threading.Thread(target=run)
    th.start()
    time.sleep(4)
    lk.execute("ROLLBACK")
    lk.close()
    th.join(15)
    assert not th.is_alive(), "a statement was still waiting 15 s after the store was unlocked"
    e = result["err"]
    print(f"\nstrict, store locked 4 s: the statement took {result['took']:.1f} s and got "
          f"{'its result' if e is None else e.sqlstate}")
    assert e is None or e.sqlstate == "58030", e
    if e is None:
        # its result was held until the record was committed
        record_with(SqliteTrail(db), f"sl-held-{SFX}", timeout=0.5)
    deadline = time.monotonic() + 10
    while _probe(conn, f"sl-after-{SFX}") is not None:
        assert time.monotonic() < deadline, "statements still refused 10 s after unlocking"
        time.sleep(0.2)
    conn.close()
    assert gw.stop() == 0
    check_chain_links(SqliteTrail(db).rows())


def test_strict_held_answer_survives_upstream_close(gateway_factory, tmp_path, pg):
    """Strict durability, a store locked so that an answer waits for its record, and the
    upstream backend terminated meanwhile: the client still gets that answer (its record is
    committed once the lock goes); only then does the session end."""
    db = tmp_path / "strictclose.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"durability": "strict"})
    conn = gw.connect(application_name=app_name("strictclose"))
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    lk = _locked(db)
    result = {}

    def run():
        try:
            result["rows"] = conn.execute(f"SELECT 'sc-held-{SFX}' AS probe").fetchall()
        except psycopg.Error as e:
            result["err"] = e
    th = threading.Thread(target=run)
    th.start()
    try:
        time.sleep(1.5)
        assert th.is_alive(), "the answer was not held while the store was locked"
        su_exec(pg, f"SELECT pg_terminate_backend({pid})")
        time.sleep(1.5)
    finally:
        lk.execute("ROLLBACK")
        lk.close()
    th.join(15)
    assert not th.is_alive()
    assert result.get("rows") == [(f"sc-held-{SFX}",)], result.get("err")
    record_with(SqliteTrail(db), f"sc-held-{SFX}", timeout=0.5)
    with pytest.raises(psycopg.Error):
        conn.execute("SELECT 1").fetchall()
    conn.close()
    with gw.connect() as c2:  # the gateway serves everyone else
        assert c2.execute("SELECT 2").fetchone() == (2,)


def test_stop_flushes_open_sessions(gateway_factory, tmp_path):
    db = tmp_path / "flush.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}")
    app = app_name("open")
    c = gw.connect(application_name=app)
    c.execute(f"SELECT 'open-{SFX}'")
    assert gw.stop() == 0
    trail = SqliteTrail(db)
    sid = session_id_of(trail, app, timeout=1)
    kinds = [r["kind"] for r in trail.rows() if r["session_id"] == sid]
    assert kinds == ["session_start", "statement", "session_end"], kinds
    try:
        c.close()
    except Exception:  # noqa: BLE001
        pass


# ---------------------------------------------------------------------------- 5. store failure

def _probe(conn, marker):
    """Runs one marked statement: None on success, else the error."""
    try:
        conn.execute(f"SELECT '{marker}' AS probe").fetchall()
        return None
    except psycopg.Error as e:
        return e


def _recorded_session(gw, trail, label, timeout=5):
    """A session whose first statement, marked '{label}-before-SFX', ran and is in trail."""
    conn = gw.connect(application_name=app_name(label))
    assert _probe(conn, f"{label}-before-{SFX}") is None
    record_with(trail, f"{label}-before-{SFX}", timeout=timeout)
    return conn


def _refused_within(conn, label, seconds):
    """Runs statements marked '{label}-SFX-i' until one is refused: (its marker, its error),
    or None when time runs out."""
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        marker = f"{label}-{SFX}-{i}"
        e = _probe(conn, marker)
        if e is not None:
            return marker, e
        i += 1
        time.sleep(0.1)
    return None


def _accepted_within(conn, marker, seconds, what):
    """Runs the statement marked marker until it is accepted (fails the test after seconds)."""
    deadline = time.monotonic() + seconds
    while _probe(conn, marker) is not None:
        assert time.monotonic() < deadline, f"{what}: statements still refused after {seconds} s"
        time.sleep(0.2)


def test_store_failure_refuses_then_recovers(gateway_factory, tmp_path):
    db = tmp_path / "fail.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"node": "failer"})
    trail = SqliteTrail(db)
    conn = _recorded_session(gw, trail, "fail")
    lk = _locked(db)
    try:
        refused = _refused_within(conn, "locked", 15)
        assert refused is not None, "no statement was refused within 15 s of locking the store"
        marker, e = refused
        assert e.sqlstate == "58030", (e.sqlstate, str(e))
        assert e.diag.message_primary == REFUSED_MSG
        # the session survives a refusal, and stays refused while the lock is held
        e2 = _probe(conn, f"still-locked-{SFX}")
        assert e2 is not None and e2.sqlstate == "58030", e2
    finally:
        lk.execute("ROLLBACK")
        lk.close()
    _accepted_within(conn, f"after-{SFX}", 10, "the store unlocked")
    conn.close()
    rec = record_with(trail, refused[0], timeout=10)
    assert rec["body"]["error"]["sqlstate"] == "58030", rec["body"]
    record_with(trail, f"after-{SFX}", timeout=10)
    assert gw.stop() == 0
    check_chain_links(trail.rows())
    assert_verify_ok(gw.config_path)


def test_strict_refusal_does_not_wait_for_the_store(gateway_factory, tmp_path):
    """durability: strict, on_failure: refuse, the store locked. A statement that ran waits
    for its record (the strict promise); once the store is known to fail, a new statement is
    refused at once. Before, the refusal's own record was waited for too: every client hung
    for the whole outage."""
    db = tmp_path / "sref.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"durability": "strict", "on_failure": "refuse"})
    trail = SqliteTrail(db)
    conn = _recorded_session(gw, trail, "sref")
    held = gw.connect(application_name=app_name("sheld"))
    lk = _locked(db)
    try:
        t = threading.Thread(target=_probe, args=(held, f"sheld-{SFX}"), daemon=True)
        t.start()
        assert gw.wait_log(r"event=audit_store_failed", timeout=30), gw.log_text()[-3000:]
        got = []
        probe = threading.Thread(target=lambda: got.append(_probe(conn, f"srefused-{SFX}")), daemon=True)
        probe.start()
        probe.join(3)
        assert got, "no answer within 3 s: the refusal waited for the locked store"
        assert got[0] is not None and got[0].sqlstate == "58030", got
    finally:
        lk.execute("ROLLBACK")
        lk.close()
    t.join(15)
    probe.join(15)
    _accepted_within(conn, f"safter-{SFX}", 10, "the store unlocked")
    record_with(trail, f"srefused-{SFX}", timeout=10)
    conn.close()
    held.close()
    assert gw.stop() == 0
    assert_verify_ok(gw.config_path)


def test_store_failure_continue_keeps_serving(gateway_factory, tmp_path):
    db = tmp_path / "cont.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"on_failure": "continue"})
    conn = gw.connect(application_name=app_name("cont"))
    assert _probe(conn, f"cbefore-{SFX}") is None
    lk = _locked(db)
    try:
        end = time.monotonic() + 4.5  # past the 2 s busy timeout, at least once
        i = 0
        while time.monotonic() < end:
            e = _probe(conn, f"clocked-{SFX}-{i}")
            assert e is None, f"statement {i} refused under on_failure: continue: {e}"
            i += 1
            time.sleep(0.05)
    finally:
        lk.execute("ROLLBACK")
        lk.close()
    assert _probe(conn, f"cafter-{SFX}") is None
    conn.close()
    with gw.connect() as c2:
        assert c2.execute("SELECT 1").fetchone() == (1,)
    record_with(SqliteTrail(db), f"cafter-{SFX}", timeout=10)
    assert gw.stop() == 0
    check_chain_links(SqliteTrail(db).rows())


@pytest.fixture
def frozen_disk(tmp_path):
    """A small ext4 file system of its own, and a function that freezes it (fsfreeze): writes
    to it then hang, as on a disk that stopped answering. Thawed and unmounted at the end.
    Skipped where loop mounts are not allowed (not root, no loop devices)."""
    missing = [t for t in ("mkfs.ext4", "fsfreeze", "mount", "umount") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    img, mnt = tmp_path / "disk.img", tmp_path / "disk"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount a file system here: {r.stderr.strip()}")
    frozen = []

    def freeze(on):
        frozen[:] = [True]  # thawed at the end even if this call fails half-way
        subprocess.run(["fsfreeze", "-f" if on else "-u", str(mnt)], check=True, timeout=30)
        frozen[:] = [on]
    try:
        yield mnt, freeze
    finally:
        if frozen == [True]:
            subprocess.run(["fsfreeze", "-u", str(mnt)], timeout=30)
        subprocess.run(["umount", "-l", str(mnt)], timeout=30)


def test_store_on_a_frozen_disk_refuses_then_recovers(gateway_factory, frozen_disk):
    """A write to the store that hangs (its disk frozen) holds the writer, and the store
    never reports an error: past audit.store_timeout it still counts as failing, so new
    statements are refused (58030) rather than run unrecorded while memory fills. Once the
    disk answers, statements are accepted again and everything that ran is in the trail."""
    mnt, freeze = frozen_disk
    db = mnt / "audit.db"
    port = free_port()
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"node": "frozen", "store_timeout": "1s"},
                       lambda cfg: cfg.update(admin={"address": "127.0.0.1", "port": port}))

    def health():
        return json.loads(http(port, "/healthz")[1])["audit"]
    try:
        wait_for(lambda: health() == "ok", what="/healthz with the audit ok")
        trail = SqliteTrail(db)
        conn = _recorded_session(gw, trail, "fz")
        freeze(True)
        try:
            started = time.monotonic()
            refused = _refused_within(conn, "fz", 15)
            assert refused is not None, "no statement was refused within 15 s of freezing the store's disk"
            marker, e = refused
            waited = time.monotonic() - started
            assert e.sqlstate == "58030" and e.diag.message_primary == REFUSED_MSG, (e.sqlstate, str(e))
            assert waited < 6, f"the first refusal came {waited:.1f} s after the freeze (timeout 1 s)"
            e2 = _probe(conn, f"fz-still-{SFX}")
            assert e2 is not None and e2.sqlstate == "58030", e2
            assert "event=audit_store_stalled" in gw.log_text()
            assert health() == "failing"
        finally:
            freeze(False)
        _accepted_within(conn, f"fz-after-{SFX}", 15, "the disk thawed")
        conn.close()
        # the statements accepted before the first refusal ran: each is in the trail
        for i in range(int(marker.rsplit("-", 1)[1])):
            assert record_with(trail, f"fz-{SFX}-{i}'", timeout=10)["body"].get("error") is None
        record_with(trail, f"fz-after-{SFX}", timeout=10)
        rec = record_with(trail, marker, timeout=10)
        assert rec["body"]["error"]["sqlstate"] == "58030", rec["body"]
        assert "event=audit_store_recovered" in gw.log_text()
        assert health() == "ok"
    finally:
        assert gw.stop() == 0
    check_chain_links(SqliteTrail(db).rows())
    assert_verify_ok(gw.config_path)


def _rss_kib(pid, field="VmRSS"):
    """The process's resident memory (field VmHWM: its peak) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def test_frozen_store_under_continue_keeps_memory_bounded(gateway_factory, frozen_disk):
    """Under on_failure: continue, a write that hangs (the store's disk frozen) holds the
    writer, and the writer only drops between its calls: statements would queue records
    without bound. Past max_pending (1MiB) the sessions drop them instead, counted: the
    gateway's memory stays bounded while ~90 MB of records come, every statement runs, and
    once the disk thaws the trail's events_dropped records account for each missing one."""
    if asan_build():
        pytest.skip("an AddressSanitizer build keeps freed memory in quarantine: its growth is not the gateway's")
    mnt, freeze = frozen_disk
    db = mnt / "audit.db"
    port = free_port()
    gw = start_audited(gateway_factory, f"sqlite:{db}",
                       {"node": "frozen-go-on", "store_timeout": "1s", "on_failure": "continue",
                        "max_pending": "1MiB"},
                       lambda cfg: cfg.update(admin={"address": "127.0.0.1", "port": port}))
    total, pad = 1500, 60000
    try:
        trail = SqliteTrail(db)
        conn = _recorded_session(gw, trail, "fc")
        freeze(True)
        try:
            assert _probe(conn, f"fc-held-{SFX}") is None  # its batch's write hangs
            wait_for(lambda: json.loads(http(port, "/healthz")[1])["audit"] == "failing", timeout=15,
                     what="/healthz with the audit failing")
            rss_before = _rss_kib(gw.pid)
            for i in range(total):
                conn.execute(f"SELECT 'fc-{SFX}-{i}-' AS m, repeat('x', {pad}) AS pad").fetchall()
            grown = _rss_kib(gw.pid) - rss_before
            assert grown < 32 * 1024, f"the gateway grew by {grown} KiB while {total} records of ~{pad} bytes came"
            assert "event=audit_events_dropped" in gw.log_text()
        finally:
            freeze(False)
        assert _probe(conn, f"fc-after-{SFX}") is None
        record_with(trail, f"fc-after-{SFX}", timeout=15)
        conn.close()
        record_with(trail, f"fc-held-{SFX}", timeout=5)
        recorded = sum(1 for r in trail.rows(kind="statement") if f"fc-{SFX}-" in r["raw_body"])
        dropped = sum(_dropped_counts(trail))
        assert 0 < recorded < 64 and recorded + dropped == total, (recorded, dropped)
    finally:
        assert gw.stop() == 0
    check_chain_links(SqliteTrail(db).rows())
    assert_verify_ok(gw.config_path)


def _locked(db):
    """An open connection holding an exclusive lock on the SQLite store: nothing commits."""
    lk = sqlite3.connect(str(db), isolation_level=None, timeout=10)
    lk.execute("BEGIN EXCLUSIVE")
    return lk


def _statements_behind_a_lock(gw, db, label, total, pad, wait_log=None):
    """Opens a session and records a first statement; then, with the store locked (nothing
    commits), runs total statements marked '{label}-SFX-i-' with a pad-byte result each,
    and unlocks (once wait_log shows in the gateway's log, when given). Returns the session."""
    conn = _recorded_session(gw, SqliteTrail(db), label)
    lk = _locked(db)
    try:
        for i in range(total):
            conn.execute(f"SELECT '{label}-{SFX}-{i}-' AS m, repeat('x', {pad}) AS pad").fetchall()
        if wait_log:
            assert gw.wait_log(wait_log, timeout=30), gw.log_text()[-3000:]
    finally:
        lk.execute("ROLLBACK")
        lk.close()
    return conn


def _dropped_counts(trail):
    return [r["body"]["count"] for r in trail.rows(kind="events_dropped")]


def test_backlog_past_max_pending_drops_oldest_on_the_record(gateway_factory, tmp_path):
    """A store locked while 600 statements of ~4 KB records run (on_failure: continue,
    max_pending: 1MiB): the oldest records are dropped, and the trail says so. Every
    statement is either recorded or counted by an events_dropped record that comes before
    the survivors; the survivors are the newest; the chain verifies and says drops happened."""
    db = tmp_path / "drop.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"on_failure": "continue", "max_pending": "1MiB"})
    trail = SqliteTrail(db)
    total = 600
    conn = _statements_behind_a_lock(gw, db, "dq", total, 4000, wait_log=r"event=audit_events_dropped")
    record_with(trail, f"dq-{SFX}-{total - 1}-", timeout=15)
    # the gateway serves on: a new session, and the old one
    with gw.connect() as c2:
        assert c2.execute("SELECT 1").fetchone() == (1,)
    assert _probe(conn, f"dafter-{SFX}") is None
    conn.close()
    record_with(trail, f"dafter-{SFX}", timeout=10)
    rows = trail.rows()
    kept = {}
    for r in rows:
        m = re.search(rf"dq-{SFX}-(\d+)-", r["raw_body"]) if r["kind"] == "statement" else None
        if m:
            kept[int(m[1])] = r["seq"]
    drops = [r for r in rows if r["kind"] == "events_dropped"]
    assert drops, "no events_dropped record"
    dropped = sum(r["body"]["count"] for r in drops)
    assert dropped > 0 and len(kept) + dropped == total, (len(kept), dropped, total)
    # the oldest went: what is left is the newest, in order, after the record of the drop
    first_kept = min(kept)
    assert sorted(kept) == list(range(first_kept, total)), sorted(kept)[:5]
    assert max(r["seq"] for r in drops) < kept[first_kept]
    for r in drops:
        b = r["body"]
        assert b["first_time"] <= b["last_time"] and "max_pending" in b["reason"], b
    assert gw.stop() == 0
    check_chain_links(trail.rows())
    out = assert_verify_ok(gw.config_path).stdout
    assert f"{dropped} events were dropped unrecorded" in out, out


def test_large_record_under_small_max_pending_is_written(gateway_factory, tmp_path):
    """A healthy store and max_pending: 1MiB: a 1 MB record (its SQL text) is written, and so
    is everything after it from other sessions (60 KB result heads each): nothing is
    dropped. (Counting queue memory by blocks, a large record's block stayed counted after
    its commit while its session was quiet, and the next records were dropped.)"""
    db = tmp_path / "bigrec.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"max_pending": "1MiB"})
    trail = SqliteTrail(db)
    big = "b" * 1_000_000
    bigc = gw.connect(application_name=app_name("bigrec"))
    bigc.execute(f"SELECT 'big-{SFX}-' || '{big}' AS v").fetchall()
    record_with(trail, f"big-{SFX}-", timeout=10)
    conns = [gw.connect(application_name=app_name(f"small{i}")) for i in range(4)]
    for k in range(5):
        for i, c in enumerate(conns):
            c.execute(f"SELECT 'small-{SFX}-{i}-{k}-' AS m, repeat('s', 60000) AS pad").fetchall()
    for c in conns:
        c.close()
    bigc.close()
    for k in range(5):
        for i in range(4):
            record_with(trail, f"small-{SFX}-{i}-{k}-", timeout=10)
    rec = record_with(trail, f"big-{SFX}-", timeout=10)
    assert len(rec["body"]["sql"]) > 1_000_000
    assert not _dropped_counts(trail)
    assert gw.stop() == 0
    assert "audit_events_dropped" not in gw.log_text()
    assert_verify_ok(gw.config_path)


def test_backlog_written_in_bounded_batches(gateway_factory, tmp_path):
    """400 statements of ~60 KB records (24 MB) wait behind a locked store; once it is free
    they are written as several batches of at most 16 MiB, one after the other, all of them."""
    db = tmp_path / "backlog.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"on_failure": "continue"})
    trail = SqliteTrail(db)
    total = 400
    conn = _statements_behind_a_lock(gw, db, "bq", total, 60000)
    record_with(trail, f"bq-{SFX}-{total - 1}-", timeout=20)
    conn.close()
    where = {}
    for first, _, lines in trail.batches():
        for ln in lines:
            m = re.search(rf"bq-{SFX}-(\d+)-", ln)
            if m:
                where[int(m[1])] = first
    assert sorted(where) == list(range(total))
    assert len(set(where.values())) >= 2, "the backlog went into one batch"
    c = sqlite3.connect(str(db))
    try:
        sizes = [n for (n,) in c.execute("SELECT last_seq - first_seq + 1 FROM audit_batches")]
    finally:
        c.close()
    assert max(sizes) * 60000 < 17 * 1024 * 1024, sizes
    assert not _dropped_counts(trail)
    assert gw.stop() == 0
    assert_verify_ok(gw.config_path)


def test_strict_answer_of_a_dropped_record_is_withheld(gateway_factory, tmp_path):
    """Strict durability, store locked, 1MiB max_pending: 24 sessions each hold the answer of
    a statement with a ~60 KB record. The oldest records are dropped; their sessions get
    58030 and end instead of an answer, the others get theirs once the store is back, and
    each answered statement is in the trail: the strict promise holds through a drop."""
    db = tmp_path / "sdrop.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"durability": "strict", "on_failure": "continue",
                                                         "max_pending": "1MiB"})
    trail = SqliteTrail(db)
    n = 24
    conns = [gw.connect(application_name=app_name(f"sdrop{i}")) for i in range(n)]
    for i, c in enumerate(conns):
        assert _probe(c, f"sd-ready-{SFX}-{i}") is None
    outcome = [None] * n

    def run(i):
        try:
            conns[i].execute(f"SELECT 'sd-{SFX}-{i}-' AS m, repeat('y', 60000) AS pad").fetchall()
            outcome[i] = "answered"
        except psycopg.Error as e:
            outcome[i] = e

    lk = _locked(db)
    threads = []
    try:
        for i in range(n):
            t = threading.Thread(target=run, args=(i,), daemon=True)
            t.start()
            threads.append(t)
            time.sleep(0.05 if i else 0.3)  # session 0's record is the oldest
        assert gw.wait_log(r"event=audit_events_dropped", timeout=30), gw.log_text()[-3000:]
        wait_for(lambda: outcome[0] is not None, 15, what="session 0 refused")
    finally:
        lk.execute("ROLLBACK")
        lk.close()
    for t in threads:
        t.join(30)
    assert all(o is not None for o in outcome), outcome
    refused = [i for i, o in enumerate(outcome) if o != "answered"]
    answered = [i for i, o in enumerate(outcome) if o == "answered"]
    assert 0 in refused and answered, outcome
    for i in refused:
        e = outcome[i]
        # a FATAL error then the close: libpq reports the message, not always the SQLSTATE
        assert e.sqlstate in ("58030", None) and "audit record of this statement was dropped" in str(e), (i, e)
    for i in answered:
        record_with(trail, f"sd-{SFX}-{i}-", timeout=10)
    bodies = [r["raw_body"] for r in trail.rows(kind="statement")]
    for i in refused:
        assert not any(f"sd-{SFX}-{i}-" in b for b in bodies), i
    # each refused session's record was dropped and counted (a later pass could also take
    # session ends, so at least that many)
    assert sum(_dropped_counts(trail)) >= len(refused), (_dropped_counts(trail), refused)
    with gw.connect() as c2:
        assert c2.execute("SELECT 1").fetchone() == (1,)
    for c in conns:
        c.close()
    assert gw.stop() == 0
    assert_verify_ok(gw.config_path)


SESSIONS_REFUSED_MSG = ("pgcordon: the audit store cannot be written; new sessions are refused until "
                        "it recovers")


def test_refusals_do_not_crowd_out_the_records_of_what_ran(gateway_factory, tmp_path):
    """on_failure: refuse, max_pending: 1MiB, store locked. The statements that ran before
    the failure was seen wait in memory (some with parameters, through Bind/Execute); then
    one refused statement of 1 MB, 100 of ~50 KB, 20 refused Bind/Execute, a failed login
    and a new session arrive. Past half of the bound, what did not run is counted, not
    queued: no record of a statement that ran is dropped to make room for refusals, no
    refusal is mistaken for a failure of an earlier statement, the new session is refused at
    the door, and once the store is back an events_dropped record says how many refusals of
    each kind went unrecorded."""
    db = tmp_path / "crowd.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"max_pending": "1MiB"})
    trail = SqliteTrail(db)
    conn = _recorded_session(gw, trail, "cr")
    ran = 0
    lk = _locked(db)
    try:
        deadline = time.monotonic() + 15
        while True:  # ~4 KB records until the writer's first attempt fails (2 s busy timeout)
            assert time.monotonic() < deadline, "no statement refused within 15 s of the lock"
            try:
                if ran % 2:
                    conn.execute(f"SELECT 'cr-ran-{SFX}-{ran}-' AS m, repeat('r', 4000) AS pad").fetchall()
                else:  # with a parameter: Bind/Execute
                    conn.execute("SELECT %s::text AS m, repeat('r', 4000) AS pad", (f"cr-ran-{SFX}-{ran}-",)).fetchall()
            except psycopg.Error as e:
                assert e.sqlstate == "58030", e
                break
            ran += 1
            time.sleep(0.05)
        assert ran > 0
        refusals = 1  # the statement just refused
        with pytest.raises(psycopg.Error) as ei:  # alone larger than half the bound
            conn.execute(f"SELECT 'cr-refused-{SFX}-huge-{'h' * 1_000_000}' AS m")
        assert ei.value.sqlstate == "58030", ei.value
        refusals += 1
        big = "z" * 50_000
        for i in range(100):
            with pytest.raises(psycopg.Error) as ei:
                conn.execute(f"SELECT 'cr-refused-{SFX}-{i}-{big}' AS m")
            assert ei.value.sqlstate == "58030", ei.value
            refusals += 1
        for i in range(20):
            with pytest.raises(psycopg.Error) as ei:
                conn.execute("SELECT %s::text AS m", (f"cr-refused-{SFX}-ext-{i}",))
            assert ei.value.sqlstate == "58030", ei.value
            refusals += 1
        with pytest.raises(psycopg.OperationalError) as ei:
            gw.connect(application_name=app_name("crowd-new"))
        assert SESSIONS_REFUSED_MSG in str(ei.value), str(ei.value)
        with pytest.raises(psycopg.OperationalError):
            gw.connect(user="alice", password="wrong-password-" + SFX)
    finally:
        lk.execute("ROLLBACK")
        lk.close()
    deadline = time.monotonic() + 10
    while _probe(conn, f"cr-after-{SFX}") is not None:  # refused until the writer's next try
        refusals += 1
        assert time.monotonic() < deadline, "statements still refused 10 s after the store was unlocked"
        time.sleep(0.1)
    record_with(trail, f"cr-after-{SFX}", timeout=10)
    conn.close()
    with gw.connect() as c2:
        assert c2.execute("SELECT 1").fetchone() == (1,)
    assert gw.stop() == 0
    rows = trail.rows()
    bodies = [r["raw_body"] for r in rows if r["kind"] == "statement"]
    missing = [i for i in range(ran) if not any(f"cr-ran-{SFX}-{i}-" in b for b in bodies)]
    assert not missing, f"records of statements that ran were dropped: {missing}"
    recorded_refusals = sum(1 for b in bodies if "audit_store_unavailable" in b)
    # a refused Bind's error is not pinned on the record of an earlier statement
    misread = [b[:300] for b in bodies if "pgcordon_refused" in b or '"26000"' in b]
    assert not misread, misread
    drops = [r["body"] for r in rows if r["kind"] == "events_dropped"]
    assert not [d for d in drops if "max_pending exceeded" in d["reason"]], drops
    counted = [d for d in drops if "refused_statements" in d]
    assert counted, drops
    statements = sum(d["refused_statements"] for d in counted)
    assert statements > 0 and statements + recorded_refusals == refusals, (statements, recorded_refusals, refusals)
    assert sum(d["refused_sessions"] for d in counted) == 1, counted
    assert sum(d["failed_logins"] for d in counted) == 1, counted
    for d in counted:
        assert d["count"] == d["refused_statements"] + d["refused_sessions"] + d["failed_logins"], d
        assert d["first_time"] <= d["last_time"], d
    out = assert_verify_ok(gw.config_path).stdout
    total = sum(d["count"] for d in counted)
    assert f"{total} refusals and failed logins were counted" in out, out
    assert "dropped unrecorded" not in out, out


# ---------------------------------------------------------------------------- 6. PostgreSQL store

@pytest.fixture
def pg_store(pg):
    dbname = f"aud_store_{SFX}_{secrets.token_hex(2)}"
    su_exec(pg, f"CREATE DATABASE {dbname}", dbname="postgres")
    url = (f"postgresql://postgres:{SUPERUSER_PW}@{pg.host}:{pg.port}/{dbname}"
           f"?sslmode=disable")
    yield url, PgTrail(pg, dbname)
    su_exec(pg, f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)", dbname="postgres")


def test_postgresql_store_two_nodes(gateway_factory, tmp_path, pg_store):
    url, trail = pg_store
    gws = {}
    for node in ("gw1", "gw2"):
        gws[node] = start_audited(gateway_factory, url,
                                  {"node": node, "key_file": str(tmp_path / f"{node}.key")})
    for node, gw in gws.items():
        for i in range(2):
            with gw.connect(application_name=app_name(node)) as c:
                c.execute(f"SELECT 'via-{node}-{SFX}-{i}' AS m, %s::int AS i", (i,))
    for node in gws:
        rec = record_with(trail, f"via-{node}-{SFX}-1", timeout=10)
        assert rec["node"] == node
        assert rec["body"]["result"]["rows"][0][0] == f"via-{node}-{SFX}-1"
    for gw in gws.values():
        assert gw.stop() == 0
    for node in gws:
        assert (tmp_path / f"{node}.key").stat().st_mode & 0o777 == 0o600
    rows = trail.rows()
    for node in gws:
        mine = [r for r in rows if r["node"] == node]
        assert [r["seq"] for r in mine] == list(range(1, 7)), [(r["seq"], r["kind"]) for r in mine]
        assert not any(f"via-{other}" in r["raw_body"] for r in mine for other in gws
                       if other != node)
    check_chain_links(rows)
    for node, gw in gws.items():
        assert_verify_ok(gw.config_path, "--node", node)
    # gw1's key does not verify gw2's chain
    assert (tmp_path / "gw1.key").read_text() != (tmp_path / "gw2.key").read_text()
    r = verify(gws["gw1"].config_path, "--node", "gw2")
    assert r.returncode == 1, r.stdout + r.stderr
    # tampering with gw2's trail in PostgreSQL is seen; gw1's trail is unaffected. The
    # record is found by its text, not by seq: the two sessions' records may interleave
    # (each worker has its own queue), and an UPDATE of a record without 'via-' changes
    # nothing, so verify rightly passes.
    with trail.pg.super_connect(trail.dbname) as c:
        hit = c.execute("UPDATE audit_records SET body = replace(body, 'via-', 'VIA-') "
                        "WHERE node = 'gw2' AND body LIKE %s RETURNING seq",
                        (f"%via-gw2-{SFX}-1%",)).fetchall()
        assert len(hit) == 1, hit
    seq = hit[0][0]
    r = verify(gws["gw2"].config_path, "--node", "gw2")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and re.search(rf"seq={seq}\b.*altered|altered.*seq={seq}\b", out), out
    assert_verify_ok(gws["gw1"].config_path, "--node", "gw1")


def test_postgresql_store_lock_fails_closed_also_after_a_reconnect(gateway_factory, tmp_path, pg_store):
    """A PostgreSQL store whose table is locked by someone else: the writer's batch gives up
    after the 5 s lock_timeout it sets, so statements are refused (on_failure: refuse) instead
    of running unrecorded while records pile up in memory. The writer's connection is then
    killed; it reconnects with the same settings (the lock is again refused in time), and
    everything that ran is in the trail."""
    url, trail = pg_store
    gw = start_audited(gateway_factory, url, {"node": "locked", "key_file": str(tmp_path / "locked.key")})
    conn = _recorded_session(gw, trail, "pl", timeout=10)
    for attempt in ("first", "after-reconnect"):
        with trail.pg.super_connect(trail.dbname) as lk:
            lk.autocommit = False
            lk.execute("LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE")
            refused = _refused_within(conn, f"pl-{attempt}", 20)
            assert refused is not None, f"{attempt}: no statement refused within 20 s of locking the store table"
            assert refused[1].sqlstate == "58030", refused[1]
            lk.rollback()
        _accepted_within(conn, f"pl-{attempt}-after-{SFX}", 15, f"{attempt}: the table unlocked")
        record_with(trail, f"pl-{attempt}-after-{SFX}", timeout=10)
        if attempt == "first":
            with trail.pg.super_connect(trail.dbname) as c:
                killed = c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                   " WHERE datname = current_database() AND application_name = 'pgcordon-audit'"
                                   " AND pid <> pg_backend_pid()").fetchall()
            assert killed == [(True,)], killed
            # the next batch fails on the dead connection; then the writer reconnects
            _accepted_within(conn, f"pl-reconnected-{SFX}", 15, "the store connection killed")
            record_with(trail, f"pl-reconnected-{SFX}", timeout=10)
    conn.close()
    assert gw.stop() == 0
    check_chain_links(trail.rows())
    assert_verify_ok(gw.config_path, "--node", "locked")


def test_postgresql_store_that_stops_answering_is_given_up(gateway_factory, tmp_path, pg_store):
    """The writer's backend in the store is stopped (SIGSTOP): its TCP connection stays up and
    acknowledges, but nothing answers, and neither keepalives nor lock_timeout help. Past
    audit.store_timeout the writer gives that connection up and writes on a new one, so the
    records of statements that run meanwhile reach the store while the old backend is still
    stopped."""
    url, trail = pg_store
    gw = start_audited(gateway_factory, url, {"node": "stopped", "store_timeout": "1s",
                                              "key_file": str(tmp_path / "stopped.key")})
    conn = _recorded_session(gw, trail, "ps", timeout=10)

    def idle_writer():
        with trail.pg.super_connect(trail.dbname) as c:
            pids = [r[0] for r in c.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'pgcordon-audit' AND state = 'idle'").fetchall()]
        return pids if len(pids) == 1 else None
    pids = wait_for(idle_writer, timeout=10, what="the audit writer's backend, idle")
    os.kill(pids[0], signal.SIGSTOP)
    try:
        # the store still looks healthy: this runs, and its record waits for the writer
        assert _probe(conn, f"ps-while-stopped-{SFX}") is None
        record_with(trail, f"ps-while-stopped-{SFX}", timeout=15)
        with trail.pg.super_connect(trail.dbname) as c:
            state = c.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pids[0],)).fetchone()
        assert state is not None, "the stopped backend is gone: the test proves nothing"
        assert re.search(r"event=audit_store_failed .*no answer within 1000 ms", gw.log_text()), \
            gw.log_text()[-3000:]
    finally:
        os.kill(pids[0], signal.SIGCONT)
    conn.close()
    assert gw.stop() == 0
    check_chain_links(trail.rows())
    assert_verify_ok(gw.config_path, "--node", "stopped")


def audited_with_api(factory, store, audit):
    """A gateway recording to store (audit: more of its audit section) with the admin API
    on; returns (gateway, API port, an auditor's API key)."""
    name = f"{audit['node']}-{SFX}"
    key, entry = apikey_create(name, ["security"])
    port = free_port()

    def more(cfg):
        cfg["admin"] = {"address": "127.0.0.1", "port": port, "auditors": ["security"]}
        cfg["api_keys"] = {name: entry}
    return start_audited(factory, store, audit, more), port, key


def test_admin_api_reads_waiting_on_the_store_do_not_hold_healthz(gateway_factory, tmp_path, pg_store):
    """Three /api/sessions reads wait on the PostgreSQL store (its table locked: each waits
    for lock_timeout, 5 s). Each request has its own thread, so /healthz, and a request that
    does not need the store, answer at once meanwhile; the waiting reads end with an error."""
    url, trail = pg_store
    gw, port, key = audited_with_api(gateway_factory, url,
                                     {"node": "apilock", "key_file": str(tmp_path / "apilock.key")})
    _recorded_session(gw, trail, "al", timeout=10).close()
    assert http(port, "/api/sessions", token=key)[0] == 200
    results = []

    def read():
        started = time.monotonic()
        status = http(port, "/api/sessions", token=key)[0]
        results.append((status, time.monotonic() - started))
    with trail.pg.super_connect(trail.dbname) as lk:
        lk.execute("BEGIN")
        lk.execute("LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE")
        readers = [threading.Thread(target=read) for _ in range(3)]
        for t in readers:
            t.start()
        time.sleep(1)
        assert not results, f"the reads did not wait on the lock: {results}"
        for path, tok in (("/healthz", None), ("/api/approvals", key)):
            started = time.monotonic()
            status = http(port, path, token=tok)[0]
            took = time.monotonic() - started
            assert status == 200 and took < 1.5, f"{path}: {status} after {took:.1f} s while reads waited"
        for t in readers:
            t.join(timeout=30)
        lk.execute("ROLLBACK")
    assert len(results) == 3 and all(st >= 500 for st, _ in results), results
    assert http(port, "/api/sessions", token=key)[0] == 200
    assert gw.stop() == 0


def test_reads_do_not_wait_for_the_writers_open_batch(gateway_factory, tmp_path, pg_store):
    """A transaction holds the lock a writer's batch holds on audit_records (ROW EXCLUSIVE).
    Opening the store to read (the API, the CLI) runs no DDL: a read answers at once. Before,
    each open ran CREATE INDEX IF NOT EXISTS, whose share lock waited for the batch (and the
    writer's next batch waited behind it), until lock_timeout failed the read."""
    url, trail = pg_store
    gw, port, key = audited_with_api(gateway_factory, url, {"node": "openbatch", "key_file": str(tmp_path / "ob.key")})
    _recorded_session(gw, trail, "ob", timeout=10).close()
    with trail.pg.super_connect(trail.dbname) as lk:
        lk.execute("BEGIN")
        lk.execute("LOCK TABLE audit_records IN ROW EXCLUSIVE MODE")
        started = time.monotonic()
        status, body = http(port, "/api/sessions", token=key)
        took = time.monotonic() - started
        lk.execute("ROLLBACK")
    assert status == 200 and took < 2, (status, body, f"{took:.1f} s")
    assert gw.stop() == 0


def run_within(mb, *args):
    """Runs pgcordon ARGS with at most mb MB of data memory (RLIMIT_DATA: heap and private
    mappings): a program that would need more fails to allocate."""
    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (mb << 20, mb << 20))
    with tempfile.TemporaryFile() as out:
        r = subprocess.run([str(BIN)] + [str(a) for a in args], stdout=out, stderr=subprocess.PIPE,
                           preexec_fn=limit, timeout=120)
        out.seek(0)
        return r.returncode, out.read(), r.stderr.decode()


def test_postgresql_trail_larger_than_memory_is_streamed(gateway_factory, tmp_path, pg_store):
    """verify and export read a PostgreSQL trail row by row: with 240 MB of records in the
    store (60,000 rows of 4 KB under a node "bulk", whose chain is not valid) each runs
    within 100 MB of data memory. Export writes every row; verify names bulk's first record,
    stops there (the rest of the query is cancelled), and still verifies the gateway's own
    chain. Before, each read held its whole result in memory, as large as the store.
    Stopping sends no CancelRequest (PQcancel has no timeout: a store that stopped answering
    would hold the reader for ever); the connection is dropped instead."""
    if asan_build():
        pytest.skip("an AddressSanitizer build maps its shadow memory as data: no RLIMIT_DATA for it")
    url, trail = pg_store
    gw = start_audited(gateway_factory, url, {"node": "streamed", "key_file": str(tmp_path / "st.key")})
    _recorded_session(gw, trail, "st", timeout=10).close()
    assert gw.stop() == 0
    su_exec(trail.pg,
            "INSERT INTO audit_records SELECT 'bulk', g, '2026-01-01T00:00:00.000000', 'statement', 's', 'u',"
            " 'd', '\"' || repeat('x', 4000) || '\"', '', 'bad' FROM generate_series(1, 60000) g",
            dbname=trail.dbname)
    code, out, err = run_within(100, "audit", "export", "--config", gw.config_path, "--since", "2000-01-01")
    assert code == 0, err
    assert out.count(b'"node":"bulk"') == 60000 and out.count(b'"node":"streamed"') >= 3
    del out
    code, out, err = run_within(100, "audit", "verify", "--config", gw.config_path)
    assert code == 1, (code, out, err)
    lines = out.decode().splitlines()
    assert lines[0] == ("FAILED: node bulk: record seq=1 (statement, 2026-01-01T00:00:00.000000): altered or"
                        " inserted: its tag does not verify"), out
    assert lines[1].startswith("ok: node streamed: 3 records"), out
    # Through a relay that counts: listing the nodes reads no record, and verify stops
    # reading bulk at its first (the rest of the query is dropped, not drained). A
    # CancelRequest would be held by the relay, as by a server that stopped answering.
    relay = StoreRelay(trail.pg.host, trail.pg.port)
    try:
        cfg = tmp_path / "relayed.yaml"
        cfg.write_text(Path(gw.config_path).read_text().replace(url, relay.url(url, trail.pg)))
        relay.arm(b"\x00\x00\x00\x10\x04\xd2\x16\x2e", "hold")
        code, out, err = run_within(100, "audit", "verify", "--config", cfg)
        assert code == 1 and out.decode().splitlines() == lines, (out, err)
        assert not relay.fired.is_set(), "verify sent a CancelRequest"
        assert relay.down_bytes < 40 << 20, f"verify read {relay.down_bytes >> 20} MB of a 240 MB trail"
    finally:
        relay.close()


def test_admin_api_read_from_a_silent_store_is_given_up(gateway_factory, tmp_path, pg_store, pg):
    """The store stops answering an /api/sessions read (a relay swallows the answers; the
    connection stays up, as with a stopped server or a silent network). The read fails with
    503 after audit.store_timeout instead of holding its admin connection for ever, and the
    next read, on a new connection, answers."""
    url, trail = pg_store
    relay = StoreRelay(pg.host, pg.port)
    try:
        gw, port, key = audited_with_api(gateway_factory, relay.url(url, pg), {
            "node": "apisilent", "store_timeout": "1s", "key_file": str(tmp_path / "s.key")})
        _recorded_session(gw, trail, "as", timeout=10).close()
        assert http(port, "/api/sessions", token=key)[0] == 200
        relay.arm(b"SELECT node, seq, time, kind", "mute")
        started = time.monotonic()
        status, body = http(port, "/api/sessions", token=key)
        took = time.monotonic() - started
        assert relay.fired.is_set()
        assert status == 503, (status, body)
        assert json.loads(body)["error"] == \
            "audit store: read: no answer within 1000 ms; the connection is given up", body
        assert took < 5, f"the read took {took:.1f} s"
        assert http(port, "/api/sessions", token=key)[0] == 200
        assert gw.stop() == 0
    finally:
        relay.close()


def test_postgresql_store_commit_answered_too_late_is_settled(gateway_factory, tmp_path, pg_store):
    """A batch's COMMIT takes longer than audit.store_timeout (a deferred trigger sleeps 2.5 s
    in it): the writer gives the connection up, but the server commits all the same. The
    writer must not guess: it waits until that server process is gone, reads the store's
    head, and counts the batch as written. Guessing "not written" would have it write the
    same sequence numbers again and fail on the duplicates forever (statements refused until
    a restart); guessing "written" could lose records."""
    url, trail = pg_store
    gw = start_audited(gateway_factory, url, {"node": "late", "store_timeout": "1s",
                                              "key_file": str(tmp_path / "late.key")})
    conn = _recorded_session(gw, trail, "late", timeout=10)
    su_exec(trail.pg,
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.body LIKE '%late-slow-commit%' THEN PERFORM pg_sleep(2.5); END IF; RETURN NULL; END $$",
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON audit_records"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
            dbname=trail.dbname)
    assert _probe(conn, f"late-slow-commit-{SFX}") is None
    wait_for(lambda: "event=audit_store_failed" in gw.log_text(), timeout=10,
             what="the slow COMMIT given up")
    _accepted_within(conn, f"late-after-{SFX}", 20, "a COMMIT answered too late")
    record_with(trail, f"late-after-{SFX}", timeout=10)
    log = gw.log_text()
    assert "event=audit_commit_in_doubt" in log, log[-3000:]
    assert re.search(r"event=audit_commit_settled .*written=yes", log), log[-3000:]
    conn.close()
    assert gw.stop() == 0
    rows = trail.rows()
    slow = [r["seq"] for r in rows if f"late-slow-commit-{SFX}" in r["raw_body"] and r["kind"] == "statement"]
    assert len(slow) == 1, f"the slow batch's statement is recorded {len(slow)} times: {slow}"
    check_chain_links(rows)
    assert_verify_ok(gw.config_path, "--node", "late")


def test_raw_execute_without_describe_masked_and_not(gateway_factory, tmp_path, pg):
    """Parse/Bind/Execute/Sync in one send, no Describe, with the audit on. An unmasked
    session's Execute is read where it stands (the group leaves in one piece); a masked
    session's is taken whole after its Bind went upstream, because the gateway may put its
    own Describe of the portal before it. Both answer with rows and are recorded."""
    t = make_table(pg, f"aud_mask_{SFX}", "id int PRIMARY KEY, ssn text",
                   f"INSERT INTO aud_mask_{SFX} VALUES (1, '123-45-6789')")
    pw = "AuditMasked-3c4d5e6f"
    db = tmp_path / "masked.db"

    def more(cfg):
        cfg["users"]["masked"] = {"password": scram_verifier(pw), "groups": ["support"]}
        cfg["policies"] = [
            {"name": "open", "match": {"users": ["alice", "bob"]}},
            {"name": "support", "match": {"groups": ["support"]},
             "mask": [{"columns": [f"public.{t}.ssn"], "method": "redact"}]},
        ]
    gw = start_audited(gateway_factory, f"sqlite:{db}", more=more)
    trail = SqliteTrail(db)
    sql = f"SELECT id, ssn FROM {t} ORDER BY id"
    group = (pgwire.msg(b"P", pgwire.cstr("s1") + pgwire.cstr(sql) + struct.pack("!H", 0))
             + pgwire.msg(b"B", pgwire.cstr("") + pgwire.cstr("s1") + struct.pack("!HHH", 0, 0, 0))
             + pgwire.msg(b"E", pgwire.cstr("") + struct.pack("!I", 0)) + pgwire.msg(b"S"))
    for user, password in (("alice", LOCAL_USERS["alice"]), ("masked", pw)):
        app = app_name(user)
        conn = pgwire.RawConn(gw.host, gw.port, timeout=30)
        conn.startup(user, "app", password, extra={"application_name": app})
        try:
            msgs = conn.exchange(group)
            conn.terminate()
        finally:
            conn.close()
        types = [m[0].decode() for m in msgs]
        assert types == ["1", "2", "D", "C", "Z"], (user, types, msgs)
        has_raw = b"123-45-6789" in msgs[2][1]
        assert has_raw == (user == "alice"), (user, msgs[2][1])
        _, stmts, _ = session_records(trail, session_id_of(trail, app))
        mine = [s for s in stmts if s["body"]["sql"] == sql]
        assert len(mine) == 1 and mine[0]["body"]["rows_sent"] == 1, [s["body"] for s in stmts]
        if user == "masked":
            assert "123-45-6789" not in mine[0]["raw_body"], mine[0]["raw_body"]
    assert gw.stop() == 0
    assert_verify_ok(gw.config_path)


def test_params_masked_under_the_identity_rules(gateway_factory, tmp_path, pg):
    """Bound parameters are recorded masked under the same rules as results: every
    parameter of a statement that names a masked relation is redacted (read or written,
    unnamed or prepared), the detectors scan the others, and an identity without masking
    rules has its parameters recorded as sent."""
    t = make_table(pg, f"aud_pmask_{SFX}", "id int PRIMARY KEY, ssn text, note text",
                   f"INSERT INTO aud_pmask_{SFX} VALUES (1, '123-45-6789', 'first')")
    pw = "AuditParams-5e6f7a8b"
    db = tmp_path / "params.db"
    card = "4111 1111 1111 1111"

    def more(cfg):
        cfg["users"]["masked"] = {"password": scram_verifier(pw), "groups": ["support"]}
        cfg["policies"] = [
            {"name": "open", "match": {"users": ["alice", "bob"]}},
            {"name": "support", "match": {"groups": ["support"]},
             "mask": [{"columns": [f"public.{t}.ssn"], "method": "redact"},
                      {"detect": ["credit_card"], "method": "redact"}]},
        ]
    gw = start_audited(gateway_factory, f"sqlite:{db}", more=more)
    trail = SqliteTrail(db)

    def run(c):
        c.execute(f"SELECT id, ssn FROM {t} WHERE id = %s", (1,)).fetchall()
        c.execute(f"SELECT note FROM {t} WHERE id = %s", (1,), prepare=True).fetchall()
        c.execute(f"INSERT INTO {t} (id, ssn, note) VALUES (%s, %s, %s)", (2, "987-65-4321", "second"))
        c.execute("SELECT %s::text AS a, %s::int AS b, %s::text AS c",
                  (f"card {card} here", 7, None)).fetchall()
        c.execute(f"DELETE FROM {t} WHERE id = %s", (2,))

    recorded = {}
    for user, password in (("masked", pw), ("alice", LOCAL_USERS["alice"])):
        app = app_name(user)
        with gw.connect(user=user, password=password, application_name=app) as c:
            run(c)
        _, stmts, _ = session_records(trail, session_id_of(trail, app))
        recorded[user] = [s["body"].get("params") for s in stmts if s["body"].get("params") is not None]
    one, two, seven = {"hex": "0001"}, {"hex": "0002"}, {"hex": "0007"}  # psycopg binds ints binary
    assert recorded["masked"] == [["[REDACTED]"], ["[REDACTED]"], ["[REDACTED]"] * 3,
                                  ["card [REDACTED] here", seven, None], ["[REDACTED]"]], recorded
    assert recorded["alice"] == [[one], [one], [two, "987-65-4321", "second"],
                                 [f"card {card} here", seven, None], [two]], recorded
    out = cli("audit", "export", "--config", gw.config_path)
    assert out.returncode == 0, out.stderr
    masked_lines = [ln for ln in out.stdout.splitlines() if '"user":"masked"' in ln]
    assert masked_lines and not any("987-65-4321" in ln or card in ln for ln in masked_lines)

    # A name the gateway knew from a Parse, changed behind its back by SQL DEALLOCATE and
    # PREPARE, or closed: its Binds count as binding an unknown statement (redacted).
    def bind_execute(stmt, value):
        return bind_msg("", stmt, value) + execute_msg("") + pgwire.msg(b"S")

    app = app_name("masked-names")
    conn = pgwire.RawConn(gw.host, gw.port, timeout=30)
    conn.startup("masked", "app", pw, extra={"application_name": app})
    try:
        parse = pgwire.msg(b"P", pgwire.cstr("s1") + pgwire.cstr("SELECT $1::text AS v") + struct.pack("!H", 0))
        conn.exchange(parse + bind_execute("s1", f"first {card}"))
        conn.exchange(pgwire.msg(b"Q", pgwire.cstr(
            f"DEALLOCATE s1; PREPARE s1(text) AS SELECT id FROM {t} WHERE note = $1")))
        conn.exchange(bind_execute("s1", "second 123-45-6789"))
        parse2 = pgwire.msg(b"P", pgwire.cstr("s2") + pgwire.cstr("SELECT $1::text AS w") + struct.pack("!H", 0))
        conn.exchange(parse2 + pgwire.msg(b"C", b"S" + pgwire.cstr("s2")) + pgwire.msg(b"S"))
        conn.exchange(bind_execute("s2", "third 123-45-6789"))
        conn.terminate()
    finally:
        conn.close()
    _, stmts, _ = session_records(trail, session_id_of(trail, app))
    params = [s["body"]["params"] for s in stmts if s["body"].get("params") is not None]
    assert params == [["first [REDACTED]"], ["[REDACTED]"], ["[REDACTED]"]], [s["body"] for s in stmts]
    gw.assert_serves()


# ---------------------------------------------------------------------------- 7. CLI

@pytest.fixture(scope="module")
def cli_trail(pg, certs, tmp_path_factory):
    """A stopped gateway whose trail holds one session of alice on app and one of bob on
    app_md5."""
    require_binary()
    root = tmp_path_factory.mktemp("auditcli")
    db = root / "cli.db"
    f = GatewayFactory(pg, certs, root)
    g = f.start(lambda cfg: cfg.update(audit={"store": f"sqlite:{db}", "node": "clinode"}))
    a_app, b_app = app_name("clia"), app_name("clib")
    with g.connect(user="alice", application_name=a_app) as c:
        c.execute(f"SELECT 'replay-{SFX}' AS cli_marker, 42 AS answer")
        c.execute("SELECT id, name FROM items WHERE id <= 2 ORDER BY id")
    with g.connect(user="bob", dbname="app_md5", application_name=b_app) as c:
        c.execute("SELECT 'bob was here' AS note")
    trail = SqliteTrail(db)
    sa, sb = session_id_of(trail, a_app), session_id_of(trail, b_app)
    session_records(trail, sa)
    session_records(trail, sb)
    assert g.stop() == 0
    yield g.config_path, trail, sa, sb
    f.cleanup()


def sessions_json(cfg, *args):
    r = cli("sessions", "list", "--config", cfg, "--json", *args)
    assert r.returncode == 0, f"sessions list {args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    data = json.loads(r.stdout)
    assert isinstance(data, list), data
    return data


def test_cli_verify_ok(cli_trail):
    cfg, _, _, _ = cli_trail
    assert_verify_ok(cfg)


def test_cli_sessions_list(cli_trail):
    cfg, trail, sa, sb = cli_trail
    all_ = sessions_json(cfg)
    by_id = {s["session_id"]: s for s in all_}
    assert sa in by_id and sb in by_id, all_
    a = by_id[sa]
    for k in ("session_id", "user", "database", "client_address", "application_name",
              "auth_method", "start", "end", "end_reason", "statements"):
        assert k in a, (k, a)
    assert a["user"] == "alice" and a["database"] == "app" and a["auth_method"] == "scram"
    assert a["statements"] == 2 and a["application_name"].startswith("aud-clia-")
    assert a["end"] and a["end_reason"] and a["start"] <= a["end"]
    assert by_id[sb]["user"] == "bob" and by_id[sb]["database"] == "app_md5"
    assert by_id[sb]["statements"] == 1
    r = cli("sessions", "list", "--config", cfg)
    assert r.returncode == 0 and sa in r.stdout and sb in r.stdout, r.stdout + r.stderr


def test_cli_sessions_list_filters(cli_trail):
    cfg, trail, sa, sb = cli_trail
    assert [s["session_id"] for s in sessions_json(cfg, "--user", "alice")] == [sa]
    assert [s["session_id"] for s in sessions_json(cfg, "--user", "bob")] == [sb]
    assert [s["session_id"] for s in sessions_json(cfg, "--database", "app_md5")] == [sb]
    assert sessions_json(cfg, "--user", "nobody") == []
    assert {s["session_id"] for s in sessions_json(cfg, "--since", "1h")} == {sa, sb}
    assert sessions_json(cfg, "--since", "2099-01-01T00:00:00Z") == []
    assert {s["session_id"] for s in sessions_json(cfg, "--since", "2000-01-01")} == {sa, sb}
    assert len(sessions_json(cfg, "--limit", "1")) == 1


def test_cli_sessions_replay(cli_trail):
    cfg, trail, sa, sb = cli_trail
    r = cli("sessions", "replay", sa, "--config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for s in (f"SELECT 'replay-{SFX}' AS cli_marker, 42 AS answer", "cli_marker", "answer",
              f"replay-{SFX}", "42", "SELECT id, name FROM items", "item 1", "item 2", "allow"):
        assert s in out, f"{s!r} not in the replay:\n{out}"
    assert re.search(r"\d{2}:\d{2}:\d{2}", out), out
    r = cli("sessions", "replay", "nosuchsession", "--config", cfg)
    assert r.returncode != 0


def test_cli_audit_export(cli_trail):
    cfg, trail, sa, sb = cli_trail
    r = cli("audit", "export", "--config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    rows = trail.rows()
    assert len(lines) == len(rows)
    objs = [json.loads(ln) for ln in lines]
    for o, row in zip(sorted(objs, key=lambda o: (o["node"], o["seq"])), rows):
        assert set(o) >= {"node", "seq", "time", "kind", "session_id", "user", "database",
                          "record", "prev_tag", "tag"}, o
        assert (o["node"], o["seq"], o["kind"], o["tag"]) == \
            (row["node"], row["seq"], row["kind"], row["tag"])
        assert o["record"] == row["body"]
    r = cli("audit", "export", "--config", cfg, "--since", "2099-01-01T00:00:00Z")
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


# ---------------------------------------------------------------------------- 8. HTTP API

def apikey_create(name, groups):
    r = cli("apikey", "create", name, "--groups", ",".join(groups))
    assert r.returncode == 0, r.stderr
    key = re.findall(r"^  (pgc_[A-Za-z0-9_-]{43})$", r.stdout, re.M)
    m = re.search(r"^  " + re.escape(name) + r': \{hash: "(sha256:[0-9a-f]{64})"', r.stdout, re.M)
    assert len(key) == 1 and m, r.stdout
    return key[0], {"hash": m[1], "groups": list(groups)}


def http(port, path, token=None, context=None):
    """A GET on the admin API; over HTTPS when given an ssl context."""
    req = urllib.request.Request(f"{'https' if context else 'http'}://127.0.0.1:{port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def http_gw(pg, certs, tmp_path_factory):
    require_binary()
    root = tmp_path_factory.mktemp("audithttp")
    db = root / "http.db"
    aud_key, aud_entry = apikey_create(f"auditor-{SFX}", ["security"])
    ag_key, ag_entry = apikey_create(f"agent-{SFX}", ["agents"])
    port = free_port()
    f = GatewayFactory(pg, certs, root)

    def mutate(cfg):
        cfg["audit"] = {"store": f"sqlite:{db}", "node": "httpnode"}
        cfg["admin"] = {"address": "127.0.0.1", "port": port, "auditors": ["security"]}
        cfg["api_keys"] = {f"auditor-{SFX}": aud_entry, f"agent-{SFX}": ag_entry}
    g = f.start(mutate)
    app = app_name("http")
    with g.connect(application_name=app) as c:
        c.execute(f"SELECT 'http-{SFX}' AS http_marker, 7 AS seven")
    trail = SqliteTrail(db)
    sid = session_id_of(trail, app)
    session_records(trail, sid)

    def up():
        try:
            return http(port, "/healthz")[0] == 200
        except OSError:
            return False
    ready = True
    try:
        wait_for(up, timeout=5, what="the admin HTTP API")
    except AssertionError:
        ready = False
    yield dict(gw=g, port=port, auditor=aud_key, agent=ag_key, sid=sid, ready=ready,
               trail=trail)
    f.cleanup()


def need_http(h):
    assert h["ready"], f"the admin HTTP API on port {h['port']} never answered /healthz"


def test_http_healthz(http_gw):
    need_http(http_gw)
    status, _ = http(http_gw["port"], "/healthz")
    assert status == 200


def test_http_auth_required(http_gw):
    need_http(http_gw)
    p = http_gw["port"]
    assert http(p, "/api/sessions")[0] == 401
    assert http(p, "/api/sessions", token="pgc_" + "x" * 43)[0] == 401
    assert http(p, "/api/sessions", token="not a token")[0] == 401
    assert http(p, f"/api/sessions/{http_gw['sid']}")[0] == 401
    assert http(p, "/api/sessions", token=http_gw["agent"])[0] == 403
    assert http(p, f"/api/sessions/{http_gw['sid']}/replay", token=http_gw["agent"])[0] == 403


def test_http_sessions(http_gw):
    need_http(http_gw)
    p, tok, sid = http_gw["port"], http_gw["auditor"], http_gw["sid"]
    status, body = http(p, "/api/sessions", token=tok)
    assert status == 200, body
    sessions = json.loads(body)["sessions"]
    mine = [s for s in sessions if s["session_id"] == sid]
    assert len(mine) == 1 and mine[0]["user"] == "alice", sessions
    status, body = http(p, "/api/sessions?user=alice&limit=50", token=tok)
    assert status == 200 and sid in {s["session_id"] for s in json.loads(body)["sessions"]}
    status, body = http(p, "/api/sessions?user=nobody", token=tok)
    assert status == 200 and json.loads(body)["sessions"] == []
    status, body = http(p, "/api/sessions?database=app&since=1h", token=tok)
    assert status == 200 and sid in {s["session_id"] for s in json.loads(body)["sessions"]}

    status, body = http(p, f"/api/sessions/{sid}", token=tok)
    assert status == 200, body
    d = json.loads(body)
    assert d["session"]["session_id"] == sid
    sqls = [s.get("sql") or s.get("record", {}).get("sql") for s in d["statements"]]
    assert f"SELECT 'http-{SFX}' AS http_marker, 7 AS seven" in sqls, d["statements"]

    status, body = http(p, f"/api/sessions/{sid}/replay", token=tok)
    assert status == 200, body
    d = json.loads(body)
    assert d["session_id"] == sid
    for s in ("http_marker", f"http-{SFX}", "seven"):
        assert s in d["transcript"], d["transcript"]

    assert http(p, "/api/sessions/nosuchsession", token=tok)[0] == 404
    # an earlier lookup's error text stayed on the stack, and /api/sessionsX answered with it
    http(p, f"/api/sessions/stale-text-{SFX}", token=tok)
    status, body = http(p, "/api/sessionsX", token=tok)
    assert status == 404 and f"stale-text-{SFX}".encode() not in body and b"unknown path" in body, (status, body)


def test_apikey_session_and_failed_login_recorded(http_gw):
    gw, trail = http_gw["gw"], http_gw["trail"]
    name = f"agent-{SFX}"
    app = app_name("key")
    with gw.connect(user=name, password=http_gw["agent"], application_name=app) as c:
        c.execute("SELECT 'by key'")
    sid = session_id_of(trail, app)
    start, stmts, end = session_records(trail, sid)
    b = start["body"]
    assert b["user"] == name and b["auth_method"] == "apikey"
    assert b["groups"] == ["agents"]
    assert http_gw["agent"] not in json.dumps([r["raw_body"] for r in trail.rows()])
    with pytest.raises(psycopg.OperationalError):
        gw.connect(user=name, password="pgc_" + "A" * 43)
    rec = wait_for(lambda: [r for r in trail.rows(kind="login_failed")
                            if r["body"].get("user") == name], what="login_failed for the key")
    assert rec[-1]["body"]["method"] == "apikey" and rec[-1]["body"]["reason"]


def test_http_other_credentials_refused(http_gw):
    need_http(http_gw)
    p = http_gw["port"]
    req = urllib.request.Request(f"http://127.0.0.1:{p}/api/sessions")
    req.add_header("Authorization", f"Basic {http_gw['auditor']}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status == 401
    # the auditor key with one character changed
    k = http_gw["auditor"]
    bad = k[:-1] + ("A" if k[-1] != "A" else "B")
    assert http(p, "/api/sessions", token=bad)[0] == 401
    # a SCRAM user's password is not a bearer credential
    assert http(p, "/api/sessions", token=LOCAL_USERS["alice"])[0] == 401


# ---------------------------------------------------------------------------- hostile input

def _cut_ok(cut, value, cap):
    """A text cut at audit.max_text_size: its head (whole characters, at most cap bytes), its
    length and the SHA-256 of all of it."""
    assert isinstance(cut, dict) and set(cut) == {"head", "bytes", "sha256"}, cut
    assert cut["bytes"] == len(value) and cut["sha256"] == hashlib.sha256(value).hexdigest(), cut
    head = cut["head"]
    head = bytes.fromhex(head["hex"]) if isinstance(head, dict) else head.encode()
    assert value.startswith(head) and cap - 3 <= len(head) <= cap, (len(head), cap)
    return head


def test_long_texts_recorded_by_head_length_and_hash(gateway_factory, tmp_path):
    """audit.max_text_size (4KiB here): a longer SQL text, or a longer parameter, is recorded
    as its head, its length and its SHA-256, not whole. The head stops before a character
    the cut would split; a prepared statement's records all name the same hash; a binary
    parameter's head is hex; shorter texts are recorded as they were. Replay says what was
    cut, and the chain verifies."""
    cap = 4096
    db = tmp_path / "cut.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"max_text_size": "4KiB"})
    trail = SqliteTrail(db)
    prefix = f"SELECT 'cut-{SFX}' AS m, '"
    if (cap - len(prefix.encode())) % 2 == 0:
        prefix += "x"  # the cut then falls inside a two-byte 'é'
    simple = prefix + "é" * 3000 + "' AS v"
    prepared = f"SELECT %t::text AS p, length(%b::bytea) AS b, 'prep-{SFX}' /* " + "y" * 5000 + " */"
    text_param, bin_param = "p" * 10000, b"\x00\xff" * 3000

    def work(c):
        c.execute(simple).fetchall()
        for _ in range(2):
            c.execute(prepared, (text_param, bin_param), prepare=True).fetchall()
        c.execute("SELECT %t::text AS short", ("short",), prepare=True).fetchall()
    sid, _, stmts, _, _ = run_session(gw, trail, work)
    bodies = [st["body"] for st in stmts]
    first = next(b for b in bodies if isinstance(b["sql"], dict) and "cut-" in b["sql"]["head"])
    head = _cut_ok(first["sql"], simple.encode(), cap)
    assert len(head) == cap - 1, len(head)  # one byte short: not half an 'é'
    preps = [b for b in bodies if isinstance(b["sql"], dict) and "prep-" in b["sql"]["head"]]
    assert len(preps) == 2, bodies
    sent = prepared.replace("%t", "$1").replace("%b", "$2").encode()
    for b in preps:
        _cut_ok(b["sql"], sent, cap)
        _cut_ok(b["params"][0], text_param.encode(), cap)
        assert isinstance(b["params"][1]["head"], dict), b["params"][1]  # binary: hex
        _cut_ok(b["params"][1], bin_param, cap)
    short = next(b for b in bodies if b["sql"] == "SELECT $1::text AS short")
    assert short["params"] == ["short"], short
    r = cli("sessions", "replay", "--config", gw.config_path, sid)
    assert r.returncode == 0, r.stderr
    assert f"[cut: {len(simple.encode())} bytes in all, sha256 {hashlib.sha256(simple.encode()).hexdigest()}]" \
        in r.stdout, r.stdout[:3000]
    assert f"$1={'p' * 100}" in r.stdout and "[cut: 10000 bytes in all, sha256 " in r.stdout, r.stdout[-3000:]
    assert gw.stop() == 0
    assert_verify_ok(gw.config_path)


def test_huge_statement_keeps_the_record_bounded(gateway_factory, tmp_path):
    """A 48 MiB statement of control characters, under the default max_text_size (1MiB):
    JSON writes each such byte as six, and the record once held the whole text so escaped,
    twice over (the record, then its place in the writer's queue): some 1 GB for 60 MiB, from
    one message of one client. Now the record holds 1 MiB of it and the hash, the gateway's
    peak memory stays within a few times the message, and the statement runs."""
    if asan_build():
        pytest.skip("an AddressSanitizer build's memory is the sanitizer's, not the gateway's")
    db = tmp_path / "huge.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}")
    trail = SqliteTrail(db)
    size = 48 << 20
    sql = f"SELECT 'huge-{SFX}' AS m, length('" + "\x01" * size + "') AS n"
    with gw.connect(application_name=app_name("huge")) as c:
        assert c.execute(sql).fetchone() == (f"huge-{SFX}", size)
    peak = _rss_kib(gw.pid, "VmHWM")
    assert peak < 6 * (size >> 10), f"the gateway's peak memory was {peak >> 10} MiB for a {size >> 20} MiB statement"
    rec = record_with(trail, f"huge-{SFX}", timeout=10)
    _cut_ok(rec["body"]["sql"], sql.encode(), 1 << 20)
    assert gw.stop() == 0
    assert_verify_ok(gw.config_path)


def test_cli_rejects_bad_arguments(gateway_factory, tmp_path):
    """Bad --since, unknown options, a missing replay id, an unknown session and a
    malformed key file each get a clear message and a non-zero exit; nothing is read."""
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=1)
    cfg = gw.config_path
    r = cli("sessions", "list", "--config", cfg, "--since", "yesterday'; DROP TABLE audit_records")
    assert r.returncode == 2 and "--since" in r.stderr, r.stderr
    r = cli("audit", "export", "--config", cfg, "--since", "2026-13")
    assert r.returncode == 2 and "--since" in r.stderr, r.stderr
    r = cli("sessions", "list", "--config", cfg, "--colour", "red")
    assert r.returncode == 2 and "unknown option --colour" in r.stderr, r.stderr
    r = cli("sessions", "replay", "--config", cfg)
    assert r.returncode == 2 and "usage" in r.stderr, r.stderr
    r = cli("sessions", "replay", "0123456789abcdef", "--config", cfg)
    assert r.returncode == 1 and "no session 0123456789abcdef" in r.stderr, r.stderr
    r = cli("audit", "frobnicate", "--config", cfg)
    assert r.returncode == 2 and "usage" in r.stderr, r.stderr
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    r = verify(cfg, "--key", bad)
    assert r.returncode == 2 and "expected 64 hex digits" in r.stderr, r.stderr
    assert len(trail.rows()) == 4, "the trail was changed by a read-only tool"
    assert_verify_ok(cfg)


def test_cli_without_audit_store(gateway_factory):
    gw = gateway_factory.start()
    r = cli("sessions", "list", "--config", gw.config_path)
    assert r.returncode == 2 and "no audit.store is configured" in r.stderr, r.stderr


def test_missing_key_file_with_existing_chain_refuses_start(gateway_factory, tmp_path):
    """A new key would silently start a chain nobody can verify against the old records."""
    gw, trail = make_trail(gateway_factory, tmp_path, sessions=1)
    key = Path(str(trail.db) + ".key")
    key.unlink()
    r = subprocess.run([str(BIN), "serve", "--config", str(gw.config_path)], capture_output=True, text=True,
                       timeout=30, env=dict(os.environ, **gw.env))
    assert r.returncode == 1, r.stderr
    assert "restore the key file" in r.stderr, r.stderr
    assert not key.exists(), "a fresh key file was left behind"


def test_http_rejects_hostile_requests(http_gw):
    need_http(http_gw)
    p, tok = http_gw["port"], http_gw["auditor"]
    status, body = http(p, "/api/sessions?since=last%20tuesday", token=tok)
    assert status == 400 and b"since" in body, body
    status, body = http(p, "/api/sessions/" + "a" * 500, token=tok)
    assert status == 404, body
    status, body = http(p, "/api/sessions/x'%20OR%20'1'='1", token=tok)
    assert status == 404 and json.loads(body)["error"] == "no such session", body
    status, body = http(p, f"/api/sessions/{http_gw['sid']}/../../etc/passwd", token=tok)
    assert status == 404, body
    status, body = http(p, "/api/unknown", token=tok)
    assert status == 404, body
    for bad in ("-5", "0", "abc", "10001", "5x", ""):
        status, body = http(p, f"/api/sessions?limit={bad}", token=tok)
        assert status == 400 and b"limit must be a number from 1 to 10000" in body, (bad, body)
    status, body = http(p, "/api/sessions?limit=1", token=tok)
    assert status == 200 and len(json.loads(body)["sessions"]) == 1, body
    req = urllib.request.Request(f"http://127.0.0.1:{p}/api/sessions", data=b"{}", method="POST")
    req.add_header("Authorization", f"Bearer {tok}")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("POST was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 405, e.code
    status, body = http(p, "/api/sessions", token="x" * 20000)
    assert status in (401, 413, 431), (status, body[:200])
    # The gateway still serves clients and the API after all of that.
    assert http(p, "/healthz")[0] == 200
    http_gw["gw"].assert_serves()


# ---------------------------------------------------------------------------- what clients choose

def test_a_rejected_reparse_leaves_the_statement_that_runs(agw, trail, table):
    """Parse s3 (an INSERT), Parse s3 again with other SQL (the server refuses: the name is
    in use, and keeps the INSERT), then Bind and Execute s3: the record names the INSERT
    that ran, not the SQL of the rejected Parse. The same in one pipeline."""
    t = table(rows=0)
    m, parse = pgwire.msg, parse_msg
    ins = f"INSERT INTO {t} (id, v) VALUES ($1::int, $2)"
    app = app_name("reparse")
    conn = raw_session(agw, "bob", app)
    try:
        conn.exchange(parse("s3", ins) + m(b"S"))
        second = conn.exchange(parse("s3", "SELECT $1::text, $2::text") + m(b"S"))
        assert any(typ == b"E" and pgwire.parse_fields(b).get("C") == "42P05" for typ, b in second), second
        conn.exchange(bind_msg("", "s3", "5", "five") + execute_msg("") + m(b"S"))
        # one pipeline: the second Parse fails, the server skips to Sync, then s3 runs
        conn.send(parse("s3", "SELECT 1") + bind_msg("", "s3", "x", "y") + execute_msg("") + m(b"S")
                  + bind_msg("", "s3", "6", "six") + execute_msg("") + m(b"S"))
        assert _read_until_ready(conn)[0] == "E"
        assert _read_until_ready(conn)[-2:] == ["C", "Z"]
        conn.terminate()
    finally:
        conn.close()
    stmts, ran = sql_params_tags(trail, app)
    # the Execute the server skipped after the failed Parse is recorded with its error
    assert ran == [(ins, ["5", "five"], "INSERT 0 1"), (ins, ["x", "y"], None), (ins, ["6", "six"], "INSERT 0 1")], ran
    assert stmts[1]["body"]["error"]["sqlstate"] == "42P05", stmts[1]["body"]


def test_a_parse_not_yet_answered_does_not_hold_its_name(agw, trail, table):
    """P(x, SQL that fails), Sync, P(x, an INSERT), Bind, Execute, Sync in one write: the
    first Parse fails, so the second one gives x its statement, and the record names the
    INSERT that ran (a name counts as in use only once the server confirmed its Parse)."""
    t = table(rows=0)
    m, parse = pgwire.msg, parse_msg
    ins = f"INSERT INTO {t} (id, v) VALUES ($1::int, $2)"
    app = app_name("unanswered")
    conn = raw_session(agw, "bob", app)
    try:
        conn.send(parse("x", f"SELECT * FROM {t}_nosuch WHERE id = $1") + m(b"S")
                  + parse("x", ins) + bind_msg("", "x", "7", "seven") + execute_msg("") + m(b"S"))
        assert _read_until_ready(conn)[0] == "E"
        assert _read_until_ready(conn)[-2:] == ["C", "Z"]
        conn.terminate()
    finally:
        conn.close()
    _, ran = sql_params_tags(trail, app)
    assert ran == [(ins, ["7", "seven"], "INSERT 0 1")], ran


def test_copy_from_stdin_as_libpq_sends_it(agw, trail, table):
    """libpq's COPY FROM STDIN by the extended protocol: Parse, Bind, Describe, Execute, Sync,
    and after the data CopyDone and Sync. The server ignores the first Sync; counted as owed
    an answer, it shifted every later statement's record onto the next one's result, and the
    session's last statement went unrecorded."""
    t = table(rows=0)
    m = pgwire.msg
    app = app_name("copy_syncs")
    conn = raw_session(agw, "bob", app)
    try:
        conn.send(parse_msg("", f"COPY {t} (id, v) FROM STDIN") + bind_msg("", "") + m(b"D", b"P\0")
                  + execute_msg("") + m(b"S"))
        types = []
        while not types or types[-1] != "G":
            types.append(conn.read_msg()[0].decode())
        conn.send(m(b"d", b"1\tone\n") + m(b"c") + m(b"S"))
        assert _read_until_ready(conn)[-2:] == ["C", "Z"]
        for v in ("A", "B", "C"):
            conn.send(m(b"Q", pgwire.cstr(f"SELECT 'result-{v}' AS v")))
            _read_until_ready(conn)
        conn.terminate()
    finally:
        conn.close()
    _, stmts, _ = session_records(trail, session_id_of(trail, app))
    ran = [(s["body"]["sql"], s["body"].get("tag")) for s in stmts]
    assert ran == [(f"COPY {t} (id, v) FROM STDIN", "COPY 1")] + [
        (f"SELECT 'result-{v}' AS v", "SELECT 1") for v in "ABC"], ran
    assert [s["body"]["result"]["rows"] for s in stmts[1:]] == [[["result-A"]], [["result-B"]], [["result-C"]]]


@pytest.mark.parametrize("how", ["terminate_in_the_same_write", "close_without_terminate"])
def test_a_statement_the_session_ends_behind_is_recorded(agw, trail, table, pg, how):
    """An INSERT followed at once by Terminate (or a closed socket) runs upstream; the session
    ended before its answer came, and its record was dropped with it: a write with no trace.
    It is recorded now, marked unanswered."""
    t = table(rows=0)
    sql = f"INSERT INTO {t} (id, v) VALUES (1, 'behind')"
    app = app_name("behind")
    conn = raw_session(agw, "bob", app)
    try:
        q = pgwire.msg(b"Q", pgwire.cstr(sql))
        conn.sock.sendall(q + (pgwire.msg(b"X") if how == "terminate_in_the_same_write" else b""))
    finally:
        conn.close()
    def ran():
        with pg.super_connect() as c:
            return c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 1
    wait_for(ran, 5, what="the INSERT upstream")
    _, stmts, end = session_records(trail, session_id_of(trail, app))
    assert [s["body"]["sql"] for s in stmts] == [sql], stmts
    b = stmts[0]["body"]
    assert b.get("unanswered") is True or b.get("tag") == "INSERT 0 1", b
    if b.get("unanswered"):
        assert "ended before the server answered" in b["error"]["message"], b
    assert end["body"]["statements"] == 1, end["body"]


def test_export_keeps_going_past_a_user_name_that_is_not_utf8(agw, trail):
    """A failed login's user name is whatever bytes the client sent: it is exported as
    {"hex": ...}, and the records after it are exported too."""
    conn = pgwire.RawConn(agw.host, agw.port, timeout=30)
    body = struct.pack("!I", pgwire.PROTO_30) + b"user\0x\xff\0database\0app\0\0"
    try:
        conn.send(struct.pack("!I", len(body) + 4) + body)
        with pytest.raises(pgwire.ServerError):
            conn.authenticate("x", "any-password")
    finally:
        conn.close()
    wait_for(lambda: any(r["body"].get("user") == {"hex": "78ff"} for r in trail.rows(kind="login_failed")),
             what="the login_failed record")
    after = app_name("afterbad")
    with agw.connect(user="bob", application_name=after) as c:
        c.execute("SELECT 1")
    sid = session_id_of(trail, after)
    session_records(trail, sid)
    r = cli("audit", "export", "--config", agw.config_path)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert any(j["user"] == {"hex": "78ff"} for j in lines), "the login_failed record"
    assert any(j["session_id"] == sid for j in lines), "records after it"


def test_replay_of_a_query_and_a_bound_statement(agw, trail):
    """Two statements in one Query, then a statement with a parameter: the replay ends (its
    statements loop once reused the parameters' index and never did) and shows all three."""
    app = app_name("replayloop")
    conn = raw_session(agw, "bob", app)
    try:
        conn.query("SELECT 1; SELECT 2")
        conn.exchange(parse_msg("", "SELECT $1::text") + bind_msg("", "", "p") + execute_msg("") + pgwire.msg(b"S"))
        conn.terminate()
    finally:
        conn.close()
    sid = session_id_of(trail, app)
    session_records(trail, sid)
    r = cli("sessions", "replay", sid, "--config", agw.config_path, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n[") == 3 and "$1=p" in r.stdout, r.stdout


def test_replay_escapes_control_characters(agw, trail):
    """A value or a name can hold newlines and terminal escapes: the transcript shows them
    as escapes, so no value draws a line of its own (a forged statement) or drives the
    reader's terminal."""
    app = app_name("esc") + "\x1b[31m"
    fake = "x\n(1 row)\n\n[2026-11-23T00:00:00Z] #9  allow  0.1 ms\nDROP TABLE nothing"
    with agw.connect(user="bob", application_name=app) as c:
        c.execute("SELECT %s::text AS v", (fake + "\x07",))
    sid = wait_for(lambda: next((r["body"]["session_id"] for r in trail.rows(kind="session_start")
                                 if r["body"].get("application_name") == app), None), what="the session")
    session_records(trail, sid)
    r = cli("sessions", "replay", sid, "--config", agw.config_path, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout, repr(r.stdout)
    assert "\n[2026-11-23T00:00:00Z] #9" not in r.stdout and "\\n[2026-11-23T00:00:00Z] #9" in r.stdout, r.stdout
    assert "\\x1b[31m" in r.stdout and "\\x07" in r.stdout


def test_replay_marks_invisible_characters(agw, trail):
    """A "Trojan Source" statement: bidi overrides and isolates make a comment read as a
    WHERE clause, in a terminal that orders text (VTE does). The transcript shows them, and
    the zero-width, C1, separator and tag characters, as \\u escapes, in the SQL and in the
    result, while other non-ASCII text stays as it is."""
    app = app_name("bidi")
    rlo, lri, pdi = "\u202e", "\u2066", "\u2069"
    sql = f"SELECT 'ünïcode' AS v /*{rlo} {lri}WHERE id = 42{pdi} {lri}*/, 'a\u200bb\u0085c\u2028d\U000e0041' AS w"
    with agw.connect(user="bob", application_name=app) as c:
        psycopg.ClientCursor(c).execute(sql)
    sid = wait_for(lambda: next((r["body"]["session_id"] for r in trail.rows(kind="session_start")
                                 if r["body"].get("application_name") == app), None), what="the session")
    session_records(trail, sid)
    r = cli("sessions", "replay", sid, "--config", agw.config_path, timeout=20)
    assert r.returncode == 0, r.stderr
    for ch in [rlo, lri, pdi, "\u200b", "\u0085", "\u2028", "\U000e0041"]:
        assert ch not in r.stdout, (ch, r.stdout)
    assert "/*\\u202e \\u2066WHERE id = 42\\u2069 \\u2066*/" in r.stdout, r.stdout
    assert "a\\u200bb\\u0085c\\u2028d\\U000e0041" in r.stdout, r.stdout  # the result cell
    assert "ünïcode" in r.stdout


def test_replay_of_an_altered_hex_field(gateway_factory, tmp_path):
    """A store altered by hand: a record's SQL is {"hex": ...} that is no hex (signs,
    letters). Replay, in the CLI and in the gateway's API, reads it up to what it can decode,
    and stops there; the first decoder (sscanf) read "-f" as a number and wrote past its
    buffer."""
    db = tmp_path / "hexalt.db"
    gw = start_audited(gateway_factory, f"sqlite:{db}", {"node": "hx"})
    app = app_name("hexalt")
    with gw.connect(application_name=app) as c:
        c.execute(f"SELECT 'hexvictim-{SFX}'")
    trail = SqliteTrail(db)
    rec = record_with(trail, f"hexvictim-{SFX}", timeout=10)
    sid = rec["body"]["session_id"]
    session_records(trail, sid)
    assert gw.stop() == 0
    bad = '{"hex":"41' + "-f" * 4000 + '"}'
    trail.edit_record(rec["seq"], lambda ln: re.sub(r'"sql":"SELECT \'hexvictim-[0-9a-f]+\'"', '"sql":' + bad, ln))
    r = cli("sessions", "replay", sid, "--config", gw.config_path, timeout=20)
    assert r.returncode == 0, r.stderr
    assert f"SELECT 'hexvictim-{SFX}'" not in r.stdout and "\n  A\n" in r.stdout, r.stdout


def test_replay_shows_sql_as_sql(agw, trail):
    """A statement's SQL keeps its lines, indented: a comment cannot draw a header or an error
    line of the transcript's own. SQL in a client encoding other than UTF-8 is stored as
    {"hex": ...}; the transcript printed it as an empty line, and now shows its bytes."""
    app = app_name("sqlshow")
    forged = "SELECT 1 /*\nERROR:  permission denied (SQLSTATE 42501)\n\n[2026-11-23T00:00:00Z] #8  allow  0.1 ms\nx */"
    with agw.connect(user="bob", application_name=app) as c:
        c.execute(forged)
        c.execute("SET client_encoding TO 'LATIN1'")
        c.execute("SELECT 2 /* caf\u00e9 */")
    sid = session_id_of(trail, app)
    session_records(trail, sid)
    r = cli("sessions", "replay", sid, "--config", agw.config_path, timeout=20)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\n[2026-11-23T00:00:00Z] #8" not in out and "\nERROR:  permission denied" not in out, out
    assert "\n  [2026-11-23T00:00:00Z] #8" in out, out
    assert "  SELECT 2 /* caf\\xe9 */" in out, out
