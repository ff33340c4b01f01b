"""A WsClient that cannot connect says what to fix: the scheme, the path, or that nothing listens there."""

from __future__ import annotations

import pytest
from flask import Flask

from rusty_ws import ConnectFailed, PubSub, WsClient
from rusty_ws.client.connector import url_problem
from support import RunningServer, free_port, hub_config, running_server


@pytest.mark.parametrize("url, fix", [
    ("http://127.0.0.1:8081/ws", "use ws://127.0.0.1:8081/ws"),
    ("https://hub.example/ws?x=1", "use wss://hub.example/ws?x=1"),
    ("127.0.0.1:8081/ws", "a hub URL is ws://host:port/ws"),
    ("ws:///ws", "a hub URL is ws://host:port/ws"),
    ("", "a hub URL is ws://host:port/ws"),
])
def test_a_url_that_is_no_websocket_url_is_named_with_its_fix(url: str, fix: str) -> None:
    problem = url_problem(url)
    assert problem is not None and fix in problem
    with pytest.raises(ConnectFailed, match="cannot connect to") as raised:
        WsClient.connect("A", url, timeout=1, reconnect=False)
    assert fix in str(raised.value)


def test_good_urls_have_no_problem() -> None:
    for url in ("ws://127.0.0.1:8081/ws", "wss://hub.example/realtime/ws", "ws://[::1]:9/ws"):
        assert url_problem(url) is None


@pytest.mark.parametrize("path, status", [("/", 400), ("/wss", 404), ("/socket.io/", 404)])
def test_a_handshake_on_another_path_names_the_hub_s_path(server: RunningServer, path: str, status: int) -> None:
    url = f"ws://127.0.0.1:{server.port}{path}"
    with pytest.raises(ConnectFailed) as raised:
        WsClient.connect("A", url, timeout=5, reconnect=False)
    assert raised.value.status == status
    assert f"try ws://127.0.0.1:{server.port}/ws" in str(raised.value), raised.value
    with WsClient.connect("A", server.ws_url, timeout=5) as client:  # the hub is still up for everyone
        client.ping()


def test_a_hub_under_a_url_prefix_is_reached_and_its_own_refusals_get_no_path_hint() -> None:
    app = Flask("embedding")
    app.config.update(hub_config())
    PubSub(app, url_prefix="/realtime")
    with running_server(app, prefix="/realtime") as server:
        with WsClient.connect("A", server.ws_url, timeout=5) as client:
            client.ping()
        with pytest.raises(ConnectFailed) as raised:
            WsClient.connect("A", f"ws://127.0.0.1:{server.port}/realtime/wss", timeout=5, reconnect=False)
        assert "under the app's url_prefix" in str(raised.value)


def test_nothing_listening_asks_whether_the_hub_runs() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    with pytest.raises(ConnectFailed, match=r"Connection refused \(is the hub running"):
        WsClient.connect("A", url, timeout=5, reconnect=False)
