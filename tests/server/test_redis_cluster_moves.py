"""Publishes with an id across a slot migration and a failover: held, sent again, never lost nor doubled.

Real hubs with ``RedisClusterBroker``s on a private cluster (``redis_cluster_support``).
A migration is driven by hand as ``redis-cli --cluster reshard`` does it (SETSLOT
IMPORTING/MIGRATING, MIGRATE of the slot's keys, SETSLOT NODE on the target first)
while a publisher keeps publishing with ids; a failover is a SIGKILLed master whose
replica takes over. Every message is counted by its offset: the acks, the live
deliveries on both hubs, the stream, and recovery with ``since`` afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Any

import pytest
from redis_cluster_support import ClusterNode, RedisCluster, redis_cluster, wait_for
from test_history_wire import subscribe_json
from test_redis_history import ack_of

from rusty_ws.brokers.redis_cluster import RedisClusterBroker
from rusty_ws.brokers.redis_codec import shard_channel_name
from rusty_ws.brokers.redis_slots import session_slot
from rusty_ws.protocol import Ack, HistoryReply, Since, encode_history, encode_publish, encode_subscribe
from support import WAIT, Client, RunningServer, http
from support import nodes as hubs_on

#: Enough history to hold every message of a run (the checks read the whole stream back).
HISTORY = 50_000
#: Publishes with ids unanswered at once in the failover test (all of them held while no master serves the slot).
WINDOW = 2000


def nodes(count: int, url: str) -> contextlib.AbstractContextManager[list[RunningServer]]:
    # The retry timeout above the failover's time, as docs/scaling.md tells deployments to choose it: the
    # replica takes over 1.9 to 2.7 s after the kill here (cluster-node-timeout 1 s, then its election),
    # and the hubs follow it within FOLLOW (measured: 0.1 to 0.4 s); 9 s leaves the rest to a loaded
    # machine. (A CI run once took 11.5 s: the far hub's gap read waited for its own listener; fixed.)
    return hubs_on(count, url, history_size=HISTORY, broker_retry_timeout=WAIT * 3)


def broker(node: RunningServer) -> RedisClusterBroker:
    found = node.hub.broker
    assert isinstance(found, RedisClusterBroker)
    return found


class Publisher:
    """Publishes numbered messages with ids to one session without waiting for each answer.

    One thread sends while fewer than ``window`` publishes are unanswered; another
    reads the answers (the connection has no subscription: only acks and errors).
    """

    def __init__(self, client: Client, session: str, window: int = 10, most: int = 50_000) -> None:
        self.client, self.session, self.window, self.most = client, session, window, most
        self.acks: list[Ack] = []
        self.errors: list[str] = []
        self.sent = 0
        self.stop = threading.Event()
        self.progress = threading.Condition()  # guards sent, acks, errors; signalled on each change
        self.writer = threading.Thread(target=self._send, name="test-publisher", daemon=True)
        self.reader = threading.Thread(target=self._read, name="test-publisher-answers", daemon=True)

    def start(self) -> None:
        self.writer.start()
        self.reader.start()

    def answered(self) -> int:
        return len(self.acks) + len(self.errors)

    def _send(self) -> None:
        for number in range(1, self.most + 1):
            with self.progress:
                if not self.progress.wait_for(lambda: self.stop.is_set() or self.sent - self.answered() < self.window,
                                              WAIT * 4) or self.stop.is_set():
                    return
                self.sent = number
            self.client.send(encode_publish("T", number, session_id=self.session, id=f"m-{number}"))

    def _read(self) -> None:
        for _ in range(self.most + 1):
            text = self.client.recv(WAIT * 4)  # held ones answer late
            if text == "pong":  # finish()'s ping: answered after every ack before it
                return
            with self.progress:
                (self.acks.append(Ack.parse(text)) if text.startswith("ack:") else self.errors.append(text))
                self.progress.notify_all()

    def wait_for(self, more: int) -> None:
        """Until ``more`` answers came after the ones there now."""
        with self.progress:
            goal = self.answered() + more
            assert self.progress.wait_for(lambda: self.answered() >= goal, WAIT * 4), \
                f"the publisher is stuck ({self.errors[-3:]})"

    def finish(self) -> None:
        with self.progress:
            self.stop.set()
            self.progress.notify_all()
        self.writer.join(WAIT)
        self.client.send("ping")
        self.reader.join(WAIT * 4)
        assert self.answered() == self.sent, "answers missing"
        assert not self.writer.is_alive() and not self.reader.is_alive(), "the publisher did not finish"


class Reader:
    """A thread reading a subscribed client's deliveries all along (it must not become a slow consumer)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.got: list[dict[str, Any]] = []
        self.arrived = threading.Condition()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for _ in range(1_000_000):
            text = self.client.recv(WAIT * 10)
            if text == "pong":
                self.done.set()
                return
            with self.arrived:
                self.got.append(json.loads(text))
                self.arrived.notify_all()

    def wait_for(self, payload: int, timeout: float) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: any(m["payload"] == payload for m in self.got[-50:]), timeout)

    def finish(self) -> list[dict[str, Any]]:
        self.client.send("ping")
        assert self.done.wait(WAIT * 2) and not self.thread.is_alive(), "the reader did not finish"
        return self.got


def shards_of(node: RunningServer) -> dict[str, Any]:
    """The hub's ``/healthz`` view per master."""
    return http("GET", node.http_url + "/healthz")[2]["broker"]["shards"]


def node_ids(cluster: RedisCluster) -> dict[str, str]:
    ids = {}
    for node in cluster.masters():
        with contextlib.closing(node.client()) as client:
            ids[node.address] = client.execute_command("CLUSTER MYID").decode()
    return ids


def check_counted(acks: list[Ack], live: dict[str, list[dict[str, Any]]], expected: int) -> dict[str, int]:
    """Every publish acknowledged once, offsets 1..n in publish order; live deliveries once, in order, by offset.

    Returns how many each live subscriber missed.
    """
    ids = [ack.id for ack in acks]
    first = next((i for i, (got, want) in enumerate(zip(ids, (f"m-{n}" for n in range(1, expected + 1))))
                  if got != want), 0)
    assert ids == [f"m-{n}" for n in range(1, expected + 1)], [(a.id, a.offset) for a in acks[max(0, first - 3):first + 9]]
    assert [ack.offset for ack in acks] == list(range(1, expected + 1)), "an offset skipped or taken twice"
    epochs = [ack.epoch for ack in acks]
    assert len(set(epochs)) <= 2 and epochs == sorted(epochs, key=epochs.index), "epochs interleaved"
    offset_of = {n: acks[n - 1].offset for n in range(1, expected + 1)}
    missed = {}
    for name, got in live.items():
        payloads = [m["payload"] for m in got]
        assert payloads == sorted(set(payloads)), f"{name}: out of order or twice"
        assert all(m["offset"] == offset_of[m["payload"]] for m in got), f"{name}: another offset than the ack's"
        missed[name] = expected - len(payloads)
    return missed


def stream_payloads(node: ClusterNode, session: str) -> list[tuple[int, int]]:
    """(offset, payload) of every message of the pair's stream (an entry may hold a run of several), read on ``node``."""
    from rusty_ws.brokers.redis_codec import decode_stream_run, pair_keys

    with contextlib.closing(node.client()) as client:
        entries = client.xrange(pair_keys("rusty_ws", "T", session).stream)
    return [(d.offset or 0, d.payload) for entry_id, fields in entries
            for d in decode_stream_run([entry_id, [b"d", fields[b"d"], b"t", fields[b"t"]]], ("T", session), "0", 2 ** 53)[0]]


def test_a_slot_migrating_while_publishes_with_ids_flow_loses_nothing_and_doubles_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    """TRYAGAIN (the id key is missing while the pair's keys are there, or split) and ASK are held and sent again."""
    caplog.set_level(logging.INFO, "rusty_ws.server")
    session = "migrating"
    slot = session_slot(session)
    with redis_cluster(3) as cluster, nodes(2, cluster.url) as (a, b), a.connect() as far, \
            b.connect() as near, b.connect() as sending:
        _, far_start = subscribe_json(far, session=session)
        subscribe_json(near, session=session)
        readers = {"far": Reader(far), "near": Reader(near)}
        source = cluster.master_of_slot(slot)
        [target, third] = [node for node in cluster.masters() if node is not source]
        ids = node_ids(cluster)
        publisher = Publisher(sending, session)
        publisher.start()
        publisher.wait_for(50)
        retried = broker(b).status()["retried"]
        with contextlib.closing(target.client()) as to, contextlib.closing(source.client()) as from_, \
                contextlib.closing(third.client()) as other:
            to.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source.address])
            from_.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target.address])
            # The id key of the next publish is missing while the pair's keys are here: TRYAGAIN, held.
            wait_for(lambda: broker(b).status()["retried"] > retried + 3, WAIT * 2, "publishes answered TRYAGAIN")
            keys = from_.execute_command("CLUSTER GETKEYSINSLOT", slot, 100_000)
            assert len(keys) > 50, "the pair's stream, meta and publish ids live in its slot"
            # Half the keys, then the rest: split keys are TRYAGAIN, moved ones ASK (then TRYAGAIN on the target).
            half = len(keys) // 2
            from_.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, int(WAIT * 1000), "KEYS", *keys[:half])
            retried = broker(b).status()["retried"]
            wait_for(lambda: broker(b).status()["retried"] > retried + 3, WAIT * 2, "publishes held while split")
            from_.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, int(WAIT * 1000), "KEYS", *keys[half:])
            retried = broker(b).status()["retried"]
            wait_for(lambda: broker(b).status()["retried"] > retried + 3, WAIT * 2, "publishes held while importing")
            # A read meets the slot migrating with its keys gone: ASK, followed (ASKING on the target).
            with a.connect() as reader:
                [text] = reader.command(encode_history("T", session))
                assert text.startswith("history:"), text
                read = HistoryReply.parse(text)
                assert read.offset >= 50 and [m.offset for m in read.messages][-1] == read.offset
            for client in (to, from_, other):  # the target first, as redis-cli does
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target.address])
        channel = shard_channel_name("rusty_ws", "T", session)
        wait_for(lambda: channel in target.shard_channels() and channel not in source.shard_channels(),
                 WAIT * 3, "both hubs' subscriptions to follow the slot")
        publisher.wait_for(50)
        publisher.finish()
        total = publisher.answered()
        assert publisher.errors == [], publisher.errors[:3]
        for name, reader in readers.items():
            assert reader.wait_for(total, WAIT * 2), f"{name} never got the last publish"
        live = {name: reader.finish() for name, reader in readers.items()}
        missed = check_counted(publisher.acks, live, total)
        assert missed == {"far": 0, "near": 0}, "what ran on the new master before a hub subscribed there is filled"
        assert stream_payloads(target, session) == [(n, n) for n in range(1, total + 1)]
        with contextlib.closing(source.client()) as client:
            assert client.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
        status = broker(b).status()
        logging.getLogger("test").warning(
            "migration: %d publishes with ids, %d sent again (held: TRYAGAIN/ASK), live deliveries missed %s, "
            "filled from the stream after a gap: %s", total, status["retried"], missed,
            {name: broker(n).status()["gaps_filled"] for name, n in (("far", a), ("near", b))})
        assert status["retried"] > 0 and status["retry_expired"] == 0 and status["held"] == 0
        # /healthz: both hubs show the slot under its new master.
        owned = RedisCluster.slot_owners(target)
        wait_for(lambda: all(shards_of(n)[target.address]["slots"] == owned[target.address]
                             and shards_of(n)[source.address]["slots"] == owned[source.address]
                             for n in (a, b)), WAIT, "both hubs' /healthz to show the slot's new master")
        # Recovery after the move: from a position in the new epoch, exactly what came after it.
        last = publisher.acks[-1]
        with a.connect() as late:
            replayed, reply = subscribe_json(late, session=session, since=Since(last.offset - 5, last.epoch))
            assert [m["payload"] for m in replayed] == list(range(total - 4, total + 1)) and reply.recovered is True
        assert last.epoch != far_start.epoch  # the keys' new master renewed the epoch (docs/scaling.md)
        with b.connect() as old:  # from before the move, in the old epoch: told, never a gap
            replayed, reply = subscribe_json(old, session=session, since=Since(10, far_start.epoch))
            assert reply.recovered is False and replayed == [] and reply.epoch == last.epoch


def test_a_master_killed_mid_run_loses_no_publish_with_an_id() -> None:
    """SIGKILL a master while publishes with ids flow to its sessions: held until the replica took over, sent
    again there; every one acknowledged once with consecutive offsets, in the stream once."""
    session = "failing-over"
    with redis_cluster(3, replicas=1, keep_logs=True) as cluster, nodes(2, cluster.url) as (a, b), \
            a.connect() as far, b.connect() as near, b.connect() as sending:
        subscribe_json(far, session=session)
        subscribe_json(near, session=session)
        readers = {"far": Reader(far), "near": Reader(near)}
        victim = cluster.master_of_slot(session_slot(session))
        heir = cluster.replica_of(victim)
        publisher = Publisher(sending, session, window=WINDOW)
        publisher.start()
        publisher.wait_for(WINDOW)
        victim.kill()  # SIGKILL: no goodbye to anyone
        killed_at = publisher.answered()
        started = time.time()
        # Both hubs have the replica as a connected master within FOLLOW of its promotion.
        followed = cluster.wait_followed(heir, lambda: all(
            heir.address in broker(n).status()["shards"] and broker(n).status()["connected"] for n in (a, b)))
        healed = time.time() - started
        publisher.wait_for(WINDOW)
        publisher.finish()
        total = publisher.answered()
        assert publisher.errors == [], publisher.errors[:3]
        for name, reader in readers.items():
            assert reader.wait_for(total, WAIT * 2), f"{name} never got the last publish"
        live = {name: reader.finish() for name, reader in readers.items()}
        # Acknowledged once each, in order. The new master's stream: what its replica had got, then
        # everything after, once (a publish sent again after its connection failed was either there
        # already, answered "repeat" with its first position, or runs there for the first time).
        acks = publisher.acks
        assert [ack.id for ack in acks] == [f"m-{n}" for n in range(1, total + 1)]
        stream = stream_payloads(heir, session)
        payloads = [payload for _, payload in stream]
        assert payloads == sorted(set(payloads)), "the new master's stream has a publish twice or out of order"
        assert [offset for offset, _ in stream] == list(range(1, len(stream) + 1))
        assert set(range(killed_at + 1, total + 1)) <= set(payloads), "a publish answered after the kill is lost"
        assert {(ack.offset, int(ack.id[2:])) for ack in acks[killed_at:]} <= set(stream)
        # Acknowledged by the old master before the kill, never replicated (asynchronous replication): the
        # epoch renewal tells clients positioned there (test_redis_cluster_history.py). Counted, not hidden.
        lagged = killed_at - len(set(range(1, killed_at + 1)) & set(payloads))
        if lagged == 0:  # the new master had every write: offsets 1..n, each once, in publish order
            assert [ack.offset for ack in acks] == list(range(1, total + 1))
        offset_of = {int(ack.id[2:]): ack.offset for ack in acks}
        missed = {}
        for name, got in live.items():
            got_payloads = [m["payload"] for m in got]
            assert got_payloads == sorted(set(got_payloads)), f"{name}: out of order or twice"
            assert all(m["offset"] == offset_of[m["payload"]] for m in got), f"{name}: another offset than the ack's"
            assert len({(m["epoch"], m["offset"]) for m in got}) == len(got), f"{name}: an offset twice"
            missed[name] = total - len(got_payloads)
        status = broker(b).status()
        logging.getLogger("test").warning(
            "failover: %d publishes with ids (%d answered after the kill), %d sent again, none of those lost; "
            "%d acknowledged before the kill were not replicated; the hubs followed the new master %.1f s after "
            "the kill, %.2f s after its promotion; live deliveries missed %s, filled from the stream %s; unsent "
            "attempts %d", total, total - killed_at, status["retried"], lagged, healed, followed, missed,
            {name: broker(n).status()["gaps_filled"] for name, n in (("far", a), ("near", b))}, status["unsent"])
        assert status["retried"] > 0 and status["retry_expired"] == 0
        # What ran on the new master before a hub subscribed there came from the stream: nothing missed,
        # unless the new master reused offsets (it lacked writes: then the new epoch tells clients).
        assert lagged > 0 or missed == {"far": 0, "near": 0}, missed
        # /healthz per shard, on both hubs: the new master, not the dead one.
        for node in (a, b):
            shards = shards_of(node)
            assert victim.address not in shards and shards[heir.address]["connected"] is True
            assert shards[heir.address]["slots"] == RedisCluster.slot_owners(heir)[heir.address]


def test_a_gap_met_while_a_listener_subscribes_is_filled_at_once(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A delivery can come on a listener's new connection before the PONG that makes it connected (after a
    failover the publishing hub sends its held publishes to the new master while this hub subscribes there).
    A gap before it is read from the stream at once, on that listener's thread, which must not wait for the
    PONG it has yet to read: waiting there stalled the listener for the whole retry timeout and lost the gap."""
    from rusty_ws.brokers.redis_listener import _READY
    from rusty_ws.brokers.redis_shard_listener import ShardListener

    caplog.set_level(logging.INFO, "rusty_ws.server")
    session = "subscribing"
    with redis_cluster(3) as cluster, nodes(2, cluster.url) as (a, b), a.connect() as far, \
            b.connect() as sending, b.connect() as meanwhile:
        _, start = subscribe_json(far, session=session)
        ack_of(sending, "T", 1, "g-1", session=session)
        assert recv_json_delivery(far)["payload"] == 1
        master = cluster.master_of_slot(session_slot(session))
        channel = shard_channel_name("rusty_ws", "T", session)
        node_a = broker(a).node_id
        armed, hooked = threading.Event(), threading.Event()
        original = ShardListener._subscribe_all

        class Link:
            """The listener's new connection, with a publish made between its SSUBSCRIBEs and its PING."""

            def __init__(self, link: Any) -> None:
                self.link = link

            def __getattr__(self, name: str) -> Any:
                return getattr(self.link, name)

            def ping(self, message: bytes) -> None:
                if message == _READY:
                    # Redis has the new subscription: offset 3 comes on this connection before the PONG.
                    wait_for(lambda: channel in master.shard_channels(), WAIT, "the listener's SSUBSCRIBE")
                    ack_of(meanwhile, "T", 3, "g-3", session=session)
                    hooked.set()
                self.link.ping(message)

        def subscribe_all(listener: ShardListener, link: Any) -> None:
            if armed.is_set() and listener.node_id == node_a and listener.address == master.address:
                armed.clear()
                ack_of(meanwhile, "T", 2, "g-2", session=session)  # nobody on hub a hears this one live
                link = Link(link)
            original(listener, link)

        monkeypatch.setattr(ShardListener, "_subscribe_all", subscribe_all)
        armed.set()
        with contextlib.closing(master.client()) as client:  # hub a's pub/sub connection to the master drops
            ours = [entry for entry in client.client_list()
                    if entry["name"] == f"rusty_ws-{node_a}" and int(entry.get("ssub", 0))]
            assert len(ours) == 1, ours
            client.execute_command("CLIENT", "KILL", "ID", ours[0]["id"])
        assert hooked.wait(WAIT * 3), "hub a's listener did not subscribe again"
        started = time.monotonic()
        got = [recv_json_delivery(far) for _ in range(2)]
        assert [(m["payload"], m["offset"], m["epoch"]) for m in got] == [(2, 2, start.epoch), (3, 3, start.epoch)]
        assert broker(a).wait_connected(True, WAIT)
        assert time.monotonic() - started < WAIT, "the gap waited"
        assert broker(a).status()["gaps_filled"] == 1
        assert "could not fill a gap" not in caplog.text
        ack_of(sending, "T", 4, "g-4", session=session)
        assert recv_json_delivery(far)["payload"] == 4
        assert far.sync() == []


def test_a_forged_offset_on_a_shard_channel_does_not_silence_the_pair(caplog: pytest.LogCaptureFixture) -> None:
    """A well-formed version-2 envelope with an offset no script gave: not taken for a gap, real ones go on."""
    from redis_cluster_support import spublish

    session = "forged"
    with redis_cluster(3) as cluster, nodes(1, cluster.url) as (hub,), hub.connect() as live, \
            hub.connect() as sending:
        _, start = subscribe_json(live, session=session)
        acks = [ack_of(sending, "T", n, f"f-{n}", session=session) for n in (1, 2)]
        assert [recv_json_delivery(live)["payload"] for _ in acks] == [1, 2]
        forged = json.dumps({"v": 2, "node": "intruder", "offset": 10 ** 12, "epoch": start.epoch, "delivery": {
            "publisher_name": "x", "topic": "T", "payload": "forged", "timestamp": "t", "session_id": session}})
        spublish(cluster, shard_channel_name("rusty_ws", "T", session), forged.encode())
        assert recv_json_delivery(live)["payload"] == "forged"  # delivered, as any well-formed envelope is...
        acks += [ack_of(sending, "T", n, f"f-{n}", session=session) for n in (3, 4)]
        # ...but not remembered: the real offsets 3 and 4 are not taken for copies of it.
        assert [(m["payload"], m["offset"]) for m in (recv_json_delivery(live), recv_json_delivery(live))] == \
            [(3, 3), (4, 4)]
        assert [ack.offset for ack in acks] == [1, 2, 3, 4]
        assert "which its stream does not hold" in caplog.text
        assert broker(hub).status()["gap_duplicates"] == 0


def recv_json_delivery(client: Client) -> dict[str, Any]:
    text = client.recv()
    assert text.startswith("{"), text
    return json.loads(text)


def test_a_stale_slot_map_after_a_move_costs_no_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a move, a master not yet told of it (``SETSLOT NODE`` reaches the nodes one by one, or
    gossip lags) answers ``CLUSTER SLOTS`` with the old map, and the hub may read it there. The listeners
    acting on it must lose nothing: the old master's refuses the pair's ``SSUBSCRIBE`` with ``MOVED``, which
    must not cost its connection (its other pairs' publishes meanwhile were lost), and the new master's
    keeps the subscription Redis still serves it (what is published there was dropped unread)."""
    import rusty_ws.brokers.redis_cluster as module
    from rusty_ws.brokers.redis_slots import parse_cluster_slots

    monkeypatch.setattr(module, "MAP_INTERVAL", 3600.0)  # the maps change on trouble only
    moving, staying = "moving-session", "staying-session"
    with redis_cluster(3) as cluster, hubs_on(2, cluster.url) as (a, b), a.connect() as subscriber, \
            b.connect() as publisher:
        source = cluster.master_of_slot(session_slot(moving))
        assert cluster.master_of_slot(session_slot(staying)) is source, "both sessions on one master"
        target = next(node for node in cluster.masters() if node is not source)
        for session in (moving, staying):
            subscriber.command(encode_subscribe("T", session))
        with contextlib.closing(source.client()) as client:
            old = parse_cluster_slots(client.execute_command("CLUSTER SLOTS"))
        cluster.move_slot(session_slot(moving), target)
        channel = shard_channel_name("rusty_ws", "T", moving)
        wait_for(lambda: channel in target.shard_channels() and channel not in source.shard_channels(),
                 WAIT * 3, "hub a's subscription to follow the slot")
        wait_for(lambda: broker(a).status()["connected"], WAIT, "hub a's listeners to be connected")
        reconnects = broker(a).status()["reconnects"]

        # From now on hub a reads the old map (as from a lagging node), until released.
        stale, reads = threading.Event(), []
        real = broker(a)._read_map

        def read_map(quiet: bool) -> Any:
            if not stale.is_set():
                return real(quiet)
            reads.append(time.monotonic())
            return old

        monkeypatch.setattr(broker(a), "_read_map", read_map)
        stale.set()
        broker(a)._trouble(moved=True)  # what a pushed sunsubscribe does
        # A second stale read: the first one's resync went through (the old master refused the SSUBSCRIBE).
        wait_for(lambda: len(reads) >= 2, WAIT, "hub a to read the stale map twice")
        for payload, session in (("after", moving), ("unmoved", staying)):
            publisher.command(encode_publish("T", payload, session_id=session))
            assert subscriber.recv_json()["payload"] == payload
        assert broker(a).status()["reconnects"] == reconnects, "a refused SSUBSCRIBE cost a connection"
        assert channel in target.shard_channels()

        stale.clear()  # the lagging node learns: the next read gives the real map
        broker(a)._trouble(moved=True)
        owned = RedisCluster.slot_owners(target)[target.address]
        wait_for(lambda: broker(a).status()["shards"][target.address]["slots"] == owned, WAIT, "hub a's map to heal")
        publisher.command(encode_publish("T", "healed", session_id=moving))
        assert subscriber.recv_json()["payload"] == "healed"
        assert subscriber.sync() == []  # nothing twice
        assert broker(a).status()["channels"] == 2
