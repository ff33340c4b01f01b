#!/usr/bin/env python3
"""Where the publishing node's CPU goes in ``bench.py``'s ``xpublish`` shape, per thread, history on and off.

The shape (``benchlib/multinode.py``, ``fanout(..., local_watcher=True)``): two
rusty_ws nodes on one private redis-server, a publisher and a watcher (a
subscriber of the same pair) on node 1, a subscriber on node 2; the publisher
sends N publishes as fast as node 1 takes them, and the run ends when both
subscribers have all N. Each variant runs in fresh nodes:

- ``on``: history in Redis (the benchmark's ``sender`` variant);
- ``off``: ``RUSTY_WS_HISTORY_SIZE=0`` (``sender-nohistory``).

What is read, between the publisher's ``go`` and the last delivery: each
thread's CPU time and context switches of node 1 (``/proc/<pid>/task/<tid>``;
the nodes run through this script's ``node`` mode, which names every thread
after its kind with ``prctl(PR_SET_NAME)``: Python 3.11 does not), node 2's
and Redis' CPU (``INFO cpu``), all per publish. CPU time moves less with the
load than rates do, but a loaded machine inflates it too: compare variants of
the same run.

``--py-spy SECONDS`` also samples node 1 (``--py-spy-node 2``: node 2, the far subscriber's) with py-spy (``pip install py-spy``,
not a dependency of the project) for that long during each variant's last
round and prints, per thread kind, the functions where most samples were
(own time and with callees): a profile, proportions only.

    nice -n 10 .venv/bin/python scripts/xpublish_cost.py [--messages 50000] [--rounds 3] [--variants on,off]

``--gc 700 20000 0`` runs each variant under each collector setting too (``0``
off; ``benchlib/gc_setting.py``), interleaved; ``--no-gc`` is ``--gc 0``. Node 1's
RSS at the end (and its peak) is printed with each round.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

VARIANTS = {"on": {}, "off": {"RUSTY_WS_HISTORY_SIZE": "0"}}


# --------------------------------------------------------------------------- a node (child process)

def _kind(name: str) -> str:
    """A thread's kind, from its Python name (at most 15 bytes: the kernel's ``comm``)."""
    if name.startswith("rusty_ws-redis-sender"):
        return "sender"
    if name.startswith("rusty_ws-redis-"):
        return "listener"
    if name.startswith("rusty_ws-writer"):
        return "writer"
    if "process_request_thread" in name:
        return "connection"
    return name[:15]


def node_main(port: str) -> None:
    """``benchlib/run_rusty.py PORT``, with every thread's kernel name set to its kind."""
    import ctypes
    import runpy
    import threading

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    ended = os.environ.get("XPUBLISH_COST_ENDED")

    def named(self: threading.Thread) -> None:
        prctl(15, _kind(self.name).encode()[:15], 0, 0, 0)  # PR_SET_NAME
        try:
            bootstrap(self)
        finally:
            if ended:  # what the thread spent, for the driver: /proc forgets a thread that ended
                tid = threading.get_native_id()
                line = json.dumps({"tid": tid, **_thread_stat(f"/proc/self/task/{tid}")})
                with open(ended, "a") as out:
                    out.write(line + "\n")

    threading.Thread._bootstrap_inner = named  # type: ignore[attr-defined]
    prctl(15, b"main", 0, 0, 0)
    runs_file = os.environ.get("XPUBLISH_COST_RUNS")
    if runs_file:
        _count_runs(runs_file)
    sys.argv = [os.path.join(HERE, "benchlib", "run_rusty.py"), port]
    runpy.run_path(sys.argv[0], run_name="__main__")


def _count_runs(path: str) -> None:
    """``--run-lengths``: how many publishes each command of the history script carries (the sender's
    ``_coalesce``), as a histogram written to ``path`` every 0.2 s (the node is killed at the end)."""
    import threading

    from rusty_ws.brokers import redis_sender

    lengths: collections.Counter = collections.Counter()
    coalesce = redis_sender._coalesce

    def counted(batch: Any, *run_id: Any) -> Any:  # (the run_id of the sender's Redis, in trees that give it)
        commands, spans = coalesce(batch, *run_id)
        for command, (count, _) in zip(commands, spans):
            if command and command[0] == "EVALSHA":
                lengths[count] += 1
        return commands, spans

    redis_sender._coalesce = counted  # type: ignore[assignment]

    def write() -> None:
        while True:
            time.sleep(0.2)  # a snapshot for the driver, whenever it stops the node
            with open(path + ".new", "w") as out:
                json.dump(dict(lengths), out)
            os.replace(path + ".new", path)

    threading.Thread(target=write, name="run-lengths", daemon=True).start()


def _run_lengths(paths: list[str]) -> dict[str, Any]:
    """The histograms of ``_count_runs`` added up: runs by length, and each length's share of the publishes."""
    lengths: collections.Counter = collections.Counter()
    for path in paths:
        if os.path.exists(path):
            with open(path) as data:
                lengths.update({int(k): v for k, v in json.load(data).items()})
    runs = sum(lengths.values())
    publishes = sum(k * v for k, v in lengths.items())
    buckets = {"1": (1, 1), "2-4": (2, 4), "5-19": (5, 19), "20-99": (20, 99), "100-200": (100, 200)}
    share = {name: round(sum(k * v for k, v in lengths.items() if lo <= k <= hi) / max(1, publishes), 3)
             for name, (lo, hi) in buckets.items()}
    return {"runs": runs, "publishes": publishes, "mean": round(publishes / max(1, runs), 2),
            "share_of_publishes": share}


# --------------------------------------------------------------------------- the driver

def _thread_stat(task: str) -> dict[str, Any]:
    """One thread's kind (its kernel name), CPU seconds, voluntary and involuntary context switches."""
    with open(f"{task}/stat") as stat:
        text = stat.read()
    with open(f"{task}/status") as status:
        switches = {key: int(value) for key, _, value in (line.partition(":") for line in status)
                    if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")}
    fields = text.rpartition(")")[2].split()
    return {"kind": text[text.index("(") + 1:text.rindex(")")],
            "cpu": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
            "vcs": switches.get("voluntary_ctxt_switches", 0), "ivcs": switches.get("nonvoluntary_ctxt_switches", 0)}


def threads_of(pid: int, ended: str | None = None) -> dict[int, dict[str, Any]]:
    """Each thread of ``pid`` (``_thread_stat``), with those that ended as they were then (the file ``ended``)."""
    threads = {}
    if ended and os.path.exists(ended):
        with open(ended) as lines:
            for line in lines:
                row = json.loads(line)
                threads[row.pop("tid")] = row
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            threads[int(tid)] = _thread_stat(f"/proc/{pid}/task/{tid}")
        except OSError:
            continue  # ended meanwhile: in ``ended`` on the next look
    return threads


def by_kind(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], messages: int) -> dict[str, Any]:
    """Per thread kind: CPU µs, voluntary and involuntary switches per message, between two looks."""
    rows: dict[str, dict[str, float]] = {}
    for tid, now in after.items():
        then = before.get(tid, {"cpu": 0.0, "vcs": 0, "ivcs": 0})
        row = rows.setdefault(now["kind"], {"us": 0.0, "vcs": 0.0, "ivcs": 0.0})
        row["us"] += (now["cpu"] - then["cpu"]) * 1e6 / messages
        row["vcs"] += (now["vcs"] - then["vcs"]) / messages
        row["ivcs"] += (now["ivcs"] - then["ivcs"]) / messages
    return {kind: {key: round(value, 3) for key, value in row.items()} for kind, row in sorted(rows.items())
            if row["us"] or row["vcs"]}


def one_round(redis: Any, env: dict[str, str], messages: int, deadline: float,
              spy_seconds: float = 0.0, syscalls: bool = False, pairs: int = 0) -> dict[str, Any]:
    """One run of the shape in fresh nodes; with ``pairs``, ``bench.py``'s ``xsessions`` instead:
    ``pairs`` sessions whose two clients are on different nodes, ``messages`` publishes each way
    (per message then means per delivery, ``pairs`` * 2 * ``messages`` of them)."""
    from benchlib.generators import Generator, clean, merge, split
    from benchlib.multinode import shut_down
    from benchlib.servers import RunningServer, ServerKind

    kind = ServerKind("rusty_ws+redis", "rusty", os.path.join("..", os.path.basename(__file__)), "node")
    ended = tempfile.mktemp(prefix="xpublish-ended-")
    pauses = tempfile.mktemp(prefix="xpublish-gc-")
    runs = [tempfile.mktemp(prefix="xpublish-runs-") for _ in range(2)] if RUN_LENGTHS else []
    counting = [{"XPUBLISH_COST_RUNS": path} for path in runs] or [{}, {}]
    servers = [RunningServer(kind, {**env, "RUSTY_WS_BROKER_URL": redis.url, "XPUBLISH_COST_ENDED": ended,
                                    "BENCH_GC_PAUSES": pauses, **counting[0]}),
               RunningServer(kind, {**env, "RUSTY_WS_BROKER_URL": redis.url, **counting[1]})]
    generators: list[Generator] = []
    spy = perf = None
    try:
        common = {"dialect": "rusty", "deadline": deadline, "session": "s1", "topic": "T"}
        if pairs:
            first = 0
            for n in split(pairs, 2):
                generators.append(Generator({"dialect": "rusty", "port": servers[0].port, "port_b": servers[1].port,
                                             "deadline": deadline, "role": "pairs", "pairs": n, "first_pair": first,
                                             "count": messages}))
                first += n
            if not all(g.wait_ready() for g in generators):
                raise RuntimeError("a pair generator did not start")
            subscribers, publishers = generators, generators
            messages *= pairs * 2
        else:
            watcher = Generator({**common, "port": servers[0].port, "role": "subscribe", "connections": 1,
                                 "expect": messages})
            far = Generator({**common, "port": servers[1].port, "role": "subscribe", "connections": 1,
                             "expect": messages})
            generators += [watcher, far]
            if not (watcher.wait_ready() and far.wait_ready()):
                raise RuntimeError("a subscriber did not start")
            publisher = Generator({**common, "port": servers[0].port, "role": "publish", "count": messages})
            generators.append(publisher)
            if not publisher.wait_ready():
                raise RuntimeError("the publisher did not start")
            subscribers, publishers = [watcher, far], [publisher]
        pid = servers[0].process.pid
        before = threads_of(pid, ended)
        gc_before = _last_line(pauses)
        node1, node2, redis_cpu, wall = servers[0].cpu_seconds(), servers[1].cpu_seconds(), redis.cpu_seconds(), time.monotonic()
        if spy_seconds:
            spy = _start_spy(servers[SPY_NODE[0] - 1].process.pid, spy_seconds)
        if syscalls:
            perf = _start_perf(pid)
        for publisher in publishers:
            publisher.go()
        sent = merge([publisher.finish(deadline) for publisher in publishers])
        got = [subscriber.finish(deadline) for subscriber in subscribers]
        after = threads_of(pid, ended)
        gc_after = _last_line(pauses)
        counted = _finish_perf(perf, messages) if perf is not None else None
        row = {"ok": all(clean(g) for g in got) and not sent.get("failed") and sent.get("errors", 0) == 0,
               "wall_s": round(time.monotonic() - wall, 2),
               "node1": by_kind(before, after, messages),
               "node1_process_us": round((servers[0].cpu_seconds() - node1) * 1e6 / messages, 2),
               "node2_us": round((servers[1].cpu_seconds() - node2) * 1e6 / messages, 2),
               "redis_us": round((redis.cpu_seconds() - redis_cpu) * 1e6 / messages, 2)}
        row["node1_us"] = round(sum(r["us"] for r in row["node1"].values()), 2)
        row["node1_rss_kib"], row["node1_peak_rss_kib"] = _rss_kib(pid)
        row["node1_gc"] = _collections(gc_before, gc_after, messages)
        if spy is not None:
            row["spy"] = _finish_spy(spy)
        if counted is not None:
            row["syscalls"] = counted
        if runs:
            time.sleep(0.5)  # the nodes' counters write every 0.2 s
            row["run_lengths"] = _run_lengths(runs)
        return row
    finally:
        shut_down(generators, servers)
        for path in (ended, pauses, *runs):
            if os.path.exists(path):
                os.unlink(path)
        if perf is not None and perf[0].poll() is None:
            perf[0].kill()
            perf[0].wait()
        if spy is not None and spy[0].poll() is None:
            spy[0].kill()
            spy[0].wait()


def _last_line(path: str) -> dict[str, Any]:
    """The collector's totals so far in node 1 (``benchlib/gc_setting.PauseLog``'s last line; none yet: {}),
    with ``lines``: how many there are (one per collection)."""
    if not os.path.exists(path):
        return {"lines": 0}
    with open(path) as lines:
        rows = [line for line in lines if line.endswith("\n")]
    return {**(json.loads(rows[-1]) if rows else {}), "lines": len(rows), "path": path}


def _window(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Each collection between two ``_last_line`` reads (its generation, wall and CPU ms, objects collected)."""
    if not after.get("path"):
        return []
    with open(after["path"]) as lines:
        rows = [line for line in lines if line.endswith("\n")][before["lines"]:after["lines"]]
    return [json.loads(row)["last"] for row in rows]


def _collections(before: dict[str, Any], after: dict[str, Any], messages: int) -> dict[str, Any]:
    """Node 1's collections between two of its totals: count per generation, their CPU us per publish, longest."""
    row: dict[str, Any] = {"threshold": after.get("threshold", before.get("threshold"))}
    cpu = 0.0
    for gen in ("gen0", "gen1", "gen2"):
        b, a = before.get(gen, {}), after.get(gen, {})
        row[gen] = a.get("count", 0) - b.get("count", 0)
        cpu += a.get("cpu_s", 0.0) - b.get("cpu_s", 0.0)
    for gen, label in ((0, "gen0"), (1, "gen1"), (2, "gen2")):
        those = [c for c in _window(before, after) if c.get("gen") == gen]
        row[f"{label}_max_cpu_ms"] = max((c["cpu_ms"] for c in those), default=0.0)
        row[f"{label}_max_wall_ms"] = max((c["wall_ms"] for c in those), default=0.0)
        row[f"{label}_collected"] = sum(c["collected"] for c in those)
    row["cpu_us"] = round(cpu * 1e6 / messages, 3)
    return row


def _rss_kib(pid: int) -> tuple[int, int]:
    """A process's resident memory now and at its highest (``VmRSS``, ``VmHWM``), KiB."""
    from benchlib.servers import proc_status
    values = proc_status(pid, "VmRSS", "VmHWM")
    return values["VmRSS"], values["VmHWM"]


#: The system calls ``--syscalls`` counts per thread (``perf stat``'s tracepoints).
SYSCALLS = ("sendto", "recvfrom", "futex", "poll", "epoll_wait", "write", "read")


def _start_perf(pid: int) -> tuple[subprocess.Popen, str]:
    out = tempfile.mktemp(prefix="xpublish-perf-")
    events = ",".join(["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{name}" for name in SYSCALLS])
    process = subprocess.Popen(["perf", "stat", "--per-thread", "-x", ";", "-e", events, "-p", str(pid), "-o", out],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, out


def _finish_perf(perf: tuple[subprocess.Popen, str], messages: int) -> dict[str, dict[str, float]]:
    """System calls per message, by thread kind (``comm-tid`` in perf's lines) and call."""
    import signal

    from benchlib.processes import end

    process, out = perf
    end(process, signal.SIGINT, 30)
    counts: dict[str, dict[str, float]] = {}
    if not os.path.exists(out):
        return counts
    with open(out) as lines:
        for line in lines:
            fields = line.strip().split(";")
            if len(fields) < 4:
                continue
            thread, value, event = fields[0], fields[1], fields[3]
            if not value.isdigit():
                continue
            kind = thread.rpartition("-")[0] or thread
            name = "all" if event == "raw_syscalls:sys_enter" else event.rpartition("sys_enter_")[2]
            row = counts.setdefault(kind, {})
            row[name] = round(row.get(name, 0.0) + int(value) / messages, 3)
    os.unlink(out)
    return {kind: row for kind, row in sorted(counts.items()) if row.get("all")}


#: ``--run-lengths``: count the publishes per run of the history script in both nodes.
RUN_LENGTHS: list[bool] = []
#: ``--py-spy-node``: the node py-spy samples (1, the publisher's, or 2, the far subscriber's).
SPY_NODE: list[int] = [1]
#: ``--py-spy-gil``: sample only the thread holding the GIL (what runs Python), not those waiting for it.
SPY_GIL: list[str] = []


def _start_spy(pid: int, seconds: float) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    out = tempfile.mktemp(prefix="xpublish-spy-", suffix=".txt")
    process = subprocess.Popen([binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                                "--threads", "--format", "raw", "--nonblocking", *SPY_GIL, "--output", out],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, out


def _finish_spy(spy: tuple[subprocess.Popen, str]) -> dict[str, Any]:
    """The raw (collapsed) stacks by thread: the top functions by own and inclusive samples."""
    from benchlib.processes import end

    process, out = spy
    end(process, None, 120)
    if not os.path.exists(out):
        return {"failed": "py-spy wrote nothing"}
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    with open(out) as raw:
        for line in raw:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            thread = frames[0]
            kind = thread.split("(")[-1].rstrip(")") if "(" in thread else thread
            for prefix in ("sender", "listener", "writer", "connection", "main"):
                if prefix in thread:
                    kind = prefix
            samples = int(count)
            totals[kind] += samples
            functions = [_short(frame) for frame in frames[1:]]
            if functions:
                own[kind][functions[-1]] += samples
            for function in set(functions):
                inclusive[kind][function] += samples
    os.unlink(out)
    return {kind: {"samples": totals[kind],
                   "own": [(f, round(n * 100 / totals[kind], 1)) for f, n in own[kind].most_common(25)],
                   "inclusive": [(f, round(n * 100 / totals[kind], 1)) for f, n in inclusive[kind].most_common(40)]}
            for kind in totals}


def _short(frame: str) -> str:
    """``function (path/to/file.py:line)`` as ``function (file.py:line)``."""
    function, _, where = frame.partition(" (")
    return f"{function} ({os.path.basename(where.rstrip(')'))})" if where else function


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="on,off", help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--sessions", type=int, default=0, metavar="PAIRS",
                        help="xsessions' shape instead: PAIRS sessions split over the nodes, --messages each way")
    parser.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS",
                        help="also profile node 1 for SECONDS in each variant's last round")
    parser.add_argument("--py-spy-gil", action="store_true",
                        help="with --py-spy: only the thread that holds the GIL (its samples add up to one core)")
    parser.add_argument("--py-spy-node", type=int, choices=(1, 2), default=1,
                        help="with --py-spy: the node to profile (2: the far subscriber's, its listener)")
    parser.add_argument("--syscalls", action="store_true",
                        help="also count node 1's system calls per thread (perf stat's tracepoints)")
    parser.add_argument("--gc", nargs="+", default=[""], metavar="SPEC",
                        help="the nodes' collector, each SPEC a variant of its own (interleaved): '0' off, 'A', "
                             "'A,B' or 'A,B,C' for gc.set_threshold before serve()'s freeze (benchlib/gc_setting.py)")
    parser.add_argument("--no-gc", action="store_true", help="the nodes' collector off (--gc 0)")
    parser.add_argument("--run-lengths", action="store_true",
                        help="also count the publishes per run of the history script (the sender's merging), "
                             "both nodes; it costs the nodes a little: not with CPU measurements")
    parser.add_argument("--json", help="write the rounds here")
    if sys.argv[2:3] == ["node"]:  # a node: ``xpublish_cost.py PORT node`` (``ServerKind.command``)
        node_main(sys.argv[1])
        return
    args = parser.parse_args()
    from benchlib.redis_server import RedisProcess

    if args.py_spy_gil:
        SPY_GIL.append("--gil")
    SPY_NODE[0] = args.py_spy_node
    if args.run_lengths:
        RUN_LENGTHS.append(True)
    settings = ["0"] if args.no_gc else args.gc
    names = [f"{variant}@gc={gc}" if gc else variant for variant in args.variants.split(",") for gc in settings]
    envs = {f"{variant}@gc={gc}" if gc else variant: {**VARIANTS[variant], "BENCH_GC_THRESHOLD": gc}
            for variant in args.variants.split(",") for gc in settings}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    redis = RedisProcess()
    try:
        for round_ in range(args.rounds):
            for name in names:  # interleaved: the load drifts alike for every variant
                spy = args.py_spy if round_ == args.rounds - 1 else 0.0
                row = one_round(redis, envs[name], args.messages, time.monotonic() + 300, spy, args.syscalls,
                                args.sessions)
                row["load"] = round(os.getloadavg()[0], 1)
                results[name].append(row)
                parts = ", ".join(f"{kind} {spent['us']:.2f}" for kind, spent in row["node1"].items())
                print(f"{name:4} round {round_ + 1}: node 1 {row['node1_us']:6.2f} us/publish "
                      f"({parts}; process {row['node1_process_us']:.2f}); node 2 {row['node2_us']:.2f}; "
                      f"Redis {row['redis_us']:.2f}; RSS {row['node1_rss_kib'] // 1024} MiB "
                      f"(peak {row['node1_peak_rss_kib'] // 1024}); collections {row['node1_gc']}; {row['wall_s']} s; "
                      f"load {row['load']}{'' if row['ok'] else '; NOT CLEAN'}", flush=True)
                if "run_lengths" in row:
                    print(f"     run lengths: {row['run_lengths']}", flush=True)
    finally:
        redis.stop()
    print("\nbest round of each (by node 1's CPU): per publish, CPU us / voluntary / involuntary switches")
    for name, rows in results.items():
        best = min(rows, key=lambda r: r["node1_us"])
        median = sorted(r["node1_us"] for r in rows)[len(rows) // 2]
        print(f"  {name}: node 1 {best['node1_us']:.2f} us (median {median:.2f}), node 2 {best['node2_us']:.2f}, "
              f"Redis {best['redis_us']:.2f}, RSS {best['node1_rss_kib']} KiB (peak {best['node1_peak_rss_kib']})")
        for kind, row in best["node1"].items():
            print(f"      {kind:12} {row['us']:7.2f} us  {row['vcs']:6.3f}  {row['ivcs']:6.3f}")
        for kind, calls in best.get("syscalls", {}).items():
            print(f"      {kind:12} system calls per publish: " + ", ".join(f"{n} {v:.3f}" for n, v in calls.items()))
        for kind, spy in (rows[-1].get("spy") or {}).items():
            if not isinstance(spy, dict) or spy["samples"] < 50:
                continue
            print(f"    py-spy, {kind} ({spy['samples']} samples), own time:")
            for function, share in spy["own"][:12]:
                print(f"      {share:5.1f}%  {function}")
            print(f"    py-spy, {kind}, with callees:")
            for function, share in spy["inclusive"][:25]:
                print(f"      {share:5.1f}%  {function}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
