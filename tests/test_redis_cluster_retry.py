"""The Redis Cluster broker's retry queue and reply classes (``rusty_ws/brokers/redis_cluster_retry.py``).

Pure: no Redis, a fake clock. The broker's use of them against a real cluster is in
tests/server/test_redis_cluster_moves.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as rex

from rusty_ws.brokers.redis_cluster_retry import Kind, RetryQueue, classify, redirected_slot


@pytest.mark.parametrize(("reply", "expected"), [
    (b"OK", (Kind.DONE, "")),
    ([b"new", b"1:abc", 0], (Kind.DONE, "")),
    (rex.ResponseError("MOVED 1234 127.0.0.1:7001"), (Kind.MOVED, "127.0.0.1:7001")),
    (rex.MovedError("1234 127.0.0.1:7001"), (Kind.MOVED, "127.0.0.1:7001")),
    (rex.ResponseError("ASK 1234 127.0.0.1:7002"), (Kind.ASK, "127.0.0.1:7002")),
    (rex.AskError("1234 127.0.0.1:7002"), (Kind.ASK, "127.0.0.1:7002")),
    (rex.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"), (Kind.AGAIN, "")),
    (rex.TryAgainError("Multiple keys request during rehashing of slot"), (Kind.AGAIN, "")),
    (rex.ResponseError("CLUSTERDOWN The cluster is down"), (Kind.AGAIN, "")),
    (rex.ClusterDownError("The cluster is down"), (Kind.AGAIN, "")),
    (rex.ConnectionError("Redis connection lost"), (Kind.LOST, "")),
    (rex.TimeoutError("timed out"), (Kind.LOST, "")),
    (ConnectionError("Redis is unreachable"), (Kind.LOST, "")),
    (rex.ResponseError("ERR unknown command"), (Kind.DONE, "")),
    (rex.NoScriptError("NOSCRIPT No matching script"), (Kind.DONE, "")),
    # Hostile or odd error texts are answers, not redirections to follow.
    (rex.ResponseError("MOVED"), (Kind.DONE, "")),
    (rex.ResponseError("ASK 1 2 3 4"), (Kind.DONE, "")),
    (rex.ResponseError(""), (Kind.DONE, "")),
])
def test_replies_are_classified(reply: Any, expected: tuple[Kind, str]) -> None:
    assert classify(reply, rex) == expected


@pytest.mark.parametrize(("reply", "expected"), [
    (rex.ResponseError("MOVED 15652 127.0.0.1:7001"), 15652),
    (rex.MovedError("0 127.0.0.1:7001"), 0),
    (rex.ResponseError("ASK 16383 127.0.0.1:7002"), 16383),
    (rex.AskError("12 127.0.0.1:7002"), 12),
    # Not a redirection, or a hostile one: no slot (the listener reconnects, as for any other error).
    (rex.ResponseError("CLUSTERDOWN The cluster is down"), None),
    (rex.TryAgainError("Multiple keys request during rehashing of slot"), None),
    (rex.ResponseError("MOVED 16384 127.0.0.1:7001"), None),
    (rex.ResponseError("MOVED -1 127.0.0.1:7001"), None),
    (rex.ResponseError("MOVED \u0661\u0662 127.0.0.1:7001"), None),  # Arabic-Indic digits: isdigit(), no slot
    (rex.ResponseError("MOVED 1" + "0" * 5000 + " h:1"), None),
    (rex.ResponseError("MOVED"), None),
    (rex.ResponseError(""), None),
    (b"MOVED 1 h:1", None),
    (rex.ConnectionError("MOVED 1 h:1"), None),
])
def test_the_slot_of_a_refusal_is_read_from_either_parser_s_form(reply: Any, expected: int | None) -> None:
    assert redirected_slot(reply, rex) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_slot_s_commands_wait_behind_its_held_ones_and_go_in_waves_in_their_first_order() -> None:
    clock = Clock()
    queue = RetryQueue(timeout=5.0, limit=10, clock=clock)
    noop = lambda reply: None  # noqa: E731
    a = queue.admit(7, "m1", ("a",), noop, True)  # nothing held: send it (counted as out at m1)
    b = queue.admit(7, "m1", ("b",), noop, True)
    assert a is not None and b is not None and a < b
    assert queue.hold(7, a, None, ("a",), noop, "lost", True)  # a failed: held...
    assert queue.settled(7) is False  # ...b is still out
    assert queue.admit(7, "m1", ("c",), noop, True) is None  # c waits behind a
    assert queue.admit(7, "m1", ("n",), noop, False) is None  # no id: never sent yet, so it waits in its place too
    assert queue.admit(8, "m1", ("d",), noop, True) is not None  # another slot is not held
    assert queue.take_wave(7) == []  # b is out: the wave waits
    assert queue.held_before(7, b) and not queue.held_before(7, a)  # a is held: b must not overtake it
    assert queue.hold(7, b, None, ("b",), noop, "lost", True)  # b failed too: its place is before c's
    assert queue.settled(7) is True  # b answered (held): nothing out, the slot is held: look at it
    assert queue.status() == {"held": 4, "retried": 0, "retry_expired": 0}
    wave = queue.take_wave(7)
    assert [held.command for held in wave] == [("a",), ("b",), ("c",), ("n",)]
    for held in wave:
        assert queue.admit(7, "m2", held.command, noop, held.idempotent, held) == held.seq  # sent again, in place
    assert queue.admit(7, "m2", ("e",), noop, True) is None  # still held: e waits for the next wave
    assert queue.settled(7) is False  # a answered
    assert queue.hold(7, wave[1].seq, wave[1], ("b",), noop, "lost again", True)  # b again: before e
    assert queue.settled(7) is False  # b held again
    assert queue.settled(7) is False  # c answered
    assert queue.settled(7) is True  # n answered
    assert [held.command for held in queue.take_wave(7)] == [("b",), ("e",)]
    assert queue.admit(7, "m2", ("b",), noop, True, wave[1]) is not None
    assert queue.settled(7) is True
    assert queue.take_wave(7) == []  # empty and nothing out: no longer held
    assert queue.slots() == [] and queue.marked(7) is False
    assert queue.status() == {"held": 0, "retried": 6, "retry_expired": 0}


def test_a_slot_that_moved_waits_for_the_old_master_s_answers() -> None:
    queue = RetryQueue(timeout=5.0, limit=10, clock=Clock())
    noop = lambda reply: None  # noqa: E731
    first = queue.admit(3, "old", ("a",), noop, False)
    assert first is not None
    later = queue.admit(3, "new", ("b",), noop, False)  # the map moved the slot: a is still out at the old one
    assert later is None and queue.marked(3)
    assert queue.hold(3, first, None, ("a",), noop, "MOVED", False)  # a was MOVED: held, before b
    assert queue.settled(3) is True
    assert [held.command for held in queue.take_wave(3)] == [("a",), ("b",)]
    off = RetryQueue(timeout=0.0, limit=10, clock=Clock())
    assert off.admit(3, "old", ("a",), noop, True) is not None
    assert off.admit(3, "new", ("b",), noop, True) is not None  # no retries: nothing is held


def test_held_commands_expire_with_their_last_failure_and_keep_their_first_deadline() -> None:
    clock = Clock()
    queue = RetryQueue(timeout=2.0, limit=10, clock=clock)
    noop = lambda reply: None  # noqa: E731
    assert queue.hold(1, None, None, ("a",), noop, "first", True, delay=0.5)
    assert queue.next_due() == 0.5
    assert queue.take_wave(1) == []  # not before its delay
    clock.now += 0.5
    [a] = queue.take_wave(1)
    clock.now += 1.0
    assert queue.hold(1, None, a, ("a",), noop, "second", True)  # sent again at +1.5: its deadline stays +2.0
    clock.now += 0.6
    [gone] = queue.expire()
    assert (gone.command, gone.failure) == (("a",), "second")
    assert queue.status() == {"held": 0, "retried": 1, "retry_expired": 1}
    assert queue.hold(1, None, gone, ("a",), noop, "third", True) is False  # past its deadline: the caller fails it


def test_the_queue_is_bounded_and_a_zero_timeout_holds_nothing() -> None:
    queue = RetryQueue(timeout=5.0, limit=2, clock=Clock())
    failed: list[Any] = []
    assert queue.hold(3, None, None, ("a",), failed.append, "x", True)
    assert queue.hold(3, None, None, ("b",), failed.append, "x", True)
    assert queue.hold(3, None, None, ("c",), failed.append, "x", True) is False  # full: the caller fails it
    assert queue.admit(3, "m", ("d",), failed.append, True) is None  # taken care of: failed at once
    assert len(failed) == 1 and isinstance(failed[0], ConnectionError)
    assert [held.command for held in queue.drain()] == [("a",), ("b",)]
    assert queue.status()["held"] == 0 and queue.slots() == []
    off = RetryQueue(timeout=0.0, limit=2, clock=Clock())
    assert off.hold(3, None, None, ("a",), failed.append, "x", True) is False
    with pytest.raises(ValueError):
        RetryQueue(timeout=1.0, limit=0)
