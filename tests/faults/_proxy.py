"""A small threaded TCP proxy that a fault test puts between a real client and a real local server.

Modes, switched at any time by the test (they apply to connections accepted from then on, and ``reset_after``
also to the response bytes still flowing on open ones):

* ``pass()``: forward both ways unchanged.
* ``reset_after(n, times=1)``: forward, but every ``n`` bytes of server-to-client data (counted over all
  connections, kept-alive ones included) abort the connection carrying them with a TCP RST (SO_LINGER 0), as a
  dying load balancer or server does; after ``times`` resets it passes again. ``n=0`` resets as soon as the server starts answering (the request reached the server: a lost
  response after the server acted).
* ``stall()``: accept and read, never answer, on new and open connections (the client's read timeout decides).
* ``latency(seconds)``: every piece of client-to-server data (a GET request is one) is forwarded that much later,
  on each connection independently: a per-request round trip to a distant server. Combines with the other modes.
* ``down()`` / ``up()``: stop listening (new connections are refused, like a stopped server; open ones are cut) and
  listen again on the same port.

``events`` counts what happened (``accepted``, ``reset``; a connection refused while down never reaches the proxy). Not modelled: TLS, half-open connections kept by a NAT, slow drips of bytes.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections import Counter

from facility_data.localsite.procs import free_port

_BUF = 64 * 1024


def _rst(sock: socket.socket) -> None:
    """Close with RST instead of FIN (the peer sees ECONNRESET)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.events: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._mode = "pass"
        self._reset_after: int | None = None
        self._reset_times = self._left = 0
        self._latency = 0.0
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- control ------------------------------------------------------------------------------------------
    def pass_(self) -> None:
        with self._lock:
            self._mode, self._reset_after, self._reset_times = "pass", None, 0

    def reset_after(self, n: int, times: int = 1) -> None:
        with self._lock:
            self._mode, self._reset_after, self._reset_times, self._left = "pass", n, times, n

    def latency(self, seconds: float) -> None:
        self._latency = max(0.0, seconds)

    def stall(self) -> None:
        with self._lock:
            self._mode = "stall"

    def up(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True, name="fault-proxy")
        self._thread.start()

    def down(self) -> None:
        """Stop listening and cut every open connection: the server is gone."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        listener.close()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            _rst(c)

    def close(self) -> None:
        self.down()

    # --- plumbing -----------------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            self.events["accepted"] += 1
            with self._lock:
                mode = self._mode
                self._conns.add(client)
            if mode == "stall":
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                _rst(client)
                continue
            with self._lock:
                self._conns.add(server)
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _swallow(self, client: socket.socket) -> None:
        try:
            while client.recv(_BUF):
                pass
        except OSError:
            pass

    def _claim(self, n: int) -> int | None:
        """How many of ``n`` response bytes may pass before a reset is due (None: all of them). The countdown is
        shared by every connection, so a sequential client sees a reset every ``reset_after`` bytes it receives."""
        with self._lock:
            if self._reset_after is None or self._reset_times <= 0:
                return None
            if n < self._left:
                self._left -= n
                return None
            allowed = self._left
            self._reset_times -= 1
            self._left = self._reset_after
            if self._reset_times <= 0:
                self._reset_after = None
            return allowed

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        """Both directions of one connection in one thread, so a reset closes sockets no other thread is blocked
        on (a close under another thread's recv would be deferred and send nothing)."""
        reset = False
        try:
            while not reset:
                readable, _, _ = select.select([client, server], [], [])
                if client in readable:
                    data = client.recv(_BUF)
                    if not data:
                        break
                    if self._latency:
                        time.sleep(self._latency)  # this connection only: the others relay meanwhile
                    server.sendall(data)
                if server in readable:
                    data = server.recv(_BUF)
                    if not data:
                        break
                    if self._mode == "stall":
                        continue  # a stalled server: the answer never comes
                    allowed = self._claim(len(data))
                    if allowed is not None:
                        client.sendall(data[:allowed])
                        reset = True
                        continue
                    client.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._conns.discard(client)
            self._conns.discard(server)
        if reset:
            self.events["reset"] += 1
            _rst(client)
            _rst(server)
            return
        for s in (client, server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
