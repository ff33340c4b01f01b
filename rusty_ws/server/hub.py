"""The hub: the connections of one app, their subscriptions, and the road publishes take.

A publish goes ``Hub.publish`` -> broker -> ``Hub.deliver_local`` -> one frame
encoded once -> ``Writer.send``, one job for all its subscribers. The writer
is flat-combining: whichever thread holds its ``_flush_lock`` (usually the one
that called ``deliver_local``: the publisher's own, or the Redis listener's
for a publish from another node) copies the frame into every subscriber's
outbox and writes each with one non-blocking send. The ``rusty_ws-writer``
thread only waits for room in full sockets, pings idle clients and ends
closing handshakes that time out (see ``writer.py``).

``Hub.serve`` owns a connection's life: it registers it, runs its command loop
(``connection.py``) on the request thread, then forgets it and its
subscriptions and releases its outbox. Connections call in from their own
threads; the hub's state is the registry (its own lock) and the set of
connections (``_connections_lock``).
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from typing import Any

from ..auth import Claims
from ..brokers import Broker
from ..config import Settings
from ..frames import deflate_text_frame, text_frame
from ..protocol import CLOSE_CODE_EXPLANATIONS, CloseCode, Delivery
from .connection import Connection
from .registry import Registry
from .writer import Outbox, Writer


__all__ = ["Hub"]

logger = logging.getLogger("rusty_ws.server")


class Hub:
    """Connections, subscriptions and publishing for one Flask app.

    Args:
        settings: the checked settings.
        broker: where publishes go; the hub starts it now and stops it in ``shutdown``.
    """

    def __init__(self, settings: Settings, broker: Broker) -> None:
        self.settings = settings
        self.registry = Registry(settings.max_subscriptions)
        self.writer = Writer(
            max_queued_bytes=settings.max_queued_bytes,
            close_timeout=settings.close_timeout,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
        )
        self.broker = broker
        # _connections_lock guards _connections, _slots_taken, _accepting and the
        # writes of _compressing (read without it: an int, and only a shortcut).
        self._connections_lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._compressing = 0  # open connections that negotiated permessage-deflate
        self._slots_taken = 0
        self._accepting = True
        # Signalled whenever a connection ends (shutdown and tests wait on it).
        self._connections_changed = threading.Condition(self._connections_lock)
        self._ids = itertools.count(1)
        broker.start(self.deliver_local, self.registry.keys)

    # ------------------------------------------------------------------ admission

    def take_slot(self) -> bool:
        """Reserve room for one more connection; False when full or shutting down."""
        with self._connections_lock:
            if not self._accepting or self._slots_taken >= self.settings.max_connections:
                return False
            self._slots_taken += 1
            return True

    def give_back_slot(self) -> None:
        """Undo ``take_slot`` once the request that took it has ended."""
        with self._connections_lock:
            self._slots_taken -= 1
            self._connections_changed.notify_all()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def next_id(self) -> int:
        return next(self._ids)

    def serve(self, sock: socket.socket, claims: Claims | None, remote: str = "?",
              deflate: bool = False) -> None:
        """Run one WebSocket from its upgrade to its end on the calling (request) thread. Blocks.

        The hub owns the connection's life, as websockets' ``sock_handler`` does:
        it registers the connection, runs its command loop, and on every path
        forgets it (and its subscriptions) and releases its outbox. The caller
        closes the socket afterwards.
        """
        connection = Connection(self, sock, claims, remote, deflate=deflate)
        self._add(connection)
        try:
            connection.serve()
        finally:
            self._discard(connection)
            self.writer.release(connection.outbox, self.settings.close_timeout + 1.0)
            logger.info("= %s disconnected", connection.label)

    def connections(self) -> list["Connection"]:
        """A snapshot of the open connections (for reports, shutdown and tests)."""
        with self._connections_lock:
            return list(self._connections)

    def _add(self, connection: "Connection") -> None:
        with self._connections_lock:
            self._connections.add(connection)
            self._compressing += connection.outbox.deflate

    def _discard(self, connection: "Connection") -> None:
        """Forget a connection that ended, and every subscription it held."""
        for key in self.registry.remove(connection.outbox):
            self.broker.interest_removed(key)
        with self._connections_lock:
            if connection in self._connections:
                self._connections.remove(connection)
                self._compressing -= connection.outbox.deflate
            self._connections_changed.notify_all()

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, outbox: Outbox, topic: str, session_id: str) -> None:
        """Subscribe; raises ``ProtocolError`` (too_many_subscriptions) at the limit."""
        if self.registry.subscribe(outbox, topic, session_id):
            self.broker.interest_added((topic, session_id))

    def unsubscribe(self, outbox: Outbox, topic: str, session_id: str) -> None:
        if self.registry.unsubscribe(outbox, topic, session_id):
            self.broker.interest_removed((topic, session_id))

    # ------------------------------------------------------------------ publishing

    def publish(self, delivery: Delivery) -> None:
        """Send ``delivery`` to every subscriber of its (topic, session), on every node."""
        self.broker.publish(delivery)

    def deliver_local(self, delivery: Delivery) -> None:
        """Hand ``delivery`` to this process's subscribers: one frame, encoded once.

        The frame goes to ``Writer.send``: the calling thread writes it unless another
        thread holds the writer's ``_flush_lock`` (that one writes it too). Never
        blocks on a subscriber.

        With compressing connections open, at most two: one plain, one compressed
        (without context takeover, so the same bytes suit every such subscriber).
        """
        subscribers = self.registry.subscribers(delivery.topic, delivery.session_id)
        if not subscribers:
            return
        data = delivery.encode()
        if self._compressing:  # the usual case, 0, costs no pass over the subscribers
            plain: list[Outbox] = []
            compressing: list[Outbox] = []
            for box in subscribers:
                (compressing if box.deflate else plain).append(box)
            if compressing:
                self.writer.send(deflate_text_frame(data, self.settings.compression), compressing)
            subscribers = plain
        if subscribers:
            self.writer.send(text_frame(data), subscribers)

    def wait_connections(self, at_most: int, timeout: float) -> bool:
        """Block until at most ``at_most`` connections are open and hold a slot; False on timeout.

        A connection leaves ``_connections`` before its request gives its slot
        back, so both are waited for: once this returns, that many can connect.
        """
        with self._connections_lock:
            return self._connections_changed.wait_for(
                lambda: len(self._connections) <= at_most and self._slots_taken <= at_most, timeout
            )

    # ------------------------------------------------------------------ reporting and shutdown

    def counts(self) -> dict[str, Any]:
        """What ``/healthz`` shows: connections, sessions, topics, subscriptions, broker."""
        connections = self.connections()
        registry = self.registry.counts()
        sessions = {conn.session_id for conn in connections}
        sessions.update(session for _, session in self.registry.keys())
        return {
            "status": "ok" if self._accepting else "stopping",
            "connections": len(connections),
            "sessions": len(sessions),
            "topics": registry.topics,
            "subscriptions": registry.subscriptions,
            "broker": self.broker.status(),
        }

    def shutdown(self, timeout: float = 5.0) -> None:
        """Close every connection (4200, reconnect now), stop the broker and the writer.

        Blocks until the connections have ended or ``timeout`` has passed. Idempotent.
        """
        with self._connections_lock:
            self._accepting = False
            connections = list(self._connections)
        for connection in connections:
            connection.close(CloseCode.SERVER_RESTARTING, CLOSE_CODE_EXPLANATIONS[4200])
        deadline = time.monotonic() + timeout
        if not self.wait_connections(0, timeout):
            with self._connections_lock:
                left = len(self._connections)
            logger.warning("! %d connections still open after %.1fs; dropping them", left, timeout)
        self.broker.stop()
        self.writer.stop(max(0.1, deadline - time.monotonic()))
