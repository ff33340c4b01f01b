"""History on the wire: subscribe-json, history, acknowledged and idempotent publishes, against a real hub."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from rusty_ws.history import IdempotencyTable
from rusty_ws.protocol import (
    Ack,
    HistoryReply,
    Since,
    Subscribed,
    encode_history,
    encode_publish,
    encode_subscribe,
    encode_subscribe_json,
)
from support import WAIT, Client, RunningServer, http, running_server


def reply_of(replies: list[str], prefix: str) -> str:
    [reply] = [text for text in replies if text.startswith(prefix)]
    return reply


def error_code(replies: list[str]) -> dict[str, Any]:
    [reply] = replies
    assert reply.startswith("error:"), reply
    return json.loads(reply[len("error:"):])


def publish_numbers(client: Client, count: int, start: int = 1, session: str = "s", topic: str = "T") -> None:
    for n in range(start, start + count):
        client.send(encode_publish(topic, n, session_id=session))
    client.sync()


def deliveries(texts: list[str]) -> list[dict[str, Any]]:
    return [json.loads(text) for text in texts if text.startswith("{")]


def subscribe_json(client: Client, topic: str = "T", session: str = "s", since: Since | None = None
                   ) -> tuple[list[dict[str, Any]], Subscribed]:
    """Subscribe; return the replayed deliveries (those before the reply) and the reply."""
    client.send(encode_subscribe_json(topic, session, since))
    replayed = []
    for _ in range(100_000):
        text = client.recv()
        if text.startswith("subscribed:"):
            return replayed, Subscribed.parse(text)
        assert text.startswith("{"), text
        replayed.append(json.loads(text))
    raise AssertionError("no subscribed: reply")


class TestSubscribeJson:
    def test_answers_once_active_with_the_streams_position(self, server: RunningServer) -> None:
        with server.connect() as sub, server.connect() as pub:
            replayed, reply = subscribe_json(sub)
            assert replayed == [] and reply.offset == 0 and reply.recovered is None and reply.epoch
            assert "recovered" not in sub.command(encode_subscribe_json("T", "s"))[0]
            publish_numbers(pub, 2)
            got = deliveries(sub.sync())
            assert [m["offset"] for m in got] == [1, 2] and {m["epoch"] for m in got} == {reply.epoch}
            assert list(got[0])[-2:] == ["offset", "epoch"]

    def test_resume_replays_exactly_what_was_missed_then_goes_live(self, server: RunningServer) -> None:
        with server.connect() as pub:
            with server.connect() as sub:
                _, reply = subscribe_json(sub)
                publish_numbers(pub, 3)
                last = deliveries(sub.sync())[-1]
            publish_numbers(pub, 5, start=4)   # while the subscriber is away
            with server.connect() as back:
                replayed, again = subscribe_json(back, since=Since(last["offset"], last["epoch"]))
                assert [m["payload"] for m in replayed] == [4, 5, 6, 7, 8]
                assert again.recovered is True and again.offset == 8 and again.epoch == reply.epoch
                publish_numbers(pub, 1, start=9)
                assert [m["offset"] for m in deliveries(back.sync())] == [9]

    def test_an_unknown_epoch_replays_nothing_and_is_not_an_error(self, server: RunningServer) -> None:
        with server.connect() as pub, server.connect() as sub:
            publish_numbers(pub, 3)
            replayed, reply = subscribe_json(sub, since=Since(1, "an-epoch-from-elsewhere"))
            assert replayed == [] and reply.recovered is False and reply.offset == 3

    def test_an_offset_past_the_top_in_the_streams_epoch_is_refused(self, server: RunningServer) -> None:
        with server.connect() as sub:
            _, reply = subscribe_json(sub)
            error = error_code(sub.command(encode_subscribe_json("T", "s", Since(5, reply.epoch))))
            assert error["code"] == "invalid_since" and error["command"] == "subscribe-json"
            assert server.hub.counts()["subscriptions"] == 1  # the earlier subscription, unchanged

    def test_a_smaller_history_than_the_gap_replays_what_remains(self) -> None:
        with running_server(history_size=10) as server, server.connect() as pub, server.connect() as sub:
            _, _reply = subscribe_json(sub, topic="Other")  # the stream of T starts with its first message
            publish_numbers(pub, 25)
            epoch = server.hub.history.top(("T", "s")).epoch
            replayed, again = subscribe_json(sub, since=Since(3, epoch))
            assert [m["offset"] for m in replayed] == list(range(16, 26)) and again.recovered is False

    def test_subscribing_again_replays_again_and_still_delivers_once(self, server: RunningServer) -> None:
        with server.connect() as pub, server.connect() as sub:
            _, reply = subscribe_json(sub)
            publish_numbers(pub, 2)
            assert len(deliveries(sub.sync())) == 2
            replayed, again = subscribe_json(sub, since=Since(0, reply.epoch))
            assert [m["offset"] for m in replayed] == [1, 2] and again.recovered is True
            publish_numbers(pub, 1, start=3)
            assert [m["offset"] for m in deliveries(sub.sync())] == [3]
            assert server.hub.counts()["subscriptions"] == 1

    def test_a_replay_too_big_for_the_outbox_is_cut_short_not_a_slow_consumer(self) -> None:
        with running_server(history_size=100, max_queued_bytes=64 * 1024, max_message_size=32 * 1024) as server, \
                server.connect() as pub, server.connect() as sub:
            _, _reply = subscribe_json(sub, topic="Other")
            for n in range(30):
                pub.send(encode_publish("T", {"n": n, "pad": "x" * 4000}, session_id="s"))
            pub.sync()
            epoch = server.hub.history.top(("T", "s")).epoch
            replayed, again = subscribe_json(sub, since=Since(0, epoch))
            assert again.recovered is False and 0 < len(replayed) < 30
            assert [m["offset"] for m in replayed] == list(range(1, len(replayed) + 1))  # no hole inside
            assert sub.command("ping") == []  # pong: still open


class TestHistoryCommand:
    def test_the_last_messages_oldest_first(self, server: RunningServer) -> None:
        with server.connect() as client:
            publish_numbers(client, 5)
            reply = HistoryReply.parse(reply_of(client.command(encode_history("T", "s", limit=3)), "history:"))
            assert [m.payload for m in reply.messages] == [3, 4, 5]
            assert reply.offset == 5 and [m.offset for m in reply.messages] == [3, 4, 5]
            assert server.hub.counts()["subscriptions"] == 0  # it does not subscribe

    def test_since_pages_forward(self, server: RunningServer) -> None:
        with server.connect() as client:
            publish_numbers(client, 6)
            first = HistoryReply.parse(client.command(encode_history("T", "s", limit=1))[0])
            page = HistoryReply.parse(client.command(encode_history("T", "s", 2, Since(2, first.epoch)))[0])
            assert [m.payload for m in page.messages] == [3, 4]
            other = HistoryReply.parse(client.command(encode_history("T", "s", 2, Since(2, "old")))[0])
            assert other.messages == []

    def test_a_history_query_starts_a_stream_to_subscribe_from(self, server: RunningServer) -> None:
        with server.connect() as client, server.connect() as pub:
            empty = HistoryReply.parse(client.command(encode_history("New", "s"))[0])
            assert empty.offset == 0 and empty.messages == []
            publish_numbers(pub, 2, topic="New")
            replayed, reply = subscribe_json(client, topic="New", since=Since(0, empty.epoch))
            assert [m["payload"] for m in replayed] == [1, 2] and reply.recovered is True

    def test_a_reply_is_capped_in_bytes_and_paging_reads_every_message_once(self) -> None:
        # Each message ~4 KiB, 30 of them: 120 KiB, over the 48 KiB one reply may hold here.
        with running_server(history_size=100, max_queued_bytes=64 * 1024, max_message_size=32 * 1024) as server, \
                server.connect() as client:
            for n in range(1, 31):
                client.send(encode_publish("T", {"n": n, "pad": "x" * 4000}, session_id="s"))
            last = HistoryReply.parse(client.command(encode_history("T", "s"))[0])
            newest = [m.payload["n"] for m in last.messages]
            assert 1 < len(newest) < 30 and newest == list(range(31 - len(newest), 31))  # the last ones
            assert sum(len(json.dumps(m.payload)) for m in last.messages) <= 48 * 1024
            pages, since = [], Since(0, last.epoch)
            for _ in range(30):  # bounded: every page moves forward by at least one
                page = HistoryReply.parse(client.command(encode_history("T", "s", since=since))[0])
                if not page.messages:
                    break
                assert len(page.messages) < 30
                pages += [m.payload["n"] for m in page.messages]
                since = Since(page.messages[-1].offset, page.epoch)
            assert pages == list(range(1, 31))
            assert client.command("ping") == []  # pong: the connection was never a slow consumer

    def test_limit_is_capped_at_the_history_size(self) -> None:
        with running_server(history_size=4) as server, server.connect() as client:
            publish_numbers(client, 9)
            reply = HistoryReply.parse(client.command(encode_history("T", "s", limit=1000))[0])
            assert [m.payload for m in reply.messages] == [6, 7, 8, 9]


class TestAcknowledgements:
    def test_an_id_is_acknowledged_with_its_offset(self, server: RunningServer) -> None:
        with server.connect() as client:
            [ack] = client.command(encode_publish("T", 1, session_id="s", id="m-1"))
            assert Ack.parse(ack) == Ack("m-1", 1, server.hub.history.top(("T", "s")).epoch, delivered=0)
            assert client.command(encode_publish("T", 2, session_id="s")) == []  # no id, no ack

    def test_the_ack_says_how_many_subscribers_it_was_handed_to(self, server: RunningServer) -> None:
        with server.connect() as one, server.connect() as two, server.connect() as elsewhere, \
                server.connect() as pub:
            for client, session in ((one, "s"), (two, "s"), (elsewhere, "other")):
                client.command(encode_subscribe("T", session))
            [raw] = pub.command(encode_publish("T", "hi", session_id="s", id="m-1"))
            assert json.loads(raw[len("ack:"):]) == {"id": "m-1", "offset": 1,
                                                     "epoch": server.hub.history.top(("T", "s")).epoch,
                                                     "delivered": 2}
            assert pub.command(encode_publish("T", "hi", session_id="s", id="m-1")) == [raw]  # a repeat: the same
            two.close()
            server.wait_connections(3)
            assert Ack.parse(pub.command(encode_publish("T", "again", session_id="s", id="m-2"))[0]).delivered == 1
            # a hub that does not say (an older one) parses to None
            assert Ack.parse('ack:{"id":"m-3","offset":3,"epoch":"e"}') == Ack("m-3", 3, "e", None)

    def test_the_same_id_twice_is_delivered_once_with_one_offset(self, server: RunningServer) -> None:
        with server.connect() as sub, server.connect() as pub:
            sub.command(encode_subscribe("T", "s"))
            acks = [Ack.parse(pub.command(encode_publish("T", "once", session_id="s", id="dup"))[0])
                    for _ in range(2)]
            other_topic = Ack.parse(pub.command(encode_publish("U", "x", session_id="s", id="dup"))[0])
            assert acks[0] == acks[1] == other_topic and acks[0].offset == 1
            assert [m["payload"] for m in deliveries(sub.sync())] == ["once"]

    def test_ids_are_per_session(self, server: RunningServer) -> None:
        with server.connect() as pub:
            first = Ack.parse(pub.command(encode_publish("T", 1, session_id="a", id="same"))[0])
            second = Ack.parse(pub.command(encode_publish("T", 1, session_id="b", id="same"))[0])
            assert first.offset == second.offset == 1 and first.epoch != second.epoch

    def test_an_id_reused_after_the_window_is_a_new_message(self, server: RunningServer) -> None:
        now = [0.0]
        server.hub.publish_ids = IdempotencyTable(10.0, 1000, clock=lambda: now[0])
        with server.connect() as sub, server.connect() as pub:
            sub.command(encode_subscribe("T", "s"))
            first = Ack.parse(pub.command(encode_publish("T", "a", session_id="s", id="k"))[0])
            now[0] = 9.0
            assert Ack.parse(pub.command(encode_publish("T", "b", session_id="s", id="k"))[0]) == first
            now[0] = 10.5
            later = Ack.parse(pub.command(encode_publish("T", "c", session_id="s", id="k"))[0])
            assert later.offset == first.offset + 1
            assert [m["payload"] for m in deliveries(sub.sync())] == ["a", "c"]

    def test_an_error_reply_to_a_publish_carries_its_id(self, server: RunningServer) -> None:
        token = server.token("alice", "session-alice")
        with server.connect(token) as client:
            error = error_code(client.command(encode_publish("T", 1, session_id="session-bob", id="x-1")))
            assert error["code"] == "forbidden_session" and error["id"] == "x-1"
            error = error_code(client.command('publish-json:{"topic": "a|b", "id": "x-2"}'))
            assert error["code"] == "invalid_topic" and error["id"] == "x-2"

    def test_concurrent_repeats_of_one_id_deliver_once(self, server: RunningServer) -> None:
        with server.connect() as sub:
            sub.command(encode_subscribe("T", "s"))
            publishers = [server.connect() for _ in range(6)]
            acks: list[Ack] = []
            lock = threading.Lock()

            def run(client: Client) -> None:
                replies = client.command(encode_publish("T", "race", session_id="s", id="one"))
                with lock:
                    acks.append(Ack.parse(replies[0]))

            threads = [threading.Thread(target=run, args=(client,)) for client in publishers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
            for client in publishers:
                client.close()
            assert len(acks) == 6 and len(set(acks)) == 1
            assert len(deliveries(sub.sync())) == 1


def test_a_repeat_waits_for_the_first_and_takes_over_when_it_fails(server: RunningServer) -> None:
    """The first publish of an id fails in the broker while a repeat waits: the repeat is delivered."""
    real_publish = server.hub.broker.publish
    entered, fail = threading.Event(), threading.Event()

    def failing_once(delivery, on_landed=None):
        if delivery.payload == "first":
            entered.set()
            assert fail.wait(WAIT)
            raise RuntimeError("the broker lost it")
        return real_publish(delivery, on_landed)

    server.hub.broker.publish = failing_once  # type: ignore[method-assign]
    with server.connect() as sub, server.connect() as first, server.connect() as repeat:
        sub.command(encode_subscribe("T", "s"))
        first.send(encode_publish("T", "first", session_id="s", id="same"))
        assert entered.wait(WAIT)
        repeat.send(encode_publish("T", "repeat", session_id="s", id="same"))
        answers: list[str] = []
        waiter = threading.Thread(target=lambda: answers.extend(repeat.sync()))
        waiter.start()
        fail.set()
        waiter.join(WAIT)
        assert [Ack.parse(text).offset for text in answers] == [1]
        assert [m["payload"] for m in deliveries(sub.sync())] == ["repeat"]
        assert first.recv_close()[0] == 1011  # the failure was the hub's: that connection is ended


BAD_INPUT = [
    ("subscribe-json:not json", "invalid_json"),
    ("subscribe-json:[1]", "invalid_message"),
    ('subscribe-json:{"session_id": "s"}', "missing_topic"),
    ('subscribe-json:{"topic": 7}', "invalid_topic"),
    ('subscribe-json:{"topic": "a|b"}', "invalid_topic"),
    ('subscribe-json:{"topic": "T", "session_id": 3}', "invalid_session"),
    ('subscribe-json:{"topic": "T", "since": "5"}', "invalid_since"),
    ('subscribe-json:{"topic": "T", "since": {"offset": 5}}', "invalid_since"),
    ('subscribe-json:{"topic": "T", "since": {"offset": -1, "epoch": "e"}}', "invalid_since"),
    ('subscribe-json:{"topic": "T", "since": {"offset": 9007199254740992, "epoch": "e"}}', "invalid_since"),
    ('subscribe-json:{"topic": "T", "since": {"offset": 1.5, "epoch": "e"}}', "invalid_since"),
    ('subscribe-json:{"topic": "T", "since": {"offset": true, "epoch": "e"}}', "invalid_since"),
    ('subscribe-json:{"topic": "T", "since": {"offset": 1, "epoch": ""}}', "invalid_since"),
    ('subscribe-json:{"topic": "T", "since": {"offset": 1, "epoch": 7}}', "invalid_since"),
    ('subscribe-json:{"topic": "T", "since": {"offset": 1, "epoch": "e", "x": 1}}', "invalid_since"),
    ('subscribe-json:{"topic": "T", "since": {"offset": 1, "epoch": "' + "e" * 257 + '"}}', "invalid_since"),
    ('history:{"topic": "T", "limit": 0}', "invalid_limit"),
    ('history:{"topic": "T", "limit": -3}', "invalid_limit"),
    ('history:{"topic": "T", "limit": "3"}', "invalid_limit"),
    ('history:{"topic": "T", "limit": true}', "invalid_limit"),
    ('history:{"topic": "T", "since": {"offset": "1", "epoch": "e"}}', "invalid_since"),
    ("history:", "invalid_json"),
    ('publish-json:{"topic": "T", "id": ""}', "invalid_id"),
    ('publish-json:{"topic": "T", "id": 7}', "invalid_id"),
    ('publish-json:{"topic": "T", "id": ["a"]}', "invalid_id"),
    ('publish-json:{"topic": "T", "id": "' + "i" * 129 + '"}', "invalid_id"),
]


@pytest.mark.parametrize("text, code", BAD_INPUT)
def test_bad_input_gets_its_error_and_the_connection_goes_on(server: RunningServer, text: str, code: str) -> None:
    with server.connect() as bystander, server.connect() as client:
        bystander.command(encode_subscribe("T"))
        error = error_code(client.command(text))
        assert error["code"] == code and "id" not in error
        client.send(encode_publish("T", "still here"))
        assert bystander.recv_json()["payload"] == "still here"
    assert server.hub.counts()["subscriptions"] in (0, 1)


def test_a_null_id_counts_as_absent(server: RunningServer) -> None:
    with server.connect() as client:
        assert client.command('publish-json:{"topic": "T", "id": null}') == []


class TestSessions:
    def test_a_bound_token_cannot_read_or_recover_another_session(self, server: RunningServer) -> None:
        token = server.token("alice", "session-alice")
        with server.connect() as anonymous:
            publish_numbers(anonymous, 3, session="session-bob")
        with server.connect(token) as client:
            for text in [encode_history("T", "session-bob"),
                         encode_subscribe_json("T", "session-bob", Since(0, "x"))]:
                assert error_code(client.command(text))["code"] == "forbidden_session"
            own = HistoryReply.parse(client.command(encode_history("T"))[0])  # its own session
            assert own.session_id == "session-alice" and own.messages == []
        assert server.hub.counts()["subscriptions"] == 0

    def test_anonymous_connections_read_the_session_they_name(self, server: RunningServer) -> None:
        with server.connect() as writer, server.connect() as reader:
            publish_numbers(writer, 2, session="s1")
            publish_numbers(writer, 1, session="s2", start=10)
            assert [m.payload for m in HistoryReply.parse(reader.command(encode_history("T", "s1"))[0]).messages] \
                == [1, 2]
            reader.command("register-session:s2")
            assert [m.payload for m in HistoryReply.parse(reader.command(encode_history("T"))[0]).messages] == [10]


class RacingPublisher:
    """Publishes 100 numbers at a time on its own thread while subscribers come in.

    ``start()`` returns once the first batch is in the stream, and ``stop()`` returns after one more
    batch, so a subscribe made between the two lands strictly between offset 10 and the last offset
    however the threads are scheduled (on two busy workers, every subscribe once came before the
    publisher's first batch, and once after its last). ``publish_batch(first)`` publishes
    ``first .. first + 99`` and returns when they are in the stream."""

    def __init__(self, publish_batch: Callable[[int], None], most: int) -> None:
        self.published = 10
        self._publish_batch, self._batches = publish_batch, most // 100 - 2
        self._started, self._stopping = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-racing-publisher")

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(WAIT), "the first batch did not land"

    def stop(self) -> int:
        """Publish one batch more, wait for the thread; return the last number published."""
        self._stopping.set()
        self._thread.join(10 * WAIT)
        assert not self._thread.is_alive(), "the publisher did not finish"
        return self.published

    def _batch(self) -> None:
        self._publish_batch(self.published + 1)
        self.published += 100

    def _run(self) -> None:
        self._batch()
        self._started.set()
        for _ in range(self._batches):
            if self._stopping.is_set():
                break
            self._batch()
        self._stopping.wait(10 * WAIT)
        self._batch()


def test_publishes_racing_a_resume_land_exactly_once() -> None:
    """Publishes race subscribe-json with since: replay + live is every offset once, in order."""
    most = 2000
    with running_server(history_size=most) as server, server.connect() as pub:
        publish_numbers(pub, 10)
        epoch = server.hub.history.top(("T", "s")).epoch
        subscribers = [server.connect() for _ in range(4)]
        publisher = RacingPublisher(lambda first: publish_numbers(pub, 100, start=first), most)
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
            live = []
            for _ in range(total):
                if (live and live[-1]["offset"] == total) or reply.offset == total:
                    break
                live.append(sub.recv_json())
            seen = [m["offset"] for m in replayed] + [m["offset"] for m in live]
            assert seen == list(range(index + 1, total + 1)), f"subscriber {index}: a gap or a repeat"
            assert all(m["offset"] <= reply.offset for m in replayed)
            assert reply.recovered is True
            boundaries.add(reply.offset)
            sub.close()
        assert any(10 < boundary < total for boundary in boundaries), "no subscribe raced the publishes"


def test_retained_bytes_stay_under_the_bound() -> None:
    bound = 64 * 1024
    with running_server(history_size=1000, history_max_bytes=bound) as server, server.connect() as pub:
        for n in range(600):
            pub.send(encode_publish(f"T{n % 5}", {"n": n, "pad": "y" * 900}, session_id="s"))
        pub.sync()
        _, _, health = http("GET", server.http_url + "/healthz")
        assert 0.8 * bound < health["history_bytes"] <= bound
        assert health["history_messages"] < 100 and health["history_streams"] == 5


def test_history_off_is_the_seeds_protocol_plus_answers() -> None:
    with running_server(history_size=0) as server, server.connect() as sub, server.connect() as pub:
        sub.send(encode_subscribe_json("T", "s", Since(3, "e")))
        reply = sub.recv()
        assert json.loads(reply[len("subscribed:"):]) == {"topic": "T", "session_id": "s", "recovered": False}
        [raw] = pub.command(encode_publish("T", 1, session_id="s", id="k"))
        assert json.loads(raw[len("ack:"):]) == {"id": "k", "delivered": 1}
        assert pub.command(encode_publish("T", 2, session_id="s", id="k")) == [raw]  # a repeat: not delivered
        got = deliveries(sub.sync())
        assert len(got) == 1 and "offset" not in got[0] and "epoch" not in got[0]
        history = json.loads(pub.command(encode_history("T", "s"))[0][len("history:"):])
        assert history == {"topic": "T", "session_id": "s", "messages": []}
        _, _, health = http("GET", server.http_url + "/healthz")
        assert health["history_streams"] == health["history_messages"] == health["history_bytes"] == 0


def test_a_restarted_hub_has_new_epochs_and_says_recovery_failed() -> None:
    with running_server() as first, first.connect() as client:
        _, reply = subscribe_json(client)
        publish_numbers(client, 3)
        port = first.port
    with running_server(port=port) as second, second.connect() as client:
        replayed, again = subscribe_json(client, since=Since(3, reply.epoch))
        assert replayed == [] and again.recovered is False and again.epoch != reply.epoch and again.offset == 0
