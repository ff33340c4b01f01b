"""The wire protocol, as pure functions: text in, dataclasses out, and back.

Nothing here touches a socket, a thread or Flask, so the server and the Python
client share one grammar and the tests can use literal strings.

Client -> server text frames (see ``docs/protocol.md``)::

    register-name:{name}
    register-session:{session_id}
    subscribe:{topic}|{session_id}      ("|{session_id}" optional)
    unsubscribe:{topic}|{session_id}    ("|{session_id}" optional)
    publish-json:{json object}
    subscribe-json:{json object}
    history:{json object}
    auth:{token}                        (only as a connection's first frame)
    refresh:{token}
    ping

Server -> client text frames: a delivery (a JSON object), ``pong``,
``subscribed:``, ``history:``, ``ack:``, ``authenticated:``, ``refreshed:``
(each followed by a JSON object), or ``error:{"code": ..., "message": ...}``.
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Union

from .exceptions import ProtocolError, ServerError

__all__ = [
    "DEFAULT_SESSION",
    "MAX_NAME_LENGTH",
    "MAX_TOPIC_LENGTH",
    "MAX_SESSION_LENGTH",
    "MAX_JSON_DEPTH",
    "SERVER_PUBLISHER",
    "ErrorCode",
    "CloseCode",
    "ClosePolicy",
    "CLOSE_CODE_EXPLANATIONS",
    "close_policy",
    "RECONNECT_JITTER",
    "restart_reason",
    "reconnect_window",
    "Ping",
    "RegisterName",
    "RegisterSession",
    "Subscribe",
    "Unsubscribe",
    "Publish",
    "Command",
    "parse_command",
    "encode_ping",
    "encode_register_name",
    "encode_register_session",
    "encode_subscribe",
    "encode_unsubscribe",
    "encode_publish",
    "encode_subscribe_json",
    "encode_history",
    "Position",
    "Since",
    "SubscribeJson",
    "HistoryQuery",
    "Auth",
    "Refresh",
    "encode_auth",
    "encode_refresh",
    "encode_authenticated",
    "encode_refreshed",
    "Authenticated",
    "Refreshed",
    "with_position",
    "encode_subscribed",
    "encode_history_reply",
    "encode_ack",
    "Subscribed",
    "HistoryReply",
    "Ack",
    "Delivery",
    "encode_run",
    "usual_publish",
    "PUBLISH_PREFIX",
    "PUBLISH_START",
    "encode_error",
    "parse_error",
    "is_error_reply",
    "PONG_REPLY",
    "rfc3339_now",
    "loads_strict",
    "nested_deeper_than",
]

#: The session of an anonymous connection that registered none (as the seed's server does).
DEFAULT_SESSION = "default"
#: Longest client name, in characters.
MAX_NAME_LENGTH = 256
#: Longest topic, in characters.
MAX_TOPIC_LENGTH = 256
#: Longest session id, in characters.
MAX_SESSION_LENGTH = 256
#: Deepest nesting of arrays and objects in the JSON of a command, its own object counting as
#: level 1: a publish's payload nests at most 63 deep. Far below what Python's JSON encoder
#: manages (about 990 levels), so whatever the hub accepts it can also encode, for its
#: subscribers and in a Redis envelope (one level more): delivered everywhere or nowhere.
MAX_JSON_DEPTH = 64
#: The ``publisher_name`` of the hub's own messages (``PubSub.publish``). Reserved: no client
#: may register or publish under it (``reserved_name``), so a delivery from ``server`` that
#: has no ``user`` comes from the hub itself.
SERVER_PUBLISHER = "server"

#: The text reply to the ``ping`` command (not a pong control frame: that is ``frames.OP_PONG``).
PONG_REPLY = "pong"
ERROR_PREFIX = "error:"


class ErrorCode(str, enum.Enum):
    """Stable codes of ``error:`` replies. Clients may branch on these; never rename one."""

    UNKNOWN_COMMAND = "unknown_command"
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    MISSING_TOPIC = "missing_topic"
    INVALID_TOPIC = "invalid_topic"
    INVALID_SESSION = "invalid_session"
    INVALID_NAME = "invalid_name"
    FORBIDDEN_SESSION = "forbidden_session"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    UNAVAILABLE = "unavailable"
    INVALID_SINCE = "invalid_since"
    INVALID_LIMIT = "invalid_limit"
    INVALID_ID = "invalid_id"
    RESERVED_NAME = "reserved_name"
    FORBIDDEN_TOPIC = "forbidden_topic"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_MISMATCH = "token_mismatch"
    TOKEN_REQUIRED = "token_required"
    NOT_AUTHENTICATED = "not_authenticated"
    ALREADY_AUTHENTICATED = "already_authenticated"
    AUTH_NOT_FIRST = "auth_not_first"

    def __str__(self) -> str:
        return self.value


class ClosePolicy(enum.Enum):
    """What a client should do when the server closes with a given code."""

    DO_NOT_RECONNECT = "do_not_reconnect"
    BACK_OFF = "back_off"
    RECONNECT_NOW = "reconnect_now"


class CloseCode(enum.IntEnum):
    """Close codes the server sends, standard ones first, then rusty_ws's own.

    rusty_ws's codes come in three ranges, one per client policy:
    4000-4099 do not reconnect, 4100-4199 back off and retry, 4200-4299 retry now.
    """

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4001
    TOKEN_EXPIRED = 4002
    FORBIDDEN = 4003
    SLOW_CONSUMER = 4100
    OVERLOADED = 4101
    KEEPALIVE_TIMEOUT = 4102
    SERVER_RESTARTING = 4200


#: One line per close code, for logs and for the docs' table.
CLOSE_CODE_EXPLANATIONS: dict[int, str] = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1006: "connection dropped without a close frame",
    1007: "invalid data (e.g. text that is not UTF-8)",
    1008: "policy violation",
    1009: "message too big",
    1011: "internal server error",
    1012: "service restart",
    1013: "try again later",
    4001: "unauthorized: the token is missing, invalid or expired",
    4002: "token expired: reconnect with a new token",
    4003: "forbidden",
    4100: "slow consumer: too many messages queued for this connection",
    4101: "server overloaded",
    4102: "keepalive timeout: no pong within the deadline",
    4200: "server restarting",
}

_STANDARD_POLICIES: dict[int, ClosePolicy] = {
    1000: ClosePolicy.BACK_OFF,
    1001: ClosePolicy.RECONNECT_NOW,
    1002: ClosePolicy.DO_NOT_RECONNECT,
    1003: ClosePolicy.DO_NOT_RECONNECT,
    1007: ClosePolicy.DO_NOT_RECONNECT,
    1008: ClosePolicy.DO_NOT_RECONNECT,
    1012: ClosePolicy.RECONNECT_NOW,
}


def close_policy(code: int) -> ClosePolicy:
    """What a client should do after the server closed with ``code``.

    Unknown and abnormal codes (1006, 1011, 1013, 1009, ...) mean back off:
    retrying slowly is the safe default.
    """
    if 4000 <= code <= 4099:
        return ClosePolicy.DO_NOT_RECONNECT
    if 4100 <= code <= 4199:
        return ClosePolicy.BACK_OFF
    if 4200 <= code <= 4299:
        return ClosePolicy.RECONNECT_NOW
    return _STANDARD_POLICIES.get(code, ClosePolicy.BACK_OFF)


#: Seconds of random delay a client adds before it reconnects "now" (4200-4299, 1001, 1012)
#: when the close reason names no window of its own.
RECONNECT_JITTER = 1.0
_WINDOW_WORDS = "; reconnect within "


def restart_reason(window: float) -> str:
    """The reason of a 4200 that asks clients to spread their reconnections over ``window`` seconds.

    ``server restarting`` alone for a window of ``RECONNECT_JITTER`` or less (what every
    client does anyway); else ``server restarting; reconnect within 6.5 s``, one decimal,
    rounded up.
    """
    explanation = CLOSE_CODE_EXPLANATIONS[CloseCode.SERVER_RESTARTING]
    if not window > RECONNECT_JITTER:
        return explanation
    return f"{explanation}{_WINDOW_WORDS}{math.ceil(min(window, 3600.0) * 10) / 10:.1f} s"


def reconnect_window(reason: str) -> float:
    """Seconds over which to spread a "reconnect now": the window a close reason names, else ``RECONNECT_JITTER``.

    Reads what ``restart_reason`` writes; any other reason, a malformed or hostile one
    included (or the words after another close's explanation), gives ``RECONNECT_JITTER``.
    At most an hour.
    """
    explanation, found, rest = reason.partition(_WINDOW_WORDS)
    number, _, unit = rest.partition(" ")
    if not found or explanation != CLOSE_CODE_EXPLANATIONS[CloseCode.SERVER_RESTARTING] or unit != "s":
        return RECONNECT_JITTER
    if not 0 < len(number) <= 8 or not (number.isascii() and number.replace(".", "", 1).isdigit()):
        return RECONNECT_JITTER
    return min(3600.0, max(RECONNECT_JITTER, float(number)))


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Ping:
    """``ping``: the server answers ``pong`` after every earlier command is done."""


@dataclass(frozen=True)
class RegisterName:
    """``register-name:{name}``: the name used when a publish names no publisher."""

    name: str


@dataclass(frozen=True)
class RegisterSession:
    """``register-session:{session_id}``: the session used when a command names none."""

    session_id: str


@dataclass(frozen=True)
class Subscribe:
    """``subscribe:{topic}|{session_id}``; ``session_id`` is None when omitted."""

    topic: str
    session_id: str | None = None


@dataclass(frozen=True)
class Unsubscribe:
    """``unsubscribe:{topic}|{session_id}``; ``session_id`` is None when omitted."""

    topic: str
    session_id: str | None = None


@dataclass(frozen=True)
class Publish:
    """``publish-json:{...}``; fields left out are None and filled in by the server.

    ``id`` (optional, 1 to 128 characters) asks for an ``ack:`` and makes the
    publish idempotent within its session.
    """

    topic: str
    payload: Any = None
    session_id: str | None = None
    publisher_name: str | None = None
    timestamp: str | None = None
    id: str | None = None

    def __init__(self, topic: str, payload: Any = None, session_id: str | None = None,
                 publisher_name: str | None = None, timestamp: str | None = None, id: str | None = None) -> None:
        # Once per publish: the generated __init__ of a frozen dataclass calls object.__setattr__
        # for each field; storing into __dict__ is the same, at a fraction of the cost.
        fields = self.__dict__
        fields["topic"], fields["payload"], fields["session_id"] = topic, payload, session_id
        fields["publisher_name"], fields["timestamp"], fields["id"] = publisher_name, timestamp, id


@dataclass(frozen=True)
class Position:
    """A place in a stream: the offset of a message (or the stream's top) and the stream's epoch.

    On the wire it is ``{"offset": N, "epoch": E}``: a delivery's last two keys,
    and a client's ``since``.
    """

    offset: int
    epoch: str

    def __init__(self, offset: int, epoch: str) -> None:
        fields = self.__dict__  # once per publish with history on: as Publish.__init__
        fields["offset"], fields["epoch"] = offset, epoch


#: A client's last known place in a stream (``since``): a ``Position``.
Since = Position


@dataclass(frozen=True)
class SubscribeJson:
    """``subscribe-json:{"topic", "session_id"?, "since"?}``: answered by ``subscribed:``."""

    topic: str
    session_id: str | None = None
    since: Since | None = None


@dataclass(frozen=True)
class HistoryQuery:
    """``history:{"topic", "session_id"?, "limit"?, "since"?}``: answered by ``history:``."""

    topic: str
    session_id: str | None = None
    limit: int | None = None
    since: Since | None = None


@dataclass(frozen=True)
class Auth:
    """``auth:{token}``: the token of a connection opened without one, as its very first frame.

    The token never shows in ``repr`` (logs).
    """

    token: str = field(repr=False)


@dataclass(frozen=True)
class Refresh:
    """``refresh:{token}``: a fresh token for the same ``sub`` and ``sid``; answered by ``refreshed:``.

    The token never shows in ``repr`` (logs).
    """

    token: str = field(repr=False)


Command = Union[Ping, RegisterName, RegisterSession, Subscribe, Unsubscribe, Publish, SubscribeJson,  # noqa: UP007
                HistoryQuery, Auth, Refresh]  # a runtime alias: the | form needs 3.10 objects at import

#: Longest publish id, in characters.
MAX_PUBLISH_ID_LENGTH = 128
#: Longest epoch a client may send back, in characters (the hub's own are ~12).
MAX_EPOCH_LENGTH = 256
#: Largest offset: the largest integer a JavaScript number holds exactly (2^53 - 1).
MAX_OFFSET = 2**53 - 1


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _has_control_chars(text: str) -> bool:
    return _CONTROL_CHARS.search(text) is not None


def check_name(name: str) -> str:
    """Return ``name`` if it is a usable client name, else raise ``ProtocolError``.

    ``invalid_name`` for an empty or long name or one with control characters;
    ``reserved_name`` for ``server`` in any case and with any spaces around it
    (``SERVER_PUBLISHER``: only the hub's own messages carry it).
    """
    if not name or len(name) > MAX_NAME_LENGTH or _has_control_chars(name):
        raise ProtocolError(
            ErrorCode.INVALID_NAME,
            f"a name is 1 to {MAX_NAME_LENGTH} characters without control characters",
        )
    if name.strip().casefold() == SERVER_PUBLISHER:
        raise ProtocolError(ErrorCode.RESERVED_NAME,
                            f"{SERVER_PUBLISHER!r} is reserved for the hub's own messages")
    return name


def check_topic(topic: str) -> str:
    """Return ``topic`` if it is a usable topic, else raise ``ProtocolError``."""
    if not topic or len(topic) > MAX_TOPIC_LENGTH or "|" in topic or _has_control_chars(topic):
        raise ProtocolError(
            ErrorCode.INVALID_TOPIC,
            f"a topic is 1 to {MAX_TOPIC_LENGTH} characters, without '|' or control characters",
        )
    return topic


def check_session(session_id: str) -> str:
    """Return ``session_id`` if it is a usable session id, else raise ``ProtocolError``."""
    if (
        not session_id
        or len(session_id) > MAX_SESSION_LENGTH
        or "|" in session_id
        or _has_control_chars(session_id)
    ):
        raise ProtocolError(
            ErrorCode.INVALID_SESSION,
            f"a session id is 1 to {MAX_SESSION_LENGTH} characters, "
            "without '|' or control characters",
        )
    return session_id


def _parse_topic_and_session(argument: str) -> tuple[str, str | None]:
    topic, bar, session_id = argument.partition("|")
    check_topic(topic)
    if not bar or session_id == "":
        return topic, None
    return topic, check_session(session_id)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} does not fit in a double")
    return number


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True when arrays and objects nest more than ``limit`` deep in ``value`` (a container is level 1).

    Level by level, so no recursion; it stops at ``limit + 1`` levels, so a
    cyclic value cannot keep it going (a wide one can: encode it first).
    """
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            below.extend(container.values() if type(container) is dict else container)
        level = [item for item in below if type(item) is dict or type(item) is list]
    return False


#: One decoder for every command: ``json.loads`` with arguments builds a new one per call
#: (~10% of a publish's parse). Decoding keeps no state in it, so threads share it.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
#: Its scanner, called directly for a text with no whitespace around the value: ``decode``'s
#: Python wrapper (two whitespace matches, ``raw_decode``) cost about as much as the scan.
_scan_once = _STRICT_DECODER.scan_once  # type: ignore[attr-defined]  # set in JSONDecoder.__init__, not typed


def _decode(text: str) -> Any:
    """``_STRICT_DECODER.decode(text)``; the usual text (no whitespace around the value) without its wrapper."""
    try:
        value, end = _scan_once(text, 0)
    except (ValueError, StopIteration):
        return _STRICT_DECODER.decode(text)  # raises decode()'s own error, or skips whitespace first
    return value if end == len(text) else _STRICT_DECODER.decode(text)


def loads_strict(text: str, max_depth: int = MAX_JSON_DEPTH, walk: bool = True) -> Any:
    """``json.loads`` that refuses NaN, Infinity, numbers that overflow to them, and deep nesting.

    Args:
        max_depth: the deepest nesting of arrays and objects allowed, the outer one
            being level 1 (``MAX_JSON_DEPTH``).
        walk: False: nesting too deep for the decoder (``RecursionError``) is still refused, but
            ``max_depth`` is left to the caller, who knows the value's shape (``redis_codec``'s envelopes).

    Raises:
        ValueError: the text is not JSON we could send on unchanged.
    """
    try:
        value = _decode(text)
    except RecursionError:
        value, deep = None, True
    else:
        # Counting brackets costs next to nothing and settles almost every message:
        # fewer openings than the limit cannot nest deeper than it.
        deep = walk and text.count("[") + text.count("{") > max_depth and nested_deeper_than(value, max_depth)
    if deep:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return value


def _optional_string(message: dict[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"'{key}' must be a string")


def _json_object(verb: str, argument: str) -> dict[str, Any]:
    try:
        message = loads_strict(argument)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"{verb} needs valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{verb} needs a JSON object")
    return message


def _publish_id(message: dict[str, Any]) -> str | None:
    publish_id = message.get("id")
    if publish_id is None:
        return None
    if not isinstance(publish_id, str) or not 1 <= len(publish_id) <= MAX_PUBLISH_ID_LENGTH:
        raise ProtocolError(
            ErrorCode.INVALID_ID, f"'id' must be a string of 1 to {MAX_PUBLISH_ID_LENGTH} characters"
        )
    return publish_id


def usual_publish(argument: str, start: int = 0) -> tuple[str, Any, str | None, str | None, str | None] | None:
    """The fields of the usual publish in ``argument[start:]``, or None for anything else.

    The usual publish: the JSON object alone (no whitespace around it), str fields,
    no publisher name, only known keys. Its fields are ``(topic, payload,
    session_id or None, timestamp, id)``, exactly those of the ``Publish`` that
    ``parse_command`` makes of it; None means "not this shape", valid or not
    (``parse_command`` then decides, with its own errors). ``Connection`` reads a
    read's publishes with it (``Hub.publish_run``), ``_parse_publish`` every other.
    """
    # Once per publish: decoded by the scanner alone. It passes only what the full checks
    # (_publish_fields) pass, with the same result.
    try:
        message, end = _scan_once(argument, start)
    except (ValueError, StopIteration, RecursionError):
        end = -1
    if end == len(argument) and type(message) is dict:
        get = message.get
        topic, session_id, payload = get("topic"), get("session_id"), get("payload")
        timestamp, publish_id = get("timestamp"), get("id")
        if (type(topic) is str and 0 < len(topic) <= MAX_TOPIC_LENGTH and "|" not in topic and topic.isprintable()
                and (session_id is None or (type(session_id) is str and len(session_id) <= MAX_SESSION_LENGTH
                                            and "|" not in session_id and session_id.isprintable()))
                and (timestamp is None or type(timestamp) is str)
                and (publish_id is None or (type(publish_id) is str
                                            and 0 < len(publish_id) <= MAX_PUBLISH_ID_LENGTH))
                # Only these keys (none null but the payload: a null one would not be counted here),
                # so only the payload can nest: a scalar one cannot, a container is measured.
                and len(message) == 1 + (session_id is not None) + ("payload" in message)
                + (timestamp is not None) + (publish_id is not None)
                and ((type(payload) is not dict and type(payload) is not list)
                     or not (argument.count("[", start) + argument.count("{", start) > MAX_JSON_DEPTH
                             and nested_deeper_than(payload, MAX_JSON_DEPTH - 1)))):
            return topic, payload, session_id or None, timestamp, publish_id
    return None


def _parse_publish(argument: str, start: int = 0) -> Publish:
    """The publish in ``argument[start:]`` (``parse_command`` passes the whole text: no copy of it)."""
    usual = usual_publish(argument, start)
    if usual is not None:
        return Publish(usual[0], usual[1], usual[2], None, usual[3], usual[4])
    # Anything else (every error too) through the full checks, so the errors are theirs.
    if start:
        argument = argument[start:]
    message = _json_object("publish-json", argument)
    publish_id = _publish_id(message)
    try:
        return _publish_fields(message, publish_id)
    except ProtocolError as exc:
        exc.publish_id = publish_id  # the error reply for this publish names its id
        raise


#: A control character or ``|``: what no topic and no session id may hold.
_NOT_IN_KEYS = re.compile(r"[\x00-\x1f\x7f|]")
_bad_key_char = _NOT_IN_KEYS.search


def _publish_fields(message: dict[str, Any], publish_id: str | None) -> Publish:
    get = message.get
    topic, session_id, timestamp = get("topic"), get("session_id"), get("timestamp")
    # The usual publish (str fields, no publisher name) checked in one expression, once per
    # publish: it passes only what the checks below pass, with the same result.
    if (type(topic) is str and 0 < len(topic) <= MAX_TOPIC_LENGTH and _bad_key_char(topic) is None
            and (session_id is None or (type(session_id) is str and len(session_id) <= MAX_SESSION_LENGTH
                                        and _bad_key_char(session_id) is None))
            and (timestamp is None or type(timestamp) is str) and get("publisher_name") is None):
        return Publish(topic, get("payload"), session_id or None, None, timestamp, publish_id)
    topic = message.get("topic")
    if topic is None or topic == "":
        raise ProtocolError(ErrorCode.MISSING_TOPIC, "a published message needs a 'topic'")
    if not isinstance(topic, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "'topic' must be a string")
    check_topic(topic)
    session_id = _optional_string(message, "session_id")
    if session_id:
        check_session(session_id)
    publisher_name = _optional_string(message, "publisher_name") or None
    if publisher_name is not None:
        check_name(publisher_name)
    return Publish(
        topic=topic,
        payload=message.get("payload"),
        session_id=session_id or None,
        publisher_name=publisher_name,
        timestamp=_optional_string(message, "timestamp"),
        id=publish_id,
    )


def _stream_fields(verb: str, message: dict[str, Any]) -> tuple[str, str | None, Since | None]:
    """The topic, session and since of ``subscribe-json`` and ``history``."""
    topic = message.get("topic")
    if topic is None or topic == "":
        raise ProtocolError(ErrorCode.MISSING_TOPIC, f"{verb} needs a 'topic'")
    if not isinstance(topic, str):
        raise ProtocolError(ErrorCode.INVALID_TOPIC, "'topic' must be a string")
    check_topic(topic)
    session_id = message.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise ProtocolError(ErrorCode.INVALID_SESSION, "'session_id' must be a string")
    if session_id:
        check_session(session_id)
    return topic, session_id or None, _parse_since(message.get("since"))


def _parse_since(since: Any) -> Since | None:
    if since is None:
        return None
    if not isinstance(since, dict) or set(since) != {"offset", "epoch"}:
        raise ProtocolError(ErrorCode.INVALID_SINCE, '\'since\' must be {"offset": N, "epoch": E}')
    offset, epoch = since["offset"], since["epoch"]
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise ProtocolError(ErrorCode.INVALID_SINCE, f"'since.offset' must be an integer from 0 to {MAX_OFFSET}")
    if not isinstance(epoch, str) or not 1 <= len(epoch) <= MAX_EPOCH_LENGTH:
        raise ProtocolError(
            ErrorCode.INVALID_SINCE, f"'since.epoch' must be a string of 1 to {MAX_EPOCH_LENGTH} characters"
        )
    return Since(offset, epoch)


def _parse_subscribe_json(argument: str) -> SubscribeJson:
    return SubscribeJson(*_stream_fields("subscribe-json", _json_object("subscribe-json", argument)))


def _parse_history(argument: str) -> HistoryQuery:
    message = _json_object("history", argument)
    topic, session_id, since = _stream_fields("history", message)
    limit = message.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ProtocolError(ErrorCode.INVALID_LIMIT, "'limit' must be an integer of at least 1")
    return HistoryQuery(topic, session_id, limit, since)


#: What every ``publish-json`` command starts with; its JSON (``usual_publish``) starts at ``PUBLISH_START``.
PUBLISH_PREFIX = _PUBLISH_PREFIX = "publish-json:"
PUBLISH_START = _PUBLISH_START = len(_PUBLISH_PREFIX)


def parse_command(text: str) -> Command:
    """Parse one client text frame.

    Raises:
        ProtocolError: the frame is not a command we know, or its argument is bad.
    """
    if text.startswith(_PUBLISH_PREFIX):  # the usual command: its JSON read in place, no copy
        return _parse_publish(text, _PUBLISH_START)
    verb, colon, argument = text.partition(":")
    if colon:  # never ``ping``, which has no colon
        if verb == "subscribe":
            return Subscribe(*_parse_topic_and_session(argument))
        if verb == "unsubscribe":
            return Unsubscribe(*_parse_topic_and_session(argument))
        if verb == "register-name":
            return RegisterName(check_name(argument))
        if verb == "register-session":
            return RegisterSession(check_session(argument))
        if verb == "subscribe-json":
            return _parse_subscribe_json(argument)
        if verb == "history":
            return _parse_history(argument)
        if verb == "auth":
            return Auth(argument.strip())
        if verb == "refresh":
            return Refresh(argument.strip())
    elif text.strip() == "ping":
        return Ping()
    shown = text[:40] + ("..." if len(text) > 40 else "")
    raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {shown!r}")


# --------------------------------------------------------------------------- command encoders
# The other direction of ``parse_command``: what clients send. Each checks its
# arguments as the server will, so a bad one fails in the caller, not on the wire.


def encode_ping() -> str:
    """``ping``."""
    return "ping"


def encode_register_name(name: str) -> str:
    """``register-name:{name}``."""
    return f"register-name:{check_name(name)}"


def encode_register_session(session_id: str) -> str:
    """``register-session:{session_id}``."""
    return f"register-session:{check_session(session_id)}"


def _topic_and_session(topic: str, session_id: str | None) -> str:
    check_topic(topic)
    return f"{topic}|{check_session(session_id)}" if session_id else topic


def encode_subscribe(topic: str, session_id: str | None = None) -> str:
    """``subscribe:{topic}|{session_id}`` (``subscribe:{topic}`` without a session)."""
    return f"subscribe:{_topic_and_session(topic, session_id)}"


def encode_unsubscribe(topic: str, session_id: str | None = None) -> str:
    """``unsubscribe:{topic}|{session_id}`` (``unsubscribe:{topic}`` without a session)."""
    return f"unsubscribe:{_topic_and_session(topic, session_id)}"


def encode_publish(
    topic: str,
    payload: Any = None,
    *,
    session_id: str | None = None,
    publisher_name: str | None = None,
    timestamp: str | None = None,
    **extra: Any,
) -> str:
    """``publish-json:{...}`` with the seed's fields (those left None are left out).

    ``extra`` adds further keys as they are (the server ignores those it does not know).

    Raises:
        ProtocolError: a bad topic, session or name; ``invalid_message`` for a payload
            that is not JSON.
    """
    message: dict[str, Any] = {}
    if publisher_name is not None:
        message["publisher_name"] = check_name(publisher_name) if publisher_name else publisher_name
    message["topic"] = check_topic(topic)
    message["payload"] = payload
    if timestamp is not None:
        message["timestamp"] = timestamp
    if session_id is not None:
        message["session_id"] = check_session(session_id)
    message.update(extra)
    try:
        return "publish-json:" + dumps_utf8(message).decode("utf-8")  # escapes a lone surrogate
    except (TypeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"the payload is not JSON: {exc}") from None


def _since_body(since: "Since | None") -> dict[str, Any]:
    return {} if since is None else {"since": {"offset": since.offset, "epoch": since.epoch}}


def encode_subscribe_json(topic: str, session_id: str | None = None, since: "Since | None" = None) -> str:
    """``subscribe-json:{"topic", "session_id"?, "since"?}``."""
    body: dict[str, Any] = {"topic": check_topic(topic)}
    if session_id:
        body["session_id"] = check_session(session_id)
    body.update(_since_body(since))
    return "subscribe-json:" + _dumps(body)


def encode_history(topic: str, session_id: str | None = None, limit: int | None = None,
                   since: "Since | None" = None) -> str:
    """``history:{"topic", "session_id"?, "limit"?, "since"?}``."""
    body: dict[str, Any] = {"topic": check_topic(topic)}
    if session_id:
        body["session_id"] = check_session(session_id)
    if limit is not None:
        body["limit"] = limit
    body.update(_since_body(since))
    return "history:" + _dumps(body)


def encode_auth(token: str) -> str:
    """``auth:{token}``: send it as the first frame of a connection opened without a token."""
    return f"auth:{_check_token_text(token)}"


def encode_refresh(token: str) -> str:
    """``refresh:{token}``: replace the connection's token by a fresh one of the same ``sub`` and ``sid``."""
    return f"refresh:{_check_token_text(token)}"


def _check_token_text(token: str) -> str:
    if not isinstance(token, str) or not token.strip() or _has_control_chars(token):
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "a token is a non-empty string without control characters")
    return token.strip()


# --------------------------------------------------------------------------- replies


_second_cache: tuple[int, str] = (0, "")
_time_ns = time.time_ns


def rfc3339_now(now: float | None = None) -> str:
    """An RFC 3339 UTC timestamp with microseconds, e.g. ``2024-01-24T10:25:37.123456+00:00``.

    Args:
        now: seconds since the epoch (default: the current time).
    """
    global _second_cache
    if now is None:  # once per publish without a timestamp: integers, no float rounding
        second, nanos = divmod(_time_ns(), 1_000_000_000)
        micros = nanos // 1000
    else:
        second, micros = divmod(round(now * 1_000_000), 1_000_000)
    cached_second, prefix = _second_cache
    if second != cached_second:  # formatting a datetime costs more than the rest of a publish
        prefix = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (second, prefix)
    # f"{micros:06d}" from two table lookups: the format spec cost a third of this function.
    return f"{prefix}.{_THREE_DIGITS[micros // 1000]}{_THREE_DIGITS[micros % 1000]}+00:00"


_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))


#: One encoder for every delivery and reply: ``json.dumps`` with arguments builds a new one
#: per call. Encoding keeps no state in it (each call has its own circular-reference marks).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_encode = _ENCODER.encode


def _dumps(value: Any) -> str:
    return _encode(value)


#: A UTF-16 surrogate on its own: valid in a Python str and in JSON as an escape, never in UTF-8.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_escape(match: "re.Match[str]") -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps_utf8(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes; a lone surrogate is written as an escape, nothing else is.

    A client can smuggle a lone surrogate in through a ``\\ud800`` escape; it
    cannot be encoded as UTF-8, so it goes out as the same ``\\ud800`` escape,
    and the rest of the message as it is (ASCII escapes for all of it would make
    non-ASCII text up to three times bigger). Surrogates only ever appear inside
    JSON strings, so escaping them in the encoded text is exact.
    """
    return _utf8(_dumps(value))


def _utf8(text: str) -> bytes:
    """JSON ``text`` as UTF-8, a lone surrogate (only ever inside a string) as its ``\\uXXXX`` escape."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub(_surrogate_escape, text).encode("utf-8")


#: The JSON text of a str, as the shared encoder writes it (C, ``ensure_ascii=False``).
_json_str = json.encoder.encode_basestring


@dataclass(frozen=True)
class Delivery:
    """One published message, as every subscriber receives it.

    ``user`` is set by the server for publishers that logged in (the token's
    ``sub``); it is None, and left out of the JSON, for anonymous publishers.
    """

    publisher_name: str
    topic: str
    payload: Any
    timestamp: str
    session_id: str
    user: str | None = None
    offset: int | None = None
    epoch: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __init__(self, publisher_name: str, topic: str, payload: Any, timestamp: str, session_id: str,
                 user: str | None = None, offset: int | None = None, epoch: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        # The generated __init__ of a frozen dataclass sets each field with object.__setattr__:
        # one publish builds a Delivery, and that was ~5% of its cost. Same fields, one update
        # (measured cheaper in the hub than nine stores into __dict__, which grow it twice).
        self.__dict__.update(publisher_name=publisher_name, topic=topic, payload=payload, timestamp=timestamp,
                             session_id=session_id, user=user, offset=offset, epoch=epoch,
                             extra={} if extra is None else extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object sent on the wire: the seed's fields in its order, then ours."""
        message = {
            "publisher_name": self.publisher_name,
            "topic": self.topic,
            "payload": self.payload,
            "timestamp": self.timestamp,
            "session_id": self.session_id,
        }
        if self.user is not None:
            message["user"] = self.user
        if self.offset is not None:
            message["offset"] = self.offset
            message["epoch"] = self.epoch
        return message

    def encode(self) -> bytes:
        """The UTF-8 JSON text of this delivery, ready to be framed.

        Raises:
            ValueError, TypeError: the payload is not JSON (NaN, a set, an object...).
        """
        # The usual delivery (str fields, a str payload, no position yet), once per publish:
        # ``_dumps(self.to_dict())``'s very text, key for key (JSON encoding composes: an
        # object's text is its members' texts joined), without the dict or the encoder's
        # Python wrapper (~40% of a publish's encoding).
        name, topic, payload, stamp, session, user = (self.publisher_name, self.topic, self.payload,
                                                      self.timestamp, self.session_id, self.user)
        if (type(payload) is str and type(name) is str and type(topic) is str and type(stamp) is str
                and type(session) is str and (user is None or type(user) is str) and self.offset is None):
            text = (f'{{"publisher_name":{_json_str(name)},"topic":{_json_str(topic)},"payload":{_json_str(payload)},'
                    f'"timestamp":{_json_str(stamp)},"session_id":{_json_str(session)}'
                    + ("}" if user is None else f',"user":{_json_str(user)}}}'))
            return _utf8(text)
        return dumps_utf8(self.to_dict())

    @classmethod
    def parse(cls, text: str) -> "Delivery":
        """Parse a delivery received from the server (fields it does not know go to ``extra``).

        Raises:
            ProtocolError: the text is not a delivery.
        """
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            raise ProtocolError(ErrorCode.INVALID_JSON, "a delivery must be a JSON object") from None
        if not isinstance(message, dict) or not isinstance(message.get("topic"), str):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a delivery must have a 'topic'")
        return cls.from_dict(message)

    @classmethod
    def from_dict(cls, message: dict[str, Any]) -> "Delivery":
        """A delivery from its decoded JSON object (``topic`` already checked to be a string)."""
        known = ("publisher_name", "topic", "payload", "timestamp", "session_id", "user", "offset", "epoch")
        offset, epoch = message.get("offset"), message.get("epoch")
        has_position = isinstance(offset, int) and not isinstance(offset, bool) and isinstance(epoch, str)
        return cls(
            publisher_name=str(message.get("publisher_name") or ""),
            topic=message["topic"],
            payload=message.get("payload"),
            timestamp=str(message.get("timestamp") or ""),
            session_id=str(message.get("session_id") or ""),
            user=message.get("user"),
            offset=offset if has_position else None,
            epoch=epoch if has_position else None,
            extra={k: v for k, v in message.items() if k not in known},
        )

    def __str__(self) -> str:
        who = self.publisher_name + (f" ({self.user})" if self.user else "")
        return f"{self.topic}@{self.session_id} from {who}: {self.payload!r}"


def encode_run(publisher_name: str, topic: str, session_id: str, user: str | None,
               items: list[tuple[Any, str | None]], default_timestamp: str,
               first_offset: int | None = None, epoch: str = "") -> list[bytes]:
    """``Delivery(publisher_name, topic, payload, timestamp or default_timestamp, session_id, user).encode()``
    for each ``(payload, timestamp)`` of ``items``, byte for byte: a run of one publisher's deliveries
    to one stream (``Hub.publish_run``), the text they share written once.

    Args:
        first_offset: with history on, the first one's offset (the next ones' follow): each is
            then ``with_position`` of its encoding, at its offset, in ``epoch``.

    Raises:
        ValueError, TypeError: a payload is not JSON (as ``Delivery.encode``).
    """
    if not (type(publisher_name) is str and type(topic) is str and type(session_id) is str
            and (user is None or type(user) is str) and type(default_timestamp) is str):
        return _encode_run_slowly(publisher_name, topic, session_id, user, items, default_timestamp,
                                  first_offset, epoch)
    # Delivery.encode's usual text, its fields before the payload and after the timestamp once,
    # and with_position's splice (the epoch is one of the hub's own: written as it is).
    head = f'{{"publisher_name":{_json_str(publisher_name)},"topic":{_json_str(topic)},"payload":'
    tail = f',"session_id":{_json_str(session_id)}' + ("" if user is None else f',"user":{_json_str(user)}')
    default = _json_str(default_timestamp)
    encoded = []
    if first_offset is None:
        tail += "}"
        for payload, stamp in items:
            if type(payload) is str and (not stamp or type(stamp) is str):
                encoded.append(_utf8(
                    f'{head}{_json_str(payload)},"timestamp":{_json_str(stamp) if stamp else default}{tail}'))
            else:
                encoded.append(Delivery(publisher_name, topic, payload, stamp or default_timestamp, session_id,
                                        user).encode())
        return encoded
    tail += ',"offset":'
    ending = f',"epoch":"{epoch}"}}'
    for offset, (payload, stamp) in enumerate(items, first_offset):
        if type(payload) is str and (not stamp or type(stamp) is str):
            encoded.append(_utf8(
                f'{head}{_json_str(payload)},"timestamp":{_json_str(stamp) if stamp else default}{tail}{offset}{ending}'))
        else:
            encoded.append(with_position(Delivery(publisher_name, topic, payload, stamp or default_timestamp,
                                                  session_id, user).encode(), offset, epoch))
    return encoded


def _encode_run_slowly(publisher_name: str, topic: str, session_id: str, user: str | None,
                       items: list[tuple[Any, str | None]], default_timestamp: str,
                       first_offset: int | None, epoch: str) -> list[bytes]:
    """``encode_run`` one ``Delivery.encode`` at a time (fields that are not all str)."""
    encoded = [Delivery(publisher_name, topic, payload, stamp or default_timestamp, session_id, user).encode()
               for payload, stamp in items]
    if first_offset is None:
        return encoded
    return [with_position(text, offset, epoch) for offset, text in enumerate(encoded, first_offset)]


def with_position(encoded: bytes, offset: int, epoch: str) -> bytes:
    """An encoded delivery (``Delivery.encode``) with ``"offset"`` and ``"epoch"`` as its last keys.

    Spliced in, not re-encoded: the hub encodes each publish once. ``epoch`` is
    one of the hub's own (``history.EPOCH_ALPHABET``), which needs no escaping.
    """
    return b"%s,\"offset\":%d,\"epoch\":\"%s\"}" % (encoded[:-1], offset, epoch.encode("ascii"))


# --------------------------------------------------------------------------- history replies

SUBSCRIBED_PREFIX = "subscribed:"
HISTORY_PREFIX = "history:"
ACK_PREFIX = "ack:"
AUTHENTICATED_PREFIX = "authenticated:"
REFRESHED_PREFIX = "refreshed:"


def _position_fields(body: dict[str, Any], offset: int | None, epoch: str | None) -> dict[str, Any]:
    if offset is not None:
        body["offset"] = offset
        body["epoch"] = epoch
    return body


def encode_subscribed(topic: str, session_id: str, offset: int | None = None, epoch: str | None = None,
                      recovered: bool | None = None) -> str:
    """``subscribed:{"topic", "session_id", "offset", "epoch", "recovered"?}``.

    ``offset``/``epoch`` are None when history is off; ``recovered`` when the subscribe had no ``since``.
    """
    body = _position_fields({"topic": topic, "session_id": session_id}, offset, epoch)
    if recovered is not None:
        body["recovered"] = recovered
    return SUBSCRIBED_PREFIX + _dumps(body)


def encode_history_reply(topic: str, session_id: str, offset: int | None, epoch: str | None,
                         messages: list[bytes]) -> bytes:
    """``history:{"topic", "session_id", "offset", "epoch", "messages": [...]}`` as UTF-8 bytes.

    ``messages`` are encoded deliveries, joined as they are (never decoded again).
    """
    head = _dumps(_position_fields({"topic": topic, "session_id": session_id}, offset, epoch))
    return b"".join([HISTORY_PREFIX.encode(), head[:-1].encode("utf-8"), b',"messages":[',
                     b",".join(messages), b"]}"])


def encode_ack(publish_id: str, offset: int | None = None, epoch: str | None = None,
               delivered: int | None = None) -> str:
    """``ack:{"id", "offset", "epoch", "delivered"}`` (no ``offset``/``epoch`` when history is off).

    ``delivered``: how many subscribers of the hub that took the publish it was handed to
    (left out when None).
    """
    body = _position_fields({"id": publish_id}, offset, epoch)
    if delivered is not None:
        body["delivered"] = delivered
    return ACK_PREFIX + _dumps(body)


def encode_authenticated(sub: str, sid: str, expires_in: int) -> str:
    """``authenticated:{"sub", "sid", "expires_in"}``: the answer to a good ``auth:``."""
    return AUTHENTICATED_PREFIX + _dumps({"sub": sub, "sid": sid, "expires_in": expires_in})


def encode_refreshed(expires_in: int) -> str:
    """``refreshed:{"expires_in"}``: the answer to a good ``refresh:``."""
    return REFRESHED_PREFIX + _dumps({"expires_in": expires_in})


def _reply_body(prefix: str, text: str) -> dict[str, Any]:
    try:
        body = json.loads(text[len(prefix):])
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"a {prefix} reply must be a JSON object")
    return body


@dataclass(frozen=True)
class Subscribed:
    """The ``subscribed:`` reply: the subscription is active from ``offset`` on."""

    topic: str
    session_id: str
    offset: int | None = None
    epoch: str | None = None
    recovered: bool | None = None

    @classmethod
    def parse(cls, text: str) -> "Subscribed":
        body = _reply_body(SUBSCRIBED_PREFIX, text)
        return cls(str(body.get("topic", "")), str(body.get("session_id", "")), body.get("offset"),
                   body.get("epoch"), body.get("recovered"))


@dataclass(frozen=True)
class HistoryReply:
    """The ``history:`` reply: a stream's top and retained messages, oldest first."""

    topic: str
    session_id: str
    offset: int | None
    epoch: str | None
    messages: list[Delivery]

    @classmethod
    def parse(cls, text: str) -> "HistoryReply":
        body = _reply_body(HISTORY_PREFIX, text)
        raw = body.get("messages")
        messages = [Delivery.from_dict(item) for item in raw if isinstance(item, dict)
                    and isinstance(item.get("topic"), str)] if isinstance(raw, list) else []
        return cls(str(body.get("topic", "")), str(body.get("session_id", "")), body.get("offset"),
                   body.get("epoch"), messages)


@dataclass(frozen=True)
class Ack:
    """The ``ack:`` reply: the publish with ``id`` is in its stream at ``offset``.

    ``delivered``: how many subscribers of the hub that took the publish it was handed
    to (with a distributed broker, that hub's only); None from a hub that does not say.
    """

    id: str
    offset: int | None = None
    epoch: str | None = None
    delivered: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Ack":
        body = _reply_body(ACK_PREFIX, text)
        delivered = body.get("delivered")
        return cls(str(body.get("id", "")), body.get("offset"), body.get("epoch"),
                   delivered if isinstance(delivered, int) and not isinstance(delivered, bool) else None)


@dataclass(frozen=True)
class Authenticated:
    """The ``authenticated:`` reply: the connection now acts as ``sub``, starting in ``sid``."""

    sub: str
    sid: str
    expires_in: int

    @classmethod
    def parse(cls, text: str) -> "Authenticated":
        body = _reply_body(AUTHENTICATED_PREFIX, text)
        return cls(str(body.get("sub", "")), str(body.get("sid", "")), _whole_seconds(body.get("expires_in")))


@dataclass(frozen=True)
class Refreshed:
    """The ``refreshed:`` reply: the connection's token was replaced; it lives ``expires_in`` more seconds."""

    expires_in: int

    @classmethod
    def parse(cls, text: str) -> "Refreshed":
        return cls(_whole_seconds(_reply_body(REFRESHED_PREFIX, text).get("expires_in")))


def _whole_seconds(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "'expires_in' must be a whole number of seconds")
    return value


def encode_error(code: ErrorCode | str, message: str, command: str | None = None,
                 publish_id: str | None = None) -> str:
    """The text of an ``error:`` reply.

    ``command`` names the verb that failed, if known; ``publish_id`` the id of
    the publish it answers, if it had one.
    """
    body: dict[str, str] = {"code": str(code), "message": message}
    if command:
        body["command"] = command
    if publish_id is not None:
        body["id"] = publish_id
    return ERROR_PREFIX + _dumps(body)


def is_error_reply(text: str) -> bool:
    """True for an ``error:`` reply; a delivery is a JSON object and never starts so."""
    return text.startswith(ERROR_PREFIX)


def parse_error(text: str) -> ServerError:
    """Turn an ``error:`` reply into a ``ServerError`` (to raise or to report)."""
    try:
        body = json.loads(text[len(ERROR_PREFIX):])
        publish_id = body.get("id")
        return ServerError(str(body["code"]), str(body.get("message", "")),
                           publish_id if isinstance(publish_id, str) else None)
    except (ValueError, KeyError, TypeError):
        return ServerError("unknown", text[len(ERROR_PREFIX):])


def command_verb(text: str) -> str | None:
    """The verb of a client frame, for error replies (None when it is no verb we know)."""
    verb = text.strip() if text.strip() == "ping" else text.partition(":")[0]
    return verb if verb in _VERBS else None


_VERBS = {"ping", "register-name", "register-session", "subscribe", "unsubscribe", "publish-json",
          "subscribe-json", "history", "auth", "refresh"}
