"""Test support: a real hub on a free loopback port, and small clients that never sleep.

Every wait here blocks on something observable (a frame, EOF, a condition)
with a timeout in units of ``MS``, scaled by ``RUSTY_WS_TESTS_TIMEOUT_FACTOR``
for slow machines.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import websocket
from flask import Flask

from rusty_ws import WsClient, create_app
from rusty_ws.server.hub import Hub
from rusty_ws.server.serving import HubServer, make_server, stop
from rusty_ws.server.state import state_of

MS = 0.001 * float(os.environ.get("RUSTY_WS_TESTS_TIMEOUT_FACTOR", "1"))
#: The usual wait for something that should happen at once.
WAIT = 3000 * MS
SECRET = "test-secret-" + "x" * 32


@dataclass
class RunningServer:
    app: Flask
    server: HubServer
    prefix: str = ""

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.prefix}/ws"

    @property
    def hub(self) -> Hub:
        return state_of(self.app).hub

    def token(self, username: str, session_id: str | None = None) -> str:
        return state_of(self.app).tokens.issue(username, session_id).token

    def connect(self, token: str | None = None, **kwargs: Any) -> "Client":
        url = self.ws_url + (f"?token={token}" if token else "")
        return Client(url, **kwargs)

    def wait_connections(self, at_most: int) -> None:
        assert self.hub.wait_connections(at_most, WAIT), (
            f"still {self.hub.counts()['connections']} connections, wanted at most {at_most}"
        )


def hub_config(**overrides: Any) -> dict[str, Any]:
    """Settings for a test hub: a known secret, then ``overrides`` (names without the prefix)."""
    config: dict[str, Any] = {"RUSTY_WS_JWT_SECRET_KEY": SECRET}
    config.update({f"RUSTY_WS_{key.upper()}": value for key, value in overrides.items()})
    return config


@contextlib.contextmanager
def running_server(app: Flask | None = None, prefix: str = "", port: int = 0,
                   **overrides: Any) -> Iterator[RunningServer]:
    """Serve ``app`` (default: ``create_app`` with ``overrides``) on 127.0.0.1, on ``port`` (0: a free one).

    Always shuts the hub and the server down and joins the serving thread.
    """
    app = app or create_app(hub_config(**overrides))
    server = make_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="test-server", daemon=True)
    thread.start()
    try:
        yield RunningServer(app, server, prefix)
    finally:
        stop(app, server, timeout=WAIT)
        thread.join(WAIT)
        server.server_close()
        assert not thread.is_alive(), "the server thread did not stop"


class Client:
    """A raw WebSocket client (websocket-client) with waits that never sleep."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.ws = websocket.create_connection(url, timeout=WAIT, **kwargs)

    def send(self, text: str) -> None:
        self.ws.send(text)

    def recv(self, timeout: float = WAIT) -> str:
        self.ws.settimeout(timeout)
        return self.ws.recv()

    def recv_json(self) -> dict[str, Any]:
        return json.loads(self.recv())

    def sync(self) -> list[str]:
        """Send ``ping`` and return every frame that arrived before its ``pong``.

        The server handles a connection's commands in order, so once the pong is
        here, everything sent before the ping has been carried out.
        """
        self.send("ping")
        before = []
        for _ in range(10_000):
            message = self.recv()
            if message == "pong":
                return before
            before.append(message)
        raise AssertionError("no pong among 10,000 frames")

    def command(self, text: str) -> list[str]:
        """Send one command and return what the server answered to it (before a sync pong)."""
        self.send(text)
        return self.sync()

    def recv_close(self, timeout: float = WAIT) -> tuple[int, str]:
        """Read until the server's close frame; return its code and reason (1006 on EOF)."""
        self.ws.settimeout(timeout)
        for _ in range(100_000):
            try:
                opcode, frame = self.ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketConnectionClosedException:
                return 1006, ""
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                return code, data[2:].decode("utf-8", "replace")
        raise AssertionError("no close frame among 100,000 frames")

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.ws.close()


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """One HTTP request; returns (status, headers, JSON body or text)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if body is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            status, head, text = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, head, text = exc.code, dict(exc.headers), exc.read()
    try:
        return status, head, json.loads(text)
    except ValueError:
        return status, head, text.decode("utf-8", "replace")


def login(server: RunningServer, username: str = "testuser", password: str = "password",
          session_id: str | None = None) -> str:
    body: dict[str, Any] = {"username": username, "password": password}
    if session_id:
        body["session_id"] = session_id
    status, _, reply = http("POST", server.http_url + "/auth/token", body)
    assert status == 200, reply
    return reply["token"]


def client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True, mask: bytes | None = None, rsv: int = 0,
                 length: int | None = None) -> bytes:
    """A client frame, masked with ``mask`` (random by default); ``length`` may lie in the header."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocket:
    """A hand-made WebSocket client, for what websocket-client will not send (or answer)."""

    def __init__(self, port: int, path: str = "/ws", extensions: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        key = base64.b64encode(os.urandom(16)).decode()
        offer = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{offer}"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, f"handshake refused: {head!r}"
            head += chunk
        self.status = int(head.split()[1])
        lines = head.decode("latin-1").split("\r\n")[1:]
        self.headers = {name.strip().lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines if line)}

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"abcd",
                   rsv: int = 0) -> None:
        self.sock.sendall(client_frame(payload, opcode, fin, mask, rsv))

    def _read_exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            assert chunk, "the connection ended inside a frame"
            data += chunk
        return data

    def recv_frame(self, timeout: float = WAIT) -> tuple[int, bytes]:
        """One server frame: its first byte (FIN, RSV bits, opcode) and its payload."""
        self.sock.settimeout(timeout)
        first, length = self._read_exactly(2)
        assert not length & 0x80, "server frames are never masked"
        length &= 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read_exactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read_exactly(8))[0]
        return first, self._read_exactly(length)

    def read_until_eof(self, timeout: float = WAIT) -> bytes:
        """Everything the server sends until it ends the connection."""
        self.sock.settimeout(timeout)
        data = b""
        for _ in range(100_000):
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
        raise AssertionError("the server never ended the connection")

    def close(self) -> None:
        self.sock.close()


class ClientEvents:
    """What a ``WsClient``'s callbacks saw, in one ordered log, with waits that never sleep.

    Entries: ``("message", delivery)`` for each delivery of ``topics``,
    ``("connect",)``, ``("disconnect", code)``, ``("recovery_failed", topic, session_id, reason)``.
    Every entry is added on the client's dispatcher thread, in the order it runs them.
    """

    def __init__(self, client: WsClient, *topics: str) -> None:
        self._changed = threading.Condition()
        self.log: list[tuple[Any, ...]] = []
        for topic in topics:
            client.on_delivery(topic, lambda delivery: self._add("message", delivery))
        client.on_connect = lambda c: self._add("connect")
        client.on_disconnect = lambda c, code, reason: self._add("disconnect", code)
        client.on_recovery_failed = lambda c, topic, session_id, reason: self._add(
            "recovery_failed", topic, session_id, reason)

    def _add(self, *entry: Any) -> None:
        with self._changed:
            self.log.append(entry)
            self._changed.notify_all()

    def entries(self, kind: str) -> list[tuple[Any, ...]]:
        with self._changed:
            return [entry[1:] for entry in self.log if entry[0] == kind]

    def payloads(self) -> list[Any]:
        return [delivery.payload for (delivery,) in self.entries("message")]

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, timeout), f"waited in vain for {what}; log: {self.log[-5:]}"

    def wait_count(self, kind: str, count: int, timeout: float = WAIT) -> list[tuple[Any, ...]]:
        """Block until ``count`` entries of ``kind`` arrived; return them all."""
        self.wait(lambda: sum(entry[0] == kind for entry in self.log) >= count, f"{count} x {kind}", timeout)
        return self.entries(kind)

    def wait_payload(self, payload: Any, timeout: float = WAIT) -> list[Any]:
        """Block until a message with ``payload`` arrived; return every payload so far."""
        self.wait(lambda: any(entry[0] == "message" and entry[1].payload == payload for entry in self.log),
                  f"payload {payload!r}", timeout)
        return self.payloads()
