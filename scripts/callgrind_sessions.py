"""The many-sessions scenario as a load-independent measure: instructions per delivery under callgrind.

The wall-clock bench (``scripts/bench.py --scenarios sessions``) moves by 2-3x
with the machine's load; an instruction count does not. This driver runs the
hub's whole per-message path (``Hub.serve``'s command loop, ``FrameParser``,
``parse_command``, ``Hub.publish`` -> history -> ``Writer``, the sends) in one
process on a loopback port, and the clients in a child process that valgrind
does not trace, so only the hub's instructions are counted:

- ``PAIRS`` sessions of two raw-socket clients (no HTTP: the accepted socket
  goes straight to ``Hub.serve``, as the ``/ws`` view hands it over after the
  101), each subscribed to its own topic and publishing to its partner's;
- ``ROUNDS`` rounds in lock step: every client sends ``BATCH`` publish frames
  in one write (the bench's 8 frames per write), then the child waits until
  every client has its partner's frames of that round (checked in order);
- keepalive off and the writer thread's housekeeping tick pushed out of the
  run, so nothing in the count depends on how long the run took.

Instructions per delivery come from two runs of different lengths: the
difference of their totals over the difference of their deliveries, so the
start (imports, connecting) and the end cancel out. One command does it all::

    nice -n 19 .venv/bin/python scripts/callgrind_sessions.py measure --pairs 50 --rounds 4,12

which runs, for each round count::

    valgrind --tool=callgrind --callgrind-out-file=OUT .venv/bin/python \\
        scripts/callgrind_sessions.py hub --pairs 50 --rounds R

Without valgrind, ``hub`` alone reports the hub process's CPU time and the
voluntary context switches of its threads per delivery, between ``go`` and
the last delivery (a quick check; it depends on the load, instructions do not).
``--history-size 0`` runs with history off; ``--switch-interval`` sets the
hub's ``sys.setswitchinterval`` (it did not move the count: 106,041 at
Python's 5 ms against 105,924 at 1 s). ``--gc SPEC`` sets the collector up as
``rusty-ws serve`` would with SPEC as the host's thresholds (``benchlib/gc_setting.py``;
``--gc ''``: Python's) and reports each generation's collections, their longest
pause and the hub's RSS. Add ``--annotate`` to ``measure``
to print ``callgrind_annotate``'s top functions of the longer run.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
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
from benchlib.wire import FrameReader, client_frame  # noqa: E402

PAD = "x" * 80  # the bench's payload: an 8-digit sequence number, a time, padding (~100 bytes)


# --------------------------------------------------------------------------- the hub (traced)

def _thread_switches() -> int:
    """Voluntary context switches of every live thread of this process."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except OSError:
            pass  # the thread ended meanwhile
    return total


def hub_main(args: argparse.Namespace) -> None:
    import logging

    from rusty_ws import create_app
    from rusty_ws.server.state import state_of

    logging.basicConfig(level=logging.WARNING)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    # The bench's app (scripts/benchlib/run_rusty.py), so the hooks and checks a publish
    # passes are the same, with keepalive off: no pings whose count depends on time.
    hub = state_of(create_app({
        "RUSTY_WS_JWT_SECRET_KEY": "benchmark-" + "x" * 32,
        "RUSTY_WS_MAX_CONNECTIONS": 20_000,
        "RUSTY_WS_MAX_SUBSCRIPTIONS": 100,
        "RUSTY_WS_COMPRESSION": 0,
        "RUSTY_WS_PING_INTERVAL": 0,
        "RUSTY_WS_HISTORY_SIZE": args.history_size,
    })).hub
    # The writer thread's housekeeping (closing deadlines, keepalive) runs every tick
    # (at most 1 s): pushed past the run, so its count does not depend on the run's length.
    hub.writer._tick_seconds = lambda: 3600.0  # type: ignore[method-assign]
    pauses = None
    if args.gc is not None:  # as `rusty-ws serve` sets it up: the host's setting, then freeze_startup_objects
        from benchlib.gc_setting import PauseLog, apply
        from rusty_ws.server.serve import freeze_startup_objects
        apply(args.gc)
        freeze_startup_objects()
        pauses = PauseLog()
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port = listener.getsockname()[1]
    threads: list[threading.Thread] = []

    def accept_all() -> None:
        for _ in range(2 * args.pairs):
            sock, peer = listener.accept()
            thread = threading.Thread(target=hub.serve, args=(sock, None, f"{peer[0]}:{peer[1]}"), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept_all, name="accept", daemon=True)
    acceptor.start()
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "clients", "--port", str(port),
                              "--pairs", str(args.pairs), "--rounds", str(args.rounds), "--batch", str(args.batch)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the clients did not get ready")
        cpu0, switches0 = os.times(), _thread_switches()
        child.stdin.write("go\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        cpu1, switches1 = os.times(), _thread_switches()
    finally:
        child.stdin.close()
        child.wait(60)
    for thread in threads:
        thread.join(60)
    hub.shutdown(10)
    for sock in (listener,):
        sock.close()
    delivered = result["delivered"]
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    with open("/proc/self/status") as status:
        memory = {key: int(value.split()[0]) for key, _, value in (line.partition(":") for line in status)
                  if key in ("VmRSS", "VmHWM")}
    result.update({
        "rss_kib": memory.get("VmRSS"), "peak_rss_kib": memory.get("VmHWM"),
        **({"gc": pauses.summary()} if pauses is not None else {}),
        "cpu_us_per_delivery": round(cpu * 1e6 / delivered, 2) if delivered else None,
        "switches_per_delivery": round((switches1 - switches0) / delivered, 3) if delivered else None,
    })
    print(json.dumps(result), flush=True)
    if not result["ok"]:
        raise SystemExit(f"deliveries lost or out of order: {result}")


# --------------------------------------------------------------------------- the clients (not traced)

class _Client:
    __slots__ = ("sock", "reader", "topic", "session", "partner_topic", "count", "disorder", "pong")

    def __init__(self, sock: socket.socket, topic: str, session: str, partner_topic: str) -> None:
        self.sock, self.reader = sock, FrameReader()
        self.topic, self.session, self.partner_topic = topic, session, partner_topic
        self.count = self.disorder = 0
        self.pong = False


def clients_main(args: argparse.Namespace) -> None:
    selector = selectors.DefaultSelector()
    clients: list[_Client] = []
    for pair in range(args.pairs):
        session = f"s{pair}"
        for mine, theirs in ((f"to-a-{pair}", f"to-b-{pair}"), (f"to-b-{pair}", f"to-a-{pair}")):
            sock = socket.create_connection(("127.0.0.1", args.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(sock, mine, session, theirs)
            clients.append(client)
            selector.register(sock, selectors.EVENT_READ, client)
            sock.sendall(client_frame(f"register-session:{session}".encode())
                         + client_frame(f"subscribe:{mine}|{session}".encode()) + client_frame(b"ping"))
    deadline = time.monotonic() + 600

    def read_until(done) -> None:  # type: ignore[no-untyped-def]
        while not done():
            if time.monotonic() > deadline:
                raise SystemExit("the clients timed out")
            for key, _ in selector.select(1.0):
                client = key.data
                data = client.sock.recv(262144)
                if not data:
                    raise SystemExit("the hub closed a connection")
                for _opcode, payload in client.reader.feed(data):
                    if payload == b"pong":
                        client.pong = True
                    elif payload.startswith(b"error:"):
                        raise SystemExit(f"the hub answered an error: {payload[:200]!r}")
                    else:
                        at = payload.find(b'"payload":"') + 11
                        if int(payload[at:at + 8]) != client.count:
                            client.disorder += 1
                        client.count += 1

    read_until(lambda: all(client.pong for client in clients))
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    by_topic = {client.topic: client for client in clients}
    started = time.monotonic()
    for round_ in range(args.rounds):
        first = round_ * args.batch
        for client in clients:
            partner = by_topic[client.partner_topic]
            client.sock.sendall(b"".join(
                client_frame(b'publish-json:{"topic":"%s","session_id":"%s","payload":"%08d|0|%s"}'
                             % (partner.topic.encode(), client.session.encode(), seq, PAD.encode()))
                for seq in range(first, first + args.batch)))
        wanted = first + args.batch
        read_until(lambda wanted=wanted: all(client.count >= wanted for client in clients))
    elapsed = time.monotonic() - started
    delivered = sum(client.count for client in clients)
    expected = 2 * args.pairs * args.rounds * args.batch
    disorder = sum(client.disorder for client in clients)
    print(json.dumps({"delivered": delivered, "expected": expected, "disorder": disorder,
                      "elapsed": round(elapsed, 3), "ok": delivered == expected and not disorder}), flush=True)
    sys.stdin.readline()  # the hub has read the result: now end the connections
    for client in clients:
        client.sock.close()


# --------------------------------------------------------------------------- both runs under valgrind

def measure_main(args: argparse.Namespace) -> None:
    short, long_ = (int(n) for n in args.rounds.split(","))
    totals, results = [], []
    with tempfile.TemporaryDirectory(prefix="callgrind-sessions-") as tmp:
        for rounds in (short, long_):
            out = os.path.join(tmp, f"callgrind.{rounds}")
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                       os.path.abspath(__file__), "hub", "--pairs", str(args.pairs), "--rounds", str(rounds),
                       "--batch", str(args.batch), "--history-size", str(args.history_size),
                       "--switch-interval", str(args.switch_interval)] + (["--gc", args.gc] if args.gc is not None else [])
            run = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
            if run.returncode or not lines:
                raise SystemExit(f"run failed ({run.returncode}):\n{run.stdout}\n{run.stderr[-3000:]}")
            results.append(json.loads(lines[-1]))
            totals.append(total_instructions(out))
            if args.annotate and rounds == long_:
                annotate = subprocess.run(["callgrind_annotate", "--inclusive=no", out],
                                          capture_output=True, text=True, check=False)
                print("\n".join(annotate.stdout.splitlines()[:60]))
    deliveries = results[1]["delivered"] - results[0]["delivered"]
    per = (totals[1] - totals[0]) / deliveries
    print(json.dumps({"pairs": args.pairs, "batch": args.batch, "rounds": [short, long_],
                      "history_size": args.history_size, "switch_interval": args.switch_interval,
                      "totals": totals, "deliveries": deliveries,
                      "instructions_per_delivery": round(per), "gc_setting": args.gc,
                      "long_run": {k: results[1].get(k) for k in ("rss_kib", "peak_rss_kib", "gc")}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("measure", "hub", "clients"))
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--rounds", default="10", help="measure: two counts, 'SHORT,LONG'")
    parser.add_argument("--batch", type=int, default=8, help="publish frames per write")
    parser.add_argument("--history-size", type=int, default=100, help="RUSTY_WS_HISTORY_SIZE (0: off)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--switch-interval", type=float, default=0.0,
                        help="the hub's sys.setswitchinterval (0: Python's 5 ms); see the docstring")
    parser.add_argument("--gc", metavar="SPEC",
                        help="the hub's collector as under serve: SPEC ('' Python's, '0' off, 'A[,B[,C]]', "
                             "benchlib/gc_setting.py) then freeze_startup_objects; reports each generation's pauses")
    parser.add_argument("--annotate", action="store_true")
    args = parser.parse_args()
    if args.role == "measure":
        measure_main(args)
        return
    args.rounds = int(args.rounds)
    (hub_main if args.role == "hub" else clients_main)(args)


if __name__ == "__main__":
    main()
