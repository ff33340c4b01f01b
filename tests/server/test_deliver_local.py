"""``Hub.deliver_local`` with history: frames are queued under the history lock and written after it."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from rusty_ws import create_app
from rusty_ws.protocol import Delivery
from rusty_ws.server.shared_streams import RUN_JOB_BYTES
from rusty_ws.server.state import state_of
from support import WAIT, FrameReader, hub_config


class LockProbe:
    """A socket that records, on every send, whether the hub's history lock was held."""

    def __init__(self, sock: socket.socket, lock: "threading.RLock") -> None:
        self.sock, self.lock = sock, lock
        self.held_while_sending: list[bool] = []

    def send(self, data: bytes, flags: int = 0) -> int:
        self.held_while_sending.append(self._held())
        return self.sock.send(data, flags)

    def _held(self) -> bool:
        """Held by this thread (the lock is reentrant) or by any other."""
        if self.lock._is_owned():  # type: ignore[attr-defined]
            return True
        if self.lock.acquire(blocking=False):
            self.lock.release()
            return False
        return True

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


@pytest.mark.parametrize("in_a_batch", [True, False], ids=["publisher-thread", "listener-thread"])
def test_offsets_go_on_and_nothing_is_written_under_the_history_lock(in_a_batch: bool) -> None:
    hub = state_of(create_app(hub_config(history_size=10))).hub
    ours, theirs = socket.socketpair()
    theirs.settimeout(WAIT)
    probe = LockProbe(ours, hub._history_lock)
    try:
        box = hub.writer.attach(probe, "probe")  # type: ignore[arg-type]
        hub.subscribe(box, "T", "s")

        def publish(count: int) -> list[int]:
            return [hub.deliver_local(Delivery("p", "T", n, "2026-12-01T00:00:00Z", "s")).position.offset
                    for n in range(count)]

        if in_a_batch:
            with hub.writer.batch():
                offsets = publish(30)
        else:  # a thread outside any batch, as a broker's listener is
            done: list[list[int]] = []
            worker = threading.Thread(target=lambda: done.append(publish(30)))
            worker.start()
            worker.join(WAIT)
            [offsets] = done
        assert offsets == list(range(1, 31))
        frames, reader = [], FrameReader()
        for _ in range(1000):
            if len(frames) >= 30:
                break
            frames += [frame.payload for frame in reader.feed(theirs.recv(65536))]
        assert [b'"offset":%d,' % n in frame for n, frame in zip(range(1, 31), frames)] == [True] * 30
        assert probe.held_while_sending and not any(probe.held_while_sending)
    finally:
        hub.shutdown(WAIT)
        theirs.close()
        ours.close()


class SendCounter:
    """A socket that counts its sends (each writer job to it is at least one)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sends = sock, 0

    def send(self, data: bytes, flags: int = 0) -> int:
        self.sends += 1
        return self.sock.send(data, flags)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


@pytest.mark.parametrize("count", [1, 3, 700], ids=["one", "a-few", "past-one-job"])
def test_a_run_without_history_arrives_whole_in_order_in_few_writes(count: int) -> None:
    # Hub.deliver_run with history off (what a version-4 envelope brings): one look-up, the frames
    # joined (one writer job per RUN_JOB_BYTES), every delivery once, in order, none for another pair.
    hub = state_of(create_app(hub_config(history_size=0))).hub
    ours, theirs = socket.socketpair()
    other_ours, other_theirs = socket.socketpair()
    theirs.settimeout(WAIT)
    counter = SendCounter(ours)
    try:
        box = hub.writer.attach(counter, "counter")  # type: ignore[arg-type]
        hub.subscribe(box, "T", "s")
        other = hub.writer.attach(other_ours, "other")  # type: ignore[arg-type]
        hub.subscribe(other, "T", "other-session")
        payload = "x" * 100
        hub.deliver_run([Delivery("p", "T", f"{n}|{payload}", "2026-12-01T00:00:00Z", "s") for n in range(count)])
        frames, reader = [], FrameReader()
        for _ in range(10_000):
            if len(frames) >= count:
                break
            frames += [frame.payload for frame in reader.feed(theirs.recv(65536))]
        assert [json.loads(frame)["payload"].split("|")[0] for frame in frames] == [str(n) for n in range(count)]
        assert all(json.loads(frame)["session_id"] == "s" and "offset" not in json.loads(frame) for frame in frames)
        # 700 frames of ~190 bytes: three jobs of RUN_JOB_BYTES at most; a few: one write.
        assert counter.sends <= (1 if count <= 3 else 1 + count * 200 // RUN_JOB_BYTES + 1)
        other_theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            other_theirs.recv(1)  # nothing for the other pair's subscriber
        hub.deliver_run([Delivery("p", "T", "nobody", "ts", "no-subscriber")])  # no subscriber: nothing, no error
    finally:
        hub.shutdown(WAIT)
        for sock in (theirs, ours, other_ours, other_theirs):
            sock.close()


@contextlib.contextmanager
def _watched_streams() -> Iterator[tuple[Any, Any, socket.socket]]:
    """A hub's ``SharedStreams`` without a store, one watcher of ("T", "s") on a socketpair:
    (streams, the watcher's outbox, the socket its frames arrive on)."""
    from rusty_ws.server.shared_streams import SharedStreams

    hub = state_of(create_app(hub_config(history_size=0))).hub
    streams = SharedStreams(hub, store=None)  # type: ignore[arg-type]  # the framed roads never read the store
    ours, theirs = socket.socketpair()
    theirs.settimeout(WAIT)
    try:
        box = hub.writer.attach(ours, "watcher")
        hub.subscribe(box, "T", "s")
        yield streams, box, theirs
    finally:
        hub.shutdown(WAIT)
        theirs.close()


def _received(sock: socket.socket, count: int) -> list[bytes]:
    """The payloads of the next ``count`` frames on ``sock`` (fewer if 100 reads do not bring them)."""
    frames, reader = [], FrameReader()
    for _ in range(100):
        if len(frames) >= count:
            break
        frames += [frame.payload for frame in reader.feed(sock.recv(65536))]
    return frames


def test_a_run_of_this_nodes_own_publishes_is_framed_from_what_was_kept_as_deliveries_would_be() -> None:
    # SharedStreams.deliver_own (Redis history: this node's own envelope back, RedisHistory.take_own):
    # the kept encodings with the run's position spliced in, byte for byte what Delivery.encode() of
    # each with its offset gives; a publish delivered here already (None) keeps its offset skipped;
    # an outbox joining the pair buffers them as deliver_run does.
    from rusty_ws.brokers.base import own_deliveries
    from rusty_ws.server.shared_streams import _CatchUp

    with _watched_streams() as (streams, box, theirs):
        sent = [Delivery("p", "T", payload, "2026-12-01T00:00:00Z", "s", user)
                for payload, user in (("one", None), ({"n": 2, "é": [1.5]}, "alice"), ("three", None))]
        run = (("T", "s"), "ab12", 41, [sent[0].encode(), None, sent[2].encode()])
        streams.deliver_own(run)
        expected = [delivery.encode() for delivery in own_deliveries(run)]
        assert [json.loads(text)["offset"] for text in expected] == [41, 43]
        assert _received(theirs, 2) == expected
        streams._catching[("T", "s")] = {box: _CatchUp()}  # joining: still buffering its replay's live part
        streams.deliver_own(run)
        assert [(d.offset, data) for d, data in streams._catching[("T", "s")][box].buffer or []] == \
            [(41, expected[0]), (43, expected[1])]


def test_another_nodes_run_is_framed_from_its_encodings_as_deliveries_would_be() -> None:
    # SharedStreams.deliver_remote (Redis history: another node's version-5 envelope, decode_received):
    # the encodings with each offset spliced in, byte for byte Delivery.encode() of the decoded
    # deliveries; an outbox joining the pair mid-run buffers them with their offsets (deliver_run's road),
    # and once past its floor takes each exactly once.
    from rusty_ws.brokers.redis_codec import decode_envelopes, decode_received
    from rusty_ws.history import Position
    from rusty_ws.server.shared_streams import _CatchUp

    with _watched_streams() as (streams, box, theirs):
        sent = [Delivery("p", "T", payload, "2026-12-01T00:00:00Z", "s", user)
                for payload, user in (("one", None), ({"n": 2, "é": [1.5]}, "alice"), ("three\ud800", None))]
        data = b'{"v":5,"node":"other","epoch":"ab12","first":41,"seqs":[1,2,3],"deliveries":[%s]}' % (
            b",".join(delivery.encode() for delivery in sent))
        _, run = decode_received(data, ("T", "s"), None, "this-node")
        expected = [delivery.encode() for delivery in decode_envelopes(data, ("T", "s"))[1]]
        assert [json.loads(text)["offset"] for text in expected] == [41, 42, 43]
        streams.deliver_remote(run)  # type: ignore[arg-type]  # a RemoteRun
        assert _received(theirs, 3) == expected
        # Joining: still buffering its replay's live part, then past a floor of 41: 42 and 43 only.
        streams._catching[("T", "s")] = {box: _CatchUp()}
        streams.deliver_remote(run)  # type: ignore[arg-type]
        assert [(d.offset, text) for d, text in streams._catching[("T", "s")][box].buffer or []] == \
            list(zip([41, 42, 43], expected))
        streams._catching[("T", "s")] = {box: _CatchUp(buffer=None, floor=Position(41, "ab12"))}
        streams.deliver_remote(run)  # type: ignore[arg-type]
        assert _received(theirs, 2) == expected[1:] and ("T", "s") not in streams._catching  # in step from 42 on
        streams.deliver_remote(run)  # type: ignore[arg-type]  # in step: the framed road again
        assert _received(theirs, 3) == expected
