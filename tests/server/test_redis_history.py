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
from test_history_wire import RacingPublisher, publish_numbers, subscribe_json
from test_redis_history_batches import held
from websockets.sync.client import connect

from redis_support import RedisServer, redis_server
from rusty_ws.brokers.redis_codec import pair_keys, publish_id_key, session_tag
from rusty_ws.brokers.redis_history import META_TTL
from rusty_ws.protocol import Ack, HistoryReply, Since, encode_history, encode_publish, encode_subscribe_json
from support import WAIT, Client, RunningServer, nodes


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


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
        # Node a delivered its own publish from what it kept (its envelope's header only): nothing left.
        assert len(broker_of(a)._history._kept) == 0
        with contextlib.closing(redis.client()) as raw:
            keys = pair_keys("rusty_ws", "T", "s")
            [(_, entry)] = raw.xrange(keys.stream)
            # b: the stream's bytes of deliveries (an upper bound, exact here)
            # i: the run_id of the Redis that wrote it (a Redis restored from older files has another)
            assert raw.hgetall(keys.meta) == {b"e": ack.epoch.encode(), b"o": b"1", b"b": b"%d" % len(entry[b"d"]),
                                              b"i": redis.run_id().encode()}
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
        assert name.split(b":")[1] == tag.encode()
    assert session_tag("rusty_ws", "t") != tag


def broker_of(node: RunningServer) -> Any:
    return node.hub.broker


@pytest.mark.parametrize("where", ["another node", "the publishing node"])
def test_publishes_on_one_node_racing_a_resume_on_another_land_exactly_once(redis: RedisServer, where: str) -> None:
    """Node A publishes from 1 on while clients on node B (or on A) subscribe-json with since: every offset once,
    in order.

    The publisher (``RacingPublisher``) goes on, 100 at a time, until every subscriber is in (then 100 more), so the
    subscribes race the publishes however fast the merged publishing path is. On A, what comes
    back is A's own envelopes, whose deliveries are made from what A kept (``take_own``); on B,
    A's envelopes decoded: both handed to the hub a whole envelope at once (``deliver_run``)."""
    most = 40_000
    # No keepalive: the subscribers are read one after another, each up to 40,000 deliveries, and on a
    # loaded machine the last ones sat unread past a ping's deadline and were dropped (4102). For the same
    # reason an outbox holds them all: 40,000 deliveries are past the default 4 MiB (a 4100 on a busy machine).
    with nodes(2, redis.url, history_size=most, ping_interval=0, max_queued_bytes=64 * 1024 * 1024) as (a, b), \
            a.connect() as pub:
        if where == "the publishing node":
            b = a
        epoch = ack_of(pub, "T", 1, "first").epoch
        publish_numbers(pub, 9, start=2)
        subscribers = [b.connect() for _ in range(4)]

        def publish_batch(first: int) -> None:  # the ack says Redis holds the batch's last
            publish_numbers(pub, 99, start=first)
            assert ack_of(pub, "T", first + 99, f"batch-{first}").offset == first + 99

        publisher = RacingPublisher(publish_batch, most)
        publisher.start()
        try:
            results = []
            for index, sub in enumerate(subscribers):
                replayed, reply = subscribe_json(sub, since=Since(index, epoch))
                results.append((index, replayed, reply))
        finally:
            total = publisher.stop()
        boundaries = set()
        for (index, replayed, reply), sub in zip(results, subscribers):
            live: list[dict[str, Any]] = []
            for _ in range(total):
                if (live and live[-1]["offset"] == total) or reply.offset == total:
                    break
                live.append(recv_delivery(sub))
            seen = [m["offset"] for m in replayed] + [m["offset"] for m in live]
            assert seen == list(range(index + 1, total + 1)), f"subscriber {index}: a gap or a repeat"
            assert [m["payload"] for m in replayed + live] == seen
            assert all(m["offset"] <= reply.offset for m in replayed) and all(m["offset"] > reply.offset for m in live)
            assert reply.recovered is True and reply.epoch == epoch
            boundaries.add(reply.offset)
            assert sub.sync() == []  # nothing late, no repeat
            sub.close()
        assert any(10 < boundary < total for boundary in boundaries), "no subscribe raced the publishes"


def publish_held(node: RunningServer, publisher: Client, numbers: range) -> None:
    """Publish ``numbers`` while ``node``'s sender is held: they leave together, as runs of many."""
    with held(node.hub.broker.sender):
        for n in numbers:
            publisher.send(encode_publish("T", {"n": n, "pad": "x" * 50}, session_id="s"))
        assert publisher.sync() == []  # every one queued to the sender


def test_an_envelopes_deliveries_reach_plain_and_compressing_subscribers_each_in_its_frame(redis: RedisServer) -> None:
    """Publishes sent in one go leave as merged runs: every subscriber, on the publishing node (its own envelopes)
    and on the other (decoded), gets each delivery as a frame of its own, offsets in order: plain ones (an
    envelope's frames queued as one job), then with compressing ones beside them (a frame each)."""
    count = 300
    with nodes(2, redis.url, compression=6) as (a, b), a.connect() as near, b.connect() as far, \
            a.connect() as publisher, contextlib.closing(redis.client()) as raw:
        for client in (near, far):
            subscribe_json(client)
        before = int(raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
        publish_held(a, publisher, range(count))
        for client in (near, far):
            got = [recv_delivery(client) for _ in range(count)]
            assert [(m["offset"], m["payload"]["n"]) for m in got] == [(n + 1, n) for n in range(count)]
            assert client.sync() == []
        calls = int(raw.info("commandstats")["cmdstat_evalsha"]["calls"]) - before
        assert calls <= 3  # runs of up to 200: envelopes of many deliveries

        with connect(a.ws_url, compression="deflate", open_timeout=WAIT) as near_deflate, \
                connect(b.ws_url, compression="deflate", open_timeout=WAIT) as far_deflate:
            for library in (near_deflate, far_deflate):
                library.send(encode_subscribe_json("T", "s"))
                assert library.recv(timeout=WAIT).startswith("subscribed:")
            publish_held(a, publisher, range(count, 2 * count))
            expected = [(n + 1, n) for n in range(count, 2 * count)]
            for client in (near, far):
                assert [(m["offset"], m["payload"]["n"]) for m in (recv_delivery(client) for _ in range(count))] \
                    == expected
            for library in (near_deflate, far_deflate):
                got = [json.loads(library.recv(timeout=WAIT)) for _ in range(count)]
                assert [(m["offset"], m["payload"]["n"]) for m in got] == expected


def test_a_retry_through_another_node_is_acknowledged_as_the_first_and_delivered_once(redis: RedisServer) -> None:
    with nodes(3, redis.url) as (a, b, c), a.connect() as first, b.connect() as retry, c.connect() as sub:
        subscribe_json(sub)
        one = ack_of(first, "T", "once", "the-id")
        again = ack_of(retry, "Other topic", "once again", "the-id")  # ids are per session, whatever the topic
        assert (again.offset, again.epoch) == (one.offset, one.epoch) == (1, one.epoch)
        after = ack_of(retry, "T", "after", "another-id")
        assert after.offset == 2
        got = [recv_delivery(sub), recv_delivery(sub)]
        assert [(m["payload"], m["offset"]) for m in got] == [("once", 1), ("after", 2)]
        assert sub.sync() == []
        with b.connect() as other_session:  # another session's same id is another message
            assert ack_of(other_session, "T", "elsewhere", "the-id", session="s2").offset == 1


def test_history_reads_the_shared_stream_on_every_node(redis: RedisServer) -> None:
    with nodes(2, redis.url) as (a, b), a.connect() as writer, b.connect() as reader:
        epoch = ack_of(writer, "T", 1, "h1").epoch
        publish_numbers(writer, 4, start=2)
        reply = HistoryReply.parse(reader.command(encode_history("T", "s"))[0])
        assert (reply.offset, reply.epoch) == (5, epoch)
        assert [(m.payload, m.offset, m.epoch) for m in reply.messages] == [(n, n, epoch) for n in range(1, 6)]
        last_two = HistoryReply.parse(reader.command(encode_history("T", "s", limit=2))[0])
        assert [m.payload for m in last_two.messages] == [4, 5]
        after_3 = HistoryReply.parse(reader.command(encode_history("T", "s", since=Since(3, epoch)))[0])
        assert [m.payload for m in after_3.messages] == [4, 5]
        elsewhere = HistoryReply.parse(reader.command(encode_history("T", "s", since=Since(3, "0abc")))[0])
        assert elsewhere.messages == [] and elsewhere.epoch == epoch
        error = json.loads(reader.command(encode_history("T", "s", since=Since(9, epoch)))[0][len("error:"):])
        assert error["code"] == "invalid_since"
        reader.send(encode_subscribe_json("T", "s", Since(9, epoch)))
        assert json.loads(reader.recv()[len("error:"):])["code"] == "invalid_since"
        assert broker_of(b).status()["channels"] == 0  # the refused subscription was undone
        ack_of(writer, "T", 6, "h6")
        assert reader.sync() == []


def test_forged_stream_entries_and_metadata_are_dropped_and_logged(redis: RedisServer,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    keys = pair_keys("rusty_ws", "T", "s")
    with nodes(1, redis.url) as (node,), node.connect() as client, contextlib.closing(redis.client()) as intruder:
        epoch = ack_of(client, "T", 1, "f1").epoch
        ack_of(client, "T", 2, "f2")
        good = json.dumps({"publisher_name": "x", "topic": "T", "payload": "forged", "timestamp": "t", "session_id": "s"})
        elsewhere = json.dumps({"publisher_name": "x", "topic": "T", "payload": "x", "timestamp": "t",
                                "session_id": "other"})
        intruder.xadd(keys.stream, {"d": b"\xff not json", "t": "1"}, id="2-1")
        intruder.xadd(keys.stream, {"d": elsewhere, "t": "99999999999999"}, id="2-2")
        intruder.xadd(keys.stream, {"x": "no d"}, id="2-3")
        reply = HistoryReply.parse(client.command(encode_history("T", "s"))[0])
        assert [(m.payload, m.offset) for m in reply.messages] == [(1, 1), (2, 2)] and reply.epoch == epoch
        assert broker_of(node).status()["history_dropped"] == 3
        assert caplog.text.count("dropped an entry of the Redis stream") == 3
        assert ack_of(client, "T", 3, "f3").offset == 3  # past the forged ids: the stream goes on

        intruder.xadd(keys.stream, {"d": good, "t": "99999999999999"}, id="999-0")  # past the top
        assert [m.offset for m in HistoryReply.parse(client.command(encode_history("T", "s"))[0]).messages] == [1, 2, 3]
        reset = ack_of(client, "T", 4, "f4")  # 4-0 cannot follow 999-0: the stream starts again, told
        assert reset.offset == 1 and reset.epoch != epoch
        assert "held data no rusty_ws node wrote" in caplog.text

        intruder.hset(keys.meta, "o", "not a number")
        again = ack_of(client, "T", 5, "f5")
        assert again.offset == 1 and again.epoch not in (epoch, reset.epoch)
        intruder.delete(keys.meta)
        intruder.set(keys.meta, "a string where a hash belongs")
        _, subscribed = subscribe_json(client, since=Since(1, again.epoch))
        assert subscribed.recovered is False and subscribed.offset == 0 and subscribed.epoch != again.epoch
        intruder.delete(keys.stream)
        intruder.set(keys.stream, "a string where a stream belongs")
        reply = HistoryReply.parse(client.command(encode_history("T", "s"))[0])
        assert reply.messages == [] and reply.offset == 0 and reply.epoch != subscribed.epoch
        assert intruder.type(keys.stream) == b"none" and 300_000 < intruder.pttl(keys.meta) <= META_TTL * 1000
        assert broker_of(node).status()["history_resets"] == 4
        assert client.sync() == []  # and the connection goes on


def test_forged_run_entries_are_dropped_and_logged_and_the_hub_goes_on(redis: RedisServer,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Entries of several deliveries (session 15's format) that no node wrote: none is replayed, each is counted."""
    keys = pair_keys("rusty_ws", "T", "s")
    with nodes(1, redis.url) as (node,), node.connect() as client, contextlib.closing(redis.client()) as intruder:
        epoch = ack_of(client, "T", 1, "r1").epoch
        ack_of(client, "T", 2, "r2")
        one = json.dumps({"publisher_name": "x", "topic": "T", "payload": "forged", "timestamp": "t", "session_id": "s"})
        forged = {"3-0": f"[{one},{one},{one},{one}]",  # 0 to 3: offsets below 1
                  "4-0": f"[{one},{one},{one}]",  # 2 to 4: over entry 2
                  "5-0": f"[{one},", "6-0": f"[{one}]", "7-0": "[" + ",".join([one] * 20_000) + "]"}  # huge
        for entry_id, data in forged.items():
            intruder.xadd(keys.stream, {"d": data, "t": "99999999999999"}, id=entry_id)
        intruder.hset(keys.meta, "o", 7)
        reply = HistoryReply.parse(client.command(encode_history("T", "s"))[0])
        assert [(m.payload, m.offset) for m in reply.messages] == [(1, 1), (2, 2)] and reply.epoch == epoch
        replayed, subscribed = subscribe_json(client, since=Since(0, epoch))
        assert [m["offset"] for m in replayed] == [1, 2] and subscribed.recovered is False
        assert broker_of(node).status()["history_dropped"] == 2 * len(forged)  # read twice
        assert caplog.text.count("dropped an entry of the Redis stream") == 2 * len(forged)
        early: list[dict[str, Any]] = []
        assert ack_of(client, "T", 8, "r8", early=early).offset == 8  # the stream goes on, and so does the hub
        # The delivery comes back through Redis: before the ack, or after it (and maybe after a pong).
        assert [m["offset"] for m in early or [recv_delivery(client)]] == [8] and client.sync() == []


def test_while_redis_is_down_local_delivery_goes_on_without_offsets_and_ids_are_unavailable(redis: RedisServer) -> None:
    with nodes(2, redis.url) as (a, b), a.connect() as publisher, a.connect() as near, b.connect() as far:
        _, before = subscribe_json(near)
        subscribe_json(far)
        ack_of(publisher, "T", "before", "d1")
        assert recv_delivery(near)["offset"] == recv_delivery(far)["offset"] == 1
        redis.kill()
        assert broker_of(a).wait_connected(False, WAIT) and broker_of(b).wait_connected(False, WAIT)
        publisher.send(encode_publish("T", "with id", session_id="s", id="d2"))
        error = json.loads(publisher.recv()[len("error:"):])
        assert (error["code"], error["id"]) == ("unavailable", "d2")
        publisher.send(encode_publish("T", "without id", session_id="s"))
        during = recv_delivery(near)
        assert during["payload"] == "without id" and "offset" not in during and "epoch" not in during
        assert len(broker_of(a)._history._kept) == 0  # forgotten with the connection, and nothing kept since
        assert broker_of(a).status()["unsent"] == 2
        error = json.loads(publisher.command(encode_history("T", "s"))[0][len("error:"):])
        assert error["code"] == "unavailable"
        with a.connect() as late:
            replayed, reply = subscribe_json(late, since=Since(1, before.epoch))
            assert replayed == [] and (reply.offset, reply.epoch, reply.recovered) == (None, None, False)
        redis.start()  # empty: a new epoch
        assert broker_of(a).wait_connected(True, WAIT) and broker_of(b).wait_connected(True, WAIT)
        # The sender learns that its connection died only when it writes: the first try may be
        # answered unavailable. A client retries with the same id; it lands once.
        for _ in range(3):
            publisher.send(encode_publish("T", "after", session_id="s", id="d2"))  # the refused id was never taken
            answer = publisher.recv()
            if answer.startswith("ack:"):
                break
            assert json.loads(answer[len("error:"):])["code"] == "unavailable"
            assert broker_of(a).wait_connected(True, WAIT)  # the sender, reconnected this time
        after = Ack.parse(answer)
        assert after.offset == 1 and after.epoch != before.epoch
        assert [recv_delivery(client)["payload"] for client in (near, far)] == ["after", "after"]


def test_a_replay_too_big_for_the_outbox_is_cut_short_and_says_so(redis: RedisServer) -> None:
    with nodes(2, redis.url, history_size=500, max_queued_bytes=64 * 1024,
               max_message_size=32 * 1024) as (a, b), \
            a.connect() as pub, b.connect() as sub:
        epoch = ack_of(pub, "T", {"n": 1, "pad": "x" * 1000}, "big-1").epoch
        for n in range(2, 200):
            pub.send(encode_publish("T", {"n": n, "pad": "x" * 1000}, session_id="s"))
        # acked: Redis took it, and (one FIFO) every publish before it (a pong would not say so)
        assert ack_of(pub, "T", {"n": 200, "pad": "x" * 1000}, "big-200").offset == 200
        replayed, reply = subscribe_json(sub, since=Since(0, epoch))
        assert reply.recovered is False and reply.offset == 200
        assert 10 < len(replayed) < 200
        assert [m["offset"] for m in replayed] == list(range(1, len(replayed) + 1))  # the oldest first, no gap
        ack_of(pub, "T", "live", "big-live")
        assert recv_delivery(sub)["offset"] == 201  # and the connection goes on
        assert sub.sync() == []


def test_messages_older_than_the_ttl_are_never_replayed(redis: RedisServer) -> None:
    """Entries written with an old Redis time (``t``), as a node would have written them long ago."""
    keys = pair_keys("rusty_ws", "T", "s")
    body = {"publisher_name": "p", "topic": "T", "timestamp": "t", "session_id": "s"}
    with nodes(1, redis.url, history_ttl=60) as (node,), node.connect() as client, \
            contextlib.closing(redis.client()) as raw:
        seconds, micros = raw.time()
        now_ms = seconds * 1000 + micros // 1000
        raw.hset(keys.meta, mapping={"e": "abc123", "o": "3", "i": redis.run_id()})  # written by this Redis
        for offset, added in ((1, now_ms - 61_000), (2, now_ms - 60_500), (3, now_ms)):
            raw.xadd(keys.stream, {"d": json.dumps({**body, "payload": offset}), "t": str(added)}, id=f"{offset}-0")
        replayed, reply = subscribe_json(client, since=Since(0, "abc123"))
        assert [m["payload"] for m in replayed] == [3] and reply.recovered is False  # 1 and 2 expired: told
        with node.connect() as other:
            replayed, reply = subscribe_json(other, since=Since(2, "abc123"))
            assert [m["payload"] for m in replayed] == [3] and reply.recovered is True
        assert [m.payload for m in HistoryReply.parse(client.command(encode_history("T", "s"))[0]).messages] == [3]
        ack = ack_of(client, "T", 4, "ttl-4", early=[])  # (subscribed: its delivery may come first)
        assert (ack.offset, ack.epoch) == (4, "abc123")
        # the entries expire after the TTL, the epoch and top long after (META_TTL)
        assert 0 < raw.pttl(keys.stream) <= 60_000 and 60_000 < raw.pttl(keys.meta) <= META_TTL * 1000
        assert 0 < raw.pttl(publish_id_key("rusty_ws", "s", "ttl-4")) <= 300_000


def test_session_rules_stay_in_front_of_the_redis_history(redis: RedisServer) -> None:
    with nodes(2, redis.url, anonymous_sessions="public-*") as (a, b), a.connect() as writer, b.connect() as reader:
        epoch = ack_of(writer, "T", 1, "s-1", session="public-1").epoch
        for command in (encode_history("T", "private"), encode_subscribe_json("T", "private", Since(0, epoch)),
                        encode_publish("T", "x", session_id="private", id="s-2")):
            [reply] = reader.command(command)
            assert json.loads(reply[len("error:"):])["code"] == "forbidden_session", command
        reply = HistoryReply.parse(reader.command(encode_history("T", "public-1"))[0])
        assert [m.payload for m in reply.messages] == [1]


def test_a_gap_trimmed_from_the_stream_replays_what_remains_and_says_so(redis: RedisServer) -> None:
    with nodes(2, redis.url, history_size=10) as (a, b), a.connect() as pub, b.connect() as sub:
        epoch = ack_of(pub, "T", 1, "g-1").epoch
        publish_numbers(pub, 29, start=2)
        with contextlib.closing(redis.client()) as raw:
            ids = [int(entry_id.split(b"-")[0]) for entry_id, _ in raw.xrange(pair_keys("rusty_ws", "T", "s").stream)]
            assert ids and min(ids) >= 21 and ids[-1] == 30  # XADD MINID: entries wholly below the floor 21 go
        replayed, reply = subscribe_json(sub, since=Since(5, epoch))
        assert [m["offset"] for m in replayed] == list(range(21, 31))
        assert (reply.offset, reply.recovered) == (30, False)
        replayed, reply = subscribe_json(sub, since=Since(25, epoch))  # again, on the same connection
        assert [m["offset"] for m in replayed] == list(range(26, 31)) and reply.recovered is True
        ack_of(pub, "T", 31, "g-31")
        assert recv_delivery(sub)["offset"] == 31 and sub.sync() == []  # one delivery per publish


def test_a_pair_idle_past_the_ttl_keeps_its_epoch_and_an_up_to_date_client_recovers(redis: RedisServer) -> None:
    """The entries expire after the TTL; the epoch and top stay (META_TTL): nothing was missed, nothing is lost."""
    keys = pair_keys("rusty_ws", "T", "s")
    with contextlib.closing(redis.client()) as raw:
        raw.config_set("notify-keyspace-events", "Ex")  # tell us when a key expires
        expired = raw.pubsub()
        expired.subscribe("__keyevent@0__:expired")
        assert expired.get_message(timeout=WAIT)["type"] == "subscribe"
        with nodes(1, redis.url, history_ttl=0.3) as (node,), node.connect() as watcher, node.connect() as publisher:
            _, reply = subscribe_json(watcher)
            ack = ack_of(publisher, "T", "before the quiet", "q-1")
            assert recv_delivery(watcher)["offset"] == 1
            for _ in range(100):  # the stream's expiry, as Redis announces it (bounded)
                message = expired.get_message(timeout=WAIT)
                assert message is not None, "the stream did not expire"
                if message["type"] == "message" and message["data"] == keys.stream:
                    break
            assert raw.exists(keys.stream) == 0 and raw.hget(keys.meta, "e") == ack.epoch.encode()
            with node.connect() as back:  # a client that saw offset 1 comes back: nothing to replay, and it knows
                replayed, again = subscribe_json(back, since=Since(1, ack.epoch))
                assert replayed == [] and (again.offset, again.epoch, again.recovered) == (1, ack.epoch, True)
            with node.connect() as late:  # one that missed offset 1: it expired, and it is told so
                replayed, again = subscribe_json(late, since=Since(0, ack.epoch))
                assert replayed == [] and again.recovered is False and again.epoch == ack.epoch
            assert ack_of(publisher, "T", "after", "q-2").offset == 2  # the stream goes on under its epoch
            assert (recv_delivery(watcher)["offset"], reply.epoch) == (2, ack.epoch)
        expired.close()


def test_history_max_bytes_bounds_each_stream_in_redis(redis: RedisServer) -> None:
    with nodes(1, redis.url, history_max_bytes=1000) as (node,), node.connect() as client:
        for n in range(1, 20):
            client.send(encode_publish("T", f"{n:02d}" + "x" * 200, session_id="s"))
        assert ack_of(client, "T", "20" + "x" * 200, "last").offset == 20  # every one before it is in Redis
        reply = HistoryReply.parse(client.command(encode_history("T", "s"))[0])
        kept = [int(message.payload[:2]) for message in reply.messages]
        assert reply.offset == 20 and 1 < len(kept) < 5 and kept == list(range(21 - len(kept), 21))


def test_a_history_reply_from_redis_is_capped_in_bytes(redis: RedisServer) -> None:
    with nodes(1, redis.url, max_queued_bytes=64 * 1024, max_message_size=32 * 1024) as (node,), \
            node.connect() as client:
        for n in range(1, 30):
            client.send(encode_publish("T", f"{n:02d}" + "x" * 4000, session_id="s"))
        assert ack_of(client, "T", "30" + "x" * 4000, "last").offset == 30
        reply = HistoryReply.parse(client.command(encode_history("T", "s"))[0])
        kept = [int(message.payload[:2]) for message in reply.messages]
        assert 1 < len(kept) < 30 and kept == list(range(31 - len(kept), 31))
        page = HistoryReply.parse(client.command(encode_history("T", "s", since=Since(0, reply.epoch)))[0])
        first = [int(message.payload[:2]) for message in page.messages]
        assert 1 < len(first) < 30 and first == list(range(1, len(first) + 1))


def test_merged_publishes_of_two_nodes_keep_each_publishers_order_and_one_order_everywhere(redis: RedisServer) -> None:
    count = 300
    with nodes(2, redis.url) as (a, b), a.connect() as on_a, b.connect() as on_b, \
            a.connect() as pa, b.connect() as pb, contextlib.closing(redis.client()) as raw:
        for watcher in (on_a, on_b):
            subscribe_json(watcher)
        before = int(raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
        acks = {pa: 0, pb: 0}
        for n in range(count):  # with an id every 7th: in the same runs as those without
            for name, client in (("a", pa), ("b", pb)):
                publish_id = f"{name}-{n}" if n % 7 == 0 or n == count - 1 else None
                client.send(encode_publish("T", [name, n], session_id="s", id=publish_id))
                acks[client] += publish_id is not None
        for client, expected in acks.items():  # every ack: Redis took every publish (one FIFO per node)
            offsets = [Ack.parse(client.recv()).offset for _ in range(expected)]
            assert offsets == sorted(offsets) and len(set(offsets)) == expected
        seen = []
        for watcher in (on_a, on_b):
            messages = [recv_delivery(watcher) for _ in range(2 * count)]
            assert [m["offset"] for m in messages] == list(range(1, 2 * count + 1))
            seen.append([tuple(m["payload"]) for m in messages])
            for name in ("a", "b"):
                assert [n for who, n in seen[-1] if who == name] == list(range(count))
            assert watcher.sync() == []
        assert seen[0] == seen[1]  # one order, the offsets', on every node
        calls = int(raw.info("commandstats")["cmdstat_evalsha"]["calls"]) - before
        assert calls < 2 * count  # merged (how much depends on timing; each node's sender had a queue)


def test_another_nodes_run_envelopes_are_checked_and_bad_ones_dropped_and_logged(redis: RedisServer,
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Version-5 envelopes of another node (the remote road, ``redis_codec.decode_received``): a good one is
    delivered with its offsets; a malformed or hostile one is dropped whole, counted and logged, and the hub goes on."""
    channel = pair_keys("rusty_ws", "T", "s").channel
    good = json.dumps({"publisher_name": "x", "topic": "T", "payload": "far", "timestamp": "t", "session_id": "s"})

    def run(*bodies: str, epoch: str = "ab12", first: int = 40) -> str:
        return json.dumps({"v": 5, "node": "elsewhere", "epoch": epoch, "first": first,
                           "seqs": list(range(len(bodies))), "deliveries": [json.loads(body) for body in bodies]})

    other_pair = good.replace('"session_id": "s"', '"session_id": "other"')
    hostile = [
        run(good, other_pair),  # a delivery of another pair among good ones
        run(good, good.replace('"publisher_name": "x"', '"publisher_name": 5')),
        run(good, good.replace('"payload": "far", ', "")),  # no payload
        run(good, good.replace('"timestamp": "t"', '"timestamp": "t", "user": {"a": 1}')),
        run(good).replace('"far"', '1e999'), run(good, epoch="AB12"), run(good, first=0),
        run(good).replace('"seqs": [0]', '"seqs": [true]'), run(good).replace('"seqs": [0]', '"seqs": []'),
        run(good).replace('"deliveries": [', '"deliveries": [1, '), run(good)[:-2],
        run(good).replace('"far"', "[" * 200 + "]" * 200),  # nested deeper than any publish
        run(*[good] * 3, first=2 ** 53 - 2),  # offsets past the largest
    ]
    with nodes(1, redis.url) as (node,), node.connect() as client, contextlib.closing(redis.client()) as intruder:
        subscribe_json(client)
        for data in hostile:
            assert intruder.publish(channel, data) == 1
        assert intruder.publish(channel, run(good, good, first=40)) == 1
        assert [(m["payload"], m["offset"], m["epoch"]) for m in (recv_delivery(client), recv_delivery(client))] == \
            [("far", 40, "ab12"), ("far", 41, "ab12")]
        assert broker_of(node).status()["dropped"] == len(hostile)
        assert caplog.text.count("no rusty_ws envelope") == len(hostile)
        assert broker_of(node)._listener.deliver_remote is not None  # the road taken
        early: list[dict[str, Any]] = []
        ack_of(client, "T", "still here", "r1", early=early)  # the listener and the hub go on
        assert [m["payload"] for m in early or [recv_delivery(client)]] == ["still here"]
