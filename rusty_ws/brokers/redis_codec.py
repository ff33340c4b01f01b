"""The Redis broker's wire formats, as pure functions: channel names, the envelope, the URL option.

No Redis, no sockets, no threads: ``redis.py`` does the I/O, and the tests
check these with literal values. ``docs/scaling.md`` explains the choices.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..protocol import MAX_JSON_DEPTH, Delivery, dumps_utf8, loads_strict
from .base import Key
from .redis_slots import partition_of, partition_tags

__all__ = [
    "DEFAULT_CHANNEL_PREFIX",
    "ENVELOPE_VERSION",
    "MAX_ENVELOPE_DEPTH",
    "channel_name",
    "key_of_channel",
    "control_channel",
    "encode_envelope",
    "decode_envelope",
    "split_url",
    "session_tag",
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


def channel_name(prefix: str, topic: str, session_id: str) -> bytes:
    """The Redis channel of (topic, session): ``{prefix}:{len(topic)}:{topic}:{session}``.

    The topic's length (in UTF-8 bytes) says where the topic ends, so the name
    is unambiguous for any topic and session, whatever characters they hold
    (``:`` included). Lone surrogates are kept (``surrogatepass``) rather than
    refused, so every string the hub accepts has exactly one channel.
    """
    topic_bytes = topic.encode("utf-8", "surrogatepass")
    session_bytes = session_id.encode("utf-8", "surrogatepass")
    return b"%s:%d:%s:%s" % (prefix.encode("utf-8"), len(topic_bytes), topic_bytes, session_bytes)


def key_of_channel(prefix: str, channel: bytes) -> Key | None:
    """The (topic, session) of a channel made by ``channel_name``, or None for any other channel."""
    head = prefix.encode("utf-8") + b":"
    if not channel.startswith(head):
        return None
    length_text, colon, rest = channel[len(head):].partition(b":")
    if not colon or not length_text.isdigit() or length_text != b"%d" % int(length_text):
        return None
    length = int(length_text)
    if len(rest) < length + 1 or rest[length:length + 1] != b":":
        return None
    try:
        return (rest[:length].decode("utf-8", "surrogatepass"),
                rest[length + 1:].decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:
        return None


def control_channel(prefix: str, node_id: str) -> bytes:
    """The node's own channel, used only to wake its listener.

    ``{prefix}:node:{node_id}`` can never be a (topic, session) channel: those
    have digits where this has ``node``.
    """
    return f"{prefix}:node:{node_id}".encode()


def encode_envelope(node_id: str, delivery: Delivery) -> bytes:
    """What a node PUBLISHes: the delivery, and which node sent it."""
    return dumps_utf8({"v": ENVELOPE_VERSION, "node": node_id, "delivery": delivery.to_dict()})


def decode_envelope(data: bytes, key: Key, max_size: int | None = None) -> tuple[str, Delivery]:
    """The sending node and the delivery of an envelope read from ``key``'s channel.

    Args:
        max_size: the largest envelope a node sends, in bytes (None: no limit). Checked
            first, before anything is decoded.

    Raises:
        ValueError: ``data`` is not an envelope a rusty_ws node would send on that channel:
            larger than ``max_size``, not UTF-8 JSON, nested deeper than
            ``MAX_ENVELOPE_DEPTH``, or not shaped like one.
    """
    if max_size is not None and len(data) > max_size:
        raise ValueError(f"{len(data)} bytes, more than the {max_size} an envelope may have")
    try:
        envelope = loads_strict(data.decode("utf-8"), MAX_ENVELOPE_DEPTH)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if not isinstance(envelope, dict):
        raise ValueError("not a JSON object")
    if envelope.get("v") != ENVELOPE_VERSION:
        raise ValueError(f"envelope version {envelope.get('v')!r}, expected {ENVELOPE_VERSION}")
    node, message = envelope.get("node"), envelope.get("delivery")
    if not isinstance(node, str) or not isinstance(message, dict):
        raise ValueError("an envelope needs a 'node' string and a 'delivery' object")
    topic, session_id = message.get("topic"), message.get("session_id")
    if (topic, session_id) != key:
        raise ValueError(f"a delivery for {(topic, session_id)!r} on the channel of {key!r}")
    topic, session_id = key  # the same strings, now typed
    publisher_name, timestamp, user = (message.get(k) for k in ("publisher_name", "timestamp", "user"))
    if not isinstance(publisher_name, str) or not isinstance(timestamp, str):
        raise ValueError("'publisher_name' and 'timestamp' must be strings")
    if user is not None and not isinstance(user, str):
        raise ValueError("'user' must be a string or absent")
    if "payload" not in message:
        raise ValueError("no 'payload'")
    return node, Delivery(
        publisher_name=publisher_name,
        topic=topic,
        payload=message["payload"],
        timestamp=timestamp,
        session_id=session_id,
        user=user,
    )


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
    """The shard channel of (topic, session) on a cluster: ``{prefix}:{tag}:{len(topic)}:{topic}:{session}``.

    ``channel_name`` with the session's tag after the prefix. The tag is the first
    ``{`` of the name (a cluster prefix has none), so topics and sessions holding
    braces cannot move the pair to another slot.
    """
    tag = session_tag(prefix, session_id).encode()
    return b"%s:%s:%s" % (prefix.encode("utf-8"), tag, channel_name("", topic, session_id)[1:])


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
