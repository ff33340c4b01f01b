"""The soak: mixed hostile traffic for a while, an honest pair beside it that loses nothing.

A hub process of its own (``rusty-ws serve``) takes, interleaved and over and
over for ``RUSTY_WS_SOAK_SECONDS`` (45 by default, sized for CI; set it higher
for a long soak, e.g. 600): sockets that never finish their request, request heads that never end, bad handshakes, messages of
endless empty fragments, ping floods from peers that never read, trickles of
single bytes, hostile commands (deep nesting, the reserved name, oversized
fields), compressed garbage and wrong passwords. Meanwhile an honest
publisher publishes numbered messages (each acknowledged) to an honest
subscriber in the same session.

Stated bounds, checked at the end:
- the subscriber gets every message, in order, once (counted by offset);
- the honest round trip (publish to delivery) stays under ``RTT_P99`` at the 99th
  percentile and under ``RTT_MAX`` at worst;
- once the attackers stop, ``/healthz`` counts (connections, pending requests,
  subscriptions) and the hub's thread count return to their baseline, and its
  RSS to within ``RSS_MARGIN`` of it.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import zlib

from rusty_ws import WsClient
from support import MS, WAIT, HubProcess, RawSocket, http

SOAK_SECONDS = float(os.environ.get("RUSTY_WS_SOAK_SECONDS", "45"))
RTT_P99 = 500 * MS
RTT_MAX = 2000 * MS
RSS_MARGIN = 64 * 1024 * 1024  # allocator slack after 2 minutes of churn: 30-45 MiB measured (a bound, not a target)


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def healthz(hub: HubProcess) -> dict:
    status, _, body = http("GET", hub.http_url + "/healthz")
    assert status == 200, body
    return body


class Attacks:
    """One thread running the attacks in turn, each bounded in count and time, until ``stop``."""

    def __init__(self, port: int, stop: threading.Event, seed: int) -> None:
        self.port = port
        self.stop = stop
        self.random = random.Random(seed)
        self.rounds = 0
        self.errors: list[str] = []

    def run(self) -> None:
        attacks = [self.idle_heads, self.endless_headers, self.bad_handshakes, self.empty_fragments,
                   self.ping_flood, self.trickle, self.hostile_commands, self.compressed_garbage,
                   self.wrong_passwords]
        for _ in range(100_000):
            if self.stop.is_set():
                return
            attack = self.random.choice(attacks)
            try:
                attack()
            except OSError:
                pass  # the hub cut us off: that is the point
            except Exception as exc:
                self.errors.append(f"{attack.__name__}: {exc!r}")
            self.rounds += 1

    def _socket(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)

    def idle_heads(self) -> None:
        socks = [self._socket() for _ in range(20)]
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        self.stop.wait(0.2 + self.random.random())  # sleep-ok: holding them open is the attack
        for sock in socks:
            sock.close()

    def endless_headers(self) -> None:
        sock = self._socket()
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        for n in range(200):
            sock.sendall(b"X-Pad-%d: %s\r\n" % (n, b"p" * 1000))
        sock.close()

    def bad_handshakes(self) -> None:
        for key in (b"short", b"!!!!", b""):
            sock = self._socket()
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
            sock.recv(4096)
            sock.close()

    def empty_fragments(self) -> None:
        raw = RawSocket(self.port)
        raw.send_frame(0x1, b"x", fin=False)
        for _ in range(2000):
            raw.send_frame(0x0, b"", fin=False)
        raw.close()

    def ping_flood(self) -> None:
        raw = RawSocket(self.port)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(3000):
            raw.send_frame(0x9, b"")
        raw.close()

    def trickle(self) -> None:
        raw = RawSocket(self.port)
        frame = b"\x81\x84abcd" + bytes(b ^ m for b, m in zip(b"ping", b"abcd"))
        for byte in frame[:-1]:
            raw.sock.sendall(bytes([byte]))
            if self.stop.wait(0.05):  # sleep-ok: the trickle's pace is the attack
                break
        raw.close()

    def hostile_commands(self) -> None:
        raw = RawSocket(self.port)
        for text in ["publish-json:" + "[" * 5000 + "]" * 5000,
                     'publish-json:{"topic": "T", "publisher_name": "server", "session_id": "honest"}',
                     "register-name:server", "subscribe:" + "t" * 5000, "\x00" * 500,
                     'subscribe-json:{"topic": "T", "since": {"offset": -1, "epoch": ""}}',
                     'publish-json:{"topic": "T", "id": "' + "i" * 500 + '"}']:
            raw.send_frame(0x1, text.encode())
        raw.close()

    def compressed_garbage(self) -> None:
        raw = RawSocket(self.port, extensions="permessage-deflate")
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = compressor.compress(b"\0" * (4 << 20)) + compressor.flush(zlib.Z_FINISH)
        raw.send_frame(0x1, body, rsv=0x40)
        raw.send_frame(0x1, b"\xff\xfe garbage", rsv=0x40)
        raw.close()

    def wrong_passwords(self) -> None:
        for _ in range(5):
            http("POST", f"http://127.0.0.1:{self.port}/auth/token",
                 {"username": "testuser", "password": f"guess-{self.random.random()}"})


def test_hostile_traffic_leaves_an_honest_pair_whole_and_the_hub_as_it_was() -> None:
    settings = dict(request_head_timeout=1.0, ping_interval=2.0, ping_timeout=2.0, compression=6,
                    max_queued_bytes=1024 * 1024 + 64 * 1024, history_size=10_000)
    with HubProcess(**settings) as hub:
        url = f"ws://127.0.0.1:{hub.port}/ws"
        with WsClient.connect_with_session("sub", "honest", url, timeout=WAIT) as sub, \
                WsClient.connect_with_session("pub", "honest", url, timeout=WAIT) as pub:
            received: list[tuple[int, float]] = []  # (payload, arrival)
            got = threading.Condition()

            def on_delivery(delivery) -> None:
                with got:
                    received.append((delivery.payload["n"], time.monotonic() - delivery.payload["at"]))
                    got.notify_all()

            sub.on_delivery("T", on_delivery)
            sub.subscribe("sub", "T")
            pub.publish("pub", "Warmup", 0)
            baseline = healthz(hub)
            baseline_threads = threads_of(hub.process.pid)
            baseline_rss = hub.rss()

            stop = threading.Event()
            attackers = [Attacks(hub.port, stop, seed) for seed in range(3)]
            threads = [threading.Thread(target=a.run, name=f"test-attack-{i}") for i, a in enumerate(attackers)]
            for thread in threads:
                thread.start()
            sent = 0
            started = time.monotonic()
            try:
                while time.monotonic() - started < SOAK_SECONDS and sent < 1_000_000:
                    sent += 1
                    pub.publish("pub", "T", {"n": sent, "at": time.monotonic()})
                    stop.wait(0.01)  # sleep-ok: the honest publisher's pace, not a synchronisation
            finally:
                stop.set()
                for thread in threads:
                    thread.join(10 * WAIT)
            with got:
                assert got.wait_for(lambda: len(received) >= sent, 5 * WAIT), f"{len(received)} of {sent}"
            assert [n for n, _ in received] == list(range(1, sent + 1)), "the honest pair lost or repeated"
            delays = sorted(delay for _, delay in received)
            p99, worst = delays[int(len(delays) * 0.99) - 1], delays[-1]
            assert p99 < RTT_P99 and worst < RTT_MAX, f"round trip p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms"
            assert sum(a.rounds for a in attackers) > 10 * len(attackers), "the attacks hardly ran"
            print(f"soak: {sent} honest messages, {sum(a.rounds for a in attackers)} attacks, "
                  f"round trip p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
            assert not [e for a in attackers for e in a.errors], [e for a in attackers for e in a.errors][:5]

            # Back to baseline: every hostile socket is gone, no thread or byte left behind.
            deadline = time.monotonic() + 10 * WAIT
            for _ in range(10_000):
                now = healthz(hub)
                keys = ("connections", "pending_requests", "subscriptions")
                if all(now[k] == baseline[k] for k in keys) and threads_of(hub.process.pid) <= baseline_threads:
                    break
                assert time.monotonic() < deadline, f"not back to baseline: {json.dumps(now)} vs {baseline}"
                stop.wait(0.1)  # sleep-ok: polling an outside process's counters, bounded above
            assert hub.rss() - baseline_rss < RSS_MARGIN, f"RSS grew by {(hub.rss() - baseline_rss) >> 20} MiB"
