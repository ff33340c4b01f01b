"""``WsClient``: the seed's Rust client, as a blocking, threaded Python client.

::

    with WsClient.connect_with_session("Client1", "session-A", "ws://127.0.0.1:8081/ws") as client:
        client.on_message("NetworkConnectedEvent", print)
        client.subscribe("Client1", "NetworkConnectedEvent")   # registered when it returns
        client.publish("Client1", "NetworkConnectedEvent", "Network connected")   # acknowledged

This module is the call API: the constructors, the calls, the callbacks'
registration, and ``close()``. How a call learns that the server is done with
it, and how unacknowledged publishes outlive a socket, is ``wire.py``; what
keeps the connection alive (and resubscribes from the last position seen) is
the ``Supervisor`` (``supervisor.py``), which the client owns and starts.

Threads, each named and each ended by ``close()``:

- ``rusty_ws-client-reader-{name}`` (the supervisor's): the only reader of the
  socket. Answers pings, sends keepalive pings, matches replies to the calls
  waiting for them, drops deliveries seen already, and reconnects (with
  backoff) when the connection drops.
- ``rusty_ws-client-dispatch-{name}`` (``dispatch.py``): runs every callback, in
  arrival order, so a slow callback never stops the reader, and a callback may
  call ``publish``/``subscribe`` without deadlock.

How a call knows the server is done with it: the server handles a
connection's commands in order and answers in that order. The history
commands (``subscribe-json``, ``history``, ``publish-json`` with an ``id``)
always get a reply of their own; the seed's commands are sent with a
``ping``, and its ``pong`` means success (an ``error:`` before it is the answer).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import websocket

from ..exceptions import ConnectFailed, ConnectionClosedError, ProtocolError, TokenInvalid
from ..protocol import (
    MAX_PUBLISH_ID_LENGTH,
    Ack,
    ErrorCode,
    HistoryReply,
    Since,
    Subscribed,
    check_name,
    check_session,
    encode_history,
    encode_publish,
    encode_subscribe,
    encode_subscribe_json,
    encode_unsubscribe,
    rfc3339_now,
)
from .connector import REFRESH_THRESHOLD, Connector
from .deadline import Deadline
from .dispatch import CallbackDispatcher, DeliveryCallback, MessageCallback
from .publishing import OutgoingPublish, PublishFuture, PublishIds
from .subscriptions import RecoveryFailure
from .supervisor import State, Supervisor
from .tokens import Credentials, seconds_left
from .wire import Waiter, Wire

__all__ = ["WsClient", "REFRESH_THRESHOLD"]

logger = logging.getLogger("rusty_ws.client")

F = TypeVar("F", bound=Callable[..., Any])


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
    """A connection to a rusty_ws hub (or, with ``seed_protocol``, any server speaking the seed's protocol).

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
        seed_protocol: speak only the seed's commands, for servers other than rusty_ws:
            plain ``subscribe:`` (no recovery after a reconnect), publishes without ids
            (no acknowledgement, no retry; ``publish`` returns None), no
            ``publish_async`` or ``history``.
        max_unacked: at most this many publishes awaiting their ack (kept to be sent
            again after a reconnect); past it ``publish``/``publish_async`` wait up to
            ``timeout`` for room, then raise ``TimeoutError``.

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
        seed_protocol: bool = False,
        max_unacked: int = 10_000,
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
        self.seed_protocol = seed_protocol
        if not isinstance(max_unacked, int) or max_unacked < 1:
            raise ValueError(f"max_unacked must be a whole number of at least 1, not {max_unacked!r}")
        self._connector = Connector(ws_url, credentials, sslopt, timeout)
        self._dispatch = CallbackDispatcher(client_name, put_timeout=timeout)
        # _hooks_lock guards the four on_* hooks: set by the user's threads, read by the
        # reader thread (and open()) when it queues them on the dispatcher.
        self._hooks_lock = threading.Lock()
        self._on_connect: Callable[[WsClient], Any] | None = None
        self._on_disconnect: Callable[[WsClient, int, str], Any] | None = None
        self._on_reconnecting: Callable[[WsClient, int, float], Any] | None = None
        self._on_recovery_failed: Callable[[WsClient, str, str, RecoveryFailure], Any] | None = None
        self._publish_ids = PublishIds()
        self._wire = Wire(max_unacked)
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

    def subscribe(self, subscriber_name: str, topic: str, payload: str = "no-payload") -> Subscribed | None:
        """Subscribe to ``topic`` in this client's session. Blocks until the server has it.

        ``subscriber_name`` and ``payload`` are the seed's arguments, kept for
        compatibility; the wire command carries neither. The subscription is
        restored after every reconnection, from the last message seen: what was
        published meanwhile is delivered first, in order, once each (see
        ``on_recovery_failed`` for when the hub no longer has all of it).

        Returns:
            The hub's ``subscribed:`` reply (the stream's current offset and epoch;
            None for both with history off); None with ``seed_protocol``.

        Raises:
            ProtocolError: a topic the server would refuse (nothing is sent).
            ServerError: the server refused (e.g. ``forbidden_session``, ``too_many_subscriptions``).
            ConnectionClosed: the connection is gone and did not come back within ``timeout``.
            TimeoutError: no answer within ``timeout``.
        """
        if self.seed_protocol:
            self._call([encode_subscribe(topic, self.session_id)], Waiter(f"subscribe {topic}"))
            self._supervisor.subscriptions.record(topic)
            return None
        text = encode_subscribe_json(topic, self.session_id)
        on_answer = self._supervisor.on_subscribed(topic, None, replay=False)
        return self._call([text], Waiter(f"subscribe {topic}", Subscribed, on_answer))

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``. Blocks until the server has done it."""
        command = encode_unsubscribe(topic, self.session_id)
        self._supervisor.subscriptions.forget(topic)
        self._call([command], Waiter(f"unsubscribe {topic}"))

    def publish(self, publisher_name: str, topic: str, payload: Any, timestamp: str | None = None, *,
                publish_id: str | None = None) -> Ack | None:
        """Publish to ``topic`` in this client's session. Blocks until the hub acknowledges it.

        The message carries an ``id`` (``publish_id``, or one made for it, unique
        to this client); the hub acknowledges it once the message is in its
        stream. If the connection drops first, the client sends it again, with
        the same id, as soon as it has reconnected, and the hub delivers it once.
        ``timestamp`` defaults to now (RFC 3339, UTC). ``payload`` is any JSON value.

        Returns:
            The hub's ``Ack``: ``id``, the message's ``offset`` and ``epoch`` in its
            stream (None with history off), and ``delivered``, how many of the hub's
            subscribers it was handed to (None from a hub that does not say). None with ``seed_protocol``, where
            it returns once the server has fanned the message out.

        Raises:
            ProtocolError: a topic, publisher name or payload the server would refuse (nothing is sent).
            ServerError: the server refused the message (``.publish_id`` names it).
            TimeoutError: not acknowledged within ``timeout`` (it is not sent again after
                that, but may have been published: publishing again with the same
                ``publish_id`` is safe).
            ConnectionClosed: the client closed (or stopped reconnecting) before the ack, or
                (with ``seed_protocol``) the connection is gone and did not come back within ``timeout``.
        """
        if self.seed_protocol:
            command = encode_publish(topic, payload, session_id=self.session_id, publisher_name=publisher_name,
                                     timestamp=timestamp or rfc3339_now())
            self._call([command], Waiter(f"publish {topic}"))
            return None
        item = self._outgoing(publisher_name, topic, payload, timestamp, publish_id)
        self._wire.publish(item, self.timeout)
        try:
            return item.future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            state, (code, reason) = self._supervisor.state, self._supervisor.last_close
            error: Exception = (TimeoutError(f"no ack for {item.label} within {self.timeout}s")
                                if state is State.CONNECTED else
                                ConnectionClosedError(code, f"{item.label} not acknowledged within "
                                                            f"{self.timeout}s: not connected (reconnecting): {reason}"))
            if self._wire.abandon(item, error):  # type: ignore[arg-type]
                raise error from None
            return item.future.result(0)  # acknowledged just now

    def publish_async(self, publisher_name: str, topic: str, payload: Any, timestamp: str | None = None, *,
                      publish_id: str | None = None) -> PublishFuture:
        """Publish without waiting for the ack; returns a future that resolves to it.

        For scripts that publish many messages: the publishes go out at once, one
        after the other, and the hub handles them in that order (also across a
        reconnection: unacknowledged ones are sent again first, in order, with
        their ids). Blocks only while the socket takes the frame, or while
        ``max_unacked`` earlier publishes still wait for their ack. Between
        connections the message waits for the next one; the future has no
        deadline of its own (``future.result(timeout)`` sets one).

        Returns:
            A ``PublishFuture`` (a ``concurrent.futures.Future``) resolving to the
            hub's ``Ack``, or failing with ``ServerError`` or ``ConnectionClosedError``.

        Raises:
            ProtocolError: a topic, publisher name or payload the server would refuse (nothing is sent).
            ConnectionClosedError: the client is closed.
            TimeoutError: ``max_unacked`` publishes were still waiting for their ack after
                ``timeout`` (nothing is sent).
        """
        if self.seed_protocol:
            raise RuntimeError("publish_async() needs rusty_ws's acknowledgements, and seed_protocol is on")
        item = self._outgoing(publisher_name, topic, payload, timestamp, publish_id)
        self._wire.publish(item, self.timeout)
        return item.future

    def history(self, topic: str, limit: int | None = None, since: Since | None = None) -> HistoryReply:
        """Read ``topic``'s stream in this client's session, without subscribing. Blocks.

        Args:
            limit: at most this many messages (default and cap: the hub's history size).
            since: only messages after this position (``Since(offset, epoch)``), the
                oldest first, so a caller can page forward; none if the epoch is not
                the stream's. Without it: the last ``limit`` messages. One reply holds
                at most 3/4 of the hub's ``RUSTY_WS_MAX_QUEUED_BYTES``: fewer messages
                than asked, the last below the reply's ``offset``, means page on.

        Returns:
            The ``history:`` reply: the stream's current ``offset``/``epoch`` and
            ``messages``, a list of ``Delivery``, oldest first (empty with history off).

        Raises:
            ServerError: e.g. ``invalid_limit``, ``invalid_since``.
            ConnectionClosed, TimeoutError: as for ``subscribe``.
        """
        if self.seed_protocol:
            raise RuntimeError("history() needs rusty_ws's history commands, and seed_protocol is on")
        text = encode_history(topic, self.session_id, limit, since)
        return self._call([text], Waiter(f"history {topic}", HistoryReply))

    def ping(self) -> None:
        """Round trip to the server; returns once every earlier call of this client is done."""
        self._call([], Waiter("ping"))

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
        logger.info("%s refreshed its token", self.name)
        return True

    @property
    def subscriptions(self) -> list[str]:
        """The topics this client is subscribed to (and will resubscribe after a reconnect)."""
        return self._supervisor.subscriptions.topics()

    def position(self, topic: str) -> Since | None:
        """The last place seen in ``topic``'s stream (what a reconnection resumes from).

        None when not subscribed, or when the hub gives no offsets (history off).
        """
        return self._supervisor.subscriptions.position(topic)

    # ------------------------------------------------------------------ connection-state hooks

    on_connect = _locked_hook(
        "on_connect",
        "``callback(client)`` once connected, and after each reconnection once the server has "
        "restored name, session and subscriptions; on the dispatcher thread.",
    )
    on_disconnect = _locked_hook("on_disconnect", "``callback(client, code, reason)`` when the connection drops or closes.")
    on_reconnecting = _locked_hook("on_reconnecting", "``callback(client, attempt, delay)`` before each reconnection attempt.")
    on_recovery_failed = _locked_hook(
        "on_recovery_failed",
        "``callback(client, topic, session_id, reason)`` when a resubscription after a reconnection "
        "could not replay every missed message of ``topic`` (``reason``: a ``RecoveryFailure``); "
        "after what could be replayed, before new messages; on the dispatcher thread.",
    )

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

    def _call(self, texts: list[str], waiter: Waiter) -> Any:
        """Send ``texts`` on the live socket and wait for ``waiter``'s answer; return its reply."""
        for _ in range(2):  # once more if the connection changed between the wait and the send
            if self._wire.send(self._wait_connected(), texts, waiter):
                break
        else:
            raise ConnectionClosedError(*self._supervisor.last_close)
        return waiter.wait(self.timeout)

    def _outgoing(self, publisher_name: str, topic: str, payload: Any, timestamp: str | None,
                  publish_id: str | None) -> OutgoingPublish:
        if publish_id is None:
            publish_id = self._publish_ids.next()
        elif not isinstance(publish_id, str) or not 1 <= len(publish_id) <= MAX_PUBLISH_ID_LENGTH:
            raise ProtocolError(ErrorCode.INVALID_ID, f"a publish id is 1 to {MAX_PUBLISH_ID_LENGTH} characters")
        text = encode_publish(topic, payload, session_id=self.session_id, publisher_name=publisher_name,
                              timestamp=timestamp or rfc3339_now(), id=publish_id)
        return OutgoingPublish(publish_id, text, topic, self._dispatch.call)

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
