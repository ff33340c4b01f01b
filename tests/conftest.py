"""Shared fixtures: a running hub per test, and checks that no rusty_ws thread outlives its test
and that no token reaches a log line."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from rusty_ws.auth import TokenService
from support import WAIT, RunningServer, running_server, tokens_in


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """A hub with default settings on a free loopback port."""
    with running_server() as running:
        yield running


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    """A list of sockets that are all closed when the test ends."""
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


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


@pytest.fixture(autouse=True)
def hidden_tokens(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Fail a test whose captured log lines hold a token: every one the hubs issued, and any it adds.

    Issue 13: no token, issued or merely received, valid or not, appears in a log
    line. Every token ``TokenService.issue`` signs during the test (logins,
    refreshes, ``server.token``) is collected here; a test adds the forged or
    garbage tokens it sends (``hidden_tokens.add``). werkzeug logs its request
    lines at INFO, and the hub's own logger is captured at INFO too (a test may
    lower it to DEBUG). Tokens the hub issues in a subprocess (gunicorn) are not seen.
    """
    tokens: set[str] = set()
    original = TokenService.issue

    def issue(self: TokenService, *args: Any, **kwargs: Any) -> Any:
        issued = original(self, *args, **kwargs)
        tokens.add(issued.token)
        return issued

    monkeypatch.setattr(TokenService, "issue", issue)
    if logging.getLogger("rusty_ws.server").getEffectiveLevel() > logging.INFO:
        caplog.set_level(logging.INFO, logger="rusty_ws.server")
    yield tokens
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    leaked = tokens_in(records, tokens)
    assert not leaked, f"tokens in log lines: {leaked[:3]}"


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Bytes that are not plain text (frames with a random mask) are named by their size, so that every
    collection names the tests alike: pytest-xdist's workers must agree (duplicates get pytest's suffixes)."""
    if isinstance(val, (bytes, bytearray)) and not all(32 <= b < 127 for b in val):
        return f"{argname}-{len(val)}B"
    return None
