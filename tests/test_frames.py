"""Server frames built once, checked by decoding them with wsproto's client side."""

from __future__ import annotations

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from rusty_ws.frames import close_frame, encode_frame, text_frame


def decode(data: bytes):
    """The one frame in ``data``, as a client decodes it (text as str, close as (code, reason))."""
    protocol = FrameProtocol(client=True, extensions=[])
    protocol.receive_bytes(data)
    frames = list(protocol.received_frames())
    assert len(frames) == 1
    return frames[0]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_frame_lengths(size: int) -> None:
    frame = decode(text_frame("x" * size))
    assert frame.opcode is Opcode.TEXT and frame.payload == "x" * size and frame.frame_finished


def test_text_frame_accepts_bytes_and_str_alike() -> None:
    assert text_frame("héllo") == text_frame("héllo".encode())


def test_frames_are_unmasked() -> None:
    assert text_frame("abc")[1] & 0x80 == 0


def test_close_frame_code_and_reason() -> None:
    frame = decode(close_frame(4100, "slow consumer"))
    assert frame.opcode is Opcode.CLOSE and frame.payload == (4100, "slow consumer")


def test_close_reason_is_cut_on_a_character_boundary() -> None:
    frame = close_frame(1000, "é" * 200)
    assert len(frame) <= 2 + 125
    assert decode(frame).payload[1] == "é" * 61


def test_ping_frame() -> None:
    assert decode(encode_frame(0x9, b"")).opcode is Opcode.PING


# --------------------------------------------------------------------------- client frames in

import os  # noqa: E402
import struct  # noqa: E402

from rusty_ws.frames import BINARY, CLOSE, FAILED, PING, PONG, TEXT, TOO_BIG, FrameParser  # noqa: E402


def client(payload: bytes, opcode: int = 0x1, fin: bool = True, mask: bytes | None = None, rsv: int = 0,
           length: int | None = None) -> bytes:
    """A client frame, masked with ``mask`` (random by default)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class TestFrameParser:
    def test_text_with_any_mask(self) -> None:
        for mask in (b"\0\0\0\0", b"abcd", os.urandom(4)):
            assert FrameParser(1000).feed(client("héllo".encode(), mask=mask)) == [(TEXT, "héllo")]

    @pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 100_000])
    def test_lengths(self, size: int) -> None:
        assert FrameParser(1 << 20).feed(client(b"a" * size)) == [(TEXT, "a" * size)]

    def test_byte_by_byte(self) -> None:
        parser, events = FrameParser(1000), []
        for byte in client(b"subscribe:T|s") + client(b"ping"):
            events += parser.feed(bytes([byte]))
        assert events == [(TEXT, "subscribe:T|s"), (TEXT, "ping")]

    def test_many_frames_in_one_feed(self) -> None:
        data = client(b"a") + client(b"b", opcode=0x2) + client(b"!", opcode=0x9) + client(b"?", opcode=0xA)
        assert FrameParser(1000).feed(data) == [(TEXT, "a"), (BINARY, b"b"), (PING, b"!"), (PONG, b"?")]

    def test_fragments_with_a_ping_between(self) -> None:
        snowman = "☃".encode()  # split across fragments: only the whole message must be UTF-8
        data = (client(b"sub" + snowman[:1], fin=False) + client(b"x", opcode=0x9)
                + client(snowman[1:], opcode=0x0, fin=False) + client(b"", opcode=0x0))
        assert FrameParser(1000).feed(data) == [(PING, b"x"), (TEXT, "sub☃")]

    @pytest.mark.parametrize("payload, event", [
        (b"", (CLOSE, 1005, "")),
        (struct.pack("!H", 1000), (CLOSE, 1000, "")),
        (struct.pack("!H", 4321) + b"bye", (CLOSE, 4321, "bye")),
        (b"\x03", (FAILED, 1002, "close frame with a one-byte payload")),
        (struct.pack("!H", 1005), (FAILED, 1002, "invalid close code 1005")),
        (struct.pack("!H", 999), (FAILED, 1002, "invalid close code 999")),
        (struct.pack("!H", 1000) + b"\xff", (FAILED, 1007, "close reason is not valid UTF-8")),
    ])
    def test_close(self, payload: bytes, event: tuple) -> None:
        assert FrameParser(1000).feed(client(payload, opcode=0x8)) == [event]

    @pytest.mark.parametrize("data, code", [
        (client(b"x", opcode=0x1)[:1] + bytes([1]) + b"x", 1002),            # unmasked
        (client(b"x", rsv=0x40), 1002),                                     # RSV1 without an extension
        (client(b"x", opcode=0x3), 1002),                                   # reserved opcode
        (client(b"x", opcode=0xB), 1002),
        (client(b"x", opcode=0x9, fin=False), 1002),                        # fragmented control frame
        (client(b"x" * 126, opcode=0x9), 1002),                             # control frame too long
        (client(b"x", opcode=0x0), 1002),                                   # continuation of nothing
        (client(b"a", fin=False) + client(b"b"), 1002),                     # new message mid-message
        (client(b"\xff\xfe"), 1007),                                        # not UTF-8
        (struct.pack("!BB", 0x81, 0xFF) + b"\x80" + b"\0" * 7 + b"abcd", 1002),  # 64-bit length, top bit set
    ])
    def test_protocol_errors(self, data: bytes, code: int) -> None:
        events = FrameParser(1 << 20).feed(data)
        assert events[-1][:2] == (FAILED, code)

    def test_too_big_is_caught_from_the_header(self) -> None:
        parser = FrameParser(100)
        header_only = client(b"x" * 101)[:6]  # header and mask, no payload yet
        assert parser.feed(header_only) == [(TOO_BIG,)]
        assert parser.feed(b"x" * 101) == []  # the payload, dropped unread
        assert parser.feed(client(b"next")) == [(TEXT, "next")]

    def test_too_big_across_fragments(self) -> None:
        parser = FrameParser(100)
        assert parser.feed(client(b"x" * 60, fin=False)) == []
        assert parser.feed(client(b"x" * 41, opcode=0x0)) == [(TOO_BIG,)]

    def test_a_refused_message_is_skipped_and_the_close_after_it_is_seen(self) -> None:
        parser = FrameParser(100)
        big = client(b"x" * 5000)
        close = client(struct.pack("!H", 1009), opcode=0x8)
        events = []
        for start in range(0, len(big + close), 700):  # in pieces, like reads from a socket
            events += parser.feed((big + close)[start:start + 700])
        assert events == [(TOO_BIG,), (CLOSE, 1009, "")]

    def test_the_continuations_of_a_refused_message_are_skipped(self) -> None:
        parser = FrameParser(100)
        data = (client(b"x" * 101, fin=False) + client(b"y" * 50, opcode=0x0, fin=False)
                + client(b"z" * 50, opcode=0x0) + client(b"ok"))
        assert parser.feed(data) == [(TOO_BIG,), (TEXT, "ok")]

    def test_exactly_at_the_limit(self) -> None:
        assert FrameParser(100).feed(client(b"x" * 50, fin=False) + client(b"y" * 50, opcode=0x0)) == [
            (TEXT, "x" * 50 + "y" * 50)]

    def test_nothing_after_close_or_failure(self) -> None:
        parser = FrameParser(100)
        assert parser.feed(client(b"", opcode=0x8) + client(b"late")) == [(CLOSE, 1005, "")]
        assert parser.feed(client(b"later")) == []
        parser = FrameParser(100)
        assert parser.feed(client(b"\xff") + client(b"late"))[-1][0] == FAILED
        assert parser.feed(client(b"later")) == []
