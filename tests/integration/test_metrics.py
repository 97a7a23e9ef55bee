"""GET /metrics on the admin listener (docs/operations.md, "Metrics"): the Prometheus text
format, behind an admin credential, with counters that follow what real clients (psycopg)
do through the gateway: logins, decisions, row limits, masking, approvals, upstream
failures, reloads and the audit trail. Every check compares two scrapes, so the counters
must move by exactly what the test did.

Identities: alice and bob (local SCRAM users, group testers), nobody (SCRAM, a group no
policy matches), and API keys scraper (monitoring), agent (agents: reads of PAY held for
approval in wait mode) and approver (security-oncall)."""

import http.client
import re
import subprocess
import secrets
import threading
import time

import psycopg
import pytest

from conftest import BIN, GatewayFactory, apikey_create, free_port, require_binary, scram_verifier, su_exec

SFX = secrets.token_hex(3)
PAY = f"met_pay_{SFX}"
NOBODY_PW = "Nobody-" + secrets.token_hex(6)
KEY_GROUPS = {"scraper": ["monitoring"], "agent": ["agents"], "approver": ["security-oncall"]}
MAX_ROWS = 3
# A marker for SQL text and a table name: neither may ever reach the exposition.
MARKER = f"secret_marker_{SFX}"

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*",?)*)\})? (\d+(?:\.\d+)?)$')
DURATIONS = ["pgcordon_statement_duration_seconds", "pgcordon_upstream_login_duration_seconds",
             "pgcordon_approval_wait_duration_seconds"]


@pytest.fixture(scope="module")
def mx(pg, certs, tmp_path_factory):
    require_binary()
    su_exec(pg, f"CREATE TABLE {PAY} (id int PRIMARY KEY, memo text)",
            f"INSERT INTO {PAY} VALUES (1, 'one')", f"ALTER TABLE {PAY} OWNER TO gw_scram")
    root = tmp_path_factory.mktemp("metrics")
    keys = {n: apikey_create(n, g) for n, g in KEY_GROUPS.items()}
    admin_port = free_port()
    down_port = free_port()

    def mutate(cfg):
        cfg["users"]["nobody"] = {"password": scram_verifier(NOBODY_PW), "groups": ["strangers"]}
        cfg["api_keys"] = {n: entry for n, (_, entry) in keys.items()}
        cfg["databases"]["down"] = dict(cfg["databases"]["app"], port=down_port)
        cfg["admin"] = {"address": "127.0.0.1", "port": admin_port, "auditors": ["security"]}
        cfg["approvals"] = {"approvers": ["security-oncall"], "mode": "wait", "wait": "60s"}
        cfg["audit"] = {"store": f"sqlite:{root / 'audit.db'}"}
        cfg["default"] = "deny"
        cfg["policies"] = [
            {"name": "testers", "match": {"groups": ["testers"]},
             "block": [{"statements": ["drop_table"]}], "limits": {"max_rows": MAX_ROWS},
             "mask": [{"detect": ["email"], "method": "redact"}]},
            {"name": "agents", "match": {"groups": ["agents"]}, "review": [{"tables": [f"public.{PAY}"]}]},
        ]
    f = GatewayFactory(pg, certs, root)
    gw = f.start(mutate)
    yield Ctx(gw, admin_port, {n: k for n, (k, _) in keys.items()})
    f.cleanup()
    su_exec(pg, f"DROP TABLE IF EXISTS {PAY}")


def http_get(port, path, key=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {key}"} if key else {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        conn.close()


def parse(text):
    """The samples of a Prometheus text exposition, checked line by line: {(name, labels): value}.
    A histogram's buckets must not decrease and must end in +Inf, equal to its _count."""
    types, samples = {}, {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            assert NAME.match(name) and help_text, line
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in types, line
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m[1], m[3] or "", m[4]
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            if types.get(family) == "histogram":
                assert family != name, line
                assert name.endswith("_sum") or "." not in value, line
                assert name.endswith("_bucket") == labels.startswith("le="), line
            else:
                assert name in types, f"{name} has no TYPE line before it"
                assert "." not in value, line
            assert not (types.get(name) == "counter") or name.endswith("_total"), name
            key = (name, labels)
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = float(value) if "." in value else int(value)
    for family in (f for f, kind in types.items() if kind == "histogram"):
        buckets = [(k[1], v) for k, v in samples.items() if k[0] == family + "_bucket"]
        assert buckets and buckets[-1][0] == 'le="+Inf"', family
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
        assert buckets[-1][1] == samples[(family + "_count", "")] and (family + "_sum", "") in samples
    return samples


class Ctx:
    def __init__(self, gw, admin_port, keys):
        self.gw, self.admin_port, self.keys = gw, admin_port, keys

    def scrape(self):
        status, h, body = http_get(self.admin_port, "/metrics", self.keys["scraper"])
        assert status == 200, body
        assert h["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        self.last_text = body
        return parse(body)

    def connect(self, user="alice", **kw):
        return self.gw.connect(user=user, **kw)

    def key_connect(self, name, **kw):
        return psycopg.connect(host=self.gw.host, port=self.gw.port, dbname="app", user=name,
                               password=self.keys[name], sslmode="disable", autocommit=True, **kw)


def delta(before, after, name, labels=""):
    return after.get((name, labels), 0) - before.get((name, labels), 0)


def wait_for(ctx, check, timeout=10):
    """Scrapes until check(samples) holds; returns the samples."""
    deadline = time.monotonic() + timeout
    while True:
        s = ctx.scrape()
        if check(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.1)


LOGINS = "pgcordon_logins_total"


def test_metrics_need_an_admin_credential(mx):
    """Without a credential, or with a wrong one, /metrics is a 401 with a Bearer challenge,
    and each refusal is counted; a POST is a 405."""
    before = mx.scrape()
    status, h, body = http_get(mx.admin_port, "/metrics")
    assert status == 401 and h["www-authenticate"] == "Bearer" and "Bearer" in body
    status, _, body = http_get(mx.admin_port, "/metrics", "pgc_" + "A" * 43)
    assert status == 401 and "unknown API key" in body
    status, h, _ = http_get(mx.admin_port, "/metrics", mx.keys["scraper"], method="POST")
    assert status == 405 and h["allow"] == "GET, HEAD"
    after = mx.scrape()
    assert delta(before, after, "pgcordon_admin_auth_failures_total") == 2


def test_exposition_is_well_formed_and_says_no_names(mx):
    """Every line parses; the gauges read now are there; and nothing the clients sent (user
    names, table names, SQL) is in it."""
    with mx.connect() as c:
        psycopg.ClientCursor(c).execute(f"SELECT 1 AS {MARKER}")
    s = mx.scrape()
    for name in ["pgcordon_client_connections", "pgcordon_start_time_seconds", "pgcordon_audit_enabled",
                 "pgcordon_audit_store_up", "pgcordon_audit_strict", "pgcordon_audit_pending_bytes",
                 "pgcordon_audit_head_seq", "pgcordon_audit_events_dropped_total",
                 "pgcordon_sessions_waiting_for_approval", "pgcordon_client_connections_total"]:
        assert (name, "") in s, name
    assert s[("pgcordon_audit_enabled", "")] == 1 and s[("pgcordon_audit_store_up", "")] == 1
    assert s[("pgcordon_audit_strict", "")] == 0 and s[("pgcordon_audit_events_dropped_total", "")] == 0
    assert abs(s[("pgcordon_start_time_seconds", "")] - time.time()) < 3600
    version = subprocess.run([str(BIN), "--version"], capture_output=True, text=True).stdout
    m = re.fullmatch(r"pgcordon (\S+) \(commit (\S+)\)\n", version)
    assert m and s[("pgcordon_build_info", f'version="{m[1]}",commit="{m[2]}"')] == 1, version
    assert ("pgcordon_approval_requests_in_memory", "") in s and ("pgcordon_approval_memory_bytes", "") in s
    for name in DURATIONS:
        assert (name + "_count", "") in s and (name + "_bucket", 'le="+Inf"') in s, name
    text = mx.last_text
    for word in ["alice", "nobody", "scraper", "testers", "gwtest", PAY, MARKER]:
        assert word not in text, word


def test_logins_and_connections(mx):
    """A good and a bad SCRAM password, a bad API key, a good one, and a login no policy
    lets in each move their own counter by one; an open connection shows in the gauge."""
    before = mx.scrape()
    with pytest.raises(psycopg.OperationalError):
        mx.connect("bob", password="wrong").close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(mx.gw.conninfo(user="agent", password="pgc_" + "B" * 43)).close()
    with pytest.raises(psycopg.OperationalError, match="no policy grants"):
        mx.connect("nobody", password=NOBODY_PW).close()
    held = mx.connect("alice")
    agent = mx.key_connect("agent")
    try:
        s = wait_for(mx, lambda s: s[("pgcordon_client_connections", "")]
                     == before[("pgcordon_client_connections", "")] + 2)
        assert s[("pgcordon_client_connections", "")] == before[("pgcordon_client_connections", "")] + 2
        assert delta(before, s, LOGINS, 'method="scram",result="ok"') == 1
        assert delta(before, s, LOGINS, 'method="scram",result="failed"') == 1
        assert delta(before, s, LOGINS, 'method="apikey",result="ok"') == 1
        assert delta(before, s, LOGINS, 'method="apikey",result="failed"') == 1
        assert delta(before, s, "pgcordon_logins_refused_total") == 1
        assert delta(before, s, "pgcordon_client_connections_total") == 5
    finally:
        held.close()
        agent.close()
    s = wait_for(mx, lambda s: s[("pgcordon_client_connections", "")] == before[("pgcordon_client_connections", "")])
    assert s[("pgcordon_client_connections", "")] == before[("pgcordon_client_connections", "")]


def test_hostile_user_names_cannot_shape_the_exposition(mx):
    """A user name made to close a label and start a metric of its own fails to log in, and
    the exposition still parses, with no trace of it."""
    evil = 'x"} 1\n# TYPE injected_total counter\ninjected_total 7\n{'
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=mx.gw.host, port=mx.gw.port, dbname="app", user=evil, password="pw",
                        sslmode="disable", connect_timeout=10).close()
    s = mx.scrape()
    assert not any(name.startswith("injected") for name, _ in s) and "injected" not in mx.last_text


def test_decisions_limits_masking_and_bytes(mx):
    """Through one session: an allowed simple query, a refused one, a prepared statement run
    three times, a result cut off at max_rows and a row with a detected email."""
    before = mx.scrape()
    with mx.connect() as c:
        cur = psycopg.ClientCursor(c)  # simple protocol: one Query, one decision
        cur.execute("SELECT 41 + 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(f"DROP TABLE {PAY}")
        mid = mx.scrape()
        assert delta(before, mid, "pgcordon_decisions_total", 'decision="allow"') == 1
        assert delta(before, mid, "pgcordon_decisions_total", 'decision="block"') == 1
        for i in range(3):  # Parse once, then a Bind per run: judged every time
            assert c.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone() == (i * 2,)
        after_prepared = mx.scrape()
        assert delta(mid, after_prepared, "pgcordon_decisions_total", 'decision="allow"') == 4
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="max_rows"):
            cur.execute("SELECT generate_series(1, 10)")
        cur.execute("SELECT 'reach me at someone@example.com' AS contact")
        assert "someone@example.com" not in cur.fetchone()[0]
    after = mx.scrape()
    assert delta(before, after, "pgcordon_statements_cut_off_total") == 1
    assert delta(before, after, "pgcordon_rows_masked_total") == 1
    assert delta(before, after, "pgcordon_bytes_total", 'from="client"') > len("SELECT generate_series(1, 10)")
    assert delta(before, after, "pgcordon_bytes_total", 'from="server"') > 0
    s = wait_for(mx, lambda s: delta(before, s, "pgcordon_audit_head_seq") >= 5)
    assert delta(before, s, "pgcordon_audit_head_seq") >= 5  # 5 statements at least


def test_statement_and_login_durations(mx):
    """A login adds one upstream login duration. Of four statements, a simple query that
    sleeps 0.3 s, a refused one and a prepared statement run twice, three are timed (the
    refused one never ran): the sleeping one past the 0.25 s bucket, in +Inf and in _sum."""
    before = mx.scrape()
    st, login = DURATIONS[0], DURATIONS[1]
    with mx.connect() as c:
        cur = psycopg.ClientCursor(c)
        cur.execute("SELECT pg_sleep(0.3)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute(f"DROP TABLE {PAY}")
        for i in range(2):
            assert c.execute("SELECT %s::int", (i,), prepare=True).fetchone() == (i,)
        s = mx.scrape()
    assert delta(before, s, login + "_count") == 1
    assert delta(before, s, login + "_bucket", 'le="+Inf"') == 1
    assert delta(before, s, login + "_sum") > 0
    assert delta(before, s, st + "_count") == 3
    assert delta(before, s, st + "_bucket", 'le="+Inf"') == 3
    assert delta(before, s, st + "_bucket", 'le="0.25"') <= 2  # the sleep is not below 0.3 s
    assert delta(before, s, st + "_bucket", 'le="60"') == 3
    assert delta(before, s, st + "_sum") >= 0.3
    assert delta(before, s, DURATIONS[2] + "_count") == 0


def test_a_held_statement_shows_as_waiting(mx):
    """An agent's read of PAY waits for approval: one request opened, one session waiting;
    once denied, none."""
    before = mx.scrape()
    result = {}

    def run():
        try:
            with mx.key_connect("agent") as c:
                c.execute(f"SELECT memo FROM {PAY}")
        except psycopg.Error as e:
            result["error"] = str(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        s = wait_for(mx, lambda s: s[("pgcordon_sessions_waiting_for_approval", "")] == 1)
        assert s[("pgcordon_sessions_waiting_for_approval", "")] == 1
        assert delta(before, s, "pgcordon_approval_requests_total") == 1
        # the request in memory: 1 KiB and its statement's text
        assert delta(before, s, "pgcordon_approval_requests_in_memory") == 1
        grew = delta(before, s, "pgcordon_approval_memory_bytes")
        assert 1024 + len(f"SELECT memo FROM {PAY}") <= grew <= 1024 + len(f"SELECT memo FROM {PAY}") + 2, grew
        status, _, body = http_get(mx.admin_port, "/api/approvals?status=pending", mx.keys["approver"])
        ids = re.findall(r'"id":"([0-9a-f]{16})"', body)
        assert status == 200 and len(ids) == 1, body
        conn = http.client.HTTPConnection("127.0.0.1", mx.admin_port, timeout=20)
        conn.request("POST", f"/api/approvals/{ids[0]}/deny", body='{"reason": "not today"}',
                     headers={"Authorization": f"Bearer {mx.keys['approver']}",
                              "Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        t.join(30)
    assert "denied" in result.get("error", ""), result
    s = wait_for(mx, lambda s: s[("pgcordon_sessions_waiting_for_approval", "")] == 0)
    assert s[("pgcordon_sessions_waiting_for_approval", "")] == 0
    assert delta(before, s, "pgcordon_decisions_total", 'decision="block"') == 1
    wait = DURATIONS[2]
    assert delta(before, s, wait + "_count") == 1 and delta(before, s, wait + "_bucket", 'le="+Inf"') == 1
    assert delta(before, s, wait + "_sum") > 0


def test_upstream_failures_and_reloads(mx):
    """A database whose server is down counts a connect error; a reload counts as ok, and a
    broken config file as failed (the gateway keeps the config it had)."""
    before = mx.scrape()
    with pytest.raises(psycopg.OperationalError):
        mx.connect(dbname="down").close()
    mx.gw.reload_and_wait(None)
    good = mx.gw.config_path.read_text()
    try:
        mx.gw.config_path.write_text("listen: [not, a, mapping\n")
        mx.gw.reload_and_wait(None, event="reload_failed")
    finally:
        mx.gw.config_path.write_text(good)
    after = mx.scrape()
    assert delta(before, after, "pgcordon_upstream_errors_total", 'kind="connect"') == 1
    assert delta(before, after, "pgcordon_upstream_errors_total", 'kind="lost"') == 0
    assert delta(before, after, "pgcordon_config_reloads_total", 'result="ok"') == 1
    assert delta(before, after, "pgcordon_config_reloads_total", 'result="failed"') == 1
    mx.gw.assert_serves()


def test_without_audit_only_says_so(gateway_factory):
    """A gateway with no audit.store says pgcordon_audit_enabled 0 and nothing else of the
    audit."""
    _, port, key = gateway_factory.start_with_admin_key("scraper", ["monitoring"])
    status, _, body = http_get(port, "/metrics", key)
    assert status == 200
    s = parse(body)
    assert s[("pgcordon_audit_enabled", "")] == 0
    assert not any(name.startswith("pgcordon_audit_") and name != "pgcordon_audit_enabled" for name, _ in s)
