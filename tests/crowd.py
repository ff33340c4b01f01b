"""Many raw WebSocket clients on one selector: what a test needs to hold a thousand connections cheaply.

``Crowd(port, count)`` opens ``count`` connections, each sending its handshake
and then ``frames`` (by default a subscription to ``T`` in session ``s``, then
``ping``) without waiting for the 101, as the load generator does. ``wait_for``
reads every socket until each has a text frame for which a predicate holds, or
the time is up. Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
import selectors
import socket
import time
from collections.abc import Callable

from support import WAIT, FrameReader, client_frame


def handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class Member:
    """One connection of a crowd: its socket, the head of the answer, and the text frames since."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.head = b""
        self.status: int | None = None
        self.reader = FrameReader()
        self.texts: list[str] = []
        self.closed = False


class Crowd:
    def __init__(self, port: int, count: int, frames: list[bytes] | None = None, batch: int = 100) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.members: list[Member] = []
        frames = [client_frame(b"subscribe:T|s"), client_frame(b"ping")] if frames is None else frames
        for start in range(0, count, batch):  # in batches, so the listen backlog is not what is tested
            for _ in range(min(batch, count - start)):
                sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
                sock.sendall(handshake(port) + b"".join(frames))
                sock.setblocking(False)
                member = Member(sock)
                self.selector.register(sock, selectors.EVENT_READ, member)
                self.members.append(member)
            self.wait_for(lambda text: text == "pong", self.members[start:])

    def wait_for(self, holds: Callable[[str], bool], members: list[Member] | None = None,
                 timeout: float = 10 * WAIT) -> None:
        """Read until every member (of ``members``) has a text frame for which ``holds``; AssertionError past ``timeout``."""
        waiting = {id(m): m for m in (self.members if members is None else members)
                   if not any(holds(text) for text in m.texts)}
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for key, _ in self.selector.select(max(0.0, deadline - time.monotonic())):
                member: Member = key.data
                self._read(member)
                if id(member) in waiting and any(holds(text) for text in member.texts):
                    del waiting[id(member)]
        statuses = sorted({m.status for m in waiting.values()}, key=str)
        assert not waiting, f"{len(waiting)} connections without it (answers {statuses})"

    def _read(self, member: Member) -> None:
        try:
            data = member.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            member.closed = True
            self.selector.unregister(member.sock)
            return
        if member.status is None:
            member.head += data
            end = member.head.find(b"\r\n\r\n")
            if end < 0:
                return
            member.status = int(member.head.split(b" ", 2)[1])
            data = member.head[end + 4:]
        if member.status == 101:
            member.texts += [frame.text() for frame in member.reader.feed(data) if frame.opcode == 0x1]

    def close(self) -> None:
        for member in self.members:
            member.sock.close()
        self.selector.close()
