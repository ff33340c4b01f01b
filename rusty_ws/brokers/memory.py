"""The default broker: publishes stay in this process."""

from __future__ import annotations

from collections.abc import Callable

from ..protocol import Delivery
from .base import Broker, Deliver, Key, Landed

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """Delivers each publish at once, on the publishing thread, to this process's subscribers."""

    name = "memory"

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    def start(self, deliver: Deliver, keys: Callable[[], list[Key]]) -> None:
        self._deliver = deliver

    def publish(self, delivery: Delivery) -> Landed:
        if self._deliver is None:
            raise RuntimeError("the broker was not started")
        return self._deliver(delivery)
