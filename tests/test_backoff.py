"""Reconnect delays."""

from __future__ import annotations

import itertools

import pytest

from rusty_ws.backoff import MAX_RETRY_AFTER, delays, retry_after


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


@pytest.mark.parametrize("value, expected", [("0", 0.5), ("1", 1.5), (" 7 ", 7.5), ("3600", 3600.5)])
def test_retry_after_waits_what_it_says_plus_up_to_a_second(value: str, expected: float) -> None:
    assert retry_after(value, rng=lambda: 0.5) == expected


@pytest.mark.parametrize("value", [
    None, "", "-1", "1.5", "3601", "99999999", "soon", "Wed, 21 Oct 2026 07:28:00 GMT", "١", "1e3", "0x10",
    "1 2", "9" * 10_000,
])
def test_retry_after_that_is_absent_or_not_a_small_whole_number_is_ignored(value: str | None) -> None:
    assert retry_after(value) is None  # back off as usual


def test_retry_after_is_at_most_the_longest() -> None:
    assert retry_after(str(MAX_RETRY_AFTER), rng=lambda: 0.0) == MAX_RETRY_AFTER
