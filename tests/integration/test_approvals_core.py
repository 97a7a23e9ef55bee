"""Approvals, the core paths (docs/approvals.md): a statement held in wait mode and then
approved or denied, retry mode, a grant that opens a table to an open session. The wider
suite is test_approvals.py."""

import json
import re
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from conftest import free_port, run, BIN

SFX = str(int(time.time() * 1000) % 100000000)


def apikey(name, groups):
    r = run([str(BIN), "apikey", "create", name, "--groups", ",".join(groups)])
    key = re.findall(r"^  (pgc_[A-Za-z0-9_-]{43})$", r.stdout, re.M)[0]
    h = re.search(r'\{hash: "(sha256:[0-9a-f]{64})"', r.stdout)[1]
    return key, {"hash": h, "groups": groups}


def api(port, method, path, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def setup(pg):
    with pg.super_connect() as c:
        c.execute("DROP TABLE IF EXISTS payments, orders_core, secret_core")
        c.execute("CREATE TABLE payments (id int, amount int)")
        c.execute("INSERT INTO payments SELECT g, g * 10 FROM generate_series(1, 50) g")
        c.execute("CREATE TABLE orders_core (id int)")
        c.execute("INSERT INTO orders_core SELECT generate_series(1, 3)")
        c.execute("CREATE TABLE secret_core (id int)")
        c.execute("INSERT INTO secret_core VALUES (42)")
        c.execute("GRANT SELECT, INSERT ON payments, orders_core, secret_core TO gw_scram")
    return pg


KEYS = {}


def start(gateway_factory, mode="wait", wait="20s", extra=None):
    port = free_port()
    if not KEYS:  # the same keys on every gateway
        KEYS["oncall"] = apikey(f"oncall-{SFX}", ["security-oncall"])
        KEYS["other"] = apikey(f"other-{SFX}", ["agents"])
    oncall_key, oncall = KEYS["oncall"]
    other_key, other = KEYS["other"]

    def mutate(cfg):
        cfg["admin"] = {"address": "127.0.0.1", "port": port, "auditors": ["security"]}
        cfg["api_keys"] = {f"oncall-{SFX}": oncall, f"other-{SFX}": other}
        cfg["approvals"] = {"approvers": ["security-oncall"], "mode": mode, "wait": wait, "valid_for": "1h"}
        cfg["policies"] = [{
            "name": "testers", "match": {"groups": ["testers"]},
            "access": {"tables": ["public.payments", "public.orders_core"]},
            "review": [{"statements": ["copy_to"]}, {"tables": ["public.payments"]}],
        }]
        if extra:
            extra(cfg)
    g = gateway_factory.start(mutate)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    return g, port, oncall_key, other_key


def wait_request(port, token, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st, body = api(port, "GET", "/api/approvals", token)
        assert st == 200, body
        if body["approvals"]:
            return body["approvals"][0]
        time.sleep(0.05)
    raise AssertionError("no approval request appeared")


def test_wait_mode_approved_runs_and_returns_rows(setup, gateway_factory):
    g, port, oncall, _ = start(gateway_factory)
    notices = []
    with g.connect() as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("SELECT 1")  # not held
        result = {}

        def client():
            try:
                result["rows"] = c.execute("SELECT sum(amount) FROM payments").fetchall()
            except Exception as e:  # noqa: BLE001 - reported below
                result["error"] = e
        t = threading.Thread(target=client)
        t.start()
        req = wait_request(port, oncall)
        assert req["statement"] == "SELECT sum(amount) FROM payments"
        assert req["rule"] == "tables" and req["why"] == "payments" and req["requester"] == "alice"
        time.sleep(0.3)
        assert t.is_alive(), "the statement ran without an approval"
        st, body = api(port, "POST", f"/api/approvals/{req['id']}/approve", oncall, {"reason": "ok"})
        assert st == 200 and body["status"] == "approved" and body["decided_by"] == f"oncall-{SFX}", body
        t.join(10)
        assert result.get("rows") == [(12750,)], result
        assert any(req["id"] in n for n in notices), notices
        assert c.execute("SELECT count(*) FROM orders_core").fetchone() == (3,)


def test_wait_mode_denied_fails_and_session_goes_on(setup, gateway_factory):
    g, port, oncall, _ = start(gateway_factory)
    with g.connect() as c:
        result = {}

        def client():
            try:
                c.execute("COPY orders_core TO STDOUT").fetchall()
            except psycopg.Error as e:
                result["error"] = e
        t = threading.Thread(target=client)
        t.start()
        req = wait_request(port, oncall)
        st, body = api(port, "POST", f"/api/approvals/{req['id']}/deny", oncall, {})
        assert st == 400, body
        st, body = api(port, "POST", f"/api/approvals/{req['id']}/deny", oncall, {"reason": "not today"})
        assert st == 200 and body["status"] == "denied", body
        t.join(10)
        e = result["error"]
        assert e.sqlstate == "42501" and "denied" in str(e) and "not today" in str(e), e
        assert c.execute("SELECT count(*) FROM orders_core").fetchone() == (3,)


def test_wait_mode_timeout(setup, gateway_factory):
    g, port, oncall, _ = start(gateway_factory, wait="1s")
    with g.connect() as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT * FROM payments WHERE id = 1")
        assert ei.value.sqlstate == "57014" and "not decided within 1s" in str(ei.value)
        st, body = api(port, "GET", "/api/approvals?status=expired", oncall)
        assert st == 200 and len(body["approvals"]) == 1, body


def test_self_and_non_approver_refused(setup, gateway_factory):
    g, port, oncall, other = start(gateway_factory, mode="retry")
    with g.connect() as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT id FROM payments WHERE id = 2")
    rid = re.search(r"request ([0-9a-f]{16})", str(ei.value))[1]
    st, body = api(port, "POST", f"/api/approvals/{rid}/approve", other, {})
    assert st == 403, body
    st, body = api(port, "POST", f"/api/approvals/{rid}/approve", "pgc_" + "x" * 43, {})
    assert st == 401, body
    st, body = api(port, "POST", "/api/approvals/0123456789abcdef/approve", oncall, {})
    assert st == 404, body


def test_retry_mode_same_statement_runs_once_approved(setup, gateway_factory):
    g, port, oncall, _ = start(gateway_factory, mode="retry")
    q = "SELECT amount FROM payments WHERE id = %t"  # text parameters
    with g.connect() as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(q, (3,))
        assert ei.value.sqlstate == "42501" and "run it again once approved" in str(ei.value)
        rid = re.search(r"request ([0-9a-f]{16})", str(ei.value))[1]
        with pytest.raises(psycopg.Error) as again:
            c.execute(q, (3,))
        assert rid in str(again.value), "a pending request is reused"
        st, body = api(port, "GET", f"/api/approvals/{rid}", oncall)
        assert st == 200 and body["parameters"] == ["3"], body
        st, body = api(port, "POST", f"/api/approvals/{rid}/approve", oncall, {})
        assert st == 200, body
        assert c.execute(q, (3,)).fetchall() == [(30,)]
        assert c.execute(q, (3,)).fetchall() == [(30,)]
        with pytest.raises(psycopg.Error):
            c.execute(q, (4,))  # other parameters: a new request
    st, body = api(port, "POST", f"/api/approvals/{rid}/approve", oncall, {})
    assert st == 409, body


def test_one_requester_cannot_fill_the_queue(setup, gateway_factory):
    """At most 100 pending requests per requester: the 101st is refused with a clear error,
    the same statement again still gets its pending request, and other identities can
    still ask. A decision frees a place."""
    g, port, oncall, _ = start(gateway_factory, mode="retry")
    q = "SELECT amount FROM payments WHERE id = %t"
    ids = []
    with g.connect() as c:
        for i in range(100):
            with pytest.raises(psycopg.Error) as ei:
                c.execute(q, (i,))
            assert ei.value.sqlstate == "42501", ei.value
            ids.append(re.search(r"request ([0-9a-f]{16})", str(ei.value))[1])
        with pytest.raises(psycopg.Error) as full:
            c.execute(q, (1000,))
        assert full.value.sqlstate == "53400", full.value
        assert "you have 100 approval requests pending" in str(full.value)
        with pytest.raises(psycopg.Error) as again:
            c.execute(q, (5,))
        assert ids[5] in str(again.value), "a pending request is still found"
        with g.connect(user="bob") as other:
            with pytest.raises(psycopg.Error) as theirs:
                other.execute(q, (1,))
            assert theirs.value.sqlstate == "42501" and "request " in str(theirs.value), theirs.value
        st, body = api(port, "POST", f"/api/approvals/{ids[0]}/deny", oncall, {"reason": "no"})
        assert st == 200, body
        with pytest.raises(psycopg.Error) as freed:
            c.execute(q, (1000,))
        assert freed.value.sqlstate == "42501" and "request " in str(freed.value), freed.value
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_too_large_to_hold(setup, gateway_factory):
    """A statement whose text and parameters pass 1 MiB is refused with 54000 instead of
    held (each request lives in memory, the store and the webhook); the session goes on, and
    no request was opened. Just under the limit it is held as usual."""
    g, port, oncall, _ = start(gateway_factory, mode="retry")
    q = "SELECT amount FROM payments WHERE id = 1 AND %t <> ''"
    with g.connect() as c:
        with pytest.raises(psycopg.Error) as big:
            c.execute(q, ("x" * (1024 * 1024),))
        assert big.value.sqlstate == "54000", big.value
        assert "too large to hold for approval (at most 1 MiB)" in str(big.value)
        assert "policy testers" in str(big.value)
        st, body = api(port, "GET", "/api/approvals?status=all", oncall)
        assert st == 200 and body["approvals"] == [], body
        with pytest.raises(psycopg.Error) as held:
            c.execute(q, ("x" * (1000 * 1000),))
        assert held.value.sqlstate == "42501" and "request " in str(held.value), held.value
        assert c.execute("SELECT 1").fetchone() == (1,)
    st, body = api(port, "GET", "/api/approvals?status=all", oncall)
    assert st == 200 and len(body["approvals"]) == 1, body


def test_grant_requests_count_against_the_cap(setup, gateway_factory):
    """Grant requests are approval requests too: at most 100 pending per requester, then a
    429 that says why; another requester can still ask."""
    g, port, oncall, other = start(gateway_factory)
    ask = {"user": "alice", "tables": ["public.secret_core"], "duration": "1m", "reason": "ticket 8"}
    for _ in range(100):
        st, req = api(port, "POST", "/api/grants", other, ask)
        assert st == 201, req
    st, full = api(port, "POST", "/api/grants", other, ask)
    assert st == 429 and "you have 100 approval requests pending" in full["error"], full
    st, req = api(port, "POST", "/api/grants", oncall, ask)
    assert st == 201, req


def test_list_pages(setup, gateway_factory):
    """GET /api/approvals pages with limit and before: every request once, newest first,
    "next" null on the last page; a bad limit or an unknown cursor is a clear 400."""
    g, port, oncall, other = start(gateway_factory, mode="retry")
    made = []
    with g.connect() as c:
        for i in range(5):
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT amount FROM payments WHERE id = %t", (i,))
            made.append(re.search(r"request ([0-9a-f]{16})", str(ei.value))[1])
    seen, before, pages = [], None, 0
    while True:
        st, body = api(port, "GET", "/api/approvals?limit=2" + (f"&before={before}" if before else ""), oncall)
        assert st == 200, body
        pages += 1
        assert len(body["approvals"]) <= 2
        seen += [r["id"] for r in body["approvals"]]
        before = body["next"]
        if before is None:
            break
        assert before == seen[-1]
    assert pages == 3 and seen == made[::-1], (pages, seen, made)
    st, body = api(port, "GET", "/api/approvals", oncall)
    assert st == 200 and body["next"] is None and len(body["approvals"]) == 5, body
    for bad in ("0", "-1", "1001", "x", ""):
        st, body = api(port, "GET", f"/api/approvals?limit={bad}", oncall)
        assert st == 400 and "limit must be a number from 1 to 1000" in body["error"], (bad, body)
    st, unknown = api(port, "GET", "/api/approvals?before=0123456789abcdef", oncall)
    assert st == 400 and "before must be the id" in unknown["error"], unknown
    # alice's request is not the other key's to see: as a cursor it is the same 400 as an
    # unknown id, so the answer does not tell that it exists.
    st, hidden = api(port, "GET", f"/api/approvals?before={made[2]}", other)
    assert st == 400 and hidden == unknown, hidden
    st, body = api(port, "GET", f"/api/approvals?status=bogus&before={made[2]}", oncall)
    assert st == 400 and "status must be" in body["error"], body
    st, body = api(port, "GET", "/api/approvals?before=" + "a" * 5000, oncall)
    assert st in (400, 414, 431), (st, body)


def test_request_shows_masked_parameters(setup, gateway_factory):
    """A masking identity's request shows its parameters as the audit trail records them:
    redacted when the statement names a masked relation, scanned by the detectors
    otherwise. The request still matches the values themselves."""
    def masks(cfg):
        cfg["policies"][0]["mask"] = [{"columns": ["public.payments.amount"], "method": "redact"},
                                      {"detect": ["credit_card"], "method": "redact"}]
        cfg["policies"][0]["review"].append({"statements": ["select"]})
    g, port, oncall, _ = start(gateway_factory, mode="retry", extra=masks)
    card = "4111 1111 1111 1111"
    with g.connect() as c:
        shown = []
        for q, args in (("SELECT id FROM payments WHERE id = %t", (3,)),
                        ("SELECT %t::text AS note", (f"card {card}",))):
            with pytest.raises(psycopg.Error) as ei:
                c.execute(q, args)
            rid = re.search(r"request ([0-9a-f]{16})", str(ei.value))[1]
            st, body = api(port, "GET", f"/api/approvals/{rid}", oncall)
            assert st == 200, body
            shown.append(body["parameters"])
            st, body = api(port, "POST", f"/api/approvals/{rid}/approve", oncall, {})
            assert st == 200, body
            assert c.execute(q, args).fetchall()  # the approval covers the real values
        assert shown == [["[REDACTED]"], ["card [REDACTED]"]], shown


def test_each_record_names_its_own_approval(setup, gateway_factory, tmp_path):
    """Two statements approved by two requests: each audit record names the request that
    let it run (the records' decision JSON is cached for plain allows only)."""
    db = tmp_path / "approvals-audit.db"
    g, port, oncall, _ = start(gateway_factory, mode="retry",
                               extra=lambda cfg: cfg.update(audit={"store": f"sqlite:{db}"}))
    queries = ["SELECT amount FROM payments WHERE id = 5", "SELECT amount FROM payments WHERE id = 6"]
    ids = []
    with g.connect() as c:
        for q in queries:
            with pytest.raises(psycopg.Error) as ei:
                c.execute(q)
            ids.append(re.search(r"request ([0-9a-f]{16})", str(ei.value))[1])
            st, body = api(port, "POST", f"/api/approvals/{ids[-1]}/approve", oncall, {})
            assert st == 200, body
        for q in queries + queries:
            assert c.execute(q).fetchall()
    assert g.stop() == 0
    r = run([str(BIN), "audit", "export", "--config", str(g.config_path)])
    assert r.returncode == 0, r.stderr
    ran = [(rec["record"]["sql"], rec["record"]["decision"].get("approval"))
           for rec in map(json.loads, r.stdout.splitlines())
           if rec["kind"] == "statement" and rec["record"]["sql"] in queries and "error" not in rec["record"]]
    assert ran == [(q, ids[queries.index(q)]) for q in queries + queries], ran


def test_grant_opens_a_table_until_expiry(setup, gateway_factory):
    g, port, oncall, other = start(gateway_factory)
    with g.connect() as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT id FROM secret_core")
        assert "outside the caller's scope" in str(ei.value)
        st, req = api(port, "POST", "/api/grants", other,
                      {"user": "alice", "tables": ["public.secret_core"], "duration": "3s", "reason": "ticket 7"})
        assert st == 201 and req["kind"] == "grant", req
        st, body = api(port, "POST", f"/api/approvals/{req['id']}/approve", oncall, {})
        assert st == 200, body
        assert c.execute("SELECT id FROM secret_core").fetchall() == [(42,)]
        with pytest.raises(psycopg.Error) as ro:
            c.execute("INSERT INTO secret_core VALUES (1)")
        assert "outside the caller's scope" in str(ro.value)
        time.sleep(3.2)
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT id FROM secret_core")
        assert "outside the caller's scope" in str(ei.value)


def test_requests_and_grants_survive_a_restart(setup, gateway_factory, tmp_path):
    db = tmp_path / "audit.db"

    def store(cfg):
        cfg["audit"] = {"store": f"sqlite:{db}", "node": "core1"}
    g, port, oncall, other = start(gateway_factory, mode="retry", extra=store)
    q = "SELECT count(*) FROM payments WHERE id < 5"
    with g.connect() as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(q)
    rid = re.search(r"request ([0-9a-f]{16})", str(ei.value))[1]
    assert api(port, "POST", f"/api/approvals/{rid}/approve", oncall, {})[0] == 200
    st, grant = api(port, "POST", "/api/grants", other,
                    {"group": "testers", "tables": ["public.secret_core"], "duration": "1h", "reason": "r"})
    assert st == 201
    assert api(port, "POST", f"/api/approvals/{grant['id']}/approve", oncall, {})[0] == 200
    g.stop()
    g.start()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    st, body = api(port, "GET", f"/api/approvals/{rid}", oncall)
    assert st == 200 and body["status"] == "approved", body
    with g.connect() as c:
        assert c.execute(q).fetchone() == (4,)
        assert c.execute("SELECT id FROM secret_core").fetchall() == [(42,)]
    # The decisions are in the audit trail, with who decided (read with the CLI: the SQLite
    # store keeps compressed batches, not a row per record).
    r = run([str(BIN), "audit", "export", "--config", str(g.config_path)])
    events = [j["record"] for j in map(json.loads, r.stdout.splitlines()) if j["kind"] == "approval"]
    assert any(e["event"] == "approved" and e["request"]["id"] == rid and
               e["request"]["decided_by"] == f"oncall-{SFX}" for e in events), events


def test_two_gateways_share_requests_and_grants(setup, gateway_factory, tmp_path):
    import secrets
    from conftest import SUPERUSER_PW
    pg = setup
    dbname = f"apr_store_{SFX}_{secrets.token_hex(2)}"
    with pg.super_connect(dbname="postgres") as c:
        c.execute(f"CREATE DATABASE {dbname}")
    url = f"postgresql://postgres:{SUPERUSER_PW}@{pg.host}:{pg.port}/{dbname}?sslmode=disable"
    try:
        gws = []
        for node in ("n1", "n2"):
            def store(cfg, node=node):
                cfg["audit"] = {"store": url, "node": node, "key_file": str(tmp_path / f"{node}.key")}
            gws.append(start(gateway_factory, extra=store))
        (g1, port1, oncall, other), (g2, port2, _, _) = gws
        with g1.connect() as c:
            result = {}

            def client():
                result["rows"] = c.execute("SELECT count(*) FROM payments").fetchall()
            t = threading.Thread(target=client)
            t.start()
            req = wait_request(port2, oncall)  # seen through the other gateway
            assert req["node"] == "n1"
            st, body = api(port2, "POST", f"/api/approvals/{req['id']}/approve", oncall, {})
            assert st == 200, body
            t.join(10)
            assert result.get("rows") == [(50,)], result
            # A grant approved on n2 applies on n1.
            st, g = api(port2, "POST", "/api/grants", other,
                        {"user": "alice", "tables": ["public.secret_core"], "duration": "1h", "reason": "r"})
            assert st == 201
            assert api(port2, "POST", f"/api/approvals/{g['id']}/approve", oncall, {})[0] == 200
            deadline = time.time() + 5
            while True:
                try:
                    assert c.execute("SELECT id FROM secret_core").fetchall() == [(42,)]
                    break
                except psycopg.Error:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.1)
        # Both gateways deciding the same request: one wins.
        with g1.connect() as c:
            t = threading.Thread(target=lambda: pytest.raises(psycopg.Error, c.execute,
                                                              "SELECT * FROM payments WHERE id = 9"))
            t.start()
            req = wait_request(port1, oncall)
            a = api(port1, "POST", f"/api/approvals/{req['id']}/deny", oncall, {"reason": "no"})
            b = api(port2, "POST", f"/api/approvals/{req['id']}/approve", oncall, {})
            assert sorted([a[0], b[0]]) == [200, 409], (a, b)
            t.join(10)
        for g, _, _, _ in gws:
            g.stop()
    finally:
        with pg.super_connect(dbname="postgres") as c:
            c.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def test_estimated_rows_over(setup, gateway_factory):
    with setup.super_connect() as c:
        c.execute("DROP TABLE IF EXISTS big_core")
        c.execute("CREATE TABLE big_core (id int PRIMARY KEY)")
        c.execute("INSERT INTO big_core SELECT generate_series(1, 20000)")
        c.execute("ANALYZE big_core")
        c.execute("GRANT SELECT ON big_core TO gw_scram")

    def est(cfg):
        cfg["policies"][0]["access"]["tables"].append("public.big_core")
        cfg["policies"][0]["review"] = [{"estimated_rows_over": 1000}]
    g, port, oncall, _ = start(gateway_factory, mode="retry", extra=est)
    with g.connect() as c:
        assert c.execute("SELECT id FROM big_core WHERE id = 5").fetchall() == [(5,)]
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT id FROM big_core")
        assert "estimated_rows_over" in str(ei.value) and "20000 rows" in str(ei.value), ei.value
        # In a transaction block, the estimate leaves the transaction as it was.
        c.execute("BEGIN")
        assert c.execute("SELECT count(*) FROM big_core WHERE id < 10").fetchone() == (9,)
        assert c.execute("SELECT count(*) FROM big_core WHERE id < 20").fetchone() == (19,)
        c.execute("COMMIT")
        with pytest.raises(psycopg.Error) as bad:
            c.execute("SELECT no_such_column FROM big_core")
        assert "no estimate" in str(bad.value), bad.value
        rid = re.search(r"request ([0-9a-f]{16})", str(ei.value))[1]
        assert api(port, "POST", f"/api/approvals/{rid}/approve", oncall, {})[0] == 200
        assert len(c.execute("SELECT id FROM big_core").fetchall()) == 20000
        # Parameters cannot be estimated here: held, never let through unestimated.
        with pytest.raises(psycopg.Error) as pe:
            c.execute("SELECT id FROM big_core WHERE id = %s", (7,))
        assert "parameters" in str(pe.value)
