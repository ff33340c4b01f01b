"""The hub's internal port: the HTTP routes that must answer under load, on a socket and a thread of their own.

In a reconnect storm the hub's port has thousands of handshakes in its accept
queue and thousands of threads wanting the interpreter lock; a health check
sent there waits behind them (seconds: docs/performance.md, "Reconnect storm,
session 13"). ``RUSTY_WS_INTERNAL_PORT`` gives those routes a listening socket
of their own (``RUSTY_WS_INTERNAL_HOST``, loopback unless set), served by one
thread that does nothing else: it accepts, reads the request head, calls the
app (the same Flask app, hooks and answer as on the main port) and writes the
answer, with as few system calls as it can (each one lets go of the interpreter
lock, and getting it back is the wait under load).

Only the routes named in ``ROUTE_ENDPOINTS`` are served (``/healthz`` today;
room for metrics or an admin route later): any other path is answered 404 here,
without the app, so the port opens no WebSocket and takes no login.

Bounded like the main port: the whole head within ``RUSTY_WS_REQUEST_HEAD_TIMEOUT``
(else 408, or nothing for a socket that sent nothing), at most
``RUSTY_WS_MAX_REQUEST_HEAD_SIZE`` bytes (431), no body (400), at most
``MAX_SOCKETS`` sockets at once (one more: 503 and closed), the answer written
within the same timeout; every answer closes its connection. One thread and a
``selectors`` loop, so one slow peer holds no other back.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import selectors
import socket
import sys
import threading
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask

from .logs import ACCESS_LOGGER
from .state import state_of

__all__ = ["InternalServer", "internal_server", "ROUTE_ENDPOINTS", "MAX_SOCKETS"]

logger = logging.getLogger("rusty_ws.server")
access_logger = logging.getLogger(ACCESS_LOGGER)

#: Endpoints (suffixes, as the hub's blueprint names them) of the app's routes the internal port serves.
ROUTE_ENDPOINTS = (".healthz",)
#: Sockets the internal port holds at once (reading a head or writing an answer); one more gets 503.
MAX_SOCKETS = 64
#: Seconds the loop waits after ``accept()`` failed for want of descriptors, instead of spinning.
ACCEPT_BACKOFF = 0.1
#: Longest wait of the loop for something to happen, so that ``close()`` is never waited on longer.
LOOP_WAIT = 0.5
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_VERSIONS = frozenset({"HTTP/1.0", "HTTP/1.1"})
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _answer(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode("latin-1") + body


_BUSY = _answer("503 Service Unavailable", b'{"code": "server_busy", "error": "too many connections to the internal port"}')
_TIMEOUT = _answer("408 Request Timeout", b"")
_TOO_LARGE = _answer("431 Request Header Fields Too Large", b'{"code": "head_too_large", "error": "request head too large"}')
_BAD = _answer("400 Bad Request", b'{"code": "bad_request", "error": "not a request the internal port takes"}')


class _Peer:
    """One accepted socket: what came of its head, or what is left to write of its answer, and its deadline."""

    __slots__ = ("sock", "address", "data", "out", "deadline", "registered")

    def __init__(self, sock: socket.socket, address: Any, deadline: float) -> None:
        self.sock, self.address, self.deadline = sock, address, deadline
        self.data = b""
        self.out = b""  # the answer's bytes not written yet
        self.registered = 0  # the selector events it is registered for (0: not registered)


class InternalServer:
    """``/healthz`` (``ROUTE_ENDPOINTS``) of ``app`` on ``host:port``, served by one thread of its own.

    ``start()`` starts the thread, ``close()`` ends it and closes every socket;
    ``port`` is the port listened on (the one given, or the free one port 0 found).
    """

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0, *, max_head_size: int = 32 * 1024,
                 head_timeout: float = 10.0, max_sockets: int = MAX_SOCKETS) -> None:
        self.app = app
        self.max_head_size, self.head_timeout, self.max_sockets = max_head_size, head_timeout, max_sockets
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self.socket = socket.create_server((host, port), family=family, backlog=128)  # SO_REUSEADDR set
        self.socket.setblocking(False)
        self.host, self.port = host, self.socket.getsockname()[1]
        #: The paths served (the rules of the app's routes whose endpoints are in ROUTE_ENDPOINTS).
        self.paths = frozenset(rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.endswith(ROUTE_ENDPOINTS))
        self._selector = selectors.DefaultSelector()  # epoll here: no limit on descriptor numbers
        self._wake, self._waker = socket.socketpair()  # close() writes to _waker: the loop's wait ends at once
        self._peers: dict[socket.socket, _Peer] = {}
        self._stopping = False
        self._accepting_from = 0.0  # monotonic time before which accept() is not tried again (out of descriptors)
        self._thread = threading.Thread(target=self._run, name="rusty_ws-internal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, wait: bool = True) -> None:
        """Stop listening at once, then end the thread (within ``LOOP_WAIT``) and close every socket.

        The listening socket is shut down (``SHUT_RDWR``) here, on the caller's thread:
        from then on connections are refused and the port can be bound again (the next
        process of a restart) even while this one is still exiting. ``wait``: wait (at
        most 2 s) for the thread to end; a signal handler does not.
        """
        self._stopping = True
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not listening yet, or not every system shuts a listening socket down: closed below
        try:
            self._waker.send(b"x", socket.MSG_DONTWAIT)
        except OSError:
            pass
        if not wait:
            return
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2)
        if not self._thread.is_alive():  # else the thread closes what is left as it ends
            self._close_all()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        selector = self._selector
        selector.register(self.socket, selectors.EVENT_READ, None)
        selector.register(self._wake, selectors.EVENT_READ, self._wake)
        listening = True
        try:
            while not self._stopping:
                now = time.monotonic()
                if not listening and now >= self._accepting_from:
                    selector.register(self.socket, selectors.EVENT_READ, None)
                    listening = True
                timeout = min([LOOP_WAIT, *(peer.deadline - now for peer in self._peers.values())])
                for key, mask in selector.select(max(0.0, timeout)):
                    if key.data is None:
                        if not self._accept():
                            selector.unregister(self.socket)  # out of descriptors: rest, don't spin
                            listening = False
                    elif isinstance(key.data, _Peer):
                        if mask & selectors.EVENT_READ:
                            self._read(key.data)
                        if mask & selectors.EVENT_WRITE:
                            self._write(key.data)
                self._expire(time.monotonic())
        except Exception:  # a defect: say so, and leave the main port alone
            logger.exception("the internal port's loop failed; it no longer answers")
        finally:
            self._close_all()

    def _accept(self) -> bool:
        """Take one connection and serve it if its head has come; False: ``accept()`` is out of descriptors."""
        try:
            sock, address = self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:
                logger.error("the internal port's accept() failed: %s; trying again in %.1fs",
                             exc.strerror or exc, ACCEPT_BACKOFF)
                self._accepting_from = time.monotonic() + ACCEPT_BACKOFF
                return False
            return True  # the connection went away before it was taken (ECONNABORTED and the like)
        sock.setblocking(False)
        if len(self._peers) >= self.max_sockets:
            self._send_and_close(sock, _BUSY)
            return True
        peer = self._peers[sock] = _Peer(sock, address, time.monotonic() + self.head_timeout)
        self._read(peer)  # usually the head is there already: answered with no wait on the selector
        return True

    def _read(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(self.max_head_size + 1 - len(peer.data))
        except (BlockingIOError, InterruptedError):
            self._register(peer, selectors.EVENT_READ)
            return
        except OSError:
            self._drop(peer)
            return
        if not data:  # EOF before a whole head
            self._drop(peer)
            return
        peer.data += data
        end = peer.data.find(b"\r\n\r\n")
        if end < 0 or end + 4 > self.max_head_size:
            if len(peer.data) > self.max_head_size:
                self._finish(peer, _TOO_LARGE)
            else:
                self._register(peer, selectors.EVENT_READ)
            return
        self._finish(peer, self._serve(peer.data[:end].decode("iso-8859-1"), peer.address))

    def _write(self, peer: _Peer) -> None:
        try:
            sent = peer.sock.send(peer.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(peer)
            return
        peer.out = peer.out[sent:]
        if not peer.out:
            self._drop(peer)

    def _finish(self, peer: _Peer, answer: bytes) -> None:
        """Write ``answer`` (what the socket takes now; the rest when it is writable) and close."""
        peer.data, peer.out = b"", answer
        peer.deadline = time.monotonic() + self.head_timeout  # for writing the answer
        self._write(peer)
        if peer.out:
            self._register(peer, selectors.EVENT_WRITE)

    def _expire(self, now: float) -> None:
        for peer in [peer for peer in self._peers.values() if peer.deadline <= now]:
            if peer.data and not peer.out:  # some of a head came: say why we hang up
                self._forget(peer)
                self._send_and_close(peer.sock, _TIMEOUT)
            else:
                self._drop(peer)

    def _register(self, peer: _Peer, events: int) -> None:
        if peer.registered == events:
            return
        if peer.registered:
            self._selector.modify(peer.sock, events, peer)
        else:
            self._selector.register(peer.sock, events, peer)
        peer.registered = events

    def _forget(self, peer: _Peer) -> None:
        self._peers.pop(peer.sock, None)
        if peer.registered:
            self._selector.unregister(peer.sock)
            peer.registered = 0

    def _drop(self, peer: _Peer) -> None:
        self._forget(peer)
        peer.sock.close()

    @staticmethod
    def _send_and_close(sock: socket.socket, answer: bytes) -> None:
        try:
            sock.send(answer, socket.MSG_DONTWAIT)
        except OSError:
            pass
        sock.close()

    def _close_all(self) -> None:
        for peer in list(self._peers.values()):
            self._drop(peer)
        for sock in (self.socket, self._wake, self._waker):
            sock.close()
        self._selector.close()

    # ------------------------------------------------------------------ one request

    def _serve(self, head: str, address: Any) -> bytes:
        """The whole answer to the request whose head (without its blank line) is ``head``."""
        lines = head.split("\r\n")
        words = lines[0].split(" ")
        if len(words) != 3 or words[2] not in _VERSIONS or not words[1].startswith("/") or not words[0]:
            return _BAD
        method, target, version = words
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or not set(name) <= _TOKEN:
                return _BAD
            headers.append((name, value.strip(" \t")))
        if any(name.lower() == "transfer-encoding" or (name.lower() == "content-length" and value != "0")
               for name, value in headers):
            return _BAD  # no route here takes a body
        path, _, query = target.partition("?")
        path_info = unquote_to_bytes(path).decode("latin-1")
        if path_info not in self.paths:
            served = ", ".join(sorted(self.paths)) or "nothing"
            answer = _answer("404 Not Found", json.dumps(
                {"code": "not_found", "error": f"the internal port serves only {served}"}).encode())
        else:
            answer = self._call_app(method, path_info, query, version, headers, address)
        access_logger.debug('%s "%s" %s', address[0] if address else "-", lines[0], answer[9:12].decode())
        return answer

    def _call_app(self, method: str, path_info: str, query: str, version: str, headers: list[tuple[str, str]],
                  address: Any) -> bytes:
        """The app's answer, as werkzeug's server would have asked for it (a WSGI call), with ``Connection: close``."""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path_info, "QUERY_STRING": query,
            "REQUEST_URI": path_info + ("?" + query if query else ""), "SERVER_NAME": self.host,
            "SERVER_PORT": str(self.port), "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": address[0] if address else "", "REMOTE_PORT": address[1] if address else 0,
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        for name, value in headers:
            key = name.upper().replace("-", "_")
            if "_" in name:  # as werkzeug's server: a header spelled with "_" could pass for one with "-"
                continue
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        started: list[Any] = []

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, response_headers]
            return chunks.append

        chunks: list[bytes] = []
        try:
            result = self.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            logger.exception("the internal port's request %s %s failed", method, path_info)
            return _answer("500 Internal Server Error", b'{"code": "internal_error", "error": "internal error"}')
        status, response_headers = started
        body = b"" if method == "HEAD" else b"".join(chunks)
        dropped = ("connection",) if method == "HEAD" else ("connection", "content-length")
        kept = [(name, value) for name, value in response_headers if name.lower() not in dropped]
        if method != "HEAD":
            kept.append(("Content-Length", str(len(body))))
        head = "".join(f"{name}: {value}\r\n" for name, value in [*kept, ("Connection", "close")])
        return f"HTTP/1.1 {status}\r\n{head}\r\n".encode("latin-1") + body


def internal_server(app: Flask) -> InternalServer | None:
    """The app's internal port as its settings say (started), or None when ``RUSTY_WS_INTERNAL_PORT`` is not set."""
    state = state_of(app)
    port = state.settings.internal_port if state is not None else None
    if state is None or port is None:
        return None
    settings = state.settings
    server = InternalServer(app, settings.internal_host, port,
                            max_head_size=settings.max_request_head_size, head_timeout=settings.request_head_timeout)
    if not server.paths:
        logger.warning("RUSTY_WS_INTERNAL_PORT is set but the app has no route to serve there "
                       "(RUSTY_WS_HEALTHZ=off?): it answers 404")
    server.start()
    return server
