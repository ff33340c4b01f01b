"""A Redis under live hubs that comes back with less than clients saw: restored from an older
snapshot, or flushed. Every pair gets a new epoch, so a client that resumes from a position of
before is told ``recovered: false``: never an offset handed out again with another message, never
``invalid_since`` for a position it was really given (``redis_scripts``, run ids).

Real hubs on their own loopback ports, one private redis-server; a snapshot is an explicit
``SAVE`` (the server runs with ``--save ""``: nothing else writes its RDB file), which a start in
the same ``--dir`` loads. Waits are for acks and deliveries, never for time.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_history_wire import subscribe_json
from test_redis_history import ack_of, broker_of, recv_delivery

from redis_support import RedisServer, redis_server
from rusty_ws.brokers.redis_codec import pair_keys
from rusty_ws.protocol import Ack, Since, Subscribed, encode_publish
from support import WAIT, Client, RunningServer, nodes


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def ack_after_restart(publisher: Client, payload: Any, publish_id: str, hubs: list[RunningServer]) -> Ack:
    """The ack of a publish made just after Redis came back (``publisher`` subscribes to nothing): a
    sender learns that its connection died only when it writes, so the first tries may be answered
    ``unavailable`` (the id was not taken)."""
    for _ in range(3):
        publisher.send(encode_publish("T", payload, session_id="s", id=publish_id))
        text = publisher.recv()
        if text.startswith("ack:"):
            return Ack.parse(text)
        assert json.loads(text[len("error:"):])["code"] == "unavailable", text
        assert all(broker_of(hub).wait_connected(True, WAIT) for hub in hubs)
    raise AssertionError("no ack after Redis came back")


def resume(node: RunningServer, since: Since) -> tuple[list[dict[str, Any]], Subscribed]:
    """A new client on ``node`` that subscribes from ``since``: what it is replayed, and the reply
    (a read that found its pooled connection dead is answered without position: tried again)."""
    for _ in range(3):
        with node.connect() as client:
            replayed, reply = subscribe_json(client, since=since)
        if reply.epoch is not None:
            return replayed, reply
    raise AssertionError("no read of the stream after Redis came back")


@pytest.mark.parametrize("first", ["read", "publish"])
def test_a_redis_restored_from_an_older_snapshot_gives_new_epochs_and_hands_out_no_offset_twice(
        redis: RedisServer, first: str) -> None:
    """``first``: what reaches the restored pair first, a resume (the read script) or a publish (the
    publish script, made with the run_id of before: its sender must give it the new one)."""
    with nodes(2, redis.url) as (a, b), a.connect() as publisher, b.connect() as live:
        _, subscribed = subscribe_json(live)
        epoch = subscribed.epoch
        for n in range(1, 4):
            assert ack_of(publisher, "T", n, f"before-{n}").offset == n
        old_run_id = redis.run_id()
        with contextlib.closing(redis.client()) as raw:
            raw.save()  # the snapshot: offsets 1 to 3
        for n in range(4, 7):
            assert ack_of(publisher, "T", n, f"after-{n}").offset == n
        seen = [recv_delivery(live) for _ in range(6)]
        assert [(m["payload"], m["offset"], m["epoch"]) for m in seen] == [(n, n, epoch) for n in range(1, 7)]
        redis.kill()
        redis.start()  # the same port and --dir: it loads the snapshot, where the top is 3
        with contextlib.closing(redis.client()) as raw:
            assert raw.hget(pair_keys("rusty_ws", "T", "s").meta, "o") == b"3"
        assert redis.run_id() != old_run_id
        assert all(broker_of(node).wait_connected(True, WAIT) for node in (a, b))
        renewed = None
        if first == "read":  # a client that saw up to 6 is not told invalid_since, nor recovered
            replayed, ahead = resume(b, Since(6, epoch))
            assert replayed == [] and ahead.recovered is False and ahead.epoch != epoch and ahead.offset == 3
            renewed = ahead.epoch
        ack = ack_after_restart(publisher, 7, "restored-7", [a, b])
        assert ack.offset == 4 and ack.epoch != epoch  # offsets go on from the snapshot's top, under a new epoch
        assert renewed in (None, ack.epoch)
        renewed = ack.epoch
        assert ack_of(publisher, "T", 8, "restored-8").offset == 5
        # The live subscriber: 7 and 8 once each, in the new epoch (nothing it saw comes again).
        got = [recv_delivery(live) for _ in range(2)]
        assert [(m["payload"], m["offset"], m["epoch"]) for m in got] == [(7, 4, renewed), (8, 5, renewed)]
        assert live.sync() == []
        # Behind the snapshot's top, ahead of it, at it: never another message, always told.
        for since in (Since(2, epoch), Since(6, epoch), Since(3, epoch)):
            replayed, reply = resume(a, since)
            assert replayed == [] and (reply.offset, reply.epoch, reply.recovered) == (5, renewed, False)
        replayed, reply = resume(b, Since(3, renewed))
        assert [m["payload"] for m in replayed] == [7, 8] and reply.recovered is True
        # One renewal, by the first script to run on the restored pair (b's read, or a's publish).
        assert [broker_of(node).status()["history_restarted"] for node in (a, b)] == (
            [0, 1] if first == "read" else [1, 0])


def test_flushall_under_live_hubs_starts_every_pair_again_under_a_new_epoch(redis: RedisServer) -> None:
    with nodes(2, redis.url) as (a, b), a.connect() as publisher, b.connect() as live:
        _, first = subscribe_json(live)
        epoch = first.epoch
        for n in range(1, 4):
            assert ack_of(publisher, "T", n, f"p-{n}").offset == n
        assert [recv_delivery(live)["offset"] for _ in range(3)] == [1, 2, 3]
        with contextlib.closing(redis.client()) as raw:
            raw.flushall()
        ack = ack_of(publisher, "T", 4, "p-4")
        assert ack.offset == 1 and ack.epoch != epoch
        assert ack_of(publisher, "T", 5, "p-5").offset == 2
        got = [recv_delivery(live) for _ in range(2)]
        assert [(m["payload"], m["offset"], m["epoch"]) for m in got] == [(4, 1, ack.epoch), (5, 2, ack.epoch)]
        assert live.sync() == []
        for since in (Since(3, epoch), Since(1, epoch)):
            replayed, reply = resume(b, since)
            assert replayed == [] and (reply.offset, reply.epoch, reply.recovered) == (2, ack.epoch, False)
        replayed, reply = resume(b, Since(0, ack.epoch))
        assert [m["payload"] for m in replayed] == [4, 5] and reply.recovered is True
