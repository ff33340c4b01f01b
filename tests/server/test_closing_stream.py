"""Nothing follows the close frame on the wire, even when the hub shuts down (browsers need this).

A browser that finds bytes after the server's close frame reports close code
1006 instead of the server's, and so loses the close-code policy (4200:
reconnect now). Under werkzeug, flask-sock lets the server write an HTTP
response once the WebSocket view returns, so the socket must be shut down
by then, however the hub's shutdown races with the connection's end.
"""

from __future__ import annotations

import struct
import threading

from support import WAIT, RawSocket, running_server

ROUNDS = 20


def read_close_frame(raw: RawSocket) -> int:
    """Read the server's close frame (it is the only frame in flight); return its code."""
    data = b""
    for _ in range(100):
        if len(data) >= 2 and len(data) >= 2 + (data[1] & 0x7F):
            break
        chunk = raw.sock.recv(128)
        assert chunk, f"EOF before a whole close frame: {data!r}"
        data += chunk
    assert data[0] == 0x88, data
    return struct.unpack("!H", data[2:4])[0]


def test_only_eof_follows_the_close_handshake_at_shutdown() -> None:
    seen = []
    for _ in range(ROUNDS):  # the race this guards against showed in about 1 round in 4
        with running_server() as server:
            raw = RawSocket(server.port)
            raw.sock.settimeout(WAIT)
            raw.send_frame(0x1, b"ping")
            assert raw.sock.recv(64) == b"\x81\x04pong"
            shutdown = threading.Thread(target=server.hub.shutdown, args=(WAIT,), name="test-shutdown")
            shutdown.start()
            code = read_close_frame(raw)
            raw.send_frame(0x8, struct.pack("!H", code))  # the browser's reply
            seen.append((code, raw.read_until_eof()))
            shutdown.join(WAIT)
            raw.close()
    assert seen == [(4200, b"")] * ROUNDS
