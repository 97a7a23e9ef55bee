"""Fixtures for the pgcordon integration tests: a real PostgreSQL 15, certificates made at
test time, and pgcordon gateways started from generated YAML configs.

Run with /usr/bin/python3 -m pytest -q tests/integration (Debian's pytest + psycopg 3)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

REPO = HERE.parents[1]
# `make integration` / `make asan` pass the binary to test in PGCORDON_BIN.
BIN = Path(os.environ.get("PGCORDON_BIN") or REPO / "build" / "pgcordon")
PGBIN = Path("/usr/lib/postgresql/15/bin")
DBNAME = "gwtest"

SUPERUSER_PW = "su-Pw-0b1c2d3e"
# Upstream credentials the gateway holds. Distinct, greppable strings so tests can check that
# they never show up in a log line or reach a client.
ROLE_PW = {
    "gw_scram": "UpScram-9f8e7d6c5b",
    "gw_md5": "UpMd5-4a3b2c1d0e",
    "gw_plain": "UpPlain-1q2w3e4r5t",
}
# Local gateway identities (client side).
LOCAL_USERS = {
    "alice": "ClientAlice-77aa88bb",
    "bob": "ClientBob-55cc66dd",
}
SCRAM_PW_ENV = "PGCORDON_TEST_SCRAM_PW"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def asan_build():
    """Whether the binary under test is an AddressSanitizer build: its memory use is the
    sanitizer's (shadow memory, a quarantine of freed blocks), not the gateway's."""
    return b"libasan" in subprocess.run(["ldd", str(BIN)], capture_output=True).stdout


def ipv6_loopback():
    """Whether this machine has ::1 (some containers have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def run(cmd, **kw):
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{cmd!r} failed ({e.returncode}):\n{e.stdout}\n{e.stderr}") from None


def require_binary():
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"{BIN} not found or not executable: build it first (`make` in {REPO}; "
                    f"`make test` builds before running the tests)", pytrace=False)


# ---------------------------------------------------------------------------- YAML

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")


def _scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if _PLAIN.fullmatch(s) and s.lower() not in ("true", "false", "yes", "no", "on", "off",
                                                 "null", "y", "n"):
        return s
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj, indent=0):
    """Block YAML: mappings nest, lists of mappings (policies:, oidc:) become block
    sequences, lists of scalars flow. Line numbers stay meaningful for check-config."""
    pad = "  " * indent
    out = []
    for k, v in obj.items():
        key = _scalar(k)
        if isinstance(v, dict):
            if not v:
                out.append(f"{pad}{key}: {{}}")
            else:
                out.append(f"{pad}{key}:")
                out.append(to_yaml(v, indent + 1))
        elif isinstance(v, (list, tuple)) and any(isinstance(x, dict) for x in v):
            out.append(f"{pad}{key}:")
            for item in v:
                lines = to_yaml(item, indent + 2).splitlines()
                out.append(f"{pad}  - {lines[0].lstrip()}")
                out.extend(lines[1:])
        elif isinstance(v, (list, tuple)):
            out.append(f"{pad}{key}: [{', '.join(_scalar(x) for x in v)}]")
        else:
            out.append(f"{pad}{key}: {_scalar(v)}")
    return "\n".join(out)


# ---------------------------------------------------------------------------- certificates

class Certs:
    """A test CA, a server certificate it signed (CN=localhost, SAN localhost + 127.0.0.1),
    and an unrelated CA for verification failures."""

    def __init__(self, d):
        self.dir = Path(d)
        self.ca_crt = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        self.server_crt = self.dir / "server.crt"
        self.server_key = self.dir / "server.key"
        self.other_ca_crt = self.dir / "other_ca.crt"
        self.other_ca_key = self.dir / "other_ca.key"
        o = "openssl"
        run([o, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
             "-subj", "/CN=pgcordon-test-ca", "-keyout", self.ca_key, "-out", self.ca_crt])
        run([o, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
             "-subj", "/CN=pgcordon-wrong-ca", "-keyout", self.other_ca_key,
             "-out", self.other_ca_crt])
        csr = self.dir / "server.csr"
        ext = self.dir / "server.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                       "basicConstraints=CA:FALSE\n"
                       "keyUsage=digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\n")
        run([o, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", self.server_key, "-out", csr])
        run([o, "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
             "-CAcreateserial", "-days", "3", "-extfile", ext, "-out", self.server_crt])
        # A self-signed certificate for the gateway's client-facing TLS.
        self.gw_crt = self.dir / "gw.crt"
        self.gw_key = self.dir / "gw.key"
        run([o, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", self.gw_key, "-out", self.gw_crt])


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs"))


# ---------------------------------------------------------------------------- PostgreSQL

class PgServer:
    host = "127.0.0.1"

    def __init__(self, certs):
        self.dir = Path(tempfile.mkdtemp(prefix="pgcordon-it-pg-"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "postgres.log"
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o755)
        pwfile = self.dir / "pw"
        pwfile.write_text(SUPERUSER_PW + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        self._as_pg([PGBIN / "initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8",
                     "--no-locale", "--pwfile", pwfile, "-A", "scram-sha-256",
                     "--auth-local", "trust"])
        pwfile.unlink()
        for src, name in ((certs.server_crt, "server.crt"), (certs.server_key, "server.key")):
            dst = self.data / name
            shutil.copy(src, dst)
            shutil.chown(dst, "postgres", "postgres")
            os.chmod(dst, 0o600)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"""
# pgcordon integration tests
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.dir}'
max_connections = 100
max_prepared_transactions = 10
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
log_connections = on
log_disconnections = on
""")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all gw_md5 127.0.0.1/32 md5\n"
            "host all gw_plain 127.0.0.1/32 password\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        self._as_pg([PGBIN / "pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", "60",
                     "start"])
        self._setup_sql()

    def _as_pg(self, cmd):
        return run(["runuser", "-u", "postgres", "--"] + [str(c) for c in cmd], cwd=self.dir)

    def _setup_sql(self):
        with self.super_connect("postgres") as c:
            c.execute("SET password_encryption = 'scram-sha-256'")
            c.execute(f"CREATE ROLE gw_scram LOGIN PASSWORD '{ROLE_PW['gw_scram']}'")
            c.execute(f"CREATE ROLE gw_plain LOGIN PASSWORD '{ROLE_PW['gw_plain']}'")
            c.execute("SET password_encryption = 'md5'")
            c.execute(f"CREATE ROLE gw_md5 LOGIN PASSWORD '{ROLE_PW['gw_md5']}'")
            c.execute(f"CREATE DATABASE {DBNAME} OWNER gw_scram")
        with self.super_connect(DBNAME) as c:
            c.execute("GRANT USAGE, CREATE ON SCHEMA public TO gw_md5, gw_plain")
            c.execute("CREATE SCHEMA other AUTHORIZATION gw_scram")
            c.execute("""
                CREATE TABLE public.items (
                    id int PRIMARY KEY,
                    name text NOT NULL,
                    price numeric(10,2),
                    tags text[],
                    created timestamptz NOT NULL DEFAULT '2024-01-02 03:04:05+00')""")
            c.execute("""
                INSERT INTO public.items (id, name, price, tags)
                SELECT g, 'item ' || g, g * 1.25, ARRAY['t' || g, 'x']
                FROM generate_series(1, 100) g""")
            c.execute("CREATE TABLE other.marker (v text)")
            c.execute("INSERT INTO other.marker VALUES ('from schema other')")
            c.execute("ALTER TABLE public.items OWNER TO gw_scram")
            c.execute("ALTER TABLE other.marker OWNER TO gw_scram")
            c.execute("GRANT SELECT ON public.items TO gw_md5, gw_plain")

    def conninfo(self, user="gw_scram", password=None, dbname=DBNAME, **kw):
        if password is None:
            password = SUPERUSER_PW if user == "postgres" else ROLE_PW[user]
        d = dict(host=self.host, port=self.port, user=user, password=password, dbname=dbname,
                 sslmode="disable", connect_timeout=10)
        d.update(kw)
        return psycopg.conninfo.make_conninfo(**d)

    def connect(self, user="gw_scram", dbname=DBNAME, autocommit=True, **kw):
        return psycopg.connect(self.conninfo(user=user, dbname=dbname, **kw),
                               autocommit=autocommit)

    def super_connect(self, dbname=DBNAME):
        return psycopg.connect(self.conninfo(user="postgres", dbname=dbname), autocommit=True)

    def wait_active(self, marker, timeout=15):
        """Wait until a statement containing marker runs on the server; return its backend pid."""
        deadline = time.monotonic() + timeout
        with self.super_connect() as su:
            while time.monotonic() < deadline:
                row = su.execute("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND "
                                 "query LIKE %s AND pid <> pg_backend_pid()", (f"%{marker}%",)).fetchone()
                if row:
                    return row[0]
                time.sleep(0.05)
        raise AssertionError(f"statement {marker!r} never became active upstream")

    def cancel_sleep(self, conn, seconds, tag):
        """Runs pg_sleep(seconds) on conn and, once the server runs it, cancels it with
        conn.cancel() from another thread; expects QueryCanceled, returns the seconds taken."""
        marker = f"{tag}_{uuid.uuid4().hex[:8]}"
        canceled = threading.Event()

        def cancel():
            self.wait_active(marker)
            conn.cancel()
            canceled.set()

        t = threading.Thread(target=cancel)
        t.start()
        start = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(f"SELECT pg_sleep({seconds}) /* {marker} */")
        finally:
            t.join()
        assert canceled.is_set(), "the statement was not cancelled from the side"
        return time.monotonic() - start

    def stop(self):
        try:
            self._as_pg([PGBIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg(certs):
    server = PgServer(certs)
    yield server
    server.stop()


# ---------------------------------------------------------------------------- verifiers

_verifier_cache = {}


def scram_verifier(password):
    """A verifier from `pgcordon passwd --password P` (cached per password)."""
    require_binary()
    if password not in _verifier_cache:
        out = run([str(BIN), "passwd", "--password", password]).stdout.strip()
        assert re.fullmatch(r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:"
                            r"[A-Za-z0-9+/=]+", out), f"unexpected passwd output {out!r}"
        _verifier_cache[password] = out
    return _verifier_cache[password]


# ---------------------------------------------------------------------------- gateway

def su_exec(pg, *stmts):
    """Runs statements as the superuser in the test database."""
    with pg.super_connect() as c:
        for s in stmts:
            c.execute(s)


def apikey_create(name, groups):
    """(key, api_keys entry) for a new key made by `pgcordon apikey create`."""
    r = subprocess.run([str(BIN), "apikey", "create", name, "--groups", ",".join(groups)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    key = re.findall(r"^  (pgc_[A-Za-z0-9_-]{43})$", r.stdout, re.M)
    m = re.search(r"^  " + re.escape(name) + r': \{hash: "(sha256:[0-9a-f]{64})"', r.stdout, re.M)
    assert len(key) == 1 and m, r.stdout
    return key[0], {"hash": m[1], "groups": list(groups)}


class GatewayDied(Exception):
    pass


class Gateway:
    host = "127.0.0.1"

    def __init__(self, workdir, config, env=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.port = config["listen"]["port"]
        self.config_path = self.workdir / "pgcordon.yaml"
        self.log_path = self.workdir / "gateway.log"
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.proc = None
        self.stopped_on_purpose = False
        self.write_config(config)

    # -- lifecycle -----------------------------------------------------------
    def write_config(self, config=None):
        if config is not None:
            self.config = config
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(to_yaml(self.config) + "\n")
        os.replace(tmp, self.config_path)

    def start(self, timeout=20):
        require_binary()
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(BIN), "serve", "--config", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=self._logf, env=self.env, cwd=str(REPO))
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GatewayDied(f"pgcordon exited with {self.proc.returncode} during "
                                  f"startup; log:\n{self.log_text()[-4000:]}")
            if "event=ready" in self.log_text():
                return self
            # Fall back to probing the port if no ready line shows up.
            if time.monotonic() - started > 3 and self._port_open():
                return self
            time.sleep(0.05)
        self.kill()
        raise GatewayDied(f"pgcordon did not become ready within {timeout}s; log:\n"
                          f"{self.log_text()[-4000:]}")

    def _port_open(self):
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def reload(self, config=None):
        """Write config (if given) and send SIGHUP."""
        if config is not None:
            self.write_config(config)
        os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self, timeout=30):
        """SIGTERM and wait; returns the exit code (None if it did not exit in time)."""
        self.stopped_on_purpose = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        self.stopped_on_purpose = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self):
        died = self.proc is not None and self.proc.poll() is not None \
            and not self.stopped_on_purpose
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_logf", None):
            self._logf.close()
        if died:
            raise GatewayDied(f"pgcordon died unexpectedly with {self.proc.returncode}; "
                              f"log tail:\n{self.log_text()[-4000:]}")
        log = self.log_text()
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            if marker in log:
                i = log.index(marker)
                raise GatewayDied(f"sanitizer report in the gateway log:\n{log[max(0, i - 200):i + 4000]}")

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def count_log(self, pattern):
        return len(re.findall(pattern, self.log_text()))

    def reload_and_wait(self, config, event="config_reloaded", timeout=15):
        """Writes config, sends SIGHUP and waits for one more event= line (reload or failure)."""
        before = self.count_log(rf"event={event}\b")
        self.reload(config)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count_log(rf"event={event}\b") > before:
                return
            time.sleep(0.05)
        raise AssertionError(f"no event={event} within {timeout}s after SIGHUP; log tail:\n"
                             f"{self.log_text()[-3000:]}")

    def wait_log(self, pattern, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.log_text()):
                return True
            time.sleep(0.05)
        return False

    # -- clients ---------------------------------------------------------------
    def conninfo(self, user="alice", password=None, dbname="app", **kw):
        if password is None:
            password = LOCAL_USERS.get(user, "")
        d = dict(host=self.host, port=self.port, user=user, password=password, dbname=dbname,
                 sslmode="disable", connect_timeout=10)
        d.update(kw)
        return psycopg.conninfo.make_conninfo(**d)

    def connect(self, user="alice", password=None, dbname="app", autocommit=True, **kw):
        return psycopg.connect(self.conninfo(user, password, dbname, **kw),
                               autocommit=autocommit)

    def assert_serves(self, user="alice", dbname="app"):
        """The gateway is alive and a normal psycopg client gets a correct answer."""
        assert self.alive(), f"gateway exited ({self.proc.returncode}); log tail:\n" \
                             f"{self.log_text()[-3000:]}"
        with self.connect(user=user, dbname=dbname) as c:
            row = c.execute("SELECT 40 + %s::int, current_user", (2,)).fetchone()
        assert row[0] == 42


def base_config(pg, certs, port, pwfile):
    """The default gateway config: three upstream entries (one per upstream auth method and
    one per way of giving the password) and two local users."""
    up = dict(host=pg.host, port=pg.port, dbname=DBNAME, sslmode="disable")
    return {
        "listen": {"address": "127.0.0.1", "port": port, "workers": 2},
        "tls": {"mode": "disable"},
        "limits": {"max_client_conn": 200, "max_message_size": "64MiB",
                   "startup_timeout": "15s", "shutdown_timeout": "10s"},
        "log": {"level": "debug"},
        "databases": {
            "app": dict(up, user="gw_scram", password_env=SCRAM_PW_ENV),
            "app_md5": dict(up, user="gw_md5", password_file=str(pwfile)),
            "app_plain": dict(up, user="gw_plain", password=ROLE_PW["gw_plain"]),
        },
        "users": {u: {"password": scram_verifier(p), "groups": ["testers"]}
                  for u, p in LOCAL_USERS.items()},
    }


class GatewayFactory:
    """Starts gateways; `mutate(cfg)` may edit the default config before start."""

    def __init__(self, pg, certs, root):
        self.pg, self.certs, self.root = pg, certs, Path(root)
        self.gateways = []

    def config(self, port=None):
        port = port or free_port()
        n = len(self.gateways)
        pwfile = self.root / f"md5pw-{n}-{port}"
        pwfile.write_text(ROLE_PW["gw_md5"] + "\n")
        os.chmod(pwfile, 0o600)
        return base_config(self.pg, self.certs, port, pwfile)

    def start(self, mutate=None, config=None, env=None):
        cfg = config if config is not None else self.config()
        if mutate:
            mutate(cfg)
        e = {SCRAM_PW_ENV: ROLE_PW["gw_scram"]}
        e.update(env or {})
        gw = Gateway(self.root / f"gw{len(self.gateways)}-{cfg['listen']['port']}", cfg, e)
        self.gateways.append(gw)
        return gw.start()

    def start_with_admin_key(self, key_name, groups, mutate=None):
        """A gateway with an admin listener (no MCP, no auditors) and one API key, its
        config changed further by mutate(cfg) if given: (gateway, admin port, the key)."""
        key, entry = apikey_create(key_name, groups)
        port = free_port()

        def with_admin(cfg):
            cfg["api_keys"] = {key_name: entry}
            cfg["admin"] = {"address": "127.0.0.1", "port": port}
            if mutate:
                mutate(cfg)
        return self.start(with_admin), port, key

    def cleanup(self):
        errors = []
        for gw in self.gateways:
            try:
                gw.cleanup()
            except GatewayDied as e:
                errors.append(str(e))
        if errors:
            raise GatewayDied("\n\n".join(errors))


@pytest.fixture(scope="module")
def gw(pg, certs, tmp_path_factory):
    """One gateway with the default config for a whole test module."""
    require_binary()
    f = GatewayFactory(pg, certs, tmp_path_factory.mktemp("gw"))
    g = f.start()
    yield g
    f.cleanup()


@pytest.fixture
def gateway_factory(pg, certs, tmp_path):
    """Start gateways with custom configs inside one test: gateway_factory.start(mutate)."""
    require_binary()
    f = GatewayFactory(pg, certs, tmp_path)
    yield f
    f.cleanup()


@pytest.fixture
def direct(pg):
    """A direct (no gateway) psycopg connection to PostgreSQL as gw_scram."""
    c = pg.connect()
    yield c
    c.close()


def closed_port():
    """A loopback port with nothing listening."""
    return free_port()
