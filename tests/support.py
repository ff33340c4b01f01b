"""Test support: a real hub on a free loopback port, and small clients that never sleep.

Every wait here blocks on something observable (a frame, EOF, a condition)
with a timeout in units of ``MS``, scaled by ``RUSTY_WS_TESTS_TIMEOUT_FACTOR``
for slow machines. Every timing knob a test sets (server deadlines, client
backoff, keepalive) is a multiple of ``MS`` too, so the factor stretches them
all alike.

The one home of the tests' helpers: the running hub, raw clients, the
WsClient hook queues, the error-reply reader and the decoder of server frames.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import websocket
from flask import Flask

from rusty_ws import WsClient, create_app
from rusty_ws.protocol import encode_ping
from rusty_ws.server.hub import Hub
from rusty_ws.server.hub_server import HubServer, make_server
from rusty_ws.server.serve import stop
from rusty_ws.server.state import state_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MS = 0.001 * float(os.environ.get("RUSTY_WS_TESTS_TIMEOUT_FACTOR", "1"))
#: The usual wait for something that should happen at once.
WAIT = 3000 * MS
#: How often a polling loop of the tests' own (a serving thread, a fake peer) looks up.
POLL = 50 * MS
#: WsClient options for tests that reconnect: a quick backoff, and the usual wait for replies.
FAST_CLIENT: dict[str, float] = {"backoff_initial": 50 * MS, "backoff_cap": 200 * MS, "timeout": WAIT}
SECRET = "test-secret-" + "x" * 32


@dataclass
class RunningServer:
    app: Flask
    server: HubServer
    prefix: str = ""

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.prefix}/ws"

    @property
    def hub(self) -> Hub:
        return state_of(self.app).hub

    def token(self, username: str, session_id: str | None = None) -> str:
        return state_of(self.app).tokens.issue(username, session_id).token

    def connect(self, token: str | None = None, **kwargs: Any) -> "Client":
        url = self.ws_url + (f"?token={token}" if token else "")
        return Client(url, **kwargs)

    def wait_connections(self, at_most: int) -> None:
        assert self.hub.wait_connections(at_most, WAIT), (
            f"still {self.hub.counts()['connections']} connections, wanted at most {at_most}"
        )


@contextlib.contextmanager
def dropped_as_seen() -> Iterator[list[Any]]:
    """Every delivery a WsClient of this process drops as seen already (``Subscriptions.admit`` said
    False), while the block runs: a test of "once" must check it stays empty, or a hub that sent a
    message twice would pass, its repeat hidden by the client."""
    from rusty_ws.client.subscriptions import Subscriptions

    dropped: list[Any] = []
    admit = Subscriptions.admit

    def counting(self: Subscriptions, delivery: Any) -> bool:
        if admit(self, delivery):
            return True
        dropped.append(delivery)
        return False

    Subscriptions.admit = counting  # type: ignore[method-assign]
    try:
        yield dropped
    finally:
        Subscriptions.admit = admit  # type: ignore[method-assign]


def hub_config(**overrides: Any) -> dict[str, Any]:
    """Settings for a test hub: a known secret, development mode (as the stand-alone hub has it,
    also for the tests' embedding apps), then ``overrides`` (names without the prefix;
    ``dev_mode=None`` for the embedding default)."""
    config: dict[str, Any] = {"RUSTY_WS_JWT_SECRET_KEY": SECRET, "RUSTY_WS_DEV_MODE": True}
    config.update({f"RUSTY_WS_{key.upper()}": value for key, value in overrides.items()})
    return config


@contextlib.contextmanager
def running_server(app: Flask | None = None, prefix: str = "", port: int = 0,
                   **overrides: Any) -> Iterator[RunningServer]:
    """Serve ``app`` (default: ``create_app`` with ``overrides``) on 127.0.0.1, on ``port`` (0: a free one).

    Always shuts the hub and the server down and joins the serving thread.
    """
    app = app or create_app(hub_config(**overrides))
    server = make_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL},
                              name="test-server", daemon=True)
    thread.start()
    try:
        yield RunningServer(app, server, prefix)
    finally:
        stop(app, server, timeout=WAIT)
        thread.join(WAIT)
        server.server_close()
        assert not thread.is_alive(), "the server thread did not stop"


class Client:
    """A raw WebSocket client (websocket-client) with waits that never sleep."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.ws = websocket.create_connection(url, timeout=WAIT, **kwargs)

    def send(self, text: str) -> None:
        self.ws.send(text)

    def recv(self, timeout: float = WAIT) -> str:
        self.ws.settimeout(timeout)
        return self.ws.recv()

    def recv_json(self) -> dict[str, Any]:
        return json.loads(self.recv())

    def sync(self) -> list[str]:
        """Send ``ping`` and return every frame that arrived before its ``pong``.

        The server handles a connection's commands in order, so once the pong is
        here, everything sent before the ping has been carried out.
        """
        self.send(encode_ping())
        before = []
        for _ in range(10_000):
            message = self.recv()
            if message == "pong":
                return before
            before.append(message)
        raise AssertionError("no pong among 10,000 frames")

    def command(self, text: str) -> list[str]:
        """Send one command and return what the server answered to it (before a sync pong)."""
        self.send(text)
        return self.sync()

    def recv_close(self, timeout: float = WAIT) -> tuple[int, str]:
        """Read until the server's close frame; return its code and reason (1006 on EOF)."""
        self.ws.settimeout(timeout)
        for _ in range(100_000):
            try:
                opcode, frame = self.ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketConnectionClosedException:
                return 1006, ""
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return parse_close(frame.data)
        raise AssertionError("no close frame among 100,000 frames")

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.ws.close()


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """One HTTP request; returns (status, headers, JSON body or text)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if body is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            status, head, text = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, head, text = exc.code, dict(exc.headers), exc.read()
    try:
        return status, head, json.loads(text)
    except ValueError:
        return status, head, text.decode("utf-8", "replace")


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer from ``sock``: status, headers (lower-case names) and the body its Content-Length gives.

    Raises:
        ConnectionError: the server hung up (or reset) before a whole head.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server hung up without an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in lines[1:])
    headers = {name.strip().lower(): value.strip() for name, _, value in fields}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def raw_http(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as it is on a new connection and read the answer (see ``read_response``).

    The server may answer, and hang up, before it has read all of ``data``.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_response(sock)


class HubProcess:
    """``rusty-ws serve`` in a process of its own on a free port, for what is measured from outside.

    Memory (``VmRSS``), CPU time and descriptor limits are the process's, so
    they are read from ``/proc/<pid>``. ``settings`` are ``RUSTY_WS_*`` names
    without the prefix, passed as environment variables; ``nofile`` sets the
    process's ``RLIMIT_NOFILE`` (soft and hard, or a (soft, hard) pair) before it starts; ``args`` go to ``rusty-ws serve``
    (e.g. ``["--log-level", "debug"]``). Its log is kept in ``lines``.
    """

    def __init__(self, nofile: int | tuple[int, int] | None = None, args: tuple[str, ...] = (),
                 **settings: Any) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", JWT_SECRET_KEY=SECRET)
        # Strings as they are (as an operator writes them), everything else as JSON.
        env.update({f"RUSTY_WS_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
                    for name, value in settings.items()})

        def limit_descriptors() -> None:  # runs in the child, before the hub starts
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile if isinstance(nofile, tuple) else (nofile, nofile))

        self.lines: list[str] = []
        self._lines_changed = threading.Condition()  # guards lines
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from rusty_ws.cli import main; main()", "serve", "--port", "0", *args],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, preexec_fn=limit_descriptors,  # noqa: PLW1509 - only setrlimit
        )
        self._reader = threading.Thread(target=self._read_log, name="test-hub-log", daemon=True)
        self._reader.start()
        try:
            ready = self.wait_for_line("rusty_ws hub on ws://", 3 * WAIT)
        except AssertionError:
            self.stop()
            raise
        self.port = int(ready.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:  # ends at EOF, when the process has exited
            with self._lines_changed:
                self.lines.append(line)
                self._lines_changed.notify_all()

    @property
    def log(self) -> str:
        with self._lines_changed:
            return "".join(self.lines)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for_line(self, text: str, timeout: float = WAIT) -> str:
        """The first log line that holds ``text``, waiting up to ``timeout`` for it."""
        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        with self._lines_changed:
            if not self._lines_changed.wait_for(lambda: found() is not None or self.process.poll() is not None,
                                                timeout) or found() is None:
                raise AssertionError(f"no log line with {text!r}:\n" + "".join(self.lines))
            return found()  # type: ignore[return-value]

    def rss(self) -> int:
        """The process's resident memory, in bytes (``VmRSS``)."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far, in seconds."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)"
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def stop(self) -> None:
        """SIGTERM (the hub's clean stop), or SIGKILL if it does not end in time; then join the log reader."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(3 * WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)
        self._reader.join(WAIT)

    def __enter__(self) -> "HubProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def login(server: RunningServer, username: str = "testuser", password: str = "password",
          session_id: str | None = None) -> str:
    body: dict[str, Any] = {"username": username, "password": password}
    if session_id:
        body["session_id"] = session_id
    status, _, reply = http("POST", server.http_url + "/auth/token", body)
    assert status == 200, reply
    return reply["token"]


def tokens_in(records: list[Any], tokens: set[str]) -> list[str]:
    """The log lines among ``records`` that hold one of ``tokens``, or any token's signature or claims part."""
    parts = set()
    for token in tokens:
        parts.add(token)
        parts.update(part for part in token.split(".") if len(part) >= 16)  # a JWT's claims and signature
    leaked = []
    for record in records:
        line = record.getMessage() + (record.exc_text or "")
        if any(part in line for part in parts):
            leaked.append(f"{record.name}: {line[:300]}")
    return leaked


def error_of(replies: list[str]) -> dict[str, Any]:
    """The body of the one ``error:`` reply that ``replies`` must be (fails on anything else)."""
    assert len(replies) == 1 and replies[0].startswith("error:"), replies
    return json.loads(replies[0][len("error:"):])


# --------------------------------------------------------------------------- servers in their own processes


#: Ports ``free_port`` picks from: below the kernel's ephemeral range, where no connection's own
#: end lands (a bench or test with thousands of clients uses up that range's ports as it connects).
_LISTEN_PORTS = (10_000, 32_768)


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _LISTEN_PORTS[1]


def free_port() -> int:
    """A loopback port that was free a moment ago (the caller binds it soon after).

    Taken at random below the ephemeral range: a port the kernel hands out (``bind`` to 0)
    is one it may hand the next moment to a connection's own end, and then the server
    that meant to listen on it finds it in use (seen while another process held 10,000
    client connections). Falls back to the kernel's choice if none is free there.
    """
    low, high = _LISTEN_PORTS[0], min(_LISTEN_PORTS[1], _ephemeral_low())
    for _ in range(100 if high - low >= 1000 else 0):
        port = random.randrange(low, high)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """A server command in a process group of its own, logging to a file in ``log_dir`` (default ``cwd``).

    ``__enter__`` starts it and returns once ``http://127.0.0.1:{port}{ready_path}``
    gives any HTTP answer (polled every ``POLL``, for at most ``ready_timeout``),
    failing early, with the log, if the process exits. ``stop()`` (and
    ``__exit__``) sends ``stop_signal`` to the whole group (a shell, gunicorn's
    workers) and waits for the leader, at most ``WAIT * 3``; ``returncode`` is
    then its exit status. ``__exit__`` asserts it is ``expect_returncode``
    unless that is ``None``.
    """

    def __init__(self, command: list[str], *, port: int, cwd: str, env: dict[str, str] | None = None,
                 ready_path: str = "/healthz", ready_timeout: float = 10 * WAIT,
                 stop_signal: int = signal.SIGTERM, expect_returncode: int | None = 0,
                 log_dir: str | None = None) -> None:
        self.command = command
        self.port = port
        self.cwd = cwd
        self.env = env
        self.ready_path = ready_path
        self.ready_timeout = ready_timeout
        self.stop_signal = stop_signal
        self.expect_returncode = expect_returncode
        self.log_path = os.path.join(log_dir or cwd, f"server-{port}.log")
        self.returncode: int | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def __enter__(self) -> "ServerProcess":
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        pause = threading.Event()
        for _ in range(max(1, int(self.ready_timeout / POLL))):
            if self.process.poll() is not None:
                self.stop()
                raise AssertionError(f"{self.command} exited ({self.returncode}) before answering:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.base + self.ready_path, timeout=WAIT):
                    return self
            except urllib.error.HTTPError:
                return self  # an answer all the same
            except OSError:
                pause.wait(POLL)
        self.stop()
        raise AssertionError(f"{self.command} did not answer within {self.ready_timeout:.0f} s:\n{self.output()}")

    def stop(self) -> int:
        """Signal the group and wait for the leader (bounded; killed past it). Idempotent; returns the status."""
        if self.returncode is None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, self.stop_signal)
            try:
                self.returncode = self.process.wait(WAIT * 3)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(WAIT)
                raise AssertionError(f"{self.command} did not stop on {self.stop_signal!r}:\n{self.output()}") from None
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)  # what the leader left behind
        return self.returncode

    def __exit__(self, *exc: object) -> None:
        code = self.stop()
        if exc[0] is None and self.expect_returncode is not None:
            assert code == self.expect_returncode, f"{self.command} exited with {code}:\n{self.output()}"


# --------------------------------------------------------------------------- WsClient callbacks as queues


class Hooks:
    """A WsClient's connection-state callbacks, turned into queues a test can wait on.

    ``connected`` receives the client, ``disconnected`` ``(code, reason)`` and
    ``reconnecting`` ``(attempt, delay)``. This replaces the client's own
    ``on_connect``, ``on_disconnect`` and ``on_reconnecting``.
    """

    def __init__(self, client: WsClient) -> None:
        self.connected: queue.Queue = queue.Queue()
        self.disconnected: queue.Queue = queue.Queue()
        self.reconnecting: queue.Queue = queue.Queue()
        client.on_connect = self.connected.put
        client.on_disconnect = lambda c, code, reason: self.disconnected.put((code, reason))
        client.on_reconnecting = lambda c, attempt, delay: self.reconnecting.put((attempt, delay))


def messages(client: WsClient, topic: str) -> queue.Queue:
    """The payloads ``client`` receives on ``topic``, in a queue (``client.on_message``)."""
    received: queue.Queue = queue.Queue()
    client.on_message(topic, received.put)
    return received


def deliveries(client: WsClient, topic: str) -> queue.Queue:
    """The whole ``Delivery`` objects ``client`` receives on ``topic``, in a queue (``client.on_delivery``)."""
    received: queue.Queue = queue.Queue()
    client.on_delivery(topic, received.put)
    return received


# --------------------------------------------------------------------------- frames on the wire


def client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True, mask: bytes | None = None, rsv: int = 0,
                 length: int | None = None) -> bytes:
    """A client frame, masked with ``mask`` (random by default); ``length`` may lie in the header."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def subscribed_and_ponged(sock: socket.socket) -> None:
    """The WebSocket on ``sock`` (past its 101) subscribes to ``T`` and pings: returns once the ``pong``
    comes, with no ``error:`` before it (a raw socket's proof that its connection's loop runs)."""
    sock.sendall(client_frame(b"subscribe:T") + client_frame(b"ping"))
    got = b""
    while b"pong" not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    assert b"error" not in got, got


#: The RSV1 bit: set on the first frame of a message compressed with permessage-deflate.
RSV1 = 0x40


def parse_close(payload: bytes) -> tuple[int, str]:
    """A close frame's code and reason; 1005 when it carries none (RFC 6455 7.1.5). The reason must be UTF-8."""
    if not payload:
        return 1005, ""
    assert len(payload) >= 2, f"a close payload of one byte: {payload!r}"
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8")


class Frame(NamedTuple):
    """One server frame: its first byte (FIN, RSV1-3, opcode) and its payload."""

    first: int
    payload: bytes

    @property
    def opcode(self) -> int:
        return self.first & 0x0F

    @property
    def rsv(self) -> int:
        return self.first & 0x70

    def text(self) -> str:
        """The payload as text (it must be UTF-8)."""
        return self.payload.decode("utf-8")

    def close(self) -> tuple[int, str]:
        """The code and reason of a close frame."""
        assert self.opcode == 0x8, f"not a close frame: {self}"
        return parse_close(self.payload)


class FrameReader:
    """Server frames out of a byte stream: the tests' one decoder.

    Written here, apart from ``rusty_ws.frames``, so that it checks that module
    instead of agreeing with it. It insists on what RFC 6455 5.2 asks of every
    server frame: no mask, the length in its shortest form, control frames
    whole and at most 125 bytes, and no RSV bit beyond ``allowed_rsv`` (``RSV1``
    where permessage-deflate was negotiated).
    """

    def __init__(self, allowed_rsv: int = 0) -> None:
        self.allowed_rsv = allowed_rsv
        #: Bytes fed in and not yet part of a whole frame.
        self.buffer = b""

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return the frames it completed."""
        self.buffer += data
        frames = []
        while True:
            frame, _ = self._split()
            if frame is None:
                return frames
            frames.append(frame)

    def needed(self) -> int:
        """How many more bytes the next frame needs at least (never reads past a frame)."""
        return self._split(consume=False)[1]

    def _split(self, consume: bool = True) -> tuple[Frame | None, int]:
        buffer = self.buffer
        if len(buffer) < 2:
            return None, 2 - len(buffer)
        first, second = buffer[0], buffer[1]
        assert not second & 0x80, "server frames are never masked"
        assert not first & 0x70 & ~self.allowed_rsv, f"RSV bits that nothing negotiated: {first:#04x}"
        length, start = second & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return None, 4 - len(buffer)
            length, start = struct.unpack("!H", buffer[2:4])[0], 4
            assert length >= 126, f"a length of {length} in the 16-bit form"
        elif length == 127:
            if len(buffer) < 10:
                return None, 10 - len(buffer)
            length, start = struct.unpack("!Q", buffer[2:10])[0], 10
            assert 65536 <= length < 1 << 63, f"a length of {length} in the 64-bit form"
        if first & 0x08:
            assert first & 0x80 and length <= 125, f"a fragmented or long control frame: {first:#04x}, {length}"
        end = start + length
        if len(buffer) < end:
            return None, end - len(buffer)
        if consume:
            self.buffer = buffer[end:]
        return Frame(first, buffer[start:end]), 0


def decode_frame(data: bytes) -> Frame:
    """The one whole server frame that ``data`` is, nothing more, nothing less."""
    reader = FrameReader(allowed_rsv=RSV1)
    frames = reader.feed(data)
    assert len(frames) == 1 and not reader.buffer, (frames, reader.buffer)
    return frames[0]


class RawSocket:
    """A hand-made WebSocket client, for what websocket-client will not send (or answer)."""

    def __init__(self, port: int, path: str = "/ws", extensions: str | None = None,
                 early: bytes = b"") -> None:
        """Open the WebSocket; ``early``: bytes sent in the same write as the request, before the 101."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        key = base64.b64encode(os.urandom(16)).decode()
        offer = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{offer}"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode() + early
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, f"handshake refused: {head!r}"
            head += chunk
        self.status = int(head.split()[1])
        lines = head.decode("latin-1").split("\r\n")[1:]
        self.headers = {name.strip().lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines if line)}
        deflate = "permessage-deflate" in self.headers.get("sec-websocket-extensions", "")
        self.frames = FrameReader(allowed_rsv=RSV1 if deflate else 0)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"abcd",
                   rsv: int = 0) -> None:
        self.sock.sendall(client_frame(payload, opcode, fin, mask, rsv))

    def _read_exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            assert chunk, "the connection ended inside a frame"
            data += chunk
        return data

    def recv_frame(self, timeout: float = WAIT) -> Frame:
        """The next server frame; reads no byte past it."""
        self.sock.settimeout(timeout)
        for _ in range(100):  # the first two bytes, the extended length, the payload
            frames = self.frames.feed(self._read_exactly(self.frames.needed()))
            if frames:
                return frames[0]
        raise AssertionError("no whole frame after 100 reads")

    def sync(self) -> list[Frame]:
        """Send ``ping`` and return the frames that arrived before its ``pong``."""
        self.send_frame(0x1, encode_ping().encode())
        frames = []
        for _ in range(1000):
            frame = self.recv_frame()
            if frame == (0x81, b"pong"):  # replies are never compressed
                return frames
            frames.append(frame)
        raise AssertionError("no pong among 1,000 frames")

    def read_until_eof(self, timeout: float = WAIT) -> bytes:
        """Everything the server sends until it ends the connection."""
        self.sock.settimeout(timeout)
        data = b""
        for _ in range(100_000):
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
        raise AssertionError("the server never ended the connection")

    def close(self) -> None:
        self.sock.close()


class ClientEvents:
    """What a ``WsClient``'s callbacks saw, in one ordered log, with waits that never sleep.

    Entries: ``("message", delivery)`` for each delivery of ``topics``,
    ``("connect",)``, ``("disconnect", code)``, ``("recovery_failed", topic, session_id, reason)``.
    Every entry is added on the client's dispatcher thread, in the order it runs them.
    """

    def __init__(self, client: WsClient, *topics: str) -> None:
        self._changed = threading.Condition()
        self.log: list[tuple[Any, ...]] = []
        for topic in topics:
            client.on_delivery(topic, lambda delivery: self._add("message", delivery))
        client.on_connect = lambda c: self._add("connect")
        client.on_disconnect = lambda c, code, reason: self._add("disconnect", code)
        client.on_recovery_failed = lambda c, topic, session_id, reason: self._add(
            "recovery_failed", topic, session_id, reason)

    def _add(self, *entry: Any) -> None:
        with self._changed:
            self.log.append(entry)
            self._changed.notify_all()

    def entries(self, kind: str) -> list[tuple[Any, ...]]:
        with self._changed:
            return [entry[1:] for entry in self.log if entry[0] == kind]

    def payloads(self) -> list[Any]:
        return [delivery.payload for (delivery,) in self.entries("message")]

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, timeout), f"waited in vain for {what}; log: {self.log[-5:]}"

    def wait_count(self, kind: str, count: int, timeout: float = WAIT) -> list[tuple[Any, ...]]:
        """Block until ``count`` entries of ``kind`` arrived; return them all."""
        self.wait(lambda: sum(entry[0] == kind for entry in self.log) >= count, f"{count} x {kind}", timeout)
        return self.entries(kind)

    def wait_payload(self, payload: Any, timeout: float = WAIT) -> list[Any]:
        """Block until a message with ``payload`` arrived; return every payload so far."""
        self.wait(lambda: any(entry[0] == "message" and entry[1].payload == payload for entry in self.log),
                  f"payload {payload!r}", timeout)
        return self.payloads()


def wait_hung_up(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """What the server sends until it ends the connection (EOF or reset)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@contextlib.contextmanager
def nodes(count: int, url: str, **overrides: object) -> Iterator[list[RunningServer]]:
    """``count`` hubs on their own ports, all on the broker at ``url`` (a Redis or a Redis Cluster)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_server(broker_url=url, **overrides)) for _ in range(count)]
