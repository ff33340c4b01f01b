"""Server-to-client WebSocket frames, built once and shared (RFC 6455 section 5.2).

Frames a server sends are never masked, so one publish becomes one bytes
object that is written, as is, to every subscriber. This module is pure: no
sockets, no threads. Incoming frames are decoded by wsproto in the hub.
"""

from __future__ import annotations

import struct

__all__ = ["OP_TEXT", "OP_CLOSE", "OP_PING", "OP_PONG", "encode_frame", "text_frame", "close_frame"]

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_FIN = 0x80
#: A close frame's reason is at most 123 bytes, so the control frame fits in 125.
MAX_CLOSE_REASON_BYTES = 123


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, unfragmented frame carrying ``payload``."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN | opcode, length)
    elif length < 65536:
        header = struct.pack("!BBH", _FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, length)
    return header + payload


def text_frame(data: bytes | str) -> bytes:
    """A text frame; ``data`` is UTF-8 bytes or a str."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return encode_frame(OP_TEXT, data)


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and a reason cut to fit a control frame (whole characters)."""
    encoded = reason.encode("utf-8")[:MAX_CLOSE_REASON_BYTES]
    encoded = encoded.decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + encoded)
