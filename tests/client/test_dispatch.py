"""``client.dispatch.CallbackDispatcher``: stopping and joining its thread."""

from __future__ import annotations

import threading
import time

from rusty_ws.client.dispatch import QUEUE_BOUND, CallbackDispatcher
from support import WAIT


def test_stop_runs_what_was_queued_first() -> None:
    dispatcher = CallbackDispatcher("t", put_timeout=WAIT)
    ran: list[int] = []
    dispatcher.start()
    for i in range(3):
        dispatcher.call(ran.append, i)
    dispatcher.stop()
    dispatcher.stop()  # idempotent
    dispatcher.join(WAIT)
    assert not dispatcher.thread.is_alive()
    assert ran == [0, 1, 2]


def test_stop_never_blocks_on_a_full_queue() -> None:
    """With QUEUE_BOUND calls behind a stuck one, stop() drops the backlog instead of waiting for room."""
    dispatcher = CallbackDispatcher("t", put_timeout=10 * WAIT)
    entered, release = threading.Event(), threading.Event()
    ran: list[int] = []

    def stuck() -> None:
        entered.set()
        release.wait()

    dispatcher.start()
    try:
        dispatcher.call(stuck)
        assert entered.wait(WAIT)
        for i in range(QUEUE_BOUND):
            dispatcher.call(ran.append, i)
        started = time.monotonic()
        dispatcher.stop()
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert elapsed < WAIT  # a blocking put would have waited put_timeout, 10 * WAIT
    dispatcher.join(WAIT)
    assert not dispatcher.thread.is_alive()
    assert ran == []


def test_join_before_start_and_from_its_own_thread_returns_at_once() -> None:
    dispatcher = CallbackDispatcher("t", put_timeout=WAIT)
    dispatcher.join(None)  # not started: nothing to wait for
    joined = threading.Event()
    dispatcher.start()
    dispatcher.call(lambda: (dispatcher.join(None), joined.set()))
    assert joined.wait(WAIT)
    dispatcher.stop()
    dispatcher.join(WAIT)
    assert not dispatcher.thread.is_alive()
