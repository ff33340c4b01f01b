"""A reconnect storm at the new hub: handshakes past RUSTY_WS_MAX_HANDSHAKES are paced, /healthz is not.

Before, every reconnecting client got a thread at once, and with thousands of
handshake threads fighting over the interpreter lock the hub's own `/healthz`
took 3-4 s to answer. Now the accept thread answers a handshake past the bound
with 503 and ``Retry-After`` (no thread), sends the clients it turns away to
the seconds ahead, and lets `/healthz` through ahead of them.

"A handshake under way" here is a request held past its head: a POST whose
body never comes keeps its thread reading (``RUSTY_WS_REQUEST_HEAD_TIMEOUT``
long), which is what a slow upgrade looks like to the accept loop.
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import threading
from collections.abc import Iterator

import pytest

from rusty_ws import WsClient, backoff, create_app
from rusty_ws.config import Settings
from rusty_ws.server import accept_gate
from rusty_ws.server.hub_server import DRAIN_FROM, HubServer, make_server
from rusty_ws.server.pacing import MAX_RETRY_AFTER, MIN_PACED_RATE, TURN_AWAY_COST, WINDOW_SAMPLES, _Pacer
from rusty_ws.server.state import state_of
from support import (
    FAST_CLIENT,
    WAIT,
    Hooks,
    RawSocket,
    RunningServer,
    hub_config,
    raw_http,
    read_response,
    running_server,
)

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n")
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def hold_a_request(server: RunningServer, closing: list[socket.socket]) -> socket.socket:
    """A request past its head whose body never comes: one request under way until the socket closes.

    The head comes in two parts, so that each step is seen: first the socket waits
    for the rest of its head (``pending_requests`` 1), then its thread reads the body.
    """
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    closing.append(sock)
    sock.sendall(b"POST /auth/token HTTP/1.1\r\n")
    assert server.hub.pending_requests.wait_for(1, WAIT)  # accepted, admitted, waiting for its head
    sock.sendall(b"Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    assert server.hub.pending_requests.wait_for(0, WAIT)  # its head is read: it waits for its body
    assert server.server.handshakes_in_flight() >= 1
    return sock


class TestPacing:
    def test_past_the_bound_a_handshake_gets_503_with_retry_after_and_no_thread(
            self, closing: list[socket.socket]) -> None:
        with running_server(max_handshakes=1, request_head_timeout=10 * WAIT) as server:
            hold_a_request(server, closing)
            started = server.server._threads_started
            status, headers, body = raw_http(server.port, HANDSHAKE)
            assert status == 503 and b'"server_busy"' in body, body
            assert 1 <= int(headers["retry-after"]) <= MAX_RETRY_AFTER
            assert headers["connection"] == "close"
            assert server.server._threads_started == started, "the refused handshake got a thread"
            assert server.hub.counts()["connections"] == 0

    def test_healthz_is_answered_while_handshakes_are_turned_away(self, closing: list[socket.socket]) -> None:
        with running_server(max_handshakes=1, request_head_timeout=10 * WAIT) as server:
            hold_a_request(server, closing)
            for _ in range(3):
                assert raw_http(server.port, HANDSHAKE)[0] == 503
                status, _, body = raw_http(server.port, HEALTHZ)
                assert status == 200 and b'"status": "ok"' in body.replace(b'":"', b'": "'), body
                status, _, _ = raw_http(server.port, b"GET /healthz?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert status == 200
            # Only /healthz itself: a longer path that starts the same is paced like any other.
            assert raw_http(server.port, b"GET /healthzz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 503

    def test_once_the_request_ends_handshakes_are_let_in_again(self, closing: list[socket.socket]) -> None:
        with running_server(max_handshakes=1, request_head_timeout=10 * WAIT) as server:
            held = hold_a_request(server, closing)
            assert raw_http(server.port, HANDSHAKE)[0] == 503
            held.shutdown(socket.SHUT_WR)  # the body ends short: the server answers 400 and the thread ends
            assert held.recv(100).startswith(b"HTTP/1.1 400")
            # Its thread ends on its own: wait for it (the only request thread left), not for a round
            # trip, whose own thread would count as under way when the handshake below arrives.
            for thread in [t for t in threading.enumerate() if "process_request_thread" in t.name]:
                thread.join(WAIT)
                assert not thread.is_alive(), "the ended request's thread is still running"
            assert server.server.handshakes_in_flight() == 0, "the ended request still counts as under way"
            raw = RawSocket(server.port)
            try:
                assert raw.status == 101 and raw.sync() == []
            finally:
                raw.close()

    def test_no_bound_no_pacing(self, closing: list[socket.socket]) -> None:
        with running_server(max_handshakes=0, request_head_timeout=10 * WAIT) as server:
            hold_a_request(server, closing)
            raw = RawSocket(server.port)
            try:
                assert raw.status == 101 and raw.sync() == []
            finally:
                raw.close()

    def test_the_turned_away_are_logged_in_one_line(self, closing: list[socket.socket],
                                                    caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level("WARNING", logger="rusty_ws.server")
        with running_server(max_handshakes=1, request_head_timeout=10 * WAIT) as server:
            hold_a_request(server, closing)
            for _ in range(5):
                assert raw_http(server.port, HANDSHAKE)[0] == 503
        lines = [r for r in caplog.records if "RUSTY_WS_MAX_ACCEPT_QUEUE" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]


def test_wsclient_waits_what_retry_after_says(closing: list[socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused reconnection waits the hub's Retry-After (plus up to a second), not its quick back-off."""
    # The client's random part of that second pinned to a half: the wait is then exact.
    monkeypatch.setattr(backoff, "retry_after", functools.partial(backoff.retry_after, rng=lambda: 0.5))
    with running_server(max_handshakes=1, request_head_timeout=10 * WAIT) as server:
        client = WsClient.connect("c", server.ws_url, **FAST_CLIENT)
        hooks = Hooks(client)
        held = hold_a_request(server, closing)
        server.hub.connections()[0].close(4200, "server restarting")
        assert hooks.disconnected.get(timeout=WAIT)[0] == 4200
        attempt, delay = hooks.reconnecting.get(timeout=WAIT)
        assert attempt == 1 and delay <= 2 * FAST_CLIENT["backoff_initial"]  # "reconnect now"
        attempt, delay = hooks.reconnecting.get(timeout=WAIT)  # that attempt was turned away: 503
        assert attempt == 2 and delay == 1.5, delay  # Retry-After: 1, plus half of one more second
        assert FAST_CLIENT["backoff_cap"] < 1.0  # (the back-off alone would never wait that long)
        held.close()  # the request under way ends: room for the client when it comes back
        assert hooks.connected.get(timeout=3 * WAIT) is client
        client.close()


# --------------------------------------------------------------------------- the Retry-After schedule


class Load:
    """What a pacer is told the hub has: (waiting, under way), set by the test."""

    def __init__(self, waiting: int = 0, under_way: int = 0) -> None:
        self.waiting, self.under_way = waiting, under_way
        self.asked = 0

    def __call__(self) -> tuple[int, int]:
        self.asked += 1
        return self.waiting, self.under_way


def test_the_turned_away_get_the_next_slots_at_the_rate_behind_what_waits() -> None:
    pacer = _Pacer(100, Load())
    # Nothing ahead: one slot every 1/100 s from now; Retry-After is each slot's distance rounded down
    # (the client's own jitter of up to a second brings it within the second after its slot).
    waits = [pacer.retry_after(100.5, 0) for _ in range(300)]
    assert waits == [1] * 200 + [2] * 100, waits  # slots 0-0.99 s and 1-1.99 s ahead: at least 1
    pacer = _Pacer(100, Load())
    # 500 ahead (queued and under way) at 100 a second: the first slot is 5 s away, then one every 10 ms.
    assert [pacer.retry_after(100.5, 500) for _ in range(200)] == [5] * 100 + [6] * 100
    # Later clients go behind those told before, however little is queued by then...
    assert pacer.retry_after(101.0, 0) == 6
    # ...and behind the queue when it is longer than what was told.
    assert pacer.retry_after(101.0, 2000) == 20


def saturated_second(pacer: _Pacer, second: int, admitted: int) -> None:
    """``admitted`` handshakes admitted within ``second`` (the first one as it begins)."""
    pacer.admitted(second + 0.001)
    for _ in range(admitted - 1):
        pacer.admitted(second + 0.5)


def test_the_rate_is_what_saturated_seconds_finished_not_a_floor() -> None:
    load = Load(waiting=3000, under_way=10)
    pacer = _Pacer(1500, load)
    assert pacer.rate == 1500 and not pacer.measured  # the guess (RUSTY_WS_RECONNECT_RATE) until measured
    saturated_second(pacer, 6, 53)  # the pacer's first second is not a whole one: it says nothing
    saturated_second(pacer, 7, 410)
    load.under_way = 20  # 410 admitted in second 7, 10 more under way: 400 finished
    saturated_second(pacer, 8, 600)  # (second 7 measured as 8 begins)
    assert pacer.measured and pacer.rate == 1500  # the guess counts as one second until there are three
    saturated_second(pacer, 9, 500)
    assert pacer.rate == 1500
    saturated_second(pacer, 10, 10)
    assert pacer.rate == 600  # three measures (400, 600, 500): the best; no floor at 1500
    # A second that ends with nothing waiting was not saturated: it says nothing of the rate.
    load.waiting = 0
    saturated_second(pacer, 11, 10)
    load.waiting = 3000
    saturated_second(pacer, 12, 10)
    assert pacer.rate == 600
    # A saturated stretch of seconds with few finished: down to MIN_PACED_RATE, not below.
    for second in range(13, 30):
        saturated_second(pacer, second, 1)
    assert pacer.rate == pytest.approx(MIN_PACED_RATE)
    assert load.asked <= 30, "the load is read once a second, not per request"


def test_one_slow_second_does_not_send_everyone_a_minute_away() -> None:
    """A new hub's first whole second had a 0.4 s collection in it: 53 finished. The best of three
    keeps the rate where the seconds around it put it, and those told meanwhile keep their places."""
    load = Load(waiting=3000)
    pacer = _Pacer(1500, load)
    saturated_second(pacer, 0, 1)
    saturated_second(pacer, 1, 900)
    saturated_second(pacer, 2, 53)
    saturated_second(pacer, 3, 800)
    saturated_second(pacer, 4, 700)
    assert pacer.rate == 900  # 900, 53, 800 (the guess gone): not 53
    saturated_second(pacer, 5, 1)
    assert pacer.rate == 800  # 53, 800, 700
    waits = [pacer.retry_after(5.5, 0) for _ in range(800)]  # 800 told at 800 a second: within a second
    assert max(waits) == 1
    saturated_second(pacer, 6, 1)  # second 5: 1 finished, 800 turned away
    assert pacer.rate == 800
    for second in range(7, 9):
        saturated_second(pacer, second, 200)
    assert pacer.rate == pytest.approx(max(200, 1 + TURN_AWAY_COST * 800))
    # The 800 told at 5.5 had their slots by 6.5: at 8 the next goes behind what waits, at the new rate.
    assert pacer.retry_after(8.001, 0) == 1
    assert pacer.retry_after(8.001, 3000) == int(3000 / pacer.rate)


def test_the_clients_told_keep_their_places_when_the_rate_changes() -> None:
    load = Load(waiting=1)
    pacer = _Pacer(100, load)
    saturated_second(pacer, 0, 1)
    assert [pacer.retry_after(0.5, 0) for _ in range(1000)][-1] == 9  # 1,000 told at 100 a second: 10 s of slots
    saturated_second(pacer, 1, 1000)
    saturated_second(pacer, 2, 1)  # measured: 1,000 a second; the slots left (8.5 s at 100) shrink to 0.85 s
    assert pacer.rate == 1000
    assert pacer.retry_after(2.001, 0) == 1 and pacer._tail == pytest.approx(2.001 + 0.85 + 0.001, abs=0.01)


def test_a_second_spent_turning_clients_away_counts_their_cost_as_capacity() -> None:
    """143 admitted and 2,909 turned away in one second, on a hub that did 1,750 a second once it no
    longer turned anyone away: the turned-away's share of the second is counted as capacity."""
    pacer = _Pacer(1000, Load(waiting=3000))
    saturated_second(pacer, 0, 1)
    saturated_second(pacer, 1, 143)
    for _ in range(2909):
        pacer.retry_after(1.5, 3000)
    saturated_second(pacer, 2, 1)
    saturated_second(pacer, 3, 1)
    saturated_second(pacer, 4, 1)
    assert pacer.rate == pytest.approx(143 + TURN_AWAY_COST * 2909)  # the best of three: this second
    assert 0 < TURN_AWAY_COST < 1 and pacer.rate > 143


def test_the_measure_is_told_to_the_hub_for_its_4200_window() -> None:
    measures: list[float] = []
    pacer = _Pacer(100, Load(waiting=1), measures.append)
    saturated_second(pacer, 0, 1)
    saturated_second(pacer, 1, 300)
    assert measures == []  # nothing measured yet
    saturated_second(pacer, 2, 1)
    assert measures == [300]


def test_the_4200_window_is_told_the_median_of_the_saturated_seconds_not_their_best() -> None:
    """A hub's best second while its clients first connected (2,467 at a quiet moment) made a 4.1 s window
    for 10,000 to a new hub that did 900-1,000 in the storm: the window takes the median of the seconds
    measured, while Retry-After keeps the best of the last three."""
    measures: list[float] = []
    pacer = _Pacer(1500, Load(waiting=800), measures.append)
    assert pacer.window_rate is None
    saturated_second(pacer, 0, 1)
    for second, admitted in enumerate([900, 2400, 1000, 950, 1100, 2000, 1, 1], start=1):
        saturated_second(pacer, second, admitted)
    # Seconds 1-7 measured (the last one's first handshake only began second 8): 900, 2400, 1000, 950, 1100,
    # 2000, then MIN_PACED_RATE for second 7.
    assert pacer.rate == 2000  # Retry-After: the best of the last three (1100, 2000, 50)
    assert measures[:3] == [900, (900 + 2400) / 2, 1000]
    assert measures[-1] == pacer.window_rate == 1000  # median of 50, 900, 950, 1000, 1100, 2000, 2400
    # Bounded: only the last WINDOW_SAMPLES seconds count.
    for second in range(9, 9 + WINDOW_SAMPLES + 1):
        saturated_second(pacer, second, 600)
    assert pacer.window_rate == 600


def test_a_measured_rate_spreads_the_turned_away_over_the_seconds_it_needs() -> None:
    """400 a second measured, 2,000 turned away with nothing else ahead: 5 s of slots, 400 to each."""
    pacer = _Pacer(400, Load(waiting=1))
    saturated_second(pacer, 0, 1)
    saturated_second(pacer, 1, 400)
    saturated_second(pacer, 2, 1)
    assert pacer.rate == 400
    waits = [pacer.retry_after(2.0, 0) for _ in range(2000)]
    assert [waits.count(n) for n in range(1, 6)] == [800, 400, 400, 400, 0]  # slots 0-2 s ahead all say 1


def test_the_wait_never_passes_the_longest() -> None:
    pacer = _Pacer(MIN_PACED_RATE, Load())
    assert max(pacer.retry_after(3.0, 0) for _ in range(MIN_PACED_RATE * (MAX_RETRY_AFTER + 5))) == MAX_RETRY_AFTER
    assert pacer.retry_after(3.0, 10**9) == MAX_RETRY_AFTER


def test_the_pacing_log_says_each_busy_second(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="rusty_ws.server.pacing")
    pacer = _Pacer(100, Load(waiting=7, under_way=3))
    pacer.admitted(5.5)
    pacer.retry_after(5.6, 10)
    pacer.retry_after(5.6, 250, "shed")
    pacer.refused(5.7)
    pacer.admitted(6.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "rusty_ws.server.pacing"]
    assert len(lines) == 1 and "1 admitted, 2 turned away; 7 waiting, 3 under way" in lines[0], lines
    # Why each was turned away, what Retry-After each was given, and the refusals past the pending bound.
    assert "turned away by handshakes x1, shed x1; Retry-After 1 x1, 2 x1; 1 refused (pending requests)" in lines[0]


@pytest.mark.parametrize("name, value, expected", [
    ("MAX_HANDSHAKES", None, 8192), ("MAX_HANDSHAKES", 0, 0), ("MAX_HANDSHAKES", "16", 16),
    ("MAX_ACCEPT_QUEUE", None, 3072), ("MAX_ACCEPT_QUEUE", "512", 512),
])
def test_the_bounds_are_settings(name: str, value: object, expected: int) -> None:
    config = {} if value is None else {f"RUSTY_WS_{name}": value}
    assert getattr(Settings.from_config(config), name.lower()) == expected


@pytest.mark.parametrize("name", ["MAX_HANDSHAKES", "MAX_ACCEPT_QUEUE"])
@pytest.mark.parametrize("value", [-1, 1.5, "many"])
def test_the_bounds_refuse_values_that_cannot_work(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"RUSTY_WS_{name}"):
        Settings.from_config({f"RUSTY_WS_{name}": value})


@contextlib.contextmanager
def stepped_server(**settings: object) -> Iterator[tuple[HubServer, list[socket.socket]]]:
    """A hub's server that does not serve (the test runs the accept loop's steps), and a list for the
    test's client sockets; at the end the sockets and the server are closed (never served: nothing for
    ``shutdown`` to wait for) and the hub is shut down."""
    app = create_app(hub_config(**settings))
    server = make_server(app, "127.0.0.1", 0)
    sockets: list[socket.socket] = []
    try:
        yield server, sockets
    finally:
        for sock in sockets:
            sock.close()
        server.server_close()
        state_of(app).hub.shutdown(WAIT)


def test_a_long_accept_queue_is_paced_and_healthz_in_it_is_let_through() -> None:
    """The accept queue counts (Linux ``TCP_INFO``): requests queued behind the one accepted now."""
    with stepped_server(max_accept_queue=3) as (server, sockets):  # this test accepts, one request at a time
        for request in [HANDSHAKE, HANDSHAKE, HEALTHZ, HANDSHAKE, HANDSHAKE]:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
            sock.sendall(request)
            sockets.append(sock)
        assert server.accept_queue() == 5
        started = server._threads_started
        server._handle_request_noblock()  # 4 behind it: paced
        server._handle_request_noblock()  # 3 behind it: paced
        server._handle_request_noblock()  # /healthz, 2 behind it: let in
        server._handle_request_noblock()  # 1 behind it: let in
        assert server.accept_queue() == 1
        statuses = [read_response(sock)[0] for sock in sockets[:4]]
        assert statuses == [503, 503, 200, 101], statuses
        assert server._threads_started == started + 2


def queue_up(port: int, requests: list[bytes]) -> list[socket.socket]:
    sockets = []
    for request in requests:
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        sock.sendall(request)
        sockets.append(sock)
    return sockets


def test_healthz_behind_a_long_accept_queue_is_served_before_the_handshakes_ahead_of_it() -> None:
    """Past DRAIN_FROM queued, the accept loop takes the whole queue and serves ``/healthz`` first:
    behind thousands of handshakes (a storm) it waited seconds, one handshake a millisecond."""
    with stepped_server() as (server, sockets):
        ahead = DRAIN_FROM + 8
        sockets += queue_up(server.port, [HANDSHAKE] * ahead + [HEALTHZ, HANDSHAKE])
        assert server.accept_queue() == ahead + 2
        started = server._threads_started
        # One step: the drain answers the /healthz at the queue's end itself (no thread), then the
        # first handshake is served.
        server._handle_request_noblock()
        status, _, body = read_response(sockets[ahead])
        assert status == 200 and b'"connections"' in body, body
        assert server._threads_started == started + 1  # the handshake's thread; none for the /healthz
        assert read_response(sockets[0])[0] == 101
        assert server.accept_queue() == 0 and len(server._taken) == ahead  # the rest, taken in order
        assert server.waiting() == ahead
        for sock in sockets[1:4]:  # none of the others ahead was answered yet
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
            sock.setblocking(True)
        server.service_actions()  # nothing new in the system's queue: the taken ones are served
        assert not server._taken
        statuses = [read_response(sock)[0] for sock in sockets[1:ahead] + sockets[ahead + 1:]]
        assert statuses == [101] * ahead, statuses


def test_a_healthz_a_drain_took_before_its_request_came_is_answered_before_the_handshakes_held() -> None:
    """A client that connects, then sends ``GET /healthz`` a moment later: the drain took its socket
    before anything came, and held it behind every handshake (1.3 s in a storm of 10,000, session 14).
    Once its request comes, the next step answers it, ahead of all that is held."""
    with stepped_server() as (server, sockets):
        ahead = DRAIN_FROM + 8
        sockets += queue_up(server.port, [HANDSHAKE] * ahead)
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)  # nothing sent yet
        sockets += [silent, *queue_up(server.port, [HANDSHAKE])]
        assert server.accept_queue() == ahead + 2
        server._handle_request_noblock()  # drains: the silent one held in its place, the first handshake served
        assert read_response(sockets[0])[0] == 101
        assert len(server._taken) == ahead + 1
        held = server._taken[-2][0]  # the silent client's socket, as the server holds it
        silent.sendall(HEALTHZ)
        assert select.select([held], [], [], WAIT)[0], "the request never reached the server's socket"
        server._healthz.next_look = 0.0  # LOOK_EVERY need not pass here
        started = server._threads_started
        server._handle_request_noblock()  # one step: the /healthz first, then one handshake
        status, _, body = read_response(silent)
        assert status == 200 and b'"connections"' in body, body
        assert server._threads_started == started + 1  # one handshake's thread; none for the /healthz
        assert len(server._taken) == ahead - 1  # every other one held is still there, in order
        assert not server._healthz.unseen.get_map()  # nothing watched any more
        assert read_response(sockets[1])[0] == 101
        server.service_actions()
        assert not server._taken
        statuses = [read_response(sock)[0] for sock in sockets[2:ahead] + sockets[ahead + 1:]]
        assert statuses == [101] * (ahead - 1), statuses


def test_a_socket_a_drain_took_silent_that_then_sends_a_handshake_or_closes_keeps_its_place() -> None:
    """Watched sockets that turn out not to be a ``/healthz`` (a handshake, an EOF, garbage) are served
    where they were, and a server closed with them watched closes them."""
    with stepped_server() as (server, sockets):
        sockets += queue_up(server.port, [HANDSHAKE] * DRAIN_FROM)
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) for _ in range(4)]
        sockets += silent
        server._handle_request_noblock()  # drains all; serves the first handshake
        assert len(server._taken) == DRAIN_FROM + 3 and len(server._healthz.unseen.get_map()) == 4
        held = [item[0] for item in list(server._taken)[-4:]]
        silent[0].sendall(HANDSHAKE)
        silent[1].close()  # EOF
        silent[2].sendall(b"GET /healthzzz HTTP/1.1\r\n\r\n")  # not /healthz
        for sock in held[:3]:  # what each sent (or its EOF) has reached the server's socket
            assert select.select([sock], [], [], WAIT)[0]
        server._healthz.next_look = 0.0
        server._handle_request_noblock()  # looks (none is /healthz: all keep their places), serves one
        assert [item[0] for item in list(server._taken)[-4:]] == held
        assert len(server._healthz.unseen.get_map()) == 1  # the one that sent nothing yet
        server.server_close()  # the watched one is closed and no longer watched
        assert not server._taken and silent[3].recv(1) == b""


def test_a_short_queue_is_served_as_it_comes_and_what_a_drain_took_is_closed_with_the_server() -> None:
    with stepped_server() as (server, sockets):
        sockets += queue_up(server.port, [HANDSHAKE, HEALTHZ])
        server._handle_request_noblock()  # below DRAIN_FROM: plain accept() order
        assert read_response(sockets[0])[0] == 101 and not server._taken
        server._handle_request_noblock()
        assert read_response(sockets[1])[0] == 200
        late = queue_up(server.port, [HANDSHAKE] * (DRAIN_FROM + 1) + [HEALTHZ])
        sockets += late
        server._handle_request_noblock()  # drains, answering the /healthz itself; serves the first handshake
        assert read_response(late[-1])[0] == 200 and len(server._taken) == DRAIN_FROM
        assert read_response(late[0])[0] == 101
        server.server_close()  # never served: closed, not left open
        assert not server._taken
        for sock in late[1:-1]:
            assert sock.recv(1) == b""  # EOF: no answer, the socket closed


def test_the_healthz_a_drain_answers_itself_goes_through_the_app_as_any_request() -> None:
    """Answered on the accept thread, a ``/healthz`` is still the app's: a Host the app does not
    allow is refused (403) as on a request thread; one whose head came with bytes past it (a body)
    is not answered there but put first, for a thread."""
    with stepped_server(allowed_hosts="hub.example.com") as (server, sockets):
        bad_host = b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n"
        good = b"GET /healthz HTTP/1.1\r\nHost: hub.example.com\r\n\r\n"
        with_body = b"GET /healthz HTTP/1.1\r\nHost: hub.example.com\r\nContent-Length: 2\r\n\r\n{}"
        sockets += queue_up(server.port, [HANDSHAKE] * DRAIN_FROM + [bad_host, good, with_body])
        started = server._threads_started
        server._handle_request_noblock()  # drains: the first two answered now, the third served first
        assert read_response(sockets[DRAIN_FROM])[0] == 403
        status, _, body = read_response(sockets[DRAIN_FROM + 1])
        assert status == 200 and b'"connections"' in body, body
        assert read_response(sockets[DRAIN_FROM + 2])[0] == 200
        assert server._threads_started == started + 1  # the one with a body: a thread
        assert len(server._taken) == DRAIN_FROM


def test_past_the_queue_bound_a_drain_turns_away_the_newest_and_serves_the_oldest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a drain holds past its bound is shed from its end (503), and what it keeps is served when
    its turn comes, not judged again against the queue behind it: judged at its turn, every request was
    refused while arrivals kept the count past the bound (a storm's new hub, on a loaded machine,
    admitted none for minutes). The bound here is RUSTY_WS_MAX_ACCEPT_QUEUE (no seconds held: below)."""
    monkeypatch.setattr(accept_gate, "HOLD_SECONDS", 0.0)
    bound = 5
    with stepped_server(max_accept_queue=bound) as (server, sockets):
        queued = DRAIN_FROM + 8
        sockets += queue_up(server.port, [HANDSHAKE] * queued + [HEALTHZ])
        assert server.accept_queue() == queued + 1
        started = server._threads_started
        server._handle_request_noblock()  # drains everything, answers the /healthz, sheds, serves the oldest
        assert read_response(sockets[queued])[0] == 200
        assert len(server._taken) == bound - 1 and server.accept_queue() == 0
        assert read_response(sockets[0])[0] == 101
        server.service_actions()  # the rest of what it kept
        assert not server._taken
        kept = [read_response(sock)[0] for sock in sockets[1:bound]]
        assert kept == [101] * (bound - 1), kept
        for sock in sockets[bound:queued]:
            status, headers, _ = read_response(sock)
            assert status == 503 and 1 <= int(headers["retry-after"]) <= MAX_RETRY_AFTER
        assert server._threads_started == started + bound  # a thread each for the kept, none for the shed


@pytest.mark.parametrize("rate, kept", [(1, 2 * DRAIN_FROM), (20, 80), (10**6, None)])
def test_a_drain_keeps_what_the_hub_serves_in_the_seconds_it_holds(rate: float, kept: int | None,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain keeps what the hub serves in HOLD_SECONDS at its rate, never less than
    RUSTY_WS_MAX_ACCEPT_QUEUE, never more than HOLD_MAX: held to RUSTY_WS_MAX_ACCEPT_QUEUE alone, a storm's
    new hub turned away thousands of clients it would have served within the Retry-After it gave them,
    and admitted half what it did without turning any away (docs/performance.md, "Reconnect storm,
    session 15")."""
    monkeypatch.setattr(accept_gate, "HOLD_SECONDS", 4.0)
    monkeypatch.setattr(accept_gate, "HOLD_MAX", 3 * DRAIN_FROM)
    with stepped_server(max_accept_queue=2 * DRAIN_FROM) as (server, sockets):
        monkeypatch.setattr(server._pacer, "_tick", lambda now: None)  # the rate stays what the test sets
        server._pacer.rate = rate
        keeps = kept if kept is not None else 3 * DRAIN_FROM  # a fast hub: HOLD_MAX
        assert server._gate.hold() == keeps
        queued = 3 * DRAIN_FROM + 10
        sockets += queue_up(server.port, [HANDSHAKE] * queued)
        started = server._threads_started
        server._handle_request_noblock()  # drains everything, sheds past the bound, serves the oldest
        assert len(server._taken) == keeps - 1 and server.accept_queue() == 0
        for sock in sockets[keeps:]:
            status, headers, _ = read_response(sock)
            assert status == 503 and int(headers["retry-after"]) >= 1
        server.service_actions()
        assert [read_response(sock)[0] for sock in sockets[:keeps]] == [101] * keeps
        assert server._threads_started == started + keeps


def test_what_earlier_drains_kept_stays_when_the_rate_measured_shrinks_the_hold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The hold is sized from the guess until the rate is measured; a lower measure shrinks it, and
    what earlier drains kept is not turned away for that (a storm's hub turned 3,111 held clients
    away in one second, 7-11 s away, then emptied its queue and idled), unless it is more than the
    hub serves in HELD_LONGEST. What comes after is held to the new bound."""
    monkeypatch.setattr(accept_gate, "HOLD_SECONDS", 1.0)
    monkeypatch.setattr(accept_gate, "DRAIN_EVERY", 0.0)
    with stepped_server(max_accept_queue=DRAIN_FROM) as (server, sockets):
        monkeypatch.setattr(server._pacer, "_tick", lambda now: None)  # the rate stays what the test sets
        server._pacer.rate = 3 * DRAIN_FROM  # the guess: keeps 3 * DRAIN_FROM
        first = queue_up(server.port, [HANDSHAKE] * (3 * DRAIN_FROM))
        sockets += first
        server._handle_request_noblock()  # drains all, keeps all, serves the oldest
        assert len(server._taken) == 3 * DRAIN_FROM - 1
        server._pacer.rate = DRAIN_FROM  # measured: the hold is now DRAIN_FROM
        late = queue_up(server.port, [HANDSHAKE] * DRAIN_FROM)
        sockets += late
        server._gate.next_drain = 0.0
        server._handle_request_noblock()  # drains the late ones: they are turned away, the kept stay
        assert len(server._taken) == 3 * DRAIN_FROM - 2
        for sock in late:
            assert read_response(sock)[0] == 503
        # Past HELD_LONGEST of what the hub now serves, the newest of what was kept go too.
        monkeypatch.setattr(accept_gate, "HELD_LONGEST", 1.0)
        sockets += queue_up(server.port, [HANDSHAKE])
        server._gate.next_drain = 0.0
        server._handle_request_noblock()
        assert len(server._taken) == DRAIN_FROM - 1
        server.service_actions()
        statuses = [read_response(sock)[0] for sock in first]
        assert statuses == [101] * (DRAIN_FROM + 2) + [503] * (2 * DRAIN_FROM - 2), statuses


def test_while_what_a_drain_took_is_served_the_next_drain_waits_its_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """One drain per request served (accepting, peeking at and turning away every newcomer each time)
    left a starved hub admitting one handshake a second; between drains it now serves what it holds."""
    monkeypatch.setattr(accept_gate, "DRAIN_EVERY", 10 * WAIT)  # the interval does not pass by itself here
    with stepped_server(max_accept_queue=DRAIN_FROM + 4) as (server, sockets):
        sockets += queue_up(server.port, [HANDSHAKE] * (DRAIN_FROM + 4))
        server._handle_request_noblock()  # drains all, serves the first
        assert read_response(sockets[0])[0] == 101 and len(server._taken) == DRAIN_FROM + 3
        sockets += queue_up(server.port, [HANDSHAKE] * 2)  # newcomers, while what it took waits
        server._handle_request_noblock()  # within DRAIN_EVERY: no drain, the next held one is served
        assert read_response(sockets[1])[0] == 101
        assert server.accept_queue() == 2 and len(server._taken) == DRAIN_FROM + 2
        server._gate.next_drain = 0.0  # the interval has passed
        server._handle_request_noblock()  # drains the two newcomers, serves the next held one
        assert read_response(sockets[2])[0] == 101
        assert server.accept_queue() == 0 and len(server._taken) == DRAIN_FROM + 3


# --------------------------------------------------------------------------- the 4200's window


@pytest.mark.parametrize("measured, rate, reason", [
    (None, 2.0, "server restarting; reconnect within 1.5 s"),  # 3 connections at the setting's 2 a second
    (1.0, 1.0, "server restarting; reconnect within 3.0 s"),   # the measure, below the setting
    (0.1, 0.5, "server restarting; reconnect within 6.0 s"),   # ... but never below a quarter of it
    (2.5, 2.5, "server restarting; reconnect within 1.2 s"),   # above it: the measure (3 / 2.5)
    (4.0, 4.0, "server restarting"),                           # a window under a second: the plain reason
])
def test_the_4200_window_uses_the_rate_the_hub_measured(measured: float | None, rate: float, reason: str) -> None:
    """On a quiet machine the window of RUSTY_WS_RECONNECT_RATE (6.7 s for 10,000) was the whole storm,
    while the hub had measured 1,800 a second; on a loaded one 10,000 came in 6.7 s to a hub doing
    300-900, which turned away thousands at a fifth of a handshake each."""
    with running_server(reconnect_rate=2) as server:
        clients = [WsClient.connect(f"c{index}", server.ws_url, **FAST_CLIENT) for index in range(3)]
        hooks = [Hooks(client) for client in clients]
        server.hub.handshake_rate = measured
        assert server.hub.reconnect_rate == rate
    for hook in hooks:
        assert hook.disconnected.get(timeout=WAIT) == (4200, reason)
    for client in clients:
        client.close()


def test_the_servers_pacer_tells_the_hub_what_it_measured() -> None:
    app = create_app(hub_config(reconnect_rate=1500))
    server = make_server(app, "127.0.0.1", 0)  # not serving: the pacer is driven by hand
    try:
        pacer = server._pacer
        pacer._load = Load(waiting=100)  # the hub saturated throughout
        assert state_of(app).hub.handshake_rate is None
        saturated_second(pacer, 0, 1)
        saturated_second(pacer, 1, 2500)
        saturated_second(pacer, 2, 1)
        assert state_of(app).hub.handshake_rate == 2500
        assert state_of(app).hub.reconnect_rate == 2500  # what the 4200's window will assume
    finally:
        server.server_close()
        state_of(app).hub.shutdown(WAIT)
