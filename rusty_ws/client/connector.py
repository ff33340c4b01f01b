"""How ``WsClient`` opens a socket to the hub: the URL, TLS options, and the token it carries.

One job: turn (URL, credentials, current token) into an open websocket-client
socket, or into one clear exception. Keeps the token (logging in again or
refreshing it when needed) so the client's reconnect loop stays short, and
says when the live connection's token is due for an in-band ``refresh:``
(``seconds_until_refresh``) and gets the fresh one (``renewed``).

The token goes in the ``Authorization: Bearer`` header, never in the URL
(issue 13: URLs end up in access logs).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import urllib.parse
from typing import Any

import websocket

from ..exceptions import AuthError, ConnectFailed, Forbidden, TokenExpired, TokenInvalid
from .tokens import Credentials, expiry, fetch_token, lifetime, refresh_token, refresh_url_for, seconds_left

__all__ = ["Connector", "REFRESH_THRESHOLD"]

logger = logging.getLogger("rusty_ws.client")

#: Refresh a token when fewer seconds than this remain (the seed's threshold: 5 minutes).
#: A live connection refreshes in-band at this threshold too, or at half the token's
#: lifetime when that is shorter (a 3-second token is refreshed with 1.5 s left).
REFRESH_THRESHOLD = 300.0


class Connector:
    """Opens sockets to ``ws_url``, with the current token (if any) in the ``Authorization`` header.

    Args:
        ws_url: ``ws://`` or ``wss://`` URL of the hub's ``/ws``.
        credentials: how to log in (again), or None for an anonymous client.
        sslopt: websocket-client's TLS options (certificates are verified by default).
        timeout: seconds for the handshake and for each auth request.
    """

    def __init__(self, ws_url: str, credentials: Credentials | None, sslopt: dict[str, Any] | None,
                 timeout: float) -> None:
        self.ws_url = ws_url
        self.credentials = credentials
        self.timeout = timeout
        self._sslopt = dict(sslopt or {})
        # _token_lock guards _token: read by callers' threads, replaced by the reader
        # thread when it reconnects and by whoever calls refresh_if_needed().
        self._token_lock = threading.Lock()
        self._token: str | None = None

    @property
    def token(self) -> str | None:
        with self._token_lock:
            return self._token

    @token.setter
    def token(self, token: str | None) -> None:
        with self._token_lock:
            self._token = token

    def log_in(self) -> None:
        """Get a first token with the credentials (``connect_with_auth``)."""
        if self.credentials is None:
            raise TokenExpired("there are no credentials to log in with")
        self.token = fetch_token(self.credentials, self.ssl_context(), self.timeout)

    def refresh_if_needed(self, threshold: float = REFRESH_THRESHOLD) -> bool:
        """Replace the token when fewer than ``threshold`` seconds remain; returns whether it did."""
        token = self.token
        if token is None or seconds_left(token) > threshold:
            return False
        self.token = self._fresh_token(token)
        return True

    def ensure_usable_token(self) -> None:
        """Before a reconnection: make sure the token (if any) will outlive the handshake."""
        if self.token is None and self.credentials is None:
            return  # anonymous
        if self.token is None:
            self.token = self._fresh_token(None)
        else:
            self.refresh_if_needed(REFRESH_THRESHOLD / 10)

    def seconds_until_refresh(self) -> float | None:
        """Seconds until the token is due for an in-band refresh (0: now); None without a readable token.

        Due when fewer than ``REFRESH_THRESHOLD`` seconds remain, or half the token's
        lifetime when that is shorter.
        """
        token = self.token
        if token is None:
            return None
        try:
            left, life = seconds_left(token), lifetime(token)
        except TokenInvalid:
            return None
        return max(0.0, left - min(REFRESH_THRESHOLD, life / 2))

    def renewed(self) -> str:
        """A fresh token for the live connection's in-band ``refresh:``; not stored (the caller does that
        once the hub took it). Blocks for the HTTP round trips.

        ``/auth/refresh`` first; when that fails, or the hub no longer extends the token
        (its refresh chain ended: the new one expires no later), a new login with the
        credentials, if there are any.

        Raises:
            AuthError, ConnectFailed: no fresh token could be had.
        """
        token = self.token
        if token is None:
            raise TokenInvalid("there is no token to refresh")
        try:
            fresh = self._fresh_token(token)
        except (AuthError, ConnectFailed) as exc:
            if self.credentials is None:
                raise
            logger.info("refreshing the token failed (%s); logging in again", exc)
            return fetch_token(self.credentials, self.ssl_context(), self.timeout)
        if expiry(fresh) <= expiry(token):
            if self.credentials is None:
                raise TokenExpired("the hub no longer extends this token (its refresh chain ended)")
            return fetch_token(self.credentials, self.ssl_context(), self.timeout)
        return fresh

    def open_socket(self) -> websocket.WebSocket:
        """Open a socket, or raise ConnectFailed, TokenExpired, TokenInvalid or Forbidden.

        The token (if any) goes in the ``Authorization: Bearer`` header, not the URL.
        """
        problem = url_problem(self.ws_url)
        if problem:
            raise ConnectFailed(f"cannot connect to {self.ws_url}: {problem}")
        token = self.token
        header = [f"Authorization: Bearer {token}"] if token else None
        try:
            return websocket.create_connection(self.ws_url, timeout=self.timeout, sslopt=self._sslopt or None,
                                               enable_multithread=True, header=header)
        except websocket.WebSocketBadStatusException as exc:
            message = _handshake_refusal(exc)
            if exc.status_code == 401:
                raise (TokenExpired if "token_expired" in message else TokenInvalid)(message) from None
            if exc.status_code == 403:
                raise Forbidden(message) from None
            headers = exc.resp_headers or {}
            retry_after = next((str(value) for name, value in headers.items() if name.lower() == "retry-after"), None)
            if exc.status_code in (400, 404) and not _path_of(self.ws_url).endswith(HUB_PATH):
                message += f" ({path_hint(self.ws_url)})"
            raise ConnectFailed(message, status=exc.status_code, retry_after=retry_after) from None
        except ConnectionRefusedError as exc:
            raise ConnectFailed(f"cannot connect to {self.ws_url}: {exc} (is the hub running, and listening on "
                                "that host and port?)") from None
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            raise ConnectFailed(f"cannot connect to {self.ws_url}: {exc}") from None

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for the auth endpoints, matching the socket's ``sslopt``."""
        context = ssl.create_default_context(cafile=self._sslopt.get("ca_certs"))
        if self._sslopt.get("cert_reqs") == ssl.CERT_NONE:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _fresh_token(self, token: str | None) -> str:
        """Trade a still-valid token at ``/auth/refresh``; log in again when it expired."""
        if token is not None and seconds_left(token) > 0:
            auth_url = self.credentials.auth_url if self.credentials else self._auth_url_from_ws_url()
            return refresh_token(refresh_url_for(auth_url), token, self.ssl_context(), self.timeout)
        if self.credentials is None:
            raise TokenExpired("the token expired and there are no credentials to log in again")
        return fetch_token(self.credentials, self.ssl_context(), self.timeout)

    def _auth_url_from_ws_url(self) -> str:
        parts = urllib.parse.urlsplit(self.ws_url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return f"{scheme}://{parts.netloc}/auth/token"


#: Where rusty_ws's hub answers WebSocket handshakes (``/ws``, as in the seed).
HUB_PATH = "/ws"
_SCHEMES = {"http": "ws", "https": "wss"}


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a hub URL, said so that the fix is plain; None if nothing is."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("ws", "wss") and parts.hostname:
        return None
    if parts.scheme in _SCHEMES and parts.netloc:
        fixed = urllib.parse.urlunsplit((_SCHEMES[parts.scheme], *parts[1:]))
        return f"a WebSocket URL starts with ws:// or wss://, not {parts.scheme}://: use {fixed}"
    return "a hub URL is ws://host:port/ws (or wss:// with TLS), e.g. ws://127.0.0.1:8081/ws"


def path_hint(url: str) -> str:
    """The hint for a refused handshake on another path than the hub's."""
    parts = urllib.parse.urlsplit(url)
    fixed = urllib.parse.urlunsplit((parts.scheme, parts.netloc, HUB_PATH, parts.query, ""))
    return (f"rusty_ws's hub answers WebSocket handshakes at {HUB_PATH} (under the app's url_prefix when "
            f"embedded), not {parts.path or '/'}: try {fixed}")


def _path_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path.rstrip("/") or "/"


def _handshake_refusal(exc: websocket.WebSocketBadStatusException) -> str:
    body = exc.resp_body or b""
    try:
        reply = json.loads(body)
        return f"HTTP {exc.status_code}: {reply.get('code', '')}: {reply.get('error', '')}"
    except (ValueError, AttributeError, TypeError):
        return f"HTTP {exc.status_code}"
