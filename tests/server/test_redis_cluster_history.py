"""History and recovery on a Redis Cluster: offsets, epochs and publish ids in the session's slot.

Real hubs on their own loopback ports with ``RedisClusterBroker``s, a private
cluster of redis-server processes (``redis_cluster_support``). A pair's stream,
meta, publish ids and channel share its session's slot, so one master runs the
publish script (SPUBLISH of a version-2 envelope) and every hub, the publisher's
too, delivers from its shard listener. Deliveries are counted by offset.

The original protocol's scenario runs on a cluster with history on (the default)
in test_redis_cluster.py; tests/client/test_redis_recovery.py has a WsClient
recovering across two hubs on a cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from redis_cluster_support import RedisCluster, redis_cluster, wait_for
from test_history_wire import subscribe_json
from test_redis_history import ack_of, recv_delivery

from rusty_ws.brokers.redis_cluster import RedisClusterBroker
from rusty_ws.brokers.redis_codec import pair_keys, publish_id_key
from rusty_ws.brokers.redis_slots import session_slot
from rusty_ws.protocol import Ack, HistoryReply, Since, encode_history, encode_publish
from support import WAIT, Client, RunningServer, nodes


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with redis_cluster(3) as started:
        yield started


def broker(node: RunningServer) -> RedisClusterBroker:
    found = node.hub.broker
    assert isinstance(found, RedisClusterBroker)
    return found


def sessions_on_each_master(cluster: RedisCluster, prefix: str) -> dict[str, str]:
    """Master address -> a session whose slot it serves (one for each master)."""
    found: dict[str, str] = {}
    for session in (f"{prefix}-{i}" for i in range(200)):
        found.setdefault(cluster.master_of_slot(session_slot(session)).address, session)
    assert len(found) == len(cluster.masters()), found
    return found


def test_offsets_come_from_the_session_s_master_and_every_hub_delivers_them(cluster: RedisCluster) -> None:
    by_master = sessions_on_each_master(cluster, "offsets")
    with nodes(2, cluster.url) as (a, b), a.connect() as near, b.connect() as far, a.connect() as publisher:
        epochs = {}
        for session in by_master.values():
            _, near_reply = subscribe_json(near, session=session)
            _, far_reply = subscribe_json(far, session=session)
            assert near_reply.epoch == far_reply.epoch and near_reply.offset == far_reply.offset == 0
            epochs[session] = near_reply.epoch
        for round_ in (1, 2):
            for session in by_master.values():
                ack = ack_of(publisher, "T", f"{session}-{round_}", f"id-{session}-{round_}", session=session)
                assert (ack.offset, ack.epoch) == (round_, epochs[session])
        for client in (near, far):
            got = [recv_delivery(client) for _ in range(2 * len(by_master))]
            for session in by_master.values():
                mine = [m for m in got if m["session_id"] == session]
                assert [(m["payload"], m["offset"], m["epoch"]) for m in mine] == \
                    [(f"{session}-{n}", n, epochs[session]) for n in (1, 2)]
            assert client.sync() == []  # the publisher's hub delivered its own publishes once, from the channel
        for address, session in by_master.items():  # the keys live on the session's master, not elsewhere
            keys = pair_keys("rusty_ws", "T", session)
            with contextlib.closing(cluster.node_at(address).client()) as raw:
                meta = raw.hgetall(keys.meta)
                assert (meta[b"e"], meta[b"o"]) == (epochs[session].encode(), b"2") and meta[b"r"]
                assert raw.xlen(keys.stream) == 2
                assert raw.exists(publish_id_key("rusty_ws", session, f"id-{session}-1")) == 1
        for node in (a, b):
            assert broker(node).status()["history"] == "redis"


def test_a_client_recovers_on_the_other_hub_from_its_position(cluster: RedisCluster) -> None:
    by_master = sessions_on_each_master(cluster, "resume")
    with nodes(2, cluster.url) as (a, b):
        for session in by_master.values():
            with a.connect() as first:
                _, reply = subscribe_json(first, session=session)
                seen: list[dict[str, Any]] = []
                for n in range(1, 6):
                    ack_of(first, "T", n, f"id-{n}", session=session, early=seen)
                seen += [recv_delivery(first) for _ in range(5 - len(seen))]
                assert [m["offset"] for m in seen] == [1, 2, 3, 4, 5]
            with a.connect() as publisher:
                for n in range(6, 11):
                    ack_of(publisher, "T", n, f"id-{n}", session=session)
            with b.connect() as again:
                replayed, reply = subscribe_json(again, session=session, since=Since(3, seen[0]["epoch"]))
                assert [(m["payload"], m["offset"]) for m in replayed] == [(n, n) for n in range(4, 11)]
                assert (reply.offset, reply.epoch, reply.recovered) == (10, seen[0]["epoch"], True)
                early: list[dict[str, Any]] = []
                ack_of(again, "T", 11, "id-11", session=session, early=early)
                live = early or [recv_delivery(again)]
                assert [m["offset"] for m in live] == [11]  # live after the replay, once
                assert again.sync() == []


def test_a_retry_through_the_other_hub_is_acknowledged_as_the_first_and_delivered_once(cluster: RedisCluster) -> None:
    by_master = sessions_on_each_master(cluster, "retry")
    with nodes(2, cluster.url) as (a, b), a.connect() as first, b.connect() as retry, b.connect() as sub:
        for session in by_master.values():
            subscribe_json(sub, session=session)
        for session in by_master.values():
            one = ack_of(first, "T", "once", "the-id", session=session)
            again = ack_of(retry, "Other topic", "once again", "the-id", session=session)  # ids are per session
            assert (again.offset, again.epoch) == (one.offset, one.epoch) == (1, one.epoch)
            assert ack_of(retry, "T", "after", "another-id", session=session).offset == 2
        got = [recv_delivery(sub) for _ in range(2 * len(by_master))]
        for session in by_master.values():
            assert [(m["payload"], m["offset"]) for m in got if m["session_id"] == session] == [("once", 1), ("after", 2)]
        assert sub.sync() == []


def test_history_reads_the_stream_on_the_session_s_master_from_either_hub(cluster: RedisCluster) -> None:
    with nodes(2, cluster.url) as (a, b), a.connect() as writer, b.connect() as reader:
        for session in sessions_on_each_master(cluster, "history").values():
            acks = [ack_of(writer, "T", n, f"h-{n}", session=session) for n in range(1, 6)]
            for client in (reader, writer):
                reply = HistoryReply.parse(client.command(encode_history("T", session))[0])
                assert (reply.offset, reply.epoch) == (5, acks[0].epoch)
                assert [(m.payload, m.offset) for m in reply.messages] == [(n, n) for n in range(1, 6)]
            after_3 = HistoryReply.parse(reader.command(encode_history("T", session, since=Since(3, acks[0].epoch)))[0])
            assert [m.payload for m in after_3.messages] == [4, 5]


# --------------------------------------------------------------------------- failover


def publish_acked(client: Client, session: str, payload: Any, publish_id: str, seen: list[dict[str, Any]]) -> Ack:
    """Publish with an id until acknowledged (a master being replaced answers ``unavailable``); bounded."""
    for _ in range(200):
        client.send(encode_publish("T", payload, session_id=session, id=publish_id))
        for _ in range(10_000):
            text = client.recv()
            if text.startswith("ack:"):
                return Ack.parse(text)
            if text.startswith("error:"):
                assert "unavailable" in text, text
                break
            seen.append(json.loads(text))
        else:
            raise AssertionError("no answer")
        client.sync()  # a ping's pong: the hub has processed the failed publish before the next try
    raise AssertionError(f"{publish_id} was never acknowledged")


def test_a_replica_that_took_over_without_the_last_writes_gives_a_new_epoch_never_a_gap(
        caplog: pytest.LogCaptureFixture) -> None:
    """The master acknowledges writes its replica never got (stopped), then dies; the replica takes over.

    The replica's stream ends before what clients saw: its offsets would name other
    messages. It serves the stream under a new epoch (its entries kept), so a client
    positioned in the old epoch is told ``recovered: false``, whatever its offset;
    live subscribers go on in the new epoch with nothing delivered twice.
    """
    caplog.set_level(logging.INFO, "rusty_ws.server")
    with redis_cluster(3, replicas=1, keep_logs=True) as cluster, nodes(2, cluster.url) as (a, b), \
            a.connect() as live, b.connect() as publisher:
        session = "failover"
        victim = cluster.master_of_slot(session_slot(session))
        heir = cluster.replica_of(victim)
        _, first = subscribe_json(live, session=session)
        seen: list[dict[str, Any]] = []
        acks = [publish_acked(publisher, session, n, f"f-{n}", seen) for n in range(1, 11)]
        wait_for(lambda: heir.info("replication")["master_repl_offset"] == victim.info("replication")["master_repl_offset"],
                 WAIT, "the replica has the first ten")
        # The replica misses what comes now: stopped, and its link cut by the master (what the master
        # had sent would otherwise wait in the stopped replica's socket buffer, read after SIGCONT).
        heir.process.send_signal(signal.SIGSTOP)
        try:
            with contextlib.closing(victim.client()) as raw:
                assert raw.execute_command("CLIENT", "KILL", "TYPE", "replica") == 1
            acks += [publish_acked(publisher, session, n, f"f-{n}", seen) for n in range(11, 16)]
            got = [recv_delivery(live) for _ in range(15)]  # hub a has them all before the master dies
            victim.kill()  # with five acknowledged writes its replica never got
        finally:
            heir.process.send_signal(signal.SIGCONT)
        assert [ack.offset for ack in acks] == list(range(1, 16)) and {ack.epoch for ack in acks} == {first.epoch}
        cluster.wait_followed(heir, lambda: all(broker(n).status()["connected"] and heir.address in
                                                broker(n).status()["shards"] for n in (a, b)))
        after = [publish_acked(publisher, session, n, f"f-{n}", seen) for n in range(16, 21)]
        assert after[0].epoch != first.epoch, "the new master reused the old epoch: offsets 11.. name other messages"
        assert [ack.offset for ack in after] == list(range(11, 16))  # its stream ended at 10: a consistent prefix
        got += [recv_delivery(live) for _ in range(5)]
        assert [(m["payload"], m["offset"], m["epoch"] == first.epoch) for m in got] == \
            [(n, n, True) for n in range(1, 16)] + [(n, n - 5, False) for n in range(16, 21)]
        assert live.sync() == []
        with b.connect() as late, a.connect() as early_one:
            # Positioned past what the new master kept (it saw 11..15 of the old epoch): told, not a gap.
            replayed, reply = subscribe_json(late, session=session, since=Since(15, first.epoch))
            assert (reply.recovered, reply.epoch, reply.offset) == (False, after[0].epoch, 15) and replayed == []
            # Positioned inside what it kept: told too (which old offsets survived is not known).
            replayed, reply = subscribe_json(early_one, session=session, since=Since(5, first.epoch))
            assert reply.recovered is False and replayed == []
        with a.connect() as fresh:  # in the new epoch, recovery works as before
            replayed, reply = subscribe_json(fresh, session=session, since=Since(12, after[0].epoch))
            assert [(m["payload"], m["offset"]) for m in replayed] == [(18, 13), (19, 14), (20, 15)]
            assert reply.recovered is True
        assert sum(broker(n).status()["history_renewed"] for n in (a, b)) >= 1
        assert "served by a new Redis master" in caplog.text
