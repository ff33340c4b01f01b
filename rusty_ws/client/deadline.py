"""``Deadline``: one time budget spread over several blocking waits.

``WsClient.close(timeout)`` joins more than one thread; each join takes what
is left of the same deadline, so the whole close, not each step, is bounded
by ``timeout``. After ``websockets:src/websockets/sync/utils.py`` (``Deadline``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Deadline"]


class Deadline:
    """A point in time, ``timeout`` seconds from now; ``None`` means never.

    Args:
        timeout: seconds from now; ``None`` for no deadline.
        clock: the monotonic clock to read (for tests).
    """

    __slots__ = ("_clock", "_at")

    def __init__(self, timeout: float | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._at = None if timeout is None else clock() + timeout

    def timeout(self) -> float | None:
        """The seconds left, never negative; ``None`` when there is no deadline.

        Pass it straight to ``Thread.join``, ``Event.wait`` or ``Queue.get``.
        """
        if self._at is None:
            return None
        return max(0.0, self._at - self._clock())

    def expired(self) -> bool:
        """True once no time is left (never, without a deadline)."""
        return self.timeout() == 0.0

    def __repr__(self) -> str:
        left = self.timeout()
        return "<Deadline never>" if left is None else f"<Deadline in {left:.3f}s>"
