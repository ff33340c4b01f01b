"""History in Redis: every (topic, session) stream shared by all nodes (``base.SharedHistory``).

With the Redis broker and history on, a pair's stream is a Redis Stream
(``pair_keys(...).stream``) of one entry per run of the publish script: its
id ``{last}-0`` the run's last offset, its fields ``d``, the deliveries' JSON
without position, and ``t``, Redis's time in ms. ``d`` is the delivery's JSON
object for a run of one (the format of every entry before session 15), the
JSON array of the run's k >= 2 deliveries, at offsets ``last - k + 1`` to
``last``, for a run of several (``redis_codec.decode_stream_run``; the first
byte tells them apart). A stream keeps the offsets from the floor ``top -
RUSTY_WS_HISTORY_SIZE + 1`` (``XADD MINID`` drops the entries wholly below it;
one across it stays whole and the readers drop what it holds below the floor)
and ``RUSTY_WS_HISTORY_MAX_BYTES`` of deliveries (whole entries, newest
first). Beside it, a hash (``.meta``: ``e`` the epoch, ``o`` the top offset,
``b`` an upper bound of the stream's bytes, ``i`` the ``run_id`` of the Redis
process that wrote it; on a cluster ``r`` too, its master's replication id).

The stream is ``PEXPIRE``'d ``RUSTY_WS_HISTORY_TTL`` after the pair's last
publish (an entry older than the TTL is never replayed), the hash ``META_TTL``
after its last publish or read: a pair idle past the TTL keeps its epoch and
top. A session's publish ids are string keys (``publish_id_key``) that expire
after ``RUSTY_WS_IDEMPOTENCY_WINDOW``.

Mixed versions (docs/scaling.md, "History and recovery in Redis"): a node of
before session 15 reads an array entry as one no node wrote (dropped, logged,
and the client told ``recovered: false``), never as other messages; its
``XADD MAXLEN`` keeps more messages than the size, which the new readers'
floor drops; its byte count reads ``d`` as the new script does.

One Lua script (``redis_scripts``: the publish script, run with ``EVALSHA`` through the node's
sender) takes n publishes of one pair, oldest first, and does atomically: the
epoch, made if missing (a Redis restarted empty or flushed gives a new one) or
if the keys hold data no node wrote, and renewed if the hash was written
before this Redis started (``i``: a Redis restored from older RDB or AOF files
would otherwise hand out offsets clients saw already; ``redis_scripts``, run
ids); for each publish, its idempotency check
(so a repeated id in one run is a repeat of the first) and its offset; one
``XADD`` of the run's new publishes, trimming the stream; the byte bound; one
``PUBLISH`` of a version-5 envelope (the new
deliveries with their offsets, under the epoch) on the pair's channel; and
returns each one's offset (a repeat: its first position). A publish is one ``Mergeable`` command of n = 1:
the sender merges the consecutive ones of a pair (``merge_publishes``) and
hands each its own part of the reply. Every node, this one included, delivers
what comes on the channel: local subscribers see the offsets remote ones see
(of this node's own version-5 envelopes the listener reads only the header: their deliveries
are framed from what this node kept when it published them, ``take_own``). The read script
reads a stream's top and entries in one atomic look, for ``subscribe-json``
and ``history:``.

On a Redis Cluster (``redis_cluster.py``) the same code runs with ``SPUBLISH``:
a pair's keys and channel share its session's slot, so each command goes to
that slot's master (``route``: its client and sender), and the scripts also
give a pair a new epoch when its hash was written under another master (a
replica that took over may lack the last writes: ``redis_scripts._GUARD``).

Reads are a round trip on the caller's thread, through the broker's client
pool. What Redis returns is checked like channel data: an entry no node wrote
(one whose deliveries would start below offset 1 or at an offset the entry
before holds, bad JSON, another pair's) is dropped and logged
(``redis_codec.decode_stream_run``, ``RedisHistory.read``).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import logging
import operator
import os
import secrets
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from ..exceptions import ProtocolError
from ..log_throttle import LogThrottle
from ..protocol import Delivery, ErrorCode, Position
from .base import HistoryUnavailable, Key, OwnRun, SharedHistory, Stamped, Stored
from .redis_codec import (
    MAX_ENVELOPE_ITEMS,
    PairKeys,
    decode_stream_run,
    is_epoch,
    own_run_header_text,
    pair_keys,
    publish_id_key,
)
from .redis_scripts import ENTRY_BYTES_SHARE, UNBOUNDED, history_scripts
from .redis_sender import SETTLED, Mergeable

__all__ = ["RedisHistory", "Route", "merge_publishes", "replays_safely"]

logger = logging.getLogger("rusty_ws.server")

#: Publishes of this node remembered while they may still come back from the channel.
MAX_IN_FLIGHT = 100_000
#: Most of this node's publishes kept, delivery and encoding, for when their envelope comes back
#: (``take_own``), and most bytes of their encodings; past either, the oldest go (their envelope is
#: then decoded, as another node's is).
MAX_KEPT = 20_000
MAX_KEPT_BYTES = 16 * 1024 * 1024
#: Seconds between two "Redis did not take" lines (each says how many failed since the one before).
UNSENT_LOG_EVERY = 10.0
#: Seconds a pair's epoch and top outlive its last publish or read (at least the TTL): a client
#: that was up to date when the pair went quiet recovers (``recovered: true``, nothing to replay).
META_TTL = 30 * 24 * 3600.0
#: Most bytes of deliveries merged into one run of the publish script (and so one envelope).
MERGE_BYTES = 256 * 1024
#: Bytes of a version-5 envelope besides its deliveries (with the node's id, and an epoch of up to 64
#: digits), and of each item besides its delivery (with a number and an offset of up to 20 digits).
_ENVELOPE_HEAD = 110
_ITEM_HEAD = 70
#: Bytes a publish adds to the sender's queue besides its item in the envelope and three times its meta
#: key (its other keys): ``_Publish.size``.
_OTHER_ARGS = 320
#: Pairs whose key names a node remembers (``RedisHistory._keys_of``).
_KEYS_KEPT = 4096
_SENT, _ARRIVED, _FELL_BACK = "sent", "arrived", "fell back"


def _decoded(encoded: bytes) -> Delivery:
    """A publish again from its ``Delivery.encode`` (no position): for a fallback whose state was dropped."""
    message = json.loads(encoded)
    return Delivery(message["publisher_name"], message["topic"], message["payload"], message["timestamp"],
                    message["session_id"], message.get("user"))


def new_epoch() -> str:
    """A fresh epoch: 16 random hex digits (``redis_codec.is_epoch``)."""
    return secrets.token_hex(8)


class _Epochs:
    """Fresh epochs for the publish script's ``epoch if new``, drawn 256 at a time from ``os.urandom``.

    Every publish needs one (used only if the pair's epoch must be made): one system
    call per publish cost ~1 µs of the publisher's thread, and more on a loaded
    machine. No lock (every connection thread takes epochs, and a lock here was
    contended: a holder descheduled mid-pop stalls the others): ``list.pop`` and
    ``list.extend`` are atomic under the GIL, so each epoch is taken once, and two
    threads that find the pool empty together both refill it, with distinct draws.
    """

    def __init__(self) -> None:
        self._pool: list[str] = []

    def take(self) -> str:
        pool = self._pool
        while True:
            try:
                return pool.pop()
            except IndexError:
                digits = os.urandom(8 * 256).hex()
                pool.extend([digits[i:i + 16] for i in range(0, len(digits), 16)])


#: Epochs of replies already checked (``_position``), as bytes and str; cleared when full.
_CHECKED_EPOCHS: dict[bytes, str] = {}


def _epoch(value: Any) -> str:
    """An epoch as the scripts return it (bytes); ValueError for anything else.

    Every publish of a run, and of the runs after it, has the same: each is checked once
    (``_CHECKED_EPOCHS``)."""
    epoch = _CHECKED_EPOCHS.get(value) if type(value) is bytes else None
    if epoch is None:
        if type(value) is not bytes:
            raise ValueError(f"no epoch: {value!r}")
        epoch = value.decode("ascii", "replace")
        if not is_epoch(epoch):
            raise ValueError(f"no epoch: {value[:80]!r}")
        if len(_CHECKED_EPOCHS) >= 1024:
            _CHECKED_EPOCHS.clear()  # a dict read and write are atomic under the GIL: no lock
        _CHECKED_EPOCHS[value] = epoch
    return epoch


def _position(text: Any) -> Position:
    """``b"{offset}:{epoch}"`` as the script stores it; ValueError for anything else."""
    if type(text) is not bytes:
        raise ValueError(f"no position: {text!r}")
    offset, _, epoch = text.partition(b":")
    if not offset.isdigit() or len(offset) > 15 or offset[0] == 48:  # b"0"
        raise ValueError(f"no position: {text[:80]!r}")
    return Position(int(offset), _epoch(epoch))


#: Where a publish command's arguments start (``("EVALSHA", sha, numkeys, *KEYS, *ARGV)``): ARGV[1..4]
#: (epoch if new, channel, node id, the Redis' run_id), the same for every publish of a pair, then n,
#: then three per publish.
_HEADER_ARGS = 4


def replays_safely(command: tuple[Any, ...], publish_sha: str) -> bool:
    """Whether ``command`` is a run of the publish script in which every publish carries an id.

    Only then may it run twice: the script checks each id first and answers a
    second run ``repeat`` with the first's position. The shape is the same alone
    and merged (``merge_publishes``): one id key per publish with an id, and ``n``
    after the header.
    """
    if len(command) < 4 or command[0] != "EVALSHA" or command[1] != publish_sha:
        return False
    numkeys = command[2]
    at = 3 + numkeys + _HEADER_ARGS
    if not isinstance(numkeys, int) or numkeys < 3 or len(command) <= at:
        return False
    return command[at] == numkeys - 2


def merge_publishes(commands: list[Mergeable], *, size: int = UNBOUNDED, chunk: int = UNBOUNDED,
                    run_id: str | None = None) -> tuple[tuple[Any, ...], Callable[[Any], list[Any]]]:
    """One run of the publish script for the publishes of one pair, oldest first.

    A run of several whose publishes have no id (the usual one) is sent in the script's
    joined form: its deliveries as one JSON array, its numbers as one string, and the
    cuts of its entries if it needs more than one (``_entry_cuts``, with the history's
    ``size`` and ``chunk``, max bytes / ``ENTRY_BYTES_SHARE``). Redis then reads three
    arguments per run rather than three per publish, and stores the array as the entry
    without building it again (docs/performance.md, "a run's deliveries as one argument").
    Otherwise each keeps its own id key (renumbered), delivery and number; the pair's
    arguments are the first's, with ``run_id`` (the Redis' that runs it: ``redis_scripts``) if
    given. The reply is split into one per publish, shaped as the
    script's reply to that publish alone (the reset flag given to the first only).
    ``RedisHistory`` merges with its own split (``_split_run``), which also settles the
    run's publishes without id at once.
    """
    first = commands[0]
    id_keys: list[Any] = [command[5] for command in commands if command[2] == 3]  # those with an id key
    tail: list[Any]
    count = len(commands)
    at = 3 + first[2]
    header = first[at:at + _HEADER_ARGS]
    if run_id is not None:
        header = (*header[:-1], run_id)
    if not id_keys and count > 1:  # the usual run: joined
        datas = [command[-2] for command in commands]
        joined = b"[" + b",".join(datas) + b"]"
        seqs = b",".join([b"%d" % command[-1] for command in commands])  # as the envelope spells them
        cuts = _entry_cuts(datas, size, chunk) if count > size or len(joined) - 2 > chunk else ()
        merged = ("EVALSHA", first[1], 2, first[3], first[4], *header, -count, joined, seqs, *cuts)
    else:
        if not id_keys:  # a run of one
            tail = [0] * (3 * count)
            tail[1::3] = [command[-2] for command in commands]
            tail[2::3] = [command[-1] for command in commands]
        else:
            tail, numbered = [], 0
            for command in commands:
                if command[2] == 3:
                    numbered += 1
                    tail += (2 + numbered, command[-2], command[-1])
                else:
                    tail += (0, command[-2], command[-1])
        merged = ("EVALSHA", first[1], 2 + len(id_keys), first[3], first[4], *id_keys, *header, count, *tail)

    def split(reply: Any) -> list[Any]:
        parts = _run_parts(reply, count)
        return [] if parts is None else [part for part, _ in parts]

    return merged, split


def _entry_cuts(datas: list[bytes], size: int, chunk: int) -> list[int]:
    """The entries a joined run of ``datas`` is stored as, for the script: three numbers each, oldest
    first: its last place in the run (1 for the first), the first and the last byte (Lua's, from 1)
    of its deliveries in the joined array. The cut the script makes of the per-publish form: only the
    newest ``size``, each entry as many deliveries as fit in ``chunk`` bytes (commas counted, at least one)."""
    count = len(datas)
    i = max(0, count - size)
    at = 2 + sum(map(len, datas[:i])) + i  # the first byte of delivery i in b"[d1,d2,...]"
    cuts: list[int] = []
    while i < count:
        j, length = i, len(datas[i])
        while j + 1 < count and length + 1 + len(datas[j + 1]) <= chunk:
            j += 1
            length += 1 + len(datas[j])
        cuts += (j + 1, at, at + length - 1)
        at += length + 1
        i = j + 1
    return cuts


def _run_parts(reply: Any, count: int) -> list[tuple[list[Any], int]] | None:
    """The script's reply to a run of ``count`` publishes, as each one's reply alone (the reset
    flag given to the first only), with its offset (0 for a repeat); None if it is not the
    script's (each publish then gets the whole reply, and says what it is)."""
    if type(reply) is not list or len(reply) < 3 or len(reply) % 2 == 0:
        return None
    reset, epoch, offset = reply[0], reply[1], reply[2]
    repeats = {reply[i]: reply[i + 1] for i in range(3, len(reply), 2)}
    if type(offset) is not int or not 0 <= offset <= 2 ** 53 - count or (offset == 0) != (len(repeats) == count):
        return None
    parts = []
    for i in range(1, count + 1):
        first_reset = reset if i == 1 else 0
        seen = repeats.get(i)
        if seen is None:
            parts.append(([first_reset, epoch, offset], offset))
            offset += 1
        else:
            parts.append(([first_reset, epoch, 0, 1, seen], 0))
    return parts


class _Publish(Mergeable):
    """One publish's run of the script (n = 1), as ``RedisHistory.publish`` hands it to the sender.

    What the sender asks of a ``Mergeable`` is read off its arguments (properties), and
    what is the same for every publish of a history (``merge``, ``budget``) is an
    attribute of the history's own subclass (``RedisHistory._kind``): no attribute is
    set per publish (each cost the publishing thread a dict, ~1 µs in all).
    """

    __slots__ = ()
    #: Bytes a publish adds to the queue besides its delivery and three times its meta key (the other keys).
    _QUEUED = _ITEM_HEAD + _OTHER_ARGS

    #: The pair's meta key: read by a C getter (no Python frame per publish in the sender's merging).
    group = property(operator.itemgetter(3))

    @property
    def weight(self) -> int:  # type: ignore[override]
        return len(self[-2]) + _ITEM_HEAD

    @property
    def head(self) -> int:  # type: ignore[override]  # the node id's length, and the envelope's own
        return len(self[5 + self[2]]) + _ENVELOPE_HEAD

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self[-2]) + 3 * len(self[3]) + self._QUEUED


class Route(NamedTuple):
    """Where the commands of one session go now (a broker's answer to ``route(session_id)``)."""

    #: A redis-py client of the Redis that holds the session's keys (its master, on a cluster): reads.
    client: Any
    #: Queues a command there (``RedisSender.submit``: one FIFO per Redis, so a session's
    #: publishes keep their order); calls ``on_reply`` with an exception if nothing serves the session.
    submit: Callable[[tuple[Any, ...], Callable[[Any], None]], None]
    #: Whether the listener that serves the session's channels is connected.
    connected: bool


class RedisHistory(SharedHistory):
    """The shared history of the Redis and Redis Cluster brokers (see the module's docstring).

    The broker makes ``publish_script`` known to each Redis it sends to (``script_load``)
    before its first ``EVALSHA`` of ``publish_sha``.

    Args:
        node_id: returns this process's node id (a process forked after start gets its own).
        route: where a session's commands go now (``Route``): this process's client and
            sender of the Redis (the master) that holds the session's keys. While its
            listener is not connected a read is not tried (the subscription it serves
            could not be confirmed).
        deliver: the hub's delivery to this node's subscribers (for a publish without
            id that Redis could not take: delivered here only, without offset).
        prefix: the key and channel prefix.
        size, ttl, window: ``RUSTY_WS_HISTORY_SIZE``, ``_HISTORY_TTL``, ``_IDEMPOTENCY_WINDOW``.
        max_envelope_size: the largest envelope a node sends, in bytes (None: no limit).
        max_bytes: ``RUSTY_WS_HISTORY_MAX_BYTES``: the most bytes of deliveries one stream keeps
            (None: no bound but ``size``). Per stream, not over all of them as the in-memory
            history does: see docs/scaling.md.
        meta_ttl: seconds a pair's epoch and top are kept after its last publish or read
            (None: ``META_TTL``; never less than ``ttl``).
        publish_command: ``PUBLISH`` (one Redis) or ``SPUBLISH`` (a cluster: the scripts then
            also renew the epoch of a stream a new master touches, see ``redis_scripts._GUARD``).
        keeps: whether this node's listener is subscribed to a channel now: then a publish to it
            is kept until its envelope comes back (``take_own``). None: nothing is kept, every
            envelope is decoded.
        submit_for: ``route(session_id).submit`` by a shorter way, if the broker has one (one
            Redis: this process's sender, whatever the session; a ``Route`` made per publish
            cost the publishing thread ~2 µs). It must take a ``Mergeable`` without ``on_reply``
            and answer it through its ``answer``, and the command's queued size as a third
            argument (``RedisSender.submit``): a publish without id that nobody waits for is
            submitted so, with no callback of its own.
    """

    def __init__(self, *, node_id: Callable[[], str], route: Callable[[str], Route], deliver: Callable[[Delivery], Any],
                 prefix: str, size: int, ttl: float, window: float, max_envelope_size: int | None,
                 max_bytes: int | None = None, meta_ttl: float | None = None,
                 publish_command: str = "PUBLISH", keeps: Callable[[bytes], bool] | None = None,
                 submit_for: Callable[[str], Callable[..., None]] | None = None,
                 ) -> None:
        self._node_id = node_id
        self._keeps = keeps
        self._route = route
        self._submit_for: Callable[[str], Callable[..., None]] = (
            submit_for if submit_for is not None else lambda session_id: route(session_id).submit)
        self._deliver = deliver
        self.publish_command = publish_command
        self.prefix = prefix
        self.size = size
        self.ttl_ms = max(1, int(ttl * 1000))
        self.window_ms = max(1, int(window * 1000))
        self.meta_ttl_ms = max(self.ttl_ms, int((META_TTL if meta_ttl is None else meta_ttl) * 1000))
        self.max_bytes = UNBOUNDED if max_bytes is None else max_bytes
        self.max_envelope_size = max_envelope_size
        self.merge_budget = min(MERGE_BYTES, max_envelope_size or MERGE_BYTES)
        self._chunk = max(1, self.max_bytes // ENTRY_BYTES_SHARE)  # the most bytes of deliveries in one entry
        # One script (and SHA) per configuration: the settings are in its text, not in each call.
        self.publish_script, self.read_script = history_scripts(
            publish_command, size=size, ttl_ms=self.ttl_ms, meta_ttl_ms=self.meta_ttl_ms,
            window_ms=self.window_ms, max_bytes=self.max_bytes)
        self.publish_sha = hashlib.sha1(self.publish_script.encode("utf-8")).hexdigest()
        # This history's publishes: ``_Publish`` with its merge (the sender's thread) and budget.
        # ``merge_alone``: a run of one is registered too (``_merge``), before the sender writes it.
        self._kind: type[_Publish] = type("_HistoryPublish", (_Publish,), {
            "__slots__": (), "merge": self._merge, "budget": self.merge_budget, "merge_alone": True})
        # ...and those without id that nobody waits for: no callback each, answered by their kind
        # (``Mergeable.answer``) when their run did not settle them (``_split_run``).
        history = self

        def answer(command: tuple[Any, ...], reply: Any) -> None:
            history._answer_bare(command, reply)

        self._bare_kind: type[_Publish] = type("_BarePublish", (self._kind,), {"__slots__": (), "answer": answer})
        # One Redis: the sender's submit, which answers a bare publish through its kind; a route that
        # calls back for every command (a cluster's Router) gets the answer as its callback.
        self._direct = submit_for is not None
        self._keys: dict[Key, PairKeys] = {}  # _keys_of's memory
        # The run_id the publishes are made with (``_merge`` puts in the sender's own): on one Redis the
        # last the sender gave; on a cluster always '' (each master has its own, and a publish redirected
        # to another master as it was made has the script ask INFO).
        self._run_id = ""
        self._epochs = _Epochs()
        # The read script (redis-py's Script: EVALSHA, loading it on NOSCRIPT), run with each read's client.
        self._reader: Any = None
        # This node's publishes without id not settled yet (by number: _SENT, or for a bare one through
        # a route its Delivery; _ARRIVED once back from the channel first), and those delivered here
        # because Redis did not take them, as far as the sender knew (_FELL_BACK: Redis may have run
        # them). Compared by identity. A bare publish to one Redis is in it from its run's merge on
        # (``_merge``, on the sender's thread, before it is written), as _SENT: its fallback is made
        # again from its encoding (``_decoded``).
        self._seqs = itertools.count(1)
        # A dict (insertion order: oldest first), not an OrderedDict: a publish's way in and out of it
        # cost ~0.35 µs more in one (``update`` and ``pop``); its rare trim is done in bulk (``_settled``).
        self._in_flight: dict[int, Any] = {}
        # This node's publishes to channels its listener is subscribed to, by number, until their
        # envelope comes back: [delivery, its encoding, answered by Redis], oldest first; those
        # with an id or somebody waiting, and a cluster's (a route's: ``_direct`` False).
        self._kept: collections.OrderedDict[int, list[Any]] = collections.OrderedDict()
        # ...and the runs of bare publishes (no id, nobody waiting) the sender sends to one Redis, kept
        # whole when it merges them (``_merge``, before they are written), by their first number:
        # [their commands, answered by Redis, their encodings' bytes, their numbers as the envelope
        # spells them], oldest first. Nothing is kept per publish on the publishing thread.
        self._kept_runs: collections.OrderedDict[int, list[Any]] = collections.OrderedDict()
        self._kept_run_publishes = 0  # publishes in _kept_runs
        self._kept_bytes = 0  # of both
        # _lock guards _counts, _log_unsent, _in_flight, _kept, _kept_runs, _kept_run_publishes and
        # _kept_bytes. Never held across I/O.
        self._lock = threading.Lock()
        self._counts = {"history_dropped": 0, "history_resets": 0, "history_restarted": 0}
        if publish_command == "SPUBLISH":
            self._counts["history_renewed"] = 0  # streams a new master took over (see redis_scripts._GUARD)
        #: At most one "did not take" line every UNSENT_LOG_EVERY seconds, however many fail (a cluster's
        #: failover fails thousands while the other shards take theirs).
        self._log_unsent = LogThrottle(UNSENT_LOG_EVERY)
        #: ...and one "Redis restarted" line (every pair's first publish or read after it renews its epoch).
        self._log_restarted = LogThrottle(UNSENT_LOG_EVERY)

    # ------------------------------------------------------------------ publishing

    def publish(self, delivery: Delivery, publish_id: str | None,
                on_done: Callable[[Stamped | BaseException], None] | None) -> None:
        try:
            encoded = delivery.encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"the payload is not JSON: {exc}") from None
        node_id = self._node_id()
        head, weight = len(node_id) + _ENVELOPE_HEAD, len(encoded) + _ITEM_HEAD
        envelope_size = head + weight
        if self.max_envelope_size is not None and envelope_size > self.max_envelope_size:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                f"the message would be {envelope_size} bytes on Redis, more than the "
                                f"{self.max_envelope_size} any node accepts")
        keys = self._keys.get((delivery.topic, delivery.session_id))  # _keys_of's usual case, inline
        if keys is None:
            keys = self._keys_of(delivery.topic, delivery.session_id)
        seq = next(self._seqs)
        bare = publish_id is None and on_done is None
        # The run_id: the last one the sender gave (``_merge`` puts in the one its connection read).
        if publish_id is None:
            command = (self._bare_kind if bare else self._kind)((
                "EVALSHA", self.publish_sha, 2, keys.meta, keys.stream,
                self._epochs.take(), keys.channel, node_id, self._run_id, 1, 0, encoded, seq))
        else:
            command = self._kind(("EVALSHA", self.publish_sha, 3, keys.meta, keys.stream,
                                  publish_id_key(self.prefix, delivery.session_id, publish_id),
                                  self._epochs.take(), keys.channel, node_id, self._run_id, 1, 3, encoded, seq))
        # A bare publish to one Redis is in flight, and kept with its run, from when the sender merges
        # it (``_merge``, before it is written): nothing of it is kept here, and no lock taken.
        if bare and self._direct:  # answered by its kind's answer (``_answer_bare``); its size as ``size`` gives it
            self._submit_for(delivery.session_id)(command, None, weight + 3 * len(keys.meta) + _OTHER_ARGS)
            return
        kept = [delivery, encoded, False] if self._keeps is not None and self._keeps(keys.channel) else None
        if publish_id is None or kept is not None:
            with self._lock:
                if publish_id is None:
                    # A bare publish's own delivery is its state until answered: its fallback needs it.
                    self._in_flight[seq] = delivery if bare else _SENT
                if kept is not None:  # bounded: the oldest go first
                    self._kept[seq] = kept
                    self._kept_bytes += len(encoded)
                    if len(self._kept) + self._kept_run_publishes > MAX_KEPT or self._kept_bytes > MAX_KEPT_BYTES:
                        self._trim_kept_locked()
        # Always through the sender, even while the listener is down: one FIFO, so what falls back
        # to local delivery (Redis did not take it) is delivered here in the order it was made.
        if bare:  # a route that calls back for every command (a cluster's): its kind's answer, as the callback
            self._submit_for(delivery.session_id)(command, functools.partial(self._answer_bare, command))
            return

        self._submit_for(delivery.session_id)(command, self._on_reply(delivery, publish_id, on_done, seq, kept))

    def _on_reply(self, delivery: Delivery, publish_id: str | None,
                  on_done: Callable[[Stamped | BaseException], None] | None, seq: int,
                  kept: list[Any] | None) -> Callable[[Any], None]:
        """The callback of a publish with an id, or one somebody waits for (a method of its own: ``publish``
        then has no cell variables, whose cells Python would make on every call, bare publishes too)."""

        def on_reply(reply: Any) -> None:  # on the sender's thread (which counts what it could not send)
            if type(reply) is tuple:  # settled with its run (``_split_run``): (epoch, offset)
                if on_done is not None:
                    on_done(Stamped(Position(reply[1], reply[0]), False))
                return
            if on_done is None and type(reply) is list and len(reply) == 3 and reply[0] == 0 \
                    and type(reply[2]) is int:
                # New, no reset, and nobody waits for its position (a publish with an id given no
                # on_done; one without either is bare: _answer_bare): settled, nothing parsed.
                with self._lock:
                    self._in_flight.pop(seq, None)
                if kept is not None:
                    kept[2] = True  # a list item: atomic under the GIL
                return
            try:
                stamped = self._stamped(reply, delivery)
                result: Stamped | BaseException = stamped
                self._settled(seq, publish_id, fell_back=False)
                if kept is not None:
                    if stamped.repeat:
                        self._unkeep(seq)  # not published: its envelope will not come
                    else:
                        kept[2] = True  # a list item: atomic under the GIL
            except HistoryUnavailable as exc:
                result = exc
                if kept is not None:
                    self._unkeep(seq)
                self._unsent(delivery, exc, deliver_here=self._settled(seq, publish_id, fell_back=True))
            if on_done is not None:
                on_done(result)

        return on_reply

    def _answer_bare(self, command: tuple[Any, ...], reply: Any) -> None:
        """The reply to a publish without id that nobody waits for (``_bare_kind``'s ``answer``; on the
        sender's thread, or the publishing one when the sender was stopped, or a cluster's supervisor
        for one held past its retry timeout): what its ``on_reply`` would do, its state read back by
        its number (``command[-1]``)."""
        if reply is SETTLED:
            return  # settled with its run (``_split_run``)
        seq = command[-1]
        if type(reply) is list and len(reply) == 3 and reply[0] == 0 and type(reply[2]) is int:
            # The usual answer, alone: new, no reset. The listener delivers it with the channel's position.
            with self._lock:
                self._in_flight.pop(seq, None)
                entry = self._kept.get(seq)
                if entry is not None:
                    entry[2] = True
                run = self._kept_runs.get(seq)
                if run is not None:  # its run's first: they all had the same answer
                    run[1] = True
            return
        with self._lock:
            state = self._in_flight.get(seq)
            entry = self._kept.get(seq)
        delivery = state if type(state) is Delivery else entry[0] if entry is not None else None
        if delivery is None:  # its number left _in_flight (past MAX_IN_FLIGHT): made again from its encoding
            delivery = _decoded(command[-2])
        try:
            stamped = self._stamped(reply, delivery)
            self._settled(seq, None, fell_back=False)
            if stamped.repeat:
                self._unkeep(seq)
            else:
                if entry is not None:
                    entry[2] = True  # a list item: atomic under the GIL
                run = self._kept_runs.get(seq)
                if run is not None:  # its run's first: they all had the same answer
                    run[1] = True
        except HistoryUnavailable as exc:
            self._unkeep(seq)
            self._unsent(delivery, exc, deliver_here=self._settled(seq, None, fell_back=True))

    def _merge(self, commands: list[Mergeable], run_id: str = "",
               ) -> tuple[tuple[Any, ...], Callable[[Any], list[Any]]]:
        """``merge_publishes`` for the sender (a run of one: the command as it is), with ``_split_run``
        for its reply; on the sender's thread, before the run is written.

        ``run_id`` is that of the Redis the sender's connection reaches (``redis_scripts``, run ids):
        what the run carries, whatever its publishes were given when they were made (a publish
        queued before a restart of Redis and written after it must not carry the old one). One
        Redis: the publishes made from now on take it (``_run_id``), so a run of one is seldom copied.

        The bare publishes of a run to one Redis (no id, nobody waiting: each submitted without
        callback) go in flight here (``_in_flight``, as ``_SENT``). A run of only those, to a channel
        the listener is subscribed to, is kept here, whole, until its envelope comes back
        (``take_own``): one entry per run, not one per publish on the publishing thread. A run that
        mixes them with others is not kept: its envelope is decoded, as another node's is.
        """
        count = len(commands)
        bare = self._bare_kind
        first = commands[0]
        whole = False  # a run of bare publishes only
        if self._direct:
            # Its bare publishes are in flight from now on (before the run is written, so that an
            # envelope that comes back before a failure is known to have arrived: ``_settled``).
            whole = type(first) is bare and (count == 1 or all([type(command) is bare for command in commands]))
            seqs = [command[-1] for command in commands] if whole else \
                [command[-1] for command in commands if type(command) is bare]
            if seqs:
                with self._lock:
                    self._in_flight.update(dict.fromkeys(seqs, _SENT))
        if count > 1:
            merged = merge_publishes(commands, size=self.size, chunk=self._chunk, run_id=run_id)[0]
        elif first[-5] != run_id:  # (a publish alone ends with its run_id, n, and its three)
            merged = (*first[:-5], run_id, *first[-4:])  # made before the sender's connection read it
        else:
            merged = first
        if self._direct:  # one Redis: the run_id the next publishes are made with (a str: atomic under the GIL)
            self._run_id = run_id
        run: list[Any] | None = None
        if whole and self._keeps is not None and self._keeps(first[6]):  # ARGV[2], the pair's channel
            # The numbers as the script spells them in the envelope: the joined form's argument.
            text = merged[11] if count > 1 else b"%d" % first[-1]
            nbytes = sum(map(len, [command[-2] for command in commands]))
            run = [commands, False, nbytes, text]
            with self._lock:
                self._kept_runs[first[-1]] = run
                self._kept_run_publishes += count
                self._kept_bytes += nbytes
                if len(self._kept) + self._kept_run_publishes > MAX_KEPT or self._kept_bytes > MAX_KEPT_BYTES:
                    self._trim_kept_locked()
        return merged, lambda reply: self._split_run(commands, reply, run)

    def _split_run(self, commands: list[Mergeable], reply: Any, run: list[Any] | None = None) -> list[Any]:
        """Each publish's part of a merged run's reply (on the sender's thread, before any ``on_reply``).

        The run's new publishes without id are settled here, under one lock for all of
        them (their number leaves ``_in_flight``, what was kept is marked answered), and
        get ``SETTLED`` as their part if nobody waits for them (the sender then calls
        nothing), else ``(epoch, offset)``, which their ``on_reply`` only hands on;
        the others get their reply alone (``merge_publishes``), as if they had run alone.
        """
        count = len(commands)
        parts: list[tuple[list[Any], int]] | None = None  # None: all new, offsets first, first + 1, ...
        if type(reply) is not list or len(reply) != 3 or reply[0] != 0 or type(reply[2]) is not int \
                or not 1 <= reply[2] <= 2 ** 53 - count:
            # Repeats among them, a reset, or not the script's answer: each as if it ran alone
            # (none: each gets the whole reply, and says what is wrong with it).
            parts = _run_parts(reply, count)
            if parts is None or reply[0] != 0:
                return [] if parts is None else [part for part, _ in parts]
        try:
            epoch: str | None = _epoch(reply[1])
        except ValueError:
            epoch = None  # those that wait for their position are told, as alone
        out: list[Any]
        bare = self._bare_kind
        if parts is None and epoch is not None:  # the usual run: all new, offsets first, first + 1, ...
            first = reply[2]
            settled = [command[-1] for command in commands if command[2] == 2]
            out = [SETTLED if type(command) is bare else (epoch, first + i) if command[2] == 2
                   else [0, reply[1], first + i] for i, command in enumerate(commands)]
        else:
            out, settled = [], []
            for i, command in enumerate(commands):
                part, offset = (None, reply[2] + i) if parts is None else parts[i]
                if epoch is not None and offset and command[2] == 2:  # new, without id
                    settled.append(command[-1])
                    out.append(SETTLED if type(command) is bare else (epoch, offset))
                else:
                    out.append(part if part is not None else [0, reply[1], offset])
        if settled:
            with self._lock:
                in_flight, kept = self._in_flight, self._kept
                for seq in settled:
                    in_flight.pop(seq, None)
                if run is not None:
                    run[1] = True  # answered: swept if its envelope never comes
                elif kept:
                    for seq in settled:
                        entry = kept.get(seq)
                        if entry is not None:
                            entry[2] = True
        return out

    def _keys_of(self, topic: str, session_id: str) -> PairKeys:
        """``pair_keys`` of a pair, remembered for the next publishes (up to ``_KEYS_KEPT`` pairs)."""
        pair = (topic, session_id)
        keys = self._keys.get(pair)
        if keys is None:
            if len(self._keys) >= _KEYS_KEPT:
                self._keys.clear()  # a dict read and write are atomic under the GIL: no lock
            keys = self._keys[pair] = pair_keys(self.prefix, topic, session_id)
        return keys

    def _settled(self, seq: int, publish_id: str | None, fell_back: bool) -> bool:
        """A publish was answered; with ``fell_back`` (Redis did not take it, as far as the sender
        knows): whether to deliver it here, without offset (not if it came back from the channel
        already: Redis ran it after all)."""
        if publish_id is not None:
            return False  # answered unavailable: delivered nowhere by us
        with self._lock:
            state = self._in_flight.pop(seq, None)
            if not fell_back or state is _ARRIVED:
                return False
            in_flight = self._in_flight
            in_flight[seq] = _FELL_BACK  # if it comes from the channel later, it is dropped there
            if len(in_flight) > MAX_IN_FLIGHT:  # the oldest go, a sixteenth at a time (one pass from the front)
                for oldest in list(itertools.islice(in_flight, len(in_flight) - MAX_IN_FLIGHT + MAX_IN_FLIGHT // 16)):
                    del in_flight[oldest]
            return True

    def _trim_kept_locked(self) -> None:
        """Drop the oldest kept runs, then publishes, past ``MAX_KEPT`` or ``MAX_KEPT_BYTES`` (their
        envelope is then decoded)."""
        assert self._lock.locked(), "must hold the history's lock"
        runs = self._kept_runs
        while runs and (len(self._kept) + self._kept_run_publishes > MAX_KEPT or self._kept_bytes > MAX_KEPT_BYTES):
            self._drop_run_locked(runs.popitem(last=False)[1])
        while len(self._kept) > MAX_KEPT or self._kept_bytes > MAX_KEPT_BYTES:
            self._kept_bytes -= len(self._kept.popitem(last=False)[1][1])

    def _drop_run_locked(self, run: list[Any]) -> None:
        """Count out a kept run that left ``_kept_runs``."""
        self._kept_run_publishes -= len(run[0])
        self._kept_bytes -= run[2]

    def _unkeep(self, seq: int) -> None:
        """Not published after all (a repeat, a failure): its envelope will not come. For a bare
        publish, its whole run (the first of a run is answered first, and all of a run alike)."""
        with self._lock:
            kept = self._kept.pop(seq, None)
            if kept is not None:
                self._kept_bytes -= len(kept[1])
            run = self._kept_runs.pop(seq, None)
            if run is not None:
                self._drop_run_locked(run)

    def forget_kept(self) -> None:
        """The listener's connection went (or this is a new process): what was kept may never come back."""
        with self._lock:
            self._kept.clear()
            self._kept_runs.clear()
            self._kept_run_publishes = 0
            self._kept_bytes = 0

    def take_own(self, key: Key, data: bytes, prefix: bytes) -> OwnRun | None:
        """This node's own version-5 envelope ``data`` (starting with ``prefix``) as the run of what was
        kept when its publishes were made (``base.OwnRun``): only the header is read, and no
        ``Delivery`` is made. None if any of them was not kept (or the header is not the script's):
        then decode ``data`` whole.

        A run kept whole (``_merge``) is found by its first number and matched by its numbers as the
        envelope spells them (no number parsed but the first); others publish by publish.
        Does what ``arrived`` does for each: a publish already delivered here is None in the run.
        """
        header = own_run_header_text(data, prefix)
        if header is None:
            return None
        epoch, first, text = header
        comma = text.find(b",")
        try:
            first_seq = int(text if comma < 0 else text[:comma])
        except ValueError:
            return None
        encodings: list[Any]
        with self._lock:
            runs = self._kept_runs
            run = runs.pop(first_seq, None) if runs else None
            if run is not None:
                self._drop_run_locked(run)
                commands = run[0]
                if run[3] != text or first + len(commands) > 2 ** 53 \
                        or commands[0][6] != self._keys_of(*key).channel:
                    return None  # not what this node sent on that channel: decoded, as another node's
                # Older runs Redis answered whose envelope did not come before this one: it seldom will
                # (the listener's messages come in the order the scripts ran; a late one is decoded whole);
                # a few at a time, bounded.
                for _ in range(16):
                    oldest = next(iter(runs), None)
                    if oldest is None or oldest >= first_seq or not runs[oldest][1]:
                        break
                    self._drop_run_locked(runs.pop(oldest))
                encodings = [command[-2] for command in commands]
                seqs = [command[-1] for command in commands]
            else:
                try:
                    seqs = list(map(int, text.split(b",")))
                except ValueError:  # ",," or a trailing comma
                    return None
                if len(seqs) > MAX_ENVELOPE_ITEMS or first + len(seqs) > 2 ** 53:
                    return None
                kept = self._kept
                topic, session_id = key
                encodings = []
                for seq in seqs:
                    entry = kept.pop(seq, None)
                    if entry is None:
                        return None  # those taken are gone: the envelope's decoding serves them all
                    self._kept_bytes -= len(entry[1])
                    published = entry[0]
                    if published.topic != topic or published.session_id != session_id:
                        return None  # not what this node sent on that channel
                    encodings.append(entry[1])
                # Older ones Redis answered whose envelope did not come before this one: it will seldom
                # come (a channel's messages come in the order the scripts ran, and numbers are taken in
                # nearly that order: two threads may queue theirs the other way round, and such a late
                # envelope is then decoded whole); a few at a time, bounded.
                low = seqs[0] if len(seqs) == 1 else min(seqs)
                for _ in range(16):
                    oldest = next(iter(kept), None)
                    if oldest is None or oldest >= low or not kept[oldest][2]:
                        break
                    self._kept_bytes -= len(kept.pop(oldest)[1])
            in_flight = self._in_flight
            if in_flight:
                for i, seq in enumerate(seqs):
                    state = in_flight.get(seq)
                    if state is _FELL_BACK:
                        del in_flight[seq]
                        encodings[i] = None  # delivered here already, when Redis seemed not to take it
                    elif state is not None:  # sent (_SENT, or a bare publish's delivery), not answered yet
                        in_flight[seq] = _ARRIVED
        return key, epoch, first, encodings

    def arrived(self, delivery: Delivery) -> bool:
        """The listener has ``delivery``: False for a publish of this node already delivered here."""
        extra = delivery.extra
        node = extra.get("node") if extra else None
        if node is None or node != self._node_id():
            return True
        with self._lock:
            state = self._in_flight.get(extra["seq"])
            if state is _FELL_BACK:
                del self._in_flight[extra["seq"]]
                return False
            if state is not None and state is not _ARRIVED:  # sent (_SENT, or a bare publish's delivery)
                self._in_flight[extra["seq"]] = _ARRIVED
        return True

    def _stamped(self, reply: Any, delivery: Delivery) -> Stamped:
        if isinstance(reply, BaseException):
            raise HistoryUnavailable(f"{type(reply).__name__}: {reply}")
        try:
            if type(reply) is not list:
                raise TypeError(f"a {type(reply).__name__}")
            if len(reply) == 3:  # new: its offset, in the run's epoch
                reset, epoch, got = reply
                if type(got) is not int or not 1 <= got < 2 ** 53:
                    raise ValueError(f"offset {got!r}")
                stamped = Stamped(Position(got, _epoch(epoch)), False)
            else:  # a repeat: the position its id was first given
                reset, _, none, place, got = reply
                if none != 0 or place != 1:
                    raise ValueError("not the reply to one publish")
                stamped = Stamped(_position(got), True)
        except (TypeError, ValueError) as exc:
            logger.warning("dropped what Redis answered to a publish on %s@%s (%s): %r",
                           delivery.topic, delivery.session_id, exc, str(reply)[:200])
            raise HistoryUnavailable("Redis answered something no rusty_ws script returns") from None
        if reset:
            self._reset(delivery.topic, delivery.session_id, reset)
        return stamped

    def _unsent(self, delivery: Delivery, exc: BaseException, deliver_here: bool) -> None:
        with self._lock:
            unsent = self._log_unsent()
        if unsent:
            logger.warning("Redis did not take %d publish(es) since the last such line (last: %s): publishes "
                           "without id reach this node's subscribers only, without offset; those with an id are "
                           "answered unavailable", unsent, exc)
        if deliver_here:
            try:
                self._deliver(delivery)
            except Exception:
                logger.exception("delivering %s here failed", delivery)

    def _reset(self, topic: str, session_id: str, why: int) -> None:
        if why == 3:  # Redis started again since the pair's meta was written (redis_scripts, run ids)
            with self._lock:
                self._counts["history_restarted"] += 1
                renewed = self._log_restarted()
            if renewed:
                logger.info("Redis restarted since the keys of %d pair(s) were written (last: %s@%s): what it "
                            "restored from its files may be older than what clients saw, so each gets a new epoch",
                            renewed, topic[:200], session_id[:200])
            return
        if why == 2:  # a cluster's master that did not write the stream: it may lack the last writes
            with self._lock:
                self._counts["history_renewed"] += 1
            logger.info("%s@%s is served by a new Redis master (a failover?): a new epoch", topic[:200], session_id[:200])
            return
        with self._lock:
            self._counts["history_resets"] += 1
        logger.warning("the Redis keys of %s@%s held data no rusty_ws node wrote: dropped, under a new epoch",
                       topic[:200], session_id[:200])

    # ------------------------------------------------------------------ reading

    def read(self, key: Key, since: Position | None, limit: int) -> Stored:
        """The stream's top and its messages after ``since`` (else its last ``limit``), at most ``limit``.

        Never below the floor ``top - size + 1`` (an entry across it holds older ones, which are
        dropped here): a client is never given more than ``RUSTY_WS_HISTORY_SIZE`` of history.
        """
        client, _, connected = self._route(key[1])
        if not connected or client is None:
            raise HistoryUnavailable("Redis is unreachable")
        keys = pair_keys(self.prefix, *key)
        limit = max(1, min(limit, self.size))
        mode, since_epoch, since_offset = ("since", since.epoch, since.offset) if since else ("last", "", 0)
        try:
            if self._reader is None:
                self._reader = client.register_script(self.read_script)
            reply = self._reader(keys=[keys.meta, keys.stream],
                                 args=[new_epoch(), self.meta_ttl_ms, mode, since_epoch, since_offset, limit, self.size,
                                       ""],  # the run_id: the script asks INFO (this pool's connection may be new)
                                 client=client)
            epoch_bytes, top_bytes, now_bytes, reset, entries = reply
            epoch, top, now = epoch_bytes.decode("ascii"), int(top_bytes), int(now_bytes)
        except Exception as exc:  # redis' errors, OSError, or an answer of another shape
            raise HistoryUnavailable(f"{type(exc).__name__}: {exc}") from None
        if reset:
            self._reset(*key, int(reset))
        # What the read script looked for (the same bounds): the offsets after ``low``, up to ``high``.
        low = max(0, top - self.size, since_offset if since else top - limit)
        high = min(top, low + limit)
        messages: list[Delivery] = []
        last = 0  # the newest offset of the entries taken so far: an entry that goes back over it is forged
        for entry in entries:
            try:
                run, added = decode_stream_run(entry, key, epoch, top, self.max_envelope_size)
                if run[0].offset <= last:  # type: ignore[operator]
                    raise ValueError(f"offsets {run[0].offset} to {run[-1].offset} overlap the entry before")
            except (ValueError, TypeError, AttributeError) as exc:
                with self._lock:
                    self._counts["history_dropped"] += 1
                logger.warning("dropped an entry of the Redis stream of %r that no rusty_ws node wrote (%s): %r",
                               key, exc, str(entry)[:100])
                continue
            last = run[-1].offset  # type: ignore[assignment]
            if added + self.ttl_ms > now:  # older than the TTL: never replayed
                messages += [delivery for delivery in run if low < delivery.offset <= high]  # type: ignore[operator]
        if since is None:
            return Stored(Position(top, epoch), messages, True)
        offsets = [delivery.offset for delivery in messages]
        complete = since.epoch == epoch and offsets == list(range(since.offset + 1, top + 1))
        return Stored(Position(top, epoch), messages, complete)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"history": "redis", **self._counts}
