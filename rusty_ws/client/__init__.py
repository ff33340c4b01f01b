"""The blocking Python client: the I/O layer over the pure core, never Flask, never ``server/``.

- ``client``: ``WsClient``, the seed's API (connect, subscribe, publish, callbacks, close)
  and rusty_ws's (``publish_async``, ``history``, ``on_recovery_failed``).
- ``wire``: the live socket, how a call learns that the server is done with it,
  and the publishes kept until acknowledged.
- ``supervisor``: the reader thread: keepalive, reconnection with backoff, and
  the replay of name, session, subscriptions and unacknowledged publishes after it.
- ``subscriptions``: the last position seen in each subscribed stream, the
  duplicates it drops, and what a failed recovery is reported as.
- ``publishing``: publish ids and ``PublishFuture``.
- ``connector``: opens the WebSocket and keeps the token.
- ``dispatch``: runs the callbacks on their own thread.
- ``tokens``: ``/auth/token`` and ``/auth/refresh`` over HTTP.
- ``deadline``: one time budget for the several waits of ``close()``.
"""

from .client import WsClient
from .publishing import PublishFuture
from .subscriptions import RecoveryFailure

__all__ = ["WsClient", "PublishFuture", "RecoveryFailure"]
