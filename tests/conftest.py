"""Shared fixtures: a running hub per test, and a check that no rusty_ws thread outlives its test."""

from __future__ import annotations

import threading
from typing import Iterator

import pytest

from support import WAIT, RunningServer, running_server


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """A hub with default settings on a free loopback port."""
    with running_server() as running:
        yield running


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Fail a test that leaves a ``rusty_ws-*`` thread running after its servers and clients stopped."""
    before = set(threading.enumerate())
    yield
    leftovers = [
        thread for thread in threading.enumerate()
        if thread not in before and thread.name.startswith("rusty_ws-")
    ]
    for thread in leftovers:
        thread.join(WAIT)
    alive = [thread.name for thread in leftovers if thread.is_alive()]
    assert not alive, f"threads left running: {alive}"
