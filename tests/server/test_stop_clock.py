"""StopClock: the phases of a stop, in order, with what the process spent on them (one log line)."""

from __future__ import annotations

import logging
import re

import pytest

from rusty_ws.server.stop_clock import StopClock


def test_each_phase_is_timed_from_the_first_mark_in_order_and_the_cost_is_the_processs() -> None:
    clock = StopClock()
    sum(range(200_000))  # some CPU between the marks
    clock.mark("listener shut")
    clock.mark("exit")
    (first, first_at, _, _), (last, last_at, cpu, switches) = clock.phases()
    assert (first, last) == ("listener shut", "exit")
    assert 0.0 <= first_at <= last_at <= clock.elapsed
    assert cpu >= 0.0 and switches >= 0
    summary = clock.summary()
    assert re.fullmatch(r"listener shut \+\d+\.\d{3}s; exit \+\d+\.\d{3}s \(CPU \d+\.\d\ds, of which the "
                        r"stopping thread \d+\.\d\ds; \d+ context switches\)", summary), summary


def test_a_clock_with_no_phase_says_so() -> None:
    assert StopClock().summary() == "no phase"


def test_the_line_goes_to_its_own_logger_at_info(caplog: pytest.LogCaptureFixture) -> None:
    clock = StopClock()
    clock.mark("exit")
    with caplog.at_level(logging.INFO, logger="rusty_ws.server.stop"):
        clock.report()
    [record] = [r for r in caplog.records if r.name == "rusty_ws.server.stop"]
    assert record.levelno == logging.INFO and record.getMessage().startswith("stopped in ")
    assert "exit +" in record.getMessage()


def test_at_debug_each_phase_is_logged_as_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    """A stop killed by its supervisor (SIGKILL after 10 s, in a storm) never reaches its one line:
    at DEBUG each mark says how far it got, as it is taken."""
    with caplog.at_level(logging.DEBUG, logger="rusty_ws.server.stop"):
        clock = StopClock()  # the signal's mark: not logged, it is the start
        clock.mark("listener shut")
        clock.mark("4200s queued")
    lines = [r.getMessage() for r in caplog.records if r.name == "rusty_ws.server.stop"]
    assert len(lines) == 2 and all(r.levelno == logging.DEBUG for r in caplog.records), lines
    assert re.fullmatch(r"stopping: listener shut \+\d+\.\d{3}s \(CPU \d+\.\d\ds\)", lines[0]), lines
    assert lines[1].startswith("stopping: 4200s queued +")


def test_at_info_the_phases_are_not_logged_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="rusty_ws.server.stop"):
        StopClock().mark("listener shut")
    assert not [r for r in caplog.records if r.name == "rusty_ws.server.stop"]
