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
    app = Flask("rusty_ws")
    app.config.update(config_from_environ(os.environ))
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    PubSub(app)
    return app
