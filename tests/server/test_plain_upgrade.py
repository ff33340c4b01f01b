"""A WebSocket handshake served without Flask's request (``views.plain_upgrade``), against a real hub.

``HubRequestHandler.run_wsgi`` offers every WebSocket handshake to the hub
first: when nothing but the hub's own code would run in Flask's request and
``_admit`` would let it in, the hub serves it without that request. These
tests watch Flask's dispatch (``Flask.full_dispatch_request``, spied on) to
tell which way a handshake went, and check that both ways admit, refuse,
log and count the same.
"""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, current_app, request, request_started

from rusty_ws import PubSub, create_app
from rusty_ws.server.hub import Hub
from support import WAIT, RawSocket, hub_config, raw_http, read_response, running_server

KEY = base64.b64encode(b"0123456789abcdef").decode()


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths Flask dispatched a request for, in order."""
    paths: list[str] = []
    original = Flask.full_dispatch_request

    def spy(self: Flask) -> Any:
        paths.append(request.path)
        return original(self)

    monkeypatch.setattr(Flask, "full_dispatch_request", spy)
    yield paths


def subscribed(port: int, path: str = "/ws") -> RawSocket:
    """A WebSocket on ``path`` that has subscribed to ``T`` (its ``pong`` came)."""
    client = RawSocket(port, path)
    assert client.status == 101, client.headers
    client.send_frame(0x1, b"subscribe:T")
    frames = client.sync()
    assert not any(b"error" in frame.payload for frame in frames), frames
    return client


def handshake(port: int, path: str = "/ws", extra: str = "", version: str = "13",
              key: str = KEY) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: {version}\r\n{extra}\r\n").encode("latin-1"))
        return read_response(sock)


def test_the_stand_alone_hub_serves_a_handshake_without_flask(dispatched: list[str]) -> None:
    with running_server() as server:
        client = subscribed(server.port)
        try:
            assert dispatched == []  # no Flask request for the WebSocket
            assert server.hub.counts()["connections"] == 1
            server.app.extensions["rusty_ws"].pubsub.publish("default", "T", "hello", app=server.app)
            frame = client.recv_frame()
            assert b"hello" in frame.payload
        finally:
            client.close()
        server.wait_connections(0)
        assert server.hub.take_slot()  # the slot came back: the one left is free again
        server.hub.give_back_slot()
        assert server.hub.pending_requests.wait_for(0, WAIT)
        # Other routes still go through Flask.
        status, _, _ = raw_http(server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 200 and dispatched == ["/healthz"]


def test_a_token_in_the_query_or_the_header_is_verified_without_flask(dispatched: list[str]) -> None:
    with running_server() as server:
        token = server.token("alice", "s1")
        status, _, _ = handshake(server.port, f"/ws?x=1&token={token}")
        assert status == 101
        status, _, _ = handshake(server.port, "/ws", f"Authorization: Bearer {token}\r\n")
        assert status == 101
        assert dispatched == []
        server.wait_connections(0)


def test_a_token_becomes_the_connections_claims(dispatched: list[str]) -> None:
    with running_server() as server:
        client = RawSocket(server.port, f"/ws?token={server.token('alice', 's1')}")
        try:
            assert client.status == 101
            client.sync()
            connection, = server.hub.connections()
            assert connection.claims is not None and connection.claims.sub == "alice"
            assert dispatched == []
        finally:
            client.close()
        server.wait_connections(0)


@pytest.mark.parametrize("path, extra, version, status, code", [
    ("/ws?token=not-a-token", "", "13", 401, b"token_invalid"),
    ("/ws", "Authorization: Bearer not-a-token\r\n", "13", 401, b"token_invalid"),
    ("/ws", "Origin: http://evil.example\r\n", "13", 403, b"forbidden_origin"),
    ("/ws", "", "8", 426, b"unsupported_version"),
    ("/ws", "Content-Length: 3\r\n", "13", 400, b"bad_handshake"),
    ("/ws?token=%ff%fe", "", "13", 401, b"token_invalid"),  # not UTF-8 once unquoted
    ("/ws?token=\xff\xfe", "", "13", 401, b"token_invalid"),  # raw bytes past ASCII
], ids=["bad-query-token", "bad-bearer", "origin", "version", "body", "percent-bytes", "raw-bytes"])
def test_a_refusal_is_answered_by_flask_as_before(dispatched: list[str], caplog: pytest.LogCaptureFixture,
                                                  path: str, extra: str, version: str, status: int,
                                                  code: bytes) -> None:
    with running_server(cors_origins=["http://good.example"]) as server, \
            caplog.at_level(logging.INFO, "rusty_ws.server"):
        got, headers, body = handshake(server.port, path, extra, version)
        assert (got, code in body) == (status, True), body
        assert headers["content-type"] == "application/json"
        assert dispatched == ["/ws"]  # the refusal is Flask's, once
        refusals = [r for r in caplog.records if r.getMessage().startswith("refused a WebSocket")]
        assert len(refusals) == (1 if b"token" in code else 0), refusals  # logged once, not twice
        assert server.hub.take_slot()  # no slot was kept by the refusal
        server.hub.give_back_slot()
        assert server.hub.counts()["connections"] == 0


def test_a_bad_key_is_refused_by_flask() -> None:
    with running_server() as server:
        status, _, body = handshake(server.port, key="short")
        assert status == 400 and b"bad_handshake" in body


def test_a_full_hub_answers_503_through_flask(dispatched: list[str]) -> None:
    with running_server(max_connections=1) as server:
        client = subscribed(server.port)
        try:
            status, headers, body = handshake(server.port)
            assert status == 503 and b"server_full" in body and headers["retry-after"] == "5"
            assert dispatched == ["/ws"]
        finally:
            client.close()
        server.wait_connections(0)


def test_a_disallowed_host_is_refused_by_flask(dispatched: list[str]) -> None:
    with running_server(allowed_hosts=["hub.example"]) as server:
        status, _, body = handshake(server.port)
        assert status == 403 and b"forbidden_host" in body
        assert dispatched == ["/ws"]


def embedding_app(**settings: Any) -> Flask:
    app = Flask("embedding")
    app.config.update(hub_config(**settings))
    PubSub().init_app(app, url_prefix="/hub")
    return app


def test_an_embedding_app_without_hooks_is_served_without_flask(dispatched: list[str]) -> None:
    with running_server(embedding_app(), prefix="/hub") as server:
        client = subscribed(server.port, "/hub/ws")
        client.close()
        assert dispatched == []
        status, _, _ = handshake(server.port, "/ws")  # not the hub's path: Flask's 404
        assert status == 404 and dispatched == ["/ws"]
        server.wait_connections(0)


def hooked(app: Flask, seen: list[str]) -> None:
    @app.before_request
    def count() -> None:
        seen.append(request.path)


@pytest.mark.parametrize("change", ["before_request", "blueprint_hook", "middleware", "signal", "subclass",
                                    "teardown_appcontext"])
def test_anything_of_the_apps_own_sends_the_handshake_through_flask(dispatched: list[str], change: str) -> None:
    """The app's code would run in Flask's request: the handshake goes through it, and that code runs."""
    seen: list[str] = []
    if change == "subclass":
        class MyFlask(Flask):
            pass
        app: Flask = MyFlask("embedding")
        app.config.update(hub_config())
        pubsub = PubSub()
        pubsub.init_app(app)
    else:
        app = embedding_app()
        pubsub = app.extensions["rusty_ws"].pubsub
    if change == "before_request":
        hooked(app, seen)
    elif change == "blueprint_hook":
        app.before_request_funcs.setdefault("rusty_ws", []).append(lambda: seen.append(request.path))
    elif change == "middleware":
        inner = app.wsgi_app

        def middleware(environ: dict[str, Any], start_response: Any) -> Any:
            seen.append(environ["PATH_INFO"])
            return inner(environ, start_response)
        app.wsgi_app = middleware  # type: ignore[method-assign]
    elif change == "signal":
        def started(sender: Flask, **extra: Any) -> None:
            seen.append(request.path)
        request_started.connect(started, app)
    elif change == "teardown_appcontext":
        app.teardown_appcontext(lambda error: seen.append(str(error)))
    path = "/ws" if change == "subclass" else "/hub/ws"
    try:
        with running_server(app) as server:
            client = RawSocket(server.port, path)
            assert client.status == 101
            client.sync()
            client.close()
            server.wait_connections(0)
    finally:
        request_started.disconnect(locals().get("started"))  # type: ignore[arg-type]
    assert dispatched == [path]
    if change not in ("subclass", "teardown_appcontext"):
        assert seen[0] == path, seen
    elif change == "teardown_appcontext":
        assert seen, "the app context's teardown did not run"


def test_a_session_policy_runs_in_the_connections_app_context(dispatched: list[str]) -> None:
    """The app's hooks of commands leave the handshake plain: they run after it, with ``current_app`` set."""
    app = embedding_app()
    pubsub: PubSub = app.extensions["rusty_ws"].pubsub
    names: list[str] = []

    @pubsub.session_policy
    def policy(username: str | None, session_id: str) -> bool:
        names.append(current_app.name)
        return True

    with running_server(app, prefix="/hub") as server:
        client = subscribed(server.port, "/hub/ws")
        try:
            client.send_frame(0x1, b"register-session:other")
            frames = client.sync()
            assert not any(b"error" in frame.payload for frame in frames), frames
        finally:
            client.close()
        server.wait_connections(0)
    assert dispatched == [] and names and set(names) == {"embedding"}


def test_an_error_in_the_connection_is_logged_and_its_slot_given_back(
        dispatched: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: Hub, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("broken on purpose")

    app = create_app(hub_config(max_connections=1))
    monkeypatch.setattr(Hub, "serve", broken)
    with running_server(app) as server, caplog.at_level(logging.ERROR, "rusty_ws.server"):
        for _ in range(2):  # the second finds the one slot free again
            with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
                sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n").encode())
                status, _, _ = read_response(sock)
                assert status == 101
                assert sock.recv(10) == b""  # closed
            server.wait_connections(0)  # its slot is back
        assert server.hub.pending_requests.wait_for(0, WAIT)
    assert dispatched == []
    assert sum(r.getMessage().startswith("the WebSocket from") for r in caplog.records) == 2
