"""Reconnect delays."""

from __future__ import annotations

import itertools

import pytest

from rusty_ws.backoff import delays


def test_first_delay_is_random_then_grows_to_the_cap() -> None:
    values = iter([0.25] + [0.0] * 20)
    got = list(itertools.islice(delays(initial=1, factor=2, cap=10, rng=lambda: next(values)), 7))
    assert got == [0.25, 1, 2, 4, 8, 10, 10]


def test_jitter_shortens_but_never_exceeds() -> None:
    for value in list(itertools.islice(delays(initial=1, factor=2, cap=5, jitter=0.5), 50))[1:]:
        assert 0 <= value <= 5


def test_full_jitter_bounds() -> None:
    got = list(itertools.islice(delays(initial=1, factor=3, cap=9, jitter=1, rng=lambda: 1.0), 4))
    assert got == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("kwargs", [{"initial": -1}, {"factor": 0.5}, {"cap": -1}, {"jitter": 2}])
def test_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        next(delays(**kwargs))
