"""``WsClient``: the seed's Rust client, as a blocking, threaded Python client.

::

    with WsClient.connect_with_session("Client1", "session-A", "ws://127.0.0.1:8081/ws") as client:
        client.on_message("NetworkConnectedEvent", print)
        client.subscribe("Client1", "NetworkConnectedEvent")   # registered when it returns
        client.publish("Client1", "NetworkConnectedEvent", "Network connected")

This module is the call API: the constructors, the calls, the callbacks'
registration, ``close()``, and the ``_Ack``/``_Wire`` machinery that tells a
call when the server is done with it. What keeps the connection alive is the
``Supervisor`` (``supervisor.py``), which the client owns and starts.

Threads, each named and each ended by ``close()``:

- ``rusty_ws-client-reader-{name}`` (the supervisor's): the only reader of the
  socket. Answers pings, sends keepalive pings, matches ``pong``/``error:``
  replies to the calls waiting for them, and reconnects (with backoff) when the
  connection drops.
- ``rusty_ws-client-dispatch-{name}`` (``dispatch.py``): runs every callback, in
  arrival order, so a slow callback never stops the reader, and a callback may
  call ``publish``/``subscribe`` without deadlock.

How a call knows the server is done with it: every command is sent together
with a ``ping``, and the server handles a connection's commands in order. An
``error:`` arriving before that ``pong`` is the answer to the command; the
``pong`` alone means success.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Sequence, TypeVar

import websocket

from .connector import REFRESH_THRESHOLD, Connector
from .deadline import Deadline
from .dispatch import CallbackDispatcher, DeliveryCallback, MessageCallback
from ..exceptions import ConnectFailed, ConnectionClosedError, RustyWsError, ServerError, TokenInvalid
from ..protocol import (
    check_name,
    check_session,
    encode_ping,
    encode_publish,
    encode_subscribe,
    encode_unsubscribe,
    rfc3339_now,
)
from .supervisor import State, Supervisor
from .tokens import Credentials, seconds_left

__all__ = ["WsClient", "REFRESH_THRESHOLD"]

logger = logging.getLogger("rusty_ws.client")

F = TypeVar("F", bound=Callable[..., Any])


class _Ack:
    """One call waiting for the ``pong`` that follows its command.

    ``on_answer(ack)``, if given, runs on the reader thread when that pong arrives.
    """

    __slots__ = ("done", "error", "label", "on_answer")

    def __init__(self, label: str, on_answer: Callable[["_Ack"], Any] | None = None) -> None:
        self.done = threading.Event()
        self.error: RustyWsError | None = None
        self.label = label
        self.on_answer = on_answer

    def refuse(self, error: ServerError) -> None:
        """An ``error:`` reply came before the pong: the answer to the command (the first one counts)."""
        self.error = self.error or error

    def fail(self, error: RustyWsError) -> None:
        self.error = self.error or error
        self.done.set()

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise TimeoutError(f"no answer to {self.label} within {timeout}s")
        if self.error is not None:
            raise self.error


class _Wire:
    """The live socket and the calls waiting for its pongs, which answer them in order.

    Commands are written by the callers' threads and by the reader thread (the
    registration after a (re)connection); only the reader thread reads.
    """

    def __init__(self) -> None:
        # _wire_lock guards _ws (the live socket) and _acks: a command and its ping are
        # written, and its _Ack queued, as one step, so the n-th pong answers the n-th ack.
        # Never held while user code runs, nor while waiting for an answer.
        self._wire_lock = threading.Lock()
        self._ws: websocket.WebSocket | None = None
        self._acks: collections.deque[_Ack] = collections.deque()

    @property
    def socket(self) -> websocket.WebSocket | None:
        """The live socket, or None between connections."""
        with self._wire_lock:
            return self._ws

    def attach(self, ws: websocket.WebSocket, texts: Sequence[str], label: str,
               on_answer: Callable[[_Ack], Any] | None = None) -> _Ack:
        """Make ``ws`` the live socket and send ``texts`` and a ping; returns the ping's ack.

        Raises:
            websocket.WebSocketException, OSError: the socket failed while sending.
        """
        ack = _Ack(label, on_answer)
        with self._wire_lock:
            self._ws = ws
            self._send_with_ping(ws, texts, ack)
        return ack

    def send(self, ws: websocket.WebSocket, texts: Sequence[str], ack: _Ack) -> bool:
        """Send ``texts`` and a ping on ``ws``, and queue ``ack``; False if ``ws`` is no longer live.

        Raises:
            ConnectionClosedError: the socket failed while sending.
        """
        with self._wire_lock:
            if self._ws is not ws:
                return False
            try:
                self._send_with_ping(ws, texts, ack)
            except (websocket.WebSocketException, OSError) as exc:
                raise ConnectionClosedError(1006, f"send failed: {exc}") from None
            return True

    def _send_with_ping(self, ws: websocket.WebSocket, texts: Sequence[str], ack: _Ack) -> None:
        """Requires holding ``_wire_lock``."""
        assert self._wire_lock.locked()
        for text in texts:
            ws.send(text)
        ws.send(encode_ping())
        self._acks.append(ack)

    def answered(self) -> bool:
        """A ``pong``: the oldest call is done. False when no call was waiting."""
        with self._wire_lock:
            ack = self._acks.popleft() if self._acks else None
        if ack is None:
            return False
        ack.done.set()
        if ack.on_answer is not None:
            ack.on_answer(ack)
        return True

    def refused(self, error: ServerError) -> bool:
        """An ``error:`` reply: the answer to the oldest call. False when no call was waiting."""
        with self._wire_lock:
            ack = self._acks[0] if self._acks else None
        if ack is None:
            return False
        ack.refuse(error)
        return True

    def drop(self, ws: websocket.WebSocket, error: RustyWsError) -> None:
        """``ws`` is gone: forget it (if still live) and fail every waiting call with ``error``."""
        with self._wire_lock:
            if self._ws is ws:
                self._ws = None
            acks, self._acks = self._acks, collections.deque()
        for ack in acks:
            ack.fail(error)

    def take(self) -> websocket.WebSocket | None:
        """Forget the live socket and return it (for ``close()``)."""
        with self._wire_lock:
            ws, self._ws = self._ws, None
            return ws


def _locked_hook(name: str, doc: str) -> property:
    """A callback property read and written under the client's ``_hooks_lock``."""
    attribute = "_" + name

    def get(self: "WsClient") -> Any:
        with self._hooks_lock:
            return getattr(self, attribute)

    def set_(self: "WsClient", callback: Any) -> None:
        with self._hooks_lock:
            setattr(self, attribute, callback)

    return property(get, set_, doc=doc)


class WsClient:
    """A connection to a rusty_ws hub (or any server speaking the seed's protocol).

    Build one with ``connect``, ``connect_with_session`` or ``connect_with_auth``;
    they block until the client is connected and registered.

    Args:
        client_name: registered with ``register-name``; the default publisher name.
        ws_url: ``ws://`` or ``wss://`` URL of the hub's ``/ws``.
        session_id: the session to live in (default ``session-{client_name}``).
        credentials: for ``connect_with_auth``: how to log in (again).
        reconnect: reconnect by itself after a drop (default True).
        timeout: seconds a call waits for the server (and for a connection to come back).
        ping_interval: seconds of silence before the client pings; 0 turns keepalive off.
        ping_timeout: seconds to wait for any answer to that ping before reconnecting.
        sslopt: websocket-client's TLS options for ``wss://`` (certificates are verified by default).
        backoff_initial, backoff_cap: reconnect delays (see ``backoff.delays``).

    Raises:
        ProtocolError: a name or session id the server would refuse (checked before any I/O).
    """

    def __init__(
        self,
        client_name: str,
        ws_url: str,
        session_id: str | None = None,
        *,
        credentials: Credentials | None = None,
        reconnect: bool = True,
        timeout: float = 10.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        sslopt: dict[str, Any] | None = None,
        backoff_initial: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self.name = check_name(client_name)
        self.session_id = check_session(session_id or f"session-{client_name}")
        self.ws_url = ws_url
        self.reconnect = reconnect
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff_initial = backoff_initial
        self.backoff_cap = backoff_cap
        self._connector = Connector(ws_url, credentials, sslopt, timeout)
        self._dispatch = CallbackDispatcher(client_name, put_timeout=timeout)
        # _hooks_lock guards the three on_* hooks: set by the user's threads, read by the
        # reader thread (and open()) when it queues them on the dispatcher.
        self._hooks_lock = threading.Lock()
        self._on_connect: Callable[[WsClient], Any] | None = None
        self._on_disconnect: Callable[[WsClient, int, str], Any] | None = None
        self._on_reconnecting: Callable[[WsClient, int, float], Any] | None = None
        self._wire = _Wire()
        self._supervisor = Supervisor(self, self._wire, self._connector, self._dispatch)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def connect(cls, client_name: str, ws_url: str, **options: Any) -> "WsClient":
        """Connect anonymously in session ``session-{client_name}``, as the seed does. Blocks."""
        return cls(client_name, ws_url, **options).open()

    @classmethod
    def connect_with_session(cls, client_name: str, session_id: str, ws_url: str, **options: Any) -> "WsClient":
        """Connect anonymously in ``session_id``. Blocks."""
        return cls(client_name, ws_url, session_id, **options).open()

    @classmethod
    def connect_with_auth(
        cls,
        client_name: str,
        ws_url: str,
        auth_url: str,
        username: str,
        password: str,
        session_id: str | None = None,
        **options: Any,
    ) -> "WsClient":
        """Log in at ``auth_url``, then connect with the token, in the token's session. Blocks.

        The session is ``session_id``, or ``session-{username}`` when none is given
        (the token's ``sid``), never ``session-{client_name}``.

        Raises:
            BadCredentials: the login was refused.
            ConnectFailed: the hub or the auth endpoint could not be reached.
        """
        credentials = Credentials(auth_url, username, password, session_id)
        client = cls(client_name, ws_url, session_id or f"session-{username}", credentials=credentials, **options)
        client._connector.log_in()
        return client.open()

    def open(self) -> "WsClient":
        """Open the connection, register name and session, start the threads. Blocks; returns self.

        Raises:
            ConnectFailed, AuthError: the connection could not be opened.
            ServerError: the server refused the name or the session.
        """
        if self._supervisor.thread is not None:
            raise RuntimeError("this client was opened already")
        ws = self._connector.open_socket()
        try:
            ack = self._supervisor.register(ws, replay=False)
        except (websocket.WebSocketException, OSError) as exc:
            ws.abort()
            raise ConnectFailed(f"{self.ws_url}: the connection dropped while registering: {exc}") from None
        self._dispatch.start()
        self._supervisor.start(ws)
        try:
            ack.wait(self.timeout)
        except BaseException:
            self.close()
            raise
        self._supervisor.opened()
        return self

    # ------------------------------------------------------------------ the seed's API

    def subscribe(self, subscriber_name: str, topic: str, payload: str = "no-payload") -> None:
        """Subscribe to ``topic`` in this client's session. Blocks until the server has it.

        ``subscriber_name`` and ``payload`` are the seed's arguments, kept for
        compatibility; the wire command carries neither. The subscription is
        restored after every reconnection.

        Raises:
            ProtocolError: a topic the server would refuse (nothing is sent).
            ServerError: the server refused (e.g. ``forbidden_session``, ``too_many_subscriptions``).
            ConnectionClosed: the connection is gone and did not come back within ``timeout``.
        """
        self._command(encode_subscribe(topic, self.session_id), label=f"subscribe {topic}")
        self._supervisor.record_subscription(topic)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``. Blocks until the server has done it."""
        command = encode_unsubscribe(topic, self.session_id)
        self._supervisor.forget_subscription(topic)
        self._command(command, label=f"unsubscribe {topic}")

    def publish(self, publisher_name: str, topic: str, payload: Any, timestamp: str | None = None) -> None:
        """Publish to ``topic`` in this client's session. Blocks until the server has fanned it out.

        ``timestamp`` defaults to now (RFC 3339, UTC). ``payload`` is any JSON value.

        Raises:
            ProtocolError: a topic, publisher name or payload the server would refuse (nothing is sent).
            ServerError: the server refused the message.
            ConnectionClosed: the connection is gone and did not come back within ``timeout``.
        """
        command = encode_publish(topic, payload, session_id=self.session_id, publisher_name=publisher_name,
                                 timestamp=timestamp or rfc3339_now())
        self._command(command, label=f"publish {topic}")

    def ping(self) -> None:
        """Round trip to the server; returns once every earlier call of this client is done."""
        self._command(label="ping")

    def on_message(self, topic: str, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(payload)`` for each message on ``topic`` (on the dispatcher thread)."""
        self._dispatch.add_message_callback(topic, callback)
        return callback

    def on_delivery(self, topic: str, callback: DeliveryCallback) -> DeliveryCallback:
        """Call ``callback(delivery)`` with the whole message (publisher, timestamp, session, user)."""
        self._dispatch.add_delivery_callback(topic, callback)
        return callback

    def topic_callback(self, topic: str) -> Callable[[F], F]:
        """Decorator form of ``on_message``."""
        def register(callback: F) -> F:
            self.on_message(topic, callback)
            return callback
        return register

    def remove_callbacks(self, topic: str) -> None:
        """Forget every callback registered for ``topic``."""
        self._dispatch.remove(topic)

    def is_connected(self) -> bool:
        return self._supervisor.state is State.CONNECTED

    def is_authenticated(self) -> bool:
        """True when the client holds a token that has not expired."""
        token = self.get_token()
        try:
            return token is not None and seconds_left(token) > 0
        except TokenInvalid:
            return False

    def get_token(self) -> str | None:
        return self._connector.token

    def refresh_token_if_needed(self) -> bool:
        """Refresh the token when less than 5 minutes remain; returns whether it did.

        A still-valid token is traded at ``/auth/refresh``; an expired one is
        replaced by logging in again with the stored credentials. The new token
        is used from the next (re)connection on.

        Raises:
            TokenExpired: it expired and there are no credentials to log in again.
            AuthError, ConnectFailed: the auth server refused or could not be reached.
        """
        if not self._connector.refresh_if_needed():
            return False
        logger.info("= %s refreshed its token", self.name)
        return True

    @property
    def subscriptions(self) -> list[str]:
        """The topics this client is subscribed to (and will resubscribe after a reconnect)."""
        return self._supervisor.subscriptions()

    # ------------------------------------------------------------------ connection-state hooks

    on_connect = _locked_hook(
        "on_connect",
        "``callback(client)`` once connected, and after each reconnection once the server has "
        "restored name, session and subscriptions; on the dispatcher thread.",
    )
    on_disconnect = _locked_hook("on_disconnect", "``callback(client, code, reason)`` when the connection drops or closes.")
    on_reconnecting = _locked_hook("on_reconnecting", "``callback(client, attempt, delay)`` before each reconnection attempt.")

    # ------------------------------------------------------------------ closing

    def close(self, timeout: float | None = 5.0) -> None:
        """Close the connection and end both threads. Idempotent; blocks at most about ``timeout``.

        One deadline covers every step (the closing handshake, then joining the
        reader thread, then the dispatcher thread), so the whole call, not each
        step, is bounded by ``timeout``; ``None`` waits as long as they take. A
        thread still busy at the deadline (a callback that does not return) is
        left to end by itself: both are daemon threads.

        May be called from a callback (the dispatcher thread then ends after it returns).
        """
        deadline = Deadline(timeout)
        self._supervisor.stop(deadline)
        self._dispatch.stop()
        self._dispatch.join(deadline.timeout())
        ws = self._wire.take()  # still there only when the reader did not get to drop it
        if ws is not None:
            ws.shutdown()  # the closing handshake was stop()'s: close the socket now
        self._supervisor.closed()

    def __enter__(self) -> "WsClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WsClient {self.name!r} {self.session_id!r} {self._supervisor.state.value}>"

    @property
    def _reader(self) -> threading.Thread | None:
        """The supervisor's reader thread (None before ``open()``), for tests and debugging."""
        return self._supervisor.thread

    # ------------------------------------------------------------------ sending

    def _command(self, *texts: str, label: str) -> None:
        ack = _Ack(label)
        for _ in range(2):  # once more if the connection changed between the wait and the send
            if self._wire.send(self._wait_connected(), texts, ack):
                break
        else:
            raise ConnectionClosedError(*self._supervisor.last_close)
        ack.wait(self.timeout)

    def _wait_connected(self) -> websocket.WebSocket:
        state, last_close = self._supervisor.wait_settled(self.timeout)
        if state is State.CLOSED:
            raise ConnectionClosedError(*last_close)
        if state is not State.CONNECTED:
            raise ConnectionClosedError(last_close[0], f"not connected (reconnecting): {last_close[1]}")
        ws = self._wire.socket
        if ws is None:
            raise ConnectionClosedError(*last_close)
        return ws
