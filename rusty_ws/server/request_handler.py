"""The request handler of ``HubServer``: werkzeug's, with a bounded head and a cheap path for handshakes.

Split out of the server because it runs on each request's thread, not the
accept loop's: it reads the head within its bounds (``request_head``), gives
the socket's count in ``pending`` back once the head is in, answers 408, 414 or
431 when a head is too slow or too large, hands a WebSocket handshake to the
hub's ``plain_upgrade`` and its upgraded socket back to the server
(``handoff.py``), and writes werkzeug's access line without its costs.

The environ keys it leaves for ``views.py`` (``RELEASE_HEAD_KEY``,
``HEAD_ONLY_KEY``) are defined here, with the code that sets them.
"""

from __future__ import annotations

import email.message
import http.client
import io
import logging
import socket
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from werkzeug.serving import WSGIRequestHandler
from werkzeug.urls import uri_to_iri

from .handoff import SERVE_AFTER_KEY, AfterTheView, ClosedToHttp
from .logs import ACCESS_LOGGER, without_colours
from .request_head import (
    _HeadReader,
    _HeadTimedOut,
    _HeadTooLarge,
    _plain_head,
    _PlainHeaders,
    _Replay,
    _upgrade_environ,
)

if TYPE_CHECKING:
    from .hub_server import HubServer

__all__ = ["HubRequestHandler", "RELEASE_HEAD_KEY", "HEAD_ONLY_KEY"]

logger = logging.getLogger("rusty_ws.server")

#: Where ``HubRequestHandler`` leaves, in the environ, a callable that frees the request head's buffers.
RELEASE_HEAD_KEY = "rusty_ws.release_head"
#: Set in the environ when the server read exactly the request head off the socket, nothing past it.
HEAD_ONLY_KEY = "rusty_ws.head_only"
_NO_HEADERS = email.message.Message()  # what a released handler's ``headers`` are: empty, shared
_access_log = logging.getLogger(ACCESS_LOGGER)  # werkzeug's, where HubRequestHandler.log writes
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def _log_upgrade(address: str, environ: dict[str, Any]) -> None:
    """The access line of a 101 that ``HubServer._upgrade_plainly`` wrote: werkzeug's ``log_request``'s, as
    ``HubRequestHandler.log`` writes it (no colours)."""
    line = f"{environ['REQUEST_METHOD']} {uri_to_iri(environ['REQUEST_URI'])} {environ['SERVER_PROTOCOL']}"
    table = getattr(WSGIRequestHandler, "_control_char_table", None)
    _access_log.info(f"{address.replace('%', '%%')} \"%s\" %s %s",
                     line.translate(table) if table is not None else line, "101", "-")


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
