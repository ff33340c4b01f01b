"""The Redis broker's listener thread: the one owner of a node's subscriber connection.

``RedisBroker`` (``redis.py``) is what the hub calls; it hands this class the
work that needs the subscriber connection. The thread ``rusty_ws-redis-{node}``
subscribes to the channels of the (topic, session) pairs the hub's registry
holds, delivers what arrives on them, keeps the connection alive (PING), and
reconnects with backoff. Other threads mark pairs whose interest changed and
wake it through the node's control channel; it reconciles them against the
registry and confirms with a PING barrier (see ``redis.py`` for the whole story).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import backoff
from ..protocol import Delivery
from .base import Deliver, Key, OwnRun, own_deliveries
from .redis_codec import (
    PLAIN_BATCH_ENVELOPE_VERSION,
    RUN_ENVELOPE_VERSION,
    RemoteRun,
    channel_name,
    control_channel,
    decode_received,
    own_envelope_prefix,
)
from .redis_pushes import ERROR, PushLink

__all__ = ["Listener"]

logger = logging.getLogger("rusty_ws.server")

#: Seconds the listener blocks for a message before it looks at its other duties.
POLL_INTERVAL = 1.0
#: Seconds of silence on the subscriber connection before the listener PINGs Redis...
KEEPALIVE_INTERVAL = 5.0
#: ...and seconds it waits for the PONG before it takes Redis for gone and reconnects.
KEEPALIVE_TIMEOUT = 5.0
#: Channels per SUBSCRIBE command when a node subscribes to everything again.
SUBSCRIBE_CHUNK = 1000

_BARRIER = b"rusty_ws-barrier:"
_READY = b"rusty_ws-ready"
_KEEPALIVE = b"rusty_ws-keepalive"


class Listener:
    """The listener thread of one broker, in one process: the worker object with ``stop()``.

    The thread owns the subscriber connection (a ``PushLink``, ``redis_pushes.py``),
    ``_channels`` and ``_batches``; other threads touch only what ``_lock`` guards.
    """

    def __init__(
        self,
        *,
        client: Any,
        errors: tuple[type[BaseException], ...],
        prefix: str,
        node_id: str,
        deliver: Deliver,
        keys: Callable[..., list[Key]],
        subscribe_timeout: float,
        max_envelope_size: int | None = None,
        backoff_delays: Callable[[], Iterator[float]] = lambda: backoff.delays(initial=0.1, cap=5.0),
        batch: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        take_own: Callable[[Key, bytes, bytes], OwnRun | None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        deliver_run: Callable[[list[Delivery]], None] | None = None,
        deliver_own: Callable[[OwnRun], None] | None = None,
        deliver_remote: Callable[[RemoteRun], None] | None = None,
    ) -> None:
        import redis.exceptions  # the broker imported it already: this is the redis extra

        self.client = client
        self.exceptions = redis.exceptions
        self.errors = errors
        self.prefix = prefix
        self.node_id = node_id
        self.control = control_channel(prefix, node_id)
        # This node's envelopes without history start so (versions 1 and 4).
        self._own = (own_envelope_prefix(node_id), own_envelope_prefix(node_id, PLAIN_BATCH_ENVELOPE_VERSION))
        # ...and with history (version 5): their deliveries are taken from what the history kept.
        self._own_run = own_envelope_prefix(node_id, RUN_ENVELOPE_VERSION)
        #: ``RedisHistory.take_own`` (None: every history envelope is decoded).
        self.take_own = take_own
        #: Called when the connection is lost: what comes on it while it is down never arrives.
        self.on_disconnect = on_disconnect
        self.deliver = deliver
        #: Delivers an envelope's deliveries at once (``Broker.deliver_run``); None: ``deliver`` each.
        #: Never given this node's own publishes that ``take_own`` did not take: those go through
        #: ``deliver``, whose exactly-once check (``RedisHistory.arrived``) they need.
        self.deliver_run = deliver_run
        #: Delivers a run of this node's own publishes that ``take_own`` took (``Broker.deliver_own``);
        #: None: ``deliver_run`` (or ``deliver`` each) of its ``own_deliveries``.
        self.deliver_own = deliver_own
        #: Delivers another node's version-5 envelope, checked and encoded (``Broker.deliver_remote``);
        #: None: ``deliver_run`` (or ``deliver`` each) of its decoded deliveries.
        self.deliver_remote = deliver_remote
        self.keys = keys
        self.subscribe_timeout = subscribe_timeout
        #: Larger envelopes are dropped unread (None: no limit); see ``RedisBroker``.
        self.max_envelope_size = max_envelope_size
        self.backoff_delays = backoff_delays
        #: Opens the block the pushes of one read are handled in (``Broker.batch_deliveries``).
        self.batch = batch
        # _lock guards _connected, _dirty, _waiters and _counts. Never held across I/O.
        self._lock = threading.Lock()
        # Signalled whenever _connected changes (wait_connected).
        self._connected_changed = threading.Condition(self._lock)
        self._connected = False
        self._dirty: set[Key] = set()             # pairs whose interest changed since the last reconcile
        self._waiters: list[threading.Event] = []  # set once a reconcile that saw their marks is confirmed
        self._counts = {"dropped": 0, "reconnects": 0}  # unsent publishes: the sender counts them
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
            logger.warning("Redis did not answer within %.1fs; going on without it for now", timeout)

    def stop(self, timeout: float) -> None:
        """Ask the thread to end, wake it, and join it. Idempotent."""
        self._stop.set()
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("%s did not stop within %.1fs", self._thread.name, timeout)
        try:
            self.client.close()
        except self.errors:
            pass

    def interest_changed(self, key: Key) -> None:
        """Mark ``key`` for the listener to reconcile; while connected, wait until Redis has it."""
        done = threading.Event()
        with self._lock:
            self._dirty.add(key)
            if not self._connected:
                return  # the reconnect subscribes to whatever the registry holds then
            self._waiters.append(done)
        if self._wake() and not done.wait(self.subscribe_timeout):
            logger.warning("Redis did not confirm the (un)subscription of %r within %.1fs",
                           key, self.subscribe_timeout)

    def listens_to(self, channel: bytes) -> bool:
        """Whether the thread is subscribed to ``channel`` now, as far as it knows (a dict lookup: no lock)."""
        return channel in self._channels

    @property
    def connected(self) -> bool:
        """Whether the subscriber connection is up (a read of one bool: no lock)."""
        return self._connected

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
            if not connected:
                waiters, self._waiters = self._waiters, []
            self._connected_changed.notify_all()
        if not connected:
            if self.on_disconnect is not None:
                self.on_disconnect()
            for batch in [*self._batches.values(), waiters]:
                for done in batch:
                    done.set()  # nobody waits for a confirmation that cannot come
            self._batches.clear()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        delays = self.backoff_delays()
        warned = False  # the first failure of an outage is a warning; its retries are debug
        while not self._stop.is_set():
            link = PushLink(self.client, self.exceptions)  # connects on its first command
            try:
                self._subscribe_all(link)
                self._listen(link)
            except self.errors as exc:
                if self._connected or not warned:
                    logger.warning("Redis connection lost or refused (%s); reconnecting with backoff", exc)
                else:
                    logger.debug("- Redis still unreachable: %s", exc)
                warned = True
            except Exception:
                logger.exception("the Redis listener failed; reconnecting")
            finally:
                if self._connected:
                    delays = self.backoff_delays()  # a good connection starts the backoff over
                self._set_connected(False)
                self._channels.clear()
                self._first_attempt.set()
                link.close()
            self._stop.wait(next(delays))
        logger.debug("- %s stopped", threading.current_thread().name)

    def _subscribe_all(self, link: PushLink) -> None:
        """Subscribe to the control channel and every pair the registry holds; PING when sent."""
        with self._lock:
            self._dirty.clear()  # the keys() read below sees every mark made so far
        self._channels = {channel_name(self.prefix, *key): key for key in self.keys()}
        link.subscribe(self.control)
        channels = list(self._channels)
        for start in range(0, len(channels), SUBSCRIBE_CHUNK):
            link.subscribe(*channels[start:start + SUBSCRIBE_CHUNK])
        link.ping(_READY)  # its PONG says Redis has every subscription: then we are connected

    def _listen(self, link: PushLink) -> None:
        """Read pushes until stopped; every push read in one go is handled before the duties below."""
        last_heard = time.monotonic()
        ping_sent_at = 0.0
        dispatch = self._dispatch
        while not self._stop.is_set():
            pushes = link.read(POLL_INTERVAL)
            now = time.monotonic()
            if pushes:
                last_heard, ping_sent_at = now, 0.0
                with self.batch():  # what they deliver is written when all are handled
                    for push in pushes:
                        dispatch(link, push)
            if self._connected and (self._dirty or self._waiters):
                self._reconcile(link)
            if ping_sent_at and now - ping_sent_at > KEEPALIVE_TIMEOUT:
                raise self.errors[0](f"no PONG from Redis within {KEEPALIVE_TIMEOUT:.0f}s")
            if not ping_sent_at and now - last_heard > KEEPALIVE_INTERVAL:
                link.ping(_KEEPALIVE)
                ping_sent_at = now

    #: The push kind that carries a channel's message (``b"smessage"`` for sharded pub/sub).
    message_kind = b"message"

    def _dispatch(self, link: PushLink, push: list[Any]) -> None:
        """One push: ``[message_kind, channel, data]``, ``[b"pong", data]``, an error reply (``[ERROR, exc]``:
        ``_on_error_reply``); any other goes to ``_on_other_push``."""
        kind = push[0]
        if kind == self.message_kind and len(push) == 3:
            if push[1] == self.control:
                self._reconcile(link)
            else:
                self._on_delivery(push[1], push[2])
        elif kind == b"pong" and len(push) == 2:
            self._on_pong(link, push[1])
        elif kind is ERROR:
            self._on_error_reply(push[1])
        else:
            self._on_other_push(push)

    def _on_error_reply(self, exc: BaseException) -> None:
        """Redis refused a command: here the connection is given up (raised: reconnect, subscribe everything)."""
        raise exc

    def _on_other_push(self, push: list[Any]) -> None:
        """A push neither a message nor a pong: here the (un)subscribe replies, which need nothing."""

    def _on_pong(self, link: PushLink, data: bytes) -> None:
        if data == _READY:
            with self._lock:
                if self._ever_connected:
                    self._counts["reconnects"] += 1
                self._ever_connected = True
            logger.info("Redis connected (node %s, %d channels)", self.node_id, len(self._channels))
            self._set_connected(True)
            self._first_attempt.set()
            self._reconcile(link)  # pairs marked while we were connecting
        elif data.startswith(_BARRIER):
            batch = int(data[len(_BARRIER):])
            for number in [n for n in self._batches if n <= batch]:  # PONGs come back in order
                for done in self._batches.pop(number):
                    done.set()

    def _reconcile(self, link: PushLink) -> None:
        """Bring the subscriptions of every marked pair in line with the registry; PING a barrier."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            waiters, self._waiters = self._waiters, []
        if dirty:
            # Read after the marks were taken: at least as new as they are. Only the marked
            # keys: the registry's lock is never held for work that grows with its size.
            wanted = set(self.keys(dirty))
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
                link.subscribe(*subscribe)
            if unsubscribe:
                link.unsubscribe(*unsubscribe)
        if waiters:
            batch = next(self._batch_ids)
            self._batches[batch] = waiters
            link.ping(_BARRIER + b"%d" % batch)

    def _on_delivery(self, channel: bytes, data: Any) -> None:
        key = self._channels.get(channel)
        if key is None:
            return  # a message sent before Redis had our UNSUBSCRIBE
        if isinstance(data, bytes):
            if data.startswith(self._own):
                return  # ours, without history: delivered here when it was published (not worth decoding)
            if self.take_own is not None and data.startswith(self._own_run):
                own = self.take_own(key, data, self._own_run)  # ours, with history: kept when published
                if own is not None:
                    self._deliver_own(own)
                    return
        try:
            node, deliveries = decode_received(data, key, self.max_envelope_size,
                                               self.node_id if self.deliver_remote is not None else None)
        except (ValueError, TypeError, AttributeError) as exc:
            with self._lock:
                self._counts["dropped"] += 1
            shown = data[:100] if isinstance(data, bytes) else type(data).__name__
            logger.warning("dropped a message on %r that is no rusty_ws envelope (%s): %r",
                           channel[:200], exc, shown)
            return
        if type(deliveries) is RemoteRun:  # another node's run with history
            self._deliver_remote(deliveries)
            return
        self._deliver_all(node, deliveries)  # type: ignore[arg-type]  # a list of deliveries

    def _deliver_remote(self, run: RemoteRun) -> None:
        """Hand over another node's run (checked by ``decode_received``)."""
        assert self.deliver_remote is not None
        try:
            self.deliver_remote(run)
        except Exception:
            logger.exception("delivering %d deliveries of another node on %s@%s failed", len(run.encodings),
                             run.key[0][:200], run.key[1][:200])

    def _deliver_own(self, run: OwnRun) -> None:
        """Hand over a run of this node's own publishes that ``take_own`` took (already checked)."""
        deliver_own = self.deliver_own
        if deliver_own is None:
            self._deliver_all(self.node_id, own_deliveries(run), taken=True)
            return
        try:
            deliver_own(run)
        except Exception:
            logger.exception("delivering %d of this node's own publishes on %r failed", len(run[3]), run[0])

    def _deliver_all(self, node: str, deliveries: list[Delivery], taken: bool = False) -> None:
        """Hand one envelope's deliveries over; ``taken``: this node's own, from ``take_own`` (already checked)."""
        run = self.deliver_run
        if run is not None and deliveries and (taken or node != self.node_id):
            try:
                run(deliveries)
            except Exception:
                logger.exception("delivering %d deliveries from node %s failed (the first: %s)",
                                 len(deliveries), node, deliveries[0])
            return
        for delivery in deliveries:
            if node == self.node_id and delivery.offset is None:
                continue  # ours, without history (history: see redis_history.py)
            try:
                self.deliver(delivery)
            except Exception:
                logger.exception("delivering %s from node %s failed", delivery, node)
