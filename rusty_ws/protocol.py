"""The wire protocol, as pure functions: text in, dataclasses out, and back.

Nothing here touches a socket, a thread or Flask, so the server and the Python
client share one grammar and the tests can use literal strings.

Client -> server text frames (see ``docs/protocol.md``)::

    register-name:{name}
    register-session:{session_id}
    subscribe:{topic}|{session_id}      ("|{session_id}" optional)
    unsubscribe:{topic}|{session_id}    ("|{session_id}" optional)
    publish-json:{json object}
    ping

Server -> client text frames: a delivery (a JSON object), ``pong``, or
``error:{"code": ..., "message": ...}``.
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
    "ErrorCode",
    "CloseCode",
    "ClosePolicy",
    "CLOSE_CODE_EXPLANATIONS",
    "close_policy",
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
    "Delivery",
    "encode_error",
    "parse_error",
    "is_error_reply",
    "PONG_REPLY",
    "rfc3339_now",
]

#: The session of an anonymous connection that registered none (as the seed's server does).
DEFAULT_SESSION = "default"
#: Longest client name, in characters.
MAX_NAME_LENGTH = 256
#: Longest topic, in characters.
MAX_TOPIC_LENGTH = 256
#: Longest session id, in characters.
MAX_SESSION_LENGTH = 256

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
    """``publish-json:{...}``; fields left out are None and filled in by the server."""

    topic: str
    payload: Any = None
    session_id: str | None = None
    publisher_name: str | None = None
    timestamp: str | None = None


Command = Union[Ping, RegisterName, RegisterSession, Subscribe, Unsubscribe, Publish]


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _has_control_chars(text: str) -> bool:
    return _CONTROL_CHARS.search(text) is not None


def check_name(name: str) -> str:
    """Return ``name`` if it is a usable client name, else raise ``ProtocolError``."""
    if not name or len(name) > MAX_NAME_LENGTH or _has_control_chars(name):
        raise ProtocolError(
            ErrorCode.INVALID_NAME,
            f"a name is 1 to {MAX_NAME_LENGTH} characters without control characters",
        )
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


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and numbers that overflow to them.

    Raises:
        ValueError: the text is not JSON we could send on unchanged.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _optional_string(message: dict[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"'{key}' must be a string")


def _parse_publish(argument: str) -> Publish:
    try:
        message = loads_strict(argument)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"publish-json needs valid JSON: {exc}")
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "publish-json needs a JSON object")
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
    )


def parse_command(text: str) -> Command:
    """Parse one client text frame.

    Raises:
        ProtocolError: the frame is not a command we know, or its argument is bad.
    """
    if text.strip() == "ping":
        return Ping()
    verb, colon, argument = text.partition(":")
    if colon:
        if verb == "publish-json":
            return _parse_publish(argument)
        if verb == "subscribe":
            return Subscribe(*_parse_topic_and_session(argument))
        if verb == "unsubscribe":
            return Unsubscribe(*_parse_topic_and_session(argument))
        if verb == "register-name":
            return RegisterName(check_name(argument))
        if verb == "register-session":
            return RegisterSession(check_session(argument))
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
        return "publish-json:" + _dumps(message)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"the payload is not JSON: {exc}") from None


# --------------------------------------------------------------------------- replies


_second_cache: tuple[int, str] = (0, "")


def rfc3339_now(now: float | None = None) -> str:
    """An RFC 3339 UTC timestamp with microseconds, e.g. ``2024-01-24T10:25:37.123456+00:00``.

    Args:
        now: seconds since the epoch (default: the current time).
    """
    global _second_cache
    now = time.time() if now is None else now
    second, micros = divmod(round(now * 1_000_000), 1_000_000)
    cached_second, prefix = _second_cache
    if second != cached_second:  # formatting a datetime costs more than the rest of a publish
        prefix = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (second, prefix)
    return f"{prefix}.{micros:06d}+00:00"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps_utf8(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes; falls back to ASCII escapes for lone surrogates.

    A client can smuggle a lone surrogate in through a ``\\ud800`` escape; it
    cannot be encoded as UTF-8, so such a message is sent with escapes instead.
    """
    try:
        return _dumps(value).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")


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
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object sent on the wire, in the seed's field order."""
        message = {
            "publisher_name": self.publisher_name,
            "topic": self.topic,
            "payload": self.payload,
            "timestamp": self.timestamp,
            "session_id": self.session_id,
        }
        if self.user is not None:
            message["user"] = self.user
        return message

    def encode(self) -> bytes:
        """The UTF-8 JSON text of this delivery, ready to be framed.

        Raises:
            ValueError, TypeError: the payload is not JSON (NaN, a set, an object...).
        """
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
            raise ProtocolError(ErrorCode.INVALID_JSON, "a delivery must be a JSON object")
        if not isinstance(message, dict) or not isinstance(message.get("topic"), str):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a delivery must have a 'topic'")
        known = ("publisher_name", "topic", "payload", "timestamp", "session_id", "user")
        return cls(
            publisher_name=str(message.get("publisher_name") or ""),
            topic=message["topic"],
            payload=message.get("payload"),
            timestamp=str(message.get("timestamp") or ""),
            session_id=str(message.get("session_id") or ""),
            user=message.get("user"),
            extra={k: v for k, v in message.items() if k not in known},
        )

    def __str__(self) -> str:
        who = self.publisher_name + (f" ({self.user})" if self.user else "")
        return f"{self.topic}@{self.session_id} from {who}: {self.payload!r}"


def encode_error(code: ErrorCode | str, message: str, command: str | None = None) -> str:
    """The text of an ``error:`` reply. ``command`` names the verb that failed, if known."""
    body: dict[str, str] = {"code": str(code), "message": message}
    if command:
        body["command"] = command
    return ERROR_PREFIX + _dumps(body)


def is_error_reply(text: str) -> bool:
    """True for an ``error:`` reply; a delivery is a JSON object and never starts so."""
    return text.startswith(ERROR_PREFIX)


def parse_error(text: str) -> ServerError:
    """Turn an ``error:`` reply into a ``ServerError`` (to raise or to report)."""
    try:
        body = json.loads(text[len(ERROR_PREFIX):])
        return ServerError(str(body["code"]), str(body.get("message", "")))
    except (ValueError, KeyError, TypeError):
        return ServerError("unknown", text[len(ERROR_PREFIX):])


def command_verb(text: str) -> str | None:
    """The verb of a client frame, for error replies (None when it is no verb we know)."""
    verb = text.strip() if text.strip() == "ping" else text.partition(":")[0]
    return verb if verb in _VERBS else None


_VERBS = {"ping", "register-name", "register-session", "subscribe", "unsubscribe", "publish-json"}
