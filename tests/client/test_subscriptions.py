"""The client's positions: which deliveries are new, and what a ``subscribed:`` reply says was lost."""

from __future__ import annotations

import pytest

from rusty_ws.client.subscriptions import RecoveryFailure, Subscriptions, recovery_failure
from rusty_ws.protocol import Delivery, Since, Subscribed


def delivery(offset: int | None, epoch: str | None = "e1", topic: str = "T") -> Delivery:
    return Delivery("p", topic, offset, "2024-01-24T10:25:37Z", "s", offset=offset, epoch=epoch)


def subscribed(offset: int | None, epoch: str | None = "e1", recovered: bool | None = None) -> Subscribed:
    return Subscribed("T", "s", offset, epoch, recovered)


class TestAdmit:
    @pytest.mark.parametrize("offsets, admitted", [
        ([1, 2, 3], [1, 2, 3]),
        ([1, 2, 2, 3], [1, 2, 3]),           # a repeat
        ([3, 1, 2, 4], [3, 4]),              # older than the last seen
        ([1, 5, 6], [1, 5, 6]),              # a gap is not a repeat
    ])
    def test_a_delivery_at_or_below_the_last_offset_is_dropped(self, offsets, admitted) -> None:
        subscriptions = Subscriptions()
        subscriptions.subscribed("T", subscribed(0), add=True)
        assert [n for n in offsets if subscriptions.admit(delivery(n))] == admitted
        assert subscriptions.position("T") == Since(max(admitted), "e1")

    def test_another_epoch_starts_over(self) -> None:
        subscriptions = Subscriptions()
        subscriptions.subscribed("T", subscribed(7), add=True)
        assert not subscriptions.admit(delivery(7))
        assert subscriptions.admit(delivery(1, "e2"))
        assert subscriptions.position("T") == Since(1, "e2")

    def test_the_reply_is_the_boundary(self) -> None:
        subscriptions = Subscriptions()
        subscriptions.subscribed("T", subscribed(0), add=True)
        assert subscriptions.admit(delivery(1))
        subscriptions.subscribed("T", subscribed(5), add=True)   # 2..5 were replayed, or are gone
        assert not subscriptions.admit(delivery(5))
        assert subscriptions.admit(delivery(6))

    def test_without_offsets_or_a_subscription_everything_passes(self) -> None:
        subscriptions = Subscriptions()
        subscriptions.subscribed("T", subscribed(None, None), add=True)
        assert subscriptions.position("T") is None
        assert all(subscriptions.admit(delivery(None, None)) for _ in range(3))
        assert subscriptions.admit(delivery(1, topic="Other")) and subscriptions.admit(delivery(1, topic="Other"))
        assert subscriptions.topics() == ["T"]

    def test_a_resubscription_does_not_bring_back_a_topic_forgotten_meanwhile(self) -> None:
        subscriptions = Subscriptions()
        subscriptions.subscribed("T", subscribed(3), add=True)
        subscriptions.forget("T")
        subscriptions.subscribed("T", subscribed(4), add=False)
        assert subscriptions.topics() == [] and subscriptions.items() == []


@pytest.mark.parametrize("reply, failure", [
    (subscribed(9, "e1", True), None),
    (subscribed(9, "e1", None), None),
    (subscribed(9, "e1", False), RecoveryFailure.MESSAGES_DROPPED),
    (subscribed(0, "e2", False), RecoveryFailure.EPOCH_CHANGED),
    (subscribed(None, None, False), RecoveryFailure.HISTORY_OFF),
])
def test_recovery_failure(reply: Subscribed, failure: RecoveryFailure | None) -> None:
    assert recovery_failure(Since(3, "e1"), reply) is failure
