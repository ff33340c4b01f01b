"""The accept loop's side of a handshake, played on the test's thread (``get_request``, then ``process_request``).

As socketserver does, but with the accept loop stopped, so each socket's state
when it is accepted is the test's choice: a head that has not come yet, a head in
parts, bytes past the head, garbage. Each still reaches its thread and gets the
answer it got before (``HubServer._upgrade_plainly`` takes only a whole plain
head), and nothing stays counted in ``pending_requests``.
"""

from __future__ import annotations

import base64
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from rusty_ws import create_app
from rusty_ws.server.hub_server import HubServer, make_server
from rusty_ws.server.state import state_of
from support import WAIT, hub_config, read_response, subscribed_and_ponged

KEY = base64.b64encode(b"0123456789abcdef").decode()


def head(port: int) -> bytes:
    return (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode("latin-1")


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


def test_a_whole_plain_head_when_accepted_opens_and_gives_its_count_back(idle_server: HubServer) -> None:
    server = idle_server
    hub = state_of(server.app).hub
    client, request, address = accepted(server, head(server.port))
    with client:
        server.process_request(request, address)
        status, _, _ = read_response(client)
        assert status == 101
        subscribed_and_ponged(client)
        assert hub.counts()["connections"] == 1
        assert server.pending.count == 0
    hub.wait_connections(0, WAIT)


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
        subscribed_and_ponged(client)
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


def test_under_tls_the_plain_handshake_reads_nothing_and_leaves_it_to_the_handler(idle_server: HubServer) -> None:
    # An SSLSocket takes no recv flags (ValueError): the handler's TLS reads must get the bytes untouched.
    server = idle_server
    client, request, address = accepted(server, head(server.port))
    with client, request:
        server.ssl_context = object()  # type: ignore[assignment]  # what werkzeug sets for TLS
        try:
            assert server._upgrade_plainly(request, address) == (b"", True)
        finally:
            server.ssl_context = None
        assert request.recv(4096, socket.MSG_PEEK) == head(server.port)  # still there, whole
