#!/usr/bin/env python3
"""The receiving node's Python work per delivery of another node's envelope, under callgrind, without Redis.

Node 2 of ``bench.py``'s ``xpublish`` receives node 1's envelopes: with history
on a version-5 envelope (``{"v":5,"node":...,"epoch":...,"first":F,"seqs":[...],
"deliveries":[...]}``, what the history script publishes for a run), with it off
a version-4 one (what node 1's sender merges). This driver hands such envelopes
of another node, ``RUN`` deliveries each, to a real ``Listener._on_delivery``
wired to a real hub as ``RedisBroker`` wires it (with history: ``SharedStreams``
and a ``RedisHistory``; without: the hub's own road), inside one
``Writer.batch`` per envelope, with one watcher of the pair whose socket (a
socketpair) is drained. Variants: ``on`` (version 5) and ``off`` (version 4).
Instructions per delivery are the difference of two runs' totals (``SHORT`` and
``LONG`` deliveries) over the difference of their deliveries, so start-up
cancels out. Run another tree with ``PYTHONPATH``::

    nice -n 10 .venv/bin/python scripts/callgrind_receive_node.py measure [--variants on,off] [--run 200]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

NODE = "node-receiving"
OTHER = "node-publishing"
FIELDS = {"publisher_name": "bench", "topic": "T", "payload": "x" * 80, "timestamp": "2026-12-01T14:00:00Z",
          "session_id": "s1"}


def run(variant: str, deliveries: int, run_length: int) -> None:
    """One child: ``deliveries`` deliveries from another node, ``run_length`` to an envelope."""
    import redis

    from benchlib.callgrind import drain
    from rusty_ws.brokers.base import Broker
    from rusty_ws.brokers.redis_codec import (
        RUN_ENVELOPE_VERSION,
        channel_name,
        encode_envelope,
        merge_envelopes,
        own_envelope_prefix,
    )
    from rusty_ws.brokers.redis_history import RedisHistory, Route
    from rusty_ws.brokers.redis_listener import Listener
    from rusty_ws.config import Settings
    from rusty_ws.protocol import Delivery
    from rusty_ws.server.hub import Hub

    client = redis.Redis(host="127.0.0.1", port=1)  # never connected: only its settings are read
    history_on = variant == "on"

    class StandIn(Broker):
        """The Redis broker's wiring of the hub and the history, without its threads."""

        history: RedisHistory | None = None

        def start(self, deliver: Any, keys: Any) -> None:
            self.deliver = deliver

        def publish(self, delivery: Any, on_landed: Any = None) -> Any:
            raise AssertionError("nothing is published here")

        def history_store(self, size: int, ttl: float, window: float, max_bytes: int | None = None) -> Any:
            if not history_on:
                return None
            self.history = RedisHistory(
                node_id=lambda: NODE, route=lambda session_id: Route(client, lambda *a: None, True),
                deliver=lambda delivery: self.deliver(delivery),  # noqa: PLW0108
                prefix="rusty_ws", size=size, ttl=ttl, window=window, max_envelope_size=1024 * 1024,
                max_bytes=max_bytes, keeps=lambda channel: True, submit_for=lambda session_id: lambda *a: None)
            return self.history

    broker = StandIn()
    hub = Hub(Settings.from_config({"RUSTY_WS_JWT_SECRET_KEY": "x" * 40, "RUSTY_WS_DEV_MODE": True,
                                    "RUSTY_WS_HISTORY_SIZE": 100 if history_on else 0}), broker)

    def from_channel(delivery: Any) -> Any:  # RedisBroker._from_channel
        history = broker.history
        if history is not None and not history.arrived(delivery):
            return None
        return hub.deliver_local(delivery)

    wiring = {name: getattr(broker, name) for name in ("deliver_own", "deliver_remote")
              if getattr(broker, name, None) is not None}  # trees before them lack them
    history = broker.history
    listener = Listener(client=client, errors=(OSError,), prefix="rusty_ws", node_id=NODE, deliver=from_channel,
                        keys=lambda among=None: [("T", "s1")], subscribe_timeout=1.0, max_envelope_size=1024 * 1024,
                        batch=hub.writer.batch, take_own=history.take_own if history is not None else None,
                        deliver_run=hub.deliver_run, **wiring)
    channel = channel_name("rusty_ws", "T", "s1")
    listener._channels[channel] = ("T", "s1")
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    box = hub.writer.attach(ours, "watcher")
    hub.registry.subscribe(box, "T", "s1")
    encoded = Delivery(**FIELDS).encode()
    prefix = own_envelope_prefix(OTHER, RUN_ENVELOPE_VERSION)
    top = received = 0
    for _ in range(deliveries // run_length):
        if history_on:
            envelope = b'%s"epoch":"ab12cd34ab12cd34","first":%d,"seqs":[%s],"deliveries":[%s]}' % (
                prefix, top + 1, b",".join(b"%d" % (top + n) for n in range(1, run_length + 1)),
                b",".join([encoded] * run_length))
        else:
            envelope = merge_envelopes(OTHER, [encode_envelope(OTHER, Delivery(**FIELDS), encoded)] * run_length)
        top += run_length
        with listener.batch():
            listener._on_delivery(channel, envelope)
        received += drain(theirs)
    if received < deliveries * 100:  # ~200 bytes a frame
        raise SystemExit(f"the watcher got {received} bytes for {deliveries} deliveries")
    os._exit(0)  # the hub's threads are daemons: nothing to wait for


def measure(args: argparse.Namespace) -> None:
    from benchlib.callgrind import instructions_per_unit

    for variant in args.variants.split(","):
        per = instructions_per_unit(__file__, variant, (args.short, args.long), args.run)
        print(f"  history {variant:3} runs of {args.run}: {per:>8,} instructions/delivery", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    child = sub.add_parser("run", help="one child (what valgrind runs)")
    child.add_argument("variant", choices=("on", "off"))
    child.add_argument("deliveries", type=int)
    child.add_argument("run_length", type=int)
    both = sub.add_parser("measure", help="instructions per delivery of each variant")
    both.add_argument("--variants", default="on,off", help="comma-separated, of: on, off")
    both.add_argument("--run", type=int, default=200, help="deliveries to an envelope")
    both.add_argument("--short", type=int, default=2000)
    both.add_argument("--long", type=int, default=6000)
    args = parser.parse_args()
    if args.mode == "run":
        run(args.variant, args.deliveries, args.run_length)
    else:
        measure(args)


if __name__ == "__main__":
    main()
