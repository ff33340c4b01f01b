"""permessage-deflate (RUSTY_WS_COMPRESSION): negotiation, one compressed frame per publish, hostile input.

Three kinds of client: a hand-made one (``RawSocket``) that shows the frames
on the wire, the ``websockets`` package's client with compression (a real
RFC 7692 implementation that checks our answer), and websocket-client, which
never offers compression.
"""

from __future__ import annotations

import json
import zlib

import pytest
from websockets.sync.client import connect

from rusty_ws.protocol import Delivery, encode_ping, encode_publish, encode_subscribe
from support import MS, RSV1, WAIT, Client, RawSocket, RunningServer, running_server

BROWSER_OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"


def compress(data: bytes, compressor: "zlib._Compress | None" = None) -> bytes:
    compressor = compressor or zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def inflate_alone(payload: bytes) -> bytes:
    """Inflate with a fresh context: what server_no_context_takeover promises is enough."""
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload + TAIL)


def close_code(raw: RawSocket) -> int:
    """Read the server's close frame, answer it (so the server need not wait), return its code."""
    frame = raw.recv_frame()
    assert frame.first == 0x88, (frame.first, frame.payload[:50])
    code, _reason = frame.close()
    raw.send_frame(0x8, frame.payload[:2])
    assert raw.read_until_eof() == b""
    return code


@pytest.fixture
def server():
    with running_server(compression=6, close_timeout=200 * MS) as running:  # failed connections end fast
        yield running


def test_off_by_default_the_offer_is_declined() -> None:
    with running_server() as server:
        raw = RawSocket(server.port, extensions=BROWSER_OFFER)
        assert raw.status == 101 and "sec-websocket-extensions" not in raw.headers
        raw.send_frame(0x1, encode_subscribe("T").encode())
        raw.send_frame(0x1, json_publish("T", "plain").encode())
        assert raw.sync() == [(0x81, delivery_bytes(server, "T", "plain", offset=1))]
        raw.close()


def json_publish(topic: str, payload: object) -> str:
    return encode_publish(topic, payload, publisher_name="p", timestamp="2026-11-27T00:00:00Z",
                          session_id="default")


def delivery_bytes(server: RunningServer, topic: str, payload: object, offset: int) -> bytes:
    """The exact delivery of ``json_publish(topic, payload)``, the stream's ``offset``-th message."""
    epoch = server.hub.history.top((topic, "default")).epoch
    return json.dumps({"publisher_name": "p", "topic": topic, "payload": payload,
                       "timestamp": "2026-11-27T00:00:00Z", "session_id": "default",
                       "offset": offset, "epoch": epoch},
                      separators=(",", ":"), ensure_ascii=False).encode()


def test_negotiated_with_server_no_context_takeover(server: RunningServer) -> None:
    raw = RawSocket(server.port, extensions=BROWSER_OFFER)
    assert raw.headers["sec-websocket-extensions"] == "permessage-deflate; server_no_context_takeover"
    raw.close()
    with connect(server.ws_url, compression="deflate", open_timeout=WAIT) as ws:
        (extension,) = ws.protocol.extensions
        assert extension.remote_no_context_takeover  # the websockets client read our answer


def test_one_compressed_frame_for_compressing_subscribers_plain_for_the_others(server: RunningServer) -> None:
    first, second = (RawSocket(server.port, extensions=BROWSER_OFFER) for _ in range(2))
    with Client(server.ws_url) as plain, \
            connect(server.ws_url, compression="deflate", open_timeout=WAIT) as library:
        for raw in (first, second):
            raw.send_frame(0x1, encode_subscribe("T").encode())
            assert raw.sync() == []
        plain.command(encode_subscribe("T"))
        library.send(encode_subscribe("T"))
        library.send(encode_ping())
        assert library.recv(timeout=WAIT) == "pong"

        payload = {"text": "compress me " * 40}
        library.send(json_publish("T", payload))  # the websockets client compresses it
        expected = delivery_bytes(server, "T", payload, offset=1)
        frames = [raw.recv_frame() for raw in (first, second)]
        assert frames[0] == frames[1]  # the same bytes on every compressing connection
        head, body = frames[0]
        assert head == 0x80 | RSV1 | 0x1 and len(body) < len(expected) / 3
        assert inflate_alone(body) == expected
        assert plain.recv().encode() == expected
        assert json.loads(library.recv(timeout=WAIT)) == json.loads(expected)

        # The client's compression context is kept: its second message refers back to its first.
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        for _ in range(2):
            first.send_frame(0x1, compress(json_publish("T", payload).encode(), compressor), rsv=RSV1)
        for offset in (2, 3):
            expected = delivery_bytes(server, "T", payload, offset)
            assert inflate_alone(second.recv_frame()[1]) == expected
            assert plain.recv().encode() == expected
    for raw in (first, second):
        raw.close()


def test_server_side_publishes_reach_compressing_subscribers(server: RunningServer) -> None:
    raw = RawSocket(server.port, extensions=BROWSER_OFFER)
    raw.send_frame(0x1, encode_subscribe("Server", "default").encode())
    assert raw.sync() == []
    server.hub.publish(Delivery(publisher_name="app", topic="Server", payload="from a view " * 20,
                                timestamp="2026-11-27T00:00:00Z", session_id="default"))
    head, body = raw.recv_frame()
    assert head & RSV1 and json.loads(inflate_alone(body))["payload"] == "from a view " * 20
    raw.close()


@pytest.mark.parametrize("frame, code", [
    (compress(b"\0" * (50 << 20)), 1009),        # a deflate bomb: 50 MiB in ~50 KiB
    (b"\xff\xff\xff\xff not deflate", 1007),
    (compress(b"\xff\xfe not utf-8"), 1007),
], ids=["bomb", "garbage", "not-utf8"])
def test_hostile_compressed_input_closes_only_that_connection(server: RunningServer, frame: bytes,
                                                              code: int) -> None:
    with Client(server.ws_url) as bystander:
        bystander.command(encode_subscribe("T"))
        attacker = RawSocket(server.port, extensions=BROWSER_OFFER)
        attacker.send_frame(0x1, frame, rsv=RSV1)
        assert close_code(attacker) == code
        attacker.close()
        bystander.send(json_publish("T", "still here"))
        assert bystander.recv_json()["payload"] == "still here"
    server.wait_connections(0)


def test_compressed_frames_where_nothing_was_negotiated_are_a_protocol_error(server: RunningServer) -> None:
    raw = RawSocket(server.port)  # no offer: no compression on this connection
    assert "sec-websocket-extensions" not in raw.headers
    raw.send_frame(0x1, compress(encode_ping().encode()), rsv=RSV1)
    assert close_code(raw) == 1002
    raw.close()


def test_an_offer_we_cannot_honour_is_declined_not_refused(server: RunningServer) -> None:
    raw = RawSocket(server.port, extensions="permessage-deflate; server_max_window_bits=9")
    assert raw.status == 101 and "sec-websocket-extensions" not in raw.headers
    raw.send_frame(0x1, encode_subscribe("T").encode())
    assert raw.sync() == []
    raw.close()
