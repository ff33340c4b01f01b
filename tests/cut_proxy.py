"""A TCP proxy that cuts connections the way a network does, for tests of recovery.

Between a client (a browser, say) and a hub: ``cut()`` resets both sides of every
connection through it (TCP RST, so no WebSocket close frame is ever sent), and
``refuse`` resets new connections at once (a network that is still down). One
thread accepts; one thread per connection pumps bytes both ways and wakes at once
when told to cut (a socketpair in its selector, not a polling loop).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from typing import Iterator

from support import WAIT


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST instead of a FIN (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class CutProxy:
    """A proxy from a free loopback port to ``127.0.0.1:target_port``.

    Attributes:
        port: where clients connect.
        refuse: reset new connections at once while True.
        connections: connections accepted (and passed on) so far.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refuse = False
        self.connections = 0
        # _pumps_lock guards _pumps (pump thread -> the socket that wakes it) and connections.
        self._pumps_lock = threading.Lock()
        self._pumps: dict[threading.Thread, socket.socket] = {}
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # so the accept loop sees _stopping; never a test's wait
        self.port = self._listener.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept, name="test-cut-proxy-accept", daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            if self.refuse:
                reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=WAIT)
            except OSError:
                reset(client)  # the hub is down: so is the connection
                continue
            wake, waker = socket.socketpair()
            pump = threading.Thread(target=self._pump, args=(client, upstream, wake),
                                    name="test-cut-proxy-pump", daemon=True)
            with self._pumps_lock:
                self._pumps[pump] = waker
                self.connections += 1
            pump.start()

    def _pump(self, client: socket.socket, upstream: socket.socket, wake: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        for sock in peers:
            sock.settimeout(WAIT)  # a send to a peer that stopped reading gives up
        try:
            with selectors.DefaultSelector() as selector:
                for sock in (client, upstream, wake):
                    selector.register(sock, selectors.EVENT_READ)
                while True:
                    for key, _ in selector.select():
                        if key.fileobj is wake:
                            return  # cut: reset both sides below
                        try:
                            data = key.fileobj.recv(65536)
                            if data:
                                peers[key.fileobj].sendall(data)
                        except OSError:
                            data = b""
                        if not data:
                            return  # one side ended: so does the other
        finally:
            reset(client)
            reset(upstream)
            wake.close()
            with self._pumps_lock:
                waker = self._pumps.pop(threading.current_thread())
            waker.close()

    def cut(self) -> int:
        """Reset every connection through the proxy, both sides; returns how many. Blocks until done."""
        with self._pumps_lock:
            pumps = list(self._pumps.items())
        for _, waker in pumps:
            with contextlib.suppress(OSError):
                waker.send(b"x")
        for pump, _ in pumps:
            pump.join(WAIT)
            assert not pump.is_alive(), "a proxy pump did not stop"
        return len(pumps)

    def stop(self) -> None:
        """Stop accepting and reset what is open. Idempotent."""
        self._stopping.set()
        self._accepter.join(WAIT)
        self.cut()
        self._listener.close()


@contextlib.contextmanager
def cut_proxy(target_port: int) -> Iterator[CutProxy]:
    """A ``CutProxy`` in front of ``target_port``, always stopped afterwards."""
    proxy = CutProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.stop()
