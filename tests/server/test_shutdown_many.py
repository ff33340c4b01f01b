"""A hub with hundreds of connections shuts down within its own bound, and every client is told 4200.

Before, thousands of connections took 10 to 20 s to stop in a reconnect storm,
with "not released within" warnings from ``Writer.release``: the old process
kept accepting the reconnecting clients (a thread and a 503 each), and waited
for every request thread's teardown; the storm paid for every second of it. The bound here is the hub's own: no connection left
open at its timeout, no outbox the writer failed to release in time (both are
logged as warnings), and the process gone before the test's wait ends.

With more connections than ``RUSTY_WS_RECONNECT_RATE``, the 4200's reason asks
the clients to spread their reconnections over connections / rate seconds
(docs/protocol.md, "Reconnect storms").
"""

from __future__ import annotations

import gc
import re
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rusty_ws import create_app
from rusty_ws.protocol import reconnect_window
from rusty_ws.server.hub_server import make_server
from rusty_ws.server.serve import stop
from support import POLL, WAIT, HubProcess, RawSocket, client_frame, http, hub_config, parse_close, running_server

CLIENTS = 300


def _connect(hub: HubProcess, count: int) -> list[RawSocket]:
    clients = []
    for _ in range(count):
        raw = RawSocket(hub.port)
        raw.send_frame(0x1, b"subscribe:T")
        clients.append(raw)
    for raw in clients:  # every subscription carried out: the hub holds them all
        assert raw.sync() == []
    return clients


def _close_frames_after_sigterm(hub: HubProcess, clients: list[RawSocket]) -> dict[int, tuple[int, str] | None]:
    """SIGTERM, then each client's close frame (answered, as a client does), or None for EOF without one."""
    selector = selectors.DefaultSelector()
    for index, raw in enumerate(clients):
        raw.sock.setblocking(False)
        selector.register(raw.sock, selectors.EVENT_READ, index)
    buffers = [b""] * len(clients)
    closes: dict[int, tuple[int, str] | None] = {}
    hub.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10 * WAIT
    while len(closes) < len(clients) and time.monotonic() < deadline:
        for key, _ in selector.select(deadline - time.monotonic()):
            index = key.data
            try:
                data = clients[index].sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                data = b""
            buffers[index] += data
            frame = buffers[index]
            if len(frame) >= 2 and len(frame) >= 2 + (frame[1] & 0x7F):
                assert frame[0] == 0x88, frame  # nothing but the close frame after the sync
                payload = frame[2:2 + (frame[1] & 0x7F)]
                closes[index] = parse_close(payload)
                try:
                    clients[index].sock.send(client_frame(payload, 0x8))
                except OSError:
                    pass  # the hub may have shut the socket already
            elif not data:
                closes[index] = None
            else:
                continue
            selector.unregister(key.fileobj)
    selector.close()
    return closes


def _stopped(hub: HubProcess, after_sigterm: Callable[[HubProcess, list[RawSocket]], Any] = _close_frames_after_sigterm
             ) -> tuple[list[RawSocket], Any, str]:
    """CLIENTS connected and subscribed, then SIGTERM by ``after_sigterm`` (which reads what the clients
    get), the process's exit awaited: (the clients, what ``after_sigterm`` returned, the "stopped in" line)."""
    clients = _connect(hub, CLIENTS)
    got = after_sigterm(hub, clients)
    assert hub.process.wait(10 * WAIT) == 0
    hub._reader.join(WAIT)
    return clients, got, hub.wait_for_line("stopped in ")


def test_hundreds_of_connections_all_get_4200_and_the_hub_stops_within_its_bound() -> None:
    with HubProcess(max_connections=CLIENTS + 50) as hub:
        clients, closes, _ = _stopped(hub)
        log = hub.log
    assert len(closes) == CLIENTS
    assert set(closes.values()) == {(4200, "server restarting")}, set(closes.values())
    assert "not released within" not in log, log[-2000:]
    assert "still open after" not in log, log[-2000:]
    # Every client answered: the stopping thread read each answer itself (quiet_exit.read_answers).
    assert "every closing handshake done; exiting" in log, log[-2000:]
    for raw in clients:
        raw.close()


def test_the_answers_to_the_4200s_are_read_and_the_connections_end_cleanly_not_reset() -> None:
    """The exiting hub keeps its connections' threads asleep through their clients' answers
    (SO_RCVLOWAT) and reads the answers itself: an answer left unread when the process ends makes
    the system reset the connection (RST), and a client could lose what it had not read yet."""
    with HubProcess(max_connections=CLIENTS + 50) as hub:
        clients, closes, line = _stopped(hub)
        log = hub.log
    assert set(closes.values()) == {(4200, "server restarting")}, set(closes.values())
    ends = []
    for raw in clients:
        raw.sock.setblocking(True)
        raw.sock.settimeout(WAIT)
        try:
            ends.append(raw.sock.recv(100))  # b"": the hub's FIN
        except ConnectionResetError:
            ends.append(None)
        raw.close()
    assert ends == [b""] * CLIENTS, f"{ends.count(None)} reset, {sum(1 for e in ends if e)} with data"
    # The threads slept: none woke to take the interpreter lock and park (each did, before), and the
    # stop switched contexts fewer times than there are connections (1,213 times for 300, before).
    assert f"of the answers, {CLIENTS} read by the stopping thread ({CLIENTS} held asleep); 0 connections' " \
        "threads woke" in log, log[-2000:]
    switches = int(re.search(r"; (\d+) context switches\)", line).group(1))
    assert switches < 2 * CLIENTS, line


def test_a_stand_alone_hubs_last_line_says_where_its_stop_went() -> None:
    with HubProcess(max_connections=CLIENTS + 50) as hub:
        clients, _, line = _stopped(hub)
    phases = re.findall(r"([a-z0-9 ]+) \+(\d+\.\d+)s", line.split("stopped in ", 1)[1])
    assert [name.strip() for name, _ in phases] == [
        "listener shut", "accept loop ended", "sockets held", "4200s queued", "4200s written", "closing handshakes",
        "broker stopped", "exit"], line
    times = [float(at) for _, at in phases]
    assert times == sorted(times), line
    assert re.search(r"\(CPU \d+\.\d+s, of which the stopping thread \d+\.\d+s; \d+ context switches\)", line), line
    for raw in clients:
        raw.close()


def test_a_new_hub_binds_the_port_while_the_old_one_still_closes_its_connections() -> None:
    # A restart: the old hub shuts its listening socket first, so the new process can bind the
    # same port (SO_REUSEADDR) while the old one still holds connections waiting for their answer.
    old_app = create_app(hub_config(close_timeout=10 * WAIT))
    old = make_server(old_app, "127.0.0.1", 0)
    serving = threading.Thread(target=old.serve_forever, kwargs={"poll_interval": POLL}, name="test-old", daemon=True)
    serving.start()
    silent = RawSocket(old.port)
    assert silent.sync() == []
    stopping = threading.Thread(target=stop, args=(old_app, old), kwargs={"timeout": 10 * WAIT}, name="test-stop")
    stopping.start()
    try:
        assert parse_close(silent.recv_frame(timeout=WAIT).payload) == (4200, "server restarting")
        assert stopping.is_alive()  # waiting for our answer, the connection still open
        with running_server(port=old.port) as new:  # EADDRINUSE if the old one still listened
            assert new.server.port == old.port
            assert http("GET", f"http://127.0.0.1:{old.port}/healthz")[0] == 200
            assert stopping.is_alive()
    finally:
        silent.send_frame(0x8, b"\x10\x68")  # our answer (4200): the old hub may go now
        stopping.join(10 * WAIT)
        serving.join(WAIT)
        old.server_close()
        silent.close()
    assert not stopping.is_alive() and not serving.is_alive()


def test_more_connections_than_the_reconnect_rate_are_asked_to_spread_over_a_window() -> None:
    # 300 connections at 100 handshakes per second: a 3-second window.
    with HubProcess(max_connections=CLIENTS + 50, reconnect_rate=100) as hub:
        clients = _connect(hub, CLIENTS)
        closes = _close_frames_after_sigterm(hub, clients)
        assert hub.process.wait(10 * WAIT) == 0
    assert set(closes.values()) == {(4200, "server restarting; reconnect within 3.0 s")}, set(closes.values())
    assert reconnect_window("server restarting; reconnect within 3.0 s") == 3.0
    for raw in clients:
        raw.close()


def test_a_stopping_hub_refuses_new_connections_at_once_instead_of_answering_them() -> None:
    # A client that does not answer its 4200 holds the old process in its shutdown (the close
    # timeout is long); meanwhile a reconnecting client must be refused by the system, not given
    # a thread and a 503 by a process that is busy closing thousands of connections.
    with HubProcess(close_timeout=10 * WAIT) as hub:
        silent = RawSocket(hub.port)
        assert silent.sync() == []
        hub.process.send_signal(signal.SIGTERM)
        assert parse_close(silent.recv_frame(timeout=WAIT).payload) == (4200, "server restarting")
        assert hub.process.poll() is None  # still waiting for our answer
        try:
            late = socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT)
        except ConnectionRefusedError:
            late = None
        if late is not None:  # taken into the kernel's queue as the listener closed: it must not be served
            try:
                late.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = late.recv(100)
            except ConnectionResetError:  # the closing listener reset what its queue held
                answer = b""
            late.close()
            assert answer == b"", f"a connection was answered during the shutdown: {answer!r}"
        silent.send_frame(0x8, b"\x10\x68")  # our answer (4200): the hub may go now
        assert hub.process.wait(10 * WAIT) == 0
        silent.close()


def test_a_stand_alone_hub_exits_once_every_4200_is_written_not_after_every_closing_handshake() -> None:
    # Clients that read their 4200 and never answer it, and a close timeout longer than the
    # hub's shutdown bound (5 s): an embedded hub waits for them up to that bound. `rusty-ws
    # serve` owns its process: once every close frame is written it waits EXIT_GRACE for the
    # answers, stops the broker and ends the process at once (the kernel closes the sockets).
    with HubProcess(max_connections=CLIENTS + 50, close_timeout=10 * WAIT) as hub:
        clients = _connect(hub, CLIENTS)
        frames: dict[int, bytes] = {}
        signalled = time.monotonic()
        hub.process.send_signal(signal.SIGTERM)
        for index, _, data in _first_reads(clients, signalled + 10 * WAIT):
            frames[index] = data
        assert hub.process.wait(10 * WAIT) == 0
        exited = time.monotonic() - signalled
        hub._reader.join(WAIT)
        log = hub.log
    assert len(frames) == CLIENTS
    assert all(parse_close(frame[2:2 + (frame[1] & 0x7F)]) == (4200, "server restarting")
               for frame in frames.values()), set(frames.values())
    assert exited < 5.0, f"the hub took {exited:.1f}s to exit: it waited for the closing handshakes"
    # The log was flushed before the process ended: its last line is there.
    assert f"told {CLIENTS} connections 4200 (" in log and "closing handshakes cut short; exiting" in log, log[-2000:]
    for raw in clients:
        raw.close()


def _close_at_once_after_sigterm(hub: HubProcess, clients: list[RawSocket]) -> int:
    """SIGTERM, then each client closes its socket as soon as its 4200 has come (as the storm's load
    generator does: it reconnects on a new socket); how many got a close frame."""
    told = 0
    hub.process.send_signal(signal.SIGTERM)
    for _, raw, data in _first_reads(clients, time.monotonic() + 10 * WAIT):
        told += data[:1] == b"\x88"
        raw.close()  # EOF for the hub: it wakes the connection's thread whatever SO_RCVLOWAT says
    return told


def _first_reads(clients: list[RawSocket], deadline: float) -> Iterator[tuple[int, RawSocket, bytes]]:
    """Each client's first read (its index, itself, what came: b"" if reset), as they come, until
    every client has read once or ``deadline`` (monotonic) has passed."""
    selector = selectors.DefaultSelector()
    try:
        for index, raw in enumerate(clients):
            raw.sock.setblocking(False)
            selector.register(raw.sock, selectors.EVENT_READ, (index, raw))
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(deadline - time.monotonic()):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    data = b""
                selector.unregister(key.fileobj)
                yield key.data[0], key.data[1], data
    finally:
        selector.close()


def test_clients_that_close_at_once_do_not_hold_the_writing_of_the_4200s_up() -> None:
    """A client that closes as soon as its 4200 comes (the storm's load generator: it reconnects on a new
    socket) wakes its connection's thread with EOF, whatever SO_RCVLOWAT says, while the stopping thread
    still writes the others' frames: every client still gets its 4200, and the process ends within its
    bound (with 10,000 such clients on a quiet machine the frames took 2 s: docs/performance.md,
    "Reconnect storm, session 15")."""
    with HubProcess(max_connections=CLIENTS + 50) as hub:
        _, told, line = _stopped(hub, _close_at_once_after_sigterm)
    assert told == CLIENTS
    assert "4200s written" in line, line


def test_a_process_stopping_to_exit_lengthens_its_switch_interval_and_stops_its_collector(
        monkeypatch: Any) -> None:
    """Before its 4200s: every connection's thread then waits for the interpreter lock once, and at
    the usual interval their timed waits flooded the lock's mutex (docs/performance.md, "Reconnect
    storm, session 17"). The process ends; here ``exit_now`` is caught and both are put back."""
    from rusty_ws.server import serve as serve_module
    from rusty_ws.server.stop_clock import StopClock

    seen: dict[str, Any] = {}

    class Exited(Exception):
        pass

    def fake_stop(*args: Any, **kwargs: Any) -> None:
        seen.update(interval=sys.getswitchinterval(), collecting=gc.isenabled(), exiting=kwargs.get("exiting"))

    def fake_exit(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(serve_module, "stop", fake_stop)
    monkeypatch.setattr(serve_module, "exit_now", fake_exit)
    interval, collecting = sys.getswitchinterval(), gc.isenabled()
    try:
        try:
            serve_module._stop_and_exit(None, None, clock=StopClock())  # type: ignore[arg-type]
        except Exited as exc:
            assert exc.args == (0,)
    finally:
        sys.setswitchinterval(interval)
        if collecting:
            gc.enable()
    assert seen == {"interval": serve_module.EXIT_SWITCH_INTERVAL, "collecting": False, "exiting": True}
