#!/usr/bin/env python3
"""What one publish through the Redis broker costs the node and Redis, in CPU, per message.

Starts a private redis-server on a free loopback port, then, in one process
per variant, publishes the benchmark's ~100-byte delivery N times through
``RedisBroker.publish`` (no subscribers, no sockets but Redis'), and reports
the process' CPU per publish (and each thread's) and Redis' own (``INFO cpu``), and how many
commands Redis ran per publish (runs of the history script, or history off, PUBLISHes: merging
makes it less than 1), best of 3:

- sender: the broker as it is (the Redis sender, pipelined, with hiredis; consecutive
  PUBLISHes of the pair merged into one of a version-4 envelope);
- sender-unmerged: the same, one PUBLISH per publish (as before merging);
- sender-nohiredis: the same with hiredis hidden (pure-Python packing and parsing);
- sync: the broker as it was before the sender: one PUBLISH round trip per
  publish on the publishing thread (``benchlib/run_rusty.py``'s ``sync-publish``);
- history: history in Redis (``RedisHistory.publish``: the history script), the
  sender merging consecutive publishes of the pair into one run of it;
- history-unmerged: the same, one run of the script per publish (as before merging);
- history-id, history-id-unmerged: the same, each publish with its own ``id``;
- sender-subscribed, history-subscribed: the node's listener subscribed to the pair, as
  when the node has a subscriber of it: with history, each publish comes back through the
  channel and is delivered (to callbacks that count, wired as the hub wires its own:
  ``Broker.deliver_run`` and ``Broker.deliver_own``; the hub's delivery is not in it), the
  publishing node reading only its envelope's header (``RedisHistory.take_own``); without
  history, the node's own envelopes are dropped by their first bytes;
- history-subscribed-decoded: the same, every envelope decoded whole (as before ``take_own``).

CPU per message is what to compare on a loaded machine; the wall-clock rate
is shown too, but depends on what else runs. ``--callgrind SHORT,LONG`` counts
instead the node process' instructions per publish under valgrind's callgrind
(one round of SHORT and one of LONG publishes per variant, the difference of
their totals over the difference of their publishes: the start and the end
cancel out), which does not move with the load at all.

    .venv/bin/python scripts/redis_publish_cost.py [--publishes 100000] [--callgrind 2000,6000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("sender", "sender-unmerged", "sender-nohiredis", "sync", "history", "history-unmerged", "history-id",
            "history-id-unmerged", "sender-subscribed", "history-subscribed", "history-subscribed-decoded")


def measure(url: str, variant: str, publishes: int, rounds: int = 3) -> dict[str, float]:
    """One variant, in this process: CPU and wall time per publish, best of ``rounds`` by CPU."""
    if variant == "sender-nohiredis":
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # import hiredis now fails
    sys.path.insert(0, os.path.join(HERE, "benchlib"))
    import run_rusty

    from rusty_ws.brokers import redis_sender
    from rusty_ws.brokers.base import Landed
    from rusty_ws.brokers.redis import RedisBroker
    from rusty_ws.protocol import Delivery

    if variant == "sync":
        run_rusty.publish_synchronously()
        publishes //= 5  # a round trip each: keep it short
    if variant.endswith("-unmerged"):
        redis_sender.MAX_MERGE = 1
    import threading

    # Generous timeouts: under callgrind the process runs ~50x slower than its connect timeouts expect.
    redis_sender.CONNECT_TIMEOUT = 60.0
    broker = RedisBroker(url, start_timeout=60.0)
    history = broker.history_store(100, 300.0, 300.0, 64 * 1024 * 1024) if variant.startswith("history") else None
    subscribed = "-subscribed" in variant
    pairs = [("T", "s1")] if subscribed else []
    arrived, all_in, expected = [0], threading.Event(), [0]

    def deliver(delivery: Delivery) -> Landed:  # the listener's thread
        arrived[0] += 1
        if arrived[0] >= expected[0]:
            all_in.set()
        return Landed(None, 0)

    def deliver_run(deliveries: list[Delivery]) -> None:  # an envelope's deliveries at once, as the hub wires it
        arrived[0] += len(deliveries)
        if arrived[0] >= expected[0]:
            all_in.set()

    def deliver_own(run: Any) -> None:  # this node's own run (RedisHistory.take_own), as the hub wires it
        arrived[0] += sum(1 for kept in run[3] if kept is not None)
        if arrived[0] >= expected[0]:
            all_in.set()

    # The hub sets these before start (Hub.__init__): the listener's roads, to counters. A tree
    # without Broker.deliver_own (before session 15) ignores it.
    broker.deliver_run, broker.deliver_own = deliver_run, deliver_own
    broker.start(deliver, lambda among=None: [pair for pair in pairs if among is None or pair in among])
    assert broker.wait_connected(True, 120)
    if variant.endswith("-decoded"):
        broker._current().take_own = None  # every envelope decoded, as before take_own
    ids, tag = iter(range(10 ** 9)), os.urandom(4).hex()  # ids never seen before: no repeats
    if history is None:
        publish = broker.publish
    elif variant.startswith("history-id"):
        def publish(delivery: Delivery) -> None:
            history.publish(delivery, f"{tag}-{next(ids)}", lambda result: None)
    else:
        def publish(delivery: Delivery) -> None:
            history.publish(delivery, None, None)
    # A new Delivery each publish, as a connection makes one per publish-json (its encoding is kept
    # once made: publishing one object again and again would measure only the first's).
    fields = {"publisher_name": "bench", "topic": "T", "payload": "x" * 80, "timestamp": "2026-12-01T14:00:00Z",
              "session_id": "s1"}
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    redis = _Info(port)
    best: dict[str, float] = {}
    for _ in range(rounds):
        all_in.clear()
        expected[0] = arrived[0] + publishes
        threads_before = _thread_cpu()
        calls_before = redis.calls()
        redis_before, cpu, wall = redis.cpu(), time.process_time(), time.perf_counter()
        for _ in range(publishes):
            publish(Delivery(**fields))
        if variant != "sync":
            assert broker.wait_sent(60)
        if subscribed and history is not None:
            assert all_in.wait(60), f"{arrived[0]} of {expected[0]} came back"
        threads_after = _thread_cpu()
        row = {"node_us": (time.process_time() - cpu) * 1e6 / publishes,
               "threads_us": {name: round((threads_after.get(name, 0.0) - spent) * 1e6 / publishes, 2)
                              for name, spent in threads_before.items()},
               "redis_us": (redis.cpu() - redis_before) * 1e6 / publishes,
               # Runs of the history script (history off: PUBLISHes) per publish: merging makes it < 1.
               "redis_calls": _runs(calls_before, redis.calls()) / publishes,
               "rate": publishes / (time.perf_counter() - wall)}
        if not best or row["node_us"] < best["node_us"]:
            best = row
    assert broker.status()["unsent"] == 0
    broker.stop()
    return best


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process so far (user + system, /proc/self/task), by kind."""
    import threading

    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    spent: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        name = names.get(int(tid), "")
        kind = "sender" if "sender" in name else "listener" if name.startswith("rusty_ws-redis") else "publisher"
        fields = text.rpartition(")")[2].split()
        spent[kind] = spent.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return spent


def callgrind_main(args: argparse.Namespace) -> None:
    """Each variant under callgrind, one round of SHORT and one of LONG publishes: instructions per publish."""
    import tempfile

    sys.path.insert(0, HERE)
    from benchlib.callgrind import total_instructions
    from benchlib.redis_server import RedisProcess

    short, long_ = (int(n) for n in args.callgrind.split(","))
    rows = {}
    with tempfile.TemporaryDirectory(prefix="callgrind-publish-") as tmp:
        for variant in args.variants.split(","):
            totals, redis_us = [], []
            for publishes in (short, long_):
                redis = RedisProcess()  # a fresh one each: the same state for both lengths
                out = os.path.join(tmp, f"callgrind.{variant}.{publishes}")
                try:
                    run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                          sys.executable, __file__, "--variant", variant, "--url", redis.url,
                                          "--publishes", str(publishes), "--rounds", "1"],
                                         capture_output=True, text=True, timeout=1800, check=False)
                finally:
                    redis.stop()
                lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
                if run.returncode or not lines:
                    raise SystemExit(f"{variant} failed ({run.returncode}):\n{run.stdout}\n{run.stderr[-3000:]}")
                totals.append(total_instructions(out))
                redis_us.append(json.loads(lines[-1])["redis_us"])
            rows[variant] = {"instructions_per_publish": round((totals[1] - totals[0]) / (long_ - short)),
                             "redis_us": round(redis_us[1], 2)}
            print(f"  {variant:28} node {rows[variant]['instructions_per_publish']:>9,} instructions/publish"
                  f"   (Redis {rows[variant]['redis_us']:.2f} us CPU/publish, slowed by valgrind's pace)", flush=True)
    print(json.dumps(rows))


class _Info:
    def __init__(self, port: int) -> None:
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=port)

    def cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def calls(self) -> tuple[int, int]:
        """EVALSHAs and PUBLISHes Redis ran so far (``INFO commandstats``; the script's PUBLISH counts too)."""
        stats = self.client.info("commandstats")
        return tuple(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_publish"))  # type: ignore[return-value]


def _runs(before: tuple[int, int], after: tuple[int, int]) -> int:
    """Runs of the history script between two ``calls()``, or with none, PUBLISHes (history off)."""
    scripts, publishes = after[0] - before[0], after[1] - before[1]
    return scripts if scripts else publishes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--publishes", type=int, default=100_000)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one child process
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--callgrind", help="SHORT,LONG: instructions per publish under callgrind instead")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.url, args.variant, args.publishes, args.rounds)))
        return
    if args.callgrind:
        callgrind_main(args)
        return
    sys.path.insert(0, HERE)
    from benchlib.redis_server import RedisProcess

    redis = RedisProcess()
    rows = {}
    try:
        for variant in args.variants.split(","):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--url", redis.url,
                                  "--publishes", str(args.publishes)],
                                 capture_output=True, text=True, timeout=600, check=True).stdout
            rows[variant] = json.loads(out.strip().splitlines()[-1])
    finally:
        redis.stop()
    print(f"{args.publishes} publishes of a ~100-byte delivery through RedisBroker.publish, best of 3 "
          f"(load average {os.getloadavg()[0]:.1f})")
    for variant, row in rows.items():
        threads = ", ".join(f"{name} {us:.1f}" for name, us in sorted(row.get("threads_us", {}).items()))
        print(f"  {variant:18} node {row['node_us']:7.2f} us CPU/publish ({threads})   Redis {row['redis_us']:6.2f} us "
              f"CPU/publish ({row.get('redis_calls', 0):.3f} runs/publish)   {row['rate']:>9,.0f} publishes/s wall")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
