"""The admin HTTP API over HTTPS (admin.tls), and the rule that bearer tokens never cross a
network in clear: off loopback the API listens only with TLS, and the CLI sends its token
over plain http:// only to this host."""

import json
import os
import socket
import ssl
import subprocess
import urllib.error
from http.client import HTTPSConnection

import pytest

from conftest import (BIN, ROLE_PW, SCRAM_PW_ENV, GatewayDied, GatewayFactory, free_port, ipv6_loopback,
                      require_binary, to_yaml)
from test_audit import apikey_create, http, wait_for

SFX = os.urandom(3).hex()


def cli(*args, env=None):
    require_binary()
    e = dict(os.environ, **{SCRAM_PW_ENV: ROLE_PW["gw_scram"]})
    e.pop("PGCORDON_CACERT", None)
    e.update(env or {})
    return subprocess.run([str(BIN)] + list(args), capture_output=True, text=True, timeout=60, env=e)


def https(port, path, cafile, token=None, **ctx_kw):
    ctx = ssl.create_default_context(cafile=str(cafile))
    for k, v in ctx_kw.items():
        setattr(ctx, k, v)
    return http(port, path, token, context=ctx)


@pytest.fixture(scope="module")
def tls_api(pg, certs, tmp_path_factory):
    require_binary()
    root = tmp_path_factory.mktemp("admintls")
    key, entry = apikey_create(f"tlsauditor-{SFX}", ["security"])
    port = free_port()
    f = GatewayFactory(pg, certs, root)

    def mutate(cfg):
        cfg["audit"] = {"store": f"sqlite:{root / 'tls.db'}"}
        cfg["admin"] = {"address": "127.0.0.1", "port": port, "auditors": ["security"],
                        "tls": {"cert": str(certs.server_crt), "key": str(certs.server_key)}}
        cfg["api_keys"] = {f"tlsauditor-{SFX}": entry}
    g = f.start(mutate)

    def up():
        try:
            return https(port, "/healthz", certs.ca_crt)[0] == 200
        except OSError:
            return False
    wait_for(up, timeout=10, what="the admin API over HTTPS")
    yield dict(gw=g, port=port, token=key)
    f.cleanup()


def test_api_answers_over_https(tls_api, certs):
    p, tok = tls_api["port"], tls_api["token"]
    assert https(p, "/api/sessions", certs.ca_crt)[0] == 401
    status, body = https(p, "/api/sessions", certs.ca_crt, token=tok)
    assert status == 200 and "sessions" in json.loads(body), body
    assert tls_api["gw"].wait_log(r"event=admin_ready .*scheme=https")


def test_tls_1_2_and_1_3_both_work(tls_api, certs):
    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        assert https(tls_api["port"], "/healthz", certs.ca_crt, minimum_version=v, maximum_version=v)[0] == 200


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_api, certs):
    with pytest.raises(urllib.error.URLError) as e:
        https(tls_api["port"], "/healthz", certs.other_ca_crt)
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError), e.value


def test_plain_http_on_the_tls_port_gets_nothing_and_the_api_keeps_serving(tls_api, certs):
    """A token sent in clear to the HTTPS port is never answered as a request."""
    p = tls_api["port"]
    with socket.create_connection(("127.0.0.1", p), timeout=10) as s:
        s.sendall(b"GET /api/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + tls_api["token"].encode() + b"\r\n\r\n")
        got = b""
        try:
            while len(got) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert b"HTTP/1." not in got and b"sessions" not in got, got[:200]
    assert https(p, "/api/sessions", certs.ca_crt, token=tls_api["token"])[0] == 200


def test_cli_over_https(tls_api, certs):
    url, tok = f"https://127.0.0.1:{tls_api['port']}", tls_api["token"]
    r = cli("grants", "list", "--url", url, "--token", tok, "--cacert", str(certs.ca_crt), "--json")
    assert r.returncode == 0, r.stderr
    assert "grants" in json.loads(r.stdout)
    r = cli("grants", "list", "--url", url, "--token", tok, "--json", env={"PGCORDON_CACERT": str(certs.ca_crt)})
    assert r.returncode == 0, r.stderr
    # Without the CA the server's certificate is not trusted: no request is made.
    r = cli("grants", "list", "--url", url, "--token", tok)
    assert r.returncode != 0 and "cannot reach" in r.stderr and "certificate" in r.stderr.lower(), r.stderr
    r = cli("grants", "list", "--url", url, "--token", tok, "--cacert", str(certs.other_ca_crt))
    assert r.returncode != 0 and "certificate" in r.stderr.lower(), r.stderr
    r = cli("grants", "list", "--url", url, "--token", tok, "--cacert", "/nonexistent/ca.crt")
    assert r.returncode == 1 and "cannot reach" in r.stderr and "CA cert" in r.stderr, r.stderr


@pytest.mark.parametrize("url", [
    "http://10.1.2.3:8432", "http://gateway.example:8432", "http://127.0.0.1.example.com:8432",
    "http://user@127.0.0.1:8432", "http://[::2]:8432", "http://0.0.0.0:8432",
])
def test_cli_will_not_send_a_token_in_clear_off_this_host(url):
    r = cli("approvals", "list", "--url", url, "--token", "pgc_" + "a" * 43)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "must be https://" in r.stderr and "in clear" in r.stderr, r.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:{p}", "http://localhost:{p}/", "http://[::1]:{p}",
                                 "http://127.0.0.2:{p}"])
def test_cli_plain_http_to_this_host_is_allowed(url):
    """Only reached, not refused: nothing listens on the port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    r = cli("approvals", "list", "--url", url.format(p=p), "--token", "pgc_" + "a" * 43)
    assert r.returncode != 2 and "cannot reach" in r.stderr, r.stderr


def test_cli_bypasses_proxies_for_plain_http():
    """http_proxy would see the bearer token of a loopback http:// call in clear."""
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(4)
    proxy.settimeout(0.5)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    closed.close()
    try:
        purl = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        r = cli("approvals", "list", "--url", f"http://127.0.0.1:{dead}", "--token", "pgc_" + "p" * 43,
                env={"http_proxy": purl, "HTTP_PROXY": purl, "ALL_PROXY": purl, "all_proxy": purl})
        assert r.returncode == 1 and "cannot reach" in r.stderr, r.stderr
        with pytest.raises(socket.timeout):
            proxy.accept()[0].close()
    finally:
        proxy.close()


# ---------------------------------------------------------------------------- the config

def check(tmp_path, pg, certs, admin):
    f = GatewayFactory(pg, certs, tmp_path)
    cfg = f.config()
    cfg["admin"] = admin
    path = tmp_path / "gw.yaml"
    path.write_text(to_yaml(cfg) + "\n")
    return cli("check-config", "--config", str(path))


@pytest.mark.parametrize("address", ["0.0.0.0", "10.0.0.5", "192.168.1.1", "::", "2001:db8::1"])
def test_off_loopback_without_tls_is_a_config_error(tmp_path, pg, certs, address):
    r = check(tmp_path, pg, certs, {"address": address, "port": free_port()})
    assert r.returncode != 0
    assert f"admin.address {address} is not a loopback address" in r.stderr, r.stderr
    assert "admin.tls.cert" in r.stderr


def test_off_loopback_with_tls_is_accepted(tmp_path, pg, certs):
    r = check(tmp_path, pg, certs, {"address": "0.0.0.0", "port": free_port(),
                                    "tls": {"cert": str(certs.server_crt), "key": str(certs.server_key)}})
    assert r.returncode == 0, r.stderr
    r = check(tmp_path, pg, certs, {"address": "127.0.0.3", "port": free_port()})
    assert r.returncode == 0, r.stderr


def test_admin_api_on_ipv6_loopback(tmp_path, pg, certs):
    """admin.address ::1 (loopback: no TLS needed): the API listens there, answers, and logs
    the caller's IPv6 address. Before, only IPv4 addresses could be given."""
    if not ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    key, entry = apikey_create(f"v6-{os.getpid()}", ["security"])
    port = free_port()
    f = GatewayFactory(pg, certs, tmp_path)
    try:
        gw = f.start(lambda cfg: cfg.update(admin={"address": "::1", "port": port, "auditors": ["security"]},
                                            api_keys={f"v6-{os.getpid()}": entry}))
        assert gw.wait_log(r"event=admin_ready address=::1 ")
        with urllib.request.urlopen(f"http://[::1]:{port}/healthz", timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
        req = urllib.request.Request(f"http://[::1]:{port}/api/approvals",
                                     headers={"Authorization": "Bearer not-a-key"})
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(req, timeout=10)
        assert ei.value.code == 401
        assert gw.wait_log(r"event=admin_auth_failed peer=::1 ")
        req = urllib.request.Request(f"http://[::1]:{port}/api/approvals", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
    finally:
        f.cleanup()
    r = check(tmp_path, pg, certs, {"address": "::1", "port": free_port()})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("address", ["api.example.com", "::1::", "127.0.0.1:8432", "[::1]"])
def test_admin_address_that_is_not_an_ip_is_refused_at_start(tmp_path, pg, certs, address):
    """With admin.tls (so that the loopback rule does not stop it first), an admin.address
    that is no IP address keeps the gateway from starting, and says so."""
    f = GatewayFactory(pg, certs, tmp_path)
    try:
        with pytest.raises(GatewayDied) as ei:
            f.start(lambda cfg: cfg.update(admin={
                "address": address, "port": free_port(),
                "tls": {"cert": str(certs.server_crt), "key": str(certs.server_key)}}))
        assert f"admin.address {address} is not an IP address (IPv4 like 127.0.0.1, or IPv6 like ::1)" \
            in str(ei.value), str(ei.value)
    finally:
        f.gateways.clear()
        f.cleanup()


def test_bad_admin_tls_settings_are_config_errors(tmp_path, pg, certs):
    cases = [
        ({"cert": str(certs.server_crt)}, "admin.tls needs both cert and key"),
        ({"key": str(certs.server_key)}, "admin.tls needs both cert and key"),
        ({"cert": str(tmp_path / "missing.crt"), "key": str(certs.server_key)}, "admin.tls: cannot load certificate"),
        ({"cert": str(certs.server_crt), "key": str(certs.ca_key)}, "admin.tls: cannot load private key"),
        ({"cert": str(certs.server_crt), "key": str(certs.server_key), "ciphers": "x"}, 'unknown key "ciphers"'),
    ]
    for tls, message in cases:
        r = check(tmp_path, pg, certs, {"address": "127.0.0.1", "port": free_port(), "tls": tls})
        assert r.returncode != 0 and message in r.stderr, (tls, r.stderr)



def test_console_over_https_with_hsts(tls_api, certs):
    """Over HTTPS the console's page (and every answer) tells the browser to stay on HTTPS."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_crt))
    conn = HTTPSConnection("127.0.0.1", tls_api["port"], timeout=10, context=ctx)
    try:
        for path, needle in (("/", b"/console/app.js"), ("/api/whoami", b"error")):
            conn.request("GET", path)
            r = conn.getresponse()
            assert needle in r.read(), path
            assert r.getheader("Strict-Transport-Security") == "max-age=31536000", (path, r.getheaders())
            assert "script-src 'self'" in r.getheader("Content-Security-Policy")
    finally:
        conn.close()
