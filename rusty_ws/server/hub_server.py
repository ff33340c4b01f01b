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
  an open WebSocket), ``RUSTY_WS_MAX_ACCEPT_QUEUE`` connections in the accept
  queue, or the descriptors the limit leaves past its reserve (``AcceptGate.room``:
  a drain takes no more than that either), any request but ``/healthz`` is answered 503 with
  ``Retry-After`` on the accept thread, without a thread (``pacing._Pacer`` says when);
  a long queue (``DRAIN_FROM``) is taken whole (``AcceptGate.drain``, at most every
  ``DRAIN_EVERY`` while what it took is served; past ``RUSTY_WS_MAX_ACCEPT_QUEUE`` the
  newest taken are turned away, ``AcceptGate._shed``), and a ``/healthz`` in it is
  answered first, on the accept thread when its whole head came; one taken before its
  first bytes came is watched, and answered first once they show it is a ``/healthz``
  (``HealthzWatch.look_again``);
- when ``accept()`` fails for want of file descriptors, the accept loop logs
  one line (at most every ``LOG_EVERY`` seconds) and waits ``ACCEPT_BACKOFF``
  instead of trying again at once, which spun a core.

This module is the server itself: socketserver's hooks on the accept loop's
one thread (``get_request``, ``service_actions``, ``process_request``), the
measures its admission goes by (``accept_queue``, ``waiting``,
``handshakes_in_flight``) and each request's thread. The accept thread's
admission of new sockets (drains, shedding, pacing, refusals) is its
``AcceptGate`` (``accept_gate.py``), and the ``/healthz`` ones among what a
drain took are the gate's ``HealthzWatch`` (``healthz_watch.py``); both run on
the accept thread only. Each request's thread runs ``HubRequestHandler``, or,
for a plain handshake, ``HubServer._upgrade_plainly``; the process around the
server (signals, the stop, the exit) is ``serve.py``'s.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from flask import Flask
from werkzeug.serving import ThreadedWSGIServer

from ..config import Settings
from .accept_gate import AcceptGate
from .handoff import SERVE_AFTER_KEY, AfterTheView
from .hub import PendingRequests
from .request_handler import HEAD_ONLY_KEY, HubRequestHandler, _access_log, _log_upgrade
from .request_head import _asks_upgrade, _plain_head, _upgrade_environ
from .request_threads import RequestThread, StartWindow
from .state import state_of

__all__ = ["HubServer", "make_server"]

#: ``accept()`` errors that mean "out of a resource": the socket stays readable, so trying again at once spins.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: ``TCP_INFO`` (Linux): for a listening socket, ``tcpi_unacked`` (a u32 at byte 24) is its accept queue's length.
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_TCP_INFO_BYTES = 104
_TCPI_UNACKED = 24
#: Connections in the system's accept queue past which the accept loop takes all of them at once
#: (``AcceptGate.drain``), so that a ``/healthz`` among them is served first rather than after every
#: handshake ahead of it.
DRAIN_FROM = 32


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
        self.max_handshakes = settings.max_handshakes if self._hub is not None else 0
        self.max_accept_queue = settings.max_accept_queue if self._hub is not None else 0
        healthz = next((rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.endswith(".healthz")), None)
        #: How a ``/healthz`` request starts, which pacing never turns away (None: the app has no such route,
        #: and the accept queue is never drained).
        self._healthz_line = f"GET {healthz}".encode() if healthz else None
        # Request threads started (written by the accept thread only) and ended (by each
        # thread as it ends, under _threads_lock: a += from many threads is not atomic).
        self._threads_started = 0
        self._threads_ended = 0
        self._threads_lock = threading.Lock()
        #: The request threads started and not yet run (``request_threads.py``): the accept thread's.
        self._start_window = StartWindow()
        self._queue_visible = _TCP_INFO is not None  # accept_queue() can read the accept queue's length
        self._judged = False  # the request being served was taken by a drain, which kept the queue's bound
        #: WebSockets handed over by their views, by socket, until their request thread runs them (``serve_after``).
        self._after: dict[socket.socket, AfterTheView] = {}
        #: The accept thread's admission of new sockets (``accept_gate.py``): called on that thread only.
        self._gate = gate = AcceptGate(self, settings.reconnect_rate, self._healthz_line, self._stopping)
        #: The ``/healthz`` ones among what the gate's drains took (``healthz_watch.py``): the accept thread's.
        self._healthz = gate.healthz
        # The gate's own, under the names the accept loop has always used: bound once here, so each
        # accepted socket costs no lookup or call more than when they were this class's.
        self._taken = gate.taken  # what drains took and the accept loop has not served (the gate's deque)
        self._pacer = gate.pacer
        self._paced: Callable[[socket.socket, float], bool] = gate.paced
        self._refuse: Callable[[socket.socket], None] = gate.refuse
        self._look_again: Callable[[], None] = self._healthz.look_again
        self._leave: Callable[[tuple[socket.socket, Any]], tuple[socket.socket, Any]] = self._healthz.leave

    def serve_forever(self, poll_interval: float = 0.1) -> None:  # shutdown() waits up to this long
        self._stopping.clear()
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        self._stopping.set()
        super().shutdown()

    def get_request(self) -> tuple[socket.socket, Any]:
        """The next connection to serve: the one ``accept()`` gives, or, when a queue has built up, a
        ``/healthz`` from anywhere in it first (``AcceptGate.drain``, at most every ``DRAIN_EVERY`` while
        what it took is served), then the others in the order they came."""
        taken = self._taken
        self._look_again()
        if not taken:
            # Short queue, or no descriptors left past the reserve (AcceptGate.room): one socket at a time.
            if self._healthz_line is None or self.accept_queue() < DRAIN_FROM or self._gate.full():
                self._judged = False
                return self._accept()
            self._gate.drain()
        elif not self._gate.blocked and time.monotonic() >= self._gate.next_drain:
            self._gate.drain()
        if not taken:
            raise BlockingIOError(errno.EAGAIN, "nothing to accept")  # socketserver drops it and selects again
        self._judged = True  # the drain kept what it holds within RUSTY_WS_MAX_ACCEPT_QUEUE (AcceptGate._shed)
        return self._leave(taken.popleft())

    def _accept(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:
                self._gate.accept_failed(exc)
            raise  # socketserver drops it; the loop selects again

    def service_actions(self) -> None:
        """Serve what a drain took, one by one, while nothing new waits in the system's queue
        (then the loop accepts again, so a ``/healthz`` that just came goes ahead of what is left),
        or while ``accept()`` cannot take what waits there."""
        taken, gate = self._taken, self._gate
        while taken and not self._stopping.is_set() and (gate.blocked or self.accept_queue() == 0):
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
        self._healthz.close()
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
            self._start_thread(request, client_address)
        except BaseException:
            self.pending.give_back()  # no thread: no handler to give it back
            self._threads_started -= 1
            raise
        if self.max_handshakes or self.max_accept_queue:
            self._pacer.admitted(now)

    def _start_thread(self, request: Any, client_address: Any) -> None:
        """socketserver's ``ThreadingMixIn.process_request``, without ``Thread.start``'s wait for each thread
        to run: at most ``START_AHEAD`` started and not yet running (``request_threads.py``)."""
        if not self.daemon_threads:  # socketserver keeps such threads to join them at server_close: its way
            super().process_request(request, client_address)
            return
        thread = RequestThread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        thread.start()
        self._start_window.started(thread)

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
        not for a request a drain took: the drain kept the queue's bound, ``AcceptGate._shed``), or no
        descriptor left past the reserve (``AcceptGate.room``)."""
        if self.max_handshakes and self.handshakes_in_flight() >= self.max_handshakes:
            return True
        if self.max_accept_queue and not self._judged and self.waiting() >= self.max_accept_queue:
            return True
        return self._gate.full()

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
        return self.request_threads() - self.pending.count - (hub.open_count if hub is not None else 0)

    def request_threads(self) -> int:
        """Request threads started and not ended: each holds its socket (waiting for its head, upgrading,
        an open WebSocket, or ending)."""
        return self._threads_started - self._threads_ended


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 8081) -> HubServer:
    """A server bound to ``host:port`` (port 0: any free port; see ``server.port``)."""
    return HubServer(host, port, app, handler=HubRequestHandler)
