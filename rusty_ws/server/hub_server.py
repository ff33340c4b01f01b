"""The hub's server: werkzeug's threaded server sized for many WebSockets, guarded before the upgrade.

``flask run`` works too; this adds a deeper listen backlog (thousands of
clients reconnect at once after a restart) and bounds what a peer can hold
before its request reaches Flask (``docs/security.md``, "Before the upgrade").
werkzeug's server gives every accepted socket a thread that waits for the
request head as long as it takes, unseen by ``RUSTY_WS_MAX_CONNECTIONS``. Here:

- the whole head (request line and headers) must arrive within
  ``RUSTY_WS_REQUEST_HEAD_TIMEOUT`` seconds, however slowly it trickles in,
  or the socket is closed;
- it may be at most ``RUSTY_WS_MAX_REQUEST_HEAD_SIZE`` bytes (431, or 414
  for the request line), so a head that never ends is not kept in memory
  (those two: ``HubRequestHandler``, ``request_handler.py``);
- at most ``RUSTY_WS_MAX_PENDING_REQUESTS`` sockets wait for their head at
  once (``/healthz`` shows ``pending_requests``); one more is answered 503 on
  the accept thread and closed, without a thread;
- past ``RUSTY_WS_MAX_HANDSHAKES`` requests under way (past their head, not yet
  an open WebSocket), or ``RUSTY_WS_MAX_ACCEPT_QUEUE`` connections in the accept
  queue, any request but ``/healthz`` is answered 503 with
  ``Retry-After`` on the accept thread, without a thread (``pacing._Pacer`` says when);
  a long queue is taken whole (``HubServer._drain``, at most every ``DRAIN_EVERY``
  while what it took is served; past ``RUSTY_WS_MAX_ACCEPT_QUEUE`` the newest taken
  are turned away, ``_shed``), and a ``/healthz`` in it is answered first, on the
  accept thread when its whole head came; one taken before its first bytes came is
  watched, and answered first once they show it is a ``/healthz`` (``_look_again``);
- when ``accept()`` fails for want of file descriptors, the accept loop logs
  one line (at most every ``LOG_EVERY`` seconds) and waits ``ACCEPT_BACKOFF``
  instead of trying again at once, which spun a core.

This module is the accept loop's: admission, shedding and draining run on its
one thread. Each request's thread runs ``HubRequestHandler``, or, for a plain
handshake, ``HubServer._upgrade_plainly``; the process around the server
(signals, the stop, the exit) is ``serve.py``'s.
"""

from __future__ import annotations

import errno
import logging
import select
import selectors
import socket
import sys
import threading
import time
from collections import deque
from typing import Any, cast

from flask import Flask
from werkzeug.serving import ThreadedWSGIServer

from ..config import Settings
from ..log_throttle import LogThrottle
from .handoff import SERVE_AFTER_KEY, AfterTheView
from .hub import PendingRequests
from .pacing import _Pacer
from .request_handler import HEAD_ONLY_KEY, HubRequestHandler, _access_log, _log_upgrade
from .request_head import _asks_upgrade, _plain_head, _upgrade_environ
from .state import state_of

__all__ = ["HubServer", "make_server"]

logger = logging.getLogger("rusty_ws.server")

#: Seconds the accept loop waits after ``accept()`` failed for want of descriptors or memory.
ACCEPT_BACKOFF = 0.1
#: Seconds between two log lines about the same trouble on the accept thread.
LOG_EVERY = 10.0
#: ``accept()`` errors that mean "out of a resource": the socket stays readable, so trying again at once spins.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BUSY_BODY = b'{"code": "server_busy", "error": "too many connections are waiting for their request head"}'
#: The answer, written without blocking by the accept thread, to a socket past RUSTY_WS_MAX_PENDING_REQUESTS.
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
_PACED_BODY = (b'{"code": "server_busy", "error": "too many WebSocket handshakes at once; '
               b'retry after the seconds Retry-After says"}')
#: The head of the answer to a WebSocket handshake past RUSTY_WS_MAX_HANDSHAKES; ``%d``: Retry-After's seconds.
_PACED_HEAD = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: %d\r\n"
               b"Connection: close\r\nContent-Length: " + str(len(_PACED_BODY)).encode() + b"\r\n\r\n")
#: Bytes of a request the accept thread looks at (without taking them) to tell ``/healthz`` from a handshake.
PEEK_BYTES = 256
#: Seconds the accept loop, when it paces, waits for a request's first bytes to tell ``/healthz`` from the rest.
PEEK_WAIT = 0.05
#: ``TCP_INFO`` (Linux): for a listening socket, ``tcpi_unacked`` (a u32 at byte 24) is its accept queue's length.
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_TCP_INFO_BYTES = 104
_TCPI_UNACKED = 24
#: Connections in the system's accept queue past which the accept loop takes all of them at once,
#: so that a ``/healthz`` among them is served first rather than after every handshake ahead of it.
DRAIN_FROM = 32
#: At most this many connections taken by drains and not yet served (each holds a descriptor): above
#: ``HOLD_MAX``, so that a drain can still take the system's queue (and turn its newest away) while it
#: holds all it keeps, rather than leave it to fill the listen backlog, past which SYNs are dropped.
DRAIN_MAX = 8192
#: Seconds of handshakes, at the rate the pacer measured, that a drain keeps before it turns the newest away
#: (``HubServer._hold``): a client held that long is served as soon as one told to come back would be, at no
#: cost (a 503 costs a fifth of a handshake, and the client comes back to a full queue again), well within
#: the clients' own handshake timeouts (10 s: ``WsClient``'s ``timeout``, ``RustyWsClient``'s). Held to
#: RUSTY_WS_MAX_ACCEPT_QUEUE (3072) instead, a storm's new hub turned away 500-3,800 a second and admitted
#: 800-1,000 a second doing it, against 1,400-1,900 without (docs/performance.md, "Reconnect storm, session 15").
HOLD_SECONDS = 4.0
#: The most a drain keeps, whatever the rate: descriptors, and the clients' wait.
HOLD_MAX = 6144
#: Seconds of handshakes, at the rate measured since, that what earlier drains kept may amount to before
#: its newest are turned away after all (the hold is sized from the guess until the rate is measured):
#: short of the clients' handshake timeouts (10 s).
HELD_LONGEST = 8.0
#: Seconds between two drains while what the last one took is being served (or as long as the
#: last drain took, if longer: at least half the accept thread's time serves): each drain accepts,
#: peeks at and turns away every newcomer past the queue's bound, and one drain per request served
#: (as it was) left a starved hub admitting one handshake a second while it refused hundreds.
DRAIN_EVERY = 0.05
#: Seconds the accept thread gives a ``/healthz`` it answers itself (``HubServer._answer_now``) to take the answer.
ANSWER_NOW_TIMEOUT = 0.05
#: Seconds between two looks (``HubServer._look_again``) at what a drain took before its first bytes came:
#: each look is a system call that lets go of the interpreter lock, which, in a storm, the accept thread
#: waits to get back; a look per request served would slow the serving down.
LOOK_EVERY = 0.01


class HubServer(ThreadedWSGIServer):
    """werkzeug's threaded server with a listen backlog fit for reconnect storms, guarded before the upgrade.

    The bounds come from the hub's settings (the defaults for an app without a
    hub): see the module's docstring. Its handler must be a ``HubRequestHandler``.
    """

    request_queue_size = 4096

    def __init__(self, host: str, port: int, app: Flask, handler: type[HubRequestHandler] | None = None,
                 **options: Any) -> None:
        super().__init__(host, port, app, handler or HubRequestHandler, **options)
        state = state_of(app)
        settings = state.settings if state is not None else Settings.from_config({})
        self.head_timeout = settings.request_head_timeout
        self.max_head_size = settings.max_request_head_size
        #: Sockets waiting for their request head: the hub's own count (``/healthz``) when there is a hub.
        self.pending = state.hub.pending_requests if state is not None else PendingRequests(
            settings.max_pending_requests)
        self._hub = state.hub if state is not None else None
        #: ``views.py``'s WebSocket handshake without Flask's request (``HubRequestHandler.run_wsgi``).
        self.plain_upgrade = state.plain_upgrade if state is not None else None
        self._stopping = threading.Event()  # set by shutdown(): ends a wait of the accept loop at once
        # The accept thread's own log throttles (it alone calls them: no lock).
        self._log_no_descriptors = LogThrottle(LOG_EVERY)
        self._log_refused = LogThrottle(LOG_EVERY)
        self._log_paced = LogThrottle(LOG_EVERY)
        self.max_handshakes = settings.max_handshakes if self._hub is not None else 0
        self.max_accept_queue = settings.max_accept_queue if self._hub is not None else 0
        self._pacer = _Pacer(settings.reconnect_rate, self._load,
                             None if self._hub is None else self._note_rate)
        healthz = next((rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.endswith(".healthz")), None)
        #: How a ``/healthz`` request starts, which pacing never turns away (None: the app has no such route).
        self._healthz_line = f"GET {healthz}".encode() if healthz else None
        # Request threads started (written by the accept thread only) and ended (by each
        # thread as it ends, under _threads_lock: a += from many threads is not atomic).
        self._threads_started = 0
        self._threads_ended = 0
        self._threads_lock = threading.Lock()
        self._queue_visible = _TCP_INFO is not None  # accept_queue() can read the accept queue's length
        #: Connections accepted in a drain (``get_request``) and not yet served, oldest first, ``/healthz``
        #: ahead of them all; the accept thread's own (it alone reads and writes it; no lock).
        self._taken: deque[tuple[socket.socket, Any]] = deque()
        self._accept_blocked = False  # the last drain's accept() failed (out of descriptors): serve, don't drain
        #: Of ``_taken``, those whose first bytes had not come when the drain peeked (a client that
        #: sends its request a moment after its connect): watched until they come (``_look_again``).
        self._unseen = selectors.DefaultSelector()
        self._next_look = 0.0  # monotonic time before which _look_again does not look
        self._judged = False  # the request being served was taken by a drain, which kept the queue's bound
        self._next_drain = 0.0  # monotonic time before which what a drain took is served without draining again
        #: WebSockets handed over by their views, by socket, until their request thread runs them (``serve_after``).
        self._after: dict[socket.socket, AfterTheView] = {}

    def serve_forever(self, poll_interval: float = 0.1) -> None:  # shutdown() waits up to this long
        self._stopping.clear()
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        self._stopping.set()
        super().shutdown()

    def get_request(self) -> tuple[socket.socket, Any]:
        """The next connection to serve: the one ``accept()`` gives, or, when a queue has built up, a
        ``/healthz`` from anywhere in it first (``_drain``, at most every ``DRAIN_EVERY`` while what it
        took is served), then the others in the order they came."""
        taken = self._taken
        self._look_again()
        if not taken:
            if self._healthz_line is None or self.accept_queue() < DRAIN_FROM:
                self._judged = False
                return self._accept()
            self._drain()
        elif not self._accept_blocked and time.monotonic() >= self._next_drain:
            self._drain()
        if not taken:
            raise BlockingIOError(errno.EAGAIN, "nothing to accept")  # socketserver drops it and selects again
        self._judged = True  # the drain kept what it holds within RUSTY_WS_MAX_ACCEPT_QUEUE (_shed)
        return self._leave(taken.popleft())

    def _accept(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:
                self._accept_failed(exc)
            raise  # socketserver drops it; the loop selects again

    def _drain(self) -> None:
        """Accept every connection the system holds for us now, and put the ``/healthz`` ones first.

        As many ``accept()`` calls as ``accept_queue()`` counts, so none blocks, and at
        most ``DRAIN_MAX`` held. A ``/healthz`` whose whole head has come is answered at
        once, on this thread (``_answer_now``); one in parts goes first. A request whose
        first bytes have not arrived yet is held in its place and watched (``_unseen``):
        a ``/healthz`` whose client sent it a moment after its connect waited, taken for a
        handshake, behind every one held (1.3 s, session 14, "/healthz in a storm"). When ``accept()`` fails (out of
        descriptors: logged, waited), what was taken is served before the next drain,
        which would only fail again.
        """
        taken = self._taken
        held = len(taken)  # what earlier drains kept: not turned away now unless it is past HELD_LONGEST
        health: list[tuple[socket.socket, Any]] = []
        self._accept_blocked = False
        started = time.monotonic()
        for _ in range(min(self.accept_queue(), DRAIN_MAX - len(taken))):
            try:
                request, address = self._accept()
            except OSError:
                self._accept_blocked = True
                break
            try:
                start = request.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                start = b""
            if not start:  # nothing came yet (or EOF, or an error: the socket is readable, seen at once)
                self._watch(request)
                taken.append((request, address))
            elif not self._asks_healthz(start):
                taken.append((request, address))
            elif start.find(b"\r\n\r\n") + 4 == len(start):  # the whole head and nothing past it (no body)
                self._answer_now(request, address)
            else:
                health.append((request, address))
        taken.extendleft(reversed(health))
        now = time.monotonic()
        self._shed(now, held + len(health))
        # Serve for at least as long as this drain took (starved, one took a second: drained
        # again at once, nothing held was served), and at least DRAIN_EVERY.
        ended = time.monotonic()
        self._next_drain = ended + max(DRAIN_EVERY, ended - started)

    def _shed(self, now: float, held: int = 0) -> None:
        """Turn away (503, ``Retry-After``) the newest of what the drain holds past what it keeps (``_hold``).

        What waits (held here and still in the system's queue) stays within the bound,
        and the oldest are served: the queue's bound is kept here, once, and not again
        when a held request's turn comes (``_busy`` leaves it out for them). Judged at its
        turn instead, every request was refused while arrivals kept the count past the
        bound: on a loaded machine a storm's new hub turned away every handshake for
        minutes and admitted none (session 13, docs/performance.md). ``/healthz`` ones
        are at the front and never shed. The bound is what the hub serves in ``HOLD_SECONDS``
        (``_hold``), never less than ``RUSTY_WS_MAX_ACCEPT_QUEUE``.

        ``held``: how many of ``_taken`` earlier drains kept (the oldest). They stay, even
        if the bound has shrunk since (the rate measured lower than the guess), unless
        they are more than the hub serves in ``HELD_LONGEST``: turned away now, a client
        held for seconds already was sent 7-11 s further away while the hub then emptied
        its queue and idled (3,111 of them in one second of a storm, session 15).
        """
        if not self.max_accept_queue:
            return
        taken = self._taken
        room = max(0, self._hold() - self.accept_queue(), min(held, int(self._pacer.rate * HELD_LONGEST)))
        if len(taken) <= room:
            return
        ahead = room + self.handshakes_in_flight()  # what it keeps, then the pacer's own tally
        while len(taken) > room:
            self._turn_away(self._leave(taken.pop())[0], now, ahead, "shed")

    def _hold(self) -> int:
        """How many a drain keeps (held, and still in the system's queue): what the hub serves in
        ``HOLD_SECONDS`` at the pacer's rate, at least ``RUSTY_WS_MAX_ACCEPT_QUEUE``, at most ``HOLD_MAX``.

        A client turned away is told to come back when the hub has served what is ahead of it; one
        held is served then anyway, without the 503's cost or the risk of meeting a full queue again."""
        return max(self.max_accept_queue, min(HOLD_MAX, int(self._pacer.rate * HOLD_SECONDS)))

    def _answer_now(self, request: socket.socket, address: Any) -> None:
        """Serve a ``/healthz`` on the accept thread, through the app as any request, without a thread.

        Behind a storm's queue, a request thread's own start (``Thread.start`` waits for it
        to run) and every read and write of its request waited behind thousands of
        handshake threads for the interpreter lock: 0.1-5 s (seen with 10,000 clients).
        Here the accept thread, which holds it, serves it at once. Its whole head has come
        and it has no body, so nothing is waited for; the answer (a few hundred bytes) goes
        out with ``Connection: close``, and ``ANSWER_NOW_TIMEOUT`` bounds a peer that would not
        take it.
        """
        if not self.verify_request(request, address):  # as socketserver serves what it accepts
            self.shutdown_request(request)
            return
        if not self.pending.take():  # counted as every socket waiting for its head is; the handler gives it back
            self._refuse(request)
            return
        try:
            request.settimeout(ANSWER_NOW_TIMEOUT)
            self.finish_request(request, address)
        except Exception:
            self.handle_error(request, address)
        finally:
            self.shutdown_request(request)

    def _asks_healthz(self, start: bytes) -> bool:
        """Whether a request's first bytes (peeked) are those of a ``GET /healthz``."""
        line = self._healthz_line
        return line is not None and start.startswith(line) and start[len(line):len(line) + 1] in (b" ", b"?")

    def _watch(self, request: socket.socket) -> None:
        try:
            self._unseen.register(request, selectors.EVENT_READ)
        except (OSError, ValueError):  # closed meanwhile (no descriptor): served as it is, in its place
            pass

    def _leave(self, item: tuple[socket.socket, Any]) -> tuple[socket.socket, Any]:
        """``item``, out of ``_taken``: no longer watched (before it is served or closed, which frees its
        descriptor for a new socket)."""
        if self._unseen.get_map():
            try:
                self._unseen.unregister(item[0])
            except (KeyError, ValueError):
                pass
        return item

    def _look_again(self) -> None:
        """Serve first a ``/healthz`` among what a drain took before its first bytes came, now that they have.

        At most every ``LOOK_EVERY`` and only while some are watched: one ``select``
        with no wait says which have bytes (or ended); each of those is no longer
        watched, and is peeked at as the drain does. A ``/healthz`` whose whole head
        came is answered now, on this thread (``_answer_now``), one in parts goes to
        the front; anything else keeps its place.
        """
        unseen = self._unseen
        if not unseen.get_map():
            return
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + LOOK_EVERY
        try:
            ready = unseen.select(0)
        except OSError:
            return
        for key, _ in ready:
            request = cast("socket.socket", key.fileobj)
            unseen.unregister(request)
            try:
                start = request.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                continue
            if not self._asks_healthz(start):
                continue
            place = next((i for i, item in enumerate(self._taken) if item[0] is request), None)
            if place is None:
                continue
            item = self._taken[place]
            del self._taken[place]
            if start.find(b"\r\n\r\n") + 4 == len(start):  # as _drain: the whole head and nothing past it
                self._answer_now(*item)
            else:
                self._taken.appendleft(item)

    def service_actions(self) -> None:
        """Serve what a drain took, one by one, while nothing new waits in the system's queue
        (then the loop accepts again, so a ``/healthz`` that just came goes ahead of what is left),
        or while ``accept()`` cannot take what waits there."""
        taken = self._taken
        while taken and not self._stopping.is_set() and (self._accept_blocked or self.accept_queue() == 0):
            self._look_again()
            if not taken:
                break
            request, address = self._leave(taken.popleft())
            if not self.verify_request(request, address):  # as socketserver serves what it accepts
                self.shutdown_request(request)
                continue
            self._judged = True  # as get_request says for what a drain took
            try:
                self.process_request(request, address)
            except Exception:
                self.handle_error(request, address)
                self.shutdown_request(request)
        super().service_actions()

    def server_close(self) -> None:
        while self._taken:  # accepted in a drain, never served: closed as the listening socket is
            self.shutdown_request(self._leave(self._taken.popleft())[0])
        self._unseen.close()
        super().server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the socket's thread, or refuse it at once (503, no thread): too many wait for a head,
        or too many requests are under way or in the accept queue (``_busy``, ``_paced``; never ``/healthz``)."""
        now = time.monotonic()
        if self._busy() and self._paced(request, now):
            return
        if not self.pending.take():
            self._refuse(request)
            return
        self._threads_started += 1  # before the thread starts: it may end before start() returns
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.pending.give_back()  # no thread: no handler to give it back
            self._threads_started -= 1
            raise
        if self.max_handshakes or self.max_accept_queue:
            self._pacer.admitted(now)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """socketserver's, and then the WebSocket the view handed over (``handoff.py``), if it did.

        A plain WebSocket handshake is served here without werkzeug's handler
        (``_upgrade_plainly``); any other request, or one it leaves, goes to the
        handler, which starts from what was read. The WebSocket's loop runs here,
        from the top of the thread's stack, once the handler, its environ and
        Flask's request context are gone.
        """
        try:
            try:
                left: tuple[bytes, bool] | None = (b"", True)
                if self.plain_upgrade is not None:
                    left = self._upgrade_plainly(request, client_address)
                if left is not None:  # socketserver's finish_request, with what was read
                    handler = cast("type[HubRequestHandler]", self.RequestHandlerClass)
                    handler(request, client_address, self, taken=left[0], counted=left[1])
            except Exception:  # as socketserver does; a socket handed over still gets its loop
                self.handle_error(request, client_address)
            except BaseException:
                unserved = self._after.pop(request, None)
                if unserved is not None:
                    unserved.abandon()
                raise
            later = self._after.pop(request, None)
            if later is not None:
                later.run()
        finally:
            self.shutdown_request(request)
            with self._threads_lock:
                self._threads_ended += 1

    def _upgrade_plainly(self, request: socket.socket, client_address: Any) -> tuple[bytes, bool] | None:
        """Serve a plain WebSocket handshake on this thread, without werkzeug's handler: None once served;
        else what the handler starts from (the bytes read off the socket, and whether the socket is still
        counted in ``pending``).

        The usual connection: its head came whole, in one segment, before its thread
        ran. One read without waiting takes it; a plain head (``_plain_head``) of a
        WebSocket handshake (``_asks_upgrade``) on a plain path goes to the hub's
        ``plain_upgrade`` with a small environ (``_upgrade_environ``), which answers
        101 and hands the socket over (``serve_after``) or leaves it. What is skipped
        against the handler's way: its buffered reader and writer, http.server's
        request bookkeeping, werkzeug's ``run_wsgi`` and environ, and the C stack
        they take (one Python call less through C). Everything else, and every
        handshake ``plain_upgrade`` leaves (a refusal: Flask answers it), goes to
        ``HubRequestHandler`` as before: nothing came yet (it waits, within the
        head's deadline), the head is in parts or has bytes past it, or is not plain.
        """
        if request.gettimeout() is not None or self.ssl_context is not None:
            return b"", True  # a socket.setdefaulttimeout(), which the handler's reads keep; TLS (no recv flags)
        try:
            data = request.recv(self.max_head_size, socket.MSG_DONTWAIT)
        except OSError:  # nothing yet (the handler waits for it), or a reset (the handler meets it again)
            return b"", True
        end = data.find(b"\r\n\r\n") + 4
        if end != len(data) or end < 4 or data.count(b"\n") != data.count(b"\r\n"):
            return data, True  # in parts, bytes past the head, a bare LF, or EOF (b"")
        plain = _plain_head(data)
        if plain is None:
            return data, True
        _, (command, target, version), fields = plain
        environ = _upgrade_environ(command, target, version, fields, request, client_address, self.server_address)
        if environ is None or not _asks_upgrade(environ):
            return data, True
        environ[HEAD_ONLY_KEY] = True  # nothing past the head was read: the socket has the rest

        def hand_over(later: AfterTheView) -> None:  # upgrade() calls it once the 101 is written
            if _access_log.isEnabledFor(logging.INFO):
                _log_upgrade(client_address[0], environ)
            later.deep = False  # no deeper on the C stack than the loop: nothing to release (handoff.py)
            self.serve_after(request, later)

        environ[SERVE_AFTER_KEY] = hand_over
        self.pending.give_back()  # the head is in (HubRequestHandler._head_done's moment)
        if self.plain_upgrade(self.app, environ):  # type: ignore[misc]
            return None
        return data, False

    def serve_after(self, request: socket.socket, later: AfterTheView) -> None:
        """Have ``later`` run on this request's thread once its request has ended (``HubRequestHandler``)."""
        self._after[request] = later  # this thread's own key, popped by it: a dict's item is atomic

    def _busy(self) -> bool:
        """Too many requests under way (``RUSTY_WS_MAX_HANDSHAKES``) or queued (``RUSTY_WS_MAX_ACCEPT_QUEUE``;
        not for a request a drain took: the drain kept the queue's bound, ``_shed``)."""
        if self.max_handshakes and self.handshakes_in_flight() >= self.max_handshakes:
            return True
        return bool(self.max_accept_queue and not self._judged and self.waiting() >= self.max_accept_queue)

    def accept_queue(self) -> int:
        """Connections the system holds for this server's ``accept()`` now (0 where it cannot tell).

        Linux gives it for a listening socket in ``TCP_INFO`` (``tcpi_unacked``):
        what a request that arrives now waits behind. The accept loop serves them one
        by one, each handshake about a millisecond of the interpreter's time, so a
        queue of thousands (a reconnect storm fills the 4096 of the backlog) is
        seconds for a `/healthz` at its end.
        """
        if not self._queue_visible or _TCP_INFO is None:
            return 0
        try:
            info = self.socket.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_BYTES)
        except OSError:
            self._queue_visible = False  # not Linux, or not TCP: the bound counts the handshakes under way
            return 0
        return int.from_bytes(info[_TCPI_UNACKED:_TCPI_UNACKED + 4], sys.byteorder)

    def waiting(self) -> int:
        """Connections waiting for the accept loop: in the system's queue, and taken by a drain."""
        return self.accept_queue() + len(self._taken)

    def handshakes_in_flight(self) -> int:
        """Request threads past their head that are not an open WebSocket: upgrading, or ending.

        What competes with the accept thread for the interpreter lock in a reconnect
        storm: a thread waiting for its head sleeps (and is bounded by ``pending``),
        an open idle connection sleeps, these run.
        """
        hub = self._hub
        running = self._threads_started - self._threads_ended
        return running - self.pending.count - (hub.open_count if hub is not None else 0)

    def _paced(self, request: socket.socket, now: float) -> bool:
        """Turn away a request that is not ``/healthz`` (503, ``Retry-After``), on this thread; False: let it in.

        Looks at what has arrived of the request without taking it (``MSG_PEEK``):
        ``/healthz`` is let in ahead of the handshakes, so a health check keeps
        answering through a storm. In a storm the accept loop is behind and the
        request is there; else it waits for it at most ``PEEK_WAIT``, and a request
        whose first bytes have not come by then is let in (its thread waits for
        them, bounded by ``RUSTY_WS_MAX_PENDING_REQUESTS``).
        """
        try:
            start = request.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:  # in a storm the accept loop is behind and the bytes are there; else a moment
            poller = select.poll()  # not select.select: descriptors past 1023 are the rule at 10,000 clients
            poller.register(request, select.POLLIN)
            if not poller.poll(PEEK_WAIT * 1000):
                return False
            try:
                start = request.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                start = b""
        except OSError:
            start = b""
        if self._asks_healthz(start):
            return False
        self._turn_away(request, now, sum(self._load()), self._bound())
        return True

    def _bound(self) -> str:
        """Which bound ``_busy`` found passed, for the pacing log line."""
        if self.max_handshakes and self.handshakes_in_flight() >= self.max_handshakes:
            return "handshakes"
        return "queue"

    def _note_rate(self, rate: float) -> None:
        """The pacer's new measure, for the hub's 4200 window (``Hub.reconnect_rate``)."""
        if self._hub is not None:
            self._hub.handshake_rate = rate

    def _load(self) -> tuple[int, int]:
        """What the hub has ahead of a request that comes now: (waiting for the accept loop, under way)."""
        return self.waiting(), max(0, self.handshakes_in_flight())

    def _turn_away(self, request: socket.socket, now: float, ahead: int, reason: str) -> None:
        """Answer 503 with the ``Retry-After`` the pacer says and close, on this thread, without blocking.

        ``ahead``: what the hub has to get through before this client's turn (``_Pacer.retry_after``);
        ``reason``: the bound passed (the pacing log line)."""
        wait = self._pacer.retry_after(now, ahead, reason)
        self._answer_and_close(request, _PACED_HEAD % wait + _PACED_BODY)
        paced = self._log_paced()
        if paced:
            logger.warning(
                "refused a request with 503, Retry-After %d (%d time(s) since this line last showed): %d "
                "under way (RUSTY_WS_MAX_HANDSHAKES=%d), %d in the accept queue (RUSTY_WS_MAX_ACCEPT_QUEUE=%d), "
                "about %d handshakes done a second", wait, paced, self.handshakes_in_flight(), self.max_handshakes,
                self.waiting(), self.max_accept_queue, self._pacer.rate,
            )

    def _refuse(self, request: socket.socket) -> None:
        self._pacer.refused(time.monotonic())
        self._answer_and_close(request, _BUSY_RESPONSE)
        refused = self._log_refused()
        if refused:
            logger.warning(
                "refused a connection with 503 (%d time(s) since this line last showed): %d sockets "
                "are waiting for their request head (RUSTY_WS_MAX_PENDING_REQUESTS=%d)",
                refused, self.pending.count, self.pending.limit,
            )

    def _answer_and_close(self, request: socket.socket, answer: bytes) -> None:
        """Write a refusal, as much as the socket takes without blocking (all of it: a fresh socket's buffer
        holds it), and close, on the accept thread."""
        try:
            request.send(answer, socket.MSG_DONTWAIT)
        except OSError:
            pass
        self.shutdown_request(request)

    def _accept_failed(self, exc: OSError) -> None:
        """Say that accept() has run out of a resource (rate-limited), then wait a little instead of spinning."""
        failures = self._log_no_descriptors()
        if failures:
            connections = len(self._hub.connections()) if self._hub is not None else 0
            logger.error(
                "accept() failed: %s (%d time(s) since this line last showed); new connections wait "
                "in the backlog meanwhile (%d sockets waiting for their request head, %d WebSockets "
                "open). Raise the limit (ulimit -n) or lower RUSTY_WS_MAX_PENDING_REQUESTS and "
                "RUSTY_WS_MAX_CONNECTIONS",
                exc.strerror or exc, failures, self.pending.count, connections,
            )
        self._stopping.wait(ACCEPT_BACKOFF)


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 8081) -> HubServer:
    """A server bound to ``host:port`` (port 0: any free port; see ``server.port``)."""
    return HubServer(host, port, app, handler=HubRequestHandler)
