"""The multi-node scenarios: rusty_ws nodes on one private Redis, beside one node in the same run.

  xfanout    1 publisher on node 1, S subscribers on node 2 (and on one node, in memory)
  xsessions  the sessions scenario with each pair's two clients on different nodes
  xpublish   one publisher's rate through Redis: node 1 publishes, 1 subscriber on node 2
             counts (and one on node 1: how fast node 1 took them, held by its sender's
             bounded queue to what Redis took); with the sender, without hiredis, and with a
             synchronous PUBLISH (as before the sender), and on one node in memory

Every run also reads the Redis server's CPU time (``INFO cpu``) before and after:
``redis_us_per_message`` is Redis' CPU per message published.

Each scenario also runs its nodes with history off (``RUSTY_WS_HISTORY_SIZE=0`` on both:
a plain PUBLISH instead of the history script), the variants named ``*-nohistory``, so one
run gives the ratio of history on to off.
"""

from __future__ import annotations

from typing import Any

from .generators import Generator, clean, merge, split, start_one_topic
from .plotting import pyplot
from .redis_server import RedisProcess
from .servers import NODES, SERVERS, RunningServer, ServerKind

#: The nodes' environment with history off (the ``*-nohistory`` variants).
NO_HISTORY = {"RUSTY_WS_HISTORY_SIZE": "0"}


def _nodes(kind: ServerKind, redis: RedisProcess | None, count: int, env: dict[str, str] | None) -> list[RunningServer]:
    env = {**(env or {}), "RUSTY_WS_BROKER_URL": redis.url if redis else "memory://"}
    started: list[RunningServer] = []
    try:
        for _ in range(count):
            started.append(RunningServer(kind, env))
    except RuntimeError:
        for server in started:
            server.stop()
        raise
    return started


def shut_down(generators: list[Generator], servers: list[RunningServer]) -> None:
    """A run's end, however it went: every load generator told to finish (briefly), every node stopped."""
    for generator in generators:
        generator.finish(1)
    for server in servers:
        server.stop()


def fanout(kind: ServerKind, redis: RedisProcess | None, subscribers: int, messages: int,
           deadline: float, local_watcher: bool = False, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One publisher, ``subscribers`` of one topic: on node 2 with Redis, on the same node without.

    With ``local_watcher``, one more subscriber on the publisher's node: its rate
    (``rate_node1``) is how fast node 1 took the publishes, which its sender's bounded
    queue holds to what Redis took (within one queue's worth); ``rate`` is node 2's.
    """
    servers = _nodes(kind, redis, 2 if redis else 1, env)
    generators: list[Generator] = []
    try:
        watcher = None
        if local_watcher and redis:
            watcher = Generator({"dialect": kind.dialect, "port": servers[0].port, "deadline": deadline,
                                 "session": "s1", "topic": "T", "role": "subscribe", "connections": 1,
                                 "expect": messages})
            generators.append(watcher)
            if not watcher.wait_ready():
                raise RuntimeError(watcher.finish(deadline).get("failed") or "the watcher did not start")
        cpu = redis.cpu_seconds() if redis else 0.0
        node_cpu = [server.cpu_seconds() for server in servers]
        sent, got = start_one_topic(servers[-1], kind, min(4, subscribers),
                                    {"connections": subscribers, "expect": messages},
                                    {"count": messages}, deadline, generators, publish_to=servers[0])
        elapsed = (got["last"] - sent.get("started", got["first"])) or float("nan")
        row = {**got, "latencies_us": None, "messages": messages, "elapsed": elapsed,
               "rate": got["delivered"] / elapsed, "ok": clean(got),
               "failed": got["failed"] or sent.get("failed", ""),
               "node_us_per_message": [(server.cpu_seconds() - before) * 1e6 / messages
                                       for server, before in zip(servers, node_cpu)]}
        if redis:
            row["redis_us_per_message"] = (redis.cpu_seconds() - cpu) * 1e6 / messages
        if watcher is not None:
            local = watcher.finish(deadline + 10)
            local_elapsed = (local.get("last", 0.0) - sent.get("started", 0.0)) or float("nan")
            row["rate_node1"] = local.get("delivered", 0) / local_elapsed
            row["ok"] = row["ok"] and clean(local)
        return row
    finally:
        shut_down(generators, servers)


def sessions(kind: ServerKind, redis: RedisProcess | None, pairs: int, messages: int,
             deadline: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``pairs`` sessions of two clients publishing to each other: a on node 1, b on node 2 (with Redis)."""
    servers = _nodes(kind, redis, 2 if redis else 1, env)
    generators: list[Generator] = []
    try:
        first = 0
        for n in split(pairs, 2):
            generators.append(Generator({"dialect": kind.dialect, "port": servers[0].port,
                                         "port_b": servers[-1].port, "deadline": deadline, "role": "pairs",
                                         "pairs": n, "first_pair": first, "count": messages}))
            first += n
        if not all(g.wait_ready() for g in generators):
            return {"ok": False, "failed": merge([g.finish(deadline) for g in generators])["failed"]}
        cpu = redis.cpu_seconds() if redis else 0.0
        node_cpu = [server.cpu_seconds() for server in servers]
        for generator in generators:
            generator.go()
        results = [g.finish(deadline + 10) for g in generators]
        got = merge(results)
        got.pop("latencies_us")
        started = min(r.get("started", got["first"]) for r in results)
        elapsed = (got["last"] - started) or float("nan")
        row = {**got, "elapsed": elapsed, "rate": got["delivered"] / elapsed, "ok": clean(got),
               "node_us_per_message": [(server.cpu_seconds() - before) * 1e6 / (pairs * 2 * messages)
                                       for server, before in zip(servers, node_cpu)]}
        if redis:
            row["redis_us_per_message"] = (redis.cpu_seconds() - cpu) * 1e6 / (pairs * 2 * messages)
        return row
    finally:
        shut_down(generators, servers)


def run_all(scenarios: list[str], quick: bool, runs: int, deadline: float,
            repeat: Any, median_of: Any, report: Any) -> dict[str, Any]:
    """The scenarios asked for, each variant ``runs`` times, on one Redis started here."""
    results: dict[str, Any] = {}
    redis = RedisProcess()
    single = SERVERS["rusty_ws"]
    try:
        results["redis_version_info"] = redis.command(b"INFO", b"server").decode().split("redis_version:")[1][:10]
        if "xfanout" in scenarios:
            results["xfanout"] = {}
            for size in [100] if quick else [10, 100, 1000]:
                messages = max(10, (50_000 if quick else 500_000) // size)
                for name, kind, broker, env in (("single", single, None, None), ("cross", NODES["redis"], redis, None),
                                                ("cross-nohistory", NODES["redis"], redis, NO_HISTORY)):
                    rows = repeat(runs, lambda k=kind, b=broker, s=size, m=messages, e=env:
                                  fanout(k, b, s, m, deadline, env=e))
                    results["xfanout"].setdefault(str(size), {})[name] = _summary(rows, median_of, messages)
                    report("xfanout", f"S={size}", name, rows, "rate", "deliveries/s")
        if "xsessions" in scenarios:
            pairs, messages = (100, 20) if quick else (500, 100)
            results["xsessions"] = {"pairs": pairs}
            for name, kind, broker, env in (("single", single, None, None), ("cross", NODES["redis"], redis, None),
                                            ("cross-nohistory", NODES["redis"], redis, NO_HISTORY)):
                rows = repeat(runs, lambda k=kind, b=broker, e=env: sessions(k, b, pairs, messages, deadline, e))
                results["xsessions"][name] = _summary(rows, median_of, messages)
                report("xsessions", f"{pairs} pairs", name, rows, "rate", "deliveries/s")
        if "xpublish" in scenarios:
            messages = 20_000 if quick else 200_000
            results["xpublish"] = {}
            # sync-publish is the publish of before the sender, with history off as it was then: the 10x baseline.
            variants = [("single", single, None, None), ("sender", NODES["redis"], redis, None),
                        ("sender-nohistory", NODES["redis"], redis, NO_HISTORY),
                        ("sender-nohiredis", NODES["redis-nohiredis"], redis, None),
                        ("sync-publish", NODES["redis-sync"], redis, NO_HISTORY)]
            for name, kind, broker, env in variants:
                count = messages // 10 if name == "sync-publish" else messages  # ~5k/s: keep it short
                rows = repeat(runs, lambda k=kind, b=broker, c=count, e=env: fanout(k, b, 1, c, deadline, True, e))
                results["xpublish"][name] = _summary(rows, median_of, count)
                results["xpublish"][name]["rate_node1"] = median_of(rows, "rate_node1")
                report("xpublish", "1 pub, 1 sub", name, rows, "rate", "messages/s")
    finally:
        redis.stop()
    return results


def _summary(rows: list[dict], median_of: Any, messages: int) -> dict[str, Any]:
    good = [r["node_us_per_message"] for r in rows if r.get("ok") and r.get("node_us_per_message")]
    return {"messages": messages, "runs": rows, "rate": median_of(rows, "rate"),
            "redis_us_per_message": median_of(rows, "redis_us_per_message"),
            # CPU per message of each node (publisher's first), median over runs: load-independent.
            "node_us_per_message": [sorted(r[i] for r in good)[len(good) // 2] for i in range(len(good[0]))]
            if good else None,
            "ok": all(r.get("ok") for r in rows)}


def ratio(ours: float | None, base: float | None) -> str:
    return "-" if not ours or not base else f"{ours / base:.2f}x"


def print_tables(results: dict[str, Any], fmt: Any) -> None:
    head = (f"{'one node':>16}{'across Redis':>16}{'ratio':>10}{'no history':>14}{'on/off':>9}{'Redis us/msg':>14}"
            f"{'(no history)':>14}{'node us/msg: one node | 1/2':>30}")

    def line(label: str, by: dict[str, Any]) -> str:
        one, cross, off = by.get("single", {}), by.get("cross", {}), by.get("cross-nohistory", {})
        return (f"{label:24}{fmt(one.get('rate')):>16}{fmt(cross.get('rate')):>16}"
                f"{ratio(cross.get('rate'), one.get('rate')):>10}{fmt(off.get('rate')):>14}"
                f"{ratio(cross.get('rate'), off.get('rate')):>9}{_us(cross):>14}{_us(off):>14}"
                f"{_nodes_us(one) + ' | ' + _nodes_us(cross):>30}")
    if "xfanout" in results:
        print(f"\n{'multi-node fan-out':24}{head}")
        for size, by in results["xfanout"].items():
            print(line("S=" + size, by))
    if "xsessions" in results:
        print(f"\n{'multi-node sessions':24}{head}")
        print(line(str(results["xsessions"]["pairs"]) + " pairs", results["xsessions"]))
    if "xpublish" in results:
        by = results["xpublish"]
        base = by.get("sync-publish", {}).get("rate")
        base1 = by.get("sync-publish", {}).get("rate_node1")
        print(f"\n{'one publisher, msg/s':24}{'node 1 took':>14}{'vs sync':>9}{'node 2 got':>14}{'vs sync':>9}"
              f"{'Redis us/msg':>14}{'node us/msg':>16}")
        for name, row in by.items():
            print(f"{name:24}{fmt(row.get('rate_node1')):>14}{ratio(row.get('rate_node1'), base1):>9}"
                  f"{fmt(row.get('rate')):>14}{ratio(row.get('rate'), base):>9}{_us(row):>14}{_nodes_us(row):>16}")
        on, off = by.get("sender", {}), by.get("sender-nohistory", {})
        print(f"{'history on/off':24}{ratio(on.get('rate_node1'), off.get('rate_node1')):>14}{'':>9}"
              f"{ratio(on.get('rate'), off.get('rate')):>14}")


def _nodes_us(row: dict) -> str:
    values = row.get("node_us_per_message")
    return "-" if not values else "/".join(f"{v:.1f}" for v in values)


def _us(row: dict) -> str:
    value = row.get("redis_us_per_message")
    return "-" if value is None else f"{value:.2f}"


def all_clean(results: dict[str, Any]) -> bool:
    rows = [row for by in results.get("xfanout", {}).values() for row in by.values()]
    rows += [row for key, row in results.get("xsessions", {}).items() if key != "pairs"]
    rows += list(results.get("xpublish", {}).values())
    return all(row.get("ok", True) for row in rows if isinstance(row, dict))


def plot(results: dict[str, Any], path: str) -> bool:
    """Fan-out on one node and across Redis by subscribers, and one publisher's rate per variant."""
    plt = pyplot()
    if plt is None:
        return False
    if "xfanout" not in results and "xpublish" not in results:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    sizes = sorted(int(s) for s in results.get("xfanout", {}))
    for name, label in (("single", "one node (in memory)"), ("cross", "publisher on node 1, subscribers on node 2"),
                        ("cross-nohistory", "the same, history off")):
        points = [(s, results["xfanout"][str(s)].get(name, {}).get("rate")) for s in sizes]
        points = [(s, r) for s, r in points if r]
        if points:
            left.plot(*zip(*points), marker="o", label=label)
    left.set_xscale("log")
    left.set_xlabel("subscribers of one topic")
    left.set_ylabel("deliveries per second")
    left.set_title("Fan-out across two nodes on one Redis")
    left.grid(True, which="both", alpha=0.3)
    if sizes:
        left.legend(fontsize=8)
    by = results.get("xpublish", {})
    names = [n for n in ("single", "sender", "sender-nohistory", "sender-nohiredis", "sync-publish")
             if by.get(n, {}).get("rate")]
    colours = {"single": "grey", "sender": "C0", "sender-nohistory": "C2", "sender-nohiredis": "C1", "sync-publish": "C3"}
    right.bar(range(len(names)), [by[n]["rate"] for n in names], color=[colours[n] for n in names])
    right.set_xticks(range(len(names)), [n.replace("-", "\n") for n in names], fontsize=8)
    right.set_ylabel("messages per second")
    right.set_title("One publisher, through Redis")
    right.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True
