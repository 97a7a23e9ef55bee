"""The command-line contract: passwd, check-config, and a config written by hand."""

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import subprocess
import threading

import pytest

from conftest import (BIN, ROLE_PW, SCRAM_PW_ENV, Gateway, GatewayFactory, free_port,
                      require_binary, to_yaml)

VERIFIER = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")


def cli(*args, input=None):
    require_binary()
    # check-config resolves password_env, so the variable the default config names is set.
    env = dict(os.environ, **{SCRAM_PW_ENV: ROLE_PW["gw_scram"]})
    return subprocess.run([str(BIN)] + list(args), capture_output=True, text=True,
                          input=input, timeout=30, env=env)


def http_get(addr, path, headers=None):
    conn = http.client.HTTPConnection(*addr, timeout=20)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def http_post(addr, path, headers):
    conn = http.client.HTTPConnection(*addr, timeout=20)
    try:
        conn.request("POST", path, body=b"{}", headers={**headers, "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def check_verifier(verifier, password):
    m = VERIFIER.fullmatch(verifier)
    assert m, verifier
    iters, salt, stored, server = int(m[1]), base64.b64decode(m[2]), m[3], m[4]
    assert iters == 4096
    assert len(salt) >= 16
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert base64.b64decode(stored) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server) == hmac.new(salted, b"Server Key", hashlib.sha256).digest()


def test_passwd_prints_a_correct_verifier():
    r = cli("passwd", "--password", "s3cret pass")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    check_verifier(lines[0], "s3cret pass")
    again = cli("passwd", "--password", "s3cret pass").stdout.strip()
    assert again != lines[0], "two verifiers for the same password share a salt"


def test_passwd_with_user_and_stdin():
    r = cli("passwd", "--user", "alice", "--password", "pw1")
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r'alice: \{password: "(.*)"\}', r.stdout.strip())
    assert m, r.stdout
    check_verifier(m[1], "pw1")
    r = cli("passwd", input="from stdin\n")
    assert r.returncode == 0, r.stderr
    check_verifier(r.stdout.strip(), "from stdin")


def test_check_config_ok_and_errors(pg, certs, tmp_path):
    f = GatewayFactory(pg, certs, tmp_path)
    cfg = f.config()
    good = tmp_path / "good.yaml"
    good.write_text(to_yaml(cfg) + "\n")
    r = cli("check-config", "--config", str(good))
    assert r.returncode == 0, r.stderr
    assert f"{good}: ok" in r.stdout + r.stderr

    bad = tmp_path / "bad.yaml"
    text = to_yaml(cfg).splitlines()
    # An unknown key on line 3 (inside listen:).
    text.insert(2, "  no_such_key: 1")
    bad.write_text("\n".join(text) + "\n")
    r = cli("check-config", "--config", str(bad))
    assert r.returncode == 1
    assert re.search(re.escape(str(bad)) + r":3: ", r.stderr), r.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: {address: 127.0.0.1\n")
    r = cli("check-config", "--config", str(broken))
    assert r.returncode == 1
    assert re.search(re.escape(str(broken)) + r":\d+: ", r.stderr), r.stderr

    missing = tmp_path / "missing.yaml"
    assert cli("check-config", "--config", str(missing)).returncode != 0

    # serve refuses an invalid config instead of starting half-configured.
    r = subprocess.run([str(BIN), "serve", "--config", str(bad)], capture_output=True,
                       text=True, timeout=30, env=dict(os.environ, **{SCRAM_PW_ENV: "x"}))
    assert r.returncode != 0


def test_hand_written_config_with_passwd_output(pg, tmp_path):
    """Paste `pgcordon passwd --user` output under users: and connect with it."""
    line = cli("passwd", "--user", "dora", "--password", "dora-pw-123").stdout.strip()
    port = free_port()
    pwfile = tmp_path / "up.pw"
    pwfile.write_text("UpScram-9f8e7d6c5b\n")
    text = f"""# written like an operator would
listen: {{address: 127.0.0.1, port: {port}, workers: 1}}
tls: {{mode: disable}}
limits:
  max_client_conn: 10
  max_message_size: 512KiB
  startup_timeout: 5s
  shutdown_timeout: 2s
log: {{level: info}}
databases:
  main:
    host: 127.0.0.1
    port: {pg.port}
    dbname: gwtest
    user: gw_scram
    password_file: {pwfile}
    sslmode: disable
users:
  {line}
"""
    g = Gateway(tmp_path / "gw", {"listen": {"port": port}})
    g.config_path.write_text(text)
    r = cli("check-config", "--config", str(g.config_path))
    assert r.returncode == 0, r.stderr
    g.start()
    try:
        with g.connect(user="dora", password="dora-pw-123", dbname="main") as c:
            assert c.execute("SELECT current_user").fetchone()[0] == "gw_scram"
        assert "dora-pw-123" not in g.log_text()
        assert g.stop(10) == 0
    finally:
        g.cleanup()


@pytest.mark.parametrize("entry,message", [
    ({"sslmode": "require"}, "is a Unix-domain socket directory, where TLS does not apply"),
    ({"sslmode": "verify-full", "sslrootcert": "/dev/null"}, "where TLS does not apply"),
    ({"host": "/" + "d" * 100}, "is longer than 107 bytes"),
])
def test_check_config_socket_dir_errors(pg, certs, tmp_path, entry, message):
    """A host starting with '/' is a socket directory: TLS cannot apply, and the path must fit."""
    f = GatewayFactory(pg, certs, tmp_path)
    cfg = f.config()
    cfg["databases"]["app"].update({"host": str(pg.dir)}, **entry)
    p = tmp_path / "c.yaml"
    p.write_text(to_yaml(cfg) + "\n")
    r = cli("check-config", "--config", str(p))
    assert r.returncode != 0
    assert message in r.stderr and 'database "app"' in r.stderr, r.stderr
    cfg["databases"]["app"].update(host=str(pg.dir), sslmode="disable")
    p.write_text(to_yaml(cfg) + "\n")
    r = cli("check-config", "--config", str(p))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value", ["64MiB", "512KiB", "1048576"])
def test_size_units_accepted(pg, certs, tmp_path, value):
    f = GatewayFactory(pg, certs, tmp_path)
    cfg = f.config()
    cfg["limits"]["max_message_size"] = int(value) if value.isdigit() else value
    p = tmp_path / "c.yaml"
    p.write_text(to_yaml(cfg) + "\n")
    r = cli("check-config", "--config", str(p))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("level", ["debug", "info", "warn", "error"])
def test_log_levels_and_admin_section_accepted(pg, certs, tmp_path, level):
    f = GatewayFactory(pg, certs, tmp_path)
    cfg = f.config()
    cfg["log"]["level"] = level
    cfg["admin"] = {"address": "127.0.0.1", "port": free_port()}
    p = tmp_path / "c.yaml"
    p.write_text(to_yaml(cfg) + "\n")
    r = cli("check-config", "--config", str(p))
    assert r.returncode == 0, r.stderr


def version_line():
    r = cli("--version")
    assert r.returncode == 0 and r.stderr == "", r
    m = re.fullmatch(r"pgcordon (\d+\.\d+\.\d+) \(commit ([0-9a-f]{12,40}(?:-dirty)?|unknown)\)\n", r.stdout)
    assert m, r.stdout
    return m[1], m[2]


def test_version_names_the_commit():
    """--version (and `version`) name the release and the git commit of the build."""
    version, commit = version_line()
    assert cli("version").stdout == f"pgcordon {version} (commit {commit})\n"
    # a commit of this repository (the binary may predate HEAD); "unknown" only outside one
    here = os.path.dirname(__file__)
    in_git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, cwd=here).returncode == 0
    assert (commit != "unknown") == in_git, commit
    if in_git:
        known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", commit.split("-")[0] + "^{commit}"],
                               capture_output=True, text=True, cwd=here)
        assert known.returncode == 0, f"{commit} is not a commit of this checkout"
    assert "--version" in cli("--help").stdout


def test_serve_logs_ready_line(gateway_factory):
    g = gateway_factory.start()
    log = g.log_text()
    ready = [line for line in log.splitlines() if "event=ready" in line]
    assert ready, log
    assert f"port={g.port}" in ready[0]
    version, commit = version_line()
    assert f"version={version} commit={commit}" in ready[0], ready[0]
    assert all(re.match(r"ts=\S+ level=(debug|info|warn|error) event=\S+", line)
               for line in log.splitlines() if line.strip()), log


def test_demo_runs_enforces_and_cleans_up():
    """`pgcordon demo` starts a throwaway PostgreSQL behind the gateway with example
    policies; Ctrl-C stops both and removes the scratch directory."""
    import signal
    import time

    import psycopg

    port = free_port()
    proc = subprocess.Popen([str(BIN), "demo", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out = b""
    scratch = None
    try:
        deadline = time.monotonic() + 60
        while b"event=ready" not in out:
            assert proc.poll() is None, out.decode(errors="replace")
            assert time.monotonic() < deadline, out.decode(errors="replace")
            out += os.read(proc.stdout.fileno(), 65536)
        scratch = re.search(rb"PostgreSQL in (\S+) on port", out).group(1).decode()
        agent = f"host=127.0.0.1 port={port} dbname=app user=agent password=agent-demo-password"
        with psycopg.connect(agent, autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM orders").fetchone() == (1000,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="without WHERE"):
                c.execute("SELECT * FROM customers")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="read-only"):
                c.execute("DELETE FROM orders WHERE id = 1")
        # The demo records to an audit trail the CLI can read back.
        cfg = os.path.join(scratch, "pgcordon.yaml")
        deadline = time.monotonic() + 10
        while True:
            r = subprocess.run([str(BIN), "sessions", "list", "--config", cfg, "--user", "agent", "--json"],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            sessions = json.loads(r.stdout)
            if sessions and sessions[0].get("statements") == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sessions and sessions[0]["user"] == "agent", r.stdout
        replay = subprocess.run([str(BIN), "sessions", "replay", sessions[0]["session_id"], "--config", cfg],
                                capture_output=True, text=True)
        assert replay.returncode == 0, replay.stderr
        assert "DELETE FROM orders WHERE id = 1" in replay.stdout and "block" in replay.stdout, replay.stdout
        v = subprocess.run([str(BIN), "audit", "verify", "--config", cfg], capture_output=True, text=True)
        assert v.returncode == 0 and v.stdout.startswith("ok:"), v.stdout + v.stderr
        # The MCP command the demo prints works as printed, under the agent's rules.
        m = re.search(r'^  PGPASSWORD=(\S+) (\S+) mcp --connect "([^"]+)"$', out.decode(), re.M)
        assert m and m[2] == str(BIN), out.decode()
        calls = [{"jsonrpc": "2.0", "id": i, "method": "tools/call",
                  "params": {"name": "query", "arguments": {"sql": sql}}}
                 for i, sql in enumerate(["SELECT count(*) FROM orders", "SELECT * FROM customers"])]
        r = subprocess.run([m[2], "mcp", "--connect", m[3]], env={**os.environ, "PGPASSWORD": m[1]},
                           input="".join(json.dumps(c) + "\n" for c in calls), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        count, refused = [json.loads(line)["result"] for line in r.stdout.splitlines()]
        assert count["structuredContent"]["rows"] == [[1000]], count
        assert refused["isError"] and "without WHERE" in refused["content"][0]["text"], refused
        # The agent's export waits for a human; the printed console key approves it over the
        # console's API, and the console's page is there.
        m = re.search(r"^  (http://127\.0\.0\.1:(\d+)/)   sign in with the API key (pgc_\S+)$", out.decode(), re.M)
        assert m, out.decode()
        admin = ("127.0.0.1", int(m[2]))
        auth = {"Authorization": f"Bearer {m[3]}"}
        page = http_get(admin, "/")
        assert page[0] == 200 and b"/console/app.js" in page[1], page
        done = {}

        def export():
            with psycopg.connect(agent, autocommit=True) as c:
                with c.cursor().copy("COPY (SELECT id, amount FROM orders WHERE id <= 5) TO STDOUT") as cp:
                    done["rows"] = [bytes(r) for r in cp]
        t = threading.Thread(target=export)
        t.start()
        deadline = time.monotonic() + 20
        while True:
            status, body = http_get(admin, "/api/approvals", auth)
            pending = json.loads(body)["approvals"] if status == 200 else []
            if pending or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(pending) == 1 and pending[0]["requester"] == "agent", body
        assert "rows" not in done
        status, body = http_post(admin, f"/api/approvals/{pending[0]['id']}/approve", auth)
        assert status == 200, body
        t.join(30)
        assert b"".join(done.get("rows", [])).count(b"\n") == 5, done
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    assert rc == 0
    assert scratch and not os.path.exists(scratch), f"{scratch} left behind"
