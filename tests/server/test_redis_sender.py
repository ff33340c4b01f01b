"""The Redis sender: pipelined, ordered, bounded, and honest about what it could not send.

Part one drives a ``RedisSender`` directly against a private redis-server
(every reply counted, the queue's bound watched, Redis stopped with SIGSTOP,
restarted, its scripts flushed). Part two runs real hubs on one Redis: numbered
messages across nodes, publishers going on while Redis is stopped, and the
``ack:`` of a publish with an id only once Redis took it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py

from redis_support import SENTINEL, RedisServer, publish_sentinel, read_until_sentinel, redis_server
from rusty_ws.brokers.redis import RedisBroker
from rusty_ws.brokers.redis_sender import SETTLED, Mergeable, RedisSender
from rusty_ws.protocol import encode_publish, encode_subscribe
from rusty_ws.server.state import state_of
from support import MS, WAIT, Client, RunningServer, nodes, running_server

ERRORS = (redis_py.exceptions.RedisError, OSError)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["hiredis", "plain"])
def packing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sender's two ways to pack and parse: with hiredis, and without (pure Python)."""
    import rusty_ws.brokers.redis_link as module

    if request.param == "plain":
        monkeypatch.setattr(module, "_hiredis", None)
        monkeypatch.setattr(module, "_pack", module._pack_plain)
    else:
        pytest.importorskip("hiredis", reason="the redis extra installs hiredis")
    return str(request.param)


class Replies:
    """Every reply the sender handed back, by command number, and on which thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.got: dict[int, Any] = {}
        self.threads: set[str] = set()
        self.order: list[int] = []

    def callback(self, number: int) -> Any:
        def on_reply(reply: Any) -> None:
            with self.changed:
                assert number not in self.got, f"command {number} answered twice"
                self.got[number] = reply
                self.order.append(number)
                self.threads.add(threading.current_thread().name)
                self.changed.notify_all()
        return on_reply

    def wait(self, count: int, timeout: float = WAIT) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.got) >= count, timeout)


@contextlib.contextmanager
def sender(server: RedisServer, **options: Any) -> Iterator[RedisSender]:
    client = redis_py.Redis.from_url(server.url, retry=redis_py.retry.Retry(redis_py.backoff.NoBackoff(), 0))
    options.setdefault("backoff_delays", lambda: iter(lambda: 20 * MS, None))
    made = RedisSender(client=client, errors=ERRORS, node_id="test", **options)
    made.start(WAIT)
    try:
        yield made
    finally:
        made.stop(WAIT)


def stopped(server: RedisServer) -> contextlib.AbstractContextManager[None]:
    """Redis SIGSTOPped inside the block: its sockets stay open, nothing answers."""
    @contextlib.contextmanager
    def stop() -> Iterator[None]:
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            server.process.send_signal(signal.SIGCONT)
    return stop()


# --------------------------------------------------------------------------- the sender alone


def test_the_plain_packer_packs_as_hiredis_does() -> None:
    hiredis = pytest.importorskip("hiredis")
    from rusty_ws.brokers.redis_link import _pack_plain

    commands = [("PUBLISH", b"rusty_ws:1:T:s", b'{"a":"\xc3\xa9"}'), ("EVALSHA", "f" * 40, 2, "k\u00e9", b"", -7, 2.5),
                ("PING",), ("SET", "k", b"\r\n\x00" * 100)]
    assert _pack_plain(commands) == b"".join(hiredis.pack_command(command) for command in commands)


def test_commands_run_in_order_and_every_reply_comes_back_on_the_sender_thread(redis: RedisServer,
                                                                              packing: str) -> None:
    replies = Replies()
    with sender(redis) as out:
        for number in range(5000):
            out.submit(("RPUSH", "numbers", number), replies.callback(number))
        out.submit(("INCR", "numbers"), replies.callback(5000))  # refused by Redis: a list is no number
        out.submit(("NO-SUCH-COMMAND",), replies.callback(5001))
        out.submit(("RPUSH", "numbers", "last"), replies.callback(5002))
        assert replies.wait(5003) and out.wait_drained(WAIT)
        assert replies.order == list(range(5003))
        assert [replies.got[n] for n in range(5000)] == list(range(1, 5001))  # RPUSH answers the length
        assert isinstance(replies.got[5000], redis_py.exceptions.ResponseError)
        assert isinstance(replies.got[5001], redis_py.exceptions.ResponseError)
        assert replies.got[5002] == 5001  # the refusals cost nothing to what followed
        assert replies.threads == {"rusty_ws-redis-sender-test"}
        with redis.client() as check:
            assert check.lrange("numbers", 0, -1) == [b"%d" % n for n in range(5000)] + [b"last"]
        assert out.status() == {"connected": True, "queued": 0, "sent": 5001, "unsent": 0, "unanswered": 0,
                                "failed": 2,
                                "blocked": out.status()["blocked"], "reconnects": 0}


def test_scripts_survive_a_redis_restart_and_a_script_flush(redis: RedisServer, packing: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    source = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    replies = Replies()
    with sender(redis) as out:
        sha = out.script_load(source)
        out.submit(("EVALSHA", sha, 1, "counter", 5), replies.callback(0))
        assert replies.wait(1) and replies.got[0] == 5

        redis.kill()
        redis.start()  # empty: no scripts, no keys
        # The first write after the restart finds the old connection dead (unless a keepalive
        # PING found it first); never NOSCRIPT: scripts are loaded on every new connection.
        out.submit(("EVALSHA", sha, 1, "counter", 1), replies.callback(1))
        assert replies.wait(2)
        assert replies.got[1] == 1 or isinstance(replies.got[1], ConnectionError)
        assert out.wait_connected(True, WAIT)
        out.submit(("EVALSHA", sha, 1, "counter", 1), replies.callback(2))
        assert replies.wait(3) and replies.got[2] == (2 if replies.got[1] == 1 else 1)
        assert out.status()["reconnects"] == 1
        attempt = 2

        with redis.client() as other:
            other.script_flush()  # on a live connection: only the NOSCRIPT reply can tell
        base = attempt + 1
        for number in range(base, base + 3):
            out.submit(("EVALSHA", sha, 1, "counter", 10), replies.callback(number))
        assert replies.wait(base + 3)
        assert [replies.got[n] for n in range(base, base + 3)] == [11, 21, 31]
        assert replies.order[-3:] == [base, base + 1, base + 2]
        assert "Redis forgot 1 script(s)" in caplog.text
        out.submit(("EVALSHA", "0" * 40, 0), replies.callback(base + 3))  # a script it never knew
        assert replies.wait(base + 4)
        assert isinstance(replies.got[base + 3], redis_py.exceptions.NoScriptError)
        assert out.status()["failed"] == 1


def test_each_connection_merges_what_it_writes_with_the_run_id_of_the_redis_it_reached(redis: RedisServer) -> None:
    """``INFO server`` in a new connection's first write: a command queued before Redis restarted and
    written after it is merged with the new Redis' run_id (the history's scripts compare it)."""
    given: list[str] = []

    def recording(commands: list[Mergeable], run_id: str) -> tuple[tuple[Any, ...], Any]:
        given.append(run_id)
        return pushes(commands, run_id)

    def push(value: int) -> Mergeable:
        return Mergeable.of(("RPUSH", "a", value), group="a", merge=recording, weight=1, head=0, budget=100)

    replies = Replies()
    with sender(redis) as out:
        first = redis.run_id()
        with held(out):
            out.submit(push(1), replies.callback(1))
            out.submit(push(2), replies.callback(2))
        assert replies.wait(2) and given == [first]
        redis.kill()
        redis.start()
        number = 3
        for _ in range(3):  # the first write after the restart may find the old connection dead
            with held(out):
                out.submit(push(number), replies.callback(number))
                out.submit(push(number + 1), replies.callback(number + 1))
            assert replies.wait(number + 1)
            if not isinstance(replies.got[number], ConnectionError):
                break
            number += 2
            assert out.wait_connected(True, WAIT)
        assert replies.got[number + 1] == 2 and given[-1] == redis.run_id() != first


def test_a_stopped_redis_blocks_publishers_for_a_bounded_time_and_drops_nothing_silently(redis: RedisServer) -> None:
    """Tiny bounds and a SIGSTOPped Redis: the queue never passes its bound, every command is answered."""
    replies = Replies()
    highest_queue = [0]
    submitted = 400
    with sender(redis, max_commands=5, reply_timeout=300 * MS, connect_timeout=300 * MS) as out:
        out.submit(("PING",), replies.callback(0))
        assert replies.wait(1)
        with stopped(redis):
            def publisher() -> None:
                for number in range(1, submitted):
                    out.submit(("PUBLISH", "ch", b"%d" % number), replies.callback(number))
                    highest_queue[0] = max(highest_queue[0], out.status()["queued"])

            thread = threading.Thread(target=publisher, name="test-publisher")
            thread.start()
            thread.join(30 * WAIT)  # blocked at most a timeout at a time, never for the outage
            assert not thread.is_alive()
            assert replies.wait(submitted, WAIT)
            assert out.wait_connected(False, WAIT)
        assert highest_queue[0] <= 5
        failures = [reply for reply in replies.got.values() if isinstance(reply, Exception)]
        assert failures and all(isinstance(f, ConnectionError) for f in failures)
        status = out.status()
        assert status["blocked"] > 0  # the bound was reached: publishers waited for room
        assert status["sent"] + status["unsent"] + status["failed"] == submitted
        assert status["unsent"] == len(failures)
        # SIGCONT: it reconnects and carries on.
        assert out.wait_connected(True, 10 * WAIT)
        out.submit(("PUBLISH", "ch", b"after"), replies.callback(submitted))
        assert replies.wait(submitted + 1) and replies.got[submitted] == 0  # nobody subscribed, but sent


class WatchedQueue(collections.deque):
    """A sender's queue that records, at each command queued, how many commands and bytes wait with it."""

    def __init__(self) -> None:
        super().__init__()
        self.peaks: list[tuple[int, int]] = []  # (commands, bytes) right after each append; under the sender's lock

    def append(self, item: tuple[Any, ...]) -> None:
        super().append(item)
        self.peaks.append((len(self), sum(size for _, _, size in self)))


def watched(out: RedisSender) -> WatchedQueue:
    """``out``'s queue, watched (before anything is submitted: the sender appends to ``_queue`` only)."""
    assert not out._queue
    queue = out._queue = WatchedQueue()
    return queue


def test_a_small_command_bound_slows_publishers_and_every_command_lands_in_each_threads_order(
        redis: RedisServer) -> None:
    """Redis up, room for 5 commands, 5,000 submits from 4 threads: publishers wait, nothing is lost or reordered."""
    threads, each = 4, 1250
    with sender(redis, max_commands=5) as out:
        queue = watched(out)

        def publisher(name: str) -> None:
            for number in range(each):
                out.submit(("RPUSH", name, number))

        publishers = [threading.Thread(target=publisher, args=(f"t{n}",), name=f"test-publisher-{n}")
                      for n in range(threads)]
        for thread in publishers:
            thread.start()
        for thread in publishers:
            thread.join(10 * WAIT)
        assert not any(thread.is_alive() for thread in publishers)
        assert out.wait_drained(WAIT)
        status = out.status()
        assert status["blocked"] > 0, status  # the bound was reached: publishers waited for room
        assert (status["sent"], status["unsent"], status["failed"], status["queued"]) == (threads * each, 0, 0, 0)
        assert len(queue.peaks) == threads * each and max(commands for commands, _ in queue.peaks) <= 5
        with redis.client() as check:
            for n in range(threads):
                assert check.lrange(f"t{n}", 0, -1) == [b"%d" % number for number in range(each)]


def test_a_stopped_redis_never_lets_the_queued_bytes_pass_their_bound(redis: RedisServer) -> None:
    """A 1,000-byte bound, Redis SIGSTOPped, 3 publishers: what waits is never more than the bound, but for
    one command bigger than it, which waits alone (``submit``: it is let in when nothing else waits)."""
    bound, threads, each = 1000, 3, 100
    replies = Replies()
    with sender(redis, max_bytes=bound, reply_timeout=300 * MS, connect_timeout=300 * MS) as out:
        queue = watched(out)
        out.submit(("PING",), replies.callback(0))
        assert replies.wait(1)
        with stopped(redis):
            def publisher(first: int) -> None:
                for number in range(first, first + each):
                    payload = b"x" * (3 * bound if number % 25 == 0 else 100)  # some bigger than the bound
                    out.submit(("PUBLISH", "ch", payload), replies.callback(number))

            publishers = [threading.Thread(target=publisher, args=(1 + n * each,), name=f"test-publisher-{n}")
                          for n in range(threads)]
            for thread in publishers:
                thread.start()
            for thread in publishers:
                thread.join(30 * WAIT)  # blocked at most a timeout at a time, never for the outage
            assert not any(thread.is_alive() for thread in publishers)
            assert replies.wait(1 + threads * each, WAIT)
        over = [(commands, size) for commands, size in queue.peaks if size > bound and commands > 1]
        assert not over, over
        assert any(size > bound for _, size in queue.peaks)  # a big one did go in, alone
        assert max(size for commands, size in queue.peaks if commands > 1) > bound - 200  # the bound was reached
        status = out.status()
        assert status["blocked"] > 0 and status["unsent"] > 0, status
        assert status["sent"] + status["unsent"] + status["failed"] == 1 + threads * each


def test_a_command_bigger_than_the_byte_bound_goes_alone(redis: RedisServer) -> None:
    replies = Replies()
    with sender(redis, max_bytes=1000) as out:
        for number in range(3):
            out.submit(("SET", f"big{number}", b"x" * 5000), replies.callback(number))
        assert replies.wait(3) and list(replies.got.values()) == [b"OK"] * 3


def test_stop_sends_what_is_queued_and_refuses_what_comes_after(redis: RedisServer) -> None:
    replies = Replies()
    with sender(redis) as out:
        for number in range(100):
            out.submit(("RPUSH", "l", number), replies.callback(number))
        out.stop(WAIT)
        out.submit(("RPUSH", "l", "late"), replies.callback(100))  # answered at once, on this thread
        assert replies.wait(101, 0)
        assert isinstance(replies.got[100], ConnectionError)
        assert [replies.got[n] for n in range(100)] == list(range(1, 101))
        assert out.status()["unsent"] == 1 and out.status()["sent"] == 100


@contextlib.contextmanager
def held(out: RedisSender) -> Iterator[None]:
    """The sender's thread kept busy (in a reply's callback) inside the block: what is submitted
    meanwhile waits in the queue, and leaves in one pipeline once the block ends."""
    inside, release = threading.Event(), threading.Event()

    def hold(_: Any) -> None:
        inside.set()
        assert release.wait(WAIT), "held too long"

    out.submit(("PING",), hold)
    assert inside.wait(WAIT)
    try:
        yield
    finally:
        release.set()


def pushes(commands: list[Mergeable], run_id: str = "") -> tuple[tuple[Any, ...], Any]:
    """Merge RPUSHes to one list into one RPUSH; each part's reply is the length after its own value."""
    values = [command[2] for command in commands]

    def split(reply: Any) -> list[Any]:
        return [reply - len(values) + i for i in range(1, len(values) + 1)]

    return ("RPUSH", commands[0][1], *values), split


def push(key: str, value: Any, weight: int = 1, budget: int = 1000) -> Mergeable:
    return Mergeable.of(("RPUSH", key, value), group=key, merge=pushes, weight=weight, head=0, budget=budget)


def calls(server: RedisServer, command: str) -> int:
    with contextlib.closing(server.client()) as client:
        return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_neighbours_of_one_group_go_as_one_command_and_each_gets_its_own_reply(redis: RedisServer,
                                                                               packing: str) -> None:
    replies = Replies()
    plan: list[Any] = [push("a", 1), push("a", 2), push("b", 3), push("a", 4), ("RPUSH", "a", 5),
                       push("a", 6), push("a", 7), push("a", 8)]
    with sender(redis) as out:
        with held(out):
            for number, command in enumerate(plan):
                out.submit(command, replies.callback(number))
        assert replies.wait(len(plan)) and out.wait_drained(WAIT)
        assert replies.order == list(range(len(plan)))  # in the order submitted, merged or not
        assert [replies.got[n] for n in range(len(plan))] == [1, 2, 1, 3, 4, 5, 6, 7]
        with contextlib.closing(redis.client()) as check:
            assert check.lrange("a", 0, -1) == [b"1", b"2", b"4", b"5", b"6", b"7", b"8"]
            assert check.lrange("b", 0, -1) == [b"3"]
        # [1, 2], [3], [4], 5 (not mergeable: it ends the run), [6, 7, 8]
        assert calls(redis, "rpush") == 5
        assert out.status()["sent"] == len(plan) + 1  # every part counted, the PING too


def test_a_merge_that_fails_sends_its_commands_one_by_one(redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    def broken(commands: list[Mergeable], run_id: str) -> tuple[tuple[Any, ...], Any]:
        raise ValueError("a bug in a merge")

    replies = Replies()
    with sender(redis) as out:
        with held(out):
            for number in range(3):
                out.submit(Mergeable.of(("RPUSH", "a", number), group="a", merge=broken, weight=1, head=0,
                                        budget=100), replies.callback(number))
        assert replies.wait(3) and [replies.got[n] for n in range(3)] == [1, 2, 3]
        assert "merging 3 commands failed" in caplog.text and out.status()["connected"] is True


def test_a_merge_stops_at_its_budget_and_a_refused_merge_fails_every_part(redis: RedisServer) -> None:
    replies = Replies()
    with sender(redis) as out:
        with contextlib.closing(redis.client()) as setup:
            setup.set("s", "a string, where the merged RPUSH wants a list")
        with held(out):
            for number in range(5):  # weights of 400 in a budget of 1000: two at a time
                out.submit(push("a", number, weight=400), replies.callback(number))
            for number in range(5, 8):
                out.submit(push("s", number), replies.callback(number))
        assert replies.wait(8) and out.wait_drained(WAIT)
        assert [replies.got[n] for n in range(5)] == [1, 2, 3, 4, 5]
        assert calls(redis, "rpush") == 4  # [0, 1], [2, 3], [4], and the refused [5, 6, 7]
        assert all(isinstance(replies.got[n], redis_py.exceptions.ResponseError) for n in range(5, 8))
        assert out.status()["failed"] == 3


def test_a_mergeable_without_callback_is_answered_by_its_kind_unless_its_split_settled_it(redis: RedisServer) -> None:
    """``Mergeable.answer`` (a history's publishes without id): nothing is called for a part its merge's split
    gave as ``SETTLED``; the kind's ``answer`` gets every other reply, a refusal, and a submit after stop."""
    answered: list[tuple[Any, Any]] = []
    split_calls: list[int] = []

    def settling(commands: list[Mergeable], run_id: str) -> tuple[tuple[Any, ...], Any]:
        values = [command[2] for command in commands]

        def split(reply: Any) -> list[Any]:
            split_calls.append(len(values))
            return [SETTLED if value % 2 == 0 else reply for value in values]  # odd ones: answered

        return ("RPUSH", commands[0][1], *values), split

    class Answered(Mergeable):
        group = property(lambda self: self[1])
        weight, head, budget, size = 1, 0, 1000, 64
        merge = staticmethod(settling)

        def answer(self, reply: Any) -> None:  # type: ignore[override]
            answered.append((self[2], reply))

    with sender(redis) as out:
        with held(out):
            for value in range(4):
                out.submit(Answered(("RPUSH", "a", value)))
            out.submit(Answered(("RPUSH", "alone", 9)))  # alone: its reply as it came
        with contextlib.closing(redis.client()) as setup:
            setup.set("s", "a string, where RPUSH wants a list")
        out.submit(Answered(("RPUSH", "s", 11)))
        assert out.wait_drained(WAIT)
        assert split_calls == [4]
        assert answered[:2] == [(1, 4), (3, 4)] and answered[2] == (9, 1)
        assert answered[3][0] == 11 and isinstance(answered[3][1], redis_py.exceptions.ResponseError)
        out.stop(WAIT)
        out.submit(Answered(("RPUSH", "a", 13)))  # answered at once, on this thread
        assert answered[4][0] == 13 and isinstance(answered[4][1], ConnectionError) and len(answered) == 5


# --------------------------------------------------------------------------- through hubs


def broker(node: RunningServer) -> RedisBroker:
    found = node.hub.broker
    assert isinstance(found, RedisBroker)
    return found


def payloads(client: Client, count: int) -> list[Any]:
    return [json.loads(client.recv())["payload"] for _ in range(count)]


def test_numbered_publishes_of_connections_and_server_threads_keep_their_order_on_every_node(
        redis: RedisServer) -> None:
    count = 2000
    with nodes(2, redis.url) as (a, b), a.connect() as first, a.connect() as second, \
            b.connect() as far, a.connect() as near:
        for client in (far, near):
            for topic in ("One", "Two", "Three", SENTINEL):
                client.send(encode_subscribe(topic, "s"))
            client.sync()
        pubsub = state_of(a.app).pubsub

        def server_code() -> None:
            for number in range(count):
                pubsub.publish("s", "Three", number, app=a.app)

        thread = threading.Thread(target=server_code, name="test-server-code")
        thread.start()
        for number in range(count):  # two connections and a thread, interleaved as they go
            first.send(encode_publish("One", number, session_id="s"))
            second.send(encode_publish("Two", number, session_id="s"))
        thread.join(10 * WAIT)
        first.sync(), second.sync()
        assert broker(a).wait_sent(WAIT)
        publish_sentinel(redis, "s")
        for client in (far, near):
            got: dict[str, list[int]] = {"One": [], "Two": [], "Three": []}
            for message in read_until_sentinel(client, 4 * count):
                got[message["topic"]].append(message["payload"])
            assert got == {topic: list(range(count)) for topic in got}  # each in order, all, once
        assert broker(a).status()["unsent"] == 0


def test_publishers_go_on_while_redis_is_stopped_and_everything_resumes(redis: RedisServer,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import rusty_ws.brokers.redis_listener as listener_module
    import rusty_ws.brokers.redis_sender as sender_module

    for name, value in dict(POLL_INTERVAL=50 * MS, KEEPALIVE_INTERVAL=200 * MS, KEEPALIVE_TIMEOUT=200 * MS).items():
        monkeypatch.setattr(listener_module, name, value)
    monkeypatch.setattr(sender_module, "REPLY_TIMEOUT", 300 * MS)
    monkeypatch.setattr(sender_module, "CONNECT_TIMEOUT", 300 * MS)
    count = 500
    with nodes(2, redis.url, redis_send_queue=20) as (a, b), a.connect() as publisher, \
            a.connect() as near, b.connect() as far:
        for client in (near, far):
            client.command(encode_subscribe("T", "s"))
        publisher.command(encode_publish("T", "before", session_id="s"))
        assert payloads(near, 1) == payloads(far, 1) == ["before"]
        with stopped(redis):
            for number in range(count):
                publisher.send(encode_publish("T", number, session_id="s"))
            assert publisher.sync() == []  # every publish done, none refused
            assert payloads(near, count) == list(range(count))  # local delivery went on
            status = broker(a).status()["sender"]
            assert status["queued"] <= 20
        assert broker(a).wait_connected(True, 10 * WAIT) and broker(b).wait_connected(True, 10 * WAIT)
        assert broker(a).wait_sent(WAIT)
        status = broker(a).status()["sender"]
        # Each publish sent or counted unsent; those that Redis took reached node b, in order.
        # (With history in Redis, the default, the publish script is loaded as each connection opens,
        # not queued: it is no command of the count.)
        assert status["sent"] + status["unsent"] == count + 1 and status["failed"] == 0
        publisher.command(encode_publish("T", "after", session_id="s"))
        assert near.recv_json()["payload"] == "after"
        reached = []
        for _ in range(count + 1):
            payload = far.recv_json()["payload"]
            if payload == "after":
                break
            reached.append(payload)
        assert reached == sorted(reached) and len(set(reached)) == len(reached)
        # What Redis answered, and what it may have run after SIGCONT from a connection that
        # had timed out by then ("unanswered": counted unsent, but maybe delivered).
        assert len(reached) <= status["sent"] - 1 + status["unanswered"]
        assert a.hub.counts()["connections"] == 2  # nothing crashed


def test_an_ack_waits_for_redis_and_keeps_its_place_among_the_replies(redis: RedisServer) -> None:
    # History off: delivered here at once (with history in Redis, see test_redis_history.py).
    with nodes(2, redis.url, history_size=0) as (a, b), a.connect() as publisher, a.connect() as near, b.connect() as far:
        for client in (near, far):
            client.command(encode_subscribe("T", "s"))
        with stopped(redis):
            publisher.send(encode_publish("T", "held", session_id="s", id="p-1"))
            publisher.send("ping")
            assert near.recv_json()["payload"] == "held"  # delivered here at once
            with pytest.raises(Exception, match="timed out"):
                publisher.recv(200 * MS)  # no ack, and no pong before it, while Redis does not answer
        ack, pong = publisher.recv(), publisher.recv()
        assert ack.startswith("ack:") and json.loads(ack[4:])["id"] == "p-1" and pong == "pong"
        assert far.recv_json()["payload"] == "held"


def test_an_ack_is_unavailable_when_redis_did_not_take_the_publish(redis: RedisServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import rusty_ws.brokers.redis_sender as sender_module

    monkeypatch.setattr(sender_module, "REPLY_TIMEOUT", 300 * MS)
    # History off: delivered here at once (with history in Redis nowhere: test_redis_history.py).
    with nodes(1, redis.url, history_size=0) as (a,), a.connect() as publisher, a.connect() as near:
        near.command(encode_subscribe("T", "s"))
        with stopped(redis):
            replies = publisher.command(encode_publish("T", "lost?", session_id="s", id="p-2"))
        [answer] = replies
        assert answer.startswith("error:")
        error = json.loads(answer[len("error:"):])
        assert error["code"] == "unavailable" and error["id"] == "p-2"
        assert near.recv_json()["payload"] == "lost?"
        # The id was released: a retry once Redis is back is delivered and acknowledged.
        assert broker(a).wait_connected(True, 10 * WAIT)
        [ack] = publisher.command(encode_publish("T", "lost?", session_id="s", id="p-2"))
        assert ack.startswith("ack:") and json.loads(ack[4:])["delivered"] == 1


def test_the_in_memory_broker_acks_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with running_server() as node, node.connect() as publisher:
        replies = publisher.command(encode_publish("T", 1, session_id="s", id="m-1"))
        assert [json.loads(r[4:])["id"] for r in replies] == ["m-1"]


def test_without_history_a_pairs_publishes_go_as_few_publishes_and_arrive_once_in_order(redis: RedisServer) -> None:
    count = 500
    with nodes(2, redis.url, history_size=0) as (a, b), a.connect() as publisher, a.connect() as near, \
            b.connect() as far:
        for client in (far, near):
            for topic in ("T", "U", SENTINEL):
                client.send(encode_subscribe(topic, "s"))
            client.sync()
        before = calls(redis, "publish")
        for number in range(count):  # runs of T, broken by a U now and then
            publisher.send(encode_publish("U" if number % 50 == 49 else "T", number, session_id="s"))
        publisher.sync()
        assert broker(a).wait_sent(WAIT)
        merged = calls(redis, "publish") - before
        publish_sentinel(redis, "s")
        for client in (far, near):  # near: delivered when published, its envelopes from Redis dropped
            got: dict[str, list[int]] = {"T": [], "U": []}
            for message in read_until_sentinel(client, 2 * count):
                got[message["topic"]].append(message["payload"])
            assert got == {"T": [n for n in range(count) if n % 50 != 49], "U": list(range(49, count, 50))}
        assert 20 <= merged < count  # at least one per U and per run of T before it; fewer than one each
        assert broker(a).status()["unsent"] == 0 and broker(b).status()["dropped"] == 0


def test_a_run_within_the_budget_by_its_queued_sizes_is_merged_without_reading_weights() -> None:
    """``_coalesce``: a ``Mergeable``'s size is at least its weight, so sizes that fit the budget settle it in one
    sum; past that, the weights decide, one by one (here they fit where the sizes do not)."""
    from rusty_ws.brokers.redis_sender import _coalesce

    class Counted(Mergeable):
        __slots__ = ()
        group, head, budget, merge = "a", 0, 1000, staticmethod(pushes)

        @property
        def weight(self) -> int:  # type: ignore[override]
            reads.append(self[2])
            return 100

    reads: list[int] = []

    def batch(size: int) -> list[tuple[tuple[Any, ...], Any, int]]:
        return [(Counted(("RPUSH", "a", number)), None, size) for number in range(5)]

    commands, spans = _coalesce(batch(200))  # 4 x 200 within the 900 left after the first
    assert commands == [("RPUSH", "a", 0, 1, 2, 3, 4)] and [count for count, _ in spans] == [5]
    assert reads == [0]  # the first's only (the room left after it)
    commands, _ = _coalesce(batch(300))  # 4 x 300 > 900: by the weights, 4 x 100
    assert commands == [("RPUSH", "a", 0, 1, 2, 3, 4)] and reads == [0, 0, 1, 2, 3, 4]
    assert Mergeable.of(("RPUSH", "a", 1), group="a", merge=pushes, weight=500, head=0, budget=1000).size == 500
