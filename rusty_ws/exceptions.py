"""Every error rusty_ws raises, under one base class.

The tree::

    RustyWsError
    ├── ConfigError          a setting has a value that cannot work (also a ``ValueError``)
    ├── ProtocolError        a command or frame broke the wire protocol (carries ``code``)
    ├── AuthError            login or token trouble (carries ``status``)
    │   ├── BadCredentials   wrong username or password
    │   ├── TokenExpired     the token's ``exp`` has passed
    │   ├── TokenInvalid     bad signature, wrong algorithm, missing claims, garbage
    │   └── Forbidden        a valid identity asked for something it may not have
    ├── ConnectFailed        the WebSocket could not be opened (refused, unreachable, TLS, HTTP error)
    ├── ConnectionClosed     the WebSocket is gone (carries ``code`` and ``reason``)
    │   ├── ConnectionClosedOK     it closed normally (1000, 1001)
    │   └── ConnectionClosedError  it closed with an error code, or dropped
    └── ServerError          the server answered a command with an ``error:`` reply

Waits that run out of time raise the builtin ``TimeoutError``.

Exceptions carry their data as attributes so callers never parse messages.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RustyWsError",
    "ConfigError",
    "ProtocolError",
    "AuthError",
    "BadCredentials",
    "TokenExpired",
    "TokenInvalid",
    "Forbidden",
    "ConnectFailed",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "ServerError",
]


class RustyWsError(Exception):
    """Base class of every rusty_ws exception."""


class ConfigError(RustyWsError, ValueError):
    """A setting has a value that cannot work; raised when the hub is set up (``init_app``).

    The message is one line that names the setting, its value and what is
    expected, e.g. ``RUSTY_WS_MAX_CONNECTIONS=0: must be a whole number > 0``;
    the command line prints just that line. A ``ValueError`` too, as the hub
    raised before this class existed.

    Attributes:
        setting: the setting's name as it was given (``RUSTY_WS_...``, or an alias
            such as ``JWT_EXPIRATION_SECONDS``).
        value: the value it has (a broker URL's password is masked).
        expected: what it must be, or what is wrong with it.
    """

    def __init__(self, setting: str, value: Any, expected: str) -> None:
        super().__init__(f"{setting}={value!r}: {expected}")
        self.setting = setting
        self.value = value
        self.expected = expected


class ProtocolError(RustyWsError):
    """A command could not be understood or carried out.

    Attributes:
        code: the stable machine-readable error code (a ``protocol.ErrorCode`` value).
        message: a sentence for humans.
        publish_id: the ``id`` of the publish that failed, when it had one.
    """

    def __init__(self, code: str, message: str, publish_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message
        self.publish_id = publish_id


class AuthError(RustyWsError):
    """Authentication failed.

    Attributes:
        code: a short stable code (``bad_credentials``, ``token_expired``, ...).
        status: the HTTP status the server answers with.
    """

    code = "unauthorized"
    status = 401

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class BadCredentials(AuthError):
    """The username or password is wrong."""

    code = "bad_credentials"


class TokenExpired(AuthError):
    """The token was valid once, but its ``exp`` claim has passed."""

    code = "token_expired"


class TokenInvalid(AuthError):
    """The token is not one we issued: bad signature or algorithm, missing claims, garbage."""

    code = "token_invalid"


class Forbidden(AuthError):
    """A valid identity asked for something it may not have (another session, another origin)."""

    code = "forbidden"
    status = 403


class ConnectFailed(RustyWsError):
    """The WebSocket could not be opened: refused, unreachable, TLS failure, or an HTTP error.

    Attributes:
        status: the HTTP status the server answered the handshake with, if it answered.
        retry_after: the answer's ``Retry-After`` header as it came (a hub pacing a
            reconnect storm sends one with its 503), or None.
    """

    def __init__(self, message: str, status: int | None = None, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ConnectionClosed(RustyWsError):
    """The WebSocket connection is closed.

    Attributes:
        code: the close code received (1006 when the connection dropped without one).
        reason: the close reason received, possibly empty.
    """

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed normally (1000 or 1001)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed with an error code, or dropped without a close frame."""


class ServerError(RustyWsError):
    """The server answered a command with an ``error:`` reply.

    Attributes:
        code: the reply's stable error code, e.g. ``forbidden_session``.
        message: the reply's human-readable message.
        publish_id: the ``id`` of the publish the reply answers, if it had one.
    """

    def __init__(self, code: str, message: str, publish_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.publish_id = publish_id
