"""One load-generator process: many WebSocket connections on one selector loop.

The driver (``scripts/bench.py``) starts several of these with a JSON spec on
stdin. Each opens its connections, sets them up (session, subscription), says
``ready`` on stdout, and then:

- ``subscribe`` role: counts deliveries until every connection has its
  ``expect`` messages (checking order and session on every frame) or time runs out;
- ``publish`` role: waits for ``go`` on stdin, publishes ``count`` messages
  (as fast as the server takes them, or at ``rate`` per second);
- ``pairs`` role: connections in pairs sharing a session, each publishing
  ``count`` messages to the other after ``go`` (with ``port_b``, the second of
  each pair connects to that server: the two clients on different nodes).
- ``connect`` and ``storm`` roles: see ``loadgen_storm.py``.

With ``"deflate": true`` in the spec, connections offer permessage-deflate and
inflate what arrives compressed (publishes go out uncompressed).

It ends by printing one JSON line of results. Every loop is bounded by
``deadline`` seconds. Two wire dialects: ``rusty`` (our text protocol, also
spoken by the websockets and ceiling peers) and ``socketio`` (Engine.IO 4).
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import socket
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib.wire import COMPRESSED_TEXT, DEFLATE_TAIL, FrameReader, client_frame, handshake, pong_frame

PAD = "x" * 80  # payloads are ~100 bytes: an 8-digit sequence number, a send time, padding


class Dialect:
    """How one server family spells setup, publish and delivery."""

    path = "/ws"

    def setup(self, conn: "Conn") -> list[bytes]:
        raise NotImplementedError

    def publish(self, topic: str, session: str, payload: str) -> bytes:
        raise NotImplementedError

    def on_text(self, conn: "Conn", data: bytes) -> bytes | None:
        """Handle a non-delivery frame; return the delivery's JSON bytes, or None."""
        raise NotImplementedError


class Rusty(Dialect):
    def setup(self, conn: "Conn") -> list[bytes]:
        frames = [client_frame(f"register-session:{conn.session}".encode())]
        if conn.topic:
            frames.append(client_frame(f"subscribe:{conn.topic}|{conn.session}".encode()))
        frames.append(client_frame(b"ping"))
        return frames

    def publish(self, topic: str, session: str, payload: str) -> bytes:
        return client_frame(b'publish-json:{"topic":"%s","session_id":"%s","payload":"%s"}'
                            % (topic.encode(), session.encode(), payload.encode()))

    def on_text(self, conn: "Conn", data: bytes) -> bytes | None:
        if data == b"pong":
            conn.ready = True
            return None
        if data.startswith(b"error:"):
            conn.errors += 1
            return None
        return data


class SocketIO(Dialect):
    path = "/socket.io/?EIO=4&transport=websocket"

    def setup(self, conn: "Conn") -> list[bytes]:
        return []  # waits for the Engine.IO open packet first

    def publish(self, topic: str, session: str, payload: str) -> bytes:
        return client_frame(b'42["publish",{"topic":"%s","session_id":"%s","payload":"%s"}]'
                            % (topic.encode(), session.encode(), payload.encode()))

    def on_text(self, conn: "Conn", data: bytes) -> bytes | None:
        kind = data[:1]
        if kind == b"4":
            if data.startswith(b'42["message",'):
                return data[13:-1]
            if data.startswith(b"40"):  # namespace connected: join the room
                conn.send(client_frame(b'421["join",{"session":"%s","topic":"%s"}]'
                                       % (conn.session.encode(), (conn.topic or "").encode())))
            elif data.startswith(b"431"):  # the join's acknowledgement
                conn.ready = True
            return None
        if kind == b"0":  # Engine.IO open
            conn.send(client_frame(b"40"))
        elif kind == b"2":  # Engine.IO ping
            conn.send(client_frame(b"3"))
        return None


DIALECTS = {"rusty": Rusty(), "socketio": SocketIO()}


class Conn:
    __slots__ = ("sock", "selector", "reader", "session", "topic", "ready", "upgraded", "head", "out", "count",
                 "expect", "last_seq", "disorder", "foreign", "errors", "session_marker", "first", "last",
                 "closed", "inflater", "compressed", "close_reason", "close_code")

    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector, session: str, topic: str | None,
                 expect: int) -> None:
        self.sock = sock
        self.selector = selector
        self.reader = FrameReader()
        self.session, self.topic, self.expect = session, topic, expect
        self.ready = self.upgraded = self.closed = False
        self.close_reason = ""  # the reason of the server's close frame, if one came
        self.close_code = 0  # its code (1005 for none), 0 while no close frame came
        self.head = b""
        self.out = b""
        self.count = self.disorder = self.foreign = self.errors = self.compressed = 0
        self.last_seq = -1
        self.session_marker = b'"session_id":"%s"' % session.encode()
        self.first = self.last = 0.0
        self.inflater: "zlib._Decompress | None" = None  # set when the spec offers permessage-deflate

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self.out = data[sent:]
            # The server is not reading as fast as we write: flush when the socket has room.
            self.selector.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def flush(self) -> None:
        if self.out and not self.closed:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                return
            self.out = self.out[sent:]
            if not self.out:
                self.selector.modify(self.sock, selectors.EVENT_READ, self)


class LoadGen:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.dialect = DIALECTS[spec["dialect"]]
        self.selector = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.deadline = time.monotonic() + spec.get("deadline", 60)
        self.latencies: list[int] = []
        self.measure_latency = spec.get("latency", False)

    # -------------------------------------------------------------- connecting

    def open(self, session: str, topic: str | None, expect: int, port: int | None = None) -> Conn:
        port = port or self.spec["port"]
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deflate = self.spec.get("deflate", False)
        sock.sendall(handshake("127.0.0.1", port, self.dialect.path, offer_deflate=deflate))
        sock.setblocking(False)
        conn = Conn(sock, self.selector, session, topic, expect)
        if deflate:
            # One context for the connection's life: right with or without server context takeover.
            conn.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        self.conns.append(conn)
        return conn

    def connect_all(self, wanted: list[tuple]) -> None:
        """Open connections in batches, so a server's listen backlog is not flooded.

        Each wanted connection is (session, topic, expect) or (session, topic, expect, port).
        """
        batch = self.spec.get("batch", 200)
        for start in range(0, len(wanted), batch):
            opened = [self.open(*connection) for connection in wanted[start:start + batch]]
            # The batch's own, not every connection's: the earlier batches are ready, and a walk over
            # all of them at each select made the generator's CPU grow with the connections it held.
            self.run_until(lambda opened=opened: all(c.ready for c in opened), "connect")

    # -------------------------------------------------------------- the loop

    def run_until(self, done, stage: str) -> None:
        select = self.selector.select
        for _ in range(100_000_000):
            if done():
                return
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"deadline passed during {stage}")
            for key, mask in select(0.05):
                if mask & selectors.EVENT_WRITE:
                    key.data.flush()
                if mask & selectors.EVENT_READ:
                    self.on_readable(key.data)

    def on_readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(conn.sock)
            conn.closed = True
            return
        if not conn.upgraded:
            conn.head += data
            end = conn.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in conn.head[:20]:
                raise ConnectionError(f"handshake refused: {conn.head[:60]!r}")
            conn.upgraded = True
            data = conn.head[end + 4:]
            for frame in self.dialect.setup(conn):
                conn.send(frame)
            if not data:
                return
        now = time.monotonic()
        on_text = self.dialect.on_text
        for opcode, payload in conn.reader.feed(data):
            if opcode == COMPRESSED_TEXT and conn.inflater is not None:
                opcode, payload = 0x1, conn.inflater.decompress(payload + DEFLATE_TAIL)
                conn.compressed += 1
            if opcode == 0x1:
                body = on_text(conn, payload) if payload[:1] != b"{" else payload
                if body is not None:
                    self.on_delivery(conn, body, now)
            elif opcode == 0x9:
                conn.send(pong_frame(payload))
            elif opcode == 0x8:
                conn.closed = True
                conn.close_reason = payload[2:].decode("utf-8", "replace")
                conn.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        conn.flush()

    def on_delivery(self, conn: Conn, body: bytes, now: float) -> None:
        if not conn.count:
            conn.first = now
        conn.count += 1
        conn.last = now
        at = body.find(b'"payload":"') + 11
        seq = int(body[at:at + 8])
        if seq != conn.last_seq + 1:
            conn.disorder += 1
        conn.last_seq = seq
        if conn.session_marker not in body:
            conn.foreign += 1
        if self.measure_latency:
            sent = float(body[at + 9:at + 26])
            self.latencies.append(int((time.time() - sent) * 1e6))

    # -------------------------------------------------------------- roles

    def wait_for_go(self) -> None:
        print("ready", flush=True)
        line = sys.stdin.readline().strip()
        if line != "go":
            raise SystemExit(f"expected go, got {line!r}")

    def role_subscribe(self) -> dict:
        spec = self.spec
        wanted = [(spec["session"], spec["topic"], spec["expect"])] * spec["connections"]
        self.connect_all(wanted)
        print("ready", flush=True)
        self.run_until(lambda: all(c.count >= c.expect or c.closed for c in self.conns), "receive")
        return self.report()

    def role_publish(self) -> dict:
        spec = self.spec
        conn = self.open(spec["session"], None, 0)
        self.run_until(lambda: conn.ready, "connect")
        self.wait_for_go()
        topic, session, count, rate = spec["topic"], spec["session"], spec["count"], spec.get("rate")
        started = time.monotonic()
        if spec.get("blast"):  # the ceiling peer sends `count` deliveries to every subscriber at once
            conn.send(client_frame(f"blast:{count}|{topic}|{session}".encode()))
        elif rate:
            interval = 1.0 / rate
            for seq in range(count):
                due = started + seq * interval
                while True:
                    now = time.monotonic()
                    if now >= due or now > self.deadline:
                        break
                    for key, mask in self.selector.select(due - now):
                        if mask & selectors.EVENT_WRITE:
                            key.data.flush()
                        if mask & selectors.EVENT_READ:
                            self.on_readable(key.data)
                conn.send(self.dialect.publish(topic, session, f"{seq:08d}|{time.time():.6f}|{PAD}"))
        else:
            frames = [self.dialect.publish(topic, session, f"{seq:08d}|{0:.6f}|{PAD}") for seq in range(count)]
            batch = spec.get("batch_frames", 64)
            for start in range(0, count, batch):
                conn.send(b"".join(frames[start:start + batch]))
                self.run_until(lambda: not conn.out, "publish")  # TCP backpressure = the server's pace
        finished = time.monotonic()
        self.run_until(lambda: not conn.out, "flush")
        return {"started": started, "finished": finished, "errors": conn.errors}

    def role_pairs(self) -> dict:
        spec = self.spec
        count, first = spec["count"], spec["first_pair"]
        wanted = []
        port_b = spec.get("port_b") or spec["port"]  # the multi-node scenario: b on another node
        for pair in range(first, first + spec["pairs"]):
            session = f"s{pair}"
            wanted += [(session, f"to-a-{pair}", count), (session, f"to-b-{pair}", count, port_b)]
        self.connect_all(wanted)
        self.wait_for_go()
        outgoing = []
        for i in range(0, len(self.conns), 2):
            a, b = self.conns[i], self.conns[i + 1]
            outgoing.append((a, [self.dialect.publish(b.topic, b.session, f"{s:08d}|0|{PAD}") for s in range(count)]))
            outgoing.append((b, [self.dialect.publish(a.topic, a.session, f"{s:08d}|0|{PAD}") for s in range(count)]))
        batch = spec.get("batch_frames", 8)
        started = time.monotonic()
        for start in range(0, count, batch):
            for conn, frames in outgoing:
                conn.send(b"".join(frames[start:start + batch]))
            self.run_until(lambda: all(not c.out for c in self.conns), "publish")
        self.run_until(lambda: all(c.count >= c.expect or c.closed for c in self.conns), "receive")
        report = self.report()
        report["started"] = started
        return report

    def report(self) -> dict:
        conns = self.conns
        received = [c for c in conns if c.count]
        return {
            "connections": len(conns),
            "delivered": sum(c.count for c in conns),
            "expected": sum(c.expect for c in conns),
            "disorder": sum(c.disorder for c in conns),
            "foreign": sum(c.foreign for c in conns),
            "errors": sum(c.errors for c in conns),
            "closed": sum(1 for c in conns if c.closed),
            "close_codes": sorted({f"{c.close_code} {c.close_reason}"[:60] for c in conns if c.close_code}),
            "compressed": sum(c.compressed for c in conns),
            "first": min((c.first for c in received), default=0.0),
            "last": max((c.last for c in received), default=0.0),
            "latencies_us": self.latencies,
        }


def main() -> None:
    gc.disable()  # a collector pause here would be charged to the server's latency
    spec = json.loads(sys.stdin.readline())
    if spec["role"] in ("connect", "storm"):
        from benchlib.loadgen_storm import StormGen  # its roles, in a module of their own
        generator: LoadGen = StormGen(spec)
    else:
        generator = LoadGen(spec)
    try:
        result = getattr(generator, "role_" + spec["role"])()
    except (TimeoutError, ConnectionError, OSError) as exc:
        result = {"failed": f"{type(exc).__name__}: {exc}", **generator.report()}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
