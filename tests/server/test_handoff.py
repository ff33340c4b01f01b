"""The WebSocket after its request (``handoff.py``): under ``HubServer`` the command loop runs once the view returned.

What an embedding app sees: under ``HubServer`` its request ends at the
handshake (``teardown_request`` runs then, while the connection lives on, and
its hooks run in an app context of their own); under werkzeug's own server
(``flask run``) and gunicorn the request lasts as long as the WebSocket, as it
always did.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import websocket
from flask import Flask, Response, current_app, g, has_app_context, has_request_context, request
from werkzeug.serving import make_server as werkzeug_make_server

from rusty_ws import PubSub
from rusty_ws.protocol import encode_ping, encode_subscribe
from rusty_ws.server.state import state_of
from support import POLL, WAIT, Client, RawSocket, client_frame, hub_config, running_server


def embedding_app(**overrides: Any) -> tuple[Flask, "queue.Queue[tuple[Any, ...]]"]:
    """An app that records its teardowns and what the permissions hook sees of Flask's contexts."""
    app = Flask("embedding")
    app.config.update(hub_config(**overrides))
    pubsub = PubSub(app)
    events: queue.Queue[tuple[Any, ...]] = queue.Queue()

    @app.before_request
    def mark() -> None:
        g.marked = True

    @app.teardown_request
    def request_ended(exc: BaseException | None) -> None:
        events.put(("teardown_request", request.path, exc))

    @app.teardown_appcontext
    def context_ended(exc: BaseException | None) -> None:
        events.put(("teardown_appcontext", exc))

    @pubsub.permissions
    def may(username: str | None, session_id: str, topic: str, action: str) -> bool:
        events.put(("hook", has_request_context(), has_app_context() and current_app.name,
                    has_app_context() and "marked" in g))
        return True

    return app, events


def take(events: "queue.Queue[tuple[Any, ...]]", count: int) -> list[tuple[Any, ...]]:
    return [events.get(timeout=WAIT) for _ in range(count)]


@contextlib.contextmanager
def werkzeug_server(app: Flask) -> Iterator[int]:
    """The app on werkzeug's own threaded server, as ``flask run`` serves it: the view runs the connection."""
    server = werkzeug_make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL}, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        state_of(app).hub.shutdown(WAIT)
        server.shutdown()
        thread.join(WAIT)
        server.server_close()


def test_under_hub_server_the_request_ends_at_the_handshake_and_the_connection_keeps_its_slot() -> None:
    app, events = embedding_app(max_connections=1)
    with running_server(app) as server:
        with server.connect() as client:
            # The request is over while the WebSocket is open: both teardowns ran, without an error.
            assert take(events, 2) == [("teardown_request", "/ws", None), ("teardown_appcontext", None)]
            assert client.command(encode_subscribe("T")) == []
            # The hook runs on the connection's thread in an app context of its own: no request, a fresh g.
            assert take(events, 1) == [("hook", False, "embedding", False)]
            assert events.empty()
            # The slot went with the socket, not with the request: the hub is still full.
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                server.connect()
            assert refused.value.status_code == 503
            assert json.loads(refused.value.resp_body)["code"] == "server_full"
            assert take(events, 2) == [("teardown_request", "/ws", None), ("teardown_appcontext", None)]
        # At the socket's end only the connection's own app context ends.
        assert take(events, 1) == [("teardown_appcontext", None)]
        server.wait_connections(0)
        with server.connect() as again:  # its slot was given back
            assert again.command(encode_subscribe("T")) == []
    assert server.hub.wait_connections(0, WAIT)


def test_under_werkzeugs_own_server_the_request_lasts_as_long_as_the_websocket() -> None:
    app, events = embedding_app()
    with werkzeug_server(app) as port:
        with Client(f"ws://127.0.0.1:{port}/ws") as client:
            assert client.command(encode_subscribe("T")) == []
            assert take(events, 1) == [("hook", True, "embedding", True)]  # inside the request, as always
            assert events.empty()  # no teardown while the WebSocket is open
        assert take(events, 2) == [("teardown_request", "/ws", None), ("teardown_appcontext", None)]


def test_a_response_put_in_the_views_place_is_never_written_on_the_websocket() -> None:
    app, events = embedding_app()

    @app.after_request
    def replace(response: Response) -> Response:
        return Response("an app's own answer", status=200)

    with running_server(app) as server:
        raw = RawSocket(server.port)
        try:
            assert raw.status == 101
            assert take(events, 2)[0] == ("teardown_request", "/ws", None)
            # The first bytes after the 101 are a frame: no HTTP answer, nothing drained.
            assert raw.sync() == []
            raw.send_frame(0x1, encode_subscribe("T").encode())
            assert raw.sync() == []
        finally:
            raw.close()


def test_a_failing_teardown_does_not_end_the_connection() -> None:
    app, _ = embedding_app()
    failed = threading.Event()

    @app.teardown_request
    def broken(exc: BaseException | None) -> None:
        failed.set()
        raise RuntimeError("a teardown that fails")

    with running_server(app) as server:
        with server.connect() as client:
            assert failed.wait(WAIT)
            assert client.command(encode_subscribe("T")) == []
        server.wait_connections(0)


def test_frames_sent_with_the_head_are_not_lost_to_the_hand_over() -> None:
    app, _ = embedding_app()
    with running_server(app) as server:
        raw = RawSocket(server.port, early=client_frame(encode_ping().encode()))
        try:
            assert raw.status == 101
            assert raw.recv_frame() == (0x81, b"pong")  # the early ping, answered after the hand-over
            assert raw.sync() == []
        finally:
            raw.close()


#: Run in a fresh interpreter: whether ``greenlet`` is imported decides what ``release_stack_below``
#: does, and this test process has it (Playwright's sync API, for the browser tests).
STACK_PROBE = """
import json, os, sys, threading
if sys.argv[1] == "greenlet":
    import greenlet  # noqa: F401
from rusty_ws.server.handoff import release_stack_below


def pages_present():
    # This thread's C stack: pages present of its mapping, and its size in pages (Linux's /proc).
    with open("/proc/thread-self/syscall", "rb") as record:  # "nr args... sp pc" of this very read
        sp = int(record.read().split()[7], 16)
    with open("/proc/self/maps") as maps:
        low, high = next((a, b) for a, b in ((int(x, 16) for x in line.split()[0].split("-")) for line in maps)
                         if a <= sp < b)
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(low // page * 8)
        entries = pagemap.read((high - low) // page * 8)
    return sum(entries[i + 7] >> 7 for i in range(0, len(entries), 8)), (high - low) // page  # bit 63 of each


nested = []
for _ in range(400):  # json's C encoder recurses once a level: ~100 KiB of C stack
    nested = [nested]
seen = {}


def body():
    json.dumps(nested)
    seen["deep"] = pages_present()
    release_stack_below()
    seen["released"] = pages_present()
    seen["again"] = json.dumps(nested) == json.dumps(nested, check_circular=False)  # pages come back, zeroed


thread = threading.Thread(target=body)
thread.start()
thread.join(30)
print(json.dumps(seen))
"""


def _probe_stack(mode: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", STACK_PROBE, mode], capture_output=True, text=True,
                            timeout=WAIT * 3, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's madvise and /proc")
def test_release_stack_below_gives_back_what_a_deeper_call_touched() -> None:
    seen = _probe_stack("plain")
    (deep, size), (released, _) = seen["deep"], seen["released"]
    assert size > 64 and deep >= 8, seen  # an 8 MiB stack of which the encoder touched ~13 pages
    assert released <= 4 < deep, seen  # the frames above this one fit in the top pages
    assert seen["again"] is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's madvise and /proc")
def test_release_stack_below_leaves_the_stack_alone_once_greenlet_is_loaded() -> None:
    pytest.importorskip("greenlet")  # Playwright's dependency: installed with the test extra
    seen = _probe_stack("greenlet")
    assert seen["released"][0] == seen["deep"][0] >= 8, seen  # a greenlet's frames may lie below: untouched


def test_a_connection_that_fails_after_the_hand_over_is_logged_closed_and_gives_its_slot_back(
        caplog: pytest.LogCaptureFixture) -> None:
    app, _ = embedding_app(max_connections=1)
    with running_server(app) as server:
        def broken_serve(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("the writer has been stopped")

        server.hub.serve = broken_serve  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="rusty_ws.server"):
            raw = RawSocket(server.port)
            try:
                assert raw.status == 101
                assert raw.read_until_eof() == b""  # closed, nothing written after the 101
            finally:
                raw.close()
            assert server.hub.wait_connections(0, WAIT)  # the slot is back
        assert any("failed" in record.getMessage() and record.exc_info for record in caplog.records)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_handed_over_socket_is_closed_when_its_connection_ends_even_if_the_app_keeps_its_environ() -> None:
    app, _ = embedding_app()
    kept: list[dict[str, Any]] = []

    @app.before_request
    def keep() -> None:  # an app (a debug toolbar, a request log) may hold on to what it saw
        kept.append(request.environ)

    with running_server(app) as server:
        with server.connect() as warm:  # the first connection opens what stays open (the writer's selector)
            warm.sync()
        server.wait_connections(0)
        enabled = gc.isenabled()
        gc.disable()  # and whatever the collector would free is not freed either
        try:
            before = len(os.listdir("/proc/self/fd"))
            with server.connect() as client:
                client.sync()
            server.wait_connections(0)  # also waits for the slot, given back after the socket's close
            assert len(os.listdir("/proc/self/fd")) == before
        finally:
            if enabled:
                gc.enable()
