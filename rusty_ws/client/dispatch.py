"""The client's callbacks: who wants which topic, and the one thread that calls them.

Callbacks run on their own thread, in arrival order, so a slow callback never
stops the socket reader (and its keepalive), and a callback may call the
client's blocking methods (``publish``, ``subscribe``) without deadlock.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..protocol import Delivery

__all__ = ["CallbackDispatcher", "DeliveryCallback", "MessageCallback"]

logger = logging.getLogger("rusty_ws.client")

MessageCallback = Callable[[Any], Any]
DeliveryCallback = Callable[[Delivery], Any]

#: Calls waiting to run; when full, the reader blocks (and stops reading the socket).
QUEUE_BOUND = 10_000
_STOP = object()


class CallbackDispatcher:
    """Topic callbacks plus the thread ``rusty_ws-client-dispatch-{name}`` that runs them.

    ``stop()`` ends the thread after the calls queued before it; ``join()`` waits for that.
    """

    def __init__(self, name: str, put_timeout: float) -> None:
        self.name = name
        self.put_timeout = put_timeout
        # _tables_lock guards the two callback tables: written by the user's threads,
        # read by the reader thread for every delivery.
        self._tables_lock = threading.Lock()
        self._by_payload: dict[str, list[MessageCallback]] = collections.defaultdict(list)
        self._by_delivery: dict[str, list[DeliveryCallback]] = collections.defaultdict(list)
        self._calls: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BOUND)
        # Set by stop() when the queue is too full to take the stop marker: the thread
        # then ends after the call it is running, instead of after the whole backlog.
        self._abandon = threading.Event()
        # Daemon: a script that forgets close() can still exit. close() stops and joins it.
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"rusty_ws-client-dispatch-{name}")

    def add_message_callback(self, topic: str, callback: MessageCallback) -> None:
        with self._tables_lock:
            self._by_payload[topic].append(callback)

    def add_delivery_callback(self, topic: str, callback: DeliveryCallback) -> None:
        with self._tables_lock:
            self._by_delivery[topic].append(callback)

    def remove(self, topic: str) -> None:
        with self._tables_lock:
            self._by_payload.pop(topic, None)
            self._by_delivery.pop(topic, None)

    def deliver(self, delivery: Delivery) -> None:
        """Queue the calls for one delivered message (payload callbacks first)."""
        with self._tables_lock:
            by_payload = list(self._by_payload.get(delivery.topic, ()))
            by_delivery = list(self._by_delivery.get(delivery.topic, ()))
        for callback in by_payload:
            self.call(callback, delivery.payload)
        for callback in by_delivery:
            self.call(callback, delivery)

    def call(self, callback: Callable[..., Any], *args: Any) -> None:
        """Queue ``callback(*args)`` to run on the dispatcher thread."""
        self._put((callback, args))

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to end after the calls queued so far. Never blocks; idempotent.

        With ``QUEUE_BOUND`` calls waiting, the thread ends after the call it is
        running instead, and the backlog is dropped (with a warning).
        """
        if not self.thread.is_alive():
            return
        try:
            self._calls.put_nowait(_STOP)
        except queue.Full:
            logger.warning("%s: closing with %d callbacks queued; dropping them",
                           self.name, self._calls.qsize())
            self._abandon.set()

    def join(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (None: no limit) for the thread to end.

        Returns at once from the dispatcher thread itself (a callback that closes
        the client), where waiting would wait for itself, and before ``start()``.
        """
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _put(self, item: Any) -> None:
        try:
            # Blocks while QUEUE_BOUND calls wait: a client too slow for its traffic
            # stops reading, and the server drops it as a slow consumer.
            self._calls.put(item, timeout=self.put_timeout)
        except queue.Full:
            logger.error("%s: callbacks are %d behind; dropping one", self.name, self._calls.qsize())

    def _run(self) -> None:
        while True:
            item = self._calls.get()
            if item is _STOP:
                return
            callback, args = item
            try:
                callback(*args)
            except Exception:
                logger.exception("%s: callback %r raised", self.name, getattr(callback, "__qualname__", callback))
            if self._abandon.is_set():
                return
