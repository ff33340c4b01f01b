"""The client's side of ``/auth/token`` and ``/auth/refresh``: plain HTTPS with the stdlib.

Used by ``WsClient``; blocking; no Flask.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import jwt

from ..exceptions import AuthError, BadCredentials, ConnectFailed, TokenExpired, TokenInvalid

__all__ = ["Credentials", "fetch_token", "refresh_token", "refresh_url_for", "seconds_left", "expiry", "lifetime"]


@dataclass(frozen=True)
class Credentials:
    """What ``connect_with_auth`` keeps so it can log in again after a token expired."""

    auth_url: str
    username: str
    password: str
    session_id: str | None = None

    def __repr__(self) -> str:  # never print the password
        return f"Credentials({self.auth_url!r}, {self.username!r}, session_id={self.session_id!r})"


def refresh_url_for(auth_url: str) -> str:
    """``.../auth/token`` -> ``.../auth/refresh``."""
    base, _, last = auth_url.rstrip("/").rpartition("/")
    return f"{base}/refresh" if last == "token" else auth_url.rstrip("/") + "/refresh"


def _claims(token: str) -> dict[str, Any]:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        float(claims["exp"])
        return claims
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
        raise TokenInvalid("the token cannot be read") from None


def expiry(token: str) -> float:
    """``token``'s ``exp`` (seconds since the epoch), read without checking the signature."""
    return float(_claims(token)["exp"])


def seconds_left(token: str, now: float | None = None) -> float:
    """Seconds until ``token`` expires, read without checking the signature (the server checks it)."""
    return expiry(token) - (time.time() if now is None else now)


def lifetime(token: str, now: float | None = None) -> float:
    """How long ``token`` was issued for: ``exp - iat`` (what is left when it has no readable ``iat``)."""
    claims = _claims(token)
    try:
        return float(claims["exp"]) - float(claims["iat"])
    except (KeyError, TypeError, ValueError):
        return seconds_left(token, now)


def _post(url: str, body: dict[str, Any] | None, headers: dict[str, str], context: ssl.SSLContext | None,
          timeout: float) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            reply = json.loads(exc.read())
        except ValueError:
            reply = {}
        code, message = reply.get("code", ""), reply.get("error", f"HTTP {exc.code}")
        if exc.code == 401:
            raise {"bad_credentials": BadCredentials, "token_expired": TokenExpired}.get(
                code, TokenInvalid)(message) from None
        if exc.code == 403:
            raise AuthError(message) from None
        raise ConnectFailed(f"{url}: HTTP {exc.code}: {message}", status=exc.code) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConnectFailed(f"{url}: {exc}") from None


def fetch_token(credentials: Credentials, context: ssl.SSLContext | None = None, timeout: float = 10.0) -> str:
    """Log in; returns the token.

    Raises:
        BadCredentials: wrong username or password.
        ConnectFailed: the auth server could not be reached or answered oddly.
    """
    body: dict[str, Any] = {"username": credentials.username, "password": credentials.password}
    if credentials.session_id:
        body["session_id"] = credentials.session_id
    reply = _post(credentials.auth_url, body, {}, context, timeout)
    if not isinstance(reply.get("token"), str):
        raise ConnectFailed(f"{credentials.auth_url}: the answer has no token")
    return reply["token"]


def refresh_token(refresh_url: str, token: str, context: ssl.SSLContext | None = None,
                  timeout: float = 10.0) -> str:
    """Trade a still-valid token for a fresh one with the same identity and session.

    Raises:
        TokenExpired, TokenInvalid: the server refused the old token.
        ConnectFailed: the auth server could not be reached.
    """
    reply = _post(refresh_url, None, {"Authorization": f"Bearer {token}"}, context, timeout)
    if not isinstance(reply.get("token"), str):
        raise ConnectFailed(f"{refresh_url}: the answer has no token")
    return reply["token"]
