"""Login that resists guessing (issue 13): failure limits per address and per (username, address), 429 + Retry-After.

Against a real hub; another client address is a socket bound to 127.0.0.2
(all of 127/8 is loopback on Linux), or a forwarded header from a trusted
proxy. Windows are crossed with an injected clock, never a sleep.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import pytest
from werkzeug.security import generate_password_hash

from rusty_ws.server.state import State, state_of
from rusty_ws.server.throttle import LoginThrottle, address_key, client_address
from support import MS, RunningServer, running_server

OTHER_ADDRESS = "127.0.0.2"


def post_login(server: RunningServer, username: str, password: str, source: str = "127.0.0.1",
               headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """``POST /auth/token`` from the loopback address ``source``; (status, headers, JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
    try:
        body = raw if raw is not None else json.dumps({"username": username, "password": password}).encode()
        connection.request("POST", "/auth/token", body=body,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
    finally:
        connection.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_clock(server: RunningServer, clock: FakeClock) -> None:
    """Give the hub a throttle with the same settings and an injected clock."""
    state = state_of(server.app)
    settings = state.settings
    state.throttle = LoginThrottle(settings.login_max_failures_per_address,
                                   settings.login_max_failures_per_user_address, settings.login_window,
                                   settings.login_max_tracked, clock=clock)


@pytest.fixture
def users(tmp_path: Path) -> str:
    """A users file with real (scrypt) hashes: a check costs what it costs in production."""
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"alice": generate_password_hash("wonderland")}))
    return str(path)


def count_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    checked: list[str] = []
    original = State.check_credentials

    def check(self: State, username: str, password: str) -> bool:
        checked.append(username)
        return original(self, username, password)

    monkeypatch.setattr(State, "check_credentials", check)
    return checked


def test_1000_wrong_passwords_are_answered_429_after_the_limit_quickly(
        users: str, monkeypatch: pytest.MonkeyPatch) -> None:
    checked = count_checks(monkeypatch)
    with running_server(users_file=users) as server:
        start = time.monotonic()
        answers = [post_login(server, "alice", f"guess-{n}") for n in range(1000)]
        elapsed = time.monotonic() - start
        statuses = [status for status, _, _ in answers]
        assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 995
        for _, headers, body in answers[5:]:
            assert body["code"] == "too_many_attempts"
            assert headers["Retry-After"].isdigit() and 1 <= int(headers["Retry-After"]) <= 60
        assert len(checked) == 5  # no password was checked past the limit: no hashing cost
        assert elapsed < 60_000 * MS, elapsed
        # The right password from that address is refused too, without a check...
        status, headers, body = post_login(server, "alice", "wonderland")
        assert (status, body["code"]) == (429, "too_many_attempts") and len(checked) == 5
        # ... and works from another address: nobody locks the account out from afar.
        status, _, body = post_login(server, "alice", "wonderland", source=OTHER_ADDRESS)
        assert status == 200 and body["token"]


def test_the_per_address_limit_spans_usernames(server: RunningServer) -> None:
    for n in range(20):  # one failure for each of 20 usernames: below the pair limit, at the address's
        assert post_login(server, f"user-{n}", "nope")[0] == 401
    status, headers, body = post_login(server, "testuser", "password")  # even the right one
    assert (status, body["code"]) == (429, "too_many_attempts") and int(headers["Retry-After"]) >= 1
    assert post_login(server, "testuser", "password", source=OTHER_ADDRESS)[0] == 200


def test_the_block_lasts_the_window_then_ends(server: RunningServer) -> None:
    clock = FakeClock()
    with_clock(server, clock)
    for _ in range(5):
        assert post_login(server, "testuser", "wrong")[0] == 401
    status, headers, _ = post_login(server, "testuser", "password")
    assert status == 429 and headers["Retry-After"] == "60"
    clock.now += 59.5
    for _ in range(50):  # 429 answers do not count, nor extend the block
        status, headers, _ = post_login(server, "testuser", "password")
        assert status == 429 and headers["Retry-After"] == "1"
    clock.now += 0.5
    assert post_login(server, "testuser", "password")[0] == 200


def test_failures_older_than_the_window_are_forgotten(server: RunningServer) -> None:
    clock = FakeClock()
    with_clock(server, clock)
    for _ in range(4):
        assert post_login(server, "testuser", "wrong")[0] == 401
    clock.now += 60
    for _ in range(4):
        assert post_login(server, "testuser", "wrong")[0] == 401
    assert post_login(server, "testuser", "password")[0] == 200


def test_bad_requests_do_not_count(server: RunningServer) -> None:
    for _ in range(30):
        assert post_login(server, "", "", raw=b'{"username": "testuser"}')[0] == 400
        assert post_login(server, "", "", raw=b"not json")[0] == 400
    assert post_login(server, "testuser", "password")[0] == 200


def test_a_success_clears_the_users_counter_not_the_addresses(server: RunningServer) -> None:
    for _ in range(2):
        for _ in range(4):
            assert post_login(server, "testuser", "wrong")[0] == 401
        assert post_login(server, "testuser", "password")[0] == 200
    for n in range(12):  # 8 failures so far from this address; 12 more reach its limit of 20
        assert post_login(server, f"other-{n}", "x")[0] == 401
    assert post_login(server, "testuser", "password")[0] == 429


def test_a_forbidden_session_is_not_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"alice": generate_password_hash("w", method="pbkdf2:sha256:1000")}))
    with running_server(users_file=str(path)) as server:
        body = json.dumps({"username": "alice", "password": "w", "session_id": "not-hers"}).encode()
        for _ in range(10):
            assert post_login(server, "", "", raw=body)[0] == 403
        assert post_login(server, "alice", "w")[0] == 200


@pytest.mark.parametrize("settings", [
    {"login_max_failures_per_address": 0, "login_max_failures_per_user_address": 0},
    {"login_window": 0},
])
def test_zero_turns_the_limits_off(settings: dict[str, Any]) -> None:
    with running_server(**settings) as server:
        for _ in range(30):
            assert post_login(server, "testuser", "wrong")[0] == 401
        assert post_login(server, "testuser", "password")[0] == 200


class TestBehindAProxy:
    def test_a_trusted_proxys_forwarded_address_is_the_client(self) -> None:
        with running_server(trusted_proxies="127.0.0.1") as server:
            victim = {"X-Forwarded-For": "203.0.113.5"}
            for _ in range(5):
                assert post_login(server, "testuser", "wrong", headers=victim)[0] == 401
            assert post_login(server, "testuser", "password", headers=victim)[0] == 429
            # A client cannot escape by prepending an address of its own: the proxy appended the real one.
            spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}
            assert post_login(server, "testuser", "password", headers=spoofed)[0] == 429
            # Another client behind the same proxy is not affected.
            other = {"X-Forwarded-For": "203.0.113.6"}
            assert post_login(server, "testuser", "password", headers=other)[0] == 200

    def test_the_header_is_ignored_from_anyone_else(self) -> None:
        for settings in [{}, {"trusted_proxies": ["10.0.0.0/8"]}]:
            with running_server(**settings) as server:
                for n in range(5):  # a new forged address each time: all count against 127.0.0.1
                    headers = {"X-Forwarded-For": f"198.51.100.{n}"}
                    assert post_login(server, "testuser", "wrong", headers=headers)[0] == 401
                headers = {"X-Forwarded-For": "198.51.100.99"}
                assert post_login(server, "testuser", "password", headers=headers)[0] == 429


class TestClientAddress:
    TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))

    @pytest.mark.parametrize("peer, forwarded, expected", [
        ("192.0.2.1", ["203.0.113.5"], "192.0.2.1"),               # peer not trusted: header ignored
        ("10.0.0.2", ["203.0.113.5"], "203.0.113.5"),
        ("10.0.0.2", ["1.1.1.1, 203.0.113.5, 10.0.0.3"], "203.0.113.5"),  # trusted hops skipped
        ("10.0.0.2", ["1.1.1.1", "203.0.113.5"], "203.0.113.5"),    # several headers, in order
        ("10.0.0.2", [], "10.0.0.2"),
        ("10.0.0.2", ["not-an-address"], "10.0.0.2"),               # a broken chain is not believed
        ("10.0.0.2", ["203.0.113.5:4711"], "203.0.113.5"),
        ("::1", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("::ffff:10.0.0.2", ["203.0.113.5"], "203.0.113.5"),
        ("10.0.0.2", ["10.0.0.9"], "10.0.0.9"),                      # every hop trusted: the first
    ])
    def test_cases(self, peer: str, forwarded: list[str], expected: str) -> None:
        assert client_address(peer, forwarded, self.TRUSTED) == expected

    def test_ipv6_is_counted_per_64(self) -> None:
        assert address_key("2001:db8:1:2::5") == address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
        assert address_key("2001:db8:1:3::5") != address_key("2001:db8:1:2::5")
        assert address_key("192.0.2.7") == "192.0.2.7"


class TestThrottleUnit:
    def test_memory_is_bounded(self) -> None:
        clock = FakeClock()
        throttle = LoginThrottle(20, 5, 60, max_tracked=100, clock=clock)
        for n in range(1000):
            throttle.failed(f"10.0.{n // 256}.{n % 256}", "alice")
        assert throttle.tracked() == (100, 100)
        clock.now += 61
        throttle.failed("192.0.2.1", "bob")  # expired entries are swept
        assert throttle.tracked() == (1, 1)

    def test_usernames_are_kept_as_digests(self) -> None:
        throttle = LoginThrottle(0, 5, 60)
        throttle.failed("192.0.2.1", "a" * 60_000)
        [[key]] = [list(table) for table in throttle._tables if table]
        assert len(key[1]) == 16
