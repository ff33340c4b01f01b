"""rusty_ws as the benchmark runs it: ``python run_rusty.py PORT [MODE]``, logging at WARNING.

Modes: ``deflate`` sets ``RUSTY_WS_COMPRESSION`` to zlib's default level, 6;
``nohiredis`` hides the hiredis package (redis-py's and the sender's pure-Python
parsing); ``sync-publish`` makes the Redis broker publish as it did before its
sender: one synchronous PUBLISH round trip on the publisher's thread. The broker
comes from ``RUSTY_WS_BROKER_URL`` in the environment (default: in memory).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys

MODE = sys.argv[2] if len(sys.argv) > 2 else ""
if MODE == "nohiredis":
    sys.modules["hiredis"] = None  # type: ignore[assignment]  # import hiredis now fails

from rusty_ws import create_app  # noqa: E402
from rusty_ws.server.serving import serve  # noqa: E402


def publish_synchronously() -> None:
    """The Redis broker's publish before the sender: deliver here, then PUBLISH and wait for the reply."""
    from rusty_ws.brokers.redis import RedisBroker, channel_name, encode_envelope

    def publish(self, delivery, on_landed=None):  # type: ignore[no-untyped-def]
        listener = self._current()
        envelope = encode_envelope(listener.node_id, delivery)
        landed = self._deliver(delivery)
        listener.client.publish(channel_name(self.channel_prefix, delivery.topic, delivery.session_id), envelope)
        if on_landed is not None:
            on_landed(landed)
        return landed

    RedisBroker.publish = publish  # type: ignore[method-assign]


if __name__ == "__main__":
    if os.environ.get("BENCH_STACKS"):  # a file: SIGUSR1 appends every thread's stack to it (a stalled run)
        faulthandler.register(signal.SIGUSR1, open(os.environ["BENCH_STACKS"], "a"), all_threads=True)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("rusty_ws.server.stop").setLevel(logging.INFO)  # the stop's phases, one line
    if MODE == "sync-publish":
        publish_synchronously()
    app = create_app({
        "RUSTY_WS_JWT_SECRET_KEY": "benchmark-" + "x" * 32,
        "RUSTY_WS_MAX_CONNECTIONS": 20_000,
        "RUSTY_WS_MAX_SUBSCRIPTIONS": 100,
        "RUSTY_WS_COMPRESSION": 6 if MODE == "deflate" else 0,
    })
    print("ready", flush=True)
    serve(app, "127.0.0.1", int(sys.argv[1]), exit_when_stopped=True)  # as `rusty-ws serve` does
