"""MCP over HTTP: POST /mcp on the admin listener with admin.mcp (docs/mcp.md, "Over HTTP").
Each MCP session logs in to the gateway's own listener as the caller, with the caller's
credential, so the policies, approvals, masking and audit of psql apply. Driven by the
official MCP TypeScript SDK's client over Streamable HTTP (tests/node/mcp_http_check.js) and
by raw HTTP for what a client library would never send.

Identities (API keys): agent (group agents: DROP TABLE blocked, EMAIL masked, reads of PAY
held for approval in wait mode), approver (security-oncall), stranger (no policy)."""

import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time

import pytest

from conftest import REPO, GatewayFactory, apikey_create, free_port, require_binary, su_exec

SFX = secrets.token_hex(3)
CUST = f"mh_cust_{SFX}"
PAY = f"mh_pay_{SFX}"
NODE_DIR = REPO / "tests" / "node"
KEY_GROUPS = {"agent": ["agents"], "approver": ["security-oncall"], "stranger": ["strangers"]}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "1"}}}


@pytest.fixture(scope="module")
def mh(pg, certs, tmp_path_factory):
    require_binary()
    su_exec(pg, f"CREATE TABLE {CUST} (id int PRIMARY KEY, email text NOT NULL)",
            f"INSERT INTO {CUST} SELECT g, 'person' || g || '@example.com' FROM generate_series(1, 3) g",
            f"CREATE TABLE {PAY} (id int PRIMARY KEY, amount numeric(10,2))",
            f"INSERT INTO {PAY} VALUES (1, 10.50)",
            f"ALTER TABLE {CUST} OWNER TO gw_scram", f"ALTER TABLE {PAY} OWNER TO gw_scram")
    root = tmp_path_factory.mktemp("mcphttp")
    keys = {n: apikey_create(n, g) for n, g in KEY_GROUPS.items()}
    admin_port = free_port()

    def mutate(cfg):
        cfg["api_keys"] = {n: entry for n, (_, entry) in keys.items()}
        cfg["default"] = "deny"
        cfg["admin"] = {"address": "127.0.0.1", "port": admin_port, "mcp": True}
        cfg["approvals"] = {"approvers": ["security-oncall"], "mode": "wait", "wait": "60s"}
        cfg["policies"] = [
            {"name": "open", "match": {"users": ["alice"]}},
            {"name": "agents", "match": {"groups": ["agents"]},
             "block": [{"statements": ["drop_table"]}],
             "mask": [{"columns": [f"public.{CUST}.email"], "method": "email"}],
             "review": [{"tables": [f"public.{PAY}"]}]},
        ]
    f = GatewayFactory(pg, certs, root)
    gw = f.start(mutate)
    yield Ctx(gw, admin_port, {n: k for n, (k, _) in keys.items()})
    f.cleanup()
    su_exec(pg, f"DROP TABLE IF EXISTS {CUST}", f"DROP TABLE IF EXISTS {PAY}")


class Ctx:
    def __init__(self, gw, admin_port, keys):
        self.gw, self.admin_port, self.keys = gw, admin_port, keys
        self.url = f"http://127.0.0.1:{admin_port}/mcp?database=app"

    def http(self, method, path="/mcp?database=app", key="agent", body=None, headers=None, timeout=30):
        """(status, headers, parsed JSON or raw text or None)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
            if key:
                h["Authorization"] = f"Bearer {self.keys.get(key, key)}"
            h.update(headers or {})
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            raw = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw
            return r.status, hdrs, parsed
        finally:
            conn.close()

    def session(self, key="agent"):
        status, h, body = self.http("POST", key=key, body=INIT)
        assert status == 200 and body["result"]["serverInfo"]["name"] == "pgcordon", (status, body)
        sid = h["mcp-session-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", sid)
        status, _, body = self.http("POST", key=key, body={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                    headers={"Mcp-Session-Id": sid})
        assert status == 202 and body is None
        return sid

    def call(self, sid, rid, tool, args, key="agent", timeout=30):
        return self.http("POST", key=key, headers={"Mcp-Session-Id": sid}, timeout=timeout,
                         body={"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                               "params": {"name": tool, "arguments": args}})


def node_available():
    return shutil.which("node") and (NODE_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir()


def test_sdk_client_over_http(mh):
    """The SDK's Streamable HTTP client: initialize, tools, a masked read, a blocked DROP, a
    session that runs as the caller through the gateway, and DELETE at the end."""
    if not node_available():
        pytest.fail("node and tests/node/node_modules/@modelcontextprotocol/sdk are needed: run scripts/deps.sh")
    calls = [["query", {"sql": f"SELECT id, email FROM {CUST} ORDER BY id"}],
             ["query", {"sql": f"DROP TABLE {CUST}"}],
             ["query", {"sql": "SELECT current_user, current_setting('application_name') AS app"}],
             ["list_tables", {}]]
    env = dict(os.environ, MCP_URL=mh.url, MCP_KEY=mh.keys["agent"], MCP_CALLS=json.dumps(calls))
    r = subprocess.run(["node", "mcp_http_check.js"], cwd=NODE_DIR, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["server"]["name"] == "pgcordon" and re.fullmatch(r"[0-9a-f]{32}", out["sessionId"])
    assert sorted(t["name"] for t in out["tools"]) == ["describe_table", "list_tables", "query"]
    masked, dropped, who, tables = out["calls"]
    assert not masked["isError"] and masked["structured"]["row_count"] == 3
    assert all("@example.com" in row[1] and not row[1].startswith("person") for row in masked["structured"]["rows"])
    assert dropped["isError"] and "blocked by policy agents" in dropped["text"]
    assert who["structured"]["rows"][0][1] == "pgcordon-mcp-http"
    assert any(CUST in json.dumps(t) for t in tables["structured"]["rows"])
    assert out["unknownTool"]["code"] == -32602 and out["terminated"] is True
    assert "auth_ok" in mh.gw.log_text() and re.search(r"event=mcp_session_closed id=" + out["sessionId"][:8],
                                                       mh.gw.log_text())


def test_refusals(mh):
    """Each malformed or unauthorized request gets its own clear answer; none opens a
    session or touches another identity's."""
    assert mh.http("POST", key=None, body=INIT)[0] == 401
    assert mh.http("POST", key="pgc_" + "C" * 43, body=INIT)[0] == 401
    status, h, _ = mh.http("GET")
    assert status == 405 and h["allow"] == "POST, DELETE"
    status, _, body = mh.http("POST", body=INIT, headers={"Origin": "http://evil.example"})
    assert status == 403 and "browsers" in body["error"]
    status, _, body = mh.http("POST", body={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert status == 400 and body["error"]["code"] == -32600 and body["id"] == 2
    status, _, body = mh.http("POST", body=b"{not json")
    assert status == 400 and body["error"]["code"] == -32700
    status, _, body = mh.http("POST", path="/mcp", body=INIT)  # three databases: which one?
    assert status == 400 and "database" in body["error"]["message"]
    status, _, body = mh.http("POST", path="/mcp?database=nope", body=INIT)
    assert status == 400 and "no such database" in body["error"]["message"]
    status, _, body = mh.http("POST", body=INIT, headers={"Mcp-Session-Id": "0" * 32})
    assert status == 404 and body["error"]["code"] == -32001
    status, _, body = mh.http("POST", body=b"[" + b" " * (4 << 20) + b"]")
    assert status == 413 and body["error"]["code"] == -32700
    sid = mh.session()
    # The session is the agent's credential's: another identity's request finds nothing.
    status, _, _ = mh.http("POST", key="approver", headers={"Mcp-Session-Id": sid},
                           body={"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert status == 404
    assert mh.http("DELETE", key="approver", headers={"Mcp-Session-Id": sid})[0] == 404
    # Within the session: malformed messages are said so, never taken as notifications.
    for bad, code in [(b"{not json", -32700), (b"[]", -32600), (b'{"jsonrpc": "2.0", "id": null, "method": "ping"}',
                                                               -32600)]:
        status, _, body = mh.http("POST", headers={"Mcp-Session-Id": sid}, body=bad)
        assert status == 400 and body["error"]["code"] == code, (bad, status, body)
    status, _, body = mh.http("POST", headers={"Mcp-Session-Id": sid},
                              body={"jsonrpc": "2.0", "id": 6, "method": "resources/list"})
    assert status == 200 and body["error"]["code"] == -32601
    assert mh.http("DELETE")[0] == 400
    status, _, body = mh.http("POST", headers={"Mcp-Session-Id": sid},
                              body={"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
    assert status == 200 and len(body["result"]["tools"]) == 3
    assert mh.http("DELETE", headers={"Mcp-Session-Id": sid})[0] == 204
    assert mh.http("POST", headers={"Mcp-Session-Id": sid},
                   body={"jsonrpc": "2.0", "id": 5, "method": "tools/list"})[0] == 404
    mh.gw.assert_serves()


def test_identity_without_policy_is_refused_by_the_gateway(mh):
    """An MCP session is an ordinary login: an identity no policy lets in gets the gateway's
    refusal as the tool's error."""
    sid = mh.session("stranger")
    status, _, body = mh.call(sid, 7, "query", {"sql": "SELECT 1"}, key="stranger")
    assert status == 200 and body["result"]["isError"], body
    assert "no policy grants" in body["result"]["content"][0]["text"]
    mh.http("DELETE", key="stranger", headers={"Mcp-Session-Id": sid})


def test_held_call_can_be_cancelled(mh):
    """A read of PAY waits for approval. While it waits, a ping on the same session is
    answered and a second call is refused as busy; notifications/cancelled ends the wait
    (the request is cancelled, the call gets no response), and the session goes on."""
    sid = mh.session()
    result = {}

    def held():
        result["answer"] = mh.call(sid, "held-1", "query", {"sql": f"SELECT amount FROM {PAY}"}, timeout=60)

    t = threading.Thread(target=held)
    t.start()
    deadline = time.monotonic() + 15
    while "event=statement_held" not in mh.gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "event=statement_held" in mh.gw.log_text()
    status, _, body = mh.http("POST", headers={"Mcp-Session-Id": sid},
                              body={"jsonrpc": "2.0", "id": "p", "method": "ping"})
    assert status == 200 and body == {"jsonrpc": "2.0", "id": "p", "result": {}}
    status, _, body = mh.call(sid, 9, "query", {"sql": "SELECT 1"})
    assert status == 409 and "already running" in body["error"]["message"]
    status, _, _ = mh.http("POST", headers={"Mcp-Session-Id": sid},
                           body={"jsonrpc": "2.0", "method": "notifications/cancelled",
                                 "params": {"requestId": "held-1", "reason": "changed my mind"}})
    assert status == 202
    t.join(30)
    assert not t.is_alive()
    assert result["answer"][0] == 202 and result["answer"][2] is None, result
    status, _, body = mh.http("GET", path="/api/approvals?status=all", key="approver")
    assert status == 200
    assert [r["status"] for r in body["approvals"] if PAY in r["statement"]] == ["cancelled"], body
    status, _, body = mh.call(sid, 10, "query", {"sql": "SELECT 41 + 1 AS n"})
    assert status == 200 and body["result"]["structuredContent"]["rows"] == [[42]], body
    mh.http("DELETE", headers={"Mcp-Session-Id": sid})


def test_off_without_admin_mcp(gateway_factory):
    """Without admin.mcp the path does not exist; the rest of the API is unchanged."""
    _, port, key = gateway_factory.start_with_admin_key("agent", ["agents"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/mcp?database=app", body=json.dumps(INIT),
                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 404 and "admin.mcp" in json.loads(r.read())["error"]
    conn.close()


def test_stop_does_not_wait_for_a_held_call(pg, gateway_factory):
    """SIGTERM while an MCP call waits for approval (10 minutes by default): the call is
    cancelled and the gateway stops in seconds, with status 0."""
    su_exec(pg, f"CREATE TABLE IF NOT EXISTS {PAY}_stop (id int)", f"ALTER TABLE {PAY}_stop OWNER TO gw_scram")
    key, entry = apikey_create("agent", ["agents"])
    port = free_port()

    def mutate(cfg):
        cfg["api_keys"] = {"agent": entry}
        cfg["admin"] = {"address": "127.0.0.1", "port": port, "mcp": True}
        cfg["approvals"] = {"approvers": ["security-oncall"], "mode": "wait"}
        cfg["policies"] = [{"name": "agents", "match": {"groups": ["agents"]},
                            "review": [{"tables": [f"public.{PAY}_stop"]}]}]
    try:
        gw = gateway_factory.start(mutate)
        ctx = Ctx(gw, port, {"agent": key})
        sid = ctx.session()
        seen = {}

        def held():
            try:
                seen["answer"] = ctx.call(sid, 1, "query", {"sql": f"SELECT * FROM {PAY}_stop"}, timeout=120)
            except (OSError, http.client.HTTPException) as e:
                seen["error"] = e  # the listener went away with the gateway

        t = threading.Thread(target=held)
        t.start()
        deadline = time.monotonic() + 15
        while "event=statement_held" not in gw.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "event=statement_held" in gw.log_text()
        started = time.monotonic()
        assert gw.stop(timeout=30) == 0
        assert time.monotonic() - started < 20
        t.join(10)
        assert not t.is_alive() and seen, seen
    finally:
        su_exec(pg, f"DROP TABLE IF EXISTS {PAY}_stop")
