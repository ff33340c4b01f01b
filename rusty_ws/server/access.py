"""Who may do what on the hub: tokens, sessions and topics, decided in one place.

The token says who a connection is (``sub``); the policy says where that
identity may go (Centrifugo's model). ``Access`` answers, for the views and
for every connection's commands:

- which sessions an identity may use (``may_use_session``), first that applies:

  1. anonymous (``None``): ``RUSTY_WS_ANONYMOUS_SESSIONS`` must match, and then
     the app's session policy hook, if it has one, must agree too;
  2. the app's session policy hook (``PubSub(session_policy=...)``);
  3. the users file, when it is what checks passwords (no credential hook):
     the user's ``sessions`` patterns, or only ``session-{username}``;
  4. development mode (no users file, no credential hook): the demo user may
     have any session, as the seed's pages expect;
  5. anyone else (a credential hook without a session policy): only
     ``session-{username}``.

  A token connection may always use its token's ``sid`` (the hub signed it);
  ``Connection`` does not ask for it.
- whether an identity may subscribe to or publish on a topic in a session
  (``topic_refusal``): ``RUSTY_WS_SERVER_ONLY_TOPICS`` refuses every client
  publish on those topics, then the app's permissions hook decides.

Hooks are read from the ``PubSub`` at every call, so one registered after
``init_app`` takes effect at once. A hook that raises is logged and counts as
a refusal. Hooks run on the connection's own thread (or the request's, for
``/auth/token``), once per command that needs them: keep them quick, or cache.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..auth import DemoUsers, SessionPolicy, TokenService, UsersFile, default_session_for, matches_any
from ..config import Settings

if TYPE_CHECKING:
    from .extension import PubSub

__all__ = ["Access", "TopicAction", "TopicPermissions"]

logger = logging.getLogger("rusty_ws.server")


class TopicAction(str, enum.Enum):
    """What a client wants to do with a topic; the permissions hook's last argument.

    ``history:`` reads a stream as a subscription would, so it asks ``SUBSCRIBE``.
    A ``str`` enum: ``action == "publish"`` works.
    """

    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"

    def __str__(self) -> str:
        return self.value


_PUBLISH = TopicAction.PUBLISH  # read once per publish: a module global, not an enum class lookup

#: ``permissions(username or None, session_id, topic, action) -> bool``.
TopicPermissions = Callable[["str | None", str, str, TopicAction], bool]


class Access:
    """The hub's authorization rules (see the module docstring).

    Args:
        settings: the checked settings (anonymous sessions, server-only topics).
        tokens: verifies tokens presented on open connections (``auth:``, ``refresh:``).
        users: the users file, or None.
        pubsub: where the hooks live (``credential_checker``, ``session_policy_hook``,
            ``permissions_hook``); None for a hub without an extension (tests).
    """

    def __init__(self, settings: Settings, tokens: TokenService, users: UsersFile | None = None,
                 pubsub: "PubSub | None" = None) -> None:
        self.tokens = tokens
        self.users = users
        self.expiry_grace = settings.token_expiry_grace
        self._dev_mode = bool(settings.dev_mode)  # resolved by init_app (None there means app.debug)
        self._pubsub = pubsub
        self._anonymous = settings.anonymous_sessions
        self._anonymous_anywhere = "*" in self._anonymous
        self._server_only = settings.server_only_topics

    # ------------------------------------------------------------------ the hooks

    def _hook(self, name: str) -> Callable[..., bool] | None:
        return getattr(self._pubsub, name, None) if self._pubsub is not None else None

    @property
    def has_hooks(self) -> bool:
        """The app has a session-policy or permissions hook, which commands call (read at every call)."""
        pubsub = self._pubsub
        return pubsub is not None and (getattr(pubsub, "session_policy_hook", None) is not None
                                       or getattr(pubsub, "permissions_hook", None) is not None)

    @property
    def development_mode(self) -> bool:
        """Allowed (``settings.dev_mode``), no users file and no credential hook: the demo login
        works, and its user may go anywhere."""
        return self._dev_mode and self.users is None and self._hook("credential_checker") is None

    # ------------------------------------------------------------------ sessions

    def may_use_session(self, username: str | None, session_id: str) -> bool:
        """May ``username`` (None: an anonymous connection) use ``session_id``?"""
        hook: SessionPolicy | None = getattr(self._pubsub, "session_policy_hook", None)  # _hook, inlined
        if username is None:
            if not (self._anonymous_anywhere or matches_any(self._anonymous, session_id)):
                return False
            return hook is None or _ask(hook, "session policy", None, session_id)
        if hook is not None:
            return _ask(hook, "session policy", username, session_id)
        if self.users is not None and self._hook("credential_checker") is None:
            return self.users.may_use(username, session_id)
        if self.development_mode and username in DemoUsers.USERS:
            return True
        return session_id == default_session_for(username)

    def session_refusal(self, username: str | None, session_id: str) -> str:
        """The sentence of a ``forbidden_session`` answer."""
        if username is None:
            return f"anonymous connections may not use session {session_id!r}"
        return f"user {username!r} may not use session {session_id!r}"

    # ------------------------------------------------------------------ topics

    def topic_refusal(self, username: str | None, session_id: str, topic: str,
                      action: TopicAction) -> str | None:
        """Why ``username`` may not ``action`` ``topic`` in ``session_id`` (``forbidden_topic``), or None."""
        if action is _PUBLISH and self._server_only and matches_any(self._server_only, topic):
            return f"only the server publishes on topic {topic!r}"
        # Once per publish: _hook inlined (getattr of None gives the default too).
        hook: TopicPermissions | None = getattr(self._pubsub, "permissions_hook", None)
        if hook is not None and not _ask(hook, "permissions", username, session_id, topic, action):
            who = "anonymous connections" if username is None else f"user {username!r}"
            return f"{who} may not {action.value} on topic {topic!r} in session {session_id!r}"
        return None


def _ask(hook: Callable[..., Any], what: str, *args: Any) -> bool:
    """Call an app's hook; one that raises refuses (and is logged)."""
    try:
        return bool(hook(*args))
    except Exception:
        logger.exception("the %s hook %s raised; refusing", what, getattr(hook, "__qualname__", hook))
        return False
