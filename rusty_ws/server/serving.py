"""Running the hub: a threaded werkzeug server sized for many WebSockets, stopped cleanly.

``flask run`` works too; this adds a deeper listen backlog (thousands of
clients reconnect at once after a restart) and a shutdown that tells every
client to reconnect (close code 4200) before the process exits.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from typing import Any

from flask import Flask
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from .state import state_of

__all__ = ["HubServer", "freeze_startup_objects", "make_server", "serve"]

logger = logging.getLogger("rusty_ws.server")


class HubRequestHandler(WSGIRequestHandler):
    """werkzeug's handler with a smaller read buffer.

    The buffer lives as long as the request, which for a WebSocket is the whole
    connection, yet it only ever holds the HTTP request head: 2 KiB instead of 8.
    """

    rbufsize = 2048


class HubServer(ThreadedWSGIServer):
    """werkzeug's threaded server with a listen backlog fit for reconnect storms."""

    request_queue_size = 4096


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 8081) -> HubServer:
    """A server bound to ``host:port`` (port 0: any free port; see ``server.port``)."""
    return HubServer(host, port, app, handler=HubRequestHandler)


def freeze_startup_objects() -> int:
    """Hide what start-up built from the cyclic garbage collector (``gc.freeze``); returns how many.

    Flask, werkzeug, PyJWT and the hub leave ~36,000 objects that live as long
    as the process. Every full collection walks all of them (3.5 ms on an idle
    hub here, ~10 ms with 100 busy connections), and a publish that arrives
    meanwhile waits that long. Frozen, they are never walked again: ~1 ms with
    those 100 connections. Called by ``serve`` and by the gunicorn settings,
    which own their process; an embedding service decides for itself.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("= froze %d start-up objects out of the cyclic garbage collector", frozen)
    return frozen


def stop(app: Flask, server: HubServer, timeout: float = 5.0) -> None:
    """Close the hub's connections (4200), then stop accepting. Call from another thread than serve_forever."""
    state = state_of(app)
    if state is not None:
        state.hub.shutdown(timeout)
    server.shutdown()


def serve(app: Flask, host: str = "127.0.0.1", port: int = 8081) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly. Blocks; call from the main thread."""
    server = make_server(app, host, port)

    def on_signal(signum: int, _: Any) -> None:
        logger.info("= signal %d: closing connections and stopping", signum)
        # server.shutdown() waits for serve_forever, which runs on this very thread.
        threading.Thread(target=stop, args=(app, server), name="rusty_ws-shutdown").start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    paths = [rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.endswith(".websocket")]
    freeze_startup_objects()
    logger.info("= rusty_ws hub on ws://%s:%d%s", host, server.port, paths[0] if paths else "/ws")
    try:
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
