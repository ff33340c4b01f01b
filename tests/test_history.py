"""The pure history core: offsets, epochs, retention, replay and idempotency, on a fake clock."""

from __future__ import annotations

import json

import pytest

from rusty_ws.history import History, IdempotencyTable, Position, within_bytes
from rusty_ws.protocol import with_position

KEY = ("T", "s")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def message(position: Position, size: int = 0) -> bytes:
    return json.dumps({"n": position.offset, "pad": "x" * size, "epoch": position.epoch}).encode()


def offsets(messages: list[bytes]) -> list[int]:
    return [json.loads(data)["n"] for data in messages]


def make(size: int = 100, ttl: float = 300.0, max_bytes: int = 1 << 30, subscribed: set | None = None,
         prefix: str = "p-") -> tuple[History, Clock]:
    clock = Clock()
    chosen = subscribed if subscribed is not None else set()
    return History(size, ttl, max_bytes, is_subscribed=chosen.__contains__, clock=clock,
                   epoch_prefix=prefix), clock


def publish(history: History, count: int, key=KEY, size: int = 0) -> list[Position]:
    return [history.append(key, lambda p: message(p, size))[0] for _ in range(count)]


class TestOffsetsAndEpochs:
    def test_offsets_count_from_one_without_gaps(self) -> None:
        history, _ = make()
        assert [p.offset for p in publish(history, 5)] == [1, 2, 3, 4, 5]
        assert history.top(KEY) == Position(5, "p-1")

    def test_each_stream_has_its_own_offsets_and_epoch(self) -> None:
        history, _ = make()
        publish(history, 3)
        [other] = publish(history, 1, key=("T", "other"))
        assert other == Position(1, "p-2")

    def test_two_processes_never_share_an_epoch(self) -> None:
        first = History(10, 60, 1 << 20)
        second = History(10, 60, 1 << 20)
        assert first.touch(KEY).epoch != second.touch(KEY).epoch

    def test_a_subscription_starts_a_stream_at_offset_zero(self) -> None:
        history, _ = make()
        assert history.top(KEY) is None
        assert history.touch(KEY) == Position(0, "p-1")

    def test_stored_bytes_are_what_encode_made(self) -> None:
        history, _ = make()
        _position, data = history.append(KEY, lambda p: b"<%d %s>" % (p.offset, p.epoch.encode()))
        assert data == b"<1 p-1>"
        assert history.read(KEY).messages == [data]


class TestRetention:
    def test_a_stream_keeps_its_last_size_messages(self) -> None:
        history, _ = make(size=3)
        publish(history, 10)
        assert offsets(history.read(KEY).messages) == [8, 9, 10]
        assert history.counts()["history_messages"] == 3

    def test_messages_older_than_the_ttl_are_never_returned(self) -> None:
        history, clock = make(ttl=10)
        publish(history, 2)
        clock.now += 5
        publish(history, 1)
        clock.now += 5.5  # the first two are 10.5 s old, the third 5.5 s
        assert offsets(history.read(KEY).messages) == [3]
        assert history.counts()["history_messages"] == 1

    def test_the_byte_bound_drops_the_oldest_of_any_stream(self) -> None:
        history, _ = make(max_bytes=1000)
        publish(history, 3, key=("A", "s"), size=200)   # ~230 bytes each
        publish(history, 3, key=("B", "s"), size=200)
        counts = history.counts()
        assert counts["history_bytes"] <= 1000
        assert offsets(history.read(("A", "s")).messages) == [3]
        assert offsets(history.read(("B", "s")).messages) == [1, 2, 3]

    def test_bytes_and_counts_stay_exact_through_every_kind_of_drop(self) -> None:
        history, clock = make(size=50, ttl=30, max_bytes=40_000)
        kept: dict[tuple[str, str], list[bytes]] = {}
        for round_ in range(200):
            key = (f"T{round_ % 7}", "s")
            history.append(key, lambda p, pad=round_ % 300: message(p, size=pad))
            clock.now += 0.4
        total = 0
        for topic in range(7):
            kept[(f"T{topic}", "s")] = history.read((f"T{topic}", "s")).messages
            total += sum(len(data) for data in kept[(f"T{topic}", "s")])
        counts = history.counts()
        assert counts["history_bytes"] == total <= 40_000
        assert counts["history_messages"] == sum(len(v) for v in kept.values())

    def test_many_drops_do_not_grow_the_global_order(self) -> None:
        history, _ = make(size=1)
        publish(history, 50_000)
        assert len(history._order) < 3000  # compacted, not 50,000 dead entries

    def test_an_unsubscribed_stream_disappears_after_the_ttl_and_returns_with_a_new_epoch(self) -> None:
        history, clock = make(ttl=10)
        publish(history, 2)
        clock.now += 10.5
        assert history.counts()["history_streams"] == 0
        assert history.touch(KEY) == Position(0, "p-2")

    def test_a_subscribed_stream_lives_on_and_keeps_counting(self) -> None:
        subscribed = {KEY}
        history, clock = make(ttl=10, subscribed=subscribed)
        publish(history, 2)
        clock.now += 60
        assert history.counts() == {"history_streams": 1, "history_messages": 0, "history_bytes": 0}
        assert publish(history, 1) == [Position(3, "p-1")]
        subscribed.clear()
        history.unsubscribed(KEY)
        clock.now += 9
        assert history.counts()["history_streams"] == 1  # idle for 9 s only
        clock.now += 2
        assert history.counts()["history_streams"] == 0

    def test_a_message_keeps_an_unsubscribed_stream_alive(self) -> None:
        history, clock = make(ttl=10)
        history.touch(KEY)
        clock.now += 8
        publish(history, 1)
        clock.now += 8  # 16 s since the stream was made, 8 s since its message
        assert history.top(KEY) == Position(1, "p-1")


class TestAppendDelivery:
    """``append_delivery``, the hub's path, against ``append`` and against a plain model of the bounds."""

    def test_offset_and_epoch_are_the_last_keys_of_the_kept_bytes(self) -> None:
        history, _ = make()
        history.append_delivery(KEY, b'{"topic":"T","payload":1}')
        position, data = history.append_delivery(KEY, b'{"topic":"T","payload":2}')
        assert position == Position(2, "p-1")
        assert data == b'{"topic":"T","payload":2,"offset":2,"epoch":"p-1"}'
        assert list(json.loads(data)) == ["topic", "payload", "offset", "epoch"]
        assert history.read(KEY, Position(1, "p-1")).messages == [data]

    def test_it_keeps_what_append_keeps_and_what_a_plain_model_keeps(self) -> None:
        """Per-stream size, the global byte bound and the dropped slots of the global order, step by step."""
        fast, _ = make(size=5, max_bytes=3000)
        slow, _ = make(size=5, max_bytes=3000)
        model: dict[tuple[str, str], list[tuple[int, int, bytes]]] = {}  # key -> [(sequence, offset, data)]
        tops: dict[tuple[str, str], int] = {}
        for step in range(3000):
            key = (f"T{(step * 7919) % 5 if step % 11 else 0}", "s")
            encoded = b'{"n":%d,"pad":"%s"}' % (step, b"x" * ((step * 31) % 200))
            position, data = fast.append_delivery(key, encoded)
            assert slow.append(key, lambda p, encoded=encoded: with_position(encoded, p.offset, p.epoch)) == (position,
                                                                                                              data)
            tops[key] = tops.get(key, 0) + 1
            assert position.offset == tops[key]
            model.setdefault(key, []).append((step, position.offset, data))
            if len(model[key]) > 5:
                model[key].pop(0)
            while sum(len(d) for entries in model.values() for _, _, d in entries) > 3000:
                oldest = min((entries[0][0], k) for k, entries in model.items() if entries)[1]
                model[oldest].pop(0)
            if step % 97 == 0 or step > 2950:
                for k, entries in model.items():
                    expected = [d for _, _, d in entries]
                    assert fast.read(k).messages == expected == slow.read(k).messages
                    since = Position(entries[0][1] - 1, fast.top(k).epoch) if entries else None
                    if since is not None:
                        assert fast.read(k, since).recovered == slow.read(k, since).recovered
                expected_bytes = sum(len(d) for entries in model.values() for _, _, d in entries)
                assert fast.counts() == slow.counts() == {
                    "history_streams": len(model), "history_messages": sum(len(e) for e in model.values()),
                    "history_bytes": expected_bytes}
        assert len(fast._order) < 3000  # dropped slots were compacted away

    def test_a_stream_that_disappears_leaves_the_others_exact(self) -> None:
        history, clock = make(size=3, ttl=10)
        for _ in range(10):  # 7 dropped slots of A wait in the global order
            history.append_delivery(("A", "s"), b'{"a":1}')
        clock.now += 11  # A expires and disappears
        history.append_delivery(("B", "s"), b'{"b":1}')
        assert history.counts() == {"history_streams": 1, "history_messages": 1,
                                    "history_bytes": len(b'{"b":1,"offset":1,"epoch":"p-2"}')}
        for _ in range(5):
            history.append_delivery(("B", "s"), b'{"b":1}')
        assert [json.loads(d)["offset"] for d in history.read(("B", "s")).messages] == [4, 5, 6]
        assert history.append_delivery(("A", "s"), b'{"a":1}')[0] == Position(1, "p-3")  # a new epoch


class TestAppendRun:
    """``append_run``, the hub's path for a run of one stream: exactly ``append_delivery`` of each in turn
    at one reading of the clock (the ttl is positive, as config.py checks)."""

    @pytest.mark.parametrize("size, ttl, max_bytes", [(100, 300.0, 1 << 30), (5, 300.0, 3000), (3, 1.0, 1 << 30),
                                                     (1, 300.0, 150)])
    def test_it_keeps_and_returns_what_append_delivery_does(self, size: int, ttl: float, max_bytes: int) -> None:
        runs, run_clock = make(size=size, ttl=ttl, max_bytes=max_bytes)
        ones, ones_clock = make(size=size, ttl=ttl, max_bytes=max_bytes)
        step = 0
        for round_ in range(200):
            key = (f"T{(round_ * 7919) % 4 if round_ % 5 else 0}", "s")
            length = 1 + (round_ * 13) % 9
            encoded = [b'{"n":%d,"pad":"%s"}' % (step + i, b"x" * (((step + i) * 31) % 90)) for i in range(length)]
            step += length
            kept = runs.append_run(key, len(encoded), lambda first, epoch, encoded=encoded: [
                with_position(text, offset, epoch) for offset, text in enumerate(encoded, first)])
            assert kept == [ones.append_delivery(key, text)[1] for text in encoded]
            assert runs.top(key) == ones.top(key)
            assert runs.counts() == ones.counts()
            for k in {key, ("T0", "s"), ("T1", "s")}:
                assert runs.read(k).messages == ones.read(k).messages
            run_clock.now += 0.25  # with a ttl of 1 s, messages expire as the runs go on
            ones_clock.now += 0.25
            if round_ % 17 == 16:  # some streams expire and come back under a new epoch
                run_clock.now += 400
                ones_clock.now += 400

    def test_an_empty_run_changes_nothing(self) -> None:
        history, _ = make()
        assert history.append_run(KEY, 0, lambda first, epoch: []) == []
        assert history.top(KEY) is None


class TestRead:
    def test_since_in_the_same_epoch_replays_what_followed(self) -> None:
        history, _ = make()
        publish(history, 5)
        replay = history.read(KEY, Position(2, "p-1"))
        assert offsets(replay.messages) == [3, 4, 5] and replay.recovered and replay.top == Position(5, "p-1")

    def test_since_at_the_top_recovers_nothing_missing(self) -> None:
        history, _ = make()
        publish(history, 5)
        replay = history.read(KEY, Position(5, "p-1"))
        assert replay.messages == [] and replay.recovered

    def test_another_epoch_replays_nothing_and_is_not_recovered(self) -> None:
        history, _ = make()
        publish(history, 5)
        replay = history.read(KEY, Position(2, "elsewhere"))
        assert replay.messages == [] and not replay.recovered

    def test_a_gap_replays_what_remains_and_says_so(self) -> None:
        history, _ = make(size=3)
        publish(history, 10)
        replay = history.read(KEY, Position(2, "p-1"))
        assert offsets(replay.messages) == [8, 9, 10] and not replay.recovered

    def test_an_offset_past_the_top_in_the_same_epoch_is_refused(self) -> None:
        history, _ = make()
        publish(history, 2)
        with pytest.raises(ValueError):
            history.read(KEY, Position(3, "p-1"))

    def test_a_budget_cuts_the_replay_short_and_says_so(self) -> None:
        history, _ = make()
        publish(history, 10, size=100)
        one = len(history.read(KEY).messages[0])
        replay = history.read(KEY, Position(0, "p-1"), budget=3 * one + 1)
        assert offsets(replay.messages) == [1, 2, 3] and not replay.recovered

    def test_limit_takes_the_last_without_since_and_the_first_after_since(self) -> None:
        history, _ = make()
        publish(history, 10)
        assert offsets(history.read(KEY, limit=3).messages) == [8, 9, 10]
        assert offsets(history.read(KEY, Position(4, "p-1"), limit=3).messages) == [5, 6, 7]


class TestIdempotency:
    def test_a_repeat_within_the_window_is_seen_with_its_position(self) -> None:
        clock = Clock()
        table = IdempotencyTable(10, 100, clock=clock)
        assert table.claim("s", "a") is None
        table.settle("s", "a", Position(4, "e"))
        seen = table.claim("s", "a")
        assert seen is not None and seen.done and seen.position == Position(4, "e")

    def test_ids_are_per_session(self) -> None:
        table = IdempotencyTable(10, 100)
        assert table.claim("s", "a") is None
        assert table.claim("other", "a") is None

    def test_an_id_after_the_window_is_new(self) -> None:
        clock = Clock()
        table = IdempotencyTable(10, 100, clock=clock)
        table.claim("s", "a")
        clock.now += 10.5
        assert table.claim("s", "a") is None

    def test_a_failed_publish_frees_its_id(self) -> None:
        table = IdempotencyTable(10, 100)
        table.claim("s", "a")
        table.release("s", "a")
        assert table.claim("s", "a") is None

    def test_at_most_max_ids_are_remembered_the_oldest_forgotten(self) -> None:
        table = IdempotencyTable(10, 3)
        for name in "abcd":
            table.claim("s", name)
        assert len(table) == 3 and ("s", "a") not in list(table)


MESSAGES = [b"a" * 9, b"b" * 9, b"c" * 9, b"d" * 9]  # 10 bytes each with its comma


class TestWithinBytes:
    def test_all_when_they_fit(self) -> None:
        assert within_bytes(MESSAGES, 40, newest=True) == MESSAGES
        assert within_bytes([], 0, newest=False) == []

    def test_the_first_ones_for_a_page_forward(self) -> None:
        assert within_bytes(MESSAGES, 25, newest=False) == MESSAGES[:2]

    def test_the_last_ones_for_a_read_without_since(self) -> None:
        assert within_bytes(MESSAGES, 39, newest=True) == MESSAGES[1:]

    def test_one_message_bigger_than_the_budget_still_goes(self) -> None:
        assert within_bytes(MESSAGES, 1, newest=False) == MESSAGES[:1]
        assert within_bytes(MESSAGES, 1, newest=True) == MESSAGES[-1:]
