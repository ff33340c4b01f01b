"""A merged run without ids in the publish script's joined form: the same entries and envelope.

``merge_publishes`` sends a run whose publishes have no id as one array of its
deliveries (and the cuts of its entries, when it needs several); the script
must store and publish byte for byte what it does for the per-publish form of
the same run, which is sent here beside it on another pair (same epoch, same
numbers). The hubs' side is in test_redis_history*.py; merging by the sender in
test_redis_history_batches.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from redis_support import RedisServer, redis_server
from rusty_ws.brokers.redis_codec import pair_keys
from rusty_ws.brokers.redis_history import RedisHistory, Route, _Publish, merge_publishes, replays_safely
from rusty_ws.brokers.redis_scripts import ENTRY_BYTES_SHARE
from rusty_ws.protocol import Position
from support import WAIT

EPOCH = "0123456789abcdef"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def _history(size: int, max_bytes: int | None) -> RedisHistory:
    return RedisHistory(node_id=lambda: "node-1", route=lambda _: Route(None, lambda c, r: None, True),
                        deliver=lambda delivery: None, prefix="rusty_ws", size=size, ttl=60, window=60,
                        max_envelope_size=None, max_bytes=max_bytes)


def _delivery(n: int, pad: int, session: str = "s") -> bytes:
    return json.dumps({"publisher_name": "p", "topic": "T", "payload": {"n": n, "x": "y" * pad},
                       "timestamp": "t", "session_id": session}, separators=(",", ":")).encode()


def _commands(history: RedisHistory, session: str, datas: list[bytes], first_seq: int,
              ids: dict[int, str] | None = None) -> list[_Publish]:
    keys = pair_keys("rusty_ws", "T", session)
    commands = []
    for i, data in enumerate(datas):
        if ids and i in ids:
            id_key = f"rusty_ws:id:{session}:{ids[i]}"
            args: tuple[Any, ...] = ("EVALSHA", history.publish_sha, 3, keys.meta, keys.stream, id_key, EPOCH,
                                     keys.channel, "node-1", "", 1, 3, data, first_seq + i)
        else:
            args = ("EVALSHA", history.publish_sha, 2, keys.meta, keys.stream, EPOCH, keys.channel, "node-1", "",
                    1, 0, data, first_seq + i)
        commands.append(history._kind(args))
    return commands


def _per_publish(commands: list[_Publish]) -> tuple[Any, ...]:
    """The per-publish form of a run without ids (what every merged run was before the joined form)."""
    first = commands[0]
    tail: list[Any] = []
    for command in commands:
        tail += (0, command[-2], command[-1])
    return (*first[:9], len(commands), *tail)


class Pairs:
    """Two pairs on one Redis, each run sent in both forms, one to each: what Redis holds and publishes."""

    def __init__(self, server: RedisServer, history: RedisHistory, name: str) -> None:
        self.client = server.client()
        self.history = history
        self.sessions = (f"{name}-a", f"{name}-b")
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(*(pair_keys("rusty_ws", "T", s).channel for s in self.sessions))
        for _ in self.sessions:
            assert self.pubsub.get_message(timeout=WAIT)["type"] == "subscribe"
        self.client.script_load(history.publish_script)
        self.seq = 1

    def run(self, datas: list[bytes]) -> tuple[Any, Any]:
        per = _per_publish(_commands(self.history, self.sessions[0], datas, self.seq))
        joined, _ = merge_publishes(_commands(self.history, self.sessions[1], datas, self.seq),
                                    size=self.history.size, chunk=self.history._chunk)
        if len(datas) > 1:
            assert joined[9] == -len(datas) and len(joined) <= 12 + 3 * len(datas)  # the joined form
        self.seq += len(datas)
        replies = [self.client.evalsha(command[1], command[2], *command[3:]) for command in (per, joined)]
        assert replies[0] == replies[1]
        envelopes = [self.pubsub.get_message(timeout=WAIT)["data"] for _ in self.sessions]
        assert envelopes[0] == envelopes[1]
        assert self.stored(0) == self.stored(1)
        return replies[1], envelopes[1]

    def stored(self, which: int) -> tuple[Any, Any]:
        keys = pair_keys("rusty_ws", "T", self.sessions[which])
        entries = [(entry_id, fields[b"d"]) for entry_id, fields in self.client.xrange(keys.stream)]
        return entries, self.client.hmget(keys.meta, "e", "o", "b")

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.mark.parametrize("size, max_bytes, lengths", [
    (100, None, [3, 40]),                                     # one entry, the argument itself
    (100, None, [50] * 120),                                  # longer than size: its newest size, cut
    (10, None, [5 * (i % 7) for i in range(25)]),             # longer than size, of several lengths
    (100, 8 * 400, [60 + 13 * (i % 5) for i in range(30)]),   # cut by the byte share
    (100, 8 * 400, [20, 900, 30, 40, 1200, 10]),              # deliveries larger than an entry's share
    (7, 8 * 300, [40 + 17 * (i % 4) for i in range(23)]),     # both, and past the byte bound
])
def test_a_joined_run_stores_and_publishes_what_the_per_publish_form_does(
        redis: RedisServer, size: int, max_bytes: int | None, lengths: list[int]) -> None:
    history = _history(size, max_bytes)
    pairs = Pairs(redis, history, f"joined-{size}-{max_bytes}-{len(lengths)}-{lengths[1]}")
    try:
        datas = [_delivery(i, pad) for i, pad in enumerate(lengths)]
        for round_ in range(3):  # on an empty stream, then with a floor and (max_bytes) the byte bound
            reply, envelope = pairs.run(datas)
            assert reply == [0, EPOCH.encode(), 1 + round_ * len(datas)]
            message = json.loads(envelope)
            assert message["first"] == 1 + round_ * len(datas) and len(message["deliveries"]) == len(datas)
        pairs.run(datas[:2])
        pairs.run(datas[-1:])  # a run of one: the per-publish form, n = 1
        entries, meta = pairs.stored(1)
        top = 3 * len(datas) + 3
        assert int(meta[1]) == top and int(entries[-1][0].split(b"-")[0]) == top
        assert int(entries[0][0].split(b"-")[0]) >= top - size + 1  # those wholly below the floor are gone
    finally:
        pairs.close()


def test_a_joined_run_over_a_key_of_another_type_starts_again_under_a_new_epoch(redis: RedisServer) -> None:
    history = _history(5, 8 * 200)
    pairs = Pairs(redis, history, "wrongtype")
    try:
        for session in pairs.sessions:
            pairs.client.set(pair_keys("rusty_ws", "T", session).stream, "not a stream")
            pairs.client.hset(pair_keys("rusty_ws", "T", session).meta, mapping={"e": "ab" * 8, "o": 4})
        reply, _ = pairs.run([_delivery(i, 30 + 9 * i) for i in range(12)])
        assert reply[0] == 1 and reply[2] == 1  # reset, stored from offset 1
    finally:
        pairs.close()


def test_the_cuts_follow_the_scripts_own() -> None:
    history = _history(3, 8 * 25)
    datas = [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 30, b"e" * 4]
    merged, _ = merge_publishes(_commands(history, "s", datas, 1), size=3, chunk=history._chunk)
    joined = merged[10]
    assert joined == b"[" + b",".join(datas) + b"]" and merged[11] == b"1,2,3,4,5"
    cuts = merged[12:]
    assert cuts == (3, 24, 33, 4, 35, 64, 5, 66, 69)  # c alone (c,d > 25 bytes), d alone, e
    assert [joined[a - 1:b] for _, a, b in zip(cuts[::3], cuts[1::3], cuts[2::3])] == datas[2:]
    fits, _ = merge_publishes(_commands(history, "s", datas[:2], 1), size=3, chunk=history._chunk)
    assert fits[9:] == (-2, b"[" + b",".join(datas[:2]) + b"]", b"1,2")  # one entry: no cuts
    assert not replays_safely(fits, history.publish_sha) and not replays_safely(merged, history.publish_sha)


def test_a_run_with_ids_keeps_the_per_publish_form() -> None:
    history = _history(100, None)
    datas = [_delivery(i, 10) for i in range(4)]
    merged, _ = merge_publishes(_commands(history, "s", datas, 1, ids={1: "x"}), size=100, chunk=10 ** 9)
    assert merged[2] == 3 and merged[10] == 4 and merged[11:] == (0, datas[0], 1, 3, datas[1], 2, 0, datas[2], 3,
                                                                0, datas[3], 4)


def test_mixed_runs_with_and_without_ids_count_every_message_by_offset_and_read_from_inside_an_entry(
        redis: RedisServer) -> None:
    history = _history(50, 8 * 3000)
    client = redis.client()
    try:
        client.script_load(history.publish_script)
        history._route = lambda _: Route(client, lambda c, r: None, True)  # reads on this client
        offsets, sent = 0, []
        for run in range(6):
            datas = [_delivery(100 * run + i, 20 + 37 * ((run + i) % 5), "mixed") for i in range(3 + 11 * run)]
            ids = {1: f"id{run}", 2: f"id{run - 1}"} if run % 2 else None  # with ids: one repeat of the run before
            commands = _commands(history, "mixed", datas, 1000 * run, ids)
            merged, split = merge_publishes(commands, size=history.size, chunk=history._chunk)
            parts = split(client.evalsha(merged[1], merged[2], *merged[3:]))
            for data, part in zip(datas, parts):
                if part[2]:  # new: offsets follow each other
                    offsets += 1
                    assert part[2] == offsets
                    sent.append(json.loads(data)["payload"]["n"])
                else:
                    assert run % 2 and part[3] == 1
        key = ("T", "mixed")
        stored = history.read(key, None, 1000)
        assert stored.top.offset == offsets and stored.complete
        assert [d.offset for d in stored.messages] == list(range(offsets - 49, offsets + 1))
        assert [d.payload["n"] for d in stored.messages] == sent[-50:]
        for since in (offsets - 40, offsets - 23, offsets - 1):  # inside entries (each holds several)
            got = history.read(key, Position(since, stored.top.epoch), 10)
            assert [d.offset for d in got.messages] == list(range(since + 1, min(offsets, since + 10) + 1))
            assert [d.payload["n"] for d in got.messages] == sent[since:since + 10]
        entries = client.xrange(pair_keys("rusty_ws", "T", "mixed").stream)
        assert len(entries) < len(stored.messages)  # runs stored as entries of several
        assert sum(len(fields[b"d"]) for _, fields in entries) <= 8 * 3000
    finally:
        client.close()


def test_entry_share_is_what_the_cuts_use() -> None:
    assert _history(10, 8 * 123)._chunk == 123 == 8 * 123 // ENTRY_BYTES_SHARE
