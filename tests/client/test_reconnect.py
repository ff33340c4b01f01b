"""Reconnection, close-code policies, and keepalive of WsClient."""

from __future__ import annotations

import functools
import queue
import socket
import threading
import time

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from rusty_ws import ConnectionClosed, WsClient
from rusty_ws.client import supervisor
from rusty_ws.protocol import CloseCode, encode_ping, encode_publish
from support import FAST_CLIENT, MS, POLL, WAIT, Hooks, messages, running_server


def test_reconnects_after_a_restart_and_keeps_its_subscriptions() -> None:
    with running_server() as first:
        port = first.port
        client = WsClient.connect_with_session("Client1", "session-A", first.ws_url, **FAST_CLIENT)
        hooks = Hooks(client)
        received = messages(client, "NetworkConnectedEvent")
        client.subscribe("Client1", "NetworkConnectedEvent")
    assert hooks.disconnected.get(timeout=WAIT) == (4200, "server restarting")
    attempt, delay = hooks.reconnecting.get(timeout=WAIT)  # 4200 means: reconnect now, within a little jitter
    assert attempt == 1 and 0.0 <= delay <= 2 * FAST_CLIENT["backoff_initial"]
    with running_server(port=port) as second:
        assert hooks.connected.get(timeout=WAIT) is client  # name, session, subscription restored
        assert client.is_connected()
        with second.connect() as publisher:
            publisher.command(encode_publish("NetworkConnectedEvent", "back again", session_id="session-A"))
        assert received.get(timeout=WAIT) == "back again"
        client.publish("Client1", "NetworkConnectedEvent", "and from me")
        assert received.get(timeout=WAIT) == "and from me"
        client.close()
    assert hooks.disconnected.get(timeout=WAIT)[0] == 1000


@pytest.mark.parametrize("share", [1.0, 0.0], ids=["top", "bottom"])
def test_a_restart_naming_a_window_spreads_the_first_attempt_over_it(monkeypatch: pytest.MonkeyPatch,
                                                                     share: float) -> None:
    # The client's random draw pinned to the top or the bottom of its range: the wait is then exact.
    monkeypatch.setattr(supervisor, "first_delay", functools.partial(supervisor.first_delay, rng=lambda: share))
    window = 2.0  # two connections at one handshake per second
    with running_server(reconnect_rate=1) as first:
        clients = [WsClient.connect(f"c{index}", first.ws_url, **FAST_CLIENT) for index in range(2)]
        timed: list[queue.Queue] = [queue.Queue() for _ in clients]  # each hook's arguments, and when it ran
        for client, to in zip(clients, timed):
            client.on_disconnect = lambda c, code, reason, to=to: to.put((code, reason, time.monotonic()))
            client.on_reconnecting = lambda c, attempt, delay, to=to: to.put((attempt, delay, time.monotonic()))
        stopping = time.monotonic()  # before the 4200s: no client starts its wait earlier
    try:
        for events in timed:
            code, reason, dropped = events.get(timeout=WAIT)
            assert (code, reason) == (4200, f"server restarting; reconnect within {window} s")
            attempt, delay, _ = events.get(timeout=WAIT)
            assert attempt == 1 and delay == share * window  # the hub's window, not the quick back-off's 0.1 s
            # The first attempt (refused: no hub on the port) comes after that wait, and soon after it.
            attempt, _, announced = events.get(timeout=window + WAIT)
            assert attempt == 2 and announced - stopping >= share * window
            assert announced - dropped <= share * window + 500 * MS
    finally:
        for client in clients:
            client.close()


def test_calls_during_an_outage_fail_clearly() -> None:
    with running_server() as server:
        client = WsClient.connect("c", server.ws_url, reconnect=False, timeout=WAIT)
        hooks = Hooks(client)
    assert hooks.disconnected.get(timeout=WAIT)[0] == 4200
    assert not client.is_connected()
    with pytest.raises(ConnectionClosed) as caught:
        client.publish("c", "T", 1)
    assert caught.value.code == 4200
    assert hooks.reconnecting.empty()
    client.close()


def test_do_not_reconnect_codes_are_honoured() -> None:
    with running_server() as server:
        client = WsClient.connect("c", server.ws_url, **FAST_CLIENT)
        hooks = Hooks(client)
        [connection] = server.hub.connections()
        connection.close(CloseCode.FORBIDDEN, "go away")
        assert hooks.disconnected.get(timeout=WAIT) == (4003, "go away")
        client._reader.join(WAIT)
        assert not client._reader.is_alive() and not client.is_connected()
        assert hooks.reconnecting.empty()
        client.close()


def test_back_off_codes_wait_before_the_first_attempt() -> None:
    with running_server() as server:
        client = WsClient.connect("c", server.ws_url, **FAST_CLIENT)
        hooks = Hooks(client)
        [connection] = server.hub.connections()
        connection.close(CloseCode.SLOW_CONSUMER, "slow")
        assert hooks.disconnected.get(timeout=WAIT)[0] == 4100
        attempt, delay = hooks.reconnecting.get(timeout=WAIT)
        assert attempt == 1 and 0 <= delay <= FAST_CLIENT["backoff_initial"]
        assert hooks.connected.get(timeout=WAIT) is client
        client.close()


def dead_server(listener: socket.socket, stop: threading.Event) -> None:
    """Accepts one WebSocket, answers the client's first ``ping`` command, then never answers again."""
    listener.settimeout(WAIT)
    conn, _ = listener.accept()
    protocol = WSConnection(ConnectionType.SERVER)
    answered = False
    conn.settimeout(POLL)
    while not stop.is_set():
        try:
            data = conn.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        protocol.receive_data(data)
        for event in protocol.events():
            if isinstance(event, Request):
                conn.sendall(protocol.send(AcceptConnection()))
            elif isinstance(event, TextMessage) and event.data == encode_ping() and not answered:
                conn.sendall(protocol.send(TextMessage(data="pong")))
                answered = True
            # WebSocket pings are never answered: the server looks alive to TCP, dead to us.
    conn.close()


def test_keepalive_notices_a_dead_server() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    server = threading.Thread(target=dead_server, args=(listener, stop), daemon=True)
    server.start()
    try:
        client = WsClient.connect("c", f"ws://127.0.0.1:{listener.getsockname()[1]}/ws",
                                  ping_interval=100 * MS, ping_timeout=200 * MS, reconnect=False, timeout=WAIT)
        hooks = Hooks(client)
        assert hooks.disconnected.get(timeout=WAIT) == (1006, "keepalive timeout")
        client.close()
    finally:
        stop.set()
        server.join(WAIT)
        listener.close()
