"""``Supervisor``: the reader thread of a ``WsClient``, which keeps it connected.

One job: keep one live, registered socket under the client. The supervisor
owns the thread ``rusty_ws-client-reader-{name}``, the only reader of the
socket, which

- reads every frame, answers the server's pings, and pings after
  ``ping_interval`` seconds of silence (dropping the socket when ``ping_timeout``
  passes without an answer);
- routes text frames: ``pong`` and ``error:`` to the calls waiting on the
  client's wire (``client._Wire``), deliveries to the dispatcher;
- when the connection drops: fails the waiting calls, reads the close code's
  policy, waits out the backoff on the stop event (so ``close()`` cuts it
  short), opens a new socket, and replays register-name, register-session
  and every recorded subscription, with one ping for all, before it lets
  calls use the socket again; ``on_connect`` fires on that ping's pong;
- moves the state (``State``) that calls wait on.

It never runs user code: hooks are queued on the dispatcher thread.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

import websocket

from .. import backoff
from ..exceptions import (
    AuthError,
    ConnectFailed,
    ConnectionClosedError,
    ConnectionClosedOK,
    Forbidden,
    ProtocolError,
    TokenExpired,
    TokenInvalid,
)
from ..protocol import (
    PONG_REPLY,
    ClosePolicy,
    Delivery,
    close_policy,
    encode_register_name,
    encode_register_session,
    encode_subscribe,
    is_error_reply,
    parse_error,
)
from .connector import Connector
from .deadline import Deadline
from .dispatch import CallbackDispatcher

if TYPE_CHECKING:
    from .client import WsClient, _Ack, _Wire

__all__ = ["Supervisor", "State", "CLOSE_ANSWER_WAIT"]

logger = logging.getLogger("rusty_ws.client")

#: Seconds ``close()`` lets the server answer its close frame (at most half of
#: the time left) before it shuts the socket down to wake the reader.
CLOSE_ANSWER_WAIT = 1.0


class State(enum.Enum):
    """Where the connection is; calls wait for ``CONNECTED`` or ``CLOSED``."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"  # final: nothing leaves it


class Supervisor:
    """The reader thread of ``client``, its reconnections, and the connection's state.

    Args:
        client: the owner; read for its settings (``name``, ``session_id``,
            ``reconnect``, ``ping_interval``, ``ping_timeout``, ``backoff_*``) and
            its hooks, and passed to them.
        wire: the client's live socket and the calls waiting on it.
        connector: opens the new sockets (and keeps the token).
        dispatch: runs the hooks and the message callbacks.
    """

    def __init__(self, client: "WsClient", wire: "_Wire", connector: Connector,
                 dispatch: CallbackDispatcher) -> None:
        self._client = client
        self._wire = wire
        self._connector = connector
        self._dispatch = dispatch
        # _state_lock guards _state and _last_close, the connection as calls see it:
        # written by the reader thread (and by open/close), read by every caller.
        # _state_changed, on the same lock, wakes the calls waiting for CONNECTED or CLOSED.
        self._state_lock = threading.Lock()
        self._state_changed = threading.Condition(self._state_lock)
        self._state = State.CONNECTING
        self._last_close = (1006, "not connected yet")
        # _subscriptions_lock guards _subscriptions, what a reconnection replays (in
        # subscription order): written by the callers' threads, read by the reader.
        self._subscriptions_lock = threading.Lock()
        self._subscriptions: dict[str, None] = {}
        # Set once, by stop(): cuts backoff waits short and tells the reader not to reconnect.
        self._stop = threading.Event()
        # The reader thread, made and started by start() once open() has a registered socket.
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what the client asks

    @property
    def state(self) -> State:
        with self._state_lock:
            return self._state

    @property
    def last_close(self) -> tuple[int, str]:
        """Code and reason of the last drop (1006 "not connected yet" before any)."""
        with self._state_lock:
            return self._last_close

    def wait_settled(self, timeout: float) -> tuple[State, tuple[int, str]]:
        """Wait up to ``timeout`` for CONNECTED or CLOSED; return the state and the last close."""
        with self._state_lock:
            self._state_changed.wait_for(lambda: self._state in (State.CONNECTED, State.CLOSED), timeout)
            return self._state, self._last_close

    def subscriptions(self) -> list[str]:
        with self._subscriptions_lock:
            return list(self._subscriptions)

    def record_subscription(self, topic: str) -> None:
        """Replay ``topic`` after every reconnection from now on."""
        with self._subscriptions_lock:
            self._subscriptions[topic] = None

    def forget_subscription(self, topic: str) -> None:
        with self._subscriptions_lock:
            self._subscriptions.pop(topic, None)

    def register(self, ws: websocket.WebSocket, *, replay: bool,
                 on_answer: Callable[["_Ack"], Any] | None = None) -> "_Ack":
        """Make ``ws`` the live socket and send register-name, register-session (and, to
        ``replay``, every recorded subscription), then one ping. Returns that ping's ack.

        Raises:
            websocket.WebSocketException, OSError: the socket failed while sending.
        """
        session_id = self._client.session_id
        texts = [encode_register_name(self._client.name), encode_register_session(session_id)]
        if replay:
            texts += [encode_subscribe(topic, session_id) for topic in self.subscriptions()]
        return self._wire.attach(ws, texts, "resubscribe" if replay else "register", on_answer)

    def start(self, ws: websocket.WebSocket) -> None:
        """Start the reader thread on ``ws``, the socket ``open()`` registered. Once only."""
        # Daemon: a script that forgets close() can still exit. stop() ends and joins it.
        self.thread = threading.Thread(target=self._run, args=(ws,), daemon=True,
                                       name=f"rusty_ws-client-reader-{self._client.name}")
        self.thread.start()

    def opened(self) -> None:
        """``open()``'s registration was answered: CONNECTED, and ``on_connect`` queued."""
        self._set_state(State.CONNECTED)
        self._emit(self._client.on_connect)

    def stop(self, deadline: Deadline) -> None:
        """End the reader thread within ``deadline``. Blocks; idempotent; for ``WsClient.close``.

        Sets the stop event (which ends any backoff wait), sends a close frame,
        lets the server answer it for up to ``CLOSE_ANSWER_WAIT`` (at most half of
        the time left), then shuts the socket down so the reader wakes, and joins
        the reader with what is left. From the reader thread itself, only shuts down.
        """
        self._stop.set()
        ws = self._wire.socket
        if ws is not None:
            try:
                ws.send_close()
            except (websocket.WebSocketException, OSError):
                pass
        thread = self.thread
        if thread is None or thread is threading.current_thread():
            if ws is not None:
                _shut_down(ws)
            return
        left = deadline.timeout()
        thread.join(CLOSE_ANSWER_WAIT if left is None else min(CLOSE_ANSWER_WAIT, left / 2))
        if thread.is_alive():
            # No answer. The reader may have reconnected since: wake it on the socket live now.
            live = self._wire.socket or ws
            if live is not None:
                _shut_down(live)
        thread.join(deadline.timeout())

    def closed(self) -> None:
        """Enter CLOSED for good (waking the calls that wait)."""
        self._set_state(State.CLOSED)

    # ------------------------------------------------------------------ the reader thread

    def _run(self, ws: websocket.WebSocket) -> None:
        name = self._client.name
        try:
            while True:
                code, reason = self._read_until_dropped(ws)
                self._connection_lost(ws, code, reason)
                if self._stop.is_set() or not self._client.reconnect:
                    return
                policy = close_policy(code)
                if policy is ClosePolicy.DO_NOT_RECONNECT:
                    logger.warning("! %s: server closed with %d (%s): not reconnecting", name, code, reason)
                    return
                next_ws = self._reconnect(policy)
                if next_ws is None:
                    return
                ws = next_ws
        except Exception:
            logger.exception("! %s: reader thread failed", name)
        finally:
            self._set_state(State.CLOSED)
            self._dispatch.stop()

    def _read_until_dropped(self, ws: websocket.WebSocket) -> tuple[int, str]:
        """Read and handle frames until the connection ends; returns its close code and reason."""
        client = self._client
        awaiting_pong = False
        ws.settimeout(client.ping_interval or None)
        while True:
            try:
                opcode, frame = ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if awaiting_pong:
                    logger.warning("! %s: no answer to keepalive ping; reconnecting", client.name)
                    ws.abort()
                    return 1006, "keepalive timeout"
                try:
                    ws.ping()
                except (websocket.WebSocketException, OSError):
                    return 1006, "ping failed"
                awaiting_pong = True
                ws.settimeout(client.ping_timeout)
                continue
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                return 1006, str(exc) or type(exc).__name__
            if awaiting_pong:
                awaiting_pong = False
                ws.settimeout(client.ping_interval or None)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._on_text(frame.data.decode("utf-8") if isinstance(frame.data, bytes) else frame.data)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data or b""
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                return code, data[2:].decode("utf-8", "replace")

    def _on_text(self, text: str) -> None:
        if text == PONG_REPLY:
            if not self._wire.answered():
                logger.debug("- %s: a pong nobody waited for", self._client.name)
        elif is_error_reply(text):
            error = parse_error(text)
            if not self._wire.refused(error):
                logger.warning("! %s: server error: %s", self._client.name, error)
        else:
            try:
                delivery = Delivery.parse(text)
            except ProtocolError:
                logger.warning("! %s: not a message: %.100r", self._client.name, text)
                return
            self._dispatch.deliver(delivery)

    def _connection_lost(self, ws: websocket.WebSocket, code: int, reason: str) -> None:
        closed = ConnectionClosedOK(code, reason) if code in (1000, 1001) else ConnectionClosedError(code, reason)
        self._wire.drop(ws, closed)
        ws.close()
        with self._state_lock:
            self._last_close = (code, reason)
        self._set_state(State.CLOSED if self._stop.is_set() or not self._client.reconnect else State.RECONNECTING)
        logger.info("= %s disconnected: %d %s", self._client.name, code, reason)
        self._emit(self._client.on_disconnect, code, reason)

    def _reconnect(self, policy: ClosePolicy) -> websocket.WebSocket | None:
        """Try until connected (returns the socket) or closed or refused for good (returns None)."""
        client, connector = self._client, self._connector
        delays: Iterator[float] = backoff.delays(client.backoff_initial, cap=client.backoff_cap)
        for attempt in itertools.count(1):
            delay = 0.0 if attempt == 1 and policy is ClosePolicy.RECONNECT_NOW else next(delays)
            self._emit(client.on_reconnecting, attempt, delay)
            if self._stop.wait(delay):
                return None
            try:
                connector.ensure_usable_token()
                ws = connector.open_socket()
            except (TokenExpired, TokenInvalid, Forbidden) as exc:
                if connector.credentials is None:
                    logger.error("! %s: cannot reconnect: %s", client.name, exc)
                    return None
                logger.warning("! %s: %s; logging in again", client.name, exc)
                connector.token = None
                continue
            except (ConnectFailed, AuthError) as exc:
                logger.info("- %s: reconnect attempt %d failed: %s", client.name, attempt, exc)
                continue
            if self._stop.is_set():
                ws.close()
                return None
            try:
                self.register(ws, replay=True, on_answer=self._restored)
            except (websocket.WebSocketException, OSError):
                ws.abort()
                continue
            if self._stop.is_set():
                # close() ran while this socket was being registered, perhaps too early to see it.
                self._wire.drop(ws, ConnectionClosedOK(1000, "closed while reconnecting"))
                ws.close(timeout=0)
                return None
            self._set_state(State.CONNECTED)
            logger.info("= %s reconnected after %d attempt(s)", client.name, attempt)
            return ws
        return None  # not reached: itertools.count never ends

    def _restored(self, ack: "_Ack") -> None:
        """The replay's pong (on the reader thread): the reconnection is complete only now."""
        if ack.error is not None:
            logger.error("! %s: restoring subscriptions failed: %s", self._client.name, ack.error)
        self._emit(self._client.on_connect)

    # ------------------------------------------------------------------ state and hooks

    def _set_state(self, state: State) -> None:
        with self._state_lock:
            if self._state is State.CLOSED:
                return
            self._state = state
            self._state_changed.notify_all()

    def _emit(self, hook: Callable[..., Any] | None, *args: Any) -> None:
        """Queue ``hook(client, *args)`` on the dispatcher thread (nothing when unset)."""
        if hook is not None:
            self._dispatch.call(hook, self._client, *args)


def _shut_down(ws: websocket.WebSocket) -> None:
    """Wake the thread blocked reading ``ws`` (its next read sees the end of the stream).

    websocket-client's ``abort()`` does this only while ``ws.connected``, which
    ``send_close()`` has already cleared, so shut the raw socket down here.
    """
    sock = ws.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
