"""The web console (docs/console.md), served by the admin listener and driven in a real
browser: Debian's chromium through playwright-core (tests/node/console_check.js). Held
statements come from a real client (psycopg) and, once approved in the console, run on that
client's retry; the audit trail shown is what that client did.

Identities (API keys): agent (group agents: reads of PAY held for approval, retry mode),
approver (security-oncall, and security: an admin auditor), oncall (agents and
security-oncall: an approver held as a client), outsider (no group that matters).
Tables carry a random suffix (the PostgreSQL instance is shared)."""

import http.client
import json
import re
import secrets
import shutil
import subprocess
import time

import psycopg
import pytest

from conftest import REPO, GatewayFactory, apikey_create, free_port, require_binary, su_exec

SFX = secrets.token_hex(3)
PAY = f"con_pay_{SFX}"
NODE_DIR = REPO / "tests" / "node"
KEY_GROUPS = {"agent": ["agents"], "approver": ["security-oncall", "security"],
              "oncall": ["agents", "security-oncall"], "outsider": ["contractors"]}
# Markup and script in what a client sends: the console must show it as text, never run it.
HOSTILE = '<img src=x onerror="window.__xss=1"></script><script>window.__xss=2</script>'
HELD_ID = re.compile(r"request ([0-9a-f]{16}); ")


def browser_available():
    return shutil.which("node") and shutil.which("chromium") and \
        (NODE_DIR / "node_modules" / "playwright-core").is_dir()


@pytest.fixture(scope="module")
def console(pg, certs, tmp_path_factory):
    require_binary()
    if not browser_available():
        pytest.fail("chromium and tests/node/node_modules/playwright-core are needed: run scripts/deps.sh")
    su_exec(pg, f"CREATE TABLE {PAY} (id int PRIMARY KEY, amount numeric(10,2), memo text)",
            f"INSERT INTO {PAY} VALUES (1, 10.50, 'first'), (2, 20.25, 'second')",
            f"ALTER TABLE {PAY} OWNER TO gw_scram")
    root = tmp_path_factory.mktemp("console")
    keys = {n: apikey_create(n, g) for n, g in KEY_GROUPS.items()}
    admin_port = free_port()

    def mutate(cfg):
        cfg["api_keys"] = {n: entry for n, (_, entry) in keys.items()}
        cfg["admin"] = {"address": "127.0.0.1", "port": admin_port, "auditors": ["security"]}
        cfg["approvals"] = {"approvers": ["security-oncall"], "mode": "retry"}
        cfg["audit"] = {"store": f"sqlite:{root / 'audit.db'}"}
        cfg["policies"] = [{"name": "agents", "match": {"groups": ["agents"]},
                            "review": [{"tables": [f"public.{PAY}"]}]}]
    f = GatewayFactory(pg, certs, root)
    gw = f.start(mutate)
    yield Ctx(gw, admin_port, {n: k for n, (k, _) in keys.items()})
    f.cleanup()
    su_exec(pg, f"DROP TABLE IF EXISTS {PAY}")


class Ctx:
    def __init__(self, gw, admin_port, keys):
        self.gw, self.admin_port, self.keys = gw, admin_port, keys
        self.url = f"http://127.0.0.1:{admin_port}/"

    def connect(self, user="agent", **kw):
        return psycopg.connect(host=self.gw.host, port=self.gw.port, dbname="app", user=user,
                               password=self.keys[user], sslmode="disable", autocommit=True, **kw)

    def hold(self, sql, params=None, user="agent", **kw):
        """Runs sql as user; returns the id of the request that held it (retry mode)."""
        with self.connect(user, **kw) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                c.execute(sql, params)
        m = HELD_ID.search(str(e.value))
        assert m, str(e.value)
        return m[1]

    def http(self, method, path, key=None, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=20)
        try:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def browse(self, scenario, **args):
        r = subprocess.run(["node", "console_check.js", scenario, json.dumps({"url": self.url, **args})],
                           cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
        lines = r.stdout.strip().splitlines()
        assert lines, f"console_check.js {scenario} printed nothing: {r.stderr}"
        out = json.loads(lines[-1])
        assert out["ok"], out.get("error")
        assert out["errors"] == [], out["errors"]  # no script error, no dialog
        return out


# ---------------------------------------------------------------------------- serving

def test_console_files_served_with_a_strict_policy(console):
    """The page, its script and its style come from the binary, with headers that forbid
    inline script, framing and sniffing; nothing else outside /api/ is served."""
    for path, ctype, needle in [("/", "text/html", b"/console/app.js"), ("/index.html", "text/html", b"<main"),
                                ("/console/app.js", "text/javascript", b"textContent"),
                                ("/console/app.css", "text/css", b"font")]:
        status, h, body = console.http("GET", path)
        assert status == 200 and h["content-type"].startswith(ctype) and needle in body, (path, status, h)
        csp = h["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "no-referrer" and h["cache-control"] == "no-store"
        # The files are the repository's, byte for byte.
        src = REPO / "src" / "http" / "console" / ("index.html" if path in ("/", "/index.html") else path.split("/")[-1])
        assert body == src.read_bytes()
    status, h, body = console.http("HEAD", "/console/app.js")
    assert status == 200 and body == b"" and int(h["content-length"]) > 1000
    # The API's answers carry the same policy.
    status, h, _ = console.http("GET", "/api/whoami")
    assert status == 401 and "frame-ancestors 'none'" in h["content-security-policy"]
    assert "require-trusted-types-for 'script'" in h["content-security-policy"]
    assert "strict-transport-security" not in h  # plain HTTP here; test_admin_tls checks HTTPS
    for path in ["/console/", "/console/app.js.map", "/../src/http/console/app.js", "/console/%2e%2e/app.js",
                 "/app.js", "/favicon.ico", "/console/app.js%00.css", "/index.htm"]:
        status, _, body = console.http("GET", path)
        assert status == 404 and json.loads(body) == {"error": "unknown path"}, (path, status, body)
    status, h, body = console.http("POST", "/", body=b"x")
    assert status == 405 and h["allow"] == "GET, HEAD", (body, h)
    # Every 405 names what the path takes (RFC 9110): approve is POST only.
    status, h, body = console.http("GET", "/api/approvals/0123456789abcdef/approve", console.keys["approver"])
    assert status == 405 and h["allow"] == "POST", (body, h)
    status, h, body = console.http("PUT", "/api/whoami", console.keys["approver"])
    assert status == 405 and h["allow"] == "GET, HEAD, POST", (body, h)


def test_whoami(console):
    status, _, body = console.http("GET", "/api/whoami", console.keys["approver"])
    assert status == 200 and json.loads(body) == {"name": "approver", "groups": ["security-oncall", "security"],
                                                  "auditor": True}
    status, _, body = console.http("GET", "/api/whoami", console.keys["outsider"])
    assert status == 200 and json.loads(body)["auditor"] is False
    status, _, body = console.http("GET", "/api/whoami", "pgc_" + "A" * 43)
    assert status == 401 and json.loads(body) == {"error": "unknown API key"}
    status, h, body = console.http("POST", "/api/whoami", console.keys["approver"], body=b"{}")
    assert status == 405 and h["allow"] == "GET, HEAD"


# ---------------------------------------------------------------------------- in the browser

def test_wrong_key_is_refused_at_sign_in(console):
    out = console.browse("badKey", key="pgc_" + "B" * 43)
    assert out["error"] == "Refused: unknown API key" and out["top_hidden"] and out["stored"] == 0, out


def test_csp_blocks_inline_script(console):
    """Even script the page itself inserts inline does not run: the policy is in force."""
    out = console.browse("csp")
    assert out["xss"] is None, out
    assert any("Content Security Policy" in m or "TrustedScript" in m for m in out["console"]), out
    # Trusted Types: the browser refuses any string assigned as HTML or as script text.
    assert out["innerHTML"] == out["scriptText"] == out["handler"] == "refused: TypeError", out


def test_hidden_characters_and_null_parameters_are_shown(console):
    """A held statement whose direction overrides would make it read as "... WHERE id = 42"
    while the WHERE is inside a comment: the console shows each such character as a token
    and warns. NULL, the empty string and the text 'NULL' are three different things."""
    trojan = f"UPDATE {PAY} SET memo = %s, amount = %s /*\u202e \u2066WHERE id = 42\u2069 \u2066*/"
    rid = console.hold(trojan, ["NULL", None])
    rid2 = console.hold(f"SELECT %s::text, %s::text FROM {PAY} WHERE id = 1", ["", "zero\u200bwidth"])
    out = console.browse("inspect", key=console.keys["approver"], id=rid)
    assert out["marks"] == ["<U+202E>", "<U+2066>", "<U+2069>", "<U+2066>"], out
    assert "4 invisible or direction-changing characters" in out["warning"], out
    assert out["parameters"] == [["value", "NULL"], ["token", "NULL"]], out
    out = console.browse("inspect", key=console.keys["approver"], id=rid2)
    assert out["parameters"] == [["token", "empty"], ["value", "zero<U+200B>width"]], out
    assert "1 invisible or direction-changing character is" in out["warning"], out


def test_approve_in_console_then_the_client_runs_it(console):
    """The approver sees the held statement exactly as sent (markup in it stays text), its
    parameter, and approves it with a reason; the agent's retry then runs."""
    quoted = HOSTILE.replace('"', '""')
    sql = f"SELECT amount, '{HOSTILE}' AS \"{quoted}\" FROM {PAY} WHERE id = %s"
    rid = console.hold(sql, [1])
    rid2 = console.hold(f"SELECT memo, %s::text AS note FROM {PAY} WHERE id = 2 /* {HOSTILE} */", [HOSTILE])
    out = console.browse("approve", key=console.keys["approver"], id=rid2, reason=f"ticket SEC-1 {HOSTILE}")
    sent = f"SELECT memo, $1::text AS note FROM {PAY} WHERE id = 2 /* {HOSTILE} */"
    assert out["statement"] == sent, out
    assert out["parameters"] == [HOSTILE], out
    assert out["xss"] is None and out["images"] == 0, out
    assert HOSTILE in out["listed"] and "agent" in out["listed"], out
    assert int(out["badge"].rstrip("+")) >= 2, out
    assert "approved" in out["fields"] and "approver" in out["fields"] and f"ticket SEC-1 {HOSTILE}" in out["fields"]
    assert out["hash"] == f"#/approvals/{rid2}" and out["decide_form"] == 0, out
    # The decision is the gateway's: the client's retry runs, and the other request still waits.
    with console.connect() as c:
        assert c.execute(f"SELECT memo, %s::text AS note FROM {PAY} WHERE id = 2 /* {HOSTILE} */",
                         [HOSTILE]).fetchall() == [("second", HOSTILE)]
    status, _, body = console.http("GET", f"/api/approvals/{rid}", console.keys["approver"])
    assert status == 200 and json.loads(body)["status"] == "pending"


def test_deny_needs_a_reason(console):
    rid = console.hold(f"SELECT sum(amount) FROM {PAY}")
    out = console.browse("deny", key=console.keys["approver"], id=rid, reason="not during the freeze")
    assert out["empty"] == "A denial needs a reason.", out
    assert "denied" in out["fields"] and "not during the freeze" in out["fields"], out
    status, _, body = console.http("GET", f"/api/approvals/{rid}", console.keys["approver"])
    r = json.loads(body)
    assert (r["status"], r["decided_by"], r["decision_reason"]) == ("denied", "approver", "not during the freeze")
    # Nothing ran: the client's retry is held again, as a new request.
    assert console.hold(f"SELECT sum(amount) FROM {PAY}") != rid


def test_grant_requested_and_approved_in_console(console):
    """outsider asks for read access to PAY for 30 minutes; the approver approves it in the
    console; the Grants tab then shows it active."""
    out = console.browse("requestGrant", key=console.keys["outsider"], tables=f"public.{PAY}",
                         reason="quarterly report")
    assert "each table must be schema.table" in out["refused"], out
    rid = out["id"]
    assert out["title"].startswith("Grant request") and "quarterly report" in out["text"], out
    assert "your own request" in out["text"], out  # outsider is no approver, and it is its own
    out = console.browse("approve", key=console.keys["approver"], id=rid, reason="ok for Q4")
    assert out["statement"] is None and "approved" in out["fields"], out
    status, _, body = console.http("GET", "/api/grants", console.keys["outsider"])
    grants = [g for g in json.loads(body)["grants"] if g["id"] == rid]
    assert status == 200 and len(grants) == 1 and grants[0]["active"], body
    assert grants[0]["grant"] == {"user": "outsider", "group": None, "tables": [f"public.{PAY}"],
                                  "access": "read", "duration_s": 1800}, grants
    out = console.browse("grants", key=console.keys["outsider"], id=rid)
    assert "user outsider" in out["row"] and f"public.{PAY}" in out["row"] and "active" in out["row"], out


def test_own_request_cannot_be_decided(console):
    """oncall is an approver, but its own held statement is left to another approver."""
    rid = console.hold(f"SELECT count(*) FROM {PAY}", user="oncall")
    out = console.browse("ownRequest", key=console.keys["oncall"], id=rid)
    assert "your own request" in out["note"] and out["buttons"] == 0, out
    status, _, body = console.http("POST", f"/api/approvals/{rid}/approve", console.keys["oncall"], body=b"{}")
    assert status == 403 and "own request" in json.loads(body)["error"]


def test_auditor_reads_sessions_and_replay(console):
    """The session of a client, found by user, with its statements as recorded (the
    decision, the result rows) and the transcript; an application_name with markup stays text."""
    with console.connect(application_name=HOSTILE[:60]) as c:
        c.execute(f"SELECT 'visible-{SFX}' AS marker, 42 AS answer")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f"SELECT * FROM {PAY}")
    status, _, body = console.http("GET", "/api/sessions?user=agent&limit=1", console.keys["approver"])
    session = None
    for _ in range(100):
        status, _, body = console.http("GET", "/api/sessions?user=agent&limit=1", console.keys["approver"])
        sessions = json.loads(body)["sessions"]
        if sessions and sessions[0].get("end") and sessions[0]["application_name"] == HOSTILE[:60]:
            session = sessions[0]["session_id"]
            break
        time.sleep(0.1)
    assert session, body
    out = console.browse("sessions", key=console.keys["approver"], user="agent", session=session)
    assert out["nav"] is True, out
    assert HOSTILE[:60] in out["listed"] and "apikey" in out["listed"], out
    assert HOSTILE[:60] in out["fields"], out
    sqls = [s["sql"] for s in out["statements"]]
    assert sqls == [f"SELECT 'visible-{SFX}' AS marker, 42 AS answer", f"SELECT * FROM {PAY}"], out
    first, held = out["statements"]
    assert first["cells"] == [f"visible-{SFX}", "42"] and "allow" in first["text"], first
    assert "held for approval" in held["text"], held
    assert f"visible-{SFX}" in out["transcript"] and f"SELECT * FROM {PAY}" in out["transcript"], out
    assert out["xss"] is None and out["images"] == 0, out


def test_non_auditor_has_no_sessions(console):
    out = console.browse("notAuditor", key=console.keys["outsider"])
    assert out["nav"] is False and "admin.auditors" in out["banner"], out


def test_sign_out_forgets_the_credential(console):
    out = console.browse("signOut", key=console.keys["outsider"])
    assert out["who"] == "outsider (contractors)" and out["keptOnReload"] == 1, out
    assert out["stored"] == 0 and out["top_hidden"], out


def test_unreachable_gateway_keeps_the_credential(console):
    """Only a refusal (401) signs the console out: a reload while the API does not answer
    (the browser's request to it fails) keeps the credential and offers to try again."""
    out = console.browse("unreachable", key=console.keys["outsider"])
    assert "did not answer" in out["banner"] and out["kept"] == 1 and out["who"].startswith("outsider"), out
