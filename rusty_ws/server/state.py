"""The hub state of one app, and the one key it lives under in ``app.extensions``.

A leaf: it imports only the pure core, so the views, the CLI group, the
stand-alone server, the gunicorn settings and the tests all reach the state
the same way (``state_of(app)``) without importing the extension, as
flask-sqlalchemy's ``cli.py`` reads ``current_app.extensions[...]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..auth import CredentialChecker, DemoUsers, TokenService
from ..config import Settings

if TYPE_CHECKING:
    from .access import Access
    from .extension import PubSub
    from .hub import Hub
    from .throttle import LoginThrottle

__all__ = ["EXTENSION_KEY", "State", "state_of"]

logger = logging.getLogger("rusty_ws.server")

#: The key of the hub's state in ``app.extensions``.
EXTENSION_KEY = "rusty_ws"


@dataclass
class State:
    """Everything the hub of one app needs, kept in ``app.extensions[EXTENSION_KEY]``."""

    pubsub: "PubSub"
    settings: Settings
    hub: "Hub"
    tokens: TokenService
    users: CredentialChecker | None
    access: "Access"
    throttle: "LoginThrottle"
    #: ``views.make_blueprint``'s ``plain_upgrade(app, environ) -> bool``: a handshake served without Flask's request.
    plain_upgrade: Callable[[Any, dict[str, Any]], bool] | None = None

    def check_credentials(self, username: str, password: str) -> bool:
        """The app's hook if it has one, else the users file, else in development mode the demo user."""
        checker = self.pubsub.credential_checker or self.users or (DemoUsers() if self.access.development_mode
                                                                     else None)
        if checker is None:
            return False
        try:
            return bool(checker(username, password))
        except Exception:
            logger.exception("the credential check raised; refusing the login")
            return False


def state_of(app: Any) -> State | None:
    """The hub state of ``app`` (a Flask app, or anything with ``extensions``), or None if it has none."""
    extensions = getattr(app, "extensions", None)
    if not isinstance(extensions, dict):
        return None
    return extensions.get(EXTENSION_KEY)
