"""The blocking Python client: the I/O layer over the pure core, never Flask, never ``server/``.

- ``client``: ``WsClient``, the seed's API (connect, subscribe, publish, callbacks).
- ``connector``: opens the WebSocket and keeps the token.
- ``dispatch``: runs the callbacks on their own thread.
- ``tokens``: ``/auth/token`` and ``/auth/refresh`` over HTTP.
"""

from .client import WsClient

__all__ = ["WsClient"]
