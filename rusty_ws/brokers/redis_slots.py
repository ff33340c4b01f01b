"""Redis Cluster's hash slots, as pure functions: CRC16, the slot of a name, and our partition tags.

A Redis Cluster places every key and shard channel in one of 16384 slots,
``CRC16(name) mod 16384``, where ``name`` is only the part between the first
``{`` and the next ``}`` when there is one (a "hash tag"). A (topic, session)
pair's channel and keys carry the same tag, so they share one slot (Lua scripts
and ``SPUBLISH`` from them need that).

Which tag? The session id itself (the naive tag) puts each session in a slot
of its own, spread as well as CRC16 spreads the ids. But we want more: a fixed,
small set of slots, so a node can subscribe to many pairs with few commands, and
know them in advance (like Centrifugo's sharded PUB/SUB partitions). So a
session is hashed into one of ``PARTITIONS`` partitions, and partition ``i``'s
tag is a short string picked (once, deterministically, at import) so that its
slot falls in the ``i``-th of ``PARTITIONS`` equal windows of the slot space.
Masters own contiguous slot ranges (``redis-cli --cluster create`` splits them
evenly), so the partitions, and with them the sessions, spread over the masters
in proportion to the slots each owns. docs/scaling.md shows the measured spread.

No Redis, no I/O: ``redis_cluster.py`` does that.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "SLOTS", "PARTITIONS", "SlotMap", "crc16", "key_slot", "partition_of", "partition_tags", "partition_slots",
    "session_slot", "tag_in", "parse_cluster_slots",
]

#: Hash slots in a Redis Cluster (fixed by Redis).
SLOTS = 16384
#: Partitions sessions are hashed into: each is one hash tag, i.e. one slot. Every node of a
#: deployment must use the same number (it is part of the channel and key names), so it is a
#: constant, not a setting. 256 partitions over 3 masters: 85/85/86, within 1.2% of even.
PARTITIONS = 256


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes names with."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(name: bytes) -> int:
    """The slot of a key or shard channel ``name``, hash tags honoured, as Redis computes it."""
    start = name.find(b"{")
    if start >= 0:
        end = name.find(b"}", start + 1)
        if end > start + 1:  # an empty tag "{}" does not count
            name = name[start + 1:end]
    return crc16(name) % SLOTS


@functools.lru_cache(maxsize=8)
def partition_tags(partitions: int = PARTITIONS) -> tuple[str, ...]:
    """The tag (without braces) of each partition: ``tags[i]``'s slot is in window ``i`` of ``partitions``.

    Deterministic: for each window the first of ``p{i}``, ``p{i}.1``, ``p{i}.2``, ...
    (in that order) whose slot falls in the window. About ``SLOTS / partitions``
    tries per window; a few milliseconds for 256 partitions.

    Raises:
        ValueError: ``partitions`` is not between 1 and ``SLOTS``.
    """
    if not 1 <= partitions <= SLOTS:
        raise ValueError(f"partitions must be between 1 and {SLOTS}")
    tags = []
    for index in range(partitions):
        low, high = index * SLOTS // partitions, (index + 1) * SLOTS // partitions
        for attempt in range(SLOTS * 64):  # bounded: CRC16 reaches every window long before
            tag = f"p{index}" if attempt == 0 else f"p{index}.{attempt}"
            if low <= crc16(tag.encode()) % SLOTS < high:
                tags.append(tag)
                break
        else:  # pragma: no cover - CRC16 is onto: cannot happen
            raise AssertionError(f"no tag for slots {low}..{high}")
    return tuple(tags)


def partition_of(session_id: str, partitions: int = PARTITIONS) -> int:
    """The partition of a session: CRC32 of its UTF-8 bytes, modulo ``partitions``; the same on every node."""
    return zlib.crc32(session_id.encode("utf-8", "surrogatepass")) % partitions


@functools.lru_cache(maxsize=8)
def partition_slots(partitions: int = PARTITIONS) -> tuple[int, ...]:
    """The slot of each partition's tag (``partition_tags``)."""
    return tuple(crc16(tag.encode()) % SLOTS for tag in partition_tags(partitions))


def session_slot(session_id: str) -> int:
    """The slot of every channel and key of ``session_id`` (its partition's), without hashing a name."""
    return partition_slots()[partition_of(session_id)]


def tag_in(owns: Callable[[int], bool], tries: int = SLOTS * 64) -> str | None:
    """A tag whose slot ``owns``: a partition's tag if one qualifies, else the first ``c{n}`` that does.

    None at once when ``owns`` holds no slot (a dead master once the map gave its slots
    to its replica: trying ``tries`` names would cost seconds of CPU), or when none of
    ``tries`` candidates does (``owns`` holds very few).
    """
    for tag, slot in zip(partition_tags(), partition_slots()):
        if owns(slot):
            return tag
    if not any(owns(slot) for slot in range(SLOTS)):
        return None
    for number in range(tries):
        tag = f"c{number}"
        if owns(crc16(tag.encode()) % SLOTS):
            return tag
    return None


class SlotMap(NamedTuple):
    """A cluster's slot map, as one node told it (CLUSTER SLOTS)."""

    #: The master ("host:port") of each slot; "" for a slot no master serves.
    owners: tuple[str, ...]
    #: Every node the reply named, masters first: where to ask next time.
    nodes: tuple[str, ...]

    @property
    def masters(self) -> set[str]:
        return {owner for owner in self.owners if owner}

    def slots_of(self, address: str) -> int:
        return sum(owner == address for owner in self.owners)


def parse_cluster_slots(reply: Any) -> SlotMap:
    """The ``SlotMap`` of a raw ``CLUSTER SLOTS`` reply: ``[[start, end, [host, port, id, ...], replicas...], ...]``.

    Raises:
        ValueError: the reply is not shaped like one.
    """
    owners = [""] * SLOTS
    masters: list[str] = []
    replicas: list[str] = []

    def address(node: Any) -> str:
        host, port = node[0], node[1]
        host = host.decode() if isinstance(host, bytes) else str(host)
        if not host or not isinstance(port, int):
            raise ValueError(f"not a node: {node!r}")
        return f"{host}:{port}"

    try:
        for entry in reply:
            start, end = int(entry[0]), int(entry[1])
            if not 0 <= start <= end < SLOTS:
                raise ValueError(f"slots {start}..{end}")
            master = address(entry[2])
            owners[start:end + 1] = [master] * (end - start + 1)
            masters.append(master)
            replicas.extend(address(node) for node in entry[3:])
    except (TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"not a CLUSTER SLOTS reply: {exc}") from None
    return SlotMap(tuple(owners), tuple(dict.fromkeys(masters + replicas)))
