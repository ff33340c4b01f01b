"""Starting, watching and stopping the servers under test, each in its own process on a free port."""

from __future__ import annotations

import compileall
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def compile_rusty_ws() -> bool:
    """Write rusty_ws's missing or stale ``.pyc`` files, once, before any hub process starts.

    The package is installed editable, so nothing compiled it at install time, and
    with ``PYTHONDONTWRITEBYTECODE`` set (as on the bench machine) the interpreter
    never writes them: every new hub compiled the 42 rusty_ws modules it loads
    from source, a third of its start-up's instructions (docs/performance.md, "Start-up, session 15").
    ``compileall`` writes them whatever that variable says, and skips the fresh ones.
    """
    return bool(compileall.compile_dir(os.path.join(ROOT, "rusty_ws"), quiet=1))


@dataclass(frozen=True)
class ServerKind:
    name: str      # as shown in tables
    dialect: str   # the load generator's dialect
    script: str    # run as: python SCRIPT PORT [MODE]
    mode: str = ""
    load: float = 1.0  # share of the fan-out message count it gets, so slow servers finish in time

    def command(self, port: int) -> list[str]:
        return [sys.executable, os.path.join(HERE, self.script), str(port), *([self.mode] if self.mode else [])]


SERVERS = {
    "rusty_ws": ServerKind("rusty_ws", "rusty", "run_rusty.py"),
    "flask-socketio": ServerKind("flask-socketio", "socketio", "peer_socketio.py", load=0.01),
    "websockets": ServerKind("websockets", "rusty", "peer_websockets.py", load=0.1),
    "ceiling": ServerKind("ceiling", "rusty", "peer_ceiling.py", "coalesce"),
    "per-send": ServerKind("per-send", "rusty", "peer_ceiling.py", "per-send", load=0.2),
}
#: The multi-node scenarios' nodes (RUSTY_WS_BROKER_URL from the environment): with the
#: sender, with the sender but without hiredis, and publishing as before the sender (a
#: synchronous PUBLISH on the publisher's thread), for the ratios of one run.
NODES = {
    "redis": ServerKind("rusty_ws+redis", "rusty", "run_rusty.py"),
    "redis-nohiredis": ServerKind("rusty_ws+redis, no hiredis", "rusty", "run_rusty.py", "nohiredis"),
    "redis-sync": ServerKind("rusty_ws+redis, sync PUBLISH", "rusty", "run_rusty.py", "sync-publish"),
}
#: The compression scenario's servers: the same two with permessage-deflate on.
COMPRESSING = {
    "rusty_ws": ServerKind("rusty_ws", "rusty", "run_rusty.py", "deflate"),
    "websockets": ServerKind("websockets", "rusty", "peer_websockets.py", "deflate", load=0.1),
}


def proc_status(pid: int, *keys: str) -> dict[str, int]:
    """The first number of each of ``keys`` in ``/proc/PID/status`` (``VmRSS``, ``VmHWM``: KiB), 0 if absent."""
    values = dict.fromkeys(keys, 0)
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in values:
                values[key] = int(value.split()[0])
    return values


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningServer:
    """One server process. ``stop()`` ends it (SIGTERM, then SIGKILL) and is idempotent."""

    def __init__(self, kind: ServerKind, env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.kind = kind
        self.port = port or free_port()
        env = dict(os.environ, **(env or {}), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("FLASK_RUN_FROM_CLI", None)  # set by Flask's CLI; it turns app.run() into a no-op
        # The log goes to a file: a pipe nobody reads would stall a chatty server.
        self.log = tempfile.TemporaryFile()
        self.final_log = ""
        self.spawned = time.monotonic()
        self.process = subprocess.Popen(kind.command(self.port), env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        self._wait_listening(20.0)
        self.listening = time.monotonic()  # when a connect() first succeeded (polled every 20 ms)

    def log_head(self, size: int = 4000) -> str:
        """The start of what the process has logged so far (its start-up lines)."""
        self.log.seek(0)
        return self.log.read(size).decode("utf-8", "replace")

    def log_tail(self, size: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-size:]

    def _wait_listening(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind.name} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)  # polling a port that is not open yet: nothing to wait on
        raise RuntimeError(f"{self.kind.name} did not listen within {seconds}s")

    def stats(self) -> dict:
        """Resident memory (KiB) and thread count of the server process, from /proc."""
        values = proc_status(self.process.pid, "VmRSS", "Threads")
        return {"rss_kib": values["VmRSS"], "threads": values["Threads"]}

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process used so far, from /proc."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def context_switches(self) -> int:
        """Voluntary and involuntary context switches of the server's live threads so far (``/proc``).

        A thread that ended took its count along: read it while the threads that matter live
        (the connect scenario's connection threads do until the stop).
        """
        total = 0
        base = f"/proc/{self.process.pid}/task"
        for task in os.listdir(base):
            try:
                with open(f"{base}/{task}/status") as status:
                    total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
        return total

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                if os.environ.get("BENCH_STACKS"):  # run_rusty.py dumps every thread's stack there on SIGUSR1
                    self.process.send_signal(signal.SIGUSR1)
                    time.sleep(0.5)  # the dump is written by the process itself; nothing to wait on but time
                self.process.kill()
                self.process.wait(10)
        if not self.log.closed:
            self.final_log = self.log_tail(8000)  # what the process said last (rusty_ws: its stop's phases)
        self.log.close()
