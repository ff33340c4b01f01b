#!/usr/bin/env python3
"""How long two hubs take to follow a Redis Cluster master's replica after the master is SIGKILLed.

Each run starts a private cluster as the tests do (``tests/redis_cluster_support.py``: three
masters with a replica each, ``cluster-node-timeout`` 1000 ms, every node's log kept), two hubs
on it in this process (``tests/support.py``, history on), a subscriber on each hub to one
session of the victim's shard, and a publisher on hub b publishing to that session with ids,
at most ``--window`` unanswered. Then it kills the session's master and records, in seconds
after the kill, from what each side says (no sleeps: it waits on the receipts, with timeouts):

- the cluster: when the other masters marked the victim failed (their logs: "as failing"), when
  its replica started its election and when it won it (the replica's log: the promotion);
- each hub, from its log records (``rusty_ws.server`` at DEBUG): its first slot map with the
  replica as master, its listener and its sender connected to the replica;
- the clients: the first answer the publisher (on hub b) got after the promotion, its first ack in the
  new master's epoch, the first delivery in that epoch on hub b's subscriber ("near") and on hub
  a's ("far").

It prints one line per run, then the median, minimum and maximum of each, and the load. Every
run also checks what the tests check: every publish acknowledged once, with consecutive offsets,
and each subscriber got every message once, in order (``lost``/``twice`` say otherwise).

    .venv/bin/python scripts/cluster_failover.py [--runs 10] [--window 10] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from redis_cluster_support import PROMOTED, redis_cluster  # noqa: E402

from rusty_ws.brokers.redis_cluster import RedisClusterBroker  # noqa: E402
from rusty_ws.brokers.redis_slots import session_slot  # noqa: E402
from rusty_ws.protocol import Ack, Subscribed, encode_publish, encode_subscribe_json  # noqa: E402
from support import Client, RunningServer, nodes  # noqa: E402

SESSION = "failing-over"
#: The columns of a run, in the order they happen.
STEPS = ("marked_failed", "election_started", "promoted", "map_b", "map_a", "listener_b", "listener_a",
         "sender_b", "sender_a", "answer_b", "ack_b", "near_b", "far_a")


class Records(logging.Handler):
    """Every ``rusty_ws.server`` record: (time.time(), thread name, message)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.created, record.threadName or "", record.getMessage()))

    def first(self, since: float, thread: str, text: str) -> float | None:
        return next((at for at, name, message in list(self.lines)
                     if at >= since and name.startswith(thread) and text in message), None)


class Receipts:
    """A client's frames as they arrive, each with its arrival time, read by a thread until ``pong``."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.got: list[tuple[float, str]] = []
        self.arrived = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=f"bench-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for _ in range(10_000_000):
            try:
                text = self.client.recv(60)
            except Exception:
                return
            with self.arrived:
                self.got.append((time.time(), text))
                self.arrived.notify_all()
            if text == "pong":
                return

    def wait(self, condition: Any, timeout: float) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: condition(self.got), timeout)

    def finish(self, timeout: float = 30) -> None:
        self.client.send("ping")
        self.thread.join(timeout)


def broker(node: RunningServer) -> RedisClusterBroker:
    found = node.hub.broker
    assert isinstance(found, RedisClusterBroker)
    return found


def first_in_epoch(got: list[tuple[float, str]], epoch: str, acks: bool) -> float | None:
    for at, text in got:
        if acks and text.startswith("ack:") and Ack.parse(text).epoch != epoch:
            return at
        if not acks and text.startswith("{") and json.loads(text).get("epoch") not in (None, epoch):
            return at
    return None


def subscribe(client: Client) -> Subscribed:
    client.send(encode_subscribe_json("T", SESSION))
    for _ in range(1000):
        text = client.recv()
        if text.startswith("subscribed:"):
            return Subscribed.parse(text)
    raise AssertionError("no subscribed: reply")


def one_run(window: int, records: Records, dump: str | None) -> dict[str, Any]:
    with redis_cluster(3, replicas=1, keep_logs=True) as cluster, \
            nodes(2, cluster.url, history_size=100_000, broker_retry_timeout=30) as (a, b), \
            a.connect() as far_client, b.connect() as near_client, b.connect() as sending:
        epoch = subscribe(far_client).epoch
        subscribe(near_client)
        far, near = Receipts(far_client, "far"), Receipts(near_client, "near")
        answers = Receipts(sending, "answers")
        victim = cluster.master_of_slot(session_slot(SESSION))
        heir = cluster.replica_of(victim)
        others = [node for node in cluster.running() if node is not victim]
        sent = [0]
        stop = threading.Event()

        def publish() -> None:  # at most ``window`` unanswered; bounded by the run's end
            for number in range(1, 10_000_000):
                if not answers.wait(lambda got, n=number: stop.is_set() or n - 1 - len(got) < window, 60) \
                        or stop.is_set():
                    return
                sending.send(encode_publish("T", number, session_id=SESSION, id=f"m-{number}"))
                sent[0] = number

        publisher = threading.Thread(target=publish, name="bench-publisher", daemon=True)
        publisher.start()
        assert answers.wait(lambda got: len(got) >= 200, 30), "no acks before the kill"
        killed = time.time()
        victim.kill()
        ok = all(receipts.wait(lambda got, acks=receipts is answers: first_in_epoch(got, epoch, acks) is not None, 60)
                 for receipts in (answers, near, far))
        assert ok, "no publish went through the new master within 60 s"
        more = len(answers.got) + 200
        assert answers.wait(lambda got: len(got) >= more, 60), "the publisher did not go on"
        stop.set()
        with answers.arrived:
            answers.arrived.notify_all()
        publisher.join(30)
        total = sent[0]
        assert answers.wait(lambda got: len(got) >= total, 60), "answers missing"
        for receipts in (near, far):  # the last publish reaches them after its ack (through Redis)
            receipts.wait(lambda got: any(text.startswith("{") and json.loads(text)["payload"] == total
                                          for _, text in got[-20:]), 30)
        answers.finish()
        near.finish()
        far.finish()
        acks = [Ack.parse(text) for _, text in answers.got if text.startswith("ack:")]
        errors = [text for _, text in answers.got if text.startswith("error:")]
        lost = {"acks": total - len(acks), "errors": len(errors)}
        offsets_ok = [ack.id for ack in acks] == [f"m-{n}" for n in range(1, total + 1)] and \
            [ack.offset for ack in acks] == list(range(1, total + 1))
        twice = {}
        for name, receipts in (("near", near), ("far", far)):
            payloads = [json.loads(text)["payload"] for _, text in receipts.got if text.startswith("{")]
            lost[name] = total - len(set(payloads))
            if lost[name]:
                missing = sorted(set(range(1, total + 1)) - set(payloads))[:10]
                lost[f"{name}_first"] = [(n, acks[n - 1].offset, (acks[n - 1].epoch or "")[:6]) for n in missing
                                         if n <= len(acks)]
            twice[name] = len(payloads) - len(set(payloads)) + (payloads != sorted(payloads))
        node_a, node_b = broker(a).node_id, broker(b).node_id
        steps = {
            "marked_failed": min((t for n in others for t in (n.logged_at("as failing (quorum reached)"),
                                                              n.logged_at("FAIL message received")) if t),
                                 default=None),
            "election_started": heir.logged_at("Starting a failover election"),
            "promoted": heir.logged_at(PROMOTED),
            "map_b": records.first(killed, f"rusty_ws-redis-cluster-{node_b}", heir.address),
            "map_a": records.first(killed, f"rusty_ws-redis-cluster-{node_a}", heir.address),
            "listener_b": records.first(killed, f"rusty_ws-redis-{node_b}-{heir.address}", "Redis connected"),
            "listener_a": records.first(killed, f"rusty_ws-redis-{node_a}-{heir.address}", "Redis connected"),
            "sender_b": records.first(killed, f"rusty_ws-redis-sender-{node_b}-{heir.address}", "connected"),
            "sender_a": records.first(killed, f"rusty_ws-redis-sender-{node_a}-{heir.address}", "connected"),
            # The first answer after the promotion (a held publish that ran on the old master and was
            # replicated is answered "repeat" with its old position), then the first that ran on the new one.
            "answer_b": next((at for at, _ in answers.got if at >= (heir.logged_at(PROMOTED) or killed)), None),
            "ack_b": first_in_epoch(answers.got, epoch, True),
            "near_b": first_in_epoch(near.got, epoch, False),
            "far_a": first_in_epoch(far.got, epoch, False),
        }
        if dump:
            with open(dump, "w") as out:
                for at, name, message in records.lines:
                    if at >= killed - 0.5:
                        out.write(f"{at - killed:8.3f} {name} {message[:300]}\n")
                for node in cluster.nodes:
                    for at, line in node.log:
                        if at >= killed - 0.5:
                            out.write(f"{at - killed:8.3f} redis-{node.port} {line[:300]}\n")
        gap_warnings = [m for at, _, m in records.lines if at >= killed and "could not fill a gap" in m]
        return {"steps": {k: None if v is None else round(v - killed, 3) for k, v in steps.items()},
                "publishes": total, "offsets_ok": offsets_ok, "lost": lost, "twice": twice,
                "retried": broker(b).status()["retried"], "gaps_filled": broker(a).status()["gaps_filled"],
                "gap_read_failures": len(gap_warnings), "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--window", type=int, default=10, help="publishes with ids unanswered at once")
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--dump", help="write each run's log lines after the kill (hubs and nodes) to DUMP.<run>")
    args = parser.parse_args()
    records = Records()
    logger = logging.getLogger("rusty_ws.server")
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the records are for the timeline, not the terminal
    runs = []
    print("seconds after the kill: " + " ".join(STEPS))
    for number in range(args.runs):
        records.lines.clear()
        for attempt in range(3):  # a free port taken by another process meanwhile: a new cluster
            try:
                run = one_run(args.window, records, args.dump and f"{args.dump}.{number + 1}")
                break
            except AssertionError as exc:
                if "did not get ready" not in str(exc) or attempt == 2:
                    raise
        runs.append(run)
        print(f"run {number + 1}: " + " ".join("-" if run["steps"][s] is None else f"{run['steps'][s]:.2f}"
                                               for s in STEPS),
              f"| {run['publishes']} publishes, offsets ok {run['offsets_ok']}, lost {run['lost']}, "
              f"twice {run['twice']}, sent again {run['retried']}, filled {run['gaps_filled']}, "
              f"gap reads failed {run['gap_read_failures']}, load {run['load']:.1f}", flush=True)
    print("step: median (min to max), seconds after the kill")
    for step in STEPS:
        values = [run["steps"][step] for run in runs if run["steps"][step] is not None]
        if values:
            print(f"  {step}: {statistics.median(values):.2f} ({min(values):.2f} to {max(values):.2f})"
                  f"{'' if len(values) == len(runs) else f' [{len(runs) - len(values)} runs without]'}")
    follow = [max(run["steps"]["near_b"], run["steps"]["far_a"]) - run["steps"]["promoted"] for run in runs
              if None not in (run["steps"]["near_b"], run["steps"]["far_a"], run["steps"]["promoted"])]
    if follow:
        print(f"  both subscribers' first delivery after the promotion: {statistics.median(follow):.2f} "
              f"({min(follow):.2f} to {max(follow):.2f})")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(runs, out, indent=1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
