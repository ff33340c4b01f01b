"""After the upgrade: what a hostile peer can make a hub hold, each bound against a real hub.

Frames (fragments that never end, fragments of one byte), liveness (bytes that
are not an answer), queued memory (per outbox, counted as memory; over the
whole hub), one big delivery, and compressed messages that end their deflate
stream. Memory is read, where it matters, from ``/proc/<pid>/status`` of a
hub in a process of its own: ``VmHWM``, its peak resident memory, so that
nothing freed before the reading hides.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator

import pytest

from rusty_ws import create_app
from rusty_ws.config import Settings, total_queued_bytes_default
from rusty_ws.protocol import (
    CLOSE_CODE_EXPLANATIONS,
    Delivery,
    encode_ping,
    encode_publish,
    encode_register_name,
    encode_subscribe,
)
from rusty_ws.server.writer import OutboxState
from support import MS, RSV1, WAIT, Client, Frame, RawSocket, RunningServer, client_frame, hub_config, running_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The hub a subprocess runs: prints its port once it listens.
HUB_PROCESS = """
import json, sys
from rusty_ws import create_app
from rusty_ws.server.hub_server import make_server
server = make_server(create_app(json.loads(sys.argv[1])), "127.0.0.1", 0)
print(server.port, flush=True)
server.serve_forever(poll_interval=0.05)
"""
MiB = 1 << 20
MASK = b"abcd"
PING_FRAME = client_frame(b"", opcode=0x9, mask=MASK)


@contextlib.contextmanager
def hub_process(**overrides: object) -> Iterator[tuple[int, int]]:
    """A hub in a process of its own (``hub_config(**overrides)``): yields its pid and port; killed at the end."""
    process = subprocess.Popen(
        [sys.executable, "-c", HUB_PROCESS, json.dumps(hub_config(**overrides))],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        yield process.pid, int(process.stdout.readline())
    finally:
        process.kill()
        process.wait(WAIT)


def peak_memory(pid: int) -> int:
    """The process's peak resident memory so far (``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def close_code(raw: RawSocket, timeout: float = WAIT) -> int:
    """Read up to the server's close frame, answer it, wait for the end; return its code."""
    for _ in range(10_000):
        frame = raw.recv_frame(timeout)
        if frame.opcode == 0x8:
            break
    code, _reason = frame.close()
    with contextlib.suppress(OSError):  # a server that failed the connection reads nothing more
        raw.send_frame(0x8, frame.payload[:2])
    raw.read_until_eof()
    return code


def wait_for_pong(raw: RawSocket, payload: bytes) -> list[Frame]:
    """Read frames until the pong that answers our ping ``payload``; return the frames before it."""
    before = []
    for _ in range(1_000_000):
        frame = raw.recv_frame()
        if frame == (0x8A, payload):
            return before
        before.append(frame)
    raise AssertionError("no pong")


# --------------------------------------------------------------------------- 1. what one message may hold


def test_a_message_of_endless_empty_fragments_is_closed_1009() -> None:
    """Empty fragments used to add nothing to the size check: the message grew forever, no 1009."""
    with running_server(max_message_size=1024) as server:
        raw = RawSocket(server.port)
        raw.send_frame(0x1, b"publish-json:", fin=False)
        raw.sock.sendall(client_frame(b"", opcode=0x0, fin=False, mask=MASK) * 2000)  # 12 KB on the wire
        assert close_code(raw) == 1009
        raw.close()
        server.wait_connections(0)


def test_a_message_in_small_fragments_holds_about_its_own_size() -> None:
    """1 MiB in 8-byte fragments held 7 MiB (an object per fragment); 1-byte ones held 52 MiB."""
    with hub_process() as (pid, port):
        raw = RawSocket(port)
        raw.sync()
        before = peak_memory(pid)
        text = b"publish-json:" + b"x" * (MiB - 64)
        raw.sock.settimeout(10 * WAIT)  # 131,000 frames to parse before the pong: slow on a busy machine
        raw.send_frame(0x1, text[:8], fin=False, mask=MASK)
        raw.sock.sendall(b"".join(client_frame(text[start:start + 8], opcode=0x0, fin=False, mask=MASK)
                                  for start in range(8, len(text), 8)))
        raw.send_frame(0x9, b"held", mask=MASK)  # a ping between fragments: all of them were read once it is answered
        wait_for_pong(raw, b"held")
        held = peak_memory(pid) - before
        raw.send_frame(0x0, b"!", mask=MASK)  # the end of the message (not JSON: an error reply)
        assert raw.sync()[0].text().startswith("error:")
        finished = peak_memory(pid) - before
        raw.close()
    assert held < 2 * MiB, f"the unfinished message held {held / MiB:.1f} MiB"
    assert finished < 4 * MiB, f"finishing it took {finished / MiB:.1f} MiB"


def test_one_byte_fragments_are_refused_before_they_cost_the_hub() -> None:
    with hub_process(max_message_size=MiB) as (pid, port):
        raw = RawSocket(port)
        raw.sync()
        before = peak_memory(pid)
        raw.send_frame(0x1, b"p", fin=False, mask=MASK)
        with contextlib.suppress(OSError):  # the hub may stop reading once it refused the message
            raw.sock.sendall(client_frame(b"x", opcode=0x0, fin=False, mask=MASK) * 320_000)  # 2.2 MB
        assert close_code(raw, 5 * WAIT) == 1009  # 320,000 frames to parse first: slow on a busy machine
        grown = peak_memory(pid) - before
        raw.close()
    assert grown < 2 * MiB, f"the hub grew by {grown / MiB:.1f} MiB"


# --------------------------------------------------------------------------- 2. signs of life


@pytest.mark.parametrize("answer", ["a-byte-of-a-frame", "a-ping", "a-message"])
def test_only_a_pong_or_a_whole_message_answers_a_keepalive_ping(answer: str) -> None:
    """Any byte used to count: a peer trickling one byte per ping kept its slot forever."""
    with running_server(ping_interval=100 * MS, ping_timeout=200 * MS, max_connections=1) as server:
        raw = RawSocket(server.port)
        endless = client_frame(b"x" * 1000, mask=MASK)  # a text frame that is never finished
        if answer == "a-byte-of-a-frame":
            raw.sock.sendall(endless[:8])  # header, mask
        pings, frame = 0, None
        while pings < 8:
            frame = raw.recv_frame()
            if frame.opcode == 0x8:
                break
            if frame.opcode != 0x9:
                continue  # the replies to our pings and messages
            pings += 1
            if answer == "a-byte-of-a-frame":
                raw.sock.sendall(endless[7 + pings:8 + pings])
            elif answer == "a-ping":
                raw.send_frame(0x9, b"")
            else:
                raw.send_frame(0x1, encode_ping().encode())
        if answer == "a-message":
            assert pings == 8 and server.hub.counts()["connections"] == 1  # alive through 8 pings
            raw.close()
            return
        assert frame is not None and frame.close() == (4102, CLOSE_CODE_EXPLANATIONS[4102])
        assert pings == 1
        raw.read_until_eof()
        raw.close()
        server.wait_connections(0)
        with server.connect() as next_client:  # its slot is free again
            assert next_client.command(encode_ping()) == []


# --------------------------------------------------------------------------- 3. what a queued item costs


def test_a_ping_flood_queues_one_pong_per_read_not_one_per_ping() -> None:
    """Each queued pong was a tiny object (~57 bytes held for 2 on the wire): 100,000 of them here."""
    with running_server() as server:
        raw = RawSocket(server.port)
        raw.sock.sendall(PING_FRAME * 100_000 + client_frame(encode_ping().encode(), mask=MASK))
        before = []
        for _ in range(200_000):
            frame = raw.recv_frame()
            if frame == (0x81, b"pong"):
                break
            before.append(frame)
        pongs = [frame for frame in before if frame == (0x8A, b"")]
        assert len(pongs) == len(before) and len(pongs) < 1000  # at most one per read of the socket
        raw.close()


def test_a_ping_flood_from_a_peer_that_never_reads_does_not_grow_the_hub() -> None:
    """Two million queued pongs grew a hub by 115 MiB before the 4 MiB bound closed their connection."""
    with hub_process() as (pid, port):
        with Client(f"ws://127.0.0.1:{port}/ws", sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)) as client:
            client.sync()
            before = peak_memory(pid)
            sock = client.ws.sock
            flood = PING_FRAME * 10_000
            for _ in range(50):  # half a million pings, 3 MB, not reading
                sock.sendall(flood)
            sock.sendall(client_frame(encode_ping().encode(), mask=MASK))
            tail = b""
            for _ in range(1_000_000):  # now read everything, up to the reply to ``ping``
                data = sock.recv(65536)
                assert data, "the hub closed the connection"
                tail = (tail + data)[-32:]
                if b"\x81\x04pong" in tail:
                    break
            grown = peak_memory(pid) - before
    assert grown < 2 * MiB, f"the hub grew by {grown / MiB:.1f} MiB"


# --------------------------------------------------------------------------- 4. a bound over the whole hub


def test_past_the_hub_wide_budget_the_slowest_consumer_is_cut_first() -> None:
    """100 slow consumers held 3.9 MiB each and nothing bounded their sum."""
    bound = 512 * 1024
    payload = "p" * 8000
    topics = {"big": ("B1", "B2"), "small1": ("S1",), "small2": ("S2",)}  # frames of their own: no sharing
    with running_server(max_queued_bytes=bound, max_total_queued_bytes=bound, max_message_size=64 * 1024) as server, \
            server.connect() as publisher:
        small_buffers = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
        slow = {name: Client(server.ws_url, sockopt=small_buffers) for name in topics}
        for name, client in slow.items():
            client.command(encode_register_name(name))
            for topic in topics[name]:
                client.command(encode_subscribe(topic))
        outboxes = {}
        for connection in server.hub.connections():
            if connection.name in slow:
                # Small kernel buffers on the hub's side too, so what they do not take shows at once.
                connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                outboxes[connection.name] = connection.outbox
        for rounds in range(1, 41):
            for topic in ("B1", "B2", "S1", "S2"):  # "big" gets twice what each of the others gets
                publisher.command(encode_publish(topic, payload, timestamp=str(rounds)))  # queued once answered
            assert server.hub.writer.held_bytes() <= bound + bound // 16  # counted again every 1/16th
            if outboxes["big"].state is not OutboxState.OPEN:
                break
        # Alone, "big" would reach its own bound after ~31 rounds; the three together pass it at ~16.
        assert rounds < 24, f"the biggest consumer was cut after {rounds} rounds"
        assert outboxes["small1"].state is outboxes["small2"].state is OutboxState.OPEN
        received = [json.loads(text) for text in slow["small1"].sync()]  # a survivor loses nothing
        assert [delivery["timestamp"] for delivery in received] == [str(n) for n in range(1, rounds + 1)]
        assert slow["big"].recv_close() in ((4100, CLOSE_CODE_EXPLANATIONS[4100]), (1006, ""))
        for client in slow.values():
            client.close()


def test_the_hub_wide_budget_counts_a_publish_to_many_subscribers_once() -> None:
    """20 subscribers each waiting for most of one 250 KB frame is one frame held, not 20."""
    with running_server(max_message_size=256 * 1024, max_queued_bytes=300 * 1024,
                        max_total_queued_bytes=1024 * 1024) as server, server.connect() as publisher:
        subscribers = [RawSocket(server.port) for _ in range(20)]
        for raw in subscribers:
            raw.send_frame(0x1, encode_subscribe("T").encode())
            assert raw.sync() == []
        for connection in server.hub.connections():
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # most of it stays queued
        payload = "q" * (250 * 1000)
        publisher.send(encode_publish("T", payload))
        for raw in subscribers:  # the sum of their outboxes passed the budget; what they held did not
            assert json.loads(raw.recv_frame().payload)["payload"] == payload
            raw.close()


# --------------------------------------------------------------------------- 5. one big delivery


def test_settings_refuse_a_message_that_cannot_fit_in_a_queue() -> None:
    with pytest.raises(ValueError, match="MAX_QUEUED_BYTES=1048576: must hold one message of RUSTY_WS_MAX_MESSAGE_SIZE"):
        Settings.from_config(hub_config(max_message_size=MiB, max_queued_bytes=MiB))
    with pytest.raises(ValueError, match="MAX_QUEUED_BYTES"):
        create_app(hub_config(max_message_size=8 * MiB))  # over the default 4 MiB queue
    with pytest.raises(ValueError, match="MAX_TOTAL_QUEUED_BYTES=1048576: must be at least RUSTY_WS_MAX_QUEUED_BYTES"):
        Settings.from_config(hub_config(max_total_queued_bytes=MiB))
    assert Settings.from_config(hub_config(max_message_size=4 * MiB - 16 * 1024)).max_message_size == 4 * MiB - 16 * 1024
    default = Settings.from_config(hub_config()).max_total_queued_bytes
    assert default == total_queued_bytes_default() >= 64 * MiB
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert default <= max(64 * MiB, physical // 8)


def big_publish_with_a_lone_surrogate(size: int, n: int = 0) -> str:
    """A publish of ``size`` UTF-8 bytes: two-byte characters, and one ``\\ud800`` escape (literal JSON)."""
    head, tail = f'publish-json:{{"topic":"T","timestamp":"{n}","payload":"', '\\ud800"}'
    return head + "é" * ((size - len(head) - len(tail)) // 2) + tail


def test_a_lone_surrogate_no_longer_triples_a_delivery(server: RunningServer) -> None:
    with server.connect() as subscriber, server.connect() as publisher:
        subscriber.command(encode_subscribe("T"))
        command = big_publish_with_a_lone_surrogate(100_000)
        publisher.send(command)
        text = subscriber.recv()
        assert len(text.encode()) < len(command.encode()) + 300  # was 3x: all of it as ASCII escapes
        assert json.loads(text)["payload"] == "é" * ((100_000 - 62) // 2) + "\ud800"


def test_four_big_publishes_reach_a_subscriber_reading_at_full_speed(server: RunningServer) -> None:
    """Four 1 MiB publishes with a lone surrogate (each re-sent at 3 MiB) closed such a subscriber (4100)."""
    size = MiB - 16
    subscriber = RawSocket(server.port)  # reads as fast as the socket gives
    subscriber.send_frame(0x1, encode_subscribe("T").encode())
    assert subscriber.sync() == []
    received: list[Frame] = []
    reader = threading.Thread(target=lambda: received.extend(subscriber.recv_frame() for _ in range(4)),
                              name="test-reader")
    reader.start()
    with server.connect() as publisher:
        for n in range(4):
            publisher.send(big_publish_with_a_lone_surrogate(size, n))
        reader.join(WAIT)
    assert not reader.is_alive()
    assert [json.loads(frame.payload)["timestamp"] for frame in received] == ["0", "1", "2", "3"]
    assert max(len(frame.payload) for frame in received) < size + 300
    assert subscriber.sync() == []
    subscriber.close()


def test_one_delivery_bigger_than_the_queue_bound_reaches_a_fast_subscriber() -> None:
    """One frame bigger than RUSTY_WS_MAX_QUEUED_BYTES closed every subscriber with 4100."""
    with running_server(max_queued_bytes=80 * 1024, max_message_size=64 * 1024) as server, \
            server.connect() as first, server.connect() as second:
        for subscriber in (first, second):
            subscriber.command(encode_subscribe("T", "default"))
        payload = "big " * 100_000  # published by the app itself: 400 KB, five times the bound
        server.hub.publish(Delivery(publisher_name="app", topic="T", payload=payload,
                                    timestamp="2026-11-27T00:00:00Z", session_id="default"))
        for subscriber in (first, second):
            assert subscriber.recv_json()["payload"] == payload
            assert subscriber.command(encode_ping()) == []


# --------------------------------------------------------------------------- 6. deflate streams that end


def test_compressed_messages_that_each_end_their_deflate_stream() -> None:
    """After a message ending with a final deflate block (BFINAL), every later one was read as empty."""
    with running_server(compression=6) as server, server.connect() as subscriber:
        subscriber.command(encode_subscribe("T", "default"))
        raw = RawSocket(server.port, extensions="permessage-deflate; client_max_window_bits")
        assert "permessage-deflate" in raw.headers["sec-websocket-extensions"]
        for n in range(3):  # each compressed to its end, as zlib's Z_FINISH does
            compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            command = encode_publish("T", {"n": n, "text": "compress me " * 20}, session_id="default")
            raw.send_frame(0x1, compressor.compress(command.encode()) + compressor.flush(zlib.Z_FINISH), rsv=RSV1)
        assert raw.sync() == []  # no error reply: each one parsed
        assert [subscriber.recv_json()["payload"]["n"] for _ in range(3)] == [0, 1, 2]
        raw.close()
