"""The Redis Cluster broker's retry queue and reply classes (``rusty_ws/brokers/redis_cluster_retry.py``).

Pure: no Redis, a fake clock. The broker's use of them against a real cluster is in
tests/server/test_redis_cluster_moves.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as rex

from rusty_ws.brokers.redis_cluster_retry import Kind, RetryQueue, classify


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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_slot_s_commands_wait_behind_its_held_ones_and_go_in_waves_in_order() -> None:
    clock = Clock()
    queue = RetryQueue(timeout=5.0, limit=10, clock=clock)
    answers: list[tuple[str, Any]] = []
    reply_to = {name: (lambda reply, name=name: answers.append((name, reply))) for name in "abcdef"}
    assert queue.hold_if_waiting(7, ("a",), reply_to["a"], True) is False  # nothing held: send it
    assert queue.hold(7, None, ("a",), reply_to["a"], "lost", True)
    assert queue.hold(7, None, ("b",), reply_to["b"], "lost", True)
    assert queue.hold_if_waiting(7, ("c",), reply_to["c"], True)  # behind a and b
    assert queue.hold_if_waiting(8, ("d",), reply_to["d"], True) is False  # another slot is not held
    assert queue.status() == {"held": 3, "retried": 0, "retry_expired": 0}
    wave = queue.take_wave(7)
    assert [held.command for held in wave] == [("a",), ("b",), ("c",)]
    assert queue.take_wave(7) == []  # the wave is out: nothing more until it is answered
    assert queue.hold_if_waiting(7, ("e",), reply_to["e"], True)  # still held: e waits for the next wave
    # b fails again: back in its place, before e (held after it).
    assert queue.answered(7) is False  # a answered
    assert queue.hold(7, wave[1], ("b",), reply_to["b"], "lost again", True)
    assert queue.answered(7) is False  # b held again
    assert queue.answered(7) is True  # c answered: the next wave may go
    assert [held.command for held in queue.take_wave(7)] == [("b",), ("e",)]
    assert queue.answered(7) is False
    assert queue.answered(7) is True  # the wave's last: look at the slot again...
    assert queue.take_wave(7) == []  # ...empty and answered: no longer held
    assert queue.slots() == []
    assert queue.hold_if_waiting(7, ("f",), reply_to["f"], True) is False
    assert queue.status() == {"held": 0, "retried": 5, "retry_expired": 0}
    assert answers == []  # the queue never answers what it hands back


def test_held_commands_expire_with_their_last_failure_and_keep_their_first_deadline() -> None:
    clock = Clock()
    queue = RetryQueue(timeout=2.0, limit=10, clock=clock)
    noop = lambda reply: None  # noqa: E731
    assert queue.hold(1, None, ("a",), noop, "first", True, delay=0.5)
    assert queue.next_due() == 0.5
    assert queue.take_wave(1) == []  # not before its delay
    clock.now += 0.5
    [a] = queue.take_wave(1)
    clock.now += 1.0
    assert queue.hold(1, a, ("a",), noop, "second", True)  # sent again at +1.5: its deadline stays +2.0
    queue.answered(1)
    clock.now += 0.6
    [gone] = queue.expire()
    assert (gone.command, gone.failure) == (("a",), "second")
    assert queue.status() == {"held": 0, "retried": 1, "retry_expired": 1}
    assert queue.hold(1, gone, ("a",), noop, "third", True) is False  # past its deadline: the caller fails it


def test_the_queue_is_bounded_and_a_zero_timeout_holds_nothing() -> None:
    queue = RetryQueue(timeout=5.0, limit=2, clock=Clock())
    failed: list[Any] = []
    assert queue.hold(3, None, ("a",), failed.append, "x", True)
    assert queue.hold(3, None, ("b",), failed.append, "x", True)
    assert queue.hold(3, None, ("c",), failed.append, "x", True) is False  # full: the caller fails it
    assert queue.hold_if_waiting(3, ("d",), failed.append, True)  # taken care of: failed at once
    assert len(failed) == 1 and isinstance(failed[0], ConnectionError)
    assert [held.command for held in queue.drain()] == [("a",), ("b",)]
    assert queue.status()["held"] == 0 and queue.slots() == []
    off = RetryQueue(timeout=0.0, limit=2, clock=Clock())
    assert off.hold(3, None, ("a",), failed.append, "x", True) is False
    with pytest.raises(ValueError):
        RetryQueue(timeout=1.0, limit=0)
