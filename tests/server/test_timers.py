"""``Timers``: the heap of deadlines the writer's thread runs (token expiry, the wait for ``auth:``)."""

from __future__ import annotations

import math
import threading

from rusty_ws.server.timers import Timers
from rusty_ws.server.writer import Writer
from support import MS, WAIT


class TestHeap:
    def test_due_callbacks_run_earliest_first(self) -> None:
        timers, ran = Timers(), []
        timers.call_at(3.0, lambda: ran.append("c"))
        timers.call_at(1.0, lambda: ran.append("a"))
        timers.call_at(2.0, lambda: ran.append("b"))
        assert timers.next_due() == 1.0 and len(timers) == 3
        assert timers.run_due(2.5) == 2 and ran == ["a", "b"]
        assert timers.next_due() == 3.0
        timers.run_due(10.0)
        assert ran == ["a", "b", "c"] and timers.next_due() == math.inf and len(timers) == 0

    def test_cancel_is_idempotent_and_compacts(self) -> None:
        timers, ran = Timers(), []
        handles = [timers.call_at(float(n), lambda n=n: ran.append(n)) for n in range(1000)]
        for handle in handles[:900]:
            timers.cancel(handle)
            timers.cancel(handle)
        timers.cancel(None)
        assert len(timers) == 100 and len(timers._heap) < 300  # rebuilt without most cancelled ones
        timers.run_due(2000.0)
        assert ran == list(range(900, 1000))

    def test_an_earlier_deadline_wakes_the_runner(self) -> None:
        woken = []
        timers = Timers(wake=lambda: woken.append(1))
        timers.call_at(5.0, lambda: None)
        timers.call_at(9.0, lambda: None)  # not the earliest: no wake-up
        timers.call_at(1.0, lambda: None)
        assert len(woken) == 2

    def test_a_raising_callback_does_not_stop_the_others(self, caplog) -> None:
        timers, ran = Timers(), []
        timers.call_at(1.0, lambda: 1 / 0)
        timers.call_at(1.0, lambda: ran.append("next"))
        assert timers.run_due(1.0) == 2 and ran == ["next"]
        assert "ZeroDivisionError" in caplog.text


def test_the_writer_thread_runs_them_on_time_without_a_thread_of_their_own() -> None:
    import socket
    import time

    writer = Writer(max_queued_bytes=1 << 20, close_timeout=2.0)  # a 1-second housekeeping tick
    a, b = socket.socketpair()
    try:
        writer.attach(a, "t")  # starts rusty_ws-writer
        threads = threading.active_count()
        fired = threading.Event()
        ran_on: list[str] = []
        due = time.monotonic() + 100 * MS

        def callback() -> None:
            ran_on.append(threading.current_thread().name)
            fired.set()

        writer.timers.call_at(due, callback)
        assert fired.wait(WAIT)
        assert time.monotonic() - due < 200 * MS  # not held to the 1-second tick
        assert ran_on == ["rusty_ws-writer"] and threading.active_count() == threads
    finally:
        writer.stop(WAIT)
        a.close()
        b.close()
