"""Commands a Redis Cluster could not take *yet*, held per slot and sent again: ``redis_cluster.py`` uses it.

A cluster answers some commands with "not now" rather than "no": ``TRYAGAIN`` (a
multi-key command while a migrating slot's keys are split between two masters),
``CLUSTERDOWN`` (no master serves the slot: between a master's death and its
replica's promotion), ``MOVED`` or ``ASK`` (another master serves it). Redis ran
none of those, so sending them again is always safe. A command whose connection
failed (a master killed) may or may not have run: sending it again is safe only
when running it twice does what running it once does (the history's publish
script with a publish id: its first step is the id check, so a second run is
answered ``repeat`` with the first run's position). ``classify`` says which
case a reply is.

``RetryQueue`` holds the commands to send again, in order, per slot: once one
command of a slot is held, later commands of that slot are held behind it
(``hold_if_waiting``), so a session's commands reach its master in the order they
were made. The broker's supervisor thread sends a slot's commands again (``take_wave``)
when its master (in the current slot map) is connected, one wave at a time (the
next once every command of the last one was answered), and fails what waited longer than
``timeout`` (``RUSTY_WS_BROKER_RETRY_TIMEOUT``) with the failure it last had.
At most ``limit`` commands are held at once; past it a failure is handed back
at once (the caller answers it, as without a retry).

Threads and locks: ``_lock`` guards ``_held``, ``_in_flight``, ``_size`` and ``_counts``;
never held across I/O nor while a callback runs. A slot stays marked held while
a wave of its commands is out, until its list is empty and the wave answered,
so no command overtakes one being sent again.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Kind", "classify", "RetryQueue", "Held"]

#: Seconds before a command answered ``TRYAGAIN`` is sent again (a slot's keys are moving: milliseconds).
AGAIN_DELAY = 0.02


class Kind(enum.Enum):
    """What a reply says about sending the command again."""

    DONE = "done"          # an answer (or a refusal that sending again would not change): hand it out
    MOVED = "moved"        # another master serves the slot now: follow it, and read the map again
    ASK = "ask"            # the slot is migrating and the keys are on the master named: ASKING there, once
    AGAIN = "again"        # not run, try later: TRYAGAIN, CLUSTERDOWN
    LOST = "lost"          # the connection failed: run or not, nobody knows


def classify(reply: Any, exceptions: Any) -> tuple[Kind, str]:
    """The ``Kind`` of ``reply`` and, for ``MOVED`` and ``ASK``, the "host:port" it names ("" otherwise).

    ``exceptions`` is ``redis.exceptions``. Replies parsed by hiredis in the sender are
    plain ``ResponseError``s with the whole text ("MOVED 1234 host:port"); redis-py's own
    parser gives ``MovedError``/``AskError``/... without the first word.
    """
    if isinstance(reply, (exceptions.ConnectionError, exceptions.TimeoutError, ConnectionError, OSError)):
        return Kind.LOST, ""
    if not isinstance(reply, exceptions.ResponseError):
        return Kind.DONE, ""
    words = str(reply).split()
    for kind, cls, code in ((Kind.MOVED, exceptions.MovedError, "MOVED"), (Kind.ASK, exceptions.AskError, "ASK")):
        if isinstance(reply, cls) and len(words) == 2:
            return kind, words[1]
        if len(words) == 3 and words[0] == code:
            return kind, words[2]
    if isinstance(reply, (exceptions.TryAgainError, exceptions.ClusterDownError)) or (
            words and words[0] in ("TRYAGAIN", "CLUSTERDOWN")):
        return Kind.AGAIN, ""
    return Kind.DONE, ""


class Held(NamedTuple):
    """One command waiting to be sent again."""

    command: tuple[Any, ...]
    on_reply: Callable[[Any], None]  # the caller's: called once, with the final reply or failure
    failure: Any                     # what it got last: handed out if it waits past its deadline
    deadline: float                  # time.monotonic() past which it is failed
    not_before: float                # time.monotonic() before which it is not sent again
    idempotent: bool                 # may be sent again after a lost connection
    seq: int                         # its place among the held commands of its slot (first held first)


class RetryQueue:
    """Commands held for a retry, per slot, in their order; bounded in count and time. Safe from any thread."""

    def __init__(self, *, timeout: float, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("the retry queue needs room for at least one command")
        self.timeout = timeout
        self.limit = limit
        self.clock = clock
        # _lock guards _held (slot -> its commands by seq, oldest first; a slot is a key while marked held),
        # _size, _seqs and _counts. Never held across I/O nor while a callback runs.
        self._lock = threading.Lock()
        self._held: dict[int, list[Held]] = {}
        self._seqs = itertools.count()
        self._in_flight: dict[int, int] = {}  # slot -> commands of its last wave not answered yet
        self._size = 0
        self._counts = {"retried": 0, "retry_expired": 0}

    # ------------------------------------------------------------------ the publishing threads

    def hold_if_waiting(self, slot: int, command: tuple[Any, ...], on_reply: Callable[[Any], None],
                        idempotent: bool) -> bool:
        """Hold ``command`` behind its slot's held commands, if there are any (True); else False: send it."""
        with self._lock:
            waiting = self._held.get(slot)
            if waiting is None:
                return False
            if self._size >= self.limit:
                waiting = None  # full: fail it below, outside the lock
            else:
                now = self.clock()
                waiting.append(Held(command, on_reply, ConnectionError("held behind a retry"), now + self.timeout,
                                    now, idempotent, next(self._seqs)))
                self._size += 1
                return True
        on_reply(ConnectionError("too many Redis Cluster commands wait for a retry"))
        return True

    # ------------------------------------------------------------------ the senders' threads

    def hold(self, slot: int, held: Held | None, command: tuple[Any, ...], on_reply: Callable[[Any], None],
             failure: Any, idempotent: bool, delay: float = 0.0) -> bool:
        """Hold a command that failed with ``failure`` for a retry; False if it may not wait (the caller fails it).

        ``held``: the ``Held`` it was sent from, if it was sent again already (keeps its deadline).
        A command held past its deadline, or with no room left, is not held.
        """
        if self.timeout <= 0:
            return False
        now = self.clock()
        deadline = held.deadline if held is not None else now + self.timeout
        if now >= deadline:
            return False
        with self._lock:
            if self._size >= self.limit:
                return False
            waiting = self._held.setdefault(slot, [])
            # Sent again and failed again: back in its place, ahead of what was held after it.
            seq = held.seq if held is not None else next(self._seqs)
            entry = Held(command, on_reply, failure, deadline, now + delay, idempotent, seq)
            if waiting and waiting[-1].seq > seq:
                waiting.insert(bisect.bisect([item.seq for item in waiting], seq), entry)
            else:
                waiting.append(entry)
            self._size += 1
        return True

    # ------------------------------------------------------------------ the supervisor thread

    def slots(self) -> list[int]:
        """The slots marked held now."""
        with self._lock:
            return list(self._held)

    def next_due(self) -> float | None:
        """Seconds until the earliest first command of a slot may be sent again or expires (None: nothing held)."""
        with self._lock:
            heads = [waiting[0] for waiting in self._held.values() if waiting]
            marked = bool(self._held)
        if not heads:
            return 0.0 if marked else None
        now = self.clock()
        return max(0.0, min(min(head.not_before, head.deadline) for head in heads) - now)

    def expire(self) -> list[Held]:
        """Take every held command past its deadline (the caller fails each with its ``failure``)."""
        now = self.clock()
        gone: list[Held] = []
        with self._lock:
            for slot, waiting in list(self._held.items()):
                kept = [held for held in waiting if held.deadline > now]
                gone += [held for held in waiting if held.deadline <= now]
                self._held[slot] = kept
            self._size -= len(gone)
            self._counts["retry_expired"] += len(gone)
        return gone

    def take_wave(self, slot: int) -> list[Held]:
        """The commands of ``slot`` to send again now, in order (the caller sends them, then each is ``answered``).

        Empty while an earlier wave of the slot is not answered yet (a command that fails
        again goes back to its place first), and before the first command's ``not_before``.
        A slot whose list is empty and whose last wave was answered is no longer held:
        later commands are sent straight away.
        """
        now = self.clock()
        with self._lock:
            waiting = self._held.get(slot)
            if waiting is None or self._in_flight.get(slot, 0):
                return []
            if not waiting:
                del self._held[slot]
                return []
            due = 0
            while due < len(waiting) and waiting[due].not_before <= now:
                due += 1
            wave, self._held[slot] = waiting[:due], waiting[due:]
            if wave:
                self._in_flight[slot] = len(wave)
                self._size -= len(wave)
                self._counts["retried"] += len(wave)
            return wave

    def answered(self, slot: int) -> bool:
        """One command of a wave of ``slot`` was answered (or held again); True when it was the wave's last and
        the slot is still marked: the supervisor should look at it (a next wave, or nothing left: unmark)."""
        with self._lock:
            left = self._in_flight.get(slot, 0) - 1
            if left > 0:
                self._in_flight[slot] = left
                return False
            self._in_flight.pop(slot, None)
            return slot in self._held

    def drain(self) -> list[Held]:
        """Take every held command (the broker stops: each is failed)."""
        with self._lock:
            gone = [held for waiting in self._held.values() for held in waiting]
            self._held.clear()
            self._in_flight.clear()
            self._size = 0
        return gone

    def status(self) -> dict[str, int]:
        """For ``/healthz``: ``held`` (waiting now), ``retried`` (sent again), ``retry_expired`` (failed past the timeout)."""
        with self._lock:
            return {"held": self._size, **self._counts}
