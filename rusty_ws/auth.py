"""Token and credential rules: who may log in, and what a token says.

Pure: PyJWT and werkzeug's password hashing, an injectable clock, no Flask,
no sockets. The views turn these exceptions into HTTP answers.

Tokens are HS256 JWTs with the claims ``sub`` (the username), ``sid`` (the
session the token is bound to), ``iat``, ``exp`` and ``auth_time`` (when the
login that began its refresh chain happened; OpenID Connect's name). Only
HS256 is accepted, so ``alg: none`` and algorithm-confusion tokens are
refused. Times must be finite numbers; ``nbf``, when present, is honoured; a
refresh chain ends ``max_lifetime`` seconds after its login.

Who may have which session: a users file entry lists its user's sessions as
``fnmatch`` patterns (case-sensitive); a user with none may have only
``session-{username}`` (``UserEntry.may_use``).
"""

from __future__ import annotations

import fnmatch
import hmac
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import jwt

from .exceptions import ProtocolError, TokenExpired, TokenInvalid
from .protocol import check_session

__all__ = [
    "ALGORITHM",
    "Claims",
    "IssuedToken",
    "TokenService",
    "CredentialChecker",
    "SessionPolicy",
    "UserEntry",
    "UsersFile",
    "matches_any",
    "DemoUsers",
    "default_session_for",
    "hash_password",
    "redact_tokens",
    "REDACTED",
]

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("sub", "sid", "iat", "exp")

#: ``check(username, password) -> bool``: the one thing an app plugs in to own logins.
CredentialChecker = Callable[[str, str], bool]
#: ``policy(username, session_id) -> bool``: may this identity (None: anonymous) use this session?
SessionPolicy = Callable[["str | None", str], bool]


def matches_any(patterns: Iterable[str], name: str) -> bool:
    """Does ``name`` match one of the ``fnmatch`` ``patterns`` (case-sensitive, on every platform)?"""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


#: What ``redact_tokens`` puts where a token was.
REDACTED = "[redacted]"
_QUERY_TOKEN = re.compile(r"(?i)(token=)[^&;\s\"'#]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,2}")
_CLUES = ("oken=", "OKEN=", "eyJ", "earer", "EARER")


def redact_tokens(text: str) -> str:
    """``text`` with every token-like part replaced by ``[redacted]``, for logs and error replies.

    Replaced: the value of any ``token=`` parameter (``?token=``, ``refresh_token=``),
    what follows ``Bearer``, and anything shaped like a JWT (``eyJ...``).
    """
    if not any(clue in text for clue in _CLUES):
        return text
    text = _QUERY_TOKEN.sub(r"\1" + REDACTED, text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    return _JWT.sub(REDACTED, text)


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

    def now(self) -> float:
        """The current UNIX time by this service's clock: what ``exp`` is compared with."""
        return self._clock()

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
            if nbf > now:
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
    assert isinstance(iat, (int, float)) and isinstance(exp, (int, float))  # _is_time said so
    assert auth_time is None or isinstance(auth_time, (int, float))
    return Claims(sub=sub, sid=sid, iat=int(iat), exp=int(exp),
                  auth_time=None if auth_time is None else int(auth_time))


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


@dataclass(frozen=True)
class UserEntry:
    """One user of a users file.

    Attributes:
        password_hash: werkzeug's hash of the password (never logged, never in ``repr``).
        sessions: ``fnmatch`` patterns of the sessions the user may have; none: only
            ``session-{username}``.
        admin: marks the users who will administer the hub (read and checked; nothing uses it yet).
    """

    password_hash: str
    sessions: tuple[str, ...] = ()
    admin: bool = False

    def __repr__(self) -> str:
        return f"UserEntry(sessions={self.sessions!r}, admin={self.admin!r})"

    def may_use(self, username: str, session_id: str) -> bool:
        """May this user have ``session_id``? Its patterns, or only ``session-{username}`` without any."""
        if not self.sessions:
            return session_id == default_session_for(username)
        return matches_any(self.sessions, session_id)


_ENTRY_FIELDS = {"password_hash", "sessions", "admin"}


def _entry_from(path: str, username: Any, value: Any) -> UserEntry:
    """A users file's entry: a hash (the seed's form), or ``{"password_hash", "sessions"?, "admin"?}``."""
    where = f"{path}: user {str(username)[:64]!r}"
    if not isinstance(username, str) or not username:
        raise ValueError(f"{path}: a username is a non-empty string")
    if isinstance(value, str):
        value = {"password_hash": value}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: an entry is a password hash or an object with 'password_hash'")
    unknown = set(value) - _ENTRY_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)} (known: {sorted(_ENTRY_FIELDS)})")
    password_hash = value.get("password_hash")
    if not isinstance(password_hash, str) or password_hash.count("$") < 2:
        # werkzeug's hashes are "method$salt$hash"; the hash itself is never shown.
        raise ValueError(f"{where}: 'password_hash' must be a werkzeug password hash "
                         "(rusty-ws hash-password prints one)")
    sessions = value.get("sessions")
    if sessions is None:
        sessions = []
    if not isinstance(sessions, list) or not all(isinstance(p, str) and p for p in sessions):
        raise ValueError(f"{where}: 'sessions' must be a list of non-empty glob patterns")
    admin = value.get("admin", False)
    if not isinstance(admin, bool):
        raise ValueError(f"{where}: 'admin' must be true or false")
    return UserEntry(password_hash, tuple(sessions), admin)


class UsersFile:
    """Credentials, and who may have which session, from a JSON users file.

    Each entry is a werkzeug password hash (the seed's form: a user who may have
    only ``session-{username}``) or an object::

        {"alice": "scrypt:32768:8:1$...",
         "bob": {"password_hash": "scrypt:...", "sessions": ["session-bob", "team-7-*"], "admin": true}}

    ``rusty-ws hash-password`` prints a hash to put in it.

    Args:
        entries: username to ``UserEntry``, or to a bare password hash.
    """

    def __init__(self, entries: Mapping[str, "UserEntry | str"]):
        self._entries = {name: entry if isinstance(entry, UserEntry) else UserEntry(entry)
                         for name, entry in entries.items()}
        # Unknown users are checked against a real hash too, made with the method most
        # entries use (scrypt or pbkdf2, and their cost), so a wrong username takes as
        # long as a wrong password and usernames cannot be probed by timing.
        self._decoy = _decoy_hash(entry.password_hash for entry in self._entries.values())

    @classmethod
    def load(cls, path: str) -> "UsersFile":
        """Read a users file.

        Raises:
            ValueError: the file cannot be read, is not JSON (the message says where), is not a
                JSON object of usernames to entries, or an entry is malformed (the message names
                the user and the field, never the hash). Every message starts with the path.
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
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a users file is a JSON object of username to entry")
        return cls({name: _entry_from(path, name, value) for name, value in data.items()})

    def __call__(self, username: str, password: str) -> bool:
        entry = self._entries.get(username)
        if entry is None:
            _check_password(self._decoy, password)
            return False
        return _check_password(entry.password_hash, password)

    def entry(self, username: str) -> UserEntry | None:
        """The entry of ``username``, or None."""
        return self._entries.get(username)

    def may_use(self, username: str, session_id: str) -> bool:
        """May ``username`` have ``session_id``? False for a user the file does not have."""
        entry = self._entries.get(username)
        return entry is not None and entry.may_use(username, session_id)

    def admins(self) -> list[str]:
        """The users marked ``admin``."""
        return sorted(name for name, entry in self._entries.items() if entry.admin)

    def __len__(self) -> int:
        return len(self._entries)


def _decoy_hash(hashes: Iterable[str]) -> str:
    """A hash of nothing, made with the method (and cost) most of ``hashes`` use."""
    methods = Counter(stored.partition("$")[0] for stored in hashes)
    if methods:
        from werkzeug.security import generate_password_hash

        try:
            return generate_password_hash("not a password", method=methods.most_common(1)[0][0])
        except (ValueError, TypeError, AttributeError):
            pass  # a method this werkzeug does not make: the default's cost is the next best
    return hash_password("not a password")


class DemoUsers:
    """The development-mode login: the seed's ``testuser`` / ``password``, in clear text.

    Only used when no users file and no app hook is configured, and the server
    says so loudly in its log.
    """

    USERS: ClassVar[dict[str, str]] = {"testuser": "password"}

    def __call__(self, username: str, password: str) -> bool:
        expected = self.USERS.get(username)
        # Compared whether the user exists or not, so both take the same time.
        same = hmac.compare_digest((expected or "\0").encode("utf-8"), password.encode("utf-8"))
        return expected is not None and same
