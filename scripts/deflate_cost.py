#!/usr/bin/env python3
"""What permessage-deflate costs a fan-out, per delivery, against a plain frame encoded once.

Three ways to send one publish to S subscribers:

- plain: one frame, encoded once, the same bytes for everyone (the default);
- compressed once: what rusty_ws does with ``RUSTY_WS_COMPRESSION``. It
  negotiates ``server_no_context_takeover``, so each message is compressed
  on its own and one compressed frame serves every compressing subscriber;
- compressed per connection: each connection keeps its own context (context
  takeover, what a browser gets by default from servers that compress, such
  as simple-websocket/wsproto), so one publish is S compressions.

Measured on this machine with a delivery of the benchmark's size:

    .venv/bin/python scripts/deflate_cost.py [--subscribers 1000] [--publishes 200]

Pure CPU, one thread, no sockets: the numbers are per delivery, before any write.
(The benchmark's load generator does not inflate, so scripts/bench.py runs uncompressed.)
"""

from __future__ import annotations

import argparse
import json
import time
import zlib

from rusty_ws.frames import deflate_text_frame, text_frame
from rusty_ws.protocol import Delivery


def delivery_bytes(i: int) -> bytes:
    return Delivery(publisher_name="bench", topic="T", payload={"seq": i, "pad": "x" * 40},
                    timestamp="2026-11-27T05:00:00Z", session_id="s1").encode()


def encode_once(subscribers: int, publishes: int) -> float:
    """Seconds for ``publishes`` frames encoded once each, the reference handed to every subscriber."""
    outboxes: list[list[bytes]] = [[] for _ in range(subscribers)]
    started = time.perf_counter()
    for i in range(publishes):
        frame = text_frame(delivery_bytes(i))
        for box in outboxes:
            box.append(frame)
    return time.perf_counter() - started


def deflate_once(subscribers: int, publishes: int, level: int) -> float:
    """Seconds for the same, one compressed frame per publish shared by every subscriber."""
    outboxes: list[list[bytes]] = [[] for _ in range(subscribers)]
    started = time.perf_counter()
    for i in range(publishes):
        frame = deflate_text_frame(delivery_bytes(i), level)
        for box in outboxes:
            box.append(frame)
    return time.perf_counter() - started


def deflate_per_connection(subscribers: int, publishes: int, level: int) -> float:
    """Seconds for the same, each subscriber compressing with its own context (RFC 7692 framing)."""
    contexts = [zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS) for _ in range(subscribers)]
    outboxes: list[list[bytes]] = [[] for _ in range(subscribers)]
    started = time.perf_counter()
    for i in range(publishes):
        data = delivery_bytes(i)
        for context, box in zip(contexts, outboxes):
            body = context.compress(data) + context.flush(zlib.Z_SYNC_FLUSH)
            box.append(compressed_frame(body[:-4]))  # RFC 7692: without the 00 00 ff ff tail
    return time.perf_counter() - started


def compressed_frame(body: bytes) -> bytes:
    """A final text frame with RSV1 set (compressed), server to client (unmasked)."""
    if len(body) < 126:
        return bytes([0xC1, len(body)]) + body
    return bytes([0xC1, 126]) + len(body).to_bytes(2, "big") + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publishes", type=int, default=200)
    args = parser.parse_args()
    deliveries = args.subscribers * args.publishes
    once = min(encode_once(args.subscribers, args.publishes) for _ in range(3))
    rows = {"plain, encoded once": once}
    for level in (1, 6):
        rows[f"deflate level {level}, compressed once"] = min(
            deflate_once(args.subscribers, args.publishes, level) for _ in range(3))
    for level in (1, 6):
        rows[f"deflate level {level}, per connection"] = min(
            deflate_per_connection(args.subscribers, args.publishes, level) for _ in range(3))
    size = len(text_frame(delivery_bytes(0)))
    packed = len(deflate_text_frame(delivery_bytes(0), 6))
    print(f"{args.publishes} publishes to {args.subscribers} subscribers, {size}-byte frames "
          f"({packed} bytes compressed at level 6; best of 3)")
    for name, seconds in rows.items():
        print(f"  {name:34} {seconds / deliveries * 1e6:8.3f} us per delivery  "
              f"({deliveries / seconds:>12,.0f} deliveries/s of CPU)")
    print(json.dumps({name: seconds / deliveries * 1e6 for name, seconds in rows.items()}))


if __name__ == "__main__":
    main()
