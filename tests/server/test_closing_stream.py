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

from rusty_ws.protocol import encode_ping
from support import WAIT, RawSocket, running_server

ROUNDS = 20


def test_only_eof_follows_the_close_handshake_at_shutdown() -> None:
    seen = []
    for _ in range(ROUNDS):  # the race this guards against showed in about 1 round in 4
        with running_server() as server:
            raw = RawSocket(server.port)
            raw.sock.settimeout(WAIT)
            raw.send_frame(0x1, encode_ping().encode())
            assert raw.sock.recv(64) == b"\x81\x04pong"
            shutdown = threading.Thread(target=server.hub.shutdown, args=(WAIT,), name="test-shutdown")
            shutdown.start()
            code, _reason = raw.recv_frame().close()  # the only frame in flight; reads no byte past it
            raw.send_frame(0x8, struct.pack("!H", code))  # the browser's reply
            seen.append((code, raw.read_until_eof()))
            shutdown.join(WAIT)
            raw.close()
    assert seen == [(4200, b"")] * ROUNDS
