"""No token in a log line or an error reply (issue 13), beyond the suite-wide check of ``conftest.py``.

``hidden_tokens`` (conftest) fails any test whose captured logs hold a token
the hub issued or one the test added; here the paths that would leak one
without the hub's care: werkzeug's own server (what ``flask run`` uses), the
hub's DEBUG lines of every frame, error replies that echo a frame, and the
filter itself.
"""

from __future__ import annotations

import json
import logging
import sys
import threading

import jwt
import pytest
from werkzeug.serving import make_server as werkzeug_server

from rusty_ws import create_app
from rusty_ws.protocol import encode_auth, encode_ping, encode_refresh
from rusty_ws.server.redaction import TokenRedactor
from rusty_ws.server.state import state_of
from support import POLL, WAIT, Client, error_of, http, hub_config, login, running_server


@pytest.fixture(autouse=True)
def debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rusty_ws.server")
    caplog.set_level(logging.DEBUG, logger="werkzeug")


def test_werkzeugs_own_server_as_flask_run_uses_it(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(hub_config())
    server = werkzeug_server("127.0.0.1", 0, app, threaded=True)  # flask run's server and handler
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL}, daemon=True)
    thread.start()
    try:
        base = f"127.0.0.1:{server.port}"
        status, _, body = http("POST", f"http://{base}/auth/token", {"username": "testuser", "password": "password"})
        assert status == 200
        with Client(f"ws://{base}/ws?token={body['token']}") as client:
            client.sync()
        assert http("POST", f"http://{base}/auth/refresh",
                    headers={"Authorization": f"Bearer {body['token']}"})[0] == 200
    finally:
        state_of(app).hub.shutdown(WAIT)
        server.shutdown()
        thread.join(WAIT)
        server.server_close()
    lines = [record.getMessage() for record in caplog.records if record.name == "werkzeug"]
    assert any("GET /ws?token=[redacted]" in line for line in lines), lines


def test_frames_with_tokens_are_logged_without_them(server, hidden_tokens: set[str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    token = login(server, session_id="s")
    garbage = "definitely-not-a-token-but-secret-anyway"
    hidden_tokens.add(garbage)
    with server.connect() as client:
        client.send(encode_auth(token))
        client.recv()
        error_of(client.command(encode_refresh(garbage)))
        error_of(client.command("refresh:" + token[:50]))  # a token cut short is no less secret
        [reply] = client.command(encode_refresh(token))
        assert reply.startswith("refreshed:")
    debug = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG]
    assert "< conn-1 auth:[redacted]" in debug and debug.count("< conn-1 refresh:[redacted]") == 3
    assert not any(token[:50] in line for line in debug)


def test_error_replies_never_echo_a_token(server, hidden_tokens: set[str]) -> None:
    token = server.token("alice", "s")
    forged = jwt.encode({"sub": "x", "sid": "s", "iat": 1, "exp": 2}, "k" * 40, algorithm="HS256")
    hidden_tokens.add(forged)
    with server.connect() as client:
        for text in ["Auth:" + token, "token:" + forged, f"GET /ws?token={forged}", "bearer " + token]:
            error = error_of(client.command(text))
            assert error["code"] == "unknown_command"
            assert token not in error["message"] and forged not in error["message"]
            assert "[redacted]" in error["message"]
    with Client(server.ws_url) as client:
        client.send(encode_auth(forged))
        error = json.loads(client.recv()[len("error:"):])
        assert forged not in json.dumps(error)


def test_healthz_holds_no_token(server) -> None:
    with server.connect(server.token("alice", "s")) as client:
        client.send(encode_ping())
        client.recv()
        text = json.dumps(http("GET", server.http_url + "/healthz")[2])
    assert "eyJ" not in text


class TestRedactor:
    def record(self, msg: str, args: object = None, exc: bool = False) -> logging.LogRecord:
        exc_info = None
        if exc:
            try:
                raise ValueError("bad request GET /ws?token=eyJhbGciOiJIUzI1NiJ9.e30.sig")
            except ValueError:
                exc_info = sys.exc_info()
        return logging.LogRecord("werkzeug", logging.INFO, __file__, 1, msg, args, exc_info)

    @pytest.mark.parametrize("msg, args, shown", [
        ('"%s" %s %s', ("GET /ws?token=abc&x=1 HTTP/1.1", "101", "-"), '"GET /ws?token=[redacted]&x=1 HTTP/1.1" 101 -'),
        ("%(r)s", ({"r": "GET /ws?access_token=eyJhbGciOiJIUzI1NiJ9.x.y"},), "GET /ws?access_token=[redacted]"),
        ("header Authorization: Bearer abc.def.ghi seen", None, "header Authorization: Bearer [redacted] seen"),
        ("a JWT eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln in prose", None, "a JWT [redacted] in prose"),
        ("nothing to hide: %d tokens", (3,), "nothing to hide: 3 tokens"),
    ])
    def test_messages_and_arguments(self, msg: str, args: object, shown: str) -> None:
        record = self.record(msg, args)
        assert TokenRedactor().filter(record) is True
        assert record.getMessage() == shown

    def test_tracebacks(self) -> None:
        record = self.record("Error on request", exc=True)
        TokenRedactor().filter(record)
        assert "token=[redacted]" in record.exc_text and "eyJ" not in record.exc_text

    def test_init_app_puts_it_on_the_loggers(self) -> None:
        with running_server():
            for name in ("werkzeug", "gunicorn.access", "gunicorn.error", "rusty_ws.server"):
                assert any(isinstance(f, TokenRedactor) for f in logging.getLogger(name).filters), name
            assert sum(isinstance(f, TokenRedactor) for f in logging.getLogger("werkzeug").filters) == 1


def test_every_logger_of_the_hub_blanks_tokens_as_its_parent_does(caplog: pytest.LogCaptureFixture) -> None:
    # logging runs a logger's own filters only, not its parents': a child logger of "rusty_ws.server"
    # (the storm's pacing line, the stop's) is filtered only if install() names it.
    import pathlib
    import re

    import rusty_ws
    from rusty_ws.server import redaction

    redaction.install()
    package = pathlib.Path(rusty_ws.__file__).parent
    names = {name for path in package.rglob("*.py")
             for name in re.findall(r'getLogger\("(rusty_ws\.server[\w.]*)"\)', path.read_text())}
    assert {"rusty_ws.server", "rusty_ws.server.pacing", "rusty_ws.server.stop"} <= names, names
    token = jwt.encode({"sub": "alice", "sid": "s"}, "k" * 32, algorithm="HS256")
    for name in sorted(names):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=name):
            logging.getLogger(name).info("a line with %s", token)
        assert caplog.records and token not in caplog.text, (name, caplog.text)
