"""What the accept thread lets in, keeps or turns away: ``AcceptGate``, owned by ``HubServer``.

Split out of the server because it is one job of its accept thread, the
admission of new sockets, next to another (``healthz_watch.py``) and the
server's own (``hub_server.py``: the socketserver hooks, the request threads):

- the drain (``drain``): a long accept queue taken whole, ``/healthz`` first,
  at most every ``DRAIN_EVERY`` while what it took is served;
- the shedding (``_shed``, ``hold``): past what the hub serves in
  ``HOLD_SECONDS`` (at least ``RUSTY_WS_MAX_ACCEPT_QUEUE``), the newest taken
  are turned away;
- the pacing (``paced``): past ``RUSTY_WS_MAX_HANDSHAKES`` under way,
  ``RUSTY_WS_MAX_ACCEPT_QUEUE`` queued, or the descriptors the reserve leaves
  (``room``; ``HubServer._busy``), any request but
  ``/healthz`` is answered 503 with the ``Retry-After`` ``pacing._Pacer`` says;
- the refusal (``refuse``) past ``RUSTY_WS_MAX_PENDING_REQUESTS``, and the
  wait after ``accept()`` ran out of descriptors (``accept_failed``).

Everything here runs on the accept thread (``serve_forever``'s), which alone
reads and writes the gate's state: no lock. The measures it goes by
(``accept_queue``, ``waiting``, ``handshakes_in_flight``) are the server's,
since they count its listening socket's queue and its request threads.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..log_throttle import LogThrottle
from .healthz_watch import PEEK_BYTES, HealthzWatch
from .limits import DESCRIPTOR_RESERVE, descriptor_limit
from .pacing import _Pacer

if TYPE_CHECKING:  # the server owns the gate: no import cycle at run time
    from .hub_server import HubServer

logger = logging.getLogger("rusty_ws.server")

#: Seconds the accept loop waits after ``accept()`` failed for want of descriptors or memory.
ACCEPT_BACKOFF = 0.1
#: Seconds between two log lines about the same trouble on the accept thread.
LOG_EVERY = 10.0
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
#: Seconds the accept loop, when it paces, waits for a request's first bytes to tell ``/healthz`` from the rest.
PEEK_WAIT = 0.05
#: At most this many connections taken by drains and not yet served (each holds a descriptor): above
#: ``HOLD_MAX``, so that a drain can still take the system's queue (and turn its newest away) while it
#: holds all it keeps, rather than leave it to fill the listen backlog, past which SYNs are dropped.
DRAIN_MAX = 8192
#: Seconds of handshakes, at the rate the pacer measured, that a drain keeps before it turns the newest away
#: (``AcceptGate.hold``): a client held that long is served as soon as one told to come back would be, at no
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


class AcceptGate:
    """The accept thread's admission of new sockets for one ``HubServer``: drains, sheds, paces, refuses.

    ``server``: its owner, whose measures it reads and whose sockets it closes;
    ``healthz_line``: how a ``/healthz`` request starts (None: the app has none);
    ``stopping``: set by ``shutdown()``, which ends the wait after a failed ``accept()``.
    The accept thread alone calls it (module docstring): no lock.
    """

    def __init__(self, server: HubServer, reconnect_rate: int, healthz_line: bytes | None,
                 stopping: threading.Event) -> None:
        self._server = server
        self._stopping = stopping
        #: The descriptor limit when the server was made (``create_app`` raised it before; None: no limit).
        self._descriptors = descriptor_limit()
        # The accept thread's own log throttles (it alone calls them: no lock).
        self._log_no_descriptors = LogThrottle(LOG_EVERY)
        self._log_refused = LogThrottle(LOG_EVERY)
        self._log_paced = LogThrottle(LOG_EVERY)
        self.pacer = _Pacer(reconnect_rate, self._load, None if server._hub is None else self._note_rate)
        #: Connections accepted in a drain and not yet served, oldest first, ``/healthz`` ahead of
        #: them all; the accept thread's own (it alone reads and writes it; no lock). The server pops
        #: from it (``get_request``, ``service_actions``): the same deque, never rebound.
        self.taken: deque[tuple[socket.socket, Any]] = deque()
        self.blocked = False  # the last drain's accept() failed (out of descriptors): serve, don't drain
        self.next_drain = 0.0  # monotonic time before which what a drain took is served without draining again
        #: The ``/healthz`` ones among ``taken``: answered at once, put first, or watched until their bytes come.
        self.healthz = HealthzWatch(server, self.taken, healthz_line, self.refuse)

    def drain(self) -> None:
        """Accept every connection the system holds for us now, and put the ``/healthz`` ones first.

        As many ``accept()`` calls as ``accept_queue()`` counts, so none blocks, and at
        most ``DRAIN_MAX`` held. A ``/healthz`` whose whole head has come is answered at
        once, on this thread (``HealthzWatch.answer_now``); one in parts goes first. A request whose
        first bytes have not arrived yet is held in its place and watched (``HealthzWatch.watch``):
        a ``/healthz`` whose client sent it a moment after its connect waited, taken for a
        handshake, behind every one held (1.3 s, session 14, "/healthz in a storm"). When ``accept()`` fails (out of
        descriptors: logged, waited), what was taken is served before the next drain,
        which would only fail again.
        """
        server, healthz, taken = self._server, self.healthz, self.taken
        held = len(taken)  # what earlier drains kept: not turned away now unless it is past HELD_LONGEST
        health: list[tuple[socket.socket, Any]] = []
        self.blocked = False
        started = time.monotonic()
        count = min(server.accept_queue(), DRAIN_MAX - len(taken))
        room = self.room()
        for _ in range(count if room is None else min(count, room)):
            try:
                request, address = server._accept()
            except OSError:
                self.blocked = True
                break
            try:
                start = request.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                start = b""
            if not start:  # nothing came yet (or EOF, or an error: the socket is readable, seen at once)
                healthz.watch(request)
                taken.append((request, address))
            elif not healthz.asks(start):
                taken.append((request, address))
            elif start.find(b"\r\n\r\n") + 4 == len(start):  # the whole head and nothing past it (no body)
                healthz.answer_now(request, address)
            else:
                health.append((request, address))
        taken.extendleft(reversed(health))
        now = time.monotonic()
        self._shed(now, held + len(health))
        # Serve for at least as long as this drain took (starved, one took a second: drained
        # again at once, nothing held was served), and at least DRAIN_EVERY.
        ended = time.monotonic()
        self.next_drain = ended + max(DRAIN_EVERY, ended - started)

    def room(self) -> int | None:
        """How many more sockets the hub may take on (None: no descriptor limit): the limit less
        ``DESCRIPTOR_RESERVE``, every request thread's socket (and a handshake's selector), and what
        drains hold. A drain takes no more; at none, a request is paced (``HubServer._busy``).

        The reserve (``limits.py``) is for what the process opens besides its clients'
        sockets: Redis, the internal port, files. A drain that took a storm's queue whole
        took descriptors until ``accept()`` failed with EMFILE, and so did the handshakes
        let in one by one after it (each refused 503 ``server_full`` by a full hub, a thread
        and two descriptors for a moment): for that moment nothing else in the process could
        open one (300 clients at a 200-descriptor hub, tests/server/test_connection_limit_default.py)."""
        if self._descriptors is None:
            return None
        server = self._server
        # A handshake counts twice: werkzeug's handler opens a selector (an epoll descriptor) after each response.
        return (self._descriptors - DESCRIPTOR_RESERVE - server.request_threads() - server.handshakes_in_flight()
                - len(self.taken))

    def full(self) -> bool:
        """No descriptor left for a drain to take (``room``)."""
        room = self.room()
        return room is not None and room <= 0

    def _shed(self, now: float, held: int = 0) -> None:
        """Turn away (503, ``Retry-After``) the newest of what the drain holds past what it keeps (``hold``).

        What waits (held here and still in the system's queue) stays within the bound,
        and the oldest are served: the queue's bound is kept here, once, and not again
        when a held request's turn comes (``HubServer._busy`` leaves it out for them). Judged at its
        turn instead, every request was refused while arrivals kept the count past the
        bound: on a loaded machine a storm's new hub turned away every handshake for
        minutes and admitted none (session 13, docs/performance.md). ``/healthz`` ones
        are at the front and never shed. The bound is what the hub serves in ``HOLD_SECONDS``
        (``hold``), never less than ``RUSTY_WS_MAX_ACCEPT_QUEUE``.

        ``held``: how many of ``taken`` earlier drains kept (the oldest). They stay, even
        if the bound has shrunk since (the rate measured lower than the guess), unless
        they are more than the hub serves in ``HELD_LONGEST``: turned away now, a client
        held for seconds already was sent 7-11 s further away while the hub then emptied
        its queue and idled (3,111 of them in one second of a storm, session 15).
        """
        server = self._server
        if not server.max_accept_queue:
            return
        taken = self.taken
        room = max(0, self.hold() - server.accept_queue(), min(held, int(self.pacer.rate * HELD_LONGEST)))
        if len(taken) <= room:
            return
        ahead = room + server.handshakes_in_flight()  # what it keeps, then the pacer's own tally
        leave = self.healthz.leave
        while len(taken) > room:
            self._turn_away(leave(taken.pop())[0], now, ahead, "shed")

    def hold(self) -> int:
        """How many a drain keeps (held, and still in the system's queue): what the hub serves in
        ``HOLD_SECONDS`` at the pacer's rate, at least ``RUSTY_WS_MAX_ACCEPT_QUEUE``, at most ``HOLD_MAX``.

        A client turned away is told to come back when the hub has served what is ahead of it; one
        held is served then anyway, without the 503's cost or the risk of meeting a full queue again."""
        return max(self._server.max_accept_queue, min(HOLD_MAX, int(self.pacer.rate * HOLD_SECONDS)))

    def paced(self, request: socket.socket, now: float) -> bool:
        """Turn away a request that is not ``/healthz`` (503, ``Retry-After``), on this thread; False: let it in.

        ``HubServer.process_request`` asks it once ``_busy`` says a bound is passed.
        Looks at what has arrived of the request without taking it (``MSG_PEEK``):
        ``/healthz`` is let in ahead of the handshakes, so a health check keeps
        answering through a storm. In a storm the accept loop is behind and the
        request is there; else it waits for it at most ``PEEK_WAIT``, and a request
        whose first bytes have not come by then is let in (its thread waits for
        them, bounded by ``RUSTY_WS_MAX_PENDING_REQUESTS``), unless no descriptor is
        left past the reserve (``room``): idle sockets let in 20 a second still ran the
        process out of them, each holding one until its head's timeout.
        """
        try:
            start = request.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:  # in a storm the accept loop is behind and the bytes are there; else a moment
            poller = select.poll()  # not select.select: descriptors past 1023 are the rule at 10,000 clients
            poller.register(request, select.POLLIN)
            if not poller.poll(PEEK_WAIT * 1000):
                if not self.full():
                    return False
                start = b""  # nothing came, and no descriptor is left for its thread to wait with: turned away
            try:
                start = request.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                start = b""
        except OSError:
            start = b""
        if self.healthz.asks(start):
            return False
        self._turn_away(request, now, sum(self._load()), self._bound())
        return True

    def _bound(self) -> str:
        """Which bound ``HubServer._busy`` found passed, for the pacing log line."""
        server = self._server
        if server.max_handshakes and server.handshakes_in_flight() >= server.max_handshakes:
            return "handshakes"
        return "descriptors" if self.full() else "queue"

    def _note_rate(self, rate: float) -> None:
        """The pacer's new window rate (the median of its saturated seconds), for the hub's 4200 window
        (``Hub.reconnect_rate``)."""
        hub = self._server._hub
        if hub is not None:
            hub.handshake_rate = rate

    def _load(self) -> tuple[int, int]:
        """What the hub has ahead of a request that comes now: (waiting for the accept loop, under way)."""
        server = self._server
        return server.waiting(), max(0, server.handshakes_in_flight())

    def _turn_away(self, request: socket.socket, now: float, ahead: int, reason: str) -> None:
        """Answer 503 with the ``Retry-After`` the pacer says and close, on this thread, without blocking.

        ``ahead``: what the hub has to get through before this client's turn (``_Pacer.retry_after``);
        ``reason``: the bound passed (the pacing log line)."""
        wait = self.pacer.retry_after(now, ahead, reason)
        self._answer_and_close(request, _PACED_HEAD % wait + _PACED_BODY)
        paced = self._log_paced()
        if paced:
            server = self._server
            logger.warning(
                "refused a request with 503, Retry-After %d (%d time(s) since this line last showed): %d "
                "under way (RUSTY_WS_MAX_HANDSHAKES=%d), %d in the accept queue (RUSTY_WS_MAX_ACCEPT_QUEUE=%d), "
                "about %d handshakes done a second", wait, paced, server.handshakes_in_flight(),
                server.max_handshakes, server.waiting(), server.max_accept_queue, self.pacer.rate,
            )

    def refuse(self, request: socket.socket) -> None:
        """Answer 503 and close a socket past ``RUSTY_WS_MAX_PENDING_REQUESTS``, on this thread, without a thread."""
        pending = self._server.pending
        self.pacer.refused(time.monotonic())
        self._answer_and_close(request, _BUSY_RESPONSE)
        refused = self._log_refused()
        if refused:
            logger.warning(
                "refused a connection with 503 (%d time(s) since this line last showed): %d sockets "
                "are waiting for their request head (RUSTY_WS_MAX_PENDING_REQUESTS=%d)",
                refused, pending.count, pending.limit,
            )

    def _answer_and_close(self, request: socket.socket, answer: bytes) -> None:
        """Write a refusal, as much as the socket takes without blocking (all of it: a fresh socket's buffer
        holds it), and close, on the accept thread."""
        try:
            request.send(answer, socket.MSG_DONTWAIT)
        except OSError:
            pass
        self._server.shutdown_request(request)

    def accept_failed(self, exc: OSError) -> None:
        """Say that accept() has run out of a resource (rate-limited), then wait a little instead of spinning."""
        failures = self._log_no_descriptors()
        if failures:
            server = self._server
            hub = server._hub
            connections = len(hub.connections()) if hub is not None else 0
            logger.error(
                "accept() failed: %s (%d time(s) since this line last showed); new connections wait "
                "in the backlog meanwhile (%d sockets waiting for their request head, %d WebSockets "
                "open). Raise the limit (ulimit -n) or lower RUSTY_WS_MAX_PENDING_REQUESTS and "
                "RUSTY_WS_MAX_CONNECTIONS",
                exc.strerror or exc, failures, server.pending.count, connections,
            )
        self._stopping.wait(ACCEPT_BACKOFF)
