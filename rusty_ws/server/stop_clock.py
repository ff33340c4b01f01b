"""Where a hub's stop spends its time: one log line with each phase's timestamp and the process's CPU.

A stand-alone hub (``rusty-ws serve``) marks each phase of its stop, from the
signal to ``os._exit``: when the accept loop ended, when the listening socket
was closed, when every 4200 was queued and written, when the closing
handshakes ended, when the broker stopped. Each mark also takes the
process's CPU seconds (every thread's, ``getrusage``) and context switches,
which say what the stop cost apart from the load of the machine it ran on
(a loaded machine stretches the wall-clock figures, not these).

The line goes to ``rusty_ws.server.stop``, a child of the hub's logger, at INFO:
a process that logs the hub at WARNING (the benchmark's) can still show it. At
DEBUG each mark is logged as it is taken too, so that a stop that never ends
(killed by its supervisor) still says how far it got.
"""

from __future__ import annotations

import logging
import resource
import time

__all__ = ["StopClock"]

logger = logging.getLogger("rusty_ws.server.stop")


def _usage() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_nvcsw + usage.ru_nivcsw


class StopClock:
    """Marks of one stop, the first taken when it is made (the signal). Used by the stopping thread only."""

    def __init__(self, first: str = "signal") -> None:
        self._marks: list[tuple[str, float, float, int]] = []
        self._thread_cpu: float | None = None  # the stopping thread's CPU seconds at its first mark
        self.mark(first)

    def mark(self, phase: str) -> None:
        """Note that ``phase`` has just ended (~5 µs: one ``getrusage``)."""
        cpu, switches = _usage()
        self._marks.append((phase, time.monotonic(), cpu, switches))
        if len(self._marks) > 1 and logger.isEnabledFor(logging.DEBUG):  # as it happens: a stop cut short tells
            logger.debug("stopping: %s +%.3fs (CPU %.2fs)", phase, self._marks[-1][1] - self._marks[0][1],
                         cpu - self._marks[0][2])
        if self._thread_cpu is None and len(self._marks) > 1:  # the first is the signal's, on the main thread
            self._thread_cpu = time.thread_time()
        self._last_thread_cpu = time.thread_time()

    @property
    def elapsed(self) -> float:
        """Seconds from the first mark to now."""
        return time.monotonic() - self._marks[0][1]

    def phases(self) -> list[tuple[str, float, float, int]]:
        """Each mark after the first: (phase, seconds since the first, CPU seconds since, context switches since)."""
        _, start, cpu0, switches0 = self._marks[0]
        return [(phase, at - start, cpu - cpu0, switches - switches0) for phase, at, cpu, switches in self._marks[1:]]

    def summary(self) -> str:
        """``'listener closed +0.101s; ... (CPU 0.42s, 1234 context switches)'``: each phase's end, then the cost."""
        phases = self.phases()
        if not phases:
            return "no phase"
        line = "; ".join(f"{phase} +{at:.3f}s" for phase, at, _, _ in phases)
        _, _, cpu, switches = phases[-1]
        own = self._last_thread_cpu - (self._thread_cpu or self._last_thread_cpu)
        return f"{line} (CPU {cpu:.2f}s, of which the stopping thread {own:.2f}s; {switches} context switches)"

    def report(self) -> None:
        """Log the summary, at INFO, on ``rusty_ws.server.stop``."""
        logger.info("stopped in %.2fs: %s", self.elapsed, self.summary())
