"""RedisHistory's bookkeeping of this node's own publishes: a fallback and a late channel copy never both count.

The sender is replaced by a recorder, so each reply (or failure) is handed back
exactly when the test says: the orders that a real Redis only shows under a
well-timed kill. Everything Redis does is tested against real servers in
tests/server/test_redis_history.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from rusty_ws.brokers.redis_codec import decode_envelope
from rusty_ws.brokers.redis_history import RedisHistory, Route
from rusty_ws.protocol import Delivery


class RecordingSender:
    def __init__(self) -> None:
        self.commands: list[tuple[tuple[Any, ...], Any]] = []

    def script_load(self, source: str) -> str:
        return "0" * 40

    def submit(self, args: tuple[Any, ...], on_reply: Any = None) -> None:
        self.commands.append((args, on_reply))


def store() -> tuple[RedisHistory, RecordingSender, list[Delivery]]:
    sender, delivered = RecordingSender(), []
    history = RedisHistory(node_id=lambda: "node-1", route=lambda session_id: Route(None, sender.submit, True),
                           deliver=delivered.append,
                           prefix="rusty_ws", size=10, ttl=60, window=60, max_envelope_size=None)
    return history, sender, delivered


def published(seq: int, node: str = "node-1") -> Delivery:
    """The channel's copy of a publish, as the listener decodes it."""
    body = b'{"publisher_name":"p","topic":"T","payload":1,"timestamp":"t","session_id":"s"}'
    data = b'{"v":2,"node":"%s","seq":%d,"offset":1,"epoch":"ab","delivery":%s}' % (node.encode(), seq, body)
    return decode_envelope(data, ("T", "s"))[1]


DELIVERY = Delivery(publisher_name="p", topic="T", payload=1, timestamp="t", session_id="s")
LOST = ConnectionError("Redis connection lost: reset")


def test_the_channels_copy_first_then_a_failure_is_not_delivered_again() -> None:
    history, sender, delivered = store()
    history.publish(DELIVERY, None, None)
    [(args, on_reply)] = sender.commands
    assert history.arrived(published(args[-1])) is True  # Redis ran it: delivered from the channel
    on_reply(LOST)  # ...and then the sender lost the connection before the reply
    assert delivered == []


def test_a_fallback_first_drops_the_channels_late_copy() -> None:
    history, sender, delivered = store()
    history.publish(DELIVERY, None, None)
    [(args, on_reply)] = sender.commands
    on_reply(LOST)
    assert delivered == [DELIVERY]  # local delivery goes on, without offset
    assert history.arrived(published(args[-1])) is False  # Redis ran it after all: not a second time
    assert history.arrived(published(args[-1])) is True  # forgotten once matched


def test_other_nodes_publishes_always_arrive() -> None:
    history, sender, _ = store()
    history.publish(DELIVERY, None, None)
    [(args, on_reply)] = sender.commands
    on_reply(LOST)
    assert history.arrived(published(args[-1], "node-2")) is True  # the same number, another node


def test_a_publish_with_an_id_never_falls_back() -> None:
    history, sender, delivered = store()
    answers: list[Any] = []
    history.publish(DELIVERY, "id-1", answers.append)
    [(_, on_reply)] = sender.commands
    on_reply(LOST)
    assert delivered == [] and len(answers) == 1 and isinstance(answers[0], Exception)


def test_an_answer_of_another_shape_is_unavailable_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    history, sender, _ = store()
    answers: list[Any] = []
    history.publish(DELIVERY, "id-2", answers.append)
    [(_, on_reply)] = sender.commands
    on_reply([b"new", b"not a position", 0])
    assert isinstance(answers[0], Exception) and "no rusty_ws script returns" in str(answers[0])
    assert "dropped what Redis answered" in caplog.text
