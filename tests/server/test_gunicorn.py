"""The hub under real gunicorn masters (gthread: several processes, several threads each) on one Redis.

The command is the one ``docs/scaling.md`` gives. Clients cannot choose the
worker that accepts them, so the seed's scenario runs over two masters of two
workers each (one with --preload, whose workers are forked after the app, and
its broker, were made): whichever worker each client lands on, every delivery
must arrive exactly once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import websocket
from gunicorn.config import KNOWN_SETTINGS
from test_seed_scenario import PUBLISHES, SESSION_OF, SUBSCRIPTIONS, check_deliveries

from redis_support import SENTINEL, RedisServer, free_port, publish_across_nodes, redis_server
from rusty_ws import create_app, gunicorn_conf
from rusty_ws.protocol import encode_register_name, encode_subscribe
from rusty_ws.server.state import state_of
from support import MS, SECRET, WAIT, Client, http

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SETTINGS = {setting.name for setting in KNOWN_SETTINGS}
#: gunicorn's --graceful-timeout (whole seconds on its command line): far longer than a 4200 close takes.
GRACEFUL_TIMEOUT = 10_000 * MS
#: How long a master may take to listen: it imports gunicorn, Flask and the app first, which took
#: more than 9 s (WAIT * 3) once on a loaded 2-core machine; only a master that never starts waits it out.
START_WAIT = WAIT * 10


class Gunicorn:
    """One gunicorn master and its workers, on a free loopback port; its log is kept in ``lines``."""

    def __init__(self, redis_url: str, *, workers: int, threads: int, max_connections: int | None,
                 preload: bool = False) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rusty_ws-gunicorn-")
        command = [sys.executable, "-m", "gunicorn", "-c", "python:rusty_ws.gunicorn_conf",
                   "--workers", str(workers), "--threads", str(threads),
                   "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", str(round(GRACEFUL_TIMEOUT))]
        if preload:
            command.append("--preload")
        if "control_socket" in _SETTINGS:  # newer gunicorns open one in $HOME unless told otherwise
            command += ["--control-socket", os.path.join(self.dir, "gunicorn.ctl")]
        command.append("rusty_ws:create_app()")
        env = dict(os.environ, RUSTY_WS_BROKER_URL=redis_url, JWT_SECRET_KEY=SECRET)
        env.pop("RUSTY_WS_MAX_CONNECTIONS", None)
        if max_connections is not None:  # None: the default
            env["RUSTY_WS_MAX_CONNECTIONS"] = str(max_connections)
        self.lines: list[str] = []
        self._lines_lock = threading.Lock()
        self._listening = threading.Event()
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_log, name="test-gunicorn-log", daemon=True)
        self._reader.start()
        if not self._listening.wait(START_WAIT):
            self.stop()
            raise AssertionError("gunicorn did not start:\n" + self.log)
        self._wait_serving()

    def _wait_serving(self) -> None:
        """Until a worker answers a request. "Listening at:" is the master's bind; each worker loads the app
        after it (Flask, the hub: 0.25 s here idle, 0.5 s sharing its core with a busy loop, past a client's
        WAIT at a load average in the hundreds, where a first handshake timed out in 1 of 20 runs), and only
        then accepts. A request sent meanwhile waits in
        the listen backlog, so one request with a long timeout is the wait: no polling."""
        url = f"http://127.0.0.1:{self.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=START_WAIT) as response:
                response.read()
        except urllib.error.HTTPError:
            pass  # a worker answered (whatever it said: the test judges /healthz itself)
        except OSError as exc:
            self.stop()
            raise AssertionError(f"no gunicorn worker answered {url} within {START_WAIT:.0f} s ({exc}):\n"
                                 + self.log) from None

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:  # ends at EOF, when the master has exited
            with self._lines_lock:
                self.lines.append(line)
            if "Listening at:" in line:
                self._listening.set()

    @property
    def log(self) -> str:
        with self._lines_lock:
            return "".join(self.lines)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def connect(self) -> Client:
        return Client(self.ws_url)

    def terminate(self) -> int:
        """SIGTERM the master (a graceful stop) and return its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(WAIT * 3)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)
        self._reader.join(WAIT)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def gunicorn(redis_url: str, **options: object) -> Iterator[Gunicorn]:
    master = Gunicorn(redis_url, **options)  # type: ignore[arg-type]
    try:
        yield master
    finally:
        master.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def test_seed_scenario_over_two_gunicorn_masters(redis: RedisServer) -> None:
    with gunicorn(redis.url, workers=2, threads=8, max_connections=6) as plain, \
            gunicorn(redis.url, workers=2, threads=8, max_connections=6, preload=True) as preloaded:
        masters = [plain, preloaded]
        clients = {name: masters[i % 2].connect() for i, name in enumerate(SUBSCRIPTIONS)}
        try:
            for name, (session, topics) in SUBSCRIPTIONS.items():
                client = clients[name]
                client.send(encode_register_name(name))
                for topic in [*topics, SENTINEL]:
                    client.send(encode_subscribe(topic, session))
                assert client.sync() == [], f"{name} got replies to its set-up"
            check_deliveries(publish_across_nodes(redis, clients, PUBLISHES, SESSION_OF))
            for client in clients.values():
                assert client.sync() == []
            # Every worker that serves has its own node id (the preloaded ones too).
            nodes = set(redis.subscriber_channels())
            assert len(nodes) >= 2, nodes
        finally:
            for client in clients.values():
                client.close()
        for master in masters:
            assert master.terminate() == 0, master.log
        assert "Traceback" not in plain.log + preloaded.log, plain.log + preloaded.log


def test_connection_limit_below_threads_and_sigterm_closes_with_4200(redis: RedisServer) -> None:
    with gunicorn(redis.url, workers=1, threads=4, max_connections=3) as master:
        clients = [master.connect() for _ in range(3)]
        try:
            for client in clients:
                assert client.command(encode_subscribe("T", "s")) == []
            # The fourth WebSocket is refused, and the thread left over still answers HTTP.
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                master.connect()
            assert refused.value.status_code == 503
            status, _, health = http("GET", f"http://127.0.0.1:{master.port}/healthz")
            assert status == 200 and health["connections"] == 3
            assert health["broker"]["name"] == "redis" and health["broker"]["connected"] is True

            master.process.send_signal(signal.SIGTERM)
            # Told to reconnect now, long before gunicorn's graceful timeout.
            assert [client.recv_close()[0] for client in clients] == [4200, 4200, 4200]
            assert master.process.wait(WAIT) == 0, master.log
        finally:
            for client in clients:
                client.close()


def test_worker_hook_reports_a_connection_limit_that_starves_http(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app({"RUSTY_WS_JWT_SECRET_KEY": SECRET, "RUSTY_WS_BROKER_URL": redis.url,
                      "RUSTY_WS_MAX_CONNECTIONS": 8})
    previous = signal.getsignal(signal.SIGTERM)
    try:
        gunicorn_conf.post_worker_init(SimpleNamespace(wsgi=app, cfg=SimpleNamespace(threads=8),
                                                       handle_exit=lambda *_: None))
        assert "RUSTY_WS_MAX_CONNECTIONS=8 is not below --threads=8" in caplog.text
    finally:
        signal.signal(signal.SIGTERM, previous)
        state_of(app).hub.shutdown(WAIT)


def test_under_gunicorn_the_default_is_not_derived_from_descriptors_and_the_threads_rule_stays() -> None:
    """The stand-alone hub's derived default is for ``rusty-ws serve``; a gunicorn worker's threads bound it."""
    with gunicorn("memory://", workers=1, threads=8, max_connections=None) as master:
        with master.connect() as client:
            assert client.command(encode_subscribe("T", "s")) == []
            status, _, health = http("GET", f"http://127.0.0.1:{master.port}/healthz")
            assert status == 200 and health["connections"] == 1
        assert master.terminate() == 0
    assert "RUSTY_WS_MAX_CONNECTIONS=1000 is not below --threads=8" in master.log, master.log
    assert "derived from the file-descriptor limit" not in master.log and "raised the file-descriptor limit" not in master.log
