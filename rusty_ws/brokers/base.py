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
import contextlib
import json
from collections.abc import Callable
from typing import Any, NamedTuple

from ..history import Position
from ..protocol import Delivery

__all__ = ["ENCODED", "Broker", "Deliver", "Landed", "OnLanded", "OwnRun", "SharedHistory", "Stored", "Stamped",
           "HistoryUnavailable", "own_deliveries"]

Key = tuple[str, str]
#: ``Delivery.extra`` key of a delivery's own encoding without position (``Delivery.encode`` of it
#: without offset), when a ``SharedHistory`` has it: a node's own publish coming back from Redis.
#: The hub splices the position in instead of encoding the delivery again.
ENCODED = "encoded"
#: A run of this node's own publishes back from a shared history (``Broker.deliver_own``), as kept
#: when they were published: its (topic, session), the run's epoch, its first offset, and for each
#: offset from the first on, the publish's encoding (``Delivery.encode`` of it without position) or
#: None for one delivered here already (its offset is skipped).
OwnRun = tuple[Key, str, int, list[Any]]


def own_deliveries(run: OwnRun) -> list[Delivery]:
    """The deliveries of ``run``, each with its offset and epoch and its encoding (``extra[ENCODED]``):
    made again from the encodings (the road of a run a subscriber joins, not the usual one)."""
    _, epoch, first, published = run
    deliveries = []
    for offset, encoded in enumerate(published, first):
        if encoded is not None:
            message = json.loads(encoded)
            deliveries.append(Delivery(message["publisher_name"], message["topic"], message["payload"],
                                       message["timestamp"], message["session_id"], message.get("user"),
                                       offset, epoch, {ENCODED: encoded}))
    return deliveries


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


class Stamped(NamedTuple):
    """Where a publish landed in a shared stream: its position, and whether its id was a repeat."""

    #: The message's place (for a repeat: the first one's).
    position: Position
    #: The publish id was used in its session within the window: not delivered again.
    repeat: bool


class Stored(NamedTuple):
    """What a shared stream held when it was read, in one atomic look."""

    #: The stream's top offset and epoch (the boundary between replay and live).
    top: Position
    #: Its retained messages asked for (with their offsets and epoch), oldest first.
    messages: list[Delivery]
    #: With a position in the stream's epoch: no message after it was missing.
    complete: bool


class HistoryUnavailable(Exception):
    """The shared history cannot be reached now (Redis is down)."""


class SharedHistory(abc.ABC):
    """History kept by the broker for every node (Redis), instead of the hub's in-memory ``History``.

    With it, the broker (not the hub) gives each message its offset, and delivers it
    to this node's subscribers too, with that offset, through ``deliver``; ``deliver``
    then gets deliveries whose ``offset``/``epoch`` are set. Safe to call from any thread.
    """

    @abc.abstractmethod
    def publish(self, delivery: Delivery, publish_id: str | None,
                on_done: "Callable[[Stamped | BaseException], None] | None") -> None:
        """Give ``delivery`` the next offset of its stream, keep it, and carry it to every node.

        With ``publish_id``, a repeat of an id its session used within the idempotency
        window is answered with the first one's position and not delivered. ``on_done`` is
        called once (maybe on another thread) with where it landed, or with the exception
        that kept it from the stream (``HistoryUnavailable``). Without ``publish_id``, a
        publish the stream could not take is delivered to this node's subscribers, without offset.

        Raises:
            ProtocolError: ``invalid_message`` before anything was sent (not JSON, too large).
        """

    @abc.abstractmethod
    def read(self, key: Key, since: Position | None, limit: int) -> Stored:
        """The stream's top and messages: those after ``since`` (its epoch only), else the last ``limit``.

        Makes the stream (its epoch) if it did not exist: a subscription starts it.

        Raises:
            HistoryUnavailable: Redis cannot be reached.
        """


class Broker(abc.ABC):
    """A road for publishes. Implementations must be safe to call from any thread."""

    #: Short name shown by ``/healthz``.
    name = "broker"
    #: True when publishes cross processes: every node then needs the same JWT secret.
    distributed = False
    #: Opens a block whose deliveries are written together when it ends (the hub sets its
    #: ``Writer.batch`` here before ``start``): a listener that received many deliveries at
    #: once hands them over inside one, so each subscriber gets them in one ``send``.
    batch_deliveries: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    #: Hands consecutive deliveries of one (topic, session), oldest first, to this node's
    #: subscribers at once (the hub sets its ``Hub.deliver_run`` here before ``start``): what a
    #: listener decoded from one envelope. None: the broker calls ``deliver`` for each.
    deliver_run: Callable[[list[Delivery]], None] | None = None
    #: ``deliver`` for a publish this broker encoded already (``delivery.encode()``'s very bytes):
    #: the hub sets its ``Hub.deliver_local`` here before ``start``, so a publish through Redis is
    #: encoded once on the publisher's thread, for the envelope and the local frame. None: ``deliver``.
    deliver_encoded: Callable[[Delivery, bytes], Landed] | None = None
    #: Hands a run of this node's own publishes back from its shared history to this node's
    #: subscribers (the hub sets its ``SharedStreams.deliver_own`` here before ``start``): their frames are
    #: made from the encodings kept at publish time, without a ``Delivery`` each. None: ``deliver_run``
    #: of ``own_deliveries``.
    deliver_own: Callable[[OwnRun], None] | None = None
    #: Hands another node's run from the shared history (``redis_codec.RemoteRun``: a version-5
    #: envelope, checked, its deliveries encoded) to this node's subscribers (the hub sets its
    #: ``SharedStreams.deliver_remote`` here before ``start``), without a ``Delivery`` each.
    #: None: ``deliver_run`` of the decoded deliveries.
    deliver_remote: Callable[[Any], None] | None = None

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

    def history_store(self, size: int, ttl: float, window: float,
                      max_bytes: int | None = None) -> SharedHistory | None:
        """The history every node shares, if this broker keeps one (Redis); None: the hub keeps its own.

        Called once, before ``start``, with ``RUSTY_WS_HISTORY_SIZE`` (> 0), ``RUSTY_WS_HISTORY_TTL``,
        ``RUSTY_WS_IDEMPOTENCY_WINDOW`` and ``RUSTY_WS_HISTORY_MAX_BYTES``.
        """
        return None

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` reports about the broker."""
        return {"name": self.name, "connected": True}
