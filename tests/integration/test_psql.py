"""psql and pgbench through pgcordon behave as against PostgreSQL directly."""

import os
import re
import subprocess

import pytest

from conftest import DBNAME, LOCAL_USERS, ROLE_PW


def clean_env(password):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    env["PGCONNECT_TIMEOUT"] = "10"
    env["LC_ALL"] = "C"
    return env


def psql(host, port, user, password, dbname, args, timeout=60, **kw):
    conn = f"host={host} port={port} user={user} dbname={dbname}"
    return subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=0", "-d", conn] + args,
                          env=clean_env(password), capture_output=True, text=True,
                          timeout=timeout, **kw)


def psql_gw(gw, args, user="alice", dbname="app", password=None, **kw):
    return psql(gw.host, gw.port, user, LOCAL_USERS.get(user, "") if password is None
                else password, dbname, args, **kw)


def psql_direct(pg, args, **kw):
    return psql(pg.host, pg.port, "gw_scram", ROLE_PW["gw_scram"], DBNAME, args, **kw)


def normalize(text):
    text = re.sub(r"\b(lo_import|lo_unlink) \d+", r"\1 N", text)
    text = re.sub(r"server process with PID \d+", "server process with PID N", text)
    return text


def test_psql_one_command(gw):
    # psql's default sslmode=prefer sends SSLRequest first; with tls disabled it gets 'N'.
    r = psql_gw(gw, ["-A", "-t", "-c", "SELECT 40 + 2, current_user"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42|gw_scram"


SCRIPT = r"""
\pset pager off
SELECT 1 AS one, 'two' AS two, NULL AS three;
SELECT id, name, price, tags FROM items WHERE id <= 3 ORDER BY id;
CREATE TEMP TABLE pt (id int, t text);
\copy pt FROM stdin
1	first
2	second, with a comma
3	\N
\.
\copy (SELECT * FROM pt ORDER BY id) TO stdout
\copy (SELECT * FROM pt ORDER BY id) TO stdout WITH (FORMAT csv, HEADER)
SELECT count(*) AS n, count(*) > 0 AS nonzero FROM pt \gset
\echo n is :n
\if :nonzero
\echo n is nonzero
\endif
SELECT 1/0;
\echo sqlstate :SQLSTATE
BEGIN;
INSERT INTO pt VALUES (4, 'fourth');
SELECT nosuch;
\echo in failed tx :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT count(*) FROM pt;
\set FETCH_COUNT 7
SELECT id, name FROM items WHERE id <= 20 ORDER BY id;
\unset FETCH_COUNT
SELECT id, name FROM items \gdesc
PREPARE p(int) AS SELECT $1 * 2 AS doubled;
EXECUTE p(21);
DEALLOCATE p;
SET application_name = 'psql-script';
SHOW application_name;
DO $$BEGIN RAISE NOTICE 'notice from psql %', 7; END$$;
LISTEN psqlchan;
NOTIFY psqlchan, 'hi there';
SELECT 'after notify';
\lo_import :lo_in
\set loid :LASTOID
\lo_export :loid :lo_out
\lo_unlink :loid
\x on
SELECT * FROM items WHERE id = 1;
\x off
SELECT md5(string_agg(g::text, ',')) FROM generate_series(1, 20000) g;
\copy (SELECT g, md5(g::text) FROM generate_series(1, 3000) g) TO stdout
SELECT 'the end';
"""


def test_psql_script_same_output(gw, pg, tmp_path):
    script = tmp_path / "script.sql"
    script.write_text(SCRIPT)
    lo_in = tmp_path / "lo_in.bin"
    lo_in.write_bytes(bytes(range(256)) * 100)
    outs = {}
    for name, runner in (("direct", lambda a: psql_direct(pg, a)),
                         ("gateway", lambda a: psql_gw(gw, a))):
        lo_out = tmp_path / f"lo_out_{name}.bin"
        r = runner(["-v", f"lo_in={lo_in}", "-v", f"lo_out={lo_out}", "-f", str(script)])
        assert r.returncode == 0, r.stderr
        # \lo_import / \lo_export use libpq's large-object API, i.e. FunctionCall messages.
        assert lo_out.read_bytes() == lo_in.read_bytes(), f"{name}: \\lo_export differs"
        outs[name] = (normalize(r.stdout), normalize(r.stderr))
    assert outs["gateway"][0] == outs["direct"][0]
    assert outs["gateway"][1] == outs["direct"][1]
    out, err = outs["gateway"]
    assert "n is 3" in out and "sqlstate 22012" in out and "in failed tx 42703" in out
    assert "psql-script" in out and "the end" in out
    assert 'Asynchronous notification "psqlchan" with payload "hi there"' in out
    assert "NOTICE:  notice from psql 7" in err
    assert "ERROR:  division by zero" in err


def test_psql_wrong_password(gw):
    r = psql_gw(gw, ["-c", "SELECT 1"], password="not-the-password")
    assert r.returncode != 0
    assert 'password authentication failed for user "alice"' in r.stderr


def test_psql_unknown_database(gw):
    r = psql_gw(gw, ["-c", "SELECT 1"], dbname="nope")
    assert r.returncode != 0
    assert 'database "nope" is not configured in pgcordon' in r.stderr


def test_psql_single_transaction_and_stdin(gw, pg):
    sql = "CREATE TEMP TABLE s (a int);\nINSERT INTO s SELECT generate_series(1,10);\n" \
          "SELECT sum(a) FROM s;\n"
    a = psql_gw(gw, ["-1", "-A", "-t"], input=sql)
    b = psql_direct(pg, ["-1", "-A", "-t"], input=sql)
    assert a.returncode == 0, a.stderr
    assert (a.stdout, a.stderr) == (b.stdout, b.stderr)
    assert a.stdout.strip().splitlines()[-1] == "55"


def pgbench(gw, args, timeout=120):
    conn = ["-h", gw.host, "-p", str(gw.port), "-U", "alice"]
    return subprocess.run(["pgbench"] + conn + args + ["app"],
                          env=clean_env(LOCAL_USERS["alice"]), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def pgbench_tables(gw):
    r = pgbench(gw, ["-i", "-s", "1", "-q"])
    assert r.returncode == 0, r.stderr
    yield
    pgbench(gw, ["-i", "-I", "d"])


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench(gw, pgbench_tables, mode):
    r = pgbench(gw, ["-n", "-c", "2", "-j", "2", "-t", "25", "-M", mode])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "number of transactions actually processed: 50/50" in r.stdout, r.stdout
    assert "number of failed transactions: 0" in r.stdout, r.stdout


def test_pg_dump_same_as_direct(gw, pg):
    args = ["--no-owner", "--no-privileges", "-t", "public.items", "-t", "other.marker"]

    def dump(host, port, user, password, dbname):
        r = subprocess.run(["pg_dump", "-h", host, "-p", str(port), "-U", user] + args
                           + [dbname], env=clean_env(password), capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        # Newer pg_dump wraps the script in \restrict / \unrestrict with a random key.
        return re.sub(r"(?m)^\\(un)?restrict \S+$", r"\\\1restrict KEY", r.stdout)

    a = dump(pg.host, pg.port, "gw_scram", ROLE_PW["gw_scram"], DBNAME)
    b = dump(gw.host, gw.port, "alice", LOCAL_USERS["alice"], "app")
    assert b == a
    assert "COPY public.items" in b and "from schema other" in b
