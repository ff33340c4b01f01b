"""The load generator's connection roles: ``connect`` (how fast N clients get in) and ``storm`` (how fast they come back).

- ``connect``: says ``ready`` first, waits for ``go``, then opens and subscribes
  its connections (in batches of ``batch``) and reports when it started and
  finished, so that several processes measure one window; with ``hold``, as
  ``storm`` below.
- ``storm``: opens and subscribes its connections, says ``ready``, then
  follows the documented reconnect policy (docs/protocol.md, "Close codes")
  whenever the server drops one: a close or EOF, then reconnect after a random
  delay of up to ``jitter`` seconds (1 s: "reconnect now"), or up to the window
  a 4200's reason names (``protocol.reconnect_window``); a refused TCP
  connection, one reset before its handshake was answered (counted with the
  refused) or an HTTP 503 backs off like ``rusty_ws/backoff.py`` (0.5 s doubling to
  30 s, half jittered), except that a 503 with ``Retry-After`` waits what it says
  plus up to a second (``backoff.retry_after``), as ``WsClient`` does. It ends
  once every connection was dropped and is subscribed again, and reports when
  the first was dropped and the last came back, with the refusals counted;
  with ``hold``, it reports and then keeps its connections open until its
  standard input ends, so that the first to finish does not close thousands of
  connections at once while the others are still coming back.
"""

from __future__ import annotations

import errno
import heapq
import json
import os
import random
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib.loadgen import Conn, LoadGen
from benchlib.wire import handshake

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from rusty_ws.backoff import delays, retry_after  # the policy itself, not a copy
from rusty_ws.protocol import RECONNECT_JITTER, reconnect_window

RESET = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)  # the peer dropped the TCP connection


def header(head: bytes, name: bytes) -> str | None:
    """The value of the header ``name`` (lower case) in an HTTP answer's head, or None."""
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


class Client:
    """One storm client: its current connection and where it is in the policy."""

    __slots__ = ("index", "conn", "sock", "delays", "dropped", "back", "attempts")

    def __init__(self, index: int, conn: Conn) -> None:
        self.index, self.conn, self.sock = index, conn, conn.sock
        self.delays = delays()
        self.dropped = self.back = 0.0
        self.attempts = 0


class StormGen(LoadGen):
    def role_connect(self) -> dict:
        spec = self.spec
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("expected go")
        started = time.monotonic()
        self.connect_all([(spec["session"], spec["topic"], 0)] * spec["connections"])
        result = {**self.report(), "started": started, "finished": time.monotonic()}
        if spec.get("hold"):  # report now, and keep the connections open until stdin ends (``Generator.finish``)
            print(json.dumps(result), flush=True)
            sys.stdin.read()
        return result

    def role_storm(self) -> dict:
        spec = self.spec
        self.connect_all([(spec["session"], spec["topic"], 0)] * spec["connections"])
        self.jitter = spec.get("jitter", 1.0)
        self.clients = [Client(i, conn) for i, conn in enumerate(self.conns)]
        self.by_sock = {client.sock: client for client in self.clients}
        self.timers: list[tuple[float, int]] = []
        self.refused_http = self.refused_tcp = 0
        print("ready", flush=True)
        waiting = len(self.clients)
        while waiting:
            now = time.monotonic()
            if now > self.deadline:
                raise TimeoutError(f"deadline passed during the storm ({waiting} not back)")
            while self.timers and self.timers[0][0] <= now:
                self.reconnect(self.clients[heapq.heappop(self.timers)[1]])
            timeout = min(0.05, max(0.0, self.timers[0][0] - now)) if self.timers else 0.05
            for key, mask in self.selector.select(timeout):
                client = self.by_sock.get(key.fileobj)
                if client is None:
                    continue
                if key.data is None:  # a connect() under way
                    self.connected(client)
                    continue
                try:
                    if mask & selectors.EVENT_WRITE:
                        client.conn.flush()
                    if mask & selectors.EVENT_READ:
                        self.read(client)
                except RESET:
                    self.reset(client)
            waiting = sum(1 for c in self.clients if not c.back)
        report = self.report()
        dropped = [c.dropped for c in self.clients if c.dropped]
        result = {**report, "dropped": len(dropped), "back": sum(1 for c in self.clients if c.back),
                  "first_drop": min(dropped, default=0.0), "last_back": max(c.back for c in self.clients),
                  "refused_http": self.refused_http, "refused_tcp": self.refused_tcp,
                  "attempts": sum(c.attempts for c in self.clients)}
        if spec.get("hold"):  # report now, and keep the connections open until stdin ends (``Generator.finish``)
            print(json.dumps(result), flush=True)
            sys.stdin.read()
        return result

    # ---------------------------------------------------------------- one client

    def read(self, client: Client) -> None:
        conn = client.conn
        try:
            self.on_readable(conn)
        except RESET:
            raise
        except ConnectionError:  # the handshake was answered, but not with 101 (503: Retry-After, else back off)
            self.refused_http += 1
            wait = retry_after(header(conn.head, b"retry-after"))
            self.drop(client, next(client.delays) if wait is None else wait)
            return
        if conn.closed:  # "reconnect now": within the window the close reason names, else within `jitter`
            window = reconnect_window(conn.close_reason)
            self.drop(client, random.uniform(0, window if window > RECONNECT_JITTER else self.jitter))
        elif conn.ready and not client.back and client.dropped:
            client.back = time.monotonic()
            client.delays = delays()  # a good connection: the back-off starts over

    def reset(self, client: Client) -> None:
        """The server reset the connection (a stopping server's backlog, or one it could not take).

        Before the handshake was answered it is a refusal like a refused SYN (counted with them, and
        backed off); after it, a drop like a close.
        """
        if client.conn.upgraded:
            self.drop(client, random.uniform(0, self.jitter))
            return
        self.refused_tcp += 1
        self.drop(client, next(client.delays))

    def drop(self, client: Client, delay: float) -> None:
        now = time.monotonic()
        if not client.dropped:
            client.dropped = now
        client.back = 0.0
        self.forget(client)
        heapq.heappush(self.timers, (now + delay, client.index))

    def forget(self, client: Client) -> None:
        sock = client.sock
        self.by_sock.pop(sock, None)
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        client.conn.closed = True

    def reconnect(self, client: Client) -> None:
        client.attempts += 1
        sock = socket.socket()
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", self.spec["port"]))
        client.sock = sock
        self.by_sock[sock] = client
        if code in (0, errno.EINPROGRESS):
            self.selector.register(sock, selectors.EVENT_WRITE, None)
            return
        self.refused_tcp += 1
        self.by_sock.pop(sock, None)
        sock.close()
        heapq.heappush(self.timers, (time.monotonic() + next(client.delays), client.index))

    def connected(self, client: Client) -> None:
        sock = client.sock
        self.selector.unregister(sock)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.refused_tcp += 1
            self.by_sock.pop(sock, None)
            sock.close()
            heapq.heappush(self.timers, (time.monotonic() + next(client.delays), client.index))
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        old = client.conn
        conn = Conn(sock, self.selector, old.session, old.topic, 0)
        client.conn = conn
        self.conns[client.index] = conn
        self.selector.register(sock, selectors.EVENT_READ, conn)
        try:
            conn.send(handshake("127.0.0.1", self.spec["port"], self.dialect.path))
        except RESET:
            self.reset(client)
