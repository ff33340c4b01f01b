"""``HubServer``'s request threads: started without waiting for each to run, at most ``START_AHEAD`` ahead.

``threading.Thread.start`` returns only once the new thread has run its first
lines (it waits on the thread's ``_started`` event). On the accept thread that
was a block and two hand-offs of the interpreter lock per connection: the
accept thread let the lock go and slept, the new thread took the lock, set the
event and ran on into its handshake, and the accept thread, woken, waited for
the lock again until the new thread's next system call. ``perf record -e
sched:sched_switch`` (2,000 clients in a burst): 2.4 of the hub's 9.1 context
switches a connection were that wait and the lock after it, and the accept
loop ran one connection at a time behind its threads (docs/performance.md,
"Connect, session 16").

``RequestThread.start`` skips that one wait (the thread's bookkeeping is
``threading``'s own: it is in ``threading.enumerate()`` from its start, named as
any thread, counted by ``HubServer``); ``StartWindow`` is the accept thread's
bound on how far it runs ahead: a thread that has not run yet holds a socket
waiting for its head (``RUSTY_WS_MAX_PENDING_REQUESTS``), and an accept loop that
never waited started hundreds before the first of them had the lock, then
refused the rest with 503 (session 13). Past ``START_AHEAD`` started and not yet
running, the accept thread waits for the oldest of them, as ``Thread.start``
waited for each.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

__all__ = ["START_AHEAD", "RequestThread", "StartWindow"]

#: Request threads the accept loop may have started that have not run yet: past it, it waits for the oldest.
#: 32 and 128 measured alike (2,000 in a burst: 0.43 against 0.38-0.44 ms of CPU a connection, 0.59-0.65 with
#: a wait for each); well below RUSTY_WS_MAX_PENDING_REQUESTS' default (256), which they count against.
START_AHEAD = 32


class _StartedFlag(threading.Event):
    """A thread's ``_started`` event whose next ``wait`` returns at once when ``skip`` is set: ``start()``'s."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = False

    def wait(self, timeout: float | None = None) -> bool:
        if self.skip:  # Thread.start's wait, which RequestThread.start leaves out (only it sets skip)
            self.skip = False
            return self.is_set()
        return super().wait(timeout)


class RequestThread(threading.Thread):
    """A ``threading.Thread`` whose ``start()`` returns without waiting for the thread to run.

    Everything else is ``threading``'s: its name, its place in ``threading.enumerate()``
    (in ``threading``'s "limbo" until it runs), ``is_alive()`` (False until it has run),
    ``join()`` (which, unlike ``Thread.join``, accepts a thread that has not run yet: it
    waits for it to). ``started`` is set once it runs. Where ``threading`` has no
    ``_started`` event to skip (not CPython 3.10-3.13), ``start()`` is ``Thread.start``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        started = getattr(self, "_started", None)
        if type(started) is threading.Event:  # the event Thread.start waits on
            started = _StartedFlag()
            self._started = started
        #: Set once the thread has run its first lines (``threading``'s own event).
        self.started: threading.Event = started if isinstance(started, threading.Event) else threading.Event()
        self._launched = False  # start() returned: the thread exists, though it may not have run yet

    def start(self) -> None:
        """Start the thread and return at once (``Thread.start`` without its wait). Not idempotent: once only."""
        flag = self.started
        if isinstance(flag, _StartedFlag):
            flag.skip = True
        try:
            super().start()
        finally:
            if isinstance(flag, _StartedFlag):
                flag.skip = False  # start() failed before its wait: nothing skipped later
        self._launched = True

    def join(self, timeout: float | None = None) -> None:
        """``Thread.join``, first waiting (within ``timeout``) for a started thread to run."""
        if self._launched and not self.started.is_set():
            deadline = None if timeout is None else time.monotonic() + timeout
            if not self.started.wait(timeout):
                return  # still not run within the timeout: as a join that timed out (is_alive() says)
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
        super().join(timeout)


class StartWindow:
    """The accept thread's request threads that were started and may not have run yet, at most ``ahead``.

    The accept thread alone calls ``started`` (no lock); each thread sets its own event.
    """

    def __init__(self, ahead: int = START_AHEAD) -> None:
        self.ahead = ahead
        self._waiting: deque[threading.Event] = deque()  # the newest ``ahead`` threads' ``started``, oldest first

    def started(self, thread: RequestThread) -> None:
        """``thread`` has been started: past ``ahead`` not yet run, wait for the oldest to run. Blocks then.

        The wait is ``Thread.start``'s, for one thread in ``ahead`` (usually none: the
        oldest has run by then); unbounded as that one was: a started thread runs.
        """
        waiting = self._waiting
        waiting.append(thread.started)
        while waiting and waiting[0].is_set():
            waiting.popleft()
        if len(waiting) > self.ahead:
            waiting.popleft().wait()
