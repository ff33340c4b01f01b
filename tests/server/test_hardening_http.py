"""Hostile peers before the WebSocket upgrade: against a real hub, in this process or in one of its own.

Each test here failed before its bound existed: sockets that never finish
their request head (held forever, uncounted, until the process ran out of
descriptors and its accept loop spun), heads that never end (megabytes each),
handshakes that wsproto answers with 101 or a 500 and a traceback, and frames
sent in the same write as the upgrade request (lost without a word).

What is measured from outside (memory, CPU time, a descriptor limit) runs
``rusty-ws serve`` in a process of its own (``support.HubProcess``).
"""

from __future__ import annotations

import base64
import logging
import resource
import selectors
import socket
import threading
import time

import pytest

from rusty_ws.config import Settings, config_from_environ
from rusty_ws.protocol import encode_ping, encode_publish, encode_subscribe
from rusty_ws.server.accept_gate import LOG_EVERY
from support import (
    MS,
    WAIT,
    Client,
    HubProcess,
    RawSocket,
    client_frame,
    http,
    raw_http,
    read_response,
    running_server,
    wait_hung_up,
)

KEY = base64.b64encode(b"0123456789abcdef").decode()


def handshake(key: str | None = KEY, version: str | None = "13", extra: str = "",
              connection: str = "Upgrade") -> bytes:
    """A WebSocket opening handshake for ``/ws``, with the given key and version (None: left out)."""
    lines = ["GET /ws HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", f"Connection: {connection}"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def idle_sockets(port: int, count: int) -> list[socket.socket]:
    """``count`` connected sockets that send nothing."""
    return [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(count)]


def request_threads() -> int:
    """werkzeug's request threads alive in this process."""
    return sum("process_request_thread" in thread.name for thread in threading.enumerate())


# --------------------------------------------------------------------------- finding 1: heads that never arrive


class TestRequestHeadTimeout:
    def test_an_idle_socket_is_closed_and_counted_meanwhile(self, closing: list[socket.socket]) -> None:
        with running_server(request_head_timeout=300 * MS) as server:
            pending = server.hub.pending_requests
            start = time.monotonic()
            closing.extend(idle_sockets(server.port, 2))
            assert pending.wait_for(2, WAIT), pending.count
            assert http("GET", server.http_url + "/healthz")[2]["pending_requests"] == 2
            assert [wait_hung_up(sock) for sock in closing] == [b"", b""]  # nothing sent: nothing said
            assert time.monotonic() - start >= 300 * MS * 0.9
            assert pending.wait_for(0, WAIT), pending.count

    def test_a_trickle_does_not_stretch_the_deadline(self) -> None:
        """One byte per 100 ms restarts a per-read timeout forever; the deadline is for the whole head."""
        timeout = 500 * MS
        with running_server(request_head_timeout=timeout) as server, \
                socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
            start = time.monotonic()
            paced = threading.Event()  # never set: its wait paces the trickle
            head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
            try:
                for byte in head:
                    sock.send(bytes([byte]))
                    paced.wait(100 * MS)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = wait_hung_up(sock)
            elapsed = time.monotonic() - start
            assert elapsed < 4 * timeout, f"the head was still read after {elapsed:.1f}s"
            assert answer.startswith(b"HTTP/1.1 408 "), answer  # part of a head came: it is told why

    def test_a_request_body_that_never_comes_is_not_waited_for(self) -> None:
        """After the head, a request that is not a WebSocket keeps the timeout for each read."""
        with running_server(request_head_timeout=300 * MS) as server, \
                socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
            sock.sendall(b"POST /auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")
            assert read_response(sock)[0] == 400
            assert wait_hung_up(sock) == b""

    def test_an_open_websocket_has_no_head_timeout(self, closing: list[socket.socket]) -> None:
        with running_server(request_head_timeout=300 * MS) as server, server.connect() as client:
            client.command(encode_subscribe("T"))
            closing.extend(idle_sockets(server.port, 1))
            assert wait_hung_up(closing[0]) == b""  # the head timeout has passed...
            assert client.sync() == []  # ...and the WebSocket, idle all along, still answers
            assert server.hub.counts()["connections"] == 1


class TestPendingRequestLimit:
    def test_past_the_limit_a_socket_gets_503_at_once_and_no_thread(self, closing: list[socket.socket]) -> None:
        with running_server(max_pending_requests=3, request_head_timeout=10 * WAIT) as server:
            closing.extend(idle_sockets(server.port, 3))
            assert server.hub.pending_requests.wait_for(3, WAIT)
            status, headers, body = raw_http(server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (status, headers["retry-after"]) == (503, "5") and b'"server_busy"' in body
            # One per waiting socket at most (each is counted before its thread starts): none for the refused.
            assert request_threads() <= 3, "the refused socket got a thread"
            assert server.hub.pending_requests.count == 3

            closing.pop().close()  # one waiting socket goes: there is room again
            assert server.hub.pending_requests.wait_for(2, WAIT)
            status, _, health = http("GET", server.http_url + "/healthz")
            assert status == 200 and health["pending_requests"] == 2
            with server.connect() as client:
                assert client.sync() == []

    def test_the_refusals_are_logged_in_one_line(self, closing: list[socket.socket],
                                                 caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="rusty_ws.server")
        with running_server(max_pending_requests=1, request_head_timeout=10 * WAIT) as server:
            closing.extend(idle_sockets(server.port, 1))
            assert server.hub.pending_requests.wait_for(1, WAIT)
            for _ in range(5):
                assert raw_http(server.port, b"GET / HTTP/1.1\r\n\r\n")[0] == 503
        refusals = [r for r in caplog.records if "RUSTY_WS_MAX_PENDING_REQUESTS" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]


def test_running_out_of_descriptors_is_logged_does_not_spin_and_passes() -> None:
    """1,024 descriptors is a common service limit; here 256, and idle sockets past it.

    The limit is lowered under the running hub (``prlimit``), so that the descriptors it
    keeps free past its reserve (``AcceptGate.room``, from the limit at start) are not
    there: what runs the process out of them is then not its clients' sockets, and
    ``accept()`` meets EMFILE. (Started with 256, it turns the sockets past its room away:
    ``test_connection_limit_default.py``.)"""
    timeout = 2000 * MS
    with HubProcess(nofile=1024, request_head_timeout=timeout, max_pending_requests=1000) as hub:
        resource.prlimit(hub.process.pid, resource.RLIMIT_NOFILE, (256, 256))
        start = time.monotonic()
        flood = idle_sockets(hub.port, 300)  # the kernel completes them all; the hub can hold ~240
        try:
            line = hub.wait_for_line("accept() failed")
            assert "Too many open files" in line, line
            # A spinning loop burns the whole window; the work still under way on the sockets it took
            # (their heads, their threads) is a few tens of ms, so a quarter tells the two apart.
            before, window = hub.cpu_seconds(), 1000 * MS
            threading.Event().wait(window)  # a measurement window, not a synchronisation
            spent = hub.cpu_seconds() - before
            assert spent < 0.25 * window, f"{spent:.2f}s of CPU in {window:.2f}s: the accept loop spins"

            # The idle sockets time out and are closed; the rest of the backlog is served.
            selector = selectors.DefaultSelector()
            for sock in flood:
                selector.register(sock, selectors.EVENT_READ)
            hung_up, deadline = 0, time.monotonic() + timeout + 2 * WAIT
            while hung_up < 200 and time.monotonic() < deadline:
                for key, _ in selector.select(deadline - time.monotonic()):
                    selector.unregister(key.fileobj)
                    hung_up += 1
            selector.close()
            assert hung_up >= 200, f"only {hung_up} idle sockets were closed"
            status, _, health = http("GET", hub.http_url + "/healthz")
            assert status == 200 and health["status"] == "ok", health
            with Client(f"ws://127.0.0.1:{hub.port}/ws") as client:
                assert client.sync() == []
            lines = hub.log.count("accept() failed")
            assert lines <= 1 + (time.monotonic() - start) // LOG_EVERY, f"{lines} lines: not rate-limited"
        finally:
            for sock in flood:
                sock.close()
    assert "Traceback" not in hub.log, hub.log


# --------------------------------------------------------------------------- finding 2: heads that never end


class TestRequestHeadSize:
    def test_headers_past_the_limit_get_431(self) -> None:
        with running_server(max_request_head_size=4096) as server:
            headers = "".join(f"X-Pad-{n}: {'a' * 100}\r\n" for n in range(50))  # 5 KiB, lines well under 64 KiB
            status, _, _ = raw_http(server.port, handshake(extra=headers))
            assert status == 431
            assert raw_http(server.port, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n")[0] == 414
            # Just under the limit, a handshake is a handshake.
            fits = "".join(f"X-Pad-{n}: {'a' * 100}\r\n" for n in range(30))
            assert raw_http(server.port, handshake(extra=fits))[0] == 101
            assert server.hub.pending_requests.wait_for(0, WAIT)

    def test_headers_that_never_end_are_not_kept_in_memory(self) -> None:
        """Each socket sends 99 header lines of 60 KB and never the blank line: 6 MB a socket, unbounded."""
        sockets, line = 20, b"X-Pad: " + b"a" * 60_000 + b"\r\n"
        with HubProcess() as hub:
            assert http("GET", hub.http_url + "/healthz")[0] == 200  # warm: the first request's imports
            before = hub.rss()
            peers = idle_sockets(hub.port, sockets)
            try:
                answers = []
                for peer in peers:
                    try:
                        peer.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n" + line * 99)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the hub answered and hung up after the first 32 KiB
                    try:
                        answers.append(read_response(peer)[0])
                    except ConnectionError:
                        answers.append(None)
                grown = hub.rss() - before
                assert grown < 16 * 1024 * 1024, f"{grown / 2**20:.0f} MiB more for {sockets} heads"
                assert answers.count(431) >= sockets // 2, answers
            finally:
                for peer in peers:
                    peer.close()
            assert http("GET", hub.http_url + "/healthz")[2]["pending_requests"] == 0


# --------------------------------------------------------------------------- finding 3: bad handshakes


@pytest.mark.parametrize("request_bytes, status", [
    (handshake(key="abc"), 400),
    (handshake(key=base64.b64encode(b"fifteen bytes!!").decode()), 400),
    (handshake(key="!" * 22 + "=="), 400),
    (handshake(key=None), 400),
    (handshake(version=None), 400),
    (handshake(version="8"), 426),
    (handshake(version="13, 8"), 426),
    (handshake(extra="Content-Length: 5\r\n") + b"hello", 400),
], ids=["short-key", "15-byte-key", "not-base64", "no-key", "no-version", "version-8", "two-versions", "body"])
def test_a_bad_handshake_is_refused_without_a_traceback(
    request_bytes: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with running_server() as server:
        caplog.set_level(logging.INFO)
        caplog.clear()
        got, headers, body = raw_http(server.port, request_bytes)
        assert got == status, body
        if status == 426:
            assert headers["sec-websocket-version"] == "13"
        assert server.hub.counts()["connections"] == 0
        lines = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert len(lines) <= 1 and not any(r.exc_info for r in lines), [r.getMessage() for r in lines]


def test_a_good_handshake_still_upgrades() -> None:
    with running_server() as server:
        raw = RawSocket(server.port)
        try:
            assert raw.status == 101
            assert raw.sync() == []
        finally:
            raw.close()


# --------------------------------------------------------------------------- finding 4: frames before the 101


class TestFramesWithTheUpgradeRequest:
    def test_a_ping_in_the_same_write_is_answered(self) -> None:
        with running_server() as server:
            raw = RawSocket(server.port, early=client_frame(encode_ping().encode()))
            try:
                assert raw.status == 101
                assert raw.recv_frame() == (0x81, b"pong")
            finally:
                raw.close()

    def test_more_than_the_read_buffer_arrives_in_order(self) -> None:
        """werkzeug's buffer holds 2 KiB: the commands past it come from the socket, after those in it."""
        with running_server() as server:
            early = b"".join(client_frame(text.encode()) for text in [
                encode_subscribe("T"), encode_publish("T", "x" * 5000), encode_ping(),
            ])
            raw = RawSocket(server.port, early=early)
            try:
                delivery = raw.recv_frame()
                assert delivery.opcode == 0x1 and '"x' in delivery.text() and len(delivery.payload) > 5000
                assert raw.recv_frame() == (0x81, b"pong")
            finally:
                raw.close()

    def test_under_gunicorn_too(self) -> None:
        from test_gunicorn import gunicorn

        with gunicorn("memory://", workers=1, threads=4, max_connections=2) as master:
            raw = RawSocket(master.port, early=client_frame(encode_ping().encode()))
            try:
                assert raw.status == 101
                assert raw.recv_frame() == (0x81, b"pong")
            finally:
                raw.close()
        assert "Traceback" not in master.log and "out of reach" not in master.log, master.log


# --------------------------------------------------------------------------- the settings


@pytest.mark.parametrize("key, value", [
    ("RUSTY_WS_REQUEST_HEAD_TIMEOUT", 0),
    ("RUSTY_WS_REQUEST_HEAD_TIMEOUT", "soon"),
    ("RUSTY_WS_MAX_REQUEST_HEAD_SIZE", 1.5),
    ("RUSTY_WS_MAX_PENDING_REQUESTS", 0),
])
def test_the_bounds_refuse_values_that_cannot_work(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        Settings.from_config({key: value})


def test_the_bounds_have_defaults_and_come_from_the_environment() -> None:
    defaults = Settings.from_config({})
    assert (defaults.request_head_timeout, defaults.max_request_head_size, defaults.max_pending_requests) == (
        10.0, 32 * 1024, 256)
    found = config_from_environ({"RUSTY_WS_REQUEST_HEAD_TIMEOUT": "2.5", "RUSTY_WS_MAX_PENDING_REQUESTS": "64"})
    settings = Settings.from_config(found)
    assert (settings.request_head_timeout, settings.max_pending_requests) == (2.5, 64)
