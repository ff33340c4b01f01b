"""Click commands, shared by the ``rusty-ws`` script and ``flask rusty-ws``.

They act on the current app (``create_app()`` for ``rusty-ws``, the user's
app under ``flask --app ... rusty-ws``).
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo

from ..auth import default_session_for, hash_password
from ..exceptions import ConfigError, ProtocolError
from ..protocol import check_session
from .logs import LEVELS, configure_logging
from .state import State, state_of

__all__ = ["group", "CommandLineConfigError", "loading_an_app"]

group = AppGroup("rusty-ws", help="The rusty_ws pub/sub hub.")


class CommandLineConfigError(ConfigError, click.ClickException):
    """A ``ConfigError`` met while a command line loads the app: click prints ``Error: <the line>``, exit 1.

    Still a ``ConfigError`` (and a ``ValueError``) for code that catches those.
    """

    exit_code = 1

    def __init__(self, error: ConfigError) -> None:
        click.ClickException.__init__(self, str(error))
        self.setting, self.value, self.expected = error.setting, error.value, error.expected


def loading_an_app() -> bool:
    """True inside a click command (``flask run``, ``rusty-ws serve``, ...), which loads the app it serves."""
    return click.get_current_context(silent=True) is not None


def _state() -> State:
    state = state_of(current_app)
    if state is None:
        raise click.ClickException("rusty_ws is not set up on this app (PubSub(app) or init_app)")
    return state


@group.command("serve", with_appcontext=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8081, show_default=True, type=int, help="Port to listen on.")
@click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False), default="info", show_default=True,
              help="Least important log lines shown; debug adds the wire traffic and the polling's access lines.")
def serve_command(host: str, port: int, log_level: str) -> None:
    """Run the hub until Ctrl-C or SIGTERM, then close connections cleanly."""
    from .serve import serve

    # Before the app is made, so that what init_app logs has the same format.
    configure_logging(log_level)
    app = current_app._get_current_object() if current_app else (  # type: ignore[attr-defined]
        click.get_current_context().ensure_object(ScriptInfo).load_app())
    with app.app_context():
        _state()
    serve(app, host, port, exit_when_stopped=True)  # the process is only this hub: end it at once


@group.command("token")
@click.argument("username")
@click.option("--session", "session_id", default=None, help="Session to bind (default session-USERNAME).")
def token_command(username: str, session_id: str | None) -> None:
    """Print a token for USERNAME, signed with the app's JWT_SECRET_KEY."""
    state = _state()
    if not state.settings.jwt_secret_key:
        raise click.ClickException("set JWT_SECRET_KEY: a token signed with a random key is useless")
    try:
        check_session(session_id or default_session_for(username))
    except ProtocolError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(state.tokens.issue(username, session_id).token)


@group.command("hash-password", with_appcontext=False)
@click.password_option()
def hash_password_command(password: str) -> None:
    """Print a password hash for a RUSTY_WS_USERS_FILE entry."""
    click.echo(hash_password(password))
