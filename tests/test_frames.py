"""Server frames built once, checked by decoding them with the tests' own decoder (``support.FrameReader``)."""

from __future__ import annotations

import pytest

from rusty_ws.frames import close_frame, encode_frame, text_frame, text_frames
from support import decode_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_frame_lengths(size: int) -> None:
    frame = decode_frame(text_frame("x" * size))  # the decoder also insists on the shortest length form
    assert frame.first == 0x81 and frame.text() == "x" * size  # FIN, no RSV bit, text


def test_text_frames_frame_a_run_as_text_frame_does_each() -> None:
    texts = [b"x" * size for size in (0, 1, 125, 126, 65535, 65536, 200_000)] + ["é".encode() * 70]
    assert text_frames(texts) == [text_frame(text) for text in texts] and text_frames([]) == []


def test_text_frame_accepts_bytes_and_str_alike() -> None:
    assert text_frame("héllo") == text_frame("héllo".encode())


def test_frames_are_unmasked() -> None:
    assert text_frame("abc")[1] & 0x80 == 0


def test_close_frame_code_and_reason() -> None:
    frame = decode_frame(close_frame(4100, "slow consumer"))
    assert frame.opcode == 0x8 and frame.close() == (4100, "slow consumer")


def test_close_reason_is_cut_on_a_character_boundary() -> None:
    frame = close_frame(1000, "é" * 200)
    assert len(frame) <= 2 + 125
    assert decode_frame(frame).close()[1] == "é" * 61  # strict UTF-8: no half character


def test_ping_frame() -> None:
    assert decode_frame(encode_frame(0x9, b"")).opcode == 0x9


# --------------------------------------------------------------------------- client frames in

import os  # noqa: E402
import struct  # noqa: E402
import tracemalloc  # noqa: E402

from rusty_ws.frames import FrameEvent, FrameParser  # noqa: E402
from support import RSV1, client_frame  # noqa: E402


class TestFrameParser:
    def test_text_with_any_mask(self) -> None:
        for mask in (b"\0\0\0\0", b"abcd", os.urandom(4)):
            assert FrameParser(1000).feed(client_frame("héllo".encode(), mask=mask)) == [(FrameEvent.TEXT, "héllo")]

    @pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 100_000])
    def test_lengths(self, size: int) -> None:
        assert FrameParser(1 << 20).feed(client_frame(b"a" * size)) == [(FrameEvent.TEXT, "a" * size)]

    def test_byte_by_byte(self) -> None:
        parser, events = FrameParser(1000), []
        for byte in client_frame(b"subscribe:T|s") + client_frame(b"ping"):
            events += parser.feed(bytes([byte]))
        assert events == [(FrameEvent.TEXT, "subscribe:T|s"), (FrameEvent.TEXT, "ping")]

    def test_many_frames_in_one_feed(self) -> None:
        data = client_frame(b"a") + client_frame(b"b", opcode=0x2) + client_frame(b"!", opcode=0x9) + client_frame(b"?", opcode=0xA)
        assert FrameParser(1000).feed(data) == [
            (FrameEvent.TEXT, "a"), (FrameEvent.BINARY, b"b"), (FrameEvent.PING, b"!"), (FrameEvent.PONG, b"?")]

    def test_fragments_with_a_ping_between(self) -> None:
        snowman = "☃".encode()  # split across fragments: only the whole message must be UTF-8
        data = (client_frame(b"sub" + snowman[:1], fin=False) + client_frame(b"x", opcode=0x9)
                + client_frame(snowman[1:], opcode=0x0, fin=False) + client_frame(b"", opcode=0x0))
        assert FrameParser(1000).feed(data) == [(FrameEvent.PING, b"x"), (FrameEvent.TEXT, "sub☃")]

    @pytest.mark.parametrize("payload, event", [
        (b"", (FrameEvent.CLOSE, 1005, "")),
        (struct.pack("!H", 1000), (FrameEvent.CLOSE, 1000, "")),
        (struct.pack("!H", 4321) + b"bye", (FrameEvent.CLOSE, 4321, "bye")),
        (b"\x03", (FrameEvent.FAILED, 1002, "close frame with a one-byte payload")),
        (struct.pack("!H", 1005), (FrameEvent.FAILED, 1002, "invalid close code 1005")),
        (struct.pack("!H", 999), (FrameEvent.FAILED, 1002, "invalid close code 999")),
        (struct.pack("!H", 1000) + b"\xff", (FrameEvent.FAILED, 1007, "close reason is not valid UTF-8")),
    ])
    def test_close(self, payload: bytes, event: tuple) -> None:
        assert FrameParser(1000).feed(client_frame(payload, opcode=0x8)) == [event]

    @pytest.mark.parametrize("data, code", [
        (client_frame(b"x", opcode=0x1)[:1] + bytes([1]) + b"x", 1002),            # unmasked
        (client_frame(b"x", rsv=0x40), 1002),                                     # RSV1 without an extension
        (client_frame(b"x", opcode=0x3), 1002),                                   # reserved opcode
        (client_frame(b"x", opcode=0xB), 1002),
        (client_frame(b"x", opcode=0x9, fin=False), 1002),                        # fragmented control frame
        (client_frame(b"x" * 126, opcode=0x9), 1002),                             # control frame too long
        (client_frame(b"x", opcode=0x0), 1002),                                   # continuation of nothing
        (client_frame(b"a", fin=False) + client_frame(b"b"), 1002),                     # new message mid-message
        (client_frame(b"\xff\xfe"), 1007),                                        # not UTF-8
        (struct.pack("!BB", 0x81, 0xFF) + b"\x80" + b"\0" * 7 + b"abcd", 1002),  # 64-bit length, top bit set
    ])
    def test_protocol_errors(self, data: bytes, code: int) -> None:
        events = FrameParser(1 << 20).feed(data)
        assert events[-1][:2] == (FrameEvent.FAILED, code)

    def test_too_big_is_caught_from_the_header(self) -> None:
        parser = FrameParser(100)
        header_only = client_frame(b"x" * 101)[:6]  # header and mask, no payload yet
        assert parser.feed(header_only) == [(FrameEvent.TOO_BIG,)]
        assert parser.feed(b"x" * 101) == []  # the payload, dropped unread
        assert parser.feed(client_frame(b"next")) == [(FrameEvent.TEXT, "next")]

    def test_too_big_across_fragments(self) -> None:
        parser = FrameParser(100)
        assert parser.feed(client_frame(b"x" * 60, fin=False)) == []
        assert parser.feed(client_frame(b"x" * 41, opcode=0x0)) == [(FrameEvent.TOO_BIG,)]

    def test_a_refused_message_is_skipped_and_the_close_after_it_is_seen(self) -> None:
        parser = FrameParser(100)
        big = client_frame(b"x" * 5000)
        close = client_frame(struct.pack("!H", 1009), opcode=0x8)
        events = []
        for start in range(0, len(big + close), 700):  # in pieces, like reads from a socket
            events += parser.feed((big + close)[start:start + 700])
        assert events == [(FrameEvent.TOO_BIG,), (FrameEvent.CLOSE, 1009, "")]

    def test_the_continuations_of_a_refused_message_are_skipped(self) -> None:
        parser = FrameParser(100)
        data = (client_frame(b"x" * 101, fin=False) + client_frame(b"y" * 50, opcode=0x0, fin=False)
                + client_frame(b"z" * 50, opcode=0x0) + client_frame(b"ok"))
        assert parser.feed(data) == [(FrameEvent.TOO_BIG,), (FrameEvent.TEXT, "ok")]

    def test_exactly_at_the_limit(self) -> None:
        assert FrameParser(100).feed(client_frame(b"x" * 50, fin=False) + client_frame(b"y" * 50, opcode=0x0)) == [
            (FrameEvent.TEXT, "x" * 50 + "y" * 50)]

    def test_nothing_after_close_or_failure(self) -> None:
        parser = FrameParser(100)
        assert parser.feed(client_frame(b"", opcode=0x8) + client_frame(b"late")) == [(FrameEvent.CLOSE, 1005, "")]
        assert parser.feed(client_frame(b"later")) == []
        parser = FrameParser(100)
        assert parser.feed(client_frame(b"\xff") + client_frame(b"late"))[-1][0] is FrameEvent.FAILED
        assert parser.feed(client_frame(b"later")) == []

    def test_one_ping_event_per_feed(self) -> None:
        """RFC 6455 5.5.3: a pong may answer only the most recent ping; a flood costs one event."""
        flood = b"".join(client_frame(str(i).encode(), opcode=0x9) for i in range(10_000))
        parser = FrameParser(1000)
        assert parser.feed(flood + client_frame(b"ping") + client_frame(b"last", opcode=0x9) + client_frame(b"x")) == [
            (FrameEvent.TEXT, "ping"), (FrameEvent.PING, b"last"), (FrameEvent.TEXT, "x")]  # where the last one was
        assert parser.feed(client_frame(b"next feed", opcode=0x9)) == [(FrameEvent.PING, b"next feed")]

    @pytest.mark.parametrize("size", [65537, 131072, 200_003])
    @pytest.mark.parametrize("mask", [b"\0\0\0\0", b"\x01\x80\xfe\x7f"])
    def test_large_payloads_are_unmasked_in_steps(self, size: int, mask: bytes) -> None:
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        data = client_frame(payload, opcode=0x2, mask=mask) + client_frame(payload[:10], opcode=0x2, mask=mask)
        parser, events = FrameParser(1 << 20), []
        for start in range(0, len(data), 4096):
            events += parser.feed(data[start:start + 4096])
        assert events == [(FrameEvent.BINARY, payload), (FrameEvent.BINARY, payload[:10])]
        fragmented = (client_frame(payload[:70_001], opcode=0x2, fin=False, mask=mask)
                      + client_frame(payload[70_001:], opcode=0x0, mask=mask))
        assert FrameParser(1 << 20).feed(fragmented) == [(FrameEvent.BINARY, payload)]

    def test_endless_empty_fragments_are_refused(self) -> None:
        """Each frame costs its header: a message of empty fragments ends in TOO_BIG, not never."""
        parser = FrameParser(1000)  # its fragments may take 2,000 bytes on the wire
        assert parser.feed(client_frame(b"x", fin=False)) == []
        events, refused_at = [], None
        for count in range(1, 1001):
            events += parser.feed(client_frame(b"", opcode=0x0, fin=False))
            if events and refused_at is None:
                refused_at = count
        assert events == [(FrameEvent.TOO_BIG,)]
        assert refused_at == (2000 - 7) // 6 + 1  # 6 bytes each, after the first frame's 7
        assert parser.feed(client_frame(b"", opcode=0x0) + client_frame(b"next")) == [(FrameEvent.TEXT, "next")]

    def test_one_byte_fragments_are_refused_before_the_payload_limit(self) -> None:
        """500 bytes in 500 frames: 3,500 bytes on the wire, past twice the limit of 1,000."""
        parser = FrameParser(1000)
        data = client_frame(b"x", fin=False) + client_frame(b"x", opcode=0x0, fin=False) * 498
        events = parser.feed(data + client_frame(b"x", opcode=0x0) + client_frame(b"next"))
        assert events == [(FrameEvent.TOO_BIG,), (FrameEvent.TEXT, "next")]
        parser = FrameParser(1000)  # the same message in 50 frames of 10 bytes is fine
        data = client_frame(b"x" * 10, fin=False) + client_frame(b"x" * 10, opcode=0x0, fin=False) * 48
        assert parser.feed(data + client_frame(b"x" * 10, opcode=0x0)) == [(FrameEvent.TEXT, "x" * 500)]

    def test_a_fragmented_message_holds_about_its_own_size(self) -> None:
        """A bytearray, not a list of bytes objects: 8-byte fragments held 6x the message."""
        size = 256 * 1024
        frames = [client_frame(b"x" * 8, fin=False)]
        frames += [client_frame(b"x" * 8, opcode=0x0, fin=False) for _ in range(size // 8 - 1)]
        data = b"".join(frames)  # 1.75 times the message on the wire: under the 2x that is refused
        reads = [data[start:start + 65536] for start in range(0, len(data), 65536)]
        parser = FrameParser(1 << 20)
        tracemalloc.start()
        try:
            for read in reads:
                assert parser.feed(read) == []
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2 * size, f"{peak} bytes at the peak for a message of {size}"
        assert parser.feed(client_frame(b"!", opcode=0x0)) == [(FrameEvent.TEXT, "x" * size + "!")]

    def test_a_big_frame_is_unmasked_without_copies_of_it(self) -> None:
        """What a 1 MiB frame costs while it is read: its bytes, the payload, its text (was 5x)."""
        size = 1 << 20
        data = client_frame(b"a" * size)
        reads = [data[start:start + 65536] for start in range(0, len(data), 65536)]
        parser = FrameParser(size)
        tracemalloc.start()
        try:
            for read in reads:
                events = parser.feed(read)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert events == [(FrameEvent.TEXT, "a" * size)]
        assert peak < 3 * size, f"{peak} bytes at the peak for a frame of {size}"


# --------------------------------------------------------------------------- permessage-deflate (RFC 7692)

import zlib  # noqa: E402

from rusty_ws.frames import deflate_offer_to_accept, deflate_text_frame  # noqa: E402


class ClientDeflater:
    """A client's compressor with context takeover, as browsers use it."""

    def __init__(self) -> None:
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)

    def __call__(self, data: bytes) -> bytes:
        body = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        assert body.endswith(b"\x00\x00\xff\xff")
        return body[:-4]


def finished(data: bytes) -> bytes:
    """``data`` compressed as a whole deflate stream, ended by a final block (BFINAL)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH)


class TestDeflate:
    def test_a_compressed_delivery_inflates_on_its_own(self) -> None:
        data = b'{"topic": "T", "payload": "' + b"abc" * 200 + b'"}'
        frame = deflate_text_frame(data, 6)
        first, payload = decode_frame(frame)
        assert first == 0x80 | RSV1 | 0x1 and len(payload) < 126 and len(frame) < len(data)
        # A fresh decompressor, as a client that was promised server_no_context_takeover may use.
        assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload + b"\x00\x00\xff\xff") == data
        assert deflate_text_frame(data, 6) == frame  # the same bytes for every subscriber

    def test_compressed_messages_keep_the_clients_context(self) -> None:
        deflate, parser = ClientDeflater(), FrameParser(1 << 20, inflate=True)
        first = "héllo " * 50
        assert parser.feed(client_frame(deflate(first.encode()), rsv=RSV1)) == [(FrameEvent.TEXT, first)]
        # The second message refers back to the first: only a kept context inflates it.
        second = deflate(first.encode())
        assert len(second) < 20
        assert parser.feed(client_frame(second, rsv=RSV1)) == [(FrameEvent.TEXT, first)]

    def test_a_fragmented_compressed_message(self) -> None:
        body = ClientDeflater()(b"x" * 5000 + b"end")
        half = len(body) // 2
        parser = FrameParser(1 << 20, inflate=True)
        data = client_frame(body[:half], fin=False, rsv=RSV1) + client_frame(body[half:], opcode=0x0)
        assert parser.feed(data) == [(FrameEvent.TEXT, "x" * 5000 + "end")]

    def test_plain_messages_pass_on_a_compressing_connection(self) -> None:
        assert FrameParser(100, inflate=True).feed(client_frame(b"ping")) == [(FrameEvent.TEXT, "ping")]

    @pytest.mark.parametrize("inflate, rsv, opcode, fin", [
        (False, RSV1, 0x1, True),    # not negotiated
        (True, 0x20, 0x1, True),     # RSV2: no extension defines it
        (True, RSV1, 0x9, True),     # a control frame is never compressed
    ])
    def test_reserved_bits_where_nothing_allows_them(self, inflate: bool, rsv: int, opcode: int,
                                                     fin: bool) -> None:
        events = FrameParser(1000, inflate=inflate).feed(client_frame(b"x", opcode=opcode, rsv=rsv, fin=fin))
        assert events[0][:2] == (FrameEvent.FAILED, 1002)

    def test_rsv1_on_a_continuation_frame(self) -> None:
        parser = FrameParser(1000, inflate=True)
        events = parser.feed(client_frame(b"a", fin=False) + client_frame(b"b", opcode=0x0, rsv=RSV1))
        assert events[0][:2] == (FrameEvent.FAILED, 1002)

    def test_a_deflate_bomb_is_refused_without_inflating_it(self) -> None:
        bomb = ClientDeflater()(b"\0" * (50 << 20))  # 50 MiB of zeros in ~50 KiB
        assert len(bomb) < 100_000
        parser = FrameParser(1 << 20, inflate=True)
        assert parser.feed(client_frame(bomb, rsv=RSV1)) == [(FrameEvent.TOO_BIG,)]

    def test_a_message_just_at_the_limit_inflates(self) -> None:
        parser = FrameParser(1000, inflate=True)
        assert parser.feed(client_frame(ClientDeflater()(b"a" * 1000), rsv=RSV1)) == [(FrameEvent.TEXT, "a" * 1000)]
        too_big = client_frame(ClientDeflater()(b"a" * 1001), rsv=RSV1)
        assert FrameParser(1000, inflate=True).feed(too_big) == [(FrameEvent.TOO_BIG,)]

    def test_garbage_that_does_not_inflate(self) -> None:
        events = FrameParser(1000, inflate=True).feed(client_frame(b"\xff\xff\xff\xff garbage", rsv=RSV1))
        assert events[0][:2] == (FrameEvent.FAILED, 1007)

    def test_inflated_text_must_be_utf8(self) -> None:
        events = FrameParser(1000, inflate=True).feed(client_frame(ClientDeflater()(b"\xff\xfe"), rsv=RSV1))
        assert events[0][:2] == (FrameEvent.FAILED, 1007)

    def test_messages_that_each_end_their_deflate_stream(self) -> None:
        """A client that compresses each message to its end (zlib's Z_FINISH: BFINAL set).

        The inflater ends with that stream; each later message starts a new one. Before,
        every message after the first inflated to nothing.
        """
        parser = FrameParser(1 << 20, inflate=True)
        for text in ("first", "second " * 20, "third"):
            body = finished(text.encode())
            assert parser.feed(client_frame(body, rsv=RSV1)) == [(FrameEvent.TEXT, text)]

    def test_context_takeover_again_after_a_final_block(self) -> None:
        deflate, parser = ClientDeflater(), FrameParser(1 << 20, inflate=True)
        assert parser.feed(client_frame(finished(b"one stream"), rsv=RSV1)) == [(FrameEvent.TEXT, "one stream")]
        text = "héllo " * 50
        assert parser.feed(client_frame(deflate(text.encode()), rsv=RSV1)) == [(FrameEvent.TEXT, text)]
        again = deflate(text.encode())  # refers back to the message before: a kept context
        assert len(again) < 20
        assert parser.feed(client_frame(again, rsv=RSV1)) == [(FrameEvent.TEXT, text)]

    def test_padding_after_a_final_block_is_not_data(self) -> None:
        parser = FrameParser(1000, inflate=True)
        body = finished(b"padded") + b"\x00"
        fragments = client_frame(body[:3], fin=False, rsv=RSV1) + client_frame(body[3:], opcode=0x0)
        assert parser.feed(fragments) == [(FrameEvent.TEXT, "padded")]
        assert parser.feed(client_frame(finished(b"next"), rsv=RSV1)) == [(FrameEvent.TEXT, "next")]


@pytest.mark.parametrize("offer, accepted", [
    ("permessage-deflate; client_max_window_bits", True),                 # Chromium, Firefox
    ("permessage-deflate", True),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", True),
    ("permessage-deflate; client_max_window_bits=12", True),
    ("permessage-deflate; server_max_window_bits=15", True),
    ("permessage-deflate; server_max_window_bits=10", False),             # we compress with 15
    ("permessage-deflate; server_max_window_bits=10, permessage-deflate", True),  # the fallback offer
    ("x-webkit-deflate-frame", False),
    ("permessage-deflate; bogus", False),
    ("permessage-deflate; client_max_window_bits=99", False),
    ("", False),
    (None, False),
])
def test_which_offers_are_accepted(offer: str | None, accepted: bool) -> None:
    assert deflate_offer_to_accept(offer) is accepted
