"""History and recovery in Redis: offsets, epochs and publish ids shared by every node (redis_history.py).

Real hubs on their own loopback ports, one private redis-server; deliveries are
counted by offset. Cross-node delivery is asynchronous, so a test waits for a
known message (a numbered one, an ack), never for time.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_history_wire import subscribe_json

from redis_support import RedisServer, redis_server
from rusty_ws.brokers.redis_codec import pair_keys, publish_id_key, session_tag
from rusty_ws.protocol import Ack, Since, encode_publish
from support import Client, RunningServer, running_server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@contextlib.contextmanager
def nodes(count: int, url: str, **overrides: object) -> Iterator[list[RunningServer]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_server(broker_url=url, **overrides)) for _ in range(count)]


def ack_of(client: Client, topic: str, payload: Any, publish_id: str, session: str = "s",
           early: list[dict[str, Any]] | None = None) -> Ack:
    """Publish with an id; return its ack. Deliveries to ``client`` that come first go to ``early``.

    With Redis history a node's own subscribers get a publish back through Redis, so
    it may reach them before or after the publisher's ack.
    """
    client.send(encode_publish(topic, payload, session_id=session, id=publish_id))
    for _ in range(10_000):
        text = client.recv()
        if text.startswith("ack:"):
            return Ack.parse(text)
        assert text.startswith("{") and early is not None, text
        early.append(json.loads(text))
    raise AssertionError("no ack")


def recv_delivery(client: Client) -> dict[str, Any]:
    text = client.recv()
    assert text.startswith("{"), text
    return json.loads(text)


def test_a_publish_takes_its_offset_in_redis_and_every_node_delivers_it_with_that_offset(redis: RedisServer) -> None:
    with nodes(2, redis.url) as (a, b), a.connect() as near, b.connect() as far, a.connect() as publisher:
        _, near_reply = subscribe_json(near)
        _, far_reply = subscribe_json(far)
        assert near_reply.epoch == far_reply.epoch and near_reply.offset == far_reply.offset == 0
        ack = ack_of(publisher, "T", "hello", "p-1")
        assert (ack.offset, ack.epoch) == (1, far_reply.epoch)
        for client in (near, far):
            message = recv_delivery(client)
            assert (message["payload"], message["offset"], message["epoch"]) == ("hello", 1, ack.epoch)
            assert list(message)[-2:] == ["offset", "epoch"]
        with contextlib.closing(redis.client()) as raw:
            keys = pair_keys("rusty_ws", "T", "s")
            assert raw.hgetall(keys.meta) == {b"e": ack.epoch.encode(), b"o": b"1"}
            assert raw.xlen(keys.stream) == 1
            assert raw.exists(publish_id_key("rusty_ws", "s", "p-1")) == 1


def test_a_client_recovers_on_another_node_from_its_position(redis: RedisServer) -> None:
    with nodes(2, redis.url) as (a, b):
        with a.connect() as first:
            _, reply = subscribe_json(first)
            seen: list[dict[str, Any]] = []
            for n in range(1, 6):
                ack_of(first, "T", n, f"id-{n}", early=seen)
            seen += [recv_delivery(first) for _ in range(5 - len(seen))]
            assert [m["offset"] for m in seen] == [1, 2, 3, 4, 5]
        with a.connect() as publisher:
            for n in range(6, 11):
                ack_of(publisher, "T", n, f"id-{n}")
        with b.connect() as again:
            replayed, reply = subscribe_json(again, since=Since(3, seen[0]["epoch"]))
            assert [m["payload"] for m in replayed] == [4, 5, 6, 7, 8, 9, 10]
            assert [m["offset"] for m in replayed] == [4, 5, 6, 7, 8, 9, 10]
            assert (reply.offset, reply.epoch, reply.recovered) == (10, seen[0]["epoch"], True)


def test_keys_of_one_session_share_one_hash_tag() -> None:
    tag = session_tag("rusty_ws", "s")
    keys = pair_keys("rusty_ws", "T", "s")
    for name in (*keys, *pair_keys("rusty_ws", "Other", "s"), publish_id_key("rusty_ws", "s", "x")):
        assert name.split(b":")[1] == tag
    assert session_tag("rusty_ws", "t") != tag
