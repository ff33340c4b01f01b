"""Reconnect delays: exponential, capped, with jitter. Pure: the caller waits.

A fresh ``delays()`` generator starts over, so a client makes a new one after
every good connection (the reset).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = ["delays"]


def delays(
    initial: float = 0.5,
    factor: float = 2.0,
    cap: float = 30.0,
    jitter: float = 0.5,
    rng: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Yield the seconds to wait before each reconnection attempt, forever.

    The first delay is random in ``[0, initial]``, so clients dropped together
    do not come back together. Then ``initial * factor**n``, at most ``cap``,
    each shortened by up to ``jitter`` (a fraction) at random.
    """
    if initial < 0 or factor < 1 or cap < 0 or not 0 <= jitter <= 1:
        raise ValueError("need initial >= 0, factor >= 1, cap >= 0 and 0 <= jitter <= 1")
    yield initial * rng()
    delay = initial
    while True:
        yield min(cap, delay) * (1 - jitter * rng())
        delay = min(cap, delay * factor)
