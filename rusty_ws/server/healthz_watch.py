"""``/healthz`` ahead of a storm's queue: ``HealthzWatch``, owned by the accept gate (``accept_gate.py``).

Split out of the server because it is its own job on the accept thread: telling
a ``/healthz`` from a handshake by its first bytes (``asks``), answering one
whose whole head came on the accept thread itself (``answer_now``), and
watching what a drain took before its first bytes came (``watch``,
``look_again``), so that a ``/healthz`` sent a moment after its connect is
still served first rather than behind every handshake held.

Everything here runs on the accept thread (``serve_forever``'s), which alone
reads and writes the watch and the gate's ``taken``: no lock.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # the server owns the gate, which owns the watch: no import cycle at run time
    from .hub_server import HubServer

#: Bytes of a request the accept thread looks at (without taking them) to tell ``/healthz`` from a handshake.
PEEK_BYTES = 256
#: Seconds the accept thread gives a ``/healthz`` it answers itself (``HealthzWatch.answer_now``) to take the answer.
ANSWER_NOW_TIMEOUT = 0.05
#: Seconds between two looks (``HealthzWatch.look_again``) at what a drain took before its first bytes came:
#: each look is a system call that lets go of the interpreter lock, which, in a storm, the accept thread
#: waits to get back; a look per request served would slow the serving down.
LOOK_EVERY = 0.01


class HealthzWatch:
    """The ``/healthz`` requests among what a drain took (``taken``): answered at once, put first, or watched.

    ``server``: whose app answers them and whose sockets they are; ``taken``: the
    gate's deque of what drains took (the same object, never rebound); ``line``:
    how a ``/healthz`` request starts (None: the app has no such route, and
    nothing is ever drained); ``refuse``: the gate's 503 past
    ``RUSTY_WS_MAX_PENDING_REQUESTS``. The accept thread alone calls it: no lock.
    """

    def __init__(self, server: HubServer, taken: deque[tuple[socket.socket, Any]], line: bytes | None,
                 refuse: Callable[[socket.socket], None]) -> None:
        self._server = server
        self._taken = taken
        self._refuse = refuse
        #: How a ``/healthz`` request starts, which pacing never turns away (None: the app has no such route).
        self.line = line
        #: Of ``taken``, those whose first bytes had not come when the drain peeked (a client that
        #: sends its request a moment after its connect): watched until they come (``look_again``).
        self.unseen = selectors.DefaultSelector()
        self.next_look = 0.0  # monotonic time before which look_again does not look

    def answer_now(self, request: socket.socket, address: Any) -> None:
        """Serve a ``/healthz`` on the accept thread, through the app as any request, without a thread.

        Behind a storm's queue, a request thread's own start (``Thread.start`` waits for it
        to run) and every read and write of its request waited behind thousands of
        handshake threads for the interpreter lock: 0.1-5 s (seen with 10,000 clients).
        Here the accept thread, which holds it, serves it at once. Its whole head has come
        and it has no body, so nothing is waited for; the answer (a few hundred bytes) goes
        out with ``Connection: close``, and ``ANSWER_NOW_TIMEOUT`` bounds a peer that would not
        take it.
        """
        server = self._server
        if not server.verify_request(request, address):  # as socketserver serves what it accepts
            server.shutdown_request(request)
            return
        if not server.pending.take():  # counted as every socket waiting for its head is; the handler gives it back
            self._refuse(request)
            return
        try:
            request.settimeout(ANSWER_NOW_TIMEOUT)
            server.finish_request(request, address)
        except Exception:
            server.handle_error(request, address)
        finally:
            server.shutdown_request(request)

    def asks(self, start: bytes) -> bool:
        """Whether a request's first bytes (peeked) are those of a ``GET /healthz``."""
        line = self.line
        return line is not None and start.startswith(line) and start[len(line):len(line) + 1] in (b" ", b"?")

    def watch(self, request: socket.socket) -> None:
        try:
            self.unseen.register(request, selectors.EVENT_READ)
        except (OSError, ValueError):  # closed meanwhile (no descriptor): served as it is, in its place
            pass

    def leave(self, item: tuple[socket.socket, Any]) -> tuple[socket.socket, Any]:
        """``item``, out of ``taken``: no longer watched (before it is served or closed, which frees its
        descriptor for a new socket)."""
        if self.unseen.get_map():
            try:
                self.unseen.unregister(item[0])
            except (KeyError, ValueError):
                pass
        return item

    def look_again(self) -> None:
        """Serve first a ``/healthz`` among what a drain took before its first bytes came, now that they have.

        At most every ``LOOK_EVERY`` and only while some are watched: one ``select``
        with no wait says which have bytes (or ended); each of those is no longer
        watched, and is peeked at as the drain does. A ``/healthz`` whose whole head
        came is answered now, on this thread (``answer_now``), one in parts goes to
        the front; anything else keeps its place.
        """
        unseen = self.unseen
        if not unseen.get_map():
            return
        now = time.monotonic()
        if now < self.next_look:
            return
        self.next_look = now + LOOK_EVERY
        try:
            ready = unseen.select(0)
        except OSError:
            return
        taken = self._taken
        for key, _ in ready:
            request = cast("socket.socket", key.fileobj)
            unseen.unregister(request)
            try:
                start = request.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                continue
            if not self.asks(start):
                continue
            place = next((i for i, item in enumerate(taken) if item[0] is request), None)
            if place is None:
                continue
            item = taken[place]
            del taken[place]
            if start.find(b"\r\n\r\n") + 4 == len(start):  # as the drain: the whole head and nothing past it
                self.answer_now(*item)
            else:
                taken.appendleft(item)

    def close(self) -> None:
        """Stop watching (the server's ``server_close``, once what was taken is closed)."""
        self.unseen.close()
