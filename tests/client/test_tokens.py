"""Token refresh and re-login of WsClient, with the server's clock moved instead of waiting."""

from __future__ import annotations

import time

import jwt
import pytest

from rusty_ws import TokenExpired, WsClient
from rusty_ws.auth import TokenService
from rusty_ws.server.state import state_of
from support import FAST_CLIENT, SECRET, WAIT, Hooks, RunningServer, messages, running_server


def counting(server: RunningServer, method: str) -> list:
    """Count calls to the server's TokenService ``method``."""
    tokens = state_of(server.app).tokens
    calls: list = []
    original = getattr(tokens, method)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    setattr(tokens, method, wrapper)
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
