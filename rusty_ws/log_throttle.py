"""One log line at most every few seconds for what can happen thousands of times a second.

A failing accept loop, a storm turned away, a Redis that stopped taking
publishes: each occurrence is worth counting, not a line of its own. The
first one logs at once; those within the next ``seconds`` are counted and
reported by the next line that gets through.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LogThrottle"]


class LogThrottle:
    """Lets a log line through at most once per ``seconds``, counting the occurrences it held back.

    It has no lock of its own: a throttle used by one thread needs none, and one shared by
    threads is called under its owner's lock.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._next = float("-inf")
        self._held = 0

    def __call__(self) -> int:
        """Count one occurrence; how many the line to log now stands for, or 0 to stay quiet."""
        self._held += 1
        now = self._clock()
        if now < self._next:
            return 0
        self._next = now + self.seconds
        count, self._held = self._held, 0
        return count
