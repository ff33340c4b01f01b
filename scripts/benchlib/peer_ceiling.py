"""Peer and ceiling: a single-threaded ``selectors`` server in pure Python, rusty_ws's text protocol.

What pure Python can push at best on this box: each delivery frame is encoded
once and the same bytes go to every subscriber. Two modes:

- ``coalesce`` (the ceiling): frames waiting for a socket are joined and
  written with one ``send`` per socket per loop turn;
- ``per-send``: one ``send()`` per delivery, to show what coalescing is worth.

It also understands ``blast:{count}|{topic}|{session}``: send ``count``
distinct deliveries to every subscriber at once, to measure how fast the load
generator itself can receive (the load generator's ceiling).

Run: ``python peer_ceiling.py PORT coalesce|per-send``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import selectors
import socket
import struct
import sys
from datetime import datetime, timezone

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


def server_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x80 | opcode, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    if mask == b"\0\0\0\0":
        return payload
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


PONG = server_frame(b"pong")


class Client:
    __slots__ = ("sock", "inbuf", "upgraded", "out", "session", "name", "keys", "watched", "dirty")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.upgraded = False
        self.out: list[bytes] = []
        self.session = "default"
        self.name = None
        self.keys: set = set()
        self.watched = False
        self.dirty = False


class Server:
    def __init__(self, port: int, coalesce: bool) -> None:
        self.coalesce = coalesce
        self.selector = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", port), backlog=4096)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.subscribers: dict[tuple[str, str], list[Client]] = {}
        self.dirty: list[Client] = []

    def run(self) -> None:
        print("ready", flush=True)
        while True:
            for key, mask in self.selector.select():
                client = key.data
                if client is None:
                    self.accept()
                    continue
                if mask & selectors.EVENT_WRITE:
                    self.flush(client)
                if mask & selectors.EVENT_READ:
                    self.read(client)
            dirty, self.dirty = self.dirty, []
            for client in dirty:
                client.dirty = False
                self.flush(client)

    def accept(self) -> None:
        for _ in range(1000):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.selector.register(sock, selectors.EVENT_READ, Client(sock))

    def drop(self, client: Client) -> None:
        for key in client.keys:
            self.subscribers[key].remove(client)
        self.selector.unregister(client.sock)
        client.sock.close()
        client.out = []

    def read(self, client: Client) -> None:
        try:
            data = client.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return
        buffer = client.inbuf + data
        if not client.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                client.inbuf = buffer
                return
            key = next(line.split(b":", 1)[1].strip() for line in buffer[:end].split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.send(client, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            client.upgraded = True
            buffer = buffer[end + 4:]
        position, end = 0, len(buffer)
        while end - position >= 6:
            first, second = buffer[position], buffer[position + 1]
            length, start = second & 0x7F, position + 2
            if length == 126:
                length = int.from_bytes(buffer[start:start + 2], "big")
                start += 2
            elif length == 127:
                length = int.from_bytes(buffer[start:start + 8], "big")
                start += 8
            if start + 4 + length > end:
                break
            payload = unmask(buffer[start + 4:start + 4 + length], buffer[start:start + 4])
            position = start + 4 + length
            opcode = first & 0x0F
            if opcode == 0x1:
                self.command(client, payload.decode("utf-8"))
            elif opcode == 0x9:
                self.send(client, server_frame(payload, 0xA))
            elif opcode == 0x8:
                self.send(client, server_frame(payload[:2], 0x8))
        client.inbuf = buffer[position:]

    def command(self, client: Client, text: str) -> None:
        if text == "ping":
            self.send(client, PONG)
            return
        verb, _, argument = text.partition(":")
        if verb == "publish-json":
            message = json.loads(argument)
            key = (message["topic"], message.get("session_id") or client.session)
            delivery = json.dumps({
                "publisher_name": message.get("publisher_name") or client.name or "anonymous",
                "topic": key[0],
                "payload": message.get("payload"),
                "timestamp": message.get("timestamp") or datetime.now(timezone.utc).isoformat(),
                "session_id": key[1],
            }, ensure_ascii=False, separators=(",", ":"))
            self.fan_out(self.subscribers.get(key, ()), server_frame(delivery.encode()))
        elif verb in ("subscribe", "unsubscribe"):
            topic, _, named = argument.partition("|")
            key = (topic, named or client.session)
            members = self.subscribers.setdefault(key, [])
            if verb == "subscribe" and key not in client.keys:
                members.append(client)
                client.keys.add(key)
            elif verb == "unsubscribe" and key in client.keys:
                members.remove(client)
                client.keys.discard(key)
        elif verb == "register-session":
            client.session = argument
        elif verb == "register-name":
            client.name = argument
        elif verb == "blast":
            count, topic, session = argument.split("|")
            blob = b"".join(server_frame(json.dumps({
                "publisher_name": "blast", "topic": topic, "payload": f"{seq:08d}|0|" + "x" * 80,
                "timestamp": "2024-01-24T10:25:37Z", "session_id": session,
            }, separators=(",", ":")).encode()) for seq in range(int(count)))
            self.fan_out(self.subscribers.get((topic, session), ()), blob)

    def fan_out(self, members, frame: bytes) -> None:
        if self.coalesce:
            dirty = self.dirty
            for member in members:
                member.out.append(frame)
                if not member.dirty:
                    member.dirty = True
                    dirty.append(member)
        else:
            for member in members:
                self.send(member, frame)

    def send(self, client: Client, data: bytes) -> None:
        """Write now if nothing is waiting, else queue behind what is."""
        if client.out:
            client.out.append(data)
            return
        try:
            sent = client.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return
        if sent < len(data):
            client.out.append(data[sent:])
            self.watch(client, True)

    def flush(self, client: Client) -> None:
        out = client.out
        while out:
            # Join at most 256 KiB per send: joining a whole backlog to send what fits is quadratic.
            count, size = 1, len(out[0])
            while count < len(out) and size < 262144:
                size += len(out[count])
                count += 1
            data = out[0] if count == 1 else b"".join(out[:count])
            try:
                sent = client.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                client.out = []
                return
            if sent < len(data):
                out[:count] = [memoryview(data)[sent:]]
                self.watch(client, True)
                return
            del out[:count]
        self.watch(client, False)

    def watch(self, client: Client, writable: bool) -> None:
        if writable != client.watched:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writable else 0)
            self.selector.modify(client.sock, events, client)
            client.watched = writable


if __name__ == "__main__":
    Server(int(sys.argv[1]), sys.argv[2] == "coalesce").run()
