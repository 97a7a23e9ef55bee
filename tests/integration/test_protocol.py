"""Raw v3 protocol transparency: the same bytes sent after startup get the same messages back
through pgcordon as from PostgreSQL directly (extended protocol, pipelining, errors
mid-pipeline, portals, COPY sub-protocol, Flush), plus concurrency and back-pressure."""

import hashlib
import struct
import threading
import time

import pytest

import pgwire
from conftest import DBNAME, LOCAL_USERS, ROLE_PW
from pgwire import cstr, msg


# ---------------------------------------------------------------------------- builders

def parse(sql, name="", oids=()):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", len(oids))
               + b"".join(struct.pack("!I", o) for o in oids))


def bind(params=(), portal="", stmt="", param_formats=(), result_formats=()):
    body = cstr(portal) + cstr(stmt)
    body += struct.pack("!H", len(param_formats)) + b"".join(struct.pack("!H", f)
                                                            for f in param_formats)
    body += struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            b = p if isinstance(p, bytes) else str(p).encode()
            body += struct.pack("!i", len(b)) + b
    body += struct.pack("!H", len(result_formats)) + b"".join(struct.pack("!H", f)
                                                             for f in result_formats)
    return msg(b"B", body)


def describe(kind, name=""):
    return msg(b"D", kind + cstr(name))


def execute(portal="", max_rows=0):
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


def close(kind, name=""):
    return msg(b"C", kind + cstr(name))


SYNC = msg(b"S")
FLUSH = msg(b"H")


def query(sql):
    return msg(b"Q", cstr(sql))


# ---------------------------------------------------------------------------- helpers

def login_direct(pg):
    r = pgwire.RawConn(pg.host, pg.port)
    r.startup("gw_scram", DBNAME, ROLE_PW["gw_scram"])
    return r


def login_gw(gw):
    r = pgwire.RawConn(gw.host, gw.port)
    r.startup("alice", "app", LOCAL_USERS["alice"])
    return r


def collect(r, n_ready):
    """All messages up to and including the n-th ReadyForQuery."""
    out = []
    seen = 0
    while seen < n_ready:
        typ, body = r.read_msg()
        out.append((typ.decode(), body))
        if typ == b"Z":
            seen += 1
    return out


def types(msgs):
    return "".join(t for t, _ in msgs)


def transcript(r, steps):
    """steps: list of (bytes to send, ReadyForQuery count to wait for)."""
    out = []
    for data, n_ready in steps:
        r.send(data)
        out.append(collect(r, n_ready) if n_ready else [])
    return out


def compare(gw, pg, steps, setup=None):
    results = []
    for login in (lambda: login_direct(pg), lambda: login_gw(gw)):
        r = login()
        try:
            if setup:
                transcript(r, setup)
            results.append(transcript(r, steps))
        finally:
            r.terminate()
    direct, via = results
    for i, (a, b) in enumerate(zip(direct, via)):
        assert types(b) == types(a), f"step {i}: message types differ"
        assert b == a, f"step {i}: message contents differ"
    return via


# ---------------------------------------------------------------------------- transcripts

def test_extended_unnamed_with_params(gw, pg):
    out = compare(gw, pg, [
        (parse("SELECT id, name FROM items WHERE id = $1 OR id = $2", oids=(23, 23))
         + bind(["3", "4"]) + describe(b"P") + execute() + SYNC, 1),
        (parse("SELECT $1::text || $2::text") + bind(["a", None]) + describe(b"P")
         + execute() + SYNC, 1),
        # Binary parameters and results.
        (parse("SELECT $1::int4 + 1, $2::bytea", oids=(23, 17))
         + bind([struct.pack("!i", 41), b"\x00\xff"], param_formats=(1, 1), result_formats=(1,))
         + describe(b"P") + execute() + SYNC, 1),
    ])
    assert types(out[0]) == "12TDDCZ"
    assert types(out[2]) == "12TDCZ"


def test_named_statement_and_portal_lifecycle(gw, pg):
    out = compare(gw, pg, [
        (parse("SELECT id FROM items WHERE id <= $1 ORDER BY id", name="s1")
         + describe(b"S", "s1") + SYNC, 1),
        (query("BEGIN"), 1),
        (bind(["10"], portal="p1", stmt="s1") + execute("p1", 3) + execute("p1", 3) + SYNC, 1),
        # Portals survive Sync inside an explicit transaction.
        (execute("p1", 0) + describe(b"P", "p1") + close(b"P", "p1") + SYNC, 1),
        (execute("p1", 0) + SYNC, 1),  # closed portal: error
        (query("ROLLBACK"), 1),
        (bind(["2"], stmt="s1") + execute() + close(b"S", "s1") + SYNC, 1),
        (bind(["2"], stmt="s1") + execute() + SYNC, 1),  # closed statement: error
        (parse("SELECT 1", name="s1") + parse("SELECT 2", name="s1") + SYNC, 1),  # duplicate
    ])
    assert types(out[0]) == "1tTZ"
    assert types(out[2]) == "2DDDsDDDsZ"
    assert types(out[3]).startswith("DDDD")
    assert "E" in types(out[4]) and "E" in types(out[7]) and "E" in types(out[8])


def test_error_mid_pipeline_skips_to_sync(gw, pg):
    bad = parse("SELEC broken") + bind() + execute()
    good = parse("SELECT 1") + bind() + execute()
    out = compare(gw, pg, [
        # Everything after the error up to Sync is skipped; each Sync gets its own
        # ReadyForQuery with the right transaction status.
        (good + bad + good + SYNC + good + SYNC + bad + SYNC + good + SYNC, 4),
        (query("BEGIN") + good + bad + good + SYNC + good + SYNC, 3),
        (query("ROLLBACK"), 1),
        # Bind with the wrong number of parameters, Describe of an unknown statement.
        (parse("SELECT $1::int + $2::int", name="two") + bind(["1"], stmt="two") + execute()
         + SYNC + describe(b"S", "nope") + SYNC + close(b"S", "two") + SYNC, 3),
    ])
    statuses = [b for t, b in out[1] if t == "Z"]
    assert statuses == [b"T", b"E", b"E"]
    assert types(out[0]).count("E") == 2


def test_flush_without_sync(gw, pg):
    """Flush ('H') must make results come back before any Sync."""
    for r in (login_direct(pg), login_gw(gw)):
        try:
            r.send(parse("SELECT 'flushed'") + bind() + describe(b"P") + execute() + FLUSH)
            got = []
            while not got or got[-1][0] != b"C":
                got.append(r.read_msg())  # times out (fails) if the gateway holds them
            assert [t for t, _ in got] == [b"1", b"2", b"T", b"D", b"C"]
            r.send(SYNC)
            assert r.read_msg() == (b"Z", b"I")
        finally:
            r.terminate()


def test_empty_queries(gw, pg):
    out = compare(gw, pg, [
        (query(""), 1),
        (query(";"), 1),
        (parse("") + bind() + describe(b"P") + execute() + SYNC, 1),
        (query("SELECT 1; SELECT 2;; SELECT 3"), 1),
    ])
    assert types(out[0]) == "IZ"


def test_copy_subprotocol(gw, pg):
    setup = [(query("CREATE TEMP TABLE c (a int, b text)"), 1)]
    rows = b"".join(msg(b"d", b"%d\tr%d\n" % (i, i)) for i in range(100))
    out = compare(gw, pg, [
        (query("COPY c FROM STDIN"), 0),
        (rows + msg(b"c"), 1),
        (query("COPY c FROM STDIN") + msg(b"d", b"1000\tx\n") + msg(b"f", cstr("client gave up")),
         1),
        (query("SELECT count(*) FROM c"), 1),
        (query("COPY (SELECT * FROM c ORDER BY a LIMIT 5) TO STDOUT"), 1),
        # COPY in the extended protocol; Flush/Sync during copy-in are ignored by the server.
        (parse("COPY c FROM STDIN") + bind() + execute() + FLUSH + msg(b"d", b"2000\ty\n")
         + msg(b"c") + SYNC, 1),
        (parse("COPY c (a) TO STDOUT (FORMAT binary)") + bind() + execute() + SYNC, 1),
    ], setup=setup)
    assert types(out[1]) == "GCZ"
    assert any(t == "E" and b"57014" in b for t, b in out[2])
    assert types(out[4]) == "H" + "d" * 5 + "cCZ"


def test_copy_in_response_arrives_before_data(gw, pg):
    for r in (login_direct(pg), login_gw(gw)):
        try:
            r.query("CREATE TEMP TABLE cc (a int)")
            r.send(query("COPY cc FROM STDIN"))
            typ, body = r.read_msg()
            assert typ == b"G", typ
            r.send(msg(b"d", b"1\n2\n") + msg(b"c"))
            assert [m[0] for m in collect(r, 1)] == ["C", "Z"]
        finally:
            r.terminate()


def test_startup_parameter_status_identical(gw, pg):
    d = login_direct(pg)
    g = login_gw(gw)
    try:
        assert g.params == d.params
    finally:
        d.terminate()
        g.terminate()


# ---------------------------------------------------------------------------- load shapes

def test_many_concurrent_sessions_no_crosstalk(gw):
    errors = []
    pids = {}

    def worker(n):
        try:
            with gw.connect(application_name=f"worker-{n}") as c:
                pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
                pids[n] = pid
                for i in range(15):
                    v = n * 1000 + i
                    row = c.execute("SELECT %s::int, pg_backend_pid(), "
                                    "current_setting('application_name')", (v,)).fetchone()
                    assert row == (v, pid, f"worker-{n}"), row
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(f"worker {n}: {e!r}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(pids) == 30 and len(set(pids.values())) == 30
    gw.assert_serves()


def test_large_result_set(gw):
    with gw.connect() as c:
        cur = c.cursor()
        cur.execute("SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 30000) g")
        n, total = 0, 0
        for g, s in cur:
            n += 1
            total += len(s)
        assert (n, total) == (30000, 30000 * 960)


def _rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_back_pressure_on_slow_client(gw, pg):
    """A client that stops reading must not make the gateway buffer the whole result."""
    r = login_gw(gw)
    pid = int(r.query("SELECT pg_backend_pid()")[0][0][0])
    before = _rss_kb(gw.pid)
    # About 200 MB of result rows; the client reads nothing for a while.
    r.send(query("SELECT repeat('x', 2000) FROM generate_series(1, 100000)"))
    time.sleep(4)
    grown_mb = (_rss_kb(gw.pid) - before) / 1024
    assert grown_mb < 64, f"gateway RSS grew by {grown_mb:.0f} MB for one stalled client"
    # Now read it all: nothing lost.
    rows = 0
    while True:
        typ, body = r.read_msg()
        if typ == b"D":
            rows += 1
        elif typ == b"Z":
            break
    assert rows == 100000
    r.terminate()
    gw.assert_serves()
    with pg.super_connect() as su:
        deadline = time.monotonic() + 10
        while su.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, "upstream backend not released"
            time.sleep(0.05)


def test_notification_inside_transaction_delivered_after_commit(gw):
    with gw.connect() as listener, gw.connect(autocommit=False) as sender:
        got = []
        listener.add_notify_handler(lambda n: got.append(n.payload))
        listener.execute("LISTEN txchan")
        sender.execute("NOTIFY txchan, 'one'")
        sender.execute("NOTIFY txchan, 'two'")
        time.sleep(0.3)
        listener.execute("SELECT 1")
        assert got == []
        sender.commit()
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            listener.execute("SELECT 1")
            time.sleep(0.05)
        assert got == ["one", "two"]


@pytest.mark.parametrize("stmt", ["DISCARD ALL", "RESET ALL", "SET ROLE gw_scram",
                                  "SET SESSION AUTHORIZATION DEFAULT"])
def test_session_statements_pass_through(gw, stmt):
    with gw.connect() as c:
        c.execute("SET application_name = 'before'")
        c.execute(stmt)
        assert c.execute("SELECT 1").fetchone()[0] == 1
        assert c.info.transaction_status.name == "IDLE"


def test_large_value_from_upstream(gw):
    """A single DataRow bigger than max_message_size (64 MiB) still comes back: the limit is
    for what clients send, PostgreSQL can return values up to 1 GB."""
    with gw.connect() as c:
        n, h = c.execute("SELECT length(v), md5(v) FROM (SELECT repeat('ab', 40 * 1024 * 1024) v) s"
                         ).fetchone()
        v = c.execute("SELECT repeat('ab', 40 * 1024 * 1024)").fetchone()[0]
        assert len(v) == n == 80 * 1024 * 1024

        assert hashlib.md5(v.encode()).hexdigest() == h
    gw.assert_serves()


def test_back_pressure_on_slow_upstream(gw, pg):
    """A client streaming COPY data while the upstream cannot take it must be throttled,
    not buffered in the gateway."""
    with pg.super_connect() as locker:
        locker.execute("CREATE TABLE IF NOT EXISTS public.bp_target (a int, b text)")
        locker.execute("GRANT ALL ON public.bp_target TO gw_scram")
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE public.bp_target IN ACCESS EXCLUSIVE MODE")
        r = login_gw(gw)
        before = _rss_kb(gw.pid)
        r.send(query("COPY public.bp_target FROM STDIN"))
        row = b"1\t" + b"q" * 1000 + b"\n"
        chunk = msg(b"d", row * 64)  # ~64 KB per CopyData
        total = 1600  # ~100 MB
        sent = {"n": 0}

        def pump():
            try:
                for _ in range(total):
                    r.sock.sendall(chunk)
                    sent["n"] += 1
                r.sock.sendall(msg(b"c"))
            except OSError as e:
                sent["error"] = e

        r.sock.settimeout(120)
        t = threading.Thread(target=pump)
        t.start()
        time.sleep(4)
        grown_mb = (_rss_kb(gw.pid) - before) / 1024
        stalled_at = sent["n"]
        locker.execute("ROLLBACK")
    try:
        assert grown_mb < 64, f"gateway RSS grew by {grown_mb:.0f} MB while upstream was blocked"
        assert stalled_at < total, "the whole COPY was accepted while the upstream was blocked"
        t.join(120)
        assert "error" not in sent, sent
        r.sock.settimeout(120)
        msgs = collect(r, 1)
        assert ("C", b"COPY %d\0" % (total * 64)) in msgs, types(msgs)
        r.terminate()
    finally:
        with pg.super_connect() as su:
            su.execute("DROP TABLE IF EXISTS public.bp_target")
    gw.assert_serves()
