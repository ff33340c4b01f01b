"""``request_threads.py``: a thread started without waiting for it to run, and the accept thread's window of them.

A new thread runs only once it has the interpreter lock. With the switch
interval raised for the test, the test's thread keeps the lock until it blocks,
so "started but not run yet" is a state the test holds, not a race it hopes for.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

from rusty_ws.server.request_threads import RequestThread, StartWindow
from tests.support import WAIT, Client, running_server


@contextlib.contextmanager
def lock_kept() -> Iterator[None]:
    """The test's thread keeps the interpreter lock until it blocks (a switch interval of 100 s)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def _ran(event: threading.Event) -> RequestThread:
    return RequestThread(target=event.set, name="test-request-thread", daemon=True)


class TestRequestThread:
    def test_start_returns_before_the_thread_runs(self) -> None:
        ran = threading.Event()
        thread = _ran(ran)
        with lock_kept():
            thread.start()
            not_yet = not thread.started.is_set() and not ran.is_set()  # Thread.start would have waited
            listed = thread in threading.enumerate()
            alive_before = thread.is_alive()
        assert not_yet, "start() waited for the thread to run"
        assert listed and not alive_before  # threading's bookkeeping: in limbo, not alive yet
        thread.join(WAIT)
        assert ran.is_set() and thread.started.is_set() and not thread.is_alive()

    def test_join_waits_for_a_thread_that_has_not_run(self) -> None:
        ran = threading.Event()
        thread = _ran(ran)
        with lock_kept():
            thread.start()
            thread.join(WAIT)  # threading.Thread.join raises for a thread whose _started is not set
        assert ran.is_set() and not thread.is_alive()

    def test_join_before_start_still_refuses(self) -> None:
        thread = _ran(threading.Event())
        try:
            thread.join(0)
        except RuntimeError:
            pass
        else:
            raise AssertionError("join() of a thread never started returned")

    def test_starts_once(self) -> None:
        thread = _ran(threading.Event())
        thread.start()
        thread.join(WAIT)
        try:
            thread.start()
        except RuntimeError:
            pass
        else:
            raise AssertionError("a thread started twice")


class TestStartWindow:
    def test_waits_for_the_oldest_past_ahead(self) -> None:
        window = StartWindow(ahead=2)
        events = [threading.Event() for _ in range(3)]
        threads = [_ran(event) for event in events]
        with lock_kept():
            for thread in threads[:2]:
                thread.start()
                window.started(thread)
            ahead = [thread.started.is_set() for thread in threads]  # two started, none run: no wait yet
            threads[2].start()
            window.started(threads[2])  # three not run: waits for the oldest
            oldest = threads[0].started.is_set()
        for thread in threads:
            thread.join(WAIT)
        assert ahead == [False, False, False]
        assert oldest, "the window did not wait for its oldest thread"
        assert all(event.is_set() for event in events)

    def test_threads_that_ran_leave_the_window(self) -> None:
        window = StartWindow(ahead=1)
        for _ in range(5):  # each has run before the next starts: never a wait, never more than one held
            ran = threading.Event()
            thread = _ran(ran)
            thread.start()
            assert ran.wait(WAIT)
            window.started(thread)
            assert len(window._waiting) <= 1


class TestHubServerThreads:
    def test_connections_run_on_request_threads_counted(self) -> None:
        with running_server() as server:
            hub_server = server.server
            clients = [Client(server.ws_url) for _ in range(3)]
            for client in clients:
                client.sync()  # its loop runs: its thread has the connection's name
            names = {thread.name: type(thread) for thread in threading.enumerate()}
            served = [kind for name, kind in names.items() if name.startswith("rusty_ws-conn-")]
            assert len(served) == 3 and all(kind is RequestThread for kind in served), names
            assert hub_server._threads_started - hub_server._threads_ended == 3
            for client in clients:
                client.close()
