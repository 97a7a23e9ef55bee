"""Hostile and broken input, failure of the upstream, TLS, upstream authentication methods,
reload and shutdown. After every hostile case the gateway must still serve a normal client."""

import os
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid

import psycopg
import psycopg.errors
import pytest

import pgwire
from conftest import (DBNAME, LOCAL_USERS, ROLE_PW, GatewayFactory, closed_port,
                      scram_verifier)
from store_relay import StoreRelay

ALICE = LOCAL_USERS["alice"]
WRONG_UPSTREAM_PW = "WrongUpstream-3x4y5z6w"


@pytest.fixture(scope="module")
def gwx(pg, certs, tmp_path_factory):
    """The default gateway plus upstream entries that fail or use TLS."""
    f = GatewayFactory(pg, certs, tmp_path_factory.mktemp("gwx"))

    def mutate(cfg):
        dbs = cfg["databases"]
        base = dict(dbs["app"])
        dbs["down"] = dict(base, port=closed_port())
        dbs["badpw"] = dict(host=pg.host, port=pg.port, dbname=DBNAME, user="gw_scram",
                            password=WRONG_UPSTREAM_PW, sslmode="disable")
        dbs["tls_require"] = dict(base, sslmode="require")
        dbs["tls_verify"] = dict(base, sslmode="verify-full", sslrootcert=str(certs.ca_crt))
        dbs["tls_wrongca"] = dict(base, sslmode="verify-full",
                                  sslrootcert=str(certs.other_ca_crt))
        dbs["md5_tls"] = dict(dbs["app_md5"], sslmode="require")
        # The server's Unix-domain socket (pg_hba: local trust), and a directory without one.
        dbs["unix"] = dict(base, host=str(pg.dir))
        dbs["unix_missing"] = dict(base, host=str(pg.dir / "no-such-dir"))

    g = f.start(mutate)
    yield g
    f.cleanup()


def raw(gw, timeout=10.0):
    return pgwire.RawConn(gw.host, gw.port, timeout=timeout)


def raw_login(gw, user="alice", dbname="app", password=None, **kw):
    r = raw(gw)
    r.startup(user, dbname, LOCAL_USERS[user] if password is None else password, **kw)
    return r


def assert_fatal(fields, sqlstate, *prefixes):
    assert fields.get("C") == sqlstate, f"expected {sqlstate}, got {fields}"
    assert fields.get("S") == "FATAL", f"expected severity FATAL, got {fields}"
    if prefixes:
        assert any(fields.get("M", "").startswith(p) for p in prefixes), \
            f"message {fields.get('M')!r} does not start with any of {prefixes}"


def read_fatal_and_close(r, sqlstate, *prefixes, allow_v2=False):
    """Read up to an ErrorResponse, check it, and check the gateway then closes."""
    try:
        head = r._recv_exact(5)
    except pgwire.ConnectionClosed:
        raise AssertionError("gateway closed the connection without an ErrorResponse") from None
    r.buf = head + r.buf
    if allow_v2 and head[:1] == b"E" and struct.unpack("!I", head[1:])[0] > 100000:
        # A protocol-2 style error ('E' + text), as PostgreSQL sends to 2.0 clients.
        assert r.expect_closed()
        text = r.buf[1:].decode(errors="replace")
        assert any(p in text for p in prefixes), text
        return {"M": text}
    fields = r.read_error()
    assert_fatal(fields, sqlstate, *prefixes)
    assert r.expect_closed(), "gateway kept the connection open after a FATAL error"
    return fields


def startup_error(gw, user, dbname, password, **kw):
    r = raw(gw)
    try:
        with pytest.raises(pgwire.ServerError) as ei:
            r.startup(user, dbname, password, **kw)
        assert r.expect_closed(), "connection not closed after FATAL"
        return ei.value.fields
    finally:
        r.close()


def upstream_pid(conn):
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def wait_backend_gone(pg, pid, timeout=15):
    deadline = time.monotonic() + timeout
    with pg.super_connect() as su:
        while time.monotonic() < deadline:
            if not su.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                              (pid,)).fetchone():
                return
            time.sleep(0.05)
    raise AssertionError(f"upstream backend {pid} still exists after the client went away")


# ---------------------------------------------------------------------------- framing

def test_truncated_startup_then_close(gwx):
    r = raw(gwx)
    r.send(struct.pack("!II", 100, pgwire.PROTO_30) + b"user\0ali")
    r.close()
    gwx.assert_serves()


def test_truncated_message_after_auth_then_close(gwx, pg):
    r = raw_login(gwx)
    rows, _, _, _ = r.query("SELECT pg_backend_pid()")
    pid = int(rows[0][0])
    r.send(b"Q" + struct.pack("!I", 1000) + b"SELECT 'only part of it")
    r.close()
    wait_backend_gone(pg, pid)
    gwx.assert_serves()


def test_client_vanishes_mid_query_releases_upstream(gwx, pg):
    r = raw_login(gwx)
    pid = int(r.query("SELECT pg_backend_pid()")[0][0][0])
    r.send(pgwire.msg(b"Q", b"SELECT pg_sleep(1)\0"))
    r.close()
    wait_backend_gone(pg, pid)
    gwx.assert_serves()


def test_oversized_length_in_startup_packet(gwx):
    r = raw(gwx)
    r.send(struct.pack("!II", 0x7FFFFFFF, pgwire.PROTO_30) + b"user\0alice\0")
    read_fatal_and_close(r, "08P01", "message too large", "invalid")
    gwx.assert_serves()


def test_oversized_length_in_query_after_auth(gwx, pg):
    r = raw_login(gwx)
    pid = int(r.query("SELECT pg_backend_pid()")[0][0][0])
    r.send(b"Q" + struct.pack("!I", 0x7FFFFFFF) + b"SELECT 1")
    read_fatal_and_close(r, "08P01", "message too large")
    wait_backend_gone(pg, pid)
    gwx.assert_serves()


@pytest.mark.parametrize("length", [0, 3])
def test_length_below_minimum_after_auth(gwx, length):
    r = raw_login(gwx)
    r.send(b"Q" + struct.pack("!I", length))
    read_fatal_and_close(r, "08P01", "invalid")
    gwx.assert_serves()


def test_max_message_size_is_enforced(gateway_factory):
    g = gateway_factory.start(lambda c: c["limits"].update(max_message_size="512KiB"))
    r = raw_login(g)
    ok = "SELECT length('" + "x" * 400_000 + "')"
    rows, tag, err, _ = r.query(ok)
    assert err is None and rows == [["400000"]]
    r.send(pgwire.msg(b"Q", ("SELECT length('" + "y" * 600_000 + "')").encode() + b"\0"))
    read_fatal_and_close(r, "08P01", "message too large")
    g.assert_serves()
    # The limit applies to every message type, e.g. CopyData in COPY FROM STDIN.
    with g.connect() as c:
        c.execute("CREATE TEMP TABLE t (v text)")
        with c.cursor().copy("COPY t FROM STDIN") as cp:
            cp.write(b"a" * 100_000 + b"\n")
        assert c.execute("SELECT length(v) FROM t").fetchone()[0] == 100_000
    g.assert_serves()


# ---------------------------------------------------------------------------- protocol version

# (1234, 5678) would be the CancelRequest code and (1234, 5679/5680) SSL/GSSENC requests.
@pytest.mark.parametrize("version", [(2, 0), (4, 0), (1, 0), (0, 0)])
def test_unsupported_protocol_version(gwx, version):
    major, minor = version
    r = raw(gwx)
    r.send(pgwire.startup_packet({"user": "alice", "database": "app"}, (major << 16) | minor))
    read_fatal_and_close(r, "0A000", "unsupported frontend protocol", allow_v2=True)
    gwx.assert_serves()


@pytest.mark.parametrize("minor", [1, 2, 65535])
def test_protocol_3_minor(gwx, minor):
    """Spec: any version other than 3.0 gets 0A000. PostgreSQL itself answers a 3.x minor
    version with NegotiateProtocolVersion and goes on in 3.0; accept either, but never a
    silent hang or close."""
    r = raw(gwx)
    r.send(pgwire.startup_packet({"user": "alice", "database": "app"}, 0x30000 | minor))
    typ, body = r.read_msg()
    if typ == b"E":
        assert_fatal(pgwire.parse_fields(body), "0A000", "unsupported frontend protocol")
        assert r.expect_closed()
    else:
        assert typ == b"v", f"unexpected reply {typ!r} to protocol 3.{minor}"
        assert struct.unpack("!I", body[:4])[0] == 0x30000
        r.authenticate("alice", ALICE)
        r.wait_ready()
        assert r.query("SELECT 1")[0] == [["1"]]
        r.terminate()
    gwx.assert_serves()


# ---------------------------------------------------------------------------- junk

INV = ("invalid", "message too large")


@pytest.mark.parametrize("junk,codes,prefixes", [
    (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", ("08P01",), INV),
    # A TLS ClientHello without SSLRequest first.
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, ("08P01",), INV),
    (b"\x00\x00\x00\x02", ("08P01",), INV),
    (b"\x00\x00\x00\x07\x00\x03\x00", ("08P01",), INV),
    # Unknown request codes look like protocol versions to PostgreSQL (0A000).
    (b"\x00\x00\x00\x08\x12\x34\x56\x78", ("08P01", "0A000"),
     INV + ("unsupported frontend protocol",)),
    # Startup packet whose key/value list is not terminated.
    (b"\x00\x00\x00\x0d\x00\x03\x00\x00user\0", ("08P01",), INV),
    # Well-formed, but no user (PostgreSQL: 28000 "no PostgreSQL user name specified").
    (pgwire.startup_packet({"database": "app"}), ("28000",),
     INV + ("no PostgreSQL user name",)),
], ids=["http", "tls-hello", "len2", "len7", "unknown-code", "unterminated", "no-user"])
def test_junk_before_startup(gwx, junk, codes, prefixes):
    r = raw(gwx)
    r.send(junk)
    try:
        fields = r.read_error()
    except pgwire.ConnectionClosed:
        raise AssertionError("gateway closed without an ErrorResponse") from None
    assert fields.get("C") in codes, fields
    assert fields.get("S") == "FATAL", fields
    assert fields["M"].startswith(prefixes), fields
    assert r.expect_closed()
    gwx.assert_serves()


def test_junk_after_auth(gwx):
    r = raw_login(gwx)
    r.send(b"\xff\x00\x00\x00\x08\x00\x00\x00\x00")  # unknown message type
    try:
        fields = r.read_error()
        assert fields["C"] == "08P01", fields
    except pgwire.ConnectionClosed:
        pass  # closing is also fine for a protocol violation
    assert r.expect_closed()
    gwx.assert_serves()


# ---------------------------------------------------------------------------- SSL/GSS requests

def test_ssl_request_answered_N_when_tls_disabled(gwx):
    r = raw(gwx)
    assert r.ssl_request() == b"N"
    r.startup("alice", "app", ALICE)
    assert r.query("SELECT 'plain after N'")[0] == [["plain after N"]]
    r.terminate()
    with pytest.raises(psycopg.OperationalError):
        gwx.connect(sslmode="require")
    with gwx.connect(sslmode="prefer") as c:
        assert not c.pgconn.ssl_in_use
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_gssenc_request_answered_N(gwx):
    r = raw(gwx)
    assert r.gssenc_request() == b"N"
    assert r.ssl_request() == b"N"
    r.startup("alice", "app", ALICE)
    assert r.query("SELECT 2")[0] == [["2"]]
    r.terminate()
    gwx.assert_serves()


# ---------------------------------------------------------------------------- timeouts, limits

def test_startup_timeout(gateway_factory):
    g = gateway_factory.start(lambda c: c["limits"].update(startup_timeout="1s"))
    # 1. Connect and say nothing.
    silent = raw(g, timeout=15)
    # 2. Half a startup packet.
    partial = raw(g, timeout=15)
    partial.send(struct.pack("!II", 40, pgwire.PROTO_30) + b"user\0")
    # 3. A full startup packet, then never answer the SCRAM challenge.
    stalled = raw(g, timeout=15)
    stalled.send(pgwire.startup_packet({"user": "alice", "database": "app"}))
    typ, body = stalled.read_msg()
    assert typ == b"R" and struct.unpack("!I", body[:4])[0] == 10
    start = time.monotonic()
    for r in (silent, partial, stalled):
        read_fatal_and_close(r, "08P01", "startup timeout")
    assert time.monotonic() - start < 10
    g.assert_serves()
    # A session that finished authenticating is not subject to the startup timeout.
    with g.connect() as c:
        time.sleep(2)
        assert c.execute("SELECT 'idle is fine'").fetchone()[0] == "idle is fine"


def connect_once_slot_frees(g, timeout=10):
    """Connect to a gateway at its client limit: a slot frees only once the gateway has
    read the close of an earlier client, which happens after psycopg's close() returns."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return g.connect()
        except psycopg.OperationalError as e:
            if "too many client connections" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_too_many_client_connections(gateway_factory):
    g = gateway_factory.start(lambda c: c["limits"].update(max_client_conn=2))
    c1 = g.connect()
    c2 = g.connect()
    try:
        fields = startup_error(g, "alice", "app", ALICE)
        assert_fatal(fields, "53300", "too many client connections")
        with pytest.raises(psycopg.OperationalError, match="too many client connections"):
            g.connect()
        assert c1.execute("SELECT 1").fetchone()[0] == 1
        c1.close()
        with connect_once_slot_frees(g) as c3:
            assert c3.execute("SELECT 3").fetchone()[0] == 3
    finally:
        c1.close()
        c2.close()
    # Both slots free again once the gateway has seen the closes.
    with connect_once_slot_frees(g) as c4, connect_once_slot_frees(g) as c5:
        assert c4.execute("SELECT 4").fetchone()[0] + c5.execute("SELECT 5").fetchone()[0] == 9
    assert g.alive()


# ---------------------------------------------------------------------------- authentication

def test_wrong_password(gwx):
    fields = startup_error(gwx, "alice", "app", "not-" + ALICE)
    assert_fatal(fields, "28P01", 'password authentication failed for user "alice"')
    with pytest.raises(psycopg.OperationalError,
                       match='password authentication failed for user "alice"'):
        gwx.connect(password="definitely-wrong")
    gwx.assert_serves()


def test_unknown_user(gwx):
    fields = startup_error(gwx, "mallory", "app", "whatever-pw")
    assert_fatal(fields, "28P01", 'password authentication failed for user "mallory"')
    # Like PostgreSQL's mock authentication: an unknown user gets the same SCRAM exchange as
    # a known user with a wrong password, so user names cannot be probed.
    flows = []
    for user in ("mallory", "alice"):
        r = raw(gwx)
        with pytest.raises(pgwire.ServerError):
            r.startup(user, "app", "wrong-password-here")
        flows.append(r.auth_codes)
        r.close()
    assert flows[0] == flows[1] == [10]
    # Upstream role names are not gateway users.
    fields = startup_error(gwx, "gw_scram", "app", ROLE_PW["gw_scram"])
    assert_fatal(fields, "28P01", 'password authentication failed for user "gw_scram"')
    gwx.assert_serves()


def test_unknown_database(gwx):
    fields = startup_error(gwx, "alice", "nosuchdb", ALICE)
    assert_fatal(fields, "3D000", 'database "nosuchdb" is not configured in pgcordon')
    # The upstream database name is not a gateway database name.
    fields = startup_error(gwx, "alice", DBNAME, ALICE)
    assert_fatal(fields, "3D000", f'database "{DBNAME}" is not configured in pgcordon')
    gwx.assert_serves()


def test_cancel_request_with_wrong_key_does_not_cancel(gwx, pg):
    r = raw_login(gwx)
    pid, key = r.backend_key
    marker = "nocancel_" + uuid.uuid4().hex[:8]
    r.send(pgwire.msg(b"Q", f"SELECT pg_sleep(1.5), 'survived' /* {marker} */".encode() + b"\0"))
    pg.wait_active(marker)
    pgwire.send_cancel(gwx.host, gwx.port, pid, key ^ 0x5A5A5A5A)
    pgwire.send_cancel(gwx.host, gwx.port, pid ^ 0x40000000, key)
    rows, tag, err, _ = _collect(r)
    assert err is None, f"query was cancelled by a CancelRequest with a wrong key: {err}"
    assert rows == [["", "survived"]]
    # The right key cancels.
    marker = "docancel_" + uuid.uuid4().hex[:8]
    r.send(pgwire.msg(b"Q", f"SELECT pg_sleep(10) /* {marker} */".encode() + b"\0"))
    pg.wait_active(marker)
    start = time.monotonic()
    pgwire.send_cancel(gwx.host, gwx.port, pid, key)
    rows, tag, err, status = _collect(r)
    assert err and err["C"] == "57014", err
    assert status == b"I"
    assert time.monotonic() - start < 8
    assert r.query("SELECT 'after cancel'")[0] == [["after cancel"]]
    r.terminate()
    gwx.assert_serves()


def _collect(r):
    """Read the results of a query already sent on r."""
    rows, tag, err = [], None, None
    while True:
        typ, body = r.read_msg()
        if typ == b"D":
            (n,) = struct.unpack("!H", body[:2])
            pos, row = 2, []
            for _ in range(n):
                (ln,) = struct.unpack("!i", body[pos:pos + 4])
                pos += 4
                row.append(None if ln < 0 else body[pos:pos + ln].decode())
                pos += max(ln, 0)
            rows.append(row)
        elif typ == b"C":
            tag = body.rstrip(b"\0").decode()
        elif typ == b"E":
            err = pgwire.parse_fields(body)
        elif typ == b"Z":
            return rows, tag, err, body


# ---------------------------------------------------------------------------- upstream

@pytest.mark.parametrize("dbname,role", [("app", "gw_scram"), ("app_md5", "gw_md5"),
                                         ("app_plain", "gw_plain")])
def test_upstream_auth_methods(gwx, pg, dbname, role):
    with gwx.connect(dbname=dbname) as c:
        assert c.execute("SELECT current_user, session_user").fetchone() == (role, role)
        assert c.execute("SELECT count(*) FROM items").fetchone()[0] == 100
    # Sanity: the upstream really uses the method the test claims (md5 / cleartext / SASL).
    r = pgwire.RawConn(pg.host, pg.port)
    r.startup(role, DBNAME, ROLE_PW[role])
    assert r.auth_codes[0] == {"gw_scram": 10, "gw_md5": 5, "gw_plain": 3}[role]
    r.terminate()


def test_upstream_down(gwx):
    fields = startup_error(gwx, "alice", "down", ALICE)
    assert_fatal(fields, "08006", "pgcordon: cannot connect to upstream database")
    with pytest.raises(psycopg.OperationalError,
                       match="pgcordon: cannot connect to upstream database"):
        gwx.connect(dbname="down")
    gwx.assert_serves()


def test_wrong_upstream_password(gwx):
    fields = startup_error(gwx, "alice", "badpw", ALICE)
    assert_fatal(fields, "08006", "pgcordon: upstream authentication failed")
    assert WRONG_UPSTREAM_PW not in str(fields)
    with pytest.raises(psycopg.OperationalError,
                       match="pgcordon: upstream authentication failed") as ei:
        gwx.connect(dbname="badpw")
    assert WRONG_UPSTREAM_PW not in str(ei.value)
    gwx.assert_serves()
    log = gwx.log_text()
    assert WRONG_UPSTREAM_PW not in log
    for pw in ROLE_PW.values():
        assert pw not in log


def test_upstream_killed_mid_query(gwx, pg):
    # psycopg view: the running statement fails with a connection-level error.
    c = gwx.connect()
    marker = "killme_" + uuid.uuid4().hex[:8]
    killer = threading.Thread(target=lambda: _terminate(pg, pg.wait_active(marker)))
    killer.start()
    with pytest.raises(psycopg.OperationalError) as ei:
        c.execute(f"SELECT pg_sleep(10) /* {marker} */")
    killer.join()
    assert ("terminating connection" in str(ei.value)
            or "pgcordon: lost connection to upstream database" in str(ei.value)), str(ei.value)
    c.close()
    gwx.assert_serves()
    # Raw view: exactly one FATAL (the server's 57P01 relayed, or pgcordon's 08006), then close.
    r = raw_login(gwx)
    marker = "killraw_" + uuid.uuid4().hex[:8]
    r.send(pgwire.msg(b"Q", f"SELECT pg_sleep(10) /* {marker} */".encode() + b"\0"))
    _terminate(pg, pg.wait_active(marker))
    fields = r.read_error()
    assert fields.get("S") == "FATAL", fields
    assert fields.get("C") in ("57P01", "08006"), fields
    if fields["C"] == "08006":
        assert fields["M"].startswith("pgcordon: lost connection to upstream database")
    assert r.expect_closed()
    gwx.assert_serves()


def _terminate(pg, pid):
    with pg.super_connect() as su:
        assert su.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]


def test_upstream_killed_while_idle(gwx, pg):
    c = gwx.connect()
    pid = upstream_pid(c)
    _terminate(pg, pid)
    time.sleep(0.5)
    with pytest.raises(psycopg.OperationalError):
        c.execute("SELECT 1")
    c.close()
    gwx.assert_serves()


def test_large_startup_packet(gwx, pg):
    """A 3 KB startup packet (long options) is legitimate: PostgreSQL accepts up to 10000
    bytes."""
    pad = "p" * 3000
    opts = f"-c pgcordon_test.pad={pad}"
    with gwx.connect(options=opts) as c:
        assert c.execute("SHOW pgcordon_test.pad").fetchone()[0] == pad
    with pg.connect(options=opts) as c:
        assert c.execute("SHOW pgcordon_test.pad").fetchone()[0] == pad


def test_client_disconnect_inside_transaction_releases_locks(gwx):
    a = raw_login(gwx)
    a.query("BEGIN")
    rows, _, err, status = a.query("SELECT id FROM items WHERE id = 1 FOR UPDATE")
    assert err is None and status == b"T"
    a.close()  # vanish without Terminate, transaction open, row locked
    with gwx.connect() as b:
        b.execute("SET lock_timeout = '10s'")
        assert b.execute("SELECT id FROM items WHERE id = 1 FOR UPDATE").fetchone()[0] == 1


@pytest.mark.parametrize("setting,sqlstate,begin", [
    ("idle_session_timeout", "57P05", False),
    ("idle_in_transaction_session_timeout", "25P03", True),
])
def test_server_fatal_while_idle_is_relayed(gwx, setting, sqlstate, begin):
    """The server's own FATAL arrives unsolicited while the client is idle: relayed as is,
    then the client connection is closed."""
    r = raw_login(gwx)
    r.query(f"SET {setting} = '300ms'")
    if begin:
        r.query("BEGIN")
    fields = r.read_error()
    assert fields.get("C") == sqlstate and fields.get("S") == "FATAL", fields
    assert r.expect_closed()
    gwx.assert_serves()


# ---------------------------------------------------------------------------- upstream socket

def test_upstream_unix_socket(gwx, pg):
    """host: a directory, as in libpq: the gateway connects to DIR/.s.PGSQL.PORT."""
    with gwx.connect(dbname="unix") as c:
        # inet_server_addr() is NULL on a Unix-domain socket connection only.
        assert c.execute("SELECT inet_server_addr(), current_user").fetchone() == (None, "gw_scram")
        assert c.execute("SELECT count(*) FROM items").fetchone()[0] == 100
        # A cancel travels to the address the session's upstream socket is connected to.
        assert pg.cancel_sleep(c, 20, "unixcancel") < 15
        assert c.execute("SELECT 'after cancel'").fetchone()[0] == "after cancel"
    gwx.assert_serves()


def test_upstream_unix_socket_missing(gwx, pg):
    fields = startup_error(gwx, "alice", "unix_missing", ALICE)
    assert_fatal(fields, "08006", "pgcordon: cannot connect to upstream database \"unix_missing\"")
    path = f"{pg.dir}/no-such-dir/.s.PGSQL.{pg.port}"
    assert path in fields["M"] and "No such file or directory" in fields["M"], fields
    gwx.assert_serves()
    assert gwx.connect(dbname="unix").execute("SELECT 1").fetchone()[0] == 1


# ---------------------------------------------------------------------------- upstream TLS

def _upstream_ssl(c):
    return c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]


def test_upstream_tls_disable(gwx):
    with gwx.connect(dbname="app") as c:
        assert _upstream_ssl(c) is False


def test_upstream_tls_require(gwx):
    with gwx.connect(dbname="tls_require") as c:
        assert _upstream_ssl(c) is True
        assert c.execute("SELECT current_user").fetchone()[0] == "gw_scram"
    with gwx.connect(dbname="md5_tls") as c:
        assert _upstream_ssl(c) is True
        assert c.execute("SELECT current_user").fetchone()[0] == "gw_md5"


def test_upstream_tls_verify_full(gwx):
    with gwx.connect(dbname="tls_verify") as c:
        assert _upstream_ssl(c) is True
        assert c.execute("SELECT 'verified'").fetchone()[0] == "verified"


def test_upstream_tls_verify_full_wrong_ca(gwx):
    fields = startup_error(gwx, "alice", "tls_wrongca", ALICE)
    assert_fatal(fields, "08006", "pgcordon:")
    # A clear reason somewhere: in the client's message or in the gateway log.
    text = (fields.get("M", "") + " " + fields.get("D", "") + " " + gwx.log_text()).lower()
    assert "certificate" in text or "verify" in text, fields
    gwx.assert_serves()


# ---------------------------------------------------------------------------- client TLS

def _tls(certs, mode):
    return {"mode": mode, "cert": str(certs.gw_crt), "key": str(certs.gw_key)}


def test_tls_require(gateway_factory, certs):
    g = gateway_factory.start(lambda c: c.update(tls=_tls(certs, "require")))
    with pytest.raises(psycopg.OperationalError, match="pgcordon requires TLS"):
        g.connect(sslmode="disable")
    fields = startup_error(g, "alice", "app", ALICE)
    assert_fatal(fields, "28000", "pgcordon requires TLS")
    with g.connect(sslmode="require") as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT 'over tls'").fetchone()[0] == "over tls"
    # The certificate the gateway serves verifies against itself with the host name.
    with g.connect(sslmode="verify-full", sslrootcert=str(certs.gw_crt), host="localhost",
                   hostaddr="127.0.0.1") as c:
        assert c.pgconn.ssl_in_use
    # Raw: SSLRequest -> 'S' -> TLS -> startup.
    r = raw(g)
    assert r.ssl_request() == b"S"
    r.start_tls()
    r.startup("alice", "app", ALICE)
    assert r.query("SELECT 5")[0] == [["5"]]
    r.terminate()
    with g.connect(sslmode="require") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_tls_prefer(gateway_factory, certs):
    g = gateway_factory.start(lambda c: c.update(tls=_tls(certs, "prefer")))
    with g.connect(sslmode="disable") as c:
        assert not c.pgconn.ssl_in_use
        assert c.execute("SELECT 1").fetchone()[0] == 1
    with g.connect(sslmode="require") as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT 2").fetchone()[0] == 2
    with g.connect(sslmode="prefer") as c:
        assert c.pgconn.ssl_in_use


def test_tls_cancel_and_large_transfers(gateway_factory, certs, pg):
    """Over client TLS (and upstream TLS): cancel works (libpq before 17 sends CancelRequest
    in plaintext on a new connection), and multi-megabyte transfers survive both ways."""
    def mutate(c):
        c["tls"] = _tls(certs, "require")
        c["databases"]["tls_up"] = dict(c["databases"]["app"], sslmode="verify-full",
                                        sslrootcert=str(certs.ca_crt))

    g = gateway_factory.start(mutate)
    for dbname in ("app", "tls_up"):
        with g.connect(dbname=dbname, sslmode="require") as c:
            pg.cancel_sleep(c, 10, "tlscancel")
            payload = b"".join(b"%d\t%s\n" % (i, b"v" * (i % 300)) for i in range(40000))
            c.execute("CREATE TEMP TABLE tl (a int, b text)")
            cur = c.cursor()
            with cur.copy("COPY tl FROM STDIN") as cp:
                for off in range(0, len(payload), 70000):
                    cp.write(payload[off:off + 70000])
            with cur.copy("COPY (SELECT * FROM tl ORDER BY a) TO STDOUT") as cp:
                back = b"".join(bytes(b) for b in cp)
            assert back == payload
            n = 0
            for row in c.execute("SELECT g, repeat('w', 500) FROM generate_series(1, 40000) g"):
                n += len(row[1])
            assert n == 40000 * 500


def tls_records(stream):
    """(content type, length) of each TLS record in what a server sent after its 'S'."""
    out, pos = [], 1
    while pos + 5 <= len(stream):
        typ, length = stream[pos], struct.unpack("!H", stream[pos + 3:pos + 5])[0]
        out.append((typ, length))
        pos += 5 + length
    return out


def test_tls_records_to_clients_carry_at_most_8kib(gateway_factory, certs):
    """PostgreSQL sends records of at most 8 KiB, and libpq reads 8 KiB at a time: the tail
    of a bigger record stays inside the client's OpenSSL, where polling the socket cannot
    see it (what test_tls_answers_of_every_size_arrive shows from the client's side)."""
    g = gateway_factory.start(lambda c: c.update(tls=_tls(certs, "require")))
    tap = StoreRelay(g.host, g.port, keep_down=True)
    try:
        with psycopg.connect(g.conninfo(port=tap.port, sslmode="require")) as c:
            rows = c.execute("SELECT repeat('x', 300) FROM generate_series(1, 20000)").fetchall()
        assert len(rows) == 20000
    finally:
        tap.close()
    data = [length for typ, length in tls_records(bytes(tap.down_data)) if typ == 23]
    assert sum(data) > 20000 * 300
    # A TLS 1.3 record adds a content-type byte and a 16-byte tag; 256 is the protocol's bound.
    assert max(data) <= 8192 + 256, f"a {max(data)}-byte record went to the client"


@pytest.mark.parametrize("width", [300, 700])
def test_tls_answers_of_every_size_arrive(gateway_factory, certs, width):
    """psycopg waits on the socket between libpq's reads: answers of every size from one row
    to about 140 KiB must reach it whole over TLS (with 16 KiB records some never did)."""
    g = gateway_factory.start(lambda c: c.update(tls=_tls(certs, "require")))
    with g.connect(sslmode="require") as c:
        for rows in range(1, 200):
            got = []
            t = threading.Thread(target=lambda: got.append(c.execute(
                "SELECT repeat('x', %s) FROM generate_series(1, %s)", (width, rows)).fetchall()),
                daemon=True)
            t.start()
            t.join(10)
            if not got:
                g.kill()  # ends the connection, and with it the thread still waiting on it
                pytest.fail(f"the answer of {rows} rows of {width} bytes never arrived whole")
            assert len(got[0]) == rows


def test_tls_bytes_buffered_after_ssl_request_are_refused(gateway_factory, certs):
    """Plaintext sent together with SSLRequest must not be processed after the TLS upgrade
    (CVE-2021-23222 class)."""
    g = gateway_factory.start(lambda c: c.update(tls=_tls(certs, "prefer")))
    r = raw(g)
    r.send(struct.pack("!II", 8, pgwire.SSL_REQUEST)
           + pgwire.startup_packet({"user": "alice", "database": "app"}))
    assert r.expect_closed(), "gateway kept a connection with plaintext injected after SSLRequest"
    assert b"R\x00\x00\x00" not in r.buf, "gateway answered the injected plaintext startup"
    g.assert_serves()


def test_tls_garbage_instead_of_handshake(gateway_factory, certs):
    g = gateway_factory.start(lambda c: c.update(tls=_tls(certs, "require")))
    r = raw(g)
    assert r.ssl_request() == b"S"
    r.send(b"this is not a TLS ClientHello at all\r\n" * 4)
    assert r.expect_closed()
    r = raw(g)
    assert r.ssl_request() == b"S"
    r.close()  # vanish mid-handshake
    with g.connect(sslmode="require") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1


def non_loopback_ipv4():
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                             timeout=10).stdout.split()
    except OSError:
        return None
    for a in out:
        if "." in a and not a.startswith("127."):
            return a
    return None


def test_password_over_plain_tcp_from_non_loopback_refused(gateway_factory, certs):
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("no non-loopback IPv4 address on this machine")

    def mutate(c):
        c["listen"]["address"] = "0.0.0.0"
        c["tls"] = _tls(certs, "prefer")

    g = gateway_factory.start(mutate)
    r = pgwire.RawConn(addr, g.port)
    try:
        with pytest.raises(pgwire.ServerError) as ei:
            r.startup("alice", "app", ALICE)
        assert_fatal(ei.value.fields, "28000",
                     "pgcordon refuses passwords over unencrypted connections")
        # The password was never asked for in clear text.
        assert 3 not in r.auth_codes
    finally:
        r.close()
    with pytest.raises(psycopg.OperationalError,
                       match="pgcordon refuses passwords over unencrypted connections"):
        g.connect(host=addr, sslmode="disable")
    with g.connect(host=addr, sslmode="require") as c:
        assert c.execute("SELECT 'tls from outside'").fetchone()[0] == "tls from outside"
    # Loopback without TLS is still allowed.
    g.assert_serves()


# ---------------------------------------------------------------------------- signals

def test_sighup_adds_user_and_sessions_survive(gateway_factory):
    g = gateway_factory.start()
    carol_pw = "ClientCarol-99ee00ff"
    existing = g.connect()
    pid_before = upstream_pid(existing)
    with pytest.raises(psycopg.OperationalError):
        g.connect(user="carol", password=carol_pw)
    cfg = g.config
    cfg["users"]["carol"] = {"password": scram_verifier(carol_pw), "groups": ["late"]}
    g.reload(cfg)
    deadline = time.monotonic() + 10
    while True:
        try:
            carol = g.connect(user="carol", password=carol_pw)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise AssertionError("new user not accepted within 10s of SIGHUP; log:\n"
                                     + g.log_text()[-3000:])
            time.sleep(0.2)
    assert carol.execute("SELECT current_user").fetchone()[0] == "gw_scram"
    carol.close()
    assert existing.execute("SELECT 'still here'").fetchone()[0] == "still here"
    assert upstream_pid(existing) == pid_before
    existing.close()
    assert g.alive()
    g.assert_serves()
    assert carol_pw not in g.log_text()


def test_sighup_removes_database_and_user(gateway_factory):
    g = gateway_factory.start()
    bob_session = g.connect(user="bob", dbname="app_md5")
    cfg = g.config
    del cfg["databases"]["app_md5"]
    del cfg["users"]["bob"]
    g.reload(cfg)
    assert g.wait_log("event=config_reloaded")  # SIGHUP is asynchronous
    deadline = time.monotonic() + 10
    while True:
        fields = startup_error(g, "alice", "app_md5", ALICE)
        if fields.get("C") == "3D000":
            break
        assert time.monotonic() < deadline, f"database still served after reload: {fields}"
        time.sleep(0.2)
    fields = startup_error(g, "bob", "app", LOCAL_USERS["bob"])
    assert_fatal(fields, "28P01", 'password authentication failed for user "bob"')
    # The session opened before the reload keeps working.
    assert bob_session.execute("SELECT current_user").fetchone()[0] == "gw_md5"
    bob_session.close()
    g.assert_serves()


def test_sighup_rotates_upstream_password(gateway_factory, pg, tmp_path):
    role = "gw_rot_" + uuid.uuid4().hex[:6]
    old_pw, new_pw = "RotOld-" + uuid.uuid4().hex[:8], "RotNew-" + uuid.uuid4().hex[:8]
    with pg.super_connect() as su:
        su.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{old_pw}'")
    pwfile = tmp_path / "rot.pw"
    pwfile.write_text(old_pw + "\n")
    try:
        def mutate(c):
            rot = dict(c["databases"]["app"], user=role, password_file=str(pwfile))
            del rot["password_env"]
            c["databases"]["rot"] = rot

        g = gateway_factory.start(mutate)
        before = g.connect(dbname="rot")
        with pg.super_connect() as su:
            su.execute(f"ALTER ROLE {role} PASSWORD '{new_pw}'")
        fields = startup_error(g, "alice", "rot", ALICE)
        assert_fatal(fields, "08006", "pgcordon: upstream authentication failed")
        pwfile.write_text(new_pw + "\n")
        g.reload()
        deadline = time.monotonic() + 10
        while True:
            try:
                with g.connect(dbname="rot") as c:
                    assert c.execute("SELECT current_user").fetchone()[0] == role
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "new upstream password not used after SIGHUP"
                time.sleep(0.2)
        assert before.execute("SELECT 1").fetchone()[0] == 1
        before.close()
        log = g.log_text()
        assert old_pw not in log and new_pw not in log
    finally:
        with pg.super_connect() as su:
            su.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       f"WHERE usename = '{role}'")
            su.execute(f"DROP ROLE {role}")


def test_sighup_with_broken_config_keeps_running(gateway_factory):
    g = gateway_factory.start()
    existing = g.connect()
    g.config_path.write_text("listen: {address: 127.0.0.1, port: [this is not valid\n")
    os.kill(g.pid, signal.SIGHUP)
    time.sleep(1)
    assert g.alive(), "gateway exited on a reload with a broken config"
    assert existing.execute("SELECT 1").fetchone()[0] == 1
    existing.close()
    g.assert_serves()


def test_sigterm_finishes_inflight_statement_then_exits(gateway_factory, pg):
    g = gateway_factory.start(lambda c: c["limits"].update(shutdown_timeout="10s"))
    busy = g.connect()
    idle = raw_login(g)
    marker = "drain_" + uuid.uuid4().hex[:8]
    result = {}

    def run():
        try:
            result["row"] = busy.execute(
                f"SELECT pg_sleep(2), 'finished' /* {marker} */").fetchone()
        except Exception as e:  # noqa: BLE001 - recorded for the assertion below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    pg.wait_active(marker)
    start = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    # The idle session is closed with FATAL 57P01.
    fields = idle.read_error()
    assert fields.get("C") == "57P01" and fields.get("S") == "FATAL", fields
    assert idle.expect_closed()
    # No new sessions are accepted while draining.
    try:
        r = raw(g, timeout=5)
        try:
            r.startup("alice", "app", ALICE)
            raise AssertionError("gateway accepted a new session after SIGTERM")
        except (pgwire.ServerError, pgwire.ConnectionClosed, OSError):
            pass
        finally:
            r.close()
    except OSError:
        pass  # listener already closed: connection refused
    t.join(20)
    assert "error" not in result, f"in-flight statement failed: {result.get('error')!r}"
    assert result["row"] == ("", "finished")
    g.stopped_on_purpose = True
    code = g.proc.wait(15)
    assert code == 0, f"exit code {code}; log:\n{g.log_text()[-3000:]}"
    assert time.monotonic() - start < 10 + 5
    busy.close()


def test_sigterm_idle_gateway_exits_zero(gateway_factory):
    g = gateway_factory.start()
    g.assert_serves()
    assert g.stop(timeout=15) == 0
    with pytest.raises(OSError):
        socket.create_connection((g.host, g.port), timeout=2).close()


# ---------------------------------------------------------------------------- secrets

def test_logs_never_contain_passwords(gwx):
    """Runs last in this module: scan everything the module's gateway logged."""
    for pw in ("wrong-" + ALICE, ALICE):
        try:
            gwx.connect(password=pw).close()
        except psycopg.OperationalError:
            pass
    gwx.assert_serves()
    log = gwx.log_text()
    assert log, "gateway log is empty"
    for secret in [ALICE, LOCAL_USERS["bob"], "wrong-" + ALICE, "not-" + ALICE,
                   WRONG_UPSTREAM_PW] + list(ROLE_PW.values()):
        assert secret not in log, f"secret {secret[:6]}... found in the gateway log"
