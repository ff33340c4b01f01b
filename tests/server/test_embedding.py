"""The hub inside an existing Flask app, the app factory, and the command line."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import jwt
import pytest
from flask import Flask
from flask_sock import Sock

from rusty_ws import PubSub, create_app
from rusty_ws.cli import cli
from rusty_ws.protocol import encode_publish, encode_subscribe
from rusty_ws.server.app import STANDALONE_SWITCH_INTERVAL
from rusty_ws.server.state import state_of
from support import SECRET, WAIT, Client, RunningServer, http, hub_config, running_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shop_app(pubsub: PubSub) -> Flask:
    """An existing service with its own routes and its own flask-sock endpoint."""
    app = Flask("shop")
    app.config.update(hub_config())
    sock = Sock(app)

    @app.get("/orders")
    def orders():
        return {"orders": []}

    @app.post("/orders/<int:order_id>")
    def place(order_id: int):
        pubsub.publish("session-shop", "OrderPlaced", {"id": order_id}, publisher_name="shop")
        return {"placed": order_id}

    @sock.route("/echo")
    def echo(ws):
        ws.send(ws.receive(timeout=WAIT))

    pubsub.init_app(app, url_prefix="/realtime")
    return app


def test_embedded_under_a_prefix_with_the_apps_own_routes() -> None:
    pubsub = PubSub()
    app = shop_app(pubsub)
    with running_server(app, prefix="/realtime") as server:
        assert http("GET", f"http://127.0.0.1:{server.port}/orders")[2] == {"orders": []}
        assert http("GET", server.http_url + "/healthz")[0] == 200
        assert http("GET", f"http://127.0.0.1:{server.port}/healthz")[0] == 404
        with server.connect() as client:
            client.command(encode_subscribe("OrderPlaced", "session-shop"))
            assert http("POST", f"http://127.0.0.1:{server.port}/orders/42")[0] == 200
            message = client.recv_json()
        assert message["payload"] == {"id": 42} and message["publisher_name"] == "shop"
        assert message["session_id"] == "session-shop" and "user" not in message
        # The app's own flask-sock route still gets simple-websocket's usual reader thread.
        with Client(f"ws://127.0.0.1:{server.port}/echo") as echo:
            echo.send("hello")
            assert echo.recv() == "hello"


def test_publish_outside_a_request_with_one_app() -> None:
    pubsub = PubSub()
    app = shop_app(pubsub)
    with running_server(app, prefix="/realtime") as server:
        with server.connect() as client:
            client.command(encode_subscribe("Tick", "s"))
            pubsub.publish("s", "Tick", 1)  # no app context: the only app is used
            assert client.recv_json()["payload"] == 1


def test_publish_validates_topic_and_session() -> None:
    pubsub = PubSub()
    app = Flask("x")
    app.config.update(hub_config())
    pubsub.init_app(app)
    from rusty_ws import ProtocolError

    with pytest.raises(ProtocolError):
        pubsub.publish("s", "bad|topic", 1)
    with pytest.raises(ProtocolError):
        pubsub.publish("", "T", 1)
    with pytest.raises(ProtocolError) as caught:
        pubsub.publish("s", "T", float("nan"))
    assert caught.value.code == "invalid_message"
    with pytest.raises(ProtocolError):
        pubsub.publish("s", "T", object())
    pubsub.shutdown()


def test_two_apps_need_an_app_context_or_app_argument() -> None:
    pubsub = PubSub()
    first, second = Flask("a"), Flask("b")
    for app in (first, second):
        app.config.update(hub_config())
        pubsub.init_app(app)
    with pytest.raises(RuntimeError, match="app context"):
        pubsub.hub()
    with second.app_context():
        assert pubsub.hub() is state_of(second).hub
    assert pubsub.hub(first) is state_of(first).hub
    for app in (first, second):
        pubsub.shutdown(app)


def test_forgotten_init_app_and_double_registration() -> None:
    app = Flask("plain")
    with pytest.raises(RuntimeError, match="init_app"):
        PubSub().hub(app)
    app.config.update(hub_config())
    pubsub = PubSub(app)
    with pytest.raises(RuntimeError, match="already registered"):
        PubSub().init_app(app)
    pubsub.shutdown(app)


def test_bad_settings_fail_at_init_app() -> None:
    app = Flask("bad")
    app.config.update(hub_config(max_connections=-1))
    with pytest.raises(ValueError, match="MAX_CONNECTIONS"):
        PubSub(app)


def test_unknown_broker_url_fails_at_init_app() -> None:
    with pytest.raises(ValueError, match="broker"):
        create_app(hub_config(broker_url="carrier-pigeon://coop"))


class TestCommands:
    def test_token_command(self) -> None:
        app = create_app(hub_config())
        result = app.test_cli_runner().invoke(args=["rusty-ws", "token", "alice", "--session", "s-1"])
        assert result.exit_code == 0, result.output
        claims = jwt.decode(result.output.strip(), SECRET, algorithms=["HS256"])
        assert (claims["sub"], claims["sid"]) == ("alice", "s-1")
        state_of(app).hub.shutdown()

    def test_token_command_refuses_a_random_secret(self) -> None:
        app = create_app({})
        result = app.test_cli_runner().invoke(args=["rusty-ws", "token", "alice"])
        assert result.exit_code != 0 and "JWT_SECRET_KEY" in result.output
        state_of(app).hub.shutdown()

    def test_hash_password_command(self) -> None:
        from rusty_ws.auth import UsersFile

        app = create_app(hub_config())
        result = app.test_cli_runner().invoke(args=["rusty-ws", "hash-password"], input="pw\npw\n")
        assert result.exit_code == 0
        assert UsersFile({"u": result.output.strip().splitlines()[-1]})("u", "pw")
        state_of(app).hub.shutdown()

    def test_console_script_lists_the_commands_once(self, monkeypatch) -> None:
        from click.testing import CliRunner

        # FlaskGroup sets FLASK_RUN_FROM_CLI in os.environ; left behind, it makes every
        # later app.run() in a child process return at once. monkeypatch restores it.
        monkeypatch.setenv("FLASK_RUN_FROM_CLI", "")

        result = CliRunner().invoke(cli, ["--help"])
        assert result.exit_code == 0
        listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()]
        assert {"serve", "token", "hash-password"} <= set(listed) and "rusty-ws" not in listed

    def test_console_script_prints_rusty_ws_version_first(self, monkeypatch) -> None:
        from click.testing import CliRunner

        import rusty_ws

        monkeypatch.setenv("FLASK_RUN_FROM_CLI", "")  # see above
        result = CliRunner().invoke(cli, ["--version"])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0] == f"rusty_ws {rusty_ws.__version__}"
        assert [line.split()[0] for line in lines[1:]] == ["Python", "Flask", "Werkzeug"]

    def test_console_script_group_reads_the_environment(self, monkeypatch) -> None:
        from click.testing import CliRunner

        monkeypatch.setenv("JWT_SECRET_KEY", SECRET)
        monkeypatch.setenv("FLASK_RUN_FROM_CLI", "")  # see above
        result = CliRunner().invoke(cli, ["token", "bob"])
        assert result.exit_code == 0, result.output
        assert jwt.decode(result.output.strip(), SECRET, algorithms=["HS256"])["sub"] == "bob"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(args: list[str], ready: str) -> tuple[subprocess.Popen, list[str]]:
    """Start a server process and read its log until ``ready`` shows (bounded); returns it and its log so far."""
    env = dict(os.environ, PYTHONPATH=ROOT, JWT_SECRET_KEY=SECRET, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for _ in range(200):
        line = process.stdout.readline()  # the process logs a line at least when it is ready
        seen.append(line)
        if ready in line:
            return process, seen
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("server did not start:\n" + "".join(seen))


@pytest.mark.parametrize("how", ["flask run", "rusty-ws serve"])
def test_command_line_servers(how: str) -> None:
    port = free_port()
    if how == "flask run":
        args = [sys.executable, "-m", "flask", "--app", "rusty_ws", "run", "--port", str(port)]
        ready = "Running on"
    else:
        args = [sys.executable, "-c", "from rusty_ws.cli import main; main()", "serve", "--port", str(port),
                "--log-level", "debug"]
        ready = "rusty_ws hub on"
    process, seen = start(args, ready)
    if how == "rusty-ws serve":  # the stand-alone server hides its start-up objects from the GC (said at DEBUG)
        assert any("start-up objects out of the cyclic garbage collector" in line for line in seen), seen
    try:
        assert http("GET", f"http://127.0.0.1:{port}/healthz")[2]["status"] == "ok"
        token = http("POST", f"http://127.0.0.1:{port}/auth/token",
                     {"username": "testuser", "password": "password"})[2]["token"]
        with Client(f"ws://127.0.0.1:{port}/ws?token={token}") as client:
            client.command(encode_subscribe("T"))
            client.send(encode_publish("T", "hi"))
            assert client.recv_json()["user"] == "testuser"
            if how == "rusty-ws serve":
                process.send_signal(signal.SIGTERM)
                assert client.recv_close() == (4200, "server restarting")
        if how == "rusty-ws serve":
            assert process.wait(WAIT) == 0
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(WAIT)
        process.stdout.close()


def test_a_failed_init_app_leaves_no_thread() -> None:
    app = Flask("clash")
    app.config.update(hub_config())
    from flask import Blueprint

    app.register_blueprint(Blueprint("rusty_ws", __name__))  # the app already uses our blueprint name
    with pytest.raises(ValueError):
        PubSub(app)
    assert "rusty_ws" not in app.extensions


def test_only_the_stand_alone_hub_sets_the_gil_switch_interval(monkeypatch) -> None:
    import sys

    calls: list[float] = []
    monkeypatch.setattr(sys, "setswitchinterval", calls.append)
    embedded = Flask("embedded")
    embedded.config.update(hub_config())
    PubSub(embedded).shutdown(embedded)
    assert calls == []  # a process-wide setting: an embedding app keeps its own
    state_of(create_app(hub_config())).hub.shutdown()
    assert calls == [STANDALONE_SWITCH_INTERVAL] and STANDALONE_SWITCH_INTERVAL == 0.5
    tuned = Flask("tuned")
    tuned.config.update(hub_config(switch_interval=0.01))
    PubSub(tuned).shutdown(tuned)
    assert calls == [STANDALONE_SWITCH_INTERVAL, 0.01]


class TestDevelopmentModeWhenEmbedded:
    """The demo login and the page are for the stand-alone hub and debug mode, not an embedding app in production."""

    def embedded(self, debug: bool = False, **settings: Any) -> Flask:
        app = Flask("shop")
        app.debug = debug
        app.config.update(hub_config(**{"dev_mode": None, **settings}))
        PubSub(app, url_prefix="/realtime")
        return app

    def test_an_embedding_app_in_production_has_no_demo_login_and_no_page(self, caplog) -> None:
        with caplog.at_level(logging.WARNING, "rusty_ws.server"):
            app = self.embedded()
        with running_server(app, prefix="/realtime") as server:
            assert login_status(server) == 401
            assert http("GET", server.http_url + "/")[0] == 404
            assert http("GET", server.http_url + "/rusty_ws/rusty_ws.js")[0] == 200  # the modules stay
        assert "every login to /auth/token is refused" in caplog.text and "DEVELOPMENT MODE" not in caplog.text

    def test_debug_mode_or_the_setting_turns_development_mode_on(self) -> None:
        for app in (self.embedded(debug=True), self.embedded(dev_mode=True)):
            with running_server(app, prefix="/realtime") as server:
                assert login_status(server) == 200
                assert http("GET", server.http_url + "/")[0] == 200

    def test_the_page_can_be_served_on_its_own(self) -> None:
        with running_server(self.embedded(serve_page=True), prefix="/realtime") as server:
            assert http("GET", server.http_url + "/")[0] == 200 and login_status(server) == 401

    def test_the_stand_alone_hub_is_in_development_mode(self) -> None:
        app = create_app({"RUSTY_WS_JWT_SECRET_KEY": SECRET})
        with running_server(app) as server:
            assert login_status(server) == 200 and http("GET", server.http_url + "/")[0] == 200

    def test_a_secret_in_the_environment_only_is_pointed_at(self, caplog, monkeypatch) -> None:
        monkeypatch.setenv("JWT_SECRET_KEY", "x" * 40)
        app = Flask("shop")
        with caplog.at_level(logging.WARNING, "rusty_ws.server"):
            PubSub(app)
        state_of(app).hub.shutdown(0)
        assert "JWT_SECRET_KEY is set in the environment, but an embedded hub reads the app's config" in caplog.text


def login_status(server: RunningServer) -> int:
    return http("POST", server.http_url + "/auth/token", {"username": "testuser", "password": "password"})[0]
