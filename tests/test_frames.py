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
