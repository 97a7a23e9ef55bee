"""A small raw PostgreSQL v3 protocol client for the hostile-input and FunctionCall tests."""

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import time

PROTO_30 = 196608  # 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


class ConnectionClosed(Exception):
    """The peer closed the socket before a whole message arrived."""


class ServerError(Exception):
    """An ErrorResponse arrived; .fields maps field codes ('S', 'C', 'M', ...) to text."""

    def __init__(self, fields):
        self.fields = fields
        super().__init__(f"{fields.get('S')} {fields.get('C')}: {fields.get('M')}")

    @property
    def sqlstate(self):
        return self.fields.get("C")

    @property
    def message(self):
        return self.fields.get("M", "")


def parse_fields(body):
    """Parse the body of ErrorResponse / NoticeResponse into {code: value}."""
    fields = {}
    i = 0
    while i < len(body) and body[i] != 0:
        code = chr(body[i])
        end = body.index(b"\0", i + 1)
        fields[code] = body[i + 1:end].decode("utf-8", "replace")
        i = end + 1
    return fields


def cstr(s):
    return s.encode() + b"\0"


def startup_packet(params, version=PROTO_30):
    body = struct.pack("!I", version)
    for k, v in params.items():
        body += cstr(k) + cstr(v)
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def msg(typ, body=b""):
    return typ + struct.pack("!I", len(body) + 4) + body


class RawConn:
    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.params = {}
        self.backend_key = None
        self.notices = []
        self.auth_codes = []

    # -- low level ---------------------------------------------------------
    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _recv_exact(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ConnectionClosed(f"closed with {len(self.buf)} of {n} bytes buffered")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_byte(self):
        return self._recv_exact(1)

    def read_msg(self):
        """Return (type byte, body)."""
        typ = self._recv_exact(1)
        (length,) = struct.unpack("!I", self._recv_exact(4))
        if length < 4 or length > 1 << 30:
            raise AssertionError(f"bad length {length} in message {typ!r} from server")
        return typ, self._recv_exact(length - 4)

    def expect_closed(self, timeout=10.0):
        """True if the peer closes the connection (after any remaining messages) in time."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        try:
            while time.monotonic() < deadline:
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    return True
                if not chunk:
                    return True
                self.buf += chunk
            return False
        finally:
            self.sock.settimeout(10.0)

    def read_error(self):
        """Read messages until an ErrorResponse and return its fields; fail on ReadyForQuery."""
        while True:
            typ, body = self.read_msg()
            if typ == b"E":
                return parse_fields(body)
            if typ == b"Z":
                raise AssertionError("got ReadyForQuery while waiting for an ErrorResponse")

    # -- startup and authentication -------------------------------------------
    def ssl_request(self):
        self.send(struct.pack("!II", 8, SSL_REQUEST))
        return self.read_byte()

    def start_tls(self, cafile=None, server_hostname="localhost"):
        """Wrap the socket in TLS after the server answered 'S' to SSLRequest."""
        ctx = ssl.create_default_context(cafile=cafile)
        if cafile is None:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def gssenc_request(self):
        self.send(struct.pack("!II", 8, GSSENC_REQUEST))
        return self.read_byte()

    def startup(self, user, database, password=None, extra=None, version=PROTO_30):
        """Send StartupMessage and authenticate; raise ServerError on ErrorResponse.
        Returns after the first ReadyForQuery."""
        params = {"user": user, "database": database}
        params.update(extra or {})
        self.send(startup_packet(params, version))
        self.authenticate(user, password)
        return self.wait_ready()

    def authenticate(self, user, password):
        while True:
            typ, body = self.read_msg()
            if typ == b"E":
                raise ServerError(parse_fields(body))
            if typ == b"v":  # NegotiateProtocolVersion; keep going with 3.0
                continue
            if typ != b"R":
                raise AssertionError(f"unexpected message {typ!r} during authentication")
            (code,) = struct.unpack("!I", body[:4])
            self.auth_codes.append(code)
            if code == 0:
                return
            if code == 3:
                self.send(msg(b"p", cstr(password)))
            elif code == 5:
                salt = body[4:8]
                inner = hashlib.md5((password + user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + salt).hexdigest()
                self.send(msg(b"p", cstr("md5" + outer)))
            elif code == 10:
                mechs = [m for m in body[4:].split(b"\0") if m]
                if b"SCRAM-SHA-256" not in mechs:
                    raise AssertionError(f"server offers {mechs!r}, not SCRAM-SHA-256")
                self._scram(password)
            else:
                raise AssertionError(f"unsupported authentication request {code}")

    def _scram(self, password):
        nonce = base64.b64encode(os.urandom(18)).decode()
        client_first_bare = f"n=,r={nonce}"
        client_first = "n,," + client_first_bare
        self.send(msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!I", len(client_first))
                      + client_first.encode()))
        typ, body = self.read_msg()
        if typ == b"E":
            raise ServerError(parse_fields(body))
        code = struct.unpack("!I", body[:4])[0]
        if typ != b"R" or code != 11:
            raise AssertionError(f"expected SASLContinue, got {typ!r} {code}")
        server_first = body[4:].decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        if not attrs["r"].startswith(nonce):
            raise AssertionError("server nonce does not extend the client nonce")
        salt = base64.b64decode(attrs["s"])
        iters = int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        final_wo_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{client_first_bare},{server_first},{final_wo_proof}".encode()
        client_sig = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_sig))
        final = f"{final_wo_proof},p={base64.b64encode(proof).decode()}"
        self.send(msg(b"p", final.encode()))
        typ, body = self.read_msg()
        if typ == b"E":
            raise ServerError(parse_fields(body))
        code = struct.unpack("!I", body[:4])[0]
        if typ != b"R" or code != 12:
            raise AssertionError(f"expected SASLFinal, got {typ!r} {code}")
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        expected = base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest())
        got = body[4:].decode().split("v=", 1)[1].encode()
        if got != expected:
            raise AssertionError("server signature in SASLFinal does not verify")

    def wait_ready(self):
        """Consume messages up to ReadyForQuery; return the transaction status byte."""
        while True:
            typ, body = self.read_msg()
            if typ == b"Z":
                return body
            if typ == b"E":
                raise ServerError(parse_fields(body))
            if typ == b"S":
                k, v, _ = body.split(b"\0", 2)
                self.params[k.decode()] = v.decode()
            elif typ == b"K":
                self.backend_key = struct.unpack("!II", body)
            elif typ == b"N":
                self.notices.append(parse_fields(body))

    def exchange(self, data):
        """Sends data and returns every message up to and including the next
        ReadyForQuery, as (type, body) pairs."""
        self.send(data)
        msgs = []
        while not msgs or msgs[-1][0] != b"Z":
            msgs.append(self.read_msg())
        return msgs

    # -- queries ---------------------------------------------------------------
    def query(self, sql):
        """Simple query; returns (rows as lists of str/None, last command tag, error fields
        or None, transaction status)."""
        self.send(msg(b"Q", cstr(sql)))
        rows, tag, err = [], None, None
        while True:
            typ, body = self.read_msg()
            if typ == b"D":
                (n,) = struct.unpack("!H", body[:2])
                pos, row = 2, []
                for _ in range(n):
                    (ln,) = struct.unpack("!i", body[pos:pos + 4])
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(body[pos:pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif typ == b"C":
                tag = body.rstrip(b"\0").decode()
            elif typ == b"E":
                err = parse_fields(body)
            elif typ == b"N":
                self.notices.append(parse_fields(body))
            elif typ == b"Z":
                return rows, tag, err, body
            # T, S, A, I and others are ignored

    def function_call(self, oid, args, result_format=0):
        """FunctionCall with text-format arguments; returns (value or None, error fields)."""
        body = struct.pack("!IH", oid, 1) + struct.pack("!H", 0)
        body += struct.pack("!H", len(args))
        for a in args:
            if a is None:
                body += struct.pack("!i", -1)
            else:
                b = a.encode()
                body += struct.pack("!i", len(b)) + b
        body += struct.pack("!H", result_format)
        self.send(msg(b"F", body))
        value, err = None, None
        while True:
            typ, body = self.read_msg()
            if typ == b"V":
                (ln,) = struct.unpack("!i", body[:4])
                value = None if ln < 0 else body[4:4 + ln]
            elif typ == b"E":
                err = parse_fields(body)
            elif typ == b"Z":
                return value, err

    def terminate(self):
        try:
            self.send(msg(b"X"))
        except OSError:
            pass
        self.close()


def send_cancel(host, port, pid, key):
    s = socket.create_connection((host, port), timeout=10)
    try:
        s.sendall(struct.pack("!IIII", 16, CANCEL_REQUEST, pid, key))
        s.settimeout(10)
        try:
            s.recv(1)
        except OSError:
            pass
    finally:
        s.close()
