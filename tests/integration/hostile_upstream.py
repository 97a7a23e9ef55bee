"""A TCP relay between the gateway and PostgreSQL that breaks what the server sends, as a
compromised or broken upstream would: once a connection's first ReadyForQuery has passed,
some of its messages are corrupted, cut, padded, dropped, repeated, or preceded by a
message the server never sent; rarely a header lies about its length or the link is cut.
What the gateway sends passes unchanged. Each connection draws from its own random
generator, seeded with the application_name in its startup packet (the gateway passes the
client's on), so that a session can be replayed with the same breakage."""

import random
import re
import socket
import struct
import threading

from store_relay import accept_pairs

# Backend message types, and a few that are not.
TYPES = b"RKSZTDCEINAnst12ds3GHWcVv\0\xff"


class HostileUpstream:
    def __init__(self, host, port, rate=0.08):
        self.target = (host, port)
        self.rate = rate
        self.mangled = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=accept_pairs, args=(self.listener, self.target, self._serve), daemon=True).start()

    def close(self):
        self.listener.close()

    def _serve(self, c, s):
        rng = random.Random()
        threading.Thread(target=self._up, args=(c, s, rng), daemon=True).start()
        threading.Thread(target=self._down, args=(s, c, rng), daemon=True).start()

    @staticmethod
    def _up(c, s, rng):
        first = True
        try:
            while data := c.recv(65536):
                if first:  # the startup packet: nothing comes back before it is sent
                    name = re.search(rb"application_name\0([^\0]*)\0", data)
                    rng.seed(name.group(1) if name else b"")
                    first = False
                s.sendall(data)
        except OSError:
            pass
        for x in (s, c):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _down(self, s, c, rng):
        buf, ready = b"", False
        try:
            while data := s.recv(65536):
                buf += data
                out = b""
                while len(buf) >= 5:
                    n = struct.unpack("!I", buf[1:5])[0]
                    if len(buf) < 1 + n:
                        break
                    typ, body, buf = buf[:1], buf[5:1 + n], buf[1 + n:]
                    if ready and rng.random() < self.rate:
                        with self.lock:
                            self.mangled += 1
                        piece = self._mangle(rng, typ, body)
                        if piece is None:
                            c.sendall(out)
                            return  # the link is cut
                        out += piece
                    else:
                        out += typ + struct.pack("!I", len(body) + 4) + body
                    ready = ready or typ == b"Z"
                c.sendall(out)
        except OSError:
            pass
        finally:
            for x in (s, c):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                x.close()

    @staticmethod
    def _mangle(rng, typ, body):
        """The message's replacement: bytes to send, or None to cut the link."""

        def frame(t, b):
            return t + struct.pack("!I", len(b) + 4) + b

        def junk(k):
            return bytes(rng.randrange(256) for _ in range(k))

        r = rng.random()
        if r < 0.25 and body:  # a byte changed
            i = rng.randrange(len(body))
            return frame(typ, body[:i] + bytes([rng.randrange(256)]) + body[i + 1:])
        if r < 0.45 and body:  # cut short, the length says so
            return frame(typ, body[:rng.randrange(len(body))])
        if r < 0.55:  # padded
            return frame(typ, body + junk(rng.randrange(1, 16)))
        if r < 0.65:  # dropped
            return b""
        if r < 0.75:  # repeated
            return frame(typ, body) * 2
        if r < 0.93:  # preceded by one the server never sent
            return frame(bytes([rng.choice(TYPES)]), junk(rng.randrange(0, 40))) + frame(typ, body)
        if r < 0.98:  # a header that lies
            return typ + struct.pack("!I", rng.choice([0, 3, len(body) + 4 + rng.randrange(1, 64)])) + body
        return None
