"""Deadlines of a hub's connections (token expiry, the wait for ``auth:``), run by the writer's thread.

No thread per connection, and no thread of their own: ``Timers`` is a heap
that the ``rusty_ws-writer`` thread consults. It waits in its selector no
longer than the earliest deadline, then runs what is due outside its
``_flush_lock``, so a callback may close a connection (which queues on the
writer and writes at once). A deadline added ahead of every other one wakes
that thread, so deadlines are kept to within a scheduling delay, not to the
writer's housekeeping tick.

Callbacks must be quick and never block: they run on the thread that also
waits for room in slow sockets.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
from collections.abc import Callable

__all__ = ["Timer", "Timers"]

logger = logging.getLogger("rusty_ws.server")

#: Cancelled entries the heap may hold before it is rebuilt without them (when they are also half of it).
_COMPACT_AFTER = 64


class Timer:
    """One deadline in a ``Timers`` heap; ``Timers.cancel`` it when it is no longer wanted."""

    __slots__ = ("when", "seq", "callback")

    def __init__(self, when: float, seq: int, callback: Callable[[], None] | None) -> None:
        self.when = when              # time.monotonic() at which it is due
        self.seq = seq                # ties broken in the order they were set
        self.callback = callback      # None once cancelled or run

    def __lt__(self, other: "Timer") -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    @property
    def pending(self) -> bool:
        return self.callback is not None


class Timers:
    """A heap of deadlines on ``time.monotonic()``, safe from any thread.

    Args:
        wake: called (from the thread that set it) when a new deadline comes before
            every other one, so the thread running them shortens its wait; the writer
            sets it to its own wake-up.
    """

    def __init__(self, wake: Callable[[], None] | None = None) -> None:
        self.wake = wake
        # _heap_lock guards _heap, _cancelled and every Timer's callback.
        self._heap_lock = threading.Lock()
        self._heap: list[Timer] = []
        self._cancelled = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Deadlines still pending."""
        with self._heap_lock:
            return len(self._heap) - self._cancelled

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the thread that runs these timers once ``time.monotonic()`` reaches ``when``."""
        timer = Timer(when, next(self._seq), callback)
        with self._heap_lock:
            earliest = not self._heap or timer < self._heap[0]
            heapq.heappush(self._heap, timer)
        if earliest and self.wake is not None:
            self.wake()
        return timer

    def cancel(self, timer: Timer | None) -> None:
        """Forget ``timer`` if it has not run yet. Idempotent; None does nothing."""
        if timer is None:
            return
        with self._heap_lock:
            if timer.callback is None:
                return
            timer.callback = None
            self._cancelled += 1
            if self._cancelled > _COMPACT_AFTER and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if entry.callback is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def next_due(self) -> float:
        """When the earliest pending deadline is due (``math.inf`` with none)."""
        with self._heap_lock:
            heap = self._heap
            while heap and heap[0].callback is None:
                heapq.heappop(heap)
                self._cancelled -= 1
            return heap[0].when if heap else math.inf

    def run_due(self, now: float) -> int:
        """Run every callback due at ``now``, earliest first, outside the lock; returns how many ran.

        A callback that raises is logged and the others still run.
        """
        due: list[Callable[[], None]] = []
        with self._heap_lock:
            heap = self._heap
            while heap and heap[0].when <= now:
                timer = heapq.heappop(heap)
                if timer.callback is None:
                    self._cancelled -= 1
                    continue
                due.append(timer.callback)
                timer.callback = None
        for callback in due:
            try:
                callback()
            except Exception:
                logger.exception("a timer callback %r raised", callback)
        return len(due)
