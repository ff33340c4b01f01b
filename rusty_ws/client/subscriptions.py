"""What a ``WsClient`` is subscribed to, and how far it has read each stream.

For each subscribed topic (in the client's session) the client keeps the last
position it saw: the ``offset`` and ``epoch`` of the last delivery, or of the
``subscribed:`` reply. After a reconnection it resubscribes from there
(``subscribe-json`` with ``since``): the hub replays what was missed, in
order, before live messages. A delivery at or below the last offset of the
same epoch has been seen already and is dropped, so nothing reaches the
callbacks twice.

Against a hub with history off there are no offsets: positions stay None,
nothing is dropped, and resubscribing is as plain as the seed's.
"""

from __future__ import annotations

import enum
import threading

from ..protocol import Delivery, Since, Subscribed

__all__ = ["RecoveryFailure", "Subscriptions", "recovery_failure"]


class RecoveryFailure(str, enum.Enum):
    """Why a resubscription could not recover every missed message (``on_recovery_failed``'s ``reason``)."""

    #: The stream's past is gone: the hub restarted, the stream expired, or another node answered.
    #: Nothing from before was replayed.
    EPOCH_CHANGED = "epoch_changed"
    #: Same stream, but some missed messages were no longer retained (history size, TTL or byte
    #: bound), or the replay was too big to send at once; what remained was replayed, in order.
    MESSAGES_DROPPED = "messages_dropped"
    #: The hub has history off now: nothing can be replayed.
    HISTORY_OFF = "history_off"

    def __str__(self) -> str:
        return self.value


def recovery_failure(since: Since, reply: Subscribed) -> RecoveryFailure | None:
    """What a ``subscribed:`` reply to a subscribe from ``since`` says was lost (None: nothing)."""
    if reply.recovered is not False:
        return None
    if reply.offset is None or reply.epoch is None:
        return RecoveryFailure.HISTORY_OFF
    if reply.epoch != since.epoch:
        return RecoveryFailure.EPOCH_CHANGED
    return RecoveryFailure.MESSAGES_DROPPED


class Subscriptions:
    """The client's subscribed topics (in subscription order) and the last position seen in each."""

    def __init__(self) -> None:
        # _positions_lock guards _positions (topic -> last position, None without offsets):
        # written by the reader thread (replies, every delivery) and by callers
        # (unsubscribe), read by the reader when it resubscribes and by callers.
        self._positions_lock = threading.Lock()
        self._positions: dict[str, Since | None] = {}

    def topics(self) -> list[str]:
        with self._positions_lock:
            return list(self._positions)

    def items(self) -> list[tuple[str, Since | None]]:
        """(topic, last position) for every subscription, in subscription order."""
        with self._positions_lock:
            return list(self._positions.items())

    def position(self, topic: str) -> Since | None:
        with self._positions_lock:
            return self._positions.get(topic)

    def record(self, topic: str) -> None:
        """A subscription made without positions (the seed's ``subscribe:``)."""
        with self._positions_lock:
            self._positions.setdefault(topic, None)

    def subscribed(self, topic: str, reply: Subscribed, *, add: bool) -> None:
        """The ``subscribed:`` reply: ``topic`` is read up to ``reply.offset`` (its boundary).

        Args:
            add: record ``topic`` if it is not recorded (a new subscription); a
                resubscription of a topic unsubscribed meanwhile is not brought back.
        """
        position = Since(reply.offset, reply.epoch) if reply.offset is not None and reply.epoch else None
        with self._positions_lock:
            if add or topic in self._positions:
                self._positions[topic] = position

    def forget(self, topic: str) -> None:
        with self._positions_lock:
            self._positions.pop(topic, None)

    def admit(self, delivery: Delivery) -> bool:
        """Advance ``delivery``'s topic to its position; False for one seen already (drop it).

        A delivery without an offset, or for a topic not recorded, is always admitted.
        """
        offset, epoch = delivery.offset, delivery.epoch
        if offset is None or epoch is None:
            return True
        with self._positions_lock:
            if delivery.topic not in self._positions:
                return True
            last = self._positions[delivery.topic]
            if last is not None and last.epoch == epoch and offset <= last.offset:
                return False
            self._positions[delivery.topic] = Since(offset, epoch)
            return True
