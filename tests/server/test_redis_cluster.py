"""Hubs on a private Redis Cluster: sharded pub/sub across nodes, the spread over masters, failover, resharding.

Each hub is a real hub on its own loopback port with its own ``RedisClusterBroker``;
the cluster is three (or six, with replicas) redis-server processes in cluster mode
started by ``redis_cluster_support``. Delivery between hubs is asynchronous: the tests
wait for a sentinel published into the session's slot after the real messages (one
slot is one master, and Redis keeps the order of what one master took), or for a
known message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from redis_cluster_support import (
    FOLLOW,
    PROMOTED,
    ClusterNode,
    RedisCluster,
    publish_across_nodes,
    publish_sentinel,
    redis_cluster,
    spublish,
    wait_for,
)
from test_seed_scenario import EXPECTED, PUBLISHES, SESSION_OF, SUBSCRIPTIONS, check_deliveries

from redis_support import SENTINEL, read_until_sentinel
from rusty_ws.brokers.redis_cluster import RedisClusterBroker
from rusty_ws.brokers.redis_codec import shard_channel_name
from rusty_ws.brokers.redis_slots import session_slot
from rusty_ws.protocol import (
    encode_publish,
    encode_register_name,
    encode_register_session,
    encode_subscribe,
    encode_unsubscribe,
)
from support import MS, WAIT, RunningServer, http, nodes, running_server


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """Three masters, shared by the tests that change nothing but their own subscriptions."""
    with redis_cluster(3) as started:
        yield started


def broker(node: RunningServer) -> RedisClusterBroker:
    found = node.hub.broker
    assert isinstance(found, RedisClusterBroker)
    return found


def master_of(cluster: RedisCluster, session: str) -> str:
    return cluster.master_of_slot(session_slot(session)).address


# --------------------------------------------------------------------------- the original protocol's scenario


@pytest.mark.parametrize("history_size", [100, 0], ids=["history on", "history off"])
def test_seed_scenario_across_two_hubs_on_a_cluster(cluster: RedisCluster, history_size: int) -> None:
    """With history on, the publish script; off, SPUBLISH straight (through the same router)."""
    assert master_of(cluster, "session-A") != master_of(cluster, "session-B"), "the two sessions share a master"
    with nodes(2, cluster.url, history_size=history_size) as hubs:
        clients = {}
        for i, (name, (session, topics)) in enumerate(SUBSCRIPTIONS.items()):
            client = clients[name] = hubs[i % 2].connect()
            client.send(encode_register_name(name))
            client.send(encode_register_session(session))
            for topic in [*topics, SENTINEL]:
                client.send(encode_subscribe(topic, session))
            assert client.sync() == [], f"{name} got replies to its set-up"
        try:
            received = publish_across_nodes(cluster, clients, PUBLISHES, SESSION_OF)
            check_deliveries(received)
            for name, messages in received.items():
                assert len(messages) == len(EXPECTED[name])
                assert clients[name].sync() == []  # no late duplicate, nothing from the other session
        finally:
            for client in clients.values():
                client.close()


def test_many_pairs_spread_over_every_master_with_one_connection_each(cluster: RedisCluster) -> None:
    sessions = [f"session-{i}" for i in range(300)]
    with nodes(2, cluster.url) as (a, b), a.connect() as subscriber, b.connect() as publisher:
        for start in range(0, len(sessions), 25):  # each subscribe waits for its master: a pong per 50
            for session in sessions[start:start + 25]:
                subscriber.send(encode_subscribe("T", session))
                subscriber.send(encode_subscribe(SENTINEL, session))
            assert subscriber.sync() == []
        masters = cluster.masters()
        per_master = {node.address: len(pairs(node)) for node in masters}
        assert sum(per_master.values()) == 600
        assert min(per_master.values()) >= 600 // 3 * 0.8, per_master  # within 20% of even
        health = http("GET", a.http_url + "/healthz")[2]["broker"]
        assert {address: shard["channels"] for address, shard in health["shards"].items()} == per_master
        assert health["channels"] == 600 and health["connected"] is True
        # One pub/sub connection per master and hub, holding the pairs and the control channel.
        name = f"rusty_ws-{broker(a).node_id}"
        for node in masters:
            with contextlib.closing(node.client()) as client:
                subscribed = [int(entry["ssub"]) for entry in client.client_list() if entry["name"] == name
                              and int(entry.get("ssub", 0))]
            assert subscribed == [per_master[node.address] + 1], node.address

        for i in range(900):
            publisher.send(encode_publish("T", i, session_id=sessions[i % 300]))
        assert publisher.sync() == [] and broker(b).wait_sent(WAIT)  # every master took its share
        with contextlib.closing(cluster.client()) as client:
            for session in sessions:
                publish_sentinel(cluster, session, client=client)
        got: dict[str, list[int]] = {}
        ends = 0
        for _ in range(900 + 300):
            message = json.loads(subscriber.recv())
            if message["topic"] == SENTINEL:
                ends += 1
            else:
                got.setdefault(message["session_id"], []).append(message["payload"])
        assert ends == 300
        assert got == {session: [i, i + 300, i + 600] for i, session in enumerate(sessions)}
        assert subscriber.sync() == []
        assert broker(b).status()["unsent"] == 0

        # Unsubscribing (here: half the sessions, then the connection ending) takes them out of every master.
        for start in range(0, 150, 50):
            for session in sessions[start:start + 50]:
                subscriber.send(encode_unsubscribe("T", session))
            assert subscriber.sync() == []
        assert sum(len(pairs(node)) for node in masters) == 450 and broker(a).status()["channels"] == 450
        subscriber.close()
        a.wait_connections(0)
        assert [pairs(node) for node in masters] == [set(), set(), set()]
        assert broker(a).status()["channels"] == 0


def pairs(node: ClusterNode) -> set[bytes]:
    """The pairs' shard channels some hub subscribes to on ``node`` (not the control channels)."""
    return {channel for channel in node.shard_channels() if b":node:" not in channel}


# --------------------------------------------------------------------------- hostile data


GARBAGE = [
    b"", b"not json", b"\xff\xfe\xfd", b"[1, 2]", b'{"v": 1}', b"[" * 50_000,
    b'{"v": 1, "node": "intruder", "delivery": {"topic": "T", "session_id": "other-session",'
    b' "publisher_name": "x", "timestamp": "t", "payload": "cross-session"}}',
    b"x" * 1_000_000,
]


def test_garbage_on_a_shard_channel_is_logged_and_dropped(cluster: RedisCluster,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with nodes(1, cluster.url) as (node,), node.connect() as client:
        client.command(encode_subscribe("T", "s"))
        client.command(encode_subscribe(SENTINEL, "s"))
        for data in GARBAGE:
            assert spublish(cluster, shard_channel_name("rusty_ws", "T", "s"), data) == 1
        # Also on the node's control channels: they only wake the listeners up.
        for node_ in cluster.masters():
            for channel in node_.shard_channels():
                if b":node:" in channel:
                    spublish(cluster, channel, b"\x00garbage")
        publish_sentinel(cluster, "s")
        assert read_until_sentinel(client) == []
        status = broker(node).status()
        assert status["dropped"] == len(GARBAGE) and status["connected"] is True
        assert caplog.text.count("no rusty_ws envelope") == len(GARBAGE)
        with node.connect() as publisher:
            publisher.command(encode_publish("T", "still here", session_id="s"))
        assert client.recv_json()["payload"] == "still here"


# --------------------------------------------------------------------------- health and settings


def test_healthz_shows_every_shard(cluster: RedisCluster) -> None:
    with nodes(1, cluster.url) as (node,):
        health = http("GET", node.http_url + "/healthz")[2]["broker"]
        shards = health.pop("shards")
        assert health == {"name": "redis-cluster", "connected": True, "node": broker(node).node_id,
                          "channels": 0, "unsent": 0, "dropped": 0, "reconnects": 0,
                          "held": 0, "retried": 0, "retry_expired": 0, "history": "redis", "history_dropped": 0,
                          "history_resets": 0, "history_restarted": 0, "history_renewed": 0, "gaps_filled": 0,
                          "gap_duplicates": 0}
        assert sorted(shards) == sorted(master.address for master in cluster.masters())
        assert sum(shard["slots"] for shard in shards.values()) == 16384
        idle_sender = {"connected": True, "queued": 0, "sent": 0, "unsent": 0, "unanswered": 0, "failed": 0,
                       "blocked": 0, "reconnects": 0}
        assert all(shard == {"connected": True, "channels": 0, "unsent": 0, "dropped": 0, "reconnects": 0,
                             "slots": shard["slots"], "sender": idle_sender} for shard in shards.values())


def test_one_seed_is_enough_and_dead_seeds_are_skipped(cluster: RedisCluster) -> None:
    from support import free_port

    url = f"redis+cluster://127.0.0.1:{free_port()},{cluster.nodes[1].address}/?channel_prefix=shop"
    with running_server(broker_url=url) as node, node.connect() as client:
        assert broker(node).status()["connected"] is True
        client.command(encode_subscribe("T", "s"))
        master = cluster.master_of_slot(session_slot("s"))
        assert shard_channel_name("shop", "T", "s") in master.shard_channels()


# --------------------------------------------------------------------------- failover and resharding


def test_a_master_killed_mid_run_is_replaced_and_the_hubs_carry_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "rusty_ws.server")
    with redis_cluster(3, replicas=1, keep_logs=True) as cluster, nodes(2, cluster.url) as (a, b), \
            a.connect() as subscriber, b.connect() as publisher:
        sessions = [f"s{i}" for i in range(30)]
        for session in sessions:
            subscriber.send(encode_subscribe("T", session))
            subscriber.send(encode_subscribe(SENTINEL, session))
        assert subscriber.sync() == []
        victim = cluster.master_of_slot(session_slot(sessions[0]))
        heir = cluster.replica_of(victim)
        on_victim = {s for s in sessions if master_of(cluster, s) == victim.address}
        published: dict[str, list[int]] = {session: [] for session in sessions}
        got: dict[str, list[int]] = {session: [] for session in sessions}
        ends = [0]
        number = 0
        arrived = threading.Condition()  # signalled for every message the reader takes

        def read() -> None:  # the subscriber reads all along: it must not become a slow consumer
            for _ in range(1_000_000):
                message = json.loads(subscriber.recv(WAIT * 10))
                if message["topic"] != SENTINEL:
                    with arrived:
                        got[message["session_id"]].append(message["payload"])
                        arrived.notify_all()
                else:
                    ends[0] += 1
                    if ends[0] == len(sessions):
                        return

        reader = threading.Thread(target=read, name="test-reader", daemon=True)
        reader.start()

        def publish_round() -> None:
            nonlocal number
            for session in sessions:
                publisher.send(encode_publish("T", number, session_id=session))
                published[session].append(number)
                number += 1
            assert publisher.sync() == []

        for _ in range(5):
            publish_round()
        assert broker(b).wait_sent(WAIT)  # everything before the kill has landed
        with arrived:  # and reached the subscriber: only the failover window may lose anything
            assert arrived.wait_for(lambda: all(len(got[s]) >= len(published[s]) for s in sessions), WAIT)
        victim.kill()  # SIGKILL: no goodbye to anyone
        killed_at = number
        # Publish on while the cluster notices, elects the replica, and both hubs follow it.
        for _ in range(2000):
            publish_round()
            if heir.logged_at(PROMOTED) and all(broker(n).status()["connected"] and
                                                heir.address in broker(n).status()["shards"] for n in (a, b)):
                break
        else:
            raise AssertionError("the replica did not take over, or the hubs did not follow")
        healed_at = number
        promoted = heir.logged_at(PROMOTED)
        assert promoted is not None and time.time() - promoted < FOLLOW, "the hubs were slow to follow"
        for _ in range(5):
            publish_round()
        assert broker(b).wait_sent(WAIT)
        with contextlib.closing(cluster.client()) as client:
            for session in sessions:
                publish_sentinel(cluster, session, client=client)
        reader.join(WAIT * 10)
        assert not reader.is_alive() and ends == [len(sessions)], "not every sentinel arrived"

        lost = Counter()
        for session in sessions:
            assert got[session] == sorted(set(got[session])), "out of order or twice"
            missing = set(published[session]) - set(got[session])
            if session not in on_victim:
                assert not missing, f"{session} is not on the killed master, yet lost {sorted(missing)}"
            assert all(killed_at <= n < healed_at for n in missing), "lost outside the failover window"
            lost[session in on_victim] += len(missing)
        window = sum(1 for s in on_victim for n in published[s] if killed_at <= n < healed_at)
        unsent = broker(b).status()["unsent"]
        logging.getLogger("test").warning("failover: %d of %d publishes to the killed shard's sessions in the "
                                          "window were lost (%d counted unsent by the publishing hub; the rest "
                                          "reached the new master before the subscribing hub did)",
                                          lost[True], window, unsent)
        assert lost[True] >= unsent > 0  # the window did cost the victim's sessions, and the hub counted it
        assert subscriber.sync() == []


def test_a_slot_moved_to_another_master_is_followed(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Resharding: the old master pushes ``sunsubscribe``, the listener follows the slot to its new master."""
    import rusty_ws.brokers.redis_cluster as module

    monkeypatch.setattr(module, "MAP_INTERVAL", 3600.0)  # hub b learns of the move from the MOVED reply only
    caplog.set_level(logging.INFO, "rusty_ws.server")
    with redis_cluster(3) as cluster, nodes(2, cluster.url) as (a, b), \
            a.connect() as subscriber, b.connect() as publisher:
        session = "moving-session"
        subscriber.command(encode_subscribe("T", session))
        subscriber.command(encode_subscribe("T", "staying-session"))
        publisher.command(encode_publish("T", "before", session_id=session))
        assert subscriber.recv_json()["payload"] == "before"
        slot = session_slot(session)
        source = cluster.master_of_slot(slot)
        [target, _] = [node for node in cluster.masters() if node is not source]
        with contextlib.closing(source.client()) as client:
            assert client.execute_command("CLUSTER COUNTKEYSINSLOT", slot), "history on: the pair's keys are in its slot"
        cluster.move_slot(slot, target)  # its keys first, as redis-cli --cluster reshard does
        channel = shard_channel_name("rusty_ws", "T", session)
        wait_for(lambda: channel in target.shard_channels() and channel not in source.shard_channels(),
                 WAIT * 3, "hub a's subscription to follow the slot")
        # Hub b still holds the old map: its SPUBLISH gets MOVED and follows it, nothing is lost.
        publisher.command(encode_publish("T", "after", session_id=session))
        assert subscriber.recv_json()["payload"] == "after"
        assert f"was MOVED to {target.address}" in caplog.text
        publisher.command(encode_publish("T", "unmoved", session_id="staying-session"))
        assert subscriber.recv_json()["payload"] == "unmoved"
        assert broker(b).status()["unsent"] == 0
        owned = RedisCluster.slot_owners(target)[target.address]
        wait_for(lambda: all(broker(n).status()["shards"][target.address]["slots"] == owned for n in (a, b)),
                 WAIT, "both hubs' slot maps to show the move (a: the pushed sunsubscribe, b: the MOVED reply)")


def test_a_hub_starts_while_the_cluster_is_not_there_yet(caplog: pytest.LogCaptureFixture) -> None:
    later = RedisCluster(3)  # its ports are chosen, nothing listens on them yet
    try:
        with running_server(broker_url=later.url) as node, node.connect() as sub, node.connect() as pub:
            assert http("GET", node.http_url + "/healthz")[2]["broker"]["connected"] is False
            sub.command(encode_subscribe("T", "s"))
            sub.command(encode_subscribe(SENTINEL, "s"))
            pub.command(encode_publish("T", "local", session_id="s"))
            assert sub.recv_json()["payload"] == "local"  # local delivery does not wait for Redis
            assert broker(node).status()["unsent"] == 1
            later.start()
            assert broker(node).wait_connected(True, WAIT * 3)
            assert shard_channel_name("rusty_ws", "T", "s") in later.master_of_slot(session_slot("s")).shard_channels()
            spublish(later, shard_channel_name("rusty_ws", "T", "s"), b"not an envelope")
            publish_sentinel(later, "s")
            assert read_until_sentinel(sub) == []  # the garbage was dropped
            assert broker(node).status()["dropped"] == 1
        assert "no Redis Cluster node gave its slot map" in caplog.text
    finally:
        later.close()


def test_a_master_that_stops_answering_is_noticed_and_rejoined(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP keeps the master's sockets open but silent: the listener's PING notices; SIGCONT brings it back."""
    import rusty_ws.brokers.redis_listener as module

    for name, value in dict(POLL_INTERVAL=50 * MS, KEEPALIVE_INTERVAL=200 * MS, KEEPALIVE_TIMEOUT=200 * MS).items():
        monkeypatch.setattr(module, name, value)
    with redis_cluster(3) as cluster, nodes(2, cluster.url) as (a, b), a.connect() as sub, b.connect() as pub:
        stopped = cluster.master_of_slot(session_slot("s"))
        others = [session for session in (f"o{i}" for i in range(50))
                  if cluster.master_of_slot(session_slot(session)) is not stopped][:1]
        for session in ("s", *others):
            sub.command(encode_subscribe("T", session))
        assert stopped.process is not None
        stopped.process.send_signal(signal.SIGSTOP)
        try:
            assert broker(a).wait_connected(False, WAIT)
            shard = http("GET", a.http_url + "/healthz")[2]["broker"]["shards"][stopped.address]
            assert shard["connected"] is False
            with a.connect() as local:  # the stopped shard's sessions still get local publishes
                local.command(encode_publish("T", "local", session_id="s"))
            # With history on (the default) the publish went to the silent master's sender first: it falls
            # back to local delivery once the sender gives up on the reply (its socket timeout, 5 s).
            assert json.loads(sub.recv(WAIT + 5.0))["payload"] == "local"
            pub.command(encode_publish("T", "other shard", session_id=others[0]))  # the other shards carry on
            assert sub.recv_json()["payload"] == "other shard"
        finally:
            stopped.process.send_signal(signal.SIGCONT)
        assert broker(a).wait_connected(True, WAIT * 5) and broker(b).wait_connected(True, WAIT * 5)
        assert shard_channel_name("rusty_ws", "T", "s") in stopped.shard_channels()
        pub.command(encode_publish("T", "back", session_id="s"))
        assert sub.recv_json()["payload"] == "back"


def test_while_a_master_is_lost_the_map_is_read_often_on_one_connection_however_much_fails() -> None:
    """No replica takes over: the hub reads the slot map every ``MAP_FOLLOW_INTERVAL`` to see one promoted,
    on a connection it keeps, and publishes failing meanwhile add no reads of their own (no spinning)."""
    from rusty_ws.brokers.redis_cluster import MAP_FOLLOW_INTERVAL

    def counts(nodes: list[ClusterNode]) -> tuple[int, int]:
        """CLUSTER SLOTS answered, connections accepted: over ``nodes``."""
        slots = connections = 0
        for node in nodes:
            with contextlib.closing(node.client()) as client:
                slots += int(client.info("commandstats").get("cmdstat_cluster|slots", {}).get("calls", 0))
                connections += int(client.info("stats")["total_connections_received"])
        return slots, connections

    with redis_cluster(3) as cluster, running_server(broker_url=cluster.url) as hub, hub.connect() as publisher:
        dead = cluster.master_of_slot(session_slot("lost"))
        dead.kill()
        assert broker(hub).wait_connected(False, WAIT)
        alive = cluster.running()
        before, started = counts(alive), time.monotonic()
        for number in range(300):  # each fails (no master): at most once, delivered here only
            publisher.send(encode_publish("T", number, session_id="lost"))
        assert publisher.sync() == []
        threading.Event().wait(1.0)  # a measurement window, not a synchronisation
        after, window = counts(alive), time.monotonic() - started
        reads = after[0] - before[0]
        assert reads <= window / MAP_FOLLOW_INTERVAL * 1.5 + 2, f"{reads} map reads in {window:.2f} s"
        assert reads >= 1, "the hub stopped looking for a new master"
        # counts() opens one connection per node; the hub's reads reuse one.
        assert after[1] - before[1] <= len(alive) + 2, f"{after[1] - before[1]} connections: one per read?"


@pytest.mark.parametrize("retry_timeout", [500 * MS, 0], ids=["held, then answered", "retries off"])
def test_acks_come_from_the_slot_s_master_and_a_dead_one_answers_unavailable(retry_timeout: float) -> None:
    """No replica takes over: a publish with an id is held for RUSTY_WS_BROKER_RETRY_TIMEOUT, then answered."""
    with redis_cluster(3) as cluster, nodes(2, cluster.url, broker_retry_timeout=retry_timeout) as (a, b), \
            a.connect() as publisher, b.connect() as far:
        by_master: dict[str, str] = {}
        for session in (f"ack-{i}" for i in range(100)):
            by_master.setdefault(master_of(cluster, session), session)
        assert len(by_master) == 3
        for session in by_master.values():
            far.command(encode_subscribe("T", session))
        for number, session in enumerate(by_master.values()):
            [ack] = publisher.command(encode_publish("T", number, session_id=session, id=f"p-{number}"))
            assert ack.startswith("ack:") and json.loads(ack[4:])["id"] == f"p-{number}"
            assert far.recv_json()["payload"] == number  # acknowledged: its master took it
        dead, alive, _ = by_master
        cluster.node_at(dead).kill()
        assert broker(a).wait_connected(False, WAIT)
        [answer] = publisher.command(encode_publish("T", "lost", session_id=by_master[dead], id="p-dead"))
        assert answer.startswith("error:") and json.loads(answer[6:])["code"] == "unavailable"
        status = broker(a).status()
        if retry_timeout:
            assert status["retry_expired"] >= 1 and status["held"] == 0  # held, sent again in vain, then answered
        else:
            assert (status["retried"], status["retry_expired"], status["held"]) == (0, 0, 0)  # answered at once
        [ack] = publisher.command(encode_publish("T", "fine", session_id=by_master[alive], id="p-alive"))
        assert ack.startswith("ack:")
        assert far.recv_json()["payload"] == "fine"
        shards = broker(a).status()["shards"]
        assert shards[dead]["unsent"] >= 1 and shards[alive]["unsent"] == 0


APPEND_AND_PUBLISH = """
local offset = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100, offset .. '-1', 'd', ARGV[2])
redis.call('SPUBLISH', ARGV[1], ARGV[2])
return offset
"""


def test_a_script_on_a_session_s_keys_publishes_to_its_channel_on_every_master() -> None:
    """What history on Redis will do on a cluster: keys and channel in the session's slot, one script."""
    from rusty_ws.brokers.redis_codec import encode_envelope, session_tag
    from rusty_ws.protocol import Delivery

    with redis_cluster(3) as cluster, nodes(2, cluster.url) as (a, b), b.connect() as far:
        by_master: dict[str, str] = {}
        for session in (f"script-{i}" for i in range(100)):
            by_master.setdefault(master_of(cluster, session), session)
        sha = broker(a).script_load(APPEND_AND_PUBLISH)
        replies: list[object] = []
        for session in by_master.values():
            far.command(encode_subscribe("T", session))
        for session in by_master.values():
            tag = session_tag("rusty_ws", session)
            keys = (f"rusty_ws:{tag}:top", f"rusty_ws:{tag}:stream")
            delivery = Delivery(publisher_name="script", topic="T", payload=session, timestamp="t", session_id=session)
            sender = broker(a).sender_for(session)
            assert sender is not None
            sender.submit(("EVALSHA", sha, 2, *keys, shard_channel_name("rusty_ws", "T", session),
                           encode_envelope("script-node", delivery)), replies.append)
        assert broker(a).wait_sent(WAIT)
        assert replies == [1, 1, 1], replies
        assert sorted(far.recv_json()["payload"] for _ in by_master) == sorted(by_master.values())
        for address, session in by_master.items():
            with contextlib.closing(cluster.node_at(address).client()) as client:
                assert client.xlen(f"rusty_ws:{session_tag('rusty_ws', session)}:stream") == 1
