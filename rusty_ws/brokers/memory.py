"""The default broker: publishes stay in this process."""

from __future__ import annotations

from collections.abc import Callable

from ..protocol import Delivery
from .base import Broker, Deliver, Key, Landed, OnLanded

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """Delivers each publish at once, on the publishing thread, to this process's subscribers."""

    name = "memory"

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    def start(self, deliver: Deliver, keys: Callable[[], list[Key]]) -> None:
        self._deliver = deliver

    def publish(self, delivery: Delivery, on_landed: OnLanded | None = None) -> Landed:
        if self._deliver is None:
            raise RuntimeError("the broker was not started")
        landed = self._deliver(delivery)
        if on_landed is not None:
            on_landed(landed)  # this process is the whole road: landed already
        return landed
