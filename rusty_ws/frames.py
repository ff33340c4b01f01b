"""WebSocket frames (RFC 6455 section 5), both ways, as pure functions: no sockets, no threads.

Out: frames a server sends are never masked, so one publish becomes one bytes
object written, as is, to every subscriber.

In: ``FrameParser`` decodes client frames. It replaces wsproto on the read
path because it is several times cheaper per frame and checks the message
size limit from frame headers, before a payload is buffered. (wsproto, via
simple-websocket, still does the HTTP handshake.)

Compression (permessage-deflate, RFC 7692), when ``RUSTY_WS_COMPRESSION``
enables it, is negotiated with ``server_no_context_takeover``: every server
message is compressed on its own, so one compressed frame still serves every
compressing subscriber of a publish. Client messages keep the client's
context, inflated by that connection's parser.
"""

from __future__ import annotations

import enum
import struct
import zlib

__all__ = [
    "OP_TEXT", "OP_CLOSE", "OP_PING", "OP_PONG", "encode_frame", "text_frame", "text_frames", "close_frame",
    "deflate_text_frame", "deflate_offer_to_accept", "ACCEPTED_DEFLATE", "FrameParser", "FrameEvent",
]

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_FIN = 0x80
_RSV1 = 0x40  # permessage-deflate: this message is compressed
#: RFC 7692 7.2.1: a compressed message ends without the 00 00 ff ff of a sync flush.
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
#: What rusty_ws answers to an acceptable permessage-deflate offer.
ACCEPTED_DEFLATE = "permessage-deflate; server_no_context_takeover"
#: A close frame's reason is at most 123 bytes, so the control frame fits in 125.
MAX_CLOSE_REASON_BYTES = 123


def encode_frame(opcode: int, payload: bytes, rsv: int = 0) -> bytes:
    """One unmasked, unfragmented frame carrying ``payload``."""
    length = len(payload)
    first = _FIN | rsv | opcode
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


#: A text frame's header for each payload length under 126, and the 16-bit length's packing.
_TEXT_HEADERS = tuple(struct.pack("!BB", _FIN | OP_TEXT, length) for length in range(126))
_pack_text_header_16 = struct.Struct("!BBH").pack


def text_frame(data: bytes | str) -> bytes:
    """A text frame; ``data`` is UTF-8 bytes or a str."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    # encode_frame(OP_TEXT, data), inlined: once per publish.
    length = len(data)
    if length < 126:
        return _TEXT_HEADERS[length] + data
    if length < 65536:
        return _pack_text_header_16(_FIN | OP_TEXT, 126, length) + data
    return encode_frame(OP_TEXT, data)


def text_frames(texts: list[bytes]) -> list[bytes]:
    """``text_frame`` of each of ``texts`` (UTF-8 bytes): a run of deliveries framed in one call,
    without a call per frame."""
    headers, pack, first = _TEXT_HEADERS, _pack_text_header_16, _FIN | OP_TEXT
    frames = []
    for text in texts:
        length = len(text)
        if length < 126:
            frames.append(headers[length] + text)
        elif length < 65536:
            frames.append(pack(first, 126, length) + text)
        else:
            frames.append(encode_frame(OP_TEXT, text))
    return frames


def deflate_text_frame(data: bytes, level: int) -> bytes:
    """A compressed text frame (RSV1) that any permessage-deflate peer can read.

    Compressed with a fresh context, as ``server_no_context_takeover`` promises:
    the same bytes are valid on every compressing connection.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return encode_frame(OP_TEXT, body[:-4] if body.endswith(_DEFLATE_TAIL) else body, _RSV1)


def deflate_offer_to_accept(header: str | None) -> bool:
    """Whether a ``Sec-WebSocket-Extensions`` offer lets us answer ``ACCEPTED_DEFLATE``.

    Yes when some permessage-deflate offer in it has only parameters that
    answer is compatible with; no when every offer would hold the server to
    a smaller window (``server_max_window_bits`` below 15) or names a
    parameter RFC 7692 does not define.
    """
    for offer in (header or "").split(","):
        name, *params = [part.strip() for part in offer.split(";")]
        if name.lower() != "permessage-deflate":
            continue
        acceptable = True
        for param in params:
            key, _, value = (part.strip().strip('"') for part in param.partition("="))
            key = key.lower()
            if key == "server_max_window_bits":
                acceptable &= value == "15"
            elif key == "client_max_window_bits":
                acceptable &= value == "" or (value.isdigit() and 8 <= int(value) <= 15)
            elif key not in ("server_no_context_takeover", "client_no_context_takeover"):
                acceptable = False
        if acceptable:
            return True
    return False


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and a reason cut to fit a control frame (whole characters)."""
    encoded = reason.encode("utf-8")[:MAX_CLOSE_REASON_BYTES]
    encoded = encoded.decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + encoded)


# --------------------------------------------------------------------------- client frames

class FrameEvent(enum.Enum):
    """What a ``FrameParser.feed`` event is: the first item of its tuple. Compare with ``is``."""

    TEXT = "text"          #: ``(TEXT, str)``: a whole text message
    BINARY = "binary"      #: ``(BINARY, bytes)``: a whole binary message
    PING = "ping"          #: ``(PING, bytes)``: a ping control frame
    PONG = "pong"          #: ``(PONG, bytes)``: a pong control frame
    CLOSE = "close"        #: ``(CLOSE, code, reason)``: the peer's close frame
    TOO_BIG = "too_big"    #: ``(TOO_BIG,)``: a message over ``max_message_size``
    FAILED = "failed"      #: ``(FAILED, code, reason)``: the peer broke the protocol


# The parser's hot path reads these as module globals: on Python 3.11 every
# ``FrameEvent.TEXT`` is a metaclass attribute lookup, ~0.1 us each.
_TEXT, _BINARY, _PING, _PONG = FrameEvent.TEXT, FrameEvent.BINARY, FrameEvent.PING, FrameEvent.PONG
_CLOSE, _TOO_BIG, _FAILED = FrameEvent.CLOSE, FrameEvent.TOO_BIG, FrameEvent.FAILED
_ENDS = (_CLOSE, _FAILED)  # events after which the parser reads nothing more

_OP_CONTINUATION, _OP_BINARY = 0x0, 0x2
_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)
_ZERO_MASK = b"\0\0\0\0"
#: A continuation frame of a refused message: dropped, never reported.
_SKIPPED = ("skipped",)
#: Close codes a peer may send (RFC 6455 7.4): 1000-1003, 1007-1011, 3000-4999.
_VALID_CLOSE = set(range(1000, 1004)) | set(range(1007, 1012)) | set(range(3000, 5000))


def _unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes | bytearray:
    if mask == _ZERO_MASK or not payload:
        return payload
    length = len(payload)
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")


#: Payloads longer than this are unmasked a step at a time (a multiple of 4: each step
#: starts on the mask's first byte). In one go, a 1 MiB frame made five 1 MiB temporaries.
_UNMASK_STEP = 64 * 1024


def _unmask_large(buffer: bytearray, start: int, end: int, mask: bytes) -> bytearray:
    """``buffer[start:end]`` unmasked into a new bytearray, with temporaries of one step each."""
    out = bytearray(end - start)
    with memoryview(buffer) as source, memoryview(out) as target:
        if mask == _ZERO_MASK:
            target[:] = source[start:end]
            return out
        key = int.from_bytes(mask * (_UNMASK_STEP // 4), "big")
        for offset in range(0, end - start, _UNMASK_STEP):
            piece = source[start + offset:min(start + offset + _UNMASK_STEP, end)]
            count = len(piece)
            step_key = key if count == _UNMASK_STEP else key >> (8 * (_UNMASK_STEP - count))
            target[offset:offset + count] = (int.from_bytes(piece, "big") ^ step_key).to_bytes(count, "big")
            piece.release()
    return out


class FrameParser:
    """Client-to-server frames in, whole messages and control frames out (RFC 6455 section 5).

    ``feed(data)`` returns a list of events, tuples tagged with a ``FrameEvent``:

    - ``(TEXT, str)`` and ``(BINARY, bytes)``: a complete message, fragments joined;
    - ``(PING, bytes)``: a ping frame; only the last of those in the data fed, as a
      pong may answer only the most recent ping (RFC 6455 5.5.3): a flood of pings
      in one read costs one event and one pong, not one each;
    - ``(PONG, bytes)``: a pong frame;
    - ``(CLOSE, code, reason)``: the peer's close frame (code 1005 when it had none);
    - ``(TOO_BIG,)``: a message would exceed ``max_message_size``; checked from the
      frame headers. The refused message's bytes are then skipped unread, so the
      peer's answer to the close that follows is still seen;
    - ``(FAILED, code, reason)``: the peer broke the protocol (1002) or sent text
      that is not UTF-8 or compressed data that does not inflate (1007).

    What one message may cost: its payload, summed over its fragments, at most
    ``max_message_size``; and the frames of a fragmented message, headers
    included, at most twice that on the wire (``max_wire_bytes``), so that a
    message of endless empty or one-byte fragments is refused (TOO_BIG) like
    a big one. Fragments are assembled in one ``bytearray``: what a message
    holds while it arrives is its payload, not an object per fragment.

    With ``inflate`` (permessage-deflate was negotiated) a message whose first
    frame has RSV1 set is inflated, with the context kept from message to
    message until the client ends its deflate stream (a block with BFINAL
    set); the next message then starts a new one. The size limit also applies
    to the inflated message, which is never inflated past it.

    After CLOSE or FAILED the parser ignores everything else.
    """

    def __init__(self, max_message_size: int, inflate: bool = False) -> None:
        self.max_message_size = max_message_size
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if inflate else None
        self._compressed = False    # the message being assembled is compressed
        self._buffer = bytearray()
        #: The wire bytes (headers included) the frames of one fragmented message may take.
        self.max_wire_bytes = 2 * max_message_size
        self._message = bytearray()  # the fragments of the message being assembled
        self._fragment_opcode: int | None = None
        self._message_size = 0      # its payload bytes so far
        self._message_wire = 0      # its frames' bytes on the wire so far, headers included
        self._skip = 0              # bytes of a refused message still to drop as they arrive
        self._discarding = False    # continuation frames belong to a refused message
        self._pings = 0             # ping frames in this feed; past one, only the last is reported
        self._done = False

    def feed(self, data: bytes) -> list[tuple]:
        if self._done:
            return []
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data, self._skip = data[self._skip:], 0
        buffer = self._buffer
        buffer += data
        events: list[tuple] = []
        skipped = False  # an event is _SKIPPED: filtered out at the end
        # Frames short enough for the common path below: one whole masked text frame
        # (FIN, no RSV bit) outside a fragmented message is checked and decoded inline,
        # the same checks and the same event as _check_header and _frame make of it.
        short = min(_UNMASK_STEP, self.max_message_size)
        position, end = 0, len(buffer)
        while end - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            length, start = second & 0x7F, position + 2
            if length == 126:
                if end - start < 2:
                    break
                length = (buffer[start] << 8) | buffer[start + 1]
                start += 2
            elif length == 127:
                if end - start < 8:
                    break
                length = int.from_bytes(buffer[start:start + 8], "big")
                start += 8
            frame_end = start + 4 + length
            if first == 0x81 and second & 0x80 and length <= short and self._fragment_opcode is None:
                if end < frame_end:
                    break  # the rest of the frame has not arrived yet
                key = buffer[start:start + 4]
                text: bytes | bytearray = buffer[start + 4:frame_end]
                if length and key != _ZERO_MASK:  # _unmask, inlined: once per message
                    text = (int.from_bytes(text, "big")
                            ^ int.from_bytes((key * (length // 4 + 1))[:length], "big")).to_bytes(length, "big")
                position = frame_end
                try:
                    events.append((_TEXT, text.decode("utf-8")))
                except UnicodeDecodeError:
                    events.append((_FAILED, 1007, "text message is not valid UTF-8"))
                    break
                continue
            error = self._check_header(first, second, length)
            if error is not None:
                events.append(error)
                skipped = skipped or error is _SKIPPED
                if error[0] is _FAILED:
                    break
                # TOO_BIG, or the rest of a message refused as too big: drop it unread.
                if frame_end > end:
                    self._skip = frame_end - end
                    position = end
                    break
                position = frame_end
                continue
            if end < frame_end:
                break  # the rest of the frame has not arrived yet
            mask = bytes(buffer[start:start + 4])
            if length <= _UNMASK_STEP:
                payload = _unmask(bytes(buffer[start + 4:frame_end]), mask)
                event = self._frame(first & 0x80, first & 0x0F, payload, first & _RSV1, frame_end - position)
                position = frame_end
            else:
                # A big frame: let go of its raw bytes before its payload is decoded.
                payload = _unmask_large(buffer, start + 4, frame_end, mask)
                del buffer[:frame_end]
                event = self._frame(first & 0x80, first & 0x0F, payload, first & _RSV1, frame_end - position)
                position, end = 0, len(buffer)
            if event is not None:
                events.append(event)
                if event[0] in _ENDS:
                    break
        del buffer[:position]
        if events and events[-1][0] in _ENDS:
            self._done = True
            buffer.clear()
        if self._pings:
            if self._pings > 1:
                last = max(index for index, event in enumerate(events) if event[0] is _PING)
                events = [event for index, event in enumerate(events) if event[0] is not _PING or index == last]
            self._pings = 0
        return [event for event in events if event is not _SKIPPED] if skipped else events

    def _check_header(self, first: int, second: int, length: int) -> tuple | None:
        """Refuse a frame from its header alone: before its payload is waited for."""
        opcode = first & 0x0F
        if first & 0x70 and not (first & 0x70 == _RSV1 and self._inflater is not None
                                 and opcode in (OP_TEXT, _OP_BINARY)):
            return (_FAILED, 1002, "reserved bits set where no extension allows them")
        if not second & 0x80:
            return (_FAILED, 1002, "client frames must be masked")
        if opcode in _CONTROL:
            if not first & 0x80 or length > 125:
                return (_FAILED, 1002, "control frames must be whole and at most 125 bytes")
            return None
        if opcode not in (_OP_CONTINUATION, OP_TEXT, _OP_BINARY):
            return (_FAILED, 1002, f"unknown opcode {opcode}")
        if length >> 63:
            return (_FAILED, 1002, "frame length out of range")
        if self._discarding and opcode == _OP_CONTINUATION:
            self._discarding = not first & 0x80
            return _SKIPPED
        if self._message_size + length > self.max_message_size:
            return self._refuse_message(first & 0x80)
        return None

    def _refuse_message(self, fin: int) -> tuple:
        """Drop the message being assembled (its continuation frames too, unless ``fin``): TOO_BIG."""
        self._discarding = not fin
        self._message, self._fragment_opcode = bytearray(), None
        self._message_size = self._message_wire = 0
        return (_TOO_BIG,)

    def _frame(self, fin: int, opcode: int, payload: bytes | bytearray, compressed: int = 0, wire: int = 0) -> tuple | None:
        if opcode == OP_PING:
            self._pings += 1
            return (_PING, payload)
        if opcode == OP_PONG:
            return (_PONG, payload)
        if opcode == OP_CLOSE:
            return self._close(payload)
        if opcode == _OP_CONTINUATION:
            if self._fragment_opcode is None:
                return (_FAILED, 1002, "continuation frame without a message to continue")
        elif self._fragment_opcode is not None:
            return (_FAILED, 1002, "new message before the previous one was finished")
        else:
            self._fragment_opcode, self._compressed = opcode, bool(compressed)
        if not fin:
            # A fragment costs its header too: endless empty fragments end in TOO_BIG.
            self._message_wire += wire
            if self._message_wire > self.max_wire_bytes:
                return self._refuse_message(fin)
            self._message += payload
            self._message_size += len(payload)
            return None
        opcode, self._fragment_opcode = self._fragment_opcode, None
        if self._message_wire:  # it came in fragments (each adds at least 6)
            self._message += payload
            payload, self._message = self._message, bytearray()
            self._message_size = self._message_wire = 0
        if self._compressed:
            inflated = self._inflate(payload)
            if isinstance(inflated, tuple):
                return inflated
            payload = inflated
        if opcode == _OP_BINARY:
            return (_BINARY, bytes(payload))
        try:
            return (_TEXT, payload.decode("utf-8"))
        except UnicodeDecodeError:
            return (_FAILED, 1007, "text message is not valid UTF-8")

    def _inflate(self, payload: bytes | bytearray) -> bytes | tuple:
        """The inflated message, or the event that refuses it; never inflates past the limit."""
        inflater = self._inflater
        assert inflater is not None  # RSV1 is refused from the header otherwise
        try:
            data = inflater.decompress(payload + _DEFLATE_TAIL, self.max_message_size + 1)
        except zlib.error:
            return (_FAILED, 1007, "compressed message does not inflate")
        if len(data) > self.max_message_size or inflater.unconsumed_tail:
            # The context cannot go on from here; the connection closes (1009) anyway.
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            return (_TOO_BIG,)
        if inflater.eof:
            # The client ended its deflate stream (a block with BFINAL set, as zlib's
            # Z_FINISH makes): what follows it (our tail, any padding) is not data, and
            # the client's next message starts a new stream. The old inflater would read
            # every later message as empty.
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        return data

    @staticmethod
    def _close(payload: bytes | bytearray) -> tuple:
        if not payload:
            return (_CLOSE, 1005, "")
        if len(payload) < 2:
            return (_FAILED, 1002, "close frame with a one-byte payload")
        code = int.from_bytes(payload[:2], "big")
        if code not in _VALID_CLOSE:
            return (_FAILED, 1002, f"invalid close code {code}")
        try:
            return (_CLOSE, code, payload[2:].decode("utf-8"))
        except UnicodeDecodeError:
            return (_FAILED, 1007, "close reason is not valid UTF-8")
