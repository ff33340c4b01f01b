"""Several hubs on one private Redis: cross-node delivery, interest tracking, outages, hostile data.

Each node is a real hub on its own loopback port, with its own ``RedisBroker``
(its own node id, listener thread and Redis connections), all sharing one
redis-server that the test starts on a free port. Delivery to other nodes is
asynchronous, so a ping/pong barrier proves nothing about them; the tests wait
for a sentinel published after the real messages (Redis keeps the order in
which it took the PUBLISHes), or for a known message.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterator

import pytest
from test_seed_scenario import EXPECTED, PUBLISHES, SESSION_OF, SUBSCRIPTIONS, check_deliveries

from redis_support import (
    SENTINEL,
    RedisServer,
    free_port,
    publish_across_nodes,
    publish_sentinel,
    publishes_landed,
    read_until_sentinel,
    redis_server,
)
from rusty_ws import create_app
from rusty_ws.brokers.redis import RedisBroker, channel_name
from rusty_ws.protocol import (
    encode_publish,
    encode_register_name,
    encode_register_session,
    encode_subscribe,
    encode_unsubscribe,
)
from rusty_ws.server.state import state_of
from support import MS, WAIT, Client, RunningServer, http, login, nodes, running_server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def broker(node: RunningServer) -> RedisBroker:
    found = node.hub.broker
    assert isinstance(found, RedisBroker)
    return found


def publish(client: Client, topic: str, session: str, payload: object) -> list[str]:
    """Publish through ``client``; return what it received before the server finished the publish."""
    return client.command(encode_publish(topic, payload, session_id=session))


def redis_threads() -> list[str]:
    """The listener threads alive (each broker has one, and one sender: ``sender_threads``)."""
    return [t.name for t in threading.enumerate()
            if t.name.startswith("rusty_ws-redis-") and not t.name.startswith("rusty_ws-redis-sender-")]


def sender_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("rusty_ws-redis-sender-")]


# --------------------------------------------------------------------------- the seed's scenario


@pytest.mark.parametrize("login_on", [None, 0], ids=["anonymous", "tokens-from-node-0"])
def test_seed_scenario_spread_over_three_nodes(redis: RedisServer, login_on: int | None) -> None:
    with nodes(3, redis.url) as hubs:
        where = {name: hubs[i % 3] for i, name in enumerate(SUBSCRIPTIONS)}  # Client4 shares node 0
        clients = {}
        for name, (session, topics) in SUBSCRIPTIONS.items():
            token = login(hubs[login_on], session_id=session) if login_on is not None else None
            client = clients[name] = where[name].connect(token)
            client.send(encode_register_name(name))
            client.send(encode_register_session(session))
            for topic in [*topics, SENTINEL]:
                client.send(encode_subscribe(topic, session))
            assert client.sync() == [], f"{name} got replies to its set-up"
        try:
            received = publish_across_nodes(redis, clients, PUBLISHES, SESSION_OF)
            check_deliveries(received)
            for name, messages in received.items():
                if login_on is not None:
                    assert [m["user"] for m in messages] == ["testuser"] * len(EXPECTED[name])
                # Nothing more: no late duplicate, nothing from the other session.
                assert clients[name].sync() == []
        finally:
            for client in clients.values():
                client.close()


def test_order_of_one_publisher_is_kept_on_every_node(redis: RedisServer) -> None:
    with nodes(2, redis.url) as (a, b), a.connect() as publisher, b.connect() as far, a.connect() as near:
        for client in (far, near):
            client.command(encode_subscribe("Ordered", "s"))
            client.command(encode_subscribe(SENTINEL, "s"))
        for i in range(300):
            publisher.send(encode_publish("Ordered", i, session_id="s"))
        publisher.sync()
        for client in (far, near):
            assert [json.loads(client.recv())["payload"] for _ in range(300)] == list(range(300))
        publish_sentinel(redis, "s")
        assert [read_until_sentinel(client) for client in (far, near)] == [[], []]  # and no duplicate


@pytest.mark.parametrize("protocol", [3, 2], ids=["resp3", "resp2"])
@pytest.mark.parametrize("parser", ["hiredis", "plain"])
def test_the_listener_reads_pushes_in_either_protocol_with_or_without_hiredis(
        redis: RedisServer, protocol: int, parser: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The listener's pushes (``redis_pushes.py``): messages in order, PONGs (connected, barriers), garbage dropped."""
    import rusty_ws.brokers.redis_link as link_module

    if parser == "plain":
        monkeypatch.setattr(link_module, "_hiredis", None)
        monkeypatch.setattr(link_module, "_pack", link_module._pack_plain)
    else:
        pytest.importorskip("hiredis", reason="the redis extra installs hiredis")
    url = f"{redis.url}?protocol={protocol}"
    with nodes(2, url) as (a, b), a.connect() as publisher, b.connect() as far:
        assert broker(b).status()["connected"] is True  # the PONG of its first PING came back
        for topic in ("Ordered", "Other", SENTINEL):
            far.command(encode_subscribe(topic, "s"))  # each confirmed by a PING barrier's PONG
        far.command(encode_unsubscribe("Other", "s"))
        with redis.client() as intruder:
            assert intruder.publish(channel_name("rusty_ws", "Ordered", "s"), b"not an envelope") == 1
        for i in range(300):
            publisher.send(encode_publish("Ordered", i, session_id="s"))
            if i % 100 == 0:
                publisher.send(encode_publish("Other", i, session_id="s"))  # unsubscribed: not delivered
        publisher.sync()
        assert [json.loads(far.recv())["payload"] for _ in range(300)] == list(range(300))
        publish_sentinel(redis, "s")
        assert read_until_sentinel(far) == []  # no duplicate, nothing of "Other"
        assert broker(b).status()["dropped"] == 1 and caplog.text.count("no rusty_ws envelope") == 1
        assert "did not confirm" not in caplog.text


@pytest.mark.parametrize("protocol", [3, 2], ids=["resp3", "resp2"])
@pytest.mark.parametrize("parser", ["hiredis", "plain"])
def test_an_error_reply_is_a_push_in_its_place_and_the_link_stays_in_step(
        redis: RedisServer, protocol: int, parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal (on a cluster: ``MOVED`` to an ``SSUBSCRIBE``) is one push ``[ERROR, exc]`` after what came
    before it, not an exception that loses those; the replies after it are read as usual."""
    import redis as redis_py

    import rusty_ws.brokers.redis_link as link_module
    from rusty_ws.brokers.redis_pushes import ERROR, PushLink

    if parser == "plain":
        monkeypatch.setattr(link_module, "_hiredis", None)
        monkeypatch.setattr(link_module, "_pack", link_module._pack_plain)
    else:
        pytest.importorskip("hiredis", reason="the redis extra installs hiredis")
    client = redis_py.Redis.from_url(f"{redis.url}?protocol={protocol}", socket_timeout=WAIT)
    link = PushLink(client, redis_py.exceptions)
    try:
        link.subscribe(b"ch")
        link.ping(b"before")
        link.send(b"PING", b"one", b"too many")  # refused: wrong number of arguments
        link.ping(b"after")
        pushes: list[list[object]] = []
        for _ in range(100):  # bounded: each read waits up to WAIT for what is not there yet
            pushes += link.read(WAIT)
            if len(pushes) >= 4:
                break
        assert [push[0] for push in pushes] == [b"subscribe", b"pong", ERROR, b"pong"], pushes
        assert pushes[1][1] == b"before" and pushes[3][1] == b"after"
        assert isinstance(pushes[2][1], redis_py.exceptions.ResponseError) and "arguments" in str(pushes[2][1])
    finally:
        link.close()
        client.close()


def test_server_side_publish_reaches_other_nodes(redis: RedisServer) -> None:
    with nodes(2, redis.url) as (a, b), b.connect() as client:
        client.command(encode_subscribe("OrderPlaced", "session-shop"))
        state_of(a.app).pubsub.publish("session-shop", "OrderPlaced", {"id": 42}, app=a.app)
        message = client.recv_json()
        assert message["payload"] == {"id": 42} and message["publisher_name"] == "server"


# --------------------------------------------------------------------------- interest tracking


def test_a_node_subscribes_in_redis_only_to_what_its_clients_want(redis: RedisServer) -> None:
    with nodes(2, redis.url) as (a, b):
        node_a, node_b = f"rusty_ws-{broker(a).node_id}", f"rusty_ws-{broker(b).node_id}"
        wanted = channel_name("rusty_ws", "T", "s1")
        # Each node listens on its control channel only.
        assert redis.subscriber_channels() == {node_a: 1, node_b: 1}
        assert redis.channels("rusty_ws:[0-9]*") == set()
        with a.connect() as first, a.connect() as second, b.connect() as publisher:
            first.command(encode_subscribe("T", "s1"))  # answered: Redis has it already
            assert redis.numsub(wanted) == 1
            second.command(encode_subscribe("T", "s1"))  # a second local subscriber costs Redis nothing
            assert redis.numsub(wanted) == 1
            assert redis.subscriber_channels() == {node_a: 2, node_b: 1}
            assert broker(a).status()["channels"] == 1 and broker(b).status()["channels"] == 0

            # Sessions that live on node b only add nothing on node a.
            with b.connect() as other:
                for i in range(20):
                    other.send(encode_subscribe("T", f"elsewhere-{i}"))
                other.sync()
                assert redis.subscriber_channels() == {node_a: 2, node_b: 21}
                publish(publisher, "T", "elsewhere-3", "not for a")
                assert json.loads(other.recv())["payload"] == "not for a"
            b.wait_connections(1)
            assert redis.subscriber_channels() == {node_a: 2, node_b: 1}

            publish(publisher, "T", "s1", "hello")
            assert first.recv_json()["payload"] == "hello" and second.recv_json()["payload"] == "hello"

            first.command(encode_unsubscribe("T", "s1"))
            assert redis.numsub(wanted) == 1  # second still wants it
            second.command(encode_unsubscribe("T", "s1"))
            assert redis.numsub(wanted) == 0
            assert redis.subscriber_channels() == {node_a: 1, node_b: 1}

            second.command(encode_subscribe("Gone", "s2"))
            assert redis.numsub(channel_name("rusty_ws", "Gone", "s2")) == 1
        a.wait_connections(0)  # a connection that ends takes its subscriptions out of Redis too
        assert redis.numsub(channel_name("rusty_ws", "Gone", "s2")) == 0
        assert redis.channels("rusty_ws:[0-9]*") == set()


def test_channel_prefix_keeps_deployments_apart(redis: RedisServer) -> None:
    with running_server(broker_url=redis.url + "?channel_prefix=shop") as shop, \
            running_server(broker_url=redis.url) as other, \
            shop.connect() as listener, other.connect() as publisher:
        listener.command(encode_subscribe("T", "s"))
        assert redis.channels("shop:*") - {channel for channel in redis.channels("shop:node:*")} == \
            {channel_name("shop", "T", "s")}
        publish(publisher, "T", "s", "other deployment")
        assert publishes_landed(publisher, "s") == []
        listener.command(encode_subscribe(SENTINEL, "s"))
        publish_sentinel(redis, "s", prefix="shop")
        assert read_until_sentinel(listener) == []


# --------------------------------------------------------------------------- outages


def test_redis_outage_local_delivery_goes_on_and_remote_resumes(redis: RedisServer) -> None:
    with nodes(2, redis.url) as (a, b), a.connect() as publisher, a.connect() as near, \
            b.connect() as far, b.connect() as late:
        for client in (near, far):
            client.command(encode_subscribe("T", "s"))
        publish(publisher, "T", "s", "before")
        assert near.recv_json()["payload"] == "before" and far.recv_json()["payload"] == "before"
        assert len(redis_threads()) == 2

        for round_ in range(2):  # twice: nothing piles up from one outage to the next
            # Answered first: with history in Redis the channel's copy can overtake the reply.
            assert broker(a).wait_sent(WAIT)
            redis.kill()
            assert broker(a).wait_connected(False, WAIT) and broker(b).wait_connected(False, WAIT)
            health = http("GET", a.http_url + "/healthz")[2]["broker"]
            assert health["name"] == "redis" and health["connected"] is False

            # Local delivery goes on; the other node cannot get it, and it is counted.
            publish(publisher, "T", "s", f"during-{round_}")
            assert near.recv_json()["payload"] == f"during-{round_}"
            assert broker(a).wait_sent(WAIT) and broker(a).status()["unsent"] == round_ + 1
            # Interest that changes during the outage is taken into account on reconnect.
            late.command(encode_subscribe(f"Late{round_}", "s"))

            redis.start()  # same port, empty server: the nodes must subscribe again by themselves
            assert broker(a).wait_connected(True, WAIT) and broker(b).wait_connected(True, WAIT)
            assert http("GET", b.http_url + "/healthz")[2]["broker"]["connected"] is True

            publish(publisher, "T", "s", f"after-{round_}")
            assert near.recv_json()["payload"] == f"after-{round_}"
            # The outage's publish was lost for node b, not delayed: "after" is next.
            assert far.recv_json()["payload"] == f"after-{round_}"
            publish(publisher, f"Late{round_}", "s", "late")
            assert late.recv_json()["payload"] == "late"
            assert redis_threads() and len(redis_threads()) == 2 and len(sender_threads()) == 2
            assert broker(b).status()["reconnects"] == round_ + 1
        for client in (near, far, late):
            assert client.sync() == []


def test_a_node_starts_while_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    later = RedisServer(free_port())
    try:
        with running_server(broker_url=later.url) as node, node.connect() as sub, node.connect() as pub:
            assert http("GET", node.http_url + "/healthz")[2]["broker"]["connected"] is False
            sub.command(encode_subscribe("T", "s"))
            publish(pub, "T", "s", "local")
            assert sub.recv_json()["payload"] == "local"
            later.start()
            assert broker(node).wait_connected(True, WAIT)
            assert later.numsub(channel_name("rusty_ws", "T", "s")) == 1
        assert "Redis connection lost or refused" in caplog.text
    finally:
        later.close()


# --------------------------------------------------------------------------- hostile data


_ITEM = b'{"seq":%d,"offset":%d,"delivery":{"publisher_name":"p","topic":"T","payload":1,"timestamp":"t","session_id":"s"}}'
GARBAGE = [
    b"", b"not json", b"\xff\xfe\xfd", b"[1, 2]", b'{"v": 1}', b"[" * 50_000,
    b'{"v": 1, "node": "intruder", "delivery": {"topic": "T", "session_id": "other-session",'
    b' "publisher_name": "x", "timestamp": "t", "payload": "cross-session"}}',
    b'{"v": 1, "node": "intruder", "delivery": {"topic": "T", "session_id": "s",'
    b' "publisher_name": 5, "timestamp": "t", "payload": 1}}',
    b'{"v": 1, "node": "n", "delivery": {"topic": "T", "session_id": "s", "publisher_name": "p",'
    b' "timestamp": "t", "payload": 1e999}}',
    b"x" * 1_000_000,
    # version 3 (the history script's batches), odd: no items, offsets not ascending, an item for
    # another pair among good ones, an item without its number, a bad epoch; and a version to come
    b'{"v":3,"node":"n","epoch":"ab","items":[]}',
    b'{"v":3,"node":"n","epoch":"ab","items":[' + _ITEM % (1, 2) + b"," + _ITEM % (2, 1) + b"]}",
    b'{"v":3,"node":"n","epoch":"ab","items":[' + _ITEM % (1, 1) + b","
    + (_ITEM % (2, 2)).replace(b'"session_id":"s"', b'"session_id":"other"') + b"]}",
    b'{"v":3,"node":"n","epoch":"ab","items":[{"offset":1,"delivery":{}}]}',
    b'{"v":3,"node":"n","epoch":"AB","items":[' + _ITEM % (1, 1) + b"]}",
    b'{"v":4,"node":"n","epoch":"ab","items":[' + _ITEM % (1, 1) + b"]}",  # version 4 has deliveries
    b'{"v":5,"node":"n","epoch":"ab","items":[' + _ITEM % (1, 1) + b"]}",
]


def test_garbage_on_a_channel_is_logged_and_dropped(redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    with nodes(1, redis.url) as (node,), node.connect() as client:
        client.command(encode_subscribe("T", "s"))
        with redis.client() as intruder:
            for data in GARBAGE:
                assert intruder.publish(channel_name("rusty_ws", "T", "s"), data) == 1
            # Also on the node's control channel: it only wakes the listener up.
            intruder.publish(f"rusty_ws:node:{broker(node).node_id}", b"\x00garbage")
        client.command(encode_subscribe(SENTINEL, "s"))
        publish_sentinel(redis, "s")  # after the garbage: the listener got through all of it
        assert read_until_sentinel(client) == []
        status = broker(node).status()
        assert status["dropped"] == len(GARBAGE) and status["connected"] is True
        assert caplog.text.count("no rusty_ws envelope") == len(GARBAGE)
        # The listener is alive and well.
        with node.connect() as publisher:
            publish(publisher, "T", "s", "still here")
        assert client.recv_json()["payload"] == "still here"


# --------------------------------------------------------------------------- settings and health


def test_healthz_names_the_broker_and_its_state(redis: RedisServer) -> None:
    with nodes(1, redis.url) as (node,):
        health = http("GET", node.http_url + "/healthz")[2]["broker"]
        assert health == {"name": "redis", "connected": True, "node": broker(node).node_id,
                          "channels": 0, "unsent": 0, "dropped": 0, "reconnects": 0,
                          "sender": {"connected": True, "queued": 0, "sent": 0, "unsent": 0, "unanswered": 0, "failed": 0,
                                     "blocked": 0, "reconnects": 0},
                          "history": "redis", "history_dropped": 0, "history_resets": 0,
                          "history_restarted": 0}


def test_a_generated_secret_with_redis_is_an_error_in_the_log(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app({"RUSTY_WS_BROKER_URL": redis.url, "RUSTY_WS_JWT_SECRET_KEY": None})
    try:
        [record] = [r for r in caplog.records if "JWT_SECRET_KEY" in r.getMessage()]
        assert record.levelno == logging.ERROR
        assert "REFUSED by every other node" in record.getMessage()
    finally:
        state_of(app).hub.shutdown(WAIT)


def test_tokens_of_one_node_work_on_the_others(redis: RedisServer) -> None:
    with nodes(2, redis.url) as (a, b):
        token = login(a, session_id="session-A")
        status, _, reply = http("POST", b.http_url + "/auth/refresh",
                                headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and reply["session_id"] == "session-A"
        with b.connect(token) as client:
            assert client.command(encode_subscribe("T", "session-A")) == []


def test_a_redis_that_stops_answering_is_noticed_by_the_keepalive(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP keeps Redis' sockets open but silent: only the listener's own PING can tell."""
    import rusty_ws.brokers.redis_listener as module
    import rusty_ws.brokers.redis_sender as sender_module

    for name, value in dict(POLL_INTERVAL=50 * MS, KEEPALIVE_INTERVAL=200 * MS, KEEPALIVE_TIMEOUT=200 * MS).items():
        monkeypatch.setattr(module, name, value)
    # With history in Redis a publish is delivered here once Redis answered, or once the
    # sender gave up on it (its reply timeout), in order.
    monkeypatch.setattr(sender_module, "REPLY_TIMEOUT", 300 * MS)
    with nodes(1, redis.url) as (node,), node.connect() as client:
        client.command(encode_subscribe("T", "s"))
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        try:
            assert broker(node).wait_connected(False, WAIT)
            assert http("GET", node.http_url + "/healthz")[2]["broker"]["connected"] is False
            with node.connect() as publisher:  # not connected: publishing does not wait for Redis
                publish(publisher, "T", "s", "local")
            assert client.recv_json()["payload"] == "local"
        finally:
            redis.process.send_signal(signal.SIGCONT)
        assert broker(node).wait_connected(True, WAIT * 3)
        assert redis.numsub(channel_name("rusty_ws", "T", "s")) == 1
        assert len(redis_threads()) == 1


def test_racing_subscribes_and_unsubscribes_leave_redis_matching_the_registry(redis: RedisServer) -> None:
    """First-subscriber and last-unsubscriber calls can reach the broker out of order; it must not care."""
    topics = [f"T{i}" for i in range(4)]
    with nodes(1, redis.url) as (node,):
        clients = [node.connect() for _ in range(6)]
        try:
            def churn(client: Client, seed: int) -> None:
                for round_ in range(60):
                    topic = topics[(seed + round_) % len(topics)]
                    encode = encode_subscribe if (seed * 7 + round_) % 3 else encode_unsubscribe
                    client.send(encode(topic, "s"))
                client.sync()

            threads = [threading.Thread(target=churn, args=(client, seed), name=f"test-churn-{seed}")
                       for seed, client in enumerate(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT * 3)
                assert not thread.is_alive()
            held = set(node.hub.registry.keys())
            for topic in topics:
                assert redis.numsub(channel_name("rusty_ws", topic, "s")) == int((topic, "s") in held), topic
            assert broker(node).status()["channels"] == len(held)
        finally:
            for client in clients:
                client.close()
        node.wait_connections(0)
        assert all(redis.numsub(channel_name("rusty_ws", topic, "s")) == 0 for topic in topics)


def test_a_plain_publish_counts_as_mergeable_publishes_did() -> None:
    # What the sender reads off a PUBLISH (_PlainPublish's properties, its node's class attributes)
    # is what Mergeable.of was given before: the weights decide how many envelopes one PUBLISH merges.
    from rusty_ws.brokers import redis as redis_broker
    from rusty_ws.brokers.redis_codec import encode_envelope, merge_envelopes
    from rusty_ws.brokers.redis_sender import Mergeable, _coalesce, _size
    from rusty_ws.protocol import Delivery

    node = "n-1a2b"
    kind = redis_broker._plain_kind(node, lambda commands, run_id: (("PUBLISH", commands[0][1], merge_envelopes(
        node, [c[2] for c in commands])), lambda reply: [reply] * len(commands)), 1000)
    envelopes = [encode_envelope(node, Delivery("p", "t", "x" * n, "ts", "s")) for n in (1, 200, 300, 400)]
    commands = [kind(("PUBLISH", b"ch", envelope)) for envelope in envelopes]
    first = commands[0]
    assert isinstance(first, Mergeable) and first == ("PUBLISH", b"ch", envelopes[0]) and first.group == b"ch"
    assert first.weight == len(envelopes[0]) - len(node) - redis_broker._ENVELOPE_FIXED + 1
    assert (first.head, first.budget) == (len(node) + redis_broker._ENVELOPE_HEAD, 1000)
    assert first.size == _size(first) and not first.__dict__  # nothing set per publish
    # The budget (1000 bytes) takes the first three; the fourth starts a PUBLISH of its own.
    sent, spans = _coalesce([(command, None, command.size) for command in commands])
    assert [count for count, _ in spans] == [3, 1]
    assert json.loads(sent[0][2])["v"] == 4 and len(json.loads(sent[0][2])["deliveries"]) == 3
    assert len(sent[0][2]) <= 1000 and sent[1] == commands[3]
    # Another node id (a forked child's) is another kind: its envelopes' fixed part differs.
    assert redis_broker._plain_kind("n-other-longer", None, None).budget == redis_broker.MERGE_BYTES


def test_a_publish_is_encoded_once_for_its_envelope_and_the_local_frame(redis: RedisServer) -> None:
    # RedisBroker.publish hands the hub (Broker.deliver_encoded) the bytes it put in the envelope;
    # a payload that is not JSON is refused before anything is delivered anywhere.
    import redis as redis_py

    from rusty_ws.brokers.base import Landed
    from rusty_ws.exceptions import ProtocolError
    from rusty_ws.protocol import Delivery

    plain: list[Delivery] = []
    encoded: list[tuple[Delivery, bytes]] = []
    broker = RedisBroker(redis.url)
    broker.deliver_encoded = lambda delivery, data: encoded.append((delivery, data)) or Landed(None, 1)
    broker.start(lambda delivery: plain.append(delivery) or Landed(None, 0), lambda: [])
    watcher = redis_py.Redis.from_url(redis.url).pubsub()
    try:
        watcher.subscribe(channel_name(broker.channel_prefix, "T", "s"))
        assert watcher.get_message(timeout=WAIT)["type"] == "subscribe"
        delivery = Delivery("p", "T", "caf\u00e9 \ud800", "2026-12-02T00:00:00Z", "s")
        assert broker.publish(delivery) == Landed(None, 1)
        assert not plain and encoded == [(delivery, delivery.encode())]
        message = watcher.get_message(timeout=WAIT)
        assert message is not None and message["data"].endswith(b'"delivery":' + delivery.encode() + b"}")
        with pytest.raises(ProtocolError):
            broker.publish(Delivery("p", "T", float("nan"), "ts", "s"))
        assert len(encoded) == 1 and not plain
    finally:
        watcher.close()
        broker.stop()
