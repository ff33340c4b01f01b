"""The blocking Python client: the I/O layer over the pure core, never Flask, never ``server/``.

- ``client``: ``WsClient``, the seed's API (connect, subscribe, publish, callbacks, close)
  and how a call learns that the server is done with it.
- ``supervisor``: the reader thread: keepalive, reconnection with backoff, and
  the replay of name, session and subscriptions after it.
- ``connector``: opens the WebSocket and keeps the token.
- ``dispatch``: runs the callbacks on their own thread.
- ``tokens``: ``/auth/token`` and ``/auth/refresh`` over HTTP.
- ``deadline``: one time budget for the several waits of ``close()``.
"""

from .client import WsClient

__all__ = ["WsClient"]
