"""``quiet_exit.send_holding``: ``socket.send`` without letting go of the interpreter lock, same results.

An exiting hub writes its 4200s with it (``Hub.shutdown(exiting=True)``): a thread its client's EOF
woke otherwise took the lock at every one of the stopping thread's sends.
"""

from __future__ import annotations

import socket

import pytest

from rusty_ws.server import quiet_exit
from rusty_ws.server.quiet_exit import send_holding


def test_it_sends_what_the_socket_takes_and_says_how_much() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert send_holding(a, b"\x88\x02\x10\x68", socket.MSG_DONTWAIT) == 4
        assert b.recv(10) == b"\x88\x02\x10\x68"
        assert send_holding(a, memoryview(b"rest"), socket.MSG_DONTWAIT) == 4  # a view: socket.send's way
        assert b.recv(10) == b"rest"


def test_a_full_socket_raises_blocking_io_error_as_socket_send_does() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        total = 0
        with pytest.raises(BlockingIOError):
            for _ in range(10_000):  # bounded: the buffers hold far less than 640 MB
                total += send_holding(a, b"x" * 65536, socket.MSG_DONTWAIT)
        assert total > 0


def test_a_closed_peer_is_an_os_error_not_a_signal() -> None:
    a, b = socket.socketpair()
    with a:
        b.close()
        with pytest.raises(OSError) as caught:
            for _ in range(3):  # the first send may be taken before the reset is seen
                send_holding(a, b"x" * 100, socket.MSG_DONTWAIT)
        assert not isinstance(caught.value, BlockingIOError)


def test_a_closed_socket_raises_as_socket_send_does() -> None:
    a, b = socket.socketpair()
    b.close()
    a.close()
    with pytest.raises(OSError):
        send_holding(a, b"x", socket.MSG_DONTWAIT)


def test_without_the_c_library_it_is_socket_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quiet_exit, "_send", None)
    a, b = socket.socketpair()
    with a, b:
        assert send_holding(a, b"abc", socket.MSG_DONTWAIT) == 3
        assert b.recv(10) == b"abc"


def test_the_c_library_is_found_here() -> None:
    """On Linux (where the benchmark's storm runs) the lock-holding send is the one used."""
    if not hasattr(socket, "MSG_NOSIGNAL"):
        pytest.skip("no MSG_NOSIGNAL on this system")
    assert quiet_exit._send is not None
