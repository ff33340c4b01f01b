"""Token and credential rules, with an injected clock."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from rusty_ws.auth import DemoUsers, TokenService, UsersFile, default_session_for, hash_password
from rusty_ws.exceptions import TokenExpired, TokenInvalid

SECRET = "s" * 32


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class TestTokens:
    def test_issue_and_verify(self) -> None:
        clock = Clock()
        service = TokenService(SECRET, 60, clock)
        issued = service.issue("alice", "session-x")
        assert issued.expires_in == 60
        claims = service.verify(issued.token)
        assert (claims.sub, claims.sid, claims.iat, claims.exp) == ("alice", "session-x", 1_700_000_000, 1_700_000_060)

    def test_default_session(self) -> None:
        service = TokenService(SECRET)
        assert service.verify(service.issue("bob").token).sid == "session-bob" == default_session_for("bob")

    def test_expired(self) -> None:
        clock = Clock()
        service = TokenService(SECRET, 60, clock)
        token = service.issue("alice").token
        clock.now += 60
        with pytest.raises(TokenExpired):
            service.verify(token)

    def test_other_key(self) -> None:
        token = TokenService("o" * 32).issue("alice").token
        with pytest.raises(TokenInvalid):
            TokenService(SECRET).verify(token)

    def test_alg_none(self) -> None:
        forged = b64({"alg": "none", "typ": "JWT"}) + "." + b64(
            {"sub": "admin", "sid": "session-admin", "iat": 1, "exp": 9_999_999_999}
        ) + "."
        with pytest.raises(TokenInvalid):
            TokenService(SECRET).verify(forged)

    @pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
    def test_hs512_with_same_key_is_refused(self) -> None:
        token = jwt.encode({"sub": "a", "sid": "s", "iat": 1, "exp": 9_999_999_999}, SECRET, algorithm="HS512")
        with pytest.raises(TokenInvalid):
            TokenService(SECRET).verify(token)

    @pytest.mark.parametrize(
        "claims",
        [
            {"sid": "s", "iat": 1, "exp": 9_999_999_999},
            {"sub": "a", "iat": 1, "exp": 9_999_999_999},
            {"sub": "a", "sid": "s", "exp": 9_999_999_999},
            {"sub": "a", "sid": "s", "iat": 1},
            {"sub": "", "sid": "s", "iat": 1, "exp": 9_999_999_999},
            {"sub": 5, "sid": "s", "iat": 1, "exp": 9_999_999_999},
            {"sub": "a", "sid": "s", "iat": 1, "exp": "soon"},
        ],
    )
    def test_bad_claims(self, claims: dict) -> None:
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        with pytest.raises(TokenInvalid):
            TokenService(SECRET).verify(token)

    @pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 10_000, "\u00e9.\u00e9.\u00e9"])
    def test_garbage(self, garbage: str) -> None:
        with pytest.raises(TokenInvalid):
            TokenService(SECRET).verify(garbage)

    def test_refresh_keeps_identity(self) -> None:
        clock = Clock()
        service = TokenService(SECRET, 60, clock)
        token = service.issue("alice", "session-x").token
        clock.now += 30
        fresh = service.refresh(token)
        assert (fresh.claims.sub, fresh.claims.sid, fresh.claims.exp) == ("alice", "session-x", clock.now + 60)

    def test_refresh_refuses_expired(self) -> None:
        clock = Clock()
        service = TokenService(SECRET, 60, clock)
        token = service.issue("alice").token
        clock.now += 61
        with pytest.raises(TokenExpired):
            service.refresh(token)

    @pytest.mark.parametrize("secret, lifetime", [("", 60), (SECRET, 0), (SECRET, -5)])
    def test_bad_settings(self, secret: str, lifetime: int) -> None:
        with pytest.raises(ValueError):
            TokenService(secret, lifetime)


class TestCredentials:
    def test_users_file(self, tmp_path) -> None:
        path = tmp_path / "users.json"
        path.write_text(json.dumps({"alice": hash_password("wonderland")}))
        users = UsersFile.load(str(path))
        assert users("alice", "wonderland")
        assert not users("alice", "Wonderland")
        assert not users("bob", "wonderland")
        assert len(users) == 1

    @pytest.mark.parametrize("content", ["[]", '{"alice": 5}', "not json"])
    def test_bad_users_file(self, tmp_path, content: str) -> None:
        path = tmp_path / "users.json"
        path.write_text(content)
        with pytest.raises(ValueError):
            UsersFile.load(str(path))

    def test_demo_users(self) -> None:
        demo = DemoUsers()
        assert demo("testuser", "password")
        assert not demo("testuser", "passwor")
        assert not demo("admin", "password")


def test_a_token_lives_at_least_its_announced_lifetime() -> None:
    service = TokenService(SECRET, 60, Clock(1_700_000_000.7))
    claims = service.issue("alice").claims
    assert claims.exp - 1_700_000_000.7 >= 60 and claims.iat == 1_700_000_000
