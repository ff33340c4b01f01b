#!/usr/bin/env python3
"""What permessage-deflate would cost a fan-out, per delivery, against encoding a frame once.

rusty_ws never negotiates permessage-deflate (RFC 7692). With it, every
connection keeps its own compression context (context takeover is the
default a browser asks for), so one publish to S subscribers is S
compressions of the same bytes instead of one frame encoded once. This
measures both on this machine, with a delivery of the benchmark's size:

    .venv/bin/python scripts/deflate_cost.py [--subscribers 1000] [--publishes 200]

Pure CPU, one thread, no sockets: the numbers are per delivery, before any write.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib

from rusty_ws.frames import text_frame
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
    rows = {"encode once": once}
    for level in (1, 6):
        rows[f"deflate level {level}, per connection"] = min(
            deflate_per_connection(args.subscribers, args.publishes, level) for _ in range(3))
    size = len(text_frame(delivery_bytes(0)))
    print(f"{args.publishes} publishes to {args.subscribers} subscribers, {size}-byte frames (best of 3)")
    for name, seconds in rows.items():
        print(f"  {name:34} {seconds / deliveries * 1e6:8.3f} us per delivery  "
              f"({deliveries / seconds:>12,.0f} deliveries/s of CPU)")
    print(json.dumps({name: seconds / deliveries * 1e6 for name, seconds in rows.items()}))


if __name__ == "__main__":
    main()
