"""Message history: each (topic, session) stream's offsets, epoch and retained messages.

Pure: no sockets, no threads, no locks. The hub holds one lock around every
call (``server/hub.py``), so a publish (offset, append, fan-out) and a
subscribe with replay (subscribe, replay, reply) never interleave: a message
lands exactly once, in the replay or live, never both, never neither.

What is kept (docs/protocol.md, "History and recovery"):

- Every message published to a stream gets the next offset (1, 2, 3, ...).
  The stream's epoch names its past: it is made when the stream is, differs
  in every process, and a stream that disappeared comes back under a new one.
- A stream keeps its last ``size`` messages for ``ttl`` seconds; all streams
  together keep at most ``max_bytes`` of encoded deliveries, the oldest
  messages (of any stream) going first.
- A stream exists from its first subscription or message. While it has
  subscribers it lives on, offsets going on even once every message expired;
  without subscribers and without a message for ``ttl`` it disappears.

Expiry is lazy: it runs, bounded and amortised, on the calls below (every
``append``, ``touch``, ``read`` and ``counts``), so no thread is needed.

The encoded messages are stored as they go out (the delivery's JSON with
``"offset"`` and ``"epoch"`` last), so a replay sends the very same bytes.
"""

from __future__ import annotations

import collections
import itertools
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .protocol import Position, with_position

__all__ = ["Key", "Position", "Replay", "History", "IdempotencyTable", "EPOCH_ALPHABET", "within_bytes"]

#: (topic, session_id)
Key = tuple[str, str]
#: The characters of the epochs this module makes: none needs escaping in JSON.
EPOCH_ALPHABET = "0123456789abcdef-"
#: Dropped slots tolerated in the global order before it is compacted (see ``History._compact``).
_COMPACT_AFTER = 1024


@dataclass(frozen=True)
class Replay:
    """What a stream holds after a position.

    Attributes:
        messages: encoded deliveries, oldest first.
        top: the stream's current offset and epoch (the boundary between replay and live).
        recovered: every message after the position was still retained (and fitted).
    """

    messages: list[bytes]
    top: Position
    recovered: bool


class _Stream:
    """One stream: its offsets, epoch and retained messages (no object per message).

    ``datas[i]`` and ``ats[i]`` are the message at offset ``offset - len(datas) + 1 + i``
    and when it was kept. ``skipped``: how many of this stream's first slots in the
    history's global order name messages that were already dropped from here (see
    ``History._order``).
    """

    __slots__ = ("key", "epoch", "offset", "datas", "ats", "skipped", "idle_since")

    def __init__(self, key: Key, epoch: str, now: float) -> None:
        self.key = key
        self.epoch = epoch
        self.offset = 0                  # the last offset given out
        self.datas: collections.deque[bytes] = collections.deque()
        self.ats: collections.deque[float] = collections.deque()
        self.skipped = 0
        self.idle_since = now            # made, last message, or last subscriber gone


class History:
    """The streams of one hub. Not thread-safe: the caller serialises every call.

    Args:
        size: messages kept per stream; 0 turns history off (``enabled`` is False).
        ttl: seconds a message is kept, and an unsubscribed stream without messages lives.
        max_bytes: encoded bytes kept over all streams.
        is_subscribed: whether a stream has subscribers now (asked before one disappears).
        clock: monotonic seconds (tests pass their own).
        epoch_prefix: the part of every epoch that names this process (default random).
    """

    def __init__(
        self,
        size: int,
        ttl: float,
        max_bytes: int,
        *,
        is_subscribed: Callable[[Key], bool] = lambda key: False,
        clock: Callable[[], float] = time.monotonic,
        epoch_prefix: str | None = None,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._is_subscribed = is_subscribed
        self._clock = clock
        self._epoch_prefix = epoch_prefix if epoch_prefix is not None else secrets.token_hex(4) + "-"
        self._epoch_numbers = itertools.count(1)
        self._streams: dict[Key, _Stream] = {}
        # Streams that may have no subscribers, least recently active first: the ones that
        # may disappear. The sweep asks is_subscribed before it removes one.
        self._idle: collections.OrderedDict[Key, _Stream] = collections.OrderedDict()
        # Every retained message in append order (so also in time order), the oldest first,
        # named by its stream: a stream's slots here are its messages in offset order, so
        # the first slot of a stream names its oldest message, or one already dropped from
        # the stream (the stream's first ``skipped`` slots are those). One reference per
        # message and no object of its own: publishing allocates nothing here.
        self._order: collections.deque[_Stream] = collections.deque()
        self._dead = 0   # slots in _order whose message was dropped already (the sum of skipped)
        self._bytes = 0
        self._next_sweep = 0.0

    @property
    def enabled(self) -> bool:
        return self.size > 0

    # ------------------------------------------------------------------ streams

    def touch(self, key: Key) -> Position:
        """Make sure ``key``'s stream exists (a subscription starts it); returns its top."""
        now = self._clock()
        self._sweep(now)
        return self._top(self._stream(key, now))

    def unsubscribed(self, key: Key) -> None:
        """``key`` lost its last subscriber on this node: it may disappear after ``ttl``."""
        stream = self._streams.get(key)
        if stream is not None:
            stream.idle_since = self._clock()
            self._idle[key] = stream
            self._idle.move_to_end(key)

    def top(self, key: Key) -> Position | None:
        """The stream's current offset and epoch, or None if it does not exist."""
        stream = self._streams.get(key)
        return self._top(stream) if stream is not None else None

    # ------------------------------------------------------------------ messages

    def append(self, key: Key, encode: Callable[[Position], bytes]) -> tuple[Position, bytes]:
        """Give the next offset of ``key``'s stream to a message and keep it.

        Args:
            encode: the message's encoded delivery for its position (called once).

        Returns:
            The message's position and its encoded bytes.
        """
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        stream = self._stream(key, now)
        position = Position(stream.offset + 1, stream.epoch)
        data = encode(position)
        stream.offset += 1
        self._keep(stream, data, now)
        return position, data

    def append_delivery(self, key: Key, encoded: bytes) -> tuple[Position, bytes]:
        """``append`` for an encoded delivery (``Delivery.encode``): the hub's path, once per publish.

        The kept (and returned) bytes are ``encoded`` with ``"offset"`` and ``"epoch"``
        spliced in as its last keys (``protocol.with_position``).
        """
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        stream = self._streams.get(key) or self._stream(key, now)
        offset = stream.offset = stream.offset + 1
        epoch = stream.epoch
        data = with_position(encoded, offset, epoch)
        # What _keep and _drop_first do, inlined: this runs once per publish, under the hub's lock.
        datas = stream.datas
        datas.append(data)
        stream.ats.append(now)
        self._order.append(stream)
        self._bytes += len(data)
        if key in self._idle:
            stream.idle_since = now
            self._idle.move_to_end(key)
        if len(datas) > self.size:
            self._bytes -= len(datas.popleft())
            stream.ats.popleft()
            stream.skipped += 1
            self._dead += 1
            if self._dead > _COMPACT_AFTER and self._dead * 2 > len(self._order):
                self._compact()
        while self._bytes > self.max_bytes and self._order:
            self._drop_oldest()
        return Position(offset, epoch), data

    def append_run(self, key: Key, count: int, encode: Callable[[int, str], list[bytes]]) -> list[bytes]:
        """``append_delivery`` of ``count`` messages in turn (consecutive offsets of ``key``'s stream),
        at one reading of the clock: a run of one publisher's deliveries (``Hub.publish_run``).

        Args:
            encode: given the run's first offset and the stream's epoch, the ``count`` messages'
                bytes to keep, each with its own position (what ``append_delivery`` keeps of an
                encoded delivery: ``protocol.with_position``); called once.

        Returns:
            What ``encode`` returned, now kept.
        """
        if not count:
            return []
        now = self._clock()
        # append_delivery's steps once for the run, as they come out for its first message: at
        # the same now a sweep runs once (the next is at least ttl/10 later), and it never removes
        # the stream once a message marked it active at now (ttl is positive: config.py).
        if now >= self._next_sweep:
            self._sweep(now)
        stream = self._streams.get(key) or self._stream(key, now)
        if key in self._idle:
            stream.idle_since = now
            self._idle.move_to_end(key)
        kept = encode(stream.offset + 1, stream.epoch)
        assert len(kept) == count, "encode must give one message per offset"
        stream.offset += count
        # Then, per message, what _keep does (its idle mark done once above).
        datas, ats, size = stream.datas, stream.ats, self.size
        for data in kept:
            datas.append(data)
            ats.append(now)
            self._order.append(stream)
            self._bytes += len(data)
            if len(datas) > size:
                self._drop_first(stream)
            while self._bytes > self.max_bytes and self._order:
                self._drop_oldest()
        return kept

    def read(
        self,
        key: Key,
        since: Position | None = None,
        *,
        limit: int | None = None,
        budget: int | None = None,
    ) -> Replay:
        """The messages of ``key``'s stream after ``since`` (or its last ``limit``), oldest first.

        With ``since`` in the stream's own epoch: the messages after its offset, at
        most ``limit`` (the first ones) and at most ``budget`` encoded bytes;
        ``recovered`` is True when none was missing or cut. With another epoch:
        none, ``recovered`` False. Without ``since``: the last ``limit``.

        Raises:
            ValueError: ``since`` is in the stream's epoch but past its top.
        """
        now = self._clock()
        self._sweep(now)
        stream = self._streams.get(key)
        if stream is None:
            return Replay([], Position(0, ""), False)
        top = self._top(stream)
        first = stream.offset - len(stream.datas) + 1  # the oldest retained message's offset
        ttl = self.ttl
        fresh = [(offset, data) for offset, data, at in zip(itertools.count(first), stream.datas, stream.ats)
                 if at + ttl > now]
        if since is None:
            chosen = fresh[-limit:] if limit else fresh
            return Replay([data for _, data in chosen], top, True)
        if since.epoch != stream.epoch:
            return Replay([], top, False)
        if since.offset > stream.offset:
            raise ValueError(f"offset {since.offset} is past the stream's top {stream.offset}")
        after = [(offset, data) for offset, data in fresh if offset > since.offset]
        recovered = since.offset == stream.offset or (bool(after) and after[0][0] == since.offset + 1)
        if limit is not None and len(after) > limit:
            after = after[:limit]
        messages: list[bytes] = []
        spent = 0
        for _, data in after:
            spent += len(data)
            if budget is not None and spent > budget:
                recovered = False
                break
            messages.append(data)
        return Replay(messages, top, recovered)

    def counts(self) -> dict[str, int]:
        """``/healthz``'s view: streams, retained messages, their encoded bytes (swept first)."""
        self._sweep(self._clock(), force=True)
        return {
            "history_streams": len(self._streams),
            "history_messages": len(self._order) - self._dead,
            "history_bytes": self._bytes,
        }

    # ------------------------------------------------------------------ inside

    def _stream(self, key: Key, now: float) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(key, self._new_epoch(), now)
            self._idle[key] = stream
        return stream

    def _new_epoch(self) -> str:
        return f"{self._epoch_prefix}{next(self._epoch_numbers):x}"

    @staticmethod
    def _top(stream: _Stream) -> Position:
        return Position(stream.offset, stream.epoch)

    def _keep(self, stream: _Stream, data: bytes, now: float) -> None:
        """Keep ``data`` as ``stream``'s newest message (its offset already taken), then enforce the bounds."""
        stream.datas.append(data)
        stream.ats.append(now)
        self._order.append(stream)
        self._bytes += len(data)
        if stream.key in self._idle:
            stream.idle_since = now
            self._idle.move_to_end(stream.key)
        if len(stream.datas) > self.size:
            self._drop_first(stream)
        while self._bytes > self.max_bytes and self._order:
            self._drop_oldest()

    def _drop_first(self, stream: _Stream) -> None:
        """Drop ``stream``'s oldest message; its slot in the global order stays, to be skipped."""
        self._bytes -= len(stream.datas.popleft())
        stream.ats.popleft()
        stream.skipped += 1
        self._dead += 1
        if self._dead > _COMPACT_AFTER and self._dead * 2 > len(self._order):
            self._compact()

    def _drop_oldest(self) -> None:
        """Drop the oldest retained message of all streams (or pass a slot already dropped)."""
        stream = self._order.popleft()
        if stream.skipped:
            stream.skipped -= 1
            self._dead -= 1
            return
        self._bytes -= len(stream.datas.popleft())
        stream.ats.popleft()

    def _compact(self) -> None:
        """Rebuild the global order without the dropped slots: amortised O(1) per drop.

        Each stream's dropped slots come first among its own, so the first ``skipped``
        slots of each are the ones to leave out.
        """
        kept: collections.deque[_Stream] = collections.deque()
        for stream in self._order:
            if stream.skipped:
                stream.skipped -= 1
            else:
                kept.append(stream)
        self._order = kept
        self._dead = 0

    def _sweep(self, now: float, force: bool = False) -> None:
        """Expire old messages and idle streams; unless forced, at most every tenth of the TTL (and 1 s)."""
        if now < self._next_sweep and not force:
            return
        self._next_sweep = now + min(1.0, self.ttl / 10)
        horizon = now - self.ttl
        # The first slot of the order while it is dropped already or expired (_drop_oldest,
        # inlined): with full streams every publish leaves one dropped slot, passed here.
        order = self._order
        while order:
            stream = order[0]
            if stream.skipped:
                order.popleft()
                stream.skipped -= 1
                self._dead -= 1
            elif stream.ats[0] <= horizon:
                order.popleft()
                self._bytes -= len(stream.datas.popleft())
                stream.ats.popleft()
            else:
                break
        while self._idle:
            key, stream = next(iter(self._idle.items()))
            if stream.idle_since > horizon:
                break
            del self._idle[key]
            if self._is_subscribed(key):
                continue  # back in _idle when its last subscriber goes
            del self._streams[key]
            # Its messages' slots in the global order are skipped when reached.
            stream.skipped += len(stream.datas)
            self._dead += len(stream.datas)
            for data in stream.datas:
                self._bytes -= len(data)
            stream.datas.clear()
            stream.ats.clear()


def within_bytes(messages: list[bytes], budget: int, *, newest: bool) -> list[bytes]:
    """As many of ``messages`` (oldest first) as fit in ``budget`` encoded bytes, never none of many.

    A ``history:`` reply is one frame: capped like this, it never holds more than a
    connection may queue. ``newest``: keep the last ones (a read without ``since``),
    else the first ones (a page forward from ``since``: the client asks again from
    the last offset it got). The first message kept always goes in, whatever its size,
    so a page always moves forward.
    """
    spent = 0
    order = reversed(range(len(messages))) if newest else range(len(messages))
    kept = 0
    for index in order:
        spent += len(messages[index]) + 1  # the comma that joins it
        if spent > budget and kept:
            break
        kept += 1
    if kept == len(messages):
        return messages
    return messages[len(messages) - kept:] if newest else messages[:kept]


@dataclass
class _Seen:
    position: Position | None
    expires: float
    done: bool = False     # the publish landed (at ``position``)
    failed: bool = False   # the publish failed and the id was released
    delivered: int | None = None  # local subscribers the first publish was handed to


class IdempotencyTable:
    """The publish ids each session used within ``window`` seconds, and where they landed.

    Not thread-safe: the caller serialises every call. At most ``max_ids`` are
    remembered in all; past that the oldest are forgotten first.
    """

    def __init__(self, window: float, max_ids: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.max_ids = max_ids
        self._clock = clock
        self._seen: collections.OrderedDict[tuple[str, str], _Seen] = collections.OrderedDict()

    def claim(self, session_id: str, publish_id: str) -> _Seen | None:
        """Claim ``publish_id`` in ``session_id``: None if it is new (now pending), else what it was."""
        now = self._clock()
        self._expire(now)
        key = (session_id, publish_id)
        seen = self._seen.get(key)
        if seen is not None:
            return seen
        self._seen[key] = _Seen(None, now + self.window)
        while len(self._seen) > self.max_ids:
            self._seen.popitem(last=False)
        return None

    def settle(self, session_id: str, publish_id: str, position: Position | None,
               delivered: int | None = None) -> None:
        """The claimed publish landed at ``position`` (None: history is off), handed to ``delivered`` subscribers."""
        seen = self._seen.get((session_id, publish_id))
        if seen is not None:
            seen.position, seen.delivered, seen.done = position, delivered, True

    def release(self, session_id: str, publish_id: str) -> None:
        """The claimed publish failed: the id is free again."""
        seen = self._seen.pop((session_id, publish_id), None)
        if seen is not None:
            seen.failed = True

    def __len__(self) -> int:
        return len(self._seen)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._seen))

    def _expire(self, now: float) -> None:
        while self._seen:
            key, seen = next(iter(self._seen.items()))
            if seen.expires > now:
                return
            del self._seen[key]
