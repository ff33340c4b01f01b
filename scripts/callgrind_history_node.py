#!/usr/bin/env python3
"""The publishing node's Python work per publish with history in Redis, under callgrind, without Redis.

``redis_publish_cost.py --callgrind`` counts a real node against a real Redis,
but the hub's delivery is not in it, and how many publishes the sender finds
waiting (valgrind's pace) moves its count by up to 15%. This driver runs, in
one process and in lock step, what node 1 of ``bench.py``'s ``xpublish`` does
per publish with history on and a watcher of the pair on the node, every part
real except the sockets to Redis:

- ``p``, the connection's thread: ``Hub.publish`` -> ``SharedStreams.publish``
  -> ``RedisHistory.publish`` -> ``RedisSender.submit`` (a new ``Delivery``
  each, as a connection makes one per ``publish-json``);
- ``s``, the sender's thread: the batch taken from the queue, merged
  (``_coalesce``), packed (``redis_link._pack``), the script's usual reply
  split (``_split``) and answered (``_answer``);
- ``l``, the listener's thread: the version-5 envelope the script would
  publish for each merged run, handed to ``Listener._on_delivery`` (``take_own``,
  then the hub: ``SharedStreams.deliver_own``, the writer), inside one
  ``Writer.batch``; the watcher's socket (a socketpair) is drained.

``RUN`` publishes go at a time (the sender merges them into one run of the
script, up to 200). Instructions per publish are the difference of two runs'
totals (``SHORT`` and ``LONG`` publishes) over the difference of their
publishes, so start-up cancels out; the stages ``p``, ``ps`` and ``psl`` give
each thread's share by difference (with ``p`` alone, what would pile up unanswered
is dropped after each run). Run a tree other than this one with ``PYTHONPATH``::

    nice -n 10 .venv/bin/python scripts/callgrind_history_node.py measure [--stages p,ps,psl] [--run 200]
"""

from __future__ import annotations

import argparse
import inspect
import os
import socket
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

NODE = "node-callgrind"
FIELDS = {"publisher_name": "bench", "topic": "T", "payload": "x" * 80, "timestamp": "2026-12-01T14:00:00Z",
          "session_id": "s1"}


def run(stages: str, publishes: int, run_length: int) -> None:
    """One child: ``publishes`` publishes through the stages named (``p``, ``ps`` or ``psl``)."""
    import redis

    from benchlib.callgrind import drain
    from rusty_ws.brokers import redis_link
    from rusty_ws.brokers.base import Broker
    from rusty_ws.brokers.redis_codec import RUN_ENVELOPE_VERSION, channel_name, own_envelope_prefix
    from rusty_ws.brokers.redis_history import RedisHistory, Route
    from rusty_ws.brokers.redis_listener import Listener
    from rusty_ws.brokers.redis_sender import MAX_BATCH, RedisSender, _coalesce, _split
    from rusty_ws.config import Settings
    from rusty_ws.protocol import Delivery
    from rusty_ws.server.hub import Hub

    client = redis.Redis(host="127.0.0.1", port=1)  # never connected: only its settings are read
    sender = RedisSender(client=client, errors=(OSError,), node_id=NODE, max_commands=10 ** 6, max_bytes=10 ** 9)
    listening: list[Listener] = []

    class StandIn(Broker):
        """The Redis broker's wiring of the history, without its threads."""

        history: RedisHistory

        def start(self, deliver: Any, keys: Any) -> None:
            self.deliver = deliver

        def publish(self, delivery: Any, on_landed: Any = None) -> Any:
            raise AssertionError("history on: the hub publishes through the history")

        def history_store(self, size: int, ttl: float, window: float, max_bytes: int | None = None) -> Any:
            # deliver and keeps look up what exists only later (start's deliver, the listener): late-bound.
            self.history = RedisHistory(
                node_id=lambda: NODE, route=lambda session_id: Route(client, sender.submit, True),
                deliver=lambda delivery: self.deliver(delivery),  # noqa: PLW0108
                prefix="rusty_ws", size=size, ttl=ttl, window=window, max_envelope_size=1024 * 1024,
                max_bytes=max_bytes, keeps=lambda channel: listening[0].listens_to(channel),  # noqa: PLW0108
                submit_for=lambda session_id: sender.submit)
            return self.history

    broker = StandIn()
    hub = Hub(Settings.from_config({"RUSTY_WS_JWT_SECRET_KEY": "x" * 40, "RUSTY_WS_DEV_MODE": True,
                                    "RUSTY_WS_HISTORY_SIZE": 100}), broker)
    history = broker.history
    own = {"deliver_own": broker.deliver_own} if getattr(broker, "deliver_own", None) else {}  # trees before it
    listener = Listener(client=client, errors=(OSError,), prefix="rusty_ws", node_id=NODE, deliver=hub.deliver_local,
                        keys=lambda among=None: [("T", "s1")], subscribe_timeout=1.0, max_envelope_size=1024 * 1024,
                        batch=hub.writer.batch, take_own=history.take_own, deliver_run=hub.deliver_run, **own)
    listening.append(listener)
    channel = channel_name("rusty_ws", "T", "s1")
    listener._channels[channel] = ("T", "s1")
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    box = hub.writer.attach(ours, "watcher")
    hub.registry.subscribe(box, "T", "s1")
    prefix = own_envelope_prefix(NODE, RUN_ENVELOPE_VERSION)
    # The run_id of the Redis, as the sender's connection reads it (trees before it merge without one).
    run_id = ("5e" * 20,) if "run_id" in inspect.signature(_coalesce).parameters else ()
    top = received = 0
    for _ in range(publishes // run_length):
        for _ in range(run_length):
            hub.publish(Delivery(**FIELDS))
        if "s" not in stages:  # nothing answers: drop what would pile up
            with sender._lock:
                sender._queue.clear()
                sender._queued_bytes = 0
            with history._lock:
                history._kept.clear()
                history._kept_bytes = 0
                history._in_flight.clear()
            continue
        with sender._lock:
            batch = sender._take_locked(MAX_BATCH)
        commands, spans = _coalesce(batch, *run_id)
        redis_link._pack(commands)
        replies, envelopes = [], []
        at = 0
        for count, _ in spans:  # the script's usual reply, and the envelope it publishes
            # Made from the queued publishes, not the command: the same work whatever form the
            # tree sends a merged run in (per publish, or joined).
            run = [item[0] for item in batch[at:at + count]]
            at += count
            replies.append([0, b"ab12cd34ab12cd34", top + 1])
            envelopes.append(b'%s"epoch":"ab12cd34ab12cd34","first":%d,"seqs":[%s],"deliveries":[%s]}' % (
                prefix, top + 1, b",".join([b"%d" % publish[-1] for publish in run]),
                b",".join([publish[-2] for publish in run])))
            top += count
        sender._answer(batch, _split(spans, replies))
        if "l" in stages:
            with listener.batch():
                for envelope in envelopes:
                    listener._on_delivery(channel, envelope)
            received += drain(theirs)
    if "l" in stages and received < publishes * 100:  # ~230 bytes a frame
        raise SystemExit(f"the watcher got {received} bytes for {publishes} deliveries")
    os._exit(0)  # the hub's threads are daemons: nothing to wait for


def measure(args: argparse.Namespace) -> None:
    from benchlib.callgrind import instructions_per_unit

    for stages in args.stages.split(","):
        per = instructions_per_unit(__file__, stages, (args.short, args.long), args.run)
        print(f"  {stages:4} runs of {args.run}: {per:>8,} instructions/publish", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    child = sub.add_parser("run", help="one child (what valgrind runs)")
    child.add_argument("stages", choices=("p", "ps", "psl"))
    child.add_argument("publishes", type=int)
    child.add_argument("run_length", type=int)
    both = sub.add_parser("measure", help="instructions per publish of each stage set")
    both.add_argument("--stages", default="psl", help="comma-separated, of: p, ps, psl")
    both.add_argument("--run", type=int, default=200, help="publishes submitted between two sender batches")
    both.add_argument("--short", type=int, default=1000)
    both.add_argument("--long", type=int, default=3000)
    args = parser.parse_args()
    if args.mode == "run":
        run(args.stages, args.publishes, args.run_length)
    else:
        measure(args)


if __name__ == "__main__":
    main()
