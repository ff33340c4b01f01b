"""Tokens on live connections (issue 13): expiry (4002), in-band ``refresh:``, first-frame ``auth:``, REQUIRE_AUTH.

Expiry tests use 2-second tokens and wait on the close frame (or on its
absence) with a timeout: never a sleep.
"""

from __future__ import annotations

import json
import logging
import time

import jwt
import pytest

from rusty_ws.auth import TokenService
from rusty_ws.protocol import (
    CLOSE_CODE_EXPLANATIONS,
    Authenticated,
    CloseCode,
    ClosePolicy,
    Refreshed,
    close_policy,
    encode_auth,
    encode_ping,
    encode_publish,
    encode_refresh,
    encode_subscribe,
)
from support import MS, SECRET, WAIT, Client, RunningServer, error_of, running_server

#: How late the hub may close an expired connection (the issue: within one second).
LATE = 1.0 * MS * 1000


def exp_of(token: str) -> int:
    return jwt.decode(token, options={"verify_signature": False})["exp"]


def wait_close(client: Client, due: float) -> tuple[int, str, float]:
    """Wait for the server's close frame, expected around ``due`` (UNIX time); its code, reason and arrival."""
    code, reason = client.recv_close(timeout=max(0.0, due - time.time()) + LATE + WAIT)
    return code, reason, time.time()


def stays_open_until(client: Client, when: float) -> None:
    """Nothing arrives (no close) until ``when``: a read that must time out."""
    client.ws.settimeout(max(0.01, when - time.time()))
    try:
        frame = client.ws.recv()
    except TimeoutError:
        return
    except Exception as exc:  # websocket-client raises its own timeout type on some versions
        if "timed out" in str(exc).lower():
            return
        raise
    raise AssertionError(f"something arrived: {frame!r}")


@pytest.fixture
def short() -> RunningServer:
    """A hub whose tokens live 2 seconds."""
    with running_server(jwt_expiration_seconds=2) as running:
        yield running


@pytest.fixture(autouse=True)
def debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The hub's DEBUG lines too (every frame), so the token check sees what they would log."""
    caplog.set_level(logging.DEBUG, logger="rusty_ws.server")


def test_4002_is_a_documented_do_not_reconnect_code() -> None:
    assert CloseCode.TOKEN_EXPIRED == 4002
    assert close_policy(4002) is ClosePolicy.DO_NOT_RECONNECT
    assert CLOSE_CODE_EXPLANATIONS[4002] == "token expired: reconnect with a new token"


class TestExpiry:
    @pytest.mark.parametrize("how", ["query", "header", "auth frame"])
    def test_a_two_second_tokens_connection_is_closed_with_4002(self, short: RunningServer, how: str) -> None:
        token = short.token("alice", "s")
        exp = exp_of(token)
        if how == "query":
            client = short.connect(token)
        elif how == "header":
            client = Client(short.ws_url, header=[f"Authorization: Bearer {token}"])
        else:
            client = short.connect()
            client.send(encode_auth(token))
            assert Authenticated.parse(client.recv()).sub == "alice"
        with client:
            assert client.sync() == []
            code, reason, at = wait_close(client, exp)
        assert (code, reason) == (4002, CLOSE_CODE_EXPLANATIONS[4002])
        assert exp <= at <= exp + LATE, (exp, at)
        short.wait_connections(0)
        assert len(short.hub.writer.timers) == 0

    def test_the_grace_delays_the_close(self) -> None:
        with running_server(jwt_expiration_seconds=2, token_expiry_grace=1) as server:
            token = server.token("alice", "s")
            with server.connect(token) as client:
                code, _, at = wait_close(client, exp_of(token) + 1)
        assert code == 4002 and exp_of(token) + 1 <= at <= exp_of(token) + 1 + LATE

    def test_a_refresh_keeps_it_open_past_the_first_expiry(self, short: RunningServer) -> None:
        token = short.token("alice", "s")
        later = TokenService(SECRET, lifetime=4).issue("alice", "s").token
        first, second = exp_of(token), exp_of(later)
        assert second > first
        with short.connect(token) as client:
            [reply] = client.command(encode_refresh(later))
            assert 3 <= Refreshed.parse(reply).expires_in <= 4
            stays_open_until(client, first + LATE)
            client.command(encode_subscribe("T"))
            client.send(encode_publish("T", "after the first expiry"))
            assert json.loads(client.recv())["user"] == "alice"
            code, _, at = wait_close(client, second)
        assert code == 4002 and second <= at <= second + LATE

    def test_refused_refreshes_change_nothing(self, short: RunningServer, hidden_tokens: set[str]) -> None:
        token = short.token("alice", "s")
        expired = jwt.encode({"sub": "alice", "sid": "s", "iat": 1, "exp": 2}, SECRET, algorithm="HS256")
        other_key = jwt.encode({"sub": "alice", "sid": "s", "iat": 1, "exp": 9_999_999_999}, "k" * 40,
                               algorithm="HS256")
        hidden_tokens.update({expired, other_key})
        longer = TokenService(SECRET, lifetime=60)
        cases = {
            "refresh:garbage": "token_invalid",
            encode_refresh(other_key): "token_invalid",
            encode_refresh(expired): "token_expired",
            encode_refresh(longer.issue("bob", "s").token): "token_mismatch",
            encode_refresh(longer.issue("alice", "other").token): "token_mismatch",
            "refresh:": "token_invalid",
        }
        with short.connect(token) as client:
            for text, code in cases.items():
                error = error_of(client.command(text))
                assert (error["code"], error["command"]) == (code, "refresh"), text
                for secret in hidden_tokens:
                    assert secret not in error["message"]
            code, _, at = wait_close(client, exp_of(token))
        assert code == 4002 and exp_of(token) <= at <= exp_of(token) + LATE  # the old expiry

    def test_refresh_on_an_anonymous_connection(self, server: RunningServer) -> None:
        with server.connect() as client:
            error = error_of(client.command(encode_refresh(server.token("alice", "s"))))
            assert error["code"] == "not_authenticated"
            client.command(encode_subscribe("T"))
            client.send(encode_publish("T", 1))
            assert "user" not in json.loads(client.recv())  # still anonymous

    def test_timers_are_forgotten_with_their_connections(self, server: RunningServer) -> None:
        clients = [server.connect(server.token(f"u{n}", "s")) for n in range(20)]
        try:
            for client in clients:
                client.sync()
            assert len(server.hub.writer.timers) == 20  # one deadline each, on the writer's thread
        finally:
            for client in clients:
                client.close()
        server.wait_connections(0)
        assert len(server.hub.writer.timers) == 0


class TestFirstFrameAuth:
    def test_a_good_token_makes_it_a_token_connection(self, server: RunningServer) -> None:
        token = server.token("alice", "session-A")
        with server.connect() as client, server.connect() as watcher:
            client.send(encode_auth(token))
            reply = Authenticated.parse(client.recv())
            assert (reply.sub, reply.sid) == ("alice", "session-A") and 3599 <= reply.expires_in <= 3600
            watcher.command(encode_subscribe("T", "session-A"))
            client.command(encode_subscribe("T"))  # starts in the token's sid
            client.send(encode_publish("T", "hi"))
            message = json.loads(client.recv())
            assert (message["session_id"], message["user"]) == ("session-A", "alice")
            assert json.loads(watcher.recv())["user"] == "alice"
            assert error_of(client.command(encode_subscribe("T", "session-B")))["code"] == "forbidden_session"

    @pytest.mark.parametrize("name, code", [("garbage", "token_invalid"), ("expired", "token_expired"),
                                            ("other key", "token_invalid"), ("empty", "token_invalid")])
    def test_a_bad_token_is_answered_then_closed_with_4001(self, server: RunningServer, hidden_tokens: set[str],
                                                           name: str, code: str) -> None:
        token = {
            "garbage": "not-a-token",
            "expired": jwt.encode({"sub": "x", "sid": "s", "iat": 1, "exp": 2}, SECRET, algorithm="HS256"),
            "other key": jwt.encode({"sub": "x", "sid": "s", "iat": 1, "exp": 9_999_999_999}, "k" * 40,
                                    algorithm="HS256"),
            "empty": "",
        }[name]
        if token:
            hidden_tokens.add(token)
        with server.connect() as client:
            client.send("auth:" + token)
            client.send(encode_subscribe("T", "s"))  # after the close: never carried out
            error = json.loads(client.recv()[len("error:"):])
            assert (error["code"], error["command"]) == (code, "auth")
            assert client.recv_close() == (4001, CLOSE_CODE_EXPLANATIONS[4001])
        server.wait_connections(0)
        assert server.hub.counts()["subscriptions"] == 0

    def test_auth_after_another_frame_is_refused_and_changes_nothing(self, server: RunningServer) -> None:
        with server.connect() as client:
            assert client.sync() == []
            error = error_of(client.command(encode_auth(server.token("alice", "s"))))
            assert error["code"] == "auth_not_first"
            client.command(encode_subscribe("T"))
            client.send(encode_publish("T", 1))
            message = json.loads(client.recv())
            assert "user" not in message and message["session_id"] == "default"

    def test_a_second_auth_is_refused(self, server: RunningServer) -> None:
        with server.connect() as client:
            client.send(encode_auth(server.token("alice", "s")))
            Authenticated.parse(client.recv())
            error = error_of(client.command(encode_auth(server.token("bob", "other"))))
            assert error["code"] == "already_authenticated"
            client.command(encode_subscribe("T"))
            client.send(encode_publish("T", 1))
            message = json.loads(client.recv())
            assert (message["user"], message["session_id"]) == ("alice", "s")

    def test_auth_on_a_connection_opened_with_a_token_is_refused(self, server: RunningServer) -> None:
        with server.connect(server.token("alice", "s")) as client:
            error = error_of(client.command(encode_auth(server.token("bob", "other"))))
            assert error["code"] == "already_authenticated"
            assert client.sync() == []


class TestRequireAuth:
    @pytest.fixture
    def strict(self) -> RunningServer:
        with running_server(require_auth=True, auth_timeout=300 * MS, jwt_expiration_seconds=2) as running:
            yield running

    def test_nothing_in_time_is_closed_with_4001(self, strict: RunningServer) -> None:
        start = time.monotonic()
        with strict.connect() as client:
            code, reason = client.recv_close()
        elapsed = time.monotonic() - start
        assert code == 4001 and "auth" in reason
        assert 250 * MS <= elapsed <= 300 * MS + LATE

    @pytest.mark.parametrize("first", [encode_subscribe("T", "s"), encode_ping(), "refresh:x", "binary"])
    def test_anything_else_first_is_not_carried_out(self, strict: RunningServer, first: str) -> None:
        with strict.connect() as client:
            if first == "binary":
                client.ws.send_binary(b"subscribe:T|s")
            else:
                client.send(first)
            reply = client.recv()
            assert reply != "pong"
            assert json.loads(reply[len("error:"):])["code"] == "token_required"
            assert client.recv_close()[0] == 4001
        strict.wait_connections(0)
        assert strict.hub.counts()["subscriptions"] == 0

    def test_auth_in_time_works_and_expires(self, strict: RunningServer) -> None:
        token = strict.token("alice", "s")
        with strict.connect() as client:
            client.send(encode_auth(token))
            assert Authenticated.parse(client.recv()).sid == "s"
            stays_open_until(client, time.time() + 400 * MS)  # past the auth timeout: still open
            assert client.sync() == []
            code, _, at = wait_close(client, exp_of(token))
        assert code == 4002 and at <= exp_of(token) + LATE

    @pytest.mark.parametrize("how", ["query", "header"])
    def test_handshake_tokens_keep_working(self, strict: RunningServer, how: str) -> None:
        token = strict.token("alice", "s")
        client = strict.connect(token) if how == "query" else Client(
            strict.ws_url, header=[f"Authorization: Bearer {token}"])
        with client:
            stays_open_until(client, time.time() + 400 * MS)  # no auth: needed
            assert client.sync() == []

    def test_a_bad_handshake_token_is_still_401(self, strict: RunningServer, hidden_tokens: set[str]) -> None:
        from test_auth_endpoints import handshake_status

        hidden_tokens.add("garbage-token-value")
        assert handshake_status(strict.ws_url + "?token=garbage-token-value") == 401
