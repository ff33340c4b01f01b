"""The Redis Cluster broker: publishes cross nodes through a cluster's sharded pub/sub (Redis 7).

``RUSTY_WS_BROKER_URL=redis+cluster://host:port,host:port/?channel_prefix=...``
(``rediss+cluster://`` for TLS). ``docs/scaling.md`` is the operator's view.

Channels. Each (topic, session) is one shard channel (``shard_channel_name``)
carrying its session's hash tag (``session_tag``), so a session's channels and
keys share one slot, and the sessions spread over the masters in proportion to
the slots each owns (``redis_slots``). A publish is one ``SPUBLISH`` to the
master of its slot; Redis hands it to that shard's subscribers only.

Threads. One ``ShardListener`` thread per master (``rusty_ws-redis-{node}-{host:port}``)
owns that master's pub/sub connection: one connection per master, whatever the
number of pairs; one sender thread per master (``rusty_ws-redis-sender-{node}-{host:port}``)
owns its publishing connection. One supervisor thread (``rusty_ws-redis-cluster-{node}``) owns the
slot map: it reads ``CLUSTER SLOTS`` every ``MAP_INTERVAL`` seconds, and at once
when a listener or a publish reports trouble (a lost master, ``MOVED``, a pushed
``sunsubscribe``); when the map changes it starts listeners for new masters,
stops those of nodes that are masters no more, and has the others ``resync``.

Publishing. As with one Redis: the envelope is made first, delivered here at
once, then an ``SPUBLISH`` is queued to the sender of the slot's master: one
``RedisSender`` (``redis_sender.py``) per master, so the pipelines of each go
to the right node, and a session's publishes (one slot, one master, one FIFO
queue) reach every node in the order they were made. A ``MOVED`` reply (never
executed) is followed once, synchronously from the sender's thread, to the
master it names (Redis 7.0 answers no ``ASK`` to ``SPUBLISH``: the old master
serves a migrating slot's channels until the slot has moved). While the slot's
master is unreachable, or no master serves it, the publish reaches this node
only and is counted as that shard's ``unsent``.

Retries (every command the publish path sends: the history's publish script
through ``_route``, or the ``SPUBLISH`` with history off). ``Router``
(``redis_cluster_routes.py``) follows ``MOVED`` once and ``ASK`` once (``ASKING``
and the command on one connection, no change to the map), and holds in a ``RetryQueue``
(``redis_cluster_retry.py``) what the cluster could not take yet: ``TRYAGAIN``,
``CLUSTERDOWN``, a redirection that fails again, and, for a publish with an id
only (its script checks the id first, so a second run is a repeat), a lost
connection or a slot no master serves. The supervisor sends a slot's held
commands again once its master is connected, in the order they were first
sent, for at most ``retry_timeout`` seconds. A delivery past a gap in a pair's
offsets (a slot moved before this node subscribed on its new master) first
gets the gap from the stream (``GapFiller``, ``redis_cluster_gaps.py``).

History. With history on, ``history_store`` gives the hub a ``RedisHistory``
(``redis_history.py``) whose script runs on the session's master through its
sender and ``SPUBLISH``es a version-3 envelope; every listener, this node's
too, delivers those (``_from_channel``). Reads run on the session's master.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import backoff
from ..protocol import Delivery
from .base import Broker, Deliver, Key, Landed, OnLanded, SharedHistory
from .redis import SEND_QUEUE, SEND_QUEUE_BYTES, START_TIMEOUT, SUBSCRIBE_TIMEOUT, _import_redis, new_node_id
from .redis_cluster_gaps import GapFiller
from .redis_cluster_nodes import MapReader, node_client
from .redis_cluster_retry import RetryQueue
from .redis_cluster_routes import Redirecting, Router, View
from .redis_codec import checked_encoding, shard_channel_name, split_cluster_url
from .redis_history import RedisHistory, Route, replays_safely
from .redis_sender import RedisSender
from .redis_shard_listener import ShardListener
from .redis_slots import SlotMap, session_slot, tag_in

__all__ = ["RedisClusterBroker"]

logger = logging.getLogger("rusty_ws.server")

#: Seconds between two reads of the slot map while all is well (resharding is noticed by then at the latest).
MAP_INTERVAL = 5.0
#: Fewest seconds between two reads, however often trouble is reported (a storm of MOVED replies).
MAP_MIN_INTERVAL = 0.05
#: Seconds between two reads while a master is lost and another node answers: its replica's promotion is
#: seen this soon. One CLUSTER SLOTS on a kept connection each (``MapReader``)...
MAP_FOLLOW_INTERVAL = 0.1
#: ...for this many seconds of one outage (a replica takes over within ``cluster-node-timeout``, 15 s by
#: default, plus its election); past it (a shard with no replica left), every ``MAP_LOST_INTERVAL``.
MAP_FOLLOW_FOR = 60.0
#: Seconds between two reads past ``MAP_FOLLOW_FOR``, and the cap of the backoff while no node answers at all.
MAP_LOST_INTERVAL = 1.0
#: Default of ``RUSTY_WS_BROKER_RETRY_TIMEOUT``: seconds a command the cluster could not take yet
#: (a failover, a migrating slot) is held to be sent again; 0 sends nothing again.
RETRY_TIMEOUT = 5.0
#: Fewest seconds between two passes over the held commands (a TRYAGAIN storm during a migration).
RETRY_POLL = 0.02


class RedisClusterBroker(Broker):
    """Carries publishes between nodes through a Redis Cluster's sharded pub/sub. Safe to call from any thread.

    Args:
        url: ``redis+cluster://[user:password@]host:port[,host:port...]/[?channel_prefix=...]``; the
            nodes named are where the slot map is first asked for (one is enough, more survive its loss).
        subscribe_timeout, start_timeout, max_envelope_size: as for ``RedisBroker``.
        send_queue, send_queue_bytes: as for ``RedisBroker``, for each master's sender; ``send_queue``
            also bounds the commands held for a retry.
        retry_timeout: ``RUSTY_WS_BROKER_RETRY_TIMEOUT``: seconds a command is held to be sent again
            (see "Retries" in the module's docstring); 0: never.

    Raises:
        RuntimeError: the ``redis`` package is not installed.
        ValueError: the URL is not usable.
    """

    name = "redis-cluster"
    distributed = True

    def __init__(self, url: str, *, subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
                 start_timeout: float = START_TIMEOUT, max_envelope_size: int | None = None,
                 send_queue: int = SEND_QUEUE, send_queue_bytes: int = SEND_QUEUE_BYTES,
                 retry_timeout: float = RETRY_TIMEOUT) -> None:
        self._redis = _import_redis()
        self._url = split_cluster_url(url)
        self.send_queue, self.send_queue_bytes = send_queue, send_queue_bytes
        self.channel_prefix = self._url.channel_prefix
        self.subscribe_timeout = subscribe_timeout
        self.start_timeout = start_timeout
        self.max_envelope_size = max_envelope_size
        self._errors = (self._redis.exceptions.RedisError, OSError)
        self._deliver: Deliver | None = None
        self._keys: Callable[..., list[Key]] | None = None
        # _launch_lock guards node_id, _pid, _stopped and the start of the threads: once per process.
        self._launch_lock = threading.Lock()
        self._pid = 0
        self._stopped = False
        self.node_id: str | None = None
        # _counts_lock guards _unsent and _retired (counts of stopped listeners and senders). Never held across I/O.
        self._counts_lock = threading.Lock()
        self._unsent: dict[str, int] = {}
        self._retired = {"dropped": 0, "reconnects": 0, "unsent": 0}
        self._warned_unsent = False
        self._view = View(None, {}, {}, {})
        # Scripts every master's sender loads (now, and when a new master appears): sha1 -> source.
        # Guarded by _counts_lock.
        self._scripts: dict[str, str] = {}
        self._stop = threading.Event()
        self._poke = threading.Event()  # wakes the supervisor: trouble (with _map_wanted), or retries due
        # _trouble_lock guards _map_wanted (someone saw trouble: read the map soon) and _moved (a slot moved
        # under a live master: reconcile even if the map reads the same). Held for a few assignments.
        self._trouble_lock = threading.Lock()
        self._map_wanted = False
        self._moved = False
        self._maps = MapReader(self._redis, self._url, self._errors)  # start's, then the supervisor's only
        self._retries = RetryQueue(timeout=retry_timeout, limit=send_queue)
        self._router = Router(view=lambda: self._view, exceptions=self._redis.exceptions, errors=self._errors,
                              retries=self._retries, idempotent=self._idempotent, as_eval=self._as_eval,
                              trouble=self._trouble, wake=self._poke.set, count_unsent=self._count_unsent,
                              stopped=self._stopping, pause=self._pause)
        self._supervisor: threading.Thread | None = None
        self._history: RedisHistory | None = None
        self._gaps: GapFiller | None = None  # with history: fills what a slot's move kept off the channels

    def __repr__(self) -> str:
        return f"<RedisClusterBroker {self.node_id or 'not started'}>"

    # ------------------------------------------------------------------ the Broker API

    def start(self, deliver: Deliver, keys: Callable[[], list[Key]]) -> None:
        """Read the slot map, connect to every master; blocks up to ``start_timeout`` per step."""
        self._deliver, self._keys = deliver, keys
        with self._launch_lock:
            self._launch_locked()

    def _launch_locked(self) -> None:
        assert self._launch_lock.locked(), "must hold the launch lock"
        self.node_id, self._pid = new_node_id(), os.getpid()
        self._view = View(None, {}, {}, {})
        self._stop = threading.Event()
        self._maps = MapReader(self._redis, self._url, self._errors)  # (a forked process's own connection)
        self._refresh(self._read_map(quiet=False))
        # Daemon, like the listeners: stop() joins it.
        self._supervisor = threading.Thread(target=self._supervise, name=f"rusty_ws-redis-cluster-{self.node_id}",
                                            daemon=True)
        self._supervisor.start()

    def _current(self) -> View:
        """The view of this process; a process forked after ``start`` (gunicorn --preload) starts its own."""
        if self._deliver is None:
            raise RuntimeError("the broker was not started")
        if self._pid != os.getpid() and not self._stopped:
            with self._launch_lock:
                if self._pid != os.getpid() and not self._stopped:
                    logger.info("process forked: starting this process's own Redis Cluster listeners")
                    self._launch_locked()
        return self._view

    def publish(self, delivery: Delivery, on_landed: OnLanded | None = None) -> Landed:
        """Deliver here at once, then queue the SPUBLISH to the slot's master's sender; never waits for Redis.

        Blocks only while that sender's queue is full (backpressure); see the module's docstring.

        Args:
            on_landed: called once the slot's master took the SPUBLISH (on its sender's
                thread), with this node's ``Landed``, or with the exception if it could not
                (at once, on this thread, if no master serves the slot).

        Raises:
            ProtocolError: ``invalid_message``: the envelope would be larger than
                ``max_envelope_size``, or the payload cannot be encoded.
        """
        self._current()
        assert self._deliver is not None and self.node_id is not None
        # Encoded once, for the envelope and the local frame (``deliver_encoded``, the hub's).
        encoded, envelope = checked_encoding(self.node_id, delivery, self.max_envelope_size)
        deliver_encoded = self.deliver_encoded
        landed = self._deliver(delivery) if deliver_encoded is None else deliver_encoded(delivery, encoded)
        command = ("SPUBLISH", shard_channel_name(self.channel_prefix, delivery.topic, delivery.session_id), envelope)

        def on_reply(reply: Any) -> None:  # on the sender's thread (or this one, if no master serves the slot)
            if on_landed is not None:
                on_landed(reply if isinstance(reply, BaseException) else landed)
            elif isinstance(reply, self._redis.exceptions.ResponseError):
                logger.warning("Redis refused SPUBLISH: %s", reply)

        # Through the router: MOVED followed, TRYAGAIN/CLUSTERDOWN held; a lost connection is not sent
        # again (an SPUBLISH is not idempotent): at-most-once, as Redis pub/sub is.
        self._router.send(session_slot(delivery.session_id), command, on_reply)
        return landed

    def _as_eval(self, command: tuple[Any, ...]) -> tuple[Any, ...]:
        """An ``EVALSHA`` of a known script as an ``EVAL`` (a master just given a slot may not have it yet)."""
        if command[0] != "EVALSHA":
            return command
        with self._counts_lock:
            source = self._scripts.get(command[1])
        return command if source is None else ("EVAL", source, *command[2:])

    def _count_unsent(self, address: str, reason: str) -> None:
        with self._counts_lock:
            self._unsent[address] = self._unsent.get(address, 0) + 1
            warn, self._warned_unsent = not self._warned_unsent, True
        if warn:
            logger.warning("publishes for %s reach this node's subscribers only (%s)", address or "an unserved slot", reason)

    # ------------------------------------------------------------------ history in the cluster

    def history_store(self, size: int, ttl: float, window: float, max_bytes: int | None = None) -> SharedHistory:
        """History in the cluster, shared by every node: ``redis_history.py`` with ``SPUBLISH``.

        A pair's stream, meta, publish ids and channel share its session's slot, so the
        publish script runs on that slot's master (through its sender: one FIFO per
        master keeps a session's publishes in order) and reads run there too. Every
        master's sender loads the script (now, and each master that appears later).
        """
        def deliver(delivery: Delivery) -> Landed:
            assert self._deliver is not None
            return self._deliver(delivery)

        history = RedisHistory(node_id=self._node, route=self._route, deliver=deliver, prefix=self.channel_prefix,
                               size=size, ttl=ttl, window=window, max_envelope_size=self.max_envelope_size,
                               max_bytes=max_bytes, publish_command="SPUBLISH")
        with self._counts_lock:
            self._scripts[history.publish_sha] = history.publish_script  # _refresh loads it on every master
            # The read script too: a read ASKed to a master that never ran it goes as an EVAL (_as_eval).
            self._scripts[hashlib.sha1(history.read_script.encode("utf-8")).hexdigest()] = history.read_script
        self._gaps = GapFiller(history.read, retry_for=self._retries.timeout, pause=self._pause)
        self._history = history
        return history

    def _node(self) -> str:
        """This process's node id (for the history's own-publish bookkeeping)."""
        self._current()
        assert self.node_id is not None
        return self.node_id

    def _route(self, session_id: str) -> Route:
        """Where the history's commands for ``session_id`` go: its slot's master, now (``Router.send``)."""
        view = self._current()
        slot = session_slot(session_id)
        address = view.map.owners[slot] if view.map else ""
        listener = view.listeners.get(address)

        def submit(command: tuple[Any, ...], on_reply: Callable[[Any], None]) -> None:
            self._router.send(slot, command, on_reply)

        client = view.clients.get(address)
        reads = None if client is None else Redirecting(self._router, address, client)
        # A gap read runs on the listener's own thread, for a delivery its connection brought; it may come
        # before the PONG that makes the listener connected (a slot's publishes arrive while it subscribes),
        # and waiting for that PONG there would wait for itself (docs/scaling.md, "Failover and resharding").
        live = listener is not None and (listener.connected or listener.delivering_here())
        return Route(reads, submit, live)

    # ------------------------------------------------------------------ retries

    def _idempotent(self, command: tuple[Any, ...]) -> bool:
        """Whether running ``command`` twice does what running it once does: the publish script, every
        publish in it with an id (its first step is the id check; a second run is answered ``repeat``)."""
        history = self._history
        return history is not None and replays_safely(command, history.publish_sha)

    def _stopping(self) -> bool:
        return self._stop.is_set()  # (the Event of this launch: _launch_locked makes a new one)

    def _pause(self, seconds: float) -> bool:
        return self._stop.wait(seconds)

    def _trouble(self, *, moved: bool) -> None:
        """Someone saw trouble: the supervisor reads the slot map at once (``MAP_MIN_INTERVAL`` apart; while a
        master is known lost, on its schedule). ``moved``: a slot moved under a live master (``MOVED``, a
        pushed ``sunsubscribe``): the listeners reconcile even if the map reads the same."""
        with self._trouble_lock:
            self._moved = self._moved or moved
            wake, self._map_wanted = not self._map_wanted, True
        if wake:  # (one wake-up per read: the supervisor clears the flag when it reads, not when it waits)
            self._poke.set()

    def _from_channel(self, delivery: Delivery) -> Landed:
        """What the listeners deliver: not a publish of this node's already delivered here (history), nor a
        copy of one delivered; after a gap (a slot moved), what the stream holds in it first (``GapFiller``)."""
        assert self._deliver is not None
        history, gaps = self._history, self._gaps
        if history is not None and not history.arrived(delivery):
            return Landed(None, 0)
        if gaps is not None:
            missing = gaps.before(delivery)
            if missing is None:
                return Landed(None, 0)
            for message in missing:
                self._deliver(message)
        return self._deliver(delivery)

    # ------------------------------------------------------------------ interest

    def interest_added(self, key: Key) -> None:
        """SSUBSCRIBE to ``key``'s channel on its master; blocks until it confirms (while connected)."""
        self._interest_changed(key)

    def interest_removed(self, key: Key) -> None:
        """SUNSUBSCRIBE from ``key``'s channel; blocks until its master confirms (while connected)."""
        self._interest_changed(key)
        if self._gaps is not None:
            self._gaps.forget(key)

    def _interest_changed(self, key: Key) -> None:
        """The listener of the key's master in the map, and any other that still holds its channel (a slot that
        moved: held until its old master pushes ``sunsubscribe``, ``redis_shard_listener.py``), reconcile it."""
        view = self._current()
        owner = view.map.owners[session_slot(key[1])] if view.map else ""
        channel = shard_channel_name(self.channel_prefix, *key)
        for address, listener in view.listeners.items():
            if address == owner or listener.listens_to(channel):
                listener.interest_changed(key)
        # No master serves the slot now: the listener the next map gives it reads the registry.

    def wait_connected(self, connected: bool = True, timeout: float = 5.0) -> bool:
        """Block until every master's listener and sender are (or not all are) connected; False on timeout."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.02) + 2):
            if self.status()["connected"] == connected:
                return True
            if time.monotonic() > deadline:
                break
            self._stop.wait(0.02)  # polls states that several threads own; bounded in count and time
        return False

    def sender_for(self, session_id: str) -> RedisSender | None:
        """The sender of the master that serves ``session_id``'s slot now (None: no master does).

        For commands on a session's keys and channels (they share its slot): its
        FIFO queue keeps them in order with the session's publishes.
        """
        view = self._current()
        return view.senders.get(view.map.owners[session_slot(session_id)]) if view.map else None

    def script_load(self, source: str) -> str:
        """Make ``source`` known to every master, now and to each one that appears later; its SHA1 for EVALSHA."""
        view = self._current()
        sha = ""
        with self._counts_lock:
            self._scripts[hashlib.sha1(source.encode("utf-8")).hexdigest()] = source
        for sender in view.senders.values():
            sha = sender.script_load(source)
        return sha or hashlib.sha1(source.encode("utf-8")).hexdigest()

    def wait_sent(self, timeout: float = 5.0) -> bool:
        """Block until every publish queued so far was answered by its master or failed; False on timeout."""
        deadline = time.monotonic() + timeout
        return all(sender.wait_drained(max(0.0, deadline - time.monotonic()))
                   for sender in self._current().senders.values())

    def status(self) -> dict[str, Any]:
        """``/healthz``'s view: the totals of ``RedisBroker.status``, and per master (``shards``) its
        listener's counts, ``unsent`` and ``slots``, and its sender's counts (``sender``)."""
        view = self._current()
        with self._counts_lock:
            unsent, retired = dict(self._unsent), dict(self._retired)
        shards = {}
        for address, listener in sorted(view.listeners.items()):
            shard = listener.status()
            sender = view.senders[address].status()
            shard["connected"] = shard["connected"] and sender["connected"]
            shard["unsent"] = unsent.pop(address, 0) + sender["unsent"]
            shard["slots"] = view.map.slots_of(address) if view.map else 0
            shard["sender"] = sender
            shards[address] = shard
        covered = view.map is not None and all(view.map.owners)
        history = self._history.status() if self._history is not None else {}
        if self._gaps is not None:
            history.update(self._gaps.status())
        return {
            "name": self.name,
            "connected": covered and bool(shards) and all(shard["connected"] for shard in shards.values()),
            "node": self.node_id,
            "channels": sum(shard["channels"] for shard in shards.values()),
            "unsent": retired["unsent"] + sum(shard["unsent"] for shard in shards.values()) + sum(unsent.values()),
            "dropped": retired["dropped"] + sum(shard["dropped"] for shard in shards.values()),
            "reconnects": retired["reconnects"] + sum(shard["reconnects"] for shard in shards.values()),
            **self._retries.status(),
            "shards": shards,
            **history,
        }

    def stop(self, timeout: float = 5.0) -> None:
        """End the supervisor, the senders (after sending what is queued) and the listeners; close the
        connections. Idempotent; blocks up to about ``timeout`` for each thread."""
        with self._launch_lock:
            if self._stopped:
                return
            self._stopped = True
            ours = self._pid == os.getpid()
        self._stop.set()
        self._poke.set()
        if not ours:
            return
        if self._supervisor is not None:
            self._supervisor.join(timeout)
        for held in self._retries.drain():
            held.on_reply(ConnectionError("the Redis Cluster broker stopped"))
        view, self._view = self._view, View(self._view.map, {}, {}, {})
        for sender in view.senders.values():
            sender.stop(timeout)
        for listener in view.listeners.values():
            listener.stop(timeout)
        for client in view.clients.values():
            client.close()

    # ------------------------------------------------------------------ the supervisor thread

    def _supervise(self) -> None:
        """The supervisor thread: reads the slot map (``_next_read``'s schedule, or at once on trouble), brings
        the listeners in line (``_refresh``), sends held commands again (``Router.flush``)."""
        delays = None  # while no node gives the map: a backoff up to MAP_LOST_INTERVAL
        lost_since: float | None = None  # when a read first found a master missing or not connected
        resync = False  # a slot moved: reconcile even if the map reads the same (carried to a read that failed)
        last_read = time.monotonic()
        next_read = last_read + (MAP_INTERVAL if self._whole() else 0.0)  # started without the whole cluster: now
        while not self._stop.is_set():
            wait = next_read - time.monotonic()
            due = self._retries.next_due()
            if due is not None:
                wait = min(wait, max(due, RETRY_POLL))
            self._poke.wait(max(0.0, wait))
            self._poke.clear()
            if self._stop.is_set():
                break
            with self._trouble_lock:
                trouble, moved = self._map_wanted, self._moved
            now = time.monotonic()
            # While a master is known lost, a lost connection reported again changes nothing: the schedule
            # reads the map soon enough; a moved slot still gets its read within MAP_MIN_INTERVAL.
            least = MAP_MIN_INTERVAL if lost_since is None or moved else next_read - last_read
            if trouble and now - last_read < least:
                next_read = min(next_read, last_read + least)  # a storm of reports: one read (flags kept)
            elif trouble or now >= next_read:
                with self._trouble_lock:  # what is reported from now on comes after this read began
                    resync = resync or self._moved
                    self._map_wanted = self._moved = False
                found = None
                try:
                    found = self._read_map(quiet=lost_since is not None)
                    self._refresh(found, resync=resync)
                except Exception:
                    logger.exception("reading the Redis Cluster's slot map failed")
                if found is not None:
                    resync = False
                last_read = time.monotonic()
                whole = self._whole()
                if whole and lost_since is not None:
                    logger.info("Redis Cluster: every slot's master connected again, %.2f s after one was "
                                "found missing", last_read - lost_since)
                elif not whole and lost_since is None:
                    logger.info("Redis Cluster: a master is missing or not connected; reading the slot map "
                                "every %.1f s (while a node answers) until it is back or replaced", MAP_FOLLOW_INTERVAL)
                lost_since = None if whole else (last_read if lost_since is None else lost_since)
                if whole or found is not None:
                    delays = None
                elif delays is None:
                    delays = backoff.delays(initial=0.05, cap=MAP_LOST_INTERVAL)
                next_read = last_read + self._next_read(whole, lost_since, delays)
            try:
                self._router.flush()
            except Exception:
                logger.exception("sending held Redis Cluster commands again failed")
        self._maps.close()
        logger.debug("- %s stopped", threading.current_thread().name)

    @staticmethod
    def _next_read(whole: bool, lost_since: float | None, delays: Any) -> float:
        """Seconds until the next read: ``MAP_INTERVAL`` while all is well; while a master is lost and a node
        answers, ``MAP_FOLLOW_INTERVAL`` (for ``MAP_FOLLOW_FOR``, then ``MAP_LOST_INTERVAL``); while no node
        answers, the backoff ``delays``."""
        if whole or lost_since is None:
            return MAP_INTERVAL
        if delays is not None:
            return float(next(delays))
        return MAP_FOLLOW_INTERVAL if time.monotonic() - lost_since < MAP_FOLLOW_FOR else MAP_LOST_INTERVAL

    def _whole(self) -> bool:
        """Whether every slot has a master whose listener and sender are connected (``status``'s ``connected``)."""
        view = self._view
        return view.map is not None and all(view.map.owners) and bool(view.listeners) and all(
            listener.connected and view.senders[address].connected for address, listener in view.listeners.items())

    def _read_map(self, quiet: bool) -> SlotMap | None:
        """CLUSTER SLOTS from the first node that answers: those of the last map (connected masters first), then the URL's."""
        url = self._url
        view = self._view
        known = list(view.map.nodes) if view.map else []
        # Masters we are connected to first: a silent node (SIGSTOP, a partition) costs a timeout.
        known.sort(key=lambda address: not (address in view.listeners and view.listeners[address].connected))
        candidates = list(dict.fromkeys(known + [f"{host}:{port}" for host, port in url.seeds]))
        found, problems = self._maps.read(candidates)
        if found is not None:
            return found
        (logger.debug if quiet else logger.warning)("no Redis Cluster node gave its slot map (%s)", "; ".join(problems))
        return None

    def _refresh(self, new: SlotMap | None, resync: bool = False) -> None:
        """Bring the listeners in line with ``new``: start, resync, stop. Only the supervisor (or ``start``) calls it.

        ``resync``: a slot moved; with the same map as before, the listeners still reconcile
        (a pushed ``sunsubscribe`` may come before the node asked knows why). The new
        masters' senders and listeners start before the old ones are stopped: stopping one
        whose node is gone may wait for a connection attempt to time out.
        """
        old = self._view
        if self._stop.is_set():
            return  # stop() takes the view as it is: start nothing it would not stop
        if new is None or new == old.map:
            if new is not None and resync:
                for listener in old.listeners.values():
                    listener.resync()
            return
        listeners, clients, senders = dict(old.listeners), dict(old.clients), dict(old.senders)
        gone = [address for address in listeners if address not in new.masters]
        added = [address for address in sorted(new.masters) if address not in listeners]
        with self._counts_lock:
            scripts = list(self._scripts.values())
        for address in added:
            listeners[address], clients[address], senders[address] = self._shard_for(address)
            for source in scripts:
                senders[address].script_load(source)  # queued: loaded once it connects
        retired = [(listeners.pop(address), clients.pop(address), senders.pop(address)) for address in gone]
        # The new map is in place before any listener reads the registry against it.
        self._view = View(new, listeners, clients, senders)
        logger.info("Redis Cluster slot map: %d masters (%s)", len(new.masters), ", ".join(sorted(new.masters)))
        for address, listener in listeners.items():
            if address in added:
                senders[address].start(self.start_timeout)
                listener.start(self.start_timeout)
            else:
                listener.resync()
        for listener, client, sender in retired:
            sender.stop(self.start_timeout)  # sends what waits if its node still answers, else fails it
            listener.stop(self.start_timeout)
            client.close()
            counts = {**listener.status(), "unsent": sender.status()["unsent"]}
            with self._counts_lock:
                for name in self._retired:
                    self._retired[name] += counts[name]

    def _shard_for(self, address: str) -> tuple[ShardListener, Any, RedisSender]:
        """The listener, client and sender of the master at ``address`` (not started)."""
        assert self._deliver is not None and self._keys is not None and self.node_id is not None
        redis = self._redis

        def client_named(name: str) -> Any:
            return node_client(redis, self._url, address, name=name)

        client = client_named(f"rusty_ws-{self.node_id}")
        # The sender makes its connection from this client's pool: to this master, and no other.
        sender = RedisSender(client=client_named(f"rusty_ws-sender-{self.node_id}"), errors=self._errors,
                             node_id=f"{self.node_id}-{address}", max_commands=self.send_queue,
                             max_bytes=self.send_queue_bytes)

        def owns(key: Key) -> bool:
            current = self._view.map
            return current is not None and current.owners[session_slot(key[1])] == address

        def control_tag() -> str:
            current = self._view.map
            # (A dead master's, once the map gave its slots to its replica: no slot, no search.)
            tag = None if current is None or address not in current.owners else tag_in(
                lambda slot: current.owners[slot] == address)
            if tag is None:
                raise redis.exceptions.ConnectionError(f"{address} serves no slot now")
            return tag

        def on_trouble(reason: str, moved: bool) -> None:
            logger.debug("- Redis Cluster trouble at %s: %s", address, reason)
            self._trouble(moved=moved)

        listener = ShardListener(
            address=address, owns=owns, control_tag=control_tag, on_trouble=on_trouble,
            client=client, errors=self._errors, prefix=self.channel_prefix, node_id=self.node_id,
            deliver=self._from_channel, keys=self._keys, subscribe_timeout=self.subscribe_timeout,
            max_envelope_size=self.max_envelope_size,
        )
        return listener, client, sender
