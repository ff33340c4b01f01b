"""The cluster broker's gap filler (``rusty_ws/brokers/redis_cluster_gaps.py``), with a fake stream.

Against a real cluster (a slot migrated and a master killed while publishes flow)
in tests/server/test_redis_cluster_moves.py.
"""

from __future__ import annotations

import logging

import pytest

from rusty_ws.brokers.base import HistoryUnavailable, Key, Stored
from rusty_ws.brokers.redis_cluster_gaps import GapFiller
from rusty_ws.protocol import Delivery, Position

KEY = ("T", "s")


def message(offset: int, epoch: str = "e1", topic: str = "T") -> Delivery:
    return Delivery(publisher_name="p", topic=topic, payload=offset, timestamp="t", session_id="s",
                    offset=offset, epoch=epoch)


class Stream:
    """What the pair's stream holds: its epoch and entries; records each read."""

    def __init__(self, epoch: str, top: int, first: int = 1) -> None:
        self.epoch, self.top, self.first = epoch, top, first
        self.reads: list[tuple[Key, Position, int]] = []
        self.down = False

    def read(self, key: Key, since: Position, limit: int) -> Stored:
        self.reads.append((key, since, limit))
        if self.down:
            raise HistoryUnavailable("Redis is unreachable")
        entries = [message(n, self.epoch) for n in range(max(since.offset + 1, self.first), self.top + 1)]
        return Stored(Position(self.top, self.epoch), entries[:limit] if since.epoch == self.epoch else [], True)


def payloads(found: list[Delivery] | None) -> list[int] | None:
    return None if found is None else [m.payload for m in found]


def test_in_step_deliveries_read_nothing_and_copies_are_dropped() -> None:
    stream = Stream("e1", 3)
    gaps = GapFiller(stream.read)
    assert [payloads(gaps.before(message(n))) for n in (1, 2, 3)] == [[], [], []]
    assert gaps.before(message(2)) is None and gaps.before(message(3)) is None  # copies
    assert gaps.before(Delivery(publisher_name="p", topic="T", payload=0, timestamp="t", session_id="s")) == []
    assert stream.reads == [] and gaps.status() == {"gaps_filled": 0, "gap_duplicates": 2}


def test_a_gap_is_filled_from_the_stream_in_reads_of_the_limit() -> None:
    stream = Stream("e1", 2500)
    gaps = GapFiller(stream.read, limit=1000)
    assert gaps.before(message(10)) == []
    assert payloads(gaps.before(message(2500))) == list(range(11, 2500))
    assert [(since.offset, limit) for _, since, limit in stream.reads] == [(10, 1000), (1010, 1000), (2010, 489)]
    assert gaps.before(message(1500)) is None  # the old master's copy, delivered from the stream already
    assert gaps.status() == {"gaps_filled": 2489, "gap_duplicates": 1}


def test_across_a_migration_s_new_epoch_the_gap_is_filled_and_old_copies_dropped() -> None:
    stream = Stream("e2", 8)  # the keys moved whole: offsets go on under a new epoch
    gaps = GapFiller(stream.read)
    assert gaps.before(message(5, "e1")) == []
    assert payloads(gaps.before(message(8, "e2"))) == [6, 7]
    assert gaps.before(message(6, "e1")) is None  # from the old master, after the new one's stream gave it
    assert gaps.before(message(9, "e2")) == []


def test_after_a_failover_that_lost_writes_lower_offsets_are_delivered_not_filled() -> None:
    stream = Stream("e2", 11)
    gaps = GapFiller(stream.read)
    assert gaps.before(message(15, "e1")) == []
    assert gaps.before(message(11, "e2")) == []  # the new master had only 10: its 11 is another message
    assert gaps.before(message(12, "e2")) == [] and stream.reads == []


def test_a_forged_offset_is_not_remembered(caplog: pytest.LogCaptureFixture) -> None:
    stream = Stream("e1", 3)
    gaps = GapFiller(stream.read)
    assert gaps.before(message(3)) == []
    assert gaps.before(message(10 ** 12)) == []  # no script published it: the stream's top is 3
    assert "which its stream does not hold" in caplog.text
    assert gaps.before(message(4)) == []  # the next real one is not taken for a copy
    assert gaps.before(message(5, "forged-epoch")) == []
    assert gaps.before(message(5)) == []


def test_a_failed_read_leaves_the_gap_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "rusty_ws.server")
    stream = Stream("e1", 9)
    gaps = GapFiller(stream.read)
    gaps.before(message(1))
    stream.down = True
    assert gaps.before(message(9)) == []
    assert "could not fill a gap" in caplog.text


def test_pairs_are_remembered_apart_bounded_and_forgotten() -> None:
    stream = Stream("e1", 5)
    gaps = GapFiller(stream.read, most_pairs=2)
    for topic in ("A", "B", "C"):
        assert gaps.before(message(5, topic=topic)) == []
    assert gaps.before(message(5, topic="A")) == []  # forgotten (the oldest, past most_pairs): not a copy
    assert gaps.before(message(5, topic="C")) is None
    gaps.forget(("C", "s"))
    assert gaps.before(message(5, topic="C")) == []


class Flaky(Stream):
    """A stream whose first ``failures`` reads fail: the new master not reached for reads yet."""

    def __init__(self, epoch: str, top: int, failures: int) -> None:
        super().__init__(epoch, top)
        self.failures = failures

    def read(self, key: Key, since: Position, limit: int) -> Stored:
        self.down = len(self.reads) < self.failures
        return super().read(key, since, limit)


def test_a_read_that_fails_right_after_a_failover_is_tried_again_within_the_retry_time() -> None:
    stream, waits = Flaky("e1", 6, failures=2), []
    gaps = GapFiller(stream.read, retry_for=1.0, pause=lambda seconds: waits.append(seconds) is not None)
    assert gaps.before(message(1)) == []
    assert payloads(gaps.before(message(6))) == [2, 3, 4, 5]
    assert len(stream.reads) == 3 and len(waits) == 2 and gaps.status()["gaps_filled"] == 4


def test_without_retry_time_or_when_the_broker_stops_the_gap_stays(caplog: pytest.LogCaptureFixture) -> None:
    for options in ({}, {"retry_for": 1.0, "pause": lambda _: True}):  # no retry; the broker stopping
        stream = Flaky("e1", 6, failures=2)
        gaps = GapFiller(stream.read, **options)
        assert gaps.before(message(1)) == []
        with caplog.at_level(logging.WARNING, "rusty_ws.server"):
            assert gaps.before(message(6)) == []
        assert len(stream.reads) == 1 and "could not fill a gap" in caplog.text
        caplog.clear()
