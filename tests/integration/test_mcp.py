"""`pgcordon mcp`: the Model Context Protocol server on stdio (docs/mcp.md). It is a client of
the gateway's own listener, so an agent's tool calls meet the same policies, approvals,
masking and audit as psql. Driven by the official MCP TypeScript SDK's client
(tests/node/mcp_check.js) and by raw JSON-RPC lines for everything a client library would
never send.

Identities (API keys): agent (group agents: DELETE without WHERE and DROP TABLE blocked,
EMAIL masked, reads of PAY held for approval in retry mode), approver (security-oncall).
alice is unrestricted. Tables carry a random suffix (the PostgreSQL instance is shared)."""

import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import threading
import time
import http.client

import pytest

from conftest import BIN, REPO, GatewayFactory, apikey_create, free_port, require_binary, su_exec

SFX = secrets.token_hex(3)
CUST = f"mcp_cust_{SFX}"
PAY = f"mcp_pay_{SFX}"
NODE_DIR = REPO / "tests" / "node"
KEY_GROUPS = {"agent": ["agents"], "approver": ["security-oncall"], "scoped": ["scoped-agents"]}


def cli(*args, env=None, timeout=60, input=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, input=input)


@pytest.fixture(scope="module")
def objects(pg):
    su_exec(pg,
            f"CREATE TABLE {CUST} (id int PRIMARY KEY, email text NOT NULL, note text DEFAULT 'n')",
            f"INSERT INTO {CUST} SELECT g, 'person' || g || '@example.com', 'note ' || g "
            f"FROM generate_series(1, 5) g",
            f"CREATE TABLE {PAY} (id int PRIMARY KEY, amount numeric(10,2))",
            f"INSERT INTO {PAY} VALUES (1, 10.50), (2, 20.25)",
            f"ALTER TABLE {CUST} OWNER TO gw_scram", f"ALTER TABLE {PAY} OWNER TO gw_scram")
    yield
    su_exec(pg, f"DROP TABLE IF EXISTS {CUST}", f"DROP TABLE IF EXISTS {PAY}")


class Ctx:
    def __init__(self, gw, admin_port, keys, audit_db):
        self.gw, self.admin_port, self.keys, self.audit_db = gw, admin_port, keys, audit_db

    def conninfo(self, user="agent"):
        return f"host={self.gw.host} port={self.gw.port} dbname=app user={user} sslmode=disable"

    def approve(self, rid):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=20)
        try:
            conn.request("POST", f"/api/approvals/{rid}/approve", body=b"{}",
                         headers={"Authorization": f"Bearer {self.keys['approver'][0]}",
                                  "Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, (r.status, body)
        finally:
            conn.close()

    def mcp(self, user="agent", password=None, args=()):
        return McpProc(self.conninfo(user), password or self.keys[user][0], args)


@pytest.fixture(scope="module")
def mcpgw(pg, certs, objects, tmp_path_factory):
    require_binary()
    root = tmp_path_factory.mktemp("mcpgw")
    keys = {n: apikey_create(n, g) for n, g in KEY_GROUPS.items()}
    admin_port = free_port()
    db = root / "audit.db"

    def mutate(cfg):
        cfg["api_keys"] = {n: entry for n, (_, entry) in keys.items()}
        cfg["default"] = "deny"
        cfg["admin"] = {"address": "127.0.0.1", "port": admin_port}
        cfg["approvals"] = {"approvers": ["security-oncall"], "mode": "retry"}
        cfg["audit"] = {"store": f"sqlite:{db}"}
        cfg["policies"] = [
            {"name": "open", "match": {"users": ["alice"]}},
            {"name": "agents", "match": {"groups": ["agents"]},
             "block": [{"statements": ["drop_table"]}, {"delete_without_where": True}],
             "mask": [{"columns": [f"public.{CUST}.email"], "method": "email"}],
             "review": [{"tables": [f"public.{PAY}"]}]},
            {"name": "scoped", "match": {"groups": ["scoped-agents"]},
             "access": {"read_only": True, "tables": [f"public.{CUST}"]}},
        ]
    f = GatewayFactory(pg, certs, root)
    gw = f.start(mutate)
    yield Ctx(gw, admin_port, keys, db)
    f.cleanup()


class McpProc:
    """`pgcordon mcp` on stdio: send JSON-RPC lines, read responses with a timeout."""

    def __init__(self, conninfo, password, args=()):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = password
        self.p = subprocess.Popen([str(BIN), "mcp", "--connect", conninfo, *args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env)
        self.lines = queue.Queue()
        self.next_id = 100
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send_raw(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def send(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def recv(self, timeout=30):
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"pgcordon mcp ended: {self.p.stderr.read().decode()!r}"
        assert line.endswith(b"\n")
        return json.loads(line)

    def request(self, method, params=None, timeout=30):
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        r = self.recv(timeout)
        assert r.get("id") == self.next_id, r
        return r

    def call(self, tool, args, timeout=30):
        r = self.request("tools/call", {"name": tool, "arguments": args}, timeout)
        assert "result" in r, r
        res = r["result"]
        assert json.loads(res["content"][0]["text"]) == res["structuredContent"]
        return res

    def rows(self, sql, params=None):
        args = {"sql": sql} if params is None else {"sql": sql, "params": params}
        res = self.call("query", args)
        assert not res["isError"], res
        return res["structuredContent"]["rows"]

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                raise
        return self.p.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.p.poll() is None:
            self.close()
        self.p.stdout.close()
        self.p.stderr.close()


def initialize(m):
    r = m.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "pytest", "version": "1"}})
    m.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return r


# ---------------------------------------------------------------------------- the SDK client

def test_official_sdk_client_through_the_gateway(mcpgw, pg):
    """The MCP SDK's client lists the tools and calls them; the gateway's rules apply."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found on PATH (scripts/deps.sh installs it)")
    if not (NODE_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        pytest.fail(f"@modelcontextprotocol/sdk missing in {NODE_DIR} (run scripts/deps.sh)")
    calls = [
        ["query", {"sql": f"SELECT id, email, note FROM {CUST} WHERE id <= $1 ORDER BY id",
                   "params": [2]}],
        ["query", {"sql": f"DELETE FROM {CUST}"}],
        ["list_tables", {"schema": "public"}],
        ["describe_table", {"table": CUST}],
        ["query", {"sql": "SELECT g, g % 2 = 0 AS even FROM generate_series(1, 1000) g"}],
        ["query", {"sql": "SELEC 1"}],
        ["query", {"sql": f"DROP TABLE {CUST}"}],
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(MCP_BIN=str(BIN), MCP_CONNECT=mcpgw.conninfo(), MCP_PASSWORD=mcpgw.keys["agent"][0],
               MCP_CALLS=json.dumps(calls))
    r = subprocess.run([node, "mcp_check.js"], cwd=NODE_DIR, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["server"]["name"] == "pgcordon"
    assert "tools" in out["capabilities"]
    assert "policy" in out["instructions"] or "gateway" in out["instructions"]
    assert sorted(t["name"] for t in out["tools"]) == ["describe_table", "list_tables", "query"]
    assert out["ping"] == {}
    sel, delete, tables, desc, many, bad, drop = out["calls"]

    # Masking: the agent sees the email masked; ids are JSON integers.
    s = sel["structured"]
    assert not sel["isError"], sel
    assert [c["name"] for c in s["columns"]] == ["id", "email", "note"]
    assert [row[0] for row in s["rows"]] == [1, 2]
    for row in s["rows"]:
        assert row[1] != f"person{row[0]}@example.com" and row[1].endswith("@example.com"), row
        assert "*" in row[1], row
    assert s["command"] == "SELECT 2" and s["truncated"] is False

    # Blocked statements are refused with the policy named, and nothing happened.
    for refused in (delete, drop):
        assert refused["isError"], refused
        assert refused["structured"]["error"]["sqlstate"] == "42501", refused
        assert "agents" in refused["structured"]["error"]["message"], refused
    with pg.connect() as c:
        assert c.execute(f"SELECT count(*) FROM {CUST}").fetchone()[0] == 5

    names = {(row[0], row[1]) for row in tables["structured"]["rows"]}
    assert ("public", CUST) in names and ("public", PAY) in names, names
    assert desc["structured"]["rows"][:2] == [["id", "integer", False, None],
                                              ["email", "text", False, None]]
    assert desc["structured"]["rows"][2][3] == "'n'::text"

    m = many["structured"]
    assert m["truncated"] is True and m["row_count"] == 50 and len(m["rows"]) == 50
    assert m["rows"][1] == [2, True] and "max_rows 50" in m["note"]

    assert bad["isError"] and bad["structured"]["error"]["sqlstate"] == "42601", bad
    assert out["unknownTool"]["code"] == -32602, out["unknownTool"]


# ---------------------------------------------------------------------------- approvals, sessions

def test_held_statement_runs_once_approved(mcpgw):
    with mcpgw.mcp() as m:
        initialize(m)
        res = m.call("query", {"sql": f"SELECT id, amount FROM {PAY} ORDER BY id"})
        assert res["isError"], res
        err = res["structuredContent"]["error"]
        assert err["sqlstate"] == "42501", err
        rid = re.search(r"request ([0-9A-Za-z_-]{6,64});", err["message"])
        assert rid and "held for approval" in err["message"], err
        mcpgw.approve(rid[1])
        assert m.rows(f"SELECT id, amount FROM {PAY} ORDER BY id") == [[1, "10.50"], [2, "20.25"]]


def test_transaction_spans_calls_and_a_cut_result_keeps_it(mcpgw, pg):
    with mcpgw.mcp(args=("--max-rows", "10")) as m:
        assert m.call("query", {"sql": "BEGIN"})["structuredContent"] == {"command": "BEGIN"}
        res = m.call("query", {"sql": f"INSERT INTO {CUST} (id, email) VALUES ($1, $2)",
                               "params": [1000, "x@example.com"]})
        assert res["structuredContent"] == {"command": "INSERT 0 1", "rows_affected": 1}, res
        # Past max_rows inside a transaction block the rest is read and dropped, not
        # cancelled: a cancel would fail the agent's transaction.
        s = m.call("query", {"sql": "SELECT g FROM generate_series(1, 5000) g"})["structuredContent"]
        assert s["truncated"] and s["row_count"] == 10
        assert m.rows(f"SELECT count(*) FROM {CUST} WHERE id = 1000") == [[1]]
        with pg.connect() as c:
            assert c.execute(f"SELECT count(*) FROM {CUST} WHERE id = 1000").fetchone()[0] == 0
        assert m.call("query", {"sql": "ROLLBACK"})["structuredContent"]["command"] == "ROLLBACK"
        assert m.rows(f"SELECT count(*) FROM {CUST} WHERE id = 1000") == [[0]]


def test_client_cancel_stops_the_statement(mcpgw, pg):
    """A ping is answered while a call runs; notifications/cancelled for the running call
    cancels its statement through the gateway, and (as MCP asks) it gets no response."""
    with mcpgw.mcp() as m:
        initialize(m)
        m.send({"jsonrpc": "2.0", "id": "slow-1", "method": "tools/call",
                "params": {"name": "query", "arguments": {"sql": "SELECT pg_sleep(60) -- mcp-cancel"}}})
        pg.wait_active("mcp-cancel")
        m.send({"jsonrpc": "2.0", "id": "p-during", "method": "ping"})
        assert m.recv(timeout=10) == {"jsonrpc": "2.0", "id": "p-during", "result": {}}
        t0 = time.monotonic()
        m.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": "slow-1", "reason": "user pressed stop"}})
        m.send({"jsonrpc": "2.0", "id": "p-after", "method": "ping"})
        assert m.recv(timeout=20) == {"jsonrpc": "2.0", "id": "p-after", "result": {}}
        assert time.monotonic() - t0 < 15
        with pg.super_connect() as c:
            assert c.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                             "AND query LIKE '%mcp-cancel%' AND pid <> pg_backend_pid()").fetchone()[0] == 0
        # A cancellation of a call already done changes nothing.
        m.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "slow-1"}})
        assert m.rows("SELECT 41 + 1") == [[42]]


def test_cancel_of_a_queued_request_and_a_flood_of_lines(mcpgw, pg):
    """A request cancelled while it waits behind another never runs; 2 MiB of empty lines
    sent during a call are taken in linear time."""
    with mcpgw.mcp() as m:
        m.send({"jsonrpc": "2.0", "id": "a", "method": "tools/call",
                "params": {"name": "query", "arguments": {"sql": "SELECT pg_sleep(1.5) -- mcp-queued"}}})
        pg.wait_active("mcp-queued")
        m.send({"jsonrpc": "2.0", "id": "b", "method": "tools/call",
                "params": {"name": "query", "arguments": {"sql": f"UPDATE {CUST} SET note = 'b' WHERE id = 1"}}})
        m.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "b"}})
        m.send_raw(b"\n" * (2 << 20))
        m.send({"jsonrpc": "2.0", "id": "during", "method": "ping"})
        got = {r["id"]: r for r in (m.recv(timeout=20), m.recv(timeout=20))}
        assert got["during"]["result"] == {} and not got["a"]["result"]["isError"], got
        m.send({"jsonrpc": "2.0", "id": "last", "method": "ping"})
        assert m.recv(timeout=20) == {"jsonrpc": "2.0", "id": "last", "result": {}}
        with pg.connect() as c:
            assert c.execute(f"SELECT note FROM {CUST} WHERE id = 1").fetchone()[0] == "note 1"


def test_notifications_are_returned_and_not_hoarded(mcpgw, pg):
    with mcpgw.mcp() as m:
        m.call("query", {"sql": "LISTEN mcp_chan"})
        res = m.call("query", {"sql": "SELECT count(pg_notify('mcp_chan', 'n' || g)) FROM generate_series(1, 200) g"})
        notes = res["structuredContent"]["notices"]
        assert len(notes) == 33 and notes[0] == {"severity": "NOTIFICATION", "channel": "mcp_chan",
                                                 "message": "n1"}, notes[:2]
        assert "dropped" in notes[-1]["message"]
        assert "notices" not in m.call("query", {"sql": "SELECT 1"})["structuredContent"]


def test_a_cut_result_says_whether_the_statement_ran_to_its_end(mcpgw):
    with mcpgw.mcp(args=("--max-rows", "10")) as m:
        s = m.call("query", {"sql": "SELECT g FROM generate_series(1, 20) g"})["structuredContent"]
        assert s["truncated"] and s["command"] == "SELECT 20" and "ran to its end" in s["note"], s
        s = m.call("query", {"sql": "SELECT set_config('mcp.last', g::text, false) "
                                    "FROM generate_series(1, 5000000) g"})["structuredContent"]
        assert s.get("truncated") and s.get("cancelled") is True and "rolled back" in s["note"], s
        assert "command" not in s
        assert m.rows("SELECT current_setting('mcp.last', true)") in ([[None]], [[""]])


def test_non_blocking_stdin_is_waited_on(mcpgw):
    r, w = os.pipe()
    os.set_blocking(r, False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = mcpgw.keys["agent"][0]
    p = subprocess.Popen([str(BIN), "mcp", "--connect", mcpgw.conninfo()], stdin=r,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.close(r)
    try:
        time.sleep(0.5)
        assert p.poll() is None, "pgcordon mcp ended on a non-blocking stdin with nothing to read"
        os.write(w, b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        os.close(w)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert json.loads(out) == {"jsonrpc": "2.0", "id": 1, "result": {}}


def terminate(pg, marker):
    with pg.super_connect() as c:
        n = c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                      "WHERE application_name = 'pgcordon-mcp' AND query LIKE %s",
                      (f"%{marker}%",)).fetchone()[0]
    assert n == 1


def test_ended_session_is_opened_again(mcpgw, pg):
    """Idle: the next call runs in a new session, with a notice. In a transaction: the next
    call says the transaction is gone, and the one after runs; also when the session ends
    during a call, which must not let the next statement run in autocommit."""
    with mcpgw.mcp() as m:
        assert m.rows("SELECT 'mcp-lost-1' AS tag") == [["mcp-lost-1"]]
        terminate(pg, "mcp-lost-1")
        time.sleep(0.5)
        res = m.call("query", {"sql": "SELECT 2"})
        assert not res["isError"] and res["structuredContent"]["rows"] == [[2]], res
        notes = [n["message"] for n in res["structuredContent"]["notices"]]
        assert any("had ended" in n for n in notes), res

        m.call("query", {"sql": "BEGIN"})
        assert m.rows("SELECT 'mcp-lost-2' AS tag") == [["mcp-lost-2"]]
        terminate(pg, "mcp-lost-2")
        time.sleep(0.5)
        res = m.call("query", {"sql": "SELECT 3"})
        assert res["isError"] and "transaction" in res["structuredContent"]["error"]["message"], res
        assert m.rows("SELECT 4") == [[4]]

        m.call("query", {"sql": "BEGIN"})
        m.send({"jsonrpc": "2.0", "id": "dies", "method": "tools/call",
                "params": {"name": "query", "arguments": {"sql": "SELECT pg_sleep(30) -- mcp-lost-3"}}})
        pg.wait_active("mcp-lost-3")
        terminate(pg, "mcp-lost-3")
        r = m.recv(timeout=20)
        assert r["id"] == "dies" and r["result"]["isError"], r
        res = m.call("query", {"sql": f"UPDATE {CUST} SET note = 'autocommitted' WHERE id = 2"})
        assert res["isError"] and "transaction" in res["structuredContent"]["error"]["message"], res
        with pg.connect() as c:
            assert c.execute(f"SELECT note FROM {CUST} WHERE id = 2").fetchone()[0] == "note 2"
        assert m.rows("SELECT 5") == [[5]]


def test_recorded_in_the_audit_trail(mcpgw):
    marker = f"mcp-audit-{secrets.token_hex(4)}"
    with mcpgw.mcp() as m:
        assert m.rows(f"SELECT $1::text AS marker -- {marker}", [marker]) == [[marker]]
    assert m.p.returncode == 0

    def records():
        r = cli("audit", "export", "--config", str(mcpgw.gw.config_path))
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    deadline = time.monotonic() + 10
    while True:
        recs = records()
        stmt = [x for x in recs if x["kind"] == "statement" and marker in json.dumps(x)]
        if stmt or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(stmt) == 1, stmt
    sid = stmt[0]["session_id"]
    start = [x for x in recs if x["kind"] == "session_start" and x["session_id"] == sid]
    assert len(start) == 1
    body = start[0]["record"]
    assert body["application_name"] == "pgcordon-mcp" and body["subject"] == "agent", body
    assert body["auth_method"] == "apikey" and body["groups"] == ["agents"], body
    rec = stmt[0]["record"]
    assert rec["decision"]["action"] == "allow" and len(rec["params"]) == 1, rec
    assert rec["result"]["rows"] == [[marker]], rec


# ---------------------------------------------------------------------------- hostile input

def test_malformed_messages_get_json_rpc_errors(mcpgw):
    cases = [
        (b"garbage", None, -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"', None, -32700),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', None, -32600),
        (b'"just a string"', None, -32600),
        (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', None, -32600),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', None, -32600),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', None, -32600),
        (b'{"jsonrpc":"1.0","id":7,"method":"ping"}', 7, -32600),
        (b'{"id":8,"method":"ping"}', 8, -32600),
        (b'{"jsonrpc":"2.0","id":9,"method":5}', 9, -32600),
        (b'{"jsonrpc":"2.0","id":10,"method":"ping","params":[1]}', 10, -32602),
        (b'{"jsonrpc":"2.0","id":11,"method":"ping","id":12}', None, -32700),
        (b'{"jsonrpc":"2.0","id":13,"method":"resources/list"}', 13, -32601),
        (b'{"jsonrpc":"2.0","id":14,"method":"tools/call","params":{"name":5}}', 14, -32602),
        (b'{"jsonrpc":"2.0","id":15,"method":"tools/call"}', 15, -32602),
        (b'{"jsonrpc":"2.0","id":16,"method":"tools/call","params":{"name":"drop_everything"}}', 16, -32602),
        (('{"jsonrpc":"2.0","id":18,"method":"tools/call","params":{"name":"a' + "\u00e9" * 60 + '"}}').encode(),
         18, -32602),
        (b'{"jsonrpc":"2.0","id":19,"method":"ping\\u0000x"}', 19, -32600),
        (b'{"jsonrpc":"2.0","id":17,"method":"ping","x":"\xff\xfe"}', None, -32700),
    ]
    with mcpgw.mcp() as m:
        initialize(m)
        for raw, want_id, code in cases:
            m.send_raw(raw + b"\n")
            r = m.recv()
            assert r.get("jsonrpc") == "2.0" and r["id"] == want_id, (raw, r)
            assert r["error"]["code"] == code and r["error"]["message"], (raw, r)
        # Nothing to answer: a notification, a response, a blank line. The next answer is the ping's.
        m.send_raw(b'{"jsonrpc":"2.0","method":"notifications/whatever"}\n'
                   b'{"jsonrpc":"2.0","id":5,"result":{}}\n\n   \n'
                   b'{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"x"}}\n'
                   b'{"jsonrpc":"2.0","id":"p1","method":"ping"}\r\n')
        assert m.recv() == {"jsonrpc": "2.0", "id": "p1", "result": {}}
        # A message over 4 MiB is refused without being held whole; the next one is served.
        m.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"ping","x":"' + b"a" * (5 << 20) + b'"}\n')
        r = m.recv()
        assert r["id"] is None and r["error"]["code"] == -32700 and "4 MiB" in r["error"]["message"], r
        assert m.request("ping")["result"] == {}
        assert m.rows("SELECT 'still serving'") == [["still serving"]]
    assert m.p.returncode == 0


def test_bad_tool_arguments_are_tool_errors(mcpgw):
    bad = [
        ("query", None, "sql"),
        ("query", {}, "sql"),
        ("query", {"sql": 5}, "sql"),
        ("query", {"sql": ""}, "sql"),
        ("query", {"sql": "SELECT 1\u0000; DROP TABLE x"}, "NUL"),
        ("query", {"sql": "SELECT $1", "params": "x"}, "params"),
        ("query", {"sql": "SELECT $1", "params": ["a\u0000b"]}, "NUL"),
        ("query", {"sql": "SELECT 1", "params": list(range(1001))}, "parameters"),
        ("list_tables", {"schema": 5}, "schema"),
        ("describe_table", {}, "table"),
        ("describe_table", {"table": "no_such_table_x"}, "no table"),
        ("describe_table", {"table": "1 bad name"}, ""),
    ]
    with mcpgw.mcp() as m:
        for tool, args, words in bad:
            params = {"name": tool} if args is None else {"name": tool, "arguments": args}
            r = m.request("tools/call", params)
            res = r["result"]
            assert res["isError"], (tool, args, res)
            assert words in res["structuredContent"]["error"]["message"], (tool, args, res)
        r = m.request("tools/call", {"name": "query", "arguments": [1]})
        assert r["result"]["isError"] and "object" in r["result"]["content"][0]["text"], r
        # Parameters of every JSON type.
        assert m.rows("SELECT $1::int + 1, $2::bool, $3::text IS NULL, $4::jsonb ->> 'a', $5::numeric",
                      [41, True, None, {"a": "b"}, 1.5]) == [[42, True, True, "b", "1.5"]]


def test_wrong_credential_is_a_tool_error_and_never_echoed(mcpgw):
    wrong = "pgc_" + "W" * 43
    with mcpgw.mcp(password=wrong) as m:
        res = m.call("query", {"sql": "SELECT 1"})
        assert res["isError"], res
        text = res["content"][0]["text"]
        assert res["structuredContent"]["error"]["sqlstate"] == "08006", res
        assert "cannot connect to the gateway" in text and wrong not in text, text
        assert m.request("ping")["result"] == {}
        assert m.close() == 0
        assert wrong not in m.p.stderr.read().decode()


def test_command_line_refuses_what_it_cannot_use(mcpgw):
    ok = mcpgw.conninfo()
    for args, words in [
        ([], "usage"),
        (["--connect"], "usage"),
        (["--connect", ok + " password=secret-on-the-command-line"], "PGPASSWORD"),
        (["--connect", "postgresql://agent:secret@127.0.0.1:1/app"], "PGPASSWORD"),
        (["--connect", "host='unterminated"], "--connect"),
        (["--connect", ok, "--max-rows", "0"], "--max-rows"),
        (["--connect", ok, "--max-bytes", "12x"], "--max-bytes"),
        (["--connect", ok, "--frob", "1"], "--frob"),
    ]:
        r = cli("mcp", *args, input="")
        assert r.returncode == 2, (args, r)
        assert words in r.stderr and "secret" not in r.stderr, (args, r.stderr)
        assert r.stdout == "", (args, r.stdout)
    r = cli("mcp", "--help")
    assert r.returncode == 0 and "PGPASSWORD" in r.stderr


def test_table_scope_applies_to_the_tools(mcpgw):
    """A table scope holds for every tool: the catalog tables that list_tables and
    describe_table read are outside it too (docs/mcp.md), and the refusal says so."""
    with mcpgw.mcp("scoped") as m:
        assert m.rows(f"SELECT count(*) FROM {CUST}") == [[5]]
        for sql in (f"SELECT * FROM {PAY}", f"UPDATE {CUST} SET note = 'x' WHERE id = 1"):
            res = m.call("query", {"sql": sql})
            assert res["isError"] and res["structuredContent"]["error"]["sqlstate"] == "42501", res
        for tool, args, table in (("list_tables", {}, "pg_catalog.pg_class"),
                                  ("describe_table", {"table": CUST}, "pg_catalog.pg_attribute")):
            err = m.call(tool, args)["structuredContent"]["error"]
            assert err["sqlstate"] == "42501" and table in err["message"], err
            assert "outside the caller's scope" in err["message"], err
        # What a scoped agent can do instead: the columns of a table in its scope.
        res = m.call("query", {"sql": f"SELECT * FROM {CUST} LIMIT 0"})["structuredContent"]
        assert [c["name"] for c in res["columns"]] == ["id", "email", "note"] and res["rows"] == []
