"""``create_app``: the stand-alone hub, as ``flask --app rusty_ws run`` finds it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from ..config import config_from_environ
from . import limits
from .extension import PubSub
from .limits import derive_max_connections
from .logs import log_start_up, quiet_access_log

__all__ = ["create_app", "STANDALONE_SWITCH_INTERVAL"]

logger = logging.getLogger("rusty_ws.server")

#: The stand-alone hub's GIL switch interval, in seconds (Python's default is 0.005). Each thread waiting
#: for the GIL wakes once an interval to ask for it, and all of them take one mutex to do so: when
#: 10,000 clients dropped at once, their threads woke together and at 0.05 s those wake-ups flooded
#: that mutex (one disconnect took 210 s and 398 s of system CPU; 3.4-3.9 s at 0.2 and 0.5). No
#: thread of the hub holds the GIL long without a system call, which lets it go anyway.
STANDALONE_SWITCH_INTERVAL = 0.5


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A Flask app that is only the hub.

    Settings come from, in rising order: environment variables (``RUSTY_WS_*``,
    ``JWT_SECRET_KEY``, ``JWT_EXPIRATION_SECONDS``, and Flask's ``FLASK_*``),
    then ``config``. The stand-alone hub owns its process, so it also sets the
    GIL switch interval (``RUSTY_WS_SWITCH_INTERVAL``, 0.5 s here), derives
    ``RUSTY_WS_MAX_CONNECTIONS`` from its file-descriptor limit when it is not set
    (``limits.py``; not under gunicorn), and quiets the
    access log of what its page polls (``logs.AccessLogFilter``, which also masks tokens).
    """
    # No app-wide /static/: the hub's blueprint serves rusty_ws/static at /rusty_ws/,
    # with CORS, at the same URL as in an embedding app.
    app = Flask("rusty_ws", static_folder=None)
    app.config["RUSTY_WS_SWITCH_INTERVAL"] = STANDALONE_SWITCH_INTERVAL
    # The stand-alone hub is what a developer runs first: the page and, without a users file
    # or a credential hook, the demo login. An embedding app gets neither unless it is in
    # debug mode or asks (docs/embedding.md, "Development mode").
    app.config["RUSTY_WS_SERVE_PAGE"] = True
    app.config["RUSTY_WS_DEV_MODE"] = True
    app.config.update(config_from_environ(os.environ))
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    said = derive_max_connections(app.config)  # unless set: what the descriptor limit allows (limits.py)
    PubSub(app)
    log_start_up(logger, said, limits.__file__)  # once the settings are checked: a bad one is all a command prints
    quiet_access_log()
    return app
