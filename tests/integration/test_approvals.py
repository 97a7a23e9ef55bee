"""Approvals and time-bound grants (docs/approvals.md) through real clients and the real
admin HTTP API: review rules hold statements (wait and retry modes), humans decide over
`POST /api/approvals/ID/approve|deny` (API keys made with `pgcordon apikey create`), grants
widen a caller's table scope for a while, webhooks announce requests, every step is in the
audit store, the `pgcordon approvals|grants` CLI, two gateways sharing a PostgreSQL store,
and hostile input on the API.

Clients are psycopg (simple, extended with parameters, pipeline, COPY, cancel), psql and
the raw protocol client (pgwire). Tables carry a random suffix (the PostgreSQL instance is
shared) and are owned by gw_scram, the upstream role behind database "app".

Identities of the module gateway:

- SCRAM users (password PW), each matched by one policy: waiter (agents: wait mode, holds
  COPY TO and public.PAY), hurried (short: wait 2s), retrier / retrier2 (retry: retry mode,
  valid_for 3s), counter (rows: returned_rows_over 5), planner (estimate:
  estimated_rows_over 1000, retry mode), blocked (strict: copy_to and DELETE without WHERE
  both blocked and reviewed), scoped / scoped2 (group scopers) and scopedx (group
  other-scopers) with the table scope public.items, roscoped (read-only, same scope);
  alice and bob are unrestricted (policy open).
- API keys: carol and dave (security-oncall: the approvers), audra (security: admin
  auditor, not an approver), outsider (contractors: neither), selfie (agents +
  security-oncall: an approver who also connects as a client and is held by policy
  agents), dbaa (dba: the approvers of policy dbapol only, which holds dbuser's reads of
  public.PAY in retry mode)."""

import http.client
import json
import os
import re
import secrets
import signal
import struct
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg.pq import TransactionStatus

import pgwire
from conftest import (BIN, LOCAL_USERS, ROLE_PW, SCRAM_PW_ENV, SUPERUSER_PW, GatewayFactory,
                      free_port, ipv6_loopback, require_binary, scram_verifier, to_yaml)
from store_relay import StoreRelay
from webhook_receiver import Receiver

SFX = secrets.token_hex(3)
PW = "Approvals-Pw-3c4d5e6f"

PAY = f"apv_pay_{SFX}"          # reviewed table (rule tables)
BIG = f"apv_big_{SFX}"          # BIG_ROWS rows, analyzed, for estimated_rows_over
PAY_ROWS = 10
BIG_ROWS = 50000
ROWS_OVER = 5
EST_OVER = 1000
APPROVERS = ["security-oncall"]

SCRAM_USERS = {
    "waiter": ["waiters"], "hurried": ["hurried"], "retrier": ["retriers"],
    "retrier2": ["retriers"], "counter": ["counters"], "planner": ["planners"],
    "blocked": ["blockers"], "scoped": ["scopers"], "scoped2": ["scopers"],
    "scopedx": ["other-scopers"], "roscoped": ["roscopers"], "dbuser": ["dbusers"],
}
KEY_GROUPS = {
    "carol": ["security-oncall"],
    "dave": ["security-oncall"],
    "audra": ["security"],
    "outsider": ["contractors"],
    "selfie": ["agents", "security-oncall"],
    "dbaa": ["dba"],
}

# "pgcordon: statement held for approval (policy P, rule R: W); request ID; ..."
HELD = (r"pgcordon: statement held for approval \(policy (?P<policy>[^,()]+), "
        r"rule (?P<rule>[a-z_]+): (?P<why>.*?)\); request (?P<id>[0-9A-Za-z_-]{6,64}); ")
# The documented notice ends with the CLI command; test_notice_text_as_documented checks
# that exactly, every other test only needs it to start that way.
NOTICE_DOC_RE = re.compile(HELD + r"approve with: pgcordon approvals approve (?P=id)")
NOTICE_RE = re.compile(HELD + r"approve with: pgcordon approvals approve (?P=id)\b.*", re.S)
RETRY_RE = re.compile(HELD + r"run it again once approved")
ANY_ID = re.compile(r"request ([0-9A-Za-z_-]{6,64})\b")


def name(base):
    return f"apv_{base}_{SFX}"


_mk = [0]


def marker(base="mk"):
    """A unique string literal to put into a statement, to find its request."""
    _mk[0] += 1
    return f"{base}-{SFX}-{_mk[0]}"


def wait_for(fn, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def su_exec(pg, *stmts, dbname=None):
    with (pg.super_connect(dbname) if dbname else pg.super_connect()) as c:
        for s in stmts:
            c.execute(s)


def direct_rows(pg, sql, params=None):
    with pg.connect() as c:
        return c.execute(sql, params).fetchall()


# ---------------------------------------------------------------------------- API keys / CLI

def cli(*args, env=None, timeout=60):
    require_binary()
    e = {k: v for k, v in os.environ.items() if k != "PGCORDON_TOKEN"}
    e.update(env or {})
    return subprocess.run([str(BIN)] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=e)


def apikey_create(key_name, groups):
    r = cli("apikey", "create", key_name, "--groups", ",".join(groups))
    assert r.returncode == 0, r.stderr
    key = re.findall(r"^  (pgc_[A-Za-z0-9_-]{43})$", r.stdout, re.M)
    m = re.search(r"^  " + re.escape(key_name) + r': \{hash: "(sha256:[0-9a-f]{64})"', r.stdout,
                  re.M)
    assert len(key) == 1 and m, r.stdout
    return key[0], {"hash": m[1], "groups": list(groups)}


@pytest.fixture(scope="module")
def keys():
    """{name: (key, api_keys entry)} for KEY_GROUPS."""
    return {n: apikey_create(n, g) for n, g in KEY_GROUPS.items()}


# ---------------------------------------------------------------------------- HTTP API

class Api:
    """The admin HTTP API of one gateway, over http.client (paths are sent as written)."""

    def __init__(self, port, tokens, host="127.0.0.1"):
        self.port, self.host = port, host
        self.tokens = tokens  # name -> key

    def tok(self, who):
        return self.tokens.get(who, who) if who else None

    def call(self, method, path, who=None, body=None, raw=None, headers=None, timeout=20):
        """(status, parsed JSON or None, raw bytes). `who` is a key name or a raw token."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            h = dict(headers or {})
            if who is not None:
                h["Authorization"] = f"Bearer {self.tok(who)}"
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            if data is not None:
                h.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            payload = resp.read()
            try:
                j = json.loads(payload)
            except ValueError:
                j = None
            return resp.status, j, payload
        finally:
            conn.close()

    def get(self, rid, who="carol"):
        st, j, raw = self.call("GET", f"/api/approvals/{rid}", who)
        assert st == 200, (st, raw)
        return j

    def status_of(self, rid, who="carol"):
        return self.get(rid, who)["status"]

    def decide(self, rid, verb, who="carol", reason=None, body=None):
        if body is None and reason is not None:
            body = {"reason": reason}
        st, j, raw = self.call("POST", f"/api/approvals/{rid}/{verb}", who, body=body)
        return st, j

    def approve(self, rid, who="carol", reason=None, body=None):
        return self.decide(rid, "approve", who, reason, body)

    def deny(self, rid, who="carol", reason=None, body=None):
        return self.decide(rid, "deny", who, reason, body)

    def approve_ok(self, rid, who="carol", reason=None):
        st, j = self.approve(rid, who, reason)
        assert st == 200, (st, j)
        assert j["id"] == rid and j["status"] == "approved", j
        return j

    def list(self, who="carol", status=None):
        path = "/api/approvals" + (f"?status={status}" if status else "")
        st, j, raw = self.call("GET", path, who)
        assert st == 200, (st, raw)
        assert isinstance(j.get("approvals"), list), j
        return j["approvals"]

    def find(self, needle, who="carol", status="pending", timeout=15):
        """The request whose statement contains needle (polls the list)."""
        def look():
            for r in self.list(who, status):
                if needle in (r.get("statement") or ""):
                    return r
            return None
        return wait_for(look, timeout, 0.1, f"a {status} request with {needle!r}")

    def wait_status(self, rid, status, timeout=10):
        return wait_for(lambda: self.status_of(rid) == status, timeout, 0.1,
                        f"request {rid} to become {status} (is {self.status_of(rid)})")

    def grant(self, who, body):
        st, j, raw = self.call("POST", "/api/grants", who, body=body)
        return st, j

    def grants(self, who="carol", status=None):
        path = "/api/grants" + (f"?status={status}" if status else "")
        st, j, raw = self.call("GET", path, who)
        assert st == 200, (st, raw)
        assert isinstance(j.get("grants"), list), j
        return j["grants"]

    def healthy(self):
        try:
            return self.call("GET", "/healthz")[0] == 200
        except OSError:
            return False


def assert_error_body(st, j, code):
    assert st == code, (st, j)
    assert isinstance(j, dict) and isinstance(j.get("error"), str) and j["error"], \
        f"expected a JSON {{\"error\": ...}} body with {code}, got {j!r}"


# ---------------------------------------------------------------------------- config

def add_identities(cfg, keys):
    for u, groups in SCRAM_USERS.items():
        cfg["users"][u] = {"password": scram_verifier(PW), "groups": list(groups)}
    cfg["api_keys"] = {n: entry for n, (_, entry) in keys.items()}


def module_policies():
    return [
        {"name": "open", "match": {"users": ["alice", "bob"]}},
        {"name": "agents", "match": {"users": ["waiter"], "groups": ["agents"]},
         "review": [{"statements": ["copy_to"]}, {"tables": [f"public.{PAY}"]}]},
        {"name": "short", "match": {"users": ["hurried"]},
         "review": [{"tables": [f"public.{PAY}"]}], "approvals": {"wait": "2s"}},
        {"name": "retry", "match": {"users": ["retrier", "retrier2"]},
         "review": [{"tables": [f"public.{PAY}"]}],
         "approvals": {"mode": "retry", "valid_for": "3s"}},
        {"name": "rows", "match": {"users": ["counter"]},
         "review": [{"returned_rows_over": ROWS_OVER}]},
        {"name": "estimate", "match": {"users": ["planner"]},
         "review": [{"estimated_rows_over": EST_OVER}], "approvals": {"mode": "retry"}},
        {"name": "strict", "match": {"users": ["blocked"]},
         "block": [{"statements": ["copy_to"]}, {"delete_without_where": True}],
         "review": [{"statements": ["copy_to"]}, {"tables": [PAY]}]},
        {"name": "scoped", "match": {"groups": ["scopers", "other-scopers"]},
         "access": {"tables": ["public.items"]}, "block": [{"statements": ["truncate"]}]},
        {"name": "roscoped", "match": {"users": ["roscoped"]},
         "access": {"read_only": True, "tables": ["public.items"]}},
        {"name": "dbapol", "match": {"users": ["dbuser"]},
         "review": [{"tables": [f"public.{PAY}"]}],
         "approvals": {"approvers": ["dba"], "mode": "retry"}},
    ]


def approvals_section(**kw):
    a = {"approvers": list(APPROVERS), "mode": "wait", "wait": "60s", "valid_for": "15m"}
    a.update(kw)
    return a


def setup_config(cfg, keys, admin_port, audit=None, approvals=None, policies=None):
    add_identities(cfg, keys)
    cfg["default"] = "deny"
    cfg["admin"] = {"address": "127.0.0.1", "port": admin_port, "auditors": ["security"]}
    cfg["approvals"] = approvals or approvals_section()
    cfg["policies"] = policies if policies is not None else module_policies()
    if audit:
        cfg["audit"] = audit


class Ctx:
    def __init__(self, gw, api, keys, db=None):
        self.gw, self.api, self.keys, self.db = gw, api, keys, db

    def password(self, user):
        if user in self.keys:
            return self.keys[user][0]
        return LOCAL_USERS.get(user, PW)

    def connect(self, user, **kw):
        return self.gw.connect(user=user, password=self.password(user), **kw)

    def raw(self, user):
        c = pgwire.RawConn(self.gw.host, self.gw.port, timeout=60)
        c.startup(user, "app", self.password(user))
        return c

    def psql(self, user, args, wait=True, timeout=90):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSWORD=self.password(user), PGCONNECT_TIMEOUT="10", LC_ALL="C")
        conn = f"host={self.gw.host} port={self.gw.port} user={user} dbname=app sslmode=disable"
        cmd = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conn] + list(args)
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        if not wait:
            return p
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err


def start_approvals_gateway(factory, keys, audit=None, approvals=None, policies=None, admin=None):
    """admin: more of the admin section."""
    port = free_port()

    def mutate(cfg):
        setup_config(cfg, keys, port, audit, approvals, policies)
        cfg["admin"].update(admin or {})
    gw = factory.start(mutate)
    api = Api(port, {n: k for n, (k, _) in keys.items()}, host=(admin or {}).get("address", "127.0.0.1"))
    wait_for(api.healthy, 10, 0.1, "the admin HTTP API (/healthz)")
    return Ctx(gw, api, keys)


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def objects(pg):
    su_exec(pg,
            f"CREATE TABLE {PAY} (id int PRIMARY KEY, amount numeric(10,2), note text)",
            f"INSERT INTO {PAY} SELECT g, g * 10.5, 'pay ' || g "
            f"FROM generate_series(1, {PAY_ROWS}) g",
            f"CREATE TABLE {BIG} (id int PRIMARY KEY, v text)",
            f"INSERT INTO {BIG} SELECT g, 'big ' || g FROM generate_series(1, {BIG_ROWS}) g",
            f"ANALYZE {BIG}", f"ANALYZE {PAY}",
            f"ALTER TABLE {PAY} OWNER TO gw_scram", f"ALTER TABLE {BIG} OWNER TO gw_scram")
    yield
    su_exec(pg, f"DROP TABLE IF EXISTS {PAY}", f"DROP TABLE IF EXISTS {BIG}")


@pytest.fixture(scope="module")
def apv(pg, certs, objects, keys, tmp_path_factory):
    """The module gateway: the identities and policies above, approvals in wait mode (60s)
    by default, a SQLite audit store."""
    require_binary()
    root = tmp_path_factory.mktemp("apvgw")
    db = root / "audit.db"
    f = GatewayFactory(pg, certs, root)
    ctx = start_approvals_gateway(f, keys, audit={"store": f"sqlite:{db}", "node": "apv"})
    ctx.db = db
    yield ctx
    f.cleanup()


@pytest.fixture(autouse=True)
def _gateway_keeps_serving(request):
    """After every test that used the module gateway: it serves SQL and its API."""
    yield
    if "apv" in request.fixturenames:
        ctx = request.getfixturevalue("apv")
        ctx.gw.assert_serves(user="alice")
        assert ctx.api.healthy(), "the admin API stopped answering /healthz"


_tables = [0]


@pytest.fixture
def table(pg):
    """table(rows=3) -> a fresh public table (id int primary key, v text) owned by gw_scram."""
    made = []

    def make(rows=3):
        _tables[0] += 1
        t = name(f"s{_tables[0]}")
        su_exec(pg, f"CREATE TABLE {t} (id int PRIMARY KEY, v text)",
                f"INSERT INTO {t} SELECT g, 'secret ' || g FROM generate_series(1, {rows}) g",
                f"ALTER TABLE {t} OWNER TO gw_scram")
        made.append(t)
        return t
    yield make
    su_exec(pg, *[f"DROP TABLE IF EXISTS {t}" for t in made])


# ---------------------------------------------------------------------------- client helpers

def notice_id(message, rx=NOTICE_RE):
    m = rx.fullmatch(message or "")
    assert m, f"{message!r} is not a 'held for approval' message of the documented form"
    return m


class Held:
    """Runs conn.execute(sql, params) in a thread (a client waiting in wait mode) and records
    the NoticeResponses it gets; .wait_notice() returns the held notice's match."""

    def __init__(self, conn, sql, params=None, fetch=True, **kw):
        self.conn, self.sql, self.params, self.kw, self.fetch = conn, sql, params, kw, fetch
        self.notices = []
        self.noticed = threading.Event()
        self.rows = self.error = None
        self.started = self.finished = None
        conn.add_notice_handler(self._on_notice)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_notice(self, d):
        self.notices.append((d.severity, d.sqlstate, d.message_primary, time.monotonic()))
        if "held for approval" in (d.message_primary or ""):
            self.noticed.set()

    def _run(self):
        self.started = time.monotonic()
        try:
            cur = self.conn.execute(self.sql, self.params, **self.kw)
            self.rows = cur.fetchall() if (self.fetch and cur.description) else cur.statusmessage
        except Exception as e:  # noqa: BLE001 - the test looks at it
            self.error = e
        finally:
            self.finished = time.monotonic()

    def wait_notice(self, timeout=15):
        assert self.noticed.wait(timeout), \
            f"no 'held for approval' notice within {timeout}s; notices {self.notices}, " \
            f"error {self.error!r}, rows {self.rows!r}"
        held = [n for n in self.notices if "held for approval" in (n[2] or "")]
        assert len(held) == 1, self.notices
        sev, code, msg, _ = held[0]
        assert sev == "NOTICE", held[0]
        return notice_id(msg)

    def waiting(self):
        return self.thread.is_alive()

    def join(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the held statement did not finish within {timeout}s"
        return self


def held_error(conn, sql, params=None, **kw):
    """Retry mode: the statement fails at once with 42501 and the documented message;
    returns the match (id, policy, rule, why)."""
    t0 = time.monotonic()
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, params, **kw)
    took = time.monotonic() - t0
    e = ei.value
    assert e.sqlstate == "42501", f"expected 42501, got {e.sqlstate}: {e}"
    assert took < 5, f"a retry-mode hold took {took:.1f}s to answer"
    assert conn.info.transaction_status == TransactionStatus.IDLE
    return notice_id(e.diag.message_primary, RETRY_RE)


def blocked_error(conn, sql, policy, **kw):
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, **kw)
    e = ei.value
    assert e.sqlstate == "42501", f"expected 42501, got {e.sqlstate}: {e}"
    msg = e.diag.message_primary or ""
    assert msg.startswith(f"pgcordon: blocked by policy {policy}: "), msg
    return msg


def out_of_scope(conn, t, policy="scoped"):
    msg = blocked_error(conn, f"SELECT id, v FROM {t} ORDER BY id", policy)
    assert t in msg, msg


def pay_rows(pg, where="true"):
    return direct_rows(pg, f"SELECT id, amount, note FROM {PAY} WHERE {where} ORDER BY id")


def read_until(conn, pred):
    """Raw protocol: [(type, fields-or-body)] up to and including the first message for
    which pred(type, out_so_far) is true."""
    out = []
    while True:
        typ, body = conn.read_msg()
        t = typ.decode()
        out.append((t, pgwire.parse_fields(body) if t in ("E", "N") else body))
        if pred(t, out):
            return out


def until_ready(n=1):
    def pred(t, out):
        return t == "Z" and sum(1 for x, _ in out if x == "Z") >= n
    return pred


def q(sql):
    return pgwire.msg(b"Q", pgwire.cstr(sql))


def ext(sql, params=()):
    """Parse (unnamed) + Bind + Describe portal + Execute, text parameters."""
    m = pgwire.msg
    out = m(b"P", pgwire.cstr("") + pgwire.cstr(sql) + struct.pack("!H", 0))
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


def types(tr):
    return [t for t, _ in tr]


def datarow_values(body):
    (n,) = struct.unpack("!H", body[:2])
    pos, row = 2, []
    for _ in range(n):
        (ln,) = struct.unpack("!i", body[pos:pos + 4])
        pos += 4
        row.append(None if ln < 0 else body[pos:pos + ln].decode())
        pos += max(ln, 0)
    return row


REQUEST_FIELDS = ("id", "kind", "status", "requester", "groups", "database", "node",
                  "statement", "parameters", "policy", "rule", "why", "mode", "approvers",
                  "created", "deadline", "decided_by", "decided_at", "decision_reason",
                  "valid_until", "decided_on")


def check_request(r, **want):
    """The given fields of a request have these values (the documented field set is checked
    by test_request_json_fields, so that a missing field fails that test alone)."""
    for k, v in want.items():
        assert k in r, f"request JSON lacks {k!r}: {r}"
        assert r[k] == v, f"request {k} is {r[k]!r}, expected {v!r}: {r}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", r["created"]), r["created"]


def missing_fields(r):
    return [k for k in REQUEST_FIELDS if k not in r]


# ============================================================================ wait mode

def test_wait_approved_psycopg_other_thread(apv, pg):
    """Held in wait mode: the NOTICE arrives at once and names the request; an approval
    from another thread, while the client waits, lets the statement run and return rows."""
    mk = marker()
    sql = f"SELECT id, amount, note FROM {PAY} WHERE id <= 3 AND '{mk}' <> '' ORDER BY id"
    notices, noticed, seen = [], threading.Event(), {}

    def on_notice(d):
        notices.append((d.severity, d.sqlstate, d.message_primary, time.monotonic()))
        if "held for approval" in (d.message_primary or ""):
            noticed.set()

    def approver():
        try:
            assert noticed.wait(15), "no notice"
            rid = notice_id(notices[-1][2])["id"]
            time.sleep(0.7)  # the client is really waiting meanwhile
            seen["pending"] = apv.api.get(rid)
            seen["at"] = time.monotonic()
            seen["approved"] = apv.api.approve(rid, "carol", reason="looks fine")
        except BaseException as e:  # noqa: BLE001
            seen["error"] = e

    with apv.connect("waiter") as c:
        c.add_notice_handler(on_notice)
        th = threading.Thread(target=approver, daemon=True)
        th.start()
        t0 = time.monotonic()
        rows = c.execute(sql).fetchall()
        done = time.monotonic()
        th.join(20)
        assert "error" not in seen, seen.get("error")
        assert rows == pay_rows(pg, "id <= 3")
        held = [n for n in notices if "held for approval" in (n[2] or "")]
        assert len(held) == 1, notices
        sev, _, msg, at = held[0]
        assert sev == "NOTICE"
        m = notice_id(msg)
        assert (m["policy"], m["rule"]) == ("agents", "tables") and PAY in m["why"], msg
        assert at - t0 < 3, f"the notice came {at - t0:.1f}s after the statement was sent"
        assert at < seen["at"] <= done, "the rows arrived before the approval"
        rid = m["id"]
        check_request(seen["pending"], id=rid, kind="statement", status="pending",
                      requester="waiter", database="app", statement=sql, parameters=[],
                      policy="agents", rule="tables", mode="wait", approvers=APPROVERS,
                      decided_by=None, decided_at=None, decision_reason=None)
        assert PAY in seen["pending"]["why"]
        assert seen["pending"]["groups"] == ["waiters"]
        st, j = seen["approved"]
        assert st == 200, (st, j)
        check_request(j, id=rid, status="approved", decided_by="carol",
                      decision_reason="looks fine")
        assert j["decided_at"]
        assert apv.api.get(rid)["status"] == "approved"
        # the session goes on
        assert c.execute("SELECT 1 + %s::int", (1,)).fetchone() == (2,)


def test_wait_approved_psql(apv, pg):
    """psql waits while held, prints the NOTICE on stderr, and prints the rows once
    approved."""
    mk = marker()
    sql = f"SELECT id, note FROM {PAY} WHERE id IN (4, 5) AND '{mk}' <> '' ORDER BY id"
    p = apv.psql("waiter", ["-c", sql], wait=False)
    try:
        r = apv.api.find(mk)
        time.sleep(0.5)
        assert p.poll() is None, "psql finished before the approval"
        apv.api.approve_ok(r["id"], "dave")
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert out.splitlines() == ["4|pay 4", "5|pay 5"], out
    m = re.search(r"^NOTICE:  (.*)$", err, re.M)
    assert m, err
    assert notice_id(m[1])["id"] == r["id"], err
    assert r["requester"] == "waiter" and r["statement"] == sql


def copy_notice(ctx):
    """The NOTICE of a COPY TO held for waiter (then denied): its match."""
    with ctx.connect("waiter") as c:
        h = Held(c, f"COPY (SELECT '{marker()}') TO STDOUT")
        m = h.wait_notice()
        ctx.api.deny(m["id"], "carol", reason="text only")
        h.join()
    return m


def test_notice_text_as_documented(apv):
    """The NOTICE is exactly the documented text (docs/approvals.md, What the client sees)."""
    m = copy_notice(apv)
    msg = m.string
    assert msg == (f"pgcordon: statement held for approval (policy agents, rule statements: "
                   f"copy_to); request {m['id']}; approve with: pgcordon approvals approve "
                   f"{m['id']} --url http://127.0.0.1:{apv.api.port} "
                   f"(or POST http://127.0.0.1:{apv.api.port}/api/approvals/{m['id']}/approve)"), msg


def test_notice_names_admin_url(gateway_factory, keys, objects):
    """admin.url (how approvers reach the API, say through a proxy) is what the NOTICE names,
    without its trailing slash; a value that is not an http(s) URL is a config error."""
    ctx = start_approvals_gateway(gateway_factory, keys, admin={"url": "https://approvals.example.com:9443/"})
    m = copy_notice(ctx)
    assert m.string.endswith(
        f"approve with: pgcordon approvals approve {m['id']} --url https://approvals.example.com:9443 (or POST "
        f"https://approvals.example.com:9443/api/approvals/{m['id']}/approve)"), m.string
    cfg = dict(ctx.gw.config)
    for bad in ("approvals.example.com", "ftp://x", "https://a b", "https://" + "x" * 200):
        cfg["admin"] = dict(cfg["admin"], url=bad)
        path = ctx.gw.workdir / "bad-url.yaml"
        path.write_text(to_yaml(cfg) + "\n")
        r = cli("check-config", "--config", path, env={SCRAM_PW_ENV: ROLE_PW["gw_scram"]})
        assert r.returncode != 0 and "admin.url must be an http:// or https:// URL" in r.stderr, (bad, r.stderr)


def test_notice_brackets_an_ipv6_api_address(gateway_factory, keys, objects):
    """admin.address ::1: the NOTICE's URL puts the address in brackets, as a URL must."""
    if not ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    ctx = start_approvals_gateway(gateway_factory, keys, admin={"address": "::1"})
    m = copy_notice(ctx)
    url = f"http://[::1]:{ctx.api.port}"
    assert m.string.endswith(f"approve with: pgcordon approvals approve {m['id']} --url {url} (or POST "
                             f"{url}/api/approvals/{m['id']}/approve)"), m.string


def test_wait_denied(apv):
    """Deny needs a reason (400 without); the client gets 42501 naming the denier and the
    reason; the session stays usable."""
    mk = marker()
    sql = f"SELECT note FROM {PAY} WHERE id = 6 AND '{mk}' <> ''"
    with apv.connect("waiter") as c:
        h = Held(c, sql)
        rid = h.wait_notice()["id"]
        for body in (None, {}, {"reason": ""}):
            st, j = apv.api.deny(rid, "carol", body=body)
            assert_error_body(st, j, 400)
        assert apv.api.status_of(rid) == "pending"
        time.sleep(0.3)
        assert h.waiting(), "a deny without a reason released the statement"
        reason = f"not during the freeze {mk}"
        st, j = apv.api.deny(rid, "carol", reason=reason)
        assert st == 200, (st, j)
        check_request(j, id=rid, status="denied", decided_by="carol", decision_reason=reason)
        h.join()
        e = h.error
        assert isinstance(e, psycopg.Error), (h.rows, e)
        assert e.sqlstate == "42501", e
        assert e.diag.message_primary == f"pgcordon: request {rid} was denied by carol: {reason}"
        assert c.info.transaction_status == TransactionStatus.IDLE
        assert c.execute("SELECT count(*) FROM items").fetchone() == (100,)
        assert c.execute("SELECT %s::text", ("still here",)).fetchone() == ("still here",)


def test_wait_denied_psql(apv):
    mk = marker()
    sql = f"SELECT note FROM {PAY} WHERE id = 7 AND '{mk}' <> ''"
    p = apv.psql("waiter", ["-c", sql, "-c", "SELECT 'after'"], wait=False)
    try:
        r = apv.api.find(mk)
        st, j = apv.api.deny(r["id"], "dave", reason="no")
        assert st == 200, j
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert f"ERROR:  pgcordon: request {r['id']} was denied by dave: no" in err, err


def test_wait_timeout_expires(apv):
    """wait: 2s -> SQLSTATE 57014 'not decided within 2s'; the request is expired and can
    no longer be decided; the session goes on."""
    mk = marker()
    sql = f"SELECT note FROM {PAY} WHERE id = 1 AND '{mk}' <> ''"
    with apv.connect("hurried") as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as ei:
            c.execute(sql)
        took = time.monotonic() - t0
        e = ei.value
        assert e.sqlstate == "57014", e
        rid = notice_id(notices[0])["id"]
        assert e.diag.message_primary == f"pgcordon: request {rid} was not decided within 2s"
        assert 1.8 <= took < 10, took
        assert c.info.transaction_status == TransactionStatus.IDLE
        assert c.execute("SELECT 5").fetchone() == (5,)
    apv.api.wait_status(rid, "expired", timeout=5)
    assert apv.api.get(rid)["mode"] == "wait"
    st, j = apv.api.approve(rid, "carol")
    assert_error_body(st, j, 409)
    assert apv.api.status_of(rid) == "expired"


# ============================================================================ retry mode

def test_retry_same_text_runs_after_approval(apv, pg):
    mk = marker()
    sql = f"SELECT id, note FROM {PAY} WHERE id = 2 AND '{mk}' <> ''"
    with apv.connect("retrier") as c:
        m = held_error(c, sql)
        rid = m["id"]
        assert (m["policy"], m["rule"]) == ("retry", "tables") and PAY in m["why"]
        # sent again while pending: the same request
        assert held_error(c, sql)["id"] == rid
        r = apv.api.get(rid)
        check_request(r, status="pending", mode="retry", requester="retrier", statement=sql,
                      policy="retry", rule="tables", kind="statement")
        j = apv.api.approve_ok(rid, "carol")
        approved_at = time.monotonic()
        assert j["valid_until"], j
        # as often as it is sent, for valid_for (3s)
        want = direct_rows(pg, f"SELECT id, note FROM {PAY} WHERE id = 2")
        for _ in range(3):
            assert c.execute(sql).fetchall() == want
        # a different text is another statement
        other = sql.replace("id = 2", "id = 3")
        m2 = held_error(c, other)
        assert m2["id"] != rid
        # another identity with the same text is another request
        with apv.connect("retrier2") as c2:
            m3 = held_error(c2, sql)
            assert m3["id"] != rid
            assert apv.api.get(m3["id"])["requester"] == "retrier2"
        # a new session of the same identity may use it too
        with apv.connect("retrier") as c3:
            assert c3.execute(sql).fetchall() == want
        # after valid_for it is held again
        left = approved_at + 3.6 - time.monotonic()
        if left > 0:
            time.sleep(left)
        m4 = held_error(c, sql)
        assert apv.api.status_of(m2["id"]) == "pending"
        assert m4["rule"] == "tables"


def test_retry_extended_parameters(apv, pg):
    """In the extended protocol the approval covers the text and the parameters."""
    mk = marker()
    sql = f"SELECT id, note FROM {PAY} WHERE id = %t::int AND note <> %t"
    with apv.connect("retrier") as c:
        rid = held_error(c, sql, (4, mk))["id"]
        assert held_error(c, sql, (4, mk))["id"] == rid
        r = apv.api.get(rid)
        assert r["parameters"] == ["4", mk], r
        assert r["statement"] == f"SELECT id, note FROM {PAY} WHERE id = $1::int AND note <> $2"
        apv.api.approve_ok(rid, "dave")
        assert c.execute(sql, (4, mk)).fetchall() == [(4, "pay 4")]
        assert c.execute(sql, (4, mk), prepare=True).fetchall() == [(4, "pay 4")]
        # other parameters: another request
        m = held_error(c, sql, (5, mk))
        assert m["id"] != rid
        assert apv.api.get(m["id"])["parameters"] == ["5", mk]
        # the same values as a literal text are another text
        lit = f"SELECT id, note FROM {PAY} WHERE id = 4::int AND note <> '{mk}'"
        assert held_error(c, lit)["id"] != rid


# ============================================================================ who may decide

def test_self_approval_refused(apv, pg):
    """selfie is an approver and the requester: 403 for its own request, 200 for carol."""
    mk = marker()
    sql = f"SELECT id FROM {PAY} WHERE id = 8 AND '{mk}' <> ''"
    with apv.connect("selfie") as c:
        h = Held(c, sql)
        rid = h.wait_notice()["id"]
        r = apv.api.get(rid)
        assert r["requester"] == "selfie" and r["policy"] == "agents", r
        st, j = apv.api.approve(rid, "selfie", reason="it is fine, I promise")
        assert_error_body(st, j, 403)
        st, j = apv.api.deny(rid, "selfie", reason="changed my mind")
        assert_error_body(st, j, 403)
        assert apv.api.status_of(rid) == "pending" and h.waiting()
        apv.api.approve_ok(rid, "carol")
        h.join()
        assert h.error is None and h.rows == [(8,)], (h.error, h.rows)


def test_non_approver_refused(apv):
    mk = marker()
    with apv.connect("retrier") as c:
        rid = held_error(c, f"SELECT note FROM {PAY} WHERE id = 1 AND '{mk}' <> ''")["id"]
    for who in ("outsider", "audra"):  # audra audits but does not decide
        st, j = apv.api.approve(rid, who)
        assert_error_body(st, j, 403)
        st, j = apv.api.deny(rid, who, reason="x")
        assert_error_body(st, j, 403)
    assert apv.api.status_of(rid) == "pending"
    # approvers and auditors list every request; others only their own
    assert rid in {r["id"] for r in apv.api.list("audra")}
    assert rid in {r["id"] for r in apv.api.list("dave")}
    assert rid not in {r["id"] for r in apv.api.list("outsider", "all")}
    st, j = apv.api.deny(rid, "carol", reason="cleanup")
    assert st == 200, j


def test_unauthenticated_refused(apv):
    mk = marker()
    with apv.connect("retrier") as c:
        rid = held_error(c, f"SELECT note FROM {PAY} WHERE id = 2 AND '{mk}' <> ''")["id"]
    k = apv.api.tokens["carol"]
    bad_tokens = [None, "pgc_" + "x" * 43, k[:-1] + ("A" if k[-1] != "A" else "B"),
                  "not a token", PW, LOCAL_USERS["alice"]]
    for tok in bad_tokens:
        for method, path, body in (("GET", "/api/approvals", None),
                                   ("GET", f"/api/approvals/{rid}", None),
                                   ("POST", f"/api/approvals/{rid}/approve", {"reason": "x"}),
                                   ("POST", f"/api/approvals/{rid}/deny", {"reason": "x"}),
                                   ("GET", "/api/grants", None),
                                   ("POST", "/api/grants",
                                    {"user": "scoped", "tables": ["public.items"],
                                     "duration": "1m", "reason": "x"})):
            st, j, raw = apv.api.call(method, path, tok, body=body)
            assert_error_body(st, j, 401)
    # a Basic credential is not a bearer credential
    st, j, _ = apv.api.call("POST", f"/api/approvals/{rid}/approve", body={},
                            headers={"Authorization": f"Basic {k}"})
    assert_error_body(st, j, 401)
    assert apv.api.status_of(rid) == "pending"
    assert apv.gw.wait_log(r"event=admin_auth_failed")


def test_unknown_id_404(apv):
    for rid in ("0000000000000000", "ffffffffffffffff", "nosuchrequest"):
        st, j, _ = apv.api.call("GET", f"/api/approvals/{rid}", "carol")
        assert_error_body(st, j, 404)
        st, j = apv.api.approve(rid, "carol")
        assert_error_body(st, j, 404)
        st, j = apv.api.deny(rid, "carol", reason="x")
        assert_error_body(st, j, 404)


def test_double_decision_409(apv):
    mk = marker()
    with apv.connect("retrier") as c:
        a = held_error(c, f"SELECT note FROM {PAY} WHERE id = 3 AND '{mk}' <> ''")["id"]
        b = held_error(c, f"SELECT note FROM {PAY} WHERE id = 4 AND '{mk}' <> ''")["id"]
    apv.api.approve_ok(a, "carol", reason="first")
    for verb, who in (("approve", "carol"), ("approve", "dave"), ("deny", "dave")):
        st, j = apv.api.decide(a, verb, who, reason="second")
        assert_error_body(st, j, 409)
    r = apv.api.get(a)
    assert (r["status"], r["decided_by"], r["decision_reason"]) == ("approved", "carol", "first")
    st, j = apv.api.deny(b, "dave", reason="no")
    assert st == 200, j
    st, j = apv.api.approve(b, "carol")
    assert_error_body(st, j, 409)
    assert apv.api.status_of(b) == "denied"
    # Reads of the queue (polled by consoles and bots) are logged at debug, decisions at info.
    log = apv.gw.log_text()
    reads = re.findall(rf"level=(\w+) event=admin_request [^\n]*method=GET path=\"?/api/approvals/{a}\b", log)
    decisions = re.findall(rf"level=(\w+) event=admin_request [^\n]*method=POST path=\"?/api/approvals/{b}/", log)
    assert reads and set(reads) == {"debug"}, reads
    assert decisions and set(decisions) == {"info"}, decisions


def test_list_filters_and_order(apv):
    mk = marker()
    with apv.connect("retrier") as c:
        first = held_error(c, f"SELECT note FROM {PAY} WHERE id = 5 AND '{mk}' <> ''")["id"]
        time.sleep(0.05)
        second = held_error(c, f"SELECT note FROM {PAY} WHERE id = 6 AND '{mk}' <> ''")["id"]
    pending = [r["id"] for r in apv.api.list("carol")]
    assert pending == [r["id"] for r in apv.api.list("carol", "pending")]
    assert pending.index(second) < pending.index(first), "not newest first"
    for r in apv.api.list("carol"):
        assert r["status"] == "pending", r
    apv.api.approve_ok(first, "carol")
    assert first in {r["id"] for r in apv.api.list("carol", "approved")}
    assert first not in {r["id"] for r in apv.api.list("carol")}
    every = [r["id"] for r in apv.api.list("carol", "all")]
    assert first in every and second in every
    st, j = apv.api.deny(second, "carol", reason="tidy")
    assert st == 200
    assert second in {r["id"] for r in apv.api.list("carol", "denied")}
    st, j, _ = apv.api.call("GET", "/api/approvals?status=bogus", "carol")
    assert_error_body(st, j, 400)


# ============================================================================ review rules

def test_review_copy_to_psql(apv, pg):
    """psql \\copy ... to stdout is COPY TO STDOUT: held (rule statements: copy_to), and the
    data arrives once approved."""
    mk = marker()
    p = apv.psql("waiter", ["-c", f"\\copy (SELECT id, name, '{mk}' FROM items WHERE id <= 3 "
                                  f"ORDER BY id) to stdout"], wait=False)
    try:
        r = apv.api.find(mk)
        assert (r["rule"], r["why"]) == ("statements", "copy_to"), r
        assert p.poll() is None
        apv.api.approve_ok(r["id"], "carol")
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert out.splitlines() == [f"{i}\titem {i}\t{mk}" for i in (1, 2, 3)], out
    m = re.search(r"^NOTICE:  (.*)$", err, re.M)
    assert m and notice_id(m[1])["id"] == r["id"], err
    assert "rule statements: copy_to" in m[1]


def test_review_copy_to_psycopg(apv):
    mk = marker()
    with apv.connect("waiter") as c:
        got, err = [], []

        def copy_out():
            try:
                with c.cursor() as cur:
                    with cur.copy(f"COPY (SELECT id, '{mk}' FROM items WHERE id <= 4 "
                                  f"ORDER BY id) TO STDOUT") as cp:
                        for row in cp.rows():
                            got.append(row)
            except Exception as e:  # noqa: BLE001
                err.append(e)
        th = threading.Thread(target=copy_out, daemon=True)
        th.start()
        r = apv.api.find(mk)
        assert r["rule"] == "statements" and r["why"] == "copy_to"
        time.sleep(0.3)
        assert not got and th.is_alive()
        apv.api.approve_ok(r["id"], "carol")
        th.join(30)
        assert not th.is_alive() and not err, err
        assert got == [(str(i), mk) for i in (1, 2, 3, 4)]
        # COPY FROM and plain reads are not reviewed
        c.execute("CREATE TEMP TABLE apv_tmp (a int)")
        with c.cursor() as cur:
            with cur.copy("COPY apv_tmp FROM STDIN") as cp:
                cp.write_row((1,))
                cp.write_row((2,))
        assert c.execute("SELECT sum(a) FROM apv_tmp").fetchone() == (3,)
        assert c.execute("SELECT count(*) FROM items").fetchone() == (100,)


TABLE_CASES = [
    ("select", "SELECT * FROM {pay} WHERE note <> '{mk}'"),
    ("qualified", "SELECT id FROM public.{pay} WHERE note <> '{mk}'"),
    ("join", "SELECT i.name FROM items i JOIN {pay} p ON p.id = i.id WHERE p.note <> '{mk}'"),
    ("comma_join", "SELECT i.name FROM items i, {pay} p WHERE p.id = i.id AND '{mk}' <> ''"),
    ("in_subquery", "SELECT name FROM items WHERE id IN (SELECT id FROM {pay}) AND '{mk}' <> ''"),
    ("scalar_subquery", "SELECT (SELECT max(amount) FROM {pay}), '{mk}'"),
    ("exists", "SELECT 1 WHERE EXISTS (SELECT 1 FROM {pay} WHERE note = '{mk}')"),
    ("cte", "WITH x AS (SELECT * FROM {pay}) SELECT count(*), '{mk}' FROM x"),
    ("union", "SELECT name FROM items UNION ALL SELECT note FROM {pay} WHERE note <> '{mk}'"),
    ("insert", "INSERT INTO {pay} VALUES (1000, 1, '{mk}')"),
    ("insert_select", "INSERT INTO {pay} SELECT id + 2000, 1, '{mk}' FROM items"),
    ("update", "UPDATE {pay} SET note = '{mk}' WHERE id = 1"),
    ("delete", "DELETE FROM {pay} WHERE note = '{mk}'"),
    ("writable_cte", "WITH d AS (DELETE FROM {pay} WHERE id = 1 RETURNING id) "
                     "SELECT count(*), '{mk}' FROM d"),
    ("upper_case", "SELECT * FROM PUBLIC.{PAY} WHERE note <> '{mk}'"),
]


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_review_tables(apv, pg, case):
    """Reads and writes of public.PAY, joins and subqueries included, are held (retry mode:
    an immediate error with the request); nothing was written."""
    _, tmpl = case
    mk = marker()
    sql = tmpl.format(pay=PAY, PAY=PAY.upper(), mk=mk)
    before = pay_rows(pg)
    with apv.connect("retrier") as c:
        for kw in ({}, {"prepare": True}):
            m = held_error(c, sql, **kw)
            assert (m["rule"], m["policy"]) == ("tables", "retry") and PAY in m["why"], m
        r = apv.api.get(m["id"])
        assert r["statement"] == sql and r["rule"] == "tables"
        assert c.execute("SELECT count(*) FROM items WHERE name <> %s", (mk,)).fetchone() == (100,)
    assert pay_rows(pg) == before


def test_review_returned_rows_raw(apv):
    """returned_rows_over 5: the client gets 5 rows, then an error naming a new request;
    approved, the same statement returns every row."""
    mk = marker()
    sql = f"SELECT g, '{mk}' FROM generate_series(1, 12) g"
    c = apv.raw("counter")
    try:
        c.send(q(f"SELECT g FROM generate_series(1, {ROWS_OVER}) g"))
        tr = read_until(c, until_ready())
        assert types(tr) == ["T"] + ["D"] * ROWS_OVER + ["C", "Z"], types(tr)
        c.send(q(sql))
        tr = read_until(c, until_ready())
        assert types(tr) == ["T"] + ["D"] * ROWS_OVER + ["E", "Z"], types(tr)
        assert [datarow_values(b)[0] for t, b in tr if t == "D"] == [str(i) for i in range(1, 6)]
        err = tr[-2][1]
        assert err["S"] == "ERROR", err
        m = ANY_ID.search(err["M"])
        assert m, err
        rid = m[1]
        r = apv.api.get(rid)
        assert (r["status"], r["requester"], r["policy"], r["statement"]) == \
            ("pending", "counter", "rows", sql), r  # the rule's name: test_returned_rows_rule_name
        # not approved yet: cut again
        c.send(q(sql))
        tr = read_until(c, until_ready())
        assert types(tr) == ["T"] + ["D"] * ROWS_OVER + ["E", "Z"], types(tr)
        apv.api.approve_ok(rid, "carol")
        c.send(q(sql))
        tr = read_until(c, until_ready())
        assert types(tr) == ["T"] + ["D"] * 12 + ["C", "Z"], types(tr)
        assert tr[-2][1] == b"SELECT 12\0"
        # another statement is still cut
        c.send(q(sql.replace("12", "13")))
        tr = read_until(c, until_ready())
        assert types(tr) == ["T"] + ["D"] * ROWS_OVER + ["E", "Z"], types(tr)
    finally:
        c.terminate()


def test_review_returned_rows_psycopg(apv):
    mk = marker()
    sql = "SELECT g, %s::text FROM generate_series(1, 9) g"
    with apv.connect("counter") as c:
        got = []
        with pytest.raises(psycopg.Error) as ei:
            for row in c.cursor().stream(sql, (mk,)):
                got.append(row)
        assert got == [(i, mk) for i in range(1, ROWS_OVER + 1)], got
        m = ANY_ID.search(ei.value.diag.message_primary or "")
        assert m, ei.value
        r = apv.api.get(m[1])
        assert r["parameters"] == [mk], r
        apv.api.approve_ok(m[1], "dave")
        assert c.execute(sql, (mk,)).fetchall() == [(i, mk) for i in range(1, 10)]
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_returned_rows_rule_name(apv):
    """The request names the rule as configured (docs/approvals.md: the rule names of the
    review table, as "statements" and "tables" are named)."""
    mk = marker()
    with apv.connect("counter") as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(f"SELECT g, '{mk}' FROM generate_series(1, 8) g")
        rid = ANY_ID.search(ei.value.diag.message_primary)[1]
    r = apv.api.get(rid)
    assert r["rule"] == "returned_rows_over", r


def test_request_json_fields(apv, table):
    """Every documented field is present in requests of each kind and mode (null when it
    does not apply)."""
    mk = marker()
    reqs = {}
    with apv.connect("retrier") as c:
        reqs["retry"] = apv.api.get(
            held_error(c, f"SELECT note FROM {PAY} WHERE id = 1 AND '{mk}' <> ''")["id"])
    with apv.connect("waiter") as c:
        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 2 AND '{mk}' <> ''")
        rid = h.wait_notice()["id"]
        reqs["wait"] = apv.api.get(rid)
        apv.api.deny(rid, "carol", reason="shape only")
        h.join()
    with apv.connect("counter") as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(f"SELECT g, '{mk}' FROM generate_series(1, 8) g")
        reqs["returned_rows"] = apv.api.get(ANY_ID.search(ei.value.diag.message_primary)[1])
    reqs["grant"] = open_grant(apv, grant_body(table(), user="scoped"))
    missing = {k: missing_fields(r) for k, r in reqs.items() if missing_fields(r)}
    assert not missing, f"documented request fields missing: {missing}; requests: {reqs}"


def test_long_statements_held_and_approved(apv, pg):
    """A text over 8 KiB is inspected on a pool thread while its session waits; held for
    approval, or for the planner's estimate, it is then treated like any other."""
    pad = "/* " + "x" * 200000 + " */"
    sql = f"SELECT id, amount, note FROM {PAY} WHERE id <= 3 {pad} ORDER BY id"
    with apv.connect("waiter") as c:
        h = Held(c, sql)
        m = h.wait_notice()
        assert (m["policy"], m["rule"]) == ("agents", "tables"), m
        assert apv.api.get(m["id"])["statement"] == sql
        assert h.waiting()
        apv.api.approve_ok(m["id"])
        h.join()
        assert h.error is None, h.error
        assert h.rows == pay_rows(pg, "id <= 3")
        assert c.execute("SELECT 1 + %s::int", (1,)).fetchone() == (2,)
    whole = f"SELECT id, v FROM {BIG} {pad}"
    with apv.connect("planner") as c:
        m = held_error(c, whole)
        assert (m["policy"], m["rule"]) == ("estimate", "estimated_rows_over"), m
        assert apv.api.get(m["id"])["statement"] == whole
        assert c.execute(f"SELECT id, v FROM {BIG} WHERE id = 7 {pad}").fetchall() == [(7, "big 7")]


def test_review_estimated_rows(apv):
    """estimated_rows_over 1000 (retry mode): a SELECT of the whole 50000-row table is held,
    selective ones and small results are not."""
    mk = marker()
    whole = f"SELECT id, v, '{mk}' FROM {BIG}"
    with apv.connect("planner") as c:
        m = held_error(c, whole)
        assert (m["policy"], m["rule"]) == ("estimate", "estimated_rows_over"), m
        r = apv.api.get(m["id"])
        assert r["requester"] == "planner" and r["statement"] == whole
        assert c.execute(f"SELECT id, v FROM {BIG} WHERE id = 7").fetchall() == [(7, "big 7")]
        assert len(c.execute(f"SELECT id FROM {BIG} WHERE id <= 100").fetchall()) == 100
        assert c.execute(f"SELECT count(*) FROM {BIG}").fetchone() == (BIG_ROWS,)
        assert len(c.execute("SELECT * FROM items").fetchall()) == 100
        # not estimated: several statements, bound parameters (held, docs: Limits)
        m2 = held_error(c, f"SELECT id FROM {BIG} WHERE id <= %s AND v <> %s", (50, mk))
        assert m2["rule"] == "estimated_rows_over"
        raw = apv.raw("planner")
        try:
            rows, tag, err, _ = raw.query(f"SELECT 1 AS one; SELECT '{mk}' AS two")
            assert err and err["C"] == "42501" and RETRY_RE.fullmatch(err["M"]), err
            assert RETRY_RE.fullmatch(err["M"])["rule"] == "estimated_rows_over"
        finally:
            raw.terminate()
        apv.api.approve_ok(m["id"], "carol")
        assert len(c.execute(whole).fetchall()) == BIG_ROWS


def test_block_wins_over_review(apv, pg):
    """A statement both blocked and reviewed is refused at once, never held; a statement
    only reviewed is still held."""
    mk = marker()
    before = pay_rows(pg)
    with apv.connect("blocked") as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as ei:
            with c.cursor().copy(f"COPY (SELECT '{mk}') TO STDOUT") as cp:
                list(cp.rows())
        assert time.monotonic() - t0 < 5
        assert ei.value.sqlstate == "42501"
        assert (ei.value.diag.message_primary or "").startswith("pgcordon: blocked by policy strict: ")
        t0 = time.monotonic()
        blocked_error(c, f"DELETE FROM {PAY}", "strict")
        blocked_error(c, f"DELETE FROM {PAY} WHERE true", "strict")
        assert time.monotonic() - t0 < 5
        assert not any("held for approval" in (n or "") for n in notices), notices
        assert not [r for r in apv.api.list("carol", "all")
                    if r["requester"] == "blocked" and mk in (r["statement"] or "")]
        assert c.execute("SELECT 3").fetchone() == (3,)
        # reviewed but not blocked: held
        h = Held(c, f"DELETE FROM {PAY} WHERE note = '{mk}'")
        rid = h.wait_notice()["id"]
        st, j = apv.api.deny(rid, "carol", reason="no deletes today")
        assert st == 200, j
        h.join()
        assert h.error is not None and h.error.sqlstate == "42501", h.error
    assert pay_rows(pg) == before


# ============================================================================ cancellation

def test_disconnect_while_waiting_cancels(apv):
    mk = marker()
    c = apv.raw("waiter")
    c.send(q(f"SELECT note FROM {PAY} WHERE id = 9 AND '{mk}' <> ''"))
    tr = read_until(c, lambda t, out: t in ("N", "E", "Z"))
    assert tr[-1][0] == "N", tr
    rid = notice_id(tr[-1][1]["M"])["id"]
    assert tr[-1][1]["S"] == "NOTICE"
    assert apv.api.status_of(rid) == "pending"
    c.close()  # no Terminate: the client vanishes
    apv.api.wait_status(rid, "cancelled", timeout=10)
    st, j = apv.api.approve(rid, "carol")
    assert_error_body(st, j, 409)
    # a Terminate while waiting
    c = apv.raw("waiter")
    c.send(q(f"SELECT note FROM {PAY} WHERE id = 8 AND '{mk}' <> ''"))
    tr = read_until(c, lambda t, out: t in ("N", "E", "Z"))
    rid = notice_id(tr[-1][1]["M"])["id"]
    c.terminate()
    apv.api.wait_status(rid, "cancelled", timeout=10)


def test_psycopg_cancel_while_waiting(apv):
    mk = marker()
    with apv.connect("waiter") as c:
        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 10 AND '{mk}' <> ''")
        rid = h.wait_notice()["id"]
        time.sleep(0.3)
        c.cancel()
        h.join(15)
        assert isinstance(h.error, pgerrors.QueryCanceled), (h.error, h.rows)
        assert h.error.sqlstate == "57014"
        apv.api.wait_status(rid, "cancelled", timeout=10)
        st, j = apv.api.approve(rid, "carol")
        assert_error_body(st, j, 409)
        assert c.info.transaction_status == TransactionStatus.IDLE
        assert c.execute("SELECT 'usable'").fetchone() == ("usable",)


def test_psql_sigint_while_waiting_cancels(apv):
    """Ctrl-C in psql sends a CancelRequest: the request is cancelled."""
    mk = marker()
    p = apv.psql("waiter", ["-c", f"SELECT note FROM {PAY} WHERE id = 2 AND '{mk}' <> ''"],
                 wait=False)
    try:
        r = apv.api.find(mk)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert "canceling statement" in err or "cancel" in err.lower(), err
    apv.api.wait_status(r["id"], "cancelled", timeout=10)


# ============================================================================ extended protocol

def test_extended_parameters_in_request(apv):
    mk = marker()
    sql = f"SELECT id, note FROM {PAY} WHERE id = %t::int AND note <> %t"
    with apv.connect("waiter") as c:
        h = Held(c, sql, (3, mk))
        rid = h.wait_notice()["id"]
        r = apv.api.get(rid)
        assert r["parameters"] == ["3", mk], r
        assert r["statement"] == f"SELECT id, note FROM {PAY} WHERE id = $1::int AND note <> $2"
        apv.api.approve_ok(rid, "carol")
        h.join()
        assert h.error is None and h.rows == [(3, "pay 3")], (h.error, h.rows)


def test_extended_null_and_binary_parameters(apv):
    """NULL is null and a binary parameter is recorded as the audit records it."""
    mk = marker()
    sql = f"SELECT id FROM {PAY} WHERE id = %b AND %t::text IS NULL AND note <> %t"
    with apv.connect("waiter") as c:
        h = Held(c, sql, (1, None, mk))
        rid = h.wait_notice()["id"]
        params = apv.api.get(rid)["parameters"]
        assert len(params) == 3 and params[1] is None and params[2] == mk, params
        assert isinstance(params[0], dict) and "hex" in params[0], params
        apv.api.approve_ok(rid)
        h.join()
        assert h.rows == [(1,)], (h.error, h.rows)


def test_pipelined_raw_held_then_approved(apv):
    """Parse/Bind/Describe/Execute/Sync of a held statement and of another, in one write:
    nothing of either arrives before the approval, then both, in order."""
    mk = marker()
    c = apv.raw("waiter")
    try:
        c.send(ext(f"SELECT id, note FROM {PAY} WHERE id = $1::int AND note <> $2", [2, mk])
               + SYNC + ext("SELECT $1::int * 2", [21]) + SYNC)
        first = read_until(c, lambda t, out: t == "N" and "held" in out[-1][1].get("M", ""))
        rid = notice_id(first[-1][1]["M"])["id"]
        assert "D" not in types(first) and "C" not in types(first), first
        assert apv.api.get(rid)["parameters"] == ["2", mk]
        time.sleep(0.5)
        apv.api.approve_ok(rid, "carol")
        rest = read_until(c, until_ready(2))
        seq = [t for t in types(first + rest) if t != "N"]
        assert seq == ["1", "2", "T", "D", "C", "Z", "1", "2", "T", "D", "C", "Z"], seq
        rows = [datarow_values(b) for t, b in rest if t == "D"]
        assert rows == [["2", "pay 2"], ["42"]], rows
    finally:
        c.terminate()


def test_pipeline_psycopg_held_then_approved(apv):
    mk = marker()
    with apv.connect("waiter") as c:
        notices, noticed = [], threading.Event()

        def on_notice(d):
            notices.append(d.message_primary)
            if "held for approval" in (d.message_primary or ""):
                noticed.set()
        c.add_notice_handler(on_notice)

        def approver():
            if noticed.wait(15):
                apv.api.approve(notice_id(notices[-1])["id"], "dave")
        th = threading.Thread(target=approver, daemon=True)
        th.start()
        with c.pipeline():
            c1 = c.cursor()
            c1.execute(f"SELECT note FROM {PAY} WHERE id = %s::int AND note <> %s", ("5", mk))
            c2 = c.cursor()
            c2.execute("SELECT %s::int + 1", (41,))
        th.join(20)
        assert c1.fetchall() == [("pay 5",)]
        assert c2.fetchall() == [(42,)]
        assert noticed.is_set()


# ============================================================================ grants

def grant_body(t, duration="60s", access=None, user=None, group=None, reason=None):
    b = {"tables": [f"public.{t}"], "duration": duration, "reason": reason or f"ticket {t}"}
    if user:
        b["user"] = user
    if group:
        b["group"] = group
    if access:
        b["access"] = access
    return b


def open_grant(apv, body, who="outsider"):
    st, j = apv.api.grant(who, body)
    assert st == 201, (st, j)
    assert j["kind"] == "grant" and j["status"] == "pending" and j["requester"] == who, j
    assert j["approvers"] == APPROVERS, j
    return j


def grants_for(apv, t, status=None):
    return [g for g in apv.api.grants("carol", status) if t in json.dumps(g)]


def test_grant_read_mid_session_and_expiry(apv, table):
    t = table()
    want = [(i, f"secret {i}") for i in (1, 2, 3)]
    with apv.connect("scoped") as c, apv.connect("scoped2") as other:
        out_of_scope(c, t)
        req = open_grant(apv, grant_body(t, duration="3s", user="scoped"))
        out_of_scope(c, t)  # not before the approval
        assert not grants_for(apv, t)
        assert req["id"] in {r["id"] for r in apv.api.list("carol")}
        apv.api.approve_ok(req["id"], "carol", reason="ok for the incident")
        approved = time.monotonic()
        # the session opened before the approval sees the table now
        assert c.execute(f"SELECT id, v FROM {t} ORDER BY id").fetchall() == want
        # read, not write
        blocked_error(c, f"INSERT INTO {t} VALUES (9, 'x')", "scoped")
        # only the grantee
        out_of_scope(other, t)
        active = grants_for(apv, t)
        assert len(active) == 1 and "scoped" in json.dumps(active[0]), active
        assert time.monotonic() - approved < 2.5, "the checks took too long for a 3s grant"
        # at expiry it ends, in this session too
        time.sleep(max(0.0, approved + 3.5 - time.monotonic()))
        out_of_scope(c, t)
        assert not grants_for(apv, t)
        assert grants_for(apv, t, "all")
    with apv.connect("scoped") as c:
        out_of_scope(c, t)


def test_grant_write_access(apv, table, pg):
    t = table()
    with apv.connect("scoped") as c:
        req = open_grant(apv, grant_body(t, access="write", user="scoped"))
        blocked_error(c, f"INSERT INTO {t} VALUES (10, 'ten')", "scoped")
        apv.api.approve_ok(req["id"], "dave")
        assert c.execute(f"INSERT INTO {t} VALUES (10, 'ten')").statusmessage == "INSERT 0 1"
        assert c.execute(f"UPDATE {t} SET v = 'one' WHERE id = 1").statusmessage == "UPDATE 1"
        assert c.execute(f"SELECT count(*) FROM {t}").fetchone() == (4,)
        assert c.execute(f"DELETE FROM {t} WHERE id = 10").statusmessage == "DELETE 1"
        # a grant does not lift a block: rule
        blocked_error(c, f"TRUNCATE {t}", "scoped")
    assert direct_rows(pg, f"SELECT v FROM {t} WHERE id IN (1, 10) ORDER BY id") == [("one",)]


def test_grant_does_not_lift_read_only(apv, table, pg):
    t = table()
    with apv.connect("roscoped") as c:
        req = open_grant(apv, grant_body(t, access="write", user="roscoped"))
        apv.api.approve_ok(req["id"], "carol")
        assert c.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
        blocked_error(c, f"INSERT INTO {t} VALUES (11, 'x')", "roscoped")
    assert direct_rows(pg, f"SELECT count(*) FROM {t}") == [(3,)]


def test_grant_group(apv, table):
    t = table()
    with apv.connect("scoped") as a, apv.connect("scoped2") as b, apv.connect("scopedx") as x:
        req = open_grant(apv, grant_body(t, group="scopers"))
        apv.api.approve_ok(req["id"], "carol")
        assert a.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
        assert b.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
        out_of_scope(x, t)  # other-scopers is not the granted group
        g = grants_for(apv, t)
        assert len(g) == 1 and "scopers" in json.dumps(g[0]), g


def test_grant_self_approval_and_listing(apv, table):
    """The grant's requester cannot approve it, even as an approver; GET /api/grants lists
    active grants (default) or all."""
    t = table()
    req = open_grant(apv, grant_body(t, user="scoped"), who="selfie")
    st, j = apv.api.approve(req["id"], "selfie")
    assert_error_body(st, j, 403)
    st, j = apv.api.approve(req["id"], "outsider")
    assert_error_body(st, j, 403)
    assert apv.api.status_of(req["id"]) == "pending"
    assert not grants_for(apv, t)
    st, j = apv.api.deny(req["id"], "carol", reason="not needed")
    assert st == 200
    assert not grants_for(apv, t) and not grants_for(apv, t, "active")
    with apv.connect("scoped") as c:
        out_of_scope(c, t)
    st, j, _ = apv.api.call("GET", "/api/grants?status=bogus", "carol")
    assert_error_body(st, j, 400)


# ============================================================================ webhooks

def webhook_gateway(factory, keys, receiver):
    return start_approvals_gateway(
        factory, keys, approvals=approvals_section(notify={"webhook": receiver.url}))


def for_request(rid, status):
    def pred(d):
        return (d.status == 200 and isinstance(d.json, dict)
                and (d.json.get("pgcordon") or {}).get("id") == rid
                and d.json["pgcordon"].get("status") == status)
    return pred


def test_webhook_on_open_and_decision(gateway_factory, keys, objects):
    rcv = Receiver()
    try:
        ctx = webhook_gateway(gateway_factory, keys, rcv)
        mk = marker()
        with ctx.connect("waiter") as c:
            h = Held(c, f"SELECT note FROM {PAY} WHERE id = 1 AND '{mk}' <> ''")
            rid = h.wait_notice()["id"]
            d = rcv.wait_for(for_request(rid, "pending"), 15, "the 'opened' message")
            assert isinstance(d.json["text"], str) and rid in d.json["text"], d.json
            assert d.headers.get("content-type", "").startswith("application/json"), d.headers
            assert d.path == "/services/T0/B0/hook"
            check_request(d.json["pgcordon"], requester="waiter", kind="statement")
            ctx.api.approve_ok(rid, "carol", reason=f"fine {mk}")
            d = rcv.wait_for(for_request(rid, "approved"), 15, "the 'approved' message")
            assert rid in d.json["text"] and d.json["pgcordon"]["decided_by"] == "carol"
            h.join()
            assert h.rows == [("pay 1",)]
            # a denial, and a grant request, are announced too
            h = Held(c, f"SELECT note FROM {PAY} WHERE id = 2 AND '{mk}' <> ''")
            rid2 = h.wait_notice()["id"]
            ctx.api.deny(rid2, "dave", reason=f"nope {mk}")
            d = rcv.wait_for(for_request(rid2, "denied"), 15, "the 'denied' message")
            assert f"nope {mk}" in json.dumps(d.json)
            h.join()
        st, g = ctx.api.grant("outsider", {"user": "scoped", "tables": ["public.items"],
                                           "duration": "1m", "reason": "wh"})
        assert st == 201, g
        d = rcv.wait_for(for_request(g["id"], "pending"), 15, "the grant's message")
        assert d.json["pgcordon"]["kind"] == "grant"
    finally:
        rcv.close()


def test_webhook_retried_after_failures(gateway_factory, keys, objects):
    """The receiver answers 500 twice, then 200: the message still arrives, and the held
    client was not slowed down by it."""
    rcv = Receiver(fail_first=2)
    try:
        ctx = webhook_gateway(gateway_factory, keys, rcv)
        mk = marker()
        with ctx.connect("waiter") as c:
            h = Held(c, f"SELECT note FROM {PAY} WHERE id = 3 AND '{mk}' <> ''")
            m = h.wait_notice(timeout=5)
            rid = m["id"]
            held_at = [n[3] for n in h.notices if "held" in (n[2] or "")][0]
            assert held_at - h.started < 3
            rcv.wait_for(for_request(rid, "pending"), 40, "the retried message")
            tries = [x for x in rcv.snapshot()
                     if isinstance(x.json, dict) and (x.json.get("pgcordon") or {}).get("id") == rid]
            assert [x.status for x in tries[:3]] == [500, 500, 200], tries
            assert tries[0].body == tries[2].body
            ctx.api.approve_ok(rid, "carol")
            h.join()
            assert h.rows == [("pay 3",)]
            rcv.wait_for(for_request(rid, "approved"), 40, "the decision message")
    finally:
        rcv.close()


def test_webhook_gives_up_and_logs(gateway_factory, keys, objects):
    rcv = Receiver(fail_first=10 ** 6)
    try:
        ctx = webhook_gateway(gateway_factory, keys, rcv)
        mk = marker()
        with ctx.connect("retrier") as c:
            rid = held_error(c, f"SELECT note FROM {PAY} WHERE id = 4 AND '{mk}' <> ''")["id"]
        assert ctx.gw.wait_log(r"event=webhook_failed", timeout=60), ctx.gw.log_text()[-3000:]
        tries = [x for x in rcv.snapshot()
                 if isinstance(x.json, dict) and (x.json.get("pgcordon") or {}).get("id") == rid]
        assert len(tries) == 5, f"{len(tries)} attempts"
        span = tries[-1].at - tries[0].at
        assert 10 <= span <= 60, f"5 attempts over {span:.1f}s"
        ctx.gw.assert_serves(user="alice")
    finally:
        rcv.close()


# ============================================================================ audit

AUDIT_COLS = ("node", "seq", "time", "kind", "session_id", "user_name", "database", "body")


def audit_rows(db):
    """The SQLite trail's records (one zstd batch per row: read as test_audit.py does)."""
    from test_audit import SqliteTrail
    out = []
    for r in SqliteTrail(db).rows():
        d = {k: r[k] for k in AUDIT_COLS}
        d["raw"] = r["raw_body"]
        if isinstance(d["body"], str):
            d["body"] = json.loads(d["body"])
        out.append(d)
    return out


def audit_record(db, kind, *needles, timeout=10):
    def find():
        for r in audit_rows(db):
            if r["kind"] == kind and all(n in r["raw"] for n in needles):
                return r
        return None
    return wait_for(find, timeout, 0.1, f"an audit record {kind} with {needles}")


def approval_record(db, *needles, timeout=10):
    """An audit record about a request (its kind names approvals) holding every needle."""
    def find():
        for r in audit_rows(db):
            if r["kind"].startswith("approval") and all(n in r["raw"] for n in needles):
                return r
        return None
    return wait_for(find, timeout, 0.1, f"an approval audit record with {needles}")


def audit_scenario(apv, table):
    """Approve, deny, cancel, grant; returns what happened, for the audit tests."""
    mk = marker()
    out = {"mk": mk}
    with apv.connect("retrier") as c:
        sql = f"SELECT note FROM {PAY} WHERE id = 1 AND '{mk}' <> ''"
        out["sql"] = sql
        out["approved"] = rid = held_error(c, sql)["id"]
        apv.api.approve_ok(rid, "carol", reason=f"approved-because-{mk}")
        assert c.execute(sql).fetchall() == [("pay 1",)]
        out["denied"] = held_error(c, sql.replace("id = 1", "id = 2"))["id"]
        st, j = apv.api.deny(out["denied"], "dave", reason=f"denied-because-{mk}")
        assert st == 200
    c = apv.raw("waiter")
    c.send(q(f"SELECT note FROM {PAY} WHERE id = 3 AND '{mk}' <> ''"))
    tr = read_until(c, lambda t, o: t in ("N", "E", "Z"))
    out["cancelled"] = notice_id(tr[-1][1]["M"])["id"]
    c.close()
    apv.api.wait_status(out["cancelled"], "cancelled")
    t = table()
    out["grant"] = open_grant(apv, grant_body(t, user="scoped", reason=f"grant-because-{mk}"))["id"]
    apv.api.approve_ok(out["grant"], "carol", reason=f"grant-ok-{mk}")
    out["grant_sql"] = f"SELECT count(*) FROM {t} WHERE v <> '{mk}'"
    with apv.connect("scoped") as s:
        assert s.execute(out["grant_sql"]).fetchone() == (3,)
    return out


def granted_read_record(db, x):
    return wait_for(lambda: [r for r in audit_rows(db) if r["kind"] == "statement"
                             and r["body"].get("sql") == x["grant_sql"]],
                    10, 0.1, "the statement record of the granted read")[-1]


def test_audit_records_decisions(apv, table):
    """Holds, decisions (who, why), cancellations, grants and the use of an approval or a
    grant are in the audit store and in `pgcordon audit export`."""
    x = audit_scenario(apv, table)
    db, mk = apv.db, x["mk"]
    req = approval_record(db, x["approved"], "retrier", PAY)
    assert "pending" in req["raw"], req
    approval_record(db, x["approved"], "carol", f"approved-because-{mk}", "approved")
    approval_record(db, x["denied"], "dave", f"denied-because-{mk}", "denied")
    approval_record(db, x["cancelled"], "waiter")
    approval_record(db, x["cancelled"], "cancelled")
    approval_record(db, x["grant"], f"grant-because-{mk}")
    approval_record(db, x["grant"], "carol", f"grant-ok-{mk}", "approved")
    # the statement run under the approval names it
    ran = wait_for(lambda: [r for r in audit_rows(db) if r["kind"] == "statement"
                            and r["body"].get("sql") == x["sql"] and not r["body"].get("error")],
                   10, 0.1, "the statement record of the approved statement")
    assert x["approved"] in ran[-1]["raw"], \
        f"the statement run under approval {x['approved']} does not name it: {ran[-1]['body']}"
    # the statement that used the grant names it in its decision (the documented key,
    # grant_used, is checked by test_audit_record_kinds)
    gu = granted_read_record(db, x)
    assert x["grant"] in json.dumps(gu["body"].get("decision")), gu["body"]
    # the same through `pgcordon audit export`
    r = cli("audit", "export", "--config", apv.gw.config_path)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert any(x["approved"] in ln and f"approved-because-{mk}" in ln and "carol" in ln
               for ln in lines)
    assert any(x["denied"] in ln and f"denied-because-{mk}" in ln and "dave" in ln
               for ln in lines)


def test_audit_record_kinds(apv, table):
    """The documented records: kind approval, {"event": opened|approved|denied|expired|
    cancelled, "request": {...}} with who decided and why; a statement that ran thanks to an
    approval or a grant says so in its decision ("rule": "approval", "approval": ID, or
    "grant": ID) (docs/approvals.md, Audit)."""
    x = audit_scenario(apv, table)
    gu = granted_read_record(apv.db, x)
    time.sleep(0.5)
    rows = audit_rows(apv.db)

    def events(rid):
        return [(r["kind"], r["body"].get("event")) for r in rows
                if r["kind"] != "statement" and rid in r["raw"]]
    assert events(x["approved"]) == [("approval", "opened"), ("approval", "approved")], \
        events(x["approved"])
    assert events(x["denied"]) == [("approval", "opened"), ("approval", "denied")]
    assert events(x["cancelled"]) == [("approval", "opened"), ("approval", "cancelled")]
    assert events(x["grant"]) == [("approval", "opened"), ("approval", "approved")]
    dec = [r["body"] for r in rows if r["kind"] == "approval" and x["approved"] in r["raw"]
           and r["body"].get("event") == "approved"][0]
    assert dec["request"]["id"] == x["approved"]
    assert (dec["request"]["decided_by"], dec["request"]["decision_reason"]) == \
        ("carol", f"approved-because-{x['mk']}")
    ran = [r for r in rows if r["kind"] == "statement" and r["body"].get("sql") == x["sql"]
           and not r["body"].get("error")][-1]
    d = ran["body"]["decision"]
    assert (d.get("rule"), d.get("approval")) == ("approval", x["approved"]), d
    assert gu["body"]["decision"].get("grant") == x["grant"], gu["body"]["decision"]


def test_expiry_in_audit(apv):
    mk = marker()
    with apv.connect("hurried") as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        with pytest.raises(psycopg.Error):
            c.execute(f"SELECT note FROM {PAY} WHERE id = 5 AND '{mk}' <> ''")
        rid = notice_id(notices[0])["id"]
    approval_record(apv.db, rid, "expired")


# ============================================================================ CLI

def test_cli_approvals_and_grants(apv, table):
    url = f"http://127.0.0.1:{apv.api.port}"
    carol = apv.api.tokens["carol"]
    outsider = apv.api.tokens["outsider"]
    mk = marker()
    with apv.connect("waiter") as c:
        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 6 AND '{mk}' <> ''")
        rid = h.wait_notice()["id"]
        r = cli("approvals", "list", "--url", url, "--token", carol)
        assert r.returncode == 0, r.stderr
        assert rid in r.stdout, r.stdout
        r = cli("approvals", "list", "--status", "pending", "--url", url, env={"PGCORDON_TOKEN": carol})
        assert r.returncode == 0 and rid in r.stdout, r.stdout + r.stderr
        # usage errors: 2
        r = cli("approvals", "deny", rid, "--url", url, "--token", carol)
        assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
        r = cli("approvals", "frobnicate", "--url", url, "--token", carol)
        assert r.returncode == 2, (r.returncode, r.stderr)
        r = cli("approvals", "approve", "--url", url, "--token", carol)
        assert r.returncode == 2, (r.returncode, r.stderr)
        # API errors: 1, printed
        r = cli("approvals", "approve", rid, "--url", url, "--token", outsider)
        assert r.returncode == 1 and (r.stdout + r.stderr).strip(), (r.returncode, r.stderr)
        r = cli("approvals", "approve", rid, "--url", url, "--token", "pgc_" + "z" * 43)
        assert r.returncode == 1, (r.returncode, r.stderr)
        r = cli("approvals", "approve", "0000000000000000", "--url", url, "--token", carol)
        assert r.returncode == 1 and (r.stdout + r.stderr).strip(), (r.returncode, r.stderr)
        assert apv.api.status_of(rid) == "pending" and h.waiting()
        r = cli("approvals", "approve", rid, "--reason", "cli ok", "--url", url, "--token", carol)
        assert r.returncode == 0, r.stderr
        h.join()
        assert h.rows == [("pay 6",)]
        j = apv.api.get(rid)
        assert (j["decided_by"], j["decision_reason"]) == ("carol", "cli ok")
        r = cli("approvals", "approve", rid, "--url", url, "--token", carol)
        assert r.returncode == 1, (r.returncode, r.stderr)  # 409

        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 7 AND '{mk}' <> ''")
        rid2 = h.wait_notice()["id"]
        r = cli("approvals", "deny", rid2, "--reason", "cli no", "--url", url, "--token", carol)
        assert r.returncode == 0, r.stderr
        h.join()
        assert h.error is not None and "was denied by carol: cli no" in str(h.error)
        r = cli("approvals", "list", "--status", "all", "--url", url, "--token", carol)
        assert r.returncode == 0 and rid in r.stdout and rid2 in r.stdout

    # grants
    t = table()
    r = cli("grants", "request", "--user", "scoped", "--tables", f"public.{t}", "--access", "read",
            "--duration", "1m", "--reason", "cli grant", "--url", url, "--token", outsider)
    assert r.returncode == 0, (r.stdout, r.stderr)
    pend = [x for x in apv.api.list("carol") if x["kind"] == "grant" and t in json.dumps(x)]
    assert len(pend) == 1, pend
    r = cli("grants", "request", "--user", "scoped", "--tables", f"public.{t}",
            "--reason", "no duration", "--url", url, "--token", outsider)
    assert r.returncode == 2, (r.returncode, r.stderr)
    r = cli("grants", "request", "--tables", f"public.{t}", "--duration", "1m",
            "--reason", "nobody", "--url", url, "--token", outsider)
    assert r.returncode == 2, (r.returncode, r.stderr)
    r = cli("approvals", "approve", pend[0]["id"], "--url", url, "--token", carol)
    assert r.returncode == 0, r.stderr
    with apv.connect("scoped") as s:
        assert s.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
    r = cli("grants", "list", "--url", url, "--token", carol)
    assert r.returncode == 0 and t in r.stdout, r.stdout + r.stderr
    r = cli("grants", "list", "--status", "all", "--url", url, env={"PGCORDON_TOKEN": carol})
    assert r.returncode == 0 and t in r.stdout, r.stdout + r.stderr
    r = cli("grants", "list", "--status", "sometimes", "--url", url, "--token", carol)
    assert r.returncode in (1, 2), (r.returncode, r.stderr)


# ============================================================================ two gateways

@pytest.fixture
def pg_store(pg):
    dbname = f"apv_store_{SFX}_{secrets.token_hex(2)}"
    su_exec(pg, f"CREATE DATABASE {dbname}", dbname="postgres")
    url = (f"postgresql://postgres:{SUPERUSER_PW}@{pg.host}:{pg.port}/{dbname}"
           f"?sslmode=disable")
    yield url
    su_exec(pg, f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)", dbname="postgres")


def test_two_gateways_share_requests_and_grants(gateway_factory, keys, objects, pg_store,
                                                tmp_path, table):
    gws = {}
    for node in ("gw1", "gw2"):
        gws[node] = start_approvals_gateway(
            gateway_factory, keys,
            audit={"store": pg_store, "node": node, "key_file": str(tmp_path / f"{node}.key")})
    gw1, gw2 = gws["gw1"], gws["gw2"]
    mk = marker()
    with gw1.connect("waiter") as c:
        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 8 AND '{mk}' <> ''")
        rid = h.wait_notice()["id"]
        r = gw2.api.find(mk)  # gw2 sees gw1's request
        assert r["id"] == rid and r["node"] == "gw1", r
        gw2.api.approve_ok(rid, "carol", reason="via gw2")
        h.join(15)
        assert h.error is None and h.rows == [("pay 8",)], (h.error, h.rows)
        assert gw1.api.get(rid)["decided_by"] == "carol"
        # and a denial
        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 9 AND '{mk}' <> ''")
        rid2 = h.wait_notice()["id"]
        wait_for(lambda: gw2.api.call("GET", f"/api/approvals/{rid2}", "carol")[0] == 200, 5,
                 0.02, "gw2 to know the request")
        st, j = gw2.api.deny(rid2, "dave", reason="via gw2 too")
        assert st == 200, j
        h.join(15)
        assert h.error.diag.message_primary == \
            f"pgcordon: request {rid2} was denied by dave: via gw2 too"
    t = table()
    with gw1.connect("scoped") as s:
        out_of_scope(s, t)
        st, g = gw2.api.grant("outsider", grant_body(t, user="scoped"))
        assert st == 201, g
        gw2.api.approve_ok(g["id"], "carol")

        def readable():
            try:
                return s.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
            except psycopg.Error:
                return False
        wait_for(readable, 5, 0.1, "the grant approved on gw2 to apply on gw1")
        assert [x for x in gw1.api.grants("carol") if t in json.dumps(x)]
    for ctx in gws.values():
        ctx.gw.assert_serves(user="alice")


# ============================================================================ concurrency

def test_held_sessions_do_not_block_others(apv):
    """20 sessions held at once; another session on the same gateway runs promptly, new
    sessions log in promptly, the API answers; then all 20 are approved and finish."""
    mk = marker()
    n = 20
    conns, helds = [], []
    try:
        for i in range(n):
            c = apv.connect("waiter")
            conns.append(c)
            helds.append(Held(c, f"SELECT id FROM {PAY} WHERE id = {i % PAY_ROWS + 1} "
                                 f"AND '{mk}-{i}' <> ''"))
        ids = [h.wait_notice(20)["id"] for h in helds]
        assert len(set(ids)) == n
        pend = {r["id"] for r in apv.api.list("carol")}
        assert set(ids) <= pend
        lat = []
        with apv.connect("alice") as a:
            for i in range(40):
                t0 = time.monotonic()
                assert a.execute("SELECT count(*) FROM items WHERE id > %s", (i,)).fetchone() \
                    == (100 - i,)
                lat.append(time.monotonic() - t0)
        assert max(lat) < 1.0, f"slowest query {max(lat):.2f}s while {n} sessions were held"
        t0 = time.monotonic()
        with apv.connect("waiter") as w:  # the held policy's identity, not held statements
            assert w.execute("SELECT count(*) FROM items").fetchone() == (100,)
        assert time.monotonic() - t0 < 3
        assert all(h.waiting() for h in helds)
        for rid in ids:
            t0 = time.monotonic()
            apv.api.approve_ok(rid, "carol")
            assert time.monotonic() - t0 < 2
        for i, h in enumerate(helds):
            h.join(20)
            assert h.error is None and h.rows == [(i % PAY_ROWS + 1,)], (i, h.error, h.rows)
    finally:
        for c in conns:
            c.close()


# ============================================================================ hostile input

def test_hostile_api_input(apv, table):
    mk = marker()
    with apv.connect("retrier") as c:
        rid = held_error(c, f"SELECT note FROM {PAY} WHERE id = 1 AND '{mk}' <> ''")["id"]
    A = f"/api/approvals/{rid}/approve"
    D = f"/api/approvals/{rid}/deny"
    bad_bodies = [
        (A, b'{"reason": '), (A, b"not json at all"), (A, b"[1, 2, 3]"), (A, b'"a string"'),
        (A, b'{"reason": 42}'), (A, b'{"reason": ["a"]}'), (A, b'{"reason": {"x": 1}}'),
        (A, b'{"reason": "ok", "decided_by": "dave"}'), (A, b"\xff\xfe{}"),
        (A, b'{"reason": "a\\u0000b"}'), (A, b"[" * 30000),
        (D, b'{"reason": 7}'), (D, b'{"reason": null}'), (D, b'{"reasons": "typo"}'),
        (D, b'{"reason": "x", "status": "approved"}'),
    ]
    for path, raw in bad_bodies:
        st, j, payload = apv.api.call("POST", path, "carol", raw=raw)
        assert_error_body(st, j, 400)
        assert apv.api.status_of(rid) == "pending", (path, raw[:40])
    # a huge body
    big = b'{"reason": "' + b"x" * (16 * 1024 * 1024) + b'"}'
    try:
        st, j, payload = apv.api.call("POST", A, "carol", raw=big, timeout=60)
        assert 400 <= st < 500, (st, payload[:200])
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused while we were still sending
    assert apv.api.status_of(rid) == "pending"
    # grants: wrong types, unknown fields, missing or contradictory fields
    t = table()
    good = {"user": "scoped", "tables": [f"public.{t}"], "access": "read", "duration": "1m",
            "reason": "r"}
    bad_grants = [
        {**good, "tables": f"public.{t}"}, {**good, "tables": []}, {**good, "tables": [1]},
        {**good, "duration": 30}, {**good, "duration": "forever"}, {**good, "duration": "-5m"},
        {**good, "duration": ""}, {**good, "access": "admin"}, {**good, "user": ["scoped"]},
        {**good, "group": "scopers"}, {k: v for k, v in good.items() if k != "user"},
        {k: v for k, v in good.items() if k != "tables"},
        {k: v for k, v in good.items() if k != "duration"},
        {k: v for k, v in good.items() if k != "reason"},
        {**good, "tabels": ["public.items"]}, {**good, "approved": True},
        {**good, "reason": 5},
    ]
    for b in bad_grants:
        st, j = apv.api.grant("outsider", b)
        assert_error_body(st, j, 400)
    for raw in (b"{", b"null", b"[]", b'{"user": "scoped", "tables": ["public.items"],'):
        st, j, _ = apv.api.call("POST", "/api/grants", "outsider", raw=raw)
        assert_error_body(st, j, 400)
    assert not grants_for(apv, t, "all")
    assert not [r for r in apv.api.list("carol", "all") if t in json.dumps(r)]
    # path traversal and odd ids
    for path in ("/api/approvals/../../etc/passwd", f"/api/approvals/{rid}/../../../etc/passwd",
                 "/api/approvals/..%2F..%2Fetc%2Fpasswd", "/api/approvals/%2e%2e/approve",
                 f"/api/approvals/{rid}%2F..%2F/approve", "/api/approvals/x'%20OR%20'1'='1",
                 "/api/approvals/" + "a" * 3000,
                 f"/api/approvals/{rid}/approve/..", f"/api/approvals/{rid}/explode",
                 "/api/approvals//approve"):
        for method in ("GET", "POST"):
            st, j, payload = apv.api.call(method, path, "carol",
                                          body={"reason": "x"} if method == "POST" else None)
            assert 400 <= st < 500, (method, path, st, payload[:200])
            if st not in (413, 414, 431):
                assert isinstance(j, dict) and j.get("error"), (method, path, payload[:200])
            assert apv.api.status_of(rid) == "pending", (method, path)
    st, j, _ = apv.api.call("DELETE", f"/api/approvals/{rid}", "carol")
    assert st in (404, 405), st
    st, j, _ = apv.api.call("PUT", A, "carol", body={"reason": "x"})
    assert st in (404, 405), st
    assert apv.api.status_of(rid) == "pending"
    # still serving, and the request can still be decided normally
    assert apv.api.healthy()
    apv.api.approve_ok(rid, "carol", reason="after the storm")
    apv.gw.assert_serves(user="alice")


def test_api_nul_in_path(apv):
    """A percent-encoded NUL in the path is not a place to cut the path short: the request
    is refused with a 4xx, not answered as if the path ended there."""
    mk = marker()
    with apv.connect("retrier") as c:
        rid = held_error(c, f"SELECT note FROM {PAY} WHERE id = 2 AND '{mk}' <> ''")["id"]
    results = {}
    for method, path in (("GET", "/api/approvals/%00/approve"),
                         ("GET", f"/api/approvals/{rid}%00/approve"),
                         ("GET", "/api/grants%00/x"),
                         ("POST", f"/api/approvals/{rid}/deny%00/x"),
                         ("POST", f"/api/approvals/{rid}/approve%00")):
        st, j, payload = apv.api.call(method, path, "carol",
                                      body={"reason": "x"} if method == "POST" else None)
        results[(method, path)] = (st, payload[:80])
    status = apv.api.status_of(rid)
    report = "\n".join(f"{m} {p} -> {st} {body!r}" for (m, p), (st, body) in results.items())
    assert all(400 <= st < 500 for st, _ in results.values()) and status == "pending", \
        f"request {rid} is now {status}; answers:\n{report}"


# ============================================================================ more

def test_wait_in_transaction_block(apv, pg):
    """Held inside BEGIN: approved, the statement runs in the transaction; denied, the
    transaction is failed on both sides (COMMIT answers ROLLBACK)."""
    mk = marker()
    with apv.connect("waiter") as c:
        c.execute("BEGIN")
        c.execute("CREATE TEMP TABLE apv_tx (a int)")
        c.execute("INSERT INTO apv_tx VALUES (1)")
        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 1 AND '{mk}' <> ''")
        rid = h.wait_notice()["id"]
        apv.api.approve_ok(rid, "carol")
        h.join()
        assert h.rows == [("pay 1",)], h.error
        assert c.info.transaction_status == TransactionStatus.INTRANS
        assert c.execute("SELECT count(*) FROM apv_tx").fetchone() == (1,)
        assert c.execute("COMMIT").statusmessage == "COMMIT"
        c.execute("BEGIN")
        c.execute("INSERT INTO apv_tx VALUES (2)")
        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 2 AND '{mk}' <> ''")
        rid = h.wait_notice()["id"]
        st, j = apv.api.deny(rid, "carol", reason="not in a transaction")
        assert st == 200
        h.join()
        assert h.error is not None and h.error.sqlstate == "42501", h.error
        assert c.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            c.execute("SELECT 1")
        assert c.execute("COMMIT").statusmessage == "ROLLBACK"
        assert c.execute("SELECT count(*) FROM apv_tx").fetchone() == (1,)


def test_policy_approvers_override(apv, table):
    """A policy's approvals.approvers replaces the top-level ones for its requests; grants
    are decided by the top-level approvers."""
    mk = marker()
    sql = f"SELECT note FROM {PAY} WHERE id = 3 AND '{mk}' <> ''"
    with apv.connect("dbuser") as c:
        m = held_error(c, sql)
        r = apv.api.get(m["id"], "dbaa")
        assert r["approvers"] == ["dba"] and r["policy"] == "dbapol", r
        # carol approves other requests, not this one: she does not see it either
        assert m["id"] not in {x["id"] for x in apv.api.list("carol", "all")}
        st, j = apv.api.approve(m["id"], "carol")
        assert_error_body(st, j, 403)
        apv.api.approve_ok(m["id"], "dbaa")
        assert c.execute(sql).fetchall() == [("pay 3",)]
    g = open_grant(apv, grant_body(table(), user="scoped"))
    st, j = apv.api.approve(g["id"], "dbaa")
    assert_error_body(st, j, 403)
    st, j = apv.api.deny(g["id"], "carol", reason="tidy")
    assert st == 200


def test_requester_sees_own_requests(apv, table):
    """A caller who is neither approver nor auditor lists and reads their own requests only."""
    t = table()
    g = open_grant(apv, grant_body(t, user="scoped"))
    mine = apv.api.list("outsider")
    assert g["id"] in {r["id"] for r in mine}
    assert all(r["requester"] == "outsider" for r in apv.api.list("outsider", "all")), \
        "a non-approver sees requests of others"
    st, j, _ = apv.api.call("GET", f"/api/approvals/{g['id']}", "outsider")
    assert st == 200 and j["id"] == g["id"], (st, j)
    mk = marker()
    with apv.connect("retrier") as c:
        rid = held_error(c, f"SELECT note FROM {PAY} WHERE id = 4 AND '{mk}' <> ''")["id"]
    st, j, _ = apv.api.call("GET", f"/api/approvals/{rid}", "outsider")
    assert st in (403, 404), (st, j)
    assert rid not in json.dumps(j)
    st, j = apv.api.deny(g["id"], "carol", reason="tidy")
    assert st == 200


def test_grant_schema_pattern(apv):
    """A grant of schema.* opens every table of the schema."""
    with apv.connect("scoped") as c:
        blocked_error(c, "SELECT v FROM other.marker", "scoped")
        g = open_grant(apv, {"user": "scoped", "tables": ["other.*"], "duration": "3s",
                             "reason": "schema"})
        apv.api.approve_ok(g["id"], "carol")
        assert c.execute("SELECT v FROM other.marker").fetchall() == [("from schema other",)]
        time.sleep(3.5)
        blocked_error(c, "SELECT v FROM other.marker", "scoped")


def test_grant_expiry_prepared_statement(apv, table):
    """A statement prepared while a grant was active is judged again at each Bind: after
    the expiry it is refused."""
    t = table()
    with apv.connect("scoped") as c:
        g = open_grant(apv, grant_body(t, user="scoped", duration="3s"))
        apv.api.approve_ok(g["id"], "carol")
        approved = time.monotonic()
        sql = f"SELECT count(*) FROM {t} WHERE id > %s"
        assert c.execute(sql, (0,), prepare=True).fetchone() == (3,)
        assert c.execute(sql, (1,), prepare=True).fetchone() == (2,)
        c.execute(f"PREPARE apv_p AS SELECT count(*) FROM {t}")
        assert c.execute("EXECUTE apv_p").fetchone() == (3,)
        time.sleep(max(0.0, approved + 3.5 - time.monotonic()))
        for stmt, params, kw in ((sql, (0,), {"prepare": True}), ("EXECUTE apv_p", None, {})):
            with pytest.raises(psycopg.Error) as ei:
                c.execute(stmt, params, **kw)
            assert ei.value.sqlstate == "42501", (stmt, ei.value)
            assert "pgcordon: blocked by policy scoped" in str(ei.value), (stmt, ei.value)


def test_estimated_rows_temp_tables_and_transactions(apv):
    """The estimate sees the session's temporary tables and works inside a transaction
    block (savepoint) without disturbing it; a statement the planner rejects is held."""
    mk = marker()
    with apv.connect("planner") as c:
        c.execute("CREATE TEMP TABLE apv_est AS SELECT generate_series(1, 5000) AS g")
        c.execute("ANALYZE apv_est")
        m = held_error(c, f"SELECT g, '{mk}' FROM apv_est")
        assert m["rule"] == "estimated_rows_over"
        assert c.execute("SELECT g FROM apv_est WHERE g = 3").fetchall() == [(3,)]
        c.execute("BEGIN")
        c.execute("INSERT INTO apv_est VALUES (-1)")
        assert c.execute("SELECT g FROM apv_est WHERE g = -1").fetchall() == [(-1,)]
        assert c.execute("SELECT count(*) FROM apv_est").fetchone() == (5001,)
        assert c.info.transaction_status == TransactionStatus.INTRANS
        assert c.execute("COMMIT").statusmessage == "COMMIT"
        assert c.execute("SELECT count(*) FROM apv_est WHERE g = -1").fetchone() == (1,)
        c.execute("BEGIN")
        assert c.execute("SELECT g FROM apv_est WHERE g = 4").fetchall() == [(4,)]
        with pytest.raises(psycopg.Error) as ei:
            c.execute(f"SELECT g, '{mk}-tx' FROM apv_est")
        assert ei.value.sqlstate == "42501" and RETRY_RE.fullmatch(ei.value.diag.message_primary)
        assert c.info.transaction_status == TransactionStatus.INERROR
        assert c.execute("ROLLBACK").statusmessage == "ROLLBACK"
        # the planner rejects it: held, not let through
        m = held_error(c, f"SELECT * FROM apv_no_such_table_{SFX} WHERE '{mk}' <> ''")
        assert m["rule"] == "estimated_rows_over"
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_cli_list_is_terminal_safe(apv):
    """Statements are the requester's text: `approvals list` does not pass control, bidi or
    other invisible characters (C1, zero-width, tags) from them to the approver's terminal."""
    mk = marker()
    evil = (f"SELECT note FROM {PAY} WHERE note <> '\x1b]0;pwned\x07\x1b[2J\r' AND '{mk}\u202e' <> ''"
            " AND 'a\u200bb\u0085c\U000e0041' <> ''")
    with apv.connect("retrier") as c:
        held_error(c, evil)
    r = cli("approvals", "list", "--url", f"http://127.0.0.1:{apv.api.port}", "--token",
            apv.api.tokens["carol"])
    assert r.returncode == 0, r.stderr
    assert mk in r.stdout or PAY in r.stdout, r.stdout
    bad = [ch for ch in r.stdout if (ord(ch) < 32 and ch not in "\n\t") or ord(ch) == 127
           or 0x202a <= ord(ch) <= 0x202e or 0x2066 <= ord(ch) <= 0x2069
           or 0x80 <= ord(ch) <= 0x9f or ch in "\u200b\ufeff" or 0xe0000 <= ord(ch) <= 0xe007f]
    assert not bad, f"control/bidi characters in the output: {bad!r}"


def test_concurrent_decisions_on_two_gateways(gateway_factory, keys, objects, pg_store,
                                              tmp_path):
    """An approve on gw1 and a deny on gw2 at the same moment: exactly one wins (200), the
    other gets 409, and both gateways and the client agree on the outcome."""
    gws = [start_approvals_gateway(
        gateway_factory, keys,
        audit={"store": pg_store, "node": node, "key_file": str(tmp_path / f"{node}.key")})
        for node in ("gw1", "gw2")]
    for round_ in range(5):
        mk = marker()
        with gws[0].connect("waiter") as c:
            h = Held(c, f"SELECT note FROM {PAY} WHERE id = 1 AND '{mk}' <> ''")
            rid = h.wait_notice()["id"]
            gws[1].api.find(mk)
            go = threading.Barrier(2)
            res = {}

            def decide(i, verb, who):
                go.wait()
                res[verb] = gws[i].api.decide(rid, verb, who, reason="race")
            ts = [threading.Thread(target=decide, args=(0, "approve", "carol")),
                  threading.Thread(target=decide, args=(1, "deny", "dave"))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(20)
            codes = sorted(v[0] for v in res.values())
            assert codes == [200, 409], (round_, res)
            winner = "approve" if res["approve"][0] == 200 else "deny"
            h.join(15)
            final = {g.api.status_of(rid) for g in gws}
            want = "approved" if winner == "approve" else "denied"
            wait_for(lambda: {g.api.status_of(rid) for g in gws} == {want}, 5, 0.1,
                     f"both gateways to say {want} (now {final})")
            if winner == "approve":
                assert h.rows == [("pay 1",)], (h.error, h.rows)
            else:
                assert h.error is not None and h.error.sqlstate == "42501", (h.error, h.rows)


def claim_backend(pg, dbname):
    """The pid of the gateway's backend for claims in store dbname, once it is idle."""
    with pg.super_connect(dbname) as c:
        r = c.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND"
                      " state = 'idle' AND query LIKE 'WITH u AS (UPDATE approval_requests%'").fetchall()
    return r[0][0] if len(r) == 1 else None


def impatient_store_gateway(factory, keys, pg_store, tmp_path, node):
    """A gateway on the shared store pg_store whose statements there give up a lock wait
    after 1 s, in an error, before audit.store_timeout (2 s) gives up on the call; returns
    (context, the store's database name)."""
    store = pg_store + "&options=-c%20lock_timeout%3D1s"
    ctx = start_approvals_gateway(
        factory, keys,
        audit={"store": store, "node": node, "store_timeout": "2s", "key_file": str(tmp_path / f"{node}.key")})
    return ctx, pg_store.rsplit("/", 1)[1].split("?")[0]


def test_a_request_the_store_refuses_for_a_while_is_written_later(gateway_factory, keys, objects, pg_store,
                                                                  tmp_path, table, pg):
    """The store's writer keeps trying a write that fails, with growing pauses: a grant
    request made while approval_requests is locked (each try ends after lock_timeout 1 s) is
    in the store once the lock is gone, 6 s later, and the log says it recovered. Before, a
    write was given up after three tries (about 3.6 s here): the request was missing from the
    store for good."""
    ctx, dbname = impatient_store_gateway(gateway_factory, keys, pg_store, tmp_path, "gww")
    t = table()
    with pg.super_connect(dbname) as lk:
        lk.execute("BEGIN")
        lk.execute("LOCK TABLE approval_requests IN ACCESS EXCLUSIVE MODE")
        st, g = ctx.api.grant("outsider", grant_body(t, user="scoped"))
        assert st == 201, g
        assert ctx.gw.wait_log(rf"event=approvals_store_failed request={g['id']} .*retrying=true", timeout=10)
        time.sleep(2.5)
        lk.execute("ROLLBACK")

    def stored():
        with pg.super_connect(dbname) as c:
            return c.execute("SELECT status FROM approval_requests WHERE id = %s", (g["id"],)).fetchone()
    assert wait_for(stored, 15, 0.1, "the request in the store") == ("pending",)
    assert ctx.gw.wait_log(rf"event=approvals_store_recovered request={g['id']} tries=")


def test_a_write_the_store_refuses_for_its_content_does_not_hold_the_others(gateway_factory, keys, objects,
                                                                           pg_store, tmp_path, table, pg):
    """A write the store refuses for what it holds (here a CHECK constraint: SQLSTATE 23514)
    would fail the same way every time: it is given up at once, logged, and the writes
    behind it land."""
    ctx = start_approvals_gateway(
        gateway_factory, keys, audit={"store": pg_store, "node": "gwh", "key_file": str(tmp_path / "gwh.key")})
    dbname = pg_store.rsplit("/", 1)[1].split("?")[0]
    mark = f"refused-{secrets.token_hex(3)}"
    with pg.super_connect(dbname) as c:
        c.execute(f"ALTER TABLE approval_requests ADD CONSTRAINT no_{mark.replace('-', '_')} "
                  f"CHECK (body NOT LIKE '%{mark}%')")
    try:
        t = table()
        st, bad = ctx.api.grant("outsider", grant_body(t, user="scoped", reason=f"ticket {mark}"))
        assert st == 201, bad
        st, good = ctx.api.grant("outsider", grant_body(t, user="scoped"))
        assert st == 201, good

        def stored(rid):
            with pg.super_connect(dbname) as c:
                return c.execute("SELECT status FROM approval_requests WHERE id = %s", (rid,)).fetchone()
        assert wait_for(lambda: stored(good["id"]), 10, 0.1, "the write behind the refused one") == ("pending",)
        assert stored(bad["id"]) is None
        assert ctx.gw.wait_log(rf"event=approvals_store_failed request={bad['id']} .*given_up=\"the store refuses it\"")
    finally:
        with pg.super_connect(dbname) as c:
            c.execute(f"ALTER TABLE approval_requests DROP CONSTRAINT no_{mark.replace('-', '_')}")


def test_decisions_when_the_shared_store_cannot_be_asked(gateway_factory, keys, objects, pg_store,
                                                        tmp_path, table, pg):
    """A decision is claimed in the shared store first. With approval_requests locked the
    claim fails after lock_timeout (1 s): the approver gets 503 saying so (not 409 "already
    pending"), the request stays pending, and the same decision goes through once the lock
    is gone. With the claims' backend stopped (SIGSTOP) a claim gets no answer: it is given
    up after audit.store_timeout (2 s here) with 503 "it may have been made", /healthz
    answers meanwhile, and the next decision, queued behind it, goes through on a new
    connection. Once the backend runs again it carries out the claim it had been sent, and
    the gateway hears of it from the store: that request ends approved."""
    ctx, dbname = impatient_store_gateway(gateway_factory, keys, pg_store, tmp_path, "gwc")
    t = table()
    ids = []
    for _ in range(3):
        st, g = ctx.api.grant("outsider", grant_body(t, user="scoped"))
        assert st == 201, g
        ids.append(g["id"])

    def stored():
        with pg.super_connect(dbname) as c:
            return c.execute("SELECT count(*) FROM approval_requests WHERE id = ANY(%s)", (ids,)).fetchone()[0] == 3
    wait_for(stored, 10, 0.1, "the requests in the store")
    with pg.super_connect(dbname) as lk:
        lk.execute("BEGIN")
        lk.execute("LOCK TABLE approval_requests IN ACCESS EXCLUSIVE MODE")
        st, j = ctx.api.approve(ids[0], "carol")
        lk.execute("ROLLBACK")
    assert st == 503, (st, j)
    assert j["error"].startswith(f"the decision on {ids[0]} is not confirmed, try again: approvals store: ") \
        and "lock timeout" in j["error"] and "may have been made" not in j["error"], j
    assert ctx.api.status_of(ids[0]) == "pending"
    ctx.api.approve_ok(ids[0], "carol")

    pid = wait_for(lambda: claim_backend(pg, dbname), 10, 0.1, "the claims' backend, idle")
    first = {}
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        hung = threading.Thread(target=lambda: first.update(r=ctx.api.approve(ids[1], "carol"),
                                                            took=time.monotonic() - started), daemon=True)
        hung.start()
        time.sleep(0.5)
        assert ctx.api.healthy()
        assert not first, first
        st, j = ctx.api.approve(ids[2], "dave")
        assert st == 200, (st, j)
        hung.join(10)
        st1, j1 = first["r"]
        assert st1 == 503 and j1["error"] == (f"the decision on {ids[1]} is not confirmed, try again: approvals"
                                              " store: claim: no answer within 2000 ms; it may have been made"), j1
        assert first["took"] < 4, first
        assert ctx.api.status_of(ids[1]) == "pending"
    finally:
        os.kill(pid, signal.SIGCONT)
    ctx.api.wait_status(ids[1], "approved", 10)
    assert ctx.api.get(ids[1])["decided_by"] == "carol"
    assert "event=approvals_claim_failed" in ctx.gw.log_text()


def test_expiries_do_not_wait_behind_a_hung_claim(gateway_factory, keys, objects, pg_store,
                                                 tmp_path, table, pg):
    """A decision's claim hangs (the claims' backend stopped). An overdue request's expiry
    is claimed at the next API call, but not queued behind the hung claim: reading it answers
    at once (still pending), and it expires once the store answers again."""
    ctx = start_approvals_gateway(
        gateway_factory, keys, approvals=approvals_section(pending_for="2s"),
        audit={"store": pg_store, "node": "gwe", "key_file": str(tmp_path / "gwe.key")})
    dbname = pg_store.rsplit("/", 1)[1].split("?")[0]
    t = table()
    ctx.api.approve_ok(open_grant(ctx, grant_body(t, user="scoped"))["id"], "carol")  # opens the claims' connection

    pid = wait_for(lambda: claim_backend(pg, dbname), 10, 0.1, "the claims' backend, idle")
    hung_id = open_grant(ctx, grant_body(t, user="scoped"))["id"]
    late_id = open_grant(ctx, grant_body(t, user="scoped"))["id"]
    opened = time.monotonic()
    first = {}
    os.kill(pid, signal.SIGSTOP)
    try:
        hung = threading.Thread(target=lambda: first.update(r=ctx.api.approve(hung_id, "carol")), daemon=True)
        hung.start()
        time.sleep(max(0.0, opened + 2.5 - time.monotonic()))  # late_id is overdue now
        started = time.monotonic()
        st, j, _ = ctx.api.call("GET", f"/api/approvals/{late_id}", "carol")
        took = time.monotonic() - started
        assert st == 200 and j["status"] == "pending", (st, j)
        assert took < 2, f"reading an overdue request took {took:.1f} s behind a hung claim"
        assert not first, first
    finally:
        os.kill(pid, signal.SIGCONT)
    hung.join(20)
    assert first["r"][0] in (200, 409, 503), first  # 503: its claim was given up (audit.store_timeout)
    wait_for(lambda: ctx.api.status_of(late_id) == "expired", 20, 0.5, "the overdue request to expire")


def relayed_gateway(factory, keys, pg, pg_store, tmp_path, node, **audit):
    """A gateway whose shared store (pg_store) is reached through a StoreRelay (audit: more
    of its audit section); returns (context, relay, the store's database name). The caller
    closes the relay."""
    relay = StoreRelay(pg.host, pg.port)
    try:
        ctx = start_approvals_gateway(
            factory, keys, audit={"store": relay.url(pg_store, pg), "node": node,
                                  "key_file": str(tmp_path / f"{node}.key"), **audit})
    except BaseException:
        relay.close()
        raise
    return ctx, relay, pg_store.rsplit("/", 1)[1].split("?")[0]


def stored_request(pg, dbname, rid):
    with pg.super_connect(dbname) as c:
        row = c.execute("SELECT status, body FROM approval_requests WHERE id = %s", (rid,)).fetchone()
    return (row[0], json.loads(row[1])) if row else (None, None)


def test_a_claim_whose_answer_is_lost_still_comes_true(gateway_factory, keys, objects, pg_store,
                                                       tmp_path, pg):
    """The link to a shared store drops after the claim of an approval reached it. The
    approver gets 503 (no answer: the claim may have been made); the store has the whole
    decision, and the gateway hears of it from the store: the held statement runs, the
    request reads approved, the decision is in the audit trail once, and approving again
    answers 409 "already approved"."""
    ctx, relay, dbname = relayed_gateway(gateway_factory, keys, pg, pg_store, tmp_path, "gwl")
    try:
        mk = marker()
        with ctx.connect("waiter") as c:
            h = Held(c, f"SELECT note FROM {PAY} WHERE id = 4 AND '{mk}' <> ''")
            rid = h.wait_notice()["id"]
            wait_for(lambda: stored_request(pg, dbname, rid)[0] == "pending", 10, 0.1, "the request in the store")
            relay.arm(b"WITH u AS (UPDATE approval_requests", "cut")
            st, j = ctx.api.approve(rid, "carol", reason="link lost")
            assert relay.fired.is_set()
            assert st == 503, (st, j)
            assert j["error"].startswith(f"the decision on {rid} is not confirmed, try again: approvals store: "
                                         "claim: ") and j["error"].endswith("; it may have been made"), j
            # the relay closed the gateway's side at once: the server may run the claim a moment later
            wait_for(lambda: stored_request(pg, dbname, rid)[0] == "approved", 5, 0.05, "the claim made in the store")
            status, body = stored_request(pg, dbname, rid)
            assert body["status"] == "approved" and body["decided_by"] == "carol" \
                and body["decision_reason"] == "link lost" and body["decided_on"] == "gwl", body
            h.join(15)
            assert h.error is None and h.rows == [("pay 4",)], (h.error, h.rows)
        r = ctx.api.get(rid)
        assert r["status"] == "approved" and r["decided_by"] == "carol" and r["decided_on"] == "gwl", r
        st, j = ctx.api.approve(rid, "carol")
        assert st == 409 and j["error"] == "the request is already approved", (st, j)

        def approved_records():
            with pg.super_connect(dbname) as c:
                return c.execute("SELECT count(*) FROM audit_records WHERE kind = 'approval'"
                                 " AND body::text LIKE %s AND body::text ~ '\"event\": ?\"approved\"'",
                                 (f"%{rid}%",)).fetchone()[0]
        wait_for(lambda: approved_records() >= 1, 10, 0.2, "the decision's audit record")
        time.sleep(0.5)
        assert approved_records() == 1
        log = ctx.gw.log_text()
        assert f"event=approval_decision_from_store id={rid} status=\"approved\"" in log
        assert "event=approvals_claim_failed" in log
    finally:
        relay.close()


def test_a_lost_claim_takes_what_the_store_decided(gateway_factory, keys, objects, pg_store,
                                                   tmp_path, table, pg):
    """Another gateway's decision is in the store but its news has not come (a lost
    notification). A decision here loses the claim and takes the store's word at once:
    409 "already denied" with the other gateway's reasons, not "already pending"; and an
    expiry that loses its claim does the same."""
    ctx = start_approvals_gateway(
        gateway_factory, keys, approvals=approvals_section(pending_for="4s"),
        audit={"store": pg_store, "node": "gwm", "key_file": str(tmp_path / "gwm.key")})
    dbname = pg_store.rsplit("/", 1)[1].split("?")[0]
    t = table()
    first = open_grant(ctx, grant_body(t, user="scoped"))["id"]
    late = open_grant(ctx, grant_body(t, user="scoped"))["id"]
    opened = time.monotonic()
    for rid in (first, late):
        wait_for(lambda: stored_request(pg, dbname, rid)[0] == "pending", 10, 0.1, "the request in the store")

    def decide_elsewhere(rid, status, by):
        _, body = stored_request(pg, dbname, rid)
        body.update(status=status, decided_by=by, decision_reason="elsewhere", decided_on="gwother")
        with pg.super_connect(dbname) as c:  # as another gateway's claim, minus its notification
            c.execute("UPDATE approval_requests SET status = %s, body = %s WHERE id = %s",
                      (status, json.dumps(body), rid))
    decide_elsewhere(first, "denied", "dave")
    st, j = ctx.api.approve(first, "carol")
    assert st == 409 and j["error"] == f"the request {first} is already denied", (st, j)
    r = ctx.api.get(first)
    assert r["status"] == "denied" and r["decided_by"] == "dave" and r["decided_on"] == "gwother", r

    decide_elsewhere(late, "approved", "erin")
    assert time.monotonic() < opened + 4, "too slow: late may have expired before it was decided elsewhere"
    time.sleep(max(0.0, opened + 4.5 - time.monotonic()))  # late is overdue: its expiry loses the claim
    r = ctx.api.get(late)
    assert r["status"] == "approved" and r["decided_by"] == "erin", r
    assert "event=approval_decision_from_store" not in ctx.gw.log_text()


def test_a_claim_won_for_a_request_that_ended_here_meanwhile(gateway_factory, keys, objects, pg_store,
                                                              tmp_path, pg):
    """A wait-mode request's session gives up waiting (it ends expired here, with no claim)
    while an approval's claim waits on a lock in the store, and the expiry's own write is
    slow to arrive: the claim finds the request still pending there and wins. The approver
    gets 409 "already expired", and the store is set back to expired: no gateway can be
    told it was approved when nothing ran."""
    # the claim waits on the lock for ~2 s: well within lock_timeout (5 s) and store_timeout
    ctx, relay, dbname = relayed_gateway(gateway_factory, keys, pg, pg_store, tmp_path, "gwo", store_timeout="15s")
    try:
        mk = marker()
        with ctx.connect("hurried") as c:  # approvals.wait: 2s
            h = Held(c, f"SELECT note FROM {PAY} WHERE id = 5 AND '{mk}' <> ''")
            rid = h.wait_notice()["id"]
            wait_for(lambda: stored_request(pg, dbname, rid)[0] == "pending", 10, 0.1, "the request in the store")
            relay.arm(b"INSERT INTO approval_requests", "hold")  # the expiry's write, when it comes
            decision = {}
            with pg.super_connect(dbname) as lk:
                lk.execute("BEGIN")
                lk.execute("LOCK TABLE approval_requests IN ACCESS EXCLUSIVE MODE")
                t = threading.Thread(target=lambda: decision.update(r=ctx.api.approve(rid, "carol")), daemon=True)
                t.start()
                h.join(15)
                assert h.error is not None and h.error.sqlstate == "57014", h.error
                assert relay.fired.wait(10), "the expiry's write did not come"
                time.sleep(0.2)
                lk.execute("ROLLBACK")  # the claim runs first, and wins
            t.join(15)
            st, j = decision["r"]
            assert st == 409 and j["error"] == f"the request {rid} is already expired", (st, j)
            wait_for(lambda: stored_request(pg, dbname, rid)[0] == "expired", 5, 0.05, "the store set back")
            relay.release()
            time.sleep(0.5)
            status, body = stored_request(pg, dbname, rid)
            assert status == "expired" and body["status"] == "expired" and body["decided_by"] is None, body
            assert ctx.api.status_of(rid) == "expired"
    finally:
        relay.close()


def test_restart_keeps_approvals_and_grants(gateway_factory, keys, objects, tmp_path, table):
    """With an audit store, an approval (retry mode) and a grant outlive a restart."""
    db = tmp_path / "restart.db"
    pols = [{"name": "retry", "match": {"users": ["retrier"]},
             "review": [{"tables": [f"public.{PAY}"]}], "approvals": {"mode": "retry"}},
            {"name": "scoped", "match": {"groups": ["scopers"]},
             "access": {"tables": ["public.items"]}}]
    ctx = start_approvals_gateway(gateway_factory, keys, policies=pols,
                                  audit={"store": f"sqlite:{db}", "node": "rs"})
    mk = marker()
    sql = f"SELECT note FROM {PAY} WHERE id = 2 AND '{mk}' <> ''"
    t = table()
    with ctx.connect("retrier") as c:
        rid = held_error(c, sql)["id"]
    with ctx.connect("retrier") as c:
        pending = held_error(c, sql.replace("id = 2", "id = 3"))["id"]
    ctx.api.approve_ok(rid, "carol")
    g = open_grant(ctx, grant_body(t, user="scoped", duration="10m"))
    ctx.api.approve_ok(g["id"], "carol")
    assert ctx.gw.stop() == 0
    cfg = dict(ctx.gw.config)
    ctx2 = start_approvals_gateway(gateway_factory, keys, policies=pols,
                                   audit={"store": f"sqlite:{db}", "node": "rs"})
    assert cfg["audit"] == ctx2.gw.config["audit"]
    with ctx2.connect("retrier") as c:
        assert c.execute(sql).fetchall() == [("pay 2",)]
    with ctx2.connect("scoped") as s:
        assert s.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
    assert ctx2.api.get(rid)["status"] == "approved"
    assert ctx2.api.get(pending)["status"] == "pending"
    assert [x for x in ctx2.api.grants("carol") if t in json.dumps(x)]


def iso_s(t):
    """Seconds since the epoch of one of the API's times (ISO 8601, UTC)."""
    from datetime import datetime
    return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def approval_events(db, rid):
    return [r["body"].get("event") for r in audit_rows(db)
            if r["kind"] == "approval" and rid in r["raw"]]


def test_undecided_requests_expire(gateway_factory, keys, objects, tmp_path, table):
    """approvals.pending_for: a retry-mode request and a grant request that nobody decides
    end as expired (status, reason, audit record, log line), a late decision gets 409, the
    grant never applies, and the statement sent again opens a new request."""
    db = tmp_path / "pending.db"
    pols = [{"name": "retry", "match": {"users": ["retrier"]},
             "review": [{"tables": [f"public.{PAY}"]}],
             "approvals": {"mode": "retry", "pending_for": "2s"}},
            {"name": "scoped", "match": {"groups": ["scopers"]},
             "access": {"tables": ["public.items"]}}]
    ctx = start_approvals_gateway(gateway_factory, keys, policies=pols,
                                  approvals=approvals_section(pending_for="2s"),
                                  audit={"store": f"sqlite:{db}", "node": "pf"})
    mk = marker()
    sql = f"SELECT note FROM {PAY} WHERE id = 4 AND '{mk}' <> ''"
    t = table()
    with ctx.connect("retrier") as c, ctx.connect("scoped") as s:
        rid = held_error(c, sql)["id"]
        g = open_grant(ctx, grant_body(t, user="scoped"))["id"]
        opened = time.monotonic()
        for x in (rid, g):
            r = ctx.api.get(x)
            assert r["status"] == "pending", r
            assert iso_s(r["deadline"]) - iso_s(r["created"]) == pytest.approx(2.0, abs=0.01), r
        time.sleep(max(0.0, opened + 2.3 - time.monotonic()))
        for x in (rid, g):
            check_request(ctx.api.get(x), status="expired", decision_reason="not decided in time",
                          decided_by=None)
            st, j = ctx.api.approve(x, "carol")
            assert_error_body(st, j, 409)
            assert "expired" in j["error"], j
        assert ctx.api.list("carol", "pending") == []
        out_of_scope(s, t)
        assert not grants_for(ctx, t)
        # the same statement again: a new request, pending, which expires in its turn
        rid2 = held_error(c, sql)["id"]
        reopened = time.monotonic()
        assert rid2 != rid and ctx.api.status_of(rid2) == "pending"
        time.sleep(max(0.0, reopened + 2.3 - time.monotonic()))
        r2 = ctx.api.get(rid2)
        assert r2["status"] == "expired", r2
        # decided_at is the deadline, not the moment somebody looked
        assert r2["decided_at"] == r2["deadline"], r2
    for x in (rid, g):
        wait_for(lambda: approval_events(db, x) == ["opened", "expired"], 10, 0.1,
                 f"the audit records of {x}")
    log = ctx.gw.log_text()
    assert f'event=approval_expired id={rid} requester="retrier"' in log, log[-2000:]


def test_orphaned_wait_request_expires(gateway_factory, keys, objects, pg_store, tmp_path):
    """Two gateways share a store; gw1 is killed while a client waits there. The wait-mode
    request has lost its session and gw1 does not come back (its own restart would cancel
    it): gw2 ends it as expired a few seconds past its deadline, so it does not stay pending
    for ever, counted against its requester and open to a pointless approval."""
    pols = [{"name": "agents", "match": {"users": ["waiter"]},
             "review": [{"tables": [f"public.{PAY}"]}], "approvals": {"wait": "3s"}}]
    gws = {}
    for node in ("gw1", "gw2"):
        gws[node] = start_approvals_gateway(
            gateway_factory, keys, policies=pols,
            audit={"store": pg_store, "node": node, "key_file": str(tmp_path / f"{node}.key")})
    gw1, gw2 = gws["gw1"], gws["gw2"]
    mk = marker()
    c = gw1.connect("waiter")
    try:
        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 1 AND '{mk}' <> ''")
        rid = h.wait_notice()["id"]
        r = gw2.api.find(mk)
        assert r["id"] == rid and r["node"] == "gw1", r
        gw1.gw.kill()
        h.join(10)
    finally:
        c.close()
    # past the deadline (3s) but within the grace (5s): gw1's session could still end it
    left = iso_s(r["deadline"]) + 5 - time.time()
    if left > 0.5:
        assert gw2.api.status_of(rid) == "pending"
    time.sleep(max(0.0, left + 0.3))
    check_request(gw2.api.get(rid), status="expired", decision_reason="not decided in time")
    st, j = gw2.api.approve(rid, "carol")
    assert_error_body(st, j, 409)
    assert f"event=approval_expired id={rid} requester=\"waiter\"" in gw2.gw.log_text()


def test_expiry_with_shared_store_is_recorded_once(gateway_factory, keys, objects, pg_store,
                                                   tmp_path):
    """Two gateways share a store and both look at an overdue retry-mode request at the same
    moment: the store picks one gateway to end it (like a decision), so it is ended once (one
    approval_expired line across both logs; the audit record and webhook go with it) and the
    store and both gateways end up agreeing on the status."""
    pols = [{"name": "retry", "match": {"users": ["retrier"]},
             "review": [{"tables": [f"public.{PAY}"]}],
             "approvals": {"mode": "retry", "pending_for": "2s"}}]
    gws = [start_approvals_gateway(
        gateway_factory, keys, policies=pols,
        audit={"store": pg_store, "node": node, "key_file": str(tmp_path / f"{node}.key")})
        for node in ("gw1", "gw2")]
    mk = marker()
    with gws[0].connect("retrier") as c:
        rid = held_error(c, f"SELECT note FROM {PAY} WHERE id = 5 AND '{mk}' <> ''")["id"]
    r = gws[1].api.find(mk)
    time.sleep(max(0.0, iso_s(r["deadline"]) + 0.3 - time.time()))
    seen = [None, None]

    def look(i):
        seen[i] = gws[i].api.call("GET", f"/api/approvals/{rid}", "carol")[1]
    ts = [threading.Thread(target=look, args=(i,)) for i in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    line = f'event=approval_expired id={rid} requester="retrier"'
    for g in gws:
        g.api.wait_status(rid, "expired")
    assert sum(g.gw.log_text().count(line) for g in gws) == 1, [g.gw.log_text()[-1500:] for g in gws]
    with psycopg.connect(pg_store) as db:
        assert db.execute("SELECT status FROM approval_requests WHERE id = %s",
                          (rid,)).fetchone() == ("expired",)
    # the gateway that lost the claim may still have shown it pending
    assert {v["status"] for v in seen if v} <= {"pending", "expired"}, seen


def test_sigterm_with_held_sessions(gateway_factory, keys, objects):
    """SIGTERM while sessions are held: the gateway exits within shutdown_timeout (10s),
    the held clients get an error, not a hang."""
    ctx = start_approvals_gateway(gateway_factory, keys)
    mk = marker()
    conns, helds = [], []
    try:
        for i in range(3):
            c = ctx.connect("waiter")
            conns.append(c)
            helds.append(Held(c, f"SELECT note FROM {PAY} WHERE id = {i + 1} AND '{mk}' <> ''"))
        for h in helds:
            h.wait_notice()
        t0 = time.monotonic()
        rc = ctx.gw.stop(timeout=30)
        took = time.monotonic() - t0
        assert rc == 0, f"exit {rc} after {took:.1f}s; log:\n{ctx.gw.log_text()[-2000:]}"
        assert took < 15, f"the gateway took {took:.1f}s to stop with held sessions"
        for h in helds:
            h.join(10)
            assert h.error is not None, h.rows
    finally:
        for c in conns:
            c.close()


def listener_pids(pg, dbname):
    """Backends of the store database that are the gateways' LISTEN connections (their last
    query: the LISTEN, reading a request named by a notification, or re-reading the recent
    requests after connecting)."""
    with pg.super_connect(dbname) as c:
        return [r[0] for r in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND (query ILIKE 'LISTEN%' "
            "OR query = 'SELECT body FROM approval_requests WHERE id = $1' "
            "OR query = 'SELECT body FROM approval_requests WHERE status = ''pending'' OR updated >= $1')"
            ).fetchall()]


def test_two_gateways_decision_during_listener_outage(gateway_factory, keys, objects,
                                                      pg_store, tmp_path, table, pg):
    """The store's database drops gw1's LISTEN connection and refuses new connections for a
    moment (a restart or failover looks like this); meanwhile a statement held on gw1 is
    approved through gw2 (200) and a grant for a gw1 session is approved through gw2. Once
    gw1 is connected again, both must take effect on gw1: "a decision given through any
    gateway releases the statement held on another", "grants apply on every gateway"."""
    store_db = pg_store.rsplit("/", 1)[1].split("?")[0]
    gws = [start_approvals_gateway(
        gateway_factory, keys, approvals=approvals_section(wait="12s"),
        audit={"store": pg_store, "node": node, "key_file": str(tmp_path / f"{node}.key")})
        for node in ("gw1", "gw2")]
    gw1, gw2 = gws
    t = table()
    mk = marker()
    # warm up gw2's connections (its claim connection is made at its first decision)
    with gw1.connect("waiter") as c:
        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 1 AND '{mk}-warm' <> ''")
        rid0 = h.wait_notice()["id"]
        gw2.api.find(f"{mk}-warm")
        gw2.api.approve_ok(rid0, "carol")
        h.join(15)
        assert h.rows == [("pay 1",)], h.error
    with gw1.connect("waiter") as c, gw1.connect("scoped") as s:
        out_of_scope(s, t)
        h = Held(c, f"SELECT note FROM {PAY} WHERE id = 2 AND '{mk}' <> ''")
        rid = h.wait_notice()["id"]
        gw2.api.find(mk)
        st, g = gw2.api.grant("outsider", grant_body(t, user="scoped"))
        assert st == 201, g
        wait_for(lambda: gw1.api.call("GET", f"/api/approvals/{g['id']}", "carol")[0] == 200,
                 5, 0.05, "gw1 to know the grant request")
        pids = listener_pids(pg, store_db)
        assert len(pids) >= 2, pids
        su_exec(pg, f"ALTER DATABASE {store_db} ALLOW_CONNECTIONS false", dbname="postgres")
        try:
            with pg.super_connect("postgres") as su:
                for pid in pids:
                    su.execute("SELECT pg_terminate_backend(%s)", (pid,))
            gw2.api.approve_ok(rid, "carol", reason="during the outage")
            gw2.api.approve_ok(g["id"], "carol", reason="during the outage")
            time.sleep(1.5)
        finally:
            su_exec(pg, f"ALTER DATABASE {store_db} ALLOW_CONNECTIONS true", dbname="postgres")
        wait_for(lambda: len(listener_pids(pg, store_db)) >= 2, 10, 0.1,
                 "the gateways to LISTEN again")
        h.join(20)
        outcome = (h.rows, h.error and h.error.diag.message_primary)
        seen_gw1 = gw1.api.get(rid)["status"]

        def granted():
            try:
                return s.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
            except psycopg.Error:
                return False
        deadline = time.monotonic() + 5
        while not (grant_applied := granted()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert h.rows == [("pay 2",)] and seen_gw1 == "approved" and grant_applied, \
            (f"approved through gw2 during gw1's LISTEN outage: client got {outcome}; gw1 says "
             f"the request is {seen_gw1}, gw2 says {gw2.api.status_of(rid)}; grant applied on "
             f"gw1: {grant_applied}")


def test_retry_approval_across_protocols_and_multi_statement(apv, pg):
    """Approved through psql (simple Query), the same text runs through psycopg (extended,
    no parameters); a string of several statements is approved as a whole."""
    mk = marker()
    sql = f"SELECT note FROM {PAY} WHERE id = 5 AND '{mk}' <> ''"
    r = apv.psql("retrier", ["-c", sql])
    assert r[0] != 0 and "run it again once approved" in r[2], r
    rid = ANY_ID.search(r[2])[1]
    apv.api.approve_ok(rid, "carol")
    with apv.connect("retrier") as c:
        assert c.execute(sql).fetchall() == [("pay 5",)]
    multi = f"SELECT 1 AS one; SELECT note FROM {PAY} WHERE id = 6 AND '{mk}' <> ''"
    c = apv.raw("retrier")
    try:
        rows, tag, err, _ = c.query(multi)
        assert err and err["C"] == "42501" and RETRY_RE.fullmatch(err["M"]), err
        assert rows == [], "part of a held string ran"
        rid2 = RETRY_RE.fullmatch(err["M"])["id"]
        assert apv.api.get(rid2)["statement"] == multi
        apv.api.approve_ok(rid2, "dave")
        rows, tag, err, _ = c.query(multi)
        assert err is None and rows == [["1"], ["pay 6"]], (rows, err)
    finally:
        c.terminate()


def test_cancel_with_wrong_key_does_not_cancel(apv):
    """A CancelRequest needs the session's secret: a wrong one leaves the request pending."""
    mk = marker()
    c = apv.raw("waiter")
    try:
        pid, key = c.backend_key
        c.send(q(f"SELECT note FROM {PAY} WHERE id = 4 AND '{mk}' <> ''"))
        tr = read_until(c, lambda t, out: t in ("N", "E", "Z"))
        rid = notice_id(tr[-1][1]["M"])["id"]
        for p, k in ((pid, (key + 1) & 0xFFFFFFFF), ((pid + 1) & 0xFFFFFFFF, key), (0, 0)):
            pgwire.send_cancel(apv.gw.host, apv.gw.port, p, k)
        time.sleep(1)
        assert apv.api.status_of(rid) == "pending"
        pgwire.send_cancel(apv.gw.host, apv.gw.port, pid, key)
        tr = read_until(c, until_ready())
        assert [t for t, _ in tr] == ["E", "Z"], tr
        assert tr[0][1]["C"] == "57014", tr
        apv.api.wait_status(rid, "cancelled")
    finally:
        c.terminate()


def test_simple_queries_queued_behind_a_held_one(apv):
    """Queries the client sends while one is held wait behind it and run in order."""
    mk = marker()
    c = apv.raw("waiter")
    try:
        c.send(q(f"SELECT note FROM {PAY} WHERE id = 7 AND '{mk}' <> ''") + q("SELECT 2")
               + q("SELECT 3"))
        first = read_until(c, lambda t, out: t == "N")
        rid = notice_id(first[-1][1]["M"])["id"]
        time.sleep(0.5)
        apv.api.approve_ok(rid, "carol")
        rest = read_until(c, until_ready(3))
        rows = [datarow_values(b) for t, b in rest if t == "D"]
        assert rows == [["pay 7"], ["2"], ["3"]], rest
    finally:
        c.terminate()


def test_denied_in_extended_pipeline_skips_to_sync(apv):
    """Denied in the extended protocol: an ErrorResponse, then everything up to Sync is
    skipped (as PostgreSQL does after an error), then ReadyForQuery; the next Sync's
    statements run."""
    mk = marker()
    c = apv.raw("waiter")
    try:
        c.send(ext(f"SELECT note FROM {PAY} WHERE id = $1::int AND note <> $2", [3, mk])
               + ext("SELECT $1::int + 100", [1]) + SYNC + ext("SELECT $1::int * 3", [7]) + SYNC)
        first = read_until(c, lambda t, out: t == "N" and "held" in out[-1][1].get("M", ""))
        rid = notice_id(first[-1][1]["M"])["id"]
        st, j = apv.api.deny(rid, "carol", reason="pipeline")
        assert st == 200
        rest = read_until(c, until_ready(2))
        seq = [t for t in types(first + rest) if t != "N"]
        assert seq == ["1", "E", "Z", "1", "2", "T", "D", "C", "Z"], seq
        err = [f for t, f in rest if t == "E"][0]
        assert err["C"] == "42501" and "was denied by carol: pipeline" in err["M"], err
        assert [datarow_values(b) for t, b in rest if t == "D"] == [["21"]]
    finally:
        c.terminate()


def test_copy_from_stdin_held(apv, pg):
    """COPY ... FROM STDIN into a reviewed table is held before the data is asked for;
    approved, the data goes in."""
    mk = marker()
    with apv.connect("waiter") as c:
        done, err = threading.Event(), []

        def copy_in():
            try:
                with c.cursor().copy(f"COPY {PAY} (id, amount, note) FROM STDIN") as cp:
                    cp.write_row((900, 1, mk))
                    cp.write_row((901, 2, mk))
            except Exception as e:  # noqa: BLE001
                err.append(e)
            finally:
                done.set()
        th = threading.Thread(target=copy_in, daemon=True)
        th.start()
        r = apv.api.find(f"COPY {PAY}")
        assert r["rule"] == "tables", r
        time.sleep(0.3)
        assert not done.is_set()
        apv.api.approve_ok(r["id"], "carol")
        assert done.wait(20) and not err, err
    try:
        assert direct_rows(pg, f"SELECT id FROM {PAY} WHERE note = %s ORDER BY id", (mk,)) == \
            [(900,), (901,)]
    finally:
        su_exec(pg, f"DELETE FROM {PAY} WHERE id >= 900")


def test_log_lines_cannot_be_forged(apv, table):
    """Reasons, statements and names that carry newlines do not start log lines."""
    mk = marker()
    forged = f"event=forged_{SFX}"
    with apv.connect("retrier") as c:
        rid = held_error(c, f"SELECT note FROM {PAY} WHERE id = 8 AND '{mk}\n{forged} x' <> ''")["id"]
    st, j = apv.api.deny(rid, "carol", reason=f"no\n{forged} reason")
    assert st == 200
    st, g = apv.api.grant("outsider", {"user": f"scoped\n{forged}", "tables": ["public.items"],
                                       "duration": "1m", "reason": f"r\n{forged}"})
    time.sleep(0.5)
    for line in apv.gw.log_text().splitlines():
        assert not line.startswith(forged) and not re.match(r"\S*\s*" + forged, line), line


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def test_pipelining_behind_a_held_statement_is_bounded(gateway_factory, keys, objects):
    """A client that keeps sending behind a held statement must meet back-pressure (or be
    disconnected), as it does when the upstream is slow, not make the gateway buffer
    everything: 400 MiB of Query messages may not grow the gateway by 128 MiB or more."""
    ctx = start_approvals_gateway(gateway_factory, keys)
    before = rss_mib(ctx.gw.pid)
    c = ctx.raw("waiter")
    try:
        c.send(q(f"SELECT note FROM {PAY} WHERE id = 1"))
        read_until(c, lambda t, out: t == "N")
        chunk = q("SELECT '" + "y" * (1024 * 1024) + "'")
        c.sock.settimeout(5)
        sent, t0 = 0, time.monotonic()
        try:
            while sent < 400 and time.monotonic() - t0 < 60:
                c.sock.sendall(chunk)
                sent += 1
        except OSError:
            pass  # back-pressure (timeout) or the gateway closed the session
        time.sleep(1)
        grown = rss_mib(ctx.gw.pid) - before
        assert grown < 128, f"sent {sent} MiB behind a held statement; the gateway grew by {grown} MiB"
    finally:
        c.close()
    ctx.gw.assert_serves(user="alice")
