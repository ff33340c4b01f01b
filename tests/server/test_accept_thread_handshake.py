"""A plain handshake served on the accept thread, its connection's thread started after the 101.

``HubServer.process_request`` serves a plain WebSocket handshake whose head has
come whole itself (``_upgrade_plainly``), and starts the connection's thread for
its command loop alone. These tests play the accept loop on the test's thread
(``get_request`` then ``process_request``, as socketserver does), so that what has
happened when it returns can be checked: the 101 is written by then, a thread that
has not run yet is not counted under way, a thread that cannot start leaves
nothing held, and a head that had not come yet still goes to its thread.
"""

from __future__ import annotations

import base64
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from rusty_ws import create_app
from rusty_ws.server.serving import HubServer, make_server
from rusty_ws.server.state import state_of
from support import WAIT, hub_config, read_response

KEY = base64.b64encode(b"0123456789abcdef").decode()


def head(port: int) -> bytes:
    return (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode("latin-1")


def _masked(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def pong_after_ping(sock: socket.socket) -> None:
    sock.sendall(_masked(b"subscribe:T") + _masked(b"ping"))
    got = b""
    while b"pong" not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    assert b"error" not in got, got


@pytest.fixture
def idle_server() -> Iterator[HubServer]:
    """A hub's server whose accept loop does not run: the test accepts and serves, on its own thread."""
    app = create_app(hub_config())
    server = make_server(app, "127.0.0.1", 0)
    try:
        yield server
    finally:
        hub = state_of(app).hub
        hub.shutdown(timeout=WAIT)
        server.server_close()


def accepted(server: HubServer, data: bytes) -> tuple[socket.socket, socket.socket, Any]:
    """A client that sent ``data``, and the server's side of it, accepted with ``data`` readable on it."""
    client = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    if data:
        client.sendall(data)
    request, address = server.get_request()
    if data:
        assert select.select([request], [], [], WAIT)[0], "the head did not arrive"
    return client, request, address


def test_the_accept_thread_writes_the_101_before_the_connections_thread_runs(
        idle_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server = idle_server
    hub = state_of(server.app).hub
    let_run = threading.Event()
    thread_body = server.process_request_thread
    threads: list[threading.Thread] = []

    def held(request: socket.socket, address: Any) -> None:  # the loop's thread, not yet run
        threads.append(threading.current_thread())
        assert let_run.wait(WAIT)
        thread_body(request, address)

    monkeypatch.setattr(server, "process_request_thread", held)
    client, request, address = accepted(server, head(server.port))
    with client:
        server.process_request(request, address)
        # Written on this thread, before it returned: already in the client's socket.
        answer = client.recv(4096, socket.MSG_DONTWAIT)
        assert answer.startswith(b"HTTP/1.1 101 "), answer
        assert server.pending.count == 0
        # Its thread started and has not run: done with its handshake, not "under way".
        assert server.handshakes_in_flight() == 0
        assert hub.counts()["connections"] == 0
        let_run.set()
        pong_after_ping(client)
        assert hub.counts()["connections"] == 1
        assert server.handshakes_in_flight() == 0
    threads[0].join(WAIT)  # ended: an ending thread is counted (it runs), like one upgrading
    assert not threads[0].is_alive()
    assert server.handshakes_in_flight() == 0


def test_a_connection_whose_thread_cannot_start_is_closed_and_holds_nothing(
        idle_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server = idle_server
    hub = state_of(server.app).hub

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    client, request, address = accepted(server, head(server.port))
    with client:
        monkeypatch.setattr(threading.Thread, "start", no_thread)
        with pytest.raises(RuntimeError):
            server.process_request(request, address)
        monkeypatch.undo()
        status, _, _ = read_response(client)
        assert status == 101  # written before the thread was asked for
        client.settimeout(WAIT)
        assert client.recv(4096) == b""  # then closed: nothing will read it
    assert server.pending.count == 0
    assert server.handshakes_in_flight() == 0
    assert hub.counts()["connections"] == 0
    assert hub.take_slot()  # the slot went back: the hub is not full of ghosts
    hub.give_back_slot()
    assert not server._after  # nothing left for a thread that never ran


def test_a_head_that_had_not_come_when_accepted_goes_to_its_thread(idle_server: HubServer) -> None:
    server = idle_server
    hub = state_of(server.app).hub
    client, request, address = accepted(server, b"")
    with client:
        server.process_request(request, address)  # nothing to read yet: its thread waits for the head
        assert server.pending.count in (0, 1)  # its thread gives it back once the head is in
        client.sendall(head(server.port))
        status, _, _ = read_response(client)
        assert status == 101
        pong_after_ping(client)
        assert hub.counts()["connections"] == 1
    hub.wait_connections(0, WAIT)
    assert hub.pending_requests.wait_for(0, WAIT)


@pytest.mark.parametrize("data", [
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",  # in parts: the rest never comes
    b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n\x81\x85",  # bytes past the head
    b"\x00\x01\x02 garbage\r\n\r\n",
])
def test_what_the_accept_thread_does_not_serve_goes_to_the_handler_with_the_bytes_it_read(
        idle_server: HubServer, data: bytes) -> None:
    server = idle_server
    client, request, address = accepted(server, data)
    with client:
        server.process_request(request, address)
        client.shutdown(socket.SHUT_WR)  # the head ends here: the handler answers or gives up
        client.settimeout(WAIT)
        answer = b""
        try:
            while chunk := client.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
        assert not answer.startswith(b"HTTP/1.1 101 "), answer
    assert server.pending.wait_for(0, WAIT)
