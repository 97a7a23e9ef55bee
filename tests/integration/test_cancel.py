"""Cancels the gateway sends upstream: its own, for a statement cut off at max_rows, and the
ones it passes on for clients. The upstream is reached through a TCP relay (store_relay.py)
that can hold a CancelRequest back, as a slow or loaded server would take it late.

A cancel is delivered once PostgreSQL closes the cancel connection (it signals the backend
first). Until then nothing more may reach the backend, or the cancel could land on it."""

import struct
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg.pq import TransactionStatus

import pgwire
from conftest import require_binary, scram_verifier
from store_relay import StoreRelay

PW = "CancelUser-3c4d5e6f"
MAX_ROWS = 5
CANCEL = struct.pack("!I", pgwire.CANCEL_REQUEST)  # the request code, in every CancelRequest
CUT = f"the result exceeds max_rows {MAX_ROWS}"
# Rows larger than PostgreSQL's 8 KiB send buffer, so that the row past max_rows reaches
# the gateway while the statement still runs (its last row sleeps 1 s, long enough on a
# loaded machine): the gateway cuts off and sends a cancel. The cancel's 5 s limit starts
# there.
CUT_OFF_SQL = (f"SELECT repeat('x', 5000), CASE WHEN g = {MAX_ROWS + 3} THEN pg_sleep(1) END "
               f"FROM generate_series(1, {MAX_ROWS + 3}) g")


@pytest.fixture
def relayed(pg, gateway_factory):
    """A gateway whose upstream is reached through a relay; user "capped" has max_rows."""
    require_binary()
    relay = StoreRelay(pg.host, pg.port)

    def mutate(cfg):
        cfg["users"]["capped"] = {"password": scram_verifier(PW), "groups": ["capped"]}
        cfg["policies"] = [{"name": "cap", "match": {"users": ["capped"]}, "limits": {"max_rows": MAX_ROWS}}]
        for db in cfg["databases"].values():
            db.update(host="127.0.0.1", port=relay.port)

    try:
        yield gateway_factory.start(mutate), relay
    finally:
        relay.close()


def cut_off(c):
    with pytest.raises(psycopg.Error) as ei:
        c.execute(CUT_OFF_SQL)
    assert ei.value.sqlstate == "42501" and CUT in str(ei.value), ei.value


@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_late_cancel_does_not_land_on_the_next_statement(relayed, in_transaction):
    """The cut-off statement ends (after 1 s) long before its cancel reaches the server
    (3.3 s). The client's next statements wait until it has, then run whole. (Before, an
    absorbing sleep of at most 2 s stood in for the wait, and a cancel later than that
    failed the next one.)"""
    g, relay = relayed
    with g.connect(user="capped", password=PW) as c:
        if in_transaction:
            c.execute("BEGIN")
        relay.arm(CANCEL, "hold")
        cut_off(c)
        assert relay.fired.wait(5), "the gateway sent no cancel"
        released = []
        threading.Timer(2.3, lambda: (released.append(time.monotonic()), relay.release())).start()
        if in_transaction:
            assert c.info.transaction_status == TransactionStatus.INERROR
            with pytest.raises(pgerrors.InFailedSqlTransaction):
                c.execute("SELECT 1")
            c.execute("ROLLBACK")
        row = c.execute("SELECT pg_sleep(2), 'after'").fetchone()
        ended = time.monotonic()
        assert row[1] == "after"
        assert released and ended - released[0] >= 1.9, "the statement ran before the cancel was delivered"
        assert c.execute("SELECT 7").fetchone() == (7,)
    assert g.count_log("cancel_unconfirmed") == 0


def test_a_cancel_the_server_never_confirms_holds_the_session_5s(relayed):
    """The server gets the cancel but its close never comes back: after 5 s the session
    goes on, and the log says why it waited."""
    g, relay = relayed
    with g.connect(user="capped", password=PW) as c:
        relay.arm(CANCEL, "mute")
        t0 = time.monotonic()
        cut_off(c)
        assert c.execute("SELECT 'after'").fetchone() == ("after",)
        waited = time.monotonic() - t0  # from before the cut, where the 5 s start
        assert 4.5 < waited < 9, waited
    assert g.wait_log("cancel_unconfirmed")
    with g.connect(user="capped", password=PW) as c:
        assert c.execute("SELECT 'still serving'").fetchone() == ("still serving",)


def test_what_came_before_a_terminate_still_runs_once_the_cancel_is_in(relayed, pg):
    """A client that sends a statement and Terminate at once, while a cut-off's cancel is on
    its way: the statement waits for the cancel like any other, and then runs, as it would
    on the server itself; the session ends after it."""
    g, relay = relayed
    t = "cancel_term_" + uuid.uuid4().hex[:8]
    with pg.super_connect() as su:
        su.execute(f"CREATE TABLE {t} (id int)")
        su.execute(f"ALTER TABLE {t} OWNER TO gw_scram")
    try:
        c = pgwire.RawConn(g.host, g.port, timeout=30)
        c.startup("capped", "app", PW)
        relay.arm(CANCEL, "hold")
        c.send(pgwire.msg(b"Q", pgwire.cstr(CUT_OFF_SQL)))
        while c.read_msg()[0] != b"Z":
            pass
        assert relay.fired.wait(5), "the gateway sent no cancel"
        c.send(pgwire.msg(b"Q", pgwire.cstr(f"INSERT INTO {t} VALUES (1)")) + pgwire.msg(b"X"))
        time.sleep(1)
        with pg.super_connect() as su:
            assert su.execute(f"SELECT count(*) FROM {t}").fetchone() == (0,), "it ran before the cancel was in"
        relay.release()
        assert c.expect_closed()
        deadline = time.monotonic() + 10
        with pg.super_connect() as su:
            while su.execute(f"SELECT count(*) FROM {t}").fetchone() != (1,):
                assert time.monotonic() < deadline, "the statement sent before Terminate never ran"
                time.sleep(0.05)
    finally:
        with pg.super_connect() as su:
            su.execute(f"DROP TABLE IF EXISTS {t}")


def test_a_client_cancel_is_answered_once_the_server_has_it(relayed, pg):
    """libpq's cancel waits for the close of its cancel connection, as the sign that the
    server took the request. The gateway closes it only once the server has closed its own."""
    g, relay = relayed
    marker = "late_client_cancel_" + uuid.uuid4().hex[:8]
    with g.connect(user="capped", password=PW) as c:
        errors = []

        def run():
            try:
                c.execute(f"SELECT pg_sleep(20) /* {marker} */")
            except psycopg.Error as e:
                errors.append(e)

        t = threading.Thread(target=run)
        t.start()
        pg.wait_active(marker)
        relay.arm(CANCEL, "hold")
        threading.Timer(1.5, relay.release).start()
        t0 = time.monotonic()
        c.cancel()
        took = time.monotonic() - t0
        t.join(15)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], pgerrors.QueryCanceled), errors
        assert took >= 1.2, f"the cancel was answered after {took:.2f}s, before the server had it"
        assert c.execute("SELECT 'alive'").fetchone() == ("alive",)


def test_a_client_cancel_of_a_statement_still_in_the_gateway_is_sent_after_it(relayed):
    """The client cancels a statement that has not gone upstream yet: it waits in the
    gateway for a cut-off's cancel. Passed on at once, the client's cancel would meet an
    idle backend, which drops it, and the statement would then run whole. The gateway sends
    it right after the statement instead, and the statement is cancelled."""
    g, relay = relayed
    with g.connect(user="capped", password=PW) as c:
        relay.arm(CANCEL, "hold")
        cut_off(c)
        assert relay.fired.wait(5), "the gateway sent no cancel"
        errors = []

        def run():
            try:
                c.execute("SELECT pg_sleep(20)")
            except psycopg.Error as e:
                errors.append(e)

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.5)  # the statement is in the gateway, behind the cut-off's cancel
        c.cancel()
        relay.release()
        t.join(15)
        assert not t.is_alive(), "the statement was not cancelled"
        assert len(errors) == 1 and isinstance(errors[0], pgerrors.QueryCanceled), errors
        assert c.execute("SELECT 'alive'").fetchone() == ("alive",)
    assert g.wait_log("cancel_deferred")
