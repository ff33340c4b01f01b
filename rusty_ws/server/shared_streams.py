"""The hub's side of a history kept by the broker for every node (Redis): ``brokers.base.SharedHistory``.

With such a broker the hub keeps no history of its own: the broker gives each
message its offset and delivers it to this node's subscribers too, with that
offset, through ``Hub.deliver_local`` (here: ``deliver``). What this module adds
is closing the subscribe/replay race across nodes, which the in-memory history
closes with one lock around offset, append and fan-out:

``subscribe_json`` registers the subscription with a *buffer* for that
(outbox, pair), waits until the broker has the channel (``interest_added``
returns once Redis confirmed), then reads the stream's top and the messages
after ``since`` in one atomic look. Live deliveries arriving meanwhile go to
the buffer. Then, under ``_lock``: the replay, the ``subscribed:`` reply with
the top as boundary, the buffered deliveries past the boundary; the buffer
becomes a *floor* (the boundary), and later deliveries at or below it are
dropped for that outbox (they were published before the read, so they are in
the replay or before ``since``). The first delivery past the floor removes it:
from then on the channel's order (the script's order: offsets ascending) keeps
the outbox in step. So a publish racing the subscribe lands exactly once.

Threads and locks: ``_lock`` guards ``_catching`` and is held from looking up a
delivery's subscribers to queueing its frames, or an envelope's deliveries
(``deliver_run``, ``deliver_own``, ``deliver_remote``: one look-up and one hold for all of them;
on the Redis listener's thread;
on the Redis sender's for a publish Redis did not take, delivered here only), and
by ``subscribe_json`` around the switch from buffer to floor; never across I/O
(frames are written after it is let go: ``Writer.batch``, flat combining in
``writer.py``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..brokers.base import ENCODED, HistoryUnavailable, Landed, OwnRun, SharedHistory, Stamped, Stored, own_deliveries
from ..exceptions import ProtocolError
from ..frames import text_frame, text_frames
from ..history import within_bytes
from ..protocol import (
    Delivery,
    ErrorCode,
    Position,
    Since,
    encode_history_reply,
    encode_subscribed,
    with_position,
)
from .answers import wait_for_answer

if TYPE_CHECKING:
    from ..brokers.redis_codec import RemoteRun  # (only a Redis broker's listener calls deliver_remote)
    from .hub import Hub
    from .writer import Outbox

__all__ = ["SharedStreams"]

logger = logging.getLogger("rusty_ws.server")

Key = tuple[str, str]
#: Seconds a publish with an id waits for Redis's answer before it is answered ``unavailable``.
ANSWER_TIMEOUT = 20.0
#: Bytes of frames ``deliver_run`` joins into one writer job (an envelope's deliveries, up to
#: ~256 KiB in all). The writer always takes a lone job whatever its size, so a job is kept
#: small beside ``RUSTY_WS_MAX_QUEUED_BYTES``: the slow-consumer bound means what it says.
RUN_JOB_BYTES = 64 * 1024


#: ``publish``'s answer to a publish without id (one tuple for all: nothing is known yet, nothing changes it).
_NOT_LANDED_YET = (Landed(None, None), False)


def send_run(send: Callable[[bytes, Any], Any], texts: list[bytes], subscribers: Any) -> None:
    """Queue the text frames of ``texts`` to ``subscribers`` with ``send`` (the writer's), joined into one
    job per ``RUN_JOB_BYTES``: a run of deliveries costs the writer a few jobs, not one per delivery."""
    framed = text_frames(texts)
    if len(framed) == 1 or sum(map(len, framed)) < RUN_JOB_BYTES:  # the usual run: one job, no loop per frame
        send(framed[0] if len(framed) == 1 else b"".join(framed), subscribers)
        return
    frames: list[bytes] = []
    size = 0
    for frame in framed:
        frames.append(frame)
        size += len(frame)
        if size >= RUN_JOB_BYTES:
            send(b"".join(frames), subscribers)
            frames, size = [], 0
    if frames:
        send(frames[0] if len(frames) == 1 else b"".join(frames), subscribers)


@dataclass
class _CatchUp:
    """One outbox joining a pair: buffering live deliveries (``buffer``), then dropping those up to ``floor``."""

    buffer: list[tuple[Delivery, bytes]] | None = field(default_factory=list)
    floor: Position | None = None


class SharedStreams:
    """The hub's use of a ``SharedHistory`` (see the module's docstring)."""

    def __init__(self, hub: "Hub", store: SharedHistory) -> None:
        self.hub = hub
        self.store = store
        self._lock = threading.Lock()
        self._catching: dict[Key, dict[Any, _CatchUp]] = {}

    # ------------------------------------------------------------------ publishing

    def publish(self, delivery: Delivery, publish_id: str | None,
                answer: Callable[[Any], None] | None = None) -> tuple[Landed, bool] | None:
        """``Hub.publish`` with the shared history: queued to the broker's sender; never delivered here directly.

        With an id, ``answer`` is called once Redis answered (on the sender's thread) with
        ``(landed, repeat)`` or a ``ProtocolError`` (``unavailable``); without ``answer``
        this waits for it and returns it. The position is Redis's.

        Raises:
            ProtocolError: ``invalid_message`` (not sent); without ``answer``, ``unavailable``.
        """
        if publish_id is None:
            self.store.publish(delivery, None, None)
            return _NOT_LANDED_YET
        if answer is None:
            return self._publish_and_wait(delivery, publish_id)
        reply = answer

        def on_done(result: Stamped | BaseException) -> None:
            if isinstance(result, BaseException):
                reply(ProtocolError(ErrorCode.UNAVAILABLE, "Redis did not take the publish; retry with the same id"))
            else:
                reply((Landed(result.position, None), result.repeat))

        self.store.publish(delivery, publish_id, on_done)
        return None

    def _publish_and_wait(self, delivery: Delivery, publish_id: str) -> tuple[Landed, bool]:
        return wait_for_answer(lambda answer: self.publish(delivery, publish_id, answer), ANSWER_TIMEOUT,
                               "Redis did not answer in time; retry with the same id")

    def deliver(self, delivery: Delivery) -> Landed:
        """``Hub.deliver_local``: hand a delivery (with Redis's offset, or none) to this node's subscribers."""
        key = (delivery.topic, delivery.session_id)
        data = _encoded(delivery)
        hub = self.hub
        with hub.writer.batch(), self._lock:
            subscribers = hub.registry.subscribers(*key)
            if self._catching.get(key):
                subscribers = self._joining_locked(key, delivery, data, subscribers)
            if subscribers:
                hub._send_delivery(data, subscribers)
        position = Position(delivery.offset, delivery.epoch) if delivery.offset is not None and delivery.epoch else None
        return Landed(position, len(subscribers))

    def deliver_own(self, run: OwnRun) -> None:
        """``Broker.deliver_own``: ``deliver_run`` for a run of this node's own publishes back from Redis.

        The usual case (no subscriber joining the pair) frames each from the encoding kept
        when it was published, with the run's position spliced in (``_framed_run``): no
        ``Delivery`` is made. Otherwise ``deliver_run``'s road (``own_deliveries``).
        """
        key, epoch, first, published = run
        if None not in published:  # the usual run: every publish still to deliver here
            encodings = list(enumerate(published, first))
        else:
            encodings = [(offset, encoded) for offset, encoded in enumerate(published, first) if encoded is not None]
        if self._framed_run(key, epoch, encodings):
            return
        deliveries = own_deliveries(run)
        if deliveries:
            self.deliver_run(deliveries)

    def deliver_remote(self, run: RemoteRun) -> None:
        """``Broker.deliver_remote``: ``deliver_run`` for another node's run from Redis (a version-5 envelope).

        As ``deliver_own``: usually framed from the encodings the listener made of the
        checked envelope, the position spliced in, no ``Delivery`` each; a subscriber
        joining the pair takes ``deliver_run``'s road.
        """
        if not self._framed_run(run.key, run.epoch, list(enumerate(run.encodings, run.first))):
            from ..brokers.redis_codec import remote_deliveries  # a hub without Redis never loads the codec
            self.deliver_run(remote_deliveries(run))

    def _framed_run(self, key: Key, epoch: str, encodings: list[tuple[int, bytes]]) -> bool:
        """Queue each (offset, encoding without position) of ``key``'s run to its subscribers, the position
        spliced in (``with_position``'s bytes, the epoch's part made once); False (nothing done) while an
        outbox is joining the pair: then the caller takes ``deliver_run``'s road. With an outbox that
        compresses, each delivery is sent as ``deliver_run`` sends it then (``Hub._send_delivery``)."""
        hub = self.hub
        if self._catching.get(key):  # (a read of a dict: checked again below)
            return False
        # The epoch is the script's, checked to be hex (own_run_header, redis_codec): nothing to escape.
        tail = b',"epoch":"%s"}' % epoch.encode("ascii")
        texts = [b'%s,"offset":%d%s' % (encoded[:-1], offset, tail) for offset, encoded in encodings]
        with hub.writer.batch(), self._lock:
            if self._catching.get(key):
                return False
            subscribers = hub.registry.subscribers(*key)
            if subscribers and texts:
                if hub._compressing:  # a compressed frame for each delivery (no context takeover)
                    for text in texts:
                        hub._send_delivery(text, subscribers)
                else:
                    send_run(hub.writer.send, texts, subscribers)
        return True

    def deliver_run(self, deliveries: list[Delivery]) -> None:
        """``Hub.deliver_run``: ``deliver`` for consecutive deliveries of one pair, oldest first (one envelope).

        One look-up of the subscribers, one hold of ``_lock``, and their frames queued
        together, in order, as one writer job per ``RUN_JOB_BYTES`` (not one per delivery):
        what a listener's envelope brings costs its deliveries' encoding, not the road
        each would take alone. Subscribers joining the pair (``_catching``) take the
        deliveries one by one, as ``deliver`` does.
        """
        first = deliveries[0]
        key = (first.topic, first.session_id)
        hub = self.hub
        with hub.writer.batch(), self._lock:
            subscribers = hub.registry.subscribers(*key)
            if self._catching.get(key):
                for delivery in deliveries:
                    data = _encoded(delivery)
                    # The joining end (in step) as the run goes on: then to every subscriber.
                    live = self._joining_locked(key, delivery, data, subscribers) if key in self._catching \
                        else subscribers
                    if live:
                        hub._send_delivery(data, live)
                return
            if not subscribers:
                return
            if hub._compressing:  # a compressed frame for each delivery (no context takeover)
                for delivery in deliveries:
                    hub._send_delivery(_encoded(delivery), subscribers)
                return
            send_run(hub.writer.send, [_encoded(delivery) for delivery in deliveries], subscribers)

    def _joining_locked(self, key: Key, delivery: Delivery, data: bytes,
                        subscribers: tuple[Any, ...]) -> tuple[Any, ...]:
        """Of ``subscribers``, those to send ``delivery`` to now, given the outboxes joining ``key``.

        A joining outbox still buffering keeps the delivery; one past its replay takes it
        only above its floor, and is in step (no longer joining) from the first it takes.
        """
        assert self._lock.locked(), "must hold the shared streams' lock"
        catching = self._catching[key]
        live = []
        for box in subscribers:
            joining = catching.get(box)
            if joining is None:
                live.append(box)
            elif joining.buffer is not None:
                joining.buffer.append((delivery, data))
            elif not _past(delivery, joining.floor):
                continue  # in the replay already (or before its since)
            else:
                if delivery.offset is not None:
                    del catching[box]  # in step from now on
                live.append(box)
        if not catching:
            del self._catching[key]
        return tuple(live)

    # ------------------------------------------------------------------ subscribing and reading

    def subscribe_json(self, outbox: "Outbox", topic: str, session_id: str, since: Since | None) -> None:
        """``Hub.subscribe_json`` with the shared history (see the module's docstring for the order).

        While Redis is unreachable: subscribed, answered without offset and ``recovered: false``.

        Raises:
            ProtocolError: ``invalid_since``, ``too_many_subscriptions``.
        """
        key = (topic, session_id)
        hub = self.hub
        with self._lock:
            had = key in hub.registry.subscriptions_of(outbox)
            hub.registry.subscribe(outbox, topic, session_id)
            if since is not None or not had:  # a subscription going on without since keeps every delivery
                self._catching.setdefault(key, {})[outbox] = _CatchUp()
        # Always: the listener confirms the channel even when another outbox subscribed to it first.
        hub.broker.interest_added(key)
        try:
            stored = self.store.read(key, since, hub.settings.history_size)
        except HistoryUnavailable as exc:
            logger.warning("subscribe-json to %s@%s answered without recovery: %s", topic[:200], session_id[:200], exc)
            stored = None
        gone = False
        with hub.writer.batch(), self._lock:
            joining = self._catching.get(key, {}).pop(outbox, None)
            buffered = joining.buffer if joining is not None and joining.buffer is not None else []
            if stored is None:
                hub.writer.send_to(outbox, text_frame(encode_subscribed(topic, session_id,
                                                                        recovered=False if since else None)))
                self._flush(outbox, key, buffered, None)
                return
            top = stored.top
            invalid = since is not None and since.epoch == top.epoch and since.offset > top.offset
            if invalid:
                if had:
                    self._flush(outbox, key, buffered, None)
                else:
                    self._forget_locked(outbox, key)
                    gone = hub.registry.unsubscribe(outbox, topic, session_id)
            else:
                self._replay_locked(outbox, key, since, stored, buffered, joining is not None)
        if invalid:
            if gone:
                hub.broker.interest_removed(key)
            assert since is not None
            raise ProtocolError(ErrorCode.INVALID_SINCE, f"offset {since.offset} is past this stream's {top.offset}")

    def _replay_locked(self, outbox: "Outbox", key: Key, since: Since | None, stored: Stored,
                       buffered: list[tuple[Delivery, bytes]], joined: bool) -> None:
        """Queue the replay (within the outbox's budget), the ``subscribed:`` reply, then what was buffered past it.

        ``joined``: live deliveries were buffered meanwhile, so those up to the top are dropped.
        """
        assert self._lock.locked(), "must hold the shared streams' lock"
        hub = self.hub
        top = stored.top
        recovered = None
        if since is not None:
            budget = hub._replay_budget(outbox)
            recovered = stored.complete
            spent = 0
            for message in stored.messages:
                frame = hub._frame_for(outbox, message.encode())
                spent += len(frame)
                if spent > budget:
                    recovered = False
                    break
                hub.writer.send_to(outbox, frame)
        reply = encode_subscribed(key[0], key[1], top.offset, top.epoch, recovered)
        hub.writer.send_to(outbox, text_frame(reply))
        self._flush(outbox, key, buffered, top if joined else None)

    def _flush(self, outbox: "Outbox", key: Key, buffered: list[tuple[Delivery, bytes]], floor: Position | None) -> None:
        """Send what was buffered past ``floor``; keep ``floor`` for deliveries still on their way."""
        assert self._lock.locked(), "must hold the shared streams' lock"
        hub = self.hub
        for delivery, data in buffered:
            if _past(delivery, floor):
                hub.writer.send_to(outbox, hub._frame_for(outbox, data))
                if delivery.offset is not None:
                    floor = None  # in step
        if floor is not None:
            self._catching.setdefault(key, {})[outbox] = _CatchUp(buffer=None, floor=floor)

    def history_of(self, topic: str, session_id: str, limit: int | None, since: Since | None) -> bytes:
        """``Hub.history_of`` read from the shared stream.

        Raises:
            ProtocolError: ``invalid_since``; ``unavailable`` while Redis is unreachable.
        """
        size = self.hub.settings.history_size
        try:
            stored = self.store.read((topic, session_id), since, min(limit or size, size))
        except HistoryUnavailable:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "the history in Redis cannot be read now; retry") from None
        top = stored.top
        if since is not None and since.epoch == top.epoch and since.offset > top.offset:
            raise ProtocolError(ErrorCode.INVALID_SINCE, f"offset {since.offset} is past this stream's {top.offset}")
        messages = within_bytes([message.encode() for message in stored.messages], self.hub.history_reply_budget,
                                newest=since is None)
        return encode_history_reply(topic, session_id, top.offset, top.epoch, messages)

    def forget(self, outbox: "Outbox", keys: list[Key] | set[Key]) -> None:
        """``outbox`` left these pairs (unsubscribed or gone): drop what was kept for it."""
        if not self._catching:
            return
        with self._lock:
            for key in keys:
                self._forget_locked(outbox, key)

    def _forget_locked(self, outbox: "Outbox", key: Key) -> None:
        catching = self._catching.get(key)
        if catching is not None:
            catching.pop(outbox, None)
            if not catching:
                del self._catching[key]


def _encoded(delivery: Delivery) -> bytes:
    """``delivery.encode()``; with a str payload and a position, the same bytes in about half the time
    (encoded without position on ``Delivery.encode``'s fast path, the position spliced in: an epoch
    from Redis is checked to be hex, ``redis_codec.is_epoch``, which needs no escaping); this node's own
    publish coming back from Redis has its encoding with it (``extra[ENCODED]``, ``RedisHistory.take_own``)."""
    if delivery.offset is None or delivery.epoch is None:
        return delivery.encode()
    if delivery.extra:
        encoded = delivery.extra.get(ENCODED)  # this node's own publish, as it was encoded then
        if encoded is not None:
            return with_position(encoded, delivery.offset, delivery.epoch)
    if type(delivery.payload) is not str:
        return delivery.encode()
    bare = Delivery(delivery.publisher_name, delivery.topic, delivery.payload, delivery.timestamp,
                    delivery.session_id, delivery.user)
    return with_position(bare.encode(), delivery.offset, delivery.epoch)


def _past(delivery: Delivery, floor: Position | None) -> bool:
    """Whether ``delivery`` comes after ``floor`` (no floor, no offset, or another epoch: yes)."""
    if floor is None or delivery.offset is None or delivery.epoch != floor.epoch:
        return True
    return delivery.offset > floor.offset
