"""``Supervisor``: the reader thread of a ``WsClient``, which keeps it connected.

One job: keep one live, registered socket under the client. The supervisor
owns the thread ``rusty_ws-client-reader-{name}``, the only reader of the
socket, which

- reads every frame, answers the server's pings, and pings after
  ``ping_interval`` seconds of silence (dropping the socket when ``ping_timeout``
  passes without an answer);
- refreshes the token in-band before it expires (``refresh:{token}``, answered
  by ``refreshed:``), on the same read-timeout timer as keepalive, so no thread
  of its own; and after the hub's 4002 (token expired) gets a new token
  (refresh, else log in again) and reconnects, when it holds credentials;
- routes text frames: ``pong``, ``error:``, ``refreshed:`` and the history replies
  (``subscribed:``, ``history:``, ``ack:``) to the calls waiting on the
  client's wire (``wire.Wire``), deliveries to the dispatcher, less those
  seen already (``subscriptions.Subscriptions``);
- when the connection drops: fails the waiting calls, reads the close code's
  policy, waits out the backoff on the stop event (so ``close()`` cuts it
  short), opens a new socket, and sends register-name, register-session,
  every recorded subscription (``subscribe-json`` from the last position
  seen, so the hub replays what was missed) and every unacknowledged publish
  (same ids) before it lets calls use the socket again; ``on_connect`` fires
  once those subscriptions are answered, ``on_recovery_failed`` for each
  that could not recover everything;
- moves the state (``State``) that calls wait on.

It never runs user code: hooks are queued on the dispatcher thread.
"""

from __future__ import annotations

import enum
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

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
    ACK_PREFIX,
    HISTORY_PREFIX,
    PONG_REPLY,
    RECONNECT_JITTER,
    REFRESHED_PREFIX,
    SUBSCRIBED_PREFIX,
    Ack,
    CloseCode,
    ClosePolicy,
    Delivery,
    HistoryReply,
    Refreshed,
    Since,
    Subscribed,
    close_policy,
    encode_refresh,
    encode_register_name,
    encode_register_session,
    encode_subscribe,
    encode_subscribe_json,
    is_error_reply,
    parse_error,
    reconnect_window,
)
from .connector import Connector
from .deadline import Deadline
from .dispatch import CallbackDispatcher
from .subscriptions import Subscriptions, recovery_failure
from .tokens import seconds_left
from .wire import Call, Waiter, Wire, shut_down

if TYPE_CHECKING:
    from .client import WsClient

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

    def __init__(self, client: "WsClient", wire: Wire, connector: Connector,
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
        # What a reconnection resubscribes to, and from where (its own lock).
        self.subscriptions = Subscriptions()
        # Set once, by stop(): cuts backoff waits short and tells the reader not to reconnect.
        self._stop = threading.Event()
        # The reader thread, made and started by start() once open() has a registered socket.
        self.thread: threading.Thread | None = None
        # When (time.monotonic()) the token is due for an in-band refresh; None: not armed
        # (anonymous, or a refresh waiting for its answer). Read and written by the reader thread only.
        self._refresh_at: float | None = None

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

    def register(self, ws: websocket.WebSocket, *, replay: bool,
                 on_restored: Callable[[Waiter], Any] | None = None) -> Waiter:
        """Make ``ws`` the live socket and send register-name and register-session (one ping).

        To ``replay``, then every recorded subscription (``subscribe-json`` from its
        last position; the seed's ``subscribe:`` with ``seed_protocol``) and one more
        ping, whose answer runs ``on_restored``; then every unacknowledged publish.

        Returns:
            The registration's waiter (without ``replay``) or the last ping's.

        Raises:
            websocket.WebSocketException, OSError: the socket failed while sending.
        """
        client = self._client
        session_id = client.session_id
        log = self._log_failure if replay else None
        calls: list[Call] = [([encode_register_name(client.name), encode_register_session(session_id)],
                              Waiter("register", on_answer=log))]
        if replay:
            if client.seed_protocol:
                texts = [encode_subscribe(topic, session_id) for topic in self.subscriptions.topics()]
                if texts:
                    calls.append((texts, Waiter("resubscribe", on_answer=log)))
            else:
                for topic, since in self.subscriptions.items():
                    calls.append(([encode_subscribe_json(topic, session_id, since)],
                                  Waiter(f"resubscribe {topic}", Subscribed,
                                         self.on_subscribed(topic, since, replay=True))))
            calls.append(((), Waiter("restored", on_answer=on_restored)))
        self._wire.attach(ws, calls)
        return calls[-1][1]

    def on_subscribed(self, topic: str, since: Since | None, *, replay: bool) -> Callable[[Waiter], None]:
        """The ``on_answer`` of a ``subscribe-json`` from ``since``: keep the position, report a loss."""
        def answered(waiter: Waiter) -> None:
            client = self._client
            if waiter.error is not None:
                if replay:
                    logger.error("%s: resubscribing to %s failed: %s", client.name, topic, waiter.error)
                return
            reply: Subscribed = waiter.reply
            self.subscriptions.subscribed(topic, reply, add=not replay)
            failure = recovery_failure(since, reply) if since is not None else None
            if failure is not None:
                logger.warning("%s: %s: messages may be missing (%s)", client.name, topic, failure)
                self._emit(client.on_recovery_failed, topic, reply.session_id or client.session_id, failure)
        return answered

    def _log_failure(self, waiter: Waiter) -> None:
        if waiter.error is not None:
            logger.error("%s: %s failed after reconnecting: %s", self._client.name, waiter.label, waiter.error)

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
                shut_down(ws)
            return
        left = deadline.timeout()
        thread.join(CLOSE_ANSWER_WAIT if left is None else min(CLOSE_ANSWER_WAIT, left / 2))
        if thread.is_alive():
            # No answer. The reader may have reconnected since: wake it on the socket live now.
            live = self._wire.socket or ws
            if live is not None:
                shut_down(live)
        thread.join(deadline.timeout())

    def closed(self) -> None:
        """Enter CLOSED for good: wake the calls that wait, fail the unacknowledged publishes. Idempotent."""
        self._set_state(State.CLOSED)
        self._wire.close_publishes(ConnectionClosedError(*self.last_close))

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
                if code == CloseCode.TOKEN_EXPIRED and self._connector.credentials is not None:
                    # Not with this token: _reconnect's ensure_usable_token() gets a new one
                    # (a refresh while it is still valid, else a new login).
                    logger.info("%s: the token expired on the hub (4002); reconnecting with a new one", name)
                    policy = ClosePolicy.RECONNECT_NOW
                elif policy is ClosePolicy.DO_NOT_RECONNECT:
                    logger.warning("%s: server closed with %d (%s): not reconnecting", name, code, reason)
                    return
                next_ws = self._reconnect(policy, reason)
                if next_ws is None:
                    return
                ws = next_ws
        except Exception:
            logger.exception("%s: reader thread failed", name)
        finally:
            self.closed()  # before the dispatcher stops, so the publishes' done-callbacks still run
            self._dispatch.stop()

    def _read_until_dropped(self, ws: websocket.WebSocket) -> tuple[int, str]:
        """Read and handle frames until the connection ends; returns its close code and reason.

        Between frames it keeps two deadlines on the socket's read timeout, so no
        thread of their own: keepalive (ping after ``ping_interval`` of silence,
        give up ``ping_timeout`` later) and the token's in-band refresh
        (``_refresh_in_band``, due as ``Connector.seconds_until_refresh`` says).
        """
        client = self._client
        keepalive = client.ping_interval or None
        ping_at = None if keepalive is None else time.monotonic() + keepalive
        pong_due: float | None = None  # set while a keepalive ping waits for any answer
        self._schedule_refresh()
        while True:
            now = time.monotonic()
            if self._refresh_at is not None and now >= self._refresh_at:
                self._refresh_in_band(ws)
                continue
            due = [t for t in (pong_due if pong_due is not None else ping_at, self._refresh_at) if t is not None]
            ws.settimeout(max(0.001, min(due) - now) if due else None)
            try:
                opcode, frame = ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                now = time.monotonic()
                if pong_due is not None and now >= pong_due:
                    logger.warning("%s: no answer to keepalive ping; reconnecting", client.name)
                    ws.abort()
                    return 1006, "keepalive timeout"
                if pong_due is None and ping_at is not None and now >= ping_at:
                    try:
                        ws.ping()
                    except (websocket.WebSocketException, OSError):
                        return 1006, "ping failed"
                    pong_due = now + client.ping_timeout
                continue
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                return 1006, str(exc) or type(exc).__name__
            pong_due = None
            if keepalive is not None:
                ping_at = time.monotonic() + keepalive
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._on_text(frame.data.decode("utf-8") if isinstance(frame.data, bytes) else frame.data)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data or b""
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                return code, data[2:].decode("utf-8", "replace")

    # ------------------------------------------------------------------ in-band token refresh (reader thread)

    def _schedule_refresh(self, *, after_refresh: bool = False) -> None:
        """Arm the in-band refresh for the connector's token (none for an anonymous client).

        Not armed when, by this machine's clock, the token has expired already though
        the hub took it, nor when a token just refreshed is due at once: then the
        clocks of client and hub disagree, and refreshing would only loop. The hub's
        4002 (and a reconnection with a new token) is the answer then.
        """
        delay = self._connector.seconds_until_refresh()
        self._refresh_at = None
        if delay is None:
            return
        if self._token_seconds_left() <= 0 or (after_refresh and delay <= 0):
            logger.warning("%s: its token is %s by this machine's clock: the clocks of client and hub "
                           "disagree; no in-band refresh on this connection", self._client.name,
                           "expired" if self._token_seconds_left() <= 0 else "due for refresh at once")
            return
        self._refresh_at = time.monotonic() + delay

    def _refresh_in_band(self, ws: websocket.WebSocket) -> None:
        """The token is due: get a fresh one over HTTP and send ``refresh:{token}`` on ``ws``.

        Runs on the reader thread, which reads nothing meanwhile (the socket buffers):
        the HTTP round trips take at most the client's ``timeout`` each. ``refreshed:``
        (``_refreshed``) makes the fresh token the connector's and arms the next
        refresh; a refusal leaves the old token, and the hub's 4002 then leads to a
        new token and a reconnection (``_run``). A failed HTTP refresh is tried again
        halfway to the expiry, while more than a second is left.
        """
        self._refresh_at = None  # one refresh at a time: the answer arms the next
        client, connector = self._client, self._connector
        try:
            fresh = connector.renewed()
        except (AuthError, ConnectFailed, TokenInvalid) as exc:
            left = self._token_seconds_left()
            if left > 1.0:
                self._refresh_at = time.monotonic() + left / 2
            logger.warning("%s: cannot refresh its token (%s); %s", client.name, exc,
                           "trying again later" if self._refresh_at else "the hub will close with 4002")
            return
        waiter = Waiter("refresh", Refreshed, lambda answered: self._refreshed(answered, fresh))
        try:
            self._wire.send(ws, [encode_refresh(fresh)], waiter)
        except ConnectionClosedError:
            pass  # the socket went: the reader sees it at its next read

    def _refreshed(self, waiter: Waiter, fresh: str) -> None:
        """The answer to ``refresh:`` (on the reader thread)."""
        if waiter.error is not None:
            logger.warning("%s: the hub refused the refreshed token (%s); it will close with 4002, "
                           "and the client reconnects with a new token", self._client.name, waiter.error)
            return
        self._connector.token = fresh
        self._schedule_refresh(after_refresh=True)
        logger.info("%s refreshed its token in-band: %ds left", self._client.name, waiter.reply.expires_in)

    def _token_seconds_left(self) -> float:
        token = self._connector.token
        try:
            return seconds_left(token) if token else 0.0
        except TokenInvalid:
            return 0.0

    def _on_text(self, text: str) -> None:
        if text == PONG_REPLY:
            if not self._wire.answered():
                logger.debug("- %s: a pong nobody waited for", self._client.name)
        elif is_error_reply(text):
            error = parse_error(text)
            if not self._wire.refused(error):
                logger.warning("%s: server error: %s", self._client.name, error)
        elif text.startswith("{"):
            self._on_delivery(text)
        else:
            self._on_reply(text)

    def _on_delivery(self, text: str) -> None:
        try:
            delivery = Delivery.parse(text)
        except ProtocolError:
            logger.warning("%s: not a message: %.100r", self._client.name, text)
            return
        if not self._client.seed_protocol and not self.subscriptions.admit(delivery):
            logger.debug("- %s: %s offset %s seen already; dropped", self._client.name, delivery.topic,
                         delivery.offset)
            return
        self._dispatch.deliver(delivery)

    def _on_reply(self, text: str) -> None:
        """A history command's reply: ``subscribed:``, ``history:`` or ``ack:``."""
        for prefix, kind in _REPLIES:
            if text.startswith(prefix):
                try:
                    reply = kind.parse(text)
                except ProtocolError:
                    break
                if not self._wire.replied(reply):
                    logger.warning("%s: a reply nobody waited for: %.100r", self._client.name, text)
                return
        logger.warning("%s: not a message: %.100r", self._client.name, text)

    def _connection_lost(self, ws: websocket.WebSocket, code: int, reason: str) -> None:
        closed = ConnectionClosedOK(code, reason) if code in (1000, 1001) else ConnectionClosedError(code, reason)
        self._wire.drop(ws, closed)
        ws.close()
        with self._state_lock:
            self._last_close = (code, reason)
        self._set_state(State.CLOSED if self._stop.is_set() or not self._client.reconnect else State.RECONNECTING)
        logger.info("%s disconnected: %d %s", self._client.name, code, reason)
        self._emit(self._client.on_disconnect, code, reason)

    def _reconnect(self, policy: ClosePolicy, reason: str = "") -> websocket.WebSocket | None:
        """Try until connected (returns the socket) or closed or refused for good (returns None).

        "Reconnect now" waits a random part of a window first (``first_delay``), so that
        clients dropped together do not come back in the same instant.
        """
        client, connector = self._client, self._connector
        delays: Iterator[float] = backoff.delays(client.backoff_initial, cap=client.backoff_cap)
        asked: float | None = None  # what the last refusal's Retry-After asked for (a hub pacing a storm)
        for attempt in itertools.count(1):
            if asked is not None:
                delay, asked = asked, None
            elif attempt == 1 and policy is ClosePolicy.RECONNECT_NOW:
                delay = first_delay(reason, client.backoff_initial)
            else:
                delay = next(delays)
            self._emit(client.on_reconnecting, attempt, delay)
            if self._stop.wait(delay):
                return None
            try:
                connector.ensure_usable_token()
                ws = connector.open_socket()
            except (TokenExpired, TokenInvalid, Forbidden) as exc:
                if connector.credentials is None:
                    logger.error("%s: cannot reconnect: %s", client.name, exc)
                    return None
                logger.warning("%s: %s; logging in again", client.name, exc)
                connector.token = None
                continue
            except ConnectFailed as exc:
                # A 503 (or 429) with Retry-After: the hub says when (docs/protocol.md, "Reconnect storms");
                # that wait replaces the back-off's next delay, which does not grow meanwhile.
                asked = backoff.retry_after(exc.retry_after) if exc.status in (429, 503) else None
                logger.info("%s: reconnect attempt %d failed: %s%s", client.name, attempt, exc,
                            "" if asked is None else f"; retrying in {asked:.1f}s, as the hub asks")
                continue
            except AuthError as exc:
                logger.info("%s: reconnect attempt %d failed: %s", client.name, attempt, exc)
                continue
            if self._stop.is_set():
                ws.close()
                return None
            try:
                self.register(ws, replay=True, on_restored=self._restored)
            except (websocket.WebSocketException, OSError):
                ws.abort()
                continue
            if self._stop.is_set():
                # close() ran while this socket was being registered, perhaps too early to see it.
                self._wire.drop(ws, ConnectionClosedOK(1000, "closed while reconnecting"))
                ws.close(timeout=0)
                return None
            self._set_state(State.CONNECTED)
            logger.info("%s reconnected after %d attempt(s)", client.name, attempt)
            return ws
        return None  # not reached: itertools.count never ends

    def _restored(self, waiter: Waiter) -> None:
        """The replay's last pong (on the reader thread): the reconnection is complete only now."""
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


def first_delay(reason: str, backoff_initial: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnecting "now": a random part of the window the close reason names
    (a hub shutting down with many connections: ``protocol.restart_reason``), else of
    ``2 * backoff_initial``, at most ``RECONNECT_JITTER`` (1 s with the default backoff).
    """
    window = reconnect_window(reason)
    if window <= RECONNECT_JITTER:
        window = min(RECONNECT_JITTER, 2 * backoff_initial)
    return window * rng()


_REPLIES: tuple[tuple[str, Any], ...] = (
    (ACK_PREFIX, Ack), (SUBSCRIBED_PREFIX, Subscribed), (HISTORY_PREFIX, HistoryReply),
    (REFRESHED_PREFIX, Refreshed),
)
