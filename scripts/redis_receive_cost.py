#!/usr/bin/env python3
"""What one received message costs the Redis broker's listener thread, in CPU.

Starts a private redis-server on a free loopback port and a ``Listener``
(``rusty_ws/brokers/redis_listener.py``) subscribed to one pair, whose deliver
callback only counts; ``redis-cli --pipe`` (another process) then PUBLISHes N
envelopes of the benchmark's ~100-byte delivery from another node. Reported:
the listener thread's own CPU clock per message (receive, parse, decode the
envelope, dispatch; not the hub's delivery), best of 3. A thread's CPU clock
does not count time spent waiting for the GIL or the CPU, so it holds up on a
loaded machine better than a rate.

With ``--envelope``: ``v1`` (history off, from another node: the default),
``own`` (history off, this node's own: dropped by their first bytes, unread),
``v2`` (one delivery with its offset, as the history script published before
it merged publishes), ``v3`` (``--items`` deliveries with their offsets in one
envelope, as it publishes now), ``v4`` (``--items`` deliveries without history in
one envelope, as the sender merges them). The figure is per delivery, not per envelope.

    .venv/bin/python scripts/redis_receive_cost.py [--messages 100000] [--no-hiredis] [--envelope v3 --items 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]


def envelope_of(kind: str, items: int, delivery: Any) -> tuple[bytes, int]:
    """The envelope to publish and how many deliveries the listener hands on for each."""
    from rusty_ws.brokers.redis_codec import encode_envelope, merge_envelopes

    if kind in ("v1", "own"):
        return encode_envelope("measured" if kind == "own" else "other", delivery), 0 if kind == "own" else 1
    if kind == "v4":
        return merge_envelopes("other", [encode_envelope("other", delivery)] * items), items
    body = delivery.encode()
    if kind == "v2":
        return b'{"v":2,"node":"other","seq":7,"offset":1,"epoch":"ab12cd34ef56ab78","delivery":%s}' % body, 1
    listed = b",".join(b'{"seq":%d,"offset":%d,"delivery":%s}' % (n, n, body) for n in range(1, items + 1))
    return b'{"v":3,"node":"other","epoch":"ab12cd34ef56ab78","items":[%s]}' % listed, items


def measure(url: str, port: int, messages: int, kind: str = "v1", items: int = 1) -> float:
    """One round: the listener thread's CPU seconds per delivery (per envelope for ``own``)."""
    import redis

    from rusty_ws.brokers.redis_codec import channel_name
    from rusty_ws.brokers.redis_listener import Listener
    from rusty_ws.protocol import Delivery

    key = ("T", "s1")
    got = [0]
    done = threading.Event()

    envelope, each = envelope_of(kind, items, Delivery("bench", "T", {"n": 1, "text": "x" * 60},
                                                       "2026-12-01T00:00:00.000000Z", "s1"))
    envelopes = max(1, messages // max(1, each))
    expected = envelopes * each

    def deliver(_: Delivery) -> None:
        got[0] += 1
        if got[0] == expected:
            done.set()

    client = redis.Redis.from_url(url, socket_timeout=5.0, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    listener = Listener(client=client, errors=(redis.exceptions.RedisError, OSError), prefix="rusty_ws",
                        node_id="measured", deliver=deliver, keys=lambda keys=None: [key], subscribe_timeout=5.0,
                        max_envelope_size=65536)
    listener.start(5.0)
    try:
        if not listener.wait_connected(True, 10.0):
            raise RuntimeError("the listener did not connect")
        channel = channel_name("rusty_ws", *key)
        one = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(envelope), envelope)
        assert listener._thread.ident is not None
        clock = time.pthread_getcpuclockid(listener._thread.ident)
        with tempfile.TemporaryFile() as commands:
            commands.write(one * envelopes)
            if not each:  # nothing is delivered: end with one delivery from another node to know when
                other, _ = envelope_of("v1", 1, Delivery("bench", "T", 1, "t", "s1"))
                commands.write(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                               % (len(channel), channel, len(other), other))
                expected = 1
            commands.seek(0)
            before = time.clock_gettime(clock)
            subprocess.run(["redis-cli", "-p", str(port), "--pipe"], stdin=commands, stdout=subprocess.DEVNULL,
                           check=True, timeout=300)
            if not done.wait(300):
                raise RuntimeError(f"only {got[0]} of {expected} deliveries arrived")
            return (time.clock_gettime(clock) - before) / (envelopes * max(1, each))
    finally:
        listener.stop(5.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--no-hiredis", action="store_true", help="hide hiredis (redis-py's own parser)")
    parser.add_argument("--envelope", choices=("v1", "own", "v2", "v3", "v4"), default="v1")
    parser.add_argument("--items", type=int, default=50, help="deliveries per version-3 envelope")
    args = parser.parse_args()
    if args.no_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # import hiredis now fails
    from benchlib.redis_server import RedisProcess

    server = RedisProcess()
    try:
        rounds = [measure(server.url, server.port, args.messages, args.envelope, args.items) for _ in range(3)]
    finally:
        server.stop()
    print(f"listener CPU per received message: {min(rounds) * 1e6:.2f} us (rounds: "
          f"{', '.join(f'{r * 1e6:.2f}' for r in rounds)}; {'without' if args.no_hiredis else 'with'} hiredis; "
          f"envelope {args.envelope}{f' of {args.items}' if args.envelope in ('v3', 'v4') else ''}; "
          f"load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
