"""One WebSocket connection: the command loop that runs on its request thread.

Each connection costs exactly one thread, the one the WSGI server gave its
request. That thread reads the socket (blocking ``recv``, decoded by
``frames.FrameParser``) and carries out commands in order. The commands of
one read run together inside ``Writer.batch()`` and, when the hub says so,
under ``Hub.commands_lock`` (its history lock, taken once for them all rather
than once per publish: 1,000 publishing threads convoyed on it).

Writes (replies, pongs, publishes, the close frame) all go through the hub's
``Writer``, which is flat-combining: whichever thread holds its
``_flush_lock`` writes, one at a time, with non-blocking sends, usually the
thread that queued the frame, so often this one at the end of each read's
``Writer.batch()``. What a full socket does not take waits in its bounded
outbox; the ``rusty_ws-writer`` thread only waits for room in such sockets,
pings idle clients and ends closing handshakes that time out. So neither this
thread nor a publisher ever blocks on a subscriber (see ``writer.py``).

``Hub.serve`` owns the connection's life: it creates and registers it, runs
``Connection.serve`` on the request thread, and whatever ends it (a close
frame, EOF, a reset, a server-side close, keepalive) forgets it and its
subscriptions and releases its outbox (the writer shuts the socket down) in
its ``finally``; the view that called ``Hub.serve`` then closes the socket.

Who may do what (``access.py``): an anonymous connection starts in
``default`` and may use the sessions ``RUSTY_WS_ANONYMOUS_SESSIONS`` (and the
app's session policy) allow. A connection with a token starts in the token's
``sid``, which it may always use, and may use any other session the policy
grants its ``sub``; every command that names or implies a session is checked
(``forbidden_session``), and subscribes and publishes also per topic
(``forbidden_topic``).

Tokens on a live connection: a connection opened without one may send
``auth:{token}`` as its very first frame and then is exactly a token
connection; under ``RUSTY_WS_REQUIRE_AUTH`` it must, within
``RUSTY_WS_AUTH_TIMEOUT``, or it is closed with 4001. A token connection is
closed with 4002 once its token's ``exp`` (plus ``RUSTY_WS_TOKEN_EXPIRY_GRACE``)
has passed, unless ``refresh:{token}`` replaced it first. Both deadlines are
timers run by the writer's thread (``timers.py``), never a thread of their own.
That half lives in ``token_life.py`` (the ``TokenLife`` mixin). A token is
never logged, nor echoed in a reply.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ..auth import REDACTED, Claims, redact_tokens
from ..exceptions import ProtocolError
from ..frames import OP_PONG, FrameEvent, FrameParser, encode_frame, text_frame
from ..protocol import (
    CLOSE_CODE_EXPLANATIONS,
    DEFAULT_SESSION,
    PONG_REPLY,
    PUBLISH_PREFIX,
    PUBLISH_START,
    Auth,
    CloseCode,
    Delivery,
    ErrorCode,
    HistoryQuery,
    Ping,
    Publish,
    Refresh,
    RegisterName,
    RegisterSession,
    Subscribe,
    SubscribeJson,
    Unsubscribe,
    command_verb,
    encode_ack,
    encode_error,
    parse_command,
    rfc3339_now,
    usual_publish,
)
from .access import TopicAction
from .token_life import TokenLife

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["Connection"]

logger = logging.getLogger("rusty_ws.server")

#: recv(n) allocates n bytes before it blocks, so an idle connection reads with a small
#: buffer; a read that fills it means more is waiting: a non-blocking read takes it at once
#: (``_and_waiting``), and the next read is a big one if that one filled its buffer too.
IDLE_RECV_BYTES = 479
BUSY_RECV_BYTES = 65536
#: The next read's buffer after a read that brought more than an idle read holds (a client that
#: sends bursts, such as 8 publishes in one write): one ``recv`` for its next burst, not two
#: (each a release of the GIL, and under load a hand-off). Back to ``IDLE_RECV_BYTES`` as soon
#: as a read brings no more than that, so only a connection whose last read was a burst
#: waits with it (idle subscribers never do: docs/architecture.md).
WARM_RECV_BYTES = 4096
#: A read that does not wait (Linux, macOS): what else an idle read's burst brought.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_monotonic = time.monotonic
_PONG_REPLY_FRAME = text_frame(PONG_REPLY)  # the text reply to the ``ping`` command
# _on_event runs per message: module globals, not ``FrameEvent.X`` lookups (~0.1 us each on 3.11).
_TEXT, _BINARY, _PING, _PONG = FrameEvent.TEXT, FrameEvent.BINARY, FrameEvent.PING, FrameEvent.PONG
_CLOSE, _TOO_BIG, _FAILED = FrameEvent.CLOSE, FrameEvent.TOO_BIG, FrameEvent.FAILED
_SUBSCRIBE, _PUBLISH = TopicAction.SUBSCRIBE, TopicAction.PUBLISH
#: Verbs whose argument is a token: logged as the verb alone.
_TOKEN_VERBS = ("auth:", "refresh:")
#: Seconds a reply waits for the acks of earlier publishes (the broker answers well within it).
ACK_WAIT = 20.0


class Connection(TokenLife):
    """A client's WebSocket, from the upgrade to the last byte.

    Args:
        hub: the hub this connection belongs to.
        sock: the connected socket, past the handshake. This thread reads it; writes go
            through ``hub.writer``, done by whichever thread holds its ``_flush_lock``.
        claims: the verified token's claims, or None for an anonymous connection.
        remote: the peer's address, for logs.
        deflate: permessage-deflate was negotiated: compressed messages in, compressed deliveries out.
    """

    def __init__(
        self,
        hub: "Hub",
        sock: socket.socket,
        claims: Claims | None,
        remote: str = "?",
        deflate: bool = False,
    ) -> None:
        self.hub = hub
        self.id = hub.next_id()
        self.sock = sock
        self.parser = FrameParser(hub.settings.max_message_size, inflate=deflate)
        self.claims = claims
        self.remote = remote
        self.name: str | None = None
        self.session_id = claims.sid if claims else DEFAULT_SESSION
        self.label = f"conn-{self.id}"
        self.outbox = hub.writer.attach(sock, self.label, deflate=deflate)
        self._closing = False  # we sent a close frame; only the peer's close is awaited now
        self.started = time.monotonic()
        # How the connection ended, for the log (``ending``); written by the reading thread only.
        self._peer_close: tuple[int, str] | None = None  # the peer's close frame: code and reason
        self._peer_answered = False  # that close frame answered one of the hub's
        #: An exiting hub read the client's answer to its close frame itself (``server/quiet_exit.py``).
        self.answer_read = False
        self._lost: str | None = None  # EOF or a reset, when the socket ended without a close frame
        # Publishes with an id not answered yet. _acks_changed (its own lock) guards the count
        # and is signalled as each ack goes out: replies after them wait (``_await_acks``).
        # Made by this connection's thread at its first publish with an id, before any other
        # thread can answer one: most connections never publish, and a Condition with its
        # waiters' deque is ~1.1 KiB of an idle connection (docs/architecture.md).
        self._acks_changed: threading.Condition | None = None
        self._acks_pending = 0
        self._reader = 0  # the ident of the thread running the command loop
        self._start_token_life()  # token_life.py: the expiry, or the wait for auth:

    def __repr__(self) -> str:
        who = self.claims.sub if self.claims else "anonymous"
        return f"<Connection {self.id} {who} in {self.session_id!r} from {self.remote}>"

    # ------------------------------------------------------------------ lifecycle

    def serve(self, read_ahead: bytes = b"") -> None:
        """Run the command loop until the connection ends. Blocks; ``Hub.serve`` calls it and cleans up.

        Args:
            read_ahead: bytes of the stream that the WSGI server read past the request
                head (a client that did not wait for the 101); parsed before the socket is read.
        """
        thread = threading.current_thread()
        self._reader = thread.ident or 0
        request_thread_name, thread.name = thread.name, f"rusty_ws-{self.label}"
        if logger.isEnabledFor(logging.INFO):  # its arguments are built before logging looks at the level
            logger.info("%s connected from %s as %s in session %r", self.label, self.remote, self._who(),
                        self.session_id)
        try:
            self._read_until_closed(read_ahead)
        except Exception:
            logger.exception("%s failed; closing it", self.label)
            self.close(CloseCode.INTERNAL_ERROR, CLOSE_CODE_EXPLANATIONS[1011])
        finally:
            thread.name = request_thread_name

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake from the server side, after what is queued. Safe from any thread.

        Queues the close frame on the hub's writer and returns; never blocks on the socket.
        """
        self._closing = True
        self.hub.writer.close(self.outbox, code, reason)

    def _read_until_closed(self, read_ahead: bytes) -> None:
        recv, parser, batch, held = self.sock.recv, self.parser, self.hub.writer.batch, self.hub.commands_lock
        if read_ahead:  # before the loop, so the loop itself is unchanged
            logger.debug("< %s %d bytes came with the request head", self.label, len(read_ahead))
            with batch(), held():
                if not self._carry_out(parser.feed(read_ahead)):
                    return
        size = IDLE_RECV_BYTES
        while True:
            try:
                data = recv(size)
            except OSError as exc:
                self._lost = f"connection reset ({exc.strerror or exc})"
                return
            if not data:
                self._lost = "EOF"
                return
            if len(data) < size:
                size = WARM_RECV_BYTES if len(data) > IDLE_RECV_BYTES else IDLE_RECV_BYTES
            elif size == IDLE_RECV_BYTES and _DONTWAIT:
                # An idle read that filled its small buffer: take what else is waiting now,
                # so a burst is carried out (and its sends written) as one batch, not two.
                data, size = self._and_waiting(data)
            else:
                size = BUSY_RECV_BYTES
            # What the commands of one read send leaves together, at its end, after the hub's
            # lock for them (if any, Hub.commands_lock) is let go: never written under it.
            with batch(), held():
                if not self._carry_out(parser.feed(data)):
                    return

    def _and_waiting(self, data: bytes) -> tuple[bytes, int]:
        """``data`` and what the socket holds beyond it now (one non-blocking read), and the next read's size.

        A failed or empty read here says nothing yet: the next blocking ``recv``
        reports the reset or the EOF, after ``data``'s commands.
        """
        try:
            more = self.sock.recv(BUSY_RECV_BYTES, _DONTWAIT)
        except OSError:  # BlockingIOError: nothing more yet; a reset: seen by the next read
            return data, IDLE_RECV_BYTES
        return data + more, BUSY_RECV_BYTES if len(more) == BUSY_RECV_BYTES else WARM_RECV_BYTES

    def _carry_out(self, events: list[tuple]) -> bool:
        """Handle the events of one read, in order; False once the connection is done reading.

        A text message (the usual event) is handled here rather than through
        ``_on_event``, and whether to log commands is asked once per read.
        """
        if self.hub.takes_runs and not self._fresh and not logger.isEnabledFor(logging.DEBUG) \
                and not self.hub.access.has_hooks:
            return self._carry_out_runs(events)
        command = self.handle_text if logger.isEnabledFor(logging.DEBUG) else self._command
        alive = False  # the read's messages arrived at once: one sign of life (``last_seen``) for them
        for event in events:
            if event[0] is _TEXT:
                if not alive:
                    self.outbox.last_seen, alive = _monotonic(), True
                if not self._closing:
                    command(event[1])
            elif not self._on_event(event):
                return False
        return True

    def _carry_out_runs(self, events: list[tuple]) -> bool:
        """``_carry_out``, with the usual publishes (no id) of consecutive messages to one stream
        handed to the hub together (``Hub.publish_run``): the bench's client sends 8 at once.

        Only when the hub takes runs (its own broker and history), the app has no hooks
        (the checks of a stream's first publish then hold for the run: they depend on
        nothing a publish changes) and commands are not logged. Every other message
        ends the run before it is carried out as usual, so replies and deliveries keep
        the order of the commands; a publish refused by the checks goes the usual way
        too, for its error reply.
        """
        alive = False
        run: list[tuple[Any, str | None]] = []  # (payload, timestamp) of the publishes not handed over yet
        run_topic = run_session = ""
        for event in events:
            if event[0] is not _TEXT:
                if run:
                    self._publish_run(run_topic, run_session, run)
                    run = []
                if not self._on_event(event):
                    return False
                continue
            if not alive:
                self.outbox.last_seen, alive = _monotonic(), True
            if self._closing:
                continue
            text = event[1]
            usual = usual_publish(text, PUBLISH_START) if text.startswith(PUBLISH_PREFIX) else None
            if usual is not None and usual[4] is None:
                topic, payload, session_id, timestamp = usual[0], usual[1], usual[2] or self.session_id, usual[3]
                if run and topic == run_topic and session_id == run_session:
                    run.append((payload, timestamp))
                    continue
                if run:
                    self._publish_run(run_topic, run_session, run)
                    run = []
                if self._may_publish(topic, session_id):
                    run, run_topic, run_session = [(payload, timestamp)], topic, session_id
                    continue
            elif run:
                self._publish_run(run_topic, run_session, run)
                run = []
            self._command(text)  # anything else, and a refused publish for its error reply
        if run:
            self._publish_run(run_topic, run_session, run)
        return True

    def _may_publish(self, topic: str, session_id: str) -> bool:
        """``_on_publish``'s checks of a publish on ``topic`` in ``session_id``, passed (no reply either way)."""
        claims = self.claims
        user = claims.sub if claims else None
        access = self.hub.access
        if (claims is None or session_id != claims.sid) and not access.may_use_session(user, session_id):
            return False
        return access.topic_refusal(user, session_id, topic, _PUBLISH) is None

    def _publish_run(self, topic: str, session_id: str, items: list[tuple[Any, str | None]]) -> None:
        """The publishes ``items`` of this connection to one stream, checked already (``_carry_out_runs``)."""
        claims = self.claims
        user = claims.sub if claims else None
        self.hub.publish_run(self.name or user or "anonymous", topic, session_id, user, items)

    def _on_event(self, event: tuple) -> bool:
        """Handle one parser event; False once the connection is done reading.

        Only a whole message or a pong is a sign of life for keepalive (``last_seen``):
        bytes of a frame that never ends, or pings, keep no dead peer's slot.
        """
        kind = event[0]
        if kind is _TEXT:
            self.outbox.last_seen = time.monotonic()
            if not self._closing:
                self.handle_text(event[1])
        elif kind is _PONG:
            self.outbox.last_seen = time.monotonic()
        elif kind is _BINARY:
            self.outbox.last_seen = time.monotonic()
            if not self._closing:
                self.handle_binary()
        elif kind is _PING:
            self.hub.writer.send_to(self.outbox, encode_frame(OP_PONG, event[1]))
        elif kind is _CLOSE:
            code, reason = event[1], event[2]
            logger.debug("< %s close %s %s", self.label, code, reason)
            self._peer_close = (code, reason)
            self._peer_answered = self._closing or self.outbox.close_sent is not None
            if not self._closing:  # the peer started it: answer with its code, then stop
                self.close(1000 if code == 1005 else code, "" if code == 1005 else reason)
            return False
        elif kind is _TOO_BIG:
            logger.info("%s sent a message over %d bytes", self.label, self.hub.settings.max_message_size)
            self.close(CloseCode.MESSAGE_TOO_BIG, CLOSE_CODE_EXPLANATIONS[1009])
        elif kind is _FAILED:
            # RFC 6455 7.1.7: after failing the connection, read nothing more (not even the
            # peer's close); the close frame goes out, then the socket is shut down.
            logger.info("%s broke the protocol: %s", self.label, event[2])
            self.close(event[1], event[2])
            return False
        return True

    # ------------------------------------------------------------------ commands

    def handle_text(self, text: str) -> None:
        """Carry out one command; a bad one gets an ``error:`` reply and nothing else changes."""
        if logger.isEnabledFor(logging.DEBUG):
            shown = text.partition(":")[0] + ":" + REDACTED if text.startswith(_TOKEN_VERBS) else text[:200]
            logger.debug("< %s %s", self.label, shown)
        self._command(text)

    def _command(self, text: str) -> None:
        """``handle_text`` without its log line."""
        if self._fresh and self._first_message(text):
            return
        try:
            command = parse_command(text)
            if self._acks_pending and type(command) in _REPLYING:
                self._await_acks()  # its reply goes after the acks of earlier publishes
            self._HANDLERS[type(command)](self, command)
        except ProtocolError as exc:
            self._reply_error(exc.code, exc.message, command_verb(text), exc.publish_id)

    def handle_binary(self) -> None:
        """A binary message: not a command (an error reply), or, first under REQUIRE_AUTH, the end."""
        if self._fresh and self._first_message(None):
            return
        self._reply_error(ErrorCode.BINARY_NOT_SUPPORTED, "send commands as text frames", None)

    def _reply_error(self, code: str, message: str, verb: str | None, publish_id: str | None = None) -> None:
        self._await_acks()
        message = redact_tokens(message)  # an unknown frame is echoed: never a token in it
        logger.debug("> %s error %s: %s", self.label, code, message)
        self.hub.writer.send_to(self.outbox, text_frame(encode_error(code, message, verb, publish_id)))

    def _who(self) -> str:
        return f"user {self.claims.sub!r}" if self.claims else "anonymous"

    def describe(self) -> str:
        """Who this is, for logs: ``'web-ab12' (user 'alice') in session 'session-alice' from 127.0.0.1``."""
        name = repr(self.name) if self.name is not None else "unnamed"
        return f"{name} ({self._who()}) in session {self.session_id!r} from {self.remote}"

    def ending(self) -> str:
        """How the connection ended, for logs: who closed it, with which code and reason, or EOF or a reset.

        Call once ``serve`` has returned.
        """
        sent = self.outbox.close_sent
        if self._peer_close is not None and not self._peer_answered:
            code, reason = self._peer_close
            if code == 1005:
                return "closed by the client without a code"
            if reason:  # the client's own words: quoted, so they cannot pass for the log's
                return f"closed by the client with {code} {reason!r}"
            known = CLOSE_CODE_EXPLANATIONS.get(code)
            return f"closed by the client with {code}" + (f" ({known})" if known else "")
        if sent is not None:
            code, reason = sent
            ended = f"closed by the hub with {code} {reason}".rstrip()
            if self._peer_close is None and not self.answer_read:
                ended += f"; the client did not answer ({self._lost or 'EOF'})"
            return ended
        return f"{self._lost or 'ended'} without a close frame"

    def _allowed_session(self, session_id: str | None) -> str:
        """The session a command acts on; raises ``forbidden_session`` for one this connection may not use."""
        session_id = session_id or self.session_id
        claims = self.claims
        if claims is not None and session_id == claims.sid:
            return session_id
        username = claims.sub if claims is not None else None
        access = self.hub.access
        if not access.may_use_session(username, session_id):
            raise ProtocolError(ErrorCode.FORBIDDEN_SESSION, access.session_refusal(username, session_id))
        return session_id

    def _stream(self, topic: str, session_id: str | None, action: TopicAction) -> str:
        """The session of a command on ``topic``, once both checks passed."""
        session_id = self._allowed_session(session_id)
        claims = self.claims  # _allowed_topic, inlined
        refusal = self.hub.access.topic_refusal(claims.sub if claims else None, session_id, topic, action)
        if refusal is not None:
            raise ProtocolError(ErrorCode.FORBIDDEN_TOPIC, refusal)
        return session_id


    def _on_ping(self, command: Ping) -> None:
        self.hub.writer.send_to(self.outbox, _PONG_REPLY_FRAME)

    def _on_register_name(self, command: RegisterName) -> None:
        self.name = command.name

    def _on_register_session(self, command: RegisterSession) -> None:
        old, self.session_id = self.session_id, self._allowed_session(command.session_id)
        self.hub.registry.enter_session(self.session_id)  # /healthz counts sessions as they change
        self.hub.registry.leave_session(old)

    def _on_subscribe(self, command: Subscribe) -> None:
        self.hub.subscribe(self.outbox, command.topic, self._stream(command.topic, command.session_id, _SUBSCRIBE))

    def _on_unsubscribe(self, command: Unsubscribe) -> None:
        self.hub.unsubscribe(self.outbox, command.topic, self._allowed_session(command.session_id))

    def _on_subscribe_json(self, command: SubscribeJson) -> None:
        self.hub.subscribe_json(self.outbox, command.topic,
                                self._stream(command.topic, command.session_id, _SUBSCRIBE), command.since)

    def _on_history(self, command: HistoryQuery) -> None:
        reply = self.hub.history_of(command.topic, self._stream(command.topic, command.session_id, _SUBSCRIBE),
                                    command.limit, command.since)
        self.hub.writer.send_to(self.outbox, text_frame(reply))

    def _on_publish(self, command: Publish) -> None:
        claims = self.claims
        user = claims.sub if claims else None
        topic = command.topic
        try:
            # _stream(topic, command.session_id, _PUBLISH), inlined: once per publish.
            session_id = command.session_id or self.session_id
            access = self.hub.access
            if (claims is None or session_id != claims.sid) and not access.may_use_session(user, session_id):
                raise ProtocolError(ErrorCode.FORBIDDEN_SESSION, access.session_refusal(user, session_id))
            refusal = access.topic_refusal(user, session_id, topic, _PUBLISH)
            if refusal is not None:
                raise ProtocolError(ErrorCode.FORBIDDEN_TOPIC, refusal)
            delivery = Delivery(  # positional, once per publish: publisher_name, topic, payload, timestamp, session_id
                command.publisher_name or self.name or user or "anonymous",
                topic,
                command.payload,
                command.timestamp or rfc3339_now(),
                session_id,
                user,
            )
            if command.id is None:
                self.hub.publish(delivery)
                return
            changed = self._acks_changed
            if changed is None:  # the first publish with an id: no other thread has seen one yet
                changed = self._acks_changed = threading.Condition(threading.Lock())
            with changed:
                self._acks_pending += 1
            answer, answered = self._answerer(command.id)
            try:
                self.hub.publish(delivery, command.id, answer)
            except BaseException:
                if not answered():
                    self._ack_sent()  # refused before it was delivered: no ack will come
                raise
        except ProtocolError as exc:
            exc.publish_id = command.id
            raise

    def _answerer(self, publish_id: str) -> tuple[Callable[[Any], None], Callable[[], bool]]:
        """What answers one publish with an id (its ``ack:`` or ``error:``, after every earlier one's),
        and whether it was called.

        Called on this thread (in-memory broker, a repeat) or on the broker's
        (Redis, once Redis took it): acks go out in the order of the publishes.
        """
        called: list[bool] = []

        def answer(result: Any) -> None:
            called.append(True)
            try:
                if threading.get_ident() == self._reader:
                    self._await_acks(1)  # this thread: earlier acks still in flight go first
                if isinstance(result, ProtocolError):
                    frame = text_frame(encode_error(result.code, result.message, "publish-json", publish_id))
                else:
                    (position, delivered), _ = result
                    offset, epoch = (position.offset, position.epoch) if position else (None, None)
                    frame = text_frame(encode_ack(publish_id, offset, epoch, delivered))
                self.hub.writer.send_to(self.outbox, frame)
            finally:
                self._ack_sent()

        return answer, lambda: bool(called)

    def _ack_sent(self) -> None:
        assert self._acks_changed is not None  # made before the publish whose ack this is
        with self._acks_changed:
            self._acks_pending -= 1
            self._acks_changed.notify_all()

    def _await_acks(self, leave: int = 0) -> None:
        """Before a reply: wait until at most ``leave`` acks are in flight, so replies keep their order.

        Blocks this connection's thread only (its client asked for the acks); the
        broker answers every publish within its timeouts.
        """
        changed = self._acks_changed
        if self._acks_pending <= leave or changed is None:  # the usual case: no lock
            return
        with changed:
            if not changed.wait_for(lambda: self._acks_pending <= leave, ACK_WAIT):
                logger.warning("%s: %d acks still in flight after %.0fs; replying anyway", self.label,
                               self._acks_pending, ACK_WAIT)

    _HANDLERS: ClassVar[dict[type, Callable[[Any, Any], None]]] = {
        Ping: _on_ping,
        RegisterName: _on_register_name,
        RegisterSession: _on_register_session,
        Subscribe: _on_subscribe,
        Unsubscribe: _on_unsubscribe,
        Publish: _on_publish,
        SubscribeJson: _on_subscribe_json,
        HistoryQuery: _on_history,
        Auth: TokenLife._on_auth,
        Refresh: TokenLife._on_refresh,
    }


#: Commands answered with a reply of their own: it waits for the acks of earlier publishes.
_REPLYING = (Ping, HistoryQuery, SubscribeJson, Auth, Refresh)
