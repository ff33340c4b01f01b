"""The Redis broker: publishes cross processes and machines through Redis pub/sub.

Install with ``pip install rusty_ws[redis]`` and set
``RUSTY_WS_BROKER_URL=redis://host:6379/0``. ``docs/scaling.md`` is the
operator's view; this is the implementer's.

Channels. Each (topic, session) is one Redis channel (``channel_name``), so
Redis itself routes a publish only to the nodes that subscribed to it. A node
subscribes to a channel while it has local subscribers for that pair: the hub
calls ``interest_added`` / ``interest_removed`` on the first / last local
subscriber, and ``interest_added`` returns once Redis has the subscription, so
a client whose ``subscribe`` was answered receives every later publish, from
any node.

Publishing. ``publish`` hands the delivery to this node's subscribers at once
(local delivery does not depend on Redis), then PUBLISHes it, wrapped in an
envelope that names this node. Every node's listener drops its own envelopes
coming back, so each subscriber gets each message exactly once. A PUBLISH is a
synchronous round trip on the publishing thread, so one connection's publishes
reach Redis, and therefore every node, in the order it made them.

Threads. One listener thread per broker (``rusty_ws-redis-{node}``) owns the
subscriber connection: it is the only thread that reads or writes it. Other
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

import itertools
import logging
import os
import re
import secrets
import socket
import threading
import time
from typing import Any, Callable, Iterator

from .. import backoff
from ..protocol import Delivery
from .base import Broker, Deliver, Key
from .redis_codec import (
    DEFAULT_CHANNEL_PREFIX,
    channel_name,
    control_channel,
    decode_envelope,
    encode_envelope,
    key_of_channel,
    split_url,
)

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
#: Seconds the listener blocks for a message before it looks at its other duties.
POLL_INTERVAL = 1.0
#: Seconds of silence on the subscriber connection before the listener PINGs Redis...
KEEPALIVE_INTERVAL = 5.0
#: ...and seconds it waits for the PONG before it takes Redis for gone and reconnects.
KEEPALIVE_TIMEOUT = 5.0
#: Seconds ``start`` waits for the first connection (so a fresh node is ready when it serves).
START_TIMEOUT = 5.0
#: Channels per SUBSCRIBE command when a node subscribes to everything again.
SUBSCRIBE_CHUNK = 1000

_BARRIER = b"rusty_ws-barrier:"
_READY = b"rusty_ws-ready"
_KEEPALIVE = b"rusty_ws-keepalive"


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
            "pip install 'rusty_ws[redis]'"
        ) from None
    return redis


# --------------------------------------------------------------------------- the broker


class RedisBroker(Broker):
    """Carries publishes between nodes through Redis pub/sub. Safe to call from any thread.

    Args:
        url: ``redis://`` or ``rediss://`` URL, with an optional ``channel_prefix=`` query
            option (default ``rusty_ws``) to keep deployments that share a Redis apart
            (pub/sub ignores the database number).
        subscribe_timeout: seconds a subscribe or unsubscribe waits for Redis to confirm.
        start_timeout: seconds ``start`` waits for the first connection.

    Raises:
        RuntimeError: the ``redis`` package is not installed.
        ValueError: the URL is not usable.
    """

    name = "redis"
    distributed = True

    def __init__(self, url: str, *, subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
                 start_timeout: float = START_TIMEOUT) -> None:
        self._redis = _import_redis()
        self._url, self.channel_prefix = split_url(url)
        self._redis.connection.ConnectionPool.from_url(self._url)  # raises ValueError early for a bad URL
        self.subscribe_timeout = subscribe_timeout
        self.start_timeout = start_timeout
        self._deliver: Deliver | None = None
        self._keys: Callable[[], list[Key]] | None = None
        # _launch_lock guards _listener, _pid and _stopped: one listener per process, started once.
        self._launch_lock = threading.Lock()
        self._listener: _Listener | None = None
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

    def _launch_locked(self) -> "_Listener":
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
        listener = _Listener(
            client=client,
            errors=(redis.exceptions.RedisError, OSError),
            prefix=self.channel_prefix,
            node_id=node_id,
            deliver=self._deliver,
            keys=self._keys,
            subscribe_timeout=self.subscribe_timeout,
        )
        self._listener, self._pid = listener, os.getpid()
        listener.start(self.start_timeout)
        return listener

    def _current(self) -> "_Listener":
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
                logger.info("= process forked: starting this process's own Redis listener")
                self._launch_locked()
            return self._listener  # type: ignore[return-value]

    def publish(self, delivery: Delivery) -> None:
        """Deliver here at once, then to the other nodes through Redis.

        Blocks for one Redis round trip. Never raises for Redis trouble: while
        Redis is unreachable the publish reaches this node's subscribers only,
        and is counted as ``unsent`` in ``status()``.
        """
        listener = self._current()
        assert self._deliver is not None
        self._deliver(delivery)
        listener.forward(delivery)

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
        return {"name": self.name, **self._current().status()}

    def stop(self, timeout: float = 5.0) -> None:
        """End the listener thread and close the connections. Idempotent; blocks up to ``timeout``."""
        with self._launch_lock:
            if self._stopped:
                return
            self._stopped = True
            listener, ours = self._listener, self._pid == os.getpid()
        if listener is not None and ours:
            listener.stop(timeout)


# --------------------------------------------------------------------------- the listener


class _Listener:
    """The listener thread of one broker, in one process: the worker object with ``stop()``.

    The thread owns the subscriber connection (``pubsub``), ``_channels`` and
    ``_batches``; other threads touch only what ``_lock`` guards.
    """

    def __init__(
        self,
        *,
        client: Any,
        errors: tuple[type[BaseException], ...],
        prefix: str,
        node_id: str,
        deliver: Deliver,
        keys: Callable[[], list[Key]],
        subscribe_timeout: float,
        backoff_delays: Callable[[], Iterator[float]] = lambda: backoff.delays(initial=0.1, cap=5.0),
    ) -> None:
        self.client = client
        self.errors = errors
        self.prefix = prefix
        self.node_id = node_id
        self.control = control_channel(prefix, node_id)
        self.deliver = deliver
        self.keys = keys
        self.subscribe_timeout = subscribe_timeout
        self.backoff_delays = backoff_delays
        # _lock guards _connected, _dirty, _waiters and _counts. Never held across I/O.
        self._lock = threading.Lock()
        # Signalled whenever _connected changes (wait_connected).
        self._connected_changed = threading.Condition(self._lock)
        self._connected = False
        self._dirty: set[Key] = set()             # pairs whose interest changed since the last reconcile
        self._waiters: list[threading.Event] = []  # set once a reconcile that saw their marks is confirmed
        self._counts = {"unsent": 0, "dropped": 0, "reconnects": 0}
        self._warned_unsent = False
        self._ever_connected = False
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        # Owned by the listener thread:
        self._channels: dict[bytes, Key] = {}
        self._batches: dict[int, list[threading.Event]] = {}
        self._batch_ids = itertools.count(1)
        # Daemon: a hub nobody shut down must not keep the process alive; stop() joins it.
        self._thread = threading.Thread(target=self._run, name=f"rusty_ws-redis-{node_id}", daemon=True)

    # ------------------------------------------------------------------ any thread

    def start(self, timeout: float) -> None:
        """Start the thread (last, once everything above exists); wait for its first connection attempt."""
        self._thread.start()
        if not self._first_attempt.wait(timeout):
            logger.warning("! Redis did not answer within %.1fs; going on without it for now", timeout)

    def stop(self, timeout: float) -> None:
        """Ask the thread to end, wake it, and join it. Idempotent."""
        self._stop.set()
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("! %s did not stop within %.1fs", self._thread.name, timeout)
        try:
            self.client.close()
        except self.errors:
            pass

    def forward(self, delivery: Delivery) -> None:
        """PUBLISH ``delivery`` for the other nodes, or count it as unsent while disconnected."""
        if self._connected:
            try:
                self.client.publish(channel_name(self.prefix, delivery.topic, delivery.session_id),
                                    encode_envelope(self.node_id, delivery))
                return
            except self.errors as exc:
                reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "Redis is unreachable"
        with self._lock:
            self._counts["unsent"] += 1
            warn, self._warned_unsent = not self._warned_unsent, True
        if warn:
            logger.warning("! publishes reach this node's subscribers only (%s)", reason)

    def interest_changed(self, key: Key) -> None:
        """Mark ``key`` for the listener to reconcile; while connected, wait until Redis has it."""
        done = threading.Event()
        with self._lock:
            self._dirty.add(key)
            if not self._connected:
                return  # the reconnect subscribes to whatever the registry holds then
            self._waiters.append(done)
        if self._wake() and not done.wait(self.subscribe_timeout):
            logger.warning("! Redis did not confirm the (un)subscription of %r within %.1fs",
                           key, self.subscribe_timeout)

    def wait_connected(self, connected: bool, timeout: float) -> bool:
        with self._lock:
            return self._connected_changed.wait_for(lambda: self._connected == connected, timeout)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"connected": self._connected, "node": self.node_id,
                    "channels": len(self._channels), **self._counts}

    def _wake(self) -> bool:
        """Wake the thread with an empty message on the control channel; False if Redis refused."""
        if not self._connected:
            return False
        try:
            self.client.publish(self.control, b"")
            return True
        except self.errors:
            return False

    def _set_connected(self, connected: bool) -> None:
        with self._lock:
            self._connected = connected
            if connected:
                self._warned_unsent = False
            else:
                waiters, self._waiters = self._waiters, []
            self._connected_changed.notify_all()
        if not connected:
            for batch in [*self._batches.values(), waiters]:
                for done in batch:
                    done.set()  # nobody waits for a confirmation that cannot come
            self._batches.clear()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        delays = self.backoff_delays()
        warned = False  # the first failure of an outage is a warning; its retries are debug
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                self._subscribe_all(pubsub)
                self._listen(pubsub)
            except self.errors as exc:
                if self._connected or not warned:
                    logger.warning("! Redis connection lost or refused (%s); reconnecting with backoff", exc)
                else:
                    logger.debug("- Redis still unreachable: %s", exc)
                warned = True
            except Exception:
                logger.exception("! the Redis listener failed; reconnecting")
            finally:
                if self._connected:
                    delays = self.backoff_delays()  # a good connection starts the backoff over
                self._set_connected(False)
                self._channels.clear()
                self._first_attempt.set()
                try:
                    pubsub.close()
                except Exception:
                    pass
            self._stop.wait(next(delays))
        logger.debug("- %s stopped", threading.current_thread().name)

    def _subscribe_all(self, pubsub: Any) -> None:
        """Subscribe to the control channel and every pair the registry holds; PING when sent."""
        with self._lock:
            self._dirty.clear()  # the keys() read below sees every mark made so far
        self._channels = {channel_name(self.prefix, *key): key for key in self.keys()}
        pubsub.subscribe(self.control)
        channels = list(self._channels)
        for start in range(0, len(channels), SUBSCRIBE_CHUNK):
            pubsub.subscribe(*channels[start:start + SUBSCRIBE_CHUNK])
        pubsub.ping(_READY)  # its PONG says Redis has every subscription: then we are connected

    def _listen(self, pubsub: Any) -> None:
        last_heard = time.monotonic()
        ping_sent_at = 0.0
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=POLL_INTERVAL)
            now = time.monotonic()
            if message is not None:
                last_heard, ping_sent_at = now, 0.0
                self._dispatch(pubsub, message)
            if self._connected and (self._dirty or self._waiters):
                self._reconcile(pubsub)
            if ping_sent_at and now - ping_sent_at > KEEPALIVE_TIMEOUT:
                raise self.errors[0](f"no PONG from Redis within {KEEPALIVE_TIMEOUT:.0f}s")
            if not ping_sent_at and now - last_heard > KEEPALIVE_INTERVAL:
                pubsub.ping(_KEEPALIVE)
                ping_sent_at = now

    def _dispatch(self, pubsub: Any, message: dict[str, Any]) -> None:
        kind, channel, data = message.get("type"), message.get("channel"), message.get("data")
        if kind == "pong":
            self._on_pong(pubsub, data)
        elif kind != "message":
            return
        elif channel == self.control:
            self._reconcile(pubsub)
        else:
            self._on_delivery(channel, data)

    def _on_pong(self, pubsub: Any, data: bytes) -> None:
        if data == _READY:
            with self._lock:
                if self._ever_connected:
                    self._counts["reconnects"] += 1
                self._ever_connected = True
            logger.info("= Redis connected (node %s, %d channels)", self.node_id, len(self._channels))
            self._set_connected(True)
            self._first_attempt.set()
            self._reconcile(pubsub)  # pairs marked while we were connecting
        elif data.startswith(_BARRIER):
            batch = int(data[len(_BARRIER):])
            for number in [n for n in self._batches if n <= batch]:  # PONGs come back in order
                for done in self._batches.pop(number):
                    done.set()

    def _reconcile(self, pubsub: Any) -> None:
        """Bring the subscriptions of every marked pair in line with the registry; PING a barrier."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            waiters, self._waiters = self._waiters, []
        if dirty:
            wanted = set(self.keys())  # read after the marks were taken: at least as new as they are
            subscribe, unsubscribe = [], []
            for key in dirty:
                channel = channel_name(self.prefix, *key)
                if key in wanted and channel not in self._channels:
                    self._channels[channel] = key
                    subscribe.append(channel)
                elif key not in wanted and channel in self._channels:
                    del self._channels[channel]
                    unsubscribe.append(channel)
            if subscribe:
                pubsub.subscribe(*subscribe)
            if unsubscribe:
                pubsub.unsubscribe(*unsubscribe)
        if waiters:
            batch = next(self._batch_ids)
            self._batches[batch] = waiters
            pubsub.ping(_BARRIER + b"%d" % batch)

    def _on_delivery(self, channel: bytes, data: Any) -> None:
        key = self._channels.get(channel)
        if key is None:
            return  # a message sent before Redis had our UNSUBSCRIBE
        try:
            node, delivery = decode_envelope(data, key)
        except (ValueError, TypeError, AttributeError) as exc:
            with self._lock:
                self._counts["dropped"] += 1
            shown = data[:100] if isinstance(data, bytes) else type(data).__name__
            logger.warning("! dropped a message on %r that is no rusty_ws envelope (%s): %r",
                           channel[:200], exc, shown)
            return
        if node == self.node_id:
            return  # ours: delivered locally when it was published
        try:
            self.deliver(delivery)
        except Exception:
            logger.exception("! delivering %s from node %s failed", delivery, node)
