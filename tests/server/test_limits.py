"""Limits and failure: too many connections, oversized messages, slow and dead peers, vanishing clients."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest
import websocket

from rusty_ws.protocol import (
    CLOSE_CODE_EXPLANATIONS,
    encode_ping,
    encode_publish,
    encode_register_session,
    encode_subscribe,
    encode_unsubscribe,
)
from support import MS, WAIT, Client, RawSocket, RunningServer, error_of, http, running_server


def test_connection_limit_refuses_before_the_upgrade_and_http_still_answers() -> None:
    with running_server(max_connections=3) as server:
        clients = [server.connect() for _ in range(3)]
        for client in clients:
            client.sync()  # the server has registered it once it answers
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            server.connect()
        assert refused.value.status_code == 503
        assert json.loads(refused.value.resp_body)["code"] == "server_full"
        assert refused.value.resp_headers["retry-after"] == "5"
        status, _, health = http("GET", server.http_url + "/healthz")
        assert status == 200 and health["connections"] == 3
        clients.pop().close()
        server.wait_connections(2)
        clients.append(server.connect())
        assert clients[-1].command(encode_ping()) == []
        for client in clients:
            client.close()


def test_oversized_message_closes_1009_and_frees_the_connection() -> None:
    with running_server(max_message_size=1024) as server:
        with server.connect() as bystander:
            bystander.command(encode_subscribe("T"))
            big = server.connect()
            big.command(encode_subscribe("T"))
            big.send(encode_publish("T", "x" * 2000))
            assert big.recv_close() == (1009, "message too big")
            big.close()
            server.wait_connections(1)
            assert server.hub.counts()["subscriptions"] == 1
            assert bystander.command(encode_publish("T", "y" * 900))


def test_oversized_message_in_fragments_is_caught_before_it_is_buffered() -> None:
    with running_server(max_message_size=1024) as server:
        raw = RawSocket(server.port)
        for _ in range(3):  # 1.5 KiB in fragments, never a finished message
            raw.send_frame(0x1 if _ == 0 else 0x0, b"z" * 512, fin=False)
        raw.sock.settimeout(WAIT)
        assert raw.sock.recv(4) == b"\x88\x11\x03\xf1"  # close 1009, "message too big"
        raw.send_frame(0x8, struct.pack("!H", 1009))  # the client's half of the handshake
        assert raw.read_until_eof() == b"message too big"
        raw.close()
        server.wait_connections(0)


def test_message_at_the_limit_is_fine() -> None:
    with running_server(max_message_size=64) as server:
        with server.connect() as client:
            # Literal: its exact size, two-byte characters and all, is the point.
            text = 'publish-json:{"topic": "T", "payload": "%s"}' % ("é" * 8)
            assert len(text.encode()) <= 64
            assert client.command(text) == []


def test_subscription_limit() -> None:
    with running_server(max_subscriptions=2) as server:
        with server.connect() as client:
            assert client.command(encode_subscribe("A")) == []
            assert client.command(encode_subscribe("B")) == []
            assert client.command(encode_subscribe("B")) == []
            assert error_of(client.command(encode_subscribe("C")))["code"] == "too_many_subscriptions"
            assert client.command(encode_unsubscribe("A")) == []
            assert client.command(encode_subscribe("C")) == []


def test_slow_subscriber_is_dropped_at_the_bound_and_never_delays_a_fast_one() -> None:
    payload = "p" * 10_000
    with running_server(max_queued_bytes=200_000, max_message_size=100_000) as server:
        # A small receive buffer so the stall shows quickly; this client never reads.
        slow = Client(server.ws_url, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
        slow.command(encode_subscribe("T"))
        with server.connect() as fast, server.connect() as publisher:
            fast.command(encode_subscribe("T"))
            dropped_after = None
            for i in range(2000):  # at most 20 MB, far past the bound and any socket buffers
                publisher.send(encode_publish("T", payload, timestamp=str(i)))
                assert fast.recv_json()["timestamp"] == str(i)  # each arrives at once, in order
                if server.hub.counts()["connections"] == 2:
                    dropped_after = i
                    break
            assert dropped_after is not None, "the slow subscriber was never dropped"
            assert server.hub.wait_connections(2, WAIT)
        slow.close()


def test_dead_peer_is_dropped_by_keepalive() -> None:
    with running_server(ping_interval=100 * MS, ping_timeout=200 * MS) as server:
        dead = RawSocket(server.port)  # never answers pings, never closes
        dead.send_frame(0x1, encode_subscribe("T").encode())
        data = dead.read_until_eof()
        assert b"\x89\x00" in data  # it was pinged
        reason = CLOSE_CODE_EXPLANATIONS[4102].encode()
        assert b"\x88" + bytes([2 + len(reason)]) + struct.pack("!H", 4102) + reason in data
        dead.close()
        server.wait_connections(0)
        assert server.hub.counts()["subscriptions"] == 0


def test_live_peer_survives_keepalive() -> None:
    with running_server(ping_interval=100 * MS, ping_timeout=200 * MS) as server:
        with server.connect() as alive:
            alive.command(encode_subscribe("T"))
            alive.ws.settimeout(WAIT)
            for _ in range(5):  # five ping rounds; websocket-client answers each as it reads it
                opcode, _frame = alive.ws.recv_data_frame(control_frame=True)
                assert opcode == websocket.ABNF.OPCODE_PING
            assert alive.command(encode_ping()) == []
            assert server.hub.counts()["subscriptions"] == 1


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_clients_that_vanish_without_a_close_frame_leave_nothing(server: RunningServer, how: str) -> None:
    clients = [server.connect() for _ in range(5)]
    for i, client in enumerate(clients):
        client.command(encode_subscribe(f"T{i}", f"s{i}"))
    assert server.hub.counts()["subscriptions"] == 5
    for client in clients:
        if how == "reset":
            client.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.ws.sock.close()
    server.wait_connections(0)
    _status, _, health = http("GET", server.http_url + "/healthz")
    assert (health["connections"], health["sessions"], health["topics"], health["subscriptions"]) == (0, 0, 0, 0)


def test_healthz_counts(server: RunningServer) -> None:
    with server.connect() as a, server.connect() as b:
        a.command(encode_register_session("s1"))
        a.command(encode_subscribe("T", "s1"))
        a.command(encode_subscribe("U", "s1"))
        b.command(encode_subscribe("T", "s2"))
        status, _, health = http("GET", server.http_url + "/healthz")
    assert status == 200
    assert health["status"] == "ok"
    assert (health["connections"], health["topics"], health["subscriptions"]) == (2, 2, 3)
    assert health["sessions"] == 3  # s1, s2, and b's own "default"
    assert health["broker"] == {"name": "memory", "connected": True}


def test_shutdown_tells_clients_to_reconnect() -> None:
    with running_server() as server:
        client = server.connect()
        client.command(encode_subscribe("T"))
        stopping = threading.Thread(target=server.hub.shutdown, args=(WAIT,))
        stopping.start()
        assert client.recv_close() == (4200, "server restarting")  # websocket-client answers it
        stopping.join(WAIT)
        assert not stopping.is_alive()
        client.close()
        status, _, health = http("GET", server.http_url + "/healthz")
        assert status == 200 and health["status"] == "stopping"
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            server.connect()
        assert refused.value.status_code == 503
        assert json.loads(refused.value.resp_body)["code"] == "shutting_down"
