"""The commands of one read: carried out together under the hub's history lock, in order, as before.

A connection holds ``Hub.commands_lock`` (the history lock) around all the
commands of one ``recv`` (docs/performance.md, "Many sessions"). These tests
send many frames in one write, so that one read brings them all, and check that
nothing of what a command does changed: its replies and deliveries in order,
bad frames among good ones, a connection failed half-way through a read (the
lock is let go: the hub serves everyone else), publishes from the app and
from other connections at once, and app hooks, which never run under it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask

from rusty_ws import PubSub, create_app
from rusty_ws.brokers import MemoryBroker
from rusty_ws.protocol import encode_ping, encode_subscribe
from rusty_ws.server.hub import Hub
from rusty_ws.server.state import state_of
from support import WAIT, Client, Frame, FrameReader, RawSocket, client_frame, hub_config, running_server


def text(verb: str, body: object) -> bytes:
    return client_frame(f"{verb}:{json.dumps(body)}".encode())


def publish(topic: str, payload: object, **fields: object) -> bytes:
    return text("publish-json", {"topic": topic, "payload": payload, "session_id": "s", **fields})


def texts(frames: list[Frame]) -> list[str]:
    return [frame.text() for frame in frames]


def test_one_read_of_mixed_commands_answers_each_in_order() -> None:
    with running_server() as server:
        raw = RawSocket(server.port)
        raw.send_frame(0x1, encode_subscribe("T", "s").encode())
        assert raw.sync() == []
        burst = b"".join([
            publish("T", 1, id="a1"),
            client_frame(encode_ping().encode()),
            client_frame(b'publish-json:{"topic": "T", "payload": '),  # not JSON
            publish("T", 2),
            client_frame(b"no-such-command"),
            client_frame(b"\x00\x01", opcode=0x2),  # binary: not a command
            client_frame(b"are you there", opcode=0x9),  # a WebSocket ping
            publish("T", 3, id="a3", publisher_name="server"),  # a name no client may use
            publish("T", 4, id="a4"),
        ])
        raw.sock.sendall(burst)
        before_pong = raw.sync()  # up to the burst's own ping's pong (the sync's own comes later)
        got = [*before_pong, Frame(0x81, b"pong"), *raw.sync()]
        kinds = _kinds(got, lambda delivery: delivery["payload"])
        assert kinds == [
            ("delivery", 1), ("ack", "a1"), ("pong", None), ("error", "invalid_json"), ("delivery", 2),
            ("error", "unknown_command"), ("error", "binary_not_supported"), ("pong-frame", b"are you there"),
            ("error", "reserved_name"), ("delivery", 4), ("ack", "a4"),
        ]
        offsets = [json.loads(frame.text())["offset"] for frame in got
                   if frame.opcode == 0x1 and frame.text().startswith("{")]
        assert offsets == [1, 2, 3]  # the refused publish took no offset
        raw.sock.close()


def test_a_read_that_fails_the_connection_half_way_keeps_what_came_before_and_lets_the_lock_go() -> None:
    with running_server(max_message_size=1024) as server:
        with server.connect() as watcher:
            watcher.command(encode_subscribe("T", "s"))
            for ending, code in ((client_frame(b"x" * 2000), 1009),  # too big, from its header
                                 (client_frame(b"late", opcode=0x3), 1002),  # a reserved opcode
                                 (client_frame(b"\xff\xfe", opcode=0x1), 1007)):  # not UTF-8
                raw = RawSocket(server.port)
                raw.sock.sendall(publish("T", "before-1") + publish("T", "before-2") + ending + publish("T", "after"))
                frames = []
                for _ in range(10):
                    frame = raw.recv_frame()
                    if frame.opcode == 0x8:
                        break
                    frames.append(frame)
                assert frame.close()[0] == code, frame
                assert frames == []  # it had published, not subscribed
                raw.sock.close()
                assert [json.loads(m)["payload"] for m in watcher.sync()] == ["before-1", "before-2"]
            # Nothing was left holding the history lock: a history query and a publish still answer.
            with server.connect() as other:
                other.send('history:{"topic": "T", "session_id": "s"}')
                reply = other.recv()
                assert reply.startswith("history:")
                assert [m["payload"] for m in json.loads(reply[len("history:"):])["messages"]] == [
                    "before-1", "before-2"] * 3
                other.send('publish-json:{"topic": "T", "session_id": "s", "payload": "still here"}')
                assert json.loads(watcher.recv())["payload"] == "still here"


def test_bursts_from_many_connections_and_the_app_keep_every_stream_whole_and_in_order() -> None:
    publishers, bursts, per_burst, from_app = 8, 20, 10, 200
    with running_server() as server:
        pubsub = state_of(server.app).pubsub
        watchers = [server.connect() for _ in range(2)]
        for watcher in watchers:
            watcher.command('subscribe-json:{"topic": "T", "session_id": "s"}')
        raws = [RawSocket(server.port) for _ in range(publishers)]

        def connection(index: int) -> None:
            for b in range(bursts):
                raws[index].sock.sendall(b"".join(publish("T", f"{index}:{b * per_burst + i}")
                                                  for i in range(per_burst)))

        def app() -> None:
            for i in range(from_app):
                pubsub.publish("s", "T", f"app:{i}")

        threads = [threading.Thread(target=connection, args=(i,)) for i in range(publishers)]
        threads.append(threading.Thread(target=app))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 4)
            assert not thread.is_alive()
        total = publishers * bursts * per_burst + from_app
        for watcher in watchers:
            seen: dict[str, list[int]] = {}
            offsets = []
            for _ in range(total):
                delivery = json.loads(watcher.recv())
                who, number = delivery["payload"].split(":")
                seen.setdefault(who, []).append(int(number))
                offsets.append(delivery["offset"])
            assert offsets == list(range(1, total + 1))
            assert seen == {**{str(i): list(range(bursts * per_burst)) for i in range(publishers)},
                            "app": list(range(from_app))}
            assert watcher.sync() == []
            watcher.close()
        for raw in raws:
            assert raw.sync() == []  # no error replies
            raw.sock.close()


def test_the_same_publish_id_from_two_connections_at_once_is_delivered_once() -> None:
    ids = 50
    with running_server() as server:
        with server.connect() as watcher:
            watcher.command(encode_subscribe("T", "s"))
            raws = [RawSocket(server.port) for _ in range(2)]
            burst = b"".join(publish("T", n, id=f"id-{n}") for n in range(ids))
            threads = [threading.Thread(target=raw.sock.sendall, args=(burst,)) for raw in raws]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
            acks = []
            for raw in raws:
                replies = texts(raw.sync())
                acks.append([json.loads(reply[4:]) for reply in replies])
                raw.sock.close()
            assert [[ack["id"] for ack in answers] for answers in acks] == [[f"id-{n}" for n in range(ids)]] * 2
            assert [ack["offset"] for ack in acks[0]] == [ack["offset"] for ack in acks[1]]  # one landing each
            assert sorted(json.loads(m)["payload"] for m in watcher.sync()) == list(range(ids))


def test_app_hooks_never_run_under_the_hubs_lock() -> None:
    """A permissions hook that waits for another thread's publish would deadlock under the lock."""
    app = Flask(__name__)
    app.config.update(hub_config())
    pubsub = PubSub(app)
    waited: list[bool] = []

    def permissions(username: str | None, session_id: str, topic: str, action: object) -> bool:
        if topic == "audited":
            other = threading.Thread(target=pubsub.publish, args=("s", "audit", f"{action} on {topic}"))
            other.start()
            other.join(WAIT)
            waited.append(not other.is_alive())
        return True

    pubsub.permissions(permissions)
    with running_server(app) as server:
        hub = state_of(app).hub
        assert hub.commands_lock() is not hub._history_lock
        with server.connect() as watcher:
            watcher.command(encode_subscribe("audit", "s"))
            raw = RawSocket(server.port)
            raw.sock.sendall(publish("audited", 1) + publish("audited", 2))
            assert raw.sync() == []
            assert waited == [True, True]
            assert [json.loads(m)["payload"] for m in watcher.sync()] == ["publish on audited"] * 2
            raw.sock.close()


def test_the_lock_is_held_only_with_history_on_and_the_in_process_broker() -> None:
    from rusty_ws.config import Settings

    with_history = Hub(Settings.from_config(hub_config()), MemoryBroker())
    without = Hub(Settings.from_config(hub_config(history_size=0)), MemoryBroker())
    try:
        assert with_history.commands_lock() is with_history._history_lock
        assert without.commands_lock() is not without._history_lock
        with without.commands_lock(), without.commands_lock():  # nothing held: reusable and reentrant
            pass
    finally:
        with_history.shutdown(WAIT)
        without.shutdown(WAIT)


def test_a_client_in_another_read_is_served_while_one_floods() -> None:
    with running_server() as server:
        flood = RawSocket(server.port)
        burst = b"".join(publish(f"t{i % 7}", "x" * 200) for i in range(300))
        with Client(server.ws_url) as other:
            for _ in range(10):
                flood.sock.sendall(burst)
                assert other.command(encode_ping()) == []  # answered between the flood's reads
        assert flood.sync() == []
        flood.sock.close()


class SendCounter:
    """The hub's end of a socket, counting the writer's sends (everything else passes through)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = 0

    def send(self, data: bytes, flags: int = 0) -> int:
        self.sends += 1
        return self.sock.send(data, flags)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


def _frames_until(reader: FrameReader, sock: socket.socket, count: int) -> list[Frame]:
    frames: list[Frame] = []
    for _ in range(1000):  # bounded: each recv brings at least a byte, WAIT each at most
        if len(frames) >= count:
            break
        frames += reader.feed(sock.recv(65536))
    return frames


def test_a_burst_past_the_idle_read_is_carried_out_as_one_batch() -> None:
    """An idle connection reads 479 bytes first; what else the burst brought joins that read.

    So the burst's deliveries and its pong leave in one send, not one for the
    first read's commands and one for the rest's.
    """
    hub = state_of(create_app(hub_config())).hub
    ours, theirs = socket.socketpair()
    theirs.settimeout(WAIT)
    counter = SendCounter(ours)
    serving = threading.Thread(target=hub.serve, args=(counter, None), daemon=True)
    serving.start()
    reader = FrameReader()
    try:
        theirs.sendall(client_frame(encode_subscribe("T", "s").encode()) + client_frame(encode_ping().encode()))
        assert [frame.text() for frame in _frames_until(reader, theirs, 1)] == ["pong"]
        before = counter.sends
        burst = b"".join(publish("T", f"{n:03d}" + "x" * 60) for n in range(20)) + client_frame(b"ping")
        assert 479 < len(burst) < 65536
        theirs.sendall(burst)
        got = [frame.text() for frame in _frames_until(reader, theirs, 21)]
        assert [json.loads(text)["payload"][:3] for text in got[:20]] == [f"{n:03d}" for n in range(20)]
        assert got[20:] == ["pong"]
        assert counter.sends - before == 1
    finally:
        theirs.close()
        serving.join(WAIT)
        hub.shutdown(WAIT)
        ours.close()


def test_a_burst_and_its_end_in_one_write_are_all_carried_out_before_the_end() -> None:
    """The non-blocking read after the idle one may bring the EOF too: the commands before it still run."""
    with running_server() as server:
        with server.connect() as watcher:
            watcher.command(encode_subscribe("T", "s"))
            raw = RawSocket(server.port)
            raw.sock.sendall(b"".join(publish("T", n) for n in range(30)) + client_frame(b"\x03\xe8", opcode=0x8))
            assert raw.recv_frame().close()[0] == 1000
            raw.sock.close()
            assert [json.loads(m)["payload"] for m in watcher.sync()] == list(range(30))


class RecvRecorder(SendCounter):
    """The socket, with the buffer size of each blocking ``recv`` recorded (after it returned)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.reads: list[tuple[int, int]] = []  # (buffer size, bytes brought)
        self.read = threading.Condition()

    def recv(self, size: int, flags: int = 0) -> bytes:
        data = self.sock.recv(size, flags)
        if not flags:
            with self.read:
                self.reads.append((size, len(data)))
                self.read.notify_all()
        return data


def test_after_a_burst_the_next_burst_takes_one_read_and_a_small_read_goes_back_to_the_idle_buffer() -> None:
    """A read that brought more than 479 bytes leaves a 4 KiB buffer for the next one; a small one, 479 again."""
    from rusty_ws.server.connection import IDLE_RECV_BYTES, WARM_RECV_BYTES

    hub = state_of(create_app(hub_config())).hub
    ours, theirs = socket.socketpair()
    theirs.settimeout(WAIT)
    recorder = RecvRecorder(ours)
    serving = threading.Thread(target=hub.serve, args=(recorder, None), daemon=True)
    serving.start()
    reader = FrameReader()

    def burst(first: int) -> bytes:
        return b"".join(publish("T", f"{n:03d}" + "x" * 100) for n in range(first, first + 8)) + client_frame(b"ping")

    def exchange(data: bytes, replies: int) -> list[tuple[int, int]]:
        with recorder.read:
            before = len(recorder.reads)
        theirs.sendall(data)
        got = _frames_until(reader, theirs, replies)
        assert len(got) == replies and got[-1].text() == "pong"
        with recorder.read:  # the read that brought them returned before their replies went out
            return recorder.reads[before:]

    try:
        hello = client_frame(encode_subscribe("T", "s").encode()) + client_frame(b"ping")
        assert exchange(hello, 1) == [(IDLE_RECV_BYTES, len(hello))]
        first = burst(0)
        assert IDLE_RECV_BYTES < len(first) < WARM_RECV_BYTES
        assert exchange(first, 9) == [(IDLE_RECV_BYTES, IDLE_RECV_BYTES)]  # and the rest without waiting
        assert exchange(burst(8), 9) == [(WARM_RECV_BYTES, len(first))]  # the whole burst in one read
        assert exchange(client_frame(b"ping"), 1) == [(WARM_RECV_BYTES, 10)]
        assert exchange(client_frame(b"ping"), 1) == [(IDLE_RECV_BYTES, 10)]  # idle again after a small read
    finally:
        theirs.close()
        serving.join(WAIT)
        hub.shutdown(WAIT)
        ours.close()


def _kinds(frames: list[Frame], what: Callable[[dict], object] = lambda delivery: (
        delivery["topic"], delivery["payload"], delivery.get("offset"))) -> list[tuple[str, object]]:
    """Each frame as (kind, what): a delivery's ``what`` (its topic, payload and offset unless told),
    a reply's code or id, a pong frame's payload."""
    kinds: list[tuple[str, object]] = []
    for frame in frames:
        if frame.opcode == 0xA:
            kinds.append(("pong-frame", frame.payload))
            continue
        reply = frame.text()
        if reply == "pong":
            kinds.append(("pong", None))
        elif reply.startswith("ack:"):
            kinds.append(("ack", json.loads(reply[4:])["id"]))
        elif reply.startswith("error:"):
            kinds.append(("error", json.loads(reply[6:])["code"]))
        else:
            kinds.append(("delivery", what(json.loads(reply))))
    return kinds


def test_a_reads_publishes_to_several_streams_keep_the_order_of_the_commands_between_them() -> None:
    """Consecutive publishes to one stream go to the hub as one run (``Hub.publish_run``); every other
    command, and a publish to another stream, ends the run first."""
    with running_server(server_only_topics=["locked"]) as server:
        raw = RawSocket(server.port)
        for topic in ("T", "U", "locked"):
            raw.send_frame(0x1, encode_subscribe(topic, "s").encode())
        assert raw.sync() == []
        raw.sock.sendall(b"".join([
            publish("T", 1), publish("T", 2), publish("U", 3), publish("T", 4),
            client_frame(encode_ping().encode()),
            publish("T", 5), publish("locked", 6), publish("T", 7),  # refused: its error between 5 and 7
            publish("T", 8, id="a8"), publish("T", 9), publish("T", 10, timestamp="given"),
            client_frame(b'publish-json:{"topic":"T","session_id":"other","payload":11}'),  # another stream
            publish("T", 12),
        ]))
        before_pong = raw.sync()
        got = [*before_pong, Frame(0x81, b"pong"), *raw.sync()]
        assert _kinds(got) == [
            ("delivery", ("T", 1, 1)), ("delivery", ("T", 2, 2)), ("delivery", ("U", 3, 1)),
            ("delivery", ("T", 4, 3)), ("pong", None), ("delivery", ("T", 5, 4)), ("error", "forbidden_topic"),
            ("delivery", ("T", 7, 5)), ("delivery", ("T", 8, 6)), ("ack", "a8"), ("delivery", ("T", 9, 7)),
            ("delivery", ("T", 10, 8)), ("delivery", ("T", 12, 9)),  # not subscribed to T in "other"
        ]
        assert json.loads(got[-2].text())["timestamp"] == "given"
        raw.sock.close()


def test_the_publishes_of_one_read_go_to_the_hub_as_one_run_with_one_timestamp() -> None:
    """What a run costs is what it saves: one call for the read's publishes to a stream, one clock reading."""
    hub = state_of(create_app(hub_config())).hub
    runs: list[int] = []
    one_by_one: list[object] = []
    publish_run, single = hub.publish_run, hub.publish

    def counted_run(*args: Any) -> None:
        runs.append(len(args[-1]))
        publish_run(*args)

    def counted_publish(*args: Any) -> Any:
        one_by_one.append(args)
        return single(*args)

    hub.publish_run = counted_run  # type: ignore[method-assign]
    hub.publish = counted_publish  # type: ignore[method-assign]
    ours, theirs = socket.socketpair()
    theirs.settimeout(WAIT)
    serving = threading.Thread(target=hub.serve, args=(ours, None), daemon=True)
    serving.start()
    reader = FrameReader()
    try:
        theirs.sendall(client_frame(encode_subscribe("T", "s").encode()) + client_frame(encode_ping().encode()))
        assert [frame.text() for frame in _frames_until(reader, theirs, 1)] == ["pong"]
        burst = b"".join(publish("T", n) for n in range(3)) + publish("T", 3, timestamp="mine")
        assert len(burst) < 479  # one idle read brings it all
        theirs.sendall(burst)
        got = [json.loads(frame.text()) for frame in _frames_until(reader, theirs, 4)]
        assert [delivery["payload"] for delivery in got] == [0, 1, 2, 3]
        assert runs == [4] and one_by_one == []
        assert len({delivery["timestamp"] for delivery in got[:3]}) == 1  # they arrived together
        assert got[0]["timestamp"].endswith("+00:00") and got[3]["timestamp"] == "mine"
    finally:
        theirs.close()
        serving.join(WAIT)
        hub.shutdown(WAIT)
        ours.close()


def test_with_history_off_bursts_from_many_connections_keep_each_stream_in_order() -> None:
    publishers, bursts, per_burst = 6, 10, 12
    with running_server(history_size=0) as server:
        with server.connect() as watcher:
            watcher.command(encode_subscribe("T", "s"))
            raws = [RawSocket(server.port) for _ in range(publishers)]

            def connection(index: int) -> None:
                for b in range(bursts):
                    raws[index].sock.sendall(b"".join(publish("T", f"{index}:{b * per_burst + i}")
                                                      for i in range(per_burst)))

            threads = [threading.Thread(target=connection, args=(i,)) for i in range(publishers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT * 4)
                assert not thread.is_alive()
            seen: dict[str, list[int]] = {}
            for _ in range(publishers * bursts * per_burst):
                delivery = json.loads(watcher.recv())
                assert "offset" not in delivery
                who, number = delivery["payload"].split(":")
                seen.setdefault(who, []).append(int(number))
            assert seen == {str(i): list(range(bursts * per_burst)) for i in range(publishers)}
            assert watcher.sync() == []
            for raw in raws:
                assert raw.sync() == []
                raw.sock.close()
