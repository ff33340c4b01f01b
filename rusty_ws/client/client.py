"""``WsClient``: the seed's Rust client, as a blocking, threaded Python client.

::

    with WsClient.connect_with_session("Client1", "session-A", "ws://127.0.0.1:8081/ws") as client:
        client.on_message("NetworkConnectedEvent", print)
        client.subscribe("Client1", "NetworkConnectedEvent")   # registered when it returns
        client.publish("Client1", "NetworkConnectedEvent", "Network connected")

Threads, each named and each ended by ``close()``:

- ``rusty_ws-client-reader-{name}``: the only reader of the socket. Answers
  pings, sends keepalive pings, matches ``pong``/``error:`` replies to the calls
  waiting for them, and reconnects (with backoff) when the connection drops.
- ``rusty_ws-client-dispatch-{name}``: runs every callback, in arrival order,
  so a slow callback never stops the reader, and a callback may call
  ``publish``/``subscribe`` without deadlock.

How a call knows the server is done with it: every command is sent together
with a ``ping``, and the server handles a connection's commands in order. An
``error:`` arriving before that ``pong`` is the answer to the command; the
``pong`` alone means success.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
from typing import Any, Callable, Iterator, TypeVar

import websocket

from .. import backoff
from .connector import REFRESH_THRESHOLD, Connector
from .dispatch import CallbackDispatcher, DeliveryCallback, MessageCallback
from ..exceptions import (
    AuthError,
    ConnectFailed,
    ConnectionClosedError,
    ConnectionClosedOK,
    Forbidden,
    ProtocolError,
    RustyWsError,
    TokenExpired,
    TokenInvalid,
)
from ..protocol import (
    PONG_REPLY,
    ClosePolicy,
    Delivery,
    check_session,
    check_topic,
    close_policy,
    is_error_reply,
    parse_error,
    rfc3339_now,
)
from .tokens import Credentials, seconds_left

__all__ = ["WsClient", "REFRESH_THRESHOLD"]

logger = logging.getLogger("rusty_ws.client")

_CONNECTING, _CONNECTED, _RECONNECTING, _CLOSED = "connecting", "connected", "reconnecting", "closed"

F = TypeVar("F", bound=Callable[..., Any])


class _Ack:
    """One call waiting for the ``pong`` that follows its command."""

    __slots__ = ("done", "error", "label")

    def __init__(self, label: str) -> None:
        self.done = threading.Event()
        self.error: RustyWsError | None = None
        self.label = label

    def fail(self, error: RustyWsError) -> None:
        self.error = self.error or error
        self.done.set()

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise TimeoutError(f"no answer to {self.label} within {timeout}s")
        if self.error is not None:
            raise self.error


def _locked_hook(name: str, doc: str) -> property:
    """A callback property read and written under the client's ``_state_lock``."""
    attribute = "_" + name

    def get(self: "WsClient") -> Any:
        with self._state_lock:
            return getattr(self, attribute)

    def set_(self: "WsClient", callback: Any) -> None:
        with self._state_lock:
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
        self.name = client_name
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
        # _state_lock guards _state, _subscriptions and the on_* hooks;
        # _state_changed (on the same lock) signals state changes.
        self._state_lock = threading.Lock()
        self._state_changed = threading.Condition(self._state_lock)
        self._state = _CONNECTING
        self._subscriptions: dict[str, None] = {}
        self._on_connect: Callable[[WsClient], Any] | None = None
        self._on_disconnect: Callable[[WsClient, int, str], Any] | None = None
        self._on_reconnecting: Callable[[WsClient, int, float], Any] | None = None
        self._last_close = (1006, "not connected yet")
        # _send_lock guards _ws (the live socket) and _waiters: a command and its
        # ping are written, and its _Ack queued, as one step, so acks match pongs.
        self._send_lock = threading.Lock()
        self._ws: websocket.WebSocket | None = None
        self._waiters: collections.deque[_Ack] = collections.deque()
        self._stop = threading.Event()  # set by close(): ends reconnect waits and both threads
        self._reader: threading.Thread | None = None

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
        with self._state_lock:
            if self._reader is not None:
                raise RuntimeError("this client was opened already")
        ws = self._connector.open_socket()
        try:
            ack = self._register(ws, replay=False)
        except (websocket.WebSocketException, OSError) as exc:
            ws.abort()
            raise ConnectFailed(f"{self.ws_url}: the connection dropped while registering: {exc}") from None
        # Daemon threads: a script that forgets close() can still exit. close() ends and joins them.
        self._reader = threading.Thread(target=self._run_reader, args=(ws,), daemon=True,
                                        name=f"rusty_ws-client-reader-{self.name}")
        self._dispatch.start()
        self._reader.start()
        try:
            ack.wait(self.timeout)
        except BaseException:
            self.close()
            raise
        self._set_state(_CONNECTED)
        self._emit_hook(self.on_connect)
        return self

    # ------------------------------------------------------------------ the seed's API

    def subscribe(self, subscriber_name: str, topic: str, payload: str = "no-payload") -> None:
        """Subscribe to ``topic`` in this client's session. Blocks until the server has it.

        ``subscriber_name`` and ``payload`` are the seed's arguments, kept for
        compatibility; the wire command carries neither. The subscription is
        restored after every reconnection.

        Raises:
            ServerError: the server refused (e.g. ``forbidden_session``, ``too_many_subscriptions``).
            ConnectionClosed: the connection is gone and did not come back within ``timeout``.
        """
        check_topic(topic)
        self._command(f"subscribe:{topic}|{self.session_id}", label=f"subscribe {topic}")
        with self._state_lock:
            self._subscriptions[topic] = None

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``. Blocks until the server has done it."""
        with self._state_lock:
            self._subscriptions.pop(topic, None)
        self._command(f"unsubscribe:{topic}|{self.session_id}", label=f"unsubscribe {topic}")

    def publish(self, publisher_name: str, topic: str, payload: Any, timestamp: str | None = None) -> None:
        """Publish to ``topic`` in this client's session. Blocks until the server has fanned it out.

        ``timestamp`` defaults to now (RFC 3339, UTC). ``payload`` is any JSON value.

        Raises:
            ServerError: the server refused the message.
            ConnectionClosed: the connection is gone and did not come back within ``timeout``.
        """
        message = {
            "publisher_name": publisher_name,
            "topic": check_topic(topic),
            "payload": payload,
            "timestamp": timestamp or rfc3339_now(),
            "session_id": self.session_id,
        }
        self._command("publish-json:" + json.dumps(message, ensure_ascii=False), label=f"publish {topic}")

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
        with self._state_lock:
            return self._state == _CONNECTED

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
        with self._state_lock:
            return list(self._subscriptions)

    # ------------------------------------------------------------------ connection-state hooks

    on_connect = _locked_hook(
        "on_connect",
        "``callback(client)`` once connected, and after each reconnection once the server has "
        "restored name, session and subscriptions; on the dispatcher thread.",
    )
    on_disconnect = _locked_hook("on_disconnect", "``callback(client, code, reason)`` when the connection drops or closes.")
    on_reconnecting = _locked_hook("on_reconnecting", "``callback(client, attempt, delay)`` before each reconnection attempt.")

    # ------------------------------------------------------------------ closing

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection and end both threads. Idempotent; blocks at most about ``timeout``.

        May be called from a callback (the dispatcher thread then ends after it returns).
        """
        self._stop.set()
        with self._send_lock:
            ws = self._ws
        if ws is not None:
            try:
                ws.send_close()
            except (websocket.WebSocketException, OSError):
                pass
        current = threading.current_thread()
        reader = self._reader
        if reader is not None and reader is not current:
            reader.join(min(timeout, 1.0))  # the reader ends when the server answers the close
            if reader.is_alive() and ws is not None:
                ws.abort()  # no answer: wake the reader by shutting the socket down
            reader.join(timeout)
        elif ws is not None:
            ws.abort()
        self._dispatch.stop(join_timeout=timeout)
        with self._send_lock:
            if self._ws is not None:
                self._ws.close()
                self._ws = None
        self._set_state(_CLOSED)

    def __enter__(self) -> "WsClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WsClient {self.name!r} {self.session_id!r} {self._state}>"

    # ------------------------------------------------------------------ sending

    def _command(self, *texts: str, label: str) -> None:
        ack = _Ack(label)
        for _ in range(2):  # once more if the connection changed between the wait and the send
            ws = self._wait_connected()
            with self._send_lock:
                if self._ws is not ws:
                    continue
                try:
                    for text in texts:
                        ws.send(text)
                    ws.send("ping")
                except (websocket.WebSocketException, OSError) as exc:
                    raise ConnectionClosedError(1006, f"send failed: {exc}") from None
                self._waiters.append(ack)
                break
        else:
            raise ConnectionClosedError(*self._last_close)
        ack.wait(self.timeout)

    def _wait_connected(self) -> websocket.WebSocket:
        with self._state_lock:
            self._state_changed.wait_for(lambda: self._state in (_CONNECTED, _CLOSED), self.timeout)
            state, last_close = self._state, self._last_close
        if state == _CLOSED:
            raise ConnectionClosedError(*last_close)
        if state != _CONNECTED:
            raise ConnectionClosedError(last_close[0], f"not connected (reconnecting): {last_close[1]}")
        with self._send_lock:
            if self._ws is None:
                raise ConnectionClosedError(*last_close)
            return self._ws

    def _register(self, ws: websocket.WebSocket, *, replay: bool) -> _Ack:
        """Make ``ws`` the live socket and send name, session (and subscriptions) with one ping."""
        with self._state_lock:
            topics = list(self._subscriptions) if replay else []
        ack = _Ack("resubscribe" if replay else "register")
        with self._send_lock:
            self._ws = ws
            ws.send(f"register-name:{self.name}")
            ws.send(f"register-session:{self.session_id}")
            for topic in topics:
                ws.send(f"subscribe:{topic}|{self.session_id}")
            ws.send("ping")
            self._waiters.append(ack)
        return ack

    # ------------------------------------------------------------------ the reader thread

    def _run_reader(self, ws: websocket.WebSocket) -> None:
        try:
            while True:
                code, reason = self._read_until_dropped(ws)
                self._connection_lost(ws, code, reason)
                if self._stop.is_set() or not self.reconnect:
                    return
                if close_policy(code) is ClosePolicy.DO_NOT_RECONNECT:
                    logger.warning("! %s: server closed with %d (%s): not reconnecting", self.name, code, reason)
                    return
                next_ws = self._reconnect(close_policy(code))
                if next_ws is None:
                    return
                ws = next_ws
        except Exception:
            logger.exception("! %s: reader thread failed", self.name)
        finally:
            self._set_state(_CLOSED)
            self._dispatch.stop()

    def _read_until_dropped(self, ws: websocket.WebSocket) -> tuple[int, str]:
        """Read and handle frames until the connection ends; returns its close code and reason."""
        awaiting_pong = False
        ws.settimeout(self.ping_interval or None)
        while True:
            try:
                opcode, frame = ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if awaiting_pong:
                    logger.warning("! %s: no answer to keepalive ping; reconnecting", self.name)
                    ws.abort()
                    return 1006, "keepalive timeout"
                try:
                    ws.ping()
                except (websocket.WebSocketException, OSError):
                    return 1006, "ping failed"
                awaiting_pong = True
                ws.settimeout(self.ping_timeout)
                continue
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                return 1006, str(exc) or type(exc).__name__
            if awaiting_pong:
                awaiting_pong = False
                ws.settimeout(self.ping_interval or None)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._on_text(frame.data.decode("utf-8") if isinstance(frame.data, bytes) else frame.data)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data or b""
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                return code, data[2:].decode("utf-8", "replace")

    def _on_text(self, text: str) -> None:
        if text == PONG_REPLY:
            with self._send_lock:
                ack = self._waiters.popleft() if self._waiters else None
            if ack is None:
                logger.debug("- %s: a pong nobody waited for", self.name)
            else:
                ack.done.set()
                if ack.label == "resubscribe":  # the reconnection is complete only now
                    if ack.error is not None:
                        logger.error("! %s: restoring subscriptions failed: %s", self.name, ack.error)
                    self._emit_hook(self.on_connect)
        elif is_error_reply(text):
            error = parse_error(text)
            with self._send_lock:
                ack = self._waiters[0] if self._waiters else None
            if ack is None:
                logger.warning("! %s: server error: %s", self.name, error)
            elif ack.error is None:
                ack.error = error
        else:
            try:
                delivery = Delivery.parse(text)
            except ProtocolError:
                logger.warning("! %s: not a message: %.100r", self.name, text)
                return
            self._dispatch.deliver(delivery)

    def _connection_lost(self, ws: websocket.WebSocket, code: int, reason: str) -> None:
        closed = ConnectionClosedOK(code, reason) if code in (1000, 1001) else ConnectionClosedError(code, reason)
        with self._send_lock:
            if self._ws is ws:
                self._ws = None
            waiters, self._waiters = self._waiters, collections.deque()
        for ack in waiters:
            ack.fail(closed)
        ws.close()
        with self._state_lock:
            self._last_close = (code, reason)
        self._set_state(_CLOSED if self._stop.is_set() or not self.reconnect else _RECONNECTING)
        logger.info("= %s disconnected: %d %s", self.name, code, reason)
        self._emit_hook(self.on_disconnect, code, reason)

    def _reconnect(self, policy: ClosePolicy) -> websocket.WebSocket | None:
        """Try until connected (returns the socket) or closed or refused for good (returns None)."""
        delays: Iterator[float] = backoff.delays(self.backoff_initial, cap=self.backoff_cap)
        for attempt in itertools.count(1):
            delay = 0.0 if attempt == 1 and policy is ClosePolicy.RECONNECT_NOW else next(delays)
            self._emit_hook(self.on_reconnecting, attempt, delay)
            if self._stop.wait(delay):
                return None
            try:
                self._connector.ensure_usable_token()
                ws = self._connector.open_socket()
            except (TokenExpired, TokenInvalid, Forbidden) as exc:
                if self._connector.credentials is None:
                    logger.error("! %s: cannot reconnect: %s", self.name, exc)
                    return None
                logger.warning("! %s: %s; logging in again", self.name, exc)
                self._connector.token = None
                continue
            except (ConnectFailed, AuthError) as exc:
                logger.info("- %s: reconnect attempt %d failed: %s", self.name, attempt, exc)
                continue
            if self._stop.is_set():
                ws.close()
                return None
            try:
                self._register(ws, replay=True)
            except (websocket.WebSocketException, OSError):
                ws.abort()
                continue
            self._set_state(_CONNECTED)
            logger.info("= %s reconnected after %d attempt(s)", self.name, attempt)
            return ws
        return None  # not reached: itertools.count never ends

    # ------------------------------------------------------------------ state and hooks

    def _set_state(self, state: str) -> None:
        with self._state_lock:
            if self._state == _CLOSED:
                return
            self._state = state
            self._state_changed.notify_all()

    def _emit_hook(self, hook: Callable[..., Any] | None, *args: Any) -> None:
        if hook is not None:
            self._dispatch.call(hook, self, *args)
