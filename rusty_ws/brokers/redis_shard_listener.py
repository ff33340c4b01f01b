"""One cluster master's listener thread: the ``Listener`` of ``redis_listener.py`` on sharded pub/sub.

The cluster broker (``redis_cluster.py``) runs one of these per master, each
with its own plain connection to that master, so a node holds one pub/sub
connection per master whatever the number of pairs. The thread works as the
single-Redis listener does (it alone owns the connection; interest marks,
reconciling against the registry, PING barriers, keepalive, reconnect with
backoff), with these differences:

- ``SSUBSCRIBE``/``SUNSUBSCRIBE`` (``shard_channel_name``), only for the pairs
  whose slot this master owns in the broker's current slot map (``owns``), one
  command per slot (Redis refuses one that spans slots);
- the control channel is a shard channel in one of this master's slots, and a
  wake-up is an ``SPUBLISH`` to it on the same master;
- a ``sunsubscribe`` the server pushes (its slot moved away: resharding or
  failover), a ``MOVED`` reply, or a lost connection tells the broker to read
  the slot map again (``on_trouble``; ``moved`` for the first two: a slot moved
  under a live master); the broker then calls ``resync``, which reconciles every
  pair (the registry's and this listener's) against the new map.

The map can be wrong for a while after a move: ``SETSLOT NODE`` reaches the
masters one by one and gossip does the rest, so the node the broker asks may
still give the old owner, or already the new one that does not serve the slot
yet. So ``_channels`` follows what this master said, never the map alone:

- a pair the registry still wants stays subscribed here, whatever the map says,
  until the master pushes its ``sunsubscribe`` (a map from a node not yet told of
  the move would otherwise drop a subscription Redis still serves: what is
  published there would be read and thrown away);
- a ``MOVED`` (or ``ASK``) reply to an ``SSUBSCRIBE``/``SUNSUBSCRIBE`` refuses that
  one command only: its channels are not subscribed here, the broker reads the
  map again, and the connection stays (tearing it down lost what the master's
  other pairs got meanwhile). The replies of each slot's commands are counted
  (``_asked``) to tell which command a refusal answers. A refused control channel,
  or any other error reply, still costs the connection (reconnect, new control).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

from .base import Key
from .redis_cluster_retry import redirected_slot
from .redis_codec import shard_channel_name, shard_control_channel
from .redis_listener import _BARRIER, _READY, SUBSCRIBE_CHUNK, Listener
from .redis_pushes import PushLink
from .redis_slots import key_slot

__all__ = ["ShardListener"]

logger = logging.getLogger("rusty_ws.server")


class _Asked:
    """One ``SSUBSCRIBE`` or ``SUNSUBSCRIBE`` sent (one slot's channels), whose replies have not all come:
    Redis answers each channel in order, or the whole command with one error."""

    __slots__ = ("subscribing", "channels", "answered")

    def __init__(self, subscribing: bool, channels: list[bytes]) -> None:
        self.subscribing = subscribing
        self.channels = channels
        self.answered = 0  # replies come channel by channel: how many did


class ShardListener(Listener):
    """The listener of one master. ``owns(key)`` says whether the current slot map puts ``key`` here."""

    def __init__(self, *, address: str, owns: Callable[[Key], bool], control_tag: Callable[[], str],
                 on_trouble: Callable[[str, bool], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.address = address
        self.owns = owns
        self.control_tag = control_tag
        self.on_trouble = on_trouble
        self.control = b""  # chosen on each connection: a slot this master owns then
        self._resync = False  # guarded by _lock: reconcile every pair at the next chance
        # Owned by the thread: per slot, the (un)subscribe commands sent on this connection whose replies
        # have not all come, oldest first (``_on_error_reply`` tells which one a refusal answers).
        self._asked: dict[int, deque[_Asked]] = {}
        self._thread.name = f"rusty_ws-redis-{self.node_id}-{address}"

    # ------------------------------------------------------------------ any thread

    @property
    def connected(self) -> bool:
        """Whether the connection is up and subscribed (read without the lock: one bool, for the publish path)."""
        return self._connected

    def delivering_here(self) -> bool:
        """Whether the caller is this listener's thread, which calls out only to deliver what its live
        connection brought: a read it makes then (a gap, ``GapFiller``) must not wait for ``connected``,
        which this same thread sets when the PONG behind those deliveries comes."""
        return threading.current_thread() is self._thread

    def resync(self) -> None:
        """The slot map changed: reconcile every pair against it (soon, on the thread)."""
        with self._lock:
            self._resync = True
        self._wake()

    def _wake(self) -> bool:
        if not self._connected or not self.control:
            return False
        try:
            self.client.execute_command("SPUBLISH", self.control, b"")
            return True
        except self.errors:
            return False

    def status(self) -> dict[str, Any]:
        found = super().status()
        del found["node"]
        return found

    # ------------------------------------------------------------------ the thread

    def _subscribe_all(self, link: PushLink) -> None:
        """SSUBSCRIBE the control channel and every registry pair this master owns; PING when sent."""
        try:
            with self._lock:
                self._dirty.clear()  # the keys() read below sees every mark made so far
                self._resync = False
            self._channels = {shard_channel_name(self.prefix, *key): key for key in self.keys() if self.owns(key)}
            self._asked = {}
            self.control = shard_control_channel(self.prefix, self.control_tag(), self.node_id)
            self._send(link, True, [self.control])
            self._send(link, True, self._channels)
            link.ping(_READY)  # its PONG says Redis has every subscription: then we are connected
        except self.errors as exc:
            self._troubled(exc)
            raise

    def _listen(self, link: PushLink) -> None:
        try:
            super()._listen(link)
        except self.errors as exc:
            self._troubled(exc)  # a dead master, or a MOVED: read the map again
            raise

    def _troubled(self, exc: BaseException) -> None:
        """Tell the broker; a refusal (``MOVED`` to an ``SSUBSCRIBE``) says a slot moved, the rest a lost link."""
        self.on_trouble(f"{type(exc).__name__}: {exc}", isinstance(exc, self.exceptions.ResponseError))

    def _send(self, link: PushLink, subscribing: bool, channels: Iterable[bytes]) -> None:
        """SSUBSCRIBE (or SUNSUBSCRIBE) ``channels``: one command per slot (and per ``SUBSCRIBE_CHUNK``), as a
        cluster refuses one that spans slots; each noted in ``_asked`` until its replies have come."""
        by_slot: dict[int, list[bytes]] = defaultdict(list)
        for channel in channels:
            by_slot[key_slot(channel)].append(channel)
        command = link.ssubscribe if subscribing else link.sunsubscribe
        for slot, group in by_slot.items():
            for start in range(0, len(group), SUBSCRIBE_CHUNK):
                chunk = group[start:start + SUBSCRIBE_CHUNK]
                self._asked.setdefault(slot, deque()).append(_Asked(subscribing, chunk))
                command(*chunk)

    def _answered(self, subscribing: bool, channel: bytes) -> bool:
        """Whether this ``ssubscribe``/``sunsubscribe`` push is the next reply to the oldest command of its slot."""
        slot = key_slot(channel)
        queue = self._asked.get(slot)
        if not queue:
            return False
        head = queue[0]
        if head.subscribing != subscribing or head.channels[head.answered] != channel:
            return False  # a push of the server's own (a slot that left)
        head.answered += 1
        if head.answered == len(head.channels):
            queue.popleft()
            if not queue:
                del self._asked[slot]
        return True

    message_kind = b"smessage"

    def _on_other_push(self, push: list[Any]) -> None:
        """The (s)subscribe replies (counted), and the ``sunsubscribe`` pushes of slots that moved away."""
        kind = push[0]
        if kind in (b"ssubscribe", b"sunsubscribe") and len(push) == 3 and isinstance(push[1], bytes):
            if not self._answered(kind == b"ssubscribe", push[1]) and kind == b"sunsubscribe":
                self._on_sunsubscribe(push[1])

    def _on_error_reply(self, exc: BaseException) -> None:
        """A refusal: a ``MOVED``/``ASK`` costs the refused command's channels only (see the module's docstring).

        Raises:
            ``exc``: any other error reply, or the control channel's slot refused: reconnect.
        """
        slot = redirected_slot(exc, self.exceptions)
        if slot is None or slot == key_slot(self.control):
            raise exc
        queue = self._asked.get(slot)
        head = queue.popleft() if queue else None
        if queue is not None and not queue:
            del self._asked[slot]
        if head is None:  # (its replies were taken for pushes: rare) none of the slot's channels is served here
            refused = [channel for channel in self._channels if key_slot(channel) == slot]
        else:
            refused = head.channels[head.answered:] if head.subscribing else []
        for channel in refused:
            self._channels.pop(channel, None)
        logger.debug("- %s does not serve slot %d (%s): %d channel(s) not subscribed here; reading the slot map "
                     "again", self.address, slot, exc, len(refused))
        self.on_trouble(f"slot {slot} is not served by {self.address}: {exc}", True)

    def _on_sunsubscribe(self, channel: bytes) -> None:
        """A push: the server no longer serves this channel's slot (or a reply to a SUNSUBSCRIBE: ignored)."""
        if channel == self.control:
            self.on_trouble(f"the slot of the control channel left {self.address}", True)
            raise self.errors[0](f"the slot of {channel!r} left {self.address}")  # reconnect, with a new control tag
        key = self._channels.pop(channel, None)
        if key is None:
            return  # one we no longer hold (a SUNSUBSCRIBE of ours crossed the push)
        logger.info("%s stopped serving %r (its slot moved); reading the slot map again", self.address, channel[:200])
        self.on_trouble(f"slot {key_slot(channel)} left {self.address}", True)

    def _reconcile(self, link: PushLink) -> None:
        """Bring the marked pairs (every pair, after ``resync``) in line with the registry and the slot map."""
        with self._lock:
            resync, self._resync = self._resync, False
            dirty, self._dirty = self._dirty, set()
            waiters, self._waiters = self._waiters, []
        if resync:
            # Every pair: the registry's (read after the new map was in place) and the ones held here.
            dirty |= set(self.keys()) | set(self._channels.values())
        subscribe, unsubscribe = [], []
        if dirty:
            # Read after the marks were taken: at least as new as they are (see Listener._reconcile).
            wanted = set(self.keys(dirty))
            for key in dirty:
                channel = shard_channel_name(self.prefix, *key)
                if key in wanted:
                    # Subscribed where the map says; one held here stays, wherever the map puts it now,
                    # until this master pushes its sunsubscribe (the map may be a lagging node's).
                    if channel not in self._channels and self.owns(key):
                        self._channels[channel] = key
                        subscribe.append(channel)
                elif channel in self._channels:
                    del self._channels[channel]
                    unsubscribe.append(channel)  # (its slot gone meanwhile: refused, nothing held: no matter)
            self._send(link, True, subscribe)
            self._send(link, False, unsubscribe)
        if waiters:
            batch = next(self._batch_ids)
            self._batches[batch] = waiters
            link.ping(_BARRIER + b"%d" % batch)

    def _set_connected(self, connected: bool) -> None:
        super()._set_connected(connected)
        if not connected:
            self.control = b""  # no wake-ups through a connection being replaced

