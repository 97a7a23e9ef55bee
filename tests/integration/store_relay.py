"""A TCP relay between the gateway and a PostgreSQL server (a store's, or the upstream's: its
cancel connections go through it too), to lose or slow a link at the worst moment, or
between a client and the gateway, to see the bytes on the wire. Every connection is passed
through as is until the relay is armed:
arm(needle, "cut") passes the next client write holding needle to the server, then closes
the gateway's side before any answer (the server still runs what it got); arm(needle,
"mute") passes it too, and then swallows every answer on that connection while keeping it
open (a server that stopped answering); arm(needle, "hold") keeps that write (and what
follows on its connection) until release(), as a slow link would. .fired is set once it
happened. .down_bytes counts what the server sent, and .down_data keeps it when the relay
is made with keep_down=True."""

import socket
import threading
import time


def accept_pairs(listener, target, serve):
    """Until listener is closed: connects each client it accepts to target and hands both
    sockets to serve(client, server). A client whose server cannot be reached is closed."""
    while True:
        try:
            c, _ = listener.accept()
        except OSError:
            return
        try:
            s = socket.create_connection(target)
        except OSError:
            c.close()
            continue
        serve(c, s)


class StoreRelay:
    def __init__(self, host, port, keep_down=False):
        self.target = (host, port)
        self.down_data = bytearray() if keep_down else None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.needle = self.action = None
        self.lock = threading.Lock()
        self.fired = threading.Event()
        self.released = threading.Event()
        self.down_bytes = 0
        threading.Thread(target=accept_pairs, args=(self.listener, self.target, self._serve), daemon=True).start()

    def url(self, store_url, pg):
        """store_url (a postgresql:// URL to pg) through the relay."""
        direct = f"@{pg.host}:{pg.port}/"
        assert direct in store_url, store_url
        return store_url.replace(direct, f"@127.0.0.1:{self.port}/")

    def arm(self, needle, action):
        assert action in ("cut", "mute", "hold")
        self.fired.clear()
        self.released.clear()
        with self.lock:
            self.needle, self.action = needle, action

    def release(self):
        self.released.set()

    def close(self):
        self.released.set()
        self.listener.close()

    def _take(self, data):
        """The action for this client write, once: None, "cut" or "mute"."""
        with self.lock:
            if self.needle is None or self.needle not in data:
                return None
            action, self.needle = self.action, None
            return action

    def _serve(self, c, s):
        muted = threading.Event()
        threading.Thread(target=self._up, args=(c, s, muted), daemon=True).start()
        threading.Thread(target=self._down, args=(s, c, muted), daemon=True).start()

    def _up(self, c, s, muted):
        try:
            while data := c.recv(65536):
                action = self._take(data)
                if action == "mute":
                    muted.set()
                if action == "hold":
                    self.fired.set()
                    self.released.wait(60)
                s.sendall(data)
                if action:
                    self.fired.set()
                if action == "cut":
                    c.shutdown(socket.SHUT_RDWR)
                    c.close()
                    time.sleep(1)  # the server reads what it got, and runs it
                    break
        except OSError:
            pass
        _end(s)

    def _down(self, s, c, muted):
        try:
            while data := s.recv(65536):
                with self.lock:
                    self.down_bytes += len(data)
                    if self.down_data is not None:
                        self.down_data += data
                if not muted.is_set():
                    c.sendall(data)
        except OSError:
            pass
        if not muted.is_set():
            _end(c)


def _end(sock):
    """Closes sock for real: a bare close() would leave the other pump's recv() holding it
    open, and the peer would never see the end (a cancel request waits for it)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
