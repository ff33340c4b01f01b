"""The HTTP side: ``/ws``, ``/auth/token``, ``/auth/refresh``, ``/auth/info``, ``/healthz``, CORS, the web page.

The JavaScript modules in ``static/`` are served at ``<prefix>/rusty_ws/`` (not
``/static/``, which belongs to the app that embeds the hub), with the same CORS
headers as the API, so pages on other origins can ``import`` them. The page
is ``<prefix>/`` unless ``RUSTY_WS_SERVE_PAGE`` is off.

The WebSocket route is a werkzeug ``websocket`` rule whose view writes the 101
itself (``_switching_protocols``), and only after ``_admit`` has checked the
request (the handshake's own headers, origin, token, connection limit). A
refused request gets a JSON answer with 400, 401, 403, 426 or 503 and never
becomes a WebSocket; ``_handshake_error`` refuses a key that is not base64 of
16 bytes and a missing or unknown version.
Before that, ``_check_host`` refuses (403) any request of the hub's routes
whose ``Host`` is not allowed (``RUSTY_WS_ALLOWED_HOSTS``, against DNS
rebinding), and ``/auth/token`` runs at most ``RUSTY_WS_MAX_CONCURRENT_LOGINS``
credential checks at once.

A client that sends frames without waiting for the 101 (RFC 6455 asks it to
wait) has them read by the WSGI server together with the request head; the
view hands those bytes (``_read_ahead``) to the connection, which parses them
before it reads the socket, so they are not lost.

``/auth/token`` checks, in this order: the body (400), the failure counters of
the client's address (429 with ``Retry-After``, no password checked: see
``throttle.py``), the password (401), then the session policy (403
``forbidden_session``), so the policy is never revealed to someone without
the password. Without ``RUSTY_WS_REQUIRE_AUTH`` a handshake without a token
is anonymous; with it, it is upgraded all the same, and the connection must
send ``auth:{token}`` first (``connection.py``).

The route used to be flask-sock's: simple-websocket's handshake (wsproto over
h11) cost ~0.1 ms and a ``Server`` object (with its Event, kept for the
connection's life) per connection, for a 101 that is four header lines. The
request thread reads the socket itself (``connection.py``): a connection costs
one thread. Other flask-sock routes of an embedding app are left as they are.

Under ``HubServer`` (``rusty-ws serve``) the view does not run the
connection itself: it hands the upgraded socket to the server's handler
(``handoff.SERVE_AFTER_KEY``) and returns, and the request thread runs the
connection once the request has ended (``handoff.py``). Under ``flask run``
and gunicorn it calls ``Hub.serve`` and returns when the connection ends.

What the view leans on: the raw socket in ``environ`` (``werkzeug.socket``,
``gunicorn.socket``), what the server read past the head (``_read_ahead``),
and how each server takes a response it must not write (``_AlreadyAnswered``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import math
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    appcontext_popped,
    appcontext_pushed,
    appcontext_tearing_down,
    current_app,
    got_request_exception,
    jsonify,
    request,
    request_finished,
    request_started,
    request_tearing_down,
)
from werkzeug.wsgi import get_host

from ..auth import Claims, default_session_for
from ..exceptions import AuthError, ProtocolError, TokenInvalid
from ..frames import ACCEPTED_DEFLATE, deflate_offer_to_accept
from ..protocol import check_session, loads_strict
from .handoff import SERVE_AFTER_KEY, AfterTheView, Upgraded
from .request_handler import HEAD_ONLY_KEY, RELEASE_HEAD_KEY
from .throttle import client_address

if TYPE_CHECKING:
    from .extension import State

__all__ = ["make_blueprint", "MAX_AUTH_BODY"]

logger = logging.getLogger("rusty_ws.server")

#: The JS modules and the page: ``rusty_ws/static``, beside the pure core (the package's data).
STATIC_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
#: Largest body ``/auth/*`` reads; a login is a few hundred bytes.
MAX_AUTH_BODY = 64 * 1024
#: Where ``_admit`` leaves its verdict for the WebSocket view and for teardown.
ADMISSION_KEY = "rusty_ws.admission"
_WS_ENDPOINT = "websocket"
#: The page loads only its own files and talks only to its own hub, so injected markup can do nothing.
PAGE_CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass
class Admission:
    """A request that passed ``_admit`` and holds a connection slot."""

    claims: Claims | None
    deflate: bool = False  # permessage-deflate was negotiated (RUSTY_WS_COMPRESSION)
    holds_slot: bool = True
    served: bool = False  # the connection ran Hub.serve (which counted its end: Hub.give_back_slot)


#: RFC 6455 4.2.2: what the client's key is hashed with for ``Sec-WebSocket-Accept``.
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _switching_protocols(key: str, deflate: bool) -> bytes:
    """The 101 answer to a handshake ``_handshake_error`` found sound (its key is 24 base64 characters)."""
    accept = base64.b64encode(hashlib.sha1(key.strip().encode("ascii") + _WEBSOCKET_GUID).digest())
    extensions = b"Sec-WebSocket-Extensions: %s\r\n" % ACCEPTED_DEFLATE.encode() if deflate else b""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\n%s\r\n" % (accept, extensions))


class _AlreadyAnswered(Response):
    """What the WebSocket view returns: the connection was answered (and closed) by hand.

    As flask-sock's route does: werkzeug gets an empty response, whose writing
    fails on the closed socket and is dropped; gunicorn is told by
    StopIteration to write nothing and to close the connection itself.
    """

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if "gunicorn.socket" in environ:
            raise StopIteration()
        return super().__call__(environ, start_response)


class _HandedOver(Response):
    """What the WebSocket view returns under ``HubServer``: the socket is handed over (``handoff.py``).

    Its call raises ``Upgraded``, which werkzeug takes for a client gone: it
    writes no response and reads nothing more off the socket.
    """

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        raise Upgraded("the socket was handed over as a WebSocket")


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": message, "code": code}), status


def _header_tokens(headers: Any, name: str) -> set[str]:
    return {token.strip().lower() for token in headers.get(name, "").split(",")}


def _handshake_error(req: Request) -> tuple[Response, int] | None:
    """What makes this request no WebSocket opening handshake (RFC 6455 4.2.1), or None."""
    headers = req.headers
    if (req.method != "GET" or "websocket" not in _header_tokens(headers, "Upgrade")
            or "upgrade" not in _header_tokens(headers, "Connection")):
        return _error(400, "bad_handshake", "a WebSocket handshake is a GET with 'Upgrade: websocket' "
                                            "and 'Connection: Upgrade'")
    version = headers.get("Sec-WebSocket-Version")
    if version is None:
        return _error(400, "bad_handshake", "a WebSocket handshake needs 'Sec-WebSocket-Version: 13'")
    if version.strip() != "13":
        response, status = _error(426, "unsupported_version", "this hub speaks WebSocket version 13 only")
        response.headers["Sec-WebSocket-Version"] = "13"
        return response, status
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        valid_key = len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        return _error(400, "bad_handshake", "'Sec-WebSocket-Key' must be 16 bytes in base64")
    if req.content_length or "Transfer-Encoding" in headers:
        return _error(400, "bad_handshake", "a WebSocket handshake has no body")
    return None


#: Most bytes taken from what the WSGI server read past the head (werkzeug's buffer is 2 KiB).
_READ_AHEAD_LIMIT = 65536


def _read_ahead(environ: dict[str, Any], sock: socket.socket) -> bytes | None:
    """Bytes the WSGI server read past the request head: frames sent before the 101 came.

    werkzeug reads the head through the handler's buffered ``rfile``, which is
    ``wsgi.input``; gunicorn through its parser's unreader, behind ``wsgi.input``.
    What they read past the head is still there; the socket does not have it
    any more. Taken without waiting for more. None: a server this does not know.
    """
    stream = environ.get("wsgi.input")
    if isinstance(stream, io.BufferedReader):  # werkzeug (HubRequestHandler or its own)
        timeout = sock.gettimeout()
        sock.setblocking(False)  # read1 returns what is buffered, or what one read finds; never waits
        try:
            return stream.read1(_READ_AHEAD_LIMIT) or b""
        except OSError:
            return b""
        finally:
            sock.settimeout(timeout)
    unreader = getattr(getattr(stream, "reader", None), "unreader", None)  # gunicorn: Body -> reader
    take_buffered = getattr(unreader, "take_buffered", None)
    if callable(take_buffered):
        return bytes(take_buffered())
    buffer = getattr(unreader, "buf", None)  # gunicorn before take_buffered
    if isinstance(buffer, io.BytesIO):
        data = buffer.getvalue()
        unreader.buf = io.BytesIO()  # type: ignore[union-attr]
        return data
    return None


_warned_servers: set[str] = set()  # SERVER_SOFTWARE already warned about (two threads may both warn)


def _warn_unknown_server(environ: dict[str, Any]) -> None:
    server = str(environ.get("SERVER_SOFTWARE") or "this WSGI server")
    if server not in _warned_servers:
        _warned_servers.add(server)
        logger.warning("%s: the bytes it read past a WebSocket's request head are out of reach; "
                       "frames a client sends before the 101 may be lost", server)


def _bearer_token() -> str | None:
    return _bearer_from(request.headers.get("Authorization"))


def _bearer_from(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header's value, or None."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _tokens(value: str | None) -> set[str]:
    """A comma-separated header's tokens, lower case (``_header_tokens`` on an environ's value)."""
    return {token.strip().lower() for token in (value or "").split(",")}


def _query_token(query: str) -> str | None:
    """``request.args.get("token")`` for the environ's ``QUERY_STRING``, as werkzeug parses it."""
    for name, value in parse_qsl(query.encode("latin-1").decode(), keep_blank_values=True,
                                 errors="werkzeug.url_quote"):
        if name == "token":
            return value
    return None


def _only(hooks: dict[Any, list[Any]], allowed: tuple[Callable[..., Any], ...]) -> bool:
    """Every function registered in Flask's ``hooks`` (by blueprint or app-wide) is one of ``allowed``."""
    for functions in hooks.values():
        for function in functions:
            if function not in allowed:
                return False
    return True


#: Flask's signals of a request's life: ``plain_upgrade`` leaves the request out only when none has a receiver.
_REQUEST_SIGNALS = (request_started, request_finished, request_tearing_down, got_request_exception,
                    appcontext_tearing_down, appcontext_pushed, appcontext_popped)


def _json_body() -> dict[str, Any]:
    """The request's JSON object, read with a size limit whatever the Content-Type says."""
    if (request.content_length or 0) > MAX_AUTH_BODY:
        raise _BadRequest(413, "body_too_large", f"the body is larger than {MAX_AUTH_BODY} bytes")
    raw = request.stream.read(MAX_AUTH_BODY + 1)
    if len(raw) > MAX_AUTH_BODY:
        raise _BadRequest(413, "body_too_large", f"the body is larger than {MAX_AUTH_BODY} bytes")
    try:
        body = loads_strict(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest(400, "invalid_json", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _BadRequest(400, "invalid_json", "the body must be a JSON object")
    return body


#: ``_check_login``'s answer for a login refused by the failure counters while it waited.
_THROTTLED = object()


class _BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def make_blueprint(state: "State", name: str = "rusty_ws") -> Blueprint:
    """The hub's routes, bound to ``state``."""
    bp = Blueprint(name, __name__, static_folder=STATIC_FOLDER, static_url_path="/rusty_ws")
    settings, hub = state.settings, state.hub
    # Bounds the password checks that run at once: a users-file check (scrypt) takes
    # ~32 MiB for its duration, so 64 logins at once would take 2 GiB.
    logins = threading.BoundedSemaphore(settings.max_concurrent_logins)
    websocket_endpoint = f"{bp.name}.{_WS_ENDPOINT}"

    @bp.before_request
    def _check_host() -> Any:
        # First of all: against DNS rebinding, a page that points its own name at this hub
        # is same-origin with it, so only the Host it names gives it away (RUSTY_WS_ALLOWED_HOSTS).
        if not settings.host_allowed(request.host):
            logger.info("refused a request for host %r from %s", request.host[:200], request.remote_addr)
            return _error(403, "forbidden_host", "this hub does not answer to that host name")
        return None

    @bp.before_request
    def _admit() -> Any:
        # Every WebSocket passes here: the request itself, not the proxy (each proxy
        # access is a context lookup), and no query-string parse when there is none.
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        if req.endpoint != websocket_endpoint:
            return None
        refused = _handshake_error(req)
        if refused is not None:
            return refused
        environ = req.environ
        if not settings.origin_allowed(req.headers.get("Origin"), req.host):
            return _error(403, "forbidden_origin", "this origin may not open WebSockets here")
        raw_socket = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
        if isinstance(raw_socket, ssl.SSLSocket):
            logger.error("a TLS WebSocket reached the hub: terminate TLS in a reverse proxy")
            return _error(501, "tls_not_supported", "terminate TLS in a reverse proxy")
        token = (req.args.get("token") if req.query_string else None) or _bearer_token()
        claims = None
        if token:
            try:
                claims = state.tokens.verify(token)
            except AuthError as exc:
                logger.info("refused a WebSocket from %s: %s", req.remote_addr, exc.code)
                return _error(exc.status, exc.code, exc.message)
        # No token: anonymous, or under REQUIRE_AUTH upgraded to wait for auth:{token}.
        if not hub.take_slot():
            if hub.accepting:
                response, status = _error(503, "server_full", "the hub is at its connection limit")
            else:
                response, status = _error(503, "shutting_down", "the hub is shutting down")
            response.headers["Retry-After"] = "5"
            return response, status
        # simple-websocket's handshake (wsproto) accepts permessage-deflate with the
        # parameters it is offered. It sees an offer only when compression is on and
        # the client's offer allows our one answer, server_no_context_takeover: every
        # delivery is then compressed once for all compressing subscribers.
        offer = environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        deflate = bool(settings.compression) and deflate_offer_to_accept(offer)
        if deflate:
            environ["HTTP_SEC_WEBSOCKET_EXTENSIONS"] = ACCEPTED_DEFLATE
        environ[ADMISSION_KEY] = Admission(claims, deflate)
        return None

    @bp.teardown_request
    def _give_back_slot(_: BaseException | None) -> None:
        admission = request.environ.pop(ADMISSION_KEY, None)
        if admission is not None and admission.holds_slot:
            hub.give_back_slot(served=admission.served)

    @bp.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and settings.origin_allowed(origin, request.host):
            if "*" in settings.cors_origins:
                response.headers["Access-Control-Allow-Origin"] = "*"
            else:
                response.headers["Access-Control-Allow-Origin"] = origin
                response.vary.add("Origin")
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    def upgrade(app: Flask, environ: dict[str, Any], admission: Admission, sock: socket.socket, remote: str) -> bool:
        """Write the 101, then hand the socket over or run the connection (the view's body, and ``plain_upgrade``'s).

        True: handed over to ``HubServer`` (``handoff.py``), which runs it once the
        request has ended, and the admission's slot went with it.
        """
        # HubServer's (hub_server.py): run the connection once this request has ended (handoff.py).
        serve_after = environ.pop(SERVE_AFTER_KEY, None)
        handed_over = False
        try:
            try:
                sock.sendall(_switching_protocols(environ["HTTP_SEC_WEBSOCKET_KEY"], admission.deflate))
            except OSError:
                return False  # the client went away before its 101
            # HubRequestHandler read exactly the head: what follows is in the socket, for Hub.serve.
            read_ahead = b"" if environ.pop(HEAD_ONLY_KEY, False) else _read_ahead(environ, sock)
            if read_ahead is None:
                _warn_unknown_server(environ)
            release_head = environ.pop(RELEASE_HEAD_KEY, None)  # HubRequestHandler's (request_handler.py)
            if release_head is not None:
                release_head(environ)
            if sock.gettimeout() is not None:  # (each settimeout is an ioctl, which lets go of the GIL)
                sock.settimeout(None)  # a blocking reader; writes use MSG_DONTWAIT
            if serve_after is not None:
                # The slot goes with the socket: AfterTheView gives it back at the socket's end.
                serve_after(AfterTheView(app, hub, sock, admission.claims, remote, admission.deflate,
                                         read_ahead or b""))
                handed_over, admission.holds_slot = True, False
                return True
            admission.served = True  # Hub.serve counts the connection's end, on every path
            hub.serve(sock, admission.claims, remote, deflate=admission.deflate, read_ahead=read_ahead or b"")
        finally:
            # werkzeug writes nothing after a 101 it did not send itself (see _AlreadyAnswered),
            # but the socket is closed here on every path all the same: text after the close
            # frame would make browsers report 1006. A socket handed over is closed at its end.
            if not handed_over:
                sock.close()
        return False

    @bp.route("/ws", endpoint=_WS_ENDPOINT, websocket=True)
    def websocket() -> Any:
        # The 101 is written here, by hand: _admit has checked every header it depends on
        # (_handshake_error), so what simple-websocket's handshake (wsproto over h11, ~0.1 ms
        # and a Server object with its Event per connection) would add is the accept token.
        environ = request.environ
        admission: Admission = environ[ADMISSION_KEY]
        raw = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
        if not isinstance(raw, socket.socket):
            logger.error("%s gives the view no socket to upgrade: serve the hub with werkzeug "
                         "(rusty-ws serve, flask run) or gunicorn's gthread worker",
                         environ.get("SERVER_SOFTWARE") or "this WSGI server")
            return _error(501, "server_not_supported", "this WSGI server cannot upgrade to a WebSocket")
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        if upgrade(app, environ, admission, raw, request.remote_addr or "?"):
            return _HandedOver()
        return _AlreadyAnswered()

    def plain_upgrade(app: Flask, environ: dict[str, Any]) -> bool:
        """Serve a WebSocket handshake that the hub admits without Flask's request; False: not taken.

        ``HubRequestHandler`` asks this first for every WebSocket handshake
        (``HubServer``: the hub's own server). Flask's request (context, URL
        adapter, hooks, the ``Request`` and its headers, the view call, the
        response and teardown) was a third of a connection's instructions
        (``scripts/callgrind_connect.py``). Taken here only when nothing but the
        hub could see the difference (``_plain_app``: no request hook, middleware
        or signal receiver of the app's own) and ``_admit``
        would let it in (``_plain_admission``: the same checks, on the environ);
        anything else, a refusal included, goes through Flask as before, which
        answers it. Only under ``HubServer`` (``SERVE_AFTER_KEY``): the socket is
        handed over as the view hands it (``handoff.py``), and its loop runs in an
        app context of its own (``current_app``).
        """
        if SERVE_AFTER_KEY not in environ or not _plain_app(app, environ):
            return False
        admission = _plain_admission(environ)
        if admission is None:
            return False
        handed_over = False
        try:
            handed_over = upgrade(app, environ, admission, environ["werkzeug.socket"],
                                  environ.get("REMOTE_ADDR") or "?")
        except Exception:  # as Flask would have logged it from the view
            logger.exception("the WebSocket from %s failed before its hand-over", environ.get("REMOTE_ADDR"))
        finally:
            if not handed_over:  # _give_back_slot's part; a socket handed over took its slot along
                hub.give_back_slot(served=admission.served)
        return True

    def _plain_app(app: Flask, environ: dict[str, Any]) -> bool:
        """Would Flask's request for this environ run only the hub's code: its hooks, its view, its teardown?"""
        route = plain_routes.get(id(app))
        if route is None:
            rules = [rule for rule in app.url_map.iter_rules() if app.view_functions.get(rule.endpoint) is websocket]
            same = [other for other in app.url_map.iter_rules() if rules and other.rule == rules[0].rule]
            plain = (len(rules) == 1 and len(same) == 1 and not rules[0].arguments and not rules[0].host
                     and not rules[0].subdomain)
            route = plain_routes[id(app)] = rules[0].rule if plain else ""
        if not route or environ.get("PATH_INFO") != route or environ.get("SCRIPT_NAME"):
            return False
        if (type(app) is not Flask or "wsgi_app" in app.__dict__ or app.request_class is not Request
                or app.url_map.host_matching or app.subdomain_matching or app.config.get("TRUSTED_HOSTS") is not None
                or app.teardown_appcontext_funcs):
            return False
        for signal in _REQUEST_SIGNALS:
            if signal.receivers:
                return False
        return (_only(app.before_request_funcs, (_check_host, _admit))
                and _only(app.teardown_request_funcs, (_give_back_slot,)) and _only(app.after_request_funcs, (_cors,))
                and _only(app.url_value_preprocessors, ()))

    def _plain_admission(environ: dict[str, Any]) -> Admission | None:
        """What ``_check_host`` and ``_admit`` would admit, from the environ alone, holding a slot; else None.

        Conservative: anything ``_admit`` might refuse or that needs a closer look
        (a body, a TLS socket, a token that does not verify, a full hub) is None,
        and Flask's request then decides, with the answer and log line it gives.
        """
        if (environ.get("REQUEST_METHOD") != "GET" or "CONTENT_LENGTH" in environ
                or "HTTP_TRANSFER_ENCODING" in environ
                or "websocket" not in _tokens(environ.get("HTTP_UPGRADE"))
                or "upgrade" not in _tokens(environ.get("HTTP_CONNECTION"))
                or (environ.get("HTTP_SEC_WEBSOCKET_VERSION") or "").strip() != "13"):
            return None
        key = (environ.get("HTTP_SEC_WEBSOCKET_KEY") or "").strip()
        try:
            if len(key) != 24 or len(base64.b64decode(key, validate=True)) != 16:
                return None
        except (binascii.Error, ValueError):
            return None
        host = get_host(environ)
        if not settings.host_allowed(host) or not settings.origin_allowed(environ.get("HTTP_ORIGIN"), host):
            return None
        if type(environ.get("werkzeug.socket")) is not socket.socket:  # TLS, or not werkzeug's
            return None
        claims = None
        query = environ.get("QUERY_STRING")
        try:
            token = (_query_token(query) if query else None) or _bearer_from(environ.get("HTTP_AUTHORIZATION"))
            if token:
                claims = state.tokens.verify(token)
        except (AuthError, UnicodeError, ValueError):
            return None
        if not hub.take_slot():
            return None
        offer = environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        deflate = bool(settings.compression) and deflate_offer_to_accept(offer)
        if deflate:
            environ["HTTP_SEC_WEBSOCKET_EXTENSIONS"] = ACCEPTED_DEFLATE
        return Admission(claims, deflate)

    plain_routes: dict[int, str] = {}  # id(app) -> the path of its one WebSocket rule, "" if none plain
    state.plain_upgrade = plain_upgrade

    @bp.route("/auth/token", methods=["POST"])
    def issue_token() -> Any:
        try:
            body = _json_body()
            username, password = body.get("username"), body.get("password")
            if not isinstance(username, str) or not username or not isinstance(password, str):
                raise _BadRequest(400, "missing_fields", "'username' and 'password' are required strings")
            session_id = body.get("session_id") or None
            if session_id is not None and not isinstance(session_id, str):
                raise _BadRequest(400, "invalid_session", "'session_id' must be a string")
            session_id = check_session(session_id or default_session_for(username))
        except _BadRequest as exc:
            return _error(exc.status, exc.code, exc.message)
        except ProtocolError as exc:
            return _error(400, exc.code, exc.message)
        address = _client_address()
        # Asked before waiting for a free check (no wait, no hashing) and again inside it.
        retry_after = state.throttle.refusal(address, username)
        accepted = _check_login(username, password, address) if retry_after is None else _THROTTLED
        if accepted is _THROTTLED:
            retry_after = retry_after or state.throttle.refusal(address, username) or 1
            logger.info("login for %r from %s refused: too many failures", username[:64], address)
            response, status = _error(429, "too_many_attempts",
                                      f"too many failed logins; try again in {retry_after} s")
            response.headers["Retry-After"] = str(retry_after)
            return response, status
        if accepted is None:
            response, status = _error(503, "too_many_logins", "too many logins at once; try again shortly")
            response.headers["Retry-After"] = str(max(1, math.ceil(settings.login_queue_timeout)))
            return response, status
        if not accepted:
            state.throttle.failed(address, username)
            logger.info("failed login for %r from %s", username[:64], address)
            return _error(401, "bad_credentials", "wrong username or password")
        state.throttle.succeeded(address, username)
        if not state.access.may_use_session(username, session_id):
            logger.info("%r may not have session %r", username[:64], session_id[:64])
            return _error(403, "forbidden_session", state.access.session_refusal(username, session_id))
        issued = state.tokens.issue(username, session_id)
        logger.info("issued a token for %r in %r", username, issued.claims.sid)
        return jsonify({"token": issued.token, "expires_in": issued.expires_in,
                        "session_id": issued.claims.sid})

    def _client_address() -> str:
        """Who is logging in: the peer, or behind RUSTY_WS_TRUSTED_PROXIES the client they name."""
        return client_address(request.remote_addr, request.headers.getlist("X-Forwarded-For"),
                              settings.trusted_proxies)

    def _check_login(username: str, password: str, address: str) -> Any:
        """The credential check, at most ``max_concurrent_logins`` at once.

        Returns:
            True or False; None if no check was free in time; ``_THROTTLED`` if the
            address reached a failure limit while this login waited.
        """
        if not logins.acquire(timeout=settings.login_queue_timeout):
            logger.info("%d logins running: refused one from %s", settings.max_concurrent_logins, address)
            return None
        try:
            if state.throttle.refusal(address, username) is not None:
                return _THROTTLED
            return state.check_credentials(username, password)
        finally:
            logins.release()

    @bp.route("/auth/refresh", methods=["POST"])
    def refresh_token() -> Any:
        token = _bearer_token()
        if token is None:
            error = TokenInvalid("send the token as 'Authorization: Bearer <token>'")
            return _error(error.status, "token_required", error.message)
        try:
            issued = state.tokens.refresh(token)
        except AuthError as exc:
            return _error(exc.status, exc.code, exc.message)
        return jsonify({"token": issued.token, "expires_in": issued.expires_in,
                        "session_id": issued.claims.sid})

    @bp.route("/auth/info")
    def auth_info() -> Any:
        # What a client must know before it connects, and cannot learn from a refused handshake
        # (browsers hide its HTTP status: a refusal is just close code 1006 to a page).
        return jsonify({"require_auth": settings.require_auth})

    if settings.healthz == "full":
        @bp.route("/healthz")
        def healthz() -> Any:
            return jsonify(hub.counts())
    elif settings.healthz == "minimal":
        @bp.route("/healthz")
        def healthz() -> Any:
            return jsonify({"status": "ok" if hub.accepting else "stopping"})

    if settings.serve_page:
        @bp.route("/")
        def page() -> Response:
            response = bp.send_static_file("index.html")
            response.headers["Content-Security-Policy"] = PAGE_CSP
            return response

    return bp
