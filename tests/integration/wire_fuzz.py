"""Seeded random protocol traffic: what a hostile client may send once it has logged in.

One session is a list of bursts; a burst is a few frontend messages sent in one write. The
messages are drawn from every kind the v3 protocol has (and a few it does not), with real
statements against the test's tables, and then some are broken: cut short, unterminated,
with counts and lengths that lie, bytes flipped, lengths in the header that lie. The same
seed gives the same bytes, so a failing session can be replayed.
"""

import random
import re
import struct

from pgwire import cstr, msg

MAX_ROWS_BIG = 2000


def i16(n):
    return struct.pack("!h", n)


def i32(n):
    return struct.pack("!i", n)


def statements(masked, plain):
    """The statements drawn from: reads and copies of the masked table in many disguises,
    transactions, several statements in one Query, errors, the session state a proxy tracks."""
    return [
        f"SELECT * FROM {masked}",
        f"SELECT id, ssn, card FROM {masked} WHERE id = $1",
        f"SELECT upper(email), reverse(secret), secret || '' FROM {masked}",
        f"SELECT row_to_json(t) FROM {masked} t",
        f"SELECT string_agg(secret, ',') FROM {masked}",
        f"SELECT encode(convert_to(secret, 'UTF8'), 'hex') FROM {masked}",
        f"SELECT (SELECT secret FROM {masked} ORDER BY id LIMIT 1)",
        f"WITH x AS (SELECT secret, ssn FROM {masked}) SELECT * FROM x",
        f"SELECT query_to_xml('SELECT secret FROM {masked}', true, true, '')",
        f"UPDATE {masked} SET note = note WHERE id = 1 RETURNING secret",
        f"COPY {masked} TO STDOUT",
        f"COPY (SELECT secret FROM {masked}) TO STDOUT",
        f"COPY {plain} (id, label) FROM STDIN",
        f"SELECT * FROM {plain} ORDER BY id",
        f"INSERT INTO {plain} VALUES ($1::int, $2)",
        f"DELETE FROM {plain} WHERE id > 1000",
        f"CREATE TEMP TABLE IF NOT EXISTS fz AS SELECT secret FROM {masked}",
        "SELECT * FROM fz",
        f"SELECT generate_series(1, {MAX_ROWS_BIG})",
        "SELECT $1::text, $2::int",
        "SELECT 1; SELECT 2; SELECT 3",
        "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s", "ROLLBACK TO s",
        f"PREPARE fq AS SELECT secret FROM {masked}", "EXECUTE fq", "DEALLOCATE ALL",
        "SET statement_timeout = '2s'", "RESET ALL", "DISCARD ALL",
        "SET client_encoding = 'LATIN1'", "SET standard_conforming_strings = off",
        "LISTEN fzch", "NOTIFY fzch, 'x'",
        "SELECT pg_sleep(0.01)", "SELECT 1/0", "SELEC broken", "", ";",
        "DO $$BEGIN RAISE NOTICE 'fz notice'; END$$",
        "SELECT 'a\\'; SELECT 2; --'",
    ]


class Fuzzer:
    def __init__(self, seed, masked, plain):
        self.r = random.Random(seed)
        self.masked, self.plain = masked, plain
        self.sql = statements(masked, plain)

    # ------------------------------------------------------------------ pieces
    def name(self):
        names = ["", "s1", "s2", "fq", "p\u00e9", "x" * 70]  # the last is past NAMEDATALEN
        return self.r.choices(names, weights=[8, 3, 3, 2, 1, 1])[0]

    def text(self):
        r = self.r.random()
        if r < 0.85:
            return self.r.choice(self.sql)
        if r < 0.95:
            return self.r.choice(self.sql) + " " + self.r.choice(self.sql)
        return self.junk(self.r.randrange(1, 200)).replace(b"\0", b"").decode("latin-1")

    def junk(self, n):
        return bytes(self.r.randrange(256) for _ in range(n))

    def count(self, real):
        """A count that is usually right and sometimes lies."""
        r = self.r.random()
        if r < 0.85:
            return real
        return self.r.choice([0, 1, real + 1, real - 1, 32767, -1, -32768])

    def value(self):
        r = self.r.random()
        if r < 0.2:
            return None
        if r < 0.6:
            return str(self.r.randrange(-5, 50)).encode()
        if r < 0.9:
            return self.r.choice([b"x", b"label", "\u00e9t\u00e9".encode(), b"1e400", b""])
        return self.junk(self.r.randrange(0, 64))

    def lengthy(self, v):
        """A parameter or argument as length and bytes; the length sometimes lies."""
        if v is None:
            return i32(-1)
        n = len(v)
        if self.r.random() < 0.08:
            n = self.r.choice([-2, n + 1, n + 1000, 0x7FFFFFFF, -0x80000000])
        return i32(n) + v

    # ------------------------------------------------------------------ messages
    def parse(self):
        types = [self.r.choice([0, 23, 25, 17, 0x7FFFFFFF]) for _ in range(self.r.randrange(0, 4))]
        body = cstr(self.name()) + cstr(self.text()) + i16(self.count(len(types)))
        return b"P", body + b"".join(struct.pack("!I", t) for t in types)

    def bind(self):
        params = [self.value() for _ in range(self.r.randrange(0, 4))]
        fmts = [self.r.choice([0, 0, 1, 2, -1]) for _ in range(self.r.choice([0, 1, len(params)]))]
        results = [self.r.choice([0, 1, 7]) for _ in range(self.r.choice([0, 0, 1, 3]))]
        body = cstr(self.name()) + cstr(self.name())
        body += i16(self.count(len(fmts))) + b"".join(i16(f) for f in fmts)
        body += i16(self.count(len(params))) + b"".join(self.lengthy(v) for v in params)
        body += i16(self.count(len(results))) + b"".join(i16(f) for f in results)
        return b"B", body

    def describe(self):
        return b"D", self.r.choice([b"S", b"P", b"S", b"P", b"Q"]) + cstr(self.name())

    def execute(self):
        return b"E", cstr(self.name()) + i32(self.r.choice([0, 0, 0, 1, 2, -1, 0x7FFFFFFF]))

    def close(self):
        return b"C", self.r.choice([b"S", b"P", b"Z"]) + cstr(self.name())

    def query(self):
        return b"Q", cstr(self.text())

    def function_call(self):
        args = [self.value() for _ in range(self.r.randrange(0, 3))]
        oid = self.r.choice([870, 1317, 2284, 764, 0, 4294967295])  # lower, length, regexp_replace, lo_import
        body = struct.pack("!I", oid) + i16(self.count(1)) + i16(self.r.choice([0, 1]))
        body += i16(self.count(len(args))) + b"".join(self.lengthy(a) for a in args)
        return b"F", body + i16(self.r.choice([0, 1, 5]))

    def copy_data(self):
        line = self.r.choice([b"1\tcopied\n", b"2\t\\N\n", b"x\ty\tz\n", b"\\.\n", self.junk(20)])
        return b"d", line

    def any_message(self):
        kinds = [(self.parse, 14), (self.bind, 14), (self.execute, 14), (self.describe, 8),
                 (self.close, 5), (self.query, 14), (self.function_call, 3), (self.copy_data, 5),
                 (lambda: (b"S", b""), 14), (lambda: (b"H", b""), 4), (lambda: (b"c", b""), 3),
                 (lambda: (b"f", cstr("fuzz abort")), 2), (lambda: (b"X", b""), 1),
                 (lambda: (self.r.choice([b"p", b"A", b"Z", b"\0", b"\xff"]), self.junk(8)), 1)]
        return self.r.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]()

    # ------------------------------------------------------------------ units
    # What clients send together: mostly whole exchanges, so that the sessions get past their
    # first error and into the states behind (portals, COPY, transactions, pipelines).
    def extended(self):
        name, sql = self.name(), self.text()
        nparams = max([int(n) for n in re.findall(r"\$(\d+)", sql)] or [0])
        out = [(b"P", cstr(name) + cstr(sql) + i16(0))]
        if self.r.random() < 0.3:
            out.append((b"D", b"S" + cstr(name)))
        for _ in range(self.r.choice([1, 1, 1, 2])):
            portal = self.r.choice(["", "", "p1"])
            params = [str(self.r.randrange(1, 4)).encode() for _ in range(nparams)]
            fmts = self.r.choice([[], [], [1]])
            body = cstr(portal) + cstr(name) + i16(0) + i16(len(params))
            body += b"".join(i32(len(v)) + v for v in params)
            body += i16(len(fmts)) + b"".join(i16(f) for f in fmts)
            out.append((b"B", body))
            if self.r.random() < 0.5:
                out.append((b"D", b"P" + cstr(portal)))
            out.append((b"E", cstr(portal) + i32(self.r.choice([0, 0, 0, 1]))))
        out.append(self.r.choice([(b"S", b""), (b"S", b""), (b"S", b""), (b"H", b"")]))
        return out

    def copy_in(self):
        into = f"COPY {self.plain} (id, label) FROM STDIN"
        out = [(b"Q", cstr(self.r.choice([into, into, into, f"COPY {self.masked} TO STDOUT"])))]
        out += [self.copy_data() for _ in range(self.r.randrange(0, 4))]
        out.append(self.r.choice([(b"c", b""), (b"c", b""), (b"f", cstr("fuzz abort")), (b"S", b"")]))
        return out

    def unit(self):
        r = self.r.random()
        if r < 0.4:
            return self.extended()
        if r < 0.65:
            return [self.query()]
        if r < 0.75:
            return self.copy_in()
        if r < 0.80:
            return [self.function_call()]
        return [self.any_message() for _ in range(self.r.randrange(1, 4))]

    def mangle(self, typ, body):
        """The message, sometimes broken: the body cut, flipped, padded; rarely the header."""
        r = self.r.random()
        if r < 0.02 and body:
            body = body[:self.r.randrange(len(body))]
        elif r < 0.04 and body:
            i = self.r.randrange(len(body))
            body = body[:i] + bytes([self.r.randrange(256)]) + body[i + 1:]
        elif r < 0.05:
            body = body + self.junk(self.r.randrange(1, 16))
        if self.r.random() < 0.005:
            # A header that lies: shorter than its own length field, or past what follows.
            n = self.r.choice([0, 3, len(body) + 4 + self.r.randrange(1, 32)])
            return typ + struct.pack("!I", n) + body
        return msg(typ, body)

    def session(self):
        """A session's bursts: [bytes], each sent in one write."""
        return [b"".join(self.mangle(t, b) for _ in range(self.r.randrange(1, 4)) for t, b in self.unit())
                for _ in range(self.r.randrange(1, 6))]
