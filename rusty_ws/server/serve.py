"""Running the hub as a process: serve until a signal, then stop cleanly (4200) and exit at once.

Split out of the server because it owns the process, not the sockets: the
signal handlers, the internal port's server (``internal.py``), the start-up
lines, the garbage collector's settings (``freeze_startup_objects``, also
called by the gunicorn settings) and the shutdown that tells every client to
reconnect (close code 4200) before the process exits (``stop``, ``exit_now``).
The server it runs is ``hub_server.HubServer``.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any, NoReturn

from flask import Flask

from .hub_server import HubServer, make_server
from .internal import internal_server
from .state import state_of
from .stop_clock import StopClock

__all__ = ["freeze_startup_objects", "stop", "exit_now", "serve"]

logger = logging.getLogger("rusty_ws.server")


#: ``gc.set_threshold``'s third value under ``freeze_startup_objects``: a full collection after 100 collections of
#: the middle generation, not 10 (and, as always, only once the long-lived objects grew by a quarter).
FULL_COLLECTION_THRESHOLD = 100
_PYTHON_FULL_THRESHOLD = 10  # Python's default, which a process that chose its own keeps
#: ``sys.setswitchinterval`` of a process that is stopping to exit (``_stop_and_exit``): see there.
EXIT_SWITCH_INTERVAL = 5.0


def freeze_startup_objects() -> int:
    """Hide what start-up built from the cyclic garbage collector (``gc.freeze``); returns how many.

    Flask, werkzeug, PyJWT and the hub leave ~36,000 objects that live as long
    as the process. Every full collection walks all of them (3.5 ms on an idle
    hub here, ~10 ms with 100 busy connections), and a publish that arrives
    meanwhile waits that long. Frozen, they are never walked again: ~1 ms with
    those 100 connections. Called by ``serve`` and by the gunicorn settings,
    which own their process; an embedding service decides for itself.

    Also makes full collections rarer (``FULL_COLLECTION_THRESHOLD``), unless the
    process set its own third threshold: while 10,000 clients connect, Python's
    default ran four of them, ~115 ms each with the interpreter lock held (6% of
    the connect's CPU, and a pause for every request meanwhile); a connection
    that closes leaves no cyclic garbage to wait for them (measured: none).
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    young, middle, full = gc.get_threshold()
    if full == _PYTHON_FULL_THRESHOLD:
        gc.set_threshold(young, middle, FULL_COLLECTION_THRESHOLD)
    logger.debug("= froze %d start-up objects out of the cyclic garbage collector; thresholds %s", frozen,
                 gc.get_threshold())
    return frozen


def stop(app: Flask, server: HubServer, timeout: float = 5.0, *, exiting: bool = False,
         clock: StopClock | None = None) -> None:
    """Stop accepting, then close the hub's connections (4200). Call from another thread than serve_forever.

    The listening socket is closed first: in a restart every client told 4200 comes
    back within a second or so, and while the old process was still shutting down its
    accept loop gave each of them a thread and a 503 (``shutting_down``), CPU taken from
    closing the connections; the kernel now refuses them at no cost, and they back off.
    Shut down (``SHUT_RDWR``) before the accept loop ends: from then on the system
    refuses new connections, and the loop's wait for one (up to ``serve_forever``'s
    0.1 s poll interval) ends at once.
    ``exiting``: the process ends right after (``Hub.shutdown``'s ``exiting``).
    ``clock``: each phase's end is marked on it (``StopClock``).
    """
    try:
        server.socket.shutdown(socket.SHUT_RDWR)  # Linux: no longer listening; accept() fails (EINVAL)
    except OSError:
        pass  # not every system shuts a listening socket down; closed below all the same
    if clock is not None:
        clock.mark("listener shut")
    server.shutdown()  # the accept loop has ended when this returns
    if clock is not None:
        clock.mark("accept loop ended")
    server.socket.close()
    state = state_of(app)
    if state is not None:
        state.hub.shutdown(timeout, exiting=exiting, clock=clock)


def exit_now(code: int = 0) -> NoReturn:
    """End the process at once, after flushing the logs and the standard streams (``os._exit``).

    For a process that is only a hub (``rusty-ws serve``), once its hub has shut
    down: the interpreter's own exit with thousands of connection threads still
    ending took seconds (measured: 2.4 s with 3,700 left of 10,000), during which
    the port stayed unusable for the next process. Nothing is left to do: the
    4200s are written and the broker stopped; the kernel closes the sockets.
    Never for a hub embedded in someone's process: ``Hub.shutdown`` alone there.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _stop_and_exit(app: Flask, server: HubServer, *, clock: StopClock) -> None:
    """``stop`` for a process that is only this hub, then end it from this very thread (``exit_now``).

    Not back on the main thread: with thousands of connection threads still
    ending, every hand-off of the interpreter lock waits behind them (measured:
    ~0.5 s between the last 4200 and the exit); this thread holds what it needs.
    """
    # The process ends within a second or two: the cyclic garbage collector has nothing to
    # give back that the exit does not, and its walks over every connection's objects were
    # a quarter of the stop's CPU (perf, 10,000 connections).
    gc.disable()
    # Each thread waiting for the interpreter lock wakes every switch interval to ask for it, and
    # they all take one mutex to do so. Every connection's thread wakes at its client's EOF after
    # the 4200 and waits for the lock once (to park): at 10,000 of them and 0.05 s, 200,000
    # wake-ups a second on that mutex (perf: 71% of the process's CPU in futex_wake and its spin
    # lock), and the stopping thread, which needs the same mutex at each send, took 9.5 s or more
    # for its 4200s in 3 stops of 24 instead of 0.5 s (none of 20 since; docs/performance.md,
    # "Reconnect storm, session 17"). A process about to end has no thread that must be asked to
    # let go of the lock: each send lets it go anyway.
    sys.setswitchinterval(EXIT_SWITCH_INTERVAL)
    try:
        stop(app, server, exiting=True, clock=clock)
    except BaseException:
        logger.exception("the shutdown failed; exiting all the same")
        exit_now(1)
    clock.mark("exit")
    clock.report()
    exit_now(0)


def _route(app: Flask, endpoint_suffix: str) -> str | None:
    """The path of the app's first route whose endpoint ends with ``endpoint_suffix`` (the hub's blueprint's)."""
    return next((rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.endswith(endpoint_suffix)), None)


def _browsable(host: str) -> str:
    """A name a browser on this machine can open for ``host``: a wildcard address becomes loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def serve(app: Flask, host: str = "127.0.0.1", port: int = 8081, *, exit_when_stopped: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly. Blocks; call from the main thread.

    ``exit_when_stopped``: the process is only this hub (``rusty-ws serve``): once the
    connections are told 4200, it ends at once (``exit_now``) instead of returning.
    """
    server = make_server(app, host, port)
    stopper: list[threading.Thread] = []  # the shutdown's thread, once a signal came

    def on_signal(signum: int, _: Any) -> None:
        clock = StopClock()
        logger.info("%s: closing connections and stopping", signal.Signals(signum).name)
        if stopper:  # a second signal: the first one's shutdown is under way
            return
        if internal is not None:  # refused from now on, as the hub's port is; its thread ends by itself
            internal.close(wait=False)
        # server.shutdown() waits for serve_forever, which runs on this very thread.
        stopper.append(threading.Thread(target=_stop_and_exit if exit_when_stopped else stop,
                                        args=(app, server), kwargs={"clock": clock},
                                        name="rusty_ws-shutdown"))
        stopper[0].start()

    try:
        internal = internal_server(app)  # RUSTY_WS_INTERNAL_PORT: /healthz on a socket and a thread of its own
    except BaseException:  # its port taken, say: the hub does not start
        server.server_close()
        raise
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    freeze_startup_objects()
    websocket, page = _route(app, ".websocket") or "/ws", _route(app, ".page")
    logger.info("rusty_ws hub on ws://%s:%d%s", host, server.port, websocket)
    state = state_of(app)
    if state is not None:
        logger.info("at most %d WebSocket connections at once (RUSTY_WS_MAX_CONNECTIONS)",
                    state.settings.max_connections)
    if page is not None:
        logger.info("the hub's page: open http://%s:%d%s in a browser", _browsable(host), server.port, page)
    if internal is not None:
        logger.info("internal port (RUSTY_WS_INTERNAL_PORT): %s on http://%s:%d", ", ".join(sorted(internal.paths))
                    or "no route", _browsable(internal.host), internal.port)
    try:
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
        if internal is not None:
            internal.close()
    if exit_when_stopped and stopper:
        stopper[0].join()
        exit_now(0)
