#!/usr/bin/env python3
"""Side-by-side benchmark of rusty_ws and its peers, on this machine, in one run.

Servers (each its own process on a free loopback port): rusty_ws;
Flask-SocketIO in threading mode; an asyncio server on `websockets` with
broadcast; and a single-threaded pure-Python `selectors` server that encodes
each frame once, with coalesced writes (the ceiling) and with one send() per
delivery. Load comes from separate load-generator processes
(benchlib/loadgen.py); their own ceiling is measured first.

Scenarios (every run checks that nothing was lost, reordered or crossed sessions):
  fanout     1 publisher, S subscribers of one topic in one session
  latency    100 subscribers, a fixed publish rate of 500/s and of 2,000/s: p50, p99, max
  sessions   500 sessions of 2 clients publishing to each other
  capacity   idle subscribed connections at 1,000 / 5,000 / 10,000 / 19,000, then one publish to all
  connect    10,000 clients connecting, 500 at a time from four generators: seconds, server CPU and switches
  storm      10,000 subscribed clients; the server restarted (rusty_ws: 4200 with its window): until all
             are back, the refusals, /healthz on both ports meanwhile (rusty_ws and websockets)
  compression  fan-out again, every subscriber offering permessage-deflate as browsers do,
             to rusty_ws and websockets with compression on (RUSTY_WS_COMPRESSION=6)
  xfanout, xsessions, xpublish  rusty_ws nodes on one private redis-server, beside one node
             in the same run (benchlib/multinode.py); need redis-server and the redis extra

Usage:
  scripts/bench.py            full run (medians of 3; takes a while)
  scripts/bench.py --quick    small sizes, one run each, a few minutes
  scripts/bench.py --only rusty_ws,websockets --scenarios fanout
  scripts/bench.py --replot bench-results/results.json   table and plot again

Writes bench-results/results.json and, for the full run, plot PNGs (fanout.png, multinode.png,
connections.png, storm.png). Exits
non-zero if any rusty_ws run lost, reordered or crossed a message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchlib import multinode  # noqa: E402
from benchlib.generators import Generator, clean, merge, split, start_one_topic  # noqa: E402
from benchlib.plotting import pyplot  # noqa: E402
from benchlib.servers import COMPRESSING, SERVERS, RunningServer, ServerKind, compile_rusty_ws, free_port  # noqa: E402

ORDER = ["rusty_ws", "websockets", "flask-socketio", "per-send", "ceiling"]
#: The latency scenario's results, by publish rate (issue 15: neither may get worse).
LATENCY_RATES = {"latency": 500, "latency_2000": 2000}


# ------------------------------------------------------------------ scenarios


def run_fanout(kind: ServerKind, subscribers: int, messages: int, deadline: float, blast: bool = False,
               deflate: bool = False) -> dict:
    server = RunningServer(kind)
    generators: list[Generator] = []
    try:
        sent, got = start_one_topic(
            server, kind, min(4, subscribers),
            {"connections": subscribers, "expect": messages, "deflate": deflate},
            {"count": messages, "blast": blast}, deadline, generators)
        elapsed = (got["last"] - sent.get("started", got["first"])) or float("nan")
        # With deflate, every delivery must have come compressed: proof that it was negotiated.
        compressed = not deflate or got["compressed"] >= got["delivered"]  # replies may be compressed too
        return {**got, "latencies_us": None, "elapsed": elapsed, "rate": got["delivered"] / elapsed,
                "ok": clean(got) and compressed,
                "failed": got["failed"] or sent.get("failed", "") or ("" if compressed else "not compressed")}
    finally:
        for generator in generators:
            generator.finish(1)
        server.stop()


def run_latency(kind: ServerKind, subscribers: int, rate: int, seconds: float, deadline: float) -> dict:
    server = RunningServer(kind)
    generators: list[Generator] = []
    count = int(rate * seconds)
    try:
        _, got = start_one_topic(server, kind, 2, {"connections": subscribers, "expect": count, "latency": True},
                                 {"count": count, "rate": rate}, deadline, generators)
        latencies = sorted(got.pop("latencies_us"))
        if latencies:
            got["p50_ms"] = latencies[len(latencies) // 2] / 1000
            got["p99_ms"] = latencies[int(len(latencies) * 0.99)] / 1000
            got["max_ms"] = latencies[-1] / 1000
        return {**got, "ok": clean(got)}
    finally:
        for generator in generators:
            generator.finish(1)
        server.stop()


def run_sessions(kind: ServerKind, pairs: int, messages: int, deadline: float) -> dict:
    server = RunningServer(kind)
    generators: list[Generator] = []
    try:
        first = 0
        for n in split(pairs, 2):
            generators.append(Generator({"dialect": kind.dialect, "port": server.port, "deadline": deadline,
                                         "role": "pairs", "pairs": n, "first_pair": first, "count": messages}))
            first += n
        if not all(g.wait_ready() for g in generators):
            return {"failed": merge([g.finish(deadline) for g in generators])["failed"]}
        for generator in generators:
            generator.go()
        results = [g.finish(deadline + 10) for g in generators]
        got = merge(results)
        got.pop("latencies_us")
        started = min(r.get("started", got["first"]) for r in results)
        elapsed = (got["last"] - started) or float("nan")
        return {**got, "elapsed": elapsed, "rate": got["delivered"] / elapsed, "ok": clean(got)}
    finally:
        for generator in generators:
            generator.finish(1)
        server.stop()


def run_capacity(kind: ServerKind, size: int, deadline: float) -> dict:
    """``size`` idle subscribed connections on a fresh server, then one publish that must reach them all."""
    server = RunningServer(kind)
    baseline = server.stats()
    generators: list[Generator] = []
    try:
        common = {"dialect": kind.dialect, "port": server.port, "deadline": deadline, "session": "s1",
                  "topic": "T", "role": "subscribe", "expect": 1, "batch": 250}
        started = time.monotonic()
        generators = [Generator({**common, "connections": n}) for n in split(size, 4)]
        ready = all(g.wait_ready() for g in generators)
        connect_s = time.monotonic() - started
        if not ready or not server.alive():
            got = merge([g.finish(5) for g in generators])
            return {"connections": size, "ok": False, "failed": got["failed"] or "the server died",
                    "connected": got["connections"]}
        stats = server.stats()
        publisher = Generator({**common, "role": "publish", "count": 1})
        publisher.wait_ready()
        publisher.go()
        publisher.finish(deadline)
        got = merge([g.finish(deadline) for g in generators])
        return {
            "connections": size, "connect_s": connect_s, "rss_kib": stats["rss_kib"], "threads": stats["threads"],
            "kib_per_connection": (stats["rss_kib"] - baseline["rss_kib"]) / size,
            "reached": got["delivered"], "ok": got["delivered"] == size and not got["failed"],
            "failed": got["failed"],
        }
    finally:
        for generator in generators:
            generator.finish(1)
        server.stop()


def run_connect(kind: ServerKind, size: int, deadline: float, parts: int = 4) -> dict:
    """How long ``size`` clients (over ``parts`` processes, started first) take to connect and subscribe."""
    server = RunningServer(kind)
    generators: list[Generator] = []
    try:
        common = {"dialect": kind.dialect, "port": server.port, "deadline": deadline, "session": "s1",
                  "topic": "T", "role": "connect", "batch": 500, "hold": True}
        generators = [Generator({**common, "connections": n}) for n in split(size, parts)]
        if not all(g.wait_ready() for g in generators):
            return {"ok": False, "failed": merge([g.finish(5) for g in generators])["failed"] or "not ready"}
        cpu, switches = server.cpu_seconds(), server.context_switches()
        started = time.monotonic()
        for generator in generators:
            generator.go()
        # Each generator reports once its clients are in and holds them open until finish(): one that
        # ended closed its 2,500 at once while the others were still connecting, and the hub's threads
        # waking to clean up were counted in the connect's time and CPU (session 15, docs/performance.md).
        results = [g.read_result(max(1.0, deadline + 10 - (time.monotonic() - started))) for g in generators]
        cpu_end, switches_end = server.cpu_seconds(), server.context_switches()
        failed = "; ".join(r["failed"] for r in results if r.get("failed"))
        connected = sum(r.get("connections", 0) for r in results)
        if failed or connected != size:
            return {"ok": False, "failed": failed or f"{connected}/{size} connected"}
        elapsed = max(r["finished"] for r in results) - min(r["started"] for r in results)
        # The server's own cost, which the machine's load moves far less than the wall clock.
        return {"ok": True, "connections": size, "elapsed": elapsed, "rate": size / elapsed,
                "server_cpu_ms_per_connection": (cpu_end - cpu) * 1000 / size,
                "server_switches_per_connection": (switches_end - switches) / size,
                "failed": ""}
    finally:
        for generator in generators:
            generator.finish(1)
        server.stop()


class HealthPoller:
    """GET /healthz every ``every`` seconds on its own thread: each answer's latency, and the failures.

    Each request is timed in two parts: the TCP connect (``connect()`` returned), and from
    there to the whole answer. A connect of about a second is a SYN the system dropped
    (its accept queue was full) and the client sent again after its initial RTO; a slow
    answer after a quick connect is a wait in the server (its accept queue or its own work).
    ``label`` names the port in the report (the main port, or the hub's internal one).
    """

    def __init__(self, port: int, every: float = 0.05, label: str = "healthz") -> None:
        import threading
        self.port, self.every, self.label = port, every, label
        self.samples: list[tuple[float, float, float]] = []  # (sent at, connect s, connect to answer s)
        self.failures = 0
        self.stopping = threading.Event()  # set by stop(): ends the polling thread
        self.thread = threading.Thread(target=self._poll, name=f"bench-{label}", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import http.client
        while not self.stopping.wait(self.every):
            started = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                connection.connect()
                connected = time.monotonic()
                connection.request("GET", "/healthz")
                answer = connection.getresponse()
                answer.read()
                self.samples.append((started, connected - started, time.monotonic() - connected))
            except OSError:  # (http.client.HTTPException is no OSError: a garbled answer is a defect to see)
                self.failures += 1
            finally:
                connection.close()

    def stop(self, since: float = 0.0) -> dict:
        """The figures, under keys that start with ``label`` (``healthz_max_s``, ...); ``slowest``: the five
        slowest as (sent, connect, then the answer) in seconds, sent counted from ``since`` (monotonic)."""
        self.stopping.set()
        self.thread.join(10)
        latencies = sorted(c + a for _, c, a in self.samples)
        connects = sorted(c for _, c, _ in self.samples)
        label = self.label
        return {f"{label}_answers": len(latencies), f"{label}_failures": self.failures,
                f"{label}_max_s": latencies[-1] if latencies else None,
                f"{label}_p99_s": latencies[int(len(latencies) * 0.99)] if latencies else None,
                f"{label}_connect_max_s": connects[-1] if connects else None,
                f"{label}_slow_connects": sum(c >= 0.9 for c in connects),  # SYNs sent again (initial RTO 1 s)
                f"{label}_answer_max_s": max((a for _, _, a in self.samples), default=None),
                f"{label}_slowest": [(round(t - since, 2), round(c, 3), round(a, 3)) for t, c, a in
                                     sorted(self.samples, key=lambda s: -(s[1] + s[2]))[:5]]}


#: The kernel's counters (/proc/net/netstat, TcpExt) a storm is read against: a full accept queue
#: drops SYNs (ListenOverflows, ListenDrops; tcp_abort_on_overflow 0), which clients send again
#: after their initial RTO (1 s), then 3, 7, 15 s after the first.
LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "SyncookiesSent", "TCPTimeouts")


def kernel_counters() -> dict[str, int]:
    """``LISTEN_COUNTERS`` now, machine-wide (empty where /proc/net/netstat is not there)."""
    try:
        with open("/proc/net/netstat") as handle:
            lines = [line.split() for line in handle if line.startswith("TcpExt:")]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    values = dict(zip(lines[0][1:], lines[1][1:]))
    return {name: int(values[name]) for name in LISTEN_COUNTERS if name in values}


def time_wait_sockets() -> int | None:
    """TCP sockets in TIME_WAIT on this machine now (/proc/net/tcp and tcp6, state 06), None where unreadable."""
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as table:
                next(table, None)
                count += sum(1 for line in table if line.split(None, 4)[3:4] == ["06"])
        except OSError:
            return None
    return count


def run_storm(kind: ServerKind, size: int, deadline: float, parts: int = 4) -> dict:
    """``size`` subscribed clients; the server stopped (SIGTERM: rusty_ws closes with 4200) and started
    again on the same port; the clients follow the reconnect policy (``benchlib/loadgen_storm.py``).

    Measures from the stop to the last client subscribed again, the refusals, and for rusty_ws
    how ``/healthz`` answered meanwhile (polled every 50 ms, on both servers' lives).
    """
    ours = kind.name == "rusty_ws"
    time_wait, load = time_wait_sockets(), os.getloadavg()[0]  # what an earlier scenario left, and the load
    # rusty_ws answers /healthz on its port and on an internal port of its own (RUSTY_WS_INTERNAL_PORT), both polled.
    env = {"RUSTY_WS_INTERNAL_PORT": str(free_port())} if ours else {}
    server = RunningServer(kind, env=env)
    generators: list[Generator] = []
    pollers: list[HealthPoller] = []
    try:
        common = {"dialect": kind.dialect, "port": server.port, "deadline": deadline, "session": "s1",
                  "topic": "T", "role": "storm", "batch": 250, "jitter": 1.0, "hold": True}
        generators = [Generator({**common, "connections": n}) for n in split(size, parts)]
        if not all(g.wait_ready() for g in generators):
            return {"ok": False, "failed": merge([g.finish(5) for g in generators])["failed"] or "not ready"}
        if ours:
            pollers = [HealthPoller(server.port), HealthPoller(int(env["RUSTY_WS_INTERNAL_PORT"]), label="internal")]
        before = kernel_counters()
        stopped = time.monotonic()
        server.stop()
        down_s = time.monotonic() - stopped
        server_log = server.final_log
        phases = re.search(r"stopped in (\S+)s: (.*)", server_log)  # rusty_ws's stop, from its own log
        server = RunningServer(kind, env=env, port=server.port)
        restarted_s = time.monotonic() - stopped
        # The new process's own start-up (benchlib/run_rusty.py): from its creation, wall and CPU seconds.
        startup = re.search(r"start-up: (.*), then listening", server.log_head())
        # Each generator reports once all its clients are back and holds its connections open: one that
        # ended closed its 2,500 at once while the others were still coming back, and that mass close (every
        # connection's thread waking to clean up), not the storm, was the slowest /healthz of a run (1.5-1.9 s,
        # both ports, session 13). The pollers stop before any generator lets its connections go.
        results = [g.read_result(max(1.0, deadline + 10 - (time.monotonic() - stopped))) for g in generators]
        health = {key: value for poller in pollers for key, value in poller.stop(stopped).items()}
        after = kernel_counters()
        kernel = {name: after[name] - before.get(name, 0) for name in after}
        failed = "; ".join(r["failed"] for r in results if r.get("failed"))
        back = sum(r.get("back", 0) for r in results)
        row = {"connections": size, "stop_s": down_s, "restart_s": restarted_s, "back": back,
               "refused_http": sum(r.get("refused_http", 0) for r in results),
               "refused_tcp": sum(r.get("refused_tcp", 0) for r in results),
               "attempts": sum(r.get("attempts", 0) for r in results), **health,
               "stop_phases": phases.group(2) if phases else None, "kernel": kernel,
               # How many 4200s went out, and how many connections' threads woke meanwhile (rusty_ws's own lines).
               "stop_lines": re.findall(r"(told \d+ connections 4200.*|of the answers, .*)", server_log),
               "startup": startup.group(1) if startup else None, "spawn_to_listening_s": server.listening - server.spawned,
               "time_wait_at_start": time_wait, "load_at_start": load,
               "stopped_at": stopped}  # time.monotonic(): to find the stop in a trace taken beside (perf -k CLOCK_MONOTONIC)
        if failed or back != size:
            return {**row, "ok": False, "failed": failed or f"{back}/{size} back"}
        last_back = max(r["last_back"] for r in results)
        return {**row, "ok": True, "failed": "", "all_back_s": last_back - stopped,
                "after_restart_s": last_back - stopped - restarted_s}
    finally:
        for poller in pollers:
            poller.stop()
        for generator in generators:
            generator.finish(1)
        server.stop()


# ------------------------------------------------------------------ running and reporting


def median_of(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None and run.get("ok")]
    return statistics.median(values) if values else None


def attempt(fn: Callable[[], dict]) -> dict:
    """One run; a server that would not start is a failed run, not the end of the benchmark."""
    try:
        return fn()
    except RuntimeError as exc:
        return {"failed": str(exc)[:300], "ok": False}


def repeat(times: int, fn: Callable[[], dict]) -> list[dict]:
    return [attempt(fn) for _ in range(times)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each (a few minutes)")
    parser.add_argument("--only", default=",".join(ORDER), help="comma-separated servers")
    parser.add_argument("--scenarios", default=None,
                        help="comma-separated (default: all; with --quick, all but the multi-node ones, "
                             "which tests/test_bench.py runs on their own)")
    parser.add_argument("--runs", type=int, default=None, help="runs per measurement (default 3, quick 1)")
    parser.add_argument("--connections", type=int, default=None,
                        help="clients in the connect and storm scenarios (default 10,000, quick 500)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "bench-results"))
    parser.add_argument("--replot", metavar="RESULTS_JSON",
                        help="print the table and draw the plot of an earlier run's results.json; run nothing")
    args = parser.parse_args()
    if args.replot:
        os.makedirs(args.out, exist_ok=True)
        with open(args.replot) as handle:
            earlier = json.load(handle)
        print_table(earlier)
        if "fanout" in earlier:
            plot(earlier, os.path.join(args.out, "fanout.png"))
        multinode.plot(earlier, os.path.join(args.out, "multinode.png"))
        if "capacity" in earlier:
            plot_connections(earlier, os.path.join(args.out, "connections.png"))
        if "storm" in earlier:
            plot_storm(earlier, os.path.join(args.out, "storm.png"))
        return 0

    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    compile_rusty_ws()  # every hub process this run starts reads them (the storm's new process above all)
    servers = [SERVERS[name] for name in ORDER if name in args.only.split(",")]
    single = "loadgen,fanout,latency,sessions,capacity,compression,connect,storm"
    scenarios = (args.scenarios or (single if quick else single + ",xfanout,xsessions,xpublish")).split(",")
    deadline = 20.0 if quick else 60.0
    sizes = [100] if quick else [10, 100, 1000]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "quick": quick, "runs": runs,
    }
    started = time.monotonic()

    if "loadgen" in scenarios:
        subscribers = 100 if quick else 1000
        rows = repeat(runs, lambda: run_fanout(SERVERS["ceiling"], subscribers, 200 if quick else 1000, deadline,
                                               blast=True))
        results["loadgen_ceiling"] = {"subscribers": subscribers, "runs": rows, "rate": median_of(rows, "rate")}
        print(f"load generator ceiling ({subscribers} subscribers): {fmt(results['loadgen_ceiling']['rate'])} deliveries/s",
              flush=True)

    if "fanout" in scenarios:
        results["fanout"] = {}
        for size in sizes:
            target = 100_000 if quick else 1_000_000  # deliveries per run for the fastest servers
            for kind in servers:
                messages = max(10, int(target * kind.load) // size)
                rows = repeat(runs, lambda: run_fanout(kind, size, messages, deadline))
                results["fanout"].setdefault(str(size), {})[kind.name] = {
                    "messages": messages, "runs": rows, "rate": median_of(rows, "rate"),
                    "ok": all(r.get("ok") for r in rows)}
                report("fanout", f"S={size}", kind.name, rows, "rate", "deliveries/s")

    if "latency" in scenarios:
        seconds = 2.0 if quick else 10.0
        for key, rate in LATENCY_RATES.items():
            results[key] = {}
            for kind in servers:
                rows = repeat(runs, lambda: run_latency(kind, 100, rate, seconds, deadline))
                results[key][kind.name] = {
                    stat: median_of(rows, stat) for stat in ("p50_ms", "p99_ms", "max_ms")}
                results[key][kind.name].update(runs=rows, ok=all(r.get("ok") for r in rows))
                report("latency", f"100 subs @ {rate}/s", kind.name, rows, "p99_ms", "ms p99")

    if "sessions" in scenarios:
        results["sessions"] = {}
        pairs = 100 if quick else 500
        for kind in servers:
            rows = repeat(runs, lambda: run_sessions(kind, pairs, 20 if quick else 100, deadline))
            results["sessions"][kind.name] = {"pairs": pairs, "runs": rows, "rate": median_of(rows, "rate"),
                                              "ok": all(r.get("ok") for r in rows)}
            report("sessions", f"{pairs} pairs", kind.name, rows, "rate", "deliveries/s")

    if "capacity" in scenarios:
        results["capacity"] = {}
        for kind in servers:
            rows = results["capacity"][kind.name] = []
            for size in [1000] if quick else [1000, 5000, 10000, 19000]:
                rows.append({"connections": size, **attempt(lambda: run_capacity(kind, size, deadline * 5))})
                row = rows[-1]
                print(f"capacity  {kind.name:15} {row['connections']:>6} conns: " + (
                    f"connect {row['connect_s']:.1f}s, RSS {row['rss_kib'] / 1024:.0f} MiB "
                    f"({row['kib_per_connection']:.1f} KiB/conn), {row['threads']} threads, "
                    f"publish reached {row['reached']}" if row.get("rss_kib") else f"FAILED {row.get('failed')}"),
                    flush=True)
                if not row["ok"]:
                    break  # stop at the first failure

    if "compression" in scenarios:
        results["compression"] = {}
        for size in [100] if quick else [100, 1000]:
            target = 50_000 if quick else 500_000
            for name, kind in COMPRESSING.items():
                if name not in args.only.split(","):
                    continue
                messages = max(10, int(target * kind.load) // size)
                rows = repeat(runs, lambda: run_fanout(kind, size, messages, deadline, deflate=True))
                results["compression"].setdefault(str(size), {})[name] = {
                    "messages": messages, "runs": rows, "rate": median_of(rows, "rate"),
                    "ok": all(r.get("ok") for r in rows)}
                report("deflate", f"S={size}", name, rows, "rate", "deliveries/s")

    across = [name for name in ("xfanout", "xsessions", "xpublish") if name in scenarios]
    if across:
        try:
            results.update(multinode.run_all(across, quick, runs, deadline, repeat, median_of, report))
        except RuntimeError as exc:  # no redis-server here: the other scenarios still count
            print(f"multi-node scenarios skipped: {exc}", flush=True)
            results["multinode_skipped"] = str(exc)
    clients = args.connections or (500 if quick else 10_000)
    if "connect" in scenarios:
        results["connect"] = connect_scenario(servers, clients, runs, deadline * 3)
    if "storm" in scenarios:
        results["storm"] = storm_scenario(servers, clients, runs, deadline * 3)

    results["seconds"] = time.monotonic() - started
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(strip_samples(results), handle, indent=1)
    print_table(results)
    if not quick and "fanout" in results:
        plot(results, os.path.join(args.out, "fanout.png"))
    if not quick:
        multinode.plot(results, os.path.join(args.out, "multinode.png"))
    if not quick and "capacity" in results:
        plot_connections(results, os.path.join(args.out, "connections.png"))
    if not quick and "storm" in results:
        plot_storm(results, os.path.join(args.out, "storm.png"))
    print(f"done in {results['seconds']:.0f}s; results in {args.out}/results.json")
    return 0 if ours_clean(results) else 1


def connect_scenario(servers: list[ServerKind], size: int, runs: int, deadline: float) -> dict:
    by_server = {}
    for kind in servers:
        if kind.dialect != "rusty":
            continue  # the Engine.IO dialect has no connect role
        rows = repeat(runs, lambda: run_connect(kind, size, deadline))
        by_server[kind.name] = {"connections": size, "runs": rows, "elapsed": median_of(rows, "elapsed"),
                                "rate": median_of(rows, "rate"), "ok": all(r.get("ok") for r in rows)}
        report("connect", f"{size} clients", kind.name, rows, "elapsed", "s")
        report("connect", "server CPU/conn", kind.name, rows, "server_cpu_ms_per_connection", "ms")
        report("connect", "ctx switches/conn", kind.name, rows, "server_switches_per_connection", "")
    return by_server


#: The storm scenario's servers: those that can be stopped and started again on one port by their script.
STORM_SERVERS = ("rusty_ws", "websockets")


def storm_scenario(servers: list[ServerKind], size: int, runs: int, deadline: float) -> dict:
    by_server = {}
    for kind in servers:
        if kind.name not in STORM_SERVERS:
            continue
        rows = repeat(runs, lambda: run_storm(kind, size, deadline))
        by_server[kind.name] = {"connections": size, "runs": rows, "ok": all(r.get("ok") for r in rows), **{
            key: median_of(rows, key) for key in ("all_back_s", "after_restart_s", "restart_s", "refused_http",
                                                   "refused_tcp", "healthz_max_s", "internal_max_s")}}
        report("storm", f"{size} clients", kind.name, rows, "all_back_s", "s until all back")
        for row in rows:
            if row.get("ok"):
                print(f"          restart {row['restart_s']:.1f}s, back {row['after_restart_s']:.1f}s after it; "
                      f"refused: {row['refused_http']} HTTP, {row['refused_tcp']} TCP; /healthz max "
                      f"{fmt(row.get('healthz_max_s'))}s, {row.get('healthz_failures', 0)} unanswered; "
                      f"stop {row['stop_s']:.2f}s", flush=True)
            if row.get("stop_phases"):
                print(f"          the old process's stop: {row['stop_phases']}", flush=True)
            for line in row.get("stop_lines", []):
                print(f"          {line}", flush=True)
            if row.get("startup"):
                print(f"          the new process: listening {row['spawn_to_listening_s']:.2f}s after it was started; "
                      f"start-up from its creation (CPU): {row['startup']}", flush=True)
            for label, port in (("healthz", "its port"), ("internal", "the internal port")):
                if row.get(f"{label}_answers"):
                    print(f"          /healthz on {port}: {row[f'{label}_answers']} answers, "
                          f"{row.get(f'{label}_failures', 0)} unanswered, max {fmt(row.get(f'{label}_max_s'))}s, "
                          f"connect max {fmt(row.get(f'{label}_connect_max_s'))}s ({row.get(f'{label}_slow_connects')} "
                          f"took 0.9s or more: SYNs sent again), after connect max "
                          f"{fmt(row.get(f'{label}_answer_max_s'))}s; slowest (sent after the stop, connect, "
                          f"answer): {row.get(f'{label}_slowest')}", flush=True)
            if row.get("time_wait_at_start") is not None:
                print(f"          at its start: {row['time_wait_at_start']} sockets in TIME_WAIT, "
                      f"load {row['load_at_start']:.1f}", flush=True)
            if row.get("kernel"):
                print("          kernel (TcpExt, machine-wide): "
                      + ", ".join(f"{name} +{count}" for name, count in row["kernel"].items()), flush=True)
    return by_server


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def report(scenario: str, label: str, name: str, rows: list[dict], key: str, unit: str) -> None:
    values = ", ".join(fmt(r.get(key)) if r.get("ok") else f"FAILED({describe(r)})" for r in rows)
    print(f"{scenario:9} {label:18} {name:15} {values} {unit}", flush=True)


def describe(row: dict) -> str:
    if row.get("failed"):
        return str(row["failed"])[:80]
    return (f"{row.get('delivered')}/{row.get('expected')} delivered, {row.get('disorder')} out of order, "
            f"{row.get('foreign')} foreign, {row.get('closed', 0)} closed {row.get('close_codes', [])}")


def strip_samples(results: Any) -> Any:
    if isinstance(results, dict):
        return {k: strip_samples(v) for k, v in results.items() if k != "latencies_us"}
    if isinstance(results, list):
        return [strip_samples(v) for v in results]
    return results


def ours_clean(results: dict) -> bool:
    fine = True
    for size in results.get("fanout", {}).values():
        fine &= size.get("rusty_ws", {}).get("ok", True)
    for scenario in (*LATENCY_RATES, "sessions"):
        fine &= results.get(scenario, {}).get("rusty_ws", {}).get("ok", True)
    for size in results.get("compression", {}).values():
        fine &= size.get("rusty_ws", {}).get("ok", True)
    fine &= all(row.get("ok") for row in results.get("capacity", {}).get("rusty_ws", []))
    for scenario in ("connect", "storm"):
        fine &= results.get(scenario, {}).get("rusty_ws", {}).get("ok", True)
    return fine and multinode.all_clean(results)


def ratio(ours: float | None, theirs: float | None) -> str:
    return "-" if not ours or not theirs else f"{ours / theirs:.2f}x"


def print_table(results: dict) -> None:
    print("\nratios are rusty_ws / peer, medians of the same run")
    if "fanout" in results:
        print(f"\n{'fan-out deliveries/s':24}" + "".join(f"{n:>16}" for n in ORDER))
        for size, by_server in results["fanout"].items():
            cells = [fmt(by_server.get(n, {}).get("rate")) for n in ORDER]
            print(f"{'S=' + size:24}" + "".join(f"{c:>16}" for c in cells))
            ours = by_server.get("rusty_ws", {}).get("rate")
            print(f"{'  ratio':24}" + "".join(f"{ratio(ours, by_server.get(n, {}).get('rate')):>16}" for n in ORDER))
    for scenario, rate in LATENCY_RATES.items():
        if scenario in results:
            print(f"\n{f'latency @{rate}/s, 100 subs':24}" + "".join(f"{n:>16}" for n in ORDER))
            for key in ("p50_ms", "p99_ms", "max_ms"):
                print(f"{key:24}" + "".join(f"{fmt(results[scenario].get(n, {}).get(key)):>16}" for n in ORDER))
    if "sessions" in results:
        print(f"\n{'sessions deliveries/s':24}" + "".join(f"{n:>16}" for n in ORDER))
        rates = {n: results["sessions"].get(n, {}).get("rate") for n in ORDER}
        print(f"{'rate':24}" + "".join(f"{fmt(rates[n]):>16}" for n in ORDER))
        print(f"{'  ratio':24}" + "".join(f"{ratio(rates['rusty_ws'], rates[n]):>16}" for n in ORDER))
    multinode.print_tables(results, fmt)
    if "compression" in results:
        print(f"\n{'deflate fan-out, del./s':24}" + "".join(f"{n:>16}" for n in COMPRESSING))
        for size, by_server in results["compression"].items():
            rates = {n: by_server.get(n, {}).get("rate") for n in COMPRESSING}
            print(f"{'S=' + size:24}" + "".join(f"{fmt(rates[n]):>16}" for n in COMPRESSING))
            print(f"{'  ratio':24}" + "".join(f"{ratio(rates['rusty_ws'], rates[n]):>16}" for n in COMPRESSING))
    print_connection_tables(results)


def print_connection_tables(results: dict) -> None:
    """The capacity, connect and storm rows (issue 15's scenarios)."""
    if "capacity" in results:
        print(f"\n{'capacity: KiB/conn':24}" + "".join(f"{n:>16}" for n in ORDER))
        sizes = sorted({row["connections"] for rows in results["capacity"].values() for row in rows})
        for size in sizes:
            cells = []
            for name in ORDER:
                row = next((r for r in results["capacity"].get(name, []) if r["connections"] == size), None)
                cells.append("-" if row is None else f"{row['kib_per_connection']:.1f}" if row.get("ok") else "FAILED")
            print(f"{size:<24}" + "".join(f"{c:>16}" for c in cells))
    if "connect" in results:
        print(f"\n{'connect: seconds':24}" + "".join(f"{n:>16}" for n in ORDER))
        elapsed = {n: results["connect"].get(n, {}).get("elapsed") for n in ORDER}
        print(f"{'elapsed':24}" + "".join(f"{fmt(elapsed[n]):>16}" for n in ORDER))
        print(f"{'  peer / rusty_ws':24}" + "".join(f"{ratio(elapsed[n], elapsed['rusty_ws']):>16}" for n in ORDER))
    if "storm" in results:
        print(f"\n{'storm':24}" + "".join(f"{n:>16}" for n in STORM_SERVERS))
        for key in ("all_back_s", "restart_s", "after_restart_s", "refused_http", "refused_tcp", "healthz_max_s",
                    "internal_max_s"):
            print(f"{key:24}" + "".join(f"{fmt(results['storm'].get(n, {}).get(key)):>16}" for n in STORM_SERVERS))


def plot(results: dict, path: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))
    sizes = sorted(int(s) for s in results["fanout"])
    for name in ORDER:
        points = [(s, results["fanout"][str(s)].get(name, {}).get("rate")) for s in sizes]
        points = [(s, r) for s, r in points if r]
        if points:
            axes.plot(*zip(*points), marker="o", label=name)
    ceiling = results.get("loadgen_ceiling", {}).get("rate")
    if ceiling:
        axes.axhline(ceiling, color="grey", linestyle="--", linewidth=1, label="load generator's own ceiling")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("subscribers of one topic")
    axes.set_ylabel("deliveries per second")
    axes.set_title("Fan-out, 1 publisher, ~100-byte payloads (medians)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def plot_storm(results: dict, path: str) -> None:
    """Each reconnect-storm run as a bar: the old server's stop, the new one's start, the clients' return;
    beside it, rusty_ws's slowest /healthz answer of the run on each port (the target: under 1 s)."""
    plt = pyplot()
    if plt is None:
        return
    figure, (times, health) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    labels, health_labels = [], []
    for name in STORM_SERVERS:
        for index, row in enumerate(results["storm"].get(name, {}).get("runs", [])):
            if not row.get("ok"):
                continue
            x = len(labels)
            labels.append(f"{name}\nrun {index + 1}")
            stop, start = row["stop_s"], row["restart_s"] - row["stop_s"]
            times.bar(x, stop, color="C3", label="stop (4200s out)" if x == 0 else None)
            times.bar(x, start, bottom=stop, color="C1", label="new process listening" if x == 0 else None)
            times.bar(x, row["after_restart_s"], bottom=row["restart_s"], color="C0",
                      label="clients back" if x == 0 else None)
            if row.get("healthz_max_s") is not None:
                y = len(health_labels)
                health_labels.append(f"{name} {index + 1}")
                health.bar(y - 0.2, row["healthz_max_s"], width=0.4, color="C2", label="hub's port" if y == 0 else None)
                health.bar(y + 0.2, row.get("internal_max_s") or 0, width=0.4, color="C4",
                           label="internal port" if y == 0 else None)
    times.axhline(10, color="grey", linestyle="--", linewidth=1, label="target: all back in 10 s")
    times.set_xticks(range(len(labels)), labels, fontsize=8)
    times.set_ylabel("seconds from the stop")
    times.legend(fontsize=8)
    health.set_xticks(range(len(health_labels)), health_labels, fontsize=8)
    health.set_ylabel("slowest /healthz answer (s)")
    health.legend(fontsize=8)
    figure.suptitle(f"Reconnect storm: {results['storm'].get('rusty_ws', {}).get('connections', '?')} subscribed "
                    "clients, the server restarted")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def plot_connections(results: dict, path: str) -> None:
    """Memory per idle connection and connect time against connections held, per server."""
    plt = pyplot()
    if plt is None:
        return
    figure, (memory, connect) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name in ORDER:
        rows = [r for r in results["capacity"].get(name, []) if r.get("ok")]
        if rows:
            sizes = [r["connections"] for r in rows]
            memory.plot(sizes, [r["kib_per_connection"] for r in rows], marker="o", label=name)
            connect.plot(sizes, [r["connect_s"] for r in rows], marker="o", label=name)
    for axes, label in ((memory, "RSS growth per connection (KiB)"), (connect, "seconds to connect them all")):
        axes.set_xscale("log")
        axes.set_xlabel("idle subscribed connections held")
        axes.set_ylabel(label)
        axes.grid(True, which="both", alpha=0.3)
    connect.set_yscale("log")
    memory.legend()
    figure.suptitle("Capacity: one process, every connection reached by one publish")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
