"""Identity (docs/identity.md) through real clients: OIDC tokens (RS256, PS256, ES256, EdDSA)
checked against a JWKS served at test time by oidc_issuer.Issuer, API keys made with
`pgcordon apikey create`, group-to-role mapping, policies selected by token groups, and
credential expiry during a session.

Refusals are read with the raw protocol client (pgwire) to check severity, SQLSTATE and the
exact message; accepted logins use psycopg (and psql). After every refusal the gateway must
still serve a SCRAM user and a token user, and no token or API key sent during a test may
appear in any gateway log (checked after every test)."""

import hashlib
import os
import re
import secrets
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

import pgwire
from conftest import (BIN, ROLE_PW, SCRAM_PW_ENV, Gateway, GatewayDied, GatewayFactory,
                      closed_port, require_binary)
from oidc_issuer import (Issuer, b64url, b64url_json, forge_hs256, tamper_payload, unsigned)

SFX = secrets.token_hex(3)
ROLE_RO = f"idr_ro_{SFX}"     # roles: analysts -> ROLE_RO
ROLE_AG = f"idr_ag_{SFX}"     # roles: agents -> ROLE_AG
AUDIENCE = "pgcordon"
AUTH_FAILED = 'password authentication failed for user "{}"'
EXPIRED_SESSION = "pgcordon: the credential of this session has expired; reconnect with a new one"


ALL_GATEWAYS = []


def start_gateway(factory, mutate):
    """Like factory.start (token_grace 0s), also remembered for the log checks; the factory
    stops it and checks its log at teardown."""
    cfg = factory.config()
    cfg["limits"]["token_grace"] = "0s"
    mutate(cfg)
    gw = Gateway(factory.root / f"idgw{len(factory.gateways)}-{cfg['listen']['port']}", cfg,
                   {SCRAM_PW_ENV: ROLE_PW["gw_scram"]})
    factory.gateways.append(gw)
    ALL_GATEWAYS.append(gw)
    return gw.start()


# ---------------------------------------------------------------------------- secrets

_sent = []


def remember(secret):
    """Every token and API key a test sends; none may show up in a gateway log."""
    if secret:
        _sent.append(secret)
    return secret


def secret_fragments(secret):
    yield secret
    if secret.startswith("pgc_"):
        yield secret[4:]
    parts = secret.split(".")
    if len(parts) == 3 and len(parts[2]) >= 16:
        yield parts[2]  # the signature alone is what makes a token a credential


@pytest.fixture(autouse=True)
def no_secret_in_logs():
    _sent.clear()
    known = len(ALL_GATEWAYS)
    yield
    # runs after the test's own gateways were stopped: their logs are complete
    for i, gw in enumerate(ALL_GATEWAYS):
        if i < known and not gw.alive():
            continue  # stopped before this test: nothing new in its log
        log = gw.log_text()
        for s in _sent:
            for frag in secret_fragments(s):
                assert frag not in log, \
                    f"a token/API key (fragment {frag[:24]}...) appears in {gw.log_path}"
    _sent.clear()


# ---------------------------------------------------------------------------- clients

def attempt(gw, user, password, dbname="app", extra=None):
    """A raw login. Returns None when it got to ReadyForQuery, else (error fields,
    authentication request codes seen)."""
    remember(password)
    c = pgwire.RawConn(gw.host, gw.port, timeout=30)
    try:
        c.startup(user, dbname, password, extra)
    except pgwire.ServerError as e:
        closed = c.expect_closed(10)
        assert closed, "the gateway did not close the connection after a FATAL error"
        return e.fields, c.auth_codes
    else:
        c.terminate()
        return None
    finally:
        c.close()


def refuse(gw, user, password, detail=None, sqlstate="28P01", message=None, dbname="app",
           extra=None):
    """Asserts a FATAL refusal. detail: literal text or a compiled regex for what follows
    'password authentication failed for user "U": '; message: the whole message instead."""
    r = attempt(gw, user, password, dbname, extra)
    assert r is not None, f"login as {user!r} was accepted; expected a refusal ({detail or message})"
    fields, codes = r
    assert fields.get("S") == "FATAL", fields
    assert fields.get("C") == sqlstate, fields
    if message is None:
        prefix = re.escape(AUTH_FAILED.format(user))
        if detail is None:
            pattern = prefix
        else:
            tail = detail.pattern if isinstance(detail, re.Pattern) else re.escape(detail)
            pattern = prefix + ": " + tail
    else:
        pattern = message.pattern if isinstance(message, re.Pattern) else re.escape(message)
    assert re.fullmatch(pattern, fields.get("M", "")), \
        f"message {fields.get('M')!r} does not match {pattern!r}"
    return fields, codes


def token_refused(gw, user, token, reason):
    """A token refusal: 'token refused: <reason>' (literal or regex)."""
    tail = reason.pattern if isinstance(reason, re.Pattern) else re.escape(reason)
    fields, codes = refuse(gw, user, token, re.compile("token refused: " + tail))
    assert codes == [3], f"expected one AuthenticationCleartextPassword, got {codes}"
    return fields


def login(gw, user, password, dbname="app", **kw):
    remember(password)
    return psycopg.connect(gw.conninfo(user, password, dbname, **kw), autocommit=True)


def who(conn):
    return conn.execute("SELECT current_user, session_user").fetchone()


def log_line(gw, event, user, timeout=10, **fields):
    """Waits for a log line event=EVENT with user="USER" and the given field regexes."""
    pat = rf'event={event}\b[^\n]*user="{re.escape(user)}"'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in re.findall(pat + r"[^\n]*", gw.log_text()):
            if all(re.search(rf"\b{k}={v}", line) for k, v in fields.items()):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line event={event} user={user} {fields}; log tail:\n"
                         f"{gw.log_text()[-3000:]}")


def clean_env(password):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password, PGCONNECT_TIMEOUT="10", LC_ALL="C")
    return env


def psql(gw, user, password, sql, dbname="app"):
    remember(password)
    conn = f"host={gw.host} port={gw.port} user={user} dbname={dbname} sslmode=disable"
    return subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conn,
                           "-c", sql], env=clean_env(password), capture_output=True, text=True,
                          timeout=60)


# ---------------------------------------------------------------------------- API keys

def apikey_create(name, groups=None, expires=None):
    """Runs `pgcordon apikey create` and parses what it prints: (key, config entry)."""
    require_binary()
    cmd = [str(BIN), "apikey", "create", name]
    if groups is not None:
        cmd += ["--groups", ",".join(groups)]
    if expires is not None:
        cmd += ["--expires", expires]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{cmd} failed: {r.stderr}"
    out = r.stdout
    keys = re.findall(r"^  (pgc_[A-Za-z0-9_-]{43})$", out, re.M)
    assert len(keys) == 1, f"no single key line in:\n{out}"
    key = keys[0]
    m = re.search(r"^  " + re.escape(name) + r': \{hash: "(sha256:[0-9a-f]{64})"'
                  r"(?:, groups: \[([^\]]*)\])?(?:, expires: ([^}]+))?\}$", out, re.M)
    assert m, f"no config line for {name} in:\n{out}"
    assert f"user={name}" in out, out
    assert m[1] == "sha256:" + hashlib.sha256(key.encode()).hexdigest(), \
        "the printed hash is not the SHA-256 of the printed key"
    entry = {"hash": m[1]}
    if m[2] is not None:
        entry["groups"] = [g.strip() for g in m[2].split(",")]
        assert entry["groups"] == list(groups)
    if m[3] is not None:
        entry["expires"] = m[3]
        assert m[3] == expires
    return key, entry


def in_one_year():
    return (datetime.now(timezone.utc) + timedelta(days=365)).strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def issuer():
    """The main issuer: one key of each kind, discovered (no jwks_uri)."""
    iss = Issuer(AUDIENCE)
    iss.add_key("rsa", "rsa-1")
    iss.add_key("ec", "ec-1")
    iss.add_key("ed25519", "ed-1")
    iss.add_key("rsa", "ghost", publish=False)  # never published: an unknown kid
    yield iss
    iss.close()


@pytest.fixture(scope="module")
def nested():
    """An issuer whose username and groups are nested claims; keys via jwks_uri."""
    iss = Issuer(AUDIENCE)
    iss.add_key("rsa", "nest-1")
    yield iss
    iss.close()


@pytest.fixture(scope="module")
def short():
    """An issuer with leeway 0s for the expiry-in-session tests."""
    iss = Issuer(AUDIENCE)
    iss.add_key("ec", "short-1")
    yield iss
    iss.close()


@pytest.fixture(scope="module")
def apikeys():
    keys = {}
    keys["ci-bot"] = apikey_create("ci-bot", ["agents"], in_one_year())
    keys["old-bot"] = apikey_create("old-bot", ["agents"], "2020-01-01")
    keys["plain-bot"] = apikey_create("plain-bot")
    return keys


@pytest.fixture(scope="module")
def module_factory(pg, certs, tmp_path_factory):
    require_binary()
    f = GatewayFactory(pg, certs, tmp_path_factory.mktemp("idgw"))
    yield f
    f.cleanup()


@pytest.fixture(scope="module")
def idgw(module_factory, issuer, nested, short, apikeys):
    """Three issuers and three API keys; no roles, no policies (default allow)."""
    def mutate(cfg):
        cfg["oidc"] = [
            issuer.config(username_claim="email", leeway="30s",
                          aliases={"shorty": "alice@example.com"}),
            nested.config(jwks_uri=nested.jwks_uri, username_claim="realm.user",
                          groups_claim="realm.groups"),
            short.config(username_claim="email", leeway="0s"),
        ]
        cfg["api_keys"] = {name: entry for name, (key, entry) in apikeys.items()}
    g = start_gateway(module_factory, mutate)
    for iss in (issuer, nested, short):
        assert iss.wait_for_fetch(1, timeout=15), f"the gateway never fetched {iss.url}'s keys"
    assert g.wait_log(r"event=oidc_keys_fetched[^\n]*keys=3", timeout=10), g.log_text()[-2000:]
    return g


@pytest.fixture(scope="module")
def roles_db(pg):
    with pg.super_connect() as c:
        for r in (ROLE_RO, ROLE_AG):
            c.execute(f"CREATE ROLE {r} NOLOGIN")
            c.execute(f"GRANT {r} TO gw_scram")
        c.execute(f"GRANT SELECT ON public.items TO {ROLE_RO}, {ROLE_AG}")
    yield
    with pg.super_connect() as c:
        for r in (ROLE_RO, ROLE_AG):
            c.execute(f"DROP OWNED BY {r}")
            c.execute(f"DROP ROLE {r}")


@pytest.fixture(scope="module")
def rolegw(module_factory, issuer, roles_db):
    """Group-to-role mapping and a policy for group agents; default allow."""
    key, entry = apikey_create("agent-bot", ["agents"])

    def mutate(cfg):
        cfg["oidc"] = [issuer.config(username_claim="email")]
        cfg["api_keys"] = {"agent-bot": entry}
        cfg["roles"] = {"analysts": ROLE_RO, "agents": ROLE_AG}
        cfg["default"] = "allow"
        cfg["policies"] = [
            {"name": "locals", "match": {"users": ["alice", "bob"]}},
            {"name": "agentguard", "match": {"groups": ["agents"]},
             "block": [{"statements": ["drop_table"]}]},
        ]
    g = start_gateway(module_factory, mutate)
    g.agent_key = key
    assert g.wait_log(r"event=oidc_keys_fetched", timeout=15), g.log_text()[-2000:]
    return g


def serves(gw, iss, user="still-here@example.com", kid="rsa-1", **claims):
    """The gateway still serves a SCRAM user and a token user."""
    gw.assert_serves()
    tok = iss.token(iss.claims(user, **claims), kid)
    assert attempt(gw, user, tok) is None, f"token login as {user} failed after a refusal"


# ---------------------------------------------------------------------------- tokens: accepted

ALGS = [("RS256", "rsa-1"), ("PS256", "rsa-1"), ("ES256", "ec-1"), ("EdDSA", "ed-1")]


@pytest.mark.parametrize("alg,kid", ALGS, ids=[a for a, _ in ALGS])
def test_valid_token_each_algorithm(idgw, issuer, alg, kid):
    user = f"tok-{alg.lower()}@example.com"
    tok = issuer.token(issuer.claims(user, groups=["g1", "g2"]), kid, alg=alg)
    with login(idgw, user, tok) as c:
        assert c.execute("SELECT 40 + %s::int", (2,)).fetchone() == (42,)
        assert who(c) == ("gw_scram", "gw_scram")  # no roles: configured: the login role
        assert c.execute("SELECT count(*) FROM public.items").fetchone() == (100,)
    log_line(idgw, "auth_ok", user, method="oidc", groups="2", role='"-"')


def test_valid_token_psql(idgw, issuer):
    user = "psql-user@example.com"
    tok = issuer.token(issuer.claims(user), "ed-1")
    r = psql(idgw, user, tok, "SELECT 6 * 7")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"


def test_refused_token_psql(idgw, issuer):
    user = "psql-late@example.com"
    tok = issuer.token(issuer.claims(user, exp_in=-600), "rsa-1")
    r = psql(idgw, user, tok, "SELECT 1")
    assert r.returncode != 0
    assert re.search(r'FATAL:  password authentication failed for user "psql-late@example.com": '
                     r"token refused: token expired \d+ s ago", r.stderr), r.stderr


def test_refused_token_psycopg_message(idgw, issuer):
    user = "pg-late@example.com"
    tok = issuer.token(issuer.claims(user, exp_in=-600), "ec-1")
    with pytest.raises(psycopg.OperationalError) as ei:
        login(idgw, user, tok)
    assert re.search(r'password authentication failed for user "pg-late@example.com": '
                     r"token refused: token expired \d+ s ago", str(ei.value)), str(ei.value)


def test_alias(idgw, issuer):
    tok = issuer.token(issuer.claims("alice@example.com", groups=["x"]), "rsa-1")
    with login(idgw, "shorty", tok) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    log_line(idgw, "auth_ok", "shorty", method="oidc")
    # the identity itself, as the startup user, is accepted too
    with login(idgw, "alice@example.com", tok) as c:
        assert c.execute("SELECT 2").fetchone() == (2,)
    # an alias is for one identity only
    bob = issuer.token(issuer.claims("bob@example.com"), "rsa-1")
    token_refused(idgw, "shorty", bob, 'token is for "bob@example.com", not for "shorty"')
    serves(idgw, issuer)


def test_nested_username_and_groups_claims(idgw, nested):
    now = int(time.time())
    claims = {"iss": nested.url, "aud": [AUDIENCE, "other"], "exp": now + 300, "iat": now,
              "sub": "opaque-123", "realm": {"user": "nest-user", "groups": ["n1", "n2", "n3"]}}
    with login(idgw, "nest-user", nested.token(claims)) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    log_line(idgw, "auth_ok", "nest-user", method="oidc", groups="3")
    # a top-level claim literally named "realm.user" is not the nested path
    flat = {"iss": nested.url, "aud": AUDIENCE, "exp": now + 300, "realm.user": "nest-user"}
    token_refused(idgw, "nest-user", nested.token(flat), 'token has no usable "realm.user" claim')
    # jwks_uri given: discovery is never asked
    assert nested.count("/.well-known/openid-configuration") == 0
    assert nested.count() >= 1


# ---------------------------------------------------------------------------- tokens: refused

def _malformed_b64(iss):
    tok = iss.token(iss.claims("case-b64@example.com"), "rsa-1")
    h, p, s = tok.split(".")
    return f"{h}.{p}A.{s}"  # length % 4 == 1: not base64url at all


def _not_json(iss):
    return f"{b64url(b'{not json')}.{b64url_json(iss.claims('case-json@example.com'))}.{b64url(b'sig' * 20)}"


def _huge(iss):
    tok = iss.token(iss.claims("case-huge@example.com", pad="x" * 15000), "rsa-1")
    assert 19000 < len(tok) < 22000
    return tok


def _for_other_user(iss):
    return iss.token(iss.claims("someone-else@example.com"), "rsa-1")


REFUSALS = {
    # case (the startup user is case-CASE@example.com): (make(issuer) -> token, reason: literal or regex)
    "expired": (lambda i: i.token(i.claims("case-expired@example.com", exp_in=-350), "rsa-1"),
                re.compile(r"token expired 3\d\d s ago")),
    "expired_ec": (lambda i: i.token(i.claims("case-expired_ec@example.com", exp_in=-90), "ec-1"),
                   re.compile(r"token expired \d+ s ago")),
    "not_yet_valid": (lambda i: i.token(i.claims("case-not_yet_valid@example.com",
                                                 nbf=int(time.time()) + 600), "ed-1"),
                      re.compile(r"token not valid for another (59\d|600) s")),
    "issued_in_future": (lambda i: i.token(i.claims("case-issued_in_future@example.com",
                                                    iat=int(time.time()) + 600), "rsa-1"),
                         re.compile(r"token issued (59\d|600) s in the future")),
    "wrong_issuer": (lambda i: i.token(i.claims("case-wrong_issuer@example.com",
                                                iss="https://idp.evil.example"), "rsa-1"),
                     'issuer "https://idp.evil.example" is not configured'),
    "wrong_audience": (lambda i: i.token(i.claims("case-wrong_audience@example.com",
                                                  aud=["other-app", "pgcordon-x"]), "ec-1"),
                       'audience does not include "pgcordon"'),
    "no_audience": (lambda i: i.token({k: v for k, v in i.claims("case-no_audience@example.com").items()
                                       if k != "aud"}, "rsa-1"),
                    'audience does not include "pgcordon"'),
    "bad_signature": (lambda i: tamper_payload(i.token(i.claims("case-bad_signature@example.com"),
                                                       "rsa-1"), groups=["admins"]),
                      'signature does not verify (kid "rsa-1")'),
    "bad_signature_eddsa": (lambda i: tamper_payload(
        i.token(i.claims("case-bad_signature_eddsa@example.com"), "ed-1"), exp=int(time.time()) + 9999),
        'signature does not verify (kid "ed-1")'),
    "unknown_kid": (lambda i: i.token(i.claims("case-unknown_kid@example.com"), "ghost"),
                    'no RS256 signing key with kid "ghost"'),
    "alg_none": (lambda i: unsigned(i.claims("case-alg_none@example.com"), kid="rsa-1"),
                 'algorithm "none" is not accepted'),
    "alg_none_no_kid": (lambda i: unsigned(i.claims("case-alg_none_no_kid@example.com")),
                        'algorithm "none" is not accepted'),
    "hs256_with_public_key": (lambda i: forge_hs256(i.claims("case-hs256_with_public_key@example.com"),
                                                    i.keys["rsa-1"].public_pem(), kid="rsa-1"),
                              'algorithm "HS256" is not accepted'),
    "es256_header_on_rsa_key": (lambda i: i.token(i.claims("case-es256_header_on_rsa_key@example.com"),
                                                  "ec-1", headers={"kid": "rsa-1"}),
                                'no ES256 signing key with kid "rsa-1"'),
    "malformed_base64": (_malformed_b64, "malformed token"),
    "malformed_json": (_not_json, "malformed token"),
    "huge": (_huge, re.compile(r"token too large \(over 16384 bytes\)")),
    "no_exp": (lambda i: i.token({k: v for k, v in i.claims("case-no_exp@example.com").items()
                                  if k != "exp"}, "rsa-1"),
               "token has no exp claim"),
    "no_username_claim": (lambda i: i.token(i.claims("case-no_username_claim@example.com", claim=None),
                                            "rsa-1"),
                          'token has no usable "email" claim'),
    "token_for_other_user": (_for_other_user,
                             'token is for "someone-else@example.com", not for "case-token_for_other_user@example.com"'),
}

LOG_REASONS = {"expired": "token expired", "bad_signature": "signature does not verify",
               "unknown_kid": "no RS256 signing key", "alg_none": 'algorithm \\\\"none\\\\"',
               "wrong_audience": "audience does not include", "huge": "token too large"}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_token_refused(idgw, issuer, case):
    make, reason = REFUSALS[case]
    user = f"case-{case}@example.com"
    tok = make(issuer)
    t0 = time.monotonic()
    token_refused(idgw, user, tok, reason)
    assert time.monotonic() - t0 < 10
    line = log_line(idgw, "auth_failed", user, method="oidc")
    if case in LOG_REASONS:
        assert re.search(r'reason="[^"\n]*' + LOG_REASONS[case], line), line
    serves(idgw, issuer)


def test_token_with_standard_base64_is_called_malformed(idgw, issuer):
    """A JWT-shaped password whose signature is standard base64 ('+', '/') instead of
    base64url: the refusal should say the token is malformed, like other malformed tokens."""
    user = "case-std-b64@example.com"
    tok = issuer.token(issuer.claims(user), "rsa-1")
    h, p, s = tok.split(".")
    s = s.replace("-", "+").replace("_", "/")
    if "+" not in s and "/" not in s:
        s = s[:-2] + "+/"
    token_refused(idgw, user, f"{h}.{p}.{s}", re.compile(r"malformed token.*"))
    serves(idgw, issuer)


def test_refusals_do_not_disturb_open_sessions(idgw, issuer):
    user = "steady@example.com"
    with login(idgw, user, issuer.token(issuer.claims(user), "ec-1")) as c:
        for case in ("expired", "alg_none", "bad_signature", "huge"):
            make, reason = REFUSALS[case]
            token_refused(idgw, f"case-{case}@example.com", make(issuer), reason)
            assert c.execute("SELECT %s::text", (case,)).fetchone() == (case,)


def test_token_accepted_within_leeway_can_run_statements(idgw, issuer):
    """exp 10 s ago, leeway 30s: the login is accepted (clock skew), so the session must not
    be ended as expired at its very first statement."""
    user = "skewed@example.com"
    tok = issuer.token(issuer.claims(user, exp=int(time.time()) - 10), "rsa-1")
    c = pgwire.RawConn(idgw.host, idgw.port, timeout=20)
    remember(tok)
    try:
        c.startup(user, "app", tok)
        c.send(pgwire.msg(b"Q", pgwire.cstr("SELECT 1")))
        typ, body = c.read_msg()
        assert typ != b"E", f"first statement after an accepted login: {pgwire.parse_fields(body)}"
        c.terminate()
    finally:
        c.close()
    serves(idgw, issuer)


def test_token_with_largest_exp(gateway_factory):
    """exp = 2**63-1 (a valid JSON integer): accepted and usable, or refused with a sensible
    reason; never arithmetic nonsense (a negative age). Its own gateway: on a UBSan build an
    overflow here aborts the process."""
    iss = Issuer(AUDIENCE)
    try:
        iss.add_key("rsa", "k1")
        gw = start_gateway(gateway_factory, lambda cfg: cfg.update(oidc=[iss.config()]))
        assert iss.wait_for_fetch(1)
        user = "forever@example.com"
        tok = iss.token(iss.claims(user, exp=2**63 - 1), "k1")
        r = attempt(gw, user, tok)
        if r is not None:
            msg = r[0]["M"]
            assert not re.search(r"-\d", msg), f"refused with {msg!r}"
        else:
            c = pgwire.RawConn(gw.host, gw.port, timeout=20)
            try:
                c.startup(user, "app", tok)
                rows, tag, err, _ = c.query("SELECT 1")
                assert err is None and rows == [["1"]], err
                c.terminate()
            finally:
                c.close()
        gw.assert_serves()
    finally:
        iss.close()


# ---------------------------------------------------------------------------- key fetching

def test_rotated_key_works_without_restart(gateway_factory):
    iss = Issuer(AUDIENCE)
    try:
        iss.add_key("rsa", "old")
        # username_claim left at its default: sub
        gw = start_gateway(gateway_factory, lambda cfg: cfg.update(
            oidc=[iss.config(username_claim=None, min_refresh="1s", refresh="1h")]))
        assert iss.wait_for_fetch(1)
        user = "rot@example.com"

        def tok(kid):
            return iss.token(iss.claims(user, claim="sub"), kid)

        assert attempt(gw, user, tok("old")) is None
        time.sleep(1.2)  # past min_refresh since the fetch at start
        iss.add_key("ec", "new")  # the issuer rotates: the new kid joins the JWKS
        fetches = iss.count()
        t0 = time.monotonic()
        with login(gw, user, tok("new")) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        assert time.monotonic() - t0 < 8
        assert iss.count() == fetches + 1, "the unknown kid should cause exactly one refetch"
        # both keys verify now, without further fetches
        assert attempt(gw, user, tok("old")) is None
        assert attempt(gw, user, tok("new")) is None
        assert iss.count() == fetches + 1
        gw.assert_serves()
    finally:
        iss.close()


def test_rotated_key_waits_for_its_own_issuers_fetch(gateway_factory):
    """Two issuers. While the fetch thread waits for issuer Y's JWKS (a scheduled refresh), a
    login with a new kid of issuer X asks for X's keys and waits. Y's fetch finishing must
    not end that wait with a refusal: the login is verified once X's keys were refetched."""
    x, y = Issuer(AUDIENCE), Issuer(AUDIENCE)
    try:
        x.add_key("rsa", "x1")
        y.add_key("ec", "y1")
        gw = start_gateway(gateway_factory, lambda cfg: cfg.update(oidc=[
            x.config(jwks_uri=x.jwks_uri, min_refresh="1s", refresh="1h"),
            y.config(jwks_uri=y.jwks_uri, min_refresh="1s", refresh="1s")]))
        assert x.wait_for_fetch(1) and y.wait_for_fetch(1)
        time.sleep(1.2)  # X may be refetched again
        y.hold_next()
        assert y.held.wait(10), "no scheduled refresh of Y within 10 s (refresh: 1s)"
        x.add_key("ec", "x2")  # X rotates
        user = "race@example.com"
        tok = x.token(x.claims(user), "x2")
        result = {}
        th = threading.Thread(target=lambda: result.update(r=attempt(gw, user, tok)))
        th.start()
        time.sleep(0.5)  # the login is now waiting for X's keys
        y.release()
        th.join(30)
        assert "r" in result, "login did not finish"
        assert result["r"] is None, f"refused: {result['r'][0]}"
        gw.assert_serves()
    finally:
        x.close()
        y.close()


def test_issuer_down_after_start_keeps_cached_keys(gateway_factory):
    iss = Issuer(AUDIENCE)
    try:
        iss.add_key("ed25519", "k1")
        iss.add_key("rsa", "later", publish=False)
        gw = start_gateway(gateway_factory, lambda cfg: cfg.update(
            oidc=[iss.config(min_refresh="1s", refresh="1s")]))
        assert iss.wait_for_fetch(1)
        iss.take_down()
        assert gw.wait_log(r"event=oidc_keys_failed", timeout=10), gw.log_text()[-2000:]
        time.sleep(1.5)  # scheduled refreshes keep failing
        user = "down@example.com"
        with login(gw, user, iss.token(iss.claims(user), "k1")) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        t0 = time.monotonic()
        token_refused(gw, user, iss.token(iss.claims(user), "later"),
                      'no RS256 signing key with kid "later"')
        assert time.monotonic() - t0 < 10
        assert gw.alive()
        gw.assert_serves()
    finally:
        iss.close()


def test_failing_refresh_is_rate_limited(gateway_factory):
    """Scheduled refreshes (refresh: 1s) against an issuer answering 503: the keys stay
    usable, and the gateway does not retry faster than its schedule (refresh/min_refresh)."""
    iss = Issuer(AUDIENCE)
    try:
        iss.add_key("ec", "k1")
        gw = start_gateway(gateway_factory, lambda cfg: cfg.update(
            oidc=[iss.config(jwks_uri=iss.jwks_uri, min_refresh="1s", refresh="1s")]))
        assert iss.wait_for_fetch(1)
        iss.mode = 503
        t0 = time.monotonic()
        time.sleep(3.0)
        n = iss.requests_since(t0)
        failed = gw.count_log(r"event=oidc_keys_failed")
        user = "flaky@example.com"
        assert attempt(gw, user, iss.token(iss.claims(user), "k1")) is None
        assert n >= 1, "no refresh attempted in 3 s with refresh: 1s"
        assert n <= 6, (f"{n} JWKS requests in 3 s while the issuer answers 503 (refresh: 1s, "
                        f"min_refresh: 1s); {failed} event=oidc_keys_failed lines")
    finally:
        iss.mode = "up"
        iss.close()


@pytest.mark.parametrize("min_refresh", ["0s", "500ms"])
def test_subsecond_min_refresh_does_not_remove_the_rate_limit(gateway_factory, min_refresh):
    """min_refresh below one second (0s, 500ms) with an issuer answering 503: either the
    config is refused, or fetches stay bounded (not a flood of requests)."""
    iss = Issuer(AUDIENCE)
    try:
        iss.add_key("ec", "k1")
        iss.mode = 503
        try:
            gw = start_gateway(gateway_factory, lambda cfg: cfg.update(
                oidc=[iss.config(jwks_uri=iss.jwks_uri, min_refresh=min_refresh, refresh="1s")]))
        except GatewayDied as e:
            assert "min_refresh" in str(e), str(e)
            gateway_factory.gateways.pop()  # refused config: expected, not a crash
            return
        t0 = time.monotonic()
        time.sleep(2.0)
        n = iss.requests_since(t0)
        assert n <= 10, f"{n} JWKS requests in 2 s with min_refresh: {min_refresh} (issuer answers 503)"
        gw.assert_serves()
    finally:
        iss.mode = "up"
        iss.close()


def test_issuer_never_reachable(gateway_factory):
    port = closed_port()
    iss = Issuer(AUDIENCE, port=port)  # only for its keys and token helpers
    iss.take_down()
    try:
        iss.add_key("rsa", "k1")
        gw = start_gateway(gateway_factory, lambda cfg: cfg.update(
            oidc=[iss.config(min_refresh="1s")]))
        assert gw.wait_log(r"event=oidc_keys_failed", timeout=15), gw.log_text()[-2000:]
        user = "nokeys@example.com"
        t0 = time.monotonic()
        token_refused(gw, user, iss.token(iss.claims(user), "k1"),
                      f"no signing keys for issuer {iss.url} (it has not been reachable)")
        assert time.monotonic() - t0 < 10
        gw.assert_serves()
        # the issuer comes up: tokens work, no restart
        iss.bring_up()
        assert iss.port == port
        deadline = time.monotonic() + 15
        while attempt(gw, user, iss.token(iss.claims(user), "k1")) is not None:
            assert time.monotonic() < deadline, "tokens still refused after the issuer came up"
            time.sleep(0.5)
    finally:
        iss.close()


# A discovery document whose keys must not be fetched: one that speaks for another issuer;
# and one that sends the key fetch to plain http:// elsewhere (keys fetched in clear could
# be swapped on the way, and tokens forged with them). The second URL is one curl would
# fetch from the issuer itself (x is a user name): only the check stops it, and the
# issuer's request count shows whether it did.
@pytest.mark.parametrize("field,value,logged", [
    ("discovery_issuer", lambda iss: "https://impostor.example", r"discovery document is for issuer"),
    ("discovery_jwks_uri", lambda iss: iss.jwks_uri.replace("http://", "http://x@", 1),
     r"jwks_uri http://x@127\.0\.0\.1[^\n]*is not https://"),
], ids=["another_issuer", "jwks_uri_in_clear_off_loopback"])
def test_untrusted_discovery_document_is_not_followed(gateway_factory, field, value, logged):
    iss = Issuer(AUDIENCE)
    try:
        iss.add_key("rsa", "k1")
        setattr(iss, field, value(iss))
        gw = start_gateway(gateway_factory, lambda cfg: cfg.update(oidc=[iss.config()]))
        assert gw.wait_log(r"event=oidc_keys_failed[^\n]*" + logged, timeout=15), gw.log_text()[-2000:]
        user = "disc@example.com"
        token_refused(gw, user, iss.token(iss.claims(user), "k1"),
                      re.compile(r"no signing keys for issuer .*"))
        assert iss.count() == 0, f"keys fetched after a discovery document with {field} = {value(iss)}"
    finally:
        iss.close()


def test_unknown_kid_refetch_is_rate_limited(gateway_factory):
    iss = Issuer(AUDIENCE)
    try:
        iss.add_key("rsa", "k1")
        bad = iss.add_key("rsa", "bad", publish=False)
        gw = start_gateway(gateway_factory, lambda cfg: cfg.update(
            oidc=[iss.config(jwks_uri=iss.jwks_uri, min_refresh="3s", refresh="1h")]))
        assert iss.wait_for_fetch(1)
        time.sleep(3.2)  # a refetch is allowed again
        before = iss.count()
        t0 = time.monotonic()
        results = []

        def one(i):
            user = f"burst{i}@example.com"
            try:
                results.append(attempt(gw, user, iss.token(iss.claims(user), key=bad)))
            except Exception as e:  # noqa: BLE001 - reported below
                results.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(25)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i in range(15):  # and some more, one after the other
            one(100 + i)
        elapsed = time.monotonic() - t0
        fetched = iss.count() - before
        assert len(results) == 40
        for r in results:
            assert isinstance(r, tuple), r
            assert r[0]["M"].endswith('token refused: no RS256 signing key with kid "bad"'), r
        assert 1 <= fetched <= 1 + int(elapsed / 3) + 1, \
            f"{fetched} JWKS fetches for 40 unknown-kid logins in {elapsed:.1f}s (min_refresh 3s)"
        # good tokens are not slowed down or refused meanwhile
        assert attempt(gw, "ok@example.com", iss.token(iss.claims("ok@example.com"), "k1")) is None
        gw.assert_serves()
    finally:
        iss.close()


# ---------------------------------------------------------------------------- expiry in session

def test_token_expiring_during_session(idgw, short, issuer):
    user = "brief@example.com"
    exp = int(time.time()) + 3
    tok = short.token(short.claims(user, exp=exp), "short-1")
    c = login(idgw, user, tok)
    try:
        assert c.execute("SELECT 1").fetchone() == (1,)
        while time.time() < exp + 1.3:
            time.sleep(0.1)
        with pytest.raises(psycopg.OperationalError) as ei:
            c.execute("SELECT 2")
        # libpq reports a FATAL that arrives with the connection's end as text only (no
        # SQLSTATE); severity and code are checked with the raw client in the API key test.
        assert EXPIRED_SESSION in str(ei.value), str(ei.value)
        assert c.closed or c.broken
    finally:
        c.close()
    log_line(idgw, "credential_expired", user, method="oidc")
    # the same token cannot log in again (leeway 0s)
    token_refused(idgw, user, tok, re.compile(r"token expired \d s ago"))
    serves(idgw, issuer)


def test_apikey_expiring_during_session(gateway_factory):
    exp = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
    key, entry = apikey_create("soon-bot", ["agents"], exp.strftime("%Y-%m-%dT%H:%M:%SZ"))
    gw = start_gateway(gateway_factory, lambda cfg: cfg.update(api_keys={"soon-bot": entry}))
    raw = pgwire.RawConn(gw.host, gw.port, timeout=20)
    remember(key)
    try:
        raw.startup("soon-bot", "app", key)
        rows, tag, err, _ = raw.query("SELECT 1")
        assert rows == [["1"]] and err is None
        while time.time() < exp.timestamp() + 1.3:
            time.sleep(0.1)
        raw.send(pgwire.msg(b"Q", pgwire.cstr("SELECT 2")))
        err = raw.read_error()
        assert (err.get("S"), err.get("C"), err.get("M")) == ("FATAL", "28000", EXPIRED_SESSION)
        assert raw.expect_closed(10)
    finally:
        raw.close()
    refuse(gw, "soon-bot", key, "the API key has expired")
    gw.assert_serves()


# ---------------------------------------------------------------------------- API keys

def test_apikey_login(idgw, apikeys, issuer):
    key, entry = apikeys["ci-bot"]
    with login(idgw, "ci-bot", key) as c:
        assert c.execute("SELECT current_user").fetchone() == ("gw_scram",)
    log_line(idgw, "auth_ok", "ci-bot", method="apikey", groups="1")
    key2, _ = apikeys["plain-bot"]  # no groups, no expiry
    with login(idgw, "plain-bot", key2) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    r = psql(idgw, "ci-bot", key, "SELECT 'k' || 'ey'")
    assert r.returncode == 0 and r.stdout.strip() == "key", r.stderr


def test_apikey_wrong_key_refused(idgw, apikeys, issuer):
    key, _ = apikeys["ci-bot"]
    wrong = "pgc_" + b64url(secrets.token_bytes(32))
    refuse(idgw, "ci-bot", wrong)
    log_line(idgw, "auth_failed", "ci-bot", method="apikey", reason='"wrong API key"')
    # a key is bound to its name
    refuse(idgw, "plain-bot", key)
    # a name with no key
    refuse(idgw, "nobody-bot", key)
    log_line(idgw, "auth_failed", "nobody-bot", method="apikey", reason='"no API key with this name"')
    # a truncated key
    refuse(idgw, "ci-bot", key[:-1])
    serves(idgw, issuer)
    with login(idgw, "ci-bot", key) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_apikey_expired_refused(idgw, apikeys, issuer):
    key, entry = apikeys["old-bot"]
    assert entry["expires"] == "2020-01-01"
    refuse(idgw, "old-bot", key, "the API key has expired")
    log_line(idgw, "auth_failed", "old-bot", method="apikey", reason='"API key expired"')
    serves(idgw, issuer)


def test_apikey_removed_by_reload(gateway_factory):
    k1, e1 = apikey_create("keep-bot", ["agents"])
    k2, e2 = apikey_create("gone-bot", ["agents"])
    gw = start_gateway(gateway_factory,
                       lambda cfg: cfg.update(api_keys={"keep-bot": e1, "gone-bot": e2}))
    assert attempt(gw, "gone-bot", k2) is None
    assert attempt(gw, "keep-bot", k1) is None
    cfg = dict(gw.config)
    cfg["api_keys"] = {"keep-bot": e1}
    gw.reload_and_wait(cfg)
    refuse(gw, "gone-bot", k2)
    log_line(gw, "auth_failed", "gone-bot", method="apikey", reason='"no API key with this name"')
    assert attempt(gw, "keep-bot", k1) is None
    gw.assert_serves()


def test_apikey_removed_by_reload_ends_open_sessions(gateway_factory):
    """Revoking a key (removing it from the config) also ends the sessions it opened, at
    their next statement; sessions of other keys go on."""
    k1, e1 = apikey_create("stay-bot", ["agents"])
    k2, e2 = apikey_create("revoked-bot", ["agents"])
    gw = start_gateway(gateway_factory,
                       lambda cfg: cfg.update(api_keys={"stay-bot": e1, "revoked-bot": e2}))
    remember(k1)
    remember(k2)
    stay = pgwire.RawConn(gw.host, gw.port, timeout=20)
    gone = pgwire.RawConn(gw.host, gw.port, timeout=20)
    try:
        stay.startup("stay-bot", "app", k1)
        gone.startup("revoked-bot", "app", k2)
        assert gone.query("SELECT 1")[0] == [["1"]]
        cfg = dict(gw.config)
        cfg["api_keys"] = {"stay-bot": e1}
        gw.reload_and_wait(cfg)
        gone.send(pgwire.msg(b"Q", pgwire.cstr("SELECT 2")))
        err = gone.read_error()
        assert (err.get("S"), err.get("C")) == ("FATAL", "28000"), err
        assert "API key of this session was revoked" in err.get("M", ""), err
        assert gone.expect_closed(10)
        assert stay.query("SELECT 3")[0] == [["3"]]
    finally:
        stay.close()
        gone.close()
    gw.assert_serves()


def test_apikey_cli_rejects_bad_names():
    for bad in ("has space", "semi;colon", "x" * 64, ""):
        r = subprocess.run([str(BIN), "apikey", "create", bad], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert "pgc_" not in r.stdout
    r = subprocess.run([str(BIN), "apikey", "create", "ok", "--bogus", "x"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "pgc_" not in r.stdout
    # two keys are never the same
    a, _ = apikey_create("twice")
    b, _ = apikey_create("twice")
    assert a != b


# ---------------------------------------------------------------------------- roles and groups

def test_role_mapping_current_user(rolegw, issuer):
    user = "analyst@example.com"
    tok = issuer.token(issuer.claims(user, groups=["analysts"]), "rsa-1")
    with login(rolegw, user, tok) as c:
        assert who(c) == (ROLE_RO, "gw_scram")
        assert c.execute("SELECT count(*) FROM public.items").fetchone() == (100,)
        # not blocked by policy agentguard (that is for agents)
        c.execute("DROP TABLE IF EXISTS idt_never_there_" + SFX)
    log_line(rolegw, "auth_ok", user, method="oidc", role=f'"{ROLE_RO}"')


@pytest.mark.parametrize("sql", ["SET ROLE gw_scram", "RESET ROLE", "SET ROLE NONE",
                                 "SET SESSION AUTHORIZATION gw_scram",
                                 "RESET SESSION AUTHORIZATION", "SET SESSION AUTHORIZATION DEFAULT",
                                 "DISCARD ALL",
                                 "SELECT set_config('role', 'gw_scram', false)"])
def test_role_cannot_be_left(rolegw, issuer, sql):
    user = "pinned@example.com"
    tok = issuer.token(issuer.claims(user, groups=["analysts"]), "ec-1")
    with login(rolegw, user, tok) as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(sql)
        assert ei.value.sqlstate == "42501", (ei.value.sqlstate, str(ei.value))
        assert ROLE_RO in str(ei.value) or "not allowed" in str(ei.value), str(ei.value)
        assert who(c) == (ROLE_RO, "gw_scram")


ESCAPES = {
    "do_set_role": "DO $$BEGIN SET ROLE gw_scram; END$$",
    "do_execute_set_role": "DO $$BEGIN EXECUTE 'SET ROLE gw_scram'; END$$",
    "do_set_config": "DO $$BEGIN PERFORM set_config('role', 'gw_scram', false); END$$",
    "multi_statement_do": "SELECT 1; DO $$BEGIN SET ROLE gw_scram; END$$",
    "temp_plpgsql_function": "CREATE FUNCTION pg_temp.esc() RETURNS void LANGUAGE plpgsql "
                             "AS $$BEGIN SET ROLE gw_scram; END$$; SELECT pg_temp.esc()",
    "temp_sql_function": "CREATE FUNCTION pg_temp.esc() RETURNS text LANGUAGE sql "
                         "AS $$SELECT set_config('role', 'gw_scram', false)$$; SELECT pg_temp.esc()",
    "temp_procedure": "CREATE PROCEDURE pg_temp.esc() LANGUAGE plpgsql "
                      "AS $$BEGIN SET ROLE gw_scram; END$$; CALL pg_temp.esc()",
    "function_set_clause": "CREATE FUNCTION pg_temp.esc() RETURNS text LANGUAGE sql "
                           "SET role = gw_scram AS $$SELECT current_user::text$$; "
                           "SELECT pg_temp.esc()",
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_role_cannot_be_left_through_code(rolegw, issuer, case):
    """The caller runs as the mapped role and "cannot leave it" (docs/identity.md): not with
    SET ROLE inside a DO block, a temporary function or procedure, nor a function's SET
    clause. Either the statement is refused, or nothing of it ran as another role."""
    user = f"escape-{case.replace('_', '-')}@example.com"
    tok = issuer.token(issuer.claims(user, groups=["analysts"]), "rsa-1")
    with login(rolegw, user, tok) as c:
        rows = []
        try:
            cur = c.execute(ESCAPES[case])
            while True:  # every statement's result
                if cur.description:
                    rows += cur.fetchall()
                if not cur.nextset():
                    break
        except psycopg.Error as e:
            assert e.sqlstate == "42501", (e.sqlstate, str(e))
        assert ("gw_scram",) not in rows, f"{case}: code ran as gw_scram: {rows}"
        assert who(c) == (ROLE_RO, "gw_scram"), f"{case}: the session left role {ROLE_RO}"


def test_role_cannot_be_set_in_startup(rolegw, issuer):
    user = "sneaky@example.com"
    tok = issuer.token(issuer.claims(user, groups=["analysts"]), "rsa-1")
    refuse(rolegw, user, tok, sqlstate="42501", message=re.compile(r".*role.*"),
           extra={"options": "-c role=gw_scram"})
    refuse(rolegw, user, tok, sqlstate="42501", message=re.compile(r".*role.*"),
           extra={"role": "gw_scram"})
    refuse(rolegw, user, tok, sqlstate="42501", message=re.compile(r".*session_authorization.*"),
           extra={"session_authorization": "gw_scram"})
    with login(rolegw, user, tok) as c:
        assert who(c) == (ROLE_RO, "gw_scram")


def test_groups_select_policy_and_role(rolegw, issuer):
    user = "agent@example.com"
    tok = issuer.token(issuer.claims(user, groups=["agents"]), "ed-1")
    with login(rolegw, user, tok) as c:
        assert who(c) == (ROLE_AG, "gw_scram")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("DROP TABLE IF EXISTS public.items")
        assert ei.value.sqlstate == "42501"
        assert ei.value.diag.message_primary == \
            "pgcordon: blocked by policy agentguard: DROP TABLE is not allowed"
        assert c.execute("SELECT count(*) FROM public.items").fetchone() == (100,)
    # a single group as a string
    tok1 = issuer.token(issuer.claims(user, groups="agents"), "ed-1")
    with login(rolegw, user, tok1) as c:
        assert who(c) == (ROLE_AG, "gw_scram")


def test_first_roles_entry_wins(rolegw, issuer):
    """roles: lists analysts before agents; the token lists agents first."""
    user = "both@example.com"
    tok = issuer.token(issuer.claims(user, groups=["agents", "analysts"]), "rsa-1")
    with login(rolegw, user, tok) as c:
        assert who(c) == (ROLE_RO, "gw_scram")
        with pytest.raises(psycopg.Error) as ei:  # the agents policy still applies
            c.execute("DROP TABLE IF EXISTS public.items")
        assert ei.value.sqlstate == "42501"


def test_apikey_groups_select_role_and_policy(rolegw):
    with login(rolegw, "agent-bot", rolegw.agent_key) as c:
        assert who(c) == (ROLE_AG, "gw_scram")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("DROP TABLE IF EXISTS public.items")
        assert ei.value.sqlstate == "42501"
    log_line(rolegw, "auth_ok", "agent-bot", method="apikey", role=f'"{ROLE_AG}"')


@pytest.mark.parametrize("groups", [["nobody-group"], [], None], ids=["other", "empty", "absent"])
def test_groups_with_no_role_and_no_policy_refused(rolegw, issuer, groups):
    user = f"lost-{len(groups) if groups is not None else 'x'}@example.com"
    tok = issuer.token(issuer.claims(user, groups=groups), "rsa-1")
    refuse(rolegw, user, tok, sqlstate="42501",
           message=f'pgcordon: the groups of "{user}" map to no database role and no policy')
    rolegw.assert_serves()
    ok = issuer.token(issuer.claims("fine@example.com", groups=["analysts"]), "rsa-1")
    assert attempt(rolegw, "fine@example.com", ok) is None



