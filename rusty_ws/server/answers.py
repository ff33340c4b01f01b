"""Waiting for the answer to a publish with an id, for callers outside a connection's loop.

A connection's loop never waits: it hands ``Hub.publish`` an ``answer`` callback
and goes on. Server code that publishes with an id and no callback (an embedding
app's thread) blocks here instead, on an event the callback sets, whichever
thread answers (the publishing one, or a Redis sender's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..brokers.base import Landed
from ..exceptions import ProtocolError
from ..protocol import ErrorCode

__all__ = ["wait_for_answer"]


def wait_for_answer(start: Callable[[Callable[[Any], None]], object], timeout: float,
                    late: str) -> tuple[Landed, bool]:
    """Call ``start(answer)`` and block until ``answer`` is called, at most ``timeout`` seconds.

    Returns:
        What the publish was answered with: where it landed, and whether it was a repeat.

    Raises:
        ProtocolError: the error it was answered with, or ``unavailable`` (``late``) on timeout.
    """
    answered = threading.Event()
    results: list[Any] = []

    def keep(result: Any) -> None:
        results.append(result)
        answered.set()

    start(keep)
    if not answered.wait(timeout):
        raise ProtocolError(ErrorCode.UNAVAILABLE, late)
    if isinstance(results[0], ProtocolError):
        raise results[0]
    return results[0]
