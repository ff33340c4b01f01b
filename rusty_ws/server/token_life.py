"""Tokens on a live connection: first-frame ``auth:``, in-band ``refresh:``, expiry (4002), REQUIRE_AUTH.

A mixin of ``Connection`` (``connection.py``), kept apart from the read loop
and the other commands. Its state, set in ``_start_token_life``:

- ``_fresh``: no message has arrived yet. ``auth:{token}`` is taken only then,
  and only on a connection opened without a token; a good one makes it exactly
  a token connection (``sub``, starting in ``sid``, expiry enforced) and is
  answered ``authenticated:``; a bad one (expired included) is answered with an
  error reply and closed with 4001: it never stays anonymous.
- ``_awaiting_auth``: under ``RUSTY_WS_REQUIRE_AUTH`` a connection opened
  without a token must send ``auth:`` first, within ``RUSTY_WS_AUTH_TIMEOUT``;
  anything else first is not carried out and closes it with 4001, and so does
  silence (``_auth_wait``).
- ``_expiry``: the close with 4002 at the token's ``exp`` plus
  ``RUSTY_WS_TOKEN_EXPIRY_GRACE``, by the hub's token clock
  (``TokenService.now``); ``refresh:{token}`` with the same ``sub`` and
  ``sid`` moves it, anything else is an error reply and changes nothing.

Both deadlines are timers that the writer's thread runs (``timers.py``): no
thread per connection. They run there, so they only read ``claims`` (one
reference, replaced whole) and close through the writer. ``Hub._discard``
cancels them when the connection ends. A token is never logged, nor echoed.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from ..auth import Claims, redact_tokens
from ..exceptions import AuthError, ProtocolError, TokenExpired
from ..frames import text_frame
from ..protocol import (
    CLOSE_CODE_EXPLANATIONS,
    Auth,
    CloseCode,
    ErrorCode,
    Refresh,
    command_verb,
    encode_authenticated,
    encode_refreshed,
)

if TYPE_CHECKING:
    from .hub import Hub
    from .timers import Timer
    from .writer import Outbox

__all__ = ["TokenLife"]

logger = logging.getLogger("rusty_ws.server")


class TokenLife:
    """The token half of a ``Connection``: it provides ``hub``, ``claims``, ``session_id``, ``label``,
    ``outbox``, ``_closing``, ``close``, ``_reply_error`` and ``_who``."""

    hub: "Hub"
    claims: Claims | None
    session_id: str
    label: str
    _closing: bool

    if TYPE_CHECKING:  # provided by Connection
        outbox: "Outbox"

        def close(self, code: int, reason: str = "") -> None: ...
        def _reply_error(self, code: str, message: str, verb: str | None,
                         publish_id: str | None = None) -> None: ...
        def _who(self) -> str: ...

    def _start_token_life(self) -> None:
        """Arm the connection's deadline: its token's expiry, or under REQUIRE_AUTH the wait for ``auth:``."""
        self._fresh = True  # no message has arrived yet: the one moment auth: is taken
        # Deadlines on the writer's timers. Set by the connection's thread; the writer's
        # thread only reads them (and self.claims) when they are due.
        self._expiry: Timer | None = None
        self._auth_wait: Timer | None = None
        self._awaiting_auth = self.claims is None and self.hub.settings.require_auth
        if self.claims is not None:
            self._watch_expiry(self.claims)
        elif self._awaiting_auth:
            self._auth_wait = self.hub.writer.timers.call_at(
                time.monotonic() + self.hub.settings.auth_timeout, self._auth_timed_out)

    def _first_message(self, text: str | None) -> bool:
        """The connection's first message (``text`` None: binary); True when it was dealt with here.

        ``auth:`` is taken only now, on a connection opened without a token; under
        REQUIRE_AUTH anything else first is not carried out and closes with 4001.
        """
        self._fresh = False
        if self.claims is None and text is not None and text.startswith("auth:"):
            self._authenticate(Auth(text[len("auth:"):].strip()))
            return True
        if self._awaiting_auth:
            self._awaiting_auth = False
            self.hub.writer.timers.cancel(self._auth_wait)
            self._reply_error(ErrorCode.TOKEN_REQUIRED, "this hub requires auth:{token} as the first frame",
                              command_verb(text) if text is not None else None)
            self.close(CloseCode.UNAUTHORIZED, "unauthorized: auth:{token} must be the first frame")
            return True
        return False

    def _authenticate(self, command: Auth) -> None:
        """``auth:`` as the first frame: become a token connection, or close with 4001."""
        self._awaiting_auth = False
        self.hub.writer.timers.cancel(self._auth_wait)
        try:
            claims = self.hub.access.tokens.verify(command.token)
        except AuthError as exc:
            logger.info("%s sent a bad auth: token (%s); closing it", self.label, exc.code)
            self._reply_error(exc.code, redact_tokens(exc.message), "auth")
            self.close(CloseCode.UNAUTHORIZED, CLOSE_CODE_EXPLANATIONS[4001])
            return
        old, self.claims, self.session_id = self.session_id, claims, claims.sid
        self.hub.registry.enter_session(claims.sid)  # /healthz counts sessions as they change
        self.hub.registry.leave_session(old)
        self._watch_expiry(claims)
        logger.info("%s authenticated as %s in %r", self.label, self._who(), claims.sid)
        reply = encode_authenticated(claims.sub, claims.sid, self._seconds_left(claims))
        self.hub.writer.send_to(self.outbox, text_frame(reply))

    def _on_auth(self, command: Auth) -> None:
        # Only an auth: that is not the first frame gets here (_first_message takes that one).
        if self.claims is not None:
            raise ProtocolError(ErrorCode.ALREADY_AUTHENTICATED, "this connection already has a token; "
                                                                 "use refresh:{token} to replace it")
        raise ProtocolError(ErrorCode.AUTH_NOT_FIRST, "auth:{token} is taken only as a connection's first frame")

    def _on_refresh(self, command: Refresh) -> None:
        claims = self.claims
        if claims is None:
            raise ProtocolError(ErrorCode.NOT_AUTHENTICATED, "refresh: needs a connection that has a token")
        try:
            fresh = self.hub.access.tokens.verify(command.token)
        except TokenExpired:
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED, "that token has expired; log in again") from None
        except AuthError:
            raise ProtocolError(ErrorCode.TOKEN_INVALID, "that is not a valid token") from None
        if (fresh.sub, fresh.sid) != (claims.sub, claims.sid):
            raise ProtocolError(ErrorCode.TOKEN_MISMATCH,
                                "a refresh token must have this connection's 'sub' and 'sid'")
        self.claims = fresh
        self._watch_expiry(fresh)
        left = self._seconds_left(fresh)
        logger.debug("= %s refreshed its token: %ds left", self.label, left)
        self.hub.writer.send_to(self.outbox, text_frame(encode_refreshed(left)))

    def _seconds_left(self, claims: Claims) -> int:
        """Whole seconds until ``claims.exp`` by the hub's token clock (a reply's ``expires_in``), at least 0."""
        return max(0, math.floor(claims.exp - self.hub.access.tokens.now()))

    def _watch_expiry(self, claims: Claims) -> None:
        """(Re)arm the close at ``claims.exp`` + grace (by the hub's token clock) on the writer's timers."""
        timers = self.hub.writer.timers
        timers.cancel(self._expiry)
        delay = claims.exp + self.hub.access.expiry_grace - self.hub.access.tokens.now()
        self._expiry = timers.call_at(time.monotonic() + max(0.0, delay), lambda: self._token_timer(claims))

    def _token_timer(self, claims: Claims) -> None:
        """On the writer's thread: close with 4002 if ``claims`` is still the token and has expired."""
        if self.claims is not claims or self._closing:
            return  # refreshed meanwhile (that armed its own timer), or closing anyway
        if claims.exp + self.hub.access.expiry_grace > self.hub.access.tokens.now():  # clocks drifted: not yet
            self._watch_expiry(claims)
            return
        logger.info("%s: the token of %s expired; closing it", self.label, self._who())
        self.close(CloseCode.TOKEN_EXPIRED, CLOSE_CODE_EXPLANATIONS[4002])

    def _auth_timed_out(self) -> None:
        """On the writer's thread: no ``auth:`` within RUSTY_WS_AUTH_TIMEOUT under REQUIRE_AUTH."""
        if self.claims is None and self._awaiting_auth and not self._closing:
            logger.info("%s sent no auth: within %.1fs; closing it", self.label, self.hub.settings.auth_timeout)
            self.close(CloseCode.UNAUTHORIZED, "unauthorized: no auth:{token} in time")

    def cancel_timers(self) -> None:
        """Forget this connection's deadlines (it ended). Idempotent."""
        timers = self.hub.writer.timers
        timers.cancel(self._expiry)
        timers.cancel(self._auth_wait)

