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

    .venv/bin/python scripts/redis_receive_cost.py [--messages 100000] [--no-hiredis]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]


def measure(url: str, port: int, messages: int) -> float:
    """One round: the listener thread's CPU seconds per message."""
    import redis

    from rusty_ws.brokers.redis_codec import channel_name, encode_envelope
    from rusty_ws.brokers.redis_listener import Listener
    from rusty_ws.protocol import Delivery

    key = ("T", "s1")
    got = [0]
    done = threading.Event()

    def deliver(_: Delivery) -> None:
        got[0] += 1
        if got[0] == messages:
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
        envelope = encode_envelope("other", Delivery("bench", "T", {"n": 1, "text": "x" * 60},
                                                     "2026-12-01T00:00:00.000000Z", "s1"))
        one = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(envelope), envelope)
        assert listener._thread.ident is not None
        clock = time.pthread_getcpuclockid(listener._thread.ident)
        with tempfile.TemporaryFile() as commands:
            commands.write(one * messages)
            commands.seek(0)
            before = time.clock_gettime(clock)
            subprocess.run(["redis-cli", "-p", str(port), "--pipe"], stdin=commands, stdout=subprocess.DEVNULL,
                           check=True, timeout=300)
            if not done.wait(300):
                raise RuntimeError(f"only {got[0]} of {messages} messages arrived")
            return (time.clock_gettime(clock) - before) / messages
    finally:
        listener.stop(5.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--no-hiredis", action="store_true", help="hide hiredis (redis-py's own parser)")
    args = parser.parse_args()
    if args.no_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # import hiredis now fails
    from benchlib.redis_server import RedisProcess

    server = RedisProcess()
    try:
        rounds = [measure(server.url, server.port, args.messages) for _ in range(3)]
    finally:
        server.stop()
    print(f"listener CPU per received message: {min(rounds) * 1e6:.2f} us (rounds: "
          f"{', '.join(f'{r * 1e6:.2f}' for r in rounds)}; {'without' if args.no_hiredis else 'with'} hiredis; "
          f"load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
