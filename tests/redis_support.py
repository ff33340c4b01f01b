"""Test support for the Redis broker: a private redis-server on a free loopback port.

Never the machine's shared Redis on 6379: each ``RedisServer`` is its own
process, started and killed by the test, and it can be killed and started
again on the same port to make an outage. Readiness is read from the
server's own log ("Ready to accept connections"), never waited for by sleeping.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import redis

from rusty_ws.brokers.redis import channel_name, encode_envelope
from rusty_ws.protocol import Delivery, encode_publish
from support import WAIT, Client, free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """One redis-server process on 127.0.0.1, without persistence."""

    def __init__(self, port: int | None = None) -> None:
        assert REDIS_SERVER, "redis-server is missing: scripts/test.sh installs it"
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="rusty_ws-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server; return once it accepts connections."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._wait_for_line(b"Ready to accept connections")

    def _wait_for_line(self, wanted: bytes) -> None:
        assert self.process is not None and self.process.stdout is not None
        seen = b""
        deadline = time.monotonic() + WAIT
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while wanted not in seen:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.kill()
                    raise AssertionError(f"redis-server did not get ready: {seen[-2000:]!r}")
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"redis-server exited: {seen[-2000:]!r}")
                seen += chunk
        # Nothing reads the log from now on: stop redis from blocking on a full pipe.
        self.process.stdout.close()

    def kill(self) -> None:
        """SIGKILL the server (no goodbye to its clients) and reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(WAIT)
            if self.process.stdout and not self.process.stdout.closed:
                self.process.stdout.close()
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=WAIT)

    def run_id(self) -> str:
        """The running server's ``run_id`` (``INFO server``: new at every start), as the history's meta keeps it."""
        with contextlib.closing(self.client()) as client:
            return str(client.info("server")["run_id"])

    def numsub(self, channel: bytes) -> int:
        with contextlib.closing(self.client()) as client:
            return dict(client.pubsub_numsub(channel))[channel]

    def channels(self, pattern: str = "*") -> set[bytes]:
        with contextlib.closing(self.client()) as client:
            return set(client.pubsub_channels(pattern))

    def subscriber_channels(self) -> dict[str, int]:
        """Channels each rusty_ws node subscribes to, from CLIENT LIST (name -> sub count)."""
        with contextlib.closing(self.client()) as client:
            return {entry["name"]: int(entry["sub"]) for entry in client.client_list()
                    if entry["name"].startswith("rusty_ws-") and int(entry["sub"])}

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


SENTINEL = "Sentinel"
BARRIER = "Barrier"
_barriers = itertools.count(1)


def publishes_landed(client: Client, session: str) -> list[str]:
    """Return once Redis has taken every publish that ``client``'s node queued before this call.

    Returns what else ``client`` received meanwhile (deliveries from other nodes).

    A node's Redis sender is first in, first out, and a publish with an ``id`` is
    acknowledged only once Redis replied to it: when this publish's ``ack:``
    arrives, Redis has every PUBLISH its node queued before it. Works for nodes in
    other processes too (gunicorn workers, behind nginx).
    """
    replies = client.command(encode_publish(BARRIER, "landed", session_id=session, id=f"barrier-{next(_barriers)}"))
    acks = [reply for reply in replies if reply.startswith("ack:")]
    assert len(acks) == 1, replies
    return [reply for reply in replies if not reply.startswith("ack:")]


def read_until_sentinel(client: Client, limit: int = 10_000) -> list[dict[str, Any]]:
    """Every delivery before the next sentinel, which marks the end of what was published before it.

    Redis hands a node the messages of all channels in the order it took the
    PUBLISHes, so a sentinel published after the real messages arrives after
    every one of them that was meant for this client, from whichever node.
    """
    got = []
    for _ in range(limit):
        message = json.loads(client.recv())
        if message["topic"] == SENTINEL:
            return got
        got.append(message)
    raise AssertionError(f"no sentinel among {limit} frames")


def publish_sentinel(redis_server: RedisServer, session: str, prefix: str = "rusty_ws") -> None:
    """Publish the sentinel straight into Redis, as a node named ``test-sentinel`` would.

    Not through a hub: a hub delivers to its own clients at once, which could
    overtake messages from other nodes still on their way to it through Redis.
    Through Redis, every node gets the sentinel after everything Redis took before it,
    so the nodes' publishes must have landed first (``publishes_landed``).
    """
    sentinel = Delivery(publisher_name="test", topic=SENTINEL, payload="end",
                        timestamp="2024-01-24T10:25:37Z", session_id=session)
    with contextlib.closing(redis_server.client()) as client:
        client.publish(channel_name(prefix, SENTINEL, session), encode_envelope("test-sentinel", sentinel))


def publish_across_nodes(redis_server: RedisServer, clients: dict[str, Client], publishes: list[tuple[str, str]],
                         session_of: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Each (name, topic) publish goes out from that client; returns every client's deliveries.

    Replies to the publisher come with its ``pong``; the rest are read up to the
    sentinels published into Redis once every node's sender has handed Redis its
    publishes (``publishes_landed``).
    """
    received: dict[str, list[dict[str, Any]]] = {name: [] for name in clients}
    for name, topic in publishes:
        replies = clients[name].command(encode_publish(topic, f"{topic} from {name}", publisher_name=name,
                                                       timestamp="2024-01-24T10:25:37Z",
                                                       session_id=session_of[name]))
        received[name] += [json.loads(reply) for reply in replies]
    for name, client in clients.items():
        received[name] += [json.loads(reply) for reply in publishes_landed(client, session_of[name])]
    for session in sorted(set(session_of.values())):
        publish_sentinel(redis_server, session)
    for name, client in clients.items():
        received[name] += read_until_sentinel(client)
    return received
