"""rusty_ws: a WebSocket pub/sub hub for Flask, and a blocking Python client.

- ``create_app()``: the stand-alone hub (``flask --app rusty_ws run --port 8081``).
- ``PubSub``: the Flask extension, to embed the hub in an existing app.
- The exceptions, all under ``RustyWsError``.
"""

from .app import create_app
from .exceptions import (
    AuthError,
    BadCredentials,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    Forbidden,
    ProtocolError,
    RustyWsError,
    ServerError,
    TokenExpired,
    TokenInvalid,
)
from .extension import PubSub
from .protocol import CloseCode, Delivery, ErrorCode

__version__ = "0.1.0"

__all__ = [
    "create_app",
    "PubSub",
    "Delivery",
    "CloseCode",
    "ErrorCode",
    "RustyWsError",
    "ProtocolError",
    "AuthError",
    "BadCredentials",
    "TokenExpired",
    "TokenInvalid",
    "Forbidden",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "ServerError",
]
