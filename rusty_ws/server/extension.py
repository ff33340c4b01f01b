"""``PubSub``: the Flask extension that gives an app the hub.

::

    pubsub = PubSub()

    def create_app():
        app = Flask(__name__)
        pubsub.init_app(app, url_prefix="/realtime")
        return app

    @app.post("/orders")
    def new_order():
        pubsub.publish("session-shop", "OrderPlaced", {"id": 42})

    @pubsub.session_policy
    def may_use(username, session_id):        # username None: an anonymous connection
        return username is not None and session_id in sessions_of(username)

    @pubsub.permissions
    def may(username, session_id, topic, action):   # action: TopicAction.SUBSCRIBE or PUBLISH
        return action == "subscribe" or username is not None

The app's settings (``RUSTY_WS_*``, see ``config.py``) are read once, in
``init_app``. The hub's state lives in ``app.extensions`` (see ``state.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import sys
from typing import Any

from flask import Flask, current_app, has_app_context

from ..auth import CredentialChecker, SessionPolicy, TokenService, UsersFile
from ..brokers import broker_from_url
from ..config import Settings
from ..exceptions import ConfigError, ProtocolError
from ..protocol import (
    MAX_JSON_DEPTH,
    SERVER_PUBLISHER,
    Delivery,
    ErrorCode,
    check_session,
    check_topic,
    nested_deeper_than,
    rfc3339_now,
)
from . import cli, redaction
from .access import Access, TopicPermissions
from .hub import Hub
from .state import EXTENSION_KEY, State, state_of
from .throttle import LoginThrottle
from .views import make_blueprint

__all__ = ["PubSub"]

logger = logging.getLogger("rusty_ws.server")

class PubSub:
    """The rusty_ws hub as a Flask extension.

    Args:
        app: an app to set up now; or call ``init_app`` later (app factories).
        url_prefix: where the routes go (``/ws``, ``/auth/token``, ...); default the root.
        check_credentials: ``(username, password) -> bool``; see ``credential_checker``.
        session_policy: ``(username or None, session_id) -> bool``; see ``session_policy_hook``.
        permissions: ``(username or None, session_id, topic, action) -> bool``; see ``permissions_hook``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        url_prefix: str | None = None,
        check_credentials: CredentialChecker | None = None,
        session_policy: SessionPolicy | None = None,
        permissions: TopicPermissions | None = None,
    ) -> None:
        self.url_prefix = url_prefix
        #: The app's own login check; overrides ``RUSTY_WS_USERS_FILE`` and the demo user.
        self.credential_checker = check_credentials
        #: The app's own session policy: may this user (None: anonymous) use this session?
        #: Replaces the users file's ``sessions`` and development mode's "anywhere"; for
        #: anonymous connections it is asked after ``RUSTY_WS_ANONYMOUS_SESSIONS`` allowed.
        self.session_policy_hook = session_policy
        #: The app's per-topic check: may this identity subscribe to (``history:`` too) or
        #: publish on this topic in this session? Asked after the session is allowed and,
        #: for publishes, after ``RUSTY_WS_SERVER_ONLY_TOPICS``.
        self.permissions_hook = permissions
        self._apps: list[Flask] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, url_prefix: str | None = None) -> None:
        """Read the app's settings, start its hub, register the routes and ``flask rusty-ws``.

        Raises:
            RuntimeError: rusty_ws is already registered on ``app``.
            ConfigError: a setting has a value that cannot work (a ``ValueError``), the
                users file among them; the message is one line naming the setting, its
                value and what is expected. Raised while a command line (``flask run``,
                ``rusty-ws serve``) loads the app, click prints just that line and exits 1.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("rusty_ws is already registered on this app")
        try:
            self._set_up(app, url_prefix)
        except ConfigError as exc:
            if cli.loading_an_app():
                raise cli.CommandLineConfigError(exc) from None
            raise

    def _set_up(self, app: Flask, url_prefix: str | None) -> None:
        settings = Settings.from_config(app.config)
        # Development mode and the page: as set, else only for an app in debug mode.
        dev_mode = app.debug if settings.dev_mode is None else settings.dev_mode
        settings = dataclasses.replace(
            settings, dev_mode=dev_mode,
            serve_page=dev_mode if settings.serve_page is None else settings.serve_page,
        )
        users = _load_users(settings.users_file) if settings.users_file else None  # before any log line
        # The bound on what one publish may make each subscriber queue (docs/configuration.md).
        broker = broker_from_url(settings.broker_url, max_envelope_size=settings.max_queued_bytes,
                                 send_queue=settings.redis_send_queue, send_queue_bytes=settings.redis_send_queue_bytes,
                                 retry_timeout=settings.broker_retry_timeout)
        secret = settings.jwt_secret_key
        if not secret:
            secret = secrets.token_urlsafe(32)
            if broker.distributed:
                logger.error(
                    "no JWT_SECRET_KEY set while the %s broker spans several nodes: this node "
                    "generated its own secret, so tokens issued here are REFUSED by every other "
                    "node (and by this one after a restart). Give every node the same "
                    "JWT_SECRET_KEY.", broker.name
                )
            else:
                logger.warning(
                    "no JWT_SECRET_KEY set: generated a random one; tokens will not survive "
                    "a restart nor work on another process%s", _environment_hint()
                )
        if "*" not in settings.allowed_hosts and app.config.get("RUSTY_WS_ALLOWED_HOSTS") is None:
            logger.info("RUSTY_WS_ALLOWED_HOSTS not set while origins are restricted: answering "
                        "only requests for %s", ", ".join(settings.allowed_hosts))
        if users is None and self.credential_checker is None and dev_mode:
            logger.warning(
                "DEVELOPMENT MODE: no users file and no credential hook; the demo login "
                "testuser/password works and may have any session. Set RUSTY_WS_USERS_FILE for real users."
            )
        elif users is None and self.credential_checker is None:
            logger.warning(
                "no users file and no credential hook: every login to /auth/token is refused (the "
                "demo login is for development mode: the stand-alone hub, app.debug, or "
                "RUSTY_WS_DEV_MODE=1). Set RUSTY_WS_USERS_FILE or use @pubsub.check_credentials."
            )
        elif users is not None:
            logger.info("users file: %d users, %d of them admins", len(users), len(users.admins()))
        redaction.install()  # before the first request line is logged
        tokens = TokenService(secret, settings.jwt_expiration_seconds, max_lifetime=settings.jwt_max_lifetime)
        access = Access(settings, tokens, users, self)  # settings.dev_mode: resolved above
        state = State(
            pubsub=self,
            settings=settings,
            hub=Hub(settings, broker, access),
            tokens=tokens,
            users=users,
            access=access,
            throttle=LoginThrottle(settings.login_max_failures_per_address,
                                   settings.login_max_failures_per_user_address,
                                   settings.login_window, settings.login_max_tracked),
        )
        try:
            app.register_blueprint(make_blueprint(state), url_prefix=url_prefix or self.url_prefix)
        except BaseException:
            state.hub.shutdown(0)  # the broker may have started a thread already
            raise
        app.extensions[EXTENSION_KEY] = state
        app.cli.add_command(cli.group)
        self._apps.append(app)
        if settings.switch_interval is not None:
            sys.setswitchinterval(settings.switch_interval)
            logger.debug("= GIL switch interval set to %.3fs", settings.switch_interval)

    def check_credentials(self, checker: CredentialChecker) -> CredentialChecker:
        """Decorator: use ``checker(username, password) -> bool`` for ``/auth/token`` logins."""
        self.credential_checker = checker
        logger.info("credential hook %s registered: the demo login is off",
                    getattr(checker, "__qualname__", checker))
        return checker

    def session_policy(self, policy: SessionPolicy) -> SessionPolicy:
        """Decorator: use ``policy(username, session_id) -> bool`` to decide who may use which session.

        ``username`` is None for an anonymous connection. Asked at ``/auth/token``
        (after the password) and for every command that names or implies a session
        other than the token's ``sid``. Runs on the request's or the connection's
        thread; one that raises refuses (and is logged). Returns ``policy``.
        """
        self.session_policy_hook = policy
        logger.info("session policy %s registered", getattr(policy, "__qualname__", policy))
        return policy

    def permissions(self, check: TopicPermissions) -> TopicPermissions:
        """Decorator: use ``check(username, session_id, topic, action) -> bool`` for every subscribe and publish.

        ``action`` is a ``TopicAction`` (``"subscribe"``, which ``history:`` asks too, or
        ``"publish"``); ``username`` is None for an anonymous connection. A refusal is
        ``forbidden_topic``. The hub's own ``publish`` is never checked. Returns ``check``.
        """
        self.permissions_hook = check
        logger.info("topic permissions %s registered", getattr(check, "__qualname__", check))
        return check

    def state(self, app: Flask | None = None) -> State:
        """The hub state of ``app``, the current app, or the only app set up.

        Raises:
            RuntimeError: no app can be found, or it was never set up with ``init_app``.
        """
        if app is None:
            if has_app_context():
                app = current_app._get_current_object()  # type: ignore[attr-defined]
            elif len(self._apps) == 1:
                app = self._apps[0]
            else:
                raise RuntimeError(
                    "no app: call this inside an app context, or pass app=, "
                    "when one PubSub serves several apps"
                )
        state = state_of(app)
        if state is None:
            raise RuntimeError("rusty_ws is not set up on this app; did you forget init_app?")
        return state

    def hub(self, app: Flask | None = None) -> Hub:
        """The ``Hub`` of ``app`` (see ``state`` for how the app is found)."""
        return self.state(app).hub

    def publish(
        self,
        session_id: str,
        topic: str,
        payload: Any,
        *,
        publisher_name: str = SERVER_PUBLISHER,
        timestamp: str | None = None,
        app: Flask | None = None,
    ) -> None:
        """Publish from server code, delivered exactly like a client's publish.

        Safe from any thread; never blocks on a slow subscriber. The payload obeys
        the clients' limit: it may nest at most ``MAX_JSON_DEPTH - 1`` (63) deep.
        ``publisher_name`` defaults to ``"server"``, which no client may use, and the
        delivery has no ``user``: that is how receivers tell the hub's messages apart.

        Raises:
            ProtocolError: the topic or session is not valid, or the payload is not JSON
                (``invalid_message``: NaN, sets, arbitrary objects, nested too deeply, or
                larger than ``RUSTY_WS_MAX_QUEUED_BYTES`` encoded).
        """
        delivery = Delivery(
            publisher_name=publisher_name,
            topic=check_topic(topic),
            payload=payload,
            timestamp=timestamp or rfc3339_now(),
            session_id=check_session(session_id),
        )
        try:
            encoded = delivery.encode()  # fail here, in the caller, not later on the writer's path
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"the payload is not JSON: {exc}") from None
        # The clients' limit (protocol.loads_strict), so that every node can encode it again.
        if (encoded.count(b"[") + encoded.count(b"{") > MAX_JSON_DEPTH
                and nested_deeper_than(delivery.to_dict(), MAX_JSON_DEPTH)):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                f"the payload nests deeper than {MAX_JSON_DEPTH - 1} levels")
        hub = self.hub(app)
        if len(encoded) > hub.settings.max_queued_bytes:  # more than any subscriber is meant to queue
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                f"the message is {len(encoded)} bytes, more than a subscriber's outbox "
                                f"holds (RUSTY_WS_MAX_QUEUED_BYTES, {hub.settings.max_queued_bytes})")
        hub.publish(delivery)

    def shutdown(self, app: Flask | None = None, timeout: float = 5.0) -> None:
        """Close every connection (4200: reconnect now) and stop the hub's threads. Idempotent."""
        self.hub(app).shutdown(timeout)


def _load_users(path: str) -> UsersFile:
    """``RUSTY_WS_USERS_FILE``'s users; a file that cannot be used is a ``ConfigError`` naming the setting."""
    try:
        return UsersFile.load(path)
    except ConfigError:
        raise
    except ValueError as exc:  # UsersFile.load's messages start with the path: said once, as the value
        problem = str(exc)
        raise ConfigError("RUSTY_WS_USERS_FILE", path, problem.removeprefix(f"{path}: ")) from None


def _environment_hint() -> str:
    """Why an embedded hub may miss a secret the environment has: it reads ``app.config``."""
    found = [name for name in ("JWT_SECRET_KEY", "RUSTY_WS_JWT_SECRET_KEY") if os.environ.get(name)]
    if not found:
        return ""
    return (f" ({found[0]} is set in the environment, but an embedded hub reads the app's config: "
            f"app.config['{found[0]}'] = os.environ['{found[0]}'], or app.config.from_prefixed_env())")
