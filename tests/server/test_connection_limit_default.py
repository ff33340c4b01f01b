"""The stand-alone hub's connection limit: derived from its file-descriptor limit unless it is set.

``rusty-ws serve`` raises its soft ``RLIMIT_NOFILE`` to the hard limit and
accepts what that holds less a reserve (``rusty_ws/server/limits.py``); an
explicit ``RUSTY_WS_MAX_CONNECTIONS`` wins. (Under gunicorn the rule stays:
``test_gunicorn.py``.)
"""

from __future__ import annotations

import logging
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import websocket
from crowd import Crowd, handshake

from rusty_ws import create_app
from rusty_ws.config import MAX_CONNECTIONS_EMBEDDED, MAX_PENDING_REQUESTS
from rusty_ws.server import limits
from rusty_ws.server.accept_gate import PEEK_WAIT
from rusty_ws.server.hub_server import make_server
from rusty_ws.server.state import state_of
from support import WAIT, Client, HubProcess, http, hub_config


def soft_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as handle:
        line = next(line for line in handle if line.startswith("Max open files"))
    return int(line.split()[3])


def test_unset_the_limit_comes_from_the_descriptors_raised_to_the_hard_limit_and_logged() -> None:
    with HubProcess(nofile=(300, 700)) as hub:
        expected = limits.connections_for(700, MAX_PENDING_REQUESTS)
        assert expected == 700 - limits.DESCRIPTOR_RESERVE - MAX_PENDING_REQUESTS
        assert "raised the file-descriptor limit (RLIMIT_NOFILE) from 300 to its hard limit 700" in hub.wait_for_line(
            "raised the file-descriptor limit")
        assert (f"accepting up to {expected} WebSocket connections: RUSTY_WS_MAX_CONNECTIONS unset, derived from "
                f"the file-descriptor limit 700") in hub.wait_for_line("accepting up to")
        assert f"at most {expected} WebSocket connections at once" in hub.wait_for_line("at most")
        assert soft_limit(hub.process.pid) == 700
        with Client(f"ws://127.0.0.1:{hub.port}/ws") as client:
            assert client.sync() == []


def test_pending_requests_count_against_the_descriptors_and_a_small_limit_still_leaves_half() -> None:
    with HubProcess(nofile=(700, 700), max_pending_requests=100) as hub:
        assert f"at most {700 - limits.DESCRIPTOR_RESERVE - 100} WebSocket" in hub.wait_for_line("at most")
        assert "raised the file-descriptor limit" not in hub.log  # already at the hard limit
    with HubProcess(nofile=(200, 200)) as hub:
        assert "at most 100 WebSocket" in hub.wait_for_line("at most")


def test_an_explicit_setting_wins_and_the_limit_is_still_raised() -> None:
    with HubProcess(nofile=(300, 700), max_connections=2) as hub:
        assert "at most 2 WebSocket connections at once" in hub.wait_for_line("at most")
        assert "derived from the file-descriptor limit" not in hub.log
        assert soft_limit(hub.process.pid) == 700
        with Client(f"ws://127.0.0.1:{hub.port}/ws") as one, Client(f"ws://127.0.0.1:{hub.port}/ws") as two:
            assert one.sync() == two.sync() == []
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                websocket.create_connection(f"ws://127.0.0.1:{hub.port}/ws", timeout=WAIT)
            assert refused.value.status_code == 503
            assert http("GET", hub.http_url + "/healthz")[2]["connections"] == 2
    with HubProcess(nofile=(300, 300), max_connections=5000) as hub:
        assert "RUSTY_WS_MAX_CONNECTIONS=5000 is more than the file-descriptor limit 300" in hub.wait_for_line(
            "is more than")


def test_a_default_hub_accepts_more_connections_than_the_old_default_and_reaches_them_all() -> None:
    count = MAX_CONNECTIONS_EMBEDDED + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 2 * count + 100, f"this test needs a hard descriptor limit of {2 * count + 100} (has {hard})"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * count + 100), hard))  # this side holds them too
    try:
        with HubProcess() as hub:
            crowd = Crowd(hub.port, count)
            try:
                assert {member.status for member in crowd.members} == {101}
                assert http("GET", hub.http_url + "/healthz")[2]["connections"] == count
                with Client(f"ws://127.0.0.1:{hub.port}/ws") as publisher:
                    publisher.send('publish-json:{"topic": "T", "session_id": "s", "payload": 7}')
                    crowd.wait_for(lambda text: '"payload":7' in text.replace(" ", ""), timeout=10 * WAIT)
            finally:
                crowd.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_embedding_app_keeps_the_fixed_default() -> None:
    from flask import Flask

    from rusty_ws import PubSub

    app = Flask(__name__)
    app.config["RUSTY_WS_JWT_SECRET_KEY"] = "k" * 32
    PubSub(app)
    try:
        assert state_of(app).settings.max_connections == MAX_CONNECTIONS_EMBEDDED
    finally:
        state_of(app).hub.shutdown(WAIT)
    standalone = create_app({"RUSTY_WS_JWT_SECRET_KEY": "k" * 32})
    try:
        assert state_of(standalone).settings.max_connections == limits.connections_for(
            resource.getrlimit(resource.RLIMIT_NOFILE)[0], MAX_PENDING_REQUESTS)
    finally:
        state_of(standalone).hub.shutdown(WAIT)


class FakeRlimit:
    """``resource``'s NOFILE calls against a pretend (soft, hard) pair: what ``setrlimit`` was asked is kept."""

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)
        self.asked: list[tuple[int, int]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        self.asked.append(limits)
        self.limits = limits


def test_an_unlimited_hard_limit_raises_the_soft_one_to_the_kernels_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRlimit(1024, resource.RLIM_INFINITY)
    monkeypatch.setattr(limits.resource, "getrlimit", fake.getrlimit)
    monkeypatch.setattr(limits.resource, "setrlimit", fake.setrlimit)
    monkeypatch.setattr(limits, "_nr_open", lambda: 1048576)
    said: list[tuple[int, str]] = []
    assert limits.raise_descriptor_limit(said) == 1048576
    assert fake.asked == [(1048576, resource.RLIM_INFINITY)]  # the hard limit is left unlimited
    assert said == [(logging.INFO, "raised the file-descriptor limit (RLIMIT_NOFILE) from 1024 to its hard limit 1048576")]
    said.clear()
    assert limits.raise_descriptor_limit(said) == 1048576 and said == [] and len(fake.asked) == 1  # already there
    fake.limits = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    assert limits.raise_descriptor_limit(said) == 1048576 and said == [] and len(fake.asked) == 1  # nothing to raise


def test_the_kernels_ceiling_is_read_from_proc_and_guessed_without_it(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    with open("/proc/sys/fs/nr_open", encoding="ascii") as handle:
        assert limits._nr_open() == int(handle.read())
    monkeypatch.setattr(limits, "NR_OPEN_PATH", str(tmp_path / "missing"))
    assert limits._nr_open() == 1 << 20


#: The listen backlog ``HubServer`` asks for (``request_queue_size``; docs/configuration.md, "The other defaults").
LISTEN_BACKLOG = 4096


def test_the_listen_backlog_is_what_the_kernel_reports_for_the_listening_socket() -> None:
    """``ss`` shows a listening socket's backlog as its Send-Q: the hub's 4096, capped by ``net.core.somaxconn``."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("needs ss (iproute2): the backlog is not in /proc/net/tcp")
    with open("/proc/sys/net/core/somaxconn", encoding="ascii") as handle:
        somaxconn = int(handle.read())
    app = create_app(hub_config())
    server = make_server(app, "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        listed = subprocess.run([ss, "-H", "-l", "-n", "-t", f"sport = :{port}"], capture_output=True, text=True,
                                timeout=WAIT)
        assert listed.returncode == 0, listed.stderr
        rows = [line.split() for line in listed.stdout.splitlines() if line.strip()]
        assert len(rows) == 1 and rows[0][0] == "LISTEN", listed.stdout
        assert int(rows[0][2]) == min(LISTEN_BACKLOG, somaxconn), listed.stdout  # Send-Q: the backlog
    finally:
        server.server_close()
        state_of(app).hub.shutdown(WAIT)


def answers_of(sockets: list[socket.socket], timeout: float) -> list[int | None]:
    """Each socket's HTTP status (None: closed without one), reading all of them on one selector until ``timeout``."""
    heads = {sock: b"" for sock in sockets}
    answers: dict[socket.socket, int | None] = {}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while len(answers) < len(sockets) and time.monotonic() < deadline:  # bounded by the deadline
            for key, _ in selector.select(deadline - time.monotonic()):
                sock = key.fileobj
                try:
                    chunk = sock.recv(4096)
                except ConnectionError:
                    chunk = b""
                heads[sock] += chunk
                if b"\r\n" in heads[sock] or not chunk:
                    line = heads[sock].split(b"\r\n", 1)[0].split()
                    answers[sock] = int(line[1]) if len(line) > 1 and b"\r\n" in heads[sock] else None
                    selector.unregister(sock)
    assert len(answers) == len(sockets), f"{len(sockets) - len(answers)} sockets got no answer in {timeout} s"
    return [answers[sock] for sock in sockets]


def test_a_drain_leaves_the_descriptor_reserve_free_and_every_client_gets_an_answer() -> None:
    """A storm's queue taken whole by a hub with few descriptors: it holds no more than the reserve leaves.

    The hub is stopped (SIGSTOP) while 300 handshakes wait in its accept queue, more than
    its 200 descriptors; on SIGCONT the accept thread drains the queue (``AcceptGate.drain``).
    Every client gets 101 (at most the derived limit) or 503, and accept() never fails for
    want of descriptors: the drain left ``DESCRIPTOR_RESERVE`` free (before, it took sockets
    until accept() failed with EMFILE, leaving nothing for Redis or anything else the process opens).
    """
    with HubProcess(nofile=(200, 200), max_pending_requests=16) as hub:
        fits = limits.connections_for(200, 16)
        assert f"at most {fits} WebSocket" in hub.wait_for_line("at most")
        hub.process.send_signal(signal.SIGSTOP)
        sockets: list[socket.socket] = []
        try:
            for _ in range(300):
                sock = socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT)  # the kernel accepts it
                sockets.append(sock)
                sock.sendall(handshake(hub.port))
        finally:
            hub.process.send_signal(signal.SIGCONT)
        try:
            answers = answers_of(sockets, 10 * WAIT)
            assert set(answers) <= {101, 503}, answers
            assert 0 < answers.count(101) <= fits  # how many got in before 503 server_busy is the scheduler's
            assert "accept() failed" not in hub.log, hub.log
            assert http("GET", hub.http_url + "/healthz")[2]["connections"] <= fits
        finally:
            for sock in sockets:
                sock.close()


def test_idle_sockets_past_the_descriptors_room_are_turned_away_and_accept_never_fails() -> None:
    """Sockets that send nothing, more than a 128-descriptor hub has room for past its reserve.

    Each one the hub takes on holds a descriptor until its head's timeout; past its room
    (``AcceptGate.room``) one is turned away (503) once ``PEEK_WAIT`` shows nothing came,
    instead of being let in to wait (which ran the process out of descriptors: accept()
    failed with EMFILE). Every socket is closed within the head's timeout and the pacing's
    waits, and the hub serves afterwards.
    """
    timeout = 2.0
    with HubProcess(nofile=128, request_head_timeout=timeout, max_pending_requests=1000) as hub:
        sockets = [socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT) for _ in range(100)]
        try:
            answers = answers_of(sockets, timeout + 100 * PEEK_WAIT + 2 * WAIT)
            assert 503 in answers and None in answers, answers  # turned away; and taken on, closed at the timeout
            assert "refused a request with 503" in hub.wait_for_line("refused a request with 503")
            assert "accept() failed" not in hub.log, hub.log
            assert http("GET", hub.http_url + "/healthz")[2]["status"] == "ok"
            with Client(f"ws://127.0.0.1:{hub.port}/ws") as client:
                assert client.sync() == []
        finally:
            for sock in sockets:
                sock.close()
