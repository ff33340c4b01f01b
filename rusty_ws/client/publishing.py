"""Acknowledged publishes: their ids, the future a caller holds, and the frame that goes out (again).

Every publish of a ``WsClient`` carries an ``id``: a random prefix made once per
client, then a counter (``3f9a1c2e5b7d4a10-17``). The hub acknowledges each id
and treats a repeat within its idempotency window as the first one, so the
client may send a publish again after a reconnection without delivering it
twice. Ids are per session on the hub, which is why the prefix is random and
not the client's name: two clients in one session never share an id.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import secrets
from collections.abc import Callable
from typing import Any

from ..protocol import Ack

__all__ = ["OutgoingPublish", "PublishFuture", "PublishIds"]


class PublishFuture(concurrent.futures.Future):
    """The future of one ``WsClient.publish_async``: resolves to the hub's ``protocol.Ack``.

    It fails with ``ServerError`` (the hub refused the message; ``.publish_id``
    names it) or ``ConnectionClosedError`` (the client closed before the ack).
    It cannot be cancelled: the message may be on the wire already.

    ``result()`` may be called from any thread, callbacks included: the reader
    thread resolves it. Functions given to ``add_done_callback`` run on the
    client's dispatcher thread, like every other callback (or at once, in the
    calling thread, when the future is done already).

    Attributes:
        publish_id: the ``id`` the publish carries on the wire.
    """

    def __init__(self, publish_id: str, run_callback: Callable[..., None]) -> None:
        super().__init__()
        self.publish_id = publish_id
        self._run_callback = run_callback
        self.set_running_or_notify_cancel()  # running from now on: cancel() returns False

    def add_done_callback(self, fn: Callable[["PublishFuture"], Any]) -> None:
        if self.done():
            super().add_done_callback(fn)  # type: ignore[arg-type]  # a PublishFuture is the Future
        else:
            super().add_done_callback(lambda future: self._run_callback(fn, future))

    def result(self, timeout: float | None = None) -> Ack:
        return super().result(timeout)


class OutgoingPublish:
    """One publish until it is acknowledged: its id, its ``publish-json`` frame, and its future.

    Compared by identity: two publishes with the same (caller-chosen) id are two entries.
    """

    __slots__ = ("id", "text", "future", "label")

    def __init__(self, publish_id: str, text: str, topic: str, run_callback: Callable[..., None]) -> None:
        self.id = publish_id
        self.text = text
        self.future = PublishFuture(publish_id, run_callback)
        self.label = f"publish {topic} ({publish_id})"


class PublishIds:
    """Makes the ids of one client's publishes: unique in its session, in practice, across clients too."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(8)
        self._numbers = itertools.count(1)  # next() on a count is atomic in CPython: no lock needed

    def next(self) -> str:
        return f"{self.prefix}-{next(self._numbers)}"
