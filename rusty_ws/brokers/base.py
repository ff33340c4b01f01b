"""What a broker is: the road a publish takes to every node with subscribers for it.

The hub hands every publish to its broker and receives back, through the
``deliver`` callback given to ``start``, every delivery its own subscribers
should get. The in-memory broker calls back at once; a distributed broker
(Redis) calls back from its own thread for publishes made on any node.

The hub also tells the broker when a (topic, session) gains its first local
subscriber or loses its last one, so a distributed broker listens only to
what this node needs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, NamedTuple

from ..history import Position
from ..protocol import Delivery

__all__ = ["Broker", "Deliver", "Landed", "OnLanded"]

Key = tuple[str, str]


class Landed(NamedTuple):
    """Where a delivery landed on this node: what ``Deliver`` returns."""

    #: Its place in this node's stream; None with history off.
    position: Position | None
    #: How many of this node's subscribers it was handed to (None: not known, e.g. a repeat
    #: whose first publish is still in flight).
    delivered: int | None


#: Called with each delivery for this node's subscribers; returns where it landed on this node.
Deliver = Callable[[Delivery], Landed]
#: Called once a publish was taken by the broker's road (what to acknowledge), or with the
#: exception that kept it from every other node (then answer ``unavailable``).
OnLanded = Callable[["Landed | BaseException"], None]


class Broker(abc.ABC):
    """A road for publishes. Implementations must be safe to call from any thread."""

    #: Short name shown by ``/healthz``.
    name = "broker"
    #: True when publishes cross processes: every node then needs the same JWT secret.
    distributed = False

    @abc.abstractmethod
    def start(self, deliver: Deliver, keys: Callable[[], list[Key]]) -> None:
        """Begin carrying publishes.

        Args:
            deliver: hands a delivery to this node's subscribers.
            keys: returns every (topic, session) with local subscribers, for brokers
                that must (re)subscribe upstream; ``keys(among)`` only those of the
                keys ``among`` (cheap for a few keys, whatever the registry's size).
        """

    @abc.abstractmethod
    def publish(self, delivery: Delivery, on_landed: OnLanded | None = None) -> Landed:
        """Carry ``delivery`` to every node's subscribers of its (topic, session).

        Args:
            on_landed: for an acknowledged publish: called once the road took it (the
                in-memory broker: before ``publish`` returns; Redis: on its sender's
                thread once Redis answered), with what to acknowledge, or with the
                exception that kept it from the other nodes. Must not block.

        Returns:
            What ``deliver`` returned for this node (its position in this node's stream,
            and how many of this node's subscribers it was handed to).
        """

    def interest_added(self, key: Key) -> None:  # noqa: B027 - optional: the in-memory broker needs nothing
        """(topic, session) got its first local subscriber."""

    def interest_removed(self, key: Key) -> None:  # noqa: B027 - optional, as above
        """(topic, session) lost its last local subscriber."""

    def stop(self) -> None:  # noqa: B027 - optional, as above
        """Stop carrying publishes and end any thread. Idempotent."""

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` reports about the broker."""
        return {"name": self.name, "connected": True}
