"""A WebSocket's life after its request: under ``HubServer`` the command loop runs once the view has returned.

Under ``flask run`` and gunicorn the view runs the connection (``Hub.serve``)
itself, so the request lasts as long as the WebSocket: werkzeug's handler and
environ, Flask's request context and 21 Python frames stay for the
connection's life (docs/architecture.md, "What a connection costs"). Under
``HubServer`` (``rusty-ws serve``, ``serve.serve``, ``hub_server.make_server``) the
view hands the upgraded socket over instead (``SERVE_AFTER_KEY``) and
returns; the request then ends at once (Flask's ``teardown_request`` and
``teardown_appcontext`` run, werkzeug's objects go), and the server's
request thread runs ``AfterTheView.run`` from the top of its stack.

What werkzeug would do after the view, and must not do on a WebSocket: write
the view's response, and drain what the client sent (its first frames). The
view's response raises ``Upgraded`` (a ``ConnectionError``, which werkzeug
takes for a client gone and answers with nothing), and the handler's writer
is ``ClosedToHttp``, which raises it too, for a response an app's
``after_request`` put in its place.

An embedding app served this way sees its request end when the handshake is
done: ``teardown_request`` runs before the connection's first command, not at
the socket's end. The commands run in an app context of their own, pushed
when the loop starts and popped at its end (``teardown_appcontext`` runs
again then), so the session policy and the permissions hook still have
``current_app``; ``flask.request`` and the request's ``g`` are gone.

The request also ran deeper on the thread's C stack than the loop does from
the top of it: ``release_stack_below`` gives those pages back (one page of
4 KiB a connection; Linux with glibc, a no-op elsewhere). Not after a
handshake that ``HubServer`` served without werkzeug's handler
(``hub_server.HubServer._upgrade_plainly``): that one stays above the loop's
deepest point (1.8 against 2.4 KiB below the thread's first frame, measured
by painting the stack), so there is nothing to give back, and the release's
~39k instructions and three system calls are saved.
"""

from __future__ import annotations

import ctypes
import io
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from ..auth import Claims
    from .hub import Hub

__all__ = ["SERVE_AFTER_KEY", "Upgraded", "ClosedToHttp", "AfterTheView", "release_stack_below"]

logger = logging.getLogger("rusty_ws.server")

#: Where ``HubRequestHandler`` leaves, in a WebSocket request's environ, the callable that takes an ``AfterTheView``.
SERVE_AFTER_KEY = "rusty_ws.serve_after"


class Upgraded(ConnectionError):
    """The request's socket is a WebSocket now: werkzeug must write nothing more on it (it drops this quietly)."""


class ClosedToHttp(io.BufferedIOBase):
    """The handler's ``wfile`` once its socket was handed over: any write raises ``Upgraded``."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise Upgraded("the socket was handed over as a WebSocket")


class AfterTheView:
    """An upgraded connection whose request is ending; ``run`` is its whole life, on the request's thread.

    It holds the connection's slot (``Hub.take_slot``, taken by ``_admit``):
    ``run`` gives it back at the socket's end, ``abandon`` at once.
    """

    __slots__ = ("app", "hub", "sock", "claims", "remote", "deflate", "read_ahead", "deep")

    def __init__(self, app: "Flask", hub: "Hub", sock: socket.socket, claims: "Claims | None", remote: str,
                 deflate: bool, read_ahead: bytes) -> None:
        self.app, self.hub, self.sock = app, hub, sock
        self.claims, self.remote, self.deflate, self.read_ahead = claims, remote, deflate, read_ahead
        #: The request ran deeper on the thread's C stack than the loop will: werkzeug's handler, and
        #: Flask's request if it had one. ``HubServer._upgrade_plainly``'s handshake does not (it clears this).
        self.deep = True

    def run(self) -> None:
        """Serve the connection to its end, then close the socket and give the slot back."""
        hub, sock = self.hub, self.sock
        if self.deep:
            release_stack_below()  # the request ran deeper than this loop will: its C stack pages go back
        try:
            read_ahead, self.read_ahead = self.read_ahead, b""
            with self.app.app_context():
                hub.serve(sock, self.claims, self.remote, deflate=self.deflate, read_ahead=read_ahead)
        except Exception:  # what Flask logged when the view ran the connection (a writer stopped meanwhile)
            logger.exception("the WebSocket from %s failed", self.remote)
        finally:
            try:
                sock.close()  # as the view does: nothing may follow the close frame
            finally:
                hub.give_back_slot(served=True)  # Hub.serve counted the end (even when it failed early)

    def abandon(self) -> None:
        """The request failed after the hand-over: close the socket and give the slot back, unserved."""
        try:
            self.sock.close()
        finally:
            self.hub.give_back_slot(served=False)


#: ``madvise``'s advice that drops pages (Linux): the next touch gets a zeroed page.
_MADV_DONTNEED = 4
#: Bytes below the stack pointer that ``release_stack_below`` leaves alone.
_STACK_MARGIN = 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _stack_releaser() -> Callable[[], None] | None:
    """``release_stack_below`` for Linux with glibc (through ``ctypes``); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # not use_errno: that keeps an errno object in every calling thread's dict
        getattr_np, getstack = libc.pthread_getattr_np, libc.pthread_attr_getstack
        destroy, self_id, read, madvise = libc.pthread_attr_destroy, libc.pthread_self, libc.read, libc.madvise
    except (OSError, AttributeError):
        return None
    self_id.restype = ctypes.c_ulong
    getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
    read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    read.restype = ctypes.c_ssize_t
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def release() -> None:
        attr = ctypes.create_string_buffer(128)  # a pthread_attr_t (56 bytes on x86-64, 64 on arm64)
        if getattr_np(self_id(), attr) != 0:
            return
        low, size = ctypes.c_void_p(), ctypes.c_size_t()
        getstack(attr, ctypes.byref(low), ctypes.byref(size))
        destroy(attr)
        if not low.value:
            return
        # The stack pointer of a call made from this very frame through ctypes, as madvise's will be:
        # the kernel's record of the read syscall in progress ("nr args... sp pc").
        buffer = ctypes.create_string_buffer(256)
        fd = os.open("/proc/thread-self/syscall", os.O_RDONLY)
        try:
            count = read(fd, buffer, 255)
        finally:
            os.close(fd)
        fields = buffer.raw[:max(count, 0)].split()
        if len(fields) < 9:
            return
        sp = int(fields[7], 16)
        top = (sp - _STACK_MARGIN) & ~(_PAGE - 1)
        if low.value < top <= low.value + size.value:
            madvise(low.value, top - low.value, _MADV_DONTNEED)

    return release


_release = _stack_releaser()


def release_stack_below() -> None:
    """Give the system back the pages of this thread's C stack below the current frame (Linux, glibc).

    A connection's request (werkzeug, Flask, the view) runs deeper than its
    command loop does from the top of the thread; the pages it touched stay
    resident for the thread's life, one more page of 4 KiB than the idle loop
    needs (docs/architecture.md, "What a connection costs"). Nothing below
    the caller's frame is in use, so ``madvise(MADV_DONTNEED)`` drops them; a
    later deeper call gets fresh zeroed pages. A no-op elsewhere or on failure.
    """
    # Under greenlets (gevent, eventlet) a suspended greenlet's frames may lie below this one.
    if _release is not None and "greenlet" not in sys.modules:
        try:
            _release()
        except (OSError, ValueError):
            pass
