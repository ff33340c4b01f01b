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

``RetryQueue`` holds the commands to send again, in order, per slot (each keeps
the place ``admit`` gave it when it was first sent): once one command of a slot
is held, every later command of that slot is held behind it (``admit``; one
that was never sent runs at most once whatever its kind),
and so is any command of a slot that just moved while the old master's sender
still has some of its commands (their ``MOVED`` replies are being followed), so
a session's commands reach its master in the order they were made. The broker's
supervisor thread sends a slot's commands again (``take_wave``) when its master
(in the current slot map) is connected, one wave at a time (the next once every
command of the slot that is out was answered), and fails what waited longer
than ``timeout`` (``RUSTY_WS_BROKER_RETRY_TIMEOUT``) with the failure it last had.
At most ``limit`` commands are held at once; past it a failure is handed back
at once (the caller answers it, as without a retry).

Threads and locks: ``_lock`` guards ``_held``, ``_out`` (per slot, the master its
commands went to and how many are not answered), ``_size``, ``_seqs`` and
``_counts``; never held across I/O nor while a callback runs. A slot stays
marked held while commands of it are out, until its list is empty and they
are answered, so no command overtakes one being sent again.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .redis_slots import SLOTS

__all__ = ["Kind", "classify", "redirected_slot", "RetryQueue", "Held"]

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


def redirected_slot(reply: Any, exceptions: Any) -> int | None:
    """The slot a ``MOVED`` or ``ASK`` reply names (the command was not run), or None for any other reply.

    For the shard listeners, whose ``SSUBSCRIBE`` a master refuses so; both parsers' forms, as ``classify``.
    """
    if not isinstance(reply, exceptions.ResponseError):
        return None
    words = str(reply).split()
    if isinstance(reply, (exceptions.MovedError, exceptions.AskError)) and len(words) == 2:
        slot = words[0]
    elif len(words) == 3 and words[0] in ("MOVED", "ASK"):
        slot = words[1]
    else:
        return None
    return int(slot) if len(slot) <= 5 and slot.isascii() and slot.isdigit() and int(slot) < SLOTS else None


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
        # _out, _size, _seqs and _counts. Never held across I/O nor while a callback runs.
        self._lock = threading.Lock()
        self._held: dict[int, list[Held]] = {}
        self._seqs = itertools.count()
        self._out: dict[int, list[Any]] = {}  # slot -> [the master its commands went to last, how many are out]
        self._size = 0
        self._counts = {"retried": 0, "retry_expired": 0}

    # ------------------------------------------------------------------ the publishing threads

    def admit(self, slot: int, address: str, command: tuple[Any, ...], on_reply: Callable[[Any], None],
              idempotent: bool, held: Held | None = None) -> int | None:
        """May ``command`` go to ``address``'s sender now? Its place (a ``seq`` for ``hold``, should it fail):
        it is counted as out there until ``settled``.

        None: it is held, behind what is held of its slot (never sent yet, so sending it
        later is safe for any command: a publish without an id too keeps its place), or
        because another master's sender still has commands of the slot (the slot just
        moved: it must not overtake them, whose MOVED replies are being followed). With no
        room to hold it, ``on_reply`` is called at once with a failure (None too). A
        command sent again (``held``) is always admitted, in its old place: ``take_wave`` checked.
        """
        with self._lock:
            out = self._out.get(slot)
            if held is None and self.timeout > 0 and (
                    slot in self._held or (out is not None and out[0] != address)):
                if self._size >= self.limit:
                    failed = True
                else:
                    now = self.clock()
                    self._held.setdefault(slot, []).append(Held(
                        command, on_reply, ConnectionError("held behind a retry"), now + self.timeout, now,
                        idempotent, next(self._seqs)))
                    self._size += 1
                    return None
            else:
                failed = False
                if out is None:
                    self._out[slot] = [address, 1]
                else:
                    out[0] = address
                    out[1] += 1
                return held.seq if held is not None else next(self._seqs)
        if failed:
            on_reply(ConnectionError("too many Redis Cluster commands wait for a retry"))
        return None

    def settled(self, slot: int) -> bool:
        """A command ``admit``ted for ``slot`` was answered (or held again). True when it was the slot's last one
        out and the slot is held: the supervisor should look at it (a next wave, or nothing left: unmark)."""
        with self._lock:
            out = self._out.get(slot)
            if out is not None:
                out[1] -= 1
                if out[1] > 0:
                    return False
                del self._out[slot]
            return slot in self._held

    # ------------------------------------------------------------------ the senders' threads

    def hold(self, slot: int, seq: int | None, held: Held | None, command: tuple[Any, ...],
             on_reply: Callable[[Any], None], failure: Any, idempotent: bool, delay: float = 0.0) -> bool:
        """Hold a command that failed with ``failure`` for a retry; False if it may not wait (the caller fails it).

        ``seq``: its place, from ``admit`` (None: after everything held now). ``held``: the
        ``Held`` it was sent from, if it was sent again already (keeps its deadline).
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
            # Back in its place, ahead of what was held after it (sent later than it).
            if seq is None:
                seq = held.seq if held is not None else next(self._seqs)
            entry = Held(command, on_reply, failure, deadline, now + delay, idempotent, seq)
            if waiting and waiting[-1].seq > seq:
                waiting.insert(bisect.bisect([item.seq for item in waiting], seq), entry)
            else:
                waiting.append(entry)
            self._size += 1
        return True

    # ------------------------------------------------------------------ the supervisor thread

    def marked(self, slot: int) -> bool:
        """Whether ``slot`` has commands held (or commands of it out while some are held)."""
        with self._lock:
            return slot in self._held

    def held_before(self, slot: int, seq: int) -> bool:
        """Whether a command of ``slot`` older than ``seq`` is held now: the one at ``seq`` must not overtake it."""
        with self._lock:
            waiting = self._held.get(slot)
            return waiting is not None and bool(waiting) and waiting[0].seq < seq

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
        """The commands of ``slot`` to send again now, in order (the caller ``_send``s each: ``admit`` counts it).

        Empty while commands of the slot are out (an earlier wave, or first tries: one that
        fails again goes back to its place first), and before the first command's
        ``not_before``. A slot whose list is empty with nothing out is no longer held:
        later commands are sent straight away.
        """
        now = self.clock()
        with self._lock:
            waiting = self._held.get(slot)
            if waiting is None or slot in self._out:
                return []
            if not waiting:
                del self._held[slot]
                return []
            due = 0
            while due < len(waiting) and waiting[due].not_before <= now:
                due += 1
            wave, self._held[slot] = waiting[:due], waiting[due:]
            self._size -= len(wave)
            self._counts["retried"] += len(wave)
            return wave

    def drain(self) -> list[Held]:
        """Take every held command (the broker stops: each is failed)."""
        with self._lock:
            gone = [held for waiting in self._held.values() for held in waiting]
            self._held.clear()
            self._size = 0
        return gone

    def status(self) -> dict[str, int]:
        """For ``/healthz``: ``held`` (waiting now), ``retried`` (sent again), ``retry_expired`` (failed past the timeout)."""
        with self._lock:
            return {"held": self._size, **self._counts}
