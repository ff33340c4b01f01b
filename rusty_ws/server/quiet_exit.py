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
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable

__all__ = ["LOW_WATER", "hold", "read_answers"]

#: Bytes a connection's ``recv`` waits for while the hub exits: far more than a close answer (at most 131).
LOW_WATER = 65536
#: Seconds between two passes of ``read_answers`` over the sockets still silent.
READ_EVERY = 0.01
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_LOWAT = getattr(socket, "SO_RCVLOWAT", None)


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
