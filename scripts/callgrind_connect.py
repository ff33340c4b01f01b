"""The connect scenario as a load-independent measure: server CPU, context switches and instructions per connection.

The wall-clock bench (``scripts/bench.py --scenarios connect``) moves by 2-3x
with the machine's load. This driver runs the hub as ``rusty-ws serve`` does
(``HubServer``, ``HubRequestHandler``, the bench's app: ``benchlib/run_rusty.py``)
in one process, and the clients (the bench's own load generator,
``benchlib/loadgen.py``, dialect ``rusty``: the handshake, then
``register-session``, ``subscribe`` and ``ping``, ready at the ``pong``) in
another that nothing traces. The driver itself (``measure``) sits between them:

1. it starts the hub (under valgrind, strace or nothing) and the clients;
2. marks the hub (``getrusage``: CPU seconds of all its threads, voluntary and
   involuntary context switches; its RSS), and with ``--tool callgrind`` zeroes its counters
   (``callgrind_control --zero``);
3. lets the clients connect ``N`` in batches of ``--batch`` (the bench: 500 per
   generator, 4 generators), until every one has its ``pong``;
4. marks the hub again (and dumps callgrind's counts: ``callgrind_control --dump``),
   then closes the clients and stops the hub.

So what is counted is exactly connecting and subscribing, not start-up nor the
close. Two sizes (``--connections 200,600``): the difference over the difference
of connections, so what a burst costs once cancels out::

    nice -n 10 .venv/bin/python scripts/callgrind_connect.py measure --connections 500,1500
    nice -n 10 .venv/bin/python scripts/callgrind_connect.py measure --connections 100,300 --tool callgrind
    nice -n 10 .venv/bin/python scripts/callgrind_connect.py measure --connections 200,600 --tool strace

``--batch 1``: one client at a time. ``--switch-interval`` sets the hub's
``sys.setswitchinterval`` (the stand-alone hub's is 0.05 s: ``create_app``). ``--annotate`` prints ``callgrind_annotate``'s top
functions of the larger run's dump. ``--tool strace`` reports system calls per
connection (``strace -c -f``, over the whole run: the difference of the two runs).
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from benchlib.callgrind import total_instructions  # noqa: E402

# --------------------------------------------------------------------------- the hub (traced)

def hub_main(args: argparse.Namespace) -> None:
    import logging

    from rusty_ws import create_app
    from rusty_ws.server.hub_server import make_server
    from rusty_ws.server.serve import freeze_startup_objects

    logging.basicConfig(level=logging.WARNING)
    app = create_app({  # the bench's app (benchlib/run_rusty.py)
        "RUSTY_WS_JWT_SECRET_KEY": "benchmark-" + "x" * 32,
        "RUSTY_WS_MAX_CONNECTIONS": 20_000,
        "RUSTY_WS_MAX_SUBSCRIPTIONS": 100,
        "RUSTY_WS_COMPRESSION": 0,
        **({"RUSTY_WS_PING_INTERVAL": args.ping_interval} if args.ping_interval >= 0 else {}),
    })
    if args.switch_interval:  # after create_app, which sets the stand-alone hub's (0.05 s)
        sys.setswitchinterval(args.switch_interval)
    if args.gc_threshold:  # "0": the collector off; "A,B,C": gc.set_threshold(A, B, C) (after the freeze below)
        thresholds = [int(n) for n in args.gc_threshold.split(",")]
        gc_setting = gc.disable if thresholds == [0] else (lambda: gc.set_threshold(*thresholds))
    else:
        gc_setting = None
    if args.futex_slots >= 0:  # Linux 6.16+: the process's private futex hash (16 slots on 2 CPUs); 0: the global one
        _set_futex_slots(args.futex_slots)
    if args.stack_size >= 0:  # KiB; 0: the system's (ulimit -s)
        threading.stack_size(args.stack_size * 1024)
    if args.no_stack_release:  # what release_stack_below costs, and what it gives back (RSS)
        from rusty_ws.server import handoff
        handoff._release = None
    server = make_server(app, "127.0.0.1", 0)
    freeze_startup_objects()  # as serve() does
    if gc_setting is not None:
        gc_setting()
    # The collections so far, by generation, and their CPU seconds (gc.callbacks; the collecting thread's CPU).
    collections = {"gen0": 0, "gen1": 0, "gen2": 0, "gen0_s": 0.0, "gen1_s": 0.0, "gen2_s": 0.0}
    started_at = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started_at[0] = time.thread_time()
        else:
            collections[f"gen{info['generation']}"] += 1
            collections[f"gen{info['generation']}_s"] += time.thread_time() - started_at[0]
    gc.callbacks.append(on_gc)
    profiles = _profile_threads(server) if args.profile else None
    phases = _time_phases(app, server) if args.phases else None
    loop = threading.Thread(target=_profiled(server.serve_forever, profiles), name="accept", daemon=True)
    loop.start()
    print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "mark":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            with open("/proc/self/statm") as statm:
                rss_kib = int(statm.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
            marked = {"user": usage.ru_utime, "system": usage.ru_stime, "voluntary": usage.ru_nvcsw,
                      "involuntary": usage.ru_nivcsw, "minflt": usage.ru_minflt, "rss_kib": rss_kib,
                      "time": time.monotonic(), "vmas": _mappings(), **collections,
                      **_switches_by_thread(), **_cpu_by_thread()}
            # What reading /proc for every thread just cost (~10-20 µs of system time each: 0.1 s and more
            # at 10,000 threads) is the mark's own: a window starts from these (``_USAGE``), not from the above.
            usage = resource.getrusage(resource.RUSAGE_SELF)
            marked.update(user_end=usage.ru_utime, system_end=usage.ru_stime, voluntary_end=usage.ru_nvcsw,
                          involuntary_end=usage.ru_nivcsw, minflt_end=usage.ru_minflt)
            print(json.dumps(marked), flush=True)
        elif line.strip() == "zero" and profiles is not None:
            for profile in list(profiles):
                profile.clear()
        elif line.strip() == "profile" and profiles is not None:
            _print_profile(profiles, args.profile)
            print("{}", flush=True)
        elif line.strip() == "phases" and phases is not None:
            print(json.dumps(_phase_report(phases)), flush=True)
        elif line.strip() == "ended":  # wait (bounded) until every request thread has ended
            deadline = time.monotonic() + 600
            while _request_threads() and time.monotonic() < deadline:
                time.sleep(0.01)
            print(json.dumps({"threads": _request_threads()}), flush=True)
        elif line.strip() == "stop":
            break
    server.shutdown()
    server.server_close()
    os._exit(0)  # as `rusty-ws serve` does (serve.exit_now): no wait for the connection threads


def _switches_by_thread() -> dict[str, int]:
    """Context switches so far (``/proc/self/task/*/status``), summed by kind of thread: the accept loop,
    the request threads (``rusty_ws-conn-*`` once connected), the rest."""
    sums = {"switches_accept": 0, "switches_request_threads": 0, "switches_other": 0}
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    for task in os.listdir("/proc/self/task"):
        name = names.get(int(task), "")
        try:
            with open(f"/proc/self/task/{task}/status") as status:
                count = sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        except (OSError, ValueError, IndexError):
            continue
        kind = "accept" if name == "accept" else "request_threads" if name.startswith(("rusty_ws-conn", "Thread-")) else "other"
        sums[f"switches_{kind}"] += count
    return sums


def _set_futex_slots(slots: int) -> None:
    """``prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, slots)``, after a first thread (which sizes it)."""
    import ctypes

    started = threading.Thread(target=lambda: None)
    started.start()
    started.join()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(78, 1, slots, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_FUTEX_HASH) failed: errno {ctypes.get_errno()}")


def _request_threads() -> int:
    """Request threads alive: werkzeug's ``Thread-N``, or ``rusty_ws-conn-N`` while a connection runs."""
    return sum(thread.name.startswith(("Thread-", "rusty_ws-conn")) for thread in threading.enumerate())


def _mappings() -> int:
    """The process's memory mappings now (``/proc/self/maps``' lines): two per connection thread's stack."""
    with open("/proc/self/maps", "rb") as maps:
        return maps.read().count(b"\n")


def _cpu_by_thread() -> dict[str, float]:
    """CPU seconds so far (``schedstat``) of the accept loop and of the hub's writer thread, by name."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    sums = {"cpu_accept": 0.0, "cpu_writer": 0.0}
    for tid, name in names.items():
        kind = "accept" if name == "accept" else "writer" if name == "rusty_ws-writer" else None
        if kind is None:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat:
                sums[f"cpu_{kind}"] += int(stat.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
    return sums


def _profiled(target, profiles):  # type: ignore[no-untyped-def]
    """``target`` run under a ``cProfile.Profile`` of its own thread (kept in ``profiles``), or as is."""
    if profiles is None:
        return target
    import cProfile

    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        profile = cProfile.Profile(time.thread_time)  # CPU time: a thread waiting for the GIL is not charged
        profiles.append(profile)
        profile.enable()
        try:
            return target(*args, **kwargs)
        finally:
            profile.disable()
    return run


def _profile_threads(server):  # type: ignore[no-untyped-def]
    """Profile every request thread (``--profile``): cProfile sees one thread each, so one per thread."""
    profiles: list = []
    thread_body = server.process_request_thread
    server.process_request_thread = _profiled(thread_body, profiles)
    return profiles


def _print_profile(profiles, count: int) -> None:  # type: ignore[no-untyped-def]
    import io
    import pstats

    # The connection threads block in recv: what their profiles hold is what they did until now.
    stream = io.StringIO()
    stats = pstats.Stats(profiles[0], stream=stream)
    for profile in profiles[1:]:
        stats.add(profile)
    stats.sort_stats("tottime").print_stats(count)
    stats.sort_stats("cumulative").print_stats(count)
    sys.stderr.write(stream.getvalue())


def _time_phases(app, server) -> dict:  # type: ignore[no-untyped-def]
    """``--phases``: each request thread's CPU time (``time.thread_time``) at points of its handshake.

    Wrapped here, not in the library: ``process_request_thread``'s start (what
    the thread cost before its first line of Python), the handler's first
    request (after ``setup``), ``make_environ`` (the head parsed) and
    ``Hub.serve`` (the request dispatched, admitted, the 101 written). ``_phase_report`` adds each thread's whole CPU time from
    ``/proc/self/task/<tid>/schedstat`` (nanoseconds): what came after the
    last point (the connection, the first commands) and the kernel's share.
    """
    from rusty_ws.server.request_handler import HubRequestHandler
    from rusty_ws.server.state import state_of

    threads: dict[int, list[tuple[str, float]]] = {}
    clock = time.thread_time

    def mark(label: str) -> None:
        threads.setdefault(threading.get_native_id(), []).append((label, clock()))

    def wrap(owner, name: str, label: str, *, instance: bool = True) -> None:  # type: ignore[no-untyped-def]
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            mark(label)
            return inner(*args, **kwargs)
        setattr(owner, name, wrapper)

    wrap(server, "process_request_thread", "thread started")
    wrap(server, "_upgrade_plainly", "request thread's Python before the head read")
    wrap(HubRequestHandler, "handle_one_request", "handler set up")
    wrap(HubRequestHandler, "make_environ", "head parsed")
    wrap(state_of(app).hub, "serve", "request to the 101 (Flask or not)")
    return {"threads": threads, "accept": [], "start": _task_times()}


def _task_times() -> dict[int, int]:
    """Every thread's CPU time so far, in nanoseconds (``schedstat``'s first field)."""
    times = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/schedstat") as stat:
                times[int(task)] = int(stat.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return times


def _phase_report(phases: dict) -> dict:
    """Mean CPU microseconds per request thread in each phase, and what the other threads spent."""
    now = _task_times()
    threads = phases["threads"]
    sums: dict[str, float] = {}
    count = 0
    for tid, points in list(threads.items()):
        if tid not in now or len(points) < 3:
            continue
        count += 1
        previous = 0.0
        for label, at in points:
            sums[label] = sums.get(label, 0.0) + (at - previous)
            previous = at
        sums["connection (after Hub.serve's start)"] = (
            sums.get("connection (after Hub.serve's start)", 0.0) + now[tid] / 1e9 - previous)
    report = {label: round(total * 1e6 / count, 1) for label, total in sums.items()} if count else {}
    report["request threads"] = count
    for tid, ns in now.items():  # the accept loop, the writer, the main thread: per request thread
        if tid not in threads and count:
            try:
                with open(f"/proc/self/task/{tid}/comm") as comm:
                    name = comm.read().strip()
            except OSError:
                name = str(tid)
            key = f"thread {name!r} ({tid}), per request thread"
            spent = round((ns - phases["start"].get(tid, 0)) / 1e3 / count, 1)
            if spent:
                report[key] = spent
    return report


# --------------------------------------------------------------------------- the clients (not traced)

def clients_main(args: argparse.Namespace) -> None:
    """Connect up to each of ``--connections``' counts in turn (``A,B,...``), each after a ``go``."""
    import gc

    from benchlib.loadgen import LoadGen

    gc.disable()
    targets = [int(n) for n in args.connections.split(",")]
    generator = LoadGen({"dialect": "rusty", "port": args.port, "deadline": 3600, "batch": args.batch})
    print("ready", flush=True)
    for target in targets:
        if sys.stdin.readline().strip() != "go":
            return
        started = time.monotonic()
        generator.connect_all([("s1", "T", 0)] * (target - len(generator.conns)))
        report = generator.report()
        print(json.dumps({"connections": report["connections"], "errors": report["errors"],
                          "closed": report["closed"], "elapsed": time.monotonic() - started}), flush=True)
    sys.stdin.readline()  # the hub is marked: now close


# --------------------------------------------------------------------------- the driver

def _line(process: subprocess.Popen) -> str:  # type: ignore[type-arg]
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"{process.args[:3]} ended early (exit {process.wait()})")
    return line.strip()


def _send(process: subprocess.Popen, text: str) -> None:  # type: ignore[type-arg]
    assert process.stdin is not None
    process.stdin.write(text + "\n")
    process.stdin.flush()


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, check=True, timeout=600)


#: Counted from the end of the window's first mark (``*_end``) to the start of its second: a mark reads
#: /proc for every thread, which costs more the more connections are held.
_USAGE = ("user", "system", "voluntary", "involuntary", "minflt")
_DELTAS = ("rss_kib", "vmas", "gen0", "gen1", "gen2",
           "gen0_s", "gen1_s", "gen2_s", "switches_accept", "switches_request_threads", "switches_other",
           "cpu_accept", "cpu_writer")


def _deltas(before: dict, after: dict) -> dict:
    return {**{key: after[key] - before.get(key + "_end", before[key]) for key in _USAGE},
            **{key: after[key] - before[key] for key in _DELTAS}}


def one_run(args: argparse.Namespace, connections: int, tmp: str) -> dict:
    """One hub, ``connections`` clients: the hub's deltas over connecting them."""
    return windows_run(args, [connections], tmp)[0]


def windows_run(args: argparse.Namespace, targets: list[int], tmp: str) -> list[dict]:
    """One hub, its clients connected up to each of ``targets`` in turn: the hub's deltas over each window.

    A window is from one count of connections held to the next (``--windows 2000,4000``:
    0 to 2,000, then 2,000 to 4,000), so what a connection costs can be read against
    how many are already held. With ``--tool callgrind`` each window is one dump
    (``callgrind_control --dump`` counts since the last); with ``--perf-dir`` each
    window is recorded by ``perf record`` (cpu-clock, call graphs) into a file of its own.
    """
    top = targets[-1]
    hub_command = [sys.executable, os.path.abspath(__file__), "hub", "--switch-interval", str(args.switch_interval),
                   "--gc-threshold", args.gc_threshold, "--stack-size", str(args.stack_size),
                   "--ping-interval", str(args.ping_interval), "--futex-slots", str(args.futex_slots),
                   "--profile", str(args.profile)] + (["--phases"] if args.phases else []) + (
                   ["--no-stack-release"] if args.no_stack_release else [])
    out = os.path.join(tmp, f"{args.tool}.{top}")
    if args.tool == "callgrind":
        hub_command = ["valgrind", "--tool=callgrind", "--max-threads=" + str(top + 100),
                       f"--callgrind-out-file={out}", *hub_command]
    elif args.tool == "strace":
        hub_command = ["strace", "-c", "-f", "-o", out, *hub_command]
    hub = subprocess.Popen(hub_command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    clients = None
    results: list[tuple[dict, dict, dict]] = []
    phases = None
    try:
        started = json.loads(_line(hub))
        clients = subprocess.Popen([sys.executable, os.path.abspath(__file__), "clients", "--port",
                                    str(started["port"]), "--connections", ",".join(map(str, targets)),
                                    "--batch", str(args.batch)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if _line(clients) != "ready":
            raise SystemExit("the clients did not get ready")
        if args.profile:
            _send(hub, "zero")
        for index, _ in enumerate(targets):
            _send(hub, "mark")
            before = json.loads(_line(hub))
            if args.tool == "callgrind":  # after the mark, whose /proc reads grow with the threads held
                _callgrind_control("--zero", started["pid"])
            perf = None
            if args.perf_dir:
                perf = subprocess.Popen(["perf", "record", "-q", "-e", args.perf_event, *args.perf_graph.split(),
                                         "-p", str(started["pid"]),
                                         "-o", os.path.join(args.perf_dir, f"window{index}.data")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)  # perf attaches to every thread before the window opens
            _send(clients, "go")
            result = json.loads(_line(clients))
            if perf is not None:
                perf.send_signal(2)
                perf.wait(120)
            if args.tool == "callgrind":
                _callgrind_control("--dump", started["pid"])
            _send(hub, "mark")
            after = json.loads(_line(hub))
            results.append((result, before, after))
        if args.close_window:  # the clients close every connection at once: what the hub spends on the ends
            _send(hub, "mark")
            before = json.loads(_line(hub))
            if args.tool == "callgrind":
                _callgrind_control("--zero", started["pid"])
            _send(clients, "close")
            clients.wait(120)
            _send(hub, "ended")
            ended = json.loads(_line(hub))
            if args.tool == "callgrind":
                _callgrind_control("--dump", started["pid"])
            _send(hub, "mark")
            after = json.loads(_line(hub))
            results.append(({"connections": targets[-1], "errors": 0, "closed": 0, "elapsed": after["time"] - before["time"],
                             "close": True, "threads_left": ended["threads"]}, before, after))
        if args.profile:
            _send(hub, "profile")
            _line(hub)
        if args.phases:
            _send(hub, "phases")
            phases = json.loads(_line(hub))
        if not args.close_window:
            _send(clients, "close")
            clients.wait(120)
        _send(hub, "stop")
        hub.wait(600)
    finally:
        for process in (clients, hub):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    rows = []
    held = 0
    dumps = sorted(glob.glob(out + ".*"), key=lambda path: int(path.rsplit(".", 1)[1])) \
        if args.tool == "callgrind" else []
    for index, (result, before, after) in enumerate(results):
        if result.get("close"):
            rows.append({"connections": held, "held_before": held, "closed_all": True,
                         "threads_left": result["threads_left"], "client_elapsed": round(result["elapsed"], 3),
                         **_deltas(before, after)})
            continue
        target = targets[index]
        if result["connections"] != target or result["errors"] or result["closed"]:
            raise SystemExit(f"not every client connected and subscribed: {result}")
        row = {"connections": target - held, "held_before": held, "client_elapsed": round(result["elapsed"], 3),
               **_deltas(before, after)}
        held = target
        if args.tool == "callgrind":
            if len(dumps) <= index:
                raise SystemExit(f"callgrind wrote no dump {index} beside {out}")
            row["instructions"] = total_instructions(dumps[index])
            row["dump"] = dumps[index]
        rows.append(row)
    if args.tool == "strace":
        rows[-1]["syscalls"] = _strace_calls(out)
    if phases is not None:
        rows[-1]["phases_us"] = phases
    return rows


def _strace_calls(path: str) -> dict[str, int]:
    """``strace -c``'s table: calls per system call name."""
    calls: dict[str, int] = {}
    with open(path) as table:
        for line in table:
            fields = line.split()
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                calls[fields[-1]] = int(fields[3])
    return calls


def measure_main(args: argparse.Namespace) -> None:
    if args.windows:
        windows_main(args)
        return
    sizes = [int(n) for n in args.connections.split(",")]
    with tempfile.TemporaryDirectory(prefix="callgrind-connect-") as tmp:
        rows = [one_run(args, n, tmp) for n in sizes]
        if args.annotate and args.tool == "callgrind":
            annotate = subprocess.run(["callgrind_annotate", "--inclusive=no", rows[-1]["dump"]],
                                      capture_output=True, text=True, check=False)
            print("\n".join(annotate.stdout.splitlines()[:70]))
    for row in rows:
        row.pop("dump", None)
        n = row["connections"]
        row["cpu_ms_per_connection"] = round((row["user"] + row["system"]) * 1000 / n, 3)
        row["switches_per_connection"] = round((row["voluntary"] + row["involuntary"]) / n, 2)
        row["rss_kib_per_connection"] = round(row["rss_kib"] / n, 1)
    summary: dict = {"tool": args.tool, "batch": args.batch, "switch_interval": args.switch_interval, "runs": rows}
    if len(rows) == 2:
        first, second = rows
        extra = second["connections"] - first["connections"]

        def per(key: str, scale: float = 1.0) -> float:
            return round((second[key] - first[key]) * scale / extra, 3)

        summary["per_connection"] = {
            "cpu_ms": round(((second["user"] + second["system"]) - (first["user"] + first["system"])) * 1000 / extra, 3),
            "user_ms": per("user", 1000), "system_ms": per("system", 1000),
            "voluntary_switches": per("voluntary"), "involuntary_switches": per("involuntary"),
            "rss_kib": per("rss_kib"),
        }
        if args.tool == "callgrind":
            summary["per_connection"]["instructions"] = round(per("instructions"))
        if args.tool == "strace":
            names = set(first["syscalls"]) | set(second["syscalls"])
            calls = {name: round((second["syscalls"].get(name, 0) - first["syscalls"].get(name, 0)) / extra, 2)
                     for name in names}
            summary["per_connection"]["syscalls"] = round(sum(calls.values()), 2)
            summary["per_connection"]["syscalls_by_name"] = dict(
                sorted(((k, v) for k, v in calls.items() if abs(v) >= 0.05), key=lambda kv: -kv[1]))
        for row in rows:
            row.pop("syscalls", None)
    print(json.dumps(summary))


def windows_main(args: argparse.Namespace) -> None:
    """``--windows``: one hub, and what each window of connections cost it, by connections held before it."""
    targets = [int(n) for n in args.windows.split(",")]
    with tempfile.TemporaryDirectory(prefix="callgrind-connect-") as tmp:
        rows = windows_run(args, targets, tmp)
    for row in rows:
        row.pop("dump", None)
        n = row["connections"]
        row["cpu_ms_per_connection"] = round((row["user"] + row["system"]) * 1000 / n, 3)
        row["user_ms"] = round(row["user"] * 1000 / n, 3)
        row["system_ms"] = round(row["system"] * 1000 / n, 3)
        row["gc_ms"] = round((row["gen0_s"] + row["gen1_s"] + row["gen2_s"]) * 1000 / n, 3)
        row["accept_ms"] = round(row["cpu_accept"] * 1000 / n, 3)
        row["switches_per_connection"] = round((row["voluntary"] + row["involuntary"]) / n, 2)
        row["minflt_per_connection"] = round(row["minflt"] / n, 2)
        if "instructions" in row:
            row["instructions_per_connection"] = round(row["instructions"] / n)
    print(json.dumps({"tool": args.tool, "batch": args.batch, "gc_threshold": args.gc_threshold,
                      "stack_size": args.stack_size, "load": os.getloadavg(), "windows": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("measure", "hub", "clients"))
    parser.add_argument("--connections", default="500,1500", help="measure: one or two counts, 'SMALL,LARGE'")
    parser.add_argument("--batch", type=int, default=500, help="clients connecting at once (1: one at a time)")
    parser.add_argument("--tool", choices=("none", "callgrind", "strace"), default="none")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--switch-interval", type=float, default=0.0,
                        help="the hub's sys.setswitchinterval (0: the stand-alone hub's, 0.05 s)")
    parser.add_argument("--annotate", action="store_true")
    parser.add_argument("--phases", action="store_true",
                        help="report the request threads' CPU time in each phase of the handshake")
    parser.add_argument("--gc-threshold", default="",
                        help="the hub's collector: '0' off, or 'A,B,C' for gc.set_threshold (default: Python's)")
    parser.add_argument("--no-stack-release", action="store_true",
                        help="the hub without release_stack_below (handoff.py): its CPU against its memory")
    parser.add_argument("--windows", default="",
                        help="measure: one hub, connected up to each count in turn ('2000,4000,...'): each window's cost")
    parser.add_argument("--close-window", action="store_true",
                        help="with --windows: one more window, every client closing at once, to the last thread's end")
    parser.add_argument("--perf-dir", default="",
                        help="with --windows: record each window with perf record (cpu-clock, -g) into this folder")
    parser.add_argument("--perf-event", default="cpu-clock",
                        help="with --perf-dir: the event perf records (sched:sched_switch: where the threads block)")
    parser.add_argument("--perf-graph", default="-g",
                        help="with --perf-dir: perf's call-graph arguments ('--call-graph dwarf,8192' for the interpreter's C stack)")
    parser.add_argument("--ping-interval", type=float, default=-1,
                        help="the hub's RUSTY_WS_PING_INTERVAL (-1: its default; 0: no pings, for a slow run under callgrind)")
    parser.add_argument("--futex-slots", type=int, default=-1,
                        help="the hub's private futex hash slots (Linux 6.16+; -1: the kernel's, 0: the global hash)")
    parser.add_argument("--stack-size", type=int, default=-1,
                        help="the hub's threading.stack_size() in KiB (-1: the hub's own default, 0: the system's)")
    parser.add_argument("--profile", type=int, default=0,
                        help="print cProfile's top N functions of the hub's threads (stderr; slows it)")
    args = parser.parse_args()
    if args.role == "measure":
        measure_main(args)
    elif args.role == "hub":
        hub_main(args)
    else:
        clients_main(args)


if __name__ == "__main__":
    main()
