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
does not depend on Redis), then queues a PUBLISH of the envelope to the node's
sender (``redis_sender.py``), which pipelines whatever waits into one write on
its own connection: the publisher never waits for a round trip. The envelope
comes first so that a delivery no node would take (larger than
``max_envelope_size``, which listeners also enforce) is refused before it
reaches anyone. Every node's listener drops its own envelopes coming back, so
each subscriber gets each message exactly once. The sender has one FIFO queue,
one connection and one thread, so one connection's (one thread's) publishes
reach Redis, and therefore every node, in the order it made them. An
acknowledged publish (``on_landed``) is answered from the sender's thread once
Redis replied to its PUBLISH.

History. With history on the hub does not call ``publish``: ``history_store``
gives it a ``RedisHistory`` (``redis_history.py``), whose script numbers,
keeps and PUBLISHes each message in Redis (a version-5 envelope, with offsets
and epoch, which every node's listener delivers, this node's too: an envelope's
deliveries at once, framed without a ``Delivery`` each: this node's own run that
``take_own`` took through ``SharedStreams.deliver_own`` (``Broker.deliver_own``),
another node's through ``SharedStreams.deliver_remote`` (``Broker.deliver_remote``);
this node's own that ``take_own`` could not take one by one through
``_from_channel``, which drops a copy of this node's own publish already
delivered here when Redis seemed unreachable).

Threads. One sender thread per broker (``rusty_ws-redis-sender-{node}``)
owns the publishing connection. One listener thread per broker (``rusty_ws-redis-{node}``, in
``redis_listener.py``) owns the subscriber connection: it is the only thread
that reads or writes it. Other
threads mark the (topic, session) pairs whose interest changed and wake it
with an empty message on the node's own control channel; the listener then
reconciles those pairs against the hub's registry (the truth, read after the
marks) and confirms with a PING barrier. On any error it drops the
connection, waits (``backoff.delays``), reconnects, and subscribes again to
every pair the registry holds: it never relies on what the old connection had.

Outage. While the listener is not connected the node is "disconnected"
(``/healthz``): publishes elsewhere do not reach it. While the sender is not
connected, its publishes are delivered locally only and counted as ``unsent``:
the sender fails what is queued at once (``sender.unsent`` in ``/healthz``),
so its queue stays bounded and publishers are not held for the outage.
Nothing is replayed.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..protocol import Delivery
from .base import Broker, Deliver, Key, Landed, OnLanded, SharedHistory
from .redis_codec import (
    DEFAULT_CHANNEL_PREFIX,
    channel_name,
    checked_encoding,
    decode_envelope,
    encode_envelope,
    key_of_channel,
    merge_envelopes,
    split_url,
)
from .redis_history import RedisHistory, Route
from .redis_listener import Listener
from .redis_sender import Mergeable, RedisSender

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
#: Defaults of ``RUSTY_WS_REDIS_SEND_QUEUE`` and ``RUSTY_WS_REDIS_SEND_QUEUE_BYTES``.
SEND_QUEUE = 10_000
SEND_QUEUE_BYTES = 32 * 1024 * 1024
#: Most bytes of envelopes merged into one PUBLISH (never more than ``max_envelope_size``).
MERGE_BYTES = 256 * 1024
#: Bytes of a version-4 envelope besides its deliveries (and a comma each) and the node's id
#: (``{"v":4,"node":"","deliveries":[]}``: 34), and of a version 1 besides its delivery and the node's id.
_ENVELOPE_HEAD = 40
_ENVELOPE_FIXED = len(b'{"v":1,"node":"","delivery":}')
#: What a PUBLISH counts for in the sender's queue besides its channel and envelope (``redis_sender._size``).
_PUBLISH_SIZE = len("PUBLISH") + 3 * 16


class _PlainPublish(Mergeable):
    """One PUBLISH of a version-1 envelope (history off), as ``RedisBroker.publish`` hands it to the sender.

    What the sender asks of a ``Mergeable`` is read off its arguments (properties), and
    what is the same for every publish of a node (``merge``, ``head``, ``budget``, the
    envelope's fixed bytes) is an attribute of the node's own subclass (``_plain_kind``):
    no attribute is set per publish (``Mergeable.of`` set six, a dict each time, ~0.2 µs
    of the publisher's thread), as ``redis_history._Publish`` does for the history's.
    """

    __slots__ = ()
    #: The node id this kind is for (``RedisBroker.publish`` makes another after a fork).
    node_id = ""
    #: A version-1 envelope's bytes besides its delivery, less one (the comma a merged delivery takes).
    fixed = 0

    @property
    def group(self) -> Any:  # the pair's channel
        return self[1]

    @property
    def weight(self) -> int:  # type: ignore[override]
        return len(self[2]) - self.fixed

    @property
    def size(self) -> int:  # type: ignore[override]  # ``redis_sender._size``'s estimate
        return len(self[1]) + len(self[2]) + _PUBLISH_SIZE


def _plain_kind(node_id: str, merge: Any, max_envelope_size: int | None) -> type[_PlainPublish]:
    """The ``_PlainPublish`` of one node: its id, merge and budget (``MERGE_BYTES``, within ``max_envelope_size``)."""
    return type("_NodePublish", (_PlainPublish,), {
        "__slots__": (), "node_id": node_id, "merge": staticmethod(merge), "fixed": len(node_id) + _ENVELOPE_FIXED - 1,
        "head": len(node_id) + _ENVELOPE_HEAD, "budget": min(MERGE_BYTES, max_envelope_size or MERGE_BYTES)})


# --------------------------------------------------------------------------- node ids


#: This process's pid, kept up to date in a forked child (``os.register_at_fork``): the broker's
#: check for a fork, on every publish, reads it instead of making a system call.
_this_process = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _this_process.__setitem__(0, os.getpid()))


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
        send_queue: commands the sender may hold waiting (past it, publishers wait for room).
        send_queue_bytes: bytes the sender may hold waiting (the same).

    Raises:
        RuntimeError: the ``redis`` package is not installed.
        ValueError: the URL is not usable.
    """

    name = "redis"
    distributed = True

    def __init__(self, url: str, *, subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
                 start_timeout: float = START_TIMEOUT, max_envelope_size: int | None = None,
                 send_queue: int = SEND_QUEUE, send_queue_bytes: int = SEND_QUEUE_BYTES) -> None:
        self._redis = _import_redis()
        self._url, self.channel_prefix = split_url(url)
        self._redis.connection.ConnectionPool.from_url(self._url)  # raises ValueError early for a bad URL
        self.subscribe_timeout = subscribe_timeout
        self.start_timeout = start_timeout
        self.max_envelope_size = max_envelope_size
        self.send_queue, self.send_queue_bytes = send_queue, send_queue_bytes
        self._deliver: Deliver | None = None
        self._keys: Callable[[], list[Key]] | None = None
        # _launch_lock guards _listener, _sender, _pid and _stopped: one of each per process, started once.
        self._launch_lock = threading.Lock()
        self._listener: Listener | None = None
        self._sender: RedisSender | None = None
        self._history: RedisHistory | None = None
        self._publish_kind: type[_PlainPublish] = _PlainPublish  # made for the node id by the first publish
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
        errors = (redis.exceptions.RedisError, OSError)
        sender = RedisSender(client=self._client(f"rusty_ws-sender-{node_id}"), errors=errors, node_id=node_id,
                             max_commands=self.send_queue, max_bytes=self.send_queue_bytes)
        listener = Listener(
            client=self._client(f"rusty_ws-{node_id}"),
            errors=errors,
            prefix=self.channel_prefix,
            node_id=node_id,
            deliver=self._from_channel,
            deliver_run=self.deliver_run,  # set by the hub before start (None: one by one)
            deliver_own=self.deliver_own,  # set by the hub before start (None: through deliver_run)
            deliver_remote=self.deliver_remote,  # set by the hub before start (None: through deliver_run)
            keys=self._keys,
            subscribe_timeout=self.subscribe_timeout,
            max_envelope_size=self.max_envelope_size,
            batch=self.batch_deliveries,  # set by the hub before start
            take_own=self._history.take_own if self._history is not None else None,
            on_disconnect=self._history.forget_kept if self._history is not None else None,
        )
        if self._history is not None:
            self._history.forget_kept()  # a forked process: its parent's are not its own
        self._listener, self._sender, self._pid = listener, sender, os.getpid()
        if self._history is not None:
            sender.script_load(self._history.publish_script)  # queued ahead of any EVALSHA
        sender.start(self.start_timeout)
        listener.start(self.start_timeout)
        return listener

    def _client(self, name: str) -> Any:
        redis = self._redis
        return redis.Redis.from_url(
            self._url,
            socket_timeout=5.0,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            # No retries inside redis-py: a retried PUBLISH could arrive twice, and the
            # listener and the sender do their own reconnecting (with backoff).
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
            client_name=name,
        )

    def _current(self) -> "Listener":
        """This process's listener; a process forked after ``start`` (gunicorn --preload) gets its own."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("the broker was not started")
        if self._pid == _this_process[0] or self._stopped:
            return listener
        with self._launch_lock:
            if self._pid != os.getpid() and not self._stopped:
                # Threads do not survive fork(): the parent's listener and sender are not
                # ours, nor is its node id (two workers must not drop each other's messages).
                logger.info("process forked: starting this process's own Redis listener and sender")
                self._launch_locked()
            return self._listener  # type: ignore[return-value]

    @property
    def sender(self) -> RedisSender:
        """This process's Redis sender: ``submit`` queues any command (scripts: ``script_load``)."""
        self._current()
        assert self._sender is not None
        return self._sender

    def publish(self, delivery: Delivery, on_landed: OnLanded | None = None) -> Landed:
        """Deliver here at once, then queue the PUBLISH for the other nodes; never waits for Redis.

        The envelope is made first: a delivery that no node could take is
        delivered nowhere, not here only. Never raises for Redis trouble: while
        Redis is unreachable the publish reaches this node's subscribers only, and
        is counted as ``unsent`` in ``status()``. Blocks only while the sender's
        queue is full (backpressure).

        Args:
            on_landed: called on the sender's thread once Redis took the PUBLISH, with
                this node's ``Landed``, or with the exception if Redis could not be reached.

        Raises:
            ProtocolError: ``invalid_message``: the envelope would be larger than
                ``max_envelope_size``, or the payload cannot be encoded.
        """
        listener = self._current()
        assert self._deliver is not None and self._sender is not None
        node_id = listener.node_id
        # Encoded once, for the envelope and the local frame (``deliver_encoded``, the hub's).
        encoded, envelope = checked_encoding(node_id, delivery, self.max_envelope_size)
        deliver_encoded = self.deliver_encoded
        landed = self._deliver(delivery) if deliver_encoded is None else deliver_encoded(delivery, encoded)
        channel = channel_name(self.channel_prefix, delivery.topic, delivery.session_id)
        # Merged by the sender with the next publishes of the pair, as one PUBLISH of a version-4 envelope.
        kind = self._publish_kind
        if kind.node_id != node_id:  # the first publish (or the first after a fork: a new node id)
            kind = self._publish_kind = _plain_kind(node_id, self._merge, self.max_envelope_size)
        command = kind(("PUBLISH", channel, envelope))
        if on_landed is None:
            self._sender.submit(command)
        else:
            def on_reply(reply: Any) -> None:
                on_landed(reply if isinstance(reply, BaseException) else landed)

            self._sender.submit(command, on_reply)
        return landed

    def _merge(self, commands: list[Mergeable], run_id: str = "") -> tuple[tuple[Any, ...], Callable[[Any], list[Any]]]:
        """One PUBLISH of a version-4 envelope for consecutive PUBLISHes of one channel (``RedisSender``;
        ``run_id``, the Redis', is of no use to a PUBLISH)."""
        envelopes = [command[2] for command in commands]
        node_id = self._current().node_id
        count = len(commands)
        return ("PUBLISH", commands[0][1], merge_envelopes(node_id, envelopes)), lambda reply: [reply] * count

    def history_store(self, size: int, ttl: float, window: float, max_bytes: int | None = None) -> SharedHistory:
        """History in Redis, shared by every node (``redis_history.py``)."""
        def deliver(delivery: Delivery) -> Landed:
            assert self._deliver is not None
            return self._deliver(delivery)

        self._history = RedisHistory(node_id=self._node_id_now, route=self._route, deliver=deliver,
                                     prefix=self.channel_prefix, size=size, ttl=ttl, window=window,
                                     max_envelope_size=self.max_envelope_size, max_bytes=max_bytes,
                                     keeps=self._listens_to, submit_for=self._submit_for)
        return self._history

    def _node_id_now(self) -> str:
        """This process's node id (``RedisHistory``'s ``node_id``, once per publish): ``_current()``'s,
        read at once while the process is the one that started the listener."""
        listener = self._listener
        if listener is not None and self._pid == _this_process[0]:
            return listener.node_id
        return self._current().node_id

    def _listens_to(self, channel: bytes) -> bool:
        """Whether this process's listener is subscribed to ``channel`` (``RedisHistory``'s ``keeps``;
        it asked for the node id first, which starts a forked process's own listener)."""
        listener = self._listener
        return listener is not None and self._pid == _this_process[0] and listener.listens_to(channel)

    def _from_channel(self, delivery: Delivery) -> Landed:
        """What the listener delivers: not a publish of this node's already delivered here (history)."""
        assert self._deliver is not None
        history = self._history
        if history is not None and not history.arrived(delivery):
            return Landed(None, 0)
        return self._deliver(delivery)

    def _submit_for(self, session_id: str) -> Callable[..., None]:
        """Where the history's publishes go (any session): ``_route``'s ``submit``, without the rest."""
        if self._pid != _this_process[0]:
            self._current()  # a forked process: its own sender
        sender = self._sender
        assert sender is not None
        return sender.submit

    def _route(self, session_id: str) -> Route:
        """Where the history's commands go (any session): this process's client, sender and listener's state."""
        listener = self._current()
        assert self._sender is not None
        return Route(listener.client, self._sender.submit, listener.connected)

    def interest_added(self, key: Key) -> None:
        """Subscribe to ``key``'s channel; blocks until Redis confirms (while connected)."""
        self._current().interest_changed(key)

    def interest_removed(self, key: Key) -> None:
        """Unsubscribe from ``key``'s channel; blocks until Redis confirms (while connected)."""
        self._current().interest_changed(key)

    def wait_connected(self, connected: bool = True, timeout: float = 5.0) -> bool:
        """Block until the listener and the sender are connected, or (False) until the listener is not.

        A sender notices a Redis that went away only when it next writes (or PINGs
        an idle connection), so ``connected=False`` waits for the listener alone.
        False if ``timeout`` passed first.
        """
        listener = self._current()
        if not connected:
            return listener.wait_connected(False, timeout)
        deadline = time.monotonic() + timeout
        return listener.wait_connected(True, timeout) and self.sender.wait_connected(
            True, max(0.0, deadline - time.monotonic()))

    def wait_sent(self, timeout: float = 5.0) -> bool:
        """Block until every publish queued so far was answered by Redis or failed; False on timeout."""
        return self.sender.wait_drained(timeout)

    def status(self) -> dict[str, Any]:
        """``/healthz``'s view: name, connected (the listener), node, channels, unsent, dropped, the sender's counts.

        With history in Redis also ``history`` and its counts.
        """
        listener = self._current()
        assert self._sender is not None
        sender = self._sender.status()
        status = {"name": self.name, **listener.status(), "unsent": sender["unsent"], "sender": sender}
        status["connected"] = status["connected"] and sender["connected"]
        if self._history is not None:
            status.update(self._history.status())
        return status

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued, end the sender and listener threads, close the connections.

        Idempotent; blocks up to about ``timeout`` for each thread.
        """
        with self._launch_lock:
            if self._stopped:
                return
            self._stopped = True
            listener, sender, ours = self._listener, self._sender, self._pid == os.getpid()
        if sender is not None and ours:
            sender.stop(timeout)
        if listener is not None and ours:
            listener.stop(timeout)
