"""The measuring scripts' knobs on the hub's cyclic garbage collector, and a record of its pauses.

``BENCH_GC_THRESHOLD`` (environment, read by ``run_rusty.py``; ``--gc-threshold``
of ``xpublish_cost.py`` and ``callgrind_sessions.py``): ``0`` turns the collector
off, ``A`` or ``A,B`` sets the young (and middle) generation's threshold and
``A,B,C`` all three. Applied *before* ``freeze_startup_objects``, so that, as in
``rusty-ws serve``, the full collections' threshold still becomes
``FULL_COLLECTION_THRESHOLD`` unless ``C`` is given. ``BENCH_GC_PAUSES`` (a
file): each collection's generation, wall and CPU seconds, one JSON line (the totals so far)
after each collection (``PauseLog``; a few hundred lines in 100,000 publishes).
"""

from __future__ import annotations

import gc
import json
import time
from typing import Any


def apply(spec: str) -> None:
    """Set the collector as ``spec`` says (see the module); an empty ``spec`` leaves Python's."""
    if not spec:
        return
    values = [int(part) for part in spec.split(",")]
    if values == [0]:
        gc.disable()
        return
    _young, middle, full = gc.get_threshold()
    gc.set_threshold(*(values + [middle, full][len(values) - 1:])[:3])


class PauseLog:
    """Every collection's duration by generation (``gc.callbacks``): count, total and longest, wall and CPU.

    Wall (``perf_counter``) is the pause the other threads see (the interpreter
    lock is held throughout); CPU (``thread_time``) is what it cost, less load-bound.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.stats: dict[str, dict[str, float]] = {
            f"gen{n}": {"count": 0, "wall_s": 0.0, "cpu_s": 0.0, "max_wall_ms": 0.0, "max_cpu_ms": 0.0, "collected": 0}
            for n in range(3)}
        self._started = (0.0, 0.0)
        self.last: dict[str, Any] = {}
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
            return
        wall, cpu = time.perf_counter() - self._started[0], time.thread_time() - self._started[1]
        row = self.stats[f"gen{info['generation']}"]
        row["count"] += 1
        row["wall_s"] += wall
        row["cpu_s"] += cpu
        row["max_wall_ms"] = max(row["max_wall_ms"], wall * 1e3)
        row["max_cpu_ms"] = max(row["max_cpu_ms"], cpu * 1e3)
        row["collected"] += info["collected"]
        self.last = {"gen": info["generation"], "wall_ms": round(wall * 1e3, 3), "cpu_ms": round(cpu * 1e3, 3),
                     "collected": info["collected"]}
        self.write()

    def summary(self) -> dict[str, Any]:
        return {"threshold": list(gc.get_threshold()), "enabled": gc.isenabled(), "last": self.last,
                **{gen: {k: round(v, 4) for k, v in row.items()} for gen, row in self.stats.items()}}

    def write(self) -> None:
        if self.path:
            with open(self.path, "a") as out:
                out.write(json.dumps(self.summary()) + "\n")
