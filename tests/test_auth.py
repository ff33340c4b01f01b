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

    def test_entries_with_sessions_and_admin(self, tmp_path) -> None:
        path = tmp_path / "users.json"
        path.write_text(json.dumps({
            "plain": hash_password("p"),
            "alice": {"password_hash": hash_password("w"), "sessions": ["team-7-*", "exact"], "admin": True},
            "bob": {"password_hash": hash_password("b")},
        }))
        users = UsersFile.load(str(path))
        assert users("alice", "w") and users("bob", "b") and users("plain", "p")
        assert users.admins() == ["alice"]
        assert users.may_use("plain", "session-plain") and not users.may_use("plain", "session-alice")
        assert users.may_use("bob", "session-bob") and not users.may_use("bob", "team-7-x")
        assert users.may_use("alice", "team-7-x") and users.may_use("alice", "exact")
        assert not users.may_use("alice", "session-alice")  # listed sessions replace the default
        assert not users.may_use("alice", "TEAM-7-x")  # case-sensitive
        assert not users.may_use("nobody", "session-nobody")
        assert "scrypt" not in repr(users.entry("alice"))  # the hash is never shown

    @pytest.mark.parametrize("entry, field", [
        ({"sessions": []}, "password_hash"),
        ({"password_hash": "plain-text"}, "password_hash"),
        ({"password_hash": "m$s$h", "sessions": "team-*"}, "sessions"),
        ({"password_hash": "m$s$h", "sessions": [""]}, "sessions"),
        ({"password_hash": "m$s$h", "admin": "yes"}, "admin"),
        ({"password_hash": "m$s$h", "session": ["typo"]}, "unknown fields"),
        (["a list"], "password_hash"),
    ])
    def test_bad_entries_name_the_user_and_field(self, tmp_path, entry, field: str) -> None:
        path = tmp_path / "users.json"
        path.write_text(json.dumps({"alice": entry}))
        with pytest.raises(ValueError, match="alice") as refused:
            UsersFile.load(str(path))
        assert field in str(refused.value)

    def test_unknown_users_cost_a_check_with_the_files_own_method(self, monkeypatch) -> None:
        from werkzeug.security import generate_password_hash

        import rusty_ws.auth as auth

        users = UsersFile({"alice": generate_password_hash("w", method="pbkdf2:sha256:1000")})
        checked = []
        monkeypatch.setattr(auth, "_check_password", lambda stored, password: checked.append(stored) or False)
        assert not users("nobody", "w")
        [decoy] = checked
        assert decoy.startswith("pbkdf2:sha256:1000$")  # as slow as alice's own check

    def test_demo_users(self) -> None:
        demo = DemoUsers()
        assert demo("testuser", "password")
        assert not demo("testuser", "passwor")
        assert not demo("admin", "password")


def test_a_token_lives_at_least_its_announced_lifetime() -> None:
    service = TokenService(SECRET, 60, Clock(1_700_000_000.7))
    claims = service.issue("alice").claims
    assert claims.exp - 1_700_000_000.7 >= 60 and claims.iat == 1_700_000_000


class TestHostileClaims:
    """Tokens signed with the right key whose claims are still wrong (the key may have leaked to a tool)."""

    NOW = 1_700_000_000

    def sign(self, **claims: object) -> str:
        base: dict[str, object] = {"sub": "a", "sid": "s", "iat": self.NOW, "exp": self.NOW + 60}
        base.update(claims)
        return jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, algorithm="HS256")

    @pytest.mark.parametrize("claims", [
        {"exp": float("inf")}, {"exp": float("-inf")}, {"exp": float("nan")}, {"iat": float("nan")},
        {"exp": True}, {"auth_time": float("inf")}, {"auth_time": "yesterday"},
        {"sid": "a|b"}, {"sid": "tab\there"}, {"sid": "x" * 257},
        {"nbf": NOW + 1}, {"nbf": float("nan")}, {"nbf": "now"},
    ], ids=repr)
    def test_refused_as_invalid(self, claims: dict) -> None:
        with pytest.raises(TokenInvalid):
            TokenService(SECRET, 60, Clock(self.NOW)).verify(self.sign(**claims))

    def test_nbf_now_or_before_is_valid(self) -> None:
        service = TokenService(SECRET, 60, Clock(self.NOW))
        assert service.verify(self.sign(nbf=self.NOW)).sub == "a"
        assert service.verify(self.sign(nbf=self.NOW - 30.5)).sub == "a"

    def test_a_huge_finite_exp_is_just_far_away(self) -> None:
        assert TokenService(SECRET, 60, Clock(self.NOW)).verify(self.sign(exp=1e300)).exp == int(1e300)


class TestMaxLifetime:
    def test_a_login_records_its_time_and_the_chain_keeps_it(self) -> None:
        clock = Clock()
        service = TokenService(SECRET, 60, clock, max_lifetime=150)
        first = service.issue("alice", "s")
        assert first.claims.auth_time == 1_700_000_000
        assert jwt.decode(first.token, SECRET, algorithms=["HS256"],
                          options={"verify_exp": False})["auth_time"] == 1_700_000_000
        clock.now += 50
        second = service.refresh(first.token)
        assert (second.claims.auth_time, second.claims.exp, second.expires_in) == (1_700_000_000, clock.now + 60, 60)
        clock.now += 50  # 100 s into the chain: 50 s left, less than a lifetime
        third = service.refresh(second.token)
        assert (third.claims.exp, third.expires_in) == (1_700_000_150, 50)
        clock.now += 49.5
        with pytest.raises(TokenExpired, match="log in again"):
            service.refresh(third.token)  # half a second left: no token worth issuing
        assert service.verify(third.token).sub == "alice"  # the token itself lives to its exp

    def test_the_first_token_is_capped_too(self) -> None:
        issued = TokenService(SECRET, 3600, Clock(), max_lifetime=600).issue("alice")
        assert (issued.claims.exp - issued.claims.iat, issued.expires_in) == (600, 600)

    def test_a_token_without_auth_time_starts_its_chain_at_iat(self) -> None:
        clock = Clock()
        service = TokenService(SECRET, 60, clock, max_lifetime=100)
        old = jwt.encode({"sub": "a", "sid": "s", "iat": clock.now - 90, "exp": clock.now + 30}, SECRET,
                         algorithm="HS256")
        refreshed = service.refresh(old)
        assert (refreshed.claims.auth_time, refreshed.claims.exp) == (clock.now - 90, clock.now + 10)

    def test_zero_means_no_limit(self) -> None:
        clock = Clock()
        service = TokenService(SECRET, 60, clock, max_lifetime=0)
        token = service.issue("alice").token
        for _ in range(100):
            clock.now += 50
            token = service.refresh(token).token
        assert service.verify(token).auth_time == 1_700_000_000

    def test_negative_is_refused(self) -> None:
        with pytest.raises(ValueError):
            TokenService(SECRET, 60, max_lifetime=-1)
