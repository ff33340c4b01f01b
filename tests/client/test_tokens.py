"""Token refresh and re-login of WsClient, with the server's clock moved instead of waiting."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from rusty_ws import TokenExpired, TokenInvalid, WsClient
from rusty_ws.auth import TokenService
from rusty_ws.server.state import state_of
from support import FAST_CLIENT, SECRET, WAIT, Hooks, RunningServer, messages, running_server


def recording(server: RunningServer, method: str, record: Callable[[tuple], Any]) -> None:
    """Have ``record`` take the arguments of each call to the server's TokenService ``method``."""
    tokens = state_of(server.app).tokens
    original = getattr(tokens, method)

    def wrapper(*args, **kwargs):
        record(args)
        return original(*args, **kwargs)

    setattr(tokens, method, wrapper)


def counting(server: RunningServer, method: str) -> list:
    """Count calls to the server's TokenService ``method``."""
    calls: list = []
    recording(server, method, calls.append)
    return calls


def test_refresh_when_less_than_five_minutes_remain() -> None:
    with running_server(jwt_expiration_seconds=200) as server:
        refreshes = counting(server, "refresh")
        with WsClient.connect_with_auth("c", server.ws_url, server.http_url + "/auth/token",
                                        "testuser", "password", "s-1", **FAST_CLIENT) as client:
            before = jwt.decode(client.get_token(), SECRET, algorithms=["HS256"])
            assert client.refresh_token_if_needed() is True
            after = jwt.decode(client.get_token(), SECRET, algorithms=["HS256"])
            assert len(refreshes) == 1
            assert (after["sub"], after["sid"]) == (before["sub"], before["sid"]) == ("testuser", "s-1")
            assert after["exp"] >= before["exp"]


def expired_issuer(server: RunningServer) -> None:
    """Make the server issue tokens that expired an hour ago by the real clock (its own clock agrees they are fine).

    The hub's connections keep time by the same service (expiry, 4002), so it is replaced there too.
    """
    state = state_of(server.app)
    state.tokens = state.access.tokens = TokenService(SECRET, 3600, clock=lambda: time.time() - 7200)


def test_expired_token_means_logging_in_again() -> None:
    with running_server() as server:
        expired_issuer(server)
        logins = counting(server, "issue")
        with WsClient.connect_with_auth("c", server.ws_url, server.http_url + "/auth/token",
                                        "testuser", "password", **FAST_CLIENT) as client:
            assert not client.is_authenticated()
            assert client.refresh_token_if_needed() is True
            assert len(logins) == 2


def test_reconnect_uses_a_usable_token() -> None:
    with running_server() as server:
        expired_issuer(server)
        logins = counting(server, "issue")
        client = WsClient.connect_with_auth("c", server.ws_url, server.http_url + "/auth/token",
                                            "testuser", "password", **FAST_CLIENT)
        hooks = Hooks(client)
        received = messages(client, "T")
        client.subscribe("c", "T")
        [connection] = server.hub.connections()
        connection.close(4200, "restart")
        assert hooks.connected.get(timeout=WAIT) is client
        assert len(logins) == 2  # the expired token was not reused: the client logged in again
        client.publish("c", "T", "after")
        assert received.get(timeout=WAIT) == "after"
        client.close()


def test_without_credentials_an_expired_token_cannot_be_renewed() -> None:
    with running_server() as server:
        client = WsClient("c", server.ws_url)
        client._connector.token = jwt.encode({"sub": "a", "sid": "s", "iat": 1, "exp": 2}, SECRET, algorithm="HS256")
        with pytest.raises(TokenExpired):
            client.refresh_token_if_needed()


# --------------------------------------------------------------------------- tokens on a live connection (issue 13)


def watching(server: RunningServer, method: str) -> queue.Queue:
    """Each call to the server's TokenService ``method``, its arguments put in a queue as it happens."""
    calls: queue.Queue = queue.Queue()
    recording(server, method, calls.put)
    return calls


def replace_refresh(server: RunningServer, refresh) -> queue.Queue:
    """``/auth/refresh`` answers with ``refresh(token)`` (which may raise); each call's token goes in a queue."""
    tokens = state_of(server.app).tokens
    calls: queue.Queue = queue.Queue()

    def wrapper(token):
        calls.put(token)
        return refresh(token)

    tokens.refresh = wrapper
    return calls


def refused(token):
    raise TokenInvalid("refused by the test")


def round_trip(client: WsClient, received: queue.Queue, payload: str) -> None:
    client.publish("c", "T", payload)
    assert received.get(timeout=WAIT) == payload


def test_in_band_refresh_keeps_the_connection_past_several_expiries() -> None:
    with running_server(jwt_expiration_seconds=3) as server:
        refreshes = watching(server, "refresh")
        with WsClient.connect_with_auth("c", server.ws_url, server.http_url + "/auth/token",
                                        "testuser", "password", "s-1", **FAST_CLIENT) as client:
            hooks = Hooks(client)
            received = messages(client, "T")
            client.subscribe("c", "T")
            [connection] = server.hub.connections()
            first = jwt.decode(client.get_token(), SECRET, algorithms=["HS256"])
            # Wait on the refreshes themselves until two lifetimes past the first token's expiry.
            count = 0
            while time.time() < first["exp"] + 2 * 3:
                refreshes.get(timeout=WAIT)
                count += 1
                round_trip(client, received, f"after refresh {count}")
            assert count >= 3
            round_trip(client, received, "past the expiries")
            assert server.hub.connections() == [connection]  # the same connection: never reconnected
            assert hooks.disconnected.empty() and hooks.reconnecting.empty()
            assert jwt.decode(client.get_token(), SECRET, algorithms=["HS256"])["exp"] > first["exp"] + 3


def test_a_failed_http_refresh_means_a_new_login_then_in_band() -> None:
    with running_server(jwt_expiration_seconds=2) as server:
        logins = watching(server, "issue")
        attempts = replace_refresh(server, refused)
        with WsClient.connect_with_auth("c", server.ws_url, server.http_url + "/auth/token",
                                        "testuser", "password", **FAST_CLIENT) as client:
            hooks = Hooks(client)
            received = messages(client, "T")
            client.subscribe("c", "T")
            [connection] = server.hub.connections()
            first = jwt.decode(client.get_token(), SECRET, algorithms=["HS256"])
            logins.get(timeout=WAIT)  # connect_with_auth's
            while time.time() < first["exp"] + 2:
                attempts.get(timeout=WAIT)  # /auth/refresh refused ...
                logins.get(timeout=WAIT)    # ... so the client logged in again
                round_trip(client, received, "still here")
            assert server.hub.connections() == [connection]
            assert hooks.disconnected.empty()


def test_a_refused_in_band_refresh_ends_in_4002_and_a_reconnection_with_a_new_login() -> None:
    with running_server(jwt_expiration_seconds=2) as server:
        tokens = state_of(server.app).tokens
        issue = tokens.issue
        # /auth/refresh hands out a token of another session: the hub refuses it in-band (token_mismatch).
        attempts = replace_refresh(server, lambda token: issue("testuser", "elsewhere"))
        logins = watching(server, "issue")
        with WsClient.connect_with_auth("c", server.ws_url, server.http_url + "/auth/token",
                                        "testuser", "password", **FAST_CLIENT) as client:
            hooks = Hooks(client)
            received = messages(client, "T")
            client.subscribe("c", "T")
            [connection] = server.hub.connections()
            logins.get(timeout=WAIT)  # connect_with_auth's
            first_token = client.get_token()
            attempts.get(timeout=WAIT)
            code, reason = hooks.disconnected.get(timeout=WAIT)
            assert (code, reason) == (4002, "token expired: reconnect with a new token")
            assert hooks.connected.get(timeout=WAIT) is client
            logins.get(timeout=WAIT)  # the reconnection logged in again
            [again] = server.hub.connections()
            assert again is not connection
            assert client.get_token() != first_token
            assert jwt.decode(client.get_token(), SECRET, algorithms=["HS256"])["sid"] == "session-testuser"
            round_trip(client, received, "after 4002")  # the subscription was restored


def test_without_credentials_4002_stops_the_client(caplog: pytest.LogCaptureFixture) -> None:
    with running_server(jwt_expiration_seconds=2) as server:
        replace_refresh(server, refused)
        client = WsClient("c", server.ws_url, "session-A", **FAST_CLIENT)
        client._connector.token = server.token("testuser", "session-A")  # a token given by the user
        hooks = Hooks(client)
        with caplog.at_level("WARNING", logger="rusty_ws.client"):
            client.open()
            code, _ = hooks.disconnected.get(timeout=WAIT)
            assert code == 4002
            client._reader.join(WAIT)
        assert not client._reader.is_alive() and not client.is_connected()
        assert hooks.reconnecting.empty()
        assert any("4002" in record.getMessage() and "not reconnecting" in record.getMessage()
                   for record in caplog.records)
        client.close()


def test_the_token_goes_in_the_header_not_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    import rusty_ws.client.connector as connector

    handshakes: list[tuple[str, list[str]]] = []
    create = connector.websocket.create_connection

    def recording(url, **options):
        handshakes.append((url, options.get("header") or []))
        return create(url, **options)

    monkeypatch.setattr(connector.websocket, "create_connection", recording)
    with running_server() as server:
        with WsClient.connect_with_auth("c", server.ws_url, server.http_url + "/auth/token",
                                        "testuser", "password", **FAST_CLIENT) as client:
            [connection] = server.hub.connections()
            assert connection.claims is not None and connection.claims.sub == "testuser"
            [(url, header)] = handshakes
            assert url == server.ws_url and "token" not in url
            assert header == [f"Authorization: Bearer {client.get_token()}"]
