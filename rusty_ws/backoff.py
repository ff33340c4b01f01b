"""Reconnect delays: exponential, capped, with jitter. Pure: the caller waits.

A fresh ``delays()`` generator starts over, so a client makes a new one after
every good connection (the reset).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = ["delays", "retry_after", "MAX_RETRY_AFTER"]

#: The longest wait a ``Retry-After`` is taken for (seconds); a longer one is not believed.
MAX_RETRY_AFTER = 3600


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


def retry_after(value: str | None, rng: Callable[[], float] = random.random) -> float | None:
    """Seconds to wait after a 503 whose ``Retry-After`` is ``value``: that many, plus up to one more at random.

    The hub paces a reconnect storm this way (docs/protocol.md, "Reconnect storms"):
    it sends the clients it turns away to the seconds ahead, and the random part
    spreads those sent to the same second over it. None (back off as usual) when
    there is no header or it is not a whole number of seconds from 0 to
    ``MAX_RETRY_AFTER`` (an HTTP date included: the hub never sends one).
    """
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 4 or int(value) > MAX_RETRY_AFTER:
        return None
    return int(value) + rng()
