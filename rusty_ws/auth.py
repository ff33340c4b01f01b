"""Token and credential rules: who may log in, and what a token says.

Pure: PyJWT and werkzeug's password hashing, an injectable clock, no Flask,
no sockets. The views turn these exceptions into HTTP answers.

Tokens are HS256 JWTs with the claims ``sub`` (the username), ``sid`` (the
session the token is bound to), ``iat``, ``exp`` and ``auth_time`` (when the
login that began its refresh chain happened; OpenID Connect's name). Only
HS256 is accepted, so ``alg: none`` and algorithm-confusion tokens are
refused. Times must be finite numbers; ``nbf``, when present, is honoured; a
refresh chain ends ``max_lifetime`` seconds after its login.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import jwt

from .exceptions import ProtocolError, TokenExpired, TokenInvalid
from .protocol import check_session

__all__ = [
    "ALGORITHM",
    "Claims",
    "IssuedToken",
    "TokenService",
    "CredentialChecker",
    "UsersFile",
    "DemoUsers",
    "default_session_for",
    "hash_password",
]

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("sub", "sid", "iat", "exp")

#: ``check(username, password) -> bool``: the one thing an app plugs in to own logins.
CredentialChecker = Callable[[str, str], bool]


def default_session_for(username: str) -> str:
    """The session a token is bound to when the login names none, as in the seed."""
    return f"session-{username}"


@dataclass(frozen=True)
class Claims:
    """What a verified token says.

    ``auth_time`` is when the login that began the token's refresh chain
    happened; None for a token made before the claim existed (its ``iat`` then
    stands in).
    """

    sub: str
    sid: str
    iat: int
    exp: int
    auth_time: int | None = None


@dataclass(frozen=True)
class IssuedToken:
    """A freshly signed token and its lifetime in seconds (the body of ``/auth/token``)."""

    token: str
    expires_in: int
    claims: Claims


class TokenService:
    """Issues, verifies and refreshes tokens with one secret.

    Args:
        secret: the HMAC key (``JWT_SECRET_KEY``).
        lifetime: seconds a token lives (``JWT_EXPIRATION_SECONDS``).
        clock: returns the current UNIX time; tests inject their own.
        max_lifetime: seconds a refresh chain lives, from its login (``JWT_MAX_LIFETIME``):
            no token's ``exp`` goes past ``auth_time + max_lifetime``, and ``refresh``
            refuses once it has passed. 0: no limit.
    """

    def __init__(self, secret: str, lifetime: int = 3600, clock: Callable[[], float] = time.time,
                 max_lifetime: int = 0):
        if not secret:
            raise ValueError("a token secret must not be empty")
        if lifetime <= 0:
            raise ValueError("a token lifetime must be positive")
        if max_lifetime < 0:
            raise ValueError("a refresh chain's lifetime must be positive, or 0 for no limit")
        self._secret = secret
        self.lifetime = int(lifetime)
        self.max_lifetime = int(max_lifetime)
        self._clock = clock

    def issue(self, username: str, session_id: str | None = None, auth_time: int | None = None) -> IssuedToken:
        """Sign a token for ``username`` bound to ``session_id`` (default ``session-{username}``).

        Args:
            auth_time: when the chain's login happened (a refresh passes the old token's);
                default now: this is a login.
        """
        now = self._clock()
        auth_time = int(now) if auth_time is None else auth_time
        exp = math.ceil(now + self.lifetime)  # never shorter than the expires_in we announce
        expires_in = self.lifetime
        if self.max_lifetime and exp > auth_time + self.max_lifetime:
            exp = auth_time + self.max_lifetime
            expires_in = max(0, math.floor(exp - now))
        claims = Claims(
            sub=username,
            sid=session_id or default_session_for(username),
            iat=int(now),
            exp=exp,
            auth_time=auth_time,
        )
        token = jwt.encode(
            {"sub": claims.sub, "sid": claims.sid, "iat": claims.iat, "exp": claims.exp,
             "auth_time": claims.auth_time},
            self._secret,
            algorithm=ALGORITHM,
        )
        return IssuedToken(token=token, expires_in=expires_in, claims=claims)

    def verify(self, token: str) -> Claims:
        """Check the signature, the algorithm, the claims, ``nbf`` and the expiry.

        Raises:
            TokenExpired: the token is ours but ``exp`` has passed.
            TokenInvalid: anything else wrong with it: a bad signature, a missing claim,
                a time that is no finite number, ``nbf`` still ahead, a ``sid`` that is
                no valid session id.
        """
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                # Time is checked below against the injected clock, not PyJWT's.
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"invalid token: {exc}") from None
        claims = _claims_from(payload)
        now = self._clock()
        nbf = payload.get("nbf")
        if nbf is not None:
            if not _is_time(nbf):
                raise TokenInvalid("invalid token: 'nbf' must be a finite number")
            if nbf > now:  # type: ignore[operator]
                raise TokenInvalid("invalid token: not valid before its 'nbf'")
        if claims.exp <= now:
            raise TokenExpired("token expired")
        return claims

    def refresh(self, token: str) -> IssuedToken:
        """A new token with the same ``sub``, ``sid`` and ``auth_time`` as a still-valid one.

        Its ``exp`` never goes past ``auth_time + max_lifetime``.

        Raises:
            TokenExpired: as ``verify``, or the chain is ``max_lifetime`` old (or less
                than a second from it): log in again.
            TokenInvalid: as ``verify``.
        """
        claims = self.verify(token)
        auth_time = claims.iat if claims.auth_time is None else claims.auth_time
        if self.max_lifetime and auth_time + self.max_lifetime - self._clock() < 1:
            raise TokenExpired("this login is older than the longest a refresh chain lives; log in again")
        return self.issue(claims.sub, claims.sid, auth_time)


def _claims_from(payload: Mapping[str, object]) -> Claims:
    sub, sid, iat, exp = (payload.get(name) for name in REQUIRED_CLAIMS)
    if not isinstance(sub, str) or not sub or not isinstance(sid, str) or not sid:
        raise TokenInvalid("invalid token: 'sub' and 'sid' must be non-empty strings")
    try:
        check_session(sid)
    except ProtocolError:
        raise TokenInvalid("invalid token: 'sid' is not a valid session id") from None
    auth_time = payload.get("auth_time")
    if not _is_time(iat) or not _is_time(exp) or not (auth_time is None or _is_time(auth_time)):
        raise TokenInvalid("invalid token: 'iat', 'exp' and 'auth_time' must be finite numbers")
    return Claims(sub=sub, sid=sid, iat=int(iat), exp=int(exp),  # type: ignore[arg-type]
                  auth_time=None if auth_time is None else int(auth_time))  # type: ignore[arg-type]


def _is_time(value: object) -> bool:
    """A finite number (PyJWT's JSON decoder lets ``Infinity`` and ``NaN`` through)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def hash_password(password: str) -> str:
    """A salted hash for a users file (werkzeug's default method)."""
    # Imported here: werkzeug's package import also loads its dev server (sockets),
    # which the pure core must not pull in just to be imported.
    from werkzeug.security import generate_password_hash

    return generate_password_hash(password)


def _check_password(stored_hash: str, password: str) -> bool:
    from werkzeug.security import check_password_hash

    return check_password_hash(stored_hash, password)


class UsersFile:
    """Credentials from a JSON file mapping usernames to werkzeug password hashes.

    The file looks like ``{"alice": "scrypt:32768:8:1$...", "bob": "..."}``;
    ``rusty-ws hash-password`` prints a hash to put in it.
    """

    def __init__(self, hashes: Mapping[str, str]):
        self._hashes = dict(hashes)
        # Unknown users are checked against a real hash too, so a wrong username
        # takes as long as a wrong password and usernames cannot be probed by timing.
        self._decoy = hash_password("not a password")

    @classmethod
    def load(cls, path: str) -> "UsersFile":
        """Read a users file.

        Raises:
            ValueError: the file cannot be read, is not JSON (the message says where), or
                is not a JSON object of string to string. Every message starts with the path.
        """
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        except OSError as exc:
            raise ValueError(f"{path}: cannot be read: {exc.strerror or exc}") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ValueError(f"{path}: a users file is a JSON object of username to hash")
        return cls(data)

    def __call__(self, username: str, password: str) -> bool:
        stored = self._hashes.get(username)
        if stored is None:
            _check_password(self._decoy, password)
            return False
        return _check_password(stored, password)

    def __len__(self) -> int:
        return len(self._hashes)


class DemoUsers:
    """The development-mode login: the seed's ``testuser`` / ``password``, in clear text.

    Only used when no users file and no app hook is configured, and the server
    says so loudly in its log.
    """

    USERS = {"testuser": "password"}

    def __call__(self, username: str, password: str) -> bool:
        expected = self.USERS.get(username)
        return expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), password.encode("utf-8")
        )
