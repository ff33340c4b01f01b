"""The Redis broker: publishes cross processes and machines through Redis pub/sub.

Needs the ``redis`` package (the ``redis`` extra: ``pip install '.[redis]'``
from a checkout, ``pip install 'redis>=5'`` beside an installed rusty_ws) and
``RUSTY_WS_BROKER_URL=redis://host:6379/0``. ``docs/scaling.md`` is the
operator's view; this is the implementer's.

Channels. Each (topic, session) is one Redis channel (``channel_name``), so
Redis itself routes a publish only to the nodes that subscribed to it. A node
subscribes to a channel while it has local subscribers for that pair: the hub
calls ``interest_added`` / ``interest_removed`` on the first / last local
subscriber, and ``interest_added`` returns once Redis has the subscription, so
a client whose ``subscribe`` was answered receives every later publish, from
any node.

Publishing. ``publish`` wraps the delivery in an envelope that names this
node, hands the delivery to this node's subscribers at once (local delivery
does not depend on Redis), then PUBLISHes the envelope. The envelope comes
first so that a delivery no node would take (larger than ``max_envelope_size``,
which listeners also enforce) is refused before it reaches anyone. Every node's listener drops its own envelopes
coming back, so each subscriber gets each message exactly once. A PUBLISH is a
synchronous round trip on the publishing thread, so one connection's publishes
reach Redis, and therefore every node, in the order it made them.

Threads. One listener thread per broker (``rusty_ws-redis-{node}``, in
``redis_listener.py``) owns the subscriber connection: it is the only thread
that reads or writes it. Other
threads mark the (topic, session) pairs whose interest changed and wake it
with an empty message on the node's own control channel; the listener then
reconciles those pairs against the hub's registry (the truth, read after the
marks) and confirms with a PING barrier. On any error it drops the
connection, waits (``backoff.delays``), reconnects, and subscribes again to
every pair the registry holds: it never relies on what the old connection had.

Outage. While the listener is not connected the node is "disconnected"
(``/healthz``): its publishes are delivered locally only and counted as
``unsent``; publishes elsewhere do not reach it. Nothing is queued or replayed.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Any

from ..exceptions import ProtocolError
from ..protocol import Delivery, ErrorCode
from .base import Broker, Deliver, Key, Landed, SharedHistory
from .redis_codec import (
    DEFAULT_CHANNEL_PREFIX,
    channel_name,
    decode_envelope,
    encode_envelope,
    key_of_channel,
    split_url,
)
from .redis_history import RedisHistory
from .redis_listener import Listener
from .redis_sender_standin import StandInSender

__all__ = [
    "RedisBroker",
    "channel_name",
    "key_of_channel",
    "encode_envelope",
    "decode_envelope",
    "split_url",
    "DEFAULT_CHANNEL_PREFIX",
]

logger = logging.getLogger("rusty_ws.server")

#: Seconds ``interest_added``/``interest_removed`` wait for Redis to confirm.
SUBSCRIBE_TIMEOUT = 2.0
#: Seconds ``start`` waits for the first connection (so a fresh node is ready when it serves).
START_TIMEOUT = 5.0


# --------------------------------------------------------------------------- node ids


def new_node_id() -> str:
    """A name for this node, unique per broker: ``{host}-{pid}-{random}``."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def _import_redis() -> Any:
    try:
        import redis
        import redis.backoff
        import redis.retry
    except ImportError:
        raise RuntimeError(
            "RUSTY_WS_BROKER_URL names Redis but the redis package is missing: "
            "pip install 'redis>=5' (the redis extra; from a checkout: pip install '.[redis]')"
        ) from None
    return redis


# --------------------------------------------------------------------------- the broker


class RedisBroker(Broker):
    """Carries publishes between nodes through Redis pub/sub. Safe to call from any thread.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL, with an optional ``channel_prefix=`` query
            option (default ``rusty_ws``) to keep deployments that share a Redis apart
            (pub/sub ignores the database number).
        subscribe_timeout: seconds a subscribe or unsubscribe waits for Redis to confirm.
        start_timeout: seconds ``start`` waits for the first connection.
        max_envelope_size: the largest envelope this node sends or accepts, in bytes (None:
            no limit). The hub gives ``RUSTY_WS_MAX_QUEUED_BYTES``, the bound on what one
            publish may make each subscriber queue: a forged giant envelope is dropped unread.

    Raises:
        RuntimeError: the ``redis`` package is not installed.
        ValueError: the URL is not usable.
    """

    name = "redis"
    distributed = True

    def __init__(self, url: str, *, subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
                 start_timeout: float = START_TIMEOUT, max_envelope_size: int | None = None) -> None:
        self._redis = _import_redis()
        self._url, self.channel_prefix = split_url(url)
        self._redis.connection.ConnectionPool.from_url(self._url)  # raises ValueError early for a bad URL
        self.subscribe_timeout = subscribe_timeout
        self.start_timeout = start_timeout
        self.max_envelope_size = max_envelope_size
        self._deliver: Deliver | None = None
        self._keys: Callable[[], list[Key]] | None = None
        # _launch_lock guards _listener, _pid and _stopped: one listener per process, started once.
        self._launch_lock = threading.Lock()
        self._listener: Listener | None = None
        self._sender: StandInSender | None = None
        self._history: RedisHistory | None = None
        self._pid = 0
        self._stopped = False

    def __repr__(self) -> str:
        listener = self._listener
        return f"<RedisBroker {listener.node_id if listener else 'not started'}>"

    @property
    def node_id(self) -> str | None:
        """This node's name in envelopes and in Redis' CLIENT LIST (None before ``start``)."""
        return self._listener.node_id if self._listener else None

    def start(self, deliver: Deliver, keys: Callable[[], list[Key]]) -> None:
        """Start the listener; blocks until its first connection succeeds or fails (``start_timeout``)."""
        self._deliver, self._keys = deliver, keys
        with self._launch_lock:
            self._launch_locked()

    def _launch_locked(self) -> "Listener":
        assert self._launch_lock.locked(), "must hold the launch lock"
        assert self._deliver is not None and self._keys is not None
        redis = self._redis
        node_id = new_node_id()
        client = redis.Redis.from_url(
            self._url,
            socket_timeout=5.0,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            # No retries inside redis-py: a retried PUBLISH could arrive twice, and
            # the listener does its own reconnecting (with backoff).
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
            client_name=f"rusty_ws-{node_id}",
        )
        listener = Listener(
            client=client,
            errors=(redis.exceptions.RedisError, OSError),
            prefix=self.channel_prefix,
            node_id=node_id,
            deliver=self._deliver,
            keys=self._keys,
            subscribe_timeout=self.subscribe_timeout,
            max_envelope_size=self.max_envelope_size,
        )
        self._sender = StandInSender(client=client, errors=(redis.exceptions.RedisError, OSError), node_id=node_id)
        self._listener, self._pid = listener, os.getpid()
        self._sender.start(self.start_timeout)
        listener.start(self.start_timeout)
        return listener

    def _current(self) -> "Listener":
        """This process's listener; a process forked after ``start`` (gunicorn --preload) gets its own."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("the broker was not started")
        if self._pid == os.getpid() or self._stopped:
            return listener
        with self._launch_lock:
            if self._pid != os.getpid() and not self._stopped:
                # Threads do not survive fork(): the parent's listener is not ours, and
                # neither is its node id (two workers must not drop each other's messages).
                logger.info("process forked: starting this process's own Redis listener")
                self._launch_locked()
            return self._listener  # type: ignore[return-value]

    def publish(self, delivery: Delivery) -> Landed:
        """Deliver here at once, then to the other nodes through Redis.

        The envelope is made first: a delivery that no node could take is
        delivered nowhere, not here only. Blocks for one Redis round trip. Never
        raises for Redis trouble: while Redis is unreachable the publish reaches
        this node's subscribers only, and is counted as ``unsent`` in ``status()``.

        Raises:
            ProtocolError: ``invalid_message``: the envelope would be larger than
                ``max_envelope_size``, or the payload cannot be encoded.
        """
        listener = self._current()
        assert self._deliver is not None
        try:
            envelope = encode_envelope(listener.node_id, delivery)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"the payload is not JSON: {exc}") from None
        if self.max_envelope_size is not None and len(envelope) > self.max_envelope_size:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                f"the message would be {len(envelope)} bytes on Redis, more than the "
                                f"{self.max_envelope_size} any node accepts")
        landed = self._deliver(delivery)
        listener.forward(delivery, envelope)
        return landed

    def history_store(self, size: int, ttl: float, window: float) -> SharedHistory:
        """History in Redis, shared by every node (``redis_history.py``)."""
        def deliver(delivery: Delivery) -> Landed:
            assert self._deliver is not None
            return self._deliver(delivery)

        self._history = RedisHistory(current=self._parts, deliver=deliver, prefix=self.channel_prefix,
                                     size=size, ttl=ttl, window=window, max_envelope_size=self.max_envelope_size)
        return self._history

    def _parts(self) -> tuple[str, Any, Any, bool]:
        """This process's node id, client, sender and whether its listener is connected (for the history)."""
        listener = self._current()
        assert self._sender is not None
        return listener.node_id, listener.client, self._sender, listener.connected

    def interest_added(self, key: Key) -> None:
        """Subscribe to ``key``'s channel; blocks until Redis confirms (while connected)."""
        self._current().interest_changed(key)

    def interest_removed(self, key: Key) -> None:
        """Unsubscribe from ``key``'s channel; blocks until Redis confirms (while connected)."""
        self._current().interest_changed(key)

    def wait_connected(self, connected: bool = True, timeout: float = 5.0) -> bool:
        """Block until the listener is (or is not) connected; False if ``timeout`` passed first."""
        return self._current().wait_connected(connected, timeout)

    def status(self) -> dict[str, Any]:
        """``/healthz``'s view: name, connected, node, channels, unsent and dropped counts."""
        status = {"name": self.name, **self._current().status()}
        if self._history is not None:
            history = self._history.status()
            status["unsent"] += history.pop("unsent")  # publishes Redis did not take, either way
            status.update(history)
        return status

    def stop(self, timeout: float = 5.0) -> None:
        """End the listener thread and close the connections. Idempotent; blocks up to ``timeout``."""
        with self._launch_lock:
            if self._stopped:
                return
            self._stopped = True
            listener, ours = self._listener, self._pid == os.getpid()
        if listener is not None and ours:
            listener.stop(timeout)
