"""WsClient recovery across nodes: the history lives in Redis, so any node can resume a client.

Real hub processes (``HubProcess``) or in-process hubs, one private redis-server
(or a private 3-master Redis Cluster, ``redis_cluster_support``);
the subscriber goes through a TCP proxy that resets its connection (no close
frame) and sends the next connection to another node.
"""

from __future__ import annotations

import contextlib
import itertools
import threading

import pytest

from redis_support import RedisServer, redis_server
from rusty_ws import RecoveryFailure, ServerError, WsClient
from rusty_ws.protocol import Since
from support import WAIT, ClientEvents, HubProcess, dropped_as_seen, running_server
from tcp_proxy import tcp_proxy

FAST = {"backoff_initial": 0.05, "backoff_cap": 0.2, "timeout": WAIT}


@pytest.fixture
def redis() -> contextlib.AbstractContextManager[RedisServer]:  # type: ignore[misc]
    with redis_server() as server:
        yield server


def test_reconnecting_to_another_node_each_time_gets_all_1000_messages_in_order_once(redis: RedisServer) -> None:
    with contextlib.ExitStack() as stack:
        repeats = stack.enter_context(dropped_as_seen())
        hubs = [stack.enter_context(HubProcess(broker_url=redis.url, history_size=2000)) for _ in range(3)]
        proxy = stack.enter_context(tcp_proxy(hubs[0].port))
        sub = stack.enter_context(WsClient.connect_with_session("sub", "s", proxy.url, **FAST))
        pub = stack.enter_context(WsClient.connect_with_session("pub", "s", f"ws://127.0.0.1:{hubs[1].port}/ws",
                                                                timeout=WAIT))
        events = ClientEvents(sub, "T")
        sub.subscribe("sub", "T")
        next_node = itertools.cycle([1, 2, 0])
        cuts = {150, 300, 450, 600, 750, 900}
        effective = []  # cuts that found a connection (one replay may hold two of the numbers)

        def cut(delivery) -> None:  # on the subscriber's dispatcher thread
            if delivery.payload in cuts:
                proxy.target_port = hubs[next(next_node)].port  # the next connection lands on another node
                if proxy.cut():
                    effective.append(delivery.payload)

        sub.on_delivery("T", cut)
        acks = []

        def publish_all() -> None:
            for n in range(1, 1001):
                acks.append(pub.publish("pub", "T", n))  # each acknowledged (by Redis) before the next

        publisher = threading.Thread(target=publish_all, name="test-publisher")
        publisher.start()
        try:
            events.wait_payload(1000, timeout=20 * WAIT)
        finally:
            publisher.join(20 * WAIT)
        pub.publish("pub", "T", "end")
        assert events.wait_payload("end") == [*range(1, 1001), "end"]
        assert [ack.offset for ack in acks] == list(range(1, 1001))
        assert len({ack.epoch for ack in acks}) == 1
        assert len(effective) >= 3
        proxy.wait_accepted(1 + len(effective))  # it reconnected by itself, each time to another node
        assert events.entries("recovery_failed") == []
        offsets = [entry[1].offset for entry in events.log if entry[0] == "message"]
        assert offsets == list(range(1, 1002))
        assert sub.position("T") == Since(1001, acks[0].epoch)
        assert repeats == []  # no hub sent one twice (the client would have hidden it)


def test_redis_restarted_empty_is_a_new_epoch_and_the_client_is_told(redis: RedisServer) -> None:
    with running_server(broker_url=redis.url) as a, running_server(broker_url=redis.url) as b, \
            tcp_proxy(a.port) as proxy, \
            WsClient.connect_with_session("sub", "s", proxy.url, **FAST) as sub, \
            WsClient.connect_with_session("pub", "s", b.ws_url, timeout=WAIT) as pub:
        events = ClientEvents(sub, "T")
        sub.subscribe("sub", "T")
        first = [pub.publish("pub", "T", n) for n in range(1, 21)]
        events.wait_payload(20)
        proxy.hold()
        proxy.cut()
        for n in range(21, 31):  # missed by the subscriber, and lost with Redis
            pub.publish("pub", "T", n)
        redis.kill()
        redis.start()
        for node in (a, b):
            assert node.hub.broker.wait_connected(True, WAIT)
        # The sender learns that its old connection died when it next writes: the first publish
        # may be answered unavailable; retried with the same id, it lands once.
        try:
            pub.publish("pub", "T", 31, publish_id="first-after")
        except ServerError as exc:
            assert exc.code == "unavailable"
            assert b.hub.broker.wait_connected(True, WAIT)
        later = [pub.publish("pub", "T", 31, publish_id="first-after")]  # acknowledged as the first, if it landed
        later += [pub.publish("pub", "T", n) for n in range(32, 36)]  # offsets 1..5 of a new epoch
        assert [ack.offset for ack in later] == [1, 2, 3, 4, 5] and later[0].epoch != first[0].epoch
        proxy.target_port = b.port
        proxy.release()
        [(topic, session_id, reason)] = events.wait_count("recovery_failed", 1)
        assert (topic, session_id, reason) == ("T", "s", RecoveryFailure.EPOCH_CHANGED)
        events.wait_count("connect", 1)
        pub.publish("pub", "T", "end")
        payloads = events.wait_payload("end")
        assert payloads == [*range(1, 21), "end"]  # nothing duplicated; the gap was reported, not hidden
        assert sub.position("T") == Since(6, later[0].epoch)


def test_on_a_cluster_reconnecting_to_the_other_hub_each_time_gets_every_message_in_order_once() -> None:
    """The same on a 3-master Redis Cluster: the stream lives on the session's master, both hubs read it there."""
    from redis_cluster_support import redis_cluster

    count = 600
    with contextlib.ExitStack() as stack:
        repeats = stack.enter_context(dropped_as_seen())
        cluster = stack.enter_context(redis_cluster(3))
        hubs = [stack.enter_context(HubProcess(broker_url=cluster.url, history_size=count)) for _ in range(2)]
        proxy = stack.enter_context(tcp_proxy(hubs[0].port))
        sub = stack.enter_context(WsClient.connect_with_session("sub", "s", proxy.url, **FAST))
        pub = stack.enter_context(WsClient.connect_with_session("pub", "s", f"ws://127.0.0.1:{hubs[1].port}/ws",
                                                                timeout=WAIT))
        events = ClientEvents(sub, "T")
        sub.subscribe("sub", "T")
        next_node = itertools.cycle([1, 0])
        cuts = {100, 200, 300, 400, 500}
        effective = []

        def cut(delivery) -> None:  # on the subscriber's dispatcher thread
            if delivery.payload in cuts:
                proxy.target_port = hubs[next(next_node)].port  # the next connection lands on the other hub
                if proxy.cut():
                    effective.append(delivery.payload)

        sub.on_delivery("T", cut)
        acks = []

        def publish_all() -> None:
            for n in range(1, count + 1):
                acks.append(pub.publish("pub", "T", n))

        publisher = threading.Thread(target=publish_all, name="test-publisher")
        publisher.start()
        try:
            events.wait_payload(count, timeout=20 * WAIT)
        finally:
            publisher.join(20 * WAIT)
        pub.publish("pub", "T", "end")
        assert events.wait_payload("end") == [*range(1, count + 1), "end"]
        assert [ack.offset for ack in acks] == list(range(1, count + 1))
        assert len({ack.epoch for ack in acks}) == 1
        assert len(effective) >= 3
        proxy.wait_accepted(1 + len(effective))
        assert events.entries("recovery_failed") == []
        offsets = [entry[1].offset for entry in events.log if entry[0] == "message"]
        assert offsets == list(range(1, count + 2))
        assert sub.position("T") == Since(count + 1, acks[0].epoch)
        assert repeats == []
