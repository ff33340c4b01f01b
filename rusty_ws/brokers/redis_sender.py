"""The Redis sender: one thread that writes a node's commands to Redis, pipelined, in order.

``RedisBroker.publish`` (and the history scripts) hand commands to ``submit``,
which only queues them; the thread ``rusty_ws-redis-sender-{node}`` takes
everything waiting, writes it as one pipeline on its own connection, reads the
replies, and calls each command's ``on_reply`` with its reply. So no publisher
waits for a Redis round trip, and one node's commands reach Redis in the order
they were submitted (one FIFO queue, one connection, one thread).

The queue is bounded (``max_commands`` and ``max_bytes``): ``submit`` blocks
while it is full, which slows publishers to what Redis takes; nothing is
dropped. While Redis is unreachable (from a failed connection until the next
one is up) the thread fails every queued command at once with ``on_reply(exc)``
and counts it ``unsent``, so publishers are blocked at most while a connection
attempt or a write times out (``connect_timeout``, ``reply_timeout``), never
for the length of an outage. A command whose connection broke after it was
written is failed too: Redis may or may not have run it.

Scripts: ``script_load`` returns the script's SHA1 at once and queues a
``SCRIPT LOAD``; every new connection loads every known script before any other
command, so an ``EVALSHA`` after a Redis restart finds it. In the same first
write it asks ``INFO server`` for the ``run_id`` of the Redis it reached (new at
every start of redis-server), which each merge of the connection's commands is
given: the history's publish script compares it with the one that wrote a
pair's keys (``redis_scripts``: a Redis restored from older files). A ``NOSCRIPT`` reply
anyway (``SCRIPT FLUSH`` on a live connection) loads the script again and runs
the failed commands once more, in their order, before any reply is handed out.

Merging: a command submitted as a ``Mergeable`` (the history's publish script)
is merged with the ``Mergeable`` commands right behind it in the queue that
name the same ``group`` (one pair's publishes), as far as their weights fit
its ``budget``: the thread sends the one command their ``merge`` makes (given
the ``run_id`` of the Redis the connection reaches), and hands each of them its
own part of the reply (or the same error, if the merged command failed). A kind
with ``merge_alone`` has its ``merge`` called for a run of one too, before it is
written (the history keeps each run it sends there, and puts the run_id in).
The queue stays one FIFO: only neighbours are merged, so the order of
everything else is untouched.

Answers without a callback: a ``Mergeable`` submitted without ``on_reply`` whose kind has an
``answer`` method is answered through it (a history's publish without id, ``redis_history.py``):
with each failure, and with each reply its merge's split did not settle already (a part
``SETTLED``: nothing is called for it). No closure is made per publish, and none is called
for a run settled as a whole.

Threads and locks: the sender thread owns the connection (``_link``); ``_lock``
guards the queue and the counts, and is never held across I/O nor while an
``on_reply`` runs. ``_has_work`` and ``_not_full`` are conditions on it.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import operator
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import backoff
from .redis_link import ConnectionLink, Link

__all__ = ["SETTLED", "ConnectionLink", "Link", "Merge", "Mergeable", "OnReply", "RedisSender"]

logger = logging.getLogger("rusty_ws.server")

#: Called on the sender thread with a command's reply, or an exception instance.
OnReply = Callable[[Any], None]
#: Seconds the sender waits for a connection (and its handshake) to Redis.
CONNECT_TIMEOUT = 2.0
#: Seconds the sender waits for the replies to a pipeline before it takes Redis for gone.
REPLY_TIMEOUT = 5.0
#: Seconds of silence after which the sender PINGs an idle connection (finds a dead one early).
KEEPALIVE_INTERVAL = 5.0
#: Most commands in one pipeline.
MAX_BATCH = 5000
#: Most commands merged into one (``Mergeable``).
MAX_MERGE = 200

#: The part of a merged reply (``Merge``'s split) for a command the split settled itself: the
#: sender calls nothing for it when it was submitted without ``on_reply`` (``Mergeable.answer``).
SETTLED: Any = type("Settled", (), {"__slots__": (), "__repr__": lambda self: "SETTLED"})()

#: Makes one command of several ``Mergeable`` ones of a group (oldest first), to be written on a
#: connection to the Redis of the given ``run_id`` ('' if it is not known), and the function that
#: splits its reply into theirs (one each, in the same order).
Merge = Callable[[list["Mergeable"], str], tuple[tuple[Any, ...], Callable[[Any], list[Any]]]]


class Mergeable(tuple):
    """A command (its arguments, as a tuple) that the sender may merge with its neighbours of one ``group``.

    It is a plain command tuple to anything else (a redirect resends it alone), and
    alone it is sent as it is. The sender merges consecutive ones of an equal
    ``group`` while ``head`` plus their ``weight`` stays within the first's ``budget``.
    ``size`` is what it counts for in the queue's bytes (``_size``'s estimate, or the
    caller's, who knows its arguments: one pass over them less per command); it is at
    least its ``weight`` (``of`` makes it so), so a run whose sizes fit the budget is
    merged without reading each one's weight (``_coalesce``).
    """

    group: Any
    merge: Merge
    weight: int
    head: int
    budget: int
    size: int
    #: Called with the command's reply (or failure) when it was submitted without ``on_reply``,
    #: unless its merge's split settled it (``SETTLED``); None: nothing is called (a method of its kind).
    answer: Callable[[Any], None] | None = None
    #: Whether ``merge`` is called for a run of one too (alone, it is otherwise sent as it is): a
    #: history registers there every run it sends, before it is written (``redis_history``).
    merge_alone = False

    @classmethod
    def of(cls, args: tuple[Any, ...], *, group: Any, merge: Merge, weight: int, head: int,
           budget: int, size: int | None = None) -> "Mergeable":
        command = cls(args)
        command.group, command.merge, command.weight, command.head, command.budget = (
            group, merge, weight, head, budget)
        command.size = max(weight, _size(args) if size is None else size)
        return command



#: A queued item's size (its third field), read in C: ``sum(map(_size_of, batch))``.
_size_of = operator.itemgetter(2)


def _size(args: tuple[Any, ...]) -> int:
    """Bytes a command holds in the queue, near enough: its arguments plus 16 each."""
    return sum(len(a) + 16 if isinstance(a, (bytes, str)) else 32 for a in args)


class RedisSender:
    """A node's writer to Redis: a bounded FIFO queue drained by one thread, as pipelines.

    Args:
        client: a ``redis.Redis``; the sender makes its own connection from its pool.
        errors: the exceptions that mean the connection failed (redis' and ``OSError``).
        node_id: names the thread and the log lines.
        max_commands: most commands waiting at once (``RUSTY_WS_REDIS_SEND_QUEUE``).
        max_bytes: most bytes waiting at once (``RUSTY_WS_REDIS_SEND_QUEUE_BYTES``); one
            command bigger than this is let in alone.
        reply_timeout: seconds a pipeline's replies may take before Redis is taken for gone
            (None: ``REPLY_TIMEOUT``).
        connect_timeout: seconds a connection attempt may take (None: ``CONNECT_TIMEOUT``).
    """

    def __init__(
        self,
        *,
        client: Any,
        errors: tuple[type[BaseException], ...],
        node_id: str,
        max_commands: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        reply_timeout: float | None = None,
        connect_timeout: float | None = None,
        backoff_delays: Callable[[], Iterator[float]] = lambda: backoff.delays(initial=0.1, cap=5.0),
    ) -> None:
        if max_commands < 1 or max_bytes < 1:
            raise ValueError("the send queue needs room for at least one command")
        self.client = client
        self.errors = errors
        self.node_id = node_id
        self.max_commands = max_commands
        self.max_bytes = max_bytes
        self.reply_timeout = REPLY_TIMEOUT if reply_timeout is None else reply_timeout
        self.connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.backoff_delays = backoff_delays
        import redis.exceptions  # the broker imported it already: this is the redis extra

        self._exceptions = redis.exceptions
        self._response_error: type[Exception] = redis.exceptions.ResponseError
        self._noscript: type[Exception] = redis.exceptions.NoScriptError
        # _lock guards _queue, _queued_bytes, _in_flight, _scripts, _connected, _stopped, _idle
        # and _counts. Never held across I/O, nor while an on_reply runs.
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)  # the thread waits on it for commands
        self._not_full = threading.Condition(self._lock)  # submit waits on it for room
        self._answered = threading.Condition(self._lock)  # signalled after each batch is answered
        self._connected_changed = threading.Condition(self._lock)  # signalled when _connected changes
        self._in_flight = 0  # commands taken from the queue, not answered yet
        self._queue: collections.deque[tuple[tuple[Any, ...], OnReply | None, int]] = collections.deque()
        self._queued_bytes = 0
        self._scripts: dict[str, str] = {}  # sha1 -> source, loaded on every new connection
        self._connected = False
        self._run_id = ""  # of the Redis the connection reaches ('': not known); the thread's only
        self._stopped = False
        self._idle = False  # the thread waits on _has_work: a submit must notify it
        self._counts = {"sent": 0, "unsent": 0, "unanswered": 0, "failed": 0, "blocked": 0, "reconnects": 0}
        self._first_attempt = threading.Event()
        # Daemon: a hub nobody shut down must not keep the process alive; stop() joins it.
        self._thread = threading.Thread(target=self._run, name=f"rusty_ws-redis-sender-{node_id}", daemon=True)

    # ------------------------------------------------------------------ any thread

    def start(self, timeout: float) -> None:
        """Start the thread; wait (up to ``timeout``) for its first connection attempt to end."""
        self._thread.start()
        self._first_attempt.wait(timeout)

    def submit(self, args: tuple[Any, ...], on_reply: OnReply | None = None, size: int | None = None) -> None:
        """Queue one Redis command (``("PUBLISH", channel, data)``, ``("EVALSHA", sha, n, ...)``).

        ``on_reply`` is called later on the sender thread with the command's reply,
        or with an exception instance: Redis refused it (``ResponseError``) or could
        not be reached (``ConnectionError``; counted ``unsent``). It must not block,
        nor take a lock its caller may hold while it calls ``submit`` (a full queue
        would then deadlock). Without ``on_reply``, a ``Mergeable``'s ``answer`` is called
        so (see the module's docstring). Blocks only while the queue is full; after ``stop``,
        fails the command at once, on the calling thread. ``size``: what the command counts
        for in the queue's bytes, if the caller knows it (None: its ``size``, or ``_size``'s
        estimate); for a ``Mergeable``, at least its ``weight``.
        """
        if size is None:
            size = args.size if isinstance(args, Mergeable) else _size(args)
        with self._lock:
            if not self._stopped:
                queue, waited = self._queue, False
                while queue and (len(queue) >= self.max_commands or self._queued_bytes + size > self.max_bytes):
                    if not waited:
                        self._counts["blocked"] += 1
                        waited = True
                    self._not_full.wait()
                    if self._stopped:
                        break
                else:
                    queue.append((args, on_reply, size))
                    self._queued_bytes += size
                    if self._idle:
                        self._has_work.notify()
                    return
            self._counts["unsent"] += 1
        if on_reply is None and isinstance(args, Mergeable):
            on_reply = args.answer
        if on_reply is not None:
            on_reply(ConnectionError("the Redis sender was stopped"))

    def script_load(self, source: str) -> str:
        """Make ``source`` known to Redis (now and after every reconnect); returns its SHA1 for EVALSHA.

        Does not wait: the ``SCRIPT LOAD`` is queued ahead of any later ``EVALSHA``
        (before ``start``, nothing is queued: every connection loads the known scripts first).
        """
        sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
        with self._lock:
            known = sha in self._scripts
            self._scripts[sha] = source
        if not known and self._thread.ident is not None:
            self.submit(("SCRIPT", "LOAD", source))
        return sha

    def stop(self, timeout: float) -> None:
        """Send what is queued (while connected), end the thread, close the connection. Idempotent."""
        with self._lock:
            self._stopped = True
            self._has_work.notify_all()
            self._not_full.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("%s did not stop within %.1fs", self._thread.name, timeout)

    def wait_drained(self, timeout: float) -> bool:
        """Block until every command submitted so far has been answered; False on timeout."""
        with self._lock:
            return self._answered.wait_for(lambda: not self._queue and not self._in_flight, timeout)

    def wait_connected(self, connected: bool, timeout: float) -> bool:
        """Block until the sender is (or is not) connected; False on timeout."""
        with self._lock:
            return self._connected_changed.wait_for(lambda: self._connected == connected, timeout)

    @property
    def connected(self) -> bool:
        return self._connected

    def status(self) -> dict[str, Any]:
        """For ``/healthz``: connected; queued (waiting now); sent (answered by Redis); unsent (failed for
        want of Redis), of which unanswered (written, then the connection failed before the reply:
        Redis may have run them); failed (refused by Redis); blocked (submits that waited for
        room); reconnects."""
        with self._lock:
            return {"connected": self._connected, "queued": len(self._queue), **self._counts}

    # ------------------------------------------------------------------ the thread

    def _open_link(self) -> Link:
        """A new connection to write pipelines on: the one method to replace for another topology (Cluster)."""
        connection = self.client.connection_pool.make_connection()
        connection.socket_connect_timeout = connection.socket_timeout = self.connect_timeout
        connection.connect()  # with its handshake (client name), within connect_timeout
        connection.socket_timeout = self.reply_timeout  # from now on: for the pipelines' replies
        sock = getattr(connection, "_sock", None)
        if sock is not None:
            sock.settimeout(self.reply_timeout)
        return ConnectionLink(connection, self._exceptions)

    def _run(self) -> None:
        delays = self.backoff_delays()
        ever_connected = warned = False
        while True:
            link: Link | None = None
            try:
                link = self._open_link()
                replies = link.execute([("INFO", "server"), *(("SCRIPT", "LOAD", source) for source in self._known_scripts())])
                self._run_id = _run_id_of(replies[0])
                with self._lock:
                    self._connected = True
                    self._connected_changed.notify_all()
                    if ever_connected:
                        self._counts["reconnects"] += 1
                ever_connected = True
                delays = self.backoff_delays()  # a good connection starts the backoff over
                logger.debug("- %s connected", threading.current_thread().name)
                self._first_attempt.set()
                self._pump(link)
                return  # stopped
            except self.errors as exc:
                if not warned or self._connected:
                    logger.warning("the Redis sender lost its connection or was refused (%s); "
                                   "publishes reach this node's subscribers only until it is back", exc)
                warned = True
            except Exception:
                logger.exception("the Redis sender failed; reconnecting")
            finally:
                with self._lock:
                    self._connected = False
                    self._connected_changed.notify_all()
                if link is not None:
                    link.close()
            self._first_attempt.set()
            if self._fail_queued_until(time.monotonic() + next(delays)):
                return

    def _known_scripts(self) -> list[str]:
        with self._lock:
            return list(self._scripts.values())

    def _fail_queued_until(self, deadline: float) -> bool:
        """Disconnected: fail every command queued until ``deadline``; True once stopped."""
        failure = ConnectionError("Redis is unreachable")
        while True:
            with self._lock:
                batch = self._take_locked(len(self._queue))
                if not batch:
                    left = deadline - time.monotonic()
                    if self._stopped or left <= 0:
                        return self._stopped
                    self._idle = True
                    self._has_work.wait(left)
                    self._idle = False
                    continue
                self._counts["unsent"] += len(batch)
            self._answer(batch, [failure] * len(batch))

    def _take_locked(self, most: int) -> list[tuple[tuple[Any, ...], OnReply | None, int]]:
        assert self._lock.locked(), "must hold the sender's lock"
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(most, len(queue)))]
        self._in_flight += len(batch)
        if batch:
            self._queued_bytes -= sum(map(_size_of, batch))
            self._not_full.notify_all()
        return batch

    def _pump(self, link: Link) -> None:
        """Connected: write what waits as one pipeline, read the replies, answer; until stopped."""
        last_write = time.monotonic()
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._idle = True
                    self._has_work.wait(KEEPALIVE_INTERVAL)
                    self._idle = False
                    if not self._queue and time.monotonic() - last_write >= KEEPALIVE_INTERVAL:
                        break
                if not self._queue and self._stopped:
                    return
                batch = self._take_locked(MAX_BATCH)
            if not batch:
                link.execute([("PING",)])  # keepalive: raises if Redis went away while we were idle
                last_write = time.monotonic()
                continue
            commands, spans = _coalesce(batch, self._run_id)
            replies: list[Any] | None = None
            try:
                replies = link.execute(commands)
                self._retry_noscript(link, commands, replies)
            except BaseException as exc:
                lost = ConnectionError(f"Redis connection lost: {exc}")
                # What Redis answered keeps its reply; the rest (all, or the NOSCRIPT retries) is lost.
                replies = [lost] * len(commands) if replies is None else [
                    lost if isinstance(reply, self._noscript) else reply for reply in replies]
                replies = _split(spans, replies)
                self._count(replies, lost)
                self._answer(batch, replies)
                raise
            last_write = time.monotonic()
            replies = _split(spans, replies)
            self._count(replies, None)
            self._answer(batch, replies)

    def _count(self, replies: list[Any], lost: BaseException | None) -> None:
        """Count a batch's replies; with ``lost``, its connection failed: mark it disconnected first."""
        unanswered = sum(1 for reply in replies if reply is lost) if lost is not None else 0
        # A run its split settled (SETTLED parts, identity first in list.count) holds no failure: not looked at again.
        failed = 0 if replies.count(SETTLED) == len(replies) else \
            sum(1 for reply in replies if isinstance(reply, BaseException)) - unanswered
        with self._lock:
            self._counts["sent"] += len(replies) - failed - unanswered
            self._counts["failed"] += failed
            self._counts["unsent"] += unanswered
            self._counts["unanswered"] += unanswered  # written: Redis may have run them
            if lost is not None:
                self._connected = False  # before anyone hears of the failure
                self._connected_changed.notify_all()

    def _retry_noscript(self, link: Link, commands: list[tuple[Any, ...]], replies: list[Any]) -> None:
        """Load again the scripts of EVALSHAs refused with NOSCRIPT and run those once more, in order."""
        again = [i for i, reply in enumerate(replies) if isinstance(reply, self._noscript)]
        if not again:
            return
        with self._lock:
            scripts = {sha: self._scripts.get(sha) for sha in {_sha_of(commands[i]) for i in again}}
        again = [i for i in again if scripts.get(_sha_of(commands[i]))]
        logger.info("Redis forgot %d script(s); loading them again", len(scripts))
        loads = [("SCRIPT", "LOAD", source) for source in scripts.values() if source]
        retried = link.execute([*loads, *(commands[i] for i in again)])[len(loads):]
        for i, reply in zip(again, retried):
            replies[i] = reply

    def _answer(self, batch: list[tuple[tuple[Any, ...], OnReply | None, int]], replies: list[Any]) -> None:
        try:
            for (args, on_reply, _), reply in zip(batch, replies):
                if on_reply is None:
                    if reply is SETTLED:
                        continue  # its merge's split settled it
                    on_reply = args.answer if isinstance(args, Mergeable) else None
                    if on_reply is None:
                        if isinstance(reply, self._response_error):
                            logger.warning("Redis refused %s: %s", args[0], reply)
                        continue
                try:
                    on_reply(reply)
                except Exception:
                    logger.exception("a Redis reply's callback failed (%s)", args[0])
        finally:
            with self._lock:
                self._in_flight -= len(batch)
                self._answered.notify_all()


def _run_id_of(info: Any) -> str:
    """The ``run_id`` in ``INFO server``'s reply; '' (logged) if there is none (INFO refused or renamed:
    the history's scripts then ask INFO themselves, and fail as this did)."""
    if isinstance(info, str):
        info = info.encode("utf-8", "replace")
    found = re.search(rb"^run_id:([0-9a-f]{40})\r?$", info, re.MULTILINE) if isinstance(info, bytes) else None
    if found is None:
        logger.warning("Redis gave no run_id in INFO server (%s): a Redis restored from older files is not "
                       "told apart by this connection", str(info)[:200])
        return ""
    return found.group(1).decode("ascii")


def _sha_of(command: tuple[Any, ...]) -> str:
    name = command[0]
    if isinstance(name, bytes):
        name = name.decode()
    if str(name).upper() != "EVALSHA" or len(command) < 2:
        return ""
    sha = command[1]
    return sha.decode() if isinstance(sha, bytes) else str(sha)


#: One command sent for ``count`` queued ones; ``split`` (None: one, sent as it was) splits its reply.
_Span = tuple[int, Callable[[Any], list[Any]] | None]


def _coalesce(batch: list[tuple[tuple[Any, ...], OnReply | None, int]], run_id: str = "",
              ) -> tuple[list[tuple[Any, ...]], list[_Span]]:
    """The commands to send for ``batch`` to the Redis of ``run_id``: runs of ``Mergeable`` neighbours of
    one group merged (``Mergeable``)."""
    commands: list[tuple[Any, ...]] = []
    spans: list[_Span] = []
    i, n = 0, len(batch)
    while i < n:
        first = batch[i][0]
        j = i + 1
        if isinstance(first, Mergeable):
            group, room = first.group, first.budget - first.head - first.weight
            while j < n and j - i < MAX_MERGE:
                other = batch[j][0]
                if not isinstance(other, Mergeable) or other.group != group:
                    break
                j += 1
            # Within the budget: all of them if their queued sizes fit (each at least its weight:
            # one sum in C, no weight read), else as far as their weights do, one by one.
            if j - i > 1 and sum(map(_size_of, batch[i + 1:j])) > room:
                k = i + 1
                while k < j:
                    weight = batch[k][0].weight  # type: ignore[attr-defined]  # a Mergeable (scanned above)
                    if weight > room:
                        break
                    room -= weight
                    k += 1
                j = k
        merged = None
        if j - i > 1 or (isinstance(first, Mergeable) and first.merge_alone):
            assert isinstance(first, Mergeable)
            try:
                merged = first.merge([item[0] for item in batch[i:j]], run_id)  # type: ignore[misc]
            except Exception:  # a bug, not Redis: send them one by one rather than lose them
                logger.exception("merging %d commands failed; sending them one by one", j - i)
        if merged is None:
            for item in batch[i:j]:
                commands.append(item[0])
                spans.append((1, None))
        else:
            commands.append(merged[0])
            spans.append((j - i, merged[1]))
        i = j
    return commands, spans


def _split(spans: list[_Span], replies: list[Any]) -> list[Any]:
    """One reply per queued command: a merged command's error goes to each of its parts."""
    if len(spans) == len(replies) and all(split is None for _, split in spans):
        return replies
    out: list[Any] = []
    for (count, split), reply in zip(spans, replies):
        if split is None:
            out.append(reply)
        elif isinstance(reply, BaseException):
            out.extend([reply] * count)
        else:
            try:
                parts = split(reply)
            except Exception:
                logger.exception("splitting the reply of a merged command failed")
                parts = []
            out.extend(parts if len(parts) == count else [reply] * count)  # each part checks what it got
    return out
