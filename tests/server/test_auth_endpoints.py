"""Login, refresh, CORS, refused handshakes, and session binding of token connections."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
import websocket

from rusty_ws.protocol import (
    encode_ping,
    encode_publish,
    encode_register_name,
    encode_register_session,
    encode_subscribe,
    encode_unsubscribe,
)
from support import SECRET, WAIT, Client, RunningServer, error_of, http, hub_config, login, running_server


def handshake_status(url: str, **kwargs) -> int:
    try:
        websocket.create_connection(url, timeout=WAIT, **kwargs).close()
    except websocket.WebSocketBadStatusException as exc:
        return exc.status_code
    return 101


class TestLogin:
    def test_demo_user_gets_a_token(self, server: RunningServer) -> None:
        status, _, body = http("POST", server.http_url + "/auth/token",
                               {"username": "testuser", "password": "password", "session_id": "user-session-123"})
        assert status == 200 and body["expires_in"] == 3600
        claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
        assert (claims["sub"], claims["sid"]) == ("testuser", "user-session-123")
        assert 3600 <= claims["exp"] - claims["iat"] <= 3601  # exp rounds up, iat down

    def test_session_defaults_to_session_username(self, server: RunningServer) -> None:
        token = login(server)
        assert jwt.decode(token, SECRET, algorithms=["HS256"])["sid"] == "session-testuser"

    def test_lifetime_comes_from_jwt_expiration_seconds(self) -> None:
        with running_server(create_app_with({"JWT_EXPIRATION_SECONDS": 120})) as server:
            _status, _, body = http("POST", server.http_url + "/auth/token",
                                   {"username": "testuser", "password": "password"})
            assert body["expires_in"] == 120

    @pytest.mark.parametrize("body", [
        {"username": "testuser", "password": "wrong"},
        {"username": "nobody", "password": "password"},
        {"username": "testuser", "password": ""},
    ])
    def test_wrong_credentials_401(self, server: RunningServer, body: dict) -> None:
        status, _, reply = http("POST", server.http_url + "/auth/token", body)
        assert status == 401 and reply["code"] == "bad_credentials" and reply["error"]

    @pytest.mark.parametrize("raw, code", [
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b'"text"', "invalid_json"),
        (b"{}", "missing_fields"),
        (b'{"username": "testuser"}', "missing_fields"),
        (b'{"username": 5, "password": "password"}', "missing_fields"),
        (b'{"username": "testuser", "password": "password", "session_id": 7}', "invalid_session"),
        (b'{"username": "testuser", "password": "password", "session_id": "a|b"}', "invalid_session"),
        (b'{"username": "test|user", "password": "password"}', "invalid_session"),
        (b"[" * 100_000, "body_too_large"),
        (b"[" * 60_000 + b"]" * 60_000, "body_too_large"),
        (b"[" * 30_000 + b"]" * 30_000, "invalid_json"),
    ])
    def test_bad_bodies_400_never_500(self, server: RunningServer, raw: bytes, code: str) -> None:
        status, _, reply = http("POST", server.http_url + "/auth/token", raw=raw,
                                headers={"Content-Type": "application/json"})
        assert status in (400, 413) and reply["code"] == code

    def test_users_file_and_demo_user_is_gone(self, tmp_path) -> None:
        from rusty_ws.auth import hash_password

        users = tmp_path / "users.json"
        users.write_text(json.dumps({"alice": hash_password("wonderland")}))
        with running_server(**{"users_file": str(users)}) as server:
            assert http("POST", server.http_url + "/auth/token",
                        {"username": "alice", "password": "wonderland"})[0] == 200
            assert http("POST", server.http_url + "/auth/token",
                        {"username": "testuser", "password": "password"})[0] == 401

    def test_app_hook_decides(self) -> None:
        from flask import Flask

        from rusty_ws import PubSub

        app = Flask(__name__)
        app.config.update(hub_config())
        pubsub = PubSub(app)
        seen = []

        @pubsub.check_credentials
        def check(username: str, password: str) -> bool:
            seen.append(username)
            if username == "boom":
                raise RuntimeError("database down")
            return password == "open sesame"

        with running_server(app) as server:
            url = server.http_url + "/auth/token"
            assert http("POST", url, {"username": "x", "password": "open sesame"})[0] == 200
            assert http("POST", url, {"username": "testuser", "password": "password"})[0] == 401
            assert http("POST", url, {"username": "boom", "password": "open sesame"})[0] == 401
        assert seen == ["x", "testuser", "boom"]


def create_app_with(config: dict):
    from rusty_ws import create_app

    return create_app(hub_config() | config)


class TestRefresh:
    def test_refresh_keeps_sub_and_sid(self, server: RunningServer) -> None:
        token = login(server, session_id="s-1")
        status, _, body = http("POST", server.http_url + "/auth/refresh",
                               headers={"Authorization": f"Bearer {token}"})
        assert status == 200
        claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
        assert (claims["sub"], claims["sid"]) == ("testuser", "s-1")

    @pytest.mark.parametrize("header", [None, "Bearer", "Basic dXNlcjpwdw==", "Bearer garbage"])
    def test_refresh_refuses(self, server: RunningServer, header: str | None) -> None:
        headers = {"Authorization": header} if header else {}
        status, _, body = http("POST", server.http_url + "/auth/refresh", headers=headers)
        assert status == 401 and body["code"] in ("token_required", "token_invalid")

    def test_refresh_refuses_expired(self, server: RunningServer) -> None:
        expired = jwt.encode({"sub": "a", "sid": "s", "iat": 1, "exp": 2}, SECRET, algorithm="HS256")
        status, _, body = http("POST", server.http_url + "/auth/refresh",
                               headers={"Authorization": f"Bearer {expired}"})
        assert status == 401 and body["code"] == "token_expired"


class TestCors:
    def test_any_origin_by_default(self, server: RunningServer) -> None:
        status, headers, _ = http("OPTIONS", server.http_url + "/auth/token",
                                  headers={"Origin": "http://localhost:8080",
                                           "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "content-type"})
        assert status == 200
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert "Content-Type" in headers["Access-Control-Allow-Headers"]
        assert "POST" in headers["Access-Control-Allow-Methods"]
        _, headers, _ = http("POST", server.http_url + "/auth/token",
                             {"username": "testuser", "password": "password"},
                             headers={"Origin": "http://localhost:8080", "Content-Type": "application/json"})
        assert headers["Access-Control-Allow-Origin"] == "*"

    def test_configured_origins(self) -> None:
        with running_server(cors_origins=["http://localhost:8080"]) as server:
            _, headers, _ = http("GET", server.http_url + "/healthz", headers={"Origin": "http://localhost:8080"})
            assert headers["Access-Control-Allow-Origin"] == "http://localhost:8080"
            assert "Origin" in headers["Vary"]
            _, headers, _ = http("GET", server.http_url + "/healthz", headers={"Origin": "http://evil.example"})
            assert "Access-Control-Allow-Origin" not in headers
            assert handshake_status(server.ws_url, origin="http://evil.example") == 403
            assert handshake_status(server.ws_url, origin="http://localhost:8080") == 101

    def test_the_hubs_own_origin_is_always_allowed(self) -> None:
        with running_server(cors_origins=[]) as server:
            own = f"http://127.0.0.1:{server.port}"
            assert handshake_status(server.ws_url, origin=own) == 101
            assert handshake_status(server.ws_url, origin="http://localhost:8080") == 403
            _, headers, _ = http("GET", server.http_url + "/healthz", headers={"Origin": own})
            assert headers["Access-Control-Allow-Origin"] == own


def forged(header: dict, claims: dict) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part(header)}.{part(claims)}."


BAD_TOKENS = {
    "alg none": forged({"alg": "none", "typ": "JWT"}, {"sub": "x", "sid": "s", "iat": 1, "exp": 9_999_999_999}),
    "other key": jwt.encode({"sub": "x", "sid": "s", "iat": 1, "exp": 9_999_999_999}, "k" * 40, algorithm="HS256"),
    "expired": jwt.encode({"sub": "x", "sid": "s", "iat": 1, "exp": 2}, SECRET, algorithm="HS256"),
    "garbage": "not-a-token",
    "no sid": jwt.encode({"sub": "x", "iat": 1, "exp": 9_999_999_999}, SECRET, algorithm="HS256"),
}


class TestHandshake:
    @pytest.mark.parametrize("name", BAD_TOKENS)
    def test_bad_token_in_query_is_401(self, server: RunningServer, name: str) -> None:
        assert handshake_status(f"{server.ws_url}?token={BAD_TOKENS[name]}") == 401
        assert server.hub.counts()["connections"] == 0

    @pytest.mark.parametrize("name", BAD_TOKENS)
    def test_bad_token_in_header_is_401(self, server: RunningServer, name: str) -> None:
        assert handshake_status(server.ws_url, header=[f"Authorization: Bearer {BAD_TOKENS[name]}"]) == 401

    def test_good_token_in_header(self, server: RunningServer) -> None:
        token = server.token("alice", "s")
        with Client(server.ws_url, header=[f"Authorization: Bearer {token}"]) as client:
            client.command(encode_subscribe("T"))
            client.send(encode_publish("T"))
            assert client.recv_json()["user"] == "alice"

    def test_require_auth(self) -> None:
        # Issue 13: no 401 any more; the handshake is upgraded to wait for auth:{token}
        # (tests/server/test_token_lifetime.py has the rest of that rule).
        with running_server(require_auth=True) as server:
            with server.connect() as client:
                client.send(encode_ping())
                assert json.loads(client.recv()[len("error:"):])["code"] == "token_required"
                assert client.recv_close()[0] == 4001
            with server.connect(server.token("alice")) as client:
                assert client.command(encode_ping()) == []

    def test_refused_handshakes_hold_no_slot(self) -> None:
        with running_server(max_connections=1) as server:
            for _ in range(5):
                assert handshake_status(f"{server.ws_url}?token=bad") == 401
            with server.connect() as client:
                assert client.command(encode_ping()) == []


class TestSessionBinding:
    def test_own_session_is_accepted_silently(self, server: RunningServer) -> None:
        with server.connect(server.token("alice", "session-A")) as client:
            assert client.command(encode_register_name("Client1")) == []
            assert client.command(encode_register_session("session-A")) == []
            assert client.command(encode_subscribe("T", "session-A")) == []
            assert client.command(encode_subscribe("U")) == []  # the token's session

    @pytest.mark.parametrize("command", [
        encode_register_session("session-B"),
        encode_subscribe("T", "session-B"),
        encode_unsubscribe("T", "session-B"),
        encode_publish("T", session_id="session-B"),
    ])
    def test_other_sessions_are_forbidden(self, server: RunningServer, command: str) -> None:
        with server.connect() as victim, server.connect(server.token("alice", "session-A")) as client:
            victim.command(encode_subscribe("T", "session-B"))
            assert error_of(client.command(command))["code"] == "forbidden_session"
            assert victim.sync() == []
            assert client.command(encode_subscribe("T")) == []  # still open, still bound

    def test_register_name_does_not_change_identity(self, server: RunningServer) -> None:
        with server.connect(server.token("alice", "s")) as client:
            client.command(encode_register_name("Mallory"))
            client.command(encode_subscribe("T"))
            client.send(encode_publish("T", user="root"))  # a field only the server may set
            message = client.recv_json()
            assert (message["publisher_name"], message["user"]) == ("Mallory", "alice")

    def test_anonymous_user_field_is_stripped(self, server: RunningServer) -> None:
        with server.connect() as client:
            client.command(encode_subscribe("T"))
            client.send(encode_publish("T", user="root"))
            assert "user" not in client.recv_json()
