"""An exiting hub's 4200s without waking a thread per connection (``Hub.shutdown(exiting=True)``).

When ``rusty-ws serve`` stops, it writes a close frame to every connection and
the process ends. Each client answers at once, and each answer used to wake its
connection's thread, which wants the interpreter lock once (to park) while the
stopping thread is still writing: every ``send`` lets go of the lock, and with
10,000 threads woken the writing thread waited behind them at every frame. On a
loaded machine each hand-off also waits for the system to run that thread:
the 4200s took 2.5-12 s to go out in 7 of 30 benchmark storms (the stack dump
of one: the stopping thread in the writer, the others parked or in ``recv``;
docs/performance.md, "Reconnect storm, session 14").

So before queuing the frames the hub raises each socket's ``SO_RCVLOWAT``
(``hold``): a blocked ``recv`` then sleeps through a close answer of a few
bytes (a burst of ``LOW_WATER`` bytes, or EOF, still wakes it, and it parks as
before). Once the frames are written, the stopping thread reads the answers
itself without blocking (``read_answers``), so that no answer is left unread
when the process ends (which would make the system reset the connection
instead of closing it). Linux and the BSDs have the option; elsewhere
``hold`` holds nothing and the threads wake as before.

A client that closes its socket as soon as it reads the 4200 (a load generator,
a client that reconnects on a new socket at once) sends EOF, which wakes the
thread whatever the low-water mark says. For those the frames are written with
``send_holding``: the C library's ``send`` called without letting go of the
interpreter lock (``ctypes.PyDLL``), so the stopping thread writes every frame
without waiting behind each woken thread for the lock, and with the switch
interval raised for the stop (``EXIT_SWITCH_INTERVAL``) the woken threads do not
force it to hand the lock over meanwhile; the process ends before most of them
ever run. Measured on a quiet machine, 10,000 storm clients: the 4200s took
2.0 s to queue and write, with 1.6 s of CPU in the woken threads and 27,926
context switches (docs/performance.md, "Reconnect storm, session 15").
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import cast

__all__ = ["EXIT_SWITCH_INTERVAL", "LOW_WATER", "hold", "read_answers", "send_holding"]

#: Bytes a connection's ``recv`` waits for while the hub exits: far more than a close answer (at most 131).
LOW_WATER = 65536
#: Seconds between two passes of ``read_answers`` over the sockets still silent.
READ_EVERY = 0.01
#: The interpreter's switch interval (seconds) while an exiting hub writes its 4200s: longer than the write,
#: so that the threads its clients' EOFs woke do not take the lock from the writing thread in between.
EXIT_SWITCH_INTERVAL = 1.0
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_LOWAT = getattr(socket, "SO_RCVLOWAT", None)


def _libc_send() -> Callable[[int, bytes, int, int], int] | None:
    """The C library's ``send``, called holding the interpreter lock (``ctypes.PyDLL``); None where not found."""
    try:
        import ctypes

        library = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the lock is kept across the call
        function = library.send
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_ssize_t
    return cast("Callable[[int, bytes, int, int], int]", function)


_send = _libc_send() if _DONTWAIT and _NOSIGNAL else None


def send_holding(sock: socket.socket, data: bytes | memoryview, flags: int) -> int:
    """``sock.send(data, flags)`` without letting go of the interpreter lock (where the C library's
    ``send`` can be called: ``ctypes``; else ``sock.send`` itself). Raises as ``sock.send`` does."""
    if _send is None or not isinstance(data, bytes):
        return sock.send(data, flags)
    sent = _send(sock.fileno(), data, len(data), flags | _NOSIGNAL)  # EPIPE as an error, not a signal
    if sent < 0:
        import ctypes

        code = ctypes.get_errno()
        if code in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise BlockingIOError(code, os.strerror(code))
        raise OSError(code, os.strerror(code))
    return int(sent)


def hold(sockets: Iterable[socket.socket]) -> list[socket.socket]:
    """Raise each socket's receive low-water mark to ``LOW_WATER``; returns those it was raised on.

    Nothing on a system without the option or without ``MSG_DONTWAIT`` (``read_answers`` needs it).
    """
    if _LOWAT is None or not _DONTWAIT:
        return []
    held = []
    for sock in sockets:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _LOWAT, LOW_WATER)
        except OSError:  # closed meanwhile, or the system refuses it: that connection's thread wakes as before
            continue
        held.append(sock)
    return held


def read_answers(sockets: list[socket.socket], deadline: float) -> tuple[int, set[socket.socket]]:
    """Read, without blocking, what each held socket's client sent back, until every one has
    answered (some bytes, EOF or an error) or ``deadline`` (monotonic).

    Returns how many answered, and the sockets whose clients sent bytes (their close answer:
    after the hub's close frame a client only answers it; what is read is not parsed).
    """
    waiting = list(sockets)
    replied: set[socket.socket] = set()
    while waiting:
        silent = []
        for sock in waiting:
            try:
                if sock.recv(LOW_WATER, _DONTWAIT):
                    replied.add(sock)
            except BlockingIOError:
                silent.append(sock)
            except OSError:
                pass  # reset or closed: it has answered all it will
        waiting = silent
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(min(READ_EVERY, max(0.0, deadline - time.monotonic())))  # polling: a poll() would honour the low-water mark too
    return len(sockets) - len(waiting), replied
