"""A TCP proxy for tests that need to break a connection the way networks do.

``cut()`` resets every connection through it (SO_LINGER 0, then close: an RST,
no WebSocket close frame, no FIN); ``hold()`` refuses new connections until
``release()``; ``mute()`` drops what the server sends on the current
connections (the client's commands still arrive: a reply that is lost).
One thread accepts, one thread per connection pumps bytes both ways;
``stop()`` (or leaving ``tcp_proxy()``) ends and joins them all.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Iterator

from support import WAIT

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 seconds: close() sends an RST


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


class _Pipe:
    """One proxied connection; only its pump thread touches its sockets."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.cut = threading.Event()      # set by TcpProxy.cut(): reset both sides
        self.muted = threading.Event()    # set by TcpProxy.mute(): drop upstream -> client bytes
        self.thread = threading.Thread(target=self._pump, name="test-proxy-pump", daemon=True)

    def _pump(self) -> None:
        peers = {self.client: self.upstream, self.upstream: self.client}
        for sock in peers:
            sock.setblocking(False)
        try:
            with selectors.DefaultSelector() as selector:
                for sock in peers:
                    selector.register(sock, selectors.EVENT_READ)
                while not self.cut.is_set():
                    for key, _ in selector.select(0.02):
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        try:
                            data = source.recv(65536)
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        if not data:
                            return
                        if source is self.upstream and self.muted.is_set():
                            continue
                        target = peers[source]
                        target.setblocking(True)
                        target.settimeout(WAIT)
                        try:
                            target.sendall(data)
                        except OSError:
                            return
                        target.setblocking(False)
        finally:
            _reset(self.client)
            _reset(self.upstream)


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        # _pipes_lock guards _pipes and _holding: the accept thread adds, the test's thread cuts.
        self._pipes_lock = threading.Lock()
        self._pipes: list[_Pipe] = []
        self._holding = False
        self.accepted = 0  # connections let through, in all (read by tests after a wait)
        self._accepted = threading.Condition(self._pipes_lock)
        self._stopping = threading.Event()
        self._accepter = threading.Thread(target=self._accept, name="test-proxy-accept", daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def _accept(self) -> None:
        self.listener.settimeout(0.02)
        while not self._stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._pipes_lock:  # held while connecting upstream, so hold() + cut() leave nothing open
                if self._holding:
                    _reset(client)
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=WAIT)
                except OSError:
                    _reset(client)
                    continue
                pipe = _Pipe(client, upstream)
                self._pipes.append(pipe)
                self.accepted += 1
                self._accepted.notify_all()
                pipe.thread.start()

    def wait_accepted(self, count: int) -> None:
        """Block until ``count`` connections in all went through."""
        with self._pipes_lock:
            assert self._accepted.wait_for(lambda: self.accepted >= count, WAIT), \
                f"{self.accepted} connections through the proxy, wanted {count}"

    def cut(self) -> int:
        """Reset every current connection (both sides); return how many, once they are gone."""
        with self._pipes_lock:
            pipes, self._pipes = self._pipes, []
        for pipe in pipes:
            pipe.cut.set()
        for pipe in pipes:
            pipe.thread.join(WAIT)
        return len(pipes)

    def mute(self) -> None:
        """From now on, drop what the server sends on the current connections."""
        with self._pipes_lock:
            for pipe in self._pipes:
                pipe.muted.set()

    def hold(self) -> None:
        """Refuse (reset) new connections until ``release()``."""
        with self._pipes_lock:
            self._holding = True

    def release(self) -> None:
        with self._pipes_lock:
            self._holding = False

    def stop(self) -> None:
        self._stopping.set()
        self._accepter.join(WAIT)
        self.cut()
        self.listener.close()


@contextlib.contextmanager
def tcp_proxy(target_port: int) -> Iterator[TcpProxy]:
    """A proxy in front of ``target_port``; always stopped and joined on exit."""
    proxy = TcpProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.stop()
