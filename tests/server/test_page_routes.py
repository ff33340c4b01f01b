"""The hub's page and JavaScript modules over HTTP: URLs, headers, CORS, prefixes, hostile paths."""

from __future__ import annotations

import os
from http.client import HTTPConnection
from urllib.parse import urlsplit

import pytest
import websocket
from flask import Flask

from rusty_ws import PubSub
from support import WAIT, RunningServer, http, hub_config, running_server

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "rusty_ws", "static")
MODULES = ["rusty_ws.js", "client.js", "recovery.js", "replies.js", "jwt_utils.js", "transport.js", "protocol.js",
           "backoff.js", "errors.js", "page.js"]


def raw_get(port: int, path: str, follow: bool = False) -> int:
    """GET ``path`` exactly as written (no client-side clean-up of ``..``); returns the status.

    With ``follow``, one redirect to a path on the same server is followed.
    """
    connection = HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        location = response.getheader("Location", "")
    finally:
        connection.close()
    target = urlsplit(location)
    if follow and response.status in (301, 308) and target.netloc in ("", f"127.0.0.1:{port}"):
        return raw_get(port, target.path)
    return response.status


def handshake_status(url: str, origin: str) -> int:
    try:
        websocket.create_connection(url, timeout=WAIT, origin=origin).close()
    except websocket.WebSocketBadStatusException as exc:
        return exc.status_code
    return 101


def test_page_at_the_root_with_a_strict_content_security_policy(server: RunningServer) -> None:
    status, headers, body = http("GET", server.http_url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<script type="module" src="rusty_ws/page.js">' in body  # relative: works under a prefix
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy


@pytest.mark.parametrize("name", [*MODULES, "style.css"])
def test_modules_are_served_at_rusty_ws(server: RunningServer, name: str) -> None:
    status, headers, _ = http("GET", f"{server.http_url}/rusty_ws/{name}")
    assert status == 200
    kind = "text/css" if name.endswith(".css") else "text/javascript"
    assert headers["Content-Type"].startswith(kind)


def test_modules_carry_cors_headers_for_cross_origin_imports(server: RunningServer) -> None:
    _, headers, _ = http("GET", server.http_url + "/rusty_ws/jwt_utils.js", headers={"Origin": "http://localhost:8080"})
    assert headers["Access-Control-Allow-Origin"] == "*"


def test_modules_follow_the_configured_origins() -> None:
    with running_server(cors_origins=["http://localhost:8080"]) as server:
        url = server.http_url + "/rusty_ws/rusty_ws.js"
        _, headers, _ = http("GET", url, headers={"Origin": "http://localhost:8080"})
        assert headers["Access-Control-Allow-Origin"] == "http://localhost:8080"
        _, headers, _ = http("GET", url, headers={"Origin": "http://evil.example"})
        assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize("path", [
    "/rusty_ws/../views.py",
    "/rusty_ws/%2e%2e/views.py",
    "/rusty_ws/..%2fviews.py",
    "/rusty_ws/%2e%2e%2fconfig.py",
    "/rusty_ws/..%5cviews.py",
    "/rusty_ws//etc/passwd",  # werkzeug merges the slashes (308), then 404
    "/rusty_ws/",
    "/rusty_ws/missing.js",
    "/rusty_ws/index.html%00.js",
    "/static/rusty_ws.js",  # the stand-alone app has no /static/: one URL for the modules
])
def test_hostile_and_unknown_paths_are_404(server: RunningServer, path: str) -> None:
    assert raw_get(server.port, path, follow=True) == 404


def test_every_static_file_is_package_data() -> None:
    # setup.cfg ships "static/*": files only, no folders.
    entries = os.listdir(STATIC)
    assert {"index.html", "style.css", *MODULES} <= set(entries)
    assert all(os.path.isfile(os.path.join(STATIC, entry)) for entry in entries)


def embedded_app(**overrides: object) -> tuple[Flask, PubSub]:
    app = Flask("shop")
    app.config.update(hub_config(**overrides))

    @app.get("/")
    def home() -> str:
        return "the shop's own home page"

    pubsub = PubSub()
    pubsub.init_app(app, url_prefix="/realtime")
    return app, pubsub


def test_under_an_embedding_apps_prefix() -> None:
    app, _ = embedded_app()
    with running_server(app, prefix="/realtime") as server:
        assert http("GET", server.http_url + "/")[0] == 200
        assert http("GET", server.http_url + "/rusty_ws/rusty_ws.js")[0] == 200
        assert raw_get(server.port, "/realtime") == 308  # to /realtime/, so relative URLs resolve
        assert http("GET", f"http://127.0.0.1:{server.port}/")[2] == "the shop's own home page"


def test_the_page_can_be_turned_off_but_the_modules_stay() -> None:
    app, _ = embedded_app(serve_page=False)
    with running_server(app, prefix="/realtime") as server:
        assert http("GET", server.http_url + "/")[0] == 404
        assert http("GET", server.http_url + "/rusty_ws/jwt_utils.js")[0] == 200


def test_own_page_may_open_websockets_whatever_the_configured_origins() -> None:
    with running_server(cors_origins=["http://localhost:8080"]) as server:
        own = f"http://127.0.0.1:{server.port}"
        assert handshake_status(server.ws_url, own) == 101
        for foreign in [f"http://127.0.0.1:{server.port}.evil.example", f"http://evil.example:{server.port}",
                        f"http://127.0.0.1:{server.port + 1}", "null", f"{own}@evil.example"]:
            assert handshake_status(server.ws_url, foreign) == 403, foreign


@pytest.mark.parametrize("require_auth", [False, True])
def test_auth_info_tells_a_page_whether_it_must_log_in(require_auth: bool) -> None:
    # A browser cannot read the 401 of a refused handshake (it sees 1006): the page asks here.
    with running_server(require_auth=require_auth) as server:
        status, headers, body = http("GET", server.http_url + "/auth/info", headers={"Origin": "http://elsewhere.example"})
        assert (status, body) == (200, {"require_auth": require_auth})
        assert headers["Access-Control-Allow-Origin"] == "*"
