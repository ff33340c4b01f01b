"""Gaps in what a cluster's shard channels delivered, filled from the pair's stream: ``redis_cluster.py`` uses it.

When a slot moves (a migration, a failover), a publish can run on the new master
before this node's listener has subscribed there: Redis hands it to nobody here,
although it is in the pair's stream with its offset. The next delivery of that
pair then comes with an offset past the last one this node delivered. So, with
history on, the cluster broker remembers per pair the last offset its listeners
delivered, and ``before`` a delivery past a gap reads what is missing from the
stream (reads of at most ``limit`` messages, through ``RedisHistory.read``, which
takes a stream entry that holds a run of several apart and never gives one below
the floor ``top - RUSTY_WS_HISTORY_SIZE + 1``: a gap wider than the history is
filled from the floor on) to deliver it first, in order.
It also drops a copy of one already delivered (the old master's, after the gap was
filled from the new one's stream).

Offsets go on across a migration (the keys move whole) even though the epoch is
renewed (``redis_scripts._GUARD``), so a gap is also filled across that epoch
change. After a failover the new master's offsets may go back (it lacked the last
writes): nothing is filled then, the new epoch tells clients. A delivery that
claims an offset its stream does not hold (no script published it: forged or
garbled data on the channel) is not remembered, so it cannot make the pair's
real deliveries look like copies.

A read that fails is tried again for up to ``retry_for`` seconds (the broker's
``RUSTY_WS_BROKER_RETRY_TIMEOUT``), that listener's deliveries waiting. The
listener's own state is not a reason to fail: a delivery can come on its new
connection before the ``PONG`` that makes it connected, and the broker lets a
read on the listener's own thread go then (``ShardListener.delivering_here``),
where waiting for that ``PONG`` would wait for itself.

Threads and locks: the listeners' threads call ``before`` (several listeners may
deliver one pair around a move); ``_lock`` guards ``_last`` and the counts, and is
never held across the read.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from ..protocol import Delivery, Position
from .base import Key, Stored

__all__ = ["GapFiller"]

logger = logging.getLogger("rusty_ws.server")

#: Most messages one read takes to fill a gap...
FILL_LIMIT = 1000
#: ...and most reads for one gap (a read gives at most RUSTY_WS_HISTORY_SIZE messages anyway).
MAX_READS = 100
#: Most pairs remembered (the oldest forgotten past it: their next gap is not filled).
MOST_PAIRS = 200_000
#: Seconds between two tries of a read the cluster could not answer yet (its new master not reached).
READ_RETRY_PAUSE = 0.02


class _Seen(NamedTuple):
    epoch: str
    offset: int
    previous: str | None  # the epoch before, confirmed by the stream: copies from the old master are dropped


class GapFiller:
    """The last offset delivered per pair, and what to deliver before a delivery past a gap."""

    def __init__(self, read: Callable[[Key, Position, int], Stored], *, limit: int = FILL_LIMIT,
                 most_pairs: int = MOST_PAIRS, retry_for: float = 0.0,
                 pause: Callable[[float], bool] | None = None) -> None:
        """``retry_for``: seconds a read that failed is tried again, every ``READ_RETRY_PAUSE``;
        ``pause(seconds)`` waits and says whether the broker is stopping."""
        self.read = read
        self.limit = limit
        self.most_pairs = most_pairs
        self.retry_for = retry_for
        self.pause = pause
        # _lock guards _last and _counts. Never held across the read.
        self._lock = threading.Lock()
        self._last: collections.OrderedDict[Key, _Seen] = collections.OrderedDict()
        self._counts = {"gaps_filled": 0, "gap_duplicates": 0}

    def before(self, delivery: Delivery) -> list[Delivery] | None:
        """What to deliver before ``delivery`` (oldest first; usually nothing), or None: drop it, a copy.

        Reads the pair's stream (a Redis round trip on the caller's thread) only past a gap.
        """
        offset, epoch = delivery.offset, delivery.epoch
        if offset is None or epoch is None:
            return []
        key = (delivery.topic, delivery.session_id)
        with self._lock:
            seen = self._last.get(key)
            gap_from = None
            if seen is not None and epoch in (seen.epoch, seen.previous) and offset <= seen.offset:
                self._counts["gap_duplicates"] += 1
                return None  # delivered already (live, or from the stream)
            if seen is not None and epoch == seen.previous:
                return []  # the old master's, past what the new one gave: rare; not remembered
            if seen is not None and offset > seen.offset + 1:
                gap_from = seen.offset
            # A new epoch forgets the one before: it is kept (to drop the old master's copies) only once
            # the stream confirmed the new one, below.
            self._last[key] = _Seen(epoch, offset, seen.previous if seen is not None and seen.epoch == epoch else None)
            self._last.move_to_end(key)
            while len(self._last) > self.most_pairs:
                self._last.popitem(last=False)
        if gap_from is None:
            return []
        missing: list[Delivery] = []
        after = gap_from
        for attempt in range(MAX_READS):  # in reads of ``limit`` messages, until the gap is closed or the stream ends
            try:
                stored = self._read(key, Position(after, epoch), min(self.limit, offset - after - 1))
            except Exception as exc:  # HistoryUnavailable, or anything a read may raise: the rest of the gap stays
                logger.warning("could not fill a gap in %s@%s (offsets %d to %d): %s", key[0][:200], key[1][:200],
                               after + 1, offset - 1, exc)
                break
            if attempt == 0 and (stored.top.epoch != epoch or stored.top.offset < offset):
                # The stream does not hold it: no node's script published it (forged, or garbled). Not
                # remembered, so it cannot make the pair's next real deliveries look like copies.
                self._unremember(key, delivery, seen)
                logger.warning("a delivery on %s@%s claims offset %d of epoch %s, which its stream does not "
                               "hold (top %d of %s): not taken as a gap", key[0][:200], key[1][:200], offset,
                               epoch[:20], stored.top.offset, stored.top.epoch[:20])
                return []
            if attempt == 0 and seen is not None and seen.epoch != epoch:
                self._confirm(key, delivery, seen.epoch)
            found = [message for message in stored.messages
                     if message.offset is not None and after < message.offset < offset]
            if not found:
                break
            missing += found
            after = found[-1].offset or after
            if after >= offset - 1:
                break
        with self._lock:
            self._counts["gaps_filled"] += len(missing)
        logger.info("%s@%s: offsets %d to %d did not come on the channel (a slot moved?): %d delivered from the "
                    "stream", key[0][:200], key[1][:200], gap_from + 1, offset - 1, len(missing))
        return missing

    def _read(self, key: Key, after: Position, limit: int) -> Stored:
        """One read, tried again for up to ``retry_for`` seconds while it fails (the caller's thread waits)."""
        deadline = time.monotonic() + self.retry_for
        for _ in range(1 + int(self.retry_for / READ_RETRY_PAUSE)):
            try:
                return self.read(key, after, limit)
            except Exception:
                if self.pause is None or time.monotonic() >= deadline or self.pause(READ_RETRY_PAUSE):
                    raise
        return self.read(key, after, limit)

    def _confirm(self, key: Key, delivery: Delivery, previous: str) -> None:
        """The stream holds ``delivery``'s new epoch: from now on, copies in ``previous`` are dropped too."""
        with self._lock:
            now = self._last.get(key)
            if now is not None and (now.epoch, now.offset) == (delivery.epoch, delivery.offset):
                self._last[key] = now._replace(previous=previous)

    def _unremember(self, key: Key, delivery: Delivery, seen: _Seen | None) -> None:
        """Put back what was remembered of ``key`` before ``delivery``, unless a later one replaced it."""
        with self._lock:
            now = self._last.get(key)
            if now is not None and (now.epoch, now.offset) == (delivery.epoch, delivery.offset):
                if seen is None:
                    del self._last[key]
                else:
                    self._last[key] = seen

    def forget(self, key: Key) -> None:
        """This node no longer delivers ``key`` (no subscriber left here)."""
        with self._lock:
            self._last.pop(key, None)

    def status(self) -> dict[str, int]:
        """For ``/healthz``: ``gaps_filled`` (deliveries taken from the stream), ``gap_duplicates`` (dropped)."""
        with self._lock:
            return dict(self._counts)
