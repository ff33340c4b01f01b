"""Subscriptions: exact (topic, session) matching, interest changes, limits, snapshots."""

from __future__ import annotations

import threading

import pytest

from rusty_ws.exceptions import ProtocolError
from rusty_ws.server.registry import Registry
from support import MS


class Sub:
    """A stand-in subscriber handle."""


def test_exact_matching() -> None:
    registry = Registry()
    a, b = Sub(), Sub()
    registry.subscribe(a, "T", "s1")
    registry.subscribe(b, "T", "s2")
    assert registry.subscribers("T", "s1") == (a,)
    assert registry.subscribers("T", "s2") == (b,)
    assert registry.subscribers("T", "s3") == ()
    assert registry.subscribers("U", "s1") == ()


def test_interest_appears_and_vanishes_once() -> None:
    registry = Registry()
    a, b = Sub(), Sub()
    assert registry.subscribe(a, "T", "s") is True
    assert registry.subscribe(b, "T", "s") is False
    assert registry.subscribe(a, "T", "s") is False  # twice is harmless
    assert registry.subscribers("T", "s") == (a, b)
    assert registry.unsubscribe(a, "T", "s") is False
    assert registry.unsubscribe(a, "T", "s") is False  # not subscribed any more: harmless
    assert registry.unsubscribe(b, "T", "s") is True
    assert registry.subscribers("T", "s") == ()


def test_remove_reports_keys_that_lost_their_last_subscriber() -> None:
    registry = Registry()
    a, b = Sub(), Sub()
    registry.subscribe(a, "T", "s")
    registry.subscribe(a, "U", "s")
    registry.subscribe(b, "U", "s")
    assert registry.remove(a) == [("T", "s")]
    assert registry.remove(a) == []
    assert registry.keys() == [("U", "s")]


def test_limit_per_subscriber() -> None:
    registry = Registry(max_subscriptions=2)
    a, b = Sub(), Sub()
    registry.subscribe(a, "T1", "s")
    registry.subscribe(a, "T2", "s")
    registry.subscribe(a, "T2", "s")  # a duplicate does not count
    with pytest.raises(ProtocolError) as caught:
        registry.subscribe(a, "T3", "s")
    assert caught.value.code == "too_many_subscriptions"
    registry.subscribe(b, "T3", "s")  # others are not affected
    registry.unsubscribe(a, "T1", "s")
    registry.subscribe(a, "T3", "s")  # room again


def test_snapshot_is_immutable_and_refreshed() -> None:
    registry = Registry()
    a, b = Sub(), Sub()
    registry.subscribe(a, "T", "s")
    first = registry.subscribers("T", "s")
    registry.subscribe(b, "T", "s")
    assert first == (a,)
    assert registry.subscribers("T", "s") == (a, b)
    assert registry.subscribers("T", "s") is registry.subscribers("T", "s")


def test_publishing_to_unknown_keys_keeps_nothing() -> None:
    registry = Registry()
    for i in range(1000):
        assert registry.subscribers(f"T{i}", "s") == ()
    assert registry._snapshots == {}


def test_counts() -> None:
    registry = Registry()
    a, b = Sub(), Sub()
    registry.subscribe(a, "T", "s1")
    registry.subscribe(a, "U", "s1")
    registry.subscribe(b, "T", "s2")
    counts = registry.counts()
    assert (counts.topics, counts.sessions, counts.subscriptions, counts.subscribers) == (2, 2, 3, 2)
    registry.remove(a)
    registry.remove(b)
    counts = registry.counts()
    assert (counts.topics, counts.sessions, counts.subscriptions, counts.subscribers) == (0, 0, 0, 0)


def test_concurrent_subscribers_all_land() -> None:
    registry = Registry(max_subscriptions=10_000)
    subs = [Sub() for _ in range(8)]

    def work(sub: Sub) -> None:
        for i in range(500):
            registry.subscribe(sub, f"T{i % 50}", "s")
            registry.subscribers(f"T{i % 50}", "s")

    threads = [threading.Thread(target=work, args=(sub,)) for sub in subs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10_000 * MS)
    assert all(len(registry.subscribers(f"T{i}", "s")) == 8 for i in range(50))
