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

import contextlib
import itertools
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..auth import Claims, TokenService
from ..brokers import Broker, MemoryBroker
from ..brokers.base import Landed
from ..config import Settings
from ..exceptions import ProtocolError
from ..frames import deflate_text_frame, text_frame
from ..history import History, IdempotencyTable, within_bytes
from ..protocol import (
    CLOSE_CODE_EXPLANATIONS,
    CloseCode,
    Delivery,
    ErrorCode,
    Since,
    encode_history_reply,
    encode_run,
    encode_subscribed,
    restart_reason,
    rfc3339_now,
)
from . import quiet_exit
from .access import Access
from .answers import wait_for_answer
from .connection import Connection
from .registry import Registry
from .shared_streams import SharedStreams, send_run
from .stop_clock import StopClock
from .writer import Outbox, Writer

__all__ = ["Hub", "PendingRequests", "Answer"]

logger = logging.getLogger("rusty_ws.server")
#: An exiting hub's account of its 4200s, beside ``StopClock``'s line: a deployment logging at WARNING
#: can still keep these (the benchmark does).
stop_logger = logging.getLogger("rusty_ws.server.stop")

#: Seconds an exiting hub (``Hub.shutdown(exiting=True)``) waits for closing handshakes once every 4200 is written.
EXIT_GRACE = 0.5
#: Seconds between two looks at the writer's queue while an exiting hub waits for its close frames to go out.
WRITTEN_POLL = 0.01
#: The least share of ``RUSTY_WS_RECONNECT_RATE`` the 4200's window assumes, whatever the hub measured.
WINDOW_RATE_SHARE = 0.25
#: Seconds the thread of a connection that ended during an exiting hub's shutdown waits for the process
#: to end (``Hub._park``) before it cleans up after all; the process ends within a second or two.
PARK_TIMEOUT = 30.0

#: What ``Hub.publish`` calls for a publish with an id: ``(landed, repeat)``, or the error.
Answer = Callable[["tuple[Landed, bool] | ProtocolError"], None]
#: Seconds a caller of ``Hub.publish`` with an id and no ``answer`` waits for the broker.
PUBLISH_ANSWER_TIMEOUT = 20.0
_NO_HOLD = contextlib.nullcontext()  # commands_lock's "nothing": reusable, reentrant
#: ``Landed(position, delivered)`` without the named tuple's Python ``__new__``: once per publish.
_landed = tuple.__new__
_get_ident = threading.get_ident


def _no_mark(phase: str) -> None:
    """``Hub.shutdown``'s mark without a ``StopClock``: nothing."""


class PendingRequests:
    """Sockets accepted whose request head has not arrived yet: counted, and bounded.

    The hub's own server (``hub_server.HubServer``) takes one when it accepts a
    socket, on its accept thread, and its handler gives it back once the head
    is read, so a socket past the bound gets no thread at all. Other WSGI
    servers never take one, and ``/healthz`` then shows 0.

    Args:
        limit: how many may be taken at once (``RUSTY_WS_MAX_PENDING_REQUESTS``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count_lock = threading.Lock()  # guards _count
        self._count_changed = threading.Condition(self._count_lock)  # tests wait on it
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def take(self) -> bool:
        """Count one more socket waiting for its head; False (nothing counted) at the limit."""
        with self._count_lock:
            if self._count >= self.limit:
                return False
            self._count += 1
            self._count_changed.notify_all()
            return True

    def give_back(self) -> None:
        """Undo one ``take``: that socket's head arrived, or the socket ended without one."""
        with self._count_lock:
            self._count -= 1
            self._count_changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until exactly ``count`` are taken; False on timeout."""
        with self._count_lock:
            return self._count_changed.wait_for(lambda: self._count == count, timeout)


class Hub:
    """Connections, subscriptions and publishing for one Flask app.

    Args:
        settings: the checked settings.
        broker: where publishes go; the hub starts it now and stops it in ``shutdown``.
        access: who may do what (tokens, sessions, topics); default: the settings' rules
            alone, with a token key of its own.
    """

    def __init__(self, settings: Settings, broker: Broker, access: Access | None = None) -> None:
        self.settings = settings
        self.access = access or Access(settings, TokenService(secrets.token_urlsafe(32)))
        self.registry = Registry(settings.max_subscriptions)
        self.writer = Writer(
            max_queued_bytes=settings.max_queued_bytes,
            close_timeout=settings.close_timeout,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_total_queued_bytes=settings.max_total_queued_bytes,
        )
        self.broker = broker
        #: Sockets of the hub's own server still waiting for their request head (``/healthz``).
        self.pending_requests = PendingRequests(settings.max_pending_requests)
        #: Handshakes a second the hub's own server finished while it had more waiting: the median
        #: of its pacer's saturated seconds (``pacing._Pacer.window_rate``), None until measured. Written by the accept thread only (a
        #: float: no lock); ``shutdown`` reads it for the 4200's window.
        self.handshake_rate: float | None = None
        # _connections_lock guards _connections, _slots_taken, _slots_ended, _accepting and the
        # writes of _compressing (read without it: an int, and only a shortcut).
        self._connections_lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._compressing = 0  # open connections that negotiated permessage-deflate
        self._slots_taken = 0
        self._slots_ended = 0  # slots still taken by connections that have ended (their requests are ending)
        self._accepting = True
        # Set by shutdown(exiting=True), with _accepting: a connection that ends from then on parks
        # its thread (_park) instead of cleaning up. _ended_exiting counts those of the shutdown's
        # list that have ended (next() is atomic: no lock, the threads never queue for one), and
        # _all_ended is set when they reach _exit_count.
        self._exiting = False
        self._ended_exiting = itertools.count(1)
        self._exit_count = 0
        self._all_ended = threading.Event()
        # Connections whose last line was written during an exiting shutdown, by whom (``_log_end``).
        self._ends_logged: dict[int, int] = {}
        # Taken by shutdown(exiting=True) and never let go: what a parked thread waits on (one
        # futex wait, ~cheaper than an Event's Condition), at most PARK_TIMEOUT.
        self._parking_lock = threading.Lock()
        # Signalled whenever a connection ends (shutdown and tests wait on it).
        self._connections_changed = threading.Condition(self._connections_lock)
        self._ids = itertools.count(1)
        # _history_lock guards history and publish_ids. A publish holds it from taking
        # its offset to queueing its frames, and a subscribe-json from subscribing to
        # queueing its replay and reply, so the two never interleave on a stream
        # (only queueing: frames are written after it is let go, see Writer.batch).
        # Reentrant: a connection may hold it across all the commands of one read
        # (``commands_lock``), and the publishes among them take it again.
        self._history_lock = threading.RLock()
        # Signalled when a pending publish id settles (a repeat waits for the first).
        self._ids_settled = threading.Condition(self._history_lock)
        # With a broker that keeps history for every node (Redis), the hub keeps none of its own.
        store = broker.history_store(settings.history_size, settings.history_ttl, settings.idempotency_window,
                                     settings.history_max_bytes) if settings.history_size > 0 else None
        self.shared = SharedStreams(self, store) if store is not None else None
        self.history = History(
            0 if self.shared else settings.history_size, settings.history_ttl, settings.history_max_bytes,
            is_subscribed=lambda key: bool(self.registry.subscribers(*key)),
        )
        self.publish_ids = IdempotencyTable(settings.idempotency_window, settings.idempotency_max_ids)
        self._history_on = self.history.enabled  # read once per publish: an attribute, not a property
        # The in-process broker's publish (this very class, not a subclass) only calls deliver_local.
        self._delivers_here = type(broker) is MemoryBroker
        #: ``publish_run`` delivers a run itself (no broker between it and the subscribers, no shared history).
        self.takes_runs = self.shared is None and self._delivers_here
        # Publishes are delivered on the publishing thread and take the history lock: see commands_lock.
        self._hold_for_commands = self.history.enabled and isinstance(broker, MemoryBroker)
        broker.batch_deliveries = self.writer.batch  # what a listener received at once: one send per subscriber
        broker.deliver_run = self.deliver_run  # what one envelope brought: one road for all its deliveries
        broker.deliver_encoded = self.deliver_local  # a publish the broker encoded for its envelope: not again
        # This node's own publishes back from the shared history: framed from what was kept, no Delivery each.
        broker.deliver_own = self.shared.deliver_own if self.shared is not None else None
        # Another node's runs from the shared history: framed from the checked envelope, no Delivery each.
        broker.deliver_remote = self.shared.deliver_remote if self.shared is not None else None
        broker.start(self.deliver_local, self.registry.keys)

    # ------------------------------------------------------------------ admission

    def take_slot(self) -> bool:
        """Reserve room for one more connection; False when full or shutting down."""
        with self._connections_lock:
            if not self._accepting or self._slots_taken >= self.settings.max_connections:
                return False
            self._slots_taken += 1
            return True

    def give_back_slot(self, served: bool = False) -> None:
        """Undo ``take_slot`` once its connection is over; ``served``: the connection ran ``serve``.

        Who calls it: the request's teardown under ``flask run`` and gunicorn (the view
        runs the connection); ``handoff.AfterTheView`` at the socket's end under
        ``HubServer`` (the request ended at the handshake).
        """
        with self._connections_lock:
            self._slots_taken -= 1
            if served and self._slots_ended:  # 0: its Connection could not even be made (a stopped writer)
                self._slots_ended -= 1
            self._connections_changed.notify_all()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def next_id(self) -> int:
        return next(self._ids)

    def commands_lock(self) -> contextlib.AbstractContextManager[Any]:
        """What a connection holds while it carries out the commands of one read: the history lock, or nothing.

        Each publish takes the history lock. With 1,000 connection threads that
        lock forms a convoy: a thread woken on it holds it but must still wait
        for the GIL, and every thread that reaches it meanwhile sleeps on it too
        (1.5 to 2 context switches per message, docs/performance.md, "Many
        sessions"). Held once for a read's commands, a burst of publishes takes
        it once. Only when publishes are delivered on the publishing thread
        (the in-process broker) with history on, and when the app has no
        session-policy or permissions hook: those are the app's code, which must
        never run under a lock of the hub's. Queued frames are written after it
        is let go (the caller's ``Writer.batch`` encloses it).
        """
        if self._hold_for_commands and not self.access.has_hooks:
            return self._history_lock
        return _NO_HOLD

    def serve(self, sock: socket.socket, claims: Claims | None, remote: str = "?",
              deflate: bool = False, read_ahead: bytes = b"") -> None:
        """Run one WebSocket from its upgrade to its end on the calling (request) thread. Blocks.

        The hub owns the connection's life, as websockets' ``sock_handler`` does:
        it registers the connection, runs its command loop, and on every path
        forgets it (and its subscriptions) and releases its outbox. The caller
        closes the socket afterwards. ``read_ahead``: what the WSGI server read
        past the request head, the first bytes of the connection's stream.
        """
        connection = Connection(self, sock, claims, remote, deflate=deflate)
        self._add(connection)
        try:
            connection.serve(read_ahead)
        finally:
            # Its line first: once it is forgotten, wait_connections() may return, and an exiting
            # hub (shutdown(exiting=True)) ends the process before a later line could be written.
            try:
                self._log_end(connection)
            finally:
                if self._exiting:
                    self._park()
                self._discard(connection)
                self.writer.release(connection.outbox, self.settings.close_timeout + 1.0)

    def _log_end(self, connection: "Connection") -> None:
        """The connection's last line, once: by its thread, or, in an exiting hub whose threads sleep through
        their clients' answers (``quiet_exit``), by the stopping thread, whichever comes first."""
        if not logger.isEnabledFor(logging.INFO):  # the line's parts cost ~10 µs; 10,000 end at once in a stop
            return
        me = threading.get_ident()
        if self._exiting and self._ends_logged.setdefault(id(connection), me) != me:  # setdefault: atomic
            return
        logger.info("%s disconnected after %.1fs: %s; %s", connection.label,
                    time.monotonic() - connection.started, connection.describe(), connection.ending())

    def connections(self) -> list["Connection"]:
        """A snapshot of the open connections (for reports, shutdown and tests)."""
        with self._connections_lock:
            return list(self._connections)

    def _add(self, connection: "Connection") -> None:
        with self._connections_lock:
            self._connections.add(connection)
            self._compressing += connection.outbox.deflate
            # Admitted before shutdown() began, upgraded after it took its list: it would be
            # left open until shutdown's timeout, so it gets its 4200 here.
            late = not self._accepting
        self.registry.enter_session(connection.session_id)  # counted by /healthz's "sessions"
        if late:
            connection.close(CloseCode.SERVER_RESTARTING, CLOSE_CODE_EXPLANATIONS[4200])

    def _park(self) -> None:
        """A connection ended while the hub exits: count it, then wait for the process's end (``PARK_TIMEOUT``).

        The process ends within a second, closing every socket; cleaning up after
        the connection (forgetting its subscriptions, releasing its outbox, the
        request's teardown) is ~0.1 ms of CPU that 10,000 threads waking at once
        for their clients' answers to the 4200 all want in the same second, while
        the shutdown's thread writes the last close frames and waits for its turn.
        Parked, each thread takes the interpreter lock once and sleeps. Should the
        process not end (a bug), it cleans up as usual after ``PARK_TIMEOUT``.
        """
        if next(self._ended_exiting) >= self._exit_count:
            self._all_ended.set()
        if self._parking_lock.acquire(timeout=PARK_TIMEOUT):  # only if the shutdown never took it
            self._parking_lock.release()

    def _discard(self, connection: "Connection") -> None:
        """Forget a connection that ended, every subscription it held, and its deadlines."""
        connection.cancel_timers()
        if self.shared is not None:
            self.shared.forget(connection.outbox, self.registry.subscriptions_of(connection.outbox))
        for key in self.registry.remove(connection.outbox):
            self._interest_gone(key)
        with self._connections_lock:
            present = connection in self._connections
            if present:
                self._connections.remove(connection)
                self._compressing -= connection.outbox.deflate
                self._slots_ended += 1
                if self._exiting and next(self._ended_exiting) >= self._exit_count:  # ended before it could park
                    self._all_ended.set()
            self._connections_changed.notify_all()
        if present:
            self.registry.leave_session(connection.session_id)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, outbox: Outbox, topic: str, session_id: str) -> None:
        """Subscribe; raises ``ProtocolError`` (too_many_subscriptions) at the limit."""
        if self.history.enabled:
            with self._history_lock:
                self.history.touch((topic, session_id))  # a stream exists from its first subscription
        if self.registry.subscribe(outbox, topic, session_id):
            self.broker.interest_added((topic, session_id))

    def subscribe_json(self, outbox: Outbox, topic: str, session_id: str, since: Since | None) -> None:
        """Subscribe, replay what ``since`` missed, then answer ``subscribed:``; all queued in that order.

        Under the history lock, so a publish to the same stream lands either in
        the replay (offset <= the reply's) or live after the reply, never both.
        A replay that would not fit in the outbox is cut short (``recovered: false``).

        Raises:
            ProtocolError: ``invalid_since`` (the stream's epoch, an offset past its top),
                ``too_many_subscriptions``.
        """
        if self.shared is not None:
            return self.shared.subscribe_json(outbox, topic, session_id, since)
        key = (topic, session_id)
        with self.writer.batch(), self._history_lock:
            if not self.history.enabled:
                appeared = self.registry.subscribe(outbox, topic, session_id)
                reply = encode_subscribed(topic, session_id, recovered=False if since else None)
                self.writer.send_to(outbox, text_frame(reply))
            else:
                top = self.history.touch(key)
                if since is not None and since.epoch == top.epoch and since.offset > top.offset:
                    raise ProtocolError(ErrorCode.INVALID_SINCE,
                                        f"offset {since.offset} is past this stream's {top.offset}")
                appeared = self.registry.subscribe(outbox, topic, session_id)
                recovered = None
                if since is not None:
                    replay = self.history.read(key, since,
                                               budget=self._replay_budget(outbox))
                    for data in replay.messages:
                        self.writer.send_to(outbox, self._frame_for(outbox, data))
                    recovered = replay.recovered
                reply = encode_subscribed(topic, session_id, top.offset, top.epoch, recovered)
                self.writer.send_to(outbox, text_frame(reply))
        if appeared:
            self.broker.interest_added(key)

    def history_of(self, topic: str, session_id: str, limit: int | None, since: Since | None) -> bytes:
        """The ``history:`` reply for a stream: its last ``limit`` messages, or those after ``since``.

        Raises:
            ProtocolError: ``invalid_since`` (the stream's epoch, an offset past its top).
        """
        if self.shared is not None:
            return self.shared.history_of(topic, session_id, limit, since)
        if not self.history.enabled:
            return encode_history_reply(topic, session_id, None, None, [])
        limit = min(limit or self.history.size, self.history.size)
        key = (topic, session_id)
        with self._history_lock:
            self.history.touch(key)  # the reply names a real epoch to recover from later
            try:
                replay = self.history.read(
                    key, since, limit=limit
                )
            except ValueError as exc:
                raise ProtocolError(ErrorCode.INVALID_SINCE, str(exc)) from None
        messages = within_bytes(replay.messages, self.history_reply_budget, newest=since is None)
        return encode_history_reply(topic, session_id, replay.top.offset, replay.top.epoch, messages)

    @property
    def history_reply_budget(self) -> int:
        """Bytes of messages one ``history:`` reply may hold: three quarters of what a connection may queue."""
        bound = self.settings.max_queued_bytes
        return bound - bound // 4

    def unsubscribe(self, outbox: Outbox, topic: str, session_id: str) -> None:
        if self.shared is not None:
            self.shared.forget(outbox, [(topic, session_id)])
        if self.registry.unsubscribe(outbox, topic, session_id):
            self._interest_gone((topic, session_id))

    def _interest_gone(self, key: tuple[str, str]) -> None:
        if self.history.enabled:
            with self._history_lock:
                self.history.unsubscribed(key)
        self.broker.interest_removed(key)

    def _replay_budget(self, outbox: Outbox) -> int:
        """Bytes a replay may add to ``outbox``: what its bound leaves, less a quarter for live traffic."""
        bound = self.settings.max_queued_bytes
        return max(0, bound - bound // 4 - outbox.size)

    def _frame_for(self, outbox: Outbox, data: bytes) -> bytes:
        return deflate_text_frame(data, self.settings.compression) if outbox.deflate else text_frame(data)

    # ------------------------------------------------------------------ publishing

    def publish(self, delivery: Delivery, publish_id: str | None = None,
                answer: Answer | None = None) -> tuple[Landed, bool] | None:
        """Send ``delivery`` to every subscriber of its (topic, session), on every node.

        With ``publish_id``, a repeat of an id its session used within the
        idempotency window is not delivered again, and the publish is settled
        (what an ``ack:`` tells) only once the broker's road took it: at once
        with the in-memory broker, when Redis answered with the Redis broker.

        Args:
            answer: with ``publish_id``: called once with ``(landed, repeat)``, or with
                the ``ProtocolError`` (``unavailable``) when the road could not take it;
                on this thread (in-memory broker, a repeat) or the broker's (Redis).
                Without it, a publish with an id waits here for its answer.

        Returns:
            Without ``answer``: where the message landed on this node (its place in this
            node's stream, None with history off, and how many of this node's subscribers
            it was handed to), and whether it was a repeat (then: where the first one
            landed). With ``answer``: None.

        Raises:
            ProtocolError: the publish was refused before it was delivered anywhere.
        """
        if self.shared is not None:
            return self.shared.publish(delivery, publish_id, answer)
        if publish_id is None:
            if self._delivers_here:  # MemoryBroker.publish, inlined: it is deliver_local on this thread
                return self.deliver_local(delivery), False
            return self.broker.publish(delivery), False
        if answer is None:
            return self._publish_and_wait(delivery, publish_id)
        session_id = delivery.session_id
        with self._history_lock:
            for _ in range(3):  # claimed, or answered as the first one; a failed first frees the id
                seen = self.publish_ids.claim(session_id, publish_id)
                if seen is None:
                    break
                def settled(seen: Any = seen) -> bool:
                    return bool(seen.done or seen.failed)

                if not self._ids_settled.wait_for(settled, self.settings.close_timeout):
                    raise ProtocolError(ErrorCode.UNAVAILABLE, "a publish with this id is still in flight; retry")
                if seen.done:  # a repeat: answered as the first one was, not delivered again
                    repeat = Landed(seen.position, seen.delivered)
                    break
            else:
                raise ProtocolError(ErrorCode.UNAVAILABLE, "publishes with this id keep failing; retry")
        if seen is not None:
            answer((repeat, True))
            return None

        def on_landed(landed: Landed | BaseException) -> None:
            with self._history_lock:
                if isinstance(landed, BaseException):
                    self.publish_ids.release(session_id, publish_id)
                else:
                    self.publish_ids.settle(session_id, publish_id, landed.position, landed.delivered)
                self._ids_settled.notify_all()
            if isinstance(landed, BaseException):
                answer(ProtocolError(ErrorCode.UNAVAILABLE, "the broker could not carry the publish to the "
                                                            "other nodes; retry with the same id"))
            else:
                answer((landed, False))

        try:
            self.broker.publish(delivery, on_landed)
        except BaseException:
            with self._history_lock:
                self.publish_ids.release(session_id, publish_id)
                self._ids_settled.notify_all()
            raise
        return None

    def publish_run(self, publisher_name: str, topic: str, session_id: str, user: str | None,
                    items: list[tuple[Any, str | None]]) -> None:
        """``publish`` (no id) of ``Delivery(publisher_name, topic, payload, timestamp, session_id, user)``
        for each ``(payload, timestamp)`` of ``items``, in order: the publishes of one read of a
        connection, all to one stream (``Connection._carry_out_runs``).

        One timestamp for those without one (they arrived together), one encoding of
        the fields they share (``encode_run``), consecutive offsets taken at once
        (``History.append_run``) under the history lock, one look-up of the
        subscribers and their frames joined into one writer job per ``RUN_JOB_BYTES``
        (``send_run``): what each publish cost on its own road, once per run. Every
        delivery is the very bytes ``publish`` would have sent and kept. The frames
        are written at the end of the caller's writer batch (or of one opened here).
        When the hub does not take runs (``takes_runs``: a broker between, or shared
        history) or a subscriber may need compressed frames, each goes through
        ``publish``, as before.
        """
        stamp = rfc3339_now()
        if not self.takes_runs or self._compressing:
            for payload, timestamp in items:
                self.publish(Delivery(publisher_name, topic, payload, timestamp or stamp, session_id, user))
            return
        writer = self.writer
        batch = _NO_HOLD if writer.batching_thread(_get_ident()) else writer.batch()  # a connection's: in its batch
        if not self._history_on:
            encoded = encode_run(publisher_name, topic, session_id, user, items, stamp)
            subscribers = self.registry.subscribers(topic, session_id)
            if subscribers:
                with batch:
                    send_run(writer.send, encoded, subscribers)
            return

        def encode(first_offset: int, epoch: str) -> list[bytes]:  # each with its position, as history keeps it
            return encode_run(publisher_name, topic, session_id, user, items, stamp, first_offset, epoch)

        with batch, self._history_lock:  # the writing waits for the batch's end, after the lock
            kept = self.history.append_run((topic, session_id), len(items), encode)
            subscribers = self.registry.subscribers(topic, session_id)
            if subscribers:
                send_run(writer.send, kept, subscribers)

    def _publish_and_wait(self, delivery: Delivery, publish_id: str) -> tuple[Landed, bool]:
        """``publish`` with an id, for a caller that waits for the answer (not a connection's loop)."""
        return wait_for_answer(lambda answer: self.publish(delivery, publish_id, answer), PUBLISH_ANSWER_TIMEOUT,
                               "the broker did not answer in time; retry with the same id")

    def deliver_local(self, delivery: Delivery, encoded: bytes | None = None) -> Landed:
        """Hand ``delivery`` to this process's subscribers: one frame, encoded once (``encoded``: its
        ``delivery.encode()``, which the caller made already, as the Redis broker does for its envelope).

        With history on, the message first takes the next offset of its stream
        (this node's) and is kept there; the frame carries offset and epoch.
        The frame goes to ``Writer.send`` under the history lock, inside a writer
        batch, so it is written only after that lock is let go: at the end of the
        calling thread's own batch (a publisher's, around the commands of one read)
        or, for a thread outside one (a broker's listener), at the end of a batch
        opened here. The calling thread writes it unless another thread holds the
        writer's ``_flush_lock`` (that one writes it too). Never blocks on a subscriber.

        Returns:
            The message's position in its stream (None with history off), and how many
            subscribers it was handed to.
        """
        if self.shared is not None:  # history in the broker: the delivery carries its offset already
            return self.shared.deliver(delivery)
        if not self._history_on:
            subscribers = self.registry.subscribers(delivery.topic, delivery.session_id)
            if subscribers:
                self._send_delivery(delivery.encode() if encoded is None else encoded, subscribers)
            return Landed(None, len(subscribers))
        if encoded is None:
            encoded = delivery.encode()  # raises for a payload that is not JSON, before an offset is taken
        if self.writer.batching_thread(_get_ident()):  # the usual case: a publisher's thread, in the batch of its read
            # _append_and_queue_locked and _send_delivery's usual case, inlined: once per publish.
            topic, session_id = delivery.topic, delivery.session_id
            with self._history_lock:
                position, data = self.history.append_delivery((topic, session_id), encoded)
                subscribers = self.registry.subscribers(topic, session_id)
                if subscribers:
                    if self._compressing:
                        self._send_delivery(data, subscribers)
                    else:
                        self.writer.send(text_frame(data), subscribers)  # type: ignore[arg-type]  # outboxes
            return _landed(Landed, (position, len(subscribers)))
        with self.writer.batch(), self._history_lock:  # e.g. the broker's listener: the writing waits for the lock to go
            return self._append_and_queue_locked(delivery, encoded)

    def deliver_run(self, deliveries: list[Delivery]) -> None:
        """``deliver_local`` for consecutive deliveries of one (topic, session), oldest first (``Broker.deliver_run``).

        With the history in the broker (Redis), they are queued together
        (``SharedStreams.deliver_run``: one look-up, one lock, one writer job); with
        history off (a version-4 envelope: a node's consecutive publishes of the pair),
        the same here: one look-up of the subscribers and their frames joined, one
        writer job per ``RUN_JOB_BYTES`` (``send_run``), so the receiving node pays a run's encoding,
        not each delivery's road (a subscriber that joins or leaves meanwhile gets the
        whole run or none of it, as if it had come a moment earlier or later); with
        this node's own history (no broker history), each goes its own way, taking its
        offset. Nothing is returned: a listener has no use for it.
        """
        if self.shared is not None:
            self.shared.deliver_run(deliveries)
            return
        if self._history_on or len(deliveries) == 1 or self._compressing:
            for delivery in deliveries:
                self.deliver_local(delivery)
            return
        first = deliveries[0]
        subscribers = self.registry.subscribers(first.topic, first.session_id)
        if not subscribers:
            return
        send_run(self.writer.send, [delivery.encode() for delivery in deliveries], subscribers)

    def _append_and_queue_locked(self, delivery: Delivery, encoded: bytes) -> Landed:
        """Give ``delivery`` its offset, keep it, queue its frame; with ``_history_lock`` held, inside a batch."""
        assert self._history_lock._is_owned(), "must hold _history_lock"  # type: ignore[attr-defined]
        position, data = self.history.append_delivery((delivery.topic, delivery.session_id), encoded)
        subscribers = self.registry.subscribers(delivery.topic, delivery.session_id)
        if subscribers:
            self._send_delivery(data, subscribers)
        return Landed(position, len(subscribers))

    def _send_delivery(self, data: bytes, subscribers: tuple[Any, ...]) -> None:
        """Queue one encoded delivery for ``subscribers``: one frame, or one plain and one compressed.

        Compressed without context takeover, so the same bytes suit every compressing subscriber.
        """
        if self._compressing:  # the usual case, 0, costs no pass over the subscribers
            plain: list[Outbox] = []
            compressing: list[Outbox] = []
            for box in subscribers:
                (compressing if box.deflate else plain).append(box)
            if compressing:
                self.writer.send(deflate_text_frame(data, self.settings.compression), compressing)
            if not plain:
                return
            subscribers = tuple(plain)
        self.writer.send(text_frame(data), subscribers)

    def wait_connections(self, at_most: int, timeout: float, *, slots: bool = True) -> bool:
        """Block until at most ``at_most`` connections are open and hold a slot; False on timeout.

        A connection leaves ``_connections`` before its request gives its slot
        back, so both are waited for: once this returns, that many can connect.
        Without ``slots``, the slots of connections that have ended do not count:
        their threads may still be ending (the WSGI server's and Flask's teardown,
        or ``AfterTheView``'s close, which gives the slot back); those of requests
        still on their way to an upgrade do.
        """
        with self._connections_lock:
            return self._connections_changed.wait_for(
                lambda: len(self._connections) <= at_most
                and self._slots_taken - (0 if slots else self._slots_ended) <= at_most, timeout
            )

    # ------------------------------------------------------------------ reporting and shutdown

    def counts(self) -> dict[str, Any]:
        """What ``/healthz`` shows: connections, pending requests, sessions, topics, history, broker.

        Constant time: every count is kept up to date as it changes (``Registry.counts``),
        so polling it never holds a lock that publishes and subscribes wait for.
        """
        with self._connections_lock:
            connections = len(self._connections)
        registry = self.registry.counts()
        return {
            "status": "ok" if self._accepting else "stopping",
            "connections": connections,
            "pending_requests": self.pending_requests.count,
            "sessions": registry.sessions_in_use,
            "topics": registry.topics,
            "subscriptions": registry.subscriptions,
            **self._history_counts(),
            "broker": self.broker.status(),
        }

    def _history_counts(self) -> dict[str, int]:
        with self._history_lock:
            return self.history.counts()

    @property
    def open_count(self) -> int:
        """How many connections are open now (the accept loop's pacing reads it: ``hub_server.HubServer``)."""
        return len(self._connections)  # a set's len is atomic under the GIL: no lock, the accept thread never waits

    @property
    def reconnect_rate(self) -> float:
        """Handshakes a second the 4200's window spreads reconnections to: what this hub's server
        measured (``handshake_rate``), else ``RUSTY_WS_RECONNECT_RATE``; never below a quarter of
        that setting (``WINDOW_RATE_SHARE``), so a measure taken at a bad moment cannot keep the
        clients away more than four times the window the setting names."""
        setting = float(self.settings.reconnect_rate)
        measured = self.handshake_rate
        return setting if measured is None else max(setting * WINDOW_RATE_SHARE, measured)

    def shutdown(self, timeout: float = 5.0, *, exiting: bool = False, clock: StopClock | None = None) -> None:
        """Close every connection (4200, reconnect now), stop the broker and the writer.

        With more connections than the hub takes in a second, the reason asks the clients
        to reconnect within connections / rate seconds (``protocol.restart_reason``), the
        rate being what this hub's server measured (``reconnect_rate``): a window longer than
        the hub needs keeps the last client away for nothing (on a quiet machine the 6.7 s
        window of 10,000 clients was the whole storm), and one shorter than it needs sends
        the excess to the next hub's pacing, whose 503s cost it a fifth of a handshake each
        (docs/performance.md, "Reconnect storm, session 14").
        Blocks until the connections have ended or ``timeout`` has passed. Idempotent.

        ``exiting``: the process ends right after (``rusty-ws serve``, ``serve.serve``),
        so only what a client sees matters: this waits until every close frame has been
        written (at most ``timeout``) and then at most ``EXIT_GRACE`` more for the closing
        handshakes, stops the broker, and leaves the writer and the connections' threads
        to the process's exit, which closes every socket at once. With 10,000 connections
        their threads' clean-up (unsubscribing, releasing, the request's teardown) took
        several seconds of CPU that a process about to end has no use for, and the writer
        and the clients' reconnections waited behind it.

        ``clock``: marks each phase's end on it (``StopClock``), for the exiting process's last line.
        """
        started = time.monotonic()
        mark = clock.mark if clock is not None else _no_mark
        with self._connections_lock:
            self._accepting = False
            connections = list(self._connections)
            if exiting and not self._exiting:
                self._exit_count = len(connections)
                self._parking_lock.acquire()
                self._exiting = True
        if exiting and not connections:
            self._all_ended.set()
        reason = restart_reason(len(connections) / self.reconnect_rate)
        if exiting:
            # Queued together and written at the batch's end by this thread, which holds the
            # writer's lock for all of them. Before the connections' threads parked (_park), a
            # thread woken by its client's answer cleaned up for ~0.1 ms, and the writing
            # thread waited behind thousands of them for the interpreter at every send (tried
            # with 5,000 connections: the last written 4 s later, after their close deadline).
            # And their threads sleep through their clients' answers (quiet_exit.hold), which
            # this thread reads once the frames are out: each answer woke a thread that wanted
            # the interpreter lock while the frames were still being written (2.5-12 s of it at
            # a high load, 7 stops of 30).
            held = quiet_exit.hold(connection.sock for connection in connections)
            mark("sockets held")
            with self.writer.batch():
                for connection in connections:
                    connection.close(CloseCode.SERVER_RESTARTING, reason)
        else:
            # One by one, each written at once by whoever holds the writer's lock.
            for connection in connections:
                connection.close(CloseCode.SERVER_RESTARTING, reason)
        mark("4200s queued")
        deadline = started + timeout
        if exiting:
            written = self._wait_written(deadline)
            mark("4200s written")
            grace = time.monotonic() + max(0.0, min(EXIT_GRACE, deadline - time.monotonic()))
            answered, replied = quiet_exit.read_answers(held, grace)
            for connection in connections:  # their threads slept through the answers: their lines, here
                connection.answer_read = connection.sock in replied
                self._log_end(connection)
            ended = self._all_ended.wait(max(0.0, grace - time.monotonic())) if len(held) < len(connections) \
                else answered == len(held)
            mark("closing handshakes")
            woken = min(len(connections), next(self._ended_exiting) - 1)  # threads that woke and parked
            left = len(connections) - max(woken, answered)
            stop_logger.info("told %d connections 4200 (%r, at %.0f a second) in %.2fs (%s); %s; exiting",
                             len(connections), reason, self.reconnect_rate, time.monotonic() - started,
                             "every close frame written" if written else "some close frames not written in time",
                             "every closing handshake done" if ended else f"{left} closing handshakes cut short")
            stop_logger.info("of the answers, %d read by the stopping thread (%d held asleep); %d connections' "
                             "threads woke (EOF, or more than quiet_exit.LOW_WATER bytes)", answered, len(held), woken)
            self.broker.stop()
            mark("broker stopped")
            return
        # Until every connection has ended: its closing handshake is done, it and its
        # subscriptions are forgotten. Not until every request thread has finished too
        # (werkzeug's and Flask's teardown, ~0.3 ms of CPU each): with 10,000 of them that
        # tail took 5-15 s on a loaded machine, and a restart waited for it for nothing.
        if not self.wait_connections(0, timeout, slots=False):
            with self._connections_lock:
                left = len(self._connections)
            logger.warning("%d connections still open after %.1fs; dropping them", left, timeout)
        self.broker.stop()
        self.writer.stop(max(0.1, deadline - time.monotonic()))

    def _wait_written(self, deadline: float) -> bool:
        """Until the writer holds no queued bytes (every close frame is in the kernel) or ``deadline``.

        Helps with the writing (``Writer.flush``) and waits on ``_connections_changed``
        between looks, which every connection's end signals; a bounded look every
        ``WRITTEN_POLL`` seconds covers the frames written with no connection ending.
        """
        writer = self.writer
        while True:
            writer.flush()
            if writer.queued_bytes == 0:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._connections_lock:
                self._connections_changed.wait(min(WRITTEN_POLL, left))
