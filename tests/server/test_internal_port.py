"""The internal port (RUSTY_WS_INTERNAL_PORT): /healthz on a socket and a thread of its own, bounded.

In a reconnect storm a health check on the hub's port waited seconds behind the
handshakes in its accept queue; the internal port has no such queue. It serves only
the routes named in ``internal.ROUTE_ENDPOINTS``, through the app, and every input is
bounded: the head's size and time, no body, how many sockets at once.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest

from rusty_ws import create_app
from rusty_ws.config import Settings
from rusty_ws.server.hub_server import make_server
from rusty_ws.server.internal import InternalServer, internal_server
from rusty_ws.server.state import state_of
from support import MS, WAIT, HubProcess, free_port, hub_config, raw_http, read_response, wait_hung_up

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@contextlib.contextmanager
def internal(head_timeout: float = WAIT, max_sockets: int = 64, **overrides: object) -> Iterator[InternalServer]:
    app = create_app(hub_config(**overrides))
    server = InternalServer(app, "127.0.0.1", 0, max_head_size=state_of(app).settings.max_request_head_size,
                            head_timeout=head_timeout, max_sockets=max_sockets)
    server.start()
    try:
        yield server
    finally:
        server.close()
        state_of(app).hub.shutdown(WAIT)
        assert not server._thread.is_alive(), "the internal port's thread did not end"


def assert_answers(server: InternalServer) -> None:
    status, headers, body = raw_http(server.port, HEALTHZ)
    assert status == 200 and headers["connection"] == "close", (status, headers)
    assert json.loads(body)["status"] == "ok"


def test_healthz_is_the_apps_answer_and_nothing_else_is_served() -> None:
    with internal() as server:
        status, headers, body = raw_http(server.port, HEALTHZ)
        assert status == 200 and headers["content-type"] == "application/json"
        assert set(json.loads(body)) >= {"status", "connections", "pending_requests"}
        status, _, body = raw_http(server.port, b"GET /healthz?probe=1 HTTP/1.0\r\n\r\n")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, headers, body = raw_http(server.port, b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 200 and body == b""
        # No WebSocket, no login, no page: 404 without the app.
        upgrade = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        for request in (upgrade, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                        b"GET /healthz/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                        b"POST /auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"):
            status, _, body = raw_http(server.port, request)
            assert status == 404 and b"/healthz" in body, (request, status, body)
        assert state_of(server.app).hub.counts()["connections"] == 0


def test_the_apps_hooks_apply_as_on_the_hubs_port() -> None:
    with internal(allowed_hosts="hub.example.com,127.0.0.1") as server:
        assert raw_http(server.port, b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n")[0] == 403
        assert raw_http(server.port, b"GET /healthz HTTP/1.1\r\nHost: hub.example.com\r\n\r\n")[0] == 200
        assert raw_http(server.port, b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")[0] == 405


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz\r\n\r\n",
    b"GET /healthz HTTP/2.0\r\n\r\n",
    b"GET http://elsewhere/healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
], ids=["no-words", "two-words", "http2", "absolute-form", "no-colon", "blank-in-name", "body", "chunked"])
def test_a_malformed_request_gets_400_and_the_port_stays_up(request_bytes: bytes) -> None:
    with internal() as server:
        assert raw_http(server.port, request_bytes)[0] == 400
        assert_answers(server)


def test_an_oversized_head_gets_431_without_being_kept() -> None:
    with internal(max_request_head_size=1024) as server:
        head = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
        assert raw_http(server.port, head)[0] == 431
        endless = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 4096  # never ends: refused at the size all the same
        assert raw_http(server.port, endless)[0] == 431
        assert_answers(server)


def test_a_slow_head_gets_408_and_a_silent_socket_is_closed_at_the_deadline() -> None:
    timeout = 300 * MS
    with internal(head_timeout=timeout) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as slow, \
                socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as silent:
            slow.sendall(b"GET /healthz HTTP/1.1\r\n")
            started = time.monotonic()
            assert_answers(server)  # meanwhile: one slow peer holds no other back
            assert read_response(slow)[0] == 408
            assert wait_hung_up(silent) == b""  # nothing said to a socket that said nothing
            assert time.monotonic() - started >= timeout * 0.9
        assert_answers(server)


def test_past_its_sockets_one_more_gets_503_and_the_port_stays_up(closing: list[socket.socket]) -> None:
    with internal(max_sockets=2) as server:
        for _ in range(2):  # each holds a socket: a head that has not come whole
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            closing.append(sock)
        status, _, body = raw_http(server.port, HEALTHZ)
        assert status == 503 and b"server_busy" in body
        for sock in closing:
            sock.sendall(b"Host: 127.0.0.1\r\n\r\n")  # their heads end: answered, their sockets given back
            assert read_response(sock)[0] == 200
        assert_answers(server)


def test_it_answers_while_the_hubs_port_accepts_nothing(closing: list[socket.socket]) -> None:
    """The hub's accept queue full of connections nobody accepts (its accept loop is not running):
    a /healthz on the hub's port gets no answer, the internal port's is answered at once."""
    app = create_app(hub_config())
    hub_server = make_server(app, "127.0.0.1", 0)  # listening, never served
    server = InternalServer(app, "127.0.0.1", 0, head_timeout=WAIT)
    server.start()
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", hub_server.port), timeout=WAIT)
            sock.sendall(HEALTHZ)
            closing.append(sock)
        assert hub_server.accept_queue() == 200
        closing[-1].settimeout(100 * MS)
        with pytest.raises(TimeoutError):
            closing[-1].recv(1)  # the hub's port: no answer
        started = time.monotonic()
        assert_answers(server)
        assert time.monotonic() - started < WAIT
    finally:
        server.close()
        hub_server.server_close()
        state_of(app).hub.shutdown(WAIT)


def test_close_stops_listening_and_ends_the_thread() -> None:
    with internal() as server:
        port = server.port
        assert_answers(server)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def test_the_setting_names_the_port_and_the_address() -> None:
    assert internal_server(create_app(hub_config())) is None  # not set: no internal port
    settings = Settings.from_config({"RUSTY_WS_INTERNAL_PORT": "9090", "RUSTY_WS_INTERNAL_HOST": "0.0.0.0"})
    assert (settings.internal_port, settings.internal_host) == (9090, "0.0.0.0")
    assert Settings.from_config({}).internal_host == "127.0.0.1"


@pytest.mark.parametrize("name, value", [("INTERNAL_PORT", -1), ("INTERNAL_PORT", 65536), ("INTERNAL_PORT", "many"),
                                         ("INTERNAL_PORT", 1.5), ("INTERNAL_HOST", ""), ("INTERNAL_HOST", "a b")])
def test_the_settings_refuse_values_that_cannot_work(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"RUSTY_WS_{name}"):
        Settings.from_config({f"RUSTY_WS_{name}": value})


def test_rusty_ws_serve_answers_on_its_internal_port_until_it_stops() -> None:
    port = free_port()
    with HubProcess(internal_port=port) as hub:
        hub.wait_for_line(f"internal port (RUSTY_WS_INTERNAL_PORT): /healthz on http://127.0.0.1:{port}")
        status, _, body = raw_http(port, HEALTHZ)
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert raw_http(hub.port, HEALTHZ)[0] == 200  # the hub's own /healthz as before
        hub.stop()
        assert hub.process.returncode == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    # The port is free for the next process (a restart), at once.
    socket.create_server(("127.0.0.1", port)).close()
