"""``create_app``: the stand-alone hub, as ``flask --app rusty_ws run`` finds it."""

from __future__ import annotations

import os
from typing import Any, Mapping

from flask import Flask

from .config import config_from_environ
from .extension import PubSub

__all__ = ["create_app"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A Flask app that is only the hub.

    Settings come from, in rising order: environment variables (``RUSTY_WS_*``,
    ``JWT_SECRET_KEY``, ``JWT_EXPIRATION_SECONDS``, and Flask's ``FLASK_*``),
    then ``config``.
    """
    # No app-wide /static/: the hub's blueprint serves rusty_ws/static at /rusty_ws/,
    # with CORS, at the same URL as in an embedding app.
    app = Flask("rusty_ws", static_folder=None)
    app.config.update(config_from_environ(os.environ))
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    PubSub(app)
    return app
