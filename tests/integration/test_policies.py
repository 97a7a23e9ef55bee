"""Statement enforcement (docs/policies.md) through real clients: psycopg (simple, extended,
pipeline), psql, node-postgres (tests/node/policy_check.js) and a raw protocol client.

Every refusal is checked for SQLSTATE 42501 and the message form
"pgcordon: blocked by policy NAME: ...". Tables are created per run (names carry a random
suffix; the PostgreSQL instance is shared) through a direct superuser connection and owned
by gw_scram, the upstream role behind the gateway database "app"."""

import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg.pq import TransactionStatus

import pgwire
from conftest import (BIN, DBNAME, LOCAL_USERS, REPO, ROLE_PW, SCRAM_PW_ENV, GatewayFactory,
                      require_binary, scram_verifier)

SFX = secrets.token_hex(3)
NODE_DIR = REPO / "tests" / "node"
POLICY_PW = "PolicyUser-5e6f7a8b9c"


def name(base):
    return f"pol_{base}_{SFX}"


# Objects the module gateway's policies name (created by the `objects` fixture).
T_CUST = name("cust")          # select_without_where
T_IN = name("in")              # in scope as public.T_IN
T_IN2 = name("in2")            # in scope as a bare name (= public.T_IN2)
S_IN = name("sin")             # schema in scope as S_IN.*
S_OUT = name("sout")           # schema out of scope, holds a table named T_IN
T_OUT = name("out")            # out of scope
V_OUT = name("vout")           # a view over T_OUT, out of scope
T_BIG = name("big")            # 1000 rows; cross joins of it stream "forever"
SEQ = name("seq")

OPEN = "open"
GUARD = "guard"
RO = "ro"
SCOPE = "scope"
CAP = "cap"
SLOW = "slow"
MAX_ROWS = 5

GUARD_KINDS = ["drop_table", "truncate", "drop_database", "alter_system", "copy_to_program",
               "do_block", "create_function", "set_role", "reset_role",
               "set_session_authorization"]


def add_users(cfg, users):
    """users: {name: [groups]}; all get POLICY_PW."""
    for u, groups in users.items():
        cfg["users"][u] = {"password": scram_verifier(POLICY_PW), "groups": list(groups)}


def password_of(user):
    return LOCAL_USERS.get(user, POLICY_PW)


# ---------------------------------------------------------------------------- assertions

def expected_message(policy, what):
    """A regex for the whole refusal message; `what` is literal text or a compiled regex."""
    tail = what.pattern if isinstance(what, re.Pattern) else re.escape(what)
    return re.compile(r"pgcordon: blocked by policy " + re.escape(policy) + ": " + tail)


def check_refusal(e, policy, what):
    assert isinstance(e, psycopg.Error), repr(e)
    assert e.sqlstate == "42501", f"expected 42501, got {type(e).__name__} {e.sqlstate}: {e}"
    msg = e.diag.message_primary
    assert expected_message(policy, what).fullmatch(msg or ""), \
        f"message {msg!r} does not match policy {policy!r} / {what!r}"


def refused(conn, sql, policy, what, params=None, **kw):
    before = conn.info.transaction_status
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, params, **kw)
    check_refusal(ei.value, policy, what)
    if before == TransactionStatus.IDLE:
        assert conn.info.transaction_status == TransactionStatus.IDLE
    else:
        assert conn.info.transaction_status == TransactionStatus.INERROR
    return ei.value


def connect(gw, user, **kw):
    return gw.connect(user=user, password=password_of(user), **kw)


# ---------------------------------------------------------------------------- psql / node / raw

def clean_env(password):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password, PGCONNECT_TIMEOUT="10", LC_ALL="C")
    return env


def psql(gw, user, args, timeout=60):
    conn = f"host={gw.host} port={gw.port} user={user} dbname=app sslmode=disable"
    return subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=0",
                           "-v", "VERBOSITY=verbose", "-d", conn] + list(args),
                          env=clean_env(password_of(user)), capture_output=True, text=True,
                          timeout=timeout)


PSQL_ERROR = re.compile(r"^(?:psql:[^:]*:(\d+): )?ERROR:  ([0-9A-Z]{5}): (.*)$", re.M)


def psql_errors(stderr):
    """[(line or None, sqlstate, message)] from psql's stderr at VERBOSITY verbose."""
    return [(int(m[1]) if m[1] else None, m[2], m[3]) for m in PSQL_ERROR.finditer(stderr)]


def run_node(gw, user, steps, dbname="app", password=None):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found on PATH (scripts/deps.sh installs it)")
    if not (NODE_DIR / "node_modules" / "pg").is_dir():
        pytest.fail(f"node modules missing in {NODE_DIR} (run scripts/deps.sh)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=gw.host, PGPORT=str(gw.port), PGUSER=user,
               PGPASSWORD=password_of(user) if password is None else password,
               PGDATABASE=dbname, POLICY_STEPS=json.dumps(steps))
    r = subprocess.run([node, "policy_check.js"], cwd=NODE_DIR, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"policy_check.js failed:\n{r.stderr}"
    return json.loads(r.stdout)


def node_refused(res, policy, what):
    assert res["ok"] is False, f"expected a refusal, got {res}"
    assert res["code"] == "42501", res
    assert expected_message(policy, what).fullmatch(res["message"]), res


def raw_connect(gw, user, extra=None):
    c = pgwire.RawConn(gw.host, gw.port, timeout=30)
    c.startup(user, "app", password_of(user), extra=extra)
    return c


def raw_login_error(host, port, user, password, dbname="app", extra=None):
    c = pgwire.RawConn(host, port, timeout=30)
    try:
        with pytest.raises(pgwire.ServerError) as ei:
            c.startup(user, dbname, password, extra=extra)
        return ei.value.fields
    finally:
        c.close()


def raw_transcript(conn, payload, nready=1):
    """Send payload; return [(type, fields or None)] up to and including the nready-th
    ReadyForQuery."""
    conn.send(payload)
    out = []
    while True:
        typ, body = conn.read_msg()
        if typ in (b"E", b"N"):
            out.append((typ.decode(), pgwire.parse_fields(body)))
        elif typ == b"Z":
            out.append(("Z", body.decode()))
            nready -= 1
            if nready == 0:
                return out
        elif typ in (b"S", b"A"):
            continue
        else:
            out.append((typ.decode(), None))


def ext(sql, params=()):
    """Parse (unnamed) + Bind + Describe portal + Execute, text parameters."""
    m = pgwire.msg
    body = pgwire.cstr("") + pgwire.cstr(sql) + struct.pack("!H", 0)
    out = m(b"P", body)
    b = pgwire.cstr("") + pgwire.cstr("") + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        v = str(p).encode()
        b += struct.pack("!i", len(v)) + v
    b += struct.pack("!H", 0)
    out += m(b"B", b)
    out += m(b"D", b"P" + pgwire.cstr(""))
    out += m(b"E", pgwire.cstr("") + struct.pack("!I", 0))
    return out


SYNC = pgwire.msg(b"S")


def summ(tr):
    """A compact, readable form of a transcript for assertion messages."""
    out = []
    for typ, extra in tr:
        if typ in ("E", "N"):
            out.append(f"{typ}({extra.get('C')}: {extra.get('M')})")
        elif typ == "Z":
            out.append(f"Z({extra})")
        else:
            out.append(typ)
    return " ".join(out)


def q(sql):
    return pgwire.msg(b"Q", pgwire.cstr(sql))


# ---------------------------------------------------------------------------- fixtures

def su_exec(pg, *stmts):
    with pg.super_connect() as c:
        for s in stmts:
            c.execute(s)


@pytest.fixture(scope="module")
def objects(pg):
    su_exec(pg,
            f"CREATE TABLE {T_CUST} (id int PRIMARY KEY, name text)",
            f"INSERT INTO {T_CUST} SELECT g, 'cust ' || g FROM generate_series(1, 3) g",
            f"CREATE TABLE {T_IN} (id int PRIMARY KEY, v text)",
            f"INSERT INTO {T_IN} VALUES (1, 'in one'), (2, 'in two')",
            f"CREATE TABLE {T_IN2} (id int PRIMARY KEY, w text)",
            f"INSERT INTO {T_IN2} VALUES (1, 'in2 one')",
            f"CREATE SCHEMA {S_IN} AUTHORIZATION gw_scram",
            f"CREATE TABLE {S_IN}.t (id int)",
            f"INSERT INTO {S_IN}.t VALUES (7)",
            f"CREATE SCHEMA {S_OUT} AUTHORIZATION gw_scram",
            f"CREATE TABLE {S_OUT}.{T_IN} (id int, v text)",
            f"INSERT INTO {S_OUT}.{T_IN} VALUES (99, 'shadow')",
            f"CREATE TABLE {T_OUT} (id int PRIMARY KEY, secret text)",
            f"INSERT INTO {T_OUT} VALUES (1, 'top secret')",
            f"CREATE VIEW {V_OUT} AS SELECT * FROM {T_OUT}",
            f"CREATE TABLE {T_BIG} (id int)",
            f"INSERT INTO {T_BIG} SELECT generate_series(1, 1000)",
            f"CREATE SEQUENCE {SEQ}")
    for obj in (T_CUST, T_IN, T_IN2, f"{S_IN}.t", f"{S_OUT}.{T_IN}", T_OUT, V_OUT, T_BIG, SEQ):
        su_exec(pg, f"ALTER {'VIEW' if obj == V_OUT else 'SEQUENCE' if obj == SEQ else 'TABLE'} "
                    f"{obj} OWNER TO gw_scram")
    yield
    su_exec(pg, f"DROP SCHEMA IF EXISTS {S_IN} CASCADE", f"DROP SCHEMA IF EXISTS {S_OUT} CASCADE",
            f"DROP VIEW IF EXISTS {V_OUT}",
            *[f"DROP TABLE IF EXISTS {t}" for t in (T_CUST, T_IN, T_IN2, T_OUT, T_BIG)],
            f"DROP SEQUENCE IF EXISTS {SEQ}")


def module_policies():
    return [
        {"name": OPEN, "match": {"users": ["alice", "bob"]}},
        {"name": GUARD, "match": {"groups": ["agents"]},
         "block": [{"statements": GUARD_KINDS},
                   {"functions": ["pg_sleep", "pg_read_file"]},
                   {"delete_without_where": True},
                   {"update_without_where": True},
                   {"select_without_where": [f"public.{T_CUST}"]}]},
        {"name": RO, "match": {"users": ["reader"]}, "access": {"read_only": True}},
        {"name": SCOPE, "match": {"users": ["scoped"]},
         "access": {"tables": [f"public.{T_IN}", T_IN2, f"{S_IN}.*"]}},
        {"name": CAP, "match": {"users": ["capped"]}, "limits": {"max_rows": MAX_ROWS}},
        {"name": SLOW, "match": {"users": ["timed"]}, "limits": {"statement_timeout": "1s"}},
        {"name": "elsewhere", "match": {"users": ["nobody"], "databases": ["app_md5"]}},
    ]


@pytest.fixture(scope="module")
def pgw(pg, certs, objects, tmp_path_factory):
    """One gateway for the module: one identity per policy, default deny."""
    require_binary()
    f = GatewayFactory(pg, certs, tmp_path_factory.mktemp("polgw"))

    def mutate(cfg):
        add_users(cfg, {"blocker": ["agents"], "reader": ["readers"], "scoped": ["scoped"],
                        "capped": ["capped"], "timed": ["timed"], "nobody": ["nogroup"]})
        cfg["default"] = "deny"
        cfg["policies"] = module_policies()

    g = f.start(mutate)
    yield g
    f.cleanup()


@pytest.fixture(autouse=True)
def _gateway_keeps_serving(request):
    """After every test that used the module gateway: it still serves new sessions, for an
    unrestricted and a restricted identity alike."""
    yield
    if "pgw" in request.fixturenames:
        g = request.getfixturevalue("pgw")
        g.assert_serves(user="alice")
        with connect(g, "blocker") as c:
            assert c.execute("SELECT 1 + %s::int", (1,)).fetchone() == (2,)


_table_no = [0]


@pytest.fixture
def mktable(pg):
    """mktable(rows=3) -> a fresh table (id int primary key, v text) owned by gw_scram."""
    made = []

    def make(rows=3):
        _table_no[0] += 1
        t = name(f"t{_table_no[0]}")
        su_exec(pg, f"CREATE TABLE {t} (id int PRIMARY KEY, v text)",
                f"INSERT INTO {t} SELECT g, 'row ' || g FROM generate_series(1, {rows}) g",
                f"ALTER TABLE {t} OWNER TO gw_scram")
        made.append(t)
        return t

    yield make
    su_exec(pg, *[f"DROP TABLE IF EXISTS {t} CASCADE" for t in made])


def table_rows(pg, t):
    """Rows of t via a direct superuser connection (None if it no longer exists)."""
    with pg.super_connect() as c:
        if c.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0] is None:
            return None
        return c.execute(f"SELECT id, v FROM {t} ORDER BY id").fetchall()


def original(n=3):
    return [(i, f"row {i}") for i in range(1, n + 1)]


# ---------------------------------------------------------------------------- blocked statements

# (id, SQL with {t} for a fresh table and {cust}, expected text after "POLICY: ")
BLOCK_CASES = [
    ("drop_table", "DROP TABLE {t}", "DROP TABLE is not allowed"),
    ("drop_table_if_exists", "DROP TABLE IF EXISTS {t}, {t}_nonexistent",
     "DROP TABLE is not allowed"),
    ("truncate", "TRUNCATE {t}", "TRUNCATE is not allowed"),
    ("truncate_table_kw", "TRUNCATE TABLE ONLY {t} RESTART IDENTITY", "TRUNCATE is not allowed"),
    ("drop_database", "DROP DATABASE pol_nosuchdb", "DROP DATABASE is not allowed"),
    ("alter_system", "ALTER SYSTEM SET work_mem = '8MB'", "ALTER SYSTEM is not allowed"),
    ("copy_to_program", "COPY {t} TO PROGRAM 'cat >/dev/null'", "COPY TO PROGRAM is not allowed"),
    ("copy_query_to_program", "COPY (SELECT * FROM {t}) TO PROGRAM 'cat >/dev/null'",
     "COPY TO PROGRAM is not allowed"),
    ("do_block", "DO $$BEGIN DELETE FROM {t} WHERE id = 1; END$$", "DO BLOCK is not allowed"),
    ("create_function", "CREATE FUNCTION {t}_f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
     "CREATE FUNCTION is not allowed"),
    ("create_or_replace_function",
     "CREATE OR REPLACE FUNCTION {t}_g(int) RETURNS int LANGUAGE sql AS 'SELECT $1'",
     "CREATE FUNCTION is not allowed"),
    ("set_role", "SET ROLE postgres", "SET ROLE is not allowed"),
    ("set_local_role", "SET LOCAL ROLE NONE", "SET ROLE is not allowed"),
    ("reset_role", "RESET ROLE", "RESET ROLE is not allowed"),
    ("set_session_authorization", "SET SESSION AUTHORIZATION postgres",
     "SET SESSION AUTHORIZATION is not allowed"),
    ("set_config_role", "SELECT set_config('role', 'postgres', false)", "SET ROLE is not allowed"),
    ("set_config_role_upper", "SELECT pg_catalog.set_config('ROLE', 'postgres', true)",
     "SET ROLE is not allowed"),
    # A name that is not a literal counts as every role-changing kind: any of them may be
    # the one named.
    ("set_config_computed", "SELECT set_config(lower('ROLE'), 'postgres', false)",
     re.compile(r"(SET ROLE|RESET ROLE|SET SESSION AUTHORIZATION) is not allowed")),
    ("set_config_session_authorization",
     "SELECT set_config('session_authorization', 'postgres', false)",
     "SET SESSION AUTHORIZATION is not allowed"),
    ("pg_sleep", "SELECT pg_sleep(0)", "function pg_sleep is not allowed"),
    ("pg_sleep_quoted", 'SELECT "pg_sleep"(0)', "function pg_sleep is not allowed"),
    ("pg_sleep_qualified_quoted", 'SELECT "pg_catalog"."pg_sleep"(0)',
     "function pg_catalog.pg_sleep is not allowed"),
    ("pg_sleep_in_from", "SELECT * FROM pg_sleep(0)", "function pg_sleep is not allowed"),
    ("pg_sleep_in_subquery",
     "SELECT id FROM {t} WHERE id = (SELECT count(*) FROM (SELECT pg_sleep(0)) s)",
     "function pg_sleep is not allowed"),
    ("pg_read_file", "SELECT pg_read_file('/etc/hostname')", "function pg_read_file is not allowed"),
    ("pg_read_file_qualified", "SELECT pg_catalog.pg_read_file('/etc/hostname')",
     "function pg_catalog.pg_read_file is not allowed"),
    ("pg_read_file_upper", "SELECT PG_CATALOG.PG_READ_FILE('/etc/hostname')",
     "function pg_catalog.pg_read_file is not allowed"),
    ("delete_no_where", "DELETE FROM {t}", "DELETE without WHERE"),
    ("delete_where_true", "DELETE FROM {t} WHERE true", "DELETE without WHERE"),
    ("delete_where_1_eq_1", "DELETE FROM {t} WHERE 1=1", "DELETE without WHERE"),
    ("delete_using_no_where", "DELETE FROM {t} USING {cust}", "DELETE without WHERE"),
    ("delete_in_writable_cte",
     "WITH d AS (DELETE FROM {t} RETURNING id) SELECT count(*) FROM d",
     "DELETE without WHERE"),
    ("delete_in_explain_analyze", "EXPLAIN ANALYZE DELETE FROM {t}", "DELETE without WHERE"),
    ("delete_in_prepare", "PREPARE {t}_p AS DELETE FROM {t}", "DELETE without WHERE"),
    ("update_in_explain_analyze", "EXPLAIN (ANALYZE) UPDATE {t} SET v = 'x'",
     "UPDATE without WHERE"),
    ("update_no_where", "UPDATE {t} SET v = 'x'", "UPDATE without WHERE"),
    ("update_where_true", "UPDATE {t} SET v = 'x' WHERE true", "UPDATE without WHERE"),
    ("update_where_1_eq_1", "UPDATE {t} SET v = 'x' WHERE 1 = 1", "UPDATE without WHERE"),
    ("update_in_writable_cte",
     "WITH u AS (UPDATE {t} SET v = 'x' RETURNING id) SELECT count(*) FROM u",
     "UPDATE without WHERE"),
    ("select_cust", "SELECT * FROM {cust}", re.compile(r"SELECT from (public\.)?{cust} without WHERE")),
    ("select_cust_qualified", "SELECT id FROM public.{cust}",
     re.compile(r"SELECT from (public\.)?{cust} without WHERE")),
    ("select_cust_where_true", "SELECT * FROM {cust} WHERE true",
     re.compile(r"SELECT from (public\.)?{cust} without WHERE")),
    ("select_cust_join", "SELECT * FROM items i JOIN {cust} c ON c.id = i.id",
     re.compile(r"SELECT from (public\.)?{cust} without WHERE")),
    ("select_cust_comma_join", "SELECT i.id FROM items i, {cust} c",
     re.compile(r"SELECT from (public\.)?{cust} without WHERE")),
]

ALLOWED_CASES = [
    ("delete_with_where", "DELETE FROM {t} WHERE id = 1", "DELETE 1"),
    ("update_with_where", "UPDATE {t} SET v = 'updated' WHERE id = 2", "UPDATE 1"),
    ("cte_delete_with_where",
     "WITH d AS (DELETE FROM {t} WHERE id = 3 RETURNING id) SELECT count(*) FROM d", "SELECT 1"),
    ("select_cust_with_where", "SELECT * FROM {cust} WHERE id = 1", "SELECT 1"),
    ("select_cust_join_where",
     "SELECT * FROM items i JOIN {cust} c ON c.id = i.id WHERE c.id < 3", "SELECT 2"),
    ("select_other_table_no_where", "SELECT * FROM items", "SELECT 100"),
    ("select_no_from", "SELECT now() IS NOT NULL", "SELECT 1"),
    ("drop_view_not_blocked", "DROP VIEW IF EXISTS pol_nosuchview", "DROP VIEW"),
    ("set_other", "SET work_mem = '8MB'", "SET"),
    ("set_config_other", "SELECT set_config('work_mem', '8MB', false)", "SELECT 1"),
    ("create_temp_table", "CREATE TEMP TABLE {t}_tmp (a int)", "CREATE TABLE"),
]


def fmt(sql, t):
    return sql.format(t=t, cust=T_CUST)


def fmt_what(what):
    if isinstance(what, re.Pattern):
        return re.compile(what.pattern.format(cust=re.escape(T_CUST)))
    return what


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_blocked_psycopg(pgw, pg, mktable, case, mode):
    _, sql, what = case
    t = mktable()
    kw = {"simple": {}, "extended": {"binary": True}, "prepared": {"prepare": True}}[mode]
    with connect(pgw, "blocker") as c:
        refused(c, fmt(sql, t), GUARD, fmt_what(what), **kw)
        # The session goes on.
        assert c.execute(f"SELECT count(*) FROM {t} WHERE id > %s", (0,)).fetchone() == (3,)
        assert c.execute("SHOW role").fetchone() == ("none",)
        assert c.execute("SELECT current_user").fetchone() == ("gw_scram",)
    assert table_rows(pg, t) == original()


@pytest.mark.parametrize("case", ALLOWED_CASES, ids=[c[0] for c in ALLOWED_CASES])
def test_allowed_psycopg(pgw, mktable, case):
    _, sql, tag = case
    with connect(pgw, "blocker") as c:
        for kw in ({}, {"binary": True}, {"prepare": True}):
            t = mktable()
            cur = c.execute(fmt(sql, t), **kw)
            assert cur.statusmessage == tag, (kw, cur.statusmessage)


def test_blocked_and_allowed_psql(pgw, pg, mktable, tmp_path):
    t = mktable()
    lines = [fmt(sql, t) + ";" for _, sql, _ in BLOCK_CASES]
    allowed = ["SELECT count(*) FROM {t} WHERE id > 0;", "DELETE FROM {t} WHERE id = 3;",
               "SELECT * FROM {cust} WHERE id = 2;"]
    script = tmp_path / "blocked.sql"
    script.write_text("\n".join(lines + [fmt(a, t) for a in allowed]) + "\n")
    r = psql(pgw, "blocker", ["-f", str(script)])
    errs = psql_errors(r.stderr)
    by_line = {ln: (code, m) for ln, code, m in errs}
    for i, (cid, _, what) in enumerate(BLOCK_CASES, start=1):
        assert i in by_line, f"{cid} (line {i}) was not refused; stderr:\n{r.stderr}"
        code, m = by_line[i]
        assert code == "42501", (cid, code, m)
        assert expected_message(GUARD, fmt_what(what)).fullmatch(m), (cid, m)
    assert len(errs) == len(BLOCK_CASES), r.stderr
    out = r.stdout.splitlines()
    assert "3" in out and "2|cust 2" in out, r.stdout
    assert table_rows(pg, t) == original(2)


def test_node_blocked_allowed_extended(pgw, pg, mktable):
    t = mktable()
    steps = [
        {"text": f"DROP TABLE {t}"},                                           # 0 simple, blocked
        {"text": f"SELECT count(*)::int FROM {t} WHERE id > 0"},               # 1 simple, ok
        {"text": "SELECT pg_sleep($1)", "values": [0]},                        # 2 extended, blocked
        {"text": "SELECT $1::int + 1 AS v", "values": [41]},                   # 3 extended, ok
        {"text": f"DELETE FROM {t}", "name": "pol_del"},                       # 4 named, blocked
        {"text": f"DELETE FROM {t} WHERE id = $1", "values": [1]},             # 5 extended, ok
        {"text": f"SELECT 1; TRUNCATE {t}"},                                   # 6 multi, blocked
        {"text": "SELEC 1"},                                                   # 7 syntax error
        {"text": f"UPDATE {t} SET v = $1 WHERE true", "values": ["x"]},        # 8 extended, blocked
        {"text": "SELECT set_config('role', $1, false)", "values": ["postgres"]},  # 9 blocked
        {"text": f"SELECT * FROM {T_CUST}", "values": []},                     # 10 simple, blocked
        {"text": f"SELECT name FROM {T_CUST} WHERE id = $1", "values": [3]},   # 11 ok
        {"text": f"SELECT count(*)::int FROM {t} WHERE id > $1", "values": [0]},  # 12 ok
    ]
    out = run_node(pgw, "blocker", steps)
    assert out["connect"] is None
    res = out["results"]
    node_refused(res[0], GUARD, "DROP TABLE is not allowed")
    assert res[1]["ok"] and res[1]["rows"] == [[3]]
    node_refused(res[2], GUARD, "function pg_sleep is not allowed")
    assert res[3]["ok"] and res[3]["rows"] == [[42]]
    node_refused(res[4], GUARD, "DELETE without WHERE")
    assert res[5]["ok"] and res[5]["rowCount"] == 1
    node_refused(res[6], GUARD, "TRUNCATE is not allowed")
    assert res[7]["ok"] is False and res[7]["code"] == "42601", res[7]
    assert 'syntax error at or near "SELEC"' in res[7]["message"], res[7]
    node_refused(res[8], GUARD, "UPDATE without WHERE")
    node_refused(res[9], GUARD, "SET ROLE is not allowed")
    node_refused(res[10], GUARD, re.compile(rf"SELECT from (public\.)?{T_CUST} without WHERE"))
    assert res[11]["ok"] and res[11]["rows"] == [["cust 3"]]
    assert res[12]["ok"] and res[12]["rows"] == [[2]]
    assert table_rows(pg, t) == original()[1:]


# ---------------------------------------------------------------------------- multi-statement

def test_multi_statement_refused_as_a_whole_psycopg(pgw, pg, mktable):
    t = mktable()
    with connect(pgw, "blocker") as c:
        # No parameters: psycopg sends one simple Query with all of it.
        refused(c, f"INSERT INTO {t} VALUES (50, 'fifty'); DROP TABLE {t}", GUARD,
                "DROP TABLE is not allowed")
        refused(c, f"SELECT 1; UPDATE {t} SET v = 'x' WHERE id = 1; DELETE FROM {t}", GUARD,
                "DELETE without WHERE")
        refused(c, f"BEGIN; INSERT INTO {t} VALUES (51, 'x'); COMMIT; SELECT pg_sleep(0)",
                GUARD, "function pg_sleep is not allowed")
        assert c.info.transaction_status == TransactionStatus.IDLE
        # A string of allowed statements runs whole.
        c.execute(f"INSERT INTO {t} VALUES (52, 'ok'); DELETE FROM {t} WHERE id = 52")
    assert table_rows(pg, t) == original()


def test_multi_statement_refused_as_a_whole_psql(pgw, pg, mktable):
    t = mktable()
    r = psql(pgw, "blocker", ["-c", f"INSERT INTO {t} VALUES (60, 'sixty'); TRUNCATE {t}; "
                                    f"SELECT 1"])
    errs = psql_errors(r.stderr)
    assert len(errs) == 1, r.stderr
    assert errs[0][1] == "42501"
    assert expected_message(GUARD, "TRUNCATE is not allowed").fullmatch(errs[0][2]), errs
    assert "INSERT" not in r.stdout
    r = psql(pgw, "blocker", ["-c", f"UPDATE {t} SET v = 'y' WHERE id = 1; "
                                    f"SELECT pg_catalog.pg_read_file('/etc/hostname')"])
    errs = psql_errors(r.stderr)
    assert len(errs) == 1 and errs[0][1] == "42501", r.stderr
    assert expected_message(GUARD, "function pg_catalog.pg_read_file is not allowed"
                            ).fullmatch(errs[0][2]), errs
    assert table_rows(pg, t) == original()


# ---------------------------------------------------------------------------- syntax errors

def test_syntax_error_refused_with_parser_message(pgw):
    with connect(pgw, "blocker") as c:
        for kw in ({}, {"binary": True}):
            with pytest.raises(pgerrors.SyntaxError) as ei:
                c.execute("SELEC 1", **kw)
            assert ei.value.sqlstate == "42601"
            assert 'syntax error at or near "SELEC"' in ei.value.diag.message_primary
            assert c.execute("SELECT 1").fetchone() == (1,)
        # A syntax error in a multi-statement string refuses the whole string.
        with pytest.raises(pgerrors.SyntaxError):
            c.execute("SELECT 1; SELECT FROM WHERE")
    r = psql(pgw, "blocker", ["-c", "SELEC 1"])
    errs = psql_errors(r.stderr)
    assert errs and errs[0][1] == "42601" and 'syntax error at or near "SELEC"' in errs[0][2], \
        r.stderr


# ---------------------------------------------------------------------------- statements the gateway cannot inspect

DEEP = "pgcordon: cannot inspect statement: the statement nests too deeply to inspect"


def test_deep_statement_refused_and_gateway_serves(pgw):
    """A left-deep chain nests one parse-tree level per operator. libpg_query's JSON writer
    recursed per level: 140 KB of SELECT 1+1+... from any restricted session overflowed a
    worker's stack and killed the gateway (SIGSEGV), every session with it."""
    with connect(pgw, "blocker") as bystander, connect(pgw, "blocker") as c:
        for sql in ["SELECT 1" + "+1" * 70000, "SELECT 1" + "+1" * 400000,
                    "SELECT 'a'" + "||'a'" * 100000, "SELECT 1" + "::int" * 150000,
                    "SELECT 1" + "+1" * 1100]:
            for kw in ({}, {"binary": True}):  # Query, then Parse/Bind/Execute
                with pytest.raises(pgerrors.StatementTooComplex) as ei:
                    c.execute(sql, **kw)
                assert ei.value.sqlstate == "54001"
                assert ei.value.diag.message_primary == DEEP
                assert c.info.transaction_status == TransactionStatus.IDLE
                assert c.execute("SELECT 2").fetchone() == (2,)
        # Inside a transaction block: refused like any refusal, the block fails on both sides.
        c.execute("BEGIN")
        with pytest.raises(pgerrors.StatementTooComplex):
            c.execute("SELECT 1" + "+1" * 70000)
        assert c.info.transaction_status == TransactionStatus.INERROR
        c.execute("ROLLBACK")
        # Below the depth the inspection reads, and long texts parsed off the worker's stack.
        assert c.execute("SELECT 1" + "+1" * 900).fetchone() == (901,)
        ids = ",".join(["7"] * 60000)
        assert c.execute(f"SELECT count(*) FROM (VALUES (7)) v(a) WHERE a IN ({ids})",
                         binary=True).fetchone() == (1,)
        assert bystander.execute("SELECT 3").fetchone() == (3,)
    assert pgw.alive()


def test_long_blocked_statement_refusal_is_intact(pgw, pg, mktable):
    """Texts over 8 KiB are not cached: their facts, and the decision inside them, were freed
    before the refusal was built from that decision."""
    t = mktable()
    def pad(i):
        return f"/* {i} " + "x" * 20000 + " */"

    with connect(pgw, "blocker") as c:
        for i in range(20):
            for kw in ({}, {"binary": True}):
                refused(c, f"DROP TABLE {t} {pad(i)}", GUARD, "DROP TABLE is not allowed", **kw)
                refused(c, f"DELETE FROM {t} {pad(i)}", GUARD, "DELETE without WHERE", **kw)
        assert c.execute(f"SELECT count(*) FROM {t} {pad(0)}").fetchone() == (3,)
    assert table_rows(pg, t) == original()


def test_max_statement_size(gateway_factory, pg, mktable):
    t = mktable()

    def mutate(cfg):
        add_users(cfg, {"agent": ["agents"]})
        cfg["limits"]["max_statement_size"] = "4KiB"
        cfg["default"] = "deny"
        cfg["policies"] = [{"name": OPEN, "match": {"users": ["alice"]}},
                           {"name": GUARD, "match": {"groups": ["agents"]},
                            "block": [{"statements": ["drop_table"]}]}]

    g = gateway_factory.start(mutate)

    def padded(n):
        sql = f"SELECT count(*) FROM {t} /* "
        return sql + "x" * (n - len(sql) - 3) + " */"

    too_long = ("pgcordon: statement too large to inspect (4097 bytes; "
                "limits.max_statement_size is 4096)")
    with connect(g, "agent") as c:
        for kw in ({}, {"binary": True}):
            assert c.execute(padded(4096), **kw).fetchone() == (3,)
            with pytest.raises(pgerrors.ProgramLimitExceeded) as ei:
                c.execute(padded(4097), **kw)
            assert ei.value.diag.message_primary == too_long
            assert c.execute(padded(4096), **kw).fetchone() == (3,)
        # Refused unread: a DROP in it is no less refused, the server never saw it.
        with pytest.raises(pgerrors.ProgramLimitExceeded):
            c.execute(f"DROP TABLE {t}; " + padded(5000))
    assert table_rows(pg, t) == original()
    assert g.count_log(r"event=statement_blocked .*rule=size reason=") == 3
    # An identity no policy restricts is not inspected, so not limited.
    with connect(g, "alice") as c:
        assert c.execute(padded(100000)).fetchone() == (3,)
    g.assert_serves()


def test_long_statement_inspected_off_the_worker(gateway_factory, pg, mktable):
    """Inspecting a statement near limits.max_statement_size takes seconds. On the worker,
    every other session of that worker waited that long, and a client could repeat it."""
    t = mktable()

    def mutate(cfg):
        cfg["listen"]["workers"] = 1  # the bystander shares the worker
        add_users(cfg, {"agent": ["agents"]})
        cfg["default"] = "deny"
        cfg["policies"] = [{"name": OPEN, "match": {"users": ["alice"]}},
                           {"name": GUARD, "match": {"groups": ["agents"]},
                            "block": [{"statements": ["drop_table"]}]}]

    g = gateway_factory.start(mutate)
    ones = ",".join(["1"] * 450000)
    big = f"SELECT count(*) FROM (VALUES (1)) v(a) WHERE a IN ({ones})"
    assert 8192 < len(big) < 1024 * 1024
    with connect(g, "agent") as bystander, connect(g, "agent") as c:
        # Closed while their statements wait or run: the jobs go with them, nothing else does.
        for _ in range(4):
            raw = raw_connect(g, "agent")
            raw.send(pgwire.msg(b"Q", pgwire.cstr(big)))
            raw.close()
        got = {}

        def run():
            t0 = time.monotonic()
            try:
                got["rows"] = c.execute(big).fetchall()
            finally:
                got["took"] = time.monotonic() - t0

        th = threading.Thread(target=run)
        th.start()
        time.sleep(0.3)
        waits = []
        for i in range(10):
            t0 = time.monotonic()
            assert bystander.execute("SELECT %s::int", (i,)).fetchone() == (i,)
            waits.append(time.monotonic() - t0)
        th.join(120)
        assert not th.is_alive()
        assert got["rows"] == [(1,)]
        # The bystander was answered while the long statement was inspected, not after it.
        assert got["took"] > 1.0, got
        assert max(waits) < got["took"] / 4, (waits, got)
        # Judged like any statement once its facts are in: a DROP in it is refused.
        for kw in ({}, {"binary": True}):
            refused(c, f"DROP TABLE {t} /* {ones} */", GUARD, "DROP TABLE is not allowed", **kw)
            assert c.execute("SELECT 2").fetchone() == (2,)
    assert table_rows(pg, t) == original()
    g.assert_serves()
    # SIGTERM while one is inspected: it is in flight, so it runs and answers first.
    with connect(g, "agent") as c:
        got.clear()
        th = threading.Thread(target=run)
        th.start()
        time.sleep(0.3)
        assert g.stop() == 0
        th.join(30)
        assert got["rows"] == [(1,)]


# ---------------------------------------------------------------------------- read_only

def test_read_only(pgw, pg, mktable):
    t = mktable()
    what = lambda w: f"read-only access does not allow {w}"  # noqa: E731
    with connect(pgw, "reader") as c:
        for mode in ({}, {"binary": True}):
            refused(c, f"INSERT INTO {t} VALUES (10, 'x')", RO, what("INSERT"), **mode)
            refused(c, f"UPDATE {t} SET v = 'x' WHERE id = 1", RO, what("UPDATE"), **mode)
            refused(c, f"DELETE FROM {t} WHERE id = 1", RO, what("DELETE"), **mode)
            refused(c, f"CREATE TABLE {t}_new (a int)", RO, what("CREATE TABLE"), **mode)
            refused(c, f"SELECT * INTO {t}_copy FROM {t}", RO,
                    re.compile(r"read-only access does not allow (SELECT INTO|CREATE TABLE|"
                               r"writing \S+)"), **mode)
            refused(c, f"WITH x AS (INSERT INTO {t} VALUES (11, 'y') RETURNING id) "
                       f"SELECT * FROM x", RO,
                    re.compile(r"read-only access does not allow (INSERT|writing \S+)"), **mode)
            refused(c, f"SELECT * FROM {t} WHERE id = 1 FOR UPDATE", RO,
                    what("SELECT FOR UPDATE"), **mode)
            refused(c, f"TRUNCATE {t}", RO, what("TRUNCATE"), **mode)
            refused(c, "SET default_transaction_read_only = off", RO,
                    re.compile(r"read-only access does not allow .+"), **mode)
            refused(c, "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", RO,
                    re.compile(r"read-only access does not allow .+"), **mode)
            refused(c, "SET ROLE postgres", RO, re.compile(r"read-only access does not allow .+"),
                    **mode)
        # Allowed: reads, SHOW, EXPLAIN, transaction control.
        assert c.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
        assert c.execute(f"SELECT v FROM {t} WHERE id = %s", (2,)).fetchone() == ("row 2",)
        assert c.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert c.execute("SHOW work_mem").fetchone()[0]
        assert c.execute(f"EXPLAIN SELECT * FROM {t}").fetchall()
        c.execute("BEGIN")
        assert c.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
        assert c.info.transaction_status == TransactionStatus.INTRANS
        c.execute("COMMIT")
        assert c.info.transaction_status == TransactionStatus.IDLE
        # A write hidden in a function: the server refuses it (the session is read-only).
        with pytest.raises(pgerrors.ReadOnlySqlTransaction) as ei:
            c.execute(f"SELECT nextval('{SEQ}')")
        assert ei.value.sqlstate == "25006"
        assert "read-only transaction" in ei.value.diag.message_primary
        with pytest.raises(pgerrors.ReadOnlySqlTransaction):
            c.execute("SELECT nextval(%s)", (SEQ,))
    with pg.super_connect() as s:
        assert s.execute(f"SELECT last_value, is_called FROM {SEQ}").fetchone() == (1, False)
    assert table_rows(pg, t) == original()


def test_read_only_transaction_cannot_be_made_read_write(pgw, pg):
    """BEGIN READ WRITE / START TRANSACTION READ WRITE would switch a transaction to
    read-write despite default_transaction_read_only=on: refused or without effect."""
    with connect(pgw, "reader") as c:
        for begin in ("BEGIN READ WRITE", "START TRANSACTION READ WRITE",
                      "BEGIN; SET TRANSACTION READ WRITE"):
            try:
                c.execute(begin)
            except psycopg.Error as e:
                check_refusal(e, RO, re.compile(r"read-only access does not allow .+"))
                continue
            try:
                with pytest.raises(pgerrors.ReadOnlySqlTransaction):
                    c.execute(f"SELECT nextval('{SEQ}')")
            finally:
                c.execute("ROLLBACK")
    with pg.super_connect() as s:
        assert s.execute(f"SELECT is_called FROM {SEQ}").fetchone() == (False,)


def test_read_only_psql_and_node(pgw, mktable):
    t = mktable()
    r = psql(pgw, "reader", ["-c", f"INSERT INTO {t} VALUES (9, 'x')", "-c",
                             f"SELECT count(*) FROM {t}", "-c", f"SELECT nextval('{SEQ}')"])
    errs = psql_errors(r.stderr)
    assert [e[1] for e in errs] == ["42501", "25006"], r.stderr
    assert expected_message(RO, "read-only access does not allow INSERT").fullmatch(errs[0][2])
    assert r.stdout.strip() == "3"
    out = run_node(pgw, "reader", [
        {"text": f"DELETE FROM {t} WHERE id = $1", "values": [1]},
        {"text": f"SELECT count(*)::int FROM {t} WHERE id > $1", "values": [0]},
        {"text": f"UPDATE {t} SET v = 'x' WHERE id = 1"},
    ])
    res = out["results"]
    node_refused(res[0], RO, "read-only access does not allow DELETE")
    assert res[1]["ok"] and res[1]["rows"] == [[3]]
    node_refused(res[2], RO, "read-only access does not allow UPDATE")


# ---------------------------------------------------------------------------- table scope

UNINSPECTABLE = "{} is not allowed: the SQL it runs cannot be inspected"


def outside(t):
    return re.compile(rf"table (public\.)?{re.escape(t)} is outside the caller's scope")


SCOPE_REFUSED = [
    ("plain", f"SELECT * FROM {T_OUT}", outside(T_OUT)),
    ("qualified", f"SELECT * FROM public.{T_OUT}", outside(T_OUT)),
    ("items", "SELECT * FROM items WHERE id = 1", outside("items")),
    ("other_schema", "SELECT * FROM other.marker", outside("other.marker")),
    ("same_name_other_schema", f"SELECT * FROM {S_OUT}.{T_IN}", outside(f"{S_OUT}.{T_IN}")),
    ("subquery", f"SELECT * FROM {T_IN} WHERE id IN (SELECT id FROM {T_OUT})", outside(T_OUT)),
    ("scalar_subquery", f"SELECT (SELECT secret FROM {T_OUT} LIMIT 1)", outside(T_OUT)),
    ("exists", f"SELECT 1 WHERE EXISTS (SELECT 1 FROM {T_OUT})", outside(T_OUT)),
    ("cte", f"WITH x AS (SELECT * FROM {T_OUT}) SELECT * FROM x", outside(T_OUT)),
    ("cte_shadow_in_subquery",
     f"SELECT * FROM {T_OUT} WHERE id IN (WITH {T_OUT} AS (SELECT 1 AS id) "
     f"SELECT id FROM {T_OUT})", outside(T_OUT)),
    ("join", f"SELECT * FROM {T_IN} JOIN {T_OUT} USING (id)", outside(T_OUT)),
    ("lateral", f"SELECT * FROM {T_IN} i, LATERAL (SELECT secret FROM {T_OUT} o "
                f"WHERE o.id = i.id) x", outside(T_OUT)),
    ("union", f"SELECT v FROM {T_IN} UNION ALL SELECT secret FROM {T_OUT}", outside(T_OUT)),
    ("view", f"SELECT * FROM {V_OUT}", outside(V_OUT)),
    ("pg_catalog_unqualified", "SELECT relname FROM pg_class LIMIT 1",
     re.compile(r"table (pg_catalog\.|public\.)?pg_class is outside the caller's scope")),
    ("pg_catalog_qualified", "SELECT rolname FROM pg_catalog.pg_roles",
     outside("pg_catalog.pg_roles")),
    ("pg_authid", "SELECT * FROM pg_catalog.pg_authid", outside("pg_catalog.pg_authid")),
    ("insert_outside", f"INSERT INTO {T_OUT} VALUES (5, 'x')", outside(T_OUT)),
    ("insert_select_outside", f"INSERT INTO {T_IN} SELECT id + 100, secret FROM {T_OUT}",
     outside(T_OUT)),
    ("update_from_outside",
     f"UPDATE {T_IN} SET v = o.secret FROM {T_OUT} o WHERE o.id = {T_IN}.id", outside(T_OUT)),
    ("delete_outside", f"DELETE FROM {T_OUT} WHERE id = 1", outside(T_OUT)),
    ("copy_outside", f"COPY {T_OUT} TO STDOUT", outside(T_OUT)),
    ("query_to_xml", "SELECT query_to_xml('select * from secret', true, false, '')",
     "function query_to_xml can read outside the caller's scope"),
    ("query_to_xml_qualified",
     f"SELECT pg_catalog.query_to_xml('select * from {T_OUT}', true, false, '')",
     "function pg_catalog.query_to_xml can read outside the caller's scope"),
    ("table_to_xml", f"SELECT table_to_xml('{T_OUT}', true, false, '')",
     "function table_to_xml can read outside the caller's scope"),
    ("ts_rewrite",
     f"SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, to_tsquery(secret) FROM {T_OUT}')",
     "function ts_rewrite can read outside the caller's scope"),
    ("logical_decoding", "SELECT * FROM pg_logical_slot_peek_changes('s', NULL, NULL)",
     "function pg_logical_slot_peek_changes can read outside the caller's scope"),
    # Code whose SQL the inspector never sees: it could read anything.
    ("do_block", f"DO $$BEGIN RAISE NOTICE '%', (SELECT secret FROM {T_OUT} LIMIT 1); END$$",
     UNINSPECTABLE.format("DO BLOCK")),
    ("do_block_hidden_prepare",
     f"DO $$BEGIN EXECUTE 'PREP' || 'ARE leak AS SELECT secret FROM {T_OUT}'; END$$",
     UNINSPECTABLE.format("DO BLOCK")),
    ("create_function",
     f"CREATE FUNCTION {T_IN}_leak() RETURNS text LANGUAGE sql AS 'SELECT secret FROM {T_OUT}'",
     UNINSPECTABLE.format("CREATE FUNCTION")),
    ("create_procedure",
     f"CREATE PROCEDURE {T_IN}_p() LANGUAGE sql AS 'DELETE FROM {T_OUT}'",
     UNINSPECTABLE.format("CREATE PROCEDURE")),
    ("create_trigger",
     f"CREATE TRIGGER {T_IN}_t AFTER INSERT ON {T_IN} FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
     UNINSPECTABLE.format("CREATE TRIG")),
    ("set_search_path", f"SET search_path = {S_OUT}",
     "changing search_path is not allowed with a table scope"),
    ("set_search_path_local", "SET LOCAL search_path TO evil, public",
     "changing search_path is not allowed with a table scope"),
    ("set_config_search_path", f"SELECT set_config('search_path', '{S_OUT}', false)",
     "changing search_path is not allowed with a table scope"),
]

SCOPE_ALLOWED = [
    ("in", f"SELECT * FROM {T_IN} ORDER BY id", [(1, "in one"), (2, "in two")]),
    ("in_qualified", f"SELECT v FROM public.{T_IN} WHERE id = 2", [("in two",)]),
    ("bare_pattern", f"SELECT w FROM {T_IN2}", [("in2 one",)]),
    ("bare_pattern_qualified", f"SELECT w FROM public.{T_IN2}", [("in2 one",)]),
    ("schema_wildcard", f"SELECT id FROM {S_IN}.t", [(7,)]),
    ("join_in", f"SELECT i.v, j.w FROM {T_IN} i JOIN {T_IN2} j USING (id)",
     [("in one", "in2 one")]),
    ("cte_named_like_outside",
     f"WITH {T_OUT} AS (SELECT id FROM {T_IN}) SELECT count(*) FROM {T_OUT}", [(2,)]),
    ("no_tables", "SELECT 1 + 1", [(2,)]),
    ("show_search_path", "SHOW search_path", [('"$user", public',)]),
]


@pytest.mark.parametrize("case", SCOPE_REFUSED, ids=[c[0] for c in SCOPE_REFUSED])
def test_scope_refused(pgw, case):
    _, sql, what = case
    with connect(pgw, "scoped") as c:
        refused(c, sql, SCOPE, what)
        refused(c, sql, SCOPE, what, binary=True)
        assert c.execute(f"SELECT count(*) FROM {T_IN}").fetchone() == (2,)


def test_scope_allowed(pgw):
    with connect(pgw, "scoped") as c:
        for cid, sql, rows in SCOPE_ALLOWED:
            assert c.execute(sql).fetchall() == rows, cid
            assert c.execute(sql, binary=True).fetchall() == rows, cid
        c.execute(f"INSERT INTO {T_IN} VALUES (%s, %s)", (3, "three"))
        c.execute(f"DELETE FROM {T_IN} WHERE id = %s", (3,))
        assert c.execute("SHOW search_path").fetchone() == ('"$user", public',)


def test_scope_psql_and_node(pgw):
    r = psql(pgw, "scoped", ["-c", f"SELECT secret FROM {T_OUT}", "-c",
                             f"SELECT v FROM {T_IN} WHERE id = 1", "-c", "SET search_path = evil"])
    errs = psql_errors(r.stderr)
    assert [e[1] for e in errs] == ["42501", "42501"], r.stderr
    assert expected_message(SCOPE, outside(T_OUT)).fullmatch(errs[0][2]), errs
    assert "top secret" not in r.stdout and r.stdout.strip() == "in one"
    out = run_node(pgw, "scoped", [
        {"text": f"SELECT * FROM {T_OUT} WHERE id = $1", "values": [1]},
        {"text": f"SELECT v FROM {T_IN} WHERE id = $1", "values": [2]},
        {"text": "SELECT query_to_xml('select * from secret', true, false, '')"},
    ])
    res = out["results"]
    node_refused(res[0], SCOPE, outside(T_OUT))
    assert res[1]["ok"] and res[1]["rows"] == [["in two"]]
    node_refused(res[2], SCOPE, "function query_to_xml can read outside the caller's scope")


# ---------------------------------------------------------------------------- max_rows

CUT = f"the result exceeds max_rows {MAX_ROWS}"


def test_max_rows_raw_rows_then_error(pgw):
    c = raw_connect(pgw, "capped")
    try:
        tr = raw_transcript(c, q(f"SELECT g FROM generate_series(1, {MAX_ROWS}) g"))
        assert [t for t, _ in tr] == ["T"] + ["D"] * MAX_ROWS + ["C", "Z"], tr
        tr = raw_transcript(c, q(f"SELECT g FROM generate_series(1, {MAX_ROWS + 1}) g"))
        types = [t for t, _ in tr]
        assert types == ["T"] + ["D"] * MAX_ROWS + ["E", "Z"], types
        err = tr[-2][1]
        assert err["C"] == "42501" and err["S"] == "ERROR"
        assert expected_message(CAP, CUT).fullmatch(err["M"]), err
        assert tr[-1] == ("Z", "I")
        # Extended protocol: the same cut-off, then the Sync's ReadyForQuery.
        tr = raw_transcript(c, ext("SELECT g FROM generate_series(1, $1::int) g",
                                   [MAX_ROWS + 3]) + SYNC)
        types = [t for t, _ in tr]
        assert types == ["1", "2", "T"] + ["D"] * MAX_ROWS + ["E", "Z"], types
        assert tr[-2][1]["C"] == "42501"
        # The limit is per result: two results under it in one Query are fine.
        tr = raw_transcript(c, q("SELECT generate_series(1, 3); SELECT generate_series(1, 4)"))
        assert [t for t, _ in tr] == ["T", "D", "D", "D", "C", "T", "D", "D", "D", "D", "C",
                                      "Z"], tr
        # The next statement is served normally.
        rows, tag, err, status = c.query("SELECT 42")
        assert (rows, tag, err, status) == ([["42"]], "SELECT 1", None, b"I")
    finally:
        c.terminate()


def test_max_rows_psycopg(pgw):
    with connect(pgw, "capped") as c:
        rows = c.execute(f"SELECT g FROM generate_series(1, {MAX_ROWS}) g").fetchall()
        assert rows == [(i,) for i in range(1, MAX_ROWS + 1)]
        for i in range(3):
            refused(c, f"SELECT g FROM generate_series(1, {MAX_ROWS + 1 + i}) g", CAP, CUT)
            # The next statement runs normally and is not hit by a late cancel.
            assert c.execute("SELECT pg_sleep(0.3), 7").fetchone()[1] == 7
            assert c.execute("SELECT 7").fetchone() == (7,)
        # Extended protocol (parameters).
        assert len(c.execute("SELECT g FROM generate_series(1, %s) g", (MAX_ROWS,)).fetchall()) \
            == MAX_ROWS
        refused(c, "SELECT g FROM generate_series(1, %s) g", CAP, CUT, params=(MAX_ROWS + 1,))
        refused(c, "SELECT g FROM generate_series(1, %s) g", CAP, CUT, params=(1000,),
                prepare=True)
        assert c.execute("SELECT %s::int * 2", (21,)).fetchone() == (42,)


def test_max_rows_copy_to_stdout(pgw):
    """COPY ... TO STDOUT sends rows as CopyData: they count against max_rows too."""
    with connect(pgw, "capped") as c:
        with c.cursor() as cur:
            out = []
            with cur.copy(f"COPY (SELECT g FROM generate_series(1, {MAX_ROWS}) g) TO STDOUT") as cp:
                for row in cp.rows():
                    out.append(row)
            assert len(out) == MAX_ROWS
        got = 0
        with pytest.raises(psycopg.Error) as ei:
            with c.cursor() as cur:
                with cur.copy("COPY (SELECT g FROM generate_series(1, 1000) g) TO STDOUT") as cp:
                    for _ in cp.rows():
                        got += 1
        assert ei.value.sqlstate == "42501", ei.value
        assert "exceeds max_rows" in str(ei.value)
        assert got <= MAX_ROWS
        assert c.execute("SELECT 7").fetchone() == (7,)


def test_max_rows_next_statement_not_cancelled(pgw):
    """After a cut-off, a slower next statement must not be hit by the gateway's cancel."""
    with connect(pgw, "capped") as c:
        for n in (MAX_ROWS + 1, 200, 50000):
            refused(c, f"SELECT g FROM generate_series(1, {n}) g", CAP, CUT)
            row = c.execute("SELECT pg_sleep(0.4) IS NULL, 'after'").fetchone()
            assert row[1] == "after"


COMMITTED = ("pgcordon: the statement that was cut off had already run to its end upstream: "
             "its changes are committed ({})")
COMMITTED_LATER = ("pgcordon: a statement sent after the one that was cut off ran upstream: "
                   "its changes are committed ({})")


def test_max_rows_cut_off_change_that_committed_says_so(pgw, pg, mktable):
    """A change whose RETURNING rows pass max_rows has often committed (autocommit) before
    the gateway sees its rows. The client gets the refusal and also a WARNING that the change
    is committed, not just an error that reads like a rollback; the log says it too. In a
    transaction block the change rolls back, and a cut-off SELECT changed nothing: no warning.
    A change sent in the same Query after the cut-off statement runs too: warned as such."""
    t = mktable(rows=MAX_ROWS + 3)
    notices = []
    with connect(pgw, "capped") as c:
        c.add_notice_handler(lambda d: notices.append((d.severity, d.sqlstate, d.message_primary)))
        refused(c, f"INSERT INTO {t} SELECT g, 'new' FROM generate_series(101, 110) g RETURNING id", CAP, CUT)
        assert len(table_rows(pg, t)) == MAX_ROWS + 13
        assert notices == [("WARNING", "01000", COMMITTED.format("INSERT 0 10"))]
        refused(c, f"UPDATE {t} SET v = 'upd' WHERE id > 100 RETURNING id", CAP, CUT, prepare=True)
        assert notices[1:] == [("WARNING", "01000", COMMITTED.format("UPDATE 10"))]
        del notices[:]
        c.execute("BEGIN")
        refused(c, f"DELETE FROM {t} RETURNING id", CAP, CUT)
        c.execute("ROLLBACK")
        refused(c, f"SELECT * FROM {t}", CAP, CUT)
        # The cut statement's change goes back with a later error of its implicit transaction.
        refused(c, f"UPDATE {t} SET v = 'gone' RETURNING id; SELECT 1/0", CAP, CUT)
        assert notices == []
        refused(c, f"SELECT * FROM {t}; UPDATE {t} SET v = 'later' WHERE id = 1", CAP, CUT)
        assert notices == [("WARNING", "01000", COMMITTED_LATER.format("UPDATE 1"))]
        # ... but not with a COMMIT between them: the change stays.
        refused(c, f"UPDATE {t} SET v = 'kept' WHERE id > 100 RETURNING id; COMMIT; SELECT 1/0", CAP, CUT)
        assert notices[1:] == [("WARNING", "01000", COMMITTED.format("UPDATE 10"))]
    rows = table_rows(pg, t)
    assert len(rows) == MAX_ROWS + 13 and not [r for r in rows if r[1] == "gone"], rows
    assert rows[0] == (1, "later") and len([r for r in rows if r[1] == "kept"]) == 10, rows
    assert pgw.count_log('event=statement_cut_off_committed') >= 4


def test_max_rows_in_transaction(pgw, pg, mktable):
    t = mktable(rows=MAX_ROWS + 2)
    with connect(pgw, "capped") as c:
        c.execute("BEGIN")
        c.execute(f"UPDATE {t} SET v = 'changed' WHERE id = 1")
        refused(c, f"SELECT * FROM {t}", CAP, CUT)
        assert c.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(pgerrors.InFailedSqlTransaction) as ei:
            c.execute("SELECT 1")
        assert ei.value.sqlstate == "25P02"
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            c.execute("SELECT %s::int", (1,))
        c.execute("ROLLBACK")
        assert c.info.transaction_status == TransactionStatus.IDLE
        assert c.execute(f"SELECT v FROM {t} WHERE id = 1").fetchone() == ("row 1",)
        # COMMIT of a failed transaction rolls back, as the server does.
        c.execute("BEGIN")
        c.execute(f"UPDATE {t} SET v = 'changed' WHERE id = 2")
        refused(c, f"SELECT * FROM {t}", CAP, CUT, binary=True)
        c.execute("COMMIT")
        assert c.execute(f"SELECT v FROM {t} WHERE id = 2").fetchone() == ("row 2",)
    assert table_rows(pg, t) == original(MAX_ROWS + 2)


def test_max_rows_in_pipeline(pgw):
    with connect(pgw, "capped") as c:
        errors = []
        try:
            with c.pipeline() as p:
                c1 = c.execute("SELECT 1")
                c2 = c.cursor()
                c3 = c.cursor()
                try:
                    c2.execute(f"SELECT g FROM generate_series(1, {MAX_ROWS * 4}) g")
                    c3.execute("SELECT 3")
                except psycopg.Error as e:
                    errors.append(e)
                try:
                    p.sync()
                except psycopg.Error as e:
                    errors.append(e)
        except psycopg.Error as e:
            errors.append(e)
        real = [e for e in errors if not isinstance(e, pgerrors.PipelineAborted)]
        assert len(real) == 1, errors
        check_refusal(real[0], CAP, CUT)
        assert c1.fetchone() == (1,)
        assert c.info.transaction_status == TransactionStatus.IDLE
        assert c.execute("SELECT 'after'").fetchone() == ("after",)
        with c.pipeline():
            a = c.execute("SELECT g FROM generate_series(1, %s) g", (MAX_ROWS,))
            b = c.execute("SELECT 2")
        assert len(a.fetchall()) == MAX_ROWS and b.fetchone() == (2,)


def test_max_rows_large_table_cancels_upstream(pgw, pg):
    """A result that would stream for many minutes (10^9 rows): the client gets the refusal,
    the upstream statement is cancelled (its backend is idle right after), and the session
    goes on."""
    app = f"polcancel{SFX}"

    def activity():
        with pg.super_connect() as s:
            return s.execute("SELECT pid, state, query FROM pg_stat_activity "
                             "WHERE application_name = %s", (app,)).fetchall()

    def kill():
        with pg.super_connect() as s:
            s.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = %s", (app,))

    watchdog = threading.Timer(45, kill)  # never leave a runaway query behind
    watchdog.start()
    try:
        with connect(pgw, "capped", application_name=app) as c:
            t0 = time.monotonic()
            with pytest.raises(psycopg.Error) as ei:
                c.execute(f"SELECT a.id, b.id, x.id FROM {T_BIG} a, {T_BIG} b, {T_BIG} x")
            elapsed = time.monotonic() - t0
            assert elapsed < 40, f"the cut-off took {elapsed:.1f}s (upstream not cancelled?)"
            check_refusal(ei.value, CAP, CUT)
            assert c.info.transaction_status == TransactionStatus.IDLE
            deadline = time.monotonic() + 10
            act = activity()
            while time.monotonic() < deadline and not (act and all(a[1] == "idle" for a in act)):
                time.sleep(0.1)
                act = activity()
            assert act and all(a[1] == "idle" for a in act), f"upstream backend not idle: {act}"
            assert c.execute("SELECT 'next'").fetchone() == ("next",)
            assert c.execute("SELECT pg_sleep(0.3) IS NULL, 'after'").fetchone()[1] == "after"
            # Extended protocol too.
            with pytest.raises(psycopg.Error) as ei:
                c.execute(f"SELECT a.id FROM {T_BIG} a, {T_BIG} b, {T_BIG} x WHERE a.id > %s",
                          (0,))
            check_refusal(ei.value, CAP, CUT)
            assert c.execute("SELECT %s::text", ("next",)).fetchone() == ("next",)
    finally:
        watchdog.cancel()


def test_max_rows_node(pgw):
    out = run_node(pgw, "capped", [
        {"text": f"SELECT g FROM generate_series(1, {MAX_ROWS}) g"},
        {"text": f"SELECT g FROM generate_series(1, {MAX_ROWS + 1}) g"},
        {"text": "SELECT g FROM generate_series(1, $1::int) g", "values": [100]},
        {"text": "SELECT $1::int AS v", "values": [5]},
    ])
    res = out["results"]
    assert res[0]["ok"] and len(res[0]["rows"]) == MAX_ROWS
    node_refused(res[1], CAP, CUT)
    node_refused(res[2], CAP, CUT)
    assert res[3]["ok"] and res[3]["rows"] == [[5]]


# ---------------------------------------------------------------------------- statement_timeout

TIMEOUT_WHAT = "statement_timeout may not exceed 1000 ms"


def test_a_restricted_identity_runs_no_uninspectable_code(pgw):
    """A DO block could lift the statement_timeout cap (or run what a rule blocks) out of the
    inspector's sight: every identity a rule restricts is refused one, in either protocol."""
    with connect(pgw, "timed") as c:
        for binary in (False, True):
            refused(c, "DO $$BEGIN EXECUTE 'SET statement_timeout = 0'; END$$", SLOW,
                    UNINSPECTABLE.format("DO BLOCK"), binary=binary)
        refused(c, "CREATE FUNCTION untimed() RETURNS void LANGUAGE plpgsql "
                   "AS 'BEGIN PERFORM pg_sleep(3); END'", SLOW, UNINSPECTABLE.format("CREATE FUNCTION"))
        assert c.execute("SHOW statement_timeout").fetchone() == ("1s",)


def test_statement_timeout(pgw):
    with connect(pgw, "timed") as c:
        assert c.execute("SHOW statement_timeout").fetchone() == ("1s",)
        t0 = time.monotonic()
        with pytest.raises(pgerrors.QueryCanceled) as ei:
            c.execute("SELECT pg_sleep(5)")
        assert ei.value.sqlstate == "57014"
        assert "statement timeout" in ei.value.diag.message_primary
        assert time.monotonic() - t0 < 4.5
        assert c.execute("SELECT pg_sleep(0.1) IS NOT NULL").fetchone() == (True,)
        for sql in ("SET statement_timeout = 0", "SET statement_timeout = '0'",
                    "SET statement_timeout = '5s'", "SET statement_timeout TO 2000",
                    "SET SESSION statement_timeout = '1min'",
                    "SELECT set_config('statement_timeout', '0', false)"):
            refused(c, sql, SLOW, TIMEOUT_WHAT)
        assert c.execute("SHOW statement_timeout").fetchone() == ("1s",)
        c.execute("SET statement_timeout = '500ms'")
        assert c.execute("SHOW statement_timeout").fetchone() == ("500ms",)
        with pytest.raises(pgerrors.QueryCanceled):
            c.execute("SELECT pg_sleep(0.8)")
        c.execute("RESET statement_timeout")
        assert c.execute("SHOW statement_timeout").fetchone() == ("1s",)
        c.execute("SET statement_timeout TO DEFAULT")
        assert c.execute("SHOW statement_timeout").fetchone() == ("1s",)
        assert c.execute("SELECT pg_sleep(0.5) IS NOT NULL").fetchone() == (True,)
    # Extended protocol: same refusal.
    with connect(pgw, "timed") as c:
        refused(c, "SET statement_timeout = 0", SLOW, TIMEOUT_WHAT, binary=True)
        with pytest.raises(pgerrors.QueryCanceled):
            c.execute("SELECT pg_sleep(%s)", (3,))


def test_statement_timeout_startup_options_cannot_raise_it(pgw):
    """options='-c statement_timeout=0' must not lift the limit (refused or overridden)."""
    try:
        c = connect(pgw, "timed", options="-c statement_timeout=0")
    except psycopg.OperationalError as e:
        assert "pgcordon" in str(e), str(e)
        return
    with c:
        assert c.execute("SHOW statement_timeout").fetchone() == ("1s",)


def test_statement_timeout_psql_node(pgw):
    r = psql(pgw, "timed", ["-c", "SHOW statement_timeout", "-c", "SET statement_timeout = 0",
                            "-c", "SELECT pg_sleep(3)"])
    errs = psql_errors(r.stderr)
    assert [e[1] for e in errs] == ["42501", "57014"], r.stderr
    assert expected_message(SLOW, TIMEOUT_WHAT).fullmatch(errs[0][2])
    assert r.stdout.strip() == "1s"
    out = run_node(pgw, "timed", [
        {"text": "SET statement_timeout = 0"},
        {"text": "SELECT pg_sleep($1)", "values": [3]},
        {"text": "SHOW statement_timeout"},
    ])
    res = out["results"]
    node_refused(res[0], SLOW, TIMEOUT_WHAT)
    assert res[1]["ok"] is False and res[1]["code"] == "57014", res[1]
    assert res[2]["ok"] and res[2]["rows"] == [["1s"]]


# ---------------------------------------------------------------------------- extended protocol
# refusals inside pipelines

NO_SUCH_TABLE = name("nosuch")


def pipeline_run(conn, stmts):
    """Run stmts in one psycopg pipeline (one Sync at the end). Returns (per-statement
    command status or None, the errors raised)."""
    curs, errors = [], []
    try:
        with conn.pipeline() as p:
            for s in stmts:
                cur = conn.cursor()
                curs.append(cur)
                try:
                    cur.execute(s)
                except psycopg.Error as e:
                    errors.append(e)
            try:
                p.sync()
            except psycopg.Error as e:
                errors.append(e)
    except psycopg.Error as e:
        errors.append(e)
    return [c.statusmessage for c in curs], errors


def test_pipeline_refusal_mid_batch_matches_server(pgw, pg, mktable):
    """allowed, blocked, allowed in one Sync batch: like a server-side error in the same
    place — the statement after it is skipped, the implicit transaction rolled back."""
    t_gw, t_direct = mktable(), mktable()

    def stmts(t, bad):
        return [f"INSERT INTO {t} VALUES (70, 'a')", bad, f"INSERT INTO {t} VALUES (71, 'b')",
                "SELECT 4"]

    with pg.connect() as d:
        st_direct, err_direct = pipeline_run(d, stmts(t_direct, f"SELECT * FROM {NO_SUCH_TABLE}"))
        status_direct = d.info.transaction_status
    with connect(pgw, "blocker") as c:
        st_gw, err_gw = pipeline_run(c, stmts(t_gw, f"DELETE FROM {t_gw}"))
        real = [e for e in err_gw if not isinstance(e, pgerrors.PipelineAborted)]
        assert len(real) == 1, err_gw
        check_refusal(real[0], GUARD, "DELETE without WHERE")
        assert st_gw == st_direct, f"command statuses through the gateway {st_gw}, " \
                                   f"directly {st_direct}"
        assert len([e for e in err_direct
                    if not isinstance(e, pgerrors.PipelineAborted)]) == 1, err_direct
        assert c.info.transaction_status == status_direct == TransactionStatus.IDLE
        # Works afterwards, in and out of pipelines.
        assert c.execute("SELECT %s::int", (5,)).fetchone() == (5,)
        st, errs = pipeline_run(c, [f"INSERT INTO {t_gw} VALUES (72, 'c')", "SELECT 6"])
        assert errs == [] and st == ["INSERT 0 1", "SELECT 1"]
    assert table_rows(pg, t_direct) == original()
    assert table_rows(pg, t_gw) == original() + [(72, "c")]


def test_pipeline_refusal_in_transaction(pgw, pg, mktable):
    t = mktable()
    with connect(pgw, "blocker") as c:
        c.execute("BEGIN")
        st, errs = pipeline_run(c, [f"INSERT INTO {t} VALUES (80, 'a')", f"TRUNCATE {t}",
                                    f"INSERT INTO {t} VALUES (81, 'b')"])
        real = [e for e in errs if not isinstance(e, pgerrors.PipelineAborted)]
        assert len(real) == 1, errs
        check_refusal(real[0], GUARD, "TRUNCATE is not allowed")
        assert st[0] == "INSERT 0 1" and st[1:] == [None, None], st
        assert c.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            c.execute("SELECT 1")
        c.execute("ROLLBACK")
        assert c.info.transaction_status == TransactionStatus.IDLE
        assert c.execute(f"SELECT count(*) FROM {t} WHERE id > %s", (0,)).fetchone() == (3,)
    assert table_rows(pg, t) == original()


def test_pipeline_two_batches(pgw, pg, mktable):
    """A refusal in the first Sync batch does not touch the second one."""
    t = mktable()
    with connect(pgw, "blocker") as c:
        errors = []
        curs = []
        try:
            with c.pipeline() as p:
                for s in (f"INSERT INTO {t} VALUES (90, 'a')", "SELECT pg_sleep(0)"):
                    cur = c.cursor()
                    curs.append(cur)
                    try:
                        cur.execute(s)
                    except psycopg.Error as e:
                        errors.append(e)
                try:
                    p.sync()
                except psycopg.Error as e:
                    errors.append(e)
                for s in (f"INSERT INTO {t} VALUES (91, 'b')", "SELECT 2"):
                    cur = c.cursor()
                    curs.append(cur)
                    cur.execute(s)
        except psycopg.Error as e:
            errors.append(e)
        assert len(errors) == 1, errors
        check_refusal(errors[0], GUARD, "function pg_sleep is not allowed")
        assert [cur.statusmessage for cur in curs] == ["INSERT 0 1", None, "INSERT 0 1",
                                                        "SELECT 1"]
        assert c.info.transaction_status == TransactionStatus.IDLE
    assert table_rows(pg, t) == original() + [(91, "b")]


def raw_pipeline(conn, t, bad):
    return raw_transcript(conn, ext(f"INSERT INTO {t} VALUES (100, 'a')")
                          + ext(bad) + ext(f"INSERT INTO {t} VALUES (101, 'b')") + SYNC
                          + ext("SELECT $1::int", [7]) + SYNC, nready=2)


def test_pipeline_raw_same_messages_as_server(pgw, pg, mktable):
    """Byte-level view: the message types the client gets for a refusal mid-batch are the
    ones PostgreSQL sends for an error in the same place."""
    t_gw, t_direct = mktable(), mktable()
    d = pgwire.RawConn(pg.host, pg.port, timeout=30)
    d.startup("gw_scram", DBNAME, ROLE_PW["gw_scram"])
    try:
        # An error at Parse, where the gateway's refusal happens too.
        direct = raw_pipeline(d, t_direct, f"SELECT * FROM {NO_SUCH_TABLE}")
    finally:
        d.terminate()
    c = raw_connect(pgw, "blocker")
    try:
        via = raw_pipeline(c, t_gw, f"DROP TABLE {t_gw}")
        assert [m[0] for m in via] == [m[0] for m in direct], \
            f"\nvia gateway: {summ(via)}\ndirectly:    {summ(direct)}"
        assert [m for m in via if m[0] == "Z"] == [m for m in direct if m[0] == "Z"]
        err = [m[1] for m in via if m[0] == "E"]
        assert len(err) == 1 and err[0]["C"] == "42501", summ(via)
        assert expected_message(GUARD, "DROP TABLE is not allowed").fullmatch(err[0]["M"])
        tail = raw_transcript(c, ext("SELECT $1::int", [8]) + SYNC)
        assert [m[0] for m in tail] == ["1", "2", "T", "D", "C", "Z"], summ(tail)
        # In an explicit transaction block.
        inside = raw_transcript(c, q("BEGIN"))
        assert inside[-1] == ("Z", "T")
        tr = raw_transcript(c, ext("SELECT 1") + ext(f"TRUNCATE {t_gw}") + ext("SELECT 2")
                            + SYNC)
        assert [m[0] for m in tr] == ["1", "2", "T", "D", "C", "E", "Z"], summ(tr)
        assert tr[-1] == ("Z", "E")
        assert tr[-2][1]["C"] == "42501"
        assert expected_message(GUARD, "TRUNCATE is not allowed").fullmatch(tr[-2][1]["M"])
        tr = raw_transcript(c, q("SELECT 1"))
        assert tr[0][0] == "E" and tr[0][1]["C"] == "25P02", summ(tr)
        assert raw_transcript(c, q("ROLLBACK"))[-1] == ("Z", "I")
    finally:
        c.terminate()
    assert table_rows(pg, t_gw) == original()
    assert table_rows(pg, t_direct) == original()


def test_simple_queries_in_one_write(pgw, pg, mktable):
    """Three Query messages in one write (allowed, refused, allowed): each gets its own
    answer, in order, as the server would give them."""
    t = mktable()
    c = raw_connect(pgw, "blocker")
    try:
        tr = raw_transcript(c, q(f"SELECT count(*) FROM {t} WHERE id > 0")
                            + q(f"DROP TABLE {t}") + q("SELECT 2"), nready=3)
    finally:
        c.terminate()
    assert [m[0] for m in tr] == ["T", "D", "C", "Z", "E", "Z", "T", "D", "C", "Z"], summ(tr)
    err = tr[4][1]
    assert err["C"] == "42501", err
    assert expected_message(GUARD, "DROP TABLE is not allowed").fullmatch(err["M"]), err
    assert table_rows(pg, t) == original()


def test_refused_parse_after_forwarded_messages_in_one_write(pgw, pg, mktable):
    """Extended protocol, autocommit, everything in one write: Parse/Bind/Execute of an
    INSERT, then a refused statement, then Sync. The INSERT runs first (then is rolled back
    with the implicit transaction), the refusal is reported for the second statement."""
    t = mktable()
    c = raw_connect(pgw, "blocker")
    try:
        tr = raw_transcript(c, ext(f"INSERT INTO {t} VALUES (200, 'x')")
                            + ext("SELECT pg_sleep(0)") + SYNC)
        tail = raw_transcript(c, q("SELECT 1"))
    finally:
        c.terminate()
    assert [m[0] for m in tr] == ["1", "2", "n", "C", "E", "Z"], summ(tr)
    err = tr[4][1]
    assert err["C"] == "42501", err
    assert expected_message(GUARD, "function pg_sleep is not allowed").fullmatch(err["M"]), err
    assert [m[0] for m in tail] == ["T", "D", "C", "Z"], tail
    assert table_rows(pg, t) == original()


# ---------------------------------------------------------------------------- login

NO_POLICY = 'pgcordon: no policy grants user "nobody" access to database "app"'


def test_no_policy_refused_at_login(pgw):
    f = raw_login_error(pgw.host, pgw.port, "nobody", POLICY_PW)
    assert f["S"] == "FATAL" and f["C"] == "42501", f
    assert f["M"] == NO_POLICY
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(pgw, "nobody")
    assert NO_POLICY in str(ei.value)
    out = run_node(pgw, "nobody", [{"text": "SELECT 1"}])
    assert out["connect"] is not None and out["connect"]["code"] == "42501", out
    assert out["connect"]["message"] == NO_POLICY
    r = psql(pgw, "nobody", ["-c", "SELECT 1"])
    assert r.returncode != 0 and NO_POLICY in r.stderr, r.stderr
    assert pgw.wait_log(r"event=connection_refused .*user=\"?nobody\"?.*rule=no_policy")


def test_default_allow_lets_unmatched_in(gateway_factory, pg, mktable):
    t = mktable()

    def mutate(cfg):
        add_users(cfg, {"nobody": ["nogroup"], "agent": ["agents"]})
        cfg["default"] = "allow"
        cfg["policies"] = [{"name": GUARD, "match": {"groups": ["agents"]},
                            "block": [{"statements": ["drop_table"]}]}]

    g = gateway_factory.start(mutate)
    with connect(g, "nobody") as c:
        assert c.execute("SELECT current_user").fetchone() == ("gw_scram",)
        c.execute(f"DELETE FROM {t} WHERE id = 1")
        c.execute(f"CREATE TEMP TABLE {t}_tmp (a int)")
        c.execute(f"DROP TABLE {t}_tmp")
    with connect(g, "agent") as c:
        refused(c, f"DROP TABLE {t}", GUARD, "DROP TABLE is not allowed")
    assert table_rows(pg, t) == original()[1:]
    g.assert_serves()


def test_default_deny_is_implied_by_policies(gateway_factory):
    def mutate(cfg):
        add_users(cfg, {"nobody": ["nogroup"]})
        cfg["policies"] = [{"name": OPEN, "match": {"users": ["alice", "bob"]}}]

    g = gateway_factory.start(mutate)
    f = raw_login_error(g.host, g.port, "nobody", POLICY_PW)
    assert (f["S"], f["C"], f["M"]) == ("FATAL", "42501", NO_POLICY)
    g.assert_serves()


# ---------------------------------------------------------------------------- startup escapes

def startup_refused(gw, user, extra, setting, policy):
    f = raw_login_error(gw.host, gw.port, user, password_of(user), extra=extra)
    assert f["S"] == "FATAL" and f["C"] == "42501", f
    assert f["M"] == f"pgcordon: policy {policy} does not allow setting {setting} at " \
                     f"connection start", f


def test_startup_parameter_escapes_refused(pgw):
    startup_refused(pgw, "blocker", {"options": "-c role=postgres"}, "role", GUARD)
    startup_refused(pgw, "blocker", {"options": "-crole=postgres"}, "role", GUARD)
    startup_refused(pgw, "blocker", {"options": "--role=postgres"}, "role", GUARD)
    startup_refused(pgw, "blocker", {"role": "postgres"}, "role", GUARD)
    startup_refused(pgw, "blocker", {"options": "-c session_authorization=postgres"},
                    "session_authorization", GUARD)
    startup_refused(pgw, "scoped", {"options": "-c search_path=evil"}, "search_path", SCOPE)
    startup_refused(pgw, "scoped", {"options": "-c search-path=evil"}, "search_path", SCOPE)
    startup_refused(pgw, "scoped", {"search_path": "evil"}, "search_path", SCOPE)
    startup_refused(pgw, "scoped", {"options": "-c role=postgres"}, "role", SCOPE)
    startup_refused(pgw, "reader", {"options": "-c default_transaction_read_only=off"},
                    "transaction_read_only", RO)
    startup_refused(pgw, "reader", {"default_transaction_read_only": "off"},
                    "transaction_read_only", RO)
    # psycopg sees the FATAL at connect.
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(pgw, "blocker", options="-c role=postgres")
    assert "does not allow setting role" in str(ei.value)
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(pgw, "scoped", options="-c search_path=evil")
    assert "does not allow setting search_path" in str(ei.value)
    # search_path is only guarded under a table scope.
    with connect(pgw, "blocker", options="-c search_path=public") as c:
        assert c.execute("SHOW search_path").fetchone() == ("public",)
    # Unrestricted identities are not affected (the server decides).
    with pytest.raises(psycopg.OperationalError) as ei:
        pgw.connect(options="-c role=postgres")
    assert "permission denied" in str(ei.value) or "must be" in str(ei.value) \
        or "role" in str(ei.value)


# ---------------------------------------------------------------------------- merging

def test_policies_merge(gateway_factory, pg):
    m1, m2, m3 = name("m1"), name("m2"), name("m3")
    su_exec(pg, *[s for t in (m1, m2, m3) for s in (
        f"CREATE TABLE {t} (id int)", f"INSERT INTO {t} VALUES (1), (2)",
        f"ALTER TABLE {t} OWNER TO gw_scram")])
    try:
        def mutate(cfg):
            add_users(cfg, {"merger": ["x", "mergers"]})
            cfg["policies"] = [
                {"name": "everyone",
                 "access": {"tables": [m1]},
                 "block": [{"functions": ["pg_sleep"]}],
                 "limits": {"max_rows": 10, "statement_timeout": "5s"}},
                {"name": "grp", "match": {"groups": ["mergers"]},
                 "access": {"read_only": True, "tables": [f"public.{m2}"]},
                 "block": [{"functions": ["pg_read_file"]}, {"statements": ["truncate"]}],
                 "limits": {"max_rows": 3, "statement_timeout": "2s"}},
            ]

        g = gateway_factory.start(mutate)
        with connect(g, "merger") as c:
            # Blocks add up.
            refused(c, "SELECT pg_sleep(0)", "everyone", "function pg_sleep is not allowed")
            refused(c, "SELECT pg_read_file('/etc/hostname')", "grp",
                    "function pg_read_file is not allowed")
            # Smallest max_rows wins.
            assert len(c.execute("SELECT generate_series(1, 3)").fetchall()) == 3
            refused(c, "SELECT generate_series(1, 4)", "grp", "the result exceeds max_rows 3")
            # Smallest statement_timeout wins.
            assert c.execute("SHOW statement_timeout").fetchone() == ("2s",)
            # read_only wins.
            refused(c, f"INSERT INTO {m1} VALUES (3)", "grp",
                    "read-only access does not allow INSERT")
            assert c.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
            # Scopes unite.
            assert c.execute(f"SELECT count(*) FROM {m1}").fetchone() == (2,)
            assert c.execute(f"SELECT count(*) FROM {m2}").fetchone() == (2,)
            assert c.execute(f"SELECT count(*) FROM {m1} JOIN {m2} USING (id)").fetchone() \
                == (2,)
            refused(c, f"SELECT * FROM {m3}", "everyone,grp", outside(m3))
        # alice only gets "everyone".
        with connect(g, "alice") as c:
            refused(c, "SELECT pg_sleep(0)", "everyone", "function pg_sleep is not allowed")
            assert len(c.execute("SELECT generate_series(1, 10)").fetchall()) == 10
            refused(c, "SELECT generate_series(1, 11)", "everyone",
                    "the result exceeds max_rows 10")
            assert c.execute("SHOW statement_timeout").fetchone() == ("5s",)
            c.execute(f"INSERT INTO {m1} VALUES (3)")
            refused(c, f"SELECT * FROM {m2}", "everyone", outside(m2))
        with connect(g, "bob") as c:
            assert c.execute(f"SELECT count(*) FROM {m1}").fetchone() == (3,)
        assert g.alive()
    finally:
        su_exec(pg, *[f"DROP TABLE IF EXISTS {t}" for t in (m1, m2, m3)])


# ---------------------------------------------------------------------------- reload

def reload_config(g, policies):
    cfg = dict(g.config)
    cfg["policies"] = policies
    return cfg


def test_reload_applies_to_open_sessions(gateway_factory, pg, mktable, tmp_path):
    t, t2 = mktable(), mktable()
    open_policy = {"name": OPEN, "match": {"users": ["alice", "bob"]}}
    v1 = [open_policy, {"name": "rl", "match": {"users": ["rel"]},
                        "block": [{"statements": ["truncate"]}]}]
    v2 = [open_policy, {"name": "rl", "match": {"users": ["rel"]},
                        "block": [{"statements": ["drop_table"]},
                                  {"functions": ["pg_sleep"]}]}]

    def mutate(cfg):
        add_users(cfg, {"rel": ["relgroup"]})
        cfg["policies"] = v1

    g = gateway_factory.start(mutate)
    with connect(g, "rel") as c, connect(g, "rel") as c_ext:
        refused(c, f"TRUNCATE {t}", "rl", "TRUNCATE is not allowed")
        refused(c_ext, f"TRUNCATE {t}", "rl", "TRUNCATE is not allowed", binary=True)
        for _ in range(2):
            assert c.execute("SELECT pg_sleep(0) IS NOT NULL", prepare=True).fetchone() == (True,)
        c_ext.execute("PREPARE slp AS SELECT pg_sleep(0)")
        c_ext.execute("EXECUTE slp")
        c.execute("BEGIN")  # a session in a transaction block gets the reload too

        g.reload_and_wait(reload_config(g, v2))

        # Newly allowed.
        c.execute(f"TRUNCATE {t}")
        c.execute("COMMIT")
        assert table_rows(pg, t) == []
        # Newly blocked, for a statement prepared before the reload too.
        refused(c, f"DROP TABLE {t2}", "rl", "DROP TABLE is not allowed")
        refused(c, "SELECT pg_sleep(0) IS NOT NULL", "rl", "function pg_sleep is not allowed",
                prepare=True)
        refused(c_ext, "EXECUTE slp", "rl", "function pg_sleep is not allowed")
        refused(c_ext, f"DROP TABLE {t2}", "rl", "DROP TABLE is not allowed", binary=True)
        assert table_rows(pg, t2) == original()

        # An invalid policy is rejected; the old ones keep working.
        bad = [open_policy, {"name": "rl", "match": {"users": ["rel"]},
                             "block": [{"statements": ["truncate", "drop_everything"]}]}]
        g.reload_and_wait(reload_config(g, bad), event="reload_failed")
        refused(c, f"DROP TABLE {t2}", "rl", "DROP TABLE is not allowed")
        refused(c, "SELECT pg_sleep(0)", "rl", "function pg_sleep is not allowed")
        c.execute(f"TRUNCATE {t2}")
        assert table_rows(pg, t2) == []
    # New sessions get the last good policies too.
    with connect(g, "rel") as c:
        refused(c, f"DROP TABLE {t2}", "rl", "DROP TABLE is not allowed")
    assert g.alive()
    g.assert_serves()

    # check-config names the bad kind by FILE:LINE.
    lines = g.config_path.read_text().splitlines()
    bad_line = next(i for i, ln in enumerate(lines, 1) if "drop_everything" in ln)
    env = dict(os.environ, **{SCRAM_PW_ENV: ROLE_PW["gw_scram"]})
    r = subprocess.run([str(BIN), "check-config", "--config", str(g.config_path)],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert re.search(re.escape(str(g.config_path)) + rf":{bad_line}: .*drop_everything",
                     r.stderr), r.stderr


def test_reload_changes_group_membership(gateway_factory):
    """The session's groups come from the reloaded config."""
    def cfg_with(groups):
        def mutate(cfg):
            add_users(cfg, {"member": groups})
            cfg["policies"] = [
                {"name": OPEN, "match": {"users": ["alice", "bob", "member"]}},
                {"name": "lock", "match": {"groups": ["locked"]},
                 "access": {"read_only": True}},
            ]
        return mutate

    g = gateway_factory.start(cfg_with(["free"]))
    with connect(g, "member") as c:
        c.execute("CREATE TEMP TABLE tt (a int)")
        c.execute("INSERT INTO tt VALUES (1)")
        newcfg = dict(g.config)
        newcfg["users"] = dict(g.config["users"])
        newcfg["users"]["member"] = {"password": scram_verifier(POLICY_PW), "groups": ["locked"]}
        g.reload_and_wait(newcfg)
        refused(c, "INSERT INTO tt VALUES (2)", "lock", "read-only access does not allow INSERT")
        assert c.execute("SELECT count(*) FROM tt").fetchone() == (1,)
    g.assert_serves()


# ---------------------------------------------------------------------------- logs

def test_log_lines_for_refusals(pgw, mktable):
    t = mktable()
    marker = f"Marker{SFX}"
    with connect(pgw, "blocker") as c:
        refused(c, f"DELETE FROM {t} WHERE '{marker}a' = '{marker}a'", GUARD,
                "DELETE without WHERE")
        refused(c, f"SELECT pg_read_file('/nonexistent/{marker}b')", GUARD,
                "function pg_read_file is not allowed")
        refused(c, f"SELECT '{marker}c'; DROP TABLE {t}", GUARD, "DROP TABLE is not allowed")
        refused(c, f"SELECT pg_sleep(%s), '{marker}d'::text", GUARD,
                "function pg_sleep is not allowed", params=(0,))
        refused(c, f"UPDATE {t} SET v = %s", GUARD, "UPDATE without WHERE",
                params=(f"{marker}e",))
        c.execute(f"SELECT '{marker}f' FROM {t} WHERE id = 1")
    with connect(pgw, "reader") as c:
        refused(c, f"INSERT INTO {t} VALUES (1000, '{marker}g')", RO,
                "read-only access does not allow INSERT")
    with connect(pgw, "scoped") as c:
        refused(c, f"SELECT '{marker}h' FROM {T_OUT}", SCOPE, outside(T_OUT))
    with connect(pgw, "capped") as c:
        refused(c, f"SELECT '{marker}i' FROM generate_series(1, 100)", CAP, CUT)
    expected = [("blocker", GUARD, "delete_without_where"), ("blocker", GUARD, "functions"),
                ("blocker", GUARD, "statements"), ("blocker", GUARD, "update_without_where"),
                ("reader", RO, "read_only"), ("scoped", SCOPE, "scope")]
    deadline = time.monotonic() + 10
    while True:
        log = pgw.log_text()
        blocked = [ln for ln in log.splitlines() if "event=statement_blocked" in ln]
        missing = [e for e in expected
                   if not any(re.search(rf"user=\"?{e[0]}\"?\b", ln)
                              and f"policy={e[1]} " in ln and f"rule={e[2]}" in ln
                              for ln in blocked)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not missing, f"no statement_blocked line for {missing}; lines:\n" + "\n".join(blocked)
    for ln in blocked:
        assert re.search(r"\bpolicy=\S+", ln) and re.search(r"\brule=\S+", ln), ln
    assert pgw.wait_log(r"event=statement_cut_off .*policy=cap .*rule=max_rows")
    # No SQL literal of any statement, refused or allowed, reaches the log.
    assert marker not in log, [ln for ln in log.splitlines() if marker in ln]
    assert "/nonexistent/" not in log


def test_sessions_survive_other_sessions_refusals(pgw, mktable):
    """Sessions opened before a burst of refusals (from several identities, in every
    protocol) keep working, and so do new ones."""
    t = mktable()
    keep = [connect(pgw, u) for u in ("alice", "blocker", "reader", "scoped", "capped")]
    try:
        for _ in range(3):
            with connect(pgw, "blocker") as c:
                refused(c, f"DROP TABLE {t}", GUARD, "DROP TABLE is not allowed")
                refused(c, f"DELETE FROM {t}", GUARD, "DELETE without WHERE", binary=True)
                pipeline_run(c, ["SELECT 1", f"TRUNCATE {t}", "SELECT 2"])
            with connect(pgw, "capped") as c:
                refused(c, "SELECT generate_series(1, 100)", CAP, CUT)
        for k in keep:
            assert k.execute("SELECT %s::int + 1", (1,)).fetchone() == (2,)
            assert k.execute(f"SELECT count(*) FROM {T_IN}").fetchone() == (2,)
    finally:
        for k in keep:
            k.close()




# ---------------------------------------------------------------------------- the lexer's settings
# The gateway parses statements as the server reads them with standard_conforming_strings on
# and a client encoding in which no character hides a quote or a backslash. Changed, a
# string literal ends elsewhere for the server, and what follows runs uninspected.

def starts(text):
    return re.compile(re.escape(text) + ".*")


HIDDEN_READ = f"SELECT 'a\\', ' AS x, (SELECT secret FROM {T_OUT}) AS leak, ' AS y -- '"


def test_standard_conforming_strings_stays_on(pgw):
    r = psql(pgw, "scoped", ["-c", "SET standard_conforming_strings = off", "-c", HIDDEN_READ,
                             "-c", "SHOW standard_conforming_strings"])
    errs = psql_errors(r.stderr)
    assert errs and errs[0][1] == "42501", r.stderr
    assert expected_message(SCOPE, starts("standard_conforming_strings cannot be changed")).match(errs[0][2]), errs
    assert "top secret" not in r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == "on", r.stdout
    with connect(pgw, "reader") as c:
        refused(c, "SELECT set_config('standard_conforming_strings', 'off', false)", RO,
                "read-only access does not allow SET STANDARD CONFORMING STRINGS")
    f = raw_login_error(pgw.host, pgw.port, "scoped", POLICY_PW,
                        extra={"options": "-c standard_conforming_strings=off"})
    assert "standard_conforming_strings" in f.get("M", ""), f


def test_a_client_only_encoding_is_refused(pgw):
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(pgw, "blocker", client_encoding="SJIS")
    assert "client_encoding SJIS" in str(ei.value), str(ei.value)
    with connect(pgw, "blocker") as c:
        refused(c, "SET client_encoding = 'SJIS'", GUARD, starts("this client_encoding is not allowed"))
        refused(c, "SET NAMES 'big5'", GUARD, starts("this client_encoding is not allowed"))
        c.execute("SET client_encoding = 'LATIN1'")  # no character of it hides a quote
        c.execute("RESET client_encoding")
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_the_session_ends_when_the_server_reads_otherwise(pgw, pg):
    """A role default the gateway cannot see in a statement: the server reports it at login,
    and a restricted session ends there; an unrestricted one goes on."""
    su_exec(pg, "ALTER ROLE gw_plain SET standard_conforming_strings = off")
    try:
        with pytest.raises(psycopg.OperationalError) as ei:
            with connect(pgw, "scoped", dbname="app_plain") as c:
                c.execute("SELECT 1")
        assert "standard_conforming_strings = off" in str(ei.value), str(ei.value)
        with connect(pgw, "alice", dbname="app_plain") as c:
            assert c.execute("SHOW standard_conforming_strings").fetchone() == ("off",)
    finally:
        su_exec(pg, "ALTER ROLE gw_plain RESET standard_conforming_strings")


def test_startup_options_are_read_with_their_escapes(pgw):
    f = raw_login_error(pgw.host, pgw.port, "scoped", POLICY_PW,
                        extra={"options": "-c search\\_path=pg_temp,public"})
    assert "search_path" in f.get("M", ""), f


# ---------------------------------------------------------------------------- calls without a call

def test_functions_bound_to_syntax_are_refused(pgw):
    with connect(pgw, "blocker") as c:
        refused(c, "CREATE OPERATOR public.~~~ (RIGHTARG = float8, FUNCTION = pg_catalog.pg_sleep)", GUARD,
                "CREATE OPERATOR is not allowed: it makes functions run where the gateway sees no call")
        refused(c, "CREATE AGGREGATE public.slp(float8) (SFUNC = float8larger, STYPE = float8, FINALFUNC = pg_sleep)",
                GUARD, starts("CREATE AGGREGATE is not allowed"))
        refused(c, "SELECT pg_sleep_for('10 ms')", GUARD, "function pg_sleep_for is not allowed")
    with connect(pgw, "scoped") as c:
        refused(c, "CREATE OPERATOR public.@@@@ (RIGHTARG = text, FUNCTION = pg_catalog.ts_stat)", SCOPE,
                starts("CREATE OPERATOR is not allowed"))


def test_merge_actions_are_the_statements_they_run(pgw, pg, mktable):
    t = mktable()
    with connect(pgw, "blocker") as c:
        refused(c, f"MERGE INTO {t} USING (SELECT 1 AS id) s ON true WHEN MATCHED THEN DELETE", GUARD,
                "DELETE without WHERE")
    assert table_rows(pg, t) == original()
    with connect(pgw, "reader") as c:
        refused(c, "SELECT lo_create(0)", RO, starts("read-only access does not allow lo_create: it writes a large object"))
        refused(c, "SELECT lo_from_bytea(0, 'x')", RO, starts("read-only access does not allow lo_from_bytea"))
