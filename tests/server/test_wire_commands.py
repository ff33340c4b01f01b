"""Every command and every documented error reply, against a real hub."""

from __future__ import annotations

import json

import pytest

from rusty_ws.protocol import (
    encode_ping,
    encode_publish,
    encode_register_name,
    encode_register_session,
    encode_subscribe,
    encode_unsubscribe,
)
from support import WAIT, RawSocket, RunningServer, error_of, running_server


def test_ping_pong(server: RunningServer) -> None:
    with server.connect() as client:
        client.send(encode_ping())
        assert client.recv() == "pong"


def test_anonymous_connection_is_in_the_default_session(server: RunningServer) -> None:
    with server.connect() as subscriber, server.connect() as publisher:
        subscriber.command(encode_subscribe("T"))
        publisher.command(encode_publish("T", 1))
        [message] = subscriber.sync()
        assert json.loads(message)["session_id"] == "default"


def test_register_session_changes_the_default(server: RunningServer) -> None:
    with server.connect() as subscriber, server.connect() as publisher:
        assert subscriber.command(encode_register_session("s1")) == []
        subscriber.command(encode_subscribe("T"))  # in s1
        publisher.command(encode_register_session("s1"))
        publisher.command(encode_publish("T"))
        publisher.command(encode_publish("T", session_id="default"))
        [message] = subscriber.sync()
        assert json.loads(message)["session_id"] == "s1"


def test_defaults_filled_by_the_server(server: RunningServer) -> None:
    with server.connect() as client:
        client.command(encode_register_name("Kiosk"))
        client.command(encode_subscribe("T", "s"))
        [raw] = client.command(encode_publish("T", {"n": [1, 2.5, None]}, session_id="s"))
    message = json.loads(raw)
    # The seed's fields in its order, then the stream position (history is on by default).
    assert list(message) == ["publisher_name", "topic", "payload", "timestamp", "session_id", "offset", "epoch"]
    assert message["offset"] == 1 and message["epoch"] == server.hub.history.top(("T", "s")).epoch
    assert message["publisher_name"] == "Kiosk"
    assert message["payload"] == {"n": [1, 2.5, None]}
    assert message["timestamp"].endswith("+00:00") and "T" in message["timestamp"]


def test_publisher_without_a_name_is_anonymous(server: RunningServer) -> None:
    with server.connect() as client:
        client.command(encode_subscribe("T"))
        client.send(encode_publish("T"))
        assert client.recv_json()["publisher_name"] == "anonymous"


@pytest.mark.parametrize("payload", ["a string", 12, 1.5, {"deep": {"er": [True]}}, [], None])
def test_payload_forwarded_as_given(server: RunningServer, payload: object) -> None:
    with server.connect() as client:
        client.command(encode_subscribe("T"))
        client.send(encode_publish("T", payload))
        assert client.recv_json()["payload"] == payload


def test_subscribing_twice_delivers_once(server: RunningServer) -> None:
    with server.connect() as client:
        assert client.command(encode_subscribe("T", "s")) == []
        assert client.command(encode_subscribe("T", "s")) == []
        client.send(encode_publish("T", session_id="s"))
        assert len(client.sync()) == 1


def test_unsubscribe(server: RunningServer) -> None:
    with server.connect() as client:
        client.command(encode_subscribe("T", "s"))
        client.command(encode_subscribe("T"))
        assert client.command(encode_unsubscribe("T", "s")) == []
        assert client.command(encode_unsubscribe("T", "s")) == []  # again: harmless
        client.send(encode_publish("T", session_id="s"))
        client.send(encode_publish("T"))
        replies = client.sync()
        assert [json.loads(r)["session_id"] for r in replies] == ["default"]
        client.command(encode_unsubscribe("T"))
        client.send(encode_publish("T"))
        assert client.sync() == []


def test_topics_are_exact(server: RunningServer) -> None:
    with server.connect() as client:
        client.command(encode_subscribe("Event", "s"))
        for topic in ["event", "Event2", "Even", "Event "]:
            client.send(encode_publish(topic, session_id="s"))
        assert client.sync() == []


# Malformed commands, spelt out: no encoder would write them.
@pytest.mark.parametrize(
    "command, code",
    [
        ("hello", "unknown_command"),
        ("subscribe", "unknown_command"),
        ("PING", "unknown_command"),
        ("subscribe:", "invalid_topic"),
        ("subscribe:a|b|c", "invalid_session"),
        ("register-name:", "invalid_name"),
        ("register-session:", "invalid_session"),
        ("publish-json:{oops", "invalid_json"),
        ("publish-json:[1]", "invalid_message"),
        ("publish-json:{}", "missing_topic"),
        ('publish-json:{"topic": 1}', "invalid_message"),
        ('publish-json:{"topic": "T", "payload": NaN}', "invalid_json"),
        ("publish-json:" + "[" * 50_000 + "]" * 50_000, "invalid_json"),
    ],
)
def test_error_replies(server: RunningServer, command: str, code: str) -> None:
    with server.connect() as client:
        error = error_of(client.command(command))
        assert error["code"] == code and error["message"]
        assert client.command(encode_ping()) == []  # still open, still in order


def test_error_names_the_command_it_answers(server: RunningServer) -> None:
    with server.connect() as client:
        assert error_of(client.command("subscribe:"))["command"] == "subscribe"
        assert "command" not in error_of(client.command("nonsense"))


def test_binary_frames_are_refused_politely(server: RunningServer) -> None:
    with server.connect() as client:
        client.ws.send_binary(encode_subscribe("T").encode())
        assert error_of(client.sync())["code"] == "binary_not_supported"


def test_lone_surrogate_payload_is_delivered_as_valid_utf8(server: RunningServer) -> None:
    with server.connect() as client:
        client.command(encode_subscribe("T"))
        # Literal: a JSON escape of a lone surrogate, which no encoder writes (it is not UTF-8 as text).
        client.send('publish-json:{"topic": "T", "payload": "\\ud800"}')
        assert client.recv_json()["payload"] == "\ud800"


def test_fragmented_message_is_one_command(server: RunningServer) -> None:
    raw = RawSocket(server.port)
    try:
        raw.send_frame(0x1, b"subscr", fin=False)
        raw.send_frame(0x9, b"mid-message ping")  # control frames may interleave
        raw.send_frame(0x0, b"ibe:T|s", fin=False)
        raw.send_frame(0x0, b"", fin=True)
        raw.send_frame(0x1, encode_ping().encode())
        raw.sock.settimeout(WAIT)
        data = b""
        for _ in range(100):
            data += raw.sock.recv(4096)
            if data.endswith(b"pong"):
                break
        assert data == b"\x8a\x10mid-message ping" + b"\x81\x04pong"
    finally:
        raw.close()
    server.wait_connections(0)
    assert server.hub.counts()["subscriptions"] == 0


def test_invalid_utf8_closes_with_1007_and_others_carry_on(server: RunningServer) -> None:
    with server.connect() as bystander:
        raw = RawSocket(server.port)
        raw.send_frame(0x1, b"\xff\xfe")
        data = raw.read_until_eof()
        assert data[:4] == b"\x88" + bytes([len(data) - 2]) + b"\x03\xef"  # close, 1007
        raw.close()
        assert bystander.command(encode_ping()) == []


def test_unmasked_client_frame_is_a_protocol_error(server: RunningServer) -> None:
    raw = RawSocket(server.port)
    raw.sock.sendall(b"\x81\x04ping")  # clients must mask
    data = raw.read_until_eof()
    assert data[:2] == b"\x88" + bytes([len(data) - 2]) and data[2:4] == b"\x03\xea"  # 1002
    raw.close()
    server.wait_connections(0)


def test_client_close_code_is_echoed(server: RunningServer) -> None:
    with server.connect() as client:
        client.ws.send_close(status=4321, reason=b"bye")
        assert client.recv_close() == (4321, "bye")
    server.wait_connections(0)


def test_close_handshake_and_cleanup(server: RunningServer) -> None:
    with server.connect() as client:
        client.command(encode_subscribe("T", "s"))
        assert server.hub.counts()["subscriptions"] == 1
    server.wait_connections(0)
    assert server.hub.counts() | {"broker": None} == {
        "status": "ok", "connections": 0, "sessions": 0, "topics": 0, "subscriptions": 0, "broker": None,
        "pending_requests": 0,  # no socket is waiting for its request head
        # the stream outlives its last subscriber by RUSTY_WS_HISTORY_TTL (empty, it holds nothing)
        "history_streams": 1, "history_messages": 0, "history_bytes": 0,
    }


def test_many_hostile_frames_leave_the_server_up(server: RunningServer) -> None:
    with server.connect() as bystander:
        bystander.command(encode_subscribe("T"))
        with server.connect() as attacker:
            # Literal on purpose: hostile text that the encoders refuse to write.
            for text in ["\x00" * 1000, "subscribe:" + "|" * 10_000, "publish-json:" + "{" * 10_000,
                         "register-name:" + "n" * 100_000, "publish-json:" + json.dumps({"topic": "T" * 1000})]:
                attacker.send(text)
            replies = attacker.sync()
            assert len(replies) == 5 and all(r.startswith("error:") for r in replies)
        with server.connect() as publisher:
            publisher.command(encode_publish("T", "still here"))
        assert bystander.recv_json()["payload"] == "still here"


def test_a_failed_connection_is_ended_at_once_not_after_the_close_timeout() -> None:
    # RFC 6455 7.1.7: after failing a connection, read nothing more, not even a close.
    with running_server(close_timeout=20 * WAIT) as server:
        raw = RawSocket(server.port)
        raw.sock.sendall(b"\x81\x04ping")  # unmasked: fails the connection
        data = raw.read_until_eof(timeout=WAIT)  # EOF within WAIT, not after the close timeout
        assert data[2:4] == b"\x03\xea"
        raw.close()
        server.wait_connections(0)
