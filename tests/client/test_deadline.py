"""``client.deadline.Deadline``: pure, with a clock the tests turn by hand."""

from __future__ import annotations

import pytest

from rusty_ws.client.deadline import Deadline
from support import WAIT


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestDeadline:
    @pytest.mark.parametrize(
        "timeout, elapsed, left",
        [
            (5.0, 0.0, 5.0),
            (5.0, 2.0, 3.0),
            (5.0, 5.0, 0.0),
            (5.0, 7.0, 0.0),  # past the deadline: 0, never negative
            (0.0, 0.0, 0.0),
            (-1.0, 0.0, 0.0),  # a negative timeout is already over
        ],
    )
    def test_seconds_left(self, timeout: float, elapsed: float, left: float) -> None:
        clock = Clock()
        deadline = Deadline(timeout, clock=clock)
        clock.now += elapsed
        assert deadline.timeout() == pytest.approx(left)
        assert deadline.expired() is (left == 0.0)

    def test_none_means_forever(self) -> None:
        clock = Clock()
        deadline = Deadline(None, clock=clock)
        clock.now += 1e9
        assert deadline.timeout() is None
        assert not deadline.expired()

    def test_one_budget_shared_by_successive_waits(self) -> None:
        clock = Clock()
        deadline = Deadline(3.0, clock=clock)
        spent = []
        for wanted in (1.0, 1.5, 2.0):  # each wait takes what it wants, or what is left
            granted = min(wanted, deadline.timeout())
            clock.now += granted
            spent.append(granted)
        assert spent == [1.0, 1.5, 0.5]
        assert deadline.expired()

    def test_the_real_clock_by_default(self) -> None:
        left = Deadline(WAIT).timeout()
        assert left is not None and 0.0 < left <= WAIT

    def test_repr(self) -> None:
        clock = Clock()
        assert repr(Deadline(None, clock=clock)) == "<Deadline never>"
        assert repr(Deadline(1.5, clock=clock)) == "<Deadline in 1.500s>"
