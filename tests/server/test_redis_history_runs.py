"""One stream entry per run of publishes: the stored format, the floors, and entries no node wrote.

A run of the publish script stores its new publishes as one entry named after
the run's last offset (``redis_scripts._PUBLISH_BODY``); the readers take the
offsets inside an entry apart, never give a message below ``top - size + 1``
nor one the byte bound dropped, and drop an entry that does not add up. Every
message is counted by its offset. The harness (a ``RedisHistory`` on its own
sender, held busy so that what is queued leaves as one run) is
test_redis_history_batches.py's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
from collections.abc import Iterator

import pytest
from test_redis_history_batches import Shared, evalsha_calls, held, position, shared

from redis_support import RedisServer, redis_server
from rusty_ws.brokers.base import Stored
from rusty_ws.brokers.redis_codec import pair_keys
from rusty_ws.protocol import Position
from support import WAIT

KEY = ("T", "s")


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def entries(server: RedisServer) -> list[tuple[int, bytes]]:
    """(id's offset, ``d``) of every entry of the pair's stream."""
    with contextlib.closing(server.client()) as raw:
        return [(int(entry_id.split(b"-")[0]), fields[b"d"]) for entry_id, fields in raw.xrange(pair_keys("rusty_ws", *KEY).stream)]


def publish_run(node: Shared, first: int, count: int) -> None:
    """``count`` publishes of payloads ``first``, ``first + 1``, ... queued together: one run."""
    answered = len(node.answers)
    with held(node.sender):
        for n in range(first, first + count):
            node.publish(f"m{n}", "T", n)
    node.wait(answered + count)


def offsets(stored: Stored) -> list[int]:
    """The offsets of what a read gave, each message checked to be the one published under it."""
    assert all(m.payload == m.offset for m in stored.messages), "a message under another offset than its own"
    return [m.offset or 0 for m in stored.messages]


def test_a_run_is_one_entry_named_after_its_last_offset(redis: RedisServer) -> None:
    with shared(redis) as node:
        before = evalsha_calls(redis)
        publish_run(node, 1, 5)
        assert evalsha_calls(redis) - before == 1
        assert sorted(position(node.answers[f"m{n}"]) for n in range(1, 6)) == [(n, False) for n in range(1, 6)]
        node.publish("alone", "T", 6)
        node.wait(6)
        [(last, data), (alone, single)] = entries(redis)
        assert last == 5 and [d["payload"] for d in json.loads(data)] == [1, 2, 3, 4, 5]
        assert alone == 6 and json.loads(single)["payload"] == 6  # a run of one: the delivery alone, as before
        assert offsets(node.history.read(KEY, None, 100)) == [1, 2, 3, 4, 5, 6]
        assert offsets(node.history.read(KEY, None, 3)) == [4, 5, 6]  # the last 3, from inside the entry


def test_recovery_from_every_offset_inside_an_entry_replays_each_message_once(redis: RedisServer) -> None:
    with shared(redis) as node:
        publish_run(node, 1, 5)
        publish_run(node, 6, 5)
        publish_run(node, 11, 1)
        epoch = node.history.read(KEY, None, 1).top.epoch
        assert [last for last, _ in entries(redis)] == [5, 10, 11]
        for since in range(0, 12):
            stored = node.history.read(KEY, Position(since, epoch), 100)
            assert offsets(stored) == list(range(since + 1, 12)) and stored.complete, since
        # A history: reply with a limit: the offsets after since, no more than the limit.
        assert offsets(node.history.read(KEY, Position(2, epoch), 4)) == [3, 4, 5, 6]
        assert offsets(node.history.read(KEY, Position(7, epoch), 2)) == [8, 9]
        assert node.history.read(KEY, Position(3, "0" * 16), 100).messages == []  # another epoch: nothing


def test_the_count_floor_keeps_no_more_than_size_even_inside_a_straddling_entry(redis: RedisServer) -> None:
    with shared(redis, size=10) as node:
        for first in (1, 8, 15):  # entries 7, 14, 21; the floor is 12, inside entry 14 (8 to 14)
            publish_run(node, first, 7)
        assert [last for last, _ in entries(redis)] == [14, 21]  # XADD MINID: entry 7 wholly below the floor
        epoch = node.history.read(KEY, None, 1).top.epoch
        assert offsets(node.history.read(KEY, None, 100)) == list(range(12, 22))
        assert offsets(node.history.read(KEY, None, 4)) == [18, 19, 20, 21]
        for since in (0, 3, 9, 10):  # from before the floor: only the last 10, and not recovered
            stored = node.history.read(KEY, Position(since, epoch), 100)
            assert offsets(stored) == list(range(12, 22)) and stored.complete is False, since
        stored = node.history.read(KEY, Position(11, epoch), 100)
        assert offsets(stored) == list(range(12, 22)) and stored.complete  # 11 was the last one missed: nothing lost
        # A run longer than the size: only its newest 10 are stored.
        publish_run(node, 22, 25)
        [(last, data)] = entries(redis)
        assert last == 46 and [d["payload"] for d in json.loads(data)] == list(range(37, 47))
        assert offsets(node.history.read(KEY, Position(30, epoch), 100)) == list(range(37, 47))


def test_the_byte_bound_keeps_the_newest_whole_entries_that_fit(redis: RedisServer) -> None:
    with shared(redis, size=1000, max_bytes=4000) as node:  # entries of at most 500 bytes: 5 deliveries of ~85
        publish_run(node, 1, 60)
        publish_run(node, 61, 60)
        stored_entries = entries(redis)
        sizes = [len(data) for _, data in stored_entries]
        assert len(sizes) > 4 and max(sizes) <= 500 and sum(sizes) <= 4000 < sum(sizes) + 500
        assert stored_entries[-1][0] == 120
        kept = offsets(node.history.read(KEY, None, 1000))
        assert kept == list(range(kept[0], 121)) and 120 - 48 < kept[0] < 120 - 30
        epoch = node.history.read(KEY, None, 1).top.epoch
        stored = node.history.read(KEY, Position(10, epoch), 1000)
        assert offsets(stored) == kept and stored.complete is False  # what the bound dropped is a gap
        stored = node.history.read(KEY, Position(kept[0] - 1, epoch), 1000)
        assert offsets(stored) == kept and stored.complete
        with contextlib.closing(redis.client()) as raw:
            assert int(raw.hget(pair_keys("rusty_ws", *KEY).meta, "b") or 0) >= sum(sizes)  # an upper bound


FORGED = [
    # (id, d): each is dropped, whatever else the stream holds
    ("3-0", "[{a},{a},{a},{a},{a}]"),  # 5 deliveries under offset 3: offsets below 1
    ("5-0", "[{a},{a},"),  # not JSON
    ("6-0", "[{a}]"),  # a run of one is written as the delivery alone
    ("7-0", "[]"),
    ("8-0", "[{a},7]"),  # not a delivery
    ("9-0", "[{a},{other}]"),  # another pair's
    ("4-0", "[{a},{a},{a}]"),  # 2 to 4: over entry 2 (which holds 1 and 2)
]


def test_entries_that_no_node_wrote_are_dropped_and_logged(redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "rusty_ws.server")
    delivery = json.dumps({"publisher_name": "x", "topic": "T", "payload": "forged", "timestamp": "t", "session_id": "s"})
    other = json.dumps({"publisher_name": "x", "topic": "T", "payload": "x", "timestamp": "t", "session_id": "else"})
    with shared(redis, size=1000, max_envelope_size=10_000) as node, contextlib.closing(redis.client()) as intruder:
        stream = pair_keys("rusty_ws", *KEY).stream
        publish_run(node, 1, 2)  # entry 2 (1 and 2)
        for entry_id, data in sorted(FORGED, key=lambda forged: int(forged[0].split("-")[0])):
            intruder.xadd(stream, {"d": data.replace("{a}", delivery).replace("{other}", other), "t": "99999999999999"},
                          id=entry_id)
        intruder.xadd(stream, {"d": "[" + ",".join([delivery] * 200) + "]", "t": "99999999999999"}, id="300-0")  # huge
        with contextlib.closing(redis.client()) as raw:
            raw.hset(pair_keys("rusty_ws", *KEY).meta, "o", 400)  # as if they were below the top
        epoch = node.history.read(KEY, None, 1).top.epoch
        got = node.history.read(KEY, Position(0, epoch), 1000)
        assert offsets(got) == [1, 2] and got.complete is False
        assert node.history.status()["history_dropped"] == len(FORGED) + 1
        assert caplog.text.count("dropped an entry of the Redis stream") == len(FORGED) + 1
        # The stream goes on past them: the next run's offsets follow the top.
        publish_run(node, 401, 3)
        assert offsets(node.history.read(KEY, Position(400, epoch), 10)) == [401, 402, 403]


def test_a_redis_restarted_empty_starts_the_pair_under_a_new_epoch(redis: RedisServer) -> None:
    with shared(redis) as node:
        publish_run(node, 1, 5)
        old = node.history.read(KEY, None, 1).top.epoch
        redis.kill()
        redis.start()
        for _ in range(10):  # until the sender found its connection gone and made a new one
            answered: queue.Queue[object] = queue.Queue()
            node.sender.submit(("PING",), answered.put)
            if not isinstance(answered.get(timeout=WAIT), BaseException):
                break
            node.sender.wait_connected(True, WAIT)
        else:
            raise AssertionError("the sender did not reconnect")
        with held(node.sender):
            for n in range(1, 4):
                node.publish(f"again{n}", "T", n)
        node.wait(8)
        assert [position(node.answers[f"again{n}"]) for n in range(1, 4)] == [(1, False), (2, False), (3, False)]
        stored = node.history.read(KEY, Position(3, old), 100)
        assert stored.top.epoch != old and stored.complete is False and stored.messages == []
        assert offsets(node.history.read(KEY, Position(0, stored.top.epoch), 100)) == [1, 2, 3]
