"""rusty_ws as the benchmark runs it: ``python run_rusty.py PORT [MODE]``, logging at WARNING.

Modes: ``deflate`` sets ``RUSTY_WS_COMPRESSION`` to zlib's default level, 6;
``nohiredis`` hides the hiredis package (redis-py's and the sender's pure-Python
parsing); ``sync-publish`` makes the Redis broker publish as it did before its
sender: one synchronous PUBLISH round trip on the publisher's thread. The broker
comes from ``RUSTY_WS_BROKER_URL`` in the environment (default: in memory).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import resource
import signal
import sys
import time


def since_exec() -> float:
    """Seconds since this process was created (its start time in /proc, on the boot clock)."""
    with open("/proc/self/stat") as stat:
        ticks = int(stat.read().rpartition(")")[2].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


STARTED = (since_exec(), cpu())  # the interpreter's own start, before any import of ours

MODE = sys.argv[2] if len(sys.argv) > 2 else ""
if MODE == "nohiredis":
    sys.modules["hiredis"] = None  # type: ignore[assignment]  # import hiredis now fails

from rusty_ws import create_app  # noqa: E402
from rusty_ws.server.serve import serve  # noqa: E402

IMPORTED = (since_exec(), cpu())


def publish_synchronously() -> None:
    """The Redis broker's publish before the sender: deliver here, then PUBLISH and wait for the reply."""
    from rusty_ws.brokers.redis import RedisBroker, channel_name, encode_envelope

    def publish(self, delivery, on_landed=None):  # type: ignore[no-untyped-def]
        listener = self._current()
        envelope = encode_envelope(listener.node_id, delivery)
        landed = self._deliver(delivery)
        listener.client.publish(channel_name(self.channel_prefix, delivery.topic, delivery.session_id), envelope)
        if on_landed is not None:
            on_landed(landed)
        return landed

    RedisBroker.publish = publish  # type: ignore[method-assign]


def watch_collections(log: logging.Logger, longer_than: float = 0.02) -> None:
    """Log each cyclic garbage collection that took longer than ``longer_than`` seconds (the interpreter
    lock is held throughout: every thread, the internal port's too, waits for it)."""
    import gc
    started: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started and time.perf_counter() - started[0] > longer_than:
            log.debug("collection of generation %d took %.3fs (%d collected)", info["generation"],
                      time.perf_counter() - started[0], info["collected"])

    gc.callbacks.append(callback)


if __name__ == "__main__":
    if os.environ.get("BENCH_STACKS"):  # a file: SIGUSR1 appends every thread's stack to it (a stalled run)
        faulthandler.register(signal.SIGUSR1, open(os.environ["BENCH_STACKS"], "a"), all_threads=True)
    logging.basicConfig(level=logging.WARNING)
    # The stop's phases, one line; with BENCH_STACKS each as it ends too (a stop killed at 10 s says how far it got).
    logging.getLogger("rusty_ws.server.stop").setLevel(logging.DEBUG if os.environ.get("BENCH_STACKS") else logging.INFO)
    if os.environ.get("BENCH_PACING"):  # a file: the accept loop's pacing, one line a second (DEBUG)
        pacing = logging.FileHandler(os.environ["BENCH_PACING"])
        pacing.setFormatter(logging.Formatter("%(created).3f %(process)d %(message)s"))
        logging.getLogger("rusty_ws.server.pacing").addHandler(pacing)
        logging.getLogger("rusty_ws.server.pacing").setLevel(logging.DEBUG)
        watch_collections(logging.getLogger("rusty_ws.server.pacing"))
    if MODE == "sync-publish":
        publish_synchronously()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script (or by runpy): benchlib's own
    from gc_setting import PauseLog, apply
    apply(os.environ.get("BENCH_GC_THRESHOLD", ""))  # before serve()'s freeze_startup_objects, as a host's would be
    if os.environ.get("BENCH_GC_PAUSES"):
        PauseLog(os.environ["BENCH_GC_PAUSES"])
    app = create_app({
        "RUSTY_WS_JWT_SECRET_KEY": "benchmark-" + "x" * 32,
        # RUSTY_WS_MAX_CONNECTIONS unset: the default a stand-alone hub derives from the descriptor limit
        # (19,680 at this machine's 20,000), which the capacity scenario's 19,000 must fit in.
        "RUSTY_WS_MAX_SUBSCRIPTIONS": 100,
        "RUSTY_WS_COMPRESSION": 6 if MODE == "deflate" else 0,
    })
    made = (since_exec(), cpu())
    # When the process got this far (from its creation; CPU seconds in brackets): the benchmark's storm
    # reads it to tell the new process's start-up from the old one's exit.
    logging.getLogger("bench").warning(
        "start-up: interpreter %.3fs (%.3f), imports %.3fs (%.3f), app %.3fs (%.3f), then listening",
        *STARTED, *IMPORTED, *made)
    print("ready", flush=True)
    serve(app, "127.0.0.1", int(sys.argv[1]), exit_when_stopped=True)  # as `rusty-ws serve` does
