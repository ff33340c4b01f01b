"""Client-side WebSocket framing for the load generator: as little Python per frame as possible.

Client frames are masked with the all-zero key (allowed by RFC 6455; it makes
masking free). Server frames are parsed from a byte buffer in bulk.
"""

from __future__ import annotations

import base64
import os
import struct

ZERO_MASK = b"\0\0\0\0"


#: What a browser offers; with it, a server that compresses may set RSV1 on its frames.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
#: RFC 7692: appended to a compressed message before inflating it.
DEFLATE_TAIL = b"\x00\x00\xff\xff"
#: FrameReader's opcode for a compressed text frame (RSV1 kept next to the opcode).
COMPRESSED_TEXT = 0x41


def handshake(host: str, port: int, path: str, offer_deflate: bool = False) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    offer = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if offer_deflate else ""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n").encode()


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked (zero key) client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + ZERO_MASK + payload


def pong_frame(payload: bytes) -> bytes:
    return client_frame(payload, 0xA)


class FrameReader:
    """Splits a server's byte stream into (opcode, payload) frames; unmasked, unfragmented.

    The opcode keeps RSV1: a compressed text frame comes out as ``COMPRESSED_TEXT``.
    """

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self.buffer + data if self.buffer else data
        frames = []
        append = frames.append
        position, end = 0, len(buffer)
        while end - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            length = second & 0x7F
            start = position + 2
            if length == 126:
                if end - position < 4:
                    break
                length = (buffer[start] << 8) | buffer[start + 1]
                start += 2
            elif length == 127:
                if end - position < 10:
                    break
                length = int.from_bytes(buffer[start:start + 8], "big")
                start += 8
            stop = start + length
            if stop > end:
                break
            append((first & 0x4F, buffer[start:stop]))
            position = stop
        self.buffer = buffer[position:]
        return frames
