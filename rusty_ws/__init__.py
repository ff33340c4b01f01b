"""rusty_ws: a WebSocket pub/sub hub for Flask, and a blocking Python client.

- ``create_app()``: the stand-alone hub (``flask --app rusty_ws run --port 8081``).
- ``PubSub``: the Flask extension, to embed the hub in an existing app.
- ``WsClient``: the blocking client.
- The exceptions, all under ``RustyWsError``.

The server and client halves load on first use, so ``from rusty_ws import
WsClient`` does not import Flask, and the pure modules stay pure.
"""

from __future__ import annotations

import importlib
from typing import Any

from .exceptions import (
    AuthError,
    BadCredentials,
    ConfigError,
    ConnectFailed,
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
from .protocol import CloseCode, Delivery, ErrorCode

__version__ = "0.1.0"

_LAZY = {"create_app": ".server.app", "PubSub": ".server.extension", "WsClient": ".client",
         "RecoveryFailure": ".client"}

__all__ = [
    "create_app",
    "PubSub",
    "WsClient",
    "RecoveryFailure",
    "Delivery",
    "CloseCode",
    "ErrorCode",
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


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'rusty_ws' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
