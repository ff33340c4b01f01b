"""Running the hub: a threaded werkzeug server sized for many WebSockets, stopped cleanly.

``flask run`` works too; this adds a deeper listen backlog (thousands of
clients reconnect at once after a restart) and a shutdown that tells every
client to reconnect (close code 4200) before the process exits.

It also bounds what a peer can hold before its request reaches Flask
(``docs/security.md``, "Before the upgrade"). werkzeug's server gives every
accepted socket a thread that waits for the request head as long as it
takes, unseen by ``RUSTY_WS_MAX_CONNECTIONS``. Here:

- the whole head (request line and headers) must arrive within
  ``RUSTY_WS_REQUEST_HEAD_TIMEOUT`` seconds, however slowly it trickles in,
  or the socket is closed;
- it may be at most ``RUSTY_WS_MAX_REQUEST_HEAD_SIZE`` bytes (431, or 414
  for the request line), so a head that never ends is not kept in memory;
- at most ``RUSTY_WS_MAX_PENDING_REQUESTS`` sockets wait for their head at
  once (``/healthz`` shows ``pending_requests``); one more is answered 503 on
  the accept thread and closed, without a thread;
- past ``RUSTY_WS_MAX_HANDSHAKES`` requests under way (past their head, not yet
  an open WebSocket), or ``RUSTY_WS_MAX_ACCEPT_QUEUE`` connections in the accept
  queue, any request but ``/healthz`` is answered 503 with
  ``Retry-After`` on the accept thread, without a thread (``_Pacer`` says when);
  a long queue is taken whole (``HubServer._drain``, at most every ``DRAIN_EVERY``
  while what it took is served; past ``RUSTY_WS_MAX_ACCEPT_QUEUE`` the newest taken
  are turned away, ``_shed``), and a ``/healthz`` in it is answered first, on the
  accept thread when its whole head came;
- when ``accept()`` fails for want of file descriptors, the accept loop logs
  one line (at most every ``LOG_EVERY`` seconds) and waits ``ACCEPT_BACKOFF``
  instead of trying again at once, which spun a core.
"""

from __future__ import annotations

import email.message
import errno
import gc
import http.client
import io
import logging
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, BinaryIO, NoReturn, cast

from flask import Flask
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.urls import uri_to_iri

from ..config import Settings
from ..log_throttle import LogThrottle
from .handoff import SERVE_AFTER_KEY, AfterTheView, ClosedToHttp
from .hub import PendingRequests
from .internal import internal_server
from .logs import ACCESS_LOGGER, without_colours
from .state import state_of
from .stop_clock import StopClock

__all__ = ["HubServer", "HubRequestHandler", "freeze_startup_objects", "exit_now", "make_server", "serve"]

logger = logging.getLogger("rusty_ws.server")
#: One line a second while the accept loop admits or turns away handshakes, at DEBUG (``_Pacer``).
pacing_logger = logging.getLogger("rusty_ws.server.pacing")

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
#: Handshakes per second ``_Pacer`` never guesses below, whatever it measured.
MIN_PACED_RATE = 50
#: The longest Retry-After ``_Pacer`` names, in seconds.
MAX_RETRY_AFTER = 60
#: Saturated seconds whose best is ``_Pacer``'s rate: one second alone (a collection in it) misled it.
RATE_SAMPLES = 3
#: Handshakes' worth of the hub's time one turned away takes (accept, peek, 503, shutdown, close on the
#: accept thread, each letting go of the interpreter lock): its CPU is 0.15 of a handshake's and its
#: subscription's (60-65 against 400-435 µs, one at a time), and in storms a second's admissions fell by
#: 0.21 for each turned away (least squares over 90 saturated seconds of 6 storms; docs/performance.md,
#: "Reconnect storm, session 14").
TURN_AWAY_COST = 0.2
#: Connections in the system's accept queue past which the accept loop takes all of them at once,
#: so that a ``/healthz`` among them is served first rather than after every handshake ahead of it.
DRAIN_FROM = 32
#: At most this many connections taken by drains and not yet served (each holds a descriptor).
DRAIN_MAX = 4096
#: Seconds between two drains while what the last one took is being served (or as long as the
#: last drain took, if longer: at least half the accept thread's time serves): each drain accepts,
#: peeks at and turns away every newcomer past the queue's bound, and one drain per request served
#: (as it was) left a starved hub admitting one handshake a second while it refused hundreds.
DRAIN_EVERY = 0.05
#: Seconds the accept thread gives a ``/healthz`` it answers itself (``HubServer._answer_now``) to take the answer.
ANSWER_NOW_TIMEOUT = 0.05
#: Where ``HubRequestHandler`` leaves, in the environ, a callable that frees the request head's buffers.
RELEASE_HEAD_KEY = "rusty_ws.release_head"
#: A plain header block (``HubRequestHandler._parse_plain``): at most 99 lines (http.client's limit
#: counts the blank line too) of a name in email's header-name bytes, a colon, and a value of
#: printable or Latin-1 bytes and tabs; then the blank line.
_PLAIN_HEADERS = re.compile(rb"(?:[!-9;-~]+:[\t -~\x80-\xff]*\r\n){0,99}\r\n")
_PLAIN_VERSIONS = frozenset({"HTTP/1.1", "HTTP/1.0"})
_PLAIN_MAX = 65536  # http.client's longest line: a head past it is left to http.server's own checks
#: Set in the environ when the server read exactly the request head off the socket, nothing past it.
HEAD_ONLY_KEY = "rusty_ws.head_only"
_NO_HEADERS = email.message.Message()  # what a released handler's ``headers`` are: empty, shared
_access_log = logging.getLogger(ACCESS_LOGGER)  # werkzeug's, where HubRequestHandler.log writes
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _PlainHeaders(http.client.HTTPMessage):
    """The headers of a plain head (``_parse_plain``): an ``HTTPMessage`` read without email's policy.

    ``email.message.Message`` passes every value it returns through its policy
    (compat32: ``_sanitize_header``, which looks for surrogates), ~1 us a value;
    werkzeug's environ reads every header once and the handler a few more. Values
    decoded from Latin-1 hold no surrogates, so the policy returns them as they
    are: these read the list directly, with the same answers.
    """

    def get(self, name: str, failobj: Any = None) -> Any:
        name = name.lower()
        for key, value in self._headers:  # type: ignore[attr-defined]
            if key.lower() == name:
                return value
        return failobj

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def get_all(self, name: str, failobj: Any = None) -> Any:
        name = name.lower()
        values = [value for key, value in self._headers if key.lower() == name]  # type: ignore[attr-defined]
        return values or failobj

    def values(self) -> list[Any]:
        return [value for _, value in self._headers]  # type: ignore[attr-defined]

    def items(self) -> list[tuple[str, Any]]:
        return list(self._headers)  # type: ignore[attr-defined]


def _plain_head(head: bytes) -> tuple[str, list[str], list[tuple[str, str]]] | None:
    """A plain whole head's request line, its three words and its header fields; None: not plain.

    Plain: a request line of three words (``HTTP/1.1`` or ``HTTP/1.0``) and every
    header line ``name:value`` on one line (``_PLAIN_HEADERS``), at most
    ``_PLAIN_MAX`` bytes. http.server (``email.feedparser``) reads such a head
    into the same fields: the same names, values without their leading blanks,
    in order, repeats kept.
    """
    end = head.find(b"\n") + 1  # the request line, as http.server's readline takes it
    if not end or len(head) > _PLAIN_MAX:
        return None
    requestline = head[:end].decode("iso-8859-1").rstrip("\r\n")
    words = requestline.split(" ")
    if len(words) != 3 or words[2] not in _PLAIN_VERSIONS or requestline.split() != words:
        return None
    block = head[end:]
    if _PLAIN_HEADERS.fullmatch(block) is None:
        return None
    fields = []
    for line in block.decode("iso-8859-1").split("\r\n")[:-2]:
        name, _, value = line.partition(":")
        fields.append((name, value.lstrip(" \t")))
    return requestline, words, fields


def _upgrade_environ(command: str, target: str, version: str, fields: list[tuple[str, str]],
                     sock: socket.socket, client_address: Any, server_address: Any) -> dict[str, Any] | None:
    """What ``views.plain_upgrade`` reads of werkzeug's environ, for a plain head and a plain path; else None.

    werkzeug's ``make_environ`` (~77k instructions a connection) splits the URL,
    unquotes and re-encodes its path, and adds a dozen keys nobody reads when
    ``plain_upgrade`` takes the handshake; no app code sees this environ (it is
    taken only where nothing but the hub's code runs, ``views._plain_app``), and
    a handshake it does not take goes to Flask with werkzeug's own. The keys it
    has hold what werkzeug's would: only for an ASCII path of one leading slash
    with no percent sign and no fragment (``PATH_INFO`` is then the path as it
    came), no header named twice (werkzeug joins repeats), and names with ``_``
    left out as werkzeug leaves them out.
    """
    if (not target.startswith("/") or target.startswith("//") or "%" in target or "#" in target
            or not target.isascii() or type(client_address) is not tuple):
        return None
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "wsgi.url_scheme": "http",
        "werkzeug.socket": sock,
        "REQUEST_METHOD": command,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_URI": target,
        "REMOTE_ADDR": client_address[0],
        "SERVER_NAME": server_address[0],
        "SERVER_PORT": str(server_address[1]),
        "SERVER_PROTOCOL": version,
    }
    for name, value in fields:  # werkzeug's loop; a plain value holds no line break
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if key in environ:
            return None
        environ[key] = value
    return environ


def _asks_upgrade(environ: dict[str, Any]) -> bool:
    """``HubRequestHandler._is_websocket_upgrade`` on an ``_upgrade_environ``, and no ``Expect`` to answer."""
    return (environ["REQUEST_METHOD"] == "GET" and environ.get("HTTP_UPGRADE", "").lower() == "websocket"
            and "upgrade" in {token.strip(" \t") for token in environ.get("HTTP_CONNECTION", "").lower().split(",")}
            and "CONTENT_LENGTH" not in environ and "HTTP_TRANSFER_ENCODING" not in environ
            and "HTTP_EXPECT" not in environ)


def _log_upgrade(address: str, environ: dict[str, Any]) -> None:
    """The access line of a 101 that ``HubServer._upgrade_plainly`` wrote: werkzeug's ``log_request``'s, as
    ``HubRequestHandler.log`` writes it (no colours)."""
    line = f"{environ['REQUEST_METHOD']} {uri_to_iri(environ['REQUEST_URI'])} {environ['SERVER_PROTOCOL']}"
    table = getattr(WSGIRequestHandler, "_control_char_table", None)
    _access_log.info(f"{address.replace('%', '%%')} \"%s\" %s %s",
                     line.translate(table) if table is not None else line, "101", "-")


class _HeadTooLarge(Exception):
    """The request head is larger than ``RUSTY_WS_MAX_REQUEST_HEAD_SIZE``."""

    def __init__(self, in_request_line: bool) -> None:
        super().__init__("request line" if in_request_line else "request headers")
        self.in_request_line = in_request_line


class _HeadTimedOut(Exception):
    """The request head did not arrive within ``RUSTY_WS_REQUEST_HEAD_TIMEOUT``."""


class _HeadReader:
    """What the handler reads a request head through: its ``rfile``, with a deadline and a byte budget.

    http.server reads the head with ``readline`` only, so that is all this
    offers. Every wait on the socket gets only what is left of the deadline, so
    the deadline bounds the whole head, not each read; and a line is never read
    further than the budget allows, so what a head can hold in memory is bounded.
    """

    def __init__(self, rfile: BinaryIO, sock: socket.socket, budget: int, deadline: float) -> None:
        self.rfile = rfile
        self.sock = sock
        self.left = budget
        self.deadline = deadline  # time.monotonic() by which the whole head must be in
        self.lines = 0  # lines read: 0 while the request line is awaited
        self.started = False  # some byte of a head arrived

    def readline(self, limit: int = -1) -> bytes:
        """One line, at most ``limit`` bytes; raises ``_HeadTooLarge`` or ``_HeadTimedOut``."""
        if limit < 0 or limit > self.left + 1:
            limit = self.left + 1
        parts = []
        while limit > 0:
            chunk = self._peek()
            if not chunk:  # EOF
                break
            end = chunk.find(b"\n", 0, limit)
            take = end + 1 if end >= 0 else min(len(chunk), limit)
            parts.append(self.rfile.read(take))  # buffered already: no read on the socket
            limit -= take
            if end >= 0:
                break
        line = b"".join(parts)
        self.left -= len(line)
        if self.left < 0:
            raise _HeadTooLarge(in_request_line=self.lines == 0)
        self.lines += 1
        return line

    def _peek(self) -> bytes:
        """What is buffered, or else what one read brings within the deadline (b"" at EOF)."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _HeadTimedOut()
        self.sock.settimeout(remaining)
        try:
            chunk = self.rfile.peek(1)  # type: ignore[attr-defined]
        except TimeoutError:
            raise _HeadTimedOut() from None
        self.started = self.started or bool(chunk)
        return chunk


class _Replay(io.RawIOBase):
    """A socket's raw reader that first gives back bytes already taken off it (``_whole_head``'s)."""

    def __init__(self, data: bytes, raw: Any) -> None:
        super().__init__()
        self.data = data
        self.raw = raw  # the socket's SocketIO: its reference keeps the descriptor open (see _release_head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.data
        if not data:
            return self.raw.readinto(buffer)
        count = min(len(buffer), len(data))
        buffer[:count] = data[:count]
        self.data = data[count:]
        return count

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()
        super().close()


class HubRequestHandler(WSGIRequestHandler):
    """werkzeug's handler with a smaller read buffer and a bounded request head. For ``HubServer`` only.

    The buffer lives as long as the request, which for a WebSocket is the whole
    connection, yet it only ever holds the HTTP request head: 2 KiB instead of 8.

    A first head that arrives whole is taken in one read and parsed from memory
    (``_whole_head``, ``_parse_plain``: the cheap path of every connection);
    any other is read through a ``_HeadReader`` (deadline and size). Meanwhile the
    socket is counted in the server's ``pending``: ``HubServer`` counted it when
    it accepted it, and the handler gives the count back once the head is read
    (or the socket ends without one). A kept-alive connection waiting for its
    next request is counted again, and closed when the count is full.
    """

    rbufsize = 2048
    server: "HubServer"

    def __init__(self, request: Any, client_address: Any, server: "HubServer", *, taken: bytes = b"",
                 counted: bool = True) -> None:
        # HubServer.process_request counted this socket when it accepted it (and _upgrade_plainly may
        # have given the count back: counted False).
        self._pending = counted
        self._taken = taken  # what HubServer._upgrade_plainly took off the socket: the stream starts with it
        self._head: _HeadReader | None = None  # while a request is read and served
        self._fresh = True  # nothing read off the socket yet: the first head may be taken whole
        self._whole = False  # this request's head was taken whole
        self._ahead = False  # bytes past the head were taken too (the reader gives them first)
        self._reader: Any = None  # the socket's buffered reader, while rfile is the whole head's BytesIO
        self._upgrading = False  # the request parsed last is a WebSocket handshake (_is_websocket_upgrade)
        self._plain = False  # the request parsed last was read by _parse_plain (its headers: name:value lines)
        try:
            super().__init__(request, client_address, server)  # setup, handle (every request), finish
        finally:
            self._head_done()

    def handle_one_request(self) -> None:
        """Read one request head within the bounds; werkzeug then serves the request (a WebSocket: all of it)."""
        server = self.server
        deadline = time.monotonic() + server.head_timeout  # for the whole head, however it comes
        if self._fresh:
            self._fresh = False
            try:
                whole = self._whole_head(deadline)
            except _HeadTimedOut:
                self._timed_out(started=False)
                self._head_done()
                return
            if whole is not None:
                self._serve_whole(whole)
                return
        if not self._pending:  # a kept-alive connection, waiting for its next request (werkzeug 3
            # answers every request with "Connection: close", but http.server would go on)
            if not server.pending.take():
                self.close_connection = True
                return
            self._pending = True
            deadline = time.monotonic() + server.head_timeout
        # No local keeps the buffered reader: a WebSocket's request lasts as long as it does,
        # and _release_head must be able to drop it (head.rfile is the one reference left).
        head = self._head = _HeadReader(self.rfile, self.connection, server.max_head_size,  # type: ignore[arg-type]
                                        deadline)
        self.rfile = head  # type: ignore[assignment]
        try:
            super().handle_one_request()
        except _HeadTooLarge as exc:
            self.rfile = head.rfile  # type: ignore[assignment]
            self._refuse_head(exc)
        except _HeadTimedOut:
            self._timed_out(head.started)
        finally:
            self.rfile = head.rfile  # type: ignore[assignment]
            self._head = None
            self._head_done()

    def _timed_out(self, started: bool) -> None:
        self.close_connection = True
        if started:  # some of a head came: say why we hang up (an idle socket just goes)
            try:
                self.connection.send(_TIMEOUT_RESPONSE, socket.MSG_DONTWAIT)
            except OSError:
                pass
        logger.debug("! %s sent no whole request head within %.1fs; closed",
                     self.client_address[0], self.server.head_timeout)

    def _whole_head(self, deadline: float) -> bytes | None:
        """The first request head, taken off the socket at once if all of it came together; else None.

        The usual case: a client sends its head in one write, and it arrives
        whole. One read of up to ``max_head_size`` bytes takes it, and
        http.server parses it from memory: no deadline to keep while it is
        parsed, so no ``settimeout`` per line (each an ``ioctl`` that lets go of
        the GIL) and no ``poll`` before each read. Bytes the read took past the
        head (frames sent before the 101, or a body) are given back to the
        request's reader (``_give_back``), which returns them before it reads
        the socket; usually there are none, and the view is told so
        (``HEAD_ONLY_KEY``). Before anything has arrived this waits (within
        ``deadline``) for the first bytes, which are then usually the whole head.

        None, and the bounded reading of ``_HeadReader`` decides (from the bytes
        given back, then the socket), for a head that came in parts, one larger
        than ``max_head_size``, one with a line ending in a bare LF (where
        http.server's line rules, not ``\r\n\r\n``, say where the head ends),
        and at EOF or an error.

        Raises:
            _HeadTimedOut: not one byte came before ``deadline``.
        """
        taken, self._taken = self._taken, b""  # what HubServer._upgrade_plainly read and left, if it did
        data = taken or self._first_bytes(deadline)
        if data is None:
            return None
        end = data.find(b"\r\n\r\n") + 4
        if end < 4 or data.count(b"\n", 0, end) != data.count(b"\r\n", 0, end):
            self._give_back(data)  # the bounded path reads it first, then the socket
            return None
        if len(data) > end:  # frames sent before the 101, or a body: read before the socket
            self._give_back(data[end:])
            return data[:end]
        return data

    def _first_bytes(self, deadline: float) -> bytes | None:
        """What one read takes off the socket, once something came (within ``deadline``); None: a reset, or
        the deadline passed meanwhile (the bounded path decides)."""
        sock = self.connection
        flags: int = socket.MSG_DONTWAIT
        for _ in range(3):  # before the first bytes, then once they came (or the deadline did)
            try:
                return sock.recv(self.server.max_head_size, flags)
            except (BlockingIOError, TimeoutError):  # nothing yet (a socket.setdefaulttimeout() may
                # have given the socket a timeout of its own): wait for the first bytes, within the
                # deadline (a timeout ioctl, once)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _HeadTimedOut() from None
                sock.settimeout(remaining)
                flags = 0
            except OSError:  # a reset: the bounded path meets it again and ends as it always did
                return None
        return None

    def _give_back(self, data: bytes) -> None:
        """Have the request's reader return ``data`` (taken off the socket already) before the socket."""
        if data:
            self._ahead = True
            self.rfile = io.BufferedReader(_Replay(data, self.rfile.detach()), self.rbufsize)

    def _serve_whole(self, head: bytes) -> None:
        """Serve the request whose head ``_whole_head`` took: http.server reads it from memory."""
        self._whole = True
        self._reader, self.rfile = self.rfile, io.BytesIO(head)
        del head  # the BytesIO holds it only until parse_request lets go of it, not for the request's life
        try:
            super().handle_one_request()  # http.server's, through parse_request below
        finally:
            if self._reader is not None:  # parse_request did not get to put it back
                self.rfile, self._reader = self._reader, None
            self._whole = False
            self._head_done()

    def _parse_plain(self) -> bool | None:
        """``parse_request`` for a plain whole head, without email's parser; None: not plain.

        http.server parses headers with ``email.feedparser`` (~60 us a request
        here, the largest part of reading a head). A head whose request line is
        three words and whose every header line is ``name:value`` on one line
        (``_PLAIN_HEADERS``) means the same to both: the same names, values
        with their leading blanks dropped, in order, duplicates kept. Anything
        else (folded lines, a line that is no header, too many, odd bytes,
        HTTP/0.9 or 2) is left to http.server, which parses it as it always did.
        """
        head = self.rfile.getvalue()  # type: ignore[attr-defined]  # the whole head's BytesIO
        plain = _plain_head(head) if head.startswith(self.raw_requestline) else None
        if plain is None:
            return None
        requestline, (command, path, version), fields = plain
        self.command, self.request_version, self.requestline = command, version, requestline
        self.close_connection = not (version == "HTTP/1.1" and self.protocol_version >= "HTTP/1.1")
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path  # as http.server does
        headers = _PlainHeaders() if self.MessageClass is http.client.HTTPMessage else self.MessageClass()
        headers._headers = fields  # type: ignore[union-attr]  # what headers[name] = value appends (compat32)
        self.headers = headers
        # The rest of http.server's parse_request, on these headers:
        connection = headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        if (headers.get("Expect", "").lower() == "100-continue" and self.protocol_version >= "HTTP/1.1"
                and version >= "HTTP/1.1"):
            return self.handle_expect_100()
        return True

    def parse_request(self) -> bool:
        plain = self._parse_plain() if self._whole else None
        # Else http.server reads the headers through the _HeadReader or from the whole head.
        ok = super().parse_request() if plain is None else plain
        self._plain = plain is not None
        if ok:
            # werkzeug's environ gets the socket's own reader (no other reference is kept: see
            # _release_head).
            if self._reader is not None:
                self.rfile, self._reader = self._reader, None
            else:
                self.rfile = self.rfile.rfile  # type: ignore[attr-defined]
            self._head_done()
            # A WebSocket then blocks on its reads for as long as it lives (views.py clears
            # the timeout too); any other request keeps one per read and write, for its body
            # and its answer. werkzeug routes a request that would pass this test to WebSocket
            # routes only (any other route answers it 400), so no body or answer escapes it.
            self._upgrading = self._is_websocket_upgrade()
            timeout = None if self._upgrading else self.server.head_timeout
            if self.connection.gettimeout() != timeout:  # a whole head left it blocking: no ioctl
                self.connection.settimeout(timeout)
        return ok

    def _is_websocket_upgrade(self) -> bool:
        """A bodiless GET that werkzeug's routing takes for a WebSocket (``werkzeug.routing.map``)."""
        headers = self.headers
        connection = {token.strip(" \t") for token in headers.get("Connection", "").lower().split(",")}
        return (self.command == "GET" and "upgrade" in connection
                and headers.get("Upgrade", "").lower() == "websocket"
                and "Content-Length" not in headers and "Transfer-Encoding" not in headers)

    def run_wsgi(self) -> None:
        """werkzeug's, but a WebSocket handshake goes to the hub's ``plain_upgrade`` first (``views.py``).

        It serves a handshake that Flask's request would only have passed through
        the hub's own hooks to its view, without that request (a third of a
        connection's instructions); anything else it leaves to werkzeug and Flask.
        """
        plain_upgrade = self.server.plain_upgrade
        if plain_upgrade is not None and self._upgrading:
            self.environ = environ = (self._plain_environ() if self._plain else None) or self.make_environ()
            if plain_upgrade(self.server.app, environ):
                self.close_connection = True  # handed over (_serve_after wrote the access line), or closed
                return
        super().run_wsgi()  # a new environ: plain_upgrade may have changed the first

    def _plain_environ(self) -> dict[str, Any] | None:
        """``_upgrade_environ`` for this request (a head ``_parse_plain`` read), with the handler's keys; or None."""
        if self.server.ssl_context is not None:
            return None
        environ = _upgrade_environ(self.command, self.path, self.request_version,
                                   self.headers._headers,  # type: ignore[attr-defined]
                                   self.connection, self.client_address, self.server.server_address)
        if environ is not None:
            environ["wsgi.input"] = self.rfile
            environ[RELEASE_HEAD_KEY] = self._release_head
            environ[SERVE_AFTER_KEY] = self._serve_after
            if not self._ahead:  # _parse_plain reads a whole head only
                environ[HEAD_ONLY_KEY] = True
        return environ

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ[RELEASE_HEAD_KEY] = self._release_head
        if self._whole and not self._ahead:
            environ[HEAD_ONLY_KEY] = True
        if self._upgrading:  # _is_websocket_upgrade(), as parse_request found it
            environ[SERVE_AFTER_KEY] = self._serve_after  # the view pops it (handoff.py)
        return environ

    def _serve_after(self, later: AfterTheView) -> None:
        """Take over an upgraded socket from the view: the server runs ``later`` once this request has ended.

        The request ends as soon as the view returns, and werkzeug writes nothing
        more on the socket (``ClosedToHttp``) nor drains it (the view's response
        raises ``handoff.Upgraded``, which werkzeug takes for a client gone).
        """
        self.log_request(101)  # the access line, at the upgrade (werkzeug will write none)
        self.close_connection = True
        self.wfile = ClosedToHttp()
        # werkzeug reads nothing more from the socket. Its reader is closed here, as finish() would
        # have: the environ refers to it too, and while it is open the socket's close() at the
        # connection's end would leave the descriptor open (an app may keep the environ).
        self.rfile.close()
        self.rfile = io.BytesIO()
        self.server.serve_after(self.connection, later)

    def _release_head(self, environ: dict[str, Any]) -> None:
        """Drop what only the request head needed, for a WebSocket's whole life (``views.py`` calls it).

        Once the view has taken what the buffered reader held past the head
        (``_read_ahead``), its 2 KiB buffer and the parsed headers (~1 KiB) would
        otherwise live as long as the connection: ~3 KiB of 10,000 connections'
        memory is 30 MiB. werkzeug reads neither again after the view.
        """
        buffered = self._head.rfile if self._head is not None else self.rfile
        # The raw SocketIO stays: while it lives, the socket's close() in the view leaves the
        # descriptor open, so werkzeug's own writes after the view fail with EPIPE, which it
        # drops, not with EBADF on a descriptor that may be reused meanwhile.
        raw = buffered.detach() if isinstance(buffered, io.BufferedReader) else buffered
        self.rfile = environ["wsgi.input"] = raw  # type: ignore[assignment]
        if self._head is not None:
            self._head.rfile = raw  # type: ignore[assignment]
        self.headers = _NO_HEADERS

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """werkzeug's access line, only when its logger would take it (the bench and a quiet hub: not built).

        werkzeug builds the line before the logger looks at its level: the path turned
        into an IRI (three unquotes), colours, escapes; ~15k instructions a connection.
        """
        if _access_log.isEnabledFor(logging.INFO):
            super().log_request(code, size)

    def log(self, type: str, message: str, *args: Any) -> None:
        """werkzeug's line, without its timestamp (the log's format has one, ``logs.LOG_FORMAT``) and colours."""
        address = self.address_string().replace("%", "%%")  # an IPv6 scope id holds "%"
        args = tuple(without_colours(arg) if isinstance(arg, str) else arg for arg in args)
        getattr(logging.getLogger(ACCESS_LOGGER), type)(f"{address} {message}".rstrip(), *args)

    def _head_done(self) -> None:
        """Give back this socket's count in ``server.pending``, once. Idempotent."""
        if self._pending:
            self._pending = False
            self.server.pending.give_back()

    def _refuse_head(self, exc: _HeadTooLarge) -> None:
        self.close_connection = True
        if exc.in_request_line:
            self.requestline, self.request_version, self.command = "", "", ""
            code = HTTPStatus.REQUEST_URI_TOO_LONG
        else:
            code = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
        try:
            self.send_error(code, explain=f"The request head is larger than {self.server.max_head_size} bytes.")
        except OSError:
            pass


class _Pacer:
    """How long a WebSocket handshake turned away by the accept loop is asked to wait (``Retry-After``).

    Two parts, both measured at the hub rather than promised:

    - **The rate** the hub gets through handshakes: over each whole second that
      began and ended with requests waiting (the hub saturated), the handshakes
      admitted less the growth of those under way, i.e. the handshakes it
      finished, plus ``TURN_AWAY_COST`` for each it turned away (the time that
      took is the hub's when those clients come back); the best of the last
      ``RATE_SAMPLES`` such seconds, the guess (``RUSTY_WS_RECONNECT_RATE``)
      counting as one until they are measured. No fixed floor but
      ``MIN_PACED_RATE``: a floor above what the hub sustains (1500 on a machine
      that took 400 a second) sent the turned-away back faster than they could be
      admitted, and each was turned away two or three times (21,000 503s for a
      storm of 10,000 clients). The best, not one second alone nor the mean: a
      client sent back too early costs the hub a fifth of a handshake to turn away
      again, one sent too late keeps the storm going while the hub has room; the
      first second of a new hub, with a collection of 0.4 s in it, measured 53 and
      sent 3,000 clients a minute away from a hub that then did 600-1,400 a second,
      and a mean over a starved stretch sent clients 20-27 s away from a hub that
      did 700 a second two seconds later (docs/performance.md, "Reconnect storm,
      session 14").
    - **The schedule**: a client turned away is given the next slot of a queue
      served at that rate, behind everything the hub already has to get through
      (the accept queue, what a drain holds, the handshakes under way) and behind
      every client told before it (``_tail``, rescaled when the rate changes).
      ``Retry-After`` is that slot's distance, rounded down: the client adds up to
      a second of its own jitter (docs/protocol.md, "Reconnect storms"), so it
      comes back within the second after its slot, when the hub has room for it,
      not before (turned away again) and not long after (the hub idle meanwhile).

    Used by the accept thread only: no lock. ``load`` says ``(waiting, under way)``
    now; it is called at most once a second. ``on_measure`` is given each new rate
    (the hub keeps it for its 4200's window: ``Hub.reconnect_rate``).
    """

    def __init__(self, guess: int, load: Callable[[], tuple[int, int]],
                 on_measure: Callable[[float], None] | None = None) -> None:
        self.rate = float(max(MIN_PACED_RATE, guess))
        self.measured = False    # whether ``rate`` is a measure yet, not the guess
        self._samples: deque[float] = deque([self.rate], maxlen=RATE_SAMPLES)
        self._load = load
        self._on_measure = on_measure  # told each new measure (the hub's ``handshake_rate``)
        self._second = -1        # the whole second of monotonic time the counts below run from (-1: none yet)
        self._whole = False      # ... and whether they run from its start (not from the pacer's first call)
        self._admitted = 0       # handshakes admitted since then
        self._turned_away = 0    # ... and turned away (for the log line)
        self._saturated = False  # requests were waiting when that second began
        self._under_way = 0      # ... and this many handshakes were under way
        self._tail = 0.0         # monotonic time by which every client told so far has had its slot

    def admitted(self, now: float) -> None:
        self._tick(now)
        self._admitted += 1

    def retry_after(self, now: float, ahead: int) -> int:
        """Seconds (1 to ``MAX_RETRY_AFTER``) the next client turned away is asked to wait.

        ``ahead``: what the hub has to get through before that client's turn (waiting
        in its queues and under way)."""
        self._tick(now)
        self._turned_away += 1
        slot = max(self._tail, now + ahead / self.rate)
        self._tail = slot + 1.0 / self.rate
        return min(MAX_RETRY_AFTER, max(1, int(slot - now + 1e-6)))  # (slots add up 1/rate at a time)

    def _tick(self, now: float) -> None:
        second = int(now)
        if second == self._second:
            return
        waiting, under_way = self._load()
        if self._whole and self._saturated and waiting:
            finished = max(0, self._admitted - (under_way - self._under_way))
            # What turning away took is capacity the clients told to come back will find free.
            capacity = finished + TURN_AWAY_COST * self._turned_away
            self._samples.append(max(float(MIN_PACED_RATE), capacity / (second - self._second)))
            rate = max(self._samples)
            if self._tail > now:  # the clients told so far keep their places: their distance, at the new rate
                self._tail = now + (self._tail - now) * self.rate / rate
            self.rate, self.measured = rate, True
            if self._on_measure is not None:
                self._on_measure(rate)
        if (self._admitted or self._turned_away) and pacing_logger.isEnabledFor(logging.DEBUG):
            pacing_logger.debug(
                "second %d: %d admitted, %d turned away; %d waiting, %d under way; %.0f a second%s; "
                "the last told %.1fs ahead", self._second, self._admitted, self._turned_away, waiting, under_way,
                self.rate, "" if self.measured else " (RUSTY_WS_RECONNECT_RATE)", max(0.0, self._tail - now))
        self._whole = self._second >= 0
        self._second, self._admitted, self._turned_away = second, 0, 0
        self._saturated, self._under_way = waiting > 0, under_way


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
        return taken.popleft()

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
        first bytes have not arrived yet is taken for a handshake (in a storm they have:
        the connections waited in the queue). When ``accept()`` fails (out of
        descriptors: logged, waited), what was taken is served before the next drain,
        which would only fail again.
        """
        taken = self._taken
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
            if not self._asks_healthz(start):
                taken.append((request, address))
            elif start.find(b"\r\n\r\n") + 4 == len(start):  # the whole head and nothing past it (no body)
                self._answer_now(request, address)
            else:
                health.append((request, address))
        taken.extendleft(reversed(health))
        now = time.monotonic()
        self._shed(now)
        # Serve for at least as long as this drain took (starved, one took a second: drained
        # again at once, nothing held was served), and at least DRAIN_EVERY.
        ended = time.monotonic()
        self._next_drain = ended + max(DRAIN_EVERY, ended - started)

    def _shed(self, now: float) -> None:
        """Turn away (503, ``Retry-After``) the newest of what the drain holds past ``RUSTY_WS_MAX_ACCEPT_QUEUE``.

        What waits (held here and still in the system's queue) stays within the bound,
        and the oldest are served: the queue's bound is kept here, once, and not again
        when a held request's turn comes (``_busy`` leaves it out for them). Judged at its
        turn instead, every request was refused while arrivals kept the count past the
        bound: on a loaded machine a storm's new hub turned away every handshake for
        minutes and admitted none (session 13, docs/performance.md). ``/healthz`` ones
        are at the front and never shed.
        """
        if not self.max_accept_queue:
            return
        taken = self._taken
        room = max(0, self.max_accept_queue - self.accept_queue())
        if len(taken) <= room:
            return
        ahead = self.max_accept_queue + self.handshakes_in_flight()  # what it keeps, then the pacer's own tally
        while len(taken) > room:
            self._turn_away(taken.pop()[0], now, ahead)

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

    def service_actions(self) -> None:
        """Serve what a drain took, one by one, while nothing new waits in the system's queue
        (then the loop accepts again, so a ``/healthz`` that just came goes ahead of what is left),
        or while ``accept()`` cannot take what waits there."""
        taken = self._taken
        while taken and not self._stopping.is_set() and (self._accept_blocked or self.accept_queue() == 0):
            request, address = taken.popleft()
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
            self.shutdown_request(self._taken.popleft()[0])
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
        self._turn_away(request, now, sum(self._load()))
        return True

    def _note_rate(self, rate: float) -> None:
        """The pacer's new measure, for the hub's 4200 window (``Hub.reconnect_rate``)."""
        if self._hub is not None:
            self._hub.handshake_rate = rate

    def _load(self) -> tuple[int, int]:
        """What the hub has ahead of a request that comes now: (waiting for the accept loop, under way)."""
        return self.waiting(), max(0, self.handshakes_in_flight())

    def _turn_away(self, request: socket.socket, now: float, ahead: int) -> None:
        """Answer 503 with the ``Retry-After`` the pacer says and close, on this thread, without blocking.

        ``ahead``: what the hub has to get through before this client's turn (``_Pacer.retry_after``)."""
        wait = self._pacer.retry_after(now, ahead)
        try:
            request.send(_PACED_HEAD % wait + _PACED_BODY, socket.MSG_DONTWAIT)
        except OSError:
            pass
        self.shutdown_request(request)
        paced = self._log_paced()
        if paced:
            logger.warning(
                "refused a request with 503, Retry-After %d (%d time(s) since this line last showed): %d "
                "under way (RUSTY_WS_MAX_HANDSHAKES=%d), %d in the accept queue (RUSTY_WS_MAX_ACCEPT_QUEUE=%d), "
                "about %d handshakes done a second", wait, paced, self.handshakes_in_flight(), self.max_handshakes,
                self.waiting(), self.max_accept_queue, self._pacer.rate,
            )

    def _refuse(self, request: socket.socket) -> None:
        try:
            request.send(_BUSY_RESPONSE, socket.MSG_DONTWAIT)
        except OSError:
            pass
        self.shutdown_request(request)
        refused = self._log_refused()
        if refused:
            logger.warning(
                "refused a connection with 503 (%d time(s) since this line last showed): %d sockets "
                "are waiting for their request head (RUSTY_WS_MAX_PENDING_REQUESTS=%d)",
                refused, self.pending.count, self.pending.limit,
            )

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


#: ``gc.set_threshold``'s third value under ``freeze_startup_objects``: a full collection after 100 collections of
#: the middle generation, not 10 (and, as always, only once the long-lived objects grew by a quarter).
FULL_COLLECTION_THRESHOLD = 100
_PYTHON_FULL_THRESHOLD = 10  # Python's default, which a process that chose its own keeps


def freeze_startup_objects() -> int:
    """Hide what start-up built from the cyclic garbage collector (``gc.freeze``); returns how many.

    Flask, werkzeug, PyJWT and the hub leave ~36,000 objects that live as long
    as the process. Every full collection walks all of them (3.5 ms on an idle
    hub here, ~10 ms with 100 busy connections), and a publish that arrives
    meanwhile waits that long. Frozen, they are never walked again: ~1 ms with
    those 100 connections. Called by ``serve`` and by the gunicorn settings,
    which own their process; an embedding service decides for itself.

    Also makes full collections rarer (``FULL_COLLECTION_THRESHOLD``), unless the
    process set its own third threshold: while 10,000 clients connect, Python's
    default ran four of them, ~115 ms each with the interpreter lock held (6% of
    the connect's CPU, and a pause for every request meanwhile); a connection
    that closes leaves no cyclic garbage to wait for them (measured: none).
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    young, middle, full = gc.get_threshold()
    if full == _PYTHON_FULL_THRESHOLD:
        gc.set_threshold(young, middle, FULL_COLLECTION_THRESHOLD)
    logger.debug("= froze %d start-up objects out of the cyclic garbage collector; thresholds %s", frozen,
                 gc.get_threshold())
    return frozen


def stop(app: Flask, server: HubServer, timeout: float = 5.0, *, exiting: bool = False,
         clock: StopClock | None = None) -> None:
    """Stop accepting, then close the hub's connections (4200). Call from another thread than serve_forever.

    The listening socket is closed first: in a restart every client told 4200 comes
    back within a second or so, and while the old process was still shutting down its
    accept loop gave each of them a thread and a 503 (``shutting_down``), CPU taken from
    closing the connections; the kernel now refuses them at no cost, and they back off.
    Shut down (``SHUT_RDWR``) before the accept loop ends: from then on the system
    refuses new connections, and the loop's wait for one (up to ``serve_forever``'s
    0.1 s poll interval) ends at once.
    ``exiting``: the process ends right after (``Hub.shutdown``'s ``exiting``).
    ``clock``: each phase's end is marked on it (``StopClock``).
    """
    try:
        server.socket.shutdown(socket.SHUT_RDWR)  # Linux: no longer listening; accept() fails (EINVAL)
    except OSError:
        pass  # not every system shuts a listening socket down; closed below all the same
    if clock is not None:
        clock.mark("listener shut")
    server.shutdown()  # the accept loop has ended when this returns
    if clock is not None:
        clock.mark("accept loop ended")
    server.socket.close()
    state = state_of(app)
    if state is not None:
        state.hub.shutdown(timeout, exiting=exiting, clock=clock)


def exit_now(code: int = 0) -> NoReturn:
    """End the process at once, after flushing the logs and the standard streams (``os._exit``).

    For a process that is only a hub (``rusty-ws serve``), once its hub has shut
    down: the interpreter's own exit with thousands of connection threads still
    ending took seconds (measured: 2.4 s with 3,700 left of 10,000), during which
    the port stayed unusable for the next process. Nothing is left to do: the
    4200s are written and the broker stopped; the kernel closes the sockets.
    Never for a hub embedded in someone's process: ``Hub.shutdown`` alone there.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _stop_and_exit(app: Flask, server: HubServer, *, clock: StopClock) -> None:
    """``stop`` for a process that is only this hub, then end it from this very thread (``exit_now``).

    Not back on the main thread: with thousands of connection threads still
    ending, every hand-off of the interpreter lock waits behind them (measured:
    ~0.5 s between the last 4200 and the exit); this thread holds what it needs.
    """
    # The process ends within a second or two: the cyclic garbage collector has nothing to
    # give back that the exit does not, and its walks over every connection's objects were
    # a quarter of the stop's CPU (perf, 10,000 connections).
    gc.disable()
    try:
        stop(app, server, exiting=True, clock=clock)
    except BaseException:
        logger.exception("the shutdown failed; exiting all the same")
        exit_now(1)
    clock.mark("exit")
    clock.report()
    exit_now(0)


def _route(app: Flask, endpoint_suffix: str) -> str | None:
    """The path of the app's first route whose endpoint ends with ``endpoint_suffix`` (the hub's blueprint's)."""
    return next((rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.endswith(endpoint_suffix)), None)


def _browsable(host: str) -> str:
    """A name a browser on this machine can open for ``host``: a wildcard address becomes loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def serve(app: Flask, host: str = "127.0.0.1", port: int = 8081, *, exit_when_stopped: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly. Blocks; call from the main thread.

    ``exit_when_stopped``: the process is only this hub (``rusty-ws serve``): once the
    connections are told 4200, it ends at once (``exit_now``) instead of returning.
    """
    server = make_server(app, host, port)
    stopper: list[threading.Thread] = []  # the shutdown's thread, once a signal came

    def on_signal(signum: int, _: Any) -> None:
        clock = StopClock()
        logger.info("%s: closing connections and stopping", signal.Signals(signum).name)
        if stopper:  # a second signal: the first one's shutdown is under way
            return
        if internal is not None:  # refused from now on, as the hub's port is; its thread ends by itself
            internal.close(wait=False)
        # server.shutdown() waits for serve_forever, which runs on this very thread.
        stopper.append(threading.Thread(target=_stop_and_exit if exit_when_stopped else stop,
                                        args=(app, server), kwargs={"clock": clock},
                                        name="rusty_ws-shutdown"))
        stopper[0].start()

    try:
        internal = internal_server(app)  # RUSTY_WS_INTERNAL_PORT: /healthz on a socket and a thread of its own
    except BaseException:  # its port taken, say: the hub does not start
        server.server_close()
        raise
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    freeze_startup_objects()
    websocket, page = _route(app, ".websocket") or "/ws", _route(app, ".page")
    logger.info("rusty_ws hub on ws://%s:%d%s", host, server.port, websocket)
    state = state_of(app)
    if state is not None:
        logger.info("at most %d WebSocket connections at once (RUSTY_WS_MAX_CONNECTIONS)",
                    state.settings.max_connections)
    if page is not None:
        logger.info("the hub's page: open http://%s:%d%s in a browser", _browsable(host), server.port, page)
    if internal is not None:
        logger.info("internal port (RUSTY_WS_INTERNAL_PORT): %s on http://%s:%d", ", ".join(sorted(internal.paths))
                    or "no route", _browsable(internal.host), internal.port)
    try:
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
        if internal is not None:
            internal.close()
    if exit_when_stopped and stopper:
        stopper[0].join()
        exit_now(0)
