"""A tiny OIDC issuer for the identity tests: OIDC discovery and a JWKS served by a threaded
http.server on 127.0.0.1, signing keys made at test time (RSA 2048, EC P-256, Ed25519), and
tokens signed with PyJWT (or forged by hand for the attacks PyJWT refuses to produce).

The issuer can rotate keys (publish / unpublish a kid), answer with errors instead of keys,
be taken down (nothing listening on its port) and brought back on the same port, and it
counts the requests it served per path (to test the gateway's refetch rate limit)."""

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/keys"

# kind -> (JWS alg it signs with by default)
KINDS = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}


def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_uint(n):
    return b64url(n.to_bytes((n.bit_length() + 7) // 8 or 1, "big"))


def b64url_json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


class SigningKey:
    """A private key, its kid and its public JWK."""

    def __init__(self, kind, kid, pin_alg=None):
        self.kind, self.kid = kind, kid
        if kind == "rsa":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            nums = self.private.public_key().public_numbers()
            self.jwk = {"kty": "RSA", "n": b64url_uint(nums.n), "e": b64url_uint(nums.e)}
        elif kind == "ec":
            self.private = ec.generate_private_key(ec.SECP256R1())
            nums = self.private.public_key().public_numbers()
            self.jwk = {"kty": "EC", "crv": "P-256", "x": b64url(nums.x.to_bytes(32, "big")),
                        "y": b64url(nums.y.to_bytes(32, "big"))}
        elif kind == "ed25519":
            self.private = ed25519.Ed25519PrivateKey.generate()
            raw = self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)
            self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        else:
            raise ValueError(kind)
        self.jwk.update(kid=kid, use="sig")
        if pin_alg:
            self.jwk["alg"] = pin_alg

    @property
    def default_alg(self):
        return KINDS[self.kind]

    def public_pem(self):
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def private_pem(self):
        return self.private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())


class Issuer:
    """One issuer at http://127.0.0.1:PORT (discovery at /.well-known/openid-configuration,
    keys at /keys). `mode` is "up" (serve), or an HTTP status (e.g. 503) to answer every
    request with; take_down()/bring_up() stop and restart listening on the same port."""

    def __init__(self, audience="pgcordon", prefix="", port=None):
        self.audience = audience
        self.prefix = prefix.rstrip("/")
        self.keys = {}          # kid -> SigningKey (known to the issuer)
        self.published = []     # kids in the JWKS, in order
        self.requests = Counter()
        self.request_log = []   # (monotonic time, path)
        self.mode = "up"
        self.discovery_issuer = None  # override the discovery document's "issuer"
        self.discovery_jwks_uri = None  # and its "jwks_uri"
        self._hold = None             # set by hold_next(): JWKS requests wait for release()
        self.held = threading.Event() # a JWKS request is waiting in hold
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        self.port = port
        self.bring_up()

    # -- addresses -------------------------------------------------------------
    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def jwks_uri(self):
        return self.url + JWKS_PATH

    def config(self, **kw):
        """An oidc: entry for this issuer (a dict for the YAML writer); username_claim=None
        leaves the gateway's default (sub)."""
        d = {"issuer": self.url, "audience": self.audience, "username_claim": "email",
             "min_refresh": "1s"}
        d.update(kw)
        return {k: v for k, v in d.items() if v is not None}

    # -- keys --------------------------------------------------------------------
    def add_key(self, kind, kid=None, publish=True, pin_alg=None):
        kid = kid or f"{kind}-{len(self.keys) + 1}"
        k = SigningKey(kind, kid, pin_alg)
        with self._lock:
            self.keys[kid] = k
            if publish:
                self.published.append(kid)
        return k

    def publish(self, kid):
        with self._lock:
            if kid not in self.published:
                self.published.append(kid)

    def unpublish(self, kid):
        with self._lock:
            if kid in self.published:
                self.published.remove(kid)

    def jwks(self):
        with self._lock:
            return {"keys": [self.keys[k].jwk for k in self.published]}

    # -- requests ----------------------------------------------------------------
    def count(self, path=JWKS_PATH):
        with self._lock:
            return self.requests[self.prefix + path]

    def requests_since(self, t0, path=JWKS_PATH):
        with self._lock:
            return sum(1 for t, p in self.request_log if t >= t0 and p == self.prefix + path)

    def wait_for_fetch(self, n=1, timeout=10, path=JWKS_PATH):
        """Waits until the keys were fetched at least n times in all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(path) >= n:
                return True
            time.sleep(0.02)
        return False

    def hold_next(self):
        """JWKS requests from now on wait (up to 30 s) until release()."""
        self.held.clear()
        self._hold = threading.Event()

    def release(self):
        hold, self._hold = self._hold, None
        if hold:
            hold.set()

    def _handle(self, handler):
        path = handler.path.split("?", 1)[0]
        with self._lock:
            self.requests[path] += 1
            self.request_log.append((time.monotonic(), path))
            mode = self.mode
        hold = self._hold
        if hold is not None and path == self.prefix + JWKS_PATH:
            self.held.set()
            hold.wait(30)
        if mode != "up":
            handler.send_response(int(mode))
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if path == self.prefix + DISCOVERY_PATH:
            body = {"issuer": self.discovery_issuer or self.url,
                    "jwks_uri": self.discovery_jwks_uri or self.jwks_uri,
                    "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"]}
        elif path == self.prefix + JWKS_PATH:
            body = self.jwks()
        else:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        data = json.dumps(body).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    # -- lifecycle ---------------------------------------------------------------
    def bring_up(self):
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):
                issuer._handle(self)

            def log_message(self, *a):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        srv = ThreadingHTTPServer(("127.0.0.1", self.port or 0), Handler)
        srv.daemon_threads = True
        self._server = srv
        self.port = srv.server_address[1]
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def take_down(self):
        """Nothing listens on the port afterwards (connection refused)."""
        self.release()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def close(self):
        self.take_down()

    # -- tokens ------------------------------------------------------------------
    def claims(self, username, groups=None, exp_in=300, claim="email", **extra):
        now = int(time.time())
        c = {"iss": self.url, "aud": self.audience, "sub": f"sub-{username}", "iat": now,
             "exp": now + exp_in}
        if claim:
            c[claim] = username
        if groups is not None:
            c["groups"] = groups
        c.update(extra)
        return c

    def token(self, claims, kid=None, alg=None, headers=None, key=None):
        """Signs claims with the key named kid (default: the first key) via PyJWT."""
        k = key or self.keys[kid or next(iter(self.keys))]
        h = {"kid": k.kid}
        h.update(headers or {})
        return jwt.encode(claims, k.private, algorithm=alg or k.default_alg, headers=h)


def forge_hs256(claims, secret, kid=None):
    """HS256 token with `secret` (e.g. an RSA public key PEM) as the HMAC key, by hand:
    PyJWT refuses to use a PEM public key as an HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def unsigned(claims, kid=None, alg="none"):
    header = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    return f"{b64url_json(header)}.{b64url_json(claims)}."


def tamper_payload(token, **changes):
    """Same header and signature, different claims."""
    h, p, s = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims.update(changes)
    return f"{h}.{b64url_json(claims)}.{s}"
