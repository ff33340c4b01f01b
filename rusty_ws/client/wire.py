"""The live socket of a ``WsClient``, the calls waiting for its answers, and the unacknowledged publishes.

The hub carries out a connection's commands in order and answers them in
that order, so answers are matched to calls by position, oldest first:

- A seed command (``register-*``, ``subscribe``, ``unsubscribe``, a publish
  without id) has no reply of its own: it is sent with a ``ping``, and its
  call is done at that ``pong``. An ``error:`` arriving before the pong is its
  answer.
- A history command (``subscribe-json``, ``history``, a publish with an id)
  always gets its own reply (``subscribed:``, ``history:``, ``ack:``) or an
  ``error:``; no ping is sent, and that reply is its answer.

A publish with an id lives on past its socket: until it is acknowledged it
stays in ``Wire``'s list of publishes, and every new socket sends the whole
list again (same ids, in first-send order) before callers can use it. The hub
remembers ids, so a publish that did get through is acknowledged as the first
one and not delivered twice.

Writers are the callers' threads and the reader thread (which registers each
new socket); only the reader thread reads. Nothing here runs user code.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import websocket

from ..exceptions import ConnectionClosed, ConnectionClosedError, RustyWsError, ServerError
from ..protocol import Ack, encode_ping
from .publishing import OutgoingPublish

__all__ = ["Waiter", "Wire", "Call", "shut_down"]

logger = logging.getLogger("rusty_ws.client")


class Waiter:
    """One call waiting, on one socket, for its answer.

    Args:
        label: names the call in errors and logs.
        expects: the reply class (``Subscribed``, ``HistoryReply``, ``Ack``) of a history
            command; None for a seed command, which is answered by the pong after it.
        on_answer: runs on the reader thread when the answer arrives (never when the
            socket drops first), before the waiting caller wakes.
    """

    __slots__ = ("done", "error", "reply", "label", "expects", "on_answer")

    def __init__(self, label: str, expects: type | None = None,
                 on_answer: Callable[["Waiter"], Any] | None = None) -> None:
        self.done = threading.Event()
        self.error: RustyWsError | None = None
        self.reply: Any = None
        self.label = label
        self.expects = expects
        self.on_answer = on_answer

    @property
    def needs_ping(self) -> bool:
        """A seed command: only the pong of a ping sent after it says it is done."""
        return self.expects is None

    def refuse(self, error: ServerError) -> None:
        """An ``error:`` reply came before the pong: the answer to the command (the first one counts)."""
        self.error = self.error or error

    def settle(self, reply: Any = None, error: RustyWsError | None = None) -> None:
        """The answer arrived: run ``on_answer``, then wake the caller."""
        self.reply = reply
        self.error = self.error or error
        if self.on_answer is not None:
            self.on_answer(self)
        self.done.set()

    def fail(self, error: RustyWsError) -> None:
        """The socket went before the answer (``on_answer`` does not run)."""
        self.error = self.error or error
        self.done.set()

    def wait(self, timeout: float) -> Any:
        """Block until answered; return the reply (None for a seed command).

        Raises:
            TimeoutError: no answer within ``timeout`` seconds.
            ServerError, ConnectionClosed: the answer was an error, or the socket went.
        """
        if not self.done.wait(timeout):
            raise TimeoutError(f"no answer to {self.label} within {timeout}s")
        if self.error is not None:
            raise self.error
        return self.reply


#: Texts to send, and the waiter they answer.
Call = tuple[Sequence[str], Waiter]


class Wire:
    """The live socket, the calls waiting for its answers, and the publishes not yet acknowledged."""

    def __init__(self, max_unacked: int = 10_000) -> None:
        # _wire_lock guards _ws (the live socket), _waiters, _publishes and _refusal: a
        # command (and its ping) is written and its Waiter queued as one step, so the n-th
        # answer is the n-th waiter's; a publish joins _publishes and goes on the live socket
        # as one step, so each socket sends it exactly once (attach() or publish(), never
        # both, never neither). Never held while user code runs, nor while waiting.
        self._wire_lock = threading.Lock()
        self._ws: websocket.WebSocket | None = None
        self._waiters: collections.deque[Waiter] = collections.deque()
        # Unacknowledged publishes, in first-send order (a dict as an ordered set).
        self._publishes: dict[OutgoingPublish, None] = {}
        # At most max_unacked of them: past it publish() waits on _room (over _wire_lock),
        # which every removal from _publishes, and the client's closing, notifies.
        self.max_unacked = max_unacked
        self._room = threading.Condition(self._wire_lock)
        # Set by close_publishes(): how the connection ended, what every later publish gets.
        self._refusal: ConnectionClosed | None = None

    @property
    def socket(self) -> websocket.WebSocket | None:
        """The live socket, or None between connections."""
        with self._wire_lock:
            return self._ws

    # ------------------------------------------------------------------ writing

    def attach(self, ws: websocket.WebSocket, calls: Sequence[Call]) -> None:
        """Make ``ws`` the live socket, send ``calls`` in order, then every unacknowledged publish.

        Raises:
            websocket.WebSocketException, OSError: the socket failed while sending; then
                ``ws`` is not live and no waiter of it is left queued (the caller aborts it).
        """
        with self._wire_lock:
            self._ws = ws
            try:
                for texts, waiter in calls:
                    self._send(ws, texts, waiter)
                for item in self._publishes:
                    self._send_publish(ws, item)
            except BaseException:
                self._ws = None
                self._waiters.clear()  # never answered: the next socket starts in step
                raise

    def send(self, ws: websocket.WebSocket, texts: Sequence[str], waiter: Waiter) -> bool:
        """Send ``texts`` (and a ping, for a seed command) on ``ws``, and queue ``waiter``.

        Returns:
            False if ``ws`` is no longer the live socket (nothing was sent).

        Raises:
            ConnectionClosedError: the socket failed while sending (it is shut down, and
                the reader reconnects).
        """
        with self._wire_lock:
            if self._ws is not ws:
                return False
            try:
                self._send(ws, texts, waiter)
            except (websocket.WebSocketException, OSError) as exc:
                shut_down(ws)  # half a frame may have gone: the reader reconnects
                raise ConnectionClosedError(1006, f"send failed: {exc}") from None
            return True

    def publish(self, item: OutgoingPublish, timeout: float) -> None:
        """Keep ``item`` until it is acknowledged, and send it now if a socket is live.

        Between connections it waits for the next socket. A socket that fails while
        sending is shut down (the reader then reconnects and sends ``item`` again).
        With ``max_unacked`` publishes kept already, it first waits up to ``timeout``
        for one of them to be answered (backpressure: a publisher outrunning its acks,
        or one publishing while the hub is unreachable, is slowed, never dropped).

        Raises:
            ConnectionClosedError: the client is closed for good.
            TimeoutError: still ``max_unacked`` publishes waiting after ``timeout``; ``item``
                was not kept (nothing was sent).
        """
        with self._wire_lock:
            if len(self._publishes) >= self.max_unacked and self._refusal is None:
                self._room.wait_for(lambda: len(self._publishes) < self.max_unacked or self._refusal is not None,
                                    timeout)
            if self._refusal is not None:
                raise _copy(self._refusal)
            if len(self._publishes) >= self.max_unacked:
                raise TimeoutError(
                    f"{item.label} not sent: {len(self._publishes)} publishes are still waiting for their "
                    f"ack after {timeout}s (max_unacked={self.max_unacked}; the hub is slow or unreachable). "
                    "Wait on earlier futures before publishing more, or raise max_unacked")
            self._publishes[item] = None
            ws = self._ws
            if ws is None:
                return
            try:
                self._send_publish(ws, item)
            except (websocket.WebSocketException, OSError) as exc:
                logger.info("sending %s failed (%s); it goes again on the next connection", item.label, exc)
                shut_down(ws)

    def _send(self, ws: websocket.WebSocket, texts: Sequence[str], waiter: Waiter) -> None:
        """Requires holding ``_wire_lock``.

        ``waiter`` is queued first: if the socket fails halfway, the server may still
        answer what it got, and a socket that failed while sending is shut down, so
        ``drop()`` fails the waiter instead of letting it take another call's answer.
        """
        assert self._wire_lock.locked()
        self._waiters.append(waiter)
        for text in texts:
            ws.send(text)
        if waiter.needs_ping:
            ws.send(encode_ping())

    def _send_publish(self, ws: websocket.WebSocket, item: OutgoingPublish) -> None:
        """Requires holding ``_wire_lock``."""
        self._send(ws, (item.text,), Waiter(item.label, Ack, functools.partial(self._publish_answered, item)))

    # ------------------------------------------------------------------ answers (reader thread)

    def answered(self) -> bool:
        """A ``pong``: the oldest seed command is done. False when no call was waiting.

        A history command still ahead of it was skipped by the server (one that
        does not speak them): it fails with ``ServerError("no_reply")``.
        """
        skipped: list[Waiter] = []
        with self._wire_lock:
            while self._waiters and not self._waiters[0].needs_ping:
                skipped.append(self._waiters.popleft())
            waiter = self._waiters.popleft() if self._waiters else None
        for lost in skipped:
            lost.settle(error=ServerError("no_reply", f"the server did not answer {lost.label}; "
                                                      "does it speak rusty_ws's history commands?"))
        if waiter is not None:
            waiter.settle()
        return waiter is not None or bool(skipped)

    def replied(self, reply: Any) -> bool:
        """A ``subscribed:``, ``history:`` or ``ack:`` reply: the oldest call's answer.

        False when the oldest call is not a history command (nobody waited for it).
        """
        with self._wire_lock:
            waiter = self._waiters[0] if self._waiters else None
            if waiter is None or waiter.needs_ping:
                return False
            self._waiters.popleft()
        if not isinstance(reply, waiter.expects):  # type: ignore[arg-type]
            waiter.settle(error=ServerError("unexpected_reply", f"{waiter.label} got {reply!r}"))
        else:
            waiter.settle(reply)
        return True

    def refused(self, error: ServerError) -> bool:
        """An ``error:`` reply: the answer to the oldest call. False when no call was waiting."""
        with self._wire_lock:
            waiter = self._waiters[0] if self._waiters else None
            if waiter is not None and not waiter.needs_ping:
                self._waiters.popleft()
        if waiter is None:
            return False
        if waiter.needs_ping:
            waiter.refuse(error)  # done at the pong that follows
        else:
            waiter.settle(error=error)
        return True

    def _publish_answered(self, item: OutgoingPublish, waiter: Waiter) -> None:
        """The ack (or error) of ``item`` arrived: it is no longer sent again. Reader thread."""
        if not self._take_publish(item):
            return  # abandoned, or failed by close_publishes, meanwhile
        if waiter.error is not None:
            item.future.set_exception(waiter.error)
            return
        ack = waiter.reply
        if ack.id != item.id:
            logger.warning("%s was answered with the ack of %r", item.label, ack.id)
        item.future.set_result(ack)

    # ------------------------------------------------------------------ endings

    def drop(self, ws: websocket.WebSocket, error: RustyWsError) -> None:
        """``ws`` is gone: forget it (if still live) and fail every waiting call with ``error``.

        Unacknowledged publishes stay, for the next socket.
        """
        with self._wire_lock:
            if self._ws is ws:
                self._ws = None
            waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            waiter.fail(error)

    def abandon(self, item: OutgoingPublish, error: RustyWsError | TimeoutError) -> bool:
        """Stop sending ``item`` again and fail it with ``error``; False if it was answered already."""
        owned = self._take_publish(item)
        if owned:
            item.future.set_exception(error)
        return owned

    def _take_publish(self, item: OutgoingPublish) -> bool:
        """Remove ``item`` from the publishes; True for the one caller that did (it settles the future)."""
        with self._wire_lock:
            if item not in self._publishes:
                return False
            del self._publishes[item]
            self._room.notify()
            return True

    def close_publishes(self, error: ConnectionClosed) -> None:
        """The client is closed for good: fail every unacknowledged publish and refuse new ones. Idempotent."""
        with self._wire_lock:
            self._refusal = self._refusal or error
            items, self._publishes = list(self._publishes), {}
            self._room.notify_all()
        for item in items:
            item.future.set_exception(_copy(error))

    def take(self) -> websocket.WebSocket | None:
        """Forget the live socket and return it (for ``close()``)."""
        with self._wire_lock:
            ws, self._ws = self._ws, None
            return ws


def _copy(error: ConnectionClosed) -> ConnectionClosed:
    """A fresh exception each time it is raised (a raised exception collects its traceback)."""
    return type(error)(error.code, error.reason)


def shut_down(ws: websocket.WebSocket) -> None:
    """Wake the thread blocked reading ``ws`` (its next read sees the end of the stream).

    websocket-client's ``abort()`` does this only while ``ws.connected``, which
    ``send_close()`` has already cleared, so shut the raw socket down here.
    """
    sock = ws.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
