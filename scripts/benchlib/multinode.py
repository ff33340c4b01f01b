"""The multi-node scenarios: rusty_ws nodes on one private Redis, beside one node in the same run.

  xfanout    1 publisher on node 1, S subscribers on node 2 (and on one node, in memory)
  xsessions  the sessions scenario with each pair's two clients on different nodes
  xpublish   one publisher's rate through Redis: node 1 publishes, 1 subscriber on node 2
             counts; with the sender, without hiredis, and with a synchronous PUBLISH (as
             before the sender), and on one node in memory

Every run also reads the Redis server's CPU time (``INFO cpu``) before and after:
``redis_us_per_message`` is Redis' CPU per message published.
"""

from __future__ import annotations

from typing import Any

from .generators import Generator, clean, merge, split, start_one_topic
from .redis_server import RedisProcess
from .servers import NODES, SERVERS, RunningServer, ServerKind


def _nodes(kind: ServerKind, redis: RedisProcess | None, count: int) -> list[RunningServer]:
    env = {"RUSTY_WS_BROKER_URL": redis.url} if redis else {"RUSTY_WS_BROKER_URL": "memory://"}
    started: list[RunningServer] = []
    try:
        for _ in range(count):
            started.append(RunningServer(kind, env))
    except RuntimeError:
        for server in started:
            server.stop()
        raise
    return started


def fanout(kind: ServerKind, redis: RedisProcess | None, subscribers: int, messages: int,
           deadline: float) -> dict[str, Any]:
    """One publisher, ``subscribers`` of one topic: on node 2 with Redis, on the same node without."""
    servers = _nodes(kind, redis, 2 if redis else 1)
    generators: list[Generator] = []
    try:
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
        return row
    finally:
        for generator in generators:
            generator.finish(1)
        for server in servers:
            server.stop()


def sessions(kind: ServerKind, redis: RedisProcess | None, pairs: int, messages: int,
             deadline: float) -> dict[str, Any]:
    """``pairs`` sessions of two clients publishing to each other: a on node 1, b on node 2 (with Redis)."""
    servers = _nodes(kind, redis, 2 if redis else 1)
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
        for generator in generators:
            generator.finish(1)
        for server in servers:
            server.stop()


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
                for name, kind, broker in (("single", single, None), ("cross", NODES["redis"], redis)):
                    rows = repeat(runs, lambda k=kind, b=broker, s=size, m=messages: fanout(k, b, s, m, deadline))
                    results["xfanout"].setdefault(str(size), {})[name] = _summary(rows, median_of, messages)
                    report("xfanout", f"S={size}", name, rows, "rate", "deliveries/s")
        if "xsessions" in scenarios:
            pairs, messages = (100, 20) if quick else (500, 100)
            results["xsessions"] = {"pairs": pairs}
            for name, kind, broker in (("single", single, None), ("cross", NODES["redis"], redis)):
                rows = repeat(runs, lambda k=kind, b=broker: sessions(k, b, pairs, messages, deadline))
                results["xsessions"][name] = _summary(rows, median_of, messages)
                report("xsessions", f"{pairs} pairs", name, rows, "rate", "deliveries/s")
        if "xpublish" in scenarios:
            messages = 20_000 if quick else 200_000
            results["xpublish"] = {}
            variants = [("single", single, None), ("sender", NODES["redis"], redis),
                        ("sender-nohiredis", NODES["redis-nohiredis"], redis),
                        ("sync-publish", NODES["redis-sync"], redis)]
            for name, kind, broker in variants:
                count = messages // 10 if name == "sync-publish" else messages  # ~5k/s: keep it short
                rows = repeat(runs, lambda k=kind, b=broker, c=count: fanout(k, b, 1, c, deadline))
                results["xpublish"][name] = _summary(rows, median_of, count)
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
    if "xfanout" in results:
        print(f"\n{'multi-node fan-out':24}{'one node':>16}{'across Redis':>16}{'ratio':>10}{'Redis us/msg':>14}"
              f"{'node us/msg: one node | 1/2':>30}")
        for size, by in results["xfanout"].items():
            one, cross = by.get("single", {}), by.get("cross", {})
            print(f"{'S=' + size:24}{fmt(one.get('rate')):>16}{fmt(cross.get('rate')):>16}"
                  f"{ratio(cross.get('rate'), one.get('rate')):>10}{_us(cross):>14}"
                  f"{_nodes_us(one) + ' | ' + _nodes_us(cross):>30}")
    if "xsessions" in results:
        one, cross = results["xsessions"].get("single", {}), results["xsessions"].get("cross", {})
        print(f"\n{'multi-node sessions':24}{'one node':>16}{'across Redis':>16}{'ratio':>10}{'Redis us/msg':>14}"
              f"{'node us/msg: one node | 1/2':>30}")
        print(f"{str(results['xsessions']['pairs']) + ' pairs':24}{fmt(one.get('rate')):>16}"
              f"{fmt(cross.get('rate')):>16}{ratio(cross.get('rate'), one.get('rate')):>10}{_us(cross):>14}"
              f"{_nodes_us(one) + ' | ' + _nodes_us(cross):>30}")
    if "xpublish" in results:
        by = results["xpublish"]
        base = by.get("sync-publish", {}).get("rate")
        print(f"\n{'one publisher, msg/s':24}{'rate':>16}{'vs sync PUBLISH':>18}{'Redis us/msg':>14}"
              f"{'node us/msg':>16}")
        for name, row in by.items():
            print(f"{name:24}{fmt(row.get('rate')):>16}{ratio(row.get('rate'), base):>18}{_us(row):>14}"
                  f"{_nodes_us(row):>16}")


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
