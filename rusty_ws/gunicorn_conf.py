"""gunicorn settings for the hub: ``gunicorn -c python:rusty_ws.gunicorn_conf ...``.

::

    RUSTY_WS_BROKER_URL=redis://127.0.0.1:6379/0 JWT_SECRET_KEY=... \\
    RUSTY_WS_MAX_CONNECTIONS=200 \\
    gunicorn -c python:rusty_ws.gunicorn_conf --workers 4 --threads 216 \\
        --bind 127.0.0.1:8081 'rusty_ws:create_app()'

Every WebSocket holds one of a worker's ``--threads`` for as long as it is
open, so a worker serves at most ``--threads`` requests at once, WebSockets
included. ``RUSTY_WS_MAX_CONNECTIONS`` must stay below ``--threads``, or open
WebSockets can take every thread and leave none for ``/auth/token`` and
``/healthz``; the check below logs an error when it does not.

On SIGTERM (a deploy, a scale-down) each worker closes its WebSockets with
4200 "server restarting", so clients reconnect at once, to another node,
instead of hanging on until gunicorn's ``graceful_timeout`` cuts them off.

Command-line options override these settings. Nothing here imports gunicorn,
so the module loads anywhere.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from .server.state import state_of

#: The threaded worker: flask-sock/simple-websocket take over gunicorn's socket on it.
worker_class = "gthread"
#: Threads per worker, shared by WebSockets and HTTP requests (see the module's docstring).
threads = 64

logger = logging.getLogger("rusty_ws.server")


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: check the thread budget, close WebSockets with 4200 on SIGTERM, freeze start-up objects."""
    from .server.serve import freeze_startup_objects  # imported here: this module loads without Flask

    freeze_startup_objects()
    state = state_of(worker.wsgi)  # None when the app is wrapped (or not a rusty_ws hub)
    if state is None:
        logger.warning("rusty_ws.gunicorn_conf: no rusty_ws hub on %r; SIGTERM is left as it is",
                       worker.wsgi)
        return
    if state.settings.max_connections >= worker.cfg.threads:
        logger.error(
            "RUSTY_WS_MAX_CONNECTIONS=%d is not below --threads=%d: open WebSockets can take "
            "every thread of this worker and starve its HTTP routes",
            state.settings.max_connections, worker.cfg.threads,
        )
    gunicorn_handler = worker.handle_exit

    def handle_exit(signum: int, frame: Any) -> None:
        # A signal handler must not block: the hub's shutdown (4200 to every client,
        # then the broker and the writer) runs on its own thread while gunicorn's
        # graceful stop waits for the connections to end.
        threading.Thread(target=state.hub.shutdown, name="rusty_ws-shutdown").start()
        gunicorn_handler(signum, frame)

    signal.signal(signal.SIGTERM, handle_exit)
