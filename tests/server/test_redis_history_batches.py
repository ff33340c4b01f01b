"""Consecutive publishes of one pair run as one history script: offsets, ids, envelopes, restarts.

A ``RedisHistory`` and a ``RedisSender`` on a private redis-server, without a
hub: the sender's thread is held busy (``held``) while publishes are queued, so
they leave together and the sender merges each run of one pair's publishes
into one ``EVALSHA`` (counted by Redis' ``INFO commandstats``). What the script
publishes is read off the channel by a plain redis-py subscriber. The hubs'
side (order across nodes, recovery) is in test_redis_history.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py

from redis_support import RedisServer, redis_server
from rusty_ws.brokers.base import HistoryUnavailable, Stamped
from rusty_ws.brokers.redis_codec import decode_envelopes, pair_keys, publish_id_key
from rusty_ws.brokers.redis_history import RedisHistory, Route, merge_publishes, replays_safely
from rusty_ws.brokers.redis_sender import RedisSender
from rusty_ws.protocol import Delivery, Position
from support import MS, WAIT

ERRORS = (redis_py.exceptions.RedisError, OSError)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


class Shared:
    """A RedisHistory on its own sender, and what it answered and delivered locally."""

    def __init__(self, server: RedisServer, **options: Any) -> None:
        self.client = redis_py.Redis.from_url(server.url, retry=redis_py.retry.Retry(redis_py.backoff.NoBackoff(), 0))
        self.sender = RedisSender(client=self.client, errors=ERRORS, node_id="test",
                                  backoff_delays=lambda: iter(lambda: 20 * MS, None))
        self.delivered: list[Delivery] = []
        options = {"size": 100, "ttl": 60, "window": 60, "max_envelope_size": None, **options}
        self.history = RedisHistory(node_id=lambda: "node-1", route=lambda _: Route(self.client, self.sender.submit, True),
                                    deliver=self.delivered.append, prefix="rusty_ws", **options)
        self.sender.script_load(self.history.publish_script)
        self.answers: dict[str, Stamped | BaseException] = {}
        self.changed = threading.Condition()

    def publish(self, name: str, topic: str, payload: Any, publish_id: str | None = None) -> None:
        def on_done(result: Stamped | BaseException) -> None:
            with self.changed:
                assert name not in self.answers, f"{name} answered twice"
                self.answers[name] = result
                self.changed.notify_all()

        self.history.publish(Delivery("p", topic, payload, "t", "s"), publish_id, on_done)

    def wait(self, count: int) -> dict[str, Stamped | BaseException]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.answers) >= count, WAIT), self.answers
            return dict(self.answers)

    def close(self) -> None:
        self.sender.stop(WAIT)
        self.client.close()


@contextlib.contextmanager
def shared(server: RedisServer, **options: Any) -> Iterator[Shared]:
    made = Shared(server, **options)
    made.sender.start(WAIT)
    try:
        yield made
    finally:
        made.close()


@contextlib.contextmanager
def held(sender: RedisSender) -> Iterator[None]:
    """The sender's thread kept busy inside the block: what is queued meanwhile leaves together."""
    inside, release = threading.Event(), threading.Event()

    def hold(_: Any) -> None:
        inside.set()
        assert release.wait(WAIT), "held too long"

    sender.submit(("PING",), hold)
    assert inside.wait(WAIT)
    try:
        yield
    finally:
        release.set()


@contextlib.contextmanager
def listening(server: RedisServer, *topics: str) -> Iterator[Any]:
    """A plain subscriber of the pairs (topic, "s"): ``next_envelope()`` decodes what the script published."""
    client = server.client()
    pubsub = client.pubsub()
    pubsub.subscribe(*(pair_keys("rusty_ws", topic, "s").channel for topic in topics))
    for _ in topics:
        assert pubsub.get_message(timeout=WAIT)["type"] == "subscribe"

    def next_envelope(topic: str) -> list[tuple[int, Any, int]]:
        message = pubsub.get_message(timeout=WAIT)
        assert message is not None and message["type"] == "message", message
        assert message["channel"] == pair_keys("rusty_ws", topic, "s").channel
        node, deliveries = decode_envelopes(message["data"], (topic, "s"))
        assert node == "node-1" and message["data"].startswith(b'{"v":5,')
        return [(d.offset or 0, d.payload, d.extra["seq"]) for d in deliveries]

    try:
        yield next_envelope
    finally:
        pubsub.close()
        client.close()


def evalsha_calls(server: RedisServer) -> int:
    with contextlib.closing(server.client()) as client:
        return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def position(result: Stamped | BaseException) -> tuple[int, bool]:
    assert isinstance(result, Stamped), result
    return result.position.offset, result.repeat


def test_a_batch_that_mixes_pairs_ids_and_a_repeated_id_is_one_script_per_run_of_a_pair(redis: RedisServer) -> None:
    with shared(redis) as node, listening(redis, "T", "U") as next_envelope:
        before = evalsha_calls(redis)
        with held(node.sender):
            node.publish("T1", "T", 1)
            node.publish("T2", "T", 2, "x")
            node.publish("T3", "T", 3, "x")  # the same id, in the same batch: a repeat of T2
            node.publish("U1", "U", 1, "y")
            node.publish("T4", "T", 4)
            node.publish("T5", "T", 5, "z")
        answers = node.wait(6)
        assert {name: position(result) for name, result in answers.items()} == {
            "T1": (1, False), "T2": (2, False), "T3": (2, True), "U1": (1, False), "T4": (3, False), "T5": (4, False)}
        epochs = {result.position.epoch for result in answers.values() if isinstance(result, Stamped)}
        assert len(epochs) == 2  # one per pair
        assert evalsha_calls(redis) - before == 3  # [T1, T2, T3], [U1], [T4, T5]
        # One envelope per run, in the order of the queue, the repeat not in it; each item with
        # this node's number for it.
        first, other, second = next_envelope("T"), next_envelope("U"), next_envelope("T")
        assert [(offset, payload) for offset, payload, _ in first] == [(1, 1), (2, 2)]
        assert [(offset, payload) for offset, payload, _ in other] == [(1, 1)]
        assert [(offset, payload) for offset, payload, _ in second] == [(3, 4), (4, 5)]
        numbers = [seq for _, _, seq in first + other + second]
        assert numbers == sorted(numbers) and len(set(numbers)) == 5
        with contextlib.closing(redis.client()) as raw:
            keys = pair_keys("rusty_ws", "T", "s")
            entries = raw.xrange(keys.stream)  # one entry per run, named after its last offset
            assert [entry_id for entry_id, _ in entries] == [b"2-0", b"4-0"]
            assert all(fields[b"d"].startswith(b"[") for _, fields in entries)
            assert raw.hget(keys.meta, "o") == b"4"
            assert raw.get(publish_id_key("rusty_ws", "s", "x")) == b"2:" + answers["T2"].position.epoch.encode()  # type: ignore[union-attr]
        assert node.delivered == []  # nothing fell back to local delivery


def test_a_batch_of_repeats_only_publishes_nothing(redis: RedisServer) -> None:
    with shared(redis) as node, listening(redis, "T") as next_envelope:
        node.publish("first", "T", 1, "a")
        assert position(node.wait(1)["first"]) == (1, False)
        assert [offset for offset, _, _ in next_envelope("T")] == [1]
        with held(node.sender):
            node.publish("again", "T", 1, "a")
            node.publish("and again", "T", 1, "a")
            node.publish("new", "T", 2, "b")
        answers = node.wait(4)
        assert [position(answers[name]) for name in ("again", "and again", "new")] == [(1, True), (1, True), (2, False)]
        assert [offset for offset, _, _ in next_envelope("T")] == [2]
        with held(node.sender):
            node.publish("only repeats", "T", 1, "a")
            node.publish("only repeats 2", "T", 2, "b")
        answers = node.wait(6)
        assert position(answers["only repeats"]) == (1, True) and position(answers["only repeats 2"]) == (2, True)
        node.publish("after", "T", 3)
        node.wait(7)
        assert [offset for offset, _, _ in next_envelope("T")] == [3]  # nothing was published for the repeats


def test_a_batch_lost_with_redis_fails_each_publish_and_the_next_gets_a_new_epoch(redis: RedisServer) -> None:
    with shared(redis) as node:
        with held(node.sender):
            for n in range(1, 4):
                node.publish(f"a{n}", "T", n, f"id-{n}")
        answers = node.wait(3)
        assert [position(answers[f"a{n}"]) for n in range(1, 4)] == [(1, False), (2, False), (3, False)]
        old_epoch = answers["a1"].position.epoch  # type: ignore[union-attr]
        # Redis goes away under a batch: every publish of it fails; those without id fall back here, in order.
        with held(node.sender):
            node.publish("lost-1", "T", "l1")
            node.publish("lost-2", "T", "l2", "id-9")
            node.publish("lost-3", "T", "l3")
            redis.kill()
        answers = node.wait(6)
        assert all(isinstance(answers[f"lost-{n}"], HistoryUnavailable) for n in range(1, 4))
        assert [d.payload for d in node.delivered] == ["l1", "l3"]
        assert all(d.offset is None for d in node.delivered)
        # Back, empty: after the sender reconnected, a batch starts the pair again under a new epoch.
        redis.start()
        assert node.sender.wait_connected(True, WAIT)
        with held(node.sender):
            node.publish("b1", "T", "b1", "id-1")  # the id died with Redis' data: new
            node.publish("b2", "T", "b2", "id-1")  # ...and repeated in the batch
            node.publish("b3", "T", "b3")
        answers = node.wait(9)
        assert [position(answers[name]) for name in ("b1", "b2", "b3")] == [(1, False), (1, True), (2, False)]
        new_epoch = {answers[name].position.epoch for name in ("b1", "b2", "b3")}  # type: ignore[union-attr]
        assert len(new_epoch) == 1 and old_epoch not in new_epoch


def test_max_bytes_bounds_each_stream_and_keeps_the_newest(redis: RedisServer) -> None:
    """``RUSTY_WS_HISTORY_MAX_BYTES`` in Redis: a stream keeps the newest deliveries whose bytes fit."""
    with shared(redis, size=1000, max_bytes=4000) as node:  # ~14 of these deliveries
        with held(node.sender):
            for n in range(30):
                node.publish(f"m{n}", "T", "x" * 200 + f"{n:02d}")
        node.wait(30)
        for n in range(30, 40):  # one at a time too (each run its own exact count when past the bound)
            node.publish(f"m{n}", "T", "x" * 200 + f"{n:02d}")
            node.wait(n + 1)
        with contextlib.closing(redis.client()) as raw:
            keys = pair_keys("rusty_ws", "T", "s")
            entries = raw.xrange(keys.stream)
            sizes = [len(fields[b"d"]) for _, fields in entries]
            assert 10 < len(sizes) < 40 and sum(sizes) <= 4000 < sum(sizes) + sizes[0]  # as many as fit
            assert [entry_id for entry_id, _ in entries][-1] == b"40-0"  # the newest kept
            assert int(raw.hget(keys.meta, "b") or 0) >= sum(sizes)  # an upper bound, never under
        stored = node.history.read(("T", "s"), Position(30, node.history.read(("T", "s"), None, 1).top.epoch), 100)
        assert [d.offset for d in stored.messages] == list(range(31, 41)) and stored.complete
        stored = node.history.read(("T", "s"), Position(1, stored.top.epoch), 100)
        assert stored.complete is False  # what was dropped for bytes is a gap, and says so


def test_one_delivery_larger_than_max_bytes_is_not_kept(redis: RedisServer) -> None:
    with shared(redis, max_bytes=500) as node:
        node.publish("small", "T", "s" * 100)
        node.publish("big", "T", "b" * 1000)
        answers = node.wait(2)
        assert position(answers["big"]) == (2, False)  # published and numbered...
        stored = node.history.read(("T", "s"), None, 10)
        assert stored.messages == [] and stored.top.offset == 2  # ...but kept nowhere


def test_a_merge_stays_within_what_every_listener_accepts(redis: RedisServer) -> None:
    """Merged envelopes never pass ``max_envelope_size``: the sender splits runs by their bytes."""
    limit = 2000
    with shared(redis, max_envelope_size=limit) as node, listening(redis, "T") as next_envelope:
        with held(node.sender):
            for n in range(40):
                node.publish(f"m{n}", "T", "y" * 150)
        node.wait(40)
        offsets: list[int] = []
        envelopes = 0
        while len(offsets) < 40:
            items = next_envelope("T")
            envelopes += 1
            offsets += [offset for offset, _, _ in items]
        assert offsets == list(range(1, 41)) and 1 < envelopes < 40


@pytest.mark.parametrize("delivery", [
    Delivery("p", "T", "text", "t", "s", None, 5, "ab12"),
    Delivery("p", "T", "é \ud800 \"quoted\"", "t", "s", "alice", 9007199254740991, "0123456789abcdef"),
    Delivery("p", "T", {"n": 1}, "t", "s", "bob", 3, "ab"),
    Delivery("p", "T", "no position", "t", "s"),
])
def test_a_delivery_from_redis_is_encoded_as_delivery_encode_does(delivery: Delivery) -> None:
    from rusty_ws.server.shared_streams import _encoded

    assert _encoded(delivery) == delivery.encode()


def test_only_a_run_of_publishes_that_all_carry_an_id_may_be_sent_twice() -> None:
    """The cluster's retry sends again only what the script's id checks make safe to run twice."""
    submitted: list[Any] = []
    history = RedisHistory(node_id=lambda: "node-1",
                           route=lambda _: Route(None, lambda command, _: submitted.append(command), True),
                           deliver=lambda _: None, prefix="rusty_ws", size=100, ttl=60, window=60,
                           max_envelope_size=None)
    for publish_id in ("a", None, "b"):
        history.publish(Delivery("p", "T", {"n": 1}, "t", "s"), publish_id, lambda _: None)
    with_a, without, with_b = submitted
    sha = history.publish_sha
    assert replays_safely(with_a, sha) and replays_safely(with_b, sha)
    assert not replays_safely(without, sha)
    assert not replays_safely(with_a, "another script")
    both, _ = merge_publishes([with_a, with_b])
    mixed, _ = merge_publishes([with_a, without, with_b])
    assert replays_safely(both, sha)
    assert not replays_safely(mixed, sha)  # its publish without an id would be delivered twice
    assert not replays_safely(("EVALSHA", sha), sha) and not replays_safely(("PING",), sha)
