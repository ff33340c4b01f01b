"""``WsClient.close(timeout)``: one deadline over every join, even with a callback that never returns.

Bounds, not benchmarks: each test asserts that close returned within its
timeout plus a margin, measured around the call.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from rusty_ws import WsClient
from support import MS, WAIT, RunningServer

#: The timeout given to close(), and the slack allowed on top of it.
CLOSE_TIMEOUT = 1000 * MS
MARGIN = 400 * MS


class SilentPeer:
    """A WebSocket server that answers the ``ping`` command and nothing else: never a close frame.

    Serves one connection on a thread; it ends when the client's socket does, or on exit.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.ws_url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/ws"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="test-silent-peer", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(WAIT)
        conn, _ = self.listener.accept()
        protocol = WSConnection(ConnectionType.SERVER)
        conn.settimeout(WAIT)
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                protocol.receive_data(data)
                for event in protocol.events():
                    if isinstance(event, Request):
                        conn.sendall(protocol.send(AcceptConnection()))
                    elif isinstance(event, TextMessage) and event.data == "ping":
                        conn.sendall(protocol.send(TextMessage(data="pong")))
                    # A CloseConnection is never answered: the client must shut down by itself.

    def __enter__(self) -> "SilentPeer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(2 * WAIT)
        self.listener.close()
        assert not self.thread.is_alive(), "the silent peer did not stop"


def timed_close(client: WsClient, timeout: float) -> float:
    started = time.monotonic()
    client.close(timeout)
    return time.monotonic() - started


def test_close_with_a_stuck_callback_is_bounded_by_its_timeout(server: RunningServer) -> None:
    entered, release = threading.Event(), threading.Event()

    def stuck(payload: Any) -> None:
        entered.set()
        release.wait()

    client = WsClient.connect("c", server.ws_url, timeout=WAIT)
    try:
        client.on_message("Stuck", stuck)
        client.subscribe("c", "Stuck")
        client.publish("c", "Stuck", None)
        assert entered.wait(WAIT)
        elapsed = timed_close(client, CLOSE_TIMEOUT)
        still_in_callback = client._dispatch.thread.is_alive()
    finally:
        release.set()
    assert elapsed < CLOSE_TIMEOUT + MARGIN, f"close({CLOSE_TIMEOUT:.2f}) took {elapsed:.2f}s"
    assert still_in_callback  # close gave up on the dispatcher at the deadline...
    assert not client._reader.is_alive()  # ...but the reader ended well before it
    assert not client.is_connected()
    client._dispatch.thread.join(WAIT)  # ...and the dispatcher ends once the callback returns
    assert not client._dispatch.thread.is_alive()


def test_close_is_bounded_when_the_server_never_answers_the_close_frame() -> None:
    """The reader waits for a close answer that never comes, then the dispatcher for a stuck hook:
    both waits come out of the same timeout (they used to take one timeout each)."""
    entered, release = threading.Event(), threading.Event()

    def stuck(client: WsClient) -> None:
        entered.set()
        release.wait()

    with SilentPeer() as peer:
        client = WsClient("c", peer.ws_url, timeout=WAIT)
        client.on_connect = stuck
        try:
            client.open()
            assert entered.wait(WAIT)
            elapsed = timed_close(client, CLOSE_TIMEOUT)
            reader_alive = client._reader.is_alive()
        finally:
            release.set()
        assert elapsed < CLOSE_TIMEOUT + MARGIN, f"close({CLOSE_TIMEOUT:.2f}) took {elapsed:.2f}s"
        assert not reader_alive  # the socket was shut down under it, although a close frame was sent
        client._dispatch.thread.join(WAIT)
        assert not client._dispatch.thread.is_alive()


def test_close_after_the_deadline_passed_is_quiet(server: RunningServer) -> None:
    client = WsClient.connect("c", server.ws_url)
    client.close(0)
    client._reader.join(WAIT)
    client._dispatch.thread.join(WAIT)
    assert not client._reader.is_alive() and not client._dispatch.thread.is_alive()
    client.close(0)  # idempotent, with no time at all
    assert not client.is_connected()
