"""A WebSocket's life after its request: under ``HubServer`` the command loop runs once the view has returned.

Under ``flask run`` and gunicorn the view runs the connection (``Hub.serve``)
itself, so the request lasts as long as the WebSocket: werkzeug's handler and
environ, Flask's request context and 21 Python frames stay for the
connection's life (docs/architecture.md, "What a connection costs"). Under
``HubServer`` (``rusty-ws serve``, ``serving.serve``, ``make_server``) the
view hands the upgraded socket over instead (``SERVE_AFTER_KEY``) and
returns; the request then ends at once (Flask's ``teardown_request`` and
``teardown_appcontext`` run, werkzeug's objects go), and the server's
request thread runs ``AfterTheView.run`` from the top of its stack.

What werkzeug would do after the view, and must not do on a WebSocket: write
the view's response, and drain what the client sent (its first frames). The
view's response raises ``Upgraded`` (a ``ConnectionError``, which werkzeug
takes for a client gone and answers with nothing), and the handler's writer
is ``ClosedToHttp``, which raises it too, for a response an app's
``after_request`` put in its place.

An embedding app served this way sees its request end when the handshake is
done: ``teardown_request`` runs before the connection's first command, not at
the socket's end. The commands run in an app context of their own, pushed
when the loop starts and popped at its end (``teardown_appcontext`` runs
again then), so the session policy and the permissions hook still have
``current_app``; ``flask.request`` and the request's ``g`` are gone.
"""

from __future__ import annotations

import io
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from ..auth import Claims
    from .hub import Hub

__all__ = ["SERVE_AFTER_KEY", "Upgraded", "ClosedToHttp", "AfterTheView"]

#: Where ``HubRequestHandler`` leaves, in a WebSocket request's environ, the callable that takes an ``AfterTheView``.
SERVE_AFTER_KEY = "rusty_ws.serve_after"


class Upgraded(ConnectionError):
    """The request's socket is a WebSocket now: werkzeug must write nothing more on it (it drops this quietly)."""


class ClosedToHttp(io.BufferedIOBase):
    """The handler's ``wfile`` once its socket was handed over: any write raises ``Upgraded``."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise Upgraded("the socket was handed over as a WebSocket")


class AfterTheView:
    """An upgraded connection whose request is ending; ``run`` is its whole life, on the request's thread.

    It holds the connection's slot (``Hub.take_slot``, taken by ``_admit``):
    ``run`` gives it back at the socket's end, ``abandon`` at once.
    """

    __slots__ = ("app", "hub", "sock", "claims", "remote", "deflate", "read_ahead")

    def __init__(self, app: "Flask", hub: "Hub", sock: socket.socket, claims: "Claims | None", remote: str,
                 deflate: bool, read_ahead: bytes) -> None:
        self.app, self.hub, self.sock = app, hub, sock
        self.claims, self.remote, self.deflate, self.read_ahead = claims, remote, deflate, read_ahead

    def run(self) -> None:
        """Serve the connection to its end, then close the socket and give the slot back."""
        hub, sock = self.hub, self.sock
        try:
            read_ahead, self.read_ahead = self.read_ahead, b""
            with self.app.app_context():
                hub.serve(sock, self.claims, self.remote, deflate=self.deflate, read_ahead=read_ahead)
        finally:
            try:
                sock.close()  # as the view does: nothing may follow the close frame
            finally:
                hub.give_back_slot(served=True)  # Hub.serve counted the end (even when it failed early)

    def abandon(self) -> None:
        """The request failed after the hand-over: close the socket and give the slot back, unserved."""
        try:
            self.sock.close()
        finally:
            self.hub.give_back_slot(served=False)
