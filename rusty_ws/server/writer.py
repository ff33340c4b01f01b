"""Every write to a hub's sockets: done by one thread at a time, usually the publisher's own.

How a publish reaches 1,000 subscribers cheaply: the hub encodes the frame
once and queues ``(frame, subscribers)`` as one job. Then the publishing
thread, if no other thread is writing, drains the queue itself: it copies the
frame reference into each subscriber's outbox and writes every outbox that
has data with one non-blocking ``send`` (frames that piled up for a socket go
out in one write). If another thread is writing, the job is left to it: that
thread drains the queue again before it lets go ("flat combining"). No thread
is woken per publish, let alone per subscriber.

One writer at a time: only the thread holding ``_flush_lock`` writes to a
socket or touches an outbox, so frames never interleave (simple-websocket's
own ``send()`` writes from whichever thread calls it, with no lock).

The writer thread (``rusty_ws-writer``) does what cannot be done on the spot:
it waits with a selector for room in sockets whose kernel buffer was full and
writes them when they drain; it pings idle clients and drops those that stop
answering; it ends closing handshakes that time out; and it runs the
connections' deadlines (``timers``: token expiry, the wait for ``auth:``),
waking for the earliest one. A socket whose outbox
passes ``max_queued_bytes`` is closed as a slow consumer (4100); nobody else
ever waits for it.

What the bounds count is memory, not wire bytes: a queued frame costs its
length plus ``ITEM_COST`` (its object's header and its slot in the list), so
a flood of tiny pongs costs what it holds. Two exceptions and one backstop:
a single frame is always let into an otherwise empty outbox (one delivery
bigger than the bound goes to a subscriber that keeps up); and past
``max_total_queued_bytes`` over all outboxes together, the outboxes holding
the most are closed (4100) first until the total is back under it. That
total counts a frame shared by many outboxes (a publish's) once: the sum of
the outboxes' sizes is only a bound of it, cheap to keep; when it passes the
budget the writer counts what is really held before it closes anything.

Ownership: every field of an ``Outbox`` belongs to the ``_flush_lock`` holder,
except ``last_seen``, which the connection's reader thread stores on each
whole message or pong (its signs of life).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from ..frames import OP_PING, close_frame, encode_frame
from ..protocol import CLOSE_CODE_EXPLANATIONS, CloseCode
from .timers import Timers

__all__ = ["Outbox", "OutboxState", "Writer"]

logger = logging.getLogger("rusty_ws.server")

_get_ident = threading.get_ident
#: Non-blocking send on a blocking socket (Linux, macOS); the reader thread keeps its blocking recv.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
#: Most bytes joined for one send: enough to fill a socket buffer, little to copy.
WRITE_BYTES = 256 * 1024
#: What a queued frame costs in memory beyond its bytes, as the bounds count it: a bytes
#: object's header (33) and allocator rounding (up to 15), its list slot and the list's
#: spare room (~9). Measured: 2 million 2-byte pongs held 115 MiB, 57 bytes each.
ITEM_COST = 64
#: What one more outbox holding a frame already counted costs: its list slot.
_SLOT_COST = 8


class OutboxState(enum.Enum):
    """Where an outbox is in its life; it only ever moves forward. Compare with ``is``."""

    OPEN = "open"          #: takes frames
    CLOSING = "closing"    #: its close frame is queued; takes nothing more, ends at ``close_deadline``
    CLOSED = "closed"      #: forgotten: its socket is shut down and nothing is written again


# Read once per delivery: module globals, not ``OutboxState.X`` lookups (~0.1 us each on 3.11).
_OPEN, _CLOSING, _CLOSED = OutboxState.OPEN, OutboxState.CLOSING, OutboxState.CLOSED


class Outbox:
    """What waits to be written to one socket, and the socket's keepalive clock."""

    __slots__ = (
        "sock", "label", "chunks", "size", "partial", "queued", "watched", "state",
        "close_deadline", "last_seen", "ping_sent_at", "released", "deflate", "close_sent",
    )

    def __init__(self, sock: socket.socket, label: str, deflate: bool = False) -> None:
        self.sock = sock
        self.label = label
        self.deflate = deflate        # takes compressed deliveries (permessage-deflate); never changes
        self.chunks: list[Any] = []   # frames (bytes) waiting; the first may be a memoryview remainder
        self.size = 0                 # what chunks cost: their bytes plus ITEM_COST each
        self.partial = False          # chunks[0] is the unsent rest of a frame already begun
        self.queued = False           # in the writer's list of outboxes to flush
        self.watched = False          # registered with the selector, waiting for room in the socket
        self.state = _OPEN
        self.close_deadline = 0.0
        self.close_sent: tuple[int, str] | None = None  # code and reason of the close frame queued, for logs
        self.last_seen = time.monotonic()  # written by the reader thread on each whole message or pong
        self.ping_sent_at = 0.0
        self.released: threading.Event | None = None

    def __repr__(self) -> str:
        return f"<Outbox {self.label} {self.state.value} {self.size}B>"


class Writer:
    """The writes of a set of sockets, and the thread named ``name`` that waits on the slow ones.

    Args:
        max_queued_bytes: what one outbox may hold (its frames' bytes plus ``ITEM_COST`` each)
            before its connection is closed (4100); a lone frame in an empty outbox is let through.
        close_timeout: seconds a closing connection has to finish the handshake.
        ping_interval: seconds without a message or pong from the client before a ping;
            0 disables keepalive.
        ping_timeout: seconds to wait for a pong (or a message) after that ping before dropping (4102).
        max_jobs: queued jobs past which a publisher must help drain before adding more.
        max_total_queued_bytes: what all outboxes together may hold, counted the same way;
            past it the largest are closed (4100) first. None: no bound over all.
    """

    def __init__(
        self,
        *,
        max_queued_bytes: int,
        close_timeout: float,
        ping_interval: float = 0.0,
        ping_timeout: float = 20.0,
        max_jobs: int = 10_000,
        name: str = "rusty_ws-writer",
        max_total_queued_bytes: int | None = None,
    ) -> None:
        self.max_queued_bytes = max_queued_bytes
        self.max_total_queued_bytes = max_total_queued_bytes
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_jobs = max_jobs
        self.name = name
        # Work from any thread: (method, arg, arg), method one of the *_locked jobs below.
        # deque.append and popleft are atomic; only the _flush_lock holder pops and runs them.
        self._jobs: collections.deque[tuple[Callable[[Any, Any], None], Any, Any]] = collections.deque()
        # _flush_lock: held by the one thread that drains _jobs and writes. It owns the
        # outboxes, _boxes and _flush_list. Held only for non-blocking work, never while waiting.
        self._flush_lock = threading.Lock()
        # How many batch() blocks each thread is inside (thread ident -> depth), with an entry
        # only while it is inside one, so ``in`` says whether it is. Not a threading.local:
        # that keeps a dict for every thread that ever batched, ~0.4 KiB for each idle
        # connection's thread (docs/architecture.md). Each thread reads and writes its own
        # key only; a dict's get, set and del are atomic under the GIL.
        self._inside_batch: dict[int, int] = {}
        #: Whether the thread of this ident is inside ``batch()`` (``batching`` for a caller
        #: that has the ident already: a C call, no property; once per publish in the hub).
        self.batching_thread: Callable[[int], bool] = self._inside_batch.__contains__
        self._batch = _Batch(self)
        # The writer thread waits in this selector for the wake-up socket and for
        # room in watched sockets; the _flush_lock holder registers the latter.
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a full pair means a wake-up is pending already (timers wake often)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        # _state_lock guards _thread and _stopping (start once, stop once).
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = threading.Event()
        self._boxes: set[Outbox] = set()
        self._flush_list: list[Outbox] = []
        self._queued_total = 0  # the sum of every outbox's size: at least what they hold together
        # Past this sum the frames really held are counted (max_total_queued_bytes); see _over_budget_locked.
        self._recheck_total = max_total_queued_bytes
        self._ping_frame = encode_frame(OP_PING, b"")
        #: Deadlines this writer's thread runs (outside ``_flush_lock``), waking for the earliest.
        self.timers = Timers(wake=self._interrupt)

    # ------------------------------------------------------------------ any thread

    def attach(self, sock: socket.socket, label: str, deflate: bool = False) -> Outbox:
        """Start writing for ``sock``; starts the writer thread on first use.

        Turns Nagle's algorithm off: the writer already joins what waits for a
        socket into one send, so holding a small frame back for an ACK would
        only add delay (asyncio servers such as ``websockets`` do the same).
        """
        with contextlib.suppress(OSError):  # not a TCP socket (a Unix socket behind a proxy)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        box = Outbox(sock, label, deflate)
        self._ensure_started()
        self._submit(self._attach_locked, box, None)
        return box

    def send(self, frame: bytes, targets: Collection[Outbox]) -> None:
        """Queue ``frame`` for every outbox in ``targets`` and write what can be written now.

        Never blocks on a socket. Inside ``batch()`` the writing waits for the
        end of the batch. When ``max_jobs`` jobs are queued (the whole hub is
        saturated) this publisher first helps drain them, which slows it down
        to what the hub delivers.
        """
        jobs = self._jobs
        if len(jobs) >= self.max_jobs:
            with self._flush_lock:
                self._work_locked()
        # _submit, inlined: once per publish.
        jobs.append((self._send_many_locked, frame, targets))
        if _get_ident() not in self._inside_batch:
            self.flush()

    def send_to(self, box: Outbox, frame: bytes) -> None:
        """Queue ``frame`` for one outbox (replies, pongs) and write it if nobody else is writing."""
        self._submit(self._send_one_locked, box, frame)

    def batch(self) -> "_Batch":
        """Sends made by this thread inside the block are written together when it ends.

        A connection thread wraps the commands of one read in it, so a burst of
        publishes to the same subscribers is coalesced into one write per socket.
        The hub also queues under its history lock inside one, so that lock is
        never held while writing. Nested blocks write at the end of the outermost.
        One object for every thread and block (a class, not a generator: it is
        entered twice per publish); the depth is per thread.
        """
        return self._batch

    @property
    def batching(self) -> bool:
        """The calling thread is inside ``batch()``: what it sends now is written at the block's end."""
        return _get_ident() in self._inside_batch

    def flush(self) -> None:
        """Do the queued work on this thread now, unless another thread is at it (it does ours too)."""
        jobs, lock = self._jobs, self._flush_lock
        # Check the queue again after letting go: a job queued while we held the lock
        # by a thread that could not take it would otherwise wait for the next writer.
        while jobs and lock.acquire(blocking=False):
            try:
                self._work_locked()
            finally:
                lock.release()

    def close(self, box: Outbox, code: int, reason: str = "", *, discard_pending: bool = False) -> None:
        """Send a close frame after what is queued, then end the socket.

        The socket is shut down when the reader releases it or ``close_timeout``
        passes. With ``discard_pending`` (a peer that does not read), queued
        frames are dropped and the socket is shut down right after one try to
        send the close frame.
        """
        self._submit(self._close_locked, box, (code, reason, discard_pending))

    def release(self, box: Outbox, timeout: float) -> None:
        """The reader is done with ``box``: flush what fits, shut the socket down, forget it.

        Blocks until the writing side has let go of the socket (at most
        ``timeout``), so the caller may close it afterwards. Idempotent.
        """
        released = threading.Event()
        self._submit(self._release_locked, box, released)
        if not released.wait(timeout):
            logger.warning("%s was not released within %.1fs", box.label, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Shut down every socket still attached and end the thread. Idempotent; blocks up to ``timeout``."""
        with self._state_lock:
            self._stopping = True
            thread = self._thread
        if thread is None:
            with self._flush_lock:
                self._finish_locked()
            return
        self._interrupt()
        thread.join(timeout)
        if thread.is_alive():
            logger.error("%s did not stop within %.1fs", self.name, timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued_bytes(self) -> int:
        """The sum of every outbox's size, as the per-outbox bound counts them (for reports and tests).

        A frame queued for several outboxes counts in each: this is at least what
        they hold together (``held_bytes``), and more when frames are shared.
        """
        return self._queued_total

    def held_bytes(self) -> int:
        """What every outbox together holds now, a frame shared by several counted once.

        Walks every queued frame: for reports and tests, not for a hot path.
        """
        with self._flush_lock:
            return self._held_locked()[0]

    def _ensure_started(self) -> None:
        with self._state_lock:
            if self._thread is not None:
                return
            if self._stopping:
                raise RuntimeError("the writer has been stopped")
            # Daemon: a hub nobody shut down must not keep the process alive.
            # Hub.shutdown() stops and joins it.
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _submit(self, method: Callable[[Any, Any], None], a: Any, b: Any) -> None:
        self._jobs.append((method, a, b))
        if _get_ident() not in self._inside_batch:
            self.flush()

    def _interrupt(self) -> None:
        """End the writer thread's wait in the selector (to stop it)."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # already stopped: the pair is closed

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        tick = self._tick_seconds()
        next_tick = time.monotonic() + tick
        try:
            while not self._stopping:
                wake_at = min(next_tick, self.timers.next_due())
                ready = self._selector.select(max(0.0, wake_at - time.monotonic()))
                with self._flush_lock:
                    for key, _ in ready:
                        if key.data is None:
                            self._drain_wakeup_locked()
                        elif key.data.watched:
                            self._queue_flush_locked(key.data)  # its socket has room again
                    self._work_locked()  # also anything a batch left behind
                    now = time.monotonic()
                    if now >= next_tick:
                        self._housekeeping_locked(now)
                        self._flush_queued_locked()  # the pings and closes it queued
                        next_tick = now + tick
                # Jobs queued while this thread held the lock by threads that could not take it
                # (their flush() gave up at once) would otherwise wait for the next tick.
                self.flush()
                self.timers.run_due(time.monotonic())  # outside the lock: they may close connections
        except Exception:
            logger.exception("%s crashed; dropping every connection it wrote for", self.name)
        finally:
            with self._flush_lock:
                self._finish_locked()

    def _tick_seconds(self) -> float:
        candidates = [self.close_timeout / 2, 1.0]
        if self.ping_interval:
            candidates.append(self.ping_interval / 2)
        return max(0.05, min(candidates))

    # ------------------------------------------------------------------ with _flush_lock held
    # Every method named *_locked must be called with _flush_lock held, and asserts it.

    def _work_locked(self) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        self._drain_jobs_locked()
        self._flush_queued_locked()
        if self._recheck_total is not None and self._queued_total > self._recheck_total:
            self._over_budget_locked(self.max_total_queued_bytes)  # type: ignore[arg-type]  # set with _recheck_total

    def _drain_jobs_locked(self) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        jobs = self._jobs
        for _ in range(len(jobs)):  # only what is there now, so flushing is never starved
            method, a, b = jobs.popleft()
            method(a, b)

    def _drain_wakeup_locked(self) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _attach_locked(self, box: Outbox, _: Any) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        self._boxes.add(box)

    def _send_many_locked(self, frame: bytes, targets: Collection[Outbox]) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        size = len(frame) + ITEM_COST
        limit = self.max_queued_bytes
        flush_list = self._flush_list
        self._queued_total += size * len(targets)  # taken back below for boxes that take nothing
        for box in targets:
            if box.state is not _OPEN:
                self._queued_total -= size
                continue
            chunks = box.chunks
            chunks.append(frame)
            box.size = held = box.size + size
            if held > limit and len(chunks) > 1:  # a lone frame always goes in
                self._overflow_locked(box)
            elif not box.queued and not box.watched:
                box.queued = True
                flush_list.append(box)

    def _send_one_locked(self, box: Outbox, frame: bytes) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        self._send_many_locked(frame, (box,))

    def _overflow_locked(self, box: Outbox) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        logger.warning("%s is too slow: %d bytes queued, closing it", box.label, box.size)
        self._close_locked(box, (CloseCode.SLOW_CONSUMER, CLOSE_CODE_EXPLANATIONS[4100], True))

    def _held_locked(self) -> tuple[int, dict[int, list[int]]]:
        """What the outboxes hold, each frame counted once, and per frame ``[holders, cost]``."""
        assert self._flush_lock.locked(), "must hold _flush_lock"
        held = 0
        frames: dict[int, list[int]] = {}
        for box in self._boxes:
            for chunk in box.chunks:
                data: Any = chunk.obj if isinstance(chunk, memoryview) else chunk  # a view keeps all of it
                entry = frames.get(id(data))  # every one is alive while we look: ids are unique
                if entry is None:
                    frames[id(data)] = [1, len(data) + ITEM_COST]
                    held += len(data) + ITEM_COST
                else:
                    entry[0] += 1
                    held += _SLOT_COST
        return held, frames

    def _over_budget_locked(self, budget: int) -> None:
        """The sum of sizes passed ``budget``: if what is held did too, close the biggest outboxes (4100).

        Biggest first, until what is held is back under ``budget``. Costs a walk over
        every queued frame, so the next walk waits until the sum has grown by what
        was left of the budget (what is held cannot grow faster than the sum), but
        at least by a sixteenth of it (so what is held may pass the budget by that
        much), or for the writer thread's next tick.
        """
        assert self._flush_lock.locked(), "must hold _flush_lock"
        held, frames = self._held_locked()
        if held > budget:
            logger.warning("%d bytes queued over all connections, more than %d: closing the slowest",
                           held, budget)
            for box in sorted((box for box in self._boxes if box.size), key=lambda box: box.size, reverse=True):
                if held <= budget:
                    break
                for chunk in box.chunks:
                    entry = frames[id(chunk.obj if isinstance(chunk, memoryview) else chunk)]
                    entry[0] -= 1
                    held -= entry[1] if entry[0] == 0 else _SLOT_COST
                if box.state is _OPEN:
                    self._overflow_locked(box)  # keeps what is needed for its close frame, if anything
                else:
                    self._forget_locked(box)  # already closing: end it now
        self._recheck_total = self._queued_total + max(budget - held, budget // 16)

    def _close_locked(self, box: Outbox, args: tuple[int, str, bool]) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        code, reason, discard_pending = args
        if box.state is not _OPEN:
            return
        if discard_pending:
            # Keep only the unsent rest of a frame already begun: cutting it would corrupt the stream.
            box.chunks = box.chunks[:1] if box.partial else []
            kept = sum(len(chunk) + ITEM_COST for chunk in box.chunks)
            self._queued_total -= box.size - kept
            box.size = kept
        frame = close_frame(code, reason)
        box.close_sent = (code, reason)
        box.chunks.append(frame)
        box.size += len(frame) + ITEM_COST
        self._queued_total += len(frame) + ITEM_COST
        box.state = _CLOSING
        box.close_deadline = time.monotonic() + self.close_timeout
        if discard_pending:
            # The peer is not reading (stalled or dead): no handshake to wait for.
            # One try to get the close frame out, then end the socket.
            self._write_locked(box)
            self._forget_locked(box)
        else:
            self._queue_flush_locked(box)

    def _release_locked(self, box: Outbox, released: threading.Event) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        if box.state is not _CLOSED:
            if box.chunks:
                self._write_locked(box)  # one last try for a close reply; never wait for it
            self._forget_locked(box)
        released.set()

    def _queue_flush_locked(self, box: Outbox) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        if not box.queued:
            box.queued = True
            self._flush_list.append(box)

    def _flush_queued_locked(self) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        flush_list, self._flush_list = self._flush_list, []
        for box in flush_list:
            box.queued = False
            if box.state is not _CLOSED and box.chunks:
                self._write_locked(box)

    def _write_locked(self, box: Outbox) -> None:
        """Write as much of ``box`` as the socket takes now, without blocking."""
        assert self._flush_lock.locked(), "must hold _flush_lock"
        chunks = box.chunks
        while chunks:
            # Join at most WRITE_BYTES at a time: joining a whole backlog (megabytes) to
            # send what one socket takes made a lagging subscriber cost quadratic time.
            count = len(chunks)
            if count == 1:
                data = chunks[0]
            elif box.size - count * ITEM_COST <= WRITE_BYTES:
                # The usual case: box.size says all of it fits (its bytes plus ITEM_COST per frame),
                # so no Python loop (and no int object) per frame queued.
                data = b"".join(chunks)
            else:
                count, size = 1, len(chunks[0])
                while count < len(chunks) and size < WRITE_BYTES:
                    size += len(chunks[count])
                    count += 1
                data = b"".join(chunks[:count])
            size = len(data)
            try:
                sent = box.sock.send(data, _DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                logger.debug("- %s write failed: %s", box.label, exc)
                self._forget_locked(box)
                return
            if sent < size:
                # The rest of a joined write is copied: a view would keep all of it alive.
                rest = memoryview(data)[sent:] if count == 1 else data[sent:]
                chunks[:count] = [rest]
                freed = sent + (count - 1) * ITEM_COST  # count frames became one
                box.size -= freed
                self._queued_total -= freed
                box.partial = True
                self._watch_locked(box)
                return
            del chunks[:count]
            freed = size + count * ITEM_COST
            box.size -= freed
            self._queued_total -= freed
            box.partial = False
        if box.watched:
            self._selector.unregister(box.sock)
            box.watched = False

    def _watch_locked(self, box: Outbox) -> None:
        """Have the writer thread write ``box`` when its socket has room again."""
        assert self._flush_lock.locked(), "must hold _flush_lock"
        if box.watched:
            return
        if self._stopped.is_set():  # no thread left to wait for room
            self._forget_locked(box)
            return
        self._selector.register(box.sock, selectors.EVENT_WRITE, box)
        box.watched = True

    def _forget_locked(self, box: Outbox) -> None:
        """Stop writing to ``box`` for good and shut its socket down (wakes its reader)."""
        assert self._flush_lock.locked(), "must hold _flush_lock"
        if box.watched:
            try:
                self._selector.unregister(box.sock)
            except (KeyError, ValueError):
                pass
            box.watched = False
        box.state = _CLOSED
        box.chunks = []
        self._queued_total -= box.size
        box.size = 0
        self._boxes.discard(box)
        _shutdown(box.sock)

    def _housekeeping_locked(self, now: float) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        budget = self.max_total_queued_bytes
        if budget is not None:  # sent frames lowered the sum: look again from the budget itself
            self._recheck_total = budget
            if self._queued_total > budget:
                self._over_budget_locked(budget)
        for box in list(self._boxes):
            if box.state is _CLOSING:
                if now >= box.close_deadline:
                    logger.debug("- %s closing handshake timed out", box.label)
                    self._forget_locked(box)
            elif self.ping_interval:
                self._keepalive_locked(box, now)

    def _keepalive_locked(self, box: Outbox, now: float) -> None:
        assert self._flush_lock.locked(), "must hold _flush_lock"
        if box.ping_sent_at:
            if box.last_seen >= box.ping_sent_at:
                box.ping_sent_at = 0.0
            elif now - box.ping_sent_at > self.ping_timeout:
                logger.info("%s missed its pong, dropping it", box.label)
                self._close_locked(box, (CloseCode.KEEPALIVE_TIMEOUT, CLOSE_CODE_EXPLANATIONS[4102], True))
                return
        if not box.ping_sent_at and now - box.last_seen >= self.ping_interval:
            box.ping_sent_at = now
            self._send_one_locked(box, self._ping_frame)

    def _finish_locked(self) -> None:
        """Let go of every socket, then of the selector and the wake-up pair. Idempotent."""
        assert self._flush_lock.locked(), "must hold _flush_lock"
        with self._state_lock:
            self._stopping = True
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._work_locked()  # releases and closes still queued
        for box in list(self._boxes):
            self._forget_locked(box)
        self._selector.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()


class _Batch:
    """``Writer.batch()``'s block: counts this thread's depth, and flushes when the outermost ends."""

    __slots__ = ("_writer", "_depths")

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._depths = writer._inside_batch

    def __enter__(self) -> None:
        depths, key = self._depths, _get_ident()
        depths[key] = depths.get(key, 0) + 1

    def __exit__(self, *exc_info: object) -> None:
        depths, key = self._depths, _get_ident()
        left = depths[key] - 1
        if left:
            depths[key] = left
        else:
            del depths[key]
            self._writer.flush()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down or closed
