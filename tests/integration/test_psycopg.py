"""psycopg 3 (libpq) through pgcordon behaves exactly as against PostgreSQL directly.

Most tests run one scenario twice — directly against PostgreSQL (as the upstream role) and
through the gateway — and compare the transcripts, plus a few fixed expectations so a
test still means something on its own."""

import datetime
import decimal
import hashlib
import select
import threading
import time
import uuid

import psycopg
import psycopg.errors
import pytest
from psycopg.pq import TransactionStatus

import pgwire
from conftest import DBNAME, LOCAL_USERS, ROLE_PW


@pytest.fixture(scope="module")
def both(gw, pg):
    """{"direct": connect, "gateway": connect}; each accepts autocommit= and conninfo kw."""
    return {"direct": pg.connect, "gateway": gw.connect}


def run_both(both, scenario):
    results = {name: scenario(connect) for name, connect in both.items()}
    assert results["gateway"] == results["direct"]
    return results["gateway"]


# ---------------------------------------------------------------------------- queries

def test_simple_query_protocol(both):
    def scenario(connect):
        with connect() as c:
            cur = c.cursor()
            # No parameters: psycopg sends a simple Query message, several statements at once.
            cur.execute("SELECT 1 AS a, 'x'::text AS b, NULL::int AS c; "
                        "SELECT count(*) FROM items")
            first = [tuple(d.name for d in cur.description), cur.fetchall()]
            assert cur.nextset()
            second = cur.fetchall()
            cur.execute("SELECT id, name, price, tags, created FROM items ORDER BY id LIMIT 3")
            third = cur.fetchall()
            return [first, second, third, cur.statusmessage]

    out = run_both(both, scenario)
    assert out[0] == [("a", "b", "c"), [(1, "x", None)]]
    assert out[1] == [(100,)]
    assert out[2][0][:4] == (1, "item 1", decimal.Decimal("1.25"), ["t1", "x"])


def test_extended_query_with_params(both):
    def scenario(connect):
        with connect() as c:
            rows = []
            for v in (1, 50, 99):
                rows.append(c.execute(
                    "SELECT id, name, price FROM items WHERE id = %s AND name LIKE %s",
                    (v, "item%")).fetchall())
            rows.append(c.execute(
                "SELECT %s::int + %s, %s::text || 'z', %s::bytea, %s::jsonb, %s::int[], "
                "%s::date, %s::boolean, %s::text IS NULL",
                (2, 3, "abc", b"\x00\x01\xff", '{"k": [1, 2]}', [1, 2, 3],
                 datetime.date(2024, 2, 29), True, None)).fetchone())
            rows.append(c.execute("SELECT %s::text", ("é✓ unicode 💡",)).fetchone())
            return rows

    out = run_both(both, scenario)
    assert out[0] == [(1, "item 1", decimal.Decimal("1.25"))]
    assert out[3][0] == 5 and out[3][2] == b"\x00\x01\xff" and out[3][3] == {"k": [1, 2]}


def test_client_encoding_latin1(both):
    def scenario(connect):
        with connect(client_encoding="LATIN1") as c:
            out = [c.info.parameter_status("client_encoding"), c.info.encoding]
            out.append(c.execute("SELECT %s::text, length(%s::text)", ("héllo wörld ÿ",) * 2
                                 ).fetchone())
            try:  # the server cannot convert this character to LATIN1
                c.execute("SELECT chr(10003)")
            except psycopg.Error as e:
                out.append([type(e).__name__, e.diag.sqlstate])
            out.append(c.execute("SELECT convert_to(chr(233), 'LATIN1')").fetchone()[0])
            c.execute("SET client_encoding = 'UTF8'")
            out.append(c.execute("SELECT 'ünï ✓'").fetchone()[0])
            return out

    out = run_both(both, scenario)
    assert out[0] == "LATIN1" and out[2] == ("héllo wörld ÿ", 13)
    assert out[-1] == "ünï ✓"


def test_binary_format_results(both):
    def scenario(connect):
        with connect() as c:
            cur = c.cursor(binary=True)
            cur.execute(
                "SELECT id, name, price, tags, created, id::int8 * 10000000000, "
                "id / 3.0::float8, 'ab'::bytea, gen_random_uuid() IS NOT NULL, "
                "'2024-05-06'::date, interval '1 day 2 hours', '{\"a\": 1}'::jsonb "
                "FROM items WHERE id <= %s ORDER BY id", (5,))
            rows = cur.fetchall()
            formats = [cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)]
            return [rows, formats]

    rows, formats = run_both(both, scenario)
    assert formats == [1] * 12
    assert len(rows) == 5
    assert rows[0][:4] == (1, "item 1", decimal.Decimal("1.25"), ["t1", "x"])
    assert rows[0][4] == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert rows[4][5] == 50000000000 and rows[0][7] == b"ab"


def test_server_side_cursor(both):
    def scenario(connect):
        with connect(autocommit=False) as c:
            with c.cursor(name="pgcordon_it_cursor") as cur:
                cur.itersize = 7
                cur.execute("SELECT id FROM items WHERE id > %s ORDER BY id", (10,))
                ids = [r[0] for r in cur]
            c.rollback()
            return ids

    assert run_both(both, scenario) == list(range(11, 101))


def test_errors_relayed_with_all_fields(both):
    def scenario(connect):
        out = []
        with connect() as c:
            c.execute("CREATE TEMP TABLE uq (id int CONSTRAINT uq_pk PRIMARY KEY, "
                      "v int CHECK (v > 0))")
            c.execute("INSERT INTO uq VALUES (1, 1)")
            for sql, params in (("INSERT INTO uq VALUES (%s, 1)", (1,)),
                                ("INSERT INTO uq VALUES (%s, -1)", (2,)),
                                ("SELECT nosuchcolumn FROM uq", None),
                                ("SELEKT 1", None),
                                ("SELECT 1/0", None)):
                try:
                    c.execute(sql, params)
                    out.append("no error")
                except psycopg.Error as e:
                    d = e.diag
                    out.append([type(e).__name__, d.sqlstate, d.severity, d.severity_nonlocalized,
                                d.message_primary, d.message_detail, d.message_hint,
                                d.statement_position, d.schema_name, d.table_name,
                                d.column_name, d.constraint_name, d.source_function])
            out.append(c.info.transaction_status.name)
        return out

    out = run_both(both, scenario)
    assert out[0][0] == "UniqueViolation" and out[0][11] == "uq_pk"
    assert out[1][0] == "CheckViolation"
    assert out[3][0] == "SyntaxError" and out[3][7] == "1"
    assert out[4][0] == "DivisionByZero"


def test_error_response_field_order_raw(gw, pg):
    """Every ErrorResponse / NoticeResponse field arrives, in the server's order."""
    def transcript(host, port, user, password, database):
        c = pgwire.RawConn(host, port)
        try:
            c.startup(user, database, password)
            _, _, err, _ = c.query("SELECT * FROM nosuch_table_xyz")
            _, _, _, _ = c.query("DO $$BEGIN RAISE NOTICE 'n1' USING DETAIL = 'd1', "
                                 "HINT = 'h1'; END$$")
            notices = c.notices[-1:]
            return [list(err.items()), [list(n.items()) for n in notices]]
        finally:
            c.terminate()

    a = transcript(pg.host, pg.port, "gw_scram", ROLE_PW["gw_scram"], DBNAME)
    b = transcript(gw.host, gw.port, "alice", LOCAL_USERS["alice"], "app")
    assert b == a
    assert dict(b[0])["C"] == "42P01"


# ---------------------------------------------------------------------------- pipeline

def test_pipeline_mode(both):
    def scenario(connect):
        with connect() as c:
            c.execute("CREATE TEMP TABLE pl (a int, b text)")
            with c.pipeline():
                curs = [c.execute("INSERT INTO pl VALUES (%s, %s) RETURNING a * 2", (i, f"r{i}"))
                        for i in range(20)]
                sel = c.execute("SELECT count(*), sum(a) FROM pl")
                extra = c.cursor(binary=True)
                extra.execute("SELECT b FROM pl WHERE a = %s", (7,))
            return [[cur.fetchone()[0] for cur in curs], sel.fetchone(), extra.fetchone(),
                    c.info.transaction_status.name]

    out = run_both(both, scenario)
    assert out[0] == [i * 2 for i in range(20)]
    assert out[1] == (20, 190)
    assert out[2] == ("r7",)


def test_pipeline_error_then_recovery(both):
    def scenario(connect):
        out = []
        with connect() as c:
            c.execute("CREATE TEMP TABLE pe (a int)")
            try:
                with c.pipeline():
                    c.execute("INSERT INTO pe VALUES (%s)", (1,))
                    c.execute("SELECT 1/%s", (0,))
                    c.execute("INSERT INTO pe VALUES (%s)", (2,))
            except psycopg.Error as e:
                out.append(type(e).__name__)
            out.append(c.info.transaction_status.name)
            out.append(c.execute("SELECT count(*) FROM pe").fetchone()[0])
            # Separate sync groups: an error in one does not abort the next one.
            with c.pipeline() as p:
                c.execute("INSERT INTO pe VALUES (%s)", (10,))
                p.sync()
                try:
                    c.execute("SELECT 1/%s", (0,))
                    p.sync()
                except psycopg.errors.DivisionByZero:
                    out.append("div0 in second group")
                cur = c.execute("SELECT count(*), sum(a) FROM pe")
                p.sync()
                out.append(cur.fetchone())
            out.append(c.execute("SELECT 'still fine'").fetchone()[0])
            out.append(c.info.transaction_status.name)
        # Same in a transaction block (autocommit off).
        with connect(autocommit=False) as c:
            try:
                with c.pipeline():
                    c.execute("SELECT 1")
                    c.execute("SELECT nosuch")
            except psycopg.Error as e:
                out.append(type(e).__name__)
            out.append(c.info.transaction_status.name)
            c.rollback()
            out.append(c.info.transaction_status.name)
            out.append(c.execute("SELECT 2").fetchone()[0])
            c.rollback()
        return out

    out = run_both(both, scenario)
    assert out[0] == "DivisionByZero"
    assert "still fine" in out


# ---------------------------------------------------------------------------- COPY

def test_copy_from_stdin_and_to_stdout(both):
    def scenario(connect):
        with connect() as c:
            c.execute("CREATE TEMP TABLE cp (id int, t text, n numeric, b bytea)")
            cur = c.cursor()
            with cur.copy("COPY cp (id, t, n, b) FROM STDIN") as cp:
                for i in range(500):
                    cp.write_row((i, f"row\t{i}\n\\", decimal.Decimal(i) / 7, bytes([i % 256]) * 3))
            tag = cur.statusmessage
            with cur.copy("COPY (SELECT * FROM cp ORDER BY id) TO STDOUT") as cp:
                text_out = b"".join(bytes(b) for b in cp)
            with cur.copy("COPY (SELECT id, t FROM cp WHERE id < 5 ORDER BY id) "
                          "TO STDOUT (FORMAT csv, HEADER)") as cp:
                csv_out = b"".join(bytes(b) for b in cp)
            with cur.copy("COPY (SELECT id, t FROM cp ORDER BY id) TO STDOUT (FORMAT binary)") \
                    as cp:
                cp.set_types(["int4", "text"])
                rows = list(cp.rows())
            # An error inside COPY FROM is reported and the session recovers.
            err = None
            try:
                with cur.copy("COPY cp (id) FROM STDIN") as cp:
                    cp.write(b"1\nnot-a-number\n")
            except psycopg.Error as e:
                err = [type(e).__name__, e.diag.sqlstate]
            after = c.execute("SELECT count(*) FROM cp").fetchone()[0]
            return [tag, hashlib.sha256(text_out).hexdigest(), csv_out, rows[:3], len(rows),
                    err, after, c.info.transaction_status.name]

    out = run_both(both, scenario)
    assert out[0] == "COPY 500"
    assert out[2].startswith(b"id,t\n0,")
    assert out[4] == 500
    assert out[5] == ["InvalidTextRepresentation", "22P02"]
    assert out[6] == 500


def test_large_copy_both_directions(gw, direct):
    """A few MB through COPY FROM STDIN and back through COPY TO STDOUT, byte for byte."""
    line_count = 60000
    payload = b"".join(b"%d\t%s\n" % (i, (b"%08x" % (i * 2654435761 % 2**32)) * 10)
                       for i in range(line_count))
    assert len(payload) > 5_000_000

    def roundtrip(c):
        c.execute("CREATE TEMP TABLE big (id int, t text)")
        cur = c.cursor()
        with cur.copy("COPY big FROM STDIN") as cp:
            for off in range(0, len(payload), 100_000):
                cp.write(payload[off:off + 100_000])
        assert cur.statusmessage == f"COPY {line_count}"
        with cur.copy("COPY (SELECT * FROM big ORDER BY id) TO STDOUT") as cp:
            out = b"".join(bytes(b) for b in cp)
        gen = hashlib.sha256()
        with cur.copy("COPY (SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 40000) g) "
                      "TO STDOUT") as cp:
            for b in cp:
                gen.update(b)
        return out, gen.hexdigest()

    with gw.connect() as c:
        via_gw, gen_gw = roundtrip(c)
    via_direct, gen_direct = roundtrip(direct)
    assert len(via_gw) == len(payload)
    assert via_gw == payload
    assert gen_gw == gen_direct


# ---------------------------------------------------------------------------- async messages

def test_listen_notify_between_two_connections(gw):
    channel = "pgcordon_it_" + uuid.uuid4().hex[:8]
    with gw.connect() as listener, gw.connect() as sender:
        got = []
        listener.add_notify_handler(lambda n: got.append((n.channel, n.payload)))
        listener.execute(f"LISTEN {channel}")
        sender.execute(f"NOTIFY {channel}, 'hello 1'")
        sender.execute("SELECT pg_notify(%s, %s)", (channel, "hello 2"))
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            listener.execute("SELECT 1")
            time.sleep(0.05)
        assert got == [(channel, "hello 1"), (channel, "hello 2")]
        # A notification that arrives while the client is idle and sends nothing: wait on
        # the socket only (no query that would flush it through).
        threading.Timer(0.3, lambda: sender.execute(f"NOTIFY {channel}, 'hello 3'")).start()
        n = None
        deadline = time.monotonic() + 10
        while n is None and time.monotonic() < deadline:
            ready, _, _ = select.select([listener.pgconn.socket], [], [], 0.5)
            if ready:
                listener.pgconn.consume_input()
                n = listener.pgconn.notifies()
        assert n is not None, "notification not delivered to an idle client"
        assert (n.relname.decode(), n.extra.decode()) == (channel, "hello 3")


def test_notice_response(both):
    def scenario(connect):
        with connect() as c:
            notices = []
            c.add_notice_handler(lambda d: notices.append(
                (d.severity, d.severity_nonlocalized, d.sqlstate, d.message_primary,
                 d.message_detail, d.message_hint)))
            c.execute("DO $$BEGIN RAISE NOTICE 'hello %', 42 USING DETAIL = 'the detail', "
                      "HINT = 'a hint'; RAISE WARNING 'careful'; END$$")
            c.execute("SET client_min_messages = debug1")
            c.execute("DO $$BEGIN RAISE DEBUG 'debug msg'; END$$")
            return notices

    out = run_both(both, scenario)
    assert out[0] == ("NOTICE", "NOTICE", "00000", "hello 42", "the detail", "a hint")
    assert out[1][0] == "WARNING" and out[1][3] == "careful"
    assert ("DEBUG", "DEBUG", "00000", "debug msg", None, None) in out


def test_parameter_status(both):
    names = ["server_version", "server_encoding", "client_encoding", "DateStyle", "IntervalStyle",
             "TimeZone", "integer_datetimes", "standard_conforming_strings",
             "application_name", "default_transaction_read_only", "in_hot_standby"]

    def scenario(connect):
        with connect() as c:
            before = {n: c.info.parameter_status(n) for n in names}
            c.execute("SET application_name = 'pgcordon-ps-test'")
            c.execute("SET TimeZone = 'Europe/Berlin'")
            c.execute("SET DateStyle = 'SQL, DMY'")
            after = {n: c.info.parameter_status(n) for n in names}
            return [before, after]

    before, after = run_both(both, scenario)
    assert before["server_version"].startswith("15")
    assert after["application_name"] == "pgcordon-ps-test"
    assert after["TimeZone"] == "Europe/Berlin"
    assert after["DateStyle"] == "SQL, DMY"


# ---------------------------------------------------------------------------- transactions

def test_transactions_and_status(both):
    def scenario(connect):
        out = []
        with connect(autocommit=False) as c:
            c.execute("CREATE TEMP TABLE tx (a int) ON COMMIT PRESERVE ROWS")
            c.commit()
            out.append(c.info.transaction_status.name)
            c.execute("INSERT INTO tx VALUES (1)")
            out.append(c.info.transaction_status.name)
            c.rollback()
            out.append(c.execute("SELECT count(*) FROM tx").fetchone()[0])
            c.execute("INSERT INTO tx VALUES (2)")
            c.commit()
            try:
                c.execute("SELECT 1/0")
            except psycopg.errors.DivisionByZero:
                pass
            out.append(c.info.transaction_status.name)
            try:
                c.execute("SELECT 1")
            except psycopg.errors.InFailedSqlTransaction as e:
                out.append(e.diag.sqlstate)
            c.rollback()
            out.append(c.info.transaction_status.name)
            with c.transaction():
                c.execute("INSERT INTO tx VALUES (3)")
                with c.transaction():  # SAVEPOINT
                    c.execute("INSERT INTO tx VALUES (4)")
                try:
                    with c.transaction():
                        c.execute("INSERT INTO tx VALUES (5)")
                        raise RuntimeError("roll back to savepoint")
                except RuntimeError:
                    pass
            out.append(c.execute("SELECT array_agg(a ORDER BY a) FROM tx").fetchone()[0])
            c.commit()
        with connect(autocommit=True) as c:
            c.execute("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY")
            out.append(c.info.transaction_status.name)
            out.append(c.execute("SHOW transaction_isolation").fetchone()[0])
            try:
                c.execute("CREATE TEMP TABLE nope (a int)")
            except psycopg.Error as e:
                out.append(e.diag.sqlstate)
            out.append(c.info.transaction_status.name)
            c.execute("ROLLBACK")
            out.append(c.info.transaction_status.name)
        return out

    out = run_both(both, scenario)
    assert out[:7] == ["IDLE", "INTRANS", 0, "INERROR", "25P02", "IDLE", [2, 3, 4]]
    assert out[7:] == ["INTRANS", "serializable", "25006", "INERROR", "IDLE"]


def test_named_prepared_statements(both):
    def scenario(connect):
        with connect() as c:
            c.prepare_threshold = 100  # only explicit prepare=True prepares
            res = []
            for i in (3, 4, 5, 6):
                res.append(c.execute("SELECT id * 2, name FROM items WHERE id = %s", (i,),
                                     prepare=True).fetchone())
            for i in (7, 8):
                res.append(c.cursor(binary=True).execute(
                    "SELECT id * 2, name FROM items WHERE id = %s", (i,), prepare=True).fetchone())
            stmts = c.execute("SELECT name, statement, from_sql FROM pg_prepared_statements "
                              "ORDER BY name").fetchall()
            # SQL-level PREPARE / EXECUTE / DEALLOCATE too.
            c.execute("PREPARE sqlprep (int) AS SELECT $1 + 1000")
            res.append(c.execute("EXECUTE sqlprep (5)").fetchone())
            c.execute("DEALLOCATE sqlprep")
            return [res, stmts]

    res, stmts = run_both(both, scenario)
    assert res[0] == (6, "item 3") and res[5] == (16, "item 8") and res[6] == (1005,)
    assert len(stmts) >= 1 and all(s[0].startswith("_pg3_") for s in stmts)


def test_two_phase_commit(both):
    def scenario(connect):
        out = []
        table = "tpc_" + uuid.uuid4().hex[:10]
        gid1, gid2 = "pgcordon-it-" + uuid.uuid4().hex, "pgcordon-it-" + uuid.uuid4().hex
        with connect() as c:
            c.execute(f"CREATE TABLE {table} (a int)")
            c.execute("BEGIN")
            c.execute(f"INSERT INTO {table} VALUES (1)")
            c.execute(f"PREPARE TRANSACTION '{gid1}'")
            out.append(c.info.transaction_status.name)
            c.execute("BEGIN")
            c.execute(f"INSERT INTO {table} VALUES (2)")
            c.execute(f"PREPARE TRANSACTION '{gid2}'")
        with connect() as c2:  # finish them from another session
            out.append(c2.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid IN (%s, %s)",
                                  (gid1, gid2)).fetchone()[0])
            c2.execute(f"COMMIT PREPARED '{gid1}'")
            c2.execute(f"ROLLBACK PREPARED '{gid2}'")
            out.append(c2.execute(f"SELECT array_agg(a) FROM {table}").fetchone()[0])
        # psycopg's DB-API TPC methods.
        with connect(autocommit=False) as c:
            xid = c.xid(1, "pgcordon-" + uuid.uuid4().hex, "branch")
            c.tpc_begin(xid)
            c.execute(f"INSERT INTO {table} VALUES (3)")
            c.tpc_prepare()
            with connect() as c3:
                out.append(len([x for x in c3.tpc_recover() if x.gtrid == xid.gtrid]))
            c.tpc_commit()
            out.append(c.execute(f"SELECT array_agg(a ORDER BY a) FROM {table}").fetchone()[0])
            c.rollback()
        with connect() as c:
            c.execute(f"DROP TABLE {table}")
        return out

    assert run_both(both, scenario) == ["IDLE", 2, [1], 1, [1, 3]]


def test_large_objects_sql_functions(both):
    def scenario(connect):
        out = []
        with connect(autocommit=False) as c:
            data = bytes(range(256)) * 40
            oid = c.execute("SELECT lo_from_bytea(0, %s)", (data,)).fetchone()[0]
            out.append(c.execute("SELECT lo_get(%s)", (oid,)).fetchone()[0] == data)
            fd = c.execute("SELECT lo_open(%s, %s)", (oid, 0x20000 | 0x40000)).fetchone()[0]
            out.append(c.execute("SELECT lo_lseek(%s, 0, 2)", (fd,)).fetchone()[0])
            out.append(c.execute("SELECT lowrite(%s, %s)", (fd, b"tail-bytes")).fetchone()[0])
            c.execute("SELECT lo_lseek(%s, 10230, 0)", (fd,))
            out.append(c.execute("SELECT loread(%s, 100)", (fd,)).fetchone()[0])
            c.execute("SELECT lo_close(%s)", (fd,))
            c.commit()
            out.append(c.execute("SELECT length(lo_get(%s))", (oid,)).fetchone()[0])
            out.append(c.execute("SELECT lo_unlink(%s)", (oid,)).fetchone()[0])
            c.commit()
            try:
                c.execute("SELECT lo_get(%s)", (oid,))
            except psycopg.Error as e:
                out.append(e.diag.sqlstate)
            c.rollback()
        return out

    out = run_both(both, scenario)
    assert out == [True, 10240, 10, bytes(range(246, 256)) + b"tail-bytes", 10250, 1, "42704"]


def test_function_call_message(gw, pg):
    """FunctionCall ('F') passes through; psycopg cannot send it, so use the raw client."""
    with pg.connect() as c:
        int4pl = c.execute("SELECT 'int4pl'::regproc::oid").fetchone()[0]
        md5 = c.execute("SELECT 'md5(text)'::regprocedure::oid").fetchone()[0]

    def transcript(host, port, user, password, database):
        r = pgwire.RawConn(host, port)
        try:
            r.startup(user, database, password)
            out = [r.function_call(int4pl, ["40", "2"]),
                   r.function_call(md5, ["abc"]),
                   r.function_call(int4pl, ["2147483647", "1"])]
            out = [(v, (e["C"], e["M"]) if e else None) for v, e in out]
            out.append(r.query("SELECT 'after fastpath'")[0])
            return out
        finally:
            r.terminate()

    a = transcript(pg.host, pg.port, "gw_scram", ROLE_PW["gw_scram"], DBNAME)
    b = transcript(gw.host, gw.port, "alice", LOCAL_USERS["alice"], "app")
    assert b == a
    assert b[0] == (b"42", None)
    assert b[1] == (hashlib.md5(b"abc").hexdigest().encode(), None)
    assert b[2][1] == ("22003", "integer out of range")


# ---------------------------------------------------------------------------- cancel

def test_cancel_running_query(gw, pg):
    with gw.connect() as c:
        elapsed = pg.cancel_sleep(c, 10, "cancel_me")
        assert elapsed < 8, f"cancel took {elapsed:.1f}s"
        assert c.info.transaction_status == TransactionStatus.IDLE
        assert c.execute("SELECT 'alive after cancel'").fetchone()[0] == "alive after cancel"


def test_cancel_inside_transaction(gw, pg):
    with gw.connect(autocommit=False) as c:
        c.execute("SELECT 1")
        pg.cancel_sleep(c, 10, "cancel_tx")
        assert c.info.transaction_status == TransactionStatus.INERROR
        c.rollback()
        assert c.execute("SELECT 7").fetchone()[0] == 7


# ---------------------------------------------------------------------------- startup

def test_startup_parameters_reach_upstream(both):
    def scenario(connect):
        with connect(application_name="pgcordon-it-app",
                     options="-c search_path=other,public -c statement_timeout=4321 "
                             "-c DateStyle=German -c extra_float_digits=1") as c:
            return [
                c.execute("SHOW search_path").fetchone()[0],
                c.execute("SELECT current_setting('application_name')").fetchone()[0],
                c.execute("SHOW statement_timeout").fetchone()[0],
                c.execute("SHOW DateStyle").fetchone()[0],
                c.execute("SHOW extra_float_digits").fetchone()[0],
                c.execute("SELECT v FROM marker").fetchone()[0],
                c.execute("SELECT application_name FROM pg_stat_activity "
                          "WHERE pid = pg_backend_pid()").fetchone()[0],
                c.info.parameter_status("application_name"),
                c.info.parameter_status("DateStyle"),
            ]

    out = run_both(both, scenario)
    assert out == ["other,public", "pgcordon-it-app", "4321ms", "German, DMY", "1",
                   "from schema other", "pgcordon-it-app", "pgcordon-it-app", "German, DMY"]


def test_raw_startup_parameters_passed_unchanged(gw, pg):
    extra = {"application_name": "raw-startup", "TimeZone": "Asia/Tokyo",
             "DateStyle": "ISO, YMD", "IntervalStyle": "sql_standard", "extra_float_digits": "3",
             "client_encoding": "LATIN1", "statement_timeout": "12s", "search_path": "other"}

    def transcript(host, port, user, password, database):
        r = pgwire.RawConn(host, port)
        try:
            r.startup(user, database, password, extra=extra)
            shows = [r.query(f"SHOW {k}")[0][0][0] for k in extra]
            ps = {k: r.params.get(k) for k in ("application_name", "TimeZone", "DateStyle",
                                                "IntervalStyle", "client_encoding")}
            return [shows, ps]
        finally:
            r.terminate()

    a = transcript(pg.host, pg.port, "gw_scram", ROLE_PW["gw_scram"], DBNAME)
    b = transcript(gw.host, gw.port, "alice", LOCAL_USERS["alice"], "app")
    assert b == a
    assert b[0] == ["raw-startup", "Asia/Tokyo", "ISO, YMD", "sql_standard", "3", "LATIN1",
                    "12s", "other"]


def test_backend_key_data_is_the_gateways_own(gw):
    with gw.connect() as c, gw.connect() as c2:
        real = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        real2 = c2.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert c.info.backend_pid != real
        assert c2.info.backend_pid != real2
        assert c.info.backend_pid != c2.info.backend_pid, "two sessions share a cancel key pid"
        assert real != real2, "two client sessions share one upstream backend"


def test_fresh_upstream_session_per_client(gw):
    """A backend is never handed to another client: session state does not leak."""
    with gw.connect() as c:
        pid1 = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.execute("SET search_path = other")
        c.execute("CREATE TEMP TABLE leak_check (a int)")
        c.execute("PREPARE leaky AS SELECT 1")
    with gw.connect() as c:
        assert c.execute("SELECT pg_backend_pid()").fetchone()[0] != pid1
        assert c.execute("SHOW search_path").fetchone()[0] == '"$user", public'
        assert c.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
        assert c.execute("SELECT to_regclass('pg_temp.leak_check')").fetchone()[0] is None


def test_upstream_user_and_database(gw):
    with gw.connect() as c:
        assert c.execute("SELECT current_user, current_database()").fetchone() == \
            ("gw_scram", DBNAME)
    with gw.connect(user="bob", dbname="app_md5") as c:
        assert c.execute("SELECT current_user").fetchone()[0] == "gw_md5"


def test_client_password_never_logged(gw):
    # Connect with a few failing attempts too, then scan the whole module's log.
    for pw in ("wrong-" + LOCAL_USERS["alice"], LOCAL_USERS["bob"] + "-nope"):
        with pytest.raises(psycopg.OperationalError):
            gw.connect(password=pw)
    gw.assert_serves()
    log = gw.log_text()
    for secret in list(LOCAL_USERS.values()) + list(ROLE_PW.values()):
        assert secret not in log
    assert "wrong-" + LOCAL_USERS["alice"] not in log
