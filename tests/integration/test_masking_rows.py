"""Masking in the gateway (REWRITE_ROWS): a plain SELECT of one masked relation whose masked
columns appear only as bare output columns runs upstream as written, and the gateway masks
every DataRow field whose RowDescription origin is a masked column (mask/rowmask.c).

These tests check that
  - the gateway path gives exactly the values of the SQL (rewrite) path for every method,
    including non-ASCII text, empty strings, NULLs, short values and varchar(n) truncation;
  - which path ran, read from pg_stat_activity of the masked session's upstream backend
    (the plain statement unchanged, or the masking subquery);
  - binary results, prepared statements, server-side cursors and the raw extended protocol
    (no Describe, pipelined portals, Close and re-Parse, max rows) stay masked;
  - statements that must not take the gateway path do not, and leak nothing (block and
    allow modes);
  - a client encoding other than UTF8 falls back to the rewrite path or closes the session.

Bugs found are kept as xfail(strict=True) with a reason starting "LEAK:" (a raw value, or
what recovers one, reaches the client) or "FAILS:" (the paths disagree, or a legitimate
statement breaks)."""

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import time

import psycopg
import pytest

import pgwire
from conftest import REPO, GatewayFactory, require_binary, scram_verifier
from pgwire import cstr, msg

SFX = secrets.token_hex(3)
PW = "MaskRows-8e7d6c5b4a"
R = f"mskr_{SFX}"       # the masked relation
U = f"mskr_plain_{SFX}"  # an unmasked relation (for joins)
DEG = "\u00b0"          # the degree sign: one byte (0xB0, a UTF-8 continuation byte) in LATIN1

# Every column's rule; the varchar lengths make redact/fixed/hash values longer than the column.
COLUMNS = [
    # name, type, rule (None: not masked)
    ("name", "text", {"method": "redact"}),
    ("email", "text", {"method": "email"}),
    ("ssn", "varchar(11)", {"method": "partial", "keep_last": 4}),
    ("card", "text", {"method": "partial", "keep_first": 2, "keep_last": 2}),
    ("note", "varchar(5)", {"method": "redact"}),
    ("tag", "text", {"method": "null"}),
    ("secret", "text", {"method": "hash"}),
    ("code", "varchar(6)", {"method": "fixed", "value": "FIXED-VALUE"}),
    ("hv", "varchar(8)", {"method": "hash"}),
    ("ft", "text", {"method": "fixed", "value": "\u03a9mega \u2713 fixed"}),
    ("info", "text", None),
]
MASKED = [c for c, _, r in COLUMNS if r]
VARCHAR = {c: int(re.search(r"\((\d+)\)", t).group(1)) for c, t, _ in COLUMNS if t.startswith("varchar")}
ALL = [c for c, _, _ in COLUMNS]
Z = "Zo\u00eb \u00dcn\u00efcode"  # 'Zoë Ünïcode'


def row(id, **kw):
    return (id, *[kw.get(c) for c in ALL])


ROWS = [
    # ASCII: ordinary values
    row(1, name="Jane Doe", email="jane.doe@example.com", ssn="123-45-6789", card="4111111111111111",
        note="hello", tag="vip-1", secret="s3cr3t-one", code="c1", hv="hv-one", ft="ft1", info="plain"),
    # empty strings
    row(2, name="", email="", ssn="", card="", note="", tag="", secret="", code="", hv="", ft="", info=""),
    # NULL everywhere
    row(3),
    # shorter than keep_first + keep_last; email without '@'
    row(4, name="ab", email="noatsign", ssn="12", card="abc", note="x", tag="t", secret="x", code="y",
        hv="z", ft="f", info="i"),
    # exactly keep_first + keep_last; email starting with '@'
    row(5, name="abcd", email="@example.com", ssn="6789", card="abcd", note="abcde", tag="tt",
        secret="abcd", code="abcdef", hv="abcdefgh", ft="abcd", info="ok"),
    # one more than what is kept; shortest email with a domain
    row(6, name="x y", email="a@b", ssn="1-2345", card="ab-cd-e", note="a-b", tag="x-y", secret="a b",
        code="a-b", hv="a-b", ft="a-b", info="a-b"),
    # ordering: raw order and masked order differ
    row(7, name="Zed", email="zed@a.example", ssn="999-99-0001", card="9900000000000011", note="zz",
        tag="z", secret="zzz", code="z", hv="z", ft="z", info="z"),
    row(8, name="Al", email="al@z.example", ssn="111-11-9999", card="1100000000000099", note="aa",
        tag="a", secret="aaa", code="a", hv="a", ft="a", info="a"),
    # non-ASCII letters
    row(10, name=Z, email="zo\u00eb.\u00fcn\u00ef@ex\u00e4mple.com", ssn="Zo\u00eb-\u00dcn\u00efcod",
        card=Z, note="Zo\u00eb \u00dc", tag=Z, secret=Z, code="Zo\u00eb", hv=Z[:8], ft=Z, info=Z),
    # a multi-byte first character
    row(11, name="\u00dcber", email="\u00dcn\u00ef@x.org", ssn="\u00c4\u00d6\u00dc-\u00df-1234",
        card="\u00dc\u00dc12345\u00dc\u00dc", note="\u00dc\u00dc\u00dc\u00dc\u00dc",
        tag="\u00dc", secret="\u00dcber", code="\u00dc\u00dc\u00dc\u00dc\u00dc\u00dc",
        hv="\u00dcber al", ft="\u00dc", info="\u00dc"),
    # non-ASCII letters in an email without '@'
    row(12, name="\u00c5nne", email="zo\u00eb-without-at", ssn="\u00c5\u00c4\u00d6", card="\u00c4b",
        note="\u00c4", tag="\u00c4", secret="\u00c4", code="\u00c4", hv="\u00c4", ft="\u00c4", info="\u00c4"),
    # non-ASCII symbols that are not letters or digits
    row(15, name="x\u20acy", email="\u20acuro@x.com", ssn="12\u20ac345\u20ac6789",
        card="12\u201434\u201456\u201478", note="\u20ac\u20ac\u20ac", tag="\u2014",
        secret="\u20ac", code="\u20ac", hv="\u20ac", ft="\u20ac", info="\u20ac"),
    row(16, name="\u20ac", email="\u20ac-no-at", ssn="\u20ac", card="\u2014", note="\u20ac", tag="\u20ac",
        secret="\u20ac", code="\u20ac", hv="\u20ac", ft="\u20ac", info="\u20ac"),
    # detection: a detectable value next to masked text, and in an unmasked column
    row(20, name="n", email="x@example.com 123-45-6789", ssn="000-00-0000", card="ab 4111111111111111 cd",
        note="n", tag="t", secret="s", code="c", hv="h", ft="f", info="ssn 123-45-6789 here"),
    # encodings: in LATIN1 the degree sign is a byte UTF-8 counts as a continuation byte
    row(30, name="n", email="n@x.org", ssn="ABCDEFG" + DEG * 4, card="AB" + DEG * 6 + "YZ",
        note="n", tag="t", secret="s", code="c", hv="h", ft="f", info="latin"),
]
GROUPS = {"ascii": (1, 8), "letters": (10, 12), "symbols": (15, 16), "detect": (20, 20)}

# Raw values that must never reach the masked client (masked by a column rule).
RAW = ["123-45-6789", "4111111111111111", "jane.doe", "Jane Doe", "s3cr3t-one", "hello", "vip-1",
       "9900000000000011", "1100000000000099", "999-99-0001", "111-11-9999", "ABCDEFG", "DEFG"]


def no_raw(obj, raw=RAW):
    text = repr(obj)
    for v in raw:
        assert v not in text, f"raw value {v!r} leaked in {text[:600]}"


# ---------------------------------------------------------------------------- reference model

def stars(s):
    """regexp_replace(s, '[[:alnum:]]|[^\\x01-\\x7f]', '*', 'g') (methods.c), as rowmask.c does it:
    ASCII letters and digits and every non-ASCII character become '*'."""
    return re.sub(r"[A-Za-z0-9]|[^\x00-\x7f]", "*", s)


def expected(col, v, key):
    """The masked value of column col for raw value v, as the SQL methods of methods.c compute it."""
    rule = dict(COLUMNS_BY_NAME[col][1])
    if v is None:
        return None
    m = rule["method"]
    if m == "null":
        return None
    if m == "redact":
        out = "[REDACTED]"
    elif m == "fixed":
        out = rule["value"]
    elif m == "partial":
        kf, kl = rule.get("keep_first", 0), rule.get("keep_last", 0)
        if len(v) <= kf + kl:
            out = stars(v)
        else:
            out = v[:kf] + stars(v[kf:len(v) - kl]) + v[len(v) - kl:]
    elif m == "email":
        p = v.find("@")
        out = v[0] + "***" + v[p:] if p > 0 else stars(v)
    elif m == "hash":
        k = hashlib.sha256(key).digest()
        out = "h:" + hmac.new(k, v.encode(), hashlib.sha256).hexdigest()[:16]
    else:
        raise AssertionError(m)
    n = VARCHAR.get(col)
    return out[:n] if n else out


COLUMNS_BY_NAME = {c: (t, r) for c, t, r in COLUMNS}


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def objects(pg):
    c = pg.super_connect()
    cols = ", ".join(f"{n} {t}" for n, t, _ in COLUMNS)
    c.execute(f"CREATE TABLE {R} (id int PRIMARY KEY, {cols})")
    with c.cursor() as cur:
        cur.executemany(f"INSERT INTO {R} VALUES ({', '.join(['%s'] * (len(ALL) + 1))})", ROWS)
    c.execute(f"ALTER TABLE {R} OWNER TO gw_scram")
    c.execute(f"CREATE TABLE {U} (id int, label text)")
    c.execute(f"INSERT INTO {U} SELECT g, 'label ' || g FROM generate_series(1, 40) g")
    c.execute(f"ALTER TABLE {U} OWNER TO gw_scram")
    yield
    c.execute(f"DROP TABLE IF EXISTS {R}, {U} CASCADE")
    c.close()


def rows_config(cfg, keyfile, predicate):
    cfg["users"]["masked"] = {"password": scram_verifier(PW), "groups": ["support"]}
    cfg["masking"] = {"hash_key_file": str(keyfile)}
    mask = []
    for name, _, rule in COLUMNS:
        if rule:
            mask.append(dict({"columns": [f"public.{R}.{name}"]}, **rule))
    mask.append({"detect": ["credit_card", "us_ssn", "email"], "method": "redact"})
    cfg["policies"] = [
        {"name": "open", "match": {"users": ["alice", "bob"]}},
        {"name": "support", "match": {"groups": ["support"]}, "on_masked_predicate": predicate,
         "mask": mask},
    ]


class MGw:
    def __init__(self, g, key):
        self.g, self.key = g, key


def start_gateway(pg, certs, tmp_path_factory, predicate):
    require_binary()
    root = tmp_path_factory.mktemp(f"maskrows-{predicate}")
    keyfile = root / "hash.key"
    key = secrets.token_hex(32).encode()
    keyfile.write_bytes(key)
    f = GatewayFactory(pg, certs, root)
    g = f.start(lambda cfg: rows_config(cfg, keyfile, predicate))
    return f, MGw(g, key)


@pytest.fixture(scope="module")
def mgw(pg, certs, tmp_path_factory, objects):
    f, m = start_gateway(pg, certs, tmp_path_factory, "block")
    yield m
    f.cleanup()


@pytest.fixture(scope="module")
def mgw_allow(pg, certs, tmp_path_factory, objects):
    f, m = start_gateway(pg, certs, tmp_path_factory, "allow")
    yield m
    f.cleanup()


@pytest.fixture(scope="module")
def su(pg):
    c = pg.super_connect()
    yield c
    c.close()


def app_name():
    return "mskr-" + secrets.token_hex(4)


def connect(m, app=None, **kw):
    return m.g.connect(user="masked", password=PW, application_name=app or app_name(), **kw)


def upstream_query(su, app, timeout=10):
    """The last statement of the masked session's upstream backend (found by application_name
    and the gateway's upstream role), once that backend is idle."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = su.execute("SELECT query, state FROM pg_stat_activity WHERE application_name = %s"
                         " AND usename = 'gw_scram' AND backend_type = 'client backend'",
                         (app,)).fetchall()
        if len(got) == 1 and got[0][1] in ("idle", "idle in transaction"):
            return got[0][0]
        time.sleep(0.05)
    raise AssertionError(f"no single idle upstream backend for application_name={app}: {got}")


def assert_gateway_path(su, app, sql):
    q = upstream_query(su, app)
    assert q == sql, f"expected the statement to go upstream as written (gateway path);" \
                     f" upstream ran {q[:300]!r}"


def assert_rewrite_path(su, app, sql):
    q = upstream_query(su, app)
    assert q != sql and '(SELECT "id", ' in q and "CASE WHEN" in q, \
        f"expected the masking subquery upstream (rewrite path) for {sql!r}; upstream ran {q[:300]!r}"


def leak(why):
    return pytest.mark.xfail(strict=True, reason="LEAK: " + why)


def fails(why):
    return pytest.mark.xfail(strict=True, reason="FAILS: " + why)


def raw_rows(ids, cols):
    by_id = {r[0]: r for r in ROWS}
    return [tuple([i] + [by_id[i][1 + ALL.index(c)] for c in cols]) for i in ids]


def expected_rows(m, ids, cols):
    return [tuple([r[0]] + [expected(c, v, m.key) if COLUMNS_BY_NAME[c][1] else v
                            for c, v in zip(cols, r[1:])]) for r in raw_rows(ids, cols)]


def ids_of(group):
    lo, hi = GROUPS[group]
    return [r[0] for r in ROWS if lo <= r[0] <= hi]


# ---------------------------------------------------------------------------- 1. the two paths agree

def both_paths(m, su, cols, lo, hi):
    """(gateway-path rows, rewrite-path rows), each path proven by pg_stat_activity."""
    sel = ", ".join(cols)
    gw_sql = f"SELECT id, {sel} FROM {R} WHERE id BETWEEN {lo} AND {hi} ORDER BY id"
    rw_sql = f"WITH x AS (SELECT * FROM {R}) SELECT id, {sel} FROM x WHERE id BETWEEN {lo} AND {hi} ORDER BY id"
    app = app_name()
    with connect(m, app) as c:
        g = c.execute(gw_sql).fetchall()
        assert_gateway_path(su, app, gw_sql)
        w = c.execute(rw_sql).fetchall()
        assert_rewrite_path(su, app, rw_sql)
    return g, w


def agree_params():
    out = []
    for col in MASKED:
        for group in GROUPS:
            method = COLUMNS_BY_NAME[col][1]["method"]
            out.append(pytest.param(col, group, id=f"{col}-{method}-{group}"))
    return out


@pytest.mark.parametrize("col,group", agree_params())
def test_paths_agree(mgw, su, col, group):
    lo, hi = GROUPS[group]
    g, w = both_paths(mgw, su, [col, "info"], lo, hi)
    ids = ids_of(group)
    assert [r[0] for r in g] == ids and [r[0] for r in w] == ids
    for a, b in zip(g, w):
        assert a == b, f"row {a[0]} column {col}: gateway path {a[1]!r}, rewrite path {b[1]!r}" \
                       f" (raw {raw_rows([a[0]], [col])[0][1]!r})"
    # The rewrite path is what the SQL methods compute (the reference model agrees with it),
    # except where the detectors redact what a method keeps (the detect group).
    exp = expected_rows(mgw, ids, [col])
    if group != "detect":
        assert [r[:2] for r in w] == exp, f"rewrite path {w} differs from the model {exp}"
    no_raw(g)


def test_paths_agree_all_columns_ascii(mgw, su):
    """Every masked column at once, ASCII rows: equal, and equal to hand-written values."""
    lo, hi = GROUPS["ascii"]
    g, w = both_paths(mgw, su, MASKED + ["info"], lo, hi)
    assert g == w
    no_raw(g)
    r1 = dict(zip(["id"] + MASKED + ["info"], g[0]))
    assert r1["name"] == "[REDACTED]" and r1["email"] == "j***@example.com"
    assert r1["ssn"] == "***-**-6789" and r1["card"] == "41************11"
    assert r1["note"] == "[REDA" and r1["tag"] is None and r1["code"] == "FIXED-"
    assert r1["ft"] == "\u03a9mega \u2713 fixed" and r1["info"] == "plain"
    k = hashlib.sha256(mgw.key).digest()
    assert r1["secret"] == "h:" + hmac.new(k, b"s3cr3t-one", hashlib.sha256).hexdigest()[:16]
    assert r1["hv"] == ("h:" + hmac.new(k, b"hv-one", hashlib.sha256).hexdigest())[:8]
    r2 = dict(zip(["id"] + MASKED + ["info"], g[1]))
    assert r2["email"] == "" and r2["ssn"] == "" and r2["secret"].startswith("h:") and r2["tag"] is None
    assert all(v is None for v in g[2][1:]), g[2]


def test_detection_on_unmasked_column_both_paths(mgw, su):
    g, w = both_paths(mgw, su, ["info"], 20, 20)
    assert g == w == [(20, "ssn [REDACTED] here")]


def test_star_and_alias_forms_take_gateway_path(mgw, su):
    exp = expected_rows(mgw, [1, 4], ALL)
    for sql in (f"SELECT * FROM {R} WHERE id IN (1, 4) ORDER BY id",
                f"SELECT t.* FROM {R} t WHERE t.id IN (1, 4) ORDER BY t.id",
                f"SELECT x.id, x.name, email, x.ssn, card, note, tag, secret, code, hv, ft, info"
                f" FROM public.{R} AS x WHERE id IN (1, 4) ORDER BY x.id LIMIT 5 OFFSET 0"):
        app = app_name()
        with connect(mgw, app) as c:
            got = c.execute(sql).fetchall()
            assert_gateway_path(su, app, sql)
        assert got == exp, sql
        no_raw(got)


def test_first_masked_value_of_a_session(mgw, su):
    """A fresh session whose first gateway-masked value is a partial with keep_first 0 (the
    output buffer is still empty), then an empty value."""
    for sql, want in ((f"SELECT ssn FROM {R} WHERE id = 1", [("***-**-6789",)]),
                      (f"SELECT email, card FROM {R} WHERE id = 2", [("", "")])):
        app = app_name()
        with connect(mgw, app) as c:
            assert c.execute(sql).fetchall() == want
            assert_gateway_path(su, app, sql)
    assert mgw.g.alive()


# ---------------------------------------------------------------------------- 2. drivers

GW_SQL = f"SELECT id, ssn, card, email, secret, note, tag FROM {R} WHERE id <= %s ORDER BY id"


def test_binary_results(mgw):
    exp = expected_rows(mgw, ids_of("ascii"), ["ssn", "card", "email", "secret", "note", "tag"])
    with connect(mgw) as c:
        got = c.cursor(binary=True).execute(GW_SQL, (8,)).fetchall()
        got_noparam = c.cursor(binary=True).execute(GW_SQL.replace("%s", "8")).fetchall()
    no_raw(got)
    assert got == exp and got_noparam == exp


@pytest.mark.parametrize("binary", [False, True])
def test_prepared_six_times(mgw, su, binary):
    exp = expected_rows(mgw, ids_of("ascii"), ["ssn", "card", "email", "secret", "note", "tag"])
    app = app_name()
    with connect(mgw, app) as c:
        cur = c.cursor(binary=binary)
        for i in range(7):
            got = cur.execute(GW_SQL, (8,), prepare=True).fetchall()
            no_raw(got)
            assert got == exp, f"execution {i + 1}"
        # The prepared statement went upstream as written.
        q = su.execute("SELECT query FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchone()[0]
        assert q == GW_SQL.replace("%s", "$1"), q


def test_psycopg_auto_prepare(mgw):
    exp = expected_rows(mgw, [1], ["ssn", "card", "email", "secret", "note", "tag"])
    with connect(mgw) as c:
        for _ in range(8):  # prepared after 5 executions
            got = c.execute(GW_SQL.replace("<= %s", "= %s"), (1,)).fetchall()
            assert got == exp


@pytest.mark.parametrize("binary", [False, True])
def test_server_side_cursor(mgw, binary):
    exp = expected_rows(mgw, ids_of("ascii"), ["ssn", "card", "email", "secret", "note", "tag"])
    with connect(mgw, autocommit=False) as c:
        with c.cursor(name="mskr_named", binary=binary) as cur:
            cur.itersize = 3
            cur.execute(GW_SQL, (8,))
            got = list(cur)
        c.rollback()
    no_raw(got)
    assert got == exp


# ---------------------------------------------------------------------------- 3. raw protocol

def parse_m(name, sql):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", 0))


def bind_m(portal, stmt, params=(), result_formats=()):
    body = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            b = p.encode()
            body += struct.pack("!i", len(b)) + b
    body += struct.pack("!H", len(result_formats))
    for f in result_formats:
        body += struct.pack("!H", f)
    return msg(b"B", body)


def describe_m(kind, name):
    return msg(b"D", kind + cstr(name))


def execute_m(portal, max_rows=0):
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


def close_m(kind, name):
    return msg(b"C", kind + cstr(name))


SYNC = msg(b"S")
FLUSH = msg(b"H")


def datarow(body, enc="utf-8"):
    (n,) = struct.unpack("!H", body[:2])
    pos, out = 2, []
    for _ in range(n):
        (ln,) = struct.unpack("!i", body[pos:pos + 4])
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(body[pos:pos + ln].decode(enc, "replace"))
            pos += ln
    return out


def read_until(conn, stop=(b"Z",), enc="utf-8", count=1):
    """Messages up to the count-th message whose type is in stop: [(type, value)], DataRows
    decoded. A closed connection ends the list with ('closed', None)."""
    out = []
    try:
        while True:
            typ, body = conn.read_msg()
            if typ == b"D":
                out.append(("D", datarow(body, enc)))
            elif typ in (b"E", b"N"):
                out.append((typ.decode(), pgwire.parse_fields(body)))
            else:
                out.append((typ.decode(), body))
            if typ in stop:
                count -= 1
                if count == 0:
                    return out
    except (pgwire.ConnectionClosed, OSError):
        out.append(("closed", None))
        return out


def rows_in(msgs):
    return [v for t, v in msgs if t == "D"]


def types_in(msgs):
    return [t for t, _ in msgs]


def raw_connect(m, app=None, extra=None):
    c = pgwire.RawConn(m.g.host, m.g.port)
    params = {"application_name": app or app_name()}
    params.update(extra or {})
    c.startup("masked", "app", PW, extra=params)
    return c


def masked_text_rows(m, ids, cols):
    return [[str(r[0])] + list(r[1:]) for r in expected_rows(m, ids, cols)]


SEL = f"SELECT id, ssn, card, email, secret FROM {R} WHERE id <= 8 ORDER BY id"
SEL_COLS = ["ssn", "card", "email", "secret"]


@pytest.mark.parametrize("fmt", [0, 1])
def test_raw_execute_without_describe(mgw, su, fmt):
    app = app_name()
    c = raw_connect(mgw, app)
    try:
        c.send(parse_m("s1", SEL) + bind_m("", "s1", result_formats=(0, 1, 1, 1, 1) if fmt else ())
               + execute_m("") + SYNC)
        got = read_until(c)
    finally:
        c.terminate()
    no_raw(got)
    assert types_in(got)[:2] == ["1", "2"] and types_in(got)[-2:] == ["C", "Z"], types_in(got)
    assert "T" not in types_in(got), "the gateway's own Describe answer reached the client"
    # text is the same bytes in binary format
    assert rows_in(got) == masked_text_rows(mgw, ids_of("ascii"), SEL_COLS)


def test_raw_execute_without_describe_is_gateway_path(mgw, su):
    app = app_name()
    c = raw_connect(mgw, app)
    try:
        c.send(parse_m("s1", SEL) + bind_m("", "s1") + execute_m("") + SYNC)
        got = read_until(c)
        assert_gateway_path(su, app, SEL)
    finally:
        c.terminate()
    assert rows_in(got) == masked_text_rows(mgw, ids_of("ascii"), SEL_COLS)


def test_raw_describe_statement_then_execute(mgw):
    c = raw_connect(mgw)
    try:
        c.send(parse_m("s1", SEL) + describe_m(b"S", "s1") + SYNC)
        first = read_until(c)
        c.send(bind_m("p", "s1") + execute_m("p") + SYNC)
        got = read_until(c)
    finally:
        c.terminate()
    assert "T" in types_in(first)
    no_raw(got)
    assert rows_in(got) == masked_text_rows(mgw, ids_of("ascii"), SEL_COLS)


def test_raw_pipelined_portals(mgw):
    other = f"SELECT id, label FROM {U} WHERE id <= 2 ORDER BY id"
    c = raw_connect(mgw)
    try:
        c.send(parse_m("sa", SEL) + parse_m("sb", other)
               + bind_m("p1", "sa") + bind_m("p2", "sa") + bind_m("p3", "sb")
               + execute_m("p1") + execute_m("p3") + execute_m("p2") + SYNC)
        got = read_until(c)
    finally:
        c.terminate()
    no_raw(got)
    exp = masked_text_rows(mgw, ids_of("ascii"), SEL_COLS)
    assert types_in(got).count("C") == 3, types_in(got)
    assert rows_in(got) == exp + [["1", "label 1"], ["2", "label 2"]] + exp


def test_raw_close_and_reparse(mgw):
    unmasked = "SELECT 'Jane Doe'::text AS v, 42 AS n"
    c = raw_connect(mgw)
    try:
        # masked, then the same name for a statement that must not be masked
        c.send(parse_m("s", SEL) + bind_m("", "s") + execute_m("") + close_m(b"S", "s")
               + parse_m("s", unmasked) + bind_m("", "s") + execute_m("") + SYNC)
        got1 = read_until(c)
        # and back: unmasked first, then the masked statement under the same name
        c.send(close_m(b"S", "s") + parse_m("s", SEL) + bind_m("", "s") + execute_m("") + SYNC)
        got2 = read_until(c)
        # the unnamed statement, replaced without Close
        c.send(parse_m("", unmasked) + bind_m("", "") + execute_m("")
               + parse_m("", SEL) + bind_m("", "") + execute_m("") + SYNC)
        got3 = read_until(c)
    finally:
        c.terminate()
    exp = masked_text_rows(mgw, ids_of("ascii"), SEL_COLS)
    assert rows_in(got1) == exp + [["Jane Doe", "42"]], got1
    assert rows_in(got2) == exp, got2
    assert rows_in(got3) == [["Jane Doe", "42"]] + exp, got3
    no_raw([rows_in(got1)[:-1], got2, rows_in(got3)[1:]])


def test_raw_max_rows_and_resume(mgw):
    sql = f"SELECT id, ssn, card, email FROM {R} WHERE id <= 8 ORDER BY id"
    c = raw_connect(mgw)
    try:
        rows, tx, _, _ = c.query("BEGIN")
        c.send(parse_m("sm", sql) + bind_m("pm", "sm") + execute_m("pm", 2) + FLUSH)
        got = read_until(c, stop=(b"s", b"E"))
        assert types_in(got)[-1] == "s", got
        c.send(execute_m("pm", 3) + FLUSH)
        got += read_until(c, stop=(b"s", b"E"))
        assert types_in(got)[-1] == "s", got
        c.send(execute_m("pm", 0) + SYNC)
        got += read_until(c)
        c.query("COMMIT")
    finally:
        c.terminate()
    no_raw(got)
    exp = masked_text_rows(mgw, ids_of("ascii"), ["ssn", "card", "email"])
    assert rows_in(got) == exp
    assert types_in(got).count("s") == 2


def test_sql_fetch_from_protocol_portal(mgw):
    c = raw_connect(mgw)
    try:
        c.query("BEGIN")
        c.send(parse_m("sf", SEL) + bind_m("pf", "sf") + SYNC)
        read_until(c)
        rows, tag, err, _ = c.query("FETCH ALL FROM pf")
        c.query("ROLLBACK")
    finally:
        c.terminate()
    no_raw([rows, err])
    assert err is not None or rows == masked_text_rows(mgw, ids_of("ascii"), SEL_COLS)


def test_sql_execute_of_protocol_statement(mgw):
    c = raw_connect(mgw)
    try:
        c.send(parse_m("sx", SEL) + SYNC)
        read_until(c)
        rows, tag, err, _ = c.query("EXECUTE sx")
    finally:
        c.terminate()
    no_raw([rows, err])
    assert err is not None or rows == masked_text_rows(mgw, ids_of("ascii"), SEL_COLS)


def test_duplicate_parse_keeps_row_plan(mgw):
    c = raw_connect(mgw)
    try:
        c.send(parse_m("sd", SEL) + SYNC)
        first = read_until(c)
        c.send(parse_m("sd", "SELECT 1") + SYNC)
        dup = read_until(c)
        c.send(bind_m("", "sd") + execute_m("") + SYNC)
        got = read_until(c)
    finally:
        c.terminate()
    assert "E" not in types_in(first)
    assert any(t == "E" and v.get("C") == "42P05" for t, v in dup), dup
    no_raw(got)
    assert rows_in(got) == masked_text_rows(mgw, ids_of("ascii"), SEL_COLS)


# ---------------------------------------------------------------------------- 4. not the gateway path

def masked_values(m, col, ids):
    return {i: expected(col, v, m.key) for i, v in ((r[0], r[1 + ALL.index(col)]) for r in ROWS) if i in ids}


def sort_key(v):
    return (v is None, (v or "").encode())  # C collation: bytewise; NULLS LAST


ORDER_IDS = [1, 4, 5, 6, 7, 8]  # distinct ssn values; raw and masked orders differ


def test_order_ids_are_discriminating(mgw):
    raw = {r[0]: r[1 + ALL.index("ssn")] for r in ROWS}
    masked = masked_values(mgw, "ssn", ORDER_IDS)
    by_raw = sorted(ORDER_IDS, key=lambda i: sort_key(raw[i]))
    by_masked = sorted(ORDER_IDS, key=lambda i: (sort_key(masked[i]), i))
    assert by_raw != by_masked


ORDER_IN = ", ".join(map(str, ORDER_IDS))
NOT_GATEWAY = [
    # (sql, refused in block mode, kind of result check)
    (f"SELECT ssn, id FROM {R} WHERE id IN ({ORDER_IN}) ORDER BY 1, 2", True, "order_ssn"),
    (f"SELECT ssn AS s, id FROM {R} WHERE id IN ({ORDER_IN}) ORDER BY s, id", True, "order_ssn"),
    (f"SELECT ssn AS id, id AS n FROM {R} WHERE id IN ({ORDER_IN}) ORDER BY id, n", True, "order_ssn"),
    (f"SELECT DISTINCT ssn FROM {R} WHERE id IN ({ORDER_IN})", False, "set_ssn"),
    (f"SELECT ssn, id FROM {R} WHERE ssn = '123-45-6789'", True, "empty"),
    (f"SELECT id FROM {R} WHERE ssn LIKE '%-6789' ORDER BY id", True, "like"),
    (f"SELECT t FROM {R} t WHERE id = 1", False, "whole_row"),
    (f"SELECT t.*::text FROM {R} t WHERE id = 1", False, "whole_row"),
    (f"SELECT row_to_json(t) FROM {R} t WHERE id = 1", False, "whole_row"),
    (f"SELECT (SELECT ssn FROM {R} WHERE id = 1)", False, "one_ssn"),
    (f"SELECT ssn, id FROM {R} WHERE id IN (SELECT id FROM {R} WHERE id = 1)", False, "one_ssn"),
    (f"SELECT upper(ssn), id FROM {R} WHERE id = 1", False, "one_ssn"),
    (f"SELECT ssn || '', id FROM {R} WHERE id = 1", False, "one_ssn"),
    (f"SELECT a.ssn, b.label FROM {R} a JOIN {U} b USING (id) WHERE a.id = 1", False, "one_ssn"),
    (f"SELECT a.ssn, b.ssn FROM {R} a, {R} b WHERE a.id = 1 AND b.id = 1", False, "one_ssn"),
    (f"WITH c AS (SELECT ssn FROM {R} WHERE id = 1) SELECT ssn FROM c", False, "one_ssn"),
    (f"SELECT ssn FROM {R} WHERE id = 1 UNION ALL SELECT 'x'", False, "one_ssn"),
    (f"SELECT ssn, count(*) FROM {R} WHERE id = 1 GROUP BY ssn", True, "one_ssn"),
]


def check_result(m, kind, rows):
    ssn = masked_values(m, "ssn", [r[0] for r in ROWS])
    if kind == "order_ssn":
        want = [(ssn[i], i) for i in sorted(ORDER_IDS, key=lambda i: (sort_key(ssn[i]), i))]
        assert [tuple(r) for r in rows] == want, f"not in masked order: {rows}, want {want}"
    elif kind == "set_ssn":
        assert sorted(r[0] for r in rows) == sorted({ssn[i] for i in ORDER_IDS})
    elif kind == "empty":
        assert rows == []
    elif kind == "like":
        assert rows == [(1,)]  # '***-**-6789' only
    elif kind == "whole_row":
        text = repr(rows)
        assert "***-**-6789" in text and "41************11" in text, text
    elif kind == "one_ssn":
        assert rows and rows[0][0] == "***-**-6789", rows
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("mode", ["block", "allow"])
@pytest.mark.parametrize("sql,refused_in_block,kind", NOT_GATEWAY, ids=[s for s, _, _ in NOT_GATEWAY])
def test_not_gateway_path(mgw, mgw_allow, su, mode, sql, refused_in_block, kind):
    m = mgw if mode == "block" else mgw_allow
    app = app_name()
    with connect(m, app) as c:
        try:
            rows = c.execute(sql).fetchall()
            err = None
        except psycopg.Error as e:
            rows, err = None, e
        if err is None:
            assert_rewrite_path(su, app, sql)
    no_raw([rows, str(err) if err else None])
    if mode == "block" and refused_in_block:
        assert err is not None and err.sqlstate == "42501", (rows, err)
        return
    assert err is None, err
    check_result(m, kind, rows)


@pytest.mark.parametrize("mode", ["block", "allow"])
def test_renamed_column_predicate(mgw, mgw_allow, mode):
    m = mgw if mode == "block" else mgw_allow
    cols = ", ".join(["i"] + [f"c_{c}" for c in ALL])
    with connect(m) as c:
        try:
            rows = c.execute(f"SELECT i FROM {R} AS x({cols}) WHERE c_ssn = '123-45-6789'").fetchall()
        except psycopg.Error as e:
            assert e.sqlstate == "42501"
            return
    # On masked values nothing equals the raw SSN: a row would confirm the guess.
    assert rows == [], f"the guess of the raw SSN was confirmed: {rows}"


@pytest.mark.parametrize("mode", ["block", "allow"])
def test_renamed_column_ordering(mgw, mgw_allow, mode):
    m = mgw if mode == "block" else mgw_allow
    cols = ", ".join(["i"] + [f"c_{c}" for c in ALL])
    with connect(m) as c:
        try:
            rows = c.execute(f"SELECT i FROM {R} AS x({cols}) WHERE i IN ({ORDER_IN})"
                             f" ORDER BY c_ssn, i").fetchall()
        except psycopg.Error as e:
            assert e.sqlstate == "42501"
            return
    ssn = masked_values(m, "ssn", ORDER_IDS)
    assert [r[0] for r in rows] == sorted(ORDER_IDS, key=lambda i: (sort_key(ssn[i]), i))


def test_renamed_column_output_is_masked(mgw, mgw_allow):
    cols = ", ".join(["i"] + [f"c_{c}" for c in ALL])
    with connect(mgw) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="column aliases"):
            c.execute(f"SELECT i, c_ssn FROM {R} AS x({cols}) WHERE i = 1")
    with connect(mgw_allow) as c:
        rows = c.execute(f"SELECT i, c_ssn, c_card FROM {R} AS x({cols}) WHERE i = 1").fetchall()
    no_raw(rows)
    assert rows == [(1, "***-**-6789", "41************11")]


# ---------------------------------------------------------------------------- 5. encodings

LATIN1_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 30]  # rows whose values all convert to LATIN1


def test_latin1_uses_rewrite_path(mgw, su):
    sel = f"SELECT id, ssn, card, email, secret, note FROM {R} WHERE id IN" \
          f" ({', '.join(map(str, LATIN1_IDS))}) ORDER BY id"
    app = app_name()
    with connect(mgw, app) as c:
        c.execute("SET client_encoding TO 'LATIN1'")
        assert c.info.encoding != "utf-8", c.info.encoding
        rows = c.execute(sel).fetchall()
        assert_rewrite_path(su, app, sel)
        c.execute("SET client_encoding TO 'UTF8'")
        rows_utf8 = c.execute(sel).fetchall()
        assert_gateway_path(su, app, sel)
    no_raw(rows)
    exp = expected_rows(mgw, LATIN1_IDS, ["ssn", "card", "email", "secret", "note"])
    assert rows == exp
    assert [r for r in rows_utf8 if r[0] <= 8] == [r for r in exp if r[0] <= 8]


def test_latin1_at_startup_uses_rewrite_path(mgw, su):
    sel = f"SELECT id, ssn, card FROM {R} WHERE id IN (1, 30) ORDER BY id"
    app = app_name()
    with connect(mgw, app, client_encoding="LATIN1") as c:
        rows = c.execute(sel).fetchall()
        assert_rewrite_path(su, app, sel)
    no_raw(rows)
    assert rows == expected_rows(mgw, [1, 30], ["ssn", "card"])


def test_prepared_under_utf8_executed_under_latin1_psycopg(mgw):
    sql = f"SELECT id, ssn, card, email FROM {R} WHERE id IN (1, 4) ORDER BY id"
    exp = expected_rows(mgw, [1, 4], ["ssn", "card", "email"])
    got = []
    with connect(mgw) as c:
        got.append(c.execute(sql, prepare=True).fetchall())
        assert got[0] == exp
        c.execute("SET client_encoding TO 'LATIN1'")
        try:
            got.append(c.execute(sql, prepare=True).fetchall())
            closed = False
        except psycopg.Error as e:
            got.append([str(e), e.sqlstate, e.diag.message_detail])
            closed = True
    no_raw(got)
    if not closed:
        assert got[1] == exp


@pytest.mark.parametrize("describe", [False, True])
def test_prepared_under_utf8_executed_under_latin1_raw(mgw, describe):
    c = raw_connect(mgw)
    try:
        c.send(parse_m("su", f"SELECT id, ssn, card FROM {R} WHERE id IN (1, 30) ORDER BY id")
               + (describe_m(b"S", "su") if describe else b"") + SYNC)
        read_until(c)
        rows, tag, err, _ = c.query("SET client_encoding TO 'LATIN1'")
        assert err is None, err
        c.send(bind_m("", "su") + execute_m("") + SYNC)
        got = read_until(c, enc="latin-1")
    finally:
        c.terminate()
    no_raw(got)
    rows = rows_in(got)
    if rows:
        assert rows == masked_text_rows(mgw, [1, 30], ["ssn", "card"])
    else:
        assert "E" in types_in(got) or "closed" in types_in(got), got


def test_encoding_switched_inside_pipeline(mgw):
    c = raw_connect(mgw)
    try:
        c.send(parse_m("", "SET client_encoding TO 'LATIN1'") + bind_m("", "") + execute_m("")
               + parse_m("sl", f"SELECT id, ssn, card FROM {R} WHERE id = 30")
               + bind_m("", "sl") + execute_m("") + SYNC)
        got = read_until(c, enc="latin-1")
    finally:
        c.terminate()
    no_raw(got)
    rows = rows_in(got)
    if rows:
        assert rows == masked_text_rows(mgw, [30], ["ssn", "card"])


# ---------------------------------------------------------------------------- 6. node-postgres

NODE_DIR = REPO / "tests" / "node"
NODE_SCRIPT = r"""
const { Client } = require('pg');
(async () => {
  const c = new Client();
  await c.connect();
  const sql = process.argv[1];
  const plain = await c.query(sql);
  const named = await c.query({ name: 'mskr-node', text: sql + ' AND $1::int > 0', values: [1] });
  const again = await c.query({ name: 'mskr-node', text: sql + ' AND $1::int > 0', values: [2] });
  const bin = await c.query({ text: sql, binary: true });
  await c.end();
  const conv = r => r.rows.map(x => [x.id, x.ssn, x.card, x.email, x.secret]);
  console.log(JSON.stringify({ plain: conv(plain), named: conv(named), again: conv(again),
                               binary: bin.rows.map(x => [x.ssn, x.card, x.email, x.secret].map(String)) }));
})().catch(e => { console.error(e.stack || String(e)); process.exit(1); });
"""


def test_node_postgres(mgw):
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "pg").is_dir():
        pytest.skip("node or node-postgres not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=mgw.g.host, PGPORT=str(mgw.g.port), PGUSER="masked", PGPASSWORD=PW,
               PGDATABASE="app")
    sql = f"SELECT id, ssn, card, email, secret FROM {R} WHERE id = 1"
    r = subprocess.run([node, "-e", NODE_SCRIPT, sql], cwd=NODE_DIR, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    no_raw(out)
    exp = [list(x) for x in expected_rows(mgw, [1], ["ssn", "card", "email", "secret"])]
    assert out["plain"] == exp and out["named"] == exp and out["again"] == exp
    assert out["binary"] == [[str(v) for v in exp[0][1:]]]


# ---------------------------------------------------------------------------- hostile extended-protocol messages

@pytest.mark.parametrize("bad", [
    msg(b"D", b"P"),                       # Describe without the portal name's terminator
    msg(b"D", b""),                        # Describe without a kind
    msg(b"C", b"S"),                       # Close without a name
    msg(b"E", b"p\x00"),                   # Execute without its row count
    msg(b"B", b"\x00"),                    # Bind without a statement name
], ids=["describe-no-nul", "describe-empty", "close-no-name", "execute-short", "bind-short"])
def test_malformed_messages_under_masking(mgw, bad):
    """Row plans read Bind/Describe/Execute/Close of masked sessions: a malformed one gets a
    clear error (from the gateway or the server), nothing raw, and the gateway serves on."""
    c = raw_connect(mgw)
    try:
        c.send(parse_m("", f"SELECT id, ssn FROM {R} WHERE id = 1") + bad + SYNC)
        got = read_until(c)
        no_raw(got)
        assert "E" in types_in(got) or "closed" in types_in(got), got
    finally:
        c.close()
    with connect(mgw) as c2:
        rows = c2.execute(f"SELECT id, ssn FROM {R} WHERE id = 1").fetchall()
    no_raw(rows)
    assert rows == [(1, "***-**-6789")]


# ---------------------------------------------------------------------------- the pipeline's step
# After an error the server skips every message up to Sync, also those sent once the error is
# out. Their entries must not stay in the gateway's queue, or every later answer is matched to
# the wrong request, and a plain read's rows pass with no row plan.

def test_messages_sent_after_an_error_are_skipped_here_too(mgw):
    c = raw_connect(mgw)
    try:
        c.send(parse_m("", "SELEC 1") + FLUSH)
        first = read_until(c, stop=(b"E",))
        assert first[-1][0] == "E", first
        c.send(msg(b"Q", cstr("SELECT 1")) + parse_m("", "SELECT 2") + bind_m("", "") + execute_m("") + SYNC)
        skipped = read_until(c)
        assert types_in(skipped) == ["Z"], skipped  # the server skipped them all
        c.send(parse_m("", SEL) + bind_m("", "") + execute_m("") + SYNC)
        got = read_until(c)
        c.send(msg(b"Q", cstr(SEL)))
        got += read_until(c)
    finally:
        c.terminate()
    no_raw(got)
    assert rows_in(got) == 2 * masked_text_rows(mgw, ids_of("ascii"), SEL_COLS)


# ---------------------------------------------------------------------------- Sync inside COPY FROM STDIN
# While the server reads COPY data it ignores Sync and Flush; libpq sends a Sync right after the
# Execute of a COPY FROM STDIN. Counted as owed a ReadyForQuery, each one shifted every later
# answer onto the wrong request: the next statements' rows went out with no row plan (raw).

COPY_SINK = "CREATE TEMP TABLE IF NOT EXISTS copy_sink (a text)"


def copy_data(line):
    return msg(b"d", line)


COPY_DONE = msg(b"c")


def masked_reads_after(c, mgw, n=2):
    got = []
    for _ in range(n):
        c.send(msg(b"Q", cstr(SEL)))
        got += read_until(c)
    no_raw(got)
    assert rows_in(got) == n * masked_text_rows(mgw, ids_of("ascii"), SEL_COLS), got


@pytest.mark.parametrize("how", ["libpq_extended", "stray_syncs_simple", "copy_fail_extended"])
def test_syncs_inside_copy_from_stdin(mgw, how):
    c = raw_connect(mgw)
    try:
        c.send(msg(b"Q", cstr(COPY_SINK)))
        read_until(c)
        if how == "stray_syncs_simple":
            c.send(msg(b"Q", cstr("COPY copy_sink FROM STDIN")))
            assert types_in(read_until(c, stop=(b"G", b"E")))[-1] == "G"
            c.send(SYNC + FLUSH + SYNC + copy_data(b"x\n") + SYNC + COPY_DONE)
        else:
            c.send(parse_m("", "COPY copy_sink FROM STDIN") + bind_m("", "") + describe_m(b"P", "")
                   + execute_m("") + SYNC)
            assert types_in(read_until(c, stop=(b"G", b"E")))[-1] == "G"
            end = COPY_DONE if how == "libpq_extended" else msg(b"f", cstr("abort"))
            c.send(copy_data(b"x\n") + SYNC + end + SYNC)
        got = read_until(c)
        assert types_in(got)[-1] == "Z", got
        masked_reads_after(c, mgw)
    finally:
        c.terminate()


def test_copy_from_stdin_all_sent_at_once(mgw):
    """Data, CopyDone and a Sync after it, sent before the CopyInResponse: all read in turn."""
    c = raw_connect(mgw)
    try:
        c.send(msg(b"Q", cstr(COPY_SINK)))
        read_until(c)
        c.send(parse_m("", "COPY copy_sink FROM STDIN") + bind_m("", "") + execute_m("") + SYNC
               + copy_data(b"a\n") + copy_data(b"b\n") + COPY_DONE + SYNC)
        got = read_until(c)
        assert [t for t in types_in(got) if t in "GCZ"] == ["G", "C", "Z"], got
        masked_reads_after(c, mgw)
    finally:
        c.terminate()


def test_copy_that_fails_before_reading_its_data(mgw):
    """COPY FREEZE's checks run after the CopyInResponse: the COPY fails before reading
    anything, and the Sync sent ahead of its data then ends the server's skip. Taken for read
    inside the COPY, that Sync's ReadyForQuery popped the next Query's entry, whose rows then
    went out with no row plan. Whether the server read it cannot be told: the session ends."""
    c = raw_connect(mgw)
    try:
        c.send(msg(b"Q", cstr(COPY_SINK)))
        read_until(c)
        c.send(parse_m("", "COPY copy_sink FROM STDIN (FREEZE)") + bind_m("", "") + execute_m("") + SYNC
               + COPY_DONE + SYNC + msg(b"Q", cstr(SEL)))
        got = read_until(c, stop=(b"Z",), count=3)
    finally:
        c.close()
    no_raw(got)
    errors = [v.get("C") for t, v in got if t == "E"]
    assert "08P01" in errors, got
    assert types_in(got)[-1] == "closed", got


@pytest.mark.parametrize("after_copy_starts,extra", [
    (False, copy_data(b"x\n") + SYNC + COPY_DONE + SYNC),   # a Sync after data, before CopyDone
    (False, msg(b"Q", cstr("SELECT 1")) + COPY_DONE),         # a Query pipelined into the COPY
    (True, msg(b"Q", cstr("SELECT 1"))),                      # a Query while the COPY reads data
], ids=["sync_after_data", "query_pipelined", "query_inside"])
def test_what_a_copy_would_misread_ends_the_session(mgw, after_copy_starts, extra):
    """Whether the server reads a Sync sent after COPY data depends on where an error in the
    data stops the COPY; another message ends it with an error. The gateway cannot follow
    either, so it ends the session (08P01) rather than guess."""
    c = raw_connect(mgw)
    try:
        c.send(msg(b"Q", cstr(COPY_SINK)))
        read_until(c)
        c.send(msg(b"Q", cstr("COPY copy_sink FROM STDIN")) + (b"" if after_copy_starts else extra))
        if after_copy_starts:
            assert types_in(read_until(c, stop=(b"G", b"E")))[-1] == "G"
            c.send(extra)
        got = read_until(c, stop=(b"E",), count=1)
        got += read_until(c, stop=(b"Z",))
    finally:
        c.close()
    errors = [v for t, v in got if t == "E"]
    assert errors and errors[0].get("C") == "08P01" and "COPY" in errors[0].get("M", ""), got
    assert types_in(got)[-1] == "closed", got


# ---------------------------------------------------------------------------- long names
# PostgreSQL cuts statement and portal names to 63 bytes: two longer names with the same first
# 63 bytes are one statement upstream. The gateway ends such a session instead of tracking two.

LONG_A, LONG_B = "x" * 63 + "A", "x" * 63 + "B"


@pytest.mark.parametrize("first", [
    parse_m(LONG_B, "SELECT 'nothing here'::text AS ssn") + describe_m(b"S", LONG_B) + SYNC,
    bind_m(LONG_A, "") + SYNC,
    describe_m(b"P", LONG_A) + SYNC,
    close_m(b"S", LONG_A) + SYNC,
    execute_m(LONG_A) + SYNC,
], ids=["parse", "bind_portal", "describe", "close", "execute"])
def test_names_past_63_bytes_end_the_session(mgw, first):
    c = raw_connect(mgw)
    try:
        c.send(first)
        got = read_until(c, stop=(b"E", b"Z"))
    finally:
        c.close()
    errors = [v for t, v in got if t == "E"]
    assert errors and errors[0].get("C") == "42622" and "63 bytes" in errors[0].get("M", ""), got


def test_a_name_of_63_bytes_works(mgw):
    c = raw_connect(mgw)
    name = "y" * 63
    try:
        c.send(parse_m(name, SEL) + bind_m(name, name) + execute_m(name) + SYNC)
        got = read_until(c)
    finally:
        c.terminate()
    no_raw(got)
    assert rows_in(got) == masked_text_rows(mgw, ids_of("ascii"), SEL_COLS)
