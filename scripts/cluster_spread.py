#!/usr/bin/env python3
"""How evenly (topic, session) pairs spread over a Redis Cluster's masters, by the choice of hash tag.

A pair's channel and keys carry its session's hash tag, so they share one slot;
which master serves them follows from the slot. Three ways to tag a session:

- session: the session id itself is the tag (``{session-A}``): one slot per session;
- naive partitions: the session hashed into N partitions, tagged ``{0}`` .. ``{N-1}``;
- rusty_ws: the same N partitions, tagged with ``redis_slots.partition_tags`` (each
  tag's slot picked in its own N-th of the slot space).

Masters own equal contiguous slot ranges, as ``redis-cli --cluster create`` makes
them. Pure CPU, no Redis, deterministic for a given ``--seed``:

    .venv/bin/python scripts/cluster_spread.py [--sessions 10000] [--masters 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import random

from rusty_ws.brokers.redis_slots import PARTITIONS, SLOTS, key_slot, partition_of, partition_slots


def master_of(slot: int, masters: int) -> int:
    """The master that ``redis-cli --cluster create`` gives ``slot`` (equal ranges, the first ones one larger)."""
    size, extra = divmod(SLOTS, masters)
    bound = 0
    for master in range(masters):
        bound += size + (master < extra)
        if slot < bound:
            return master
    raise AssertionError(slot)


def spread(slots: list[int], masters: int) -> list[int]:
    counts = [0] * masters
    for slot in slots:
        counts[master_of(slot, masters)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--masters", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=PARTITIONS, help="what-if: rusty_ws uses PARTITIONS")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sessions = {
        "random ids": [f"{rng.getrandbits(64):016x}" for _ in range(args.sessions)],
        "sequential ids": [f"session-{i}" for i in range(args.sessions)],
    }
    count = args.partitions
    naive = [key_slot(str(i).encode()) for i in range(count)]
    ours = partition_slots(count)
    print(f"{args.sessions} sessions, {count} partitions; pairs per master (max/mean: 1.00 is even)")
    for masters in args.masters:
        print(f"\n{masters} masters")
        print(f"  {'partitions per master':38} naive {spread(naive, masters)}  rusty_ws {spread(list(ours), masters)}")
        for name, ids in sessions.items():
            for label, slots in (("session as tag", [key_slot(s.encode()) for s in ids]),
                                 ("naive partitions", [naive[partition_of(s, count)] for s in ids]),
                                 ("rusty_ws partitions", [ours[partition_of(s, count)] for s in ids])):
                counts = spread(slots, masters)
                ratio = max(counts) / (sum(counts) / masters)
                print(f"  {name + ', ' + label:38} {ratio:.3f}  {counts}")


if __name__ == "__main__":
    main()
