"""A plain WebSocket handshake served on its thread without werkzeug's handler (``HubServer._upgrade_plainly``).

The usual handshake (one whole head, nothing past it, a plain path, no header
named twice) is read, checked and answered by the server itself; anything else
goes to ``HubRequestHandler`` with the bytes already read, and is served as it
always was. These tests watch the handler's construction (spied on) to tell
which way a request went, and check that both ways answer, count and log the
same, and that hostile heads still get the answers they got.
"""

from __future__ import annotations

import base64
import json
import logging
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from rusty_ws.server import handoff
from rusty_ws.server.hub_server import HubServer
from rusty_ws.server.request_handler import HubRequestHandler
from support import WAIT, raw_http, read_response, running_server, subscribed_and_ponged

KEY = base64.b64encode(b"0123456789abcdef").decode()


@pytest.fixture
def handled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """What each ``HubRequestHandler`` was given to start from (the bytes the server read), in order.

    The server's read does not wait: a head that comes after the thread ran goes to
    the handler (which waits). So that the tests' heads are always there first, the
    read waits here until the socket is readable.
    """
    given: list[bytes] = []
    original = HubRequestHandler.__init__
    plainly = HubServer._upgrade_plainly

    def once_readable(self: HubServer, request: socket.socket, address: Any) -> Any:
        select.select([request], [], [], WAIT)
        return plainly(self, request, address)

    monkeypatch.setattr(HubServer, "_upgrade_plainly", once_readable)

    def spy(self: HubRequestHandler, *args: Any, **kwargs: Any) -> None:
        given.append(kwargs.get("taken", b""))
        original(self, *args, **kwargs)

    monkeypatch.setattr(HubRequestHandler, "__init__", spy)
    yield given


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """One item per ``release_stack_below`` call made by a connection's loop."""
    calls: list[int] = []
    monkeypatch.setattr(handoff, "release_stack_below", lambda: calls.append(1))
    yield calls


def head(port: int, path: str = "/ws", extra: str = "", version: str = "HTTP/1.1") -> bytes:
    return (f"GET {path} {version}\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode("latin-1")


def upgrade(port: int, data: bytes) -> tuple[int, socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(data)
    status, _, _ = read_response(sock)
    return status, sock


def test_a_plain_handshake_is_served_without_the_handler_and_other_requests_with_it(
        handled: list[bytes], released: list[int]) -> None:
    with running_server() as server:
        status, sock = upgrade(server.port, head(server.port))
        try:
            assert status == 101
            subscribed_and_ponged(sock)
            assert handled == [] and released == []  # no handler, and no stack to give back
            assert server.hub.counts()["connections"] == 1
        finally:
            sock.close()
        server.wait_connections(0)
        assert server.hub.pending_requests.wait_for(0, WAIT)
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        status, _, body = raw_http(server.port, request)
        assert status == 200 and json.loads(body)["connections"] == 0
        assert handled == [request]  # the handler starts from the head the server read


@pytest.mark.parametrize("path, extra, version", [
    ("/w%73", "", "HTTP/1.1"),  # a percent sign: werkzeug's environ unquotes it
    ("/ws", "Origin: http://127.0.0.1\r\nOrigin: http://127.0.0.1\r\n", "HTTP/1.1"),  # a header twice
    ("//ws", "", "HTTP/1.1"),  # http.server makes it /ws
    ("/ws", "X-Folded: a\r\n b\r\n", "HTTP/1.1"),  # not plain: email's parser reads it
], ids=["percent", "repeated-header", "double-slash", "folded"])
def test_a_handshake_that_is_not_plain_goes_to_the_handler_and_still_opens(
        handled: list[bytes], released: list[int], path: str, extra: str, version: str) -> None:
    with running_server() as server:
        data = head(server.port, path, extra, version)
        status, sock = upgrade(server.port, data)
        try:
            assert status == 101
            subscribed_and_ponged(sock)
            assert handled == [data]
            assert released == [1]  # through werkzeug's handler: deeper on the stack, given back
        finally:
            sock.close()
        server.wait_connections(0)
        assert server.hub.pending_requests.wait_for(0, WAIT)


def test_a_header_name_with_an_underscore_is_left_out_as_werkzeug_leaves_it_out(handled: list[bytes]) -> None:
    # Sec_WebSocket_Version would read as HTTP_SEC_WEBSOCKET_VERSION, the real one's key.
    with running_server() as server:
        status, sock = upgrade(server.port, head(server.port, extra="Sec_WebSocket_Version: 8\r\n"))
        try:
            assert status == 101
            subscribed_and_ponged(sock)
            assert handled == []
        finally:
            sock.close()
        server.wait_connections(0)


def test_a_refused_plain_handshake_is_answered_by_flask_and_counted_once(handled: list[bytes]) -> None:
    with running_server() as server:
        data = head(server.port, "/ws?token=not-a-token")
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
            sock.sendall(data)
            status, _, body = read_response(sock)
        assert status == 401 and b"token_invalid" in body
        assert handled == [data]
        assert server.hub.pending_requests.wait_for(0, WAIT)  # given back once, not twice (no negative count)
        assert server.hub.pending_requests.count == 0
        assert server.hub.take_slot()
        server.hub.give_back_slot()


@pytest.mark.parametrize("data, answer", [
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
    (b"\x00\x01\x02 garbage\r\n\r\n", b"400"),
    (b"GET /ws HTTP/1.1\nHost: x\nUpgrade: websocket\n\n", b"400"),  # bare LFs: http.server's rules, no key
])
def test_a_hostile_head_is_answered_as_before_and_the_hub_stays_up(data: bytes, answer: bytes) -> None:
    with running_server() as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
            try:
                sock.sendall(data)
            except OSError:
                pass  # the hub may hang up before it took all of an oversized head
            first = b""
            try:
                while b"\r\n" not in first:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    first += chunk
            except ConnectionResetError:
                pass
        assert answer in first.split(b"\r\n")[0], first
        status, sock = upgrade(server.port, head(server.port))
        try:
            assert status == 101
        finally:
            sock.close()
        server.wait_connections(0)
        assert server.hub.pending_requests.wait_for(0, WAIT)


def test_the_access_line_of_a_plain_upgrade_is_the_one_werkzeugs_handler_writes(
        caplog: pytest.LogCaptureFixture, handled: list[bytes]) -> None:
    with running_server() as server, caplog.at_level(logging.DEBUG, "werkzeug"):
        for path in ("/ws?x=1", "/w%73?x=1"):  # served here, then by the handler (werkzeug's line)
            status, sock = upgrade(server.port, head(server.port, path))
            sock.close()
            assert status == 101
        server.wait_connections(0)
    assert len(handled) == 1
    lines = [record.getMessage() for record in caplog.records if record.name == "werkzeug"]
    assert lines == ['127.0.0.1 "GET /ws?x=1 HTTP/1.1" 101 -'] * 2, lines


_COLLECTOR = """
import gc, json, sys
from rusty_ws.server.serve import FULL_COLLECTION_THRESHOLD, freeze_startup_objects
if sys.argv[1] == "own":
    gc.set_threshold(700, 10, 7)
freeze_startup_objects()
print(json.dumps([list(gc.get_threshold()), FULL_COLLECTION_THRESHOLD]))
"""


@pytest.mark.parametrize("setting", ["python", "own"])
def test_freezing_the_start_up_objects_makes_full_collections_rarer_unless_the_process_chose(setting: str) -> None:
    # In a fresh interpreter: the collector's thresholds are the process's.
    done = subprocess.run([sys.executable, "-c", _COLLECTOR, setting], capture_output=True, text=True,
                          timeout=60, check=True)
    thresholds, rarer = json.loads(done.stdout)
    assert thresholds == ([700, 10, rarer] if setting == "python" else [700, 10, 7])
    assert rarer > 10
