"""``Hub.deliver_local`` with history: frames are queued under the history lock and written after it."""

from __future__ import annotations

import socket
import threading

import pytest

from rusty_ws import create_app
from rusty_ws.protocol import Delivery
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
