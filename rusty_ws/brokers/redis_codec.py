"""The Redis broker's wire formats, as pure functions: channel names, the envelope, the URL option.

No Redis, no sockets, no threads: ``redis.py`` does the I/O, and the tests
check these with literal values. ``docs/scaling.md`` explains the choices.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..exceptions import ProtocolError
from ..protocol import MAX_JSON_DEPTH, Delivery, ErrorCode, dumps_utf8, loads_strict, nested_deeper_than
from .base import ENCODED, Key
from .redis_slots import partition_of, partition_tags

__all__ = [
    "DEFAULT_CHANNEL_PREFIX",
    "ENVELOPE_VERSION",
    "MAX_ENVELOPE_DEPTH",
    "HISTORY_ENVELOPE_VERSION",
    "BATCH_ENVELOPE_VERSION",
    "PLAIN_BATCH_ENVELOPE_VERSION",
    "RUN_ENVELOPE_VERSION",
    "own_envelope_prefix",
    "own_run_header",
    "own_run_header_text",
    "merge_envelopes",
    "PairKeys",
    "session_tag",
    "pair_keys",
    "publish_id_key",
    "channel_name",
    "key_of_channel",
    "decode_stream_entry",
    "decode_stream_run",
    "is_epoch",
    "control_channel",
    "encode_envelope",
    "checked_envelope",
    "checked_encoding",
    "decode_envelope",
    "decode_envelopes",
    "decode_received",
    "RemoteRun",
    "remote_deliveries",
    "split_url",
    "shard_channel_name",
    "shard_control_channel",
    "ClusterUrl",
    "split_cluster_url",
]

#: The first part of every channel name; ``?channel_prefix=`` in the URL changes it.
DEFAULT_CHANNEL_PREFIX = "rusty_ws"
#: Version of the envelope published on Redis; a node drops envelopes of other versions.
ENVELOPE_VERSION = 1
#: Deepest nesting in an envelope: a delivery's (``protocol.MAX_JSON_DEPTH``, the limit of
#: every publish) inside the envelope's own object.
MAX_ENVELOPE_DEPTH = MAX_JSON_DEPTH + 1


#: Version of the envelopes the history script published before it ran for several publishes at once:
#: a delivery with its offset and epoch (still read, from nodes not upgraded yet).
HISTORY_ENVELOPE_VERSION = 2
#: Version of the envelopes the history script published before version 5 (still read): one epoch and a
#: list of ``items``, each a delivery with its offset and the sending node's number for it.
BATCH_ENVELOPE_VERSION = 3
#: Most items (deliveries) in one version-3 (version-5) envelope (the script makes at most ``redis_sender.MAX_MERGE``).
MAX_ENVELOPE_ITEMS = 10_000
#: Version of the envelope of several deliveries without history (``deliveries``): consecutive
#: publishes of one pair that a node's sender merged into one PUBLISH (``merge_envelopes``).
PLAIN_BATCH_ENVELOPE_VERSION = 4
#: Version of the envelopes the history script publishes now, for one run of it (consecutive new
#: publishes of one pair): ``{"v":5,"node":N,"epoch":E,"first":F,"seqs":[...],"deliveries":[...]}``, the
#: deliveries at offsets F, F+1, ..., each with the sending node's number at the same index of ``seqs``.
#: Everything but the deliveries comes first, so the sending node reads its own envelopes' header
#: only (``own_run_header``): it kept what it sent.
RUN_ENVELOPE_VERSION = 5
_VERSIONS = (ENVELOPE_VERSION, HISTORY_ENVELOPE_VERSION, BATCH_ENVELOPE_VERSION, PLAIN_BATCH_ENVELOPE_VERSION,
             RUN_ENVELOPE_VERSION)
#: What follows ``own_envelope_prefix(node, RUN_ENVELOPE_VERSION)`` in a version-5 envelope, up to its deliveries.
_RUN_HEADER = re.compile(rb'"epoch":"([0-9a-f]{1,64})","first":([1-9][0-9]{0,15}),"seqs":\[([0-9][0-9,]*)\],'
                         rb'"deliveries":\[')
_EPOCH = re.compile(r"[0-9a-f]{1,64}")
_json_str = json.encoder.encode_basestring  # as protocol.Delivery.encode encodes a str field
_ENTRY_ID = re.compile(rb"([1-9][0-9]{0,15})-0")


class PairKeys(NamedTuple):
    """Where one (topic, session) pair lives in Redis; all three share its session's hash tag."""

    #: The pub/sub channel its deliveries go out on.
    channel: bytes
    #: The Redis Stream of its retained messages (entry id ``{offset}-0``, fields ``d`` and ``t``).
    stream: bytes
    #: The hash beside it: ``e`` its epoch, ``o`` its top offset.
    meta: bytes


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _pair_tail(topic: str, session_id: str) -> bytes:
    topic_bytes = _utf8(topic)
    return b"%d:%s:%s" % (len(topic_bytes), topic_bytes, _utf8(session_id))


def pair_keys(prefix: str, topic: str, session_id: str) -> PairKeys:
    """The channel, stream and meta key of (topic, session), one place for the key layout.

    ``{prefix}:{tag}:{len(topic)}:{topic}:{session}`` is the channel; the stream and
    the meta hash put ``s:`` and ``m:`` after the tag. The topic's length (in UTF-8
    bytes) says where the topic ends, so the names are unambiguous for any topic and
    session (``:`` included); lone surrogates are kept (``surrogatepass``).
    """
    head = b"%s:%s:" % (prefix.encode("utf-8"), session_tag(prefix, session_id).encode("ascii"))
    tail = _pair_tail(topic, session_id)
    return PairKeys(head + tail, head + b"s:" + tail, head + b"m:" + tail)


def publish_id_key(prefix: str, session_id: str, publish_id: str) -> bytes:
    """The key that remembers a publish id of a session: ``{prefix}:{tag}:id:{len}:{session}:{id}``."""
    session_bytes = _utf8(session_id)
    return b"%s:%s:id:%d:%s:%s" % (prefix.encode("utf-8"), session_tag(prefix, session_id).encode("ascii"),
                                   len(session_bytes), session_bytes, _utf8(publish_id))


@functools.lru_cache(maxsize=4096)
def channel_name(prefix: str, topic: str, session_id: str) -> bytes:
    """The Redis channel of (topic, session) (``pair_keys``'s ``channel``).

    Remembered for the pairs in use: every publish without history asks for its channel on
    the publisher's thread, and making it (the session's tag, three encodings) cost ~5% of it.
    """
    return pair_keys(prefix, topic, session_id).channel


def key_of_channel(prefix: str, channel: bytes) -> Key | None:
    """The (topic, session) of a channel made by ``channel_name``, or None for any other channel."""
    head = prefix.encode("utf-8") + b":"
    if not channel.startswith(head):
        return None
    tag, colon, pair = channel[len(head):].partition(b":")
    length_text, colon, rest = pair.partition(b":")
    if not colon or not length_text.isdigit() or length_text != b"%d" % int(length_text):
        return None
    length = int(length_text)
    if len(rest) < length + 1 or rest[length:length + 1] != b":":
        return None
    try:
        key = (rest[:length].decode("utf-8", "surrogatepass"), rest[length + 1:].decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:
        return None
    return key if tag == session_tag(prefix, key[1]).encode("ascii") else None


def is_epoch(value: Any) -> bool:
    """Whether ``value`` is an epoch the Redis history makes (lower-case hex, 1 to 64 digits)."""
    return isinstance(value, str) and _EPOCH.fullmatch(value) is not None


def control_channel(prefix: str, node_id: str) -> bytes:
    """The node's own channel, used only to wake its listener.

    ``{prefix}:node:{node_id}`` can never be a (topic, session) channel: those
    have digits where this has ``node``.
    """
    return f"{prefix}:node:{node_id}".encode()


def encode_envelope(node_id: str, delivery: Delivery, encoded: bytes | None = None) -> bytes:
    """What a node PUBLISHes: the delivery, and which node sent it.

    The bytes of ``dumps_utf8({"v": 1, "node": node_id, "delivery": delivery.to_dict()})``,
    made from ``delivery.encode()`` (its fast path; ``encoded`` if the caller has it) and the
    node's prefix, remembered.
    """
    return b"%s\"delivery\":%s}" % (own_envelope_prefix(node_id), delivery.encode() if encoded is None else encoded)


def checked_envelope(node_id: str, delivery: Delivery, max_size: int | None) -> bytes:
    """``encode_envelope``, refused before anyone gets it when no node would accept it (``checked_encoding``)."""
    return checked_encoding(node_id, delivery, max_size)[1]


def checked_encoding(node_id: str, delivery: Delivery, max_size: int | None) -> tuple[bytes, bytes]:
    """``delivery.encode()`` and its ``encode_envelope``, refused before anyone gets it when no node
    would accept it: the publishing node frames the first for its own subscribers, not encoding it again.

    Raises:
        ProtocolError: ``invalid_message``: the payload cannot be encoded, or the
            envelope would be larger than ``max_size`` (what every node's listener accepts).
    """
    try:
        encoded = delivery.encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"the payload is not JSON: {exc}") from None
    envelope = encode_envelope(node_id, delivery, encoded)
    if max_size is not None and len(envelope) > max_size:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                            f"the message would be {len(envelope)} bytes on Redis, more than the "
                            f"{max_size} any node accepts")
    return encoded, envelope


@functools.lru_cache(maxsize=64)
def own_envelope_prefix(node_id: str, version: int = ENVELOPE_VERSION) -> bytes:
    """How every envelope of ``node_id`` without history (version 1 or 4) starts: the listener
    drops its own before decoding them (it delivered them here when they were published)."""
    return dumps_utf8({"v": version, "node": node_id})[:-1] + b","


def own_run_header_text(data: bytes, prefix: bytes) -> tuple[str, int, bytes] | None:
    """``own_run_header`` with the node's numbers as the envelope spells them (``b"7,8,9"``), not
    parsed: what this node sent for a run it kept whole is compared with them as they are."""
    match = _RUN_HEADER.match(data, len(prefix))
    if match is None or not data.endswith(b"]}"):
        return None
    return match.group(1).decode("ascii"), int(match.group(2)), match.group(3)


def own_run_header(data: bytes, prefix: bytes) -> tuple[str, int, list[int]] | None:
    """The epoch, first offset and node's numbers of a version-5 envelope that starts with ``prefix``
    (``own_envelope_prefix(node, RUN_ENVELOPE_VERSION)``), read without decoding its deliveries;
    None if its header is not one the history script writes (then decode it whole)."""
    match = _RUN_HEADER.match(data, len(prefix))
    if match is None or not data.endswith(b"]}"):
        return None
    try:
        seqs = list(map(int, match.group(3).split(b",")))
    except ValueError:  # ",," or a trailing comma
        return None
    first = int(match.group(2))
    if len(seqs) > MAX_ENVELOPE_ITEMS or first + len(seqs) > 2 ** 53:
        return None
    return match.group(1).decode("ascii"), first, seqs


def merge_envelopes(node_id: str, envelopes: list[bytes]) -> bytes:
    """One version-4 envelope of the deliveries of ``envelopes`` (version 1, all of ``node_id``), in order.

    The deliveries' bytes are cut out of their envelopes, not encoded again.

    Raises:
        ValueError: an envelope is not one ``encode_envelope`` made for ``node_id``.
    """
    head = own_envelope_prefix(node_id) + b'"delivery":'
    deliveries = []
    for envelope in envelopes:
        if not envelope.startswith(head) or not envelope.endswith(b"}"):
            raise ValueError("not an envelope of this node")
        deliveries.append(envelope[len(head):-1])
    return b"%s\"deliveries\":[%s]}" % (own_envelope_prefix(node_id, PLAIN_BATCH_ENVELOPE_VERSION),
                                       b",".join(deliveries))


def decode_envelope(data: bytes, key: Key, max_size: int | None = None) -> tuple[str, Delivery]:
    """``decode_envelopes`` for an envelope of one delivery (ValueError for one of several)."""
    node, deliveries = decode_envelopes(data, key, max_size)
    if len(deliveries) != 1:
        raise ValueError(f"an envelope of {len(deliveries)} deliveries, expected one")
    return node, deliveries[0]


def decode_envelopes(data: bytes, key: Key, max_size: int | None = None) -> tuple[str, list[Delivery]]:
    """The sending node and the deliveries of an envelope read from ``key``'s channel.

    Version 1 is what a node publishes without Redis history (one delivery), version 4
    what its sender makes of several of one pair (``deliveries``); version 2
    what the history script of earlier releases published (one delivery with its
    ``offset`` and ``epoch``); version 3 what it published before version 5: an ``epoch`` and
    ``items``, each a delivery with its ``offset`` and ``seq`` (the sending node's
    number for it), offsets ascending; version 5 what it publishes now: an ``epoch``, the
    ``first`` offset, ``seqs`` and as many ``deliveries``, at offsets ``first``, ``first`` + 1, ...
    (the sending node reads only the header of its own: ``own_run_header``). A version this node does not know is refused:
    a node of another release never has its envelopes misread, they are dropped and logged.

    Args:
        max_size: the largest envelope a node sends, in bytes (None: no limit). Checked
            first, before anything is decoded.

    Raises:
        ValueError: ``data`` is not an envelope a rusty_ws node would send on that channel:
            larger than ``max_size``, not UTF-8 JSON, nested deeper than
            ``MAX_ENVELOPE_DEPTH`` (one more for the deliveries of versions 3 to 5), or not shaped like one.
    """
    return _decoded(data, key, max_size, None)  # type: ignore[return-value]  # no node_id: never a RemoteRun


class RemoteRun(NamedTuple):
    """Another node's version-5 envelope, checked, its deliveries encoded for framing (``Broker.deliver_remote``).

    No ``Delivery`` is made for them: each delivery's encoding (``Delivery.encode``'s very
    bytes of what ``decode_envelopes`` would make of it) is made from the decoded object
    directly, and the hub splices each offset in. ``remote_deliveries`` makes the
    ``Delivery`` objects when a road needs them (a subscriber joining the pair).
    """

    key: Key
    epoch: str
    #: The offset of the first delivery; the others follow at +1, +2, ...
    first: int
    #: Each delivery's encoding without position, oldest first.
    encodings: list[bytes]
    #: The decoded delivery objects, checked (``remote_deliveries`` reads them).
    messages: list[dict[str, Any]]


def remote_deliveries(run: RemoteRun) -> list[Delivery]:
    """The deliveries of ``run``, each with its offset and epoch and its encoding (``extra[ENCODED]``)."""
    key, epoch = run.key, run.epoch
    return [Delivery(*_fields_of(message, key), offset, epoch, {ENCODED: encoded})
            for offset, (message, encoded) in enumerate(zip(run.messages, run.encodings), run.first)]


def decode_received(data: bytes, key: Key, max_size: int | None,
                    node_id: str | None) -> tuple[str, list[Delivery] | RemoteRun]:
    """``decode_envelopes``, but another node's version-5 envelope (its ``node`` not ``node_id``) comes as a
    ``RemoteRun``, checked as ``decode_envelopes`` checks it, without a ``Delivery`` each.

    Raises:
        ValueError: as ``decode_envelopes``.
    """
    return _decoded(data, key, max_size, node_id)


def _decoded(data: bytes, key: Key, max_size: int | None,
             node_id: str | None) -> tuple[str, list[Delivery] | RemoteRun]:
    if max_size is not None and len(data) > max_size:
        raise ValueError(f"{len(data)} bytes, more than the {max_size} an envelope may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    # The depth is checked for each version below, once (an envelope of many deliveries has more
    # brackets than any limit, and a walk of it costs about as much as its decoding).
    envelope = loads_strict(text, MAX_ENVELOPE_DEPTH + 2, walk=False)
    brackets = text.count("[") + text.count("{")  # at least one per array or object
    if not isinstance(envelope, dict):
        raise ValueError("not a JSON object")
    version = envelope.get("v")
    if version not in _VERSIONS or isinstance(version, bool):
        raise ValueError(f"envelope version {version!r}, expected one of {_VERSIONS}")
    node = envelope.get("node")
    if not isinstance(node, str):
        raise ValueError("an envelope needs a 'node' string")
    if version == RUN_ENVELOPE_VERSION:
        if node_id is not None and node != node_id:
            return node, _remote_run_of(envelope, brackets, key)
        return node, _run_of(envelope, brackets, node, key)
    if version == BATCH_ENVELOPE_VERSION:
        # A version 3's deliveries sit two levels deeper (in an item of a list): the same limit for them.
        if brackets > MAX_ENVELOPE_DEPTH + 2 and nested_deeper_than(envelope, MAX_ENVELOPE_DEPTH + 2):
            raise ValueError(f"JSON nested deeper than {MAX_ENVELOPE_DEPTH + 2} levels")
        return node, _batch_of(envelope, node, key)
    if version == PLAIN_BATCH_ENVELOPE_VERSION:
        messages = envelope.get("deliveries")
        if not isinstance(messages, list) or not messages or len(messages) > MAX_ENVELOPE_ITEMS:
            raise ValueError(f"a version-4 envelope needs from 1 to {MAX_ENVELOPE_ITEMS} deliveries")
        if not all(type(message) is dict for message in messages):
            raise ValueError("a delivery is not a JSON object")
        # The envelope, its list and one object each: as many brackets as that, nothing nests (see _run_checked).
        if brackets > MAX_ENVELOPE_DEPTH + 1 and brackets != 2 + len(messages) and \
                nested_deeper_than(envelope, MAX_ENVELOPE_DEPTH + 1):
            raise ValueError(f"JSON nested deeper than {MAX_ENVELOPE_DEPTH + 1} levels")
        return node, [_delivery_of(message, key) for message in messages]
    if brackets > MAX_ENVELOPE_DEPTH and nested_deeper_than(envelope, MAX_ENVELOPE_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_ENVELOPE_DEPTH} levels")
    message = envelope.get("delivery")
    if not isinstance(message, dict):
        raise ValueError("an envelope needs a 'delivery' object")
    if version == ENVELOPE_VERSION:
        return node, [_delivery_of(message, key)]
    offset, epoch = envelope.get("offset"), envelope.get("epoch")
    if not _is_offset(offset) or not is_epoch(epoch):
        raise ValueError(f"a version-2 envelope needs an offset and an epoch, not {offset!r} and {epoch!r}")
    delivery = _delivery_of(message, key, offset, epoch)
    seq = envelope.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool):  # the sending node's number for it
        delivery.extra.update(node=node, seq=seq)
    return node, [delivery]


def _run_of(envelope: dict[str, Any], brackets: int, node: str, key: Key) -> list[Delivery]:
    """The deliveries of a version-5 envelope: at offsets ``first``, ``first`` + 1, ..., each with its ``seq``."""
    epoch, first, seqs, messages = _run_checked(envelope, brackets)
    deliveries = []
    for offset, (seq, message) in enumerate(zip(seqs, messages), first):
        delivery = _delivery_of(message, key, offset, epoch)
        delivery.extra.update(node=node, seq=seq)
        deliveries.append(delivery)
    return deliveries


def _remote_run_of(envelope: dict[str, Any], brackets: int, key: Key) -> RemoteRun:
    """Another node's version-5 envelope as a ``RemoteRun``: checked as ``_run_of`` checks it, each delivery
    encoded from its object (``seqs`` are the sending node's own business: not kept)."""
    epoch, first, _, messages = _run_checked(envelope, brackets)
    topic, session_id = key
    # Delivery.encode's fast-path text, the pair's two fields encoded once for the run.
    pair = f'"topic":{_json_str(topic)},'
    session = f',"session_id":{_json_str(session_id)}'
    encodings = []
    for message in messages:
        get = message.get  # the checks of _delivery_of, inline (a delivery's work is this loop)
        name, payload, stamp, user = get("publisher_name"), get("payload"), get("timestamp"), get("user")
        if get("topic") != topic or get("session_id") != session_id or type(name) is not str \
                or type(stamp) is not str or type(payload) is not str or (user is not None and type(user) is not str):
            encodings.append(_delivery_of(message, key).encode())  # raises for a bad one; a payload not a str
            continue
        encoding = (f'{{"publisher_name":{_json_str(name)},{pair}"payload":{_json_str(payload)},'
                    f'"timestamp":{_json_str(stamp)}{session}'
                    + ("}" if user is None else f',"user":{_json_str(user)}}}'))
        try:
            encodings.append(encoding.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: Delivery.encode escapes it
            encodings.append(_delivery_of(message, key).encode())
    return RemoteRun(key, epoch, first, encodings, messages)


def _run_checked(envelope: dict[str, Any], brackets: int) -> tuple[str, int, list[Any], list[dict[str, Any]]]:
    """A version-5 envelope's epoch, first offset, seqs and delivery objects, checked (not the deliveries' fields).

    ``brackets``: how many ``[`` and ``{`` its text holds. The envelope, its two lists and one
    object per delivery are that many arrays and objects already: then nothing else nests (each
    array or object has its opening bracket), and the envelope is 3 deep without a walk of it.

    Raises:
        ValueError: not a version-5 envelope the history script writes.
    """
    epoch, first, seqs, messages = (envelope.get("epoch"), envelope.get("first"), envelope.get("seqs"),
                                    envelope.get("deliveries"))
    if not is_epoch(epoch) or not isinstance(first, int) or not _is_offset(first) \
            or not isinstance(messages, list) or not messages or len(messages) > MAX_ENVELOPE_ITEMS \
            or not isinstance(seqs, list) or len(seqs) != len(messages):
        raise ValueError("a version-5 envelope needs an epoch, a first offset, and from 1 to "
                         f"{MAX_ENVELOPE_ITEMS} deliveries with as many seqs")
    if not _is_offset(first + len(messages) - 1):
        raise ValueError(f"offsets from {first} past the largest")
    if not all(type(seq) is int for seq in seqs):  # (JSON's true is a bool, not an int)
        raise ValueError("a seq is not a number")
    if not all(type(message) is dict for message in messages):
        raise ValueError("a delivery is not a JSON object")
    if brackets > MAX_ENVELOPE_DEPTH + 2 and brackets != 3 + len(messages) and \
            nested_deeper_than(envelope, MAX_ENVELOPE_DEPTH + 1):
        raise ValueError(f"JSON nested deeper than {MAX_ENVELOPE_DEPTH + 1} levels")
    return epoch, first, seqs, messages  # type: ignore[return-value]  # the epoch is a str: is_epoch


def _batch_of(envelope: dict[str, Any], node: str, key: Key) -> list[Delivery]:
    """The deliveries of a version-3 envelope, each checked like a version 2's; offsets must ascend."""
    epoch, items = envelope.get("epoch"), envelope.get("items")
    if not is_epoch(epoch) or not isinstance(items, list) or not items or len(items) > MAX_ENVELOPE_ITEMS:
        raise ValueError("a version-3 envelope needs an epoch and from 1 to "
                         f"{MAX_ENVELOPE_ITEMS} items")
    deliveries = []
    last = 0
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("an item is not a JSON object")
        offset, seq, message = item.get("offset"), item.get("seq"), item.get("delivery")
        if not isinstance(offset, int) or not _is_offset(offset) or offset <= last:
            raise ValueError(f"an item's offset {offset!r} is not past the one before ({last})")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise ValueError(f"an item needs a 'seq' number, not {seq!r}")
        if not isinstance(message, dict):
            raise ValueError("an item needs a 'delivery' object")
        last = offset
        delivery = _delivery_of(message, key, offset, epoch)
        delivery.extra.update(node=node, seq=seq)
        deliveries.append(delivery)
    return deliveries


def _is_offset(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2 ** 53


def decode_stream_entry(entry: Any, key: Key, epoch: str, top: int, max_size: int | None = None) -> tuple[Delivery, int]:
    """One entry of a single delivery read from a pair's stream (``[b"{offset}-0", [b"d", delivery, b"t", ms]]``).

    Returns:
        The delivery with its offset and ``epoch``, and the Redis time it was added (ms).

    Raises:
        ValueError: not such an entry of that pair (``decode_stream_run``), or an entry of several.
    """
    run, added = decode_stream_run(entry, key, epoch, top, max_size)
    if len(run) != 1:
        raise ValueError(f"an entry of {len(run)} deliveries, not one")
    return run[0], added


def decode_stream_run(entry: Any, key: Key, epoch: str, top: int, max_size: int | None = None) -> tuple[list[Delivery], int]:
    """One entry read from a pair's stream: one delivery, or the run of k that one script run stored.

    ``[b"{last}-0", [b"d", data, b"t", ms]]``, ``data`` a delivery's JSON object (at offset
    ``last``: what every version of the script writes for a run of one), or a JSON array of
    k >= 2 deliveries at offsets ``last - k + 1`` to ``last`` (what the script writes since
    session 15 for a run of several). Readers of both tell the two apart by the first byte;
    an older node drops an array as an entry no node wrote, never misreads it.

    Returns:
        The deliveries with their offsets and ``epoch``, oldest first, and the Redis time they were added (ms).

    Raises:
        ValueError: not an entry the history script writes for that pair: another id, an
            offset past ``top`` or below 1, missing fields, more than ``max_size`` bytes, an
            empty array, or a delivery for another pair.
    """
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], bytes):
        raise ValueError("not a stream entry")
    match = _ENTRY_ID.fullmatch(entry[0])
    if match is None or int(match.group(1)) > top:
        raise ValueError(f"entry id {entry[0][:40]!r} is no offset up to the top {top}")
    last = int(match.group(1))
    fields = entry[1]
    if not isinstance(fields, (list, tuple)) or len(fields) % 2:
        raise ValueError("the entry's fields are not pairs")
    values = dict(zip(fields[::2], fields[1::2]))
    data, added = values.get(b"d"), values.get(b"t")
    if not isinstance(data, bytes) or not isinstance(added, bytes) or not added.isdigit() or len(added) > 16:
        raise ValueError("the entry needs a 'd' delivery and a 't' time")
    if max_size is not None and len(data) > max_size:
        raise ValueError(f"{len(data)} bytes, more than the {max_size} an entry may have")
    run = data[:1] == b"["
    try:
        message = loads_strict(data.decode("utf-8"), MAX_ENVELOPE_DEPTH + run)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if not run:
        if not isinstance(message, dict):
            raise ValueError("the delivery is not a JSON object")
        return [_delivery_of(message, key, last, epoch)], int(added)
    if not isinstance(message, list) or len(message) < 2:
        raise ValueError("a run entry must hold at least two deliveries")
    first = last - len(message) + 1
    if first < 1:
        raise ValueError(f"{len(message)} deliveries, more than the offsets up to its id {last}")
    deliveries = []
    for offset, item in enumerate(message, first):
        if not isinstance(item, dict):
            raise ValueError("a delivery of the run is not a JSON object")
        deliveries.append(_delivery_of(item, key, offset, epoch))
    return deliveries, int(added)


def _delivery_of(message: dict[str, Any], key: Key, offset: int | None = None, epoch: str | None = None) -> Delivery:
    """The delivery of a decoded object, checked to be one a node sends for ``key``.

    Raises:
        ValueError: it is for another pair, or a field has the wrong type.
    """
    return Delivery(*_fields_of(message, key), offset, epoch)


def _fields_of(message: dict[str, Any], key: Key) -> tuple[str, str, Any, str, str, str | None]:
    """``Delivery``'s first six fields of a decoded object, checked (``_delivery_of``).

    Raises:
        ValueError: it is for another pair, or a field has the wrong type.
    """
    get = message.get  # every received message comes through here: plain lookups, positional arguments
    topic, session_id = get("topic"), get("session_id")
    if topic != key[0] or session_id != key[1]:
        raise ValueError(f"a delivery for {(topic, session_id)!r} on the channel of {key!r}")
    topic, session_id = key  # the same strings, now typed
    publisher_name, timestamp, user = get("publisher_name"), get("timestamp"), get("user")
    if not isinstance(publisher_name, str) or not isinstance(timestamp, str):
        raise ValueError("'publisher_name' and 'timestamp' must be strings")
    if user is not None and not isinstance(user, str):
        raise ValueError("'user' must be a string or absent")
    if "payload" not in message:
        raise ValueError("no 'payload'")
    return publisher_name, topic, message["payload"], timestamp, session_id, user


def split_url(url: str) -> tuple[str, str]:
    """Split our own ``channel_prefix`` query option off a Redis URL (redis-py refuses it).

    Returns:
        The URL for redis-py, and the channel prefix.

    Raises:
        ValueError: the prefix is empty or holds a ``:``.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "channel_prefix"]
    prefix = prefixes[-1] if prefixes else DEFAULT_CHANNEL_PREFIX
    if not prefix or ":" in prefix:
        raise ValueError("channel_prefix must be non-empty and without ':'")
    rest = urlencode([(name, value) for name, value in query if name != "channel_prefix"])
    # Everything before the query as given: urlunsplit would turn unix:///path into unix:/path.
    head = url.split("#", 1)[0].split("?", 1)[0]
    return head + (f"?{rest}" if rest else "") + (f"#{parts.fragment}" if parts.fragment else ""), prefix


# --------------------------------------------------------------------------- Redis Cluster


def session_tag(prefix: str, session_id: str) -> str:
    """The hash tag, braces included, of every channel and key of ``session_id``: ``{p17.3}``.

    The session is hashed into one of ``redis_slots.PARTITIONS`` partitions, whose
    tags were picked so their slots spread evenly over the slot space (see
    ``redis_slots``). It depends on the session only, not the topic: a session's
    publish ids and streams then share one slot. ``prefix`` does not change it
    (deployments that share a cluster spread alike); it is taken so that every
    caller names keys the same way.
    """
    return "{" + partition_tags()[partition_of(session_id)] + "}"


def shard_channel_name(prefix: str, topic: str, session_id: str) -> bytes:
    """The shard channel of (topic, session) on a cluster: ``channel_name``, whose tag is its session's.

    The tag is the first ``{`` of the name (a cluster prefix has none), so topics and
    sessions holding braces cannot move the pair to another slot.
    """
    return channel_name(prefix, topic, session_id)


def shard_control_channel(prefix: str, tag: str, node_id: str) -> bytes:
    """A node's control channel on one master: ``{prefix}:{tag}:node:{node_id}``, ``tag`` in that master's slots."""
    return f"{prefix}:{{{tag}}}:node:{node_id}".encode()


class ClusterUrl(NamedTuple):
    """What a ``redis+cluster://`` URL says."""

    #: (host, port) of each node named: where to ask for the slot map first.
    seeds: list[tuple[str, int]]
    username: str | None
    password: str | None
    #: True for ``rediss+cluster://`` (TLS).
    ssl: bool
    channel_prefix: str


def split_cluster_url(url: str) -> ClusterUrl:
    """Parse ``redis+cluster://[user:password@]host:port[,host:port...][/][?channel_prefix=...]``.

    Raises:
        ValueError: not such a URL, no node, a bad port, another query option, or a
            prefix that is empty or holds ``:``, ``{`` or ``}`` (braces would change the hash tag).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis+cluster", "rediss+cluster"):
        raise ValueError("a cluster URL starts with redis+cluster:// or rediss+cluster://")
    rest, _, query = rest.split("#", 1)[0].partition("?")
    hosts, _, path = rest.partition("/")
    if path:
        raise ValueError("a cluster has one database: nothing may follow the nodes but '/'")
    userinfo, at, hosts = hosts.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    seeds = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    prefix = DEFAULT_CHANNEL_PREFIX
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "channel_prefix":
            raise ValueError(f"unknown option {name!r} (a cluster URL takes channel_prefix only)")
        prefix = value
    if not prefix or any(c in prefix for c in ":{}"):
        raise ValueError("channel_prefix must be non-empty and without ':', '{' or '}'")
    return ClusterUrl(seeds, username, password, scheme.lower() == "rediss+cluster", prefix)
