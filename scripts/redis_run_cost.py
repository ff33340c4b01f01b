#!/usr/bin/env python3
"""What Redis spends per message on the history's publish script, by run length (publishes per run).

Starts a private redis-server on a free loopback port and sends it, pipelined
(``PIPELINE`` commands per round trip), runs of the real publish script
(``redis_history.RedisHistory.publish_script``, this tree's or the one on
``PYTHONPATH``) of n publishes each, merged as the node's sender merges them
(``RedisHistory._merge``), n from ``--runs``, each publish the benchmark's
~100-byte delivery without id, on ``--pairs`` pairs in turn; then
reports Redis' CPU per message (``INFO cpu``, user + system) and the stream's
entries and bytes (``XLEN``, ``MEMORY USAGE``) for each n. Nobody subscribes
to the channels (the ``PUBLISH`` of the envelope is the same either way).

``--callgrind`` runs the redis-server under valgrind's callgrind instead and
reports its instructions per message (two rounds per n, of ``--messages`` and
3x that, the difference over the difference of their messages: start and end
cancel out): load-independent, and slow (use ``--messages 2000``).

    nice -n 10 .venv/bin/python scripts/redis_run_cost.py [--runs 1,5,50,200] [--messages 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

#: The benchmark's delivery, about 100 bytes (what ``Delivery.encode`` makes, without position).
DELIVERY = (b'{"publisher_name":"bench","topic":"T","payload":{"n":12345,"text":"xxxxxxxxxxxxxxxx"},'
            b'"timestamp":"2026-12-02T06:00:00.000Z","session_id":"s1"}')
PIPELINE = 50
#: The run_id the node's sender would give (``INFO server``'s, 40 hex digits): any one, the same every time.
RUN_ID = "5e" * 20


def _packed(*args: Any) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class _Conn:
    """A plain RESP connection: enough to send pipelines and count their replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buffer = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            while len(self.buffer) < length + 2:
                self.buffer += self.sock.recv(1 << 20)
            value, self.buffer = self.buffer[:length], self.buffer[length + 2:]
            return value
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"unknown reply {line[:40]!r}")

    def call(self, *args: Any) -> Any:
        self.sock.sendall(_packed(*args))
        return self._reply()

    def pipeline(self, commands: list[bytes]) -> None:
        self.sock.sendall(b"".join(commands))
        for _ in commands:
            self._reply()


def _start_redis(callgrind_out: str | None) -> tuple[subprocess.Popen, int, str]:
    from benchlib.servers import free_port

    port = free_port()
    folder = tempfile.mkdtemp(prefix="rusty_ws-runcost-redis-")
    command = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", folder, "--loglevel", "warning"]
    if callgrind_out:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind_out}", "--dump-instr=no",
                   "--collect-atstart=yes", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            _Conn(port).call("PING")
            return process, port, folder
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)  # polling a port that is not open yet: nothing to wait on


def _cpu(conn: _Conn) -> float:
    info = conn.call("INFO", "cpu").decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def _history(size: int, max_bytes: int | None) -> Any:
    from rusty_ws.brokers.redis_history import RedisHistory, Route

    return RedisHistory(node_id=lambda: "bench-node", route=lambda session: Route(None, lambda c, r: None, False),
                        deliver=lambda delivery: None, prefix="rusty_ws", size=size, ttl=3600.0, window=300.0,
                        max_envelope_size=None, max_bytes=max_bytes)


def send_runs(conn: _Conn, history: Any, run: int, messages: int, pairs: int, first_seq: int) -> int:
    """``messages`` publishes in runs of ``run``, pipelined, round robin over ``pairs``; returns the next seq."""
    from rusty_ws.brokers.redis_codec import pair_keys

    keys = [pair_keys("rusty_ws", "T", f"s{i}") for i in range(pairs)]
    seq = first_seq
    batch: list[bytes] = []
    runs = messages // run
    for i in range(runs):
        k = keys[i % pairs]
        publishes = []
        for _ in range(run):
            publishes.append(history._kind(("EVALSHA", history.publish_sha, 2, k.meta, k.stream, "0123456789abcdef",
                                            k.channel, "bench-node", RUN_ID, 1, 0, DELIVERY, seq)))
            seq += 1
        # As the node's sender sends the run (its merge: the tree's form of a merged run).
        batch.append(_packed(*(history._merge(publishes, RUN_ID)[0] if run > 1 else publishes[0])))
        if len(batch) * run >= PIPELINE * 5 or len(batch) >= PIPELINE:
            conn.pipeline(batch)
            batch = []
    if batch:
        conn.pipeline(batch)
    return seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="1,5,50,200")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--size", type=int, default=1000, help="RUSTY_WS_HISTORY_SIZE")
    parser.add_argument("--max-bytes", type=int, default=64 * 1024 * 1024, help="RUSTY_WS_HISTORY_MAX_BYTES")
    parser.add_argument("--rounds", type=int, default=3, help="best of (INFO cpu)")
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    history = _history(args.size, args.max_bytes)
    results: dict[str, Any] = {}
    for run in [int(n) for n in args.runs.split(",")]:
        messages = max(run, args.messages - args.messages % run)
        row: dict[str, Any] = {}
        if args.callgrind:
            out = tempfile.mktemp(prefix="runcost-callgrind-")
            process, port, folder = _start_redis(out)
            try:
                conn = _Conn(port)
                conn.call("SCRIPT", "LOAD", history.publish_script)
                seq = send_runs(conn, history, run, messages, args.pairs, 1)  # warm: streams full
                conn.call("CONFIG", "RESETSTAT")
                counts = []
                for factor in (1, 3):
                    _zero(process.pid)
                    seq = send_runs(conn, history, run, messages * factor, args.pairs, seq)
                    counts.append(_dump(process.pid, out))
                row["instructions_per_message"] = round((counts[1] - counts[0]) / (2 * messages))
            finally:
                process.terminate()
                process.wait(60)
                shutil.rmtree(folder, ignore_errors=True)
                for name in os.listdir(os.path.dirname(out)):
                    if name.startswith(os.path.basename(out)):
                        os.unlink(os.path.join(os.path.dirname(out), name))
        else:
            process, port, folder = _start_redis(None)
            try:
                conn = _Conn(port)
                conn.call("SCRIPT", "LOAD", history.publish_script)
                seq = send_runs(conn, history, run, messages, args.pairs, 1)  # warm: streams full
                best = None
                for _ in range(args.rounds):
                    before = _cpu(conn)
                    seq = send_runs(conn, history, run, messages, args.pairs, seq)
                    spent = (_cpu(conn) - before) * 1e6 / messages
                    best = spent if best is None else min(best, spent)
                row["redis_us_per_message"] = round(best or 0.0, 3)
                from rusty_ws.brokers.redis_codec import pair_keys
                stream = pair_keys("rusty_ws", "T", "s0").stream
                row["entries"] = int(conn.call("XLEN", stream))
                row["memory_bytes"] = int(conn.call("MEMORY", "USAGE", stream, "SAMPLES", "0"))
            finally:
                process.kill()
                process.wait(10)
                shutil.rmtree(folder, ignore_errors=True)
        row["load"] = round(os.getloadavg()[0], 1)
        results[str(run)] = row
        print(f"run of {run:4}: {row}", flush=True)
    if args.json:
        with open(args.json, "w") as out_file:
            json.dump(results, out_file, indent=1)


def _zero(pid: int) -> None:
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, stdout=subprocess.DEVNULL)


def _dump(pid: int, out: str) -> int:
    """Dump the counts so far; the instructions (``summary:`` / ``totals:``) of the newest dump."""
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, stdout=subprocess.DEVNULL)
    folder, base = os.path.dirname(out), os.path.basename(out)
    dumps = sorted((os.path.join(folder, name) for name in os.listdir(folder) if name.startswith(base + ".")),
                   key=os.path.getmtime)
    with open(dumps[-1]) as dump:
        for line in dump:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no totals in the callgrind dump")


if __name__ == "__main__":
    main()
