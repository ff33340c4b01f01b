"""What a new hub process costs before it listens: CPU, instructions and the import breakdown.

In the reconnect storm (``scripts/bench.py --scenarios storm``) the new
process's start-up is on the critical path: every client told 4200 waits for it
to listen. This driver starts the hub the way it is run, waits until its port
accepts a connection, and reads what the process had used by then:

- ``--tool none``: CPU seconds (``/proc/<pid>/stat``, all its threads) and wall
  seconds from the spawn to the first accepted connection, the median of
  ``--runs``;
- ``--tool callgrind``: instructions to listening (valgrind's callgrind, dumped
  with ``callgrind_control --dump`` once the port accepts): load-independent;
- ``--importtime``: ``python -X importtime`` of one start, each module's own
  microseconds summed by top-level package (the biggest first), and how many of
  rusty_ws's modules had no up-to-date ``.pyc`` (compiled from source at every
  start when ``PYTHONDONTWRITEBYTECODE`` is set, as on the bench machine).

Entries (``--entry``): ``cli`` is ``rusty-ws serve``, ``bench`` the storm's own
``benchlib/run_rusty.py``, ``flask`` is ``flask --app rusty_ws run``. Extra
``--python-flag`` values go to the interpreter (``-X frozen_modules=on``, ...)::

    nice -n 10 .venv/bin/python scripts/startup_cost.py --entry cli --runs 5
    nice -n 10 .venv/bin/python scripts/startup_cost.py --entry bench --tool callgrind
    nice -n 10 .venv/bin/python scripts/startup_cost.py --entry cli --importtime
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from benchlib.callgrind import total_instructions  # noqa: E402
from benchlib.processes import end  # noqa: E402

BIN = os.path.dirname(sys.executable)
LISTEN_TIMEOUT = 600.0  # seconds; under callgrind the start-up is ~50 times slower


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def command(entry: str, port: int, flags: list[str]) -> list[str]:
    """The hub's command line for ``entry`` on ``port``, run by this interpreter with ``flags``."""
    if entry == "cli":
        return [sys.executable, *flags, os.path.join(BIN, "rusty-ws"), "serve", "--port", str(port),
                "--log-level", "warning"]
    if entry == "bench":
        return [sys.executable, *flags, os.path.join(HERE, "benchlib", "run_rusty.py"), str(port)]
    if entry == "flask":
        return [sys.executable, *flags, os.path.join(BIN, "flask"), "--app", "rusty_ws", "run", "--port",
                str(port)]
    raise SystemExit(f"unknown entry {entry!r}")


def environment() -> dict[str, str]:
    env = dict(os.environ, JWT_SECRET_KEY="startup-cost-" + "x" * 32)
    env.pop("RUSTY_WS_BROKER_URL", None)  # in memory: what the hub does before any broker connects
    return env


def wait_listening(process: subprocess.Popen, port: int) -> float:  # type: ignore[type-arg]
    """Block until ``port`` accepts a connection (seconds waited); fail if the process ends first."""
    started = time.monotonic()
    delay = 0.002
    while time.monotonic() - started < LISTEN_TIMEOUT:
        if process.poll() is not None:
            raise SystemExit(f"the hub exited ({process.returncode}) before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return time.monotonic() - started
        except OSError:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
    raise SystemExit(f"the hub did not listen within {LISTEN_TIMEOUT:.0f}s")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen) -> None:  # type: ignore[type-arg]
    end(process, signal.SIGTERM, 60)


def run_plain(entry: str, flags: list[str]) -> dict:
    port = free_port()
    spawned = time.monotonic()
    process = subprocess.Popen(command(entry, port, flags), env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_listening(process, port)
        return {"wall_s": time.monotonic() - spawned, "cpu_s": process_cpu(process.pid)}
    finally:
        stop(process)


def run_callgrind(entry: str, flags: list[str], tmp: str) -> dict:
    port = free_port()
    out = os.path.join(tmp, f"callgrind.{entry}.{port}")
    process = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                *command(entry, port, flags)], env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_listening(process, port)
        subprocess.run(["callgrind_control", "--dump", str(process.pid)], capture_output=True, check=True,
                       timeout=600)
    finally:
        stop(process)
    dumps = sorted(glob.glob(out + ".*"), key=lambda path: int(path.rsplit(".", 1)[1]))
    if not dumps:
        raise SystemExit(f"callgrind wrote no dump beside {out}")
    return {"instructions": total_instructions(dumps[0])}


_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def stale_pyc() -> list[str]:
    """rusty_ws's modules whose ``.pyc`` is missing or older than the source (compiled at every start)."""
    import importlib.util
    stale = []
    for source in glob.glob(os.path.join(ROOT, "rusty_ws", "**", "*.py"), recursive=True):
        cached = importlib.util.cache_from_source(source)
        if not os.path.exists(cached) or os.path.getmtime(cached) < os.path.getmtime(source):
            stale.append(os.path.relpath(source, ROOT))
    return sorted(stale)


def run_importtime(entry: str, flags: list[str]) -> dict:
    port = free_port()
    process = subprocess.Popen(command(entry, port, ["-X", "importtime", *flags]), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(process, port)
    finally:
        stop(process)
    assert process.stderr is not None
    by_package: collections.Counter[str] = collections.Counter()
    modules = 0
    for line in process.stderr.read().splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            modules += 1
            by_package[match[4].split(".")[0]] += int(match[1])
    return {"modules": modules, "self_us_total": sum(by_package.values()),
            "self_us_by_package": dict(by_package.most_common(15))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entry", choices=["cli", "bench", "flask"], default="cli")
    parser.add_argument("--tool", choices=["none", "callgrind"], default="none")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--importtime", action="store_true", help="the import breakdown of one start instead")
    parser.add_argument("--python-flag", action="append", default=[], help="an interpreter flag, e.g. -X=frozen_modules=on")
    args = parser.parse_args()
    flags = [flag for value in args.python_flag for flag in value.split("=", 1)] if args.python_flag else []
    summary: dict = {"entry": args.entry, "python_flags": flags, "stale_pyc": len(stale_pyc()),
                     "dont_write_bytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
                     "load_average": os.getloadavg()[0]}
    if args.importtime:
        summary.update(run_importtime(args.entry, flags))
    elif args.tool == "callgrind":
        with tempfile.TemporaryDirectory() as tmp:
            rows = [run_callgrind(args.entry, flags, tmp) for _ in range(args.runs)]
        summary["instructions"] = [row["instructions"] for row in rows]
        summary["instructions_median"] = statistics.median(summary["instructions"])
    else:
        rows = [run_plain(args.entry, flags) for _ in range(args.runs)]
        summary["cpu_s"] = [round(row["cpu_s"], 3) for row in rows]
        summary["wall_s"] = [round(row["wall_s"], 3) for row in rows]
        summary["cpu_s_median"] = statistics.median(summary["cpu_s"])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
